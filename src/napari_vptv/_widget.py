"""napari widget "VPTV segmentation".

A magicgui :class:`~magicgui.widgets.Container` (npe2 widget contribution
``napari_vptv._widget:SegmentationWidget``) that segments an Image layer (grey or RGB,
2-D or with leading axes ZYX / TYX / TZYX) with the variational VPTV solver or the
pretrained VPTVU-net, and writes the labels to a Labels layer.

* The work is the napari-free generator :func:`napari_vptv.core.stack.segment_stack`
  run in a ``napari.qt.threading.thread_worker``; a napari progress bar counts slices,
  the output layer fills in as slices finish, and Cancel stops at the next slice
  boundary (or, inside a long 2-D solve, at the next iteration).
* Output: a new Labels layer "<image> VPTV" tagged ``metadata["vptv"]``; running
  again updates only a layer carrying that tag for the same source. User layers are
  never overwritten or removed (a user layer called "<image> VPTV" makes the output
  "<image> VPTV [2]").
* Inputs are checked before running; problems are shown as napari notifications and
  in the status line, never as an exception.

Heavy imports (torch, the solver, the network) happen inside the functions that need
them, so opening napari's plugin menu stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from psygnal import Signal

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["SegmentationWidget", "METADATA_KEY"]

#: Key of ``layer.metadata`` that marks the plugin's own output layers.
from ._common import METADATA_KEY, WidgetRunMixin
from .api import wbc_priors
from .options import SegmentOptions

OUTPUT_KIND = "segmentation"

METHOD_VPTV = "Variational VPTV"
METHOD_NET = "VPTVU-net (WBC, pretrained)"
METHODS = {METHOD_VPTV: "vptv", METHOD_NET: "vptv-unet"}

PRESET_WBC = "WBC (3 classes)"
PRESET_KMEANS = "estimate from image (k-means)"
PRESET_CUSTOM = "custom"

STACK_SLICES = "slice by slice"
STACK_VOLUME = "3-D volume (variational only)"

#: Half-width of the interval put around k-means fractions ("estimate from image").
KMEANS_INTERVAL = 0.05

def _fmt(values) -> str:
    return ", ".join(f"{float(v):.3g}" for v in np.ravel(values))


class _Cancelled(Exception):
    """Raised from the solver's iteration callback when Cancel was pressed."""


class SegmentationWidget(WidgetRunMixin, Container):
    """Dock widget "VPTV segmentation".

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari / npe2).

    Attributes
    ----------
    synchronous : bool
        Run in the calling (GUI) thread instead of a worker thread (for tests and
        scripts). ``run(sync=True)`` does the same for one call.
    worker : the running ``GeneratorWorker`` or None.
    output_layer : the Labels layer of the last run (or None).
    slice_finished : psygnal Signal
        Emitted in the GUI thread with each finished
        :class:`~napari_vptv.core.stack.StackSlice`, after it was written to the
        output layer.
    """

    slice_finished = Signal(object)

    OUTPUT_KIND = OUTPUT_KIND
    CANCEL_NOTE = "Stop at the next slice boundary (or solver iteration)."
    SETTINGS_NAME = "segmentation"

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.synchronous = False
        self.worker = None
        self.output_layer = None
        self._cancel_requested = False
        self._iteration: Optional[Tuple[int, int]] = None
        self._pbar = None
        self._run_state: Dict[str, Any] = {}
        self._restoring = False

        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=False)
        self.method = ComboBox(label="Method", choices=list(METHODS), value=METHOD_VPTV)
        self.preset = ComboBox(
            label="Preset", choices=[PRESET_WBC, PRESET_KMEANS, PRESET_CUSTOM], value=PRESET_WBC
        )
        self.n_classes = SpinBox(label="Classes", min=2, max=64, value=3)
        self.volume_mode = ComboBox(label="Volume mode", choices=["interval", "exact", "none"], value="interval")
        self.volumes = LineEdit(label="Volumes", value="0.77, 0.13, 0.10",
                                tooltip="Exact class fractions, comma-separated, summing to 1")
        self.lower = LineEdit(label="Lower bounds", value="",
                              tooltip="Per-class lower bounds of the class fractions, comma-separated")
        self.upper = LineEdit(label="Upper bounds", value="",
                              tooltip="Per-class upper bounds of the class fractions, comma-separated")
        self.estimate = PushButton(text="Estimate volumes from current slice (k-means)")
        self.epsilon = FloatSpinBox(label="ε (entropy)", min=1e-4, max=10.0, step=0.001, value=0.01,
                                    tooltip="Entropic regularisation ε (paper eq. 11)")
        self.tv_weight = FloatSpinBox(label="λ (TV weight)", min=0.0, max=10.0, step=0.005, value=0.02,
                                      tooltip="Weight λ of the total variation term (paper eq. 11)")
        self.edge = CheckBox(text="Edge weight e(x)", value=False,
                             tooltip="Weight the TV by e(x) = 1/(1 + ε'|∇(G_σ * I)|)")
        self.max_iter = SpinBox(label="Max iterations", min=1, max=100000, value=500)
        defaults = SegmentOptions()
        self.diameter = FloatSpinBox(label="cell diameter (px, 0 = auto)", min=0.0, max=10000.0, step=1.0,
                                     value=defaults.diameter,
                                     tooltip="Cell diameter in pixels for the network; 0 estimates it")
        self.seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=defaults.seed)
        self.device = ComboBox(label="Device", choices=["cpu", "cuda"], value=defaults.device)
        self.stack_mode = ComboBox(label="Stacks", choices=[STACK_SLICES, STACK_VOLUME], value=STACK_SLICES)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False, label="")
        buttons.margins = (0, 0, 0, 0)
        self.status = Label(label="Status", value="ready")
        self.status.native.setWordWrap(True)

        self.extend([
            self.image, self.method, self.preset, self.n_classes, self.volume_mode,
            self.volumes, self.lower, self.upper, self.estimate, self.epsilon,
            self.tv_weight, self.edge, self.max_iter, self.diameter, self.seed, self.device,
            self.stack_mode, buttons, self.status,
        ])

        self.method.changed.connect(self._on_method)
        self.preset.changed.connect(self._on_preset)
        self.volume_mode.changed.connect(self._update_visibility)
        self.n_classes.changed.connect(self._on_n_classes)
        self.estimate.changed.connect(self._on_estimate)
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        for w in (self.volumes, self.lower, self.upper):
            w.changed.connect(self._on_volume_text)

        layers_events = self.viewer.layers.events
        for ev in (layers_events.inserted, layers_events.removed, layers_events.reordered):
            ev.connect(self._reset_image_choices)
        self._apply_preset()
        self._update_visibility()
        self._reset_image_choices()
        # the last session's settings (see _common.settings_dir)
        self._restoring = True
        try:
            if self._restore_settings():
                self._set_status("ready (settings of the last run restored)")
        finally:
            self._restoring = False

    def _persisted_widgets(self) -> Dict[str, Any]:
        # restore order matters: method / preset / n_classes callbacks rewrite the
        # volume fields (and ε, λ, edge), so those come first and the volume texts last
        return {
            "method": self.method,
            "preset": self.preset,
            "n_classes": self.n_classes,
            "volume_mode": self.volume_mode,
            "epsilon": self.epsilon,
            "tv_weight": self.tv_weight,
            "edge": self.edge,
            "max_iter": self.max_iter,
            "diameter": self.diameter,
            "seed": self.seed,
            "device": self.device,
            "stack_mode": self.stack_mode,
            "volumes": self.volumes,
            "lower": self.lower,
            "upper": self.upper,
        }

    # ------------------------------------------------------------------ choices
    def _reset_image_choices(self, *_):
        # keep names in the combo box up to date when a layer is renamed
        import napari

        for layer in self.viewer.layers:
            if isinstance(layer, napari.layers.Image):
                layer.events.name.connect(self._reset_image_choices)  # no-op if connected
        self.image.reset_choices()

    def reset_choices(self, *_):  # called by napari on layer changes
        super().reset_choices()

    # ----------------------------------------------------------- preset / modes
    def _on_method(self, *_):
        net = METHODS[self.method.value] == "vptv-unet"
        if net:
            self.n_classes.value = 3
            if self.preset.value == PRESET_KMEANS:
                self.preset.value = PRESET_WBC
            self.stack_mode.value = STACK_SLICES
        self.n_classes.enabled = not net
        self._apply_preset()
        self._update_visibility()

    def _on_preset(self, *_):
        self._apply_preset()

    def _on_n_classes(self, *_):
        if self.preset.value == PRESET_WBC and self.n_classes.value != 3:
            self.preset.value = PRESET_CUSTOM
        elif self.preset.value == PRESET_KMEANS:
            self._apply_preset()

    def _on_volume_text(self, *_):
        self._mark_volume_fields()

    def _on_estimate(self, *_):
        self.estimate_volumes()

    def _update_visibility(self, *_):
        mode = self.volume_mode.value
        self.volumes.visible = mode == "exact"
        self.lower.visible = mode == "interval"
        self.upper.visible = mode == "interval"
        net = METHODS[self.method.value] == "vptv-unet"
        for w in (self.max_iter, self.edge):
            w.enabled = not net
        self.diameter.enabled = net
        self._mark_volume_fields()

    def _apply_preset(self):
        preset = self.preset.value
        if preset == PRESET_WBC:
            pri = wbc_priors(METHODS[self.method.value])
            self.n_classes.value = 3
            self.volumes.value = _fmt(pri["volumes"])
            if pri.get("lower") is not None and pri.get("upper") is not None:
                self.lower.value = _fmt(pri["lower"])
                self.upper.value = _fmt(pri["upper"])
                self.volume_mode.value = "interval"
            else:
                self.lower.value = self.upper.value = ""
                self.volume_mode.value = "exact"
            for key, w in (("epsilon", self.epsilon), ("tv_weight", self.tv_weight), ("edge", self.edge)):
                if pri.get(key) is not None:
                    w.value = pri[key]
            self._set_status(f"WBC preset loaded ({pri['source']})")
        elif preset == PRESET_KMEANS:
            # not while restoring saved settings: the saved volume texts follow
            if self.image.value is not None and not self._restoring:
                self.estimate_volumes()
        self._mark_volume_fields()

    def estimate_volumes(self) -> Optional[np.ndarray]:
        """Fill the volume fields with k-means class fractions of the current slice.

        The exact volumes become the k-means fractions, the interval
        ``fraction ± KMEANS_INTERVAL`` (clipped to [0, 1]). Returns the fractions,
        or None (with a notification) if it fails.
        """
        from napari.utils.notifications import show_error

        layer = self.image.value
        if layer is None:
            self._error("No image layer to estimate volumes from.", show_error)
            return None
        try:
            from napari_vptv.core.costs import kmeans_init, kmeans_labels
            from napari_vptv.core.segment import prepare_image

            piece = self._current_slice(layer)
            feats = prepare_image(piece, -1 if layer.rgb else None)
            pixels = feats.reshape(feats.shape[0], -1).T.astype(np.float64)
            k = int(self.n_classes.value)
            means, _ = kmeans_init(pixels, k, seed=int(self.seed.value))
            frac = np.bincount(kmeans_labels(pixels, means), minlength=k) / pixels.shape[0]
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._error(f"Could not estimate volumes: {exc}", show_error)
            return None
        frac = np.clip(frac, 1e-3, None)
        frac = frac / frac.sum()
        self.volumes.value = _fmt(frac)
        self.lower.value = _fmt(np.clip(frac - KMEANS_INTERVAL, 0.0, 1.0))
        self.upper.value = _fmt(np.clip(frac + KMEANS_INTERVAL, 0.0, 1.0))
        self._set_status(f"k-means fractions of the current slice: {_fmt(frac)}")
        return frac

    def _current_slice(self, layer) -> np.ndarray:
        """The 2-D plane (plus colour) of ``layer`` at the viewer's current position."""
        data = layer.data
        if getattr(layer, "multiscale", False):
            data = data[-1]
        n_lead = data.ndim - (3 if layer.rgb else 2)
        step = tuple(self.viewer.dims.current_step)
        # layer axes are the last layer.ndim world axes
        world = step[len(step) - layer.ndim:] if len(step) >= layer.ndim else (0,) * layer.ndim
        index = tuple(min(max(int(i), 0), data.shape[a] - 1) for a, i in enumerate(world[:n_lead]))
        return np.asarray(data[index] if index else data)

    def _mark_volume_fields(self):
        """Mark volume fields red while they do not parse as a valid constraint."""
        err = None
        try:
            self.volume_spec()
        except ValueError as exc:
            err = str(exc)
        for w in (self.volumes, self.lower, self.upper):
            try:
                w.native.setStyleSheet("QLineEdit { border: 1px solid #d04040; }" if err and w.visible else "")
                w.tooltip = err if err else w.tooltip
            except Exception:  # noqa: BLE001 - cosmetic only
                pass

    # --------------------------------------------------------------- validation
    def volume_spec(self):
        """The entered volume constraint as a validated ``VolumeSpec``.

        Raises ``ValueError`` (from :func:`napari_vptv.core.volumes.make_volume_spec`)
        naming the problem.
        """
        from napari_vptv.core.volumes import make_volume_spec

        mode = self.volume_mode.value
        k = int(self.n_classes.value)
        if mode == "exact":
            return make_volume_spec(k, "exact", volumes=self.volumes.value)
        if mode == "interval":
            return make_volume_spec(k, "interval", lower=self.lower.value, upper=self.upper.value)
        return make_volume_spec(k, "none")

    def parameters(self) -> Dict[str, Any]:
        """The widget's settings as plain values (recorded in the output metadata)."""
        return {
            "method": METHODS[self.method.value],
            "preset": self.preset.value,
            "n_classes": int(self.n_classes.value),
            "volume_mode": self.volume_mode.value,
            "volumes": self.volumes.value,
            "lower": self.lower.value,
            "upper": self.upper.value,
            "epsilon": float(self.epsilon.value),
            "tv_weight": float(self.tv_weight.value),
            "edge": bool(self.edge.value),
            "max_num_iter": int(self.max_iter.value),
            "diameter": float(self.diameter.value),
            "seed": int(self.seed.value),
            "device": self.device.value,
            "stack_mode": "volume" if self.stack_mode.value == STACK_VOLUME else "slices",
        }

    def _validate(self):
        """Check everything before a run; returns (layer, spec, params, mode)."""
        import napari

        layer = self.image.value
        if layer is None or layer not in self.viewer.layers or not isinstance(layer, napari.layers.Image):
            raise ValueError("No image layer selected: open an image (e.g. File > Open Sample > VPTV segmentation).")
        if getattr(layer, "multiscale", False):
            raise ValueError(f"Image layer {layer.name!r} is multiscale; VPTV needs a single-resolution image.")
        spec = self.volume_spec()
        params = self.parameters()
        method = params["method"]
        mode = params["stack_mode"]
        data = layer.data
        from napari_vptv.core.stack import stack_layout

        if method != "vptv" and mode == "volume":
            raise ValueError("3-D volume mode is only available for the variational VPTV method.")
        if mode == "volume":
            n_spatial = data.ndim - (1 if layer.rgb else 0)
            if n_spatial < 3:
                raise ValueError(f"3-D volume mode needs a stack (Z, Y, X); {layer.name!r} is 2-D.")
        stack_layout(data.shape, rgb=layer.rgb, mode=mode)
        if data.dtype == object or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            raise ValueError(f"Image layer {layer.name!r} has unsupported dtype {data.dtype}.")
        if isinstance(data, np.ndarray) and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
            raise ValueError(f"Image layer {layer.name!r} contains NaN or infinite values.")
        if method == "vptv-unet" and spec.n_classes != 3:
            raise ValueError("The pretrained VPTVU-net segments 3 WBC classes; set Classes to 3.")
        if method == "vptv-unet":
            try:
                from napari_vptv.nn.weights import model_metadata

                model_metadata("vptv-unet")
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"The pretrained VPTVU-net is not available: {exc}") from None
        if params["device"] != "cpu":
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"Device {params['device']!r} is not available on this machine; use 'cpu'.")
        self.segment_options(spec, params)  # checks the settings as a whole
        return layer, spec, params, mode

    # ------------------------------------------------------------------ running
    def segment_options(self, spec=None, params=None) -> SegmentOptions:
        """The widget's settings as the shared :class:`~napari_vptv.options.SegmentOptions`.

        Parameters
        ----------
        spec : VolumeSpec, optional
            The entered volume constraint (default: :meth:`volume_spec`).
        params : dict, optional
            The widget's settings (default: :meth:`parameters`).
        """
        spec = self.volume_spec() if spec is None else spec
        params = self.parameters() if params is None else params
        net = params["method"] != "vptv"  # the network's own unrolled T, no edge option
        return SegmentOptions(
            method=params["method"],
            preset="wbc" if params["preset"] == PRESET_WBC else "none",
            n_classes=spec.n_classes,
            volume_mode=spec.mode,
            volumes=spec.volumes if spec.mode == "exact" else None,
            lower=spec.lower if spec.mode == "interval" else None,
            upper=spec.upper if spec.mode == "interval" else None,
            epsilon=params["epsilon"],
            tv_weight=params["tv_weight"],
            edge=None if net else params["edge"],
            max_num_iter=None if net else params["max_num_iter"],
            seed=params["seed"],
            device=params["device"],
            diameter=params["diameter"],
        )

    def _make_segment_fn(self, spec, params):
        """``fn(image, *, channel_axis)`` for :func:`segment_stack`; Cancel stops the solver."""
        from napari_vptv.api import SegmentFn

        def callback(it, max_it=None, *_):
            if self._cancel_requested:
                raise _Cancelled()
            self._iteration = (int(it), int(max_it if max_it is not None else params["max_num_iter"]))

        return SegmentFn(self.segment_options(spec, params), callback=callback)

    def run(self, sync: Optional[bool] = None):
        """Validate the inputs and segment the chosen image.

        Parameters
        ----------
        sync : bool, optional
            Run in the calling thread (blocking); default ``self.synchronous``.

        Returns
        -------
        The worker (threaded run), the output Labels layer (synchronous run), or None
        if the inputs are invalid or a run is already going on.
        """
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:
            self._error("A segmentation is already running: wait for it or press Cancel.", show_warning)
            return None
        try:
            layer, spec, params, mode = self._validate()
        except Exception as exc:  # noqa: BLE001 - any bad input becomes a notification
            self._error(str(exc), show_error)
            return None
        self._save_settings()

        from napari_vptv.core.stack import segment_stack, stack_layout

        leading, label_shape = stack_layout(layer.data.shape, rgb=layer.rgb, mode=mode)
        total = int(np.prod(leading)) if leading else 1
        segment_fn = self._make_segment_fn(spec, params)
        self._cancel_requested = False
        self._iteration = None
        self._run_state = {
            "image": layer,
            "source": layer.name,
            "params": params,
            "spec": spec,
            "label_shape": tuple(label_shape),
            "total": total,
            "done": 0,
            "volumes": {},
            "layer": None,
            "error": None,
        }
        data = layer.data
        rgb = bool(layer.rgb)

        def gen():
            # every error is caught and yielded: superqt swallows RuntimeErrors
            # (e.g. from torch) raised inside a generator worker
            try:
                for item in segment_stack(data, segment_fn, rgb=rgb, mode=mode, n_classes=spec.n_classes):
                    yield ("slice", item)
            except _Cancelled:
                yield ("cancelled", None)
            except Exception as exc:  # noqa: BLE001
                yield ("error", exc)

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._set_status(f"running on {layer.name!r}: 0/{total} slices")
        # Create (or reset) the output layer now, in the GUI thread, before the
        # worker competes for the GIL: building a layer makes many Qt calls, each of
        # which would wait for the busy worker thread to hand back the GIL.
        self._output_layer()
        if sync if sync is not None else self.synchronous:
            self.worker = "sync"
            try:
                for msg in gen():
                    self._on_yield(msg)
                    if self._cancel_requested and msg[0] == "slice":
                        self._on_aborted()
                        return self.output_layer
            finally:
                if self.worker == "sync":
                    self._on_finished()
            return self.output_layer

        worker = self._make_worker(gen, total=total, desc=f"VPTV {layer.name}", failure="Segmentation failed")
        self._timer_start()
        worker.start()
        return worker

    # ----------------------------------------------------------- worker events
    def _on_yield(self, msg):
        from napari.utils.notifications import show_error

        kind, payload = msg
        st = self._run_state
        if kind == "slice":
            item = payload
            out = self._output_layer()
            out.data[item.index] = item.labels.astype(out.data.dtype, copy=False)
            st["done"] = item.done
            st["volumes"][item.index] = np.asarray(item.volumes, dtype=float)
            self._update_metadata(out, complete=item.done == st["total"])
            self._set_status(
                f"{st['source']}: {item.done}/{st['total']} slices"
                + (f"; volumes {_fmt(item.volumes)}" if st["total"] == 1 else "")
            )
            # refresh / progress may process queued Qt events (e.g. an abort) here,
            # so nothing after these lines may overwrite the state
            out.refresh()
            self.slice_finished.emit(item)
            if self._pbar is not None:
                self._pbar.update(1)
        elif kind == "cancelled":
            self._cancel_requested = True
            self._on_aborted()
        elif kind == "error":
            st["error"] = payload
            where = ""
            if st["total"] > 1:
                where = f" (slice {st['done'] + 1} of {st['total']})"
            if st["layer"] is not None:
                self._update_metadata(st["layer"], complete=False, status=f"failed after {st['done']} of {st['total']} slices")
                st["layer"].name = self._free_name(f"{st['source']} VPTV (failed {st['done']}/{st['total']})", st["layer"])
            self._error(f"Segmentation failed{where}: {payload}", show_error)

    def _on_aborted(self):
        st = self._run_state
        if st.get("aborted_handled"):
            return
        st["aborted_handled"] = True
        n, m = st.get("done", 0), st.get("total", 0)
        out = st.get("layer")
        if out is not None and n < m:
            self._update_metadata(out, complete=False, status=f"cancelled after {n} of {m} slices")
            out.name = self._free_name(f"{st['source']} VPTV (cancelled {n}/{m})", out)
            self._set_status(f"cancelled after {n} of {m} slices")
        elif out is None:
            self._set_status("cancelled before the first slice finished; no output")
        else:
            self._set_status(f"{st['source']}: done ({m}/{m} slices) before cancel")

    def _on_finished(self):
        self._timer_stop()
        self._close_progress()
        st = self._run_state
        if st.get("error") is None and not self._cancel_requested and st.get("layer") is not None:
            if st["done"] == st["total"]:
                vol = st["layer"].metadata[METADATA_KEY]["volumes"]
                what = f"{st['total']} slices, mean volumes" if st["total"] > 1 else "volumes"
                self._set_status(f"done: {st['source']}; {what} {_fmt(vol)}")

    # ------------------------------------------------------------ output layer
    def _output_layer(self):
        """Create or reuse (first slice of a run) the tagged output Labels layer."""
        from napari_vptv.core.stack import label_dtype

        st = self._run_state
        if st["layer"] is not None and st["layer"] in self.viewer.layers:
            return st["layer"]
        source, image = st["source"], st["image"]
        shape, dtype = st["label_shape"], label_dtype(st["spec"].n_classes)
        data = np.zeros(shape, dtype=dtype)
        name_base = f"{source} VPTV"
        layer = self._find_output_layer(source)
        if layer is not None and layer.ndim == len(shape):
            layer.data = data
            layer.name = self._free_name(name_base, layer)
        else:
            layer = self.viewer.add_labels(
                data,
                name=self._free_name(name_base),
                scale=tuple(image.scale),
                translate=tuple(image.translate),
                opacity=0.5,
            )
        st["layer"] = layer
        self.output_layer = layer
        self._update_metadata(layer, complete=False)
        return layer

    def _update_metadata(self, layer, *, complete: bool, status: Optional[str] = None):
        st = self._run_state
        per = st["volumes"]
        volumes: List[float] = []
        if per:
            volumes = np.mean(np.stack(list(per.values())), axis=0).tolist()
        n, m = st["done"], st["total"]
        meta = {
            "kind": OUTPUT_KIND,
            "source": st["source"],
            "method": st["params"]["method"],
            "params": dict(st["params"]),
            "volume_spec": {
                "mode": st["spec"].mode,
                "volumes": None if st["spec"].volumes is None else st["spec"].volumes.tolist(),
                "lower": None if st["spec"].lower is None else st["spec"].lower.tolist(),
                "upper": None if st["spec"].upper is None else st["spec"].upper.tolist(),
            },
            "complete": bool(complete),
            "slices_done": n,
            "slices_total": m,
            "status": status or ("complete" if complete else f"running: {n} of {m} slices"),
            "volumes": volumes,
            "slice_volumes": {",".join(map(str, k)): v.tolist() for k, v in per.items()} if m > 1 else None,
        }
        md = dict(layer.metadata)
        md[METADATA_KEY] = meta
        layer.metadata = md

    # ------------------------------------------------------------------ status
    def _timer_start(self):
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll_iteration)
        self._timer.start()

    def _timer_stop(self):
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.stop()
            self._timer = None

    def _poll_iteration(self):
        it = self._iteration
        st = self._run_state
        if it is None or self.worker is None or self._cancel_requested:
            return
        self._set_status(
            f"{st['source']}: slice {min(st['done'] + 1, st['total'])}/{st['total']}, iteration {it[0]}/{it[1]}"
        )
