"""Correct an existing label mask with VPTV (no napari, no Qt).

A user has a rough mask of nuclei or cells (thresholding, another tool, a quick
hand drawing) -- usually biased, too fat or too thin everywhere by an unknown
amount -- and wants it snapped to the image's boundaries without objects merging
or vanishing. The volume constraint of VPTV (the paper's eq. 2 / 11) makes this a
bounded problem: the mask gives each object's volume interval (or its exact area /
a known factor), the image's evidence places the boundary.

>>> from napari_vptv.core.correct.mask import correct_mask
>>> corrected = correct_mask(image, rough_labels)                     # doctest: +SKIP
>>> corrected = correct_mask(image, rough_labels, CorrectSettings(band=10))  # doctest: +SKIP

The settings (mode, volume constraint, ``epsilon``, ``lambda``, ...) and their
defaults are in one place, :class:`~napari_vptv.core.correct.settings.CorrectSettings`.

Two modes:

``"objects"`` (instance labels, or a binary mask = one object)
    All objects in one batched VPTV solve over their crops, with per-object
    contrast-normalised evidence (:mod:`napari_vptv.core.correct.objects`).
``"semantic"`` (e.g. background / cytoplasm / nucleus)
    One multi-class VPTV on the whole image; class ``i``'s volume is its fraction in
    the given mask, the class models are estimated from the mask.

Method of the objects mode
--------------------------
Per object (crop ``Omega``, given object ``M``, signed distance ``sd`` to its
boundary) the smoothed image is projected on the Fisher direction between the
object's deep core and a ring outside it (beyond ``band``). The *edge offset*
``o`` -- the level set ``{sd = o}``, ``|o| <= band``, with the strongest mean
gradient of that projection (2-D: per angular sector, pulled towards the whole
object's) -- says where the image's edge lies; the prior ``M' = {sd < o}`` is the
given mask moved there. The evidence ``t(x)`` is the projection (refitted)
between a thin core just inside and a thin ring just outside that edge, scaled so
their medians are 1 and 0: the material adjacent to the object sets the outside
level. The costs are

``c_1 = clip(1 - t, 0, 1) + beta [x not in M']``, ``c_0 = clip(t, 0, 1) + beta [x in M']``

(exact / factor modes: ``M' = M``), so the boundary goes where ``t = 1/2`` (the
half-maximum edge of a blurred nucleus) unless that is ambiguous; per-object
scaling treats dim and bright nuclei alike. Other objects' pixels are forbidden
for the object class. All crops (each cut to the box of the pixels the object may
take) are padded and solved as one batch by Algorithm 1 (eq. 11 with the volume
interval or ``U(V)``); labels are ``u_1 > 1/2`` with the count clipped to the volume
bounds, holes inside ``M`` filled, components not touching ``M`` dropped; a pixel
two objects claim goes to the larger ``u_1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np

from ..solver.segment import prepare_image
from .objects import ObjectCorrection, correct_objects_iter
from .semantic import semantic_iter
from .settings import CORRECTION_MODES, EDGE_POSITIONS, STACK_MODES, VOLUME_MODES, CorrectSettings, resolve_settings

__all__ = [
    "correct_mask",
    "correct_mask_iter",
    "run_correction",
    "CorrectSettings",
    "CorrectionProgress",
    "ObjectCorrection",
    "CORRECTION_MODES",
    "VOLUME_MODES",
    "STACK_MODES",
    "EDGE_POSITIONS",
    "annotated_edge",
]


@dataclass(frozen=True)
class CorrectionProgress:
    """Progress report yielded by :func:`correct_mask_iter` after each object.

    Attributes
    ----------
    done : objects (or, in semantic mode, solver passes) finished so far
    total : number of objects / passes
    label : label id just corrected (semantic mode: 0)
    """

    done: int
    total: int
    label: int


# ----------------------------------------------------------------------------- checks
def _check_mask(mask, spatial_shape) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.int32)
    elif m.dtype == object or not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
        raise ValueError(f"mask must be an integer label array, got dtype {m.dtype}")
    elif np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)):
            raise ValueError("mask contains NaN or infinite values; it must be an integer label array")
        if not np.all(m == np.round(m)):
            raise ValueError(
                f"mask is a float array with non-integer values (dtype {m.dtype}); give integer labels "
                "(e.g. threshold a probability map first)"
            )
    if m.shape != tuple(spatial_shape):
        raise ValueError(
            f"mask shape {m.shape} does not match the image's spatial shape {tuple(spatial_shape)} "
            "(is channel_axis right?)"
        )
    if m.min() < 0:
        raise ValueError(f"mask must hold non-negative label ids, got minimum {m.min()}")
    if m.max() > np.iinfo(np.int64).max // 2:
        raise ValueError("mask label ids are too large")
    if not np.any(m):
        raise ValueError("mask is empty: it contains no labelled pixels (all values are 0)")
    return m.astype(np.int64, copy=False)


def _check_evidence(evidence, spatial, mode):
    if evidence is None:
        return None
    ev = np.asarray(evidence, dtype=np.float32)
    want = tuple(spatial) if mode == "objects" else (3,) + tuple(spatial)
    if ev.shape != want:
        raise ValueError(f"evidence must have shape {want}, got {ev.shape}")
    if not np.all(np.isfinite(ev)) or ev.min() < 0 or ev.max() > 1:
        raise ValueError("evidence must hold probabilities in [0, 1]")
    return ev


def correct_mask_iter(
    image,
    mask,
    settings: Optional[CorrectSettings] = None,
    *,
    channel_axis: Optional[int] = None,
    evidence: Optional[np.ndarray] = None,
    report: Optional[list] = None,
    **overrides,
) -> Generator[CorrectionProgress, None, np.ndarray]:
    """Generator version of :func:`correct_mask`.

    Yields a :class:`CorrectionProgress` after every batched solve (objects mode) or
    solver pass (semantic mode) and returns the corrected labels
    (``StopIteration.value``). Stopping the generator early (e.g. a Cancel button)
    leaves the inputs untouched. Parameters: see :func:`correct_mask`.
    """
    s = resolve_settings(settings, overrides)
    volume_mode, area_tolerance = s.volume_target()
    features = prepare_image(image, channel_axis)
    spatial = features.shape[1:]
    edge_position = s.edge_position
    if edge_position is None:
        edge_position = annotated_edge(features.shape[0], len(spatial))
    m, out_dtype = _check_mask(mask, spatial), _out_dtype(mask)
    model_prob = _check_evidence(evidence, spatial, s.mode)
    solver_kw = dict(epsilon=s.epsilon, tv_weight=s.tv_weight, edge=s.edge, max_num_iter=s.max_num_iter)
    if s.mode == "semantic":
        kw = dict(
            volume_factor=s.volume_factor, volume_tolerance=s.volume_tolerance, em_rounds=s.em_rounds, seed=s.seed
        )
        gen = semantic_iter(
            features, m, model_prob, similarity=s.similarity, device=s.device, out_dtype=out_dtype, **kw, **solver_kw
        )
        return (yield from _relay(gen))

    volume_kw = dict(volume_mode=volume_mode, volume_factor=s.volume_factor, area_tolerance=area_tolerance)
    band = None if s.band is None else int(s.band)
    object_kw = dict(band=band, margin=s.margin, mask_weight=s.mask_weight, smooth=s.smooth)
    gen = _objects_iter(
        features,
        m,
        stack_mode=s.stack_mode,
        out_dtype=out_dtype,
        report=report,
        prob=model_prob,
        fill_holes=s.fill_holes,
        edge_position=edge_position,
        **object_kw,
        **volume_kw,
        **solver_kw,
    )
    return (yield from gen)


def annotated_edge(n_channels, ndim):
    """The edge position of ``edge_position=None`` ("as annotated") for an image with
    ``n_channels`` channels and ``ndim`` spatial axes.

    Where annotators outline nuclei, measured on annotated nuclei
    (``benchmarks/edge_profile_nuclei.py``, ``docs/correct.md``): grey 2-D images at
    the half-maximum (level 0.49 of the step from the background to the interior),
    grey 3-D stacks further out, on the dimmer outer rim (level 0.36), stained nuclei
    in colour on the strongest gradient.
    """
    if n_channels > 1:
        return "gradient"
    return "rim" if ndim >= 3 else "half-max"


def _out_dtype(mask):
    """The dtype of the corrected labels: the mask's for integer masks, else int32."""
    mask_in = np.asarray(mask)
    return mask_in.dtype if np.issubdtype(mask_in.dtype, np.integer) else np.int32


def _compact_ids(m, planes):
    """Compact ids ``1..n`` of the mask's values (ids may be large and sparse) and the
    table mapping them back; ``planes``: one id per object per plane of axis 0."""
    values, inverse = _unique_inverse(m)
    if values[0] != 0:
        values = np.concatenate([[0], values])
        inverse = inverse + 1
    compact = inverse.reshape(m.shape)
    if planes:
        n = values.size - 1
        z = np.arange(m.shape[0]).reshape((-1,) + (1,) * (m.ndim - 1))
        compact = np.where(compact > 0, compact + n * z, 0)
        values = np.concatenate([[0], np.tile(values[1:], m.shape[0])])
    return compact.astype(np.int32 if values.size < 2**31 else np.int64), values


def _unique_inverse(m):
    """``np.unique(m, return_inverse=True)`` of non-negative integer labels: for ids below
    the pixel count (a table no larger than the mask) from a table of the ids present,
    without sorting the pixels."""
    if m.size == 0 or m.max() >= max(m.size, 1 << 16):
        return np.unique(m, return_inverse=True)
    present = np.bincount(m.ravel()) > 0
    return np.flatnonzero(present).astype(m.dtype), (np.cumsum(present) - 1)[m.ravel()]


def _objects_iter(features, m, *, stack_mode, out_dtype, report, **engine_kw):
    """Objects mode: all objects (slice-by-slice stacks: all objects of all planes) in batched solves."""
    from scipy import ndimage as ndi

    planes = stack_mode == "slices" and m.ndim == 3
    compact, values = _compact_ids(m, planes)
    slices = ndi.find_objects(compact)
    ids = [i + 1 for i, s in enumerate(slices) if s is not None]
    engine = correct_objects_iter(features, compact, ids, slices, planes=planes, **engine_kw)
    out, rep = yield from _relay(engine)
    if report is not None:
        report.extend(
            ObjectCorrection(int(values[r.label]), r.area_before, r.area_after, r.status, r.moved_px) for r in rep
        )
    return values[out].astype(out_dtype)


def _relay(engine):
    """Yield the engine's ``(done, total)`` as :class:`CorrectionProgress`; return its value."""
    while True:
        try:
            done, total = next(engine)
        except StopIteration as stop:
            return stop.value
        yield CorrectionProgress(done, total, 0)


#: the docstring of :func:`correct_mask` (kept apart: the function stays short)
_CORRECT_MASK_DOC = """Snap a rough label mask to the image's boundaries; fixes an unknown size bias.

Parameters
----------
image : ndarray
    2-D or 3-D image, grey (e.g. DAPI) or with a channel axis (``channel_axis``).
mask : ndarray of int (or bool)
    Instance labels (0 = background), a binary mask (one object), or -- with
    ``mode="semantic"`` -- class labels such as 0 / 1 / 2. Same spatial shape as
    ``image``. Float arrays are accepted only if they hold whole numbers.
settings : CorrectSettings, optional
    How to correct: the mode, the volume constraint, the solver's ``epsilon``,
    ``lambda`` (``tv_weight``) and ``T`` (``max_num_iter``), the trust ``beta`` in the
    mask (``mask_weight``), where the edge lies, ... -- every field, its default and
    its meaning are in :class:`~napari_vptv.core.correct.settings.CorrectSettings`.
    None: the defaults.
channel_axis : int or None
    Axis of the colour channels (``-1`` for RGB ``(H, W, 3)``); None for grey.
evidence : ndarray or None
    None: evidence from the image's grey value / colour (inside vs. outside each
    object, see Notes). Otherwise an object probability map in [0, 1] of the
    image's spatial shape used as ``t`` (e.g. a network's nucleus probability;
    semantic mode: class probabilities ``(3, *spatial)``).
report : list, optional
    Receives one :class:`ObjectCorrection` per object (id, area before / after,
    status ``"moved 2.4 px"``, ``"kept"`` (already on a plausible edge) or ``"no
    evidence"`` (kept as given), see :class:`ObjectCorrection`); per object and
    plane with ``stack_mode="slices"``.
progress : callable ``(done, total) -> None``, optional
    Called after every batched solve.
should_stop : callable ``() -> bool``, optional
    Checked after every batched solve; if it returns True the correction stops
    and ``InterruptedError`` is raised (the inputs are untouched).
**overrides
    Fields of :class:`~napari_vptv.core.correct.settings.CorrectSettings` changed from
    ``settings`` (e.g. ``band=10``, ``volume_mode="exact"``).

Returns
-------
labels : ndarray
    Corrected mask, same shape as ``mask``, same dtype for integer masks (int32
    otherwise). Label ids are preserved; objects never merge; an object the
    correction would remove is kept as given (and reported).

Raises
------
ValueError
    Mask shape differs from the image's spatial shape, empty mask, float mask
    with non-integer values, NaN / infinite image values, invalid settings.
TypeError
    A keyword that is not a setting (the message names it and the nearest setting).

Notes
-----
The method (evidence, costs, volume interval, rounding) is described in the
module docstring of :mod:`napari_vptv.core.correct.mask`.

References
----------
F. Li, J. Liu, Z. Cui, Z. Huang, X.-C. Tai, "Volume preserving image segmentation
with entropic regularization optimal transport and its applications in deep
learning", eq. 11 and Algorithm 1.
"""


def correct_mask(
    image,
    mask,
    settings: Optional[CorrectSettings] = None,
    *,
    channel_axis: Optional[int] = None,
    evidence: Optional[np.ndarray] = None,
    report: Optional[list] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    **overrides,
) -> np.ndarray:
    """Snap a rough label mask to the image's boundaries (docstring: ``_CORRECT_MASK_DOC``, set below)."""
    settings = resolve_settings(settings, overrides)  # a bad setting raises here, not at the first step
    gen = correct_mask_iter(image, mask, settings, channel_axis=channel_axis, evidence=evidence, report=report)
    return run_correction(gen, progress, should_stop)


def run_correction(
    gen, progress: Optional[Callable[[int, int], None]] = None, should_stop: Optional[Callable[[], bool]] = None
):
    """Drive a :func:`correct_mask_iter` generator to its end and return its result:
    ``progress(done, total)`` after every step, ``InterruptedError`` when ``should_stop()``."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step.done, step.total)
        if should_stop is not None and should_stop():
            gen.close()
            raise InterruptedError("mask correction was cancelled")


correct_mask.__doc__ = _CORRECT_MASK_DOC
