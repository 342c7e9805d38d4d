"""The controls of the "VPTV segmentation" widget: their choices, labels and tooltips.

:func:`build_fields` creates them on a :class:`~napari_vptv._widget_fields.SegmentSettings`;
what they do when they change lives there. No computation here.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, PushButton, SpinBox

from ._layout import wrapped  # noqa: F401 - the widgets' name for it
from ._widget_methods import VOLUME_AUTO
from .options import SegmentOptions

METHOD_VPTV = "Variational VPTV"
METHOD_NET = "Network (WBC, pretrained)"
#: Method choice -> method; the network's own method (its architecture) comes from
#: the "Network" choice (:func:`~napari_vptv._widget_methods.resolve_network`).
METHODS = {METHOD_VPTV: "vptv", METHOD_NET: "vptv-unet"}
#: Volume-mode choices; VOLUME_AUTO = the method's own per-image defaults.
VOLUME_CHOICES = [VOLUME_AUTO, "interval", "exact", "none"]
#: test-time augmentation: (shown text, transforms averaged)
AUGMENT_WIDGET_CHOICES = [("image + mirror (2 passes)", 2), ("all 8 flips / turns (8 passes)", 8), ("none", 1)]

PRESET_WBC = "WBC (3 classes)"
PRESET_KMEANS = "estimate from image (k-means)"
PRESET_CUSTOM = "custom"

STACK_SLICES = "slice by slice"
STACK_VOLUME = "3-D volume (variational only)"

#: Bounds of every class when Classes changes under the custom preset (no constraint to speak of).
EQUAL_LOWER, EQUAL_UPPER = 0.01, 0.99
#: Half-width of the interval put around k-means fractions ("estimate from image").
KMEANS_INTERVAL = 0.05

#: Style of a field whose text does not parse (2 px: visible at a glance).
INVALID_STYLE = "QLineEdit { border: 2px solid #d04040; }"


def fmt(values) -> str:
    """``"0.77, 0.13, 0.1"``: numbers as the volume fields show them."""
    return ", ".join(f"{float(v):.3g}" for v in np.ravel(values))


def shown_value(widget) -> str:
    """``"Seed 7"``, ``"Measure cells (WBC classes) off"``: a field as the panel shows it."""
    name = widget.label or getattr(widget, "text", "") or ""
    value = widget.value
    if isinstance(value, bool):
        return f"{name} {'on' if value else 'off'}"
    if hasattr(widget, "current_choice"):
        return f"{name} {widget.current_choice}"
    return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"


#: The network whose probabilities seed the default method's per-image colour model.
DEFAULT_SEED_NETWORK = "unet"
SEED_MODEL_TIP = (
    "The network whose confident pixels seed the per-image colour model: the shipped U-net "
    "(default) or one of your fine-tuned models (Plugins › napari-vptv › Train on my images)"
)
NETWORK_TIP = "The shipped generalists and your own fine-tuned models (Plugins › napari-vptv › Train on my images)"
#: How the shipped default seed is listed under the default method.
DEFAULT_SEED_LABEL = "pretrained U-net (default)"

#: Plain names on the panel; the symbols of the method (paper eq. 11) are in the tooltips.
LABEL_EPSILON = "Boundary softness"
LABEL_TV = "Smoothness"
LABEL_EDGE = "Follow image edges"

#: The tooltip of every control (wrapped by :func:`~napari_vptv._help.wrap_tip`).
TIPS = {
    "image": "The Image layer to segment: grey or RGB, 2-D or a stack (Z / T leading axes)",
    "method": "The variational VPTV solver (default: with the WBC preset it refits a colour model on each "
    "image, seeded by a network; best measured on sources the networks never saw) or a pretrained "
    "network alone",
    "network": SEED_MODEL_TIP,
    "preset": f"{PRESET_WBC}: white blood cells (background, cytoplasm, nucleus) with tuned colour model and "
    f"volumes. {PRESET_KMEANS}: class fractions from k-means on the current slice. {PRESET_CUSTOM}: "
    "any number of classes and your own volumes",
    "n_classes": "Number of classes, background included (the WBC preset and the networks: 3)",
    "volume_mode": f"{VOLUME_AUTO}: the method's own tuned settings for each image (volume prior, boundary "
    "softness ε, smoothness λ), as `vptv segment` uses them: the best measured. interval: each "
    "class fraction between a lower and an upper bound; exact: fixed fractions; none: no volume "
    "constraint",
    "volumes": "Exact class fractions, comma-separated, summing to 1",
    "lower": "Per-class lower bounds of the class fractions, comma-separated",
    "upper": "Per-class upper bounds of the class fractions, comma-separated",
    "estimate": "Fill the volume fields with the k-means class fractions of the slice shown (exact) and ± 0.05 "
    "around them (interval)",
    "epsilon": "Entropic regularisation ε (paper eq. 11): larger values give softer, more uncertain "
    "boundaries; smaller ones sharper boundaries and a slower solve",
    "tv_weight": "Weight λ of the total variation term (paper eq. 11): larger values give smoother, shorter "
    "boundaries and remove small specks",
    "edge": "Weight the smoothness by the image's edges, e(x) = 1/(1 + ε'|∇(G_σ * I)|), so that boundaries "
    "prefer to follow edges of the image",
    "max_iter": "Upper limit of the solver's iterations per image (it stops earlier once converged)",
    "diameter": "Cell diameter in pixels for the networks and the variational auto mode's network (0 "
    "estimates it); also splits touching cells in the measurements",
    "seed": "Seed of the random initialisation (k-means): the same seed gives the same result",
    "device": "Where the computation runs: cpu, or cuda for an NVIDIA graphics card",
    "stack_mode": "Stacks: each 2-D slice on its own (any method), or the whole stack as one 3-D volume "
    "(variational only)",
    "keep_previous": "Checked: every run adds a new layer. Unchecked: a run replaces the plugin's own, untouched "
    "result of the same method and image. "
    "Renamed, duplicated or edited results are never replaced.",
    "require_nucleus": "White blood cell labels: a cell region whose nucleus is under 10 % of its area (a red "
    "cell or debris taken for cytoplasm) becomes background. Applies in volume mode auto / "
    "none (exact and interval constraints win)",
    "white_cell_rule": "White blood cell labels: a cell too small to be a white cell becomes background, "
    "e.g. a platelet or a purple speck. The size is judged against the white cells and "
    "the red cells of the same image. Works together with 'Cells need a nucleus'",
    "augment": "Networks: average over the image and its mirror image (default), all 8 flips / quarter turns, "
    "or none; costs that many network passes. About +1 pt on images from a lab the network never saw",
    "measure": "Per-cell areas, N/(N+C) ratio, nucleus lobes and shape in the table below, as a '… cells' "
    "Labels layer (outlines) and as numbers on the image",
    "reset_button": "Set every field back to its default value",
}


def build_fields(self) -> None:
    """Create the controls of :class:`~napari_vptv._widget_fields.SegmentSettings` as its attributes."""
    from ._help import wrap_tip

    defaults = SegmentOptions()
    self.image = ComboBox(label="Image", choices=self._image_choices, nullable=False)
    self.method = ComboBox(label="Method", choices=list(METHODS), value=METHOD_VPTV)
    self.network = ComboBox(label="Model", choices=self._network_choices, value=DEFAULT_SEED_NETWORK)
    self.preset = ComboBox(label="Preset", choices=[PRESET_WBC, PRESET_KMEANS, PRESET_CUSTOM], value=PRESET_WBC)
    self.n_classes = SpinBox(label="Classes", min=2, max=64, value=3)
    self.legend = wrapped(Label(label="Classes shown", value=""))
    self.volume_mode = ComboBox(label="Volume mode", choices=VOLUME_CHOICES, value=VOLUME_AUTO)
    self.auto_note = wrapped(Label(label="Auto settings", value=""))
    self.volumes = LineEdit(label="Volumes", value="0.77, 0.13, 0.10")
    self.lower = LineEdit(label="Lower bounds", value="")
    self.upper = LineEdit(label="Upper bounds", value="")
    self.estimate = PushButton(text="Estimate volumes (k-means)")
    self.epsilon = FloatSpinBox(label=LABEL_EPSILON, min=1e-4, max=10.0, step=0.001, value=0.01)
    self.tv_weight = FloatSpinBox(label=LABEL_TV, min=0.0, max=10.0, step=0.005, value=0.02)
    self.edge = CheckBox(text=LABEL_EDGE, value=False)
    self.max_iter = SpinBox(label="Max iterations", min=1, max=100000, value=500)
    self.diameter = FloatSpinBox(
        label="Cell diameter (px, 0 = auto)", min=0.0, max=10000.0, step=1.0, value=defaults.diameter
    )
    self.seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=defaults.seed)
    self.device = ComboBox(label="Device", choices=["cpu", "cuda"], value=defaults.device)
    self.stack_mode = ComboBox(label="Stacks", choices=[STACK_SLICES, STACK_VOLUME], value=STACK_SLICES)
    self.keep_previous = CheckBox(text="Keep previous results", value=True)
    self.require_nucleus = CheckBox(text="Cells need a nucleus", value=defaults.require_nucleus)
    self.white_cell_rule = CheckBox(text="Drop cells too small for a white cell", value=defaults.white_cell_rule)
    self.augment = ComboBox(label="Test-time augmentation", choices=AUGMENT_WIDGET_CHOICES, value=defaults.augment)
    self.measure = CheckBox(text="Measure cells (WBC classes)", value=True)
    self.reset_button = PushButton(text="Reset to defaults")
    for name, text in TIPS.items():
        getattr(self, name).tooltip = wrap_tip(text)
    self.notice = wrapped(Label(label="", value=""))
    self.notice.visible = False
    self.status = wrapped(Label(label="Status", value="ready"))
