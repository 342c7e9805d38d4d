"""napari widget "Correct mask".

Snaps a rough Labels layer (instance labels, a binary mask, or class labels) to the
boundaries of an Image layer with VPTV; by default the size bias of the mask is
unknown (each boundary may move up to "Band" px, the image decides), or the area is
kept exactly / scaled by a known factor
(:func:`napari_vptv.correction.correct_image_iter`, the API's correction).

* The work is the napari-free generator ``correct_image_iter`` (the settings as a
  :class:`~napari_vptv.options.CorrectOptions`) run in a
  ``napari.qt.threading.thread_worker``; a ``napari.utils.progress`` bar counts the
  batched solves, Cancel stops after the current one (nothing is written then). The
  status line reports the mean area before / after and objects kept as given.
* Output: a preview Labels layer "<labels> corrected" (drawn as contours over the
  input) tagged ``metadata["vptv"]``
  (``{"kind": "correct_mask", "source": ..., "image": ..., "params": ...}``), with
  every object's area before / after in ``layer.features`` (hover, or **Table**:
  napari's Features table widget); running again for the same Labels layer replaces
  only that tagged layer's data. A user layer with the same name is never touched
  (the output becomes "<labels> corrected [2]").
* The input Labels layer is modified only by **Accept**: the corrected pixels are
  written into it as one step of that layer's undo history (Ctrl+Z in the layer
  undoes it) and the preview is removed. Accept refuses if the layer was edited
  after the run. **Discard** removes the preview. Both act on the preview of the
  Labels layer chosen in the widget (else the newest preview).
* 3-D Labels: *Stack* "3-D" corrects every id as one 3-D object, "slice by slice"
  every plane of the first axis on its own (the API's ``stack_mode``); the choice
  is shown only for 3-D layers.
* Bad inputs are shown as napari notifications and in the status line.

The preview layers and what Accept / Discard / Table do live in
:mod:`napari_vptv._correct_preview`.

Heavy imports (torch, the solver) happen inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["CorrectMaskWidget", "METADATA_KEY", "KIND"]

#: Key of ``layer.metadata`` marking the plugin's own output layers (shared with the
#: segmentation widget).
from . import _warmup
from ._common import METADATA_KEY, WidgetRunMixin, layer_id
from ._correct_preview import AFTER_COLOUR, BEFORE_COLOUR, BEFORE_KIND, CorrectPreviewMixin  # noqa: F401 - re-exported
from ._correct_report import changes_table, report_summary
from ._help import help_link, wrap_tooltips
from ._layout import Form, advanced_section, dock_body
from ._outputs import live_layer
from ._widget_controls import LABEL_EDGE, LABEL_EPSILON, LABEL_TV
from .core.correct.settings import CorrectSettings
from .options import CorrectOptions

#: the defaults of the numeric fields (the core's)
DEFAULTS = CorrectSettings()

#: ``metadata["vptv"]["kind"]`` of this widget's output layers.
KIND = "correct_mask"

MODEL_COLOUR = "colour model from the mask"
MODEL_NET = "VPTVU-net nucleus probability (WBC)"
MODELS = {MODEL_COLOUR: "colour", MODEL_NET: "vptv-unet"}

#: Tooltips of the controls that do not set their own (all wrapped, see _help.wrap_tooltips).
TIPS = {
    "image": "The Image layer the boundaries are snapped to (grey or RGB)",
    "labels": "The Labels layer to correct: instance labels, a binary mask or class labels. It changes only "
    "when you choose another one here, and is written to only by Accept",
    "model": f"What tells object from background: {MODEL_COLOUR} (colours inside vs. around each object) or "
    f"{MODEL_NET} (white blood cell nuclei)",
    "margin": "Room around each object that the solve sees, in pixels (0: chosen from the object's size)",
    "edge": "Weight the smoothness by the image's edges, e(x) = 1/(1 + ε'|∇(G_σ * I)|), so that boundaries "
    "prefer to follow edges of the image",
    "fill_holes": "Fill holes inside every corrected object",
    "max_iter": "Upper limit of the solver's iterations for each object (it stops earlier once converged)",
    "run_button": "Correct the chosen Labels layer; the result is a preview layer until Accept",
    "cancel_button": "Stop after the current object; nothing is written",
}
VOLUME_DEFAULT = "unknown bias (interval)"
VOLUME_CHOICES = {VOLUME_DEFAULT: "interval", "exact area": "exact", "known factor": "factor"}
STACK_DEFAULT = "3-D"
EDGE_DEFAULT = "as annotated (grey: half-max 2-D, rim 3-D; colour: gradient)"
EDGE_CHOICES = {EDGE_DEFAULT: None, "outer rim": "rim", "half-maximum": "half-max", "strongest gradient": "gradient"}
STACK_CHOICES = {STACK_DEFAULT: "volume", "slice by slice": "slices"}


def _engine(img, lab, rgb, options, report):
    """The correction generator; the VPTVU-net evidence is computed in the worker too."""
    from napari_vptv.correction import correct_image_iter

    if options.model == "vptv-unet" and not rgb:
        raise ValueError("The VPTVU-net costs need an RGB image layer.")
    return (yield from correct_image_iter(img, lab, options, channel_axis=-1 if rgb else None, report=report))


def _kind(layer):
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    return meta.get("kind") if isinstance(meta, dict) else None


def _is_ground_truth(layer) -> bool:
    meta = layer.metadata.get("napari_vptv_sample") if isinstance(layer.metadata, dict) else None
    return isinstance(meta, dict) and meta.get("role") == "ground_truth"


class CorrectMaskWidget(WidgetRunMixin, CorrectPreviewMixin, Container):
    """Dock widget "Correct mask".

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Attributes
    ----------
    synchronous : bool
        Run in the calling thread (tests, scripts); ``run(sync=True)`` for one call.
    worker : the running worker (``"sync"`` during a synchronous run) or None.
    output_layer : the Labels layer written by the last successful run.
    """

    OUTPUT_KIND = KIND
    CANCEL_NOTE = "Stop after the current object; no output is written."
    SETTINGS_NAME = "correct_mask"
    HELP_SECTION = "Correct mask widget"

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__(labels=False)  # the fields go into a scrolling body (_layout.dock_body)
        self.viewer = napari_viewer
        self.synchronous = False
        self.worker = None
        self.output_layer = None
        self._cancel_requested = False
        self._pbar = None
        self._run: Dict[str, Any] = {}
        # previews not yet accepted or discarded, the newest last: {"layer", "target", "given", "source"}
        self._previews: list = []

        self._build_choices()
        self._build_numbers()
        self.status = Label(label="Status", value="ready")
        self.status.native.setWordWrap(True)
        self.help_link = help_link(self.HELP_SECTION, self)
        self.body = self._build_body()
        for name, text in TIPS.items():
            getattr(self, name).tooltip = text
        wrap_tooltips(self.body)
        self._connect()
        self.reset_choices()
        self._update_stack_choice()
        _warmup.start()  # napari's first-use compiling, off the GUI thread
        # the last session's settings (see _common.settings_dir)
        if self._restore_settings():
            self._set_status("ready (settings of the last run restored)")

    def _build_choices(self):
        """The layer choices and the choice fields (mode, costs, area, edge, stack)."""
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=False)
        self.labels = ComboBox(label="Labels", choices=self._labels_choices, nullable=False)
        self.mode = ComboBox(
            label="Mode",
            choices=["objects", "semantic"],
            value="objects",
            tooltip="objects: one 2-phase VPTV per label id (ids kept, no merging); "
            "semantic: one multi-class VPTV on the whole image",
        )
        self.model = ComboBox(label="Costs", choices=list(MODELS), value=MODEL_COLOUR)
        self.volume_mode = ComboBox(
            label="Area",
            choices=list(VOLUME_CHOICES),
            value=VOLUME_DEFAULT,
            tooltip="unknown bias: the boundary may move up to 'band' px in or out, the "
            "image decides; exact: keep each area; factor: area × factor",
        )
        self.edge_position = ComboBox(
            label="Edge",
            choices=list(EDGE_CHOICES),
            value=EDGE_DEFAULT,
            tooltip="Where the outline goes across a nucleus's blurred edge: its outer, "
            "dimmer rim (as 3-D fluorescence stacks are annotated), halfway between "
            "background and interior (as 2-D fluorescence images are), or on the "
            "strongest gradient (as stained nuclei are). Outlines already on an edge are kept",
        )
        self.stack_mode = ComboBox(
            label="Stack",
            choices=list(STACK_CHOICES),
            value=STACK_DEFAULT,
            tooltip="3-D Labels: 3-D = every id is one 3-D object; slice by slice = "
            "every plane of the first axis corrected on its own (e.g. a time "
            "series or planes far apart)",
        )

    def _build_numbers(self):
        """The numeric fields and check boxes of the correction."""
        self.band = SpinBox(
            label="Band (px, 0 = auto)",
            min=0,
            max=1000,
            value=0,
            tooltip="unknown bias: the largest boundary error to correct; 0 = per object, "
            "half its equivalent radius within 4-6 px",
        )
        self.volume_factor = FloatSpinBox(
            label="Volume factor",
            min=0.1,
            max=10.0,
            step=0.01,
            value=DEFAULTS.volume_factor,
            tooltip="'known factor' mode: target area = mask area × factor (1.1: mask ~10 % too small)",
        )
        self.volume_tolerance = FloatSpinBox(
            label="Area tolerance",
            min=0.0,
            max=0.9,
            step=0.01,
            value=DEFAULTS.volume_tolerance,
            tooltip="unknown bias: also keep areas within (1 ± t) × given "
            "(0: no such limit); semantic: class volume interval",
        )
        self.margin = SpinBox(label="Margin (px, 0 = auto)", min=0, max=10000, value=0)
        self.mask_weight = FloatSpinBox(
            label="Trust in mask",
            min=0.0,
            max=10.0,
            step=0.05,
            value=DEFAULTS.mask_weight,
            tooltip="Cost β for leaving the given mask (costs are in [0, 1]); 0: the image alone decides the boundary",
        )
        self.epsilon = FloatSpinBox(
            label=LABEL_EPSILON,
            min=1e-4,
            max=10.0,
            step=0.001,
            value=DEFAULTS.epsilon,
            tooltip="Entropic regularisation ε (paper eq. 11): larger values give softer boundaries",
        )
        self.tv_weight = FloatSpinBox(
            label=LABEL_TV,
            min=0.0,
            max=10.0,
            step=0.005,
            value=DEFAULTS.tv_weight,
            tooltip="Weight λ of the total variation term (paper eq. 11): larger values "
            "give smoother, shorter boundaries",
        )
        self.edge = CheckBox(text=LABEL_EDGE, value=DEFAULTS.edge)
        self.fill_holes = CheckBox(text="Fill holes", value=DEFAULTS.fill_holes)
        self.max_iter = SpinBox(label="Iterations per solve", min=1, max=100000, value=DEFAULTS.max_num_iter)

    def _build_body(self):
        """The scrolling body: the fields in their groups, the buttons and the status."""
        return dock_body(
            self,
            [
                self.help_link,
                Form(
                    [
                        self.image,
                        self.labels,
                        self.stack_mode,
                        self.mode,
                        self.model,
                        self.volume_mode,
                        self.edge_position,
                        self.band,
                        self.volume_factor,
                        self.volume_tolerance,
                    ]
                ),
                *advanced_section(
                    self,
                    [
                        self.mask_weight,
                        self.margin,
                        self.epsilon,
                        self.tv_weight,
                        self.max_iter,
                        self.edge,
                        self.fill_holes,
                    ],
                ),
                *self._make_buttons(),
                Form([self.status]),
            ],
        )

    def _connect(self):
        """The viewer's layer list and the Labels choice to the widget's handlers."""
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self.reset_choices)
        ev.inserted.connect(self._on_inserted)
        ev.removed.connect(self._update_preview_buttons)
        self.labels.changed.connect(self._update_stack_choice)

    def reset_choices(self, *_):  # called by napari on layer changes
        super().reset_choices()
        body = getattr(self, "body", None)
        if body is not None:  # the fields sit in the scrolling body
            body.reset_choices()

    def _make_buttons(self):
        """Run / Cancel, and the preview's Accept / Discard / Table rows."""
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.accept_button = PushButton(
            text="Accept", enabled=False, tooltip="write the preview into the Labels layer (Ctrl+Z there undoes it)"
        )
        self.discard_button = PushButton(text="Discard", enabled=False, tooltip="remove the preview layer")
        self.table_button = PushButton(
            text="Table", enabled=False, tooltip="per-object area before / after in napari's Features table"
        )
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.accept_button.changed.connect(lambda *_: self.accept())
        self.discard_button.changed.connect(lambda *_: self.discard())
        self.table_button.changed.connect(lambda *_: self.show_table())
        rows = []
        for widgets in (
            [self.run_button, self.cancel_button],
            [self.accept_button, self.discard_button, self.table_button],
        ):
            row = Container(widgets=widgets, layout="horizontal", labels=False, label="")
            row.margins = (0, 0, 0, 0)
            rows.append(row)
        return rows

    def _update_stack_choice(self, *_):
        """The Stack choice is shown only for 3-D Labels layers."""
        layer = self.labels.value
        is_3d = layer is not None and getattr(layer, "ndim", 2) == 3
        self.stack_mode.visible = self.stack_mode.enabled = is_3d

    def _persisted_widgets(self) -> Dict[str, Any]:
        return {
            "stack_mode": self.stack_mode,
            "mode": self.mode,
            "model": self.model,
            "volume_mode": self.volume_mode,
            "edge_position": self.edge_position,
            "band": self.band,
            "volume_factor": self.volume_factor,
            "volume_tolerance": self.volume_tolerance,
            "margin": self.margin,
            "mask_weight": self.mask_weight,
            "epsilon": self.epsilon,
            "tv_weight": self.tv_weight,
            "edge": self.edge,
            "fill_holes": self.fill_holes,
            "max_iter": self.max_iter,
        }

    # ------------------------------------------------------------------ choices
    def _labels_choices(self, *_):
        import napari

        # our own outputs are valid inputs too (correct again); the newest first (the
        # default), ground truth last
        labels = [
            layer
            for layer in reversed(list(self.viewer.layers))
            if isinstance(layer, napari.layers.Labels) and _kind(layer) != BEFORE_KIND
        ]
        return [(layer.name, layer) for layer in sorted(labels, key=_is_ground_truth)]

    def _on_inserted(self, event):
        """A Labels layer added while no usable input is chosen (none, or a sample's ground
        truth) becomes the input; a chosen input is never switched behind the user's back."""
        import napari

        layer, current = event.value, self.labels.value
        if self.worker is not None or not isinstance(layer, napari.layers.Labels):  # worker: our output
            return
        if (
            current is not None
            and live_layer(self.viewer.layers, current) is not None
            and not _is_ground_truth(current)
        ):
            return
        if not _is_ground_truth(layer) and _kind(layer) not in (KIND, BEFORE_KIND):
            self.reset_choices()
            self.labels.value = layer

    # --------------------------------------------------------------- parameters
    def parameters(self) -> Dict[str, Any]:
        """The settings as fields of :class:`~napari_vptv.options.CorrectOptions` (kept
        in the output layer's metadata)."""
        return {
            "mode": self.mode.value,
            "model": MODELS[self.model.value],
            "volume_mode": VOLUME_CHOICES[self.volume_mode.value],
            "band": int(self.band.value) or None,  # 0: the per-object automatic band
            "volume_factor": float(self.volume_factor.value),
            "volume_tolerance": float(self.volume_tolerance.value),
            "margin": int(self.margin.value) or None,
            "mask_weight": float(self.mask_weight.value),
            "epsilon": float(self.epsilon.value),
            "tv_weight": float(self.tv_weight.value),
            "edge": bool(self.edge.value),
            "fill_holes": bool(self.fill_holes.value),
            "max_num_iter": int(self.max_iter.value),
            "stack_mode": STACK_CHOICES[self.stack_mode.value],
            "edge_position": EDGE_CHOICES[self.edge_position.value],
        }

    def _validate(self):
        import napari

        image, labels = self.image.value, self.labels.value
        if image is None or image not in self.viewer.layers or not isinstance(image, napari.layers.Image):
            raise ValueError("No Image layer selected: open the image whose mask you want to correct.")
        if labels is None or labels not in self.viewer.layers or not isinstance(labels, napari.layers.Labels):
            raise ValueError("No Labels layer selected: add the rough mask as a Labels layer.")
        if getattr(image, "multiscale", False) or getattr(labels, "multiscale", False):
            raise ValueError("Multiscale layers are not supported; use single-resolution data.")
        img = np.asarray(image.data)
        lab = np.asarray(labels.data)
        spatial = img.shape[:-1] if image.rgb else img.shape
        if lab.shape != spatial:
            raise ValueError(
                f"Labels layer {labels.name!r} has shape {lab.shape}, but image {image.name!r} has spatial "
                f"shape {spatial}; they must match pixel for pixel."
            )
        if len(spatial) not in (2, 3):
            raise ValueError(f"Only 2-D or 3-D images are supported, {image.name!r} has {len(spatial)} axes.")
        return image, labels, img, lab

    # ------------------------------------------------------------------ running
    def run(self, sync: Optional[bool] = None):
        """Validate the inputs and correct the chosen Labels layer.

        Returns the worker (threaded run), the output layer (synchronous run), or None
        if the inputs are invalid or a run is already going on.
        """
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:
            self._error("A correction is already running: wait for it or press Cancel.", show_warning)
            return None
        try:
            image, labels, img, lab = self._validate()
            params = self.parameters()
            options = CorrectOptions(**params)  # a bad value is reported before the worker starts
            # copies: the user may edit the layers while the worker runs
            report = []  # per-object area before / after, filled when the engine finishes
            given = lab.copy()  # also what Accept checks the layer against
            engine = _engine(img.copy(), given, bool(image.rgb), options, report)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._error(str(exc), show_error)
            return None
        self._save_settings()
        self._cancel_requested = False
        self._run = {
            "image": image.name,
            "image_id": layer_id(image),
            "source": labels.name,
            "labels_layer": labels,
            "params": params,
            "done": 0,
            "total": None,
            "finished": False,
            "report": report,
            "given": given,
        }

        def gen():
            # errors are yielded, not raised: superqt swallows some exceptions in generator workers
            try:
                while True:
                    try:
                        step = next(engine)
                    except StopIteration as stop:
                        yield ("result", stop.value)
                        return
                    yield ("progress", step)
            except Exception as exc:  # noqa: BLE001
                yield ("error", exc)

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        for button in (self.accept_button, self.discard_button, self.table_button):
            button.enabled = False
        self._set_status(f"correcting {labels.name!r} ...")
        if sync if sync is not None else self.synchronous:
            self.worker = "sync"
            try:
                for msg in gen():
                    self._on_yield(msg)
                    if self._cancel_requested:
                        engine.close()
                        self._on_aborted()
                        break
            finally:
                self._on_finished()
            return self.output_layer if self._run.get("finished") else None

        worker = self._make_worker(gen, total=0, desc=f"Correct {labels.name}", failure="Mask correction failed")
        worker.start()
        return worker

    # ------------------------------------------------------------ worker events
    def _on_yield(self, msg):
        from napari.utils.notifications import show_error

        kind, payload = msg
        st = self._run
        if kind == "progress":
            st["done"], st["total"] = payload.done, payload.total
            if self._pbar is not None:
                if self._pbar.total != payload.total:
                    self._pbar.total = payload.total
                self._pbar.n = payload.done
                self._pbar.refresh()
            what = "passes" if st["params"]["mode"] == "semantic" else "batched solves"
            self._set_status(f"{st['source']}: {payload.done}/{payload.total} {what}")
        elif kind == "result":
            if self._cancel_requested:
                return
            st["table"] = changes_table(st.get("report") or [])
            self._write_output(np.asarray(payload))
            st["finished"] = True
            changed = float(np.mean(np.asarray(payload) != st["given"]))
            self._set_status(
                f"preview: {self.output_layer.name!r} ({changed:.2%} of the pixels changed"
                + report_summary(st["table"])
                + "); Accept writes it into "
                f"{st['source']!r}, Discard removes it"
            )
        elif kind == "error":
            st["error"] = payload
            self._error(f"Mask correction failed: {payload}", show_error)

    def _on_aborted(self):
        if not self._run.get("finished"):
            st = self._run
            self._set_status(f"cancelled after {st.get('done', 0)} of {st.get('total') or '?'}; no output written")

    def _on_finished(self):
        self._close_progress()
        self._update_preview_buttons()
