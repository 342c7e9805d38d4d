"""Named methods and their settings: what runs by default, with which settings.

The default
-----------
:data:`DEFAULT_METHOD` is ``"auto"``, the default of every entry point (the
:class:`~napari_vptv.options.SegmentOptions` fields, :func:`napari_vptv.api.segment_image`,
:func:`~napari_vptv.api.make_segment_fn`, :func:`~napari_vptv.api.evaluate_folder`,
``vptv segment / evaluate / demo``). :meth:`SegmentOptions.resolve
<napari_vptv.options.SegmentOptions.resolve>` turns it, once per image, into one of
the named methods below:

* a 3-class (or unset) colour image -> ``"vptv-adapted"`` (:data:`VPTV_ADAPTED`);
* 3-class volumes or bounds given (and no explicit preset) -> ``"vptv-unet"`` (its
  VPTV layer holds the network to them);
* ``preset="wbc"`` with volume settings -> ``"vptv"`` with the shipped colour model
  (:data:`WBC_COLOUR`);
* a grey image, another class count or ``preset="none"`` -> ``"vptv"`` with the
  k-means start (:data:`GENERIC`).

Solver settings given by the user (``epsilon``, ``tv_weight``, ``max_num_iter``,
``edge``) override the chosen method's; they never choose another method.

The named methods
-----------------
``"vptv-adapted"``
    The variational solver seeded by the shipped U-net: a colour model refitted on
    each image from the network's confident pixels, then one solve on the colours and
    the network's probabilities together (:func:`napari_vptv.core.wbc.adapt.adapted_segment`).
    Settings: :data:`VPTV_ADAPTED`. Also what ``method="vptv", preset="wbc"`` runs
    when no volumes are given.
``"vptv"``
    The variational solver (Algorithm 1). With the WBC preset and volume settings
    (a mode, fractions or bounds): the shipped colour model (:data:`WBC_COLOUR`);
    without a preset: k-means start (:data:`GENERIC`).
``"unet"`` / ``"vptv-unet"``
    The shipped white-blood-cell networks (plain softmax / VPTV-softmax head); their
    ε, λ and unrolled iterations come from each network's metadata; test-time
    augmentation and diameter: :data:`NETWORKS`.

Every white-blood-cell method then applies the cell rules of :data:`CELL_RULES`.

Where the numbers live
----------------------
Here, for every front end: the API passes them explicitly to ``core``. ``core/``
must not import this module (it sits below it), so the core functions that can be
called on their own keep their own keyword defaults for direct callers
(:func:`~napari_vptv.core.solver.segment.vptv_segment`,
:data:`napari_vptv.core.wbc.preset.WBC_DEFAULTS`, the constants of
:mod:`napari_vptv.core.wbc.adapt`); ``tests/test_presets.py`` checks that they equal
the values here. ``python -m napari_vptv.presets`` prints this table.

No napari, Qt or torch imports here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = [
    "DEFAULT_METHOD",
    "METHOD_NAMES",
    "PRESET_NAMES",
    "SolverSettings",
    "WBCColourSettings",
    "AdaptedSettings",
    "NetworkSettings",
    "CellRules",
    "GENERIC",
    "WBC_COLOUR",
    "VPTV_ADAPTED",
    "NETWORKS",
    "CELL_RULES",
    "settings_of",
    "describe",
]

#: The method every entry point runs unless told otherwise (resolved per image).
DEFAULT_METHOD = "auto"
#: Method names: ``"auto"`` and the named methods it resolves to.
METHOD_NAMES = ("auto", "vptv-adapted", "vptv", "unet", "vptv-unet")
#: Presets of the variational solver: ``"wbc"`` (white blood cells: 3 classes,
#: learned colour model, volume priors), ``"none"`` (k-means start), ``"auto"``
#: (``"wbc"`` for colour images with 3 or unset classes, else ``"none"``).
PRESET_NAMES = ("auto", "wbc", "none")


@dataclass(frozen=True)
class SolverSettings:
    """The generic variational solver (``"vptv"``, no preset): k-means start, the
    paper's settings for natural images (Algorithm 1, eq. 11)."""

    epsilon: float = 0.01
    tv_weight: float = 0.02
    edge: bool = False
    max_num_iter: int = 500
    similarity: str = "mean"
    em_update: bool = True
    n_classes: int = 2


@dataclass(frozen=True)
class WBCColourSettings:
    """``"vptv"`` with the WBC preset and volume settings: the shipped colour model
    (histogram likelihood fitted on the 90 training images), settings chosen by 5-fold
    cross-validation (``benchmarks/eval_wbc_cv.py``)."""

    similarity: str = "histogram"
    epsilon: float = 1.0
    tv_weight: float = 2.0
    edge: bool = False
    em_update: bool = False
    #: volume constraint when only ``volume_mode`` is left unset: the training masks'
    #: 2nd-98th percentile interval
    volume_mode: str = "interval"

    def solver_kwargs(self) -> Dict[str, Any]:
        """The :func:`~napari_vptv.core.wbc.preset.wbc_preset` solver keywords."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "volume_mode"}


@dataclass(frozen=True)
class AdaptedSettings:
    """``"vptv-adapted"``, the default for colour images: the colour model refitted on
    each image from the U-net's confident pixels, then the colours and the network's
    probabilities solved together (``benchmarks/eval_generalist.py``)."""

    #: entropic regularisation ε of both solves
    epsilon: float = 0.05
    #: TV weight λ of both solves
    tv_weight: float = 0.05
    #: iteration cap of both solves (more lets the EM updates drift from the network's start)
    max_num_iter: int = 20
    #: network whose probabilities seed the colour model (a fine-tuned model via ``model=``)
    network: str = "unet"
    #: test-time augmentation of that network: one plain pass (the mirror image did not help here)
    network_augment: int = 1
    #: weight of the network's negative log-probabilities next to the colour cost
    network_weight: float = 1.0
    #: Gaussian smoothing of the colours, as a fraction of the cell diameter
    colour_sigma_per_diameter: float = 1.0 / 150.0
    #: share of each class's own colour covariance in the combined solve, the rest their
    #: mean (the blurred rim of a small cell is not all given to the widest colour class)
    own_covariance_share: float = 0.5
    #: final labels: argmax of the combined solve's probabilities
    rounding: str = "argmax"

    def solver_kwargs(self) -> Dict[str, Any]:
        """The :func:`~napari_vptv.core.wbc.adapt.adapted_segment` keywords of these settings."""
        return dict(
            epsilon=self.epsilon,
            tv_weight=self.tv_weight,
            max_num_iter=self.max_num_iter,
            network_weight=self.network_weight,
            rounding=self.rounding,
            own_covariance_share=self.own_covariance_share,
        )


@dataclass(frozen=True)
class NetworkSettings:
    """``"unet"`` / ``"vptv-unet"``: what the networks' metadata does not set."""

    #: test-time augmentation: transforms averaged (1 none, 2 image + mirror, 8 all flips / turns)
    augment: int = 2
    #: cell diameter in pixels; 0 estimates it per image
    diameter: float = 0.0


@dataclass(frozen=True)
class CellRules:
    """Rules on white-blood-cell labels (every WBC method), see
    :mod:`napari_vptv.core.wbc.cell_rules`."""

    #: a cell region without a nucleus becomes background
    require_nucleus: bool = True
    #: a cell region too small for the estimated white-cell diameter becomes background
    white_cell_rule: bool = True


#: ``"vptv"`` without a preset
GENERIC = SolverSettings()
#: ``"vptv"`` with the WBC preset and volume settings
WBC_COLOUR = WBCColourSettings()
#: ``"vptv-adapted"``: the default for colour images
VPTV_ADAPTED = AdaptedSettings()
#: ``"unet"`` / ``"vptv-unet"``
NETWORKS = NetworkSettings()
#: every white-blood-cell method
CELL_RULES = CellRules()

_BY_METHOD = {
    "vptv-adapted": VPTV_ADAPTED,
    ("vptv", "wbc"): WBC_COLOUR,
    ("vptv", "none"): GENERIC,
    "unet": NETWORKS,
    "vptv-unet": NETWORKS,
}


def settings_of(method: str, preset: Optional[str] = None):
    """The settings object of a named method (and, for ``"vptv"``, its preset).

    >>> settings_of("vptv-adapted").epsilon
    0.05
    """
    key = (method, preset or "none") if method == "vptv" else method
    try:
        return _BY_METHOD[key]
    except KeyError:
        raise ValueError(
            f"no settings for method {method!r} with preset {preset!r}; the named methods are {METHOD_NAMES[1:]}"
        ) from None


def describe() -> str:
    """The named methods and their settings, as plain text."""
    lines = [f"default method: {DEFAULT_METHOD!r} (resolved per image; see napari_vptv.presets)"]
    for name, obj in (
        ("vptv-adapted", VPTV_ADAPTED),
        ("vptv, preset wbc", WBC_COLOUR),
        ("vptv, preset none", GENERIC),
        ("unet / vptv-unet", NETWORKS),
        ("cell rules", CELL_RULES),
    ):
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(obj).items())
        lines.append(f"{name}: {fields}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(describe())
