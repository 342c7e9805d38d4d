"""napari widget "Train on my images": fine-tune a WBC network on corrected layers.

The user corrects a few segmentations with napari's Labels tools, selects the
Labels / Image pairs (or two folders of images and masks), names the model, sets a
time budget and presses Train. :func:`napari_vptv.nn.finetune.finetune` runs in a
``napari.qt.threading.thread_worker``; its per-step callback reaches the widget
through a Qt signal (queued into the GUI thread), which updates the progress bar
(the share of the time budget used), the phase (the cross-validation checks, then the
final training), the loss and a loss curve, so the viewer stays usable. Cancel stops
after the current step; nothing is saved then.

The model is saved only when the cross-validation shows that it beats the base on
the user's own held-out pairs ("Save even if not better" overrides this); the status
says plainly which, with the scores of both models (the numbers stored in the
model's metadata and printed by ``vptv finetune``).

The model is saved as ``NAME.pt`` + ``NAME.json`` in the user's model folder
(:func:`napari_vptv.user_models.user_models_dir`), never replacing a model unless
"Replace" is ticked; it then appears in the model lists (``--model NAME`` in the CLI).
Each Labels layer is listed with its own image: the Image layer it was computed from
(the plugin's ``metadata["vptv"]``, by layer id, else by name) or the one whose name
it carries ("wbc_001 corrected" ⟵ "wbc_001"). Other pairings of the same height and
width are listed only when "Show all same-size pairings" is ticked.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
)

from ._common import METADATA_KEY, WidgetRunMixin
from ._help import help_link, wrap_tooltips
from ._layout import Form, dock_body
from ._widget_controls import wrapped

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FinetuneWidget", "pair_choices"]

FROM_LAYERS = "layers in the viewer"
FROM_FOLDERS = "folders of images and masks"
_SPARK = "▁▂▃▄▅▆▇█"


def _sparkline(values: List[float], width: int = 40) -> str:
    """The last ``width`` values (each the mean of a slice) as block characters."""
    if not values:
        return ""
    chunks = np.array_split(np.asarray(values, dtype=float), min(width, len(values)))
    v = np.array([c.mean() for c in chunks])
    lo, hi = v.min(), v.max()
    idx = np.zeros(len(v), int) if hi - lo < 1e-12 else np.round((v - lo) / (hi - lo) * 7).astype(int)
    return "".join(_SPARK[i] for i in idx)


def _hw(layer) -> Optional[tuple]:
    shape = np.shape(layer.data)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    return tuple(shape) if len(shape) == 2 else None


#: Plugin outputs that are never a class mask (cell instances, numbers).
_NOT_MASKS = ("cells",)


def _names_image(mask_name: str, image_name: str) -> bool:
    """Whether ``mask_name`` carries ``image_name`` as a whole word ("wbc_001 corrected" carries
    "wbc_001", not "wbc_0012")."""
    at = mask_name.find(image_name)
    while at >= 0:
        end = at + len(image_name)
        before = mask_name[at - 1] if at else " "
        after = mask_name[end] if end < len(mask_name) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        at = mask_name.find(image_name, at + 1)
    return False


def own_image(lab, images):
    """``(image, how)``: the Image layer a Labels layer belongs to, or ``(None, "")``.

    The image it was computed from (the plugin's ``metadata["vptv"]``: the image's layer
    id, else its name), else the image whose name it carries (the longest such name);
    the sizes must agree.
    """
    from ._common import layer_id

    meta = lab.metadata.get(METADATA_KEY) if isinstance(lab.metadata, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    fits = [im for im in images if _hw(im) == _hw(lab)]
    uid = meta.get("image_id")
    by_id = [im for im in fits if uid is not None and layer_id(im) == str(uid)]
    if by_id:
        return by_id[0], "computed from"
    source = meta.get("image") or meta.get("source")
    by_name = [im for im in fits if source is not None and im.name == source]
    if by_name:
        return by_name[0], "computed from"
    named = sorted((im for im in fits if _names_image(lab.name, im.name)), key=lambda im: -len(im.name))
    return (named[0], "same name") if named else (None, "")


def pair_choices(layers, show_all: bool = False) -> List[tuple]:
    """``(text, (image_layer, labels_layer))``: each 2-D Labels layer with its own image
    (:func:`own_image`); with ``show_all`` also with every other Image layer of its size.

    Layers are compared by napari's layer id and names, never by object identity (a
    widget opened from the Plugins menu sees proxies of the layers).
    """
    import napari

    from ._common import same_layer

    images = [ly for ly in layers if isinstance(ly, napari.layers.Image) and _hw(ly)]
    out = []
    for lab in layers:
        if not isinstance(lab, napari.layers.Labels) or _hw(lab) is None:
            continue
        meta = lab.metadata.get(METADATA_KEY) if isinstance(lab.metadata, dict) else None
        if isinstance(meta, dict) and meta.get("kind") in _NOT_MASKS:
            continue
        mine, how = own_image(lab, images)
        if mine is not None:
            out.append((f"{lab.name}  ⟵  {mine.name}   ({how})", (mine, lab)))
        if show_all:
            out.extend(
                (f"{lab.name}  ⟵  {im.name}   (same size)", (im, lab))
                for im in images
                if _hw(im) == _hw(lab) and not same_layer(im, mine)
            )
    return out


#: Tooltips of the controls that do not set their own (all wrapped, see _help.wrap_tooltips).
TIPS = {
    "pairs_from": "Train on Labels / Image layers in the viewer, or on two folders of images and masks",
    "images_dir": "Folder of the images (PNG, TIFF, JPEG); the masks have the same file stems",
    "model_name": "Name of the new model (letters, digits, '.', '_', '-'); it then appears in the model lists "
    "of the segmentation widget and as --model NAME on the command line",
    "replace": "Overwrite an existing model of this name (otherwise a name in use is refused)",
    "train_button": "Check the pairs, then fine-tune in the background; the viewer stays usable",
}

#: The pair list: rows with room, the selection in the accent colour with bold text.
PAIRS_STYLE = (
    "QListWidget::item { padding: 3px; } "
    "QListWidget::item:selected { background: #2a82da; color: white; font-weight: bold; }"
)
PAIRS_ROWS = 8


def _list_style(select) -> None:
    """A taller pair list whose selected rows stand out."""
    native = select.native
    native.setStyleSheet(PAIRS_STYLE)
    native.setMinimumHeight(PAIRS_ROWS * max(native.sizeHintForRow(0), native.fontMetrics().height() + 8) + 4)


class _Relay:
    """A Qt signal living in the GUI thread: emitted from the worker, delivered queued."""

    def __init__(self, slot):
        from qtpy.QtCore import QObject, Signal

        class Relay(QObject):
            step = Signal(object)

        self.qobject = Relay()
        self.qobject.step.connect(slot)

    def emit(self, progress):
        self.qobject.step.emit(progress)


class FinetuneWidget(WidgetRunMixin, Container):
    """Dock widget "Train on my images" (see the module docstring).

    Attributes
    ----------
    worker : the running ``thread_worker`` or None.
    result : the last :class:`~napari_vptv.nn.finetune.FinetuneResult`.
    saved_path : path of the last saved model.
    losses : the loss of every step of the current / last run.
    phases : the phase of every step ("check 1/3", ..., "final").
    train_options : dict
        Extra keyword arguments of :func:`~napari_vptv.nn.finetune.finetune` (e.g.
        ``{"steps": 3, "recipe": FinetuneRecipe(batch=2)}`` in tests).
    """

    SETTINGS_NAME = "finetune"
    HELP_SECTION = "Fine-tune on your images"

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__(labels=False)  # the fields go into a scrolling body (_layout.dock_body)
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self.saved_path = None
        self.losses: List[float] = []
        self.phases: List[str] = []
        self._stop = threading.Event()
        self.train_options: Dict[str, Any] = {}
        self._pbar = None
        self._relay = _Relay(self._on_step)

        self._build_pair_controls()
        self._build_training_controls()
        buttons = self._build_run_controls()
        self.help_link = help_link(self.HELP_SECTION, self)
        self.body = dock_body(
            self,
            [
                self.help_link,
                Form(
                    [
                        self.pairs_from,
                        self.pairs,
                        self.show_all,
                        self.pairs_note,
                        self.images_dir,
                        self.masks_dir,
                        self.model_name,
                        self.base,
                        self.minutes,
                        self.replace,
                        self.keep_anyway,
                    ]
                ),
                buttons,
                Form([self.progress, self.live, self.curve, self.status]),
            ],
        )
        self._connect_signals()
        for name, text in TIPS.items():
            getattr(self, name).tooltip = text
        wrap_tooltips(self.body)
        self._restore_settings()
        self._on_pairs_from()

    def _build_pair_controls(self) -> None:
        """Where the image / mask pairs come from: Labels layers, or two folders."""
        self.pairs_from = ComboBox(label="Pairs from", choices=[FROM_LAYERS, FROM_FOLDERS], value=FROM_LAYERS)
        self.pairs = Select(
            label="Labels ⟵ Image",
            choices=self._pair_choices,
            tooltip="your corrected Labels layers (0 background, 1 cytoplasm, 2 nucleus), each "
            "with the image it was computed from or whose name it carries; select "
            "several with Ctrl / Shift",
        )
        _list_style(self.pairs)
        self.show_all = CheckBox(
            text="Show all same-size pairings",
            value=False,
            tooltip="also list each mask with every other image of its size (for masks "
            "that neither came from the plugin nor carry their image's name)",
        )
        self.pairs_note = wrapped(Label(label="", value=""))
        self.images_dir = FileEdit(label="Images folder", mode="d", visible=False)
        self.masks_dir = FileEdit(
            label="Masks folder",
            mode="d",
            visible=False,
            tooltip="masks with the images' file stems: grey 0/128/255 or labels 0/1/2",
        )

    def _build_training_controls(self) -> None:
        """The model's name, its base, the time budget and when to save it."""
        self.model_name = LineEdit(label="Model name", value="my-model")
        self.base = ComboBox(
            label="Start from",
            choices=self._base_choices,
            tooltip="a shipped generalist, or one of your models to continue training it",
        )
        self.minutes = FloatSpinBox(
            label="Time budget (min)",
            min=0.1,
            max=600.0,
            step=0.5,
            value=5.0,
            tooltip="the whole run: the checks on held-out pairs and the final training",
        )
        self.replace = CheckBox(text="Replace a model of this name", value=False)
        self.keep_anyway = CheckBox(
            text="Save even if not better",
            value=False,
            tooltip="by default the model is saved only when it beats the base model on "
            "your held-out pairs (cross-validation)",
        )

    def _build_run_controls(self) -> Container:
        """Train / Cancel (returned in a row), the progress bar, the live loss and the status line."""
        from .user_models import user_models_dir

        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="stop after the current step; nothing is saved"
        )
        self.run_button = self.train_button  # the mixin's name
        buttons = Container(widgets=[self.train_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self.live = Label(label="Phase / loss", value="")
        self.curve = Label(label="Loss curve", value="")
        self.status = Label(label="Status", value=f"ready; models are saved in {user_models_dir()}")
        self.status.native.setWordWrap(True)
        return buttons

    def _connect_signals(self) -> None:
        """The fields' and buttons' handlers; the pair list follows the viewer's layers."""
        self.pairs_from.changed.connect(self._on_pairs_from)
        self.show_all.changed.connect(self.reset_choices)
        self.pairs.changed.connect(self._update_pairs_note)
        self.train_button.changed.connect(lambda *_: self.train())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self.reset_choices)

    def _persisted_widgets(self) -> Dict[str, Any]:
        return {"pairs_from": self.pairs_from, "minutes": self.minutes}

    # ------------------------------------------------------------------ choices
    def _pair_choices(self, *_):
        return pair_choices(self.viewer.layers, show_all=bool(getattr(self, "show_all", None) and self.show_all.value))

    def reset_choices(self, *_):  # napari calls this on layer changes
        super().reset_choices()
        body = getattr(self, "body", None)
        if body is not None:  # the fields sit in the scrolling body
            body.reset_choices()
        self._update_pairs_note()

    def _update_pairs_note(self, *_):
        note = getattr(self, "pairs_note", None)
        if note is None:
            return
        n, k = len(self.pairs.choices), len(self.pairs.value or [])
        if n:
            note.value = f"{k} of {n} pairs selected"
        elif self.show_all.value:
            note.value = "no Labels layer has an image of its size"
        else:
            note.value = "no mask is paired with its image yet: tick 'Show all same-size pairings'"

    def _base_choices(self, *_):
        from .user_models import network_choices

        return network_choices()

    def _on_pairs_from(self, *_):
        layers = self.pairs_from.value == FROM_LAYERS
        self.pairs.visible = self.show_all.visible = self.pairs_note.visible = layers
        self.images_dir.visible = self.masks_dir.visible = not layers

    # ----------------------------------------------------------------- training
    def _target(self):
        from .user_models import check_model_name, user_model_path

        path = user_model_path(check_model_name(self.model_name.value))
        if not self.replace.value and (path.exists() or path.with_suffix(".json").exists()):
            raise ValueError(f"a model named {path.stem!r} exists: choose another name or tick 'Replace'")
        return path

    def _layer_samples(self):
        from .nn.finetune import samples_from_arrays

        chosen = list(self.pairs.value or [])
        if not chosen:
            raise ValueError("select at least one Labels ⟵ Image pair (your corrected segmentations)")
        names = [lab.name for _, lab in chosen]
        if len(set(names)) != len(names):
            raise ValueError("each Labels layer may be used once; select one image per Labels layer")
        # copies: painting on the layers during training does not change the data
        return samples_from_arrays(
            [np.array(im.data) for im, _ in chosen], [np.array(lab.data) for _, lab in chosen], names
        )

    def _job(self, samples, folders, base, minutes):
        from .finetuning import finetune
        from .nn.finetune import samples_from_folders
        from .user_models import resolve_model

        if folders is not None:
            samples = samples_from_folders(*folders)
        keep = "always" if self.keep_anyway.value else "better"
        return finetune(
            samples,
            base=resolve_model(base),
            minutes=minutes,
            callback=self._relay.emit,
            should_stop=self._stop.is_set,
            keep=keep,
            **self.train_options,
        )

    def train(self):
        """Check the inputs, then start the fine-tuning in a ``thread_worker``."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return None
        try:
            target = self._target()
            folders, samples = None, None
            if self.pairs_from.value == FROM_LAYERS:
                samples = self._layer_samples()
            else:
                folders = (self.images_dir.value, self.masks_dir.value)
        except (ValueError, FileNotFoundError) as exc:
            self._error(str(exc), show_error)
            return None
        self._save_settings()
        self._stop.clear()
        self.losses, self.phases, self.result, self.saved_path = [], [], None, None
        self.progress.value, self.live.value, self.curve.value = 0, "", ""
        self._target_path = target
        worker = thread_worker(self._job, start_thread=False)(
            samples, folders, self.base.value, float(self.minutes.value)
        )
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda exc: self._error(f"training failed: {exc}", show_error))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self._set_status("preparing (checking the masks against the base model)...")
        worker.start()
        return worker

    def cancel(self):
        """Stop after the current step; nothing is saved."""
        if self.worker is None:
            return
        self._stop.set()
        self.cancel_button.enabled = False
        self._set_status("stopping after the current step (nothing will be saved)...")

    # ---------------------------------------------------------------- callbacks
    def _on_step(self, progress):
        self.losses.append(progress.loss)
        self.phases.append(progress.phase)
        self.progress.max = 100
        self.progress.value = int(round(100 * progress.fraction))
        what = "checking on held-out pairs" if progress.phase.startswith("check") else "training the model to keep"
        self.live.value = f"{progress.phase} ({what}) · step {progress.step} · loss {progress.loss:.4f}"
        self.curve.value = _sparkline(self.losses)
        self._set_status("stopping..." if self._stop.is_set() else "training...")

    def _on_returned(self, result):
        from napari.utils.notifications import show_error, show_info, show_warning

        from .nn.finetune import describe_verdict, save_finetuned

        self.result = result
        if not result.cancelled:
            self.progress.value = self.progress.max
        verdict = describe_verdict(result)
        if not result.kept:
            self._set_status(verdict)
            (show_info if result.cancelled else show_warning)(f"training finished: {verdict}")
            return
        try:
            self.saved_path = save_finetuned(result, self._target_path, overwrite=bool(self.replace.value))
        except (OSError, ValueError) as exc:
            self._error(f"could not save the model: {exc}", show_error)
            return
        self._set_status(f"saved '{self.saved_path.stem}' in {self.saved_path.parent}: {verdict}")
        show_info(f"model '{self.saved_path.stem}' saved; choose it in the segmentation widget")
        for w in result.warnings:
            show_warning(w)
        self.base.reset_choices()

    def _on_finished(self, *_):
        self.worker = None
        self.train_button.enabled, self.cancel_button.enabled = True, False
