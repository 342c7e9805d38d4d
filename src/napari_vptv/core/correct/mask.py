"""Correct an existing label mask with VPTV (no napari, no Qt).

A user has a rough mask of nuclei or cells (thresholding, another tool, a quick
hand drawing) -- usually biased, too fat or too thin everywhere by an unknown
amount -- and wants it snapped to the image's boundaries without objects merging
or vanishing. The volume constraint of VPTV (the paper's eq. 2 / 11) makes this a
bounded problem: the mask gives each object's volume interval (or its exact area /
a known factor), the image's evidence places the boundary.

>>> from napari_vptv.core.correct.mask import correct_mask
>>> corrected = correct_mask(image, rough_labels)                     # doctest: +SKIP

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
for the object class. All crops are padded and solved as one batch by
Algorithm 1 (eq. 11 with the volume interval or ``U(V)``); labels are
``u_1 > 1/2`` with the count clipped to the volume bounds, holes inside ``M``
filled, components not touching ``M`` dropped; a pixel two objects claim goes to
the larger ``u_1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np

from ..solver.segment import prepare_image
from .evidence import EDGE_POSITIONS
from .objects import VOLUME_MODES, ObjectCorrection, correct_objects_iter
from .semantic import semantic_iter

__all__ = [
    "correct_mask",
    "correct_mask_iter",
    "run_correction",
    "CorrectionProgress",
    "ObjectCorrection",
    "CORRECTION_MODES",
    "VOLUME_MODES",
    "STACK_MODES",
    "EDGE_POSITIONS",
    "annotated_edge",
]

CORRECTION_MODES = ("objects", "semantic")
#: 3-D masks: one 3-D object per id ("volume"), or every plane of axis 0 on its own ("slices")
STACK_MODES = ("volume", "slices")
COLOUR_SIMILARITIES = ("gaussian", "mahalanobis", "mean", "histogram")


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


def _check_params(
    mode, similarity, volume_factor, volume_tolerance, margin, epsilon, tv_weight, em_rounds, max_num_iter
):
    if mode not in CORRECTION_MODES:
        raise ValueError(f"mode must be one of {CORRECTION_MODES}, got {mode!r}")
    if similarity not in COLOUR_SIMILARITIES:
        raise ValueError(f"similarity must be one of {COLOUR_SIMILARITIES}, got {similarity!r}")
    if not np.isfinite(volume_factor) or volume_factor <= 0:
        raise ValueError(f"volume_factor must be a positive number, got {volume_factor}")
    if not np.isfinite(volume_tolerance) or not 0 <= volume_tolerance < 1:
        raise ValueError(f"volume_tolerance must be in [0, 1), got {volume_tolerance}")
    if margin is not None and (int(margin) != margin or margin < 1):
        raise ValueError(f"margin must be a positive number of pixels or None (automatic), got {margin}")
    if not np.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a positive number, got {epsilon}")
    if not np.isfinite(tv_weight) or tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
    if int(em_rounds) != em_rounds or em_rounds < 0:
        raise ValueError(f"em_rounds must be a non-negative integer, got {em_rounds}")
    if int(max_num_iter) < 1:
        raise ValueError(f"max_num_iter must be >= 1, got {max_num_iter}")


def _resolve_volume_mode(volume_mode, volume_factor, volume_tolerance, area_tolerance):
    """``(mode, area_tolerance)``: None -> "factor" if a factor is given, else "interval"."""
    if volume_mode is None:
        volume_mode = "factor" if volume_factor != 1.0 else "interval"
    if volume_mode not in VOLUME_MODES:
        raise ValueError(f"volume_mode must be one of {VOLUME_MODES}, got {volume_mode!r}")
    if area_tolerance is None and volume_tolerance > 0:
        area_tolerance = volume_tolerance  # the older name of the same interval
    if area_tolerance is not None and (not np.isfinite(area_tolerance) or not 0 <= area_tolerance < 1):
        raise ValueError(f"area_tolerance must be in [0, 1), got {area_tolerance}")
    return volume_mode, area_tolerance


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


def _check_modes(stack_mode, edge_position):
    if stack_mode not in STACK_MODES:
        raise ValueError(f"stack_mode must be one of {STACK_MODES}, got {stack_mode!r}")
    if edge_position is not None and edge_position not in EDGE_POSITIONS:
        raise ValueError(f"edge_position must be one of {EDGE_POSITIONS} or None, got {edge_position!r}")


def _check_object_params(mask_weight, smooth, band):
    if not np.isfinite(mask_weight) or mask_weight < 0:
        raise ValueError(f"mask_weight must be >= 0, got {mask_weight}")
    if not np.isfinite(smooth) or smooth < 0:
        raise ValueError(f"smooth must be >= 0 (a Gaussian sigma in pixels), got {smooth}")
    if band is not None and (int(band) != band or band < 1):
        raise ValueError(f"band must be a positive whole number of pixels, got {band}")


def correct_mask_iter(
    image,
    mask,
    *,
    channel_axis: Optional[int] = None,
    mode: str = "objects",
    volume_mode: Optional[str] = None,
    volume_factor: float = 1.0,
    area_tolerance: Optional[float] = None,
    volume_tolerance: float = 0.0,
    band: Optional[int] = None,
    margin: Optional[int] = None,
    epsilon: float = 0.01,
    tv_weight: float = 0.05,
    edge: bool = True,
    evidence: Optional[np.ndarray] = None,
    similarity: str = "gaussian",
    em_rounds: int = 1,
    mask_weight: float = 0.15,
    fill_holes: bool = True,
    smooth: float = 1.0,
    max_num_iter: int = 300,
    seed: int = 0,
    device: str = "cpu",
    report: Optional[list] = None,
    stack_mode: str = "volume",
    edge_position: Optional[str] = None,
) -> Generator[CorrectionProgress, None, np.ndarray]:
    """Generator version of :func:`correct_mask`.

    Yields a :class:`CorrectionProgress` after every batched solve (objects mode) or
    solver pass (semantic mode) and returns the corrected labels
    (``StopIteration.value``). Stopping the generator early (e.g. a Cancel button)
    leaves the inputs untouched. Parameters: see :func:`correct_mask`.
    """
    _check_params(
        mode, similarity, volume_factor, volume_tolerance, margin, epsilon, tv_weight, em_rounds, max_num_iter
    )
    _check_modes(stack_mode, edge_position)
    volume_mode, area_tolerance = _resolve_volume_mode(volume_mode, volume_factor, volume_tolerance, area_tolerance)
    _check_object_params(mask_weight, smooth, band)
    features = prepare_image(image, channel_axis)
    spatial = features.shape[1:]
    if edge_position is None:
        edge_position = annotated_edge(features.shape[0], len(spatial))
    m, out_dtype = _check_mask(mask, spatial), _out_dtype(mask)
    model_prob = _check_evidence(evidence, spatial, mode)
    solver_kw = dict(epsilon=epsilon, tv_weight=tv_weight, edge=edge, max_num_iter=max_num_iter)
    if mode == "semantic":
        kw = dict(volume_factor=volume_factor, volume_tolerance=volume_tolerance, em_rounds=em_rounds, seed=seed)
        gen = semantic_iter(
            features, m, model_prob, similarity=similarity, device=device, out_dtype=out_dtype, **kw, **solver_kw
        )
        return (yield from _relay(gen))

    volume_kw = dict(volume_mode=volume_mode, volume_factor=volume_factor, area_tolerance=area_tolerance)
    object_kw = dict(band=None if band is None else int(band), margin=margin, mask_weight=mask_weight, smooth=smooth)
    gen = _objects_iter(
        features,
        m,
        stack_mode=stack_mode,
        out_dtype=out_dtype,
        report=report,
        prob=model_prob,
        fill_holes=fill_holes,
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
    values, inverse = np.unique(m, return_inverse=True)
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
channel_axis : int or None
    Axis of the colour channels (``-1`` for RGB ``(H, W, 3)``); None for grey.
mode : {"objects", "semantic"}
    ``"objects"``: all objects in one batched two-phase VPTV solve over crops
    (a 3-D mask is corrected in true 3-D). ``"semantic"``: one multi-class VPTV
    on the whole image, class volumes from the mask's class fractions.
volume_mode : {"interval", "exact", "factor"} or None
    How each object's volume ``V_1`` (eq. 2) is set. ``"interval"``: the size
    bias is unknown; the boundary may move up to ``band`` pixels in or out and
    the image decides where (``V_1`` between the areas of the mask eroded and
    dilated by ``band``; see Notes). ``"exact"``: the given area. ``"factor"``: the given
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
    Entropic regularisation ``eps`` (eq. 11).
tv_weight : float
    ``lambda``, weight of the (edge-weighted) TV term (eq. 11); costs are in [0, 1].
edge : bool
    Edge-weighted TV, ``e(x) = 1/(1 + 10 |grad t|)`` on the evidence ``t`` (Notes).
evidence : ndarray or None
    None: evidence from the image's grey value / colour (inside vs. outside each
    object, see Notes). Otherwise an object probability map in [0, 1] of the
    image's spatial shape used as ``t`` (e.g. a network's nucleus probability;
    semantic mode: class probabilities ``(3, *spatial)``).
similarity : {"gaussian", "mahalanobis", "mean", "histogram"}
    Semantic mode: class model (see :mod:`napari_vptv.core.solver.costs`).
em_rounds : int
    Semantic mode: re-estimations of the class model from the corrected mask.
mask_weight : float
    ``beta``: cost of leaving the prior mask (the given mask moved to the image's
    edge); a small trust that keeps the boundary in place where the evidence is
    ambiguous.
fill_holes : bool
    Fill holes of a corrected object where the given object had none.
smooth : float
    Gaussian sigma (pixels) applied to the image before the evidence is computed.
max_num_iter : int
    ``T``, iterations per solve.
seed : int
    Seed (the solver is deterministic; kept for API symmetry).
device : str
    torch device (objects mode runs on the CPU).
report : list, optional
    Receives one :class:`ObjectCorrection` per object (id, area before / after,
    status ``"moved 2.4 px"``, ``"kept"`` (already on a plausible edge) or ``"no
    evidence"`` (kept as given), see :class:`ObjectCorrection`); per object and
    plane with ``stack_mode="slices"``.
stack_mode : {"volume", "slices"}
    3-D masks, objects mode: ``"volume"`` (default) corrects every id as one 3-D
    object (3-D TV, one edge offset per object); ``"slices"`` corrects every
    plane of the first axis on its own (2-D objects with angular sectors, all
    planes in the same batched solves; ids are kept per plane). Ignored in 2-D.
edge_position : {"rim", "half-max", "gradient"} or None
    Objects mode: where the boundary goes across a nucleus's blurred edge. ``"rim"``:
    the outer, dimmer rim (45 % of the way from the background to the nucleus's
    interior); ``"half-max"``: halfway; ``"gradient"``: the strongest gradient. None
    (default): as annotated (:func:`annotated_edge`): ``"half-max"`` for grey 2-D
    images, ``"rim"`` for grey 3-D stacks, ``"gradient"`` for colour (stained nuclei in
    brightfield).
progress : callable ``(done, total) -> None``, optional
    Called after every batched solve.
should_stop : callable ``() -> bool``, optional
    Checked after every batched solve; if it returns True the correction stops
    and ``InterruptedError`` is raised (the inputs are untouched).

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
    with non-integer values, NaN / infinite image values, invalid parameters.

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
    *,
    channel_axis: Optional[int] = None,
    mode: str = "objects",
    volume_mode: Optional[str] = None,
    volume_factor: float = 1.0,
    area_tolerance: Optional[float] = None,
    volume_tolerance: float = 0.0,
    band: Optional[int] = None,
    margin: Optional[int] = None,
    epsilon: float = 0.01,
    tv_weight: float = 0.05,
    edge: bool = True,
    evidence: Optional[np.ndarray] = None,
    similarity: str = "gaussian",
    em_rounds: int = 1,
    mask_weight: float = 0.15,
    fill_holes: bool = True,
    smooth: float = 1.0,
    max_num_iter: int = 300,
    seed: int = 0,
    device: str = "cpu",
    report: Optional[list] = None,
    stack_mode: str = "volume",
    edge_position: Optional[str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> np.ndarray:
    """Snap a rough label mask to the image's boundaries (docstring: ``_CORRECT_MASK_DOC``, set below)."""
    gen = correct_mask_iter(
        image,
        mask,
        channel_axis=channel_axis,
        mode=mode,
        volume_mode=volume_mode,
        volume_factor=volume_factor,
        area_tolerance=area_tolerance,
        volume_tolerance=volume_tolerance,
        band=band,
        margin=margin,
        epsilon=epsilon,
        tv_weight=tv_weight,
        edge=edge,
        evidence=evidence,
        similarity=similarity,
        em_rounds=em_rounds,
        mask_weight=mask_weight,
        fill_holes=fill_holes,
        smooth=smooth,
        max_num_iter=max_num_iter,
        seed=seed,
        device=device,
        report=report,
        stack_mode=stack_mode,
        edge_position=edge_position,
    )
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
