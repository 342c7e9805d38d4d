"""The settings half of the "VPTV segmentation" widget.

:class:`SegmentSettings` is a magicgui ``Container`` with the fields (method, preset,
classes, volumes, ε, λ, ...), their presets and their checks, and nothing that runs.
It turns the fields into the shared :class:`~napari_vptv.options.SegmentOptions`
(:meth:`SegmentSettings.segment_options`). Settings never change silently: a method
switch says which values it changed, restored settings are announced in a notice
with a "Reset to defaults" button, and Run is disabled (with the reason next to it)
while an input is invalid.

The defaults are the best measured ones: the variational solver with the WBC
preset's volume mode *auto (per image)* (:mod:`napari_vptv._widget_methods`), which
leaves volumes, ε and λ to the method, as the command line's default does. Its
colour model is seeded by the shipped U-net, or by the user's fine-tuned model
chosen under "Model". The controls themselves are built in
:mod:`napari_vptv._widget_controls`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from magicgui.widgets import Container

from ._help import wrap_tip
from ._outputs import class_names_for, legend_html, name_classes_in
from ._stack_run import current_plane
from ._widget_controls import (  # noqa: F401 - the controls' names, used by the widget and the tests
    AUGMENT_WIDGET_CHOICES,
    DEFAULT_SEED_LABEL,
    DEFAULT_SEED_NETWORK,
    EQUAL_LOWER,
    EQUAL_UPPER,
    INVALID_STYLE,
    KMEANS_INTERVAL,
    LABEL_EDGE,
    LABEL_EPSILON,
    LABEL_TV,
    METHOD_NET,
    METHOD_VPTV,
    METHODS,
    NETWORK_TIP,
    PRESET_CUSTOM,
    PRESET_KMEANS,
    PRESET_WBC,
    SEED_MODEL_TIP,
    STACK_SLICES,
    STACK_VOLUME,
    VOLUME_CHOICES,
    build_fields,
    fmt,
    shown_value,
    wrapped,
)
from ._widget_methods import VOLUME_AUTO, auto_description, network_choices, resolve_network
from .api import wbc_priors
from .options import SegmentOptions
from .user_models import SHIPPED, SHIPPED_LABELS


class SegmentSettings(Container):
    """The fields of the segmentation widget, their presets and their checks."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)  # the fields go into a scrolling body (_layout.dock_body)
        self.viewer = napari_viewer
        self._restoring = False
        self._network_chosen: Dict[bool, tuple] = {}  # is_network -> (label, name) chosen in that mode
        build_fields(self)
        self.method.changed.connect(self._on_method)
        self._network_chosen = {
            False: (self.network.current_choice, self.network.value),
            True: (SHIPPED_LABELS["vptv-unet"], "vptv-unet"),
        }
        self.network.changed.connect(self._on_network)
        self.preset.changed.connect(self._on_preset)
        self.volume_mode.changed.connect(self._update_visibility)
        self.volume_mode.changed.connect(self._on_volume_mode)
        self.n_classes.changed.connect(self._on_n_classes)
        self.measure.changed.connect(lambda *_: self._update_class_labels())
        self.estimate.changed.connect(lambda *_: self.estimate_volumes())
        self.reset_button.changed.connect(lambda *_: self.reset_to_defaults())
        for w in (self.volumes, self.lower, self.upper):
            w.changed.connect(lambda *_: self._mark_volume_fields())
        self._restoring = True  # the default method, silently
        try:
            self._on_method()
        finally:
            self._restoring = False

    def _persisted_widgets(self) -> Dict[str, Any]:
        # restore order matters: method / preset / n_classes callbacks rewrite the
        # volume fields (and ε, λ, edge), so those come first and the volume texts last
        return {
            "method": self.method,
            "network": self.network,
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
            "keep_previous": self.keep_previous,
            "measure": self.measure,
            "require_nucleus": self.require_nucleus,
            "white_cell_rule": self.white_cell_rule,
            "augment": self.augment,
            "volumes": self.volumes,
            "lower": self.lower,
            "upper": self.upper,
        }

    # ---------------------------------------------------------------- classes
    @property
    def is_network(self) -> bool:
        return METHODS[self.method.value] != "vptv"

    @property
    def is_auto(self) -> bool:
        """Whether the volume mode is *auto (per image)*: the method's own defaults."""
        return self.volume_mode.value == VOLUME_AUTO

    def _network_choices(self, *_):
        """The networks (Network method) or the seeds of the colour model (default method):
        there the shipped U-net is the default and the other choices are the user's models."""
        choices = network_choices()
        net = self.is_network
        if not net:
            choices = [(DEFAULT_SEED_LABEL, DEFAULT_SEED_NETWORK)] + [
                (label, name) for label, name in choices if name not in SHIPPED
            ]
        chosen = getattr(self, "_network_chosen", {}).get(net)  # (label, name)
        if chosen and chosen[1] not in {name for _, name in choices}:
            # a chosen model whose files went away stays chosen (the reason next to Run
            # says it is missing) instead of silently becoming another network
            choices.append(chosen)
        return choices

    def method_and_model(self):
        """``(method, model)`` of the chosen method / network (see :class:`SegmentOptions`).

        Raises ``ValueError`` when the chosen network's files are gone or unreadable.
        """
        if not self.is_network:
            if not self._seed_model_applies():
                return "vptv", ""
            model, _ = resolve_network(self.network.value)  # "" for the shipped U-net: the default
            return "vptv", model
        model, method = resolve_network(self.network.value)
        return method, model

    def _seed_model_applies(self) -> bool:
        """The default method (WBC preset, auto) seeds its colour model with a network."""
        return not self.is_network and self.preset.value == PRESET_WBC and self.is_auto

    def _reset_network_choices(self):
        """The model list of the current method, with that method's last choice."""
        label, name = self._network_chosen.get(self.is_network) or (None, None)
        self.network.reset_choices()  # models trained since the widget opened
        if name is not None and name in self.network.choices:
            self.network.value = name
        self._network_chosen[self.is_network] = (self.network.current_choice, self.network.value)
        self.network.label = "Network" if self.is_network else "Model"
        self.network.tooltip = wrap_tip(NETWORK_TIP if self.is_network else SEED_MODEL_TIP)

    def class_names(self):
        """Names of the classes the current settings produce."""
        wbc = self.is_network or self.preset.value == PRESET_WBC
        return class_names_for(int(self.n_classes.value), wbc)

    def _update_class_labels(self):
        names = self.class_names()
        order = ", ".join(names)
        # the measured cells' outlines are drawn too (WBC classes, "Measure cells" on)
        self.legend.value = legend_html(names, outline=bool(self.measure.value) and names == class_names_for(3, True))
        self.volumes.label = f"Volumes ({order})"
        self.lower.label = f"Lower bounds ({order})"
        self.upper.label = f"Upper bounds ({order})"

    # ------------------------------------------------------- preset / modes
    def _on_method(self, *_):
        before = self._solver_values()
        self._reset_network_choices()
        if self.is_network:
            self.n_classes.value = 3
            if self.preset.value == PRESET_KMEANS:
                self.preset.value = PRESET_WBC
            self.stack_mode.value = STACK_SLICES
        self.n_classes.enabled = not self.is_network
        self._apply_preset()
        self._update_visibility()
        if not self._restoring:
            self._announce_method_change(before, self._solver_values())

    def _solver_values(self) -> Dict[str, Any]:
        if self.is_auto:  # the fields do not apply; the method's own settings do
            return {
                "classes": self.n_classes.value,
                "volume mode": self.volume_mode.value,
                "auto": self.auto_note.value,
            }
        return {
            LABEL_EPSILON.lower(): self.epsilon.value,
            LABEL_TV.lower(): self.tv_weight.value,
            "classes": self.n_classes.value,
            "volume mode": self.volume_mode.value,
            "lower bounds": self.lower.value,
            "upper bounds": self.upper.value,
            "volumes": self.volumes.value,
        }

    def _announce_method_change(self, before, after):
        changed = []
        for k, value in after.items():
            if k == "auto":
                if before.get(k) != value:
                    changed.append(
                        "volume prior, boundary softness and smoothness: its own, per image (see Auto settings)"
                    )
            elif before.get(k) != value:
                old = before.get(k)
                both = isinstance(old, float) and isinstance(value, float)
                changed.append(f"{k} {old:g} → {value:g}" if both else f"{k} {value}")
        if self.is_network:
            changed.append(f"Max iterations and {LABEL_EDGE} do not apply (the network's own settings)")
        elif not self._uses_diameter():
            changed.append("cell diameter applies only to the networks and auto (per image)")
        self.show_notice(f"Method {self.method.value}: " + "; ".join(changed) + ".")

    def _on_network(self, *_):
        self._network_chosen[self.is_network] = (self.network.current_choice, self.network.value)
        self._update_visibility()

    def _on_volume_mode(self, *_):
        # a method-change notice describes the previous mode's settings: stale now
        if not self._restoring and self.notice.value.startswith("Method "):
            self.show_notice("")

    def _on_preset(self, *_):
        self._apply_preset()
        self._update_visibility()

    def _on_n_classes(self, *_):
        if self.preset.value == PRESET_WBC and self.n_classes.value != 3:
            self.preset.value = PRESET_CUSTOM
        elif self.preset.value == PRESET_KMEANS:
            self._apply_preset()
        if self.preset.value == PRESET_CUSTOM and not self._restoring:
            self._fit_volume_fields()
        self._update_class_labels()
        self._mark_volume_fields()

    def _fit_volume_fields(self):
        """Volume fields holding another number of values than Classes get values for
        that many classes (equal fractions; loose bounds), so that Run works at once."""
        k = int(self.n_classes.value)
        counts = {len([v for v in w.value.split(",") if v.strip()]) for w in (self.volumes, self.lower, self.upper)}
        if counts == {k}:
            return
        equal = [round(1.0 / k, 4)] * (k - 1)
        self.volumes.value = ", ".join(f"{v:.4g}" for v in equal + [round(1.0 - sum(equal), 4)])
        self.lower.value = fmt(np.full(k, EQUAL_LOWER))
        self.upper.value = fmt(np.full(k, EQUAL_UPPER))
        self._set_status(
            f"{k} classes: volumes set to equal fractions, bounds to {EQUAL_LOWER:g}-{EQUAL_UPPER:g} "
            "per class; enter your own"
        )

    def _auto_allowed(self) -> bool:
        """*auto (per image)* exists for the networks and the variational WBC preset."""
        return self.is_network or self.preset.value == PRESET_WBC

    def _uses_diameter(self) -> bool:
        """The networks, and the variational auto mode (its colour model comes from the U-net)."""
        return self.is_network or self.is_auto

    def _update_visibility(self, *_):
        if self.is_auto and not self._auto_allowed():
            self.volume_mode.value = "interval"  # calls this again
            self._set_status(f"{VOLUME_AUTO} is for the networks and the WBC preset; volume mode set to interval")
            return
        mode, auto = self.volume_mode.value, self.is_auto
        self.volumes.visible = mode == "exact"
        self.lower.visible = mode == "interval"
        self.upper.visible = mode == "interval"
        # auto: the method's tuned ε, λ (said in the note), not the fields'
        for w in (self.epsilon, self.tv_weight, self.estimate):
            w.visible = not auto
        self.auto_note.visible = auto
        if auto:
            try:
                method, _ = self.method_and_model()
                self.auto_note.value = auto_description(method, self.network.value)
            except ValueError as exc:
                self.auto_note.value = str(exc)
        self.edge.enabled = not self.is_network
        self.max_iter.enabled = not self.is_network and not auto  # auto: the method's own cap
        self.network.visible = self.is_network or self._seed_model_applies()
        self.diameter.enabled = self._uses_diameter()
        self.require_nucleus.enabled = (self.is_network or self.preset.value == PRESET_WBC) and (
            auto or mode == "none"
        )  # an exact / interval constraint wins over the rule
        self.white_cell_rule.enabled = self.require_nucleus.enabled  # it runs with the nucleus rule
        self.augment.enabled = self.is_network  # the variational auto mode's U-net runs without
        self._update_class_labels()
        self._mark_volume_fields()

    def _apply_preset(self):
        preset = self.preset.value
        if preset == PRESET_WBC:
            pri = wbc_priors("vptv-unet" if self.is_network else "vptv")
            self.n_classes.value = 3
            self.volumes.value = fmt(pri["volumes"])
            # the fields hold the fixed preset for the explicit modes; the default
            # mode leaves everything to the method, per image
            if pri.get("lower") is not None and pri.get("upper") is not None:
                self.lower.value = fmt(pri["lower"])
                self.upper.value = fmt(pri["upper"])
            else:
                self.lower.value = self.upper.value = ""
            self.volume_mode.value = VOLUME_AUTO
            for key, w in (("epsilon", self.epsilon), ("tv_weight", self.tv_weight), ("edge", self.edge)):
                if pri.get(key) is not None:
                    w.value = pri[key]
            self._set_status(
                f"WBC preset loaded: {VOLUME_AUTO}; the interval / exact values are the {pri['source']} priors"
            )
        elif preset == PRESET_KMEANS:
            # not while restoring saved settings: the saved volume texts follow
            if self.image.value is not None and not self._restoring:
                self.estimate_volumes()
        self._update_class_labels()
        self._mark_volume_fields()

    # ------------------------------------------------------ notice / defaults
    def show_notice(self, text: str):
        """Show a note that stays until the next change of method or reset."""
        self.notice.value = text
        self.notice.visible = bool(text)
        self.notice.native.setStyleSheet(
            "QLabel { background: #5a4a10; color: #ffe9a0; padding: 3px; }" if text else ""
        )

    def restore_or_default(self, defaults: Dict[str, Any], restore) -> list:
        """Restore the saved settings (``restore()``); announce what was restored."""
        self._restoring = True
        try:
            restored = restore()
        finally:
            self._restoring = False
        self._update_visibility()
        widgets = self._persisted_widgets()
        diff = [widgets[k] for k in restored if defaults.get(k) != widgets[k].value]
        if diff:  # the same as the defaults: nothing to tell
            shown = ", ".join(shown_value(w) for w in diff[:5]) + (
                f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            )
            self.show_notice(f"Settings of your last run restored: {shown}. 'Reset to defaults' undoes this.")
            self._set_status("ready (settings of the last run restored)")
        return restored

    def reset_to_defaults(self):
        """Set every remembered field back to its default value."""
        self._restoring = True
        try:
            for key, w in self._persisted_widgets().items():
                if w.value != self._defaults[key]:
                    w.value = self._defaults[key]
        finally:
            self._restoring = False
        self._on_method()
        self.show_notice("")
        self._set_status("defaults restored")

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
            from napari_vptv.core.solver.costs import kmeans_init, kmeans_labels
            from napari_vptv.core.solver.segment import prepare_image

            feats = prepare_image(self._current_slice(layer), -1 if layer.rgb else None)
            pixels = feats.reshape(feats.shape[0], -1).T.astype(np.float64)
            k = int(self.n_classes.value)
            means, _ = kmeans_init(pixels, k, seed=int(self.seed.value))
            frac = np.bincount(kmeans_labels(pixels, means), minlength=k) / pixels.shape[0]
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._error(f"Could not estimate volumes: {exc}", show_error)
            return None
        frac = np.clip(frac, 1e-3, None)
        frac = frac / frac.sum()
        self.volumes.value = fmt(frac)
        self.lower.value = fmt(np.clip(frac - KMEANS_INTERVAL, 0.0, 1.0))
        self.upper.value = fmt(np.clip(frac + KMEANS_INTERVAL, 0.0, 1.0))
        self._set_status(f"k-means fractions of the current slice: {fmt(frac)}")
        return frac

    def _current_slice(self, layer) -> np.ndarray:
        """The 2-D plane (plus colour) of ``layer`` at the viewer's current position."""
        return current_plane(self.viewer, layer)

    def _mark_volume_fields(self):
        """Mark volume fields red while they do not parse as a valid constraint."""
        err = None
        try:
            self.volume_spec()
        except ValueError as exc:
            err = str(exc)
        mode = self.volume_mode.value
        for w in (self.volumes, self.lower, self.upper):
            active = (w is self.volumes) == (mode == "exact") and mode in ("exact", "interval")
            try:
                w.native.setStyleSheet(INVALID_STYLE if err and active else "")
                w.tooltip = wrap_tip(err if err else "Per-class values in the order " + ", ".join(self.class_names()))
            except Exception:  # noqa: BLE001 - cosmetic only
                pass
        self._refresh_run_state()

    def _refresh_run_state(self, *_):
        """Hook of the running widget: enable Run only for valid inputs."""

    # ---------------------------------------------------------------- checks
    def check_inputs(self, scan_values: bool = True):
        """Check everything before a run; returns ``(layer, spec, params, mode)``.

        ``scan_values=False`` skips the scan of the pixel values for NaN (the live
        check while fields change). Raises ``ValueError`` with a sentence naming the
        problem.
        """
        import napari

        from napari_vptv.core.batch.stack import stack_layout

        layer = self.image.value
        if layer is None or layer not in self.viewer.layers or not isinstance(layer, napari.layers.Image):
            raise ValueError("No image layer selected: open an image (e.g. File > Open Sample > napari-vptv).")
        if getattr(layer, "multiscale", False):
            raise ValueError(f"Image layer {layer.name!r} is multiscale; VPTV needs a single-resolution image.")
        spec = self.volume_spec()
        params = self.parameters()
        mode = params["stack_mode"]
        data = layer.data
        if self.is_network and mode == "volume":
            raise ValueError("3-D volume mode is only available for the variational VPTV method.")
        if mode == "volume" and data.ndim - (1 if layer.rgb else 0) < 3:
            raise ValueError(f"3-D volume mode needs a stack (Z, Y, X); {layer.name!r} is 2-D.")
        stack_layout(data.shape, rgb=layer.rgb, mode=mode)
        if data.dtype == object or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            raise ValueError(f"Image layer {layer.name!r} has unsupported dtype {data.dtype}.")
        if (
            scan_values
            and isinstance(data, np.ndarray)
            and np.issubdtype(data.dtype, np.floating)
            and not np.all(np.isfinite(data))
        ):
            raise ValueError(f"Image layer {layer.name!r} contains NaN or infinite values.")
        if self.is_network:
            self._check_network(spec, params)
        if params["device"] != "cpu":
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"Device {params['device']!r} is not available on this machine; use 'cpu'.")
        self.segment_options(spec, params)  # checks the settings as a whole
        return layer, spec, params, mode

    def _check_network(self, spec, params):
        if spec.n_classes != 3:
            raise ValueError("The WBC networks segment 3 classes; set Classes to 3.")
        if params["method"] == "unet" and params["volume_mode"] in ("exact", "interval"):
            raise ValueError(
                f"{self.network.value!r} is a plain U-net without a volume layer: "
                f"use volume mode {VOLUME_AUTO!r} or 'none'."
            )
        if params["model"]:
            return  # a user's model: resolve_network read its metadata
        try:
            from napari_vptv.nn.weights import model_metadata

            model_metadata(params["method"])
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"The pretrained network {params['method']!r} is not available: {exc}") from None

    # --------------------------------------------------------------- values
    def volume_spec(self):
        """The entered volume constraint as a validated ``VolumeSpec``.

        In *auto (per image)* no constraint is entered: a spec of mode "none" (the
        method sets its own; :meth:`segment_options` passes none). Raises
        ``ValueError`` naming the problem and the classes by name.
        """
        from napari_vptv.core.solver.volumes import make_volume_spec

        mode = self.volume_mode.value
        k = int(self.n_classes.value)
        if self.is_auto:
            return make_volume_spec(k, "none")
        try:
            if mode == "exact":
                return make_volume_spec(k, "exact", volumes=self.volumes.value)
            if mode == "interval":
                return make_volume_spec(k, "interval", lower=self.lower.value, upper=self.upper.value)
            return make_volume_spec(k, "none")
        except ValueError as exc:
            raise ValueError(name_classes_in(str(exc), self.class_names())) from None

    def parameters(self) -> Dict[str, Any]:
        """The widget's settings as plain values (recorded in the output metadata).

        ``method`` is the method that runs (a network's architecture), ``model`` the
        ``.pt`` file of a user's network (else ""). In *auto (per image)*
        ``volume_mode`` is ``"auto"`` and the volumes, ε and λ are None: the method's own.
        """
        method, model = self.method_and_model()
        auto = self.is_auto
        return {
            "method": method,
            "model": model,
            "preset": self.preset.value,
            "n_classes": int(self.n_classes.value),
            "volume_mode": "auto" if auto else self.volume_mode.value,
            "volumes": None if auto else self.volumes.value,
            "lower": None if auto else self.lower.value,
            "upper": None if auto else self.upper.value,
            "epsilon": None if auto else float(self.epsilon.value),
            "tv_weight": None if auto else float(self.tv_weight.value),
            "edge": bool(self.edge.value),
            "max_num_iter": int(self.max_iter.value),
            "diameter": float(self.diameter.value),
            "seed": int(self.seed.value),
            "device": self.device.value,
            "stack_mode": "volume" if self.stack_mode.value == STACK_VOLUME else "slices",
            "require_nucleus": bool(self.require_nucleus.value),
            "white_cell_rule": bool(self.white_cell_rule.value),
            "augment": int(self.augment.value),
        }

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
        auto = params["volume_mode"] == "auto"  # None everywhere: api picks the method's defaults
        return SegmentOptions(
            method=params["method"],
            model=params["model"],
            preset="wbc" if params["preset"] == PRESET_WBC else "none",
            n_classes=spec.n_classes,
            volume_mode=None if auto else spec.mode,
            volumes=spec.volumes if spec.mode == "exact" and not auto else None,
            lower=spec.lower if spec.mode == "interval" and not auto else None,
            upper=spec.upper if spec.mode == "interval" and not auto else None,
            epsilon=params["epsilon"],
            tv_weight=params["tv_weight"],
            edge=None if net else params["edge"],
            max_num_iter=None if net or auto else params["max_num_iter"],
            seed=params["seed"],
            device=params["device"],
            diameter=params["diameter"],
            require_nucleus=params.get("require_nucleus", True),
            white_cell_rule=params.get("white_cell_rule", True),
            augment=params.get("augment", 2),
        )
