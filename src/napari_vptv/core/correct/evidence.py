"""Per-object evidence for mask correction: where is this object's edge, whatever the bias?

For one object crop (given object ``M``, other objects excluded) this module builds
the contrast-normalised evidence ``t(x)`` (0 = like the material just outside the
object, 1 = like its inside) and a *prior* mask, the given mask moved to the edge the
image shows. It works on grey (fluorescence) and colour (brightfield) crops alike.

1. A first Fisher direction between the object's deep core and a wide ring outside
   it (both beyond the ``band`` the boundary may move, so they are inside resp.
   outside whatever the size bias is).
2. *Edge offset*: on the level sets ``{sd = o}`` of the signed distance ``sd`` to
   the given boundary (``-band <= o <= band``, half-pixel steps) the mean gradient
   of that projection is taken, scaled down by up to 20 % towards the band's limits
   (a mild preference for the edge nearest the given boundary); its maximum is
   where the image's edge lies relative to the given boundary (``o < 0``: the mask
   is too fat). In 2-D this is done per
   angular sector around the object's centre (a shifted mask has an edge inside on
   one side and outside on the other), pulled towards the whole object's profile.
3. *Levels* (``edge_position``). ``"rim"`` and ``"half-max"``: the image
   is scaled between the object's plateau (a thin shell ``_PLATEAU_GAP`` px and more
   inside the strongest edge) and the background (a shell ``_FLOOR_GAP`` px and more
   outside it, beyond the blur and a dim outer rim), and the boundary goes where it
   reaches ``_RIM_LEVEL`` (0.45: annotated nuclei, measured by
   ``benchmarks/edge_profile_nuclei.py``) resp. 0.5 of that step -- ``t`` is remapped
   so that level is ``t = 1/2``, and the prior is the given mask moved to that
   level's crossing. ``"gradient"``: the levels come from a thin core just inside and
   a thin ring just outside the strongest edge (``_GAP`` to ``_GAP + _SHELL`` px from
   it; the offset refined to sub-pixel by a parabola): the material *adjacent* to the
   object (for a blood-cell nucleus the cytoplasm, not the background beyond it), so
   ``t = 1/2`` sits on the strongest gradient; where those two thin shells overlap
   (e.g. bright unlabelled neighbours just outside) the plateau / background levels
   of ``"half-max"`` are used instead.
4. *Plausible as given?* The median level (plateau scale) of the pixels either side
   of the given boundary: within ``_PLAUSIBLE`` (and no whole-object shift found) the
   given boundary already lies on an edge as annotators draw it, and the object is
   left as it is (``keep``).

The constants of steps 1-2 were chosen on the tuning split of
``benchmarks/tune_correct_nuclei.py`` (WBC tuning images, wbc-d1 tuning images,
synthetic seeds 0-3); those of steps 3-4 on the tuning split of stardist's annotated
nuclei (``benchmarks/bench_correct_stardist.py``: the left half of the 2-D image and
the 3-D stack).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from ..solver import numba_loop
from .settings import EDGE_POSITIONS  # "rim", "half-max", "gradient" (see CorrectSettings)

__all__ = [
    "object_evidence",
    "object_distances",
    "grown_box",
    "ObjectEvidence",
    "object_band",
    "edge_offset",
    "edge_level",
    "AUTO_BAND_RANGE",
    "EDGE_POSITIONS",
]

#: "rim": level between background (0) and the object's plateau (1) of an annotated edge
#: (measured at annotated boundaries, smoothed image: 0.49 on the 2-D, 0.36 on the 3-D
#: tuning nuclei; 0.45 had the best mean Dice over the tuning rows, 0.4 and 0.5 within
#: 0.002: benchmarks/results/correct_stardist_tuning.txt)
_RIM_LEVEL = 0.45
#: plateau / background samples for "rim" and "half-max": thin shells this far (px)
#: inside / outside the strongest edge (beyond the blur; the background shell also
#: beyond a dim rim of up to ~3 px)
_PLATEAU_GAP = 1.5
_FLOOR_GAP = 3.0
#: the given boundary is a plausible edge (and the object is kept) if its median level
#: between background (0) and plateau (1) lies in this range (annotated edges: 0.35-0.6,
#: 3 px too far out: ~0.2, 3 px too far in: ~0.9; stardist tuning split)
_PLAUSIBLE = (0.33, 0.75)

#: distance (px) of the level samples from the estimated edge (the blur's half width)
_GAP = 0.5
#: width (px) of the thin core / ring sampled next to the estimated edge
_SHELL = 4.0
#: step (px) of the edge-offset search
_STEP = 0.5
#: angular sectors of the 2-D edge-offset search, and the weight of the whole
#: object's gradient profile added to each sector's (regularises small sectors)
_SECTORS = 8
_GLOBAL_WEIGHT = 3.0
#: preference for small edge offsets: each offset's mean gradient is scaled by
#: ``1 - _OFFSET_PRIOR |o| / band`` (an edge at the band's limit must be 25 % stronger
#: than one on the given boundary): where a nucleus shows two edges within the band
#: (nucleus / thin cytoplasm / background) the one nearer the given mask wins
_OFFSET_PRIOR = 0.2
#: 2-D: largest whole-object shift (px) searched before the edge offsets (0 = none),
#: and its preference for small shifts (the score of shift ``s`` is scaled by
#: ``1 - _SHIFT_PRIOR |s| / band``)
_SHIFT_MAX = 4
_SHIFT_PRIOR = 0.3
#: a shift is taken only if its score beats the unshifted mask's by this fraction
_SHIFT_GAIN = 0.05
#: largest number of gradient samples gathered at once by the shift search (memory)
_GATHER_BUDGET = 2_000_000
#: automatic band: this fraction of the object's equivalent radius, clipped to AUTO_BAND_RANGE px
_BAND_FRACTION = 0.5
AUTO_BAND_RANGE = (4, 6)


def object_band(area, ndim, band=None):
    """The boundary band (px) of one object: ``band`` if given, else scaled with its size.

    Automatic: half the equivalent radius (disc in 2-D, ball in 3-D) clipped to 4-6 px,
    so a small nucleus is not asked to move its boundary by a third of its radius.
    """
    if band is not None:
        return int(band)
    radius = (area / np.pi) ** 0.5 if ndim == 2 else (3 * area / (4 * np.pi)) ** (1 / 3)
    return int(min(max(math.ceil(_BAND_FRACTION * radius), AUTO_BAND_RANGE[0]), AUTO_BAND_RANGE[1]))


def _fisher(feat, core, ring):
    """Projection of ``feat`` (C, ...) on ``Sigma^-1 (mu_core - mu_ring)`` (pooled Sigma).

    The covariances are ``np.cov``'s (centred samples, one matrix product, ``1 / (n - 1)``)
    without its generic argument handling; grey images (C = 1) divide instead of solving."""
    x_in, x_out = feat[:, core].astype(np.float64), feat[:, ring].astype(np.float64)
    mu_in, mu_out = x_in.mean(1), x_out.mean(1)
    pooled = (_cov(x_in, mu_in) + _cov(x_out, mu_out)) / 2 + 1e-6 * np.eye(feat.shape[0])
    if feat.shape[0] == 1:
        return ((mu_in[0] - mu_out[0]) / pooled[0, 0]) * feat[0].astype(np.float64)
    return np.tensordot(np.linalg.solve(pooled, mu_in - mu_out), feat, axes=1)


def _cov(x, mu):
    """Sample covariance ``(C, C)`` of the columns of ``x`` (C, n) with mean ``mu``."""
    d = x - mu[:, None]
    return np.dot(d, d.T) * (1.0 / (x.shape[1] - 1))


def _sectors(sd):
    """Angular sector (0.._SECTORS-1) of every pixel around the object's centre (2-D)."""
    if sd.ndim != 2 or _SECTORS < 2:
        return np.zeros(sd.shape, int), 1
    yy, xx = np.indices(sd.shape)
    inside = sd < 0
    cy, cx = yy[inside].mean(), xx[inside].mean()
    frac = (np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi)
    return (frac * _SECTORS).astype(int) % _SECTORS, _SECTORS


def _gradient(proj, other, region=None):
    """Gradient magnitude of ``proj``, 0 on other objects; ``region``: slices of the only
    part computed (0 elsewhere; values within one pixel of its cut sides are one-sided)."""
    if region is None:
        grad = np.sqrt(sum(gi**2 for gi in np.gradient(proj)))
    else:
        grad = np.zeros(proj.shape)
        grad[region] = np.sqrt(sum(gi**2 for gi in np.gradient(proj[region])))
    grad[other] = 0
    return grad


def grown_box(mask, margin=1):
    """Slices of the bounding box of ``mask`` grown by ``margin`` pixels (clipped), or
    None if ``mask`` is empty."""
    box = ndi.find_objects(mask.view(np.uint8))
    if not box:
        return None
    return tuple(slice(max(b.start - margin, 0), b.stop + margin) for b in box[0])


def best_shift(grad, sd, band):
    """Whole-object shift ``s`` (2-D, whole pixels) that puts the given boundary on the
    strongest edge: the maximum over ``s`` and offsets ``o`` of the mean gradient on
    ``{x : sd(x - s) = o}``, scaled by the offset and shift preferences.

    A shifted mask has its edge inside on one side and outside on the other, which
    offsets per angular sector only partly follow; the shift moves the whole mask
    first. Returns ``(0, 0)`` in 3-D or when no shift beats the unshifted mask.
    """
    smax = min(_SHIFT_MAX, band)
    if sd.ndim != 2 or smax < 1:
        return (0,) * sd.ndim
    offsets = np.arange(-band, band + 0.01, _STEP)
    shifts = _disc_shifts(smax)
    sums, count = _shift_scores(grad, sd, band, shifts, offsets.size)
    weight = 1.0 - _OFFSET_PRIOR * np.abs(offsets) / max(band, 1)
    scores = (sums / np.maximum(count, 1) * weight).max(axis=1)
    length = np.hypot(*np.array(shifts[1:]).T)
    shifted = (scores[1:] * (1.0 - _SHIFT_PRIOR * length / band)).tolist()  # (plain floats: a fast loop)
    best, best_score = (0, 0), float(scores[0] * (1.0 + _SHIFT_GAIN))
    for shift, score in zip(shifts[1:], shifted):
        if score > best_score + 1e-12:
            best, best_score = shift, score
    return best


@functools.lru_cache(maxsize=None)
def _disc_shifts(smax):
    """``(0, 0)``, then every whole-pixel shift of length in ``(0, smax]`` (row by row)."""
    disc = [(dy, dx) for dy in range(-smax, smax + 1) for dx in range(-smax, smax + 1)]
    return [(0, 0)] + [s for s in disc if 0 < np.hypot(*s) <= smax]


def _shift_scores(grad, sd, band, shifts, n_bins):
    """``(sums, count)``: the sum of ``grad`` over the level-set samples (``|sd| <= band +
    _STEP / 2``, binned by ``sd`` to the nearest offset) moved by each shift, per offset
    bin ``(len(shifts), n_bins)``, and the samples per bin ``(n_bins,)``; a sample moved
    off the crop adds 0. numba kernel, else numpy (the same sums)."""
    kernels = _numba()
    if kernels is None:
        return _shift_scores_numpy(grad, sd, band, shifts, n_bins)
    sums, count = np.zeros((len(shifts), n_bins)), np.zeros(n_bins, np.int64)
    limit = band + 0.5 * _STEP
    kernels.shift_scores(grad, sd, limit, float(band), _STEP, _shift_array(tuple(shifts)), sums, count)
    return sums, count


@functools.lru_cache(maxsize=None)
def _shift_array(shifts):
    """The shifts as an ``(n, 2)`` int64 array (the kernel's argument), made once."""
    return np.array(shifts, np.int64).reshape(-1, 2)


def _shift_scores_numpy(grad, sd, band, shifts, n_bins):
    """:func:`_shift_scores` in numpy: one gather and one ``bincount`` for many shifts at
    once (the samples' order, and so every sum, is that of one ``bincount`` per shift);
    shifts in chunks bound the memory."""
    q = np.nonzero(np.abs(sd) <= band + 0.5 * _STEP)  # level-set samples, unshifted frame
    bins = np.clip(np.rint((sd[q] + band) / _STEP).astype(int), 0, n_bins - 1)
    pad = max(max(abs(v) for v in s) for s in shifts)
    padded = np.pad(grad, pad)
    width = padded.shape[1]
    base = (q[0] + pad) * width + (q[1] + pad)
    flat = padded.ravel()
    per = max(1, _GATHER_BUDGET // max(base.size, 1))
    sums = []
    for start in range(0, len(shifts), per):
        chunk = np.array([dy * width + dx for dy, dx in shifts[start : start + per]])
        g = flat[chunk[:, None] + base[None, :]]
        key = (np.arange(chunk.size)[:, None] * n_bins + bins[None, :]).ravel()
        sums.append(np.bincount(key, g.ravel(), chunk.size * n_bins).reshape(chunk.size, n_bins))
    return np.concatenate(sums), np.bincount(bins, minlength=n_bins)


def _shifted(sd, shift):
    """``sd(x - shift)`` (edge values beyond the crop)."""
    if not any(shift):
        return sd
    pad = max(abs(v) for v in shift)
    big = np.pad(sd, pad, mode="edge")
    return big[tuple(slice(pad - v, pad - v + n) for v, n in zip(shift, sd.shape))]


def edge_offset(proj, sd, band, other, *, grad=None, sectors=None):
    """Per-pixel offset (px) of the strongest edge relative to the given boundary.

    Parameters
    ----------
    proj : the crop projected on a direction separating inside from outside
    sd : signed distance to the given boundary (negative inside)
    band : largest offset searched (px)
    other : pixels of other objects (ignored)
    grad, sectors : optional, ``_gradient(proj, other)`` and ``_sectors(sd)`` if the
        caller has them already
    """
    grad = _gradient(proj, other) if grad is None else grad
    offsets = np.arange(-band, band + 0.01, _STEP)
    sector, ns = _sectors(sd) if sectors is None else sectors
    sums, count = _level_sums(sd, offsets, sector, ns, grad)
    profile = sums / np.maximum(count, 1)
    profile += _GLOBAL_WEIGHT * profile.mean(0) if ns > 1 else 0.0
    profile *= 1.0 - _OFFSET_PRIOR * np.abs(offsets) / max(band, 1)
    # parabola through the peak and its neighbours: the edge between sampled levels
    # (without it a half-pixel level choice drops or adds a whole pixel layer)
    best = np.argmax(profile, axis=1)
    i = np.clip(best, 1, offsets.size - 2)
    rows = np.arange(ns)
    left, mid, right = profile[rows, i - 1], profile[rows, i], profile[rows, i + 1]
    curv = left - 2 * mid + right
    shift = np.where(curv < 0, 0.5 * (left - right) / np.where(curv < 0, curv, -1.0), 0.0)
    found = offsets[best] + np.where(best == i, np.clip(shift, -0.5, 0.5), 0.0) * _STEP
    return found[sector]


def _level_sums(rel, levels, sector, ns, values):
    """Sums of ``values`` and sample counts, per sector and level: ``(ns, len(levels))``
    arrays over the samples with ``|rel - levels[i]| <= 1/2`` (``levels``: ``_STEP`` apart).

    A sample lies on at most three levels, all among the five around
    ``(rel - levels[0]) / _STEP``: those are tested instead of every level. The
    samples are summed in their (raster) order, as one ``bincount`` per level would.
    numba kernel, else numpy (the same sums).
    """
    kernels = _numba()
    if kernels is None:
        return _level_sums_numpy(rel, levels, sector, ns, values)
    size = levels.size * ns
    sums, count = np.zeros(size), np.zeros(size, np.int64)
    flat = [np.ravel(a) for a in (rel, sector, np.asarray(values, np.float64))]
    kernels.level_sums(flat[0], levels, _STEP, flat[1], ns, flat[2], sums, count)
    return sums.reshape(levels.size, ns).T, count.reshape(levels.size, ns).T


def _level_sums_numpy(rel, levels, sector, ns, values):
    """:func:`_level_sums` in numpy, on the samples within a pixel of the levels only."""
    near = (rel >= levels[0] - 1.0) & (rel <= levels[-1] + 1.0)
    rel, sector, values = rel[near], sector[near], values[near]
    first = np.floor((rel - levels[0]) / _STEP).astype(int)
    cand = first[:, None] + np.arange(-2, 3)
    valid = (cand >= 0) & (cand < levels.size)
    cand = np.clip(cand, 0, levels.size - 1)
    valid &= np.abs(rel[:, None] - levels[cand]) <= 0.5
    key = (cand * ns + sector[:, None])[valid]
    size = levels.size * ns
    sums = np.bincount(key, np.broadcast_to(values[:, None], cand.shape)[valid], size)
    count = np.bincount(key, minlength=size)
    return sums.reshape(levels.size, ns).T, count.reshape(levels.size, ns).T


def _numba():
    """The evidence kernels (:mod:`.numba_evidence`), or None where numba cannot run
    (``numba_loop.NUMBA_AVAILABLE`` False, as for the solver): then numpy."""
    return _numba_module() if numba_loop.NUMBA_AVAILABLE else None


@functools.lru_cache(maxsize=None)
def _numba_module():
    if numba_loop.kernels() is None:
        return None
    from . import numba_evidence

    return numba_evidence


def edge_level(edge_position):
    """Level of the boundary between background (0) and plateau (1) of ``edge_position``."""
    if edge_position not in EDGE_POSITIONS:
        raise ValueError(f"edge position must be one of {EDGE_POSITIONS}, got {edge_position!r}")
    return _RIM_LEVEL if edge_position == "rim" else 0.5


def _remap(t, level):
    """Piecewise-linear map of ``t`` with ``level -> 1/2`` (0 and 1 fixed)."""
    return np.where(t < level, 0.5 * t / level, 0.5 + 0.5 * (t - level) / (1.0 - level))


def _level_offset(t, sd, offset, level, band, sectors=None):
    """Per-pixel offset (px) of the ``level`` crossing of ``t`` outward from the strongest edge.

    The mean of ``t`` on the level sets ``{sd - offset = r}`` (2-D: per angular sector,
    pulled towards the whole object's) is followed outwards from ``r = -_PLATEAU_GAP``
    to where it first falls below ``level``; the crossing is interpolated linearly.
    ``sectors``: ``_sectors(sd)`` if the caller has it.
    """
    rel = sd - offset
    steps = np.arange(-_PLATEAU_GAP, _FLOOR_GAP + 2 + 0.01, _STEP)
    sector, ns = _sectors(sd) if sectors is None else sectors
    sums, count = _level_sums(rel, steps, sector, ns, t)
    prof = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
    seen = ~np.isnan(prof)
    # the whole object's mean (NaN where no sector has pixels at that distance)
    whole = np.where(seen.any(0), np.where(seen, prof, 0.0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)
    prof = np.where(seen, prof, whole)
    if ns > 1:
        prof = (prof + _GLOBAL_WEIGHT * whole) / (1 + _GLOBAL_WEIGHT)
    # per sector: the first step below ``level`` (j), the crossing between j - 1 and j;
    # none below: the last step; a profile cut by the crop (NaN): the strongest edge
    below = prof < level
    j = np.argmax(below, axis=1)
    rows, before = np.arange(ns), np.maximum(j - 1, 0)
    p_before, p_at = prof[rows, before], prof[rows, j]
    crossing = steps[before] + (p_before - level) / np.maximum(p_before - p_at, 1e-9) * _STEP
    found = np.where(j == 0, steps[0], crossing)
    found = np.where(np.isnan(prof).any(axis=1), 0.0, found)
    found = np.where(below.any(axis=1), found, steps[-1])
    return np.clip(offset + found[sector], -band, band)


@dataclass
class ObjectEvidence:
    """What the image says about one object crop (see :func:`object_evidence`).

    Attributes
    ----------
    t : float32 evidence scaled so the chosen edge is at ``t = 1/2`` (None: the object's
        inside and surroundings look alike)
    din, dout : distance to the given boundary inside / outside the given object
    prior : the given mask moved to the image's edge
    keep : the given boundary already lies on a plausible edge (the object is left as it is)
    """

    t: Optional[np.ndarray]
    din: np.ndarray
    dout: np.ndarray
    prior: np.ndarray
    keep: bool


def _plausible(level_map, sd0, other):
    """Does the given boundary (``sd0 = 0``) lie on a plausible edge?

    ``level_map`` is the image between background (0) and the object's plateau (1);
    the given boundary's level is the median over the pixels either side of it
    (``|sd0| <= 1/2``, other objects excluded). Plausible if within ``_PLAUSIBLE``: a
    too fat mask's boundary lies on the background (low), a too thin one's on the
    plateau (high), an annotated one on the slope between.
    """
    at = (np.abs(sd0) <= 0.5) & ~other
    if not at.any():
        return False
    return bool(_PLAUSIBLE[0] <= _median(level_map[at]) <= _PLAUSIBLE[1])


def object_distances(obj):
    """``(din, dout)``: Euclidean distance of every pixel of ``obj`` to the nearest pixel
    outside it, and of every other pixel to the object (the array's edge is not a boundary).

    ``din`` is computed on the object's bounding box grown by one pixel only: that ring
    lies outside the object, so the nearest outside pixel of any object pixel is in it
    (the values are those of the whole crop's transform).
    """
    dout = ndi.distance_transform_edt(~obj)
    grown = grown_box(obj)
    din = np.zeros(obj.shape)
    din[grown] = ndi.distance_transform_edt(obj[grown])
    return din, dout


def object_evidence(feat, obj, other, band, prob=None, edge_position="gradient", stop_if_kept=False):
    """Evidence, distances, prior mask and the plausibly placed parts of one object crop.

    Parameters
    ----------
    feat : (C, *crop) smoothed image features
    obj, other : the given object and the other objects' pixels (bool)
    band : largest boundary error (px)
    prob : optional object probability map (then ``t = prob`` and the prior is ``obj``)
    edge_position : one of :data:`EDGE_POSITIONS`, where the boundary goes across the edge
    stop_if_kept : bool
        True: for an object whose given boundary is plausible (``keep``) the evidence is
        not finished (the caller leaves it as it is): ``t`` is then the plateau levels
        and ``prior`` the given mask.

    Returns
    -------
    :class:`ObjectEvidence`
    """
    din, dout = object_distances(obj)
    level = edge_level(edge_position)
    sd0 = np.where(obj, 0.5 - din, dout - 0.5)  # signed distance to the given boundary (outside > 0)
    if prob is not None:
        t = np.clip(prob, 0, 1).astype(np.float32)
        return ObjectEvidence(t, din, dout, obj, _plausible(t, sd0, other))
    none = ObjectEvidence(None, din, dout, obj, False)
    core = din > band + 1
    if core.sum() < 9:
        core = din >= max(1.0, 0.6 * din.max())
    ring = (dout > band + 1) & (dout <= 2 * band + 3) & ~other
    if ring.sum() < 9:
        ring = (dout > 1) & ~other
    if core.sum() < 3 or ring.sum() < 3:
        return none
    proj = _fisher(feat, core, ring)
    # the gradient is read near the given boundary (|sd| <= band + 1), up to a shift
    # away: computed there only (one more pixel for its central differences)
    reach = min(_SHIFT_MAX, band) if sd0.ndim == 2 else 0
    grad = _gradient(proj, other, grown_box(np.abs(sd0) <= band + 1, reach + 1))
    shift = best_shift(grad, sd0, band)
    sd = _shifted(sd0, shift)  # a shifted mask: move it first
    sectors = _sectors(sd)
    offset = edge_offset(proj, sd, band, other, grad=grad, sectors=sectors)
    plateau = _plateau_levels(feat, proj, sd, offset, other)
    if plateau is None:  # no step between the object's plateau and the background
        return none
    keep = not any(shift) and _plausible(plateau, sd0, other)
    if keep and stop_if_kept:
        return ObjectEvidence(plateau.astype(np.float32), din, dout, obj, True)
    if edge_position != "gradient":
        prior = sd < _level_offset(plateau, sd, offset, level, band, sectors)
        return ObjectEvidence(_remap(plateau, level).astype(np.float32), din, dout, prior, keep)
    # thin shells on both sides: a symmetric blur lowers the inner level as much as
    # it raises the outer one, so t = 1/2 stays on the strongest gradient
    thin_core = (sd < offset - _GAP) & (sd >= offset - _GAP - _SHELL) & ~other
    thin_ring = (sd > offset + _GAP) & (sd <= offset + _GAP + _SHELL) & ~other
    t = _scaled(feat, thin_core, thin_ring) if thin_core.sum() >= 9 and thin_ring.sum() >= 9 else None
    if t is None:  # the shells overlap (e.g. unlabelled neighbours just outside): plateau vs. background
        t = plateau
    return ObjectEvidence(t.astype(np.float32), din, dout, sd < offset, keep)


def _scaled(feat, core, ring):
    """Projection on the Fisher direction of ``core`` vs ``ring`` scaled so their medians are
    1 and 0 (None if the two overlap: nothing to snap to)."""
    proj = _fisher(feat, core, ring)
    x_in, x_out = proj[core], proj[ring]
    p_in, p_out = _median(x_in), _median(x_out)
    spread = np.sqrt(0.5 * (x_in.var() + x_out.var())) + 1e-12
    if abs(p_in - p_out) < spread:
        return None
    return (proj - p_out) / (p_in - p_out)


def _median(x):
    """``np.median`` of a 1-D float array without NaN (the same value; one partition, no
    generic argument handling)."""
    k = x.size // 2
    if x.size % 2:
        return np.partition(x, k)[k]
    part = np.partition(x, (k - 1, k))
    return (part[k - 1] + part[k]) / 2.0


def _plateau_levels(feat, proj, sd, offset, other):
    """The image between background (0) and the object's plateau (1), or None.

    Plateau: a thin shell ``_PLATEAU_GAP`` px and more inside the strongest edge;
    background: a shell ``_FLOOR_GAP`` px and more outside it (beyond the blur and a
    dim outer rim of up to ~3 px).
    """
    core = (sd < offset - _PLATEAU_GAP) & (sd >= offset - _PLATEAU_GAP - _SHELL) & ~other
    ring = (sd > offset + _FLOOR_GAP) & (sd <= offset + _FLOOR_GAP + _SHELL) & ~other
    if core.sum() < 9:
        core = (sd < offset) & ~other
    if ring.sum() < 9:
        ring = (sd > offset + _GAP) & ~other
    if core.sum() < 3 or ring.sum() < 3:
        return None
    return _scaled(feat, core, ring)
