"""The controls of the "VPTV segmentation" widget: their choices, labels and tooltips.

:func:`build_fields` creates them on a :class:`~napari_vptv._widget_fields.SegmentSettings`;
what they do when they change lives there. No computation here.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, PushButton, SpinBox

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

#: Half-width of the interval put around k-means fractions ("estimate from image").
KMEANS_INTERVAL = 0.05

#: Style of a field whose text does not parse (2 px: visible at a glance).
INVALID_STYLE = "QLineEdit { border: 2px solid #d04040; }"


def wrapped(label: Label) -> Label:
    """``label`` word-wrapped, left-aligned and as wide as its column (a wrapped QLabel
    otherwise takes a narrow width and sits centred)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    return label


def fmt(values) -> str:
    """``"0.77, 0.13, 0.1"``: numbers as the volume fields show them."""
    return ", ".join(f"{float(v):.3g}" for v in np.ravel(values))


#: The network whose probabilities seed the default method's per-image colour model.
DEFAULT_SEED_NETWORK = "unet"
SEED_MODEL_TIP = ("The network whose confident pixels seed the per-image colour model: the shipped U-net "
                  "(default) or one of your fine-tuned models (Plugins › napari-vptv › Train on my images)")
NETWORK_TIP = ("The shipped generalists and your own fine-tuned models "
               "(Plugins › napari-vptv › Train on my images)")
#: How the shipped default seed is listed under the default method.
DEFAULT_SEED_LABEL = "pretrained U-net (default)"


def build_fields(self) -> None:
    """Create the controls of :class:`~napari_vptv._widget_fields.SegmentSettings` as its attributes."""
    defaults = SegmentOptions()
    self.image = ComboBox(label="Image", choices=self._image_choices, nullable=False)
    self.method = ComboBox(label="Method", choices=list(METHODS), value=METHOD_VPTV,
                           tooltip="The variational VPTV solver (default: with the WBC preset it refits a "
                                   "colour model on each image, seeded by the pretrained U-net; best measured "
                                   "on sources the networks never saw) or a pretrained network alone")
    self.network = ComboBox(label="Model", choices=self._network_choices, value=DEFAULT_SEED_NETWORK,
                            tooltip=SEED_MODEL_TIP)
    self.preset = ComboBox(label="Preset", choices=[PRESET_WBC, PRESET_KMEANS, PRESET_CUSTOM], value=PRESET_WBC)
    self.n_classes = SpinBox(label="Classes", min=2, max=64, value=3)
    self.legend = wrapped(Label(label="Classes shown", value=""))
    self.volume_mode = ComboBox(
        label="Volume mode", choices=VOLUME_CHOICES, value=VOLUME_AUTO,
        tooltip=f"{VOLUME_AUTO}: the method's own tuned settings for each image (volume prior, ε, λ), as "
                "`vptv segment` uses them: the best measured. interval / exact / none: your values.")
    self.auto_note = wrapped(Label(label="Auto settings", value=""))
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
    self.diameter = FloatSpinBox(label="Cell diameter (px, 0 = auto)", min=0.0, max=10000.0, step=1.0,
                                 value=defaults.diameter,
                                 tooltip="Cell diameter in pixels for the networks and the variational "
                                         "auto mode's U-net (0 estimates it); also splits touching cells "
                                         "in the measurements")
    self.seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=defaults.seed)
    self.device = ComboBox(label="Device", choices=["cpu", "cuda"], value=defaults.device)
    self.stack_mode = ComboBox(label="Stacks", choices=[STACK_SLICES, STACK_VOLUME], value=STACK_SLICES)
    self.keep_previous = CheckBox(text="Keep previous results (new layer per run)", value=True,
                                  tooltip="Unchecked: a run replaces the plugin's own, untouched result of "
                                          "the same method and image. Renamed, duplicated or edited "
                                          "results are never replaced.")
    self.require_nucleus = CheckBox(text="Cells need a nucleus", value=defaults.require_nucleus,
                                    tooltip="White blood cell labels: a cell region whose nucleus is under "
                                            "10 % of its area (a red cell or debris taken for cytoplasm) "
                                            "becomes background. "
                                            "Applies in volume mode auto / none (exact and interval "
                                            "constraints win)")
    self.augment = ComboBox(label="Test-time augmentation", choices=AUGMENT_WIDGET_CHOICES,
                            value=defaults.augment,
                            tooltip="Networks: average over the image and its mirror image (default), all "
                                    "8 flips / quarter turns, or none; costs that many network passes. "
                                    "About +1 pt on images from a lab the network never saw")
    self.measure = CheckBox(text="Measure cells (WBC classes)", value=True,
                            tooltip="Per-cell areas, N/(N+C) ratio, nucleus lobes and shape in the "
                                    "table below and as a '… cells' Labels layer")
    self.reset_button = PushButton(text="Reset to defaults")
    self.notice = wrapped(Label(label="", value=""))
    self.notice.visible = False
    self.status = wrapped(Label(label="Status", value="ready"))
