"""The settings of a mask correction in one place: :class:`CorrectSettings`.

Imports nothing heavy (no scipy, no torch): the API layer builds one cheaply.

:func:`~napari_vptv.core.correct.mask.correct_mask` and
:func:`~napari_vptv.core.correct.mask.correct_mask_iter` take one (or keyword
overrides of its fields); its field defaults are the defaults of the correction.

>>> from napari_vptv.core.correct.settings import CorrectSettings
>>> CorrectSettings(volume_mode="exact").replace(tv_weight=0.1).tv_weight
0.1
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = [
    "CorrectSettings",
    "resolve_settings",
    "CORRECTION_MODES",
    "STACK_MODES",
    "COLOUR_SIMILARITIES",
    "VOLUME_MODES",
    "EDGE_POSITIONS",
]

CORRECTION_MODES = ("objects", "semantic")
#: 3-D masks: one 3-D object per id ("volume"), or every plane of axis 0 on its own ("slices")
STACK_MODES = ("volume", "slices")
COLOUR_SIMILARITIES = ("gaussian", "mahalanobis", "mean", "histogram")
#: how each object's volume ``V_1`` is set: unknown bias, the given area, area x factor
VOLUME_MODES = ("interval", "exact", "factor")
#: where the boundary goes across a nucleus's blurred edge: "rim" (the outer, dimmer
#: rim, as nuclei are annotated), "half-max" (halfway between the object's plateau
#: and the background), "gradient" (the strongest gradient)
EDGE_POSITIONS = ("rim", "half-max", "gradient")


@dataclass(frozen=True)
class CorrectSettings:
    """How a label mask is corrected (validated when made; frozen).

    The defaults are those of :func:`~napari_vptv.core.correct.mask.correct_mask`.
    Symbols are those of the paper (eq. 2 and 11) and of the module docstring of
    :mod:`napari_vptv.core.correct.mask`.

    Parameters
    ----------
    mode : {"objects", "semantic"}
        ``"objects"``: all objects in one batched two-phase VPTV solve over crops
        (a 3-D mask is corrected in true 3-D). ``"semantic"``: one multi-class VPTV
        on the whole image, class volumes from the mask's class fractions.
    volume_mode : {"interval", "exact", "factor"} or None
        How each object's volume ``V_1`` (eq. 2) is set. ``"interval"``: the size
        bias is unknown; the boundary may move up to ``band`` pixels in or out and
        the image decides where (``V_1`` between the areas of the mask eroded and
        dilated by ``band``). ``"exact"``: the given area. ``"factor"``: the given
        area times ``volume_factor``. None (default): ``"factor"`` if
        ``volume_factor != 1``, else ``"interval"``.
    volume_factor : float
        Known area bias for ``"factor"`` mode, e.g. 1.2 if the masks are ~20 % too small.
    area_tolerance : float or None
        Interval mode: also keep each area within ``(1 +- t) x`` the given area.
    volume_tolerance : float
        Older name of ``area_tolerance`` (used when that is None); in semantic mode
        the interval class volumes ``V (1 +- t)``.
    band : int or None
        Interval mode: the largest boundary error (pixels) to correct; also the depth
        beyond which the first inside / outside samples are taken. None (default):
        per object, half its equivalent radius clipped to 4-6 px (small nuclei move
        less); a number applies to every object.
    margin : int or None
        Pixels added around each object's bounding box for its crop (clipped at the
        image border). None: ``2 band + 6`` (``band`` = 6 if automatic).
    epsilon : float
        ``epsilon``, the entropic regularisation (eq. 11).
    tv_weight : float
        ``lambda``, weight of the (edge-weighted) TV term (eq. 11); costs are in [0, 1].
    edge : bool
        Edge-weighted TV, ``e(x) = 1/(1 + 10 |grad t|)`` on the evidence ``t``.
    similarity : {"gaussian", "mahalanobis", "mean", "histogram"}
        Semantic mode: class model (see :mod:`napari_vptv.core.solver.costs`).
    em_rounds : int
        Semantic mode: re-estimations of the class model from the corrected mask.
    mask_weight : float
        ``beta``: cost of leaving the prior mask ``M'`` (the given mask moved to the
        image's edge); a small trust that keeps the boundary in place where the
        evidence is ambiguous.
    fill_holes : bool
        Fill holes of a corrected object where the given object had none.
    smooth : float
        Gaussian sigma (pixels) applied to the image before the evidence is computed.
    max_num_iter : int
        ``T``, iterations per solve (Algorithm 1).
    seed : int
        Seed (the solver is deterministic; kept for API symmetry).
    device : str
        torch device (objects mode runs on the CPU).
    stack_mode : {"volume", "slices"}
        3-D masks, objects mode: ``"volume"`` (default) corrects every id as one 3-D
        object (3-D TV, one edge offset per object); ``"slices"`` corrects every
        plane of the first axis on its own (2-D objects with angular sectors, all
        planes in the same batched solves; ids are kept per plane). Ignored in 2-D.
    edge_position : {"rim", "half-max", "gradient"} or None
        Objects mode: where the boundary goes across a nucleus's blurred edge.
        ``"rim"``: the outer, dimmer rim (45 % of the way from the background to the
        nucleus's interior); ``"half-max"``: halfway; ``"gradient"``: the strongest
        gradient. None (default): as annotated
        (:func:`~napari_vptv.core.correct.mask.annotated_edge`): ``"half-max"`` for
        grey 2-D images, ``"rim"`` for grey 3-D stacks, ``"gradient"`` for colour.

    Raises
    ------
    ValueError
        A value out of its range or not one of its choices (the message names the field).
    """

    mode: str = "objects"
    volume_mode: Optional[str] = None
    volume_factor: float = 1.0
    area_tolerance: Optional[float] = None
    volume_tolerance: float = 0.0
    band: Optional[int] = None
    margin: Optional[int] = None
    epsilon: float = 0.01
    tv_weight: float = 0.05
    edge: bool = True
    similarity: str = "gaussian"
    em_rounds: int = 1
    mask_weight: float = 0.15
    fill_holes: bool = True
    smooth: float = 1.0
    max_num_iter: int = 300
    seed: int = 0
    device: str = "cpu"
    stack_mode: str = "volume"
    edge_position: Optional[str] = None

    def __post_init__(self):
        self._check_solver()
        self._check_choices()
        self._check_objects()

    def _check_solver(self):
        if self.mode not in CORRECTION_MODES:
            raise ValueError(f"mode must be one of {CORRECTION_MODES}, got {self.mode!r}")
        if self.similarity not in COLOUR_SIMILARITIES:
            raise ValueError(f"similarity must be one of {COLOUR_SIMILARITIES}, got {self.similarity!r}")
        if not np.isfinite(self.volume_factor) or self.volume_factor <= 0:
            raise ValueError(f"volume_factor must be a positive number, got {self.volume_factor}")
        if not np.isfinite(self.volume_tolerance) or not 0 <= self.volume_tolerance < 1:
            raise ValueError(f"volume_tolerance must be in [0, 1), got {self.volume_tolerance}")
        margin = self.margin
        if margin is not None and (int(margin) != margin or margin < 1):
            raise ValueError(f"margin must be a positive number of pixels or None (automatic), got {margin}")
        if not np.isfinite(self.epsilon) or self.epsilon <= 0:
            raise ValueError(f"epsilon must be a positive number, got {self.epsilon}")
        if not np.isfinite(self.tv_weight) or self.tv_weight < 0:
            raise ValueError(f"tv_weight must be >= 0, got {self.tv_weight}")
        if int(self.em_rounds) != self.em_rounds or self.em_rounds < 0:
            raise ValueError(f"em_rounds must be a non-negative integer, got {self.em_rounds}")
        if int(self.max_num_iter) < 1:
            raise ValueError(f"max_num_iter must be >= 1, got {self.max_num_iter}")

    def _check_choices(self):
        if self.stack_mode not in STACK_MODES:
            raise ValueError(f"stack_mode must be one of {STACK_MODES}, got {self.stack_mode!r}")
        if self.edge_position is not None and self.edge_position not in EDGE_POSITIONS:
            raise ValueError(f"edge_position must be one of {EDGE_POSITIONS} or None, got {self.edge_position!r}")
        if self.volume_mode is not None and self.volume_mode not in VOLUME_MODES:
            raise ValueError(f"volume_mode must be one of {VOLUME_MODES}, got {self.volume_mode!r}")
        t = self.area_tolerance
        if t is not None and (not np.isfinite(t) or not 0 <= t < 1):
            raise ValueError(f"area_tolerance must be in [0, 1), got {t}")

    def _check_objects(self):
        if not np.isfinite(self.mask_weight) or self.mask_weight < 0:
            raise ValueError(f"mask_weight must be >= 0, got {self.mask_weight}")
        if not np.isfinite(self.smooth) or self.smooth < 0:
            raise ValueError(f"smooth must be >= 0 (a Gaussian sigma in pixels), got {self.smooth}")
        band = self.band
        if band is not None and (int(band) != band or band < 1):
            raise ValueError(f"band must be a positive whole number of pixels, got {band}")

    def replace(self, **changes) -> "CorrectSettings":
        """A copy with some fields changed (validated again).

        Raises
        ------
        TypeError
            A name that is not a field (one line, with the nearest field name).
        """
        unknown = [name for name in changes if name not in _FIELDS]
        if unknown:
            raise TypeError(_unknown_message(unknown[0]))
        return dataclasses.replace(self, **changes) if changes else self

    def volume_target(self) -> Tuple[str, Optional[float]]:
        """``(volume_mode, area_tolerance)`` as used: ``volume_mode`` None is
        ``"factor"`` if ``volume_factor != 1``, else ``"interval"``; ``area_tolerance``
        None takes ``volume_tolerance`` (its older name) when that is > 0."""
        volume_mode = self.volume_mode
        if volume_mode is None:
            volume_mode = "factor" if self.volume_factor != 1.0 else "interval"
        area_tolerance = self.area_tolerance
        if area_tolerance is None and self.volume_tolerance > 0:
            area_tolerance = self.volume_tolerance
        return volume_mode, area_tolerance


_FIELDS = tuple(f.name for f in dataclasses.fields(CorrectSettings))


def _unknown_message(name: str) -> str:
    near = difflib.get_close_matches(str(name), _FIELDS, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown correction setting {name!r}{hint}; the settings are: {', '.join(_FIELDS)}"


def resolve_settings(settings: Optional[CorrectSettings] = None, overrides: Optional[dict] = None) -> CorrectSettings:
    """``settings`` (default: :class:`CorrectSettings`\\ ()) with the keyword
    ``overrides`` applied; TypeError for a name that is not a setting."""
    if settings is None:
        settings = CorrectSettings()
    elif not isinstance(settings, CorrectSettings):
        raise TypeError(f"settings must be a CorrectSettings, got {type(settings).__name__}")
    return settings.replace(**overrides) if overrides else settings
