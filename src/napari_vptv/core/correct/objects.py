"""Instance-mask correction: all objects of an image in one batched VPTV solve.

Every object is cut out with its bounding box plus a margin. In the crop a
per-object, contrast-normalised *evidence* map ``t`` is built (0 = like the material
just outside the object's edge, 1 = like its inside) together with a *prior*, the
given mask moved to the edge the image shows
(:func:`napari_vptv.core.correct.evidence.object_evidence`), so dim and bright
nuclei, grey fluorescence and RGB brightfield are treated alike. The two-phase costs are
solved on the part of each crop the object may take (the box of the pixels not barred
from it, grown by one pixel; the others are background whatever the solve), padded to
common shapes and solved together by :func:`napari_vptv.core.solver.reference.vptv_iterate`
(Algorithm 1, batched ``(N, 2, H, W)``), then pasted back with their ids.

Volume (eq. 2) per object, ``volume_mode``:

``"interval"`` (default, unknown size bias)
    The boundary may move at most ``band`` pixels in or out of the given one (default:
    per object, half its equivalent radius clipped to 4-6 px): pixels
    deeper than ``band`` inside are object, farther than ``band`` outside are not, so
    ``V_1`` lies in ``[|erode_band(M)|, |dilate_band(M)|] / |Omega|`` (optionally
    intersected with ``area (1 +- area_tolerance)``); the image's evidence places the
    boundary inside that interval.
``"exact"`` / ``"factor"``
    ``V_1 = volume_factor x |M| / |Omega|`` exactly (the paper's ``U(V)``).

Do no harm (interval mode): an object whose given boundary already lies on a
plausible edge (its level between background and the object's plateau is that of an
annotated edge, see ``_plausible`` in the evidence module) is not solved at all and
is reported ``"kept"``; every other object reports how far its boundary moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from scipy import ndimage as ndi

from .evidence import AUTO_BAND_RANGE, grown_box, object_band, object_evidence
from .settings import VOLUME_MODES

__all__ = ["ObjectCorrection", "correct_objects_iter", "VOLUME_MODES"]


#: cost of a forbidden class (costs are in [0, 1])
_PROHIBITIVE = 50.0
#: pixel budget of one batched solve (memory ~ 60 bytes per pixel)
_BATCH_PIXELS = 1_500_000
#: interval mode: an object moves only if the evidence fits the new outline better by
#: this many pixels per boundary pixel of the given one (data-term gain, see ``_gain``)
_MIN_GAIN = 0.4


@dataclass(frozen=True)
class ObjectCorrection:
    """What happened to one object.

    Attributes
    ----------
    label : the object's id in the input mask
    area_before, area_after : pixel (voxel) counts
    status : ``"moved 2.4 px"`` (changed; the number is ``moved_px``); ``"kept"`` (the
        given boundary already lies on a plausible edge, or the solve left it in
        place); ``"no evidence"`` (the object's inside and surroundings look alike,
        or the solve would remove it: the input mask is kept); ``"no room"`` (exact
        / factor mode: the area does not fit in the crop).
    moved_px : changed pixels per boundary pixel of the given object (about the
        mean distance the boundary moved), 0 if kept
    """

    label: int
    area_before: int
    area_after: int
    status: str
    moved_px: float = 0.0


@dataclass
class _Crop:
    index: int  # compact label id
    sl: tuple  # slices of the crop in the image
    obj: np.ndarray  # given object in the crop (bool)
    other: np.ndarray  # pixels of other objects (bool)
    cost: Optional[np.ndarray] = None  # (2, *crop) float32
    edge: Optional[np.ndarray] = None  # (*crop) float32
    lo: int = 0  # area bounds (pixels)
    hi: int = 0
    status: str = "kept"
    t: Optional[np.ndarray] = None  # evidence (boundary at t = 1/2)
    moved: float = 0.0
    din: Optional[np.ndarray] = None  # distance to the given boundary inside / outside the object
    dout: Optional[np.ndarray] = None
    box: tuple = ()  # part of the crop solved (``cost`` and ``edge`` hold only it)


def _crops(compact, ids, slices, margin, planes=False):
    """One crop per object; ``planes``: every object lies in one plane of axis 0 and its
    crop is that plane's 2-D window (an integer index on axis 0: views stay 2-D)."""
    spatial = compact.shape
    out = []
    for lab in ids:
        s = slices[lab - 1]
        sl = tuple(slice(max(a.start - margin, 0), min(a.stop + margin, n)) for a, n in zip(s, spatial))
        if planes:
            sl = (s[0].start,) + sl[1:]
        c = compact[sl]
        obj = c == lab
        out.append(_Crop(lab, sl, obj, (c != 0) & ~obj))
    return out


def _prepare(
    crop, feat, prob, *, band, mask_weight, volume_mode, target_factor, area_tolerance, edge, edge_beta, edge_position
):
    """Costs, edge weight and area bounds of one crop (sets ``crop.status`` if skipped)."""
    area = int(crop.obj.sum())
    band = object_band(area, crop.obj.ndim, band)
    ev = object_evidence(feat, crop.obj, crop.other, band, prob, edge_position, stop_if_kept=volume_mode == "interval")
    t, din, dout, prior = ev.t, ev.din, ev.dout, ev.prior
    crop.din, crop.dout = din, dout  # (reused when the solution is rounded)
    if t is None:
        crop.status = "no evidence"
        return
    if volume_mode != "interval":
        prior = crop.obj  # the area is known: trust the given shape
    elif ev.keep:
        return  # the given boundary lies on a plausible edge: "kept"
    free = ~crop.other
    if volume_mode == "interval":
        lo, hi = int((din > band).sum()), int(((dout <= band) & free).sum())
        if area_tolerance is not None:
            lo = max(lo, int(np.ceil(area * (1 - area_tolerance))))
            hi = min(hi, int(area * (1 + area_tolerance)))
        crop.lo, crop.hi = lo, max(lo, hi)
        allowed = free & (dout <= band)
    else:
        n_free = int(free.sum())
        crop.lo = crop.hi = int(min(round(area * target_factor), n_free - 1))
        if crop.lo < 1:
            crop.status = "no room"
            return
        allowed = free
    crop.t = t
    # pixels barred from the object are background whatever the solve: it runs on the
    # box of the others only, grown by one pixel so the TV term sees the same neighbours
    box = crop.box = grown_box(allowed)
    t_box, prior_box = t[box], prior[box]
    c1 = np.clip(1.0 - t_box, 0.0, 1.0) + mask_weight * ~prior_box
    c0 = np.clip(t_box, 0.0, 1.0) + mask_weight * prior_box
    if volume_mode == "interval":
        c0[din[box] > band] = _PROHIBITIVE
        c1[dout[box] > band] = _PROHIBITIVE
    c1[crop.other[box]] = _PROHIBITIVE
    crop.cost = np.stack([c0, c1]).astype(np.float32)
    crop.edge = _edge_weight(t, box, edge_beta) if edge else np.ones(c0.shape, np.float32)


def _edge_weight(t, box, edge_beta):
    """``e = 1 / (1 + edge_beta |grad t|)`` on ``box`` of the crop (the gradient of ``t``
    clipped to [-0.5, 1.5], taken on the box grown by one pixel: the values of the whole
    crop's)."""
    outer = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    g = np.sqrt(sum(gi**2 for gi in np.gradient(np.clip(t[outer], -0.5, 1.5))))[inner]
    return (1.0 / (1.0 + edge_beta * g)).astype(np.float32)


def _batches(crops, budget=_BATCH_PIXELS):
    """Groups of crops of similar size (sorted by size; padding waste bounded)."""
    todo = sorted((c for c in crops if c.cost is not None), key=lambda c: c.edge.size)
    groups, cur = [], []
    for c in todo:
        shape = np.maximum.reduce([np.array(x.edge.shape) for x in cur + [c]])
        padded = int(np.prod(shape)) * (len(cur) + 1)
        real = sum(x.edge.size for x in cur) + c.edge.size
        if cur and (padded > budget or padded > 1.6 * real):
            groups.append(cur)
            cur = []
        cur.append(c)
    if cur:
        groups.append(cur)
    return groups


def _solve_group(group, *, volume_mode, epsilon, tv_weight, max_num_iter):
    """One batched VPTV solve of the crops' solve boxes; returns ``u_1`` per crop (on the whole crop)."""
    import torch

    from ..solver.reference import vptv_iterate

    shape = tuple(np.maximum.reduce([np.array(c.edge.shape) for c in group]))
    n = len(group)
    cost = np.zeros((n, 2) + shape, np.float32)
    cost[:, 1] = _PROHIBITIVE  # padding is background
    edge = np.ones((n,) + shape, np.float32)
    for i, c in enumerate(group):
        region = tuple(slice(0, s) for s in c.edge.shape)
        cost[(i, slice(None)) + region] = c.cost
        edge[(i,) + region] = c.edge
    size = float(np.prod(shape))
    lo = np.array([c.lo for c in group], float) / size
    hi = np.array([c.hi for c in group], float) / size
    cost_t = torch.from_numpy(cost)
    kw = {}
    if volume_mode == "interval":
        kw["volume_bounds"] = (torch.from_numpy(np.stack([1 - hi, lo], 1)), torch.from_numpy(np.stack([1 - lo, hi], 1)))
    else:
        kw["volumes"] = torch.from_numpy(np.stack([1 - lo, lo], 1))
    with torch.no_grad():
        state = vptv_iterate(
            cost_t,
            epsilon=epsilon,
            tv_weight=tv_weight,
            edge_weight=torch.from_numpy(edge),
            max_num_iter=max_num_iter,
            **kw,
        )
    u1 = state.u[:, 1].numpy()
    return [_whole_crop(c, u1[(i,) + tuple(slice(0, s) for s in c.edge.shape)]) for i, c in enumerate(group)]


def _whole_crop(crop, u1_box):
    """``u_1`` on the whole crop from its solved box (0 outside it: barred from the object)."""
    u1 = np.zeros(crop.obj.shape, np.float32)
    u1[crop.box] = u1_box
    return u1


def _round(crop, u1, fill_holes):
    """Labels of one crop: ``u_1 > 1/2`` with the count clipped to the area bounds."""
    # ties (u_1 ~ 0 or ~ 1 over wide areas) are broken towards the given mask's inside, so
    # a count raised to the lower area bound grows one connected layer, not scattered pixels
    sd = crop.dout - crop.din
    score = np.where(crop.other, -1.0, u1.astype(np.float64) - 1e-4 * sd)
    count = int(np.clip(np.count_nonzero(score > 0.5), crop.lo, crop.hi))
    new = np.zeros(score.shape, bool)
    if count > 0:
        flat = np.argpartition(-score.ravel(), count - 1)[:count]
        new.ravel()[flat] = True
    new &= ~crop.other
    box = grown_box(new)
    if box is None:
        return new
    # holes and pieces of ``new`` lie in its bounding box grown by one pixel (the ring
    # around it is outside ``new`` and connects to the crop's edge): work there only
    sub, obj = new[box], crop.obj[box]
    if fill_holes:
        # fill only holes the given mask calls object (a ring-shaped nucleus keeps its hole)
        sub |= _holes(sub) & obj
    comp, k = ndi.label(sub)
    if k > 1:
        hit = np.unique(comp[obj & (comp > 0)])
        sub &= np.isin(comp, hit[hit > 0])
    return new


def _holes(mask):
    """The holes of ``mask``: background components (face-connected) that do not touch
    the array's edge -- what ``ndi.binary_fill_holes`` adds, from one labelling instead
    of its repeated dilations."""
    comp, k = ndi.label(~mask)
    if k == 0:
        return np.zeros(mask.shape, bool)
    edge = np.zeros(k + 1, bool)
    edge[0] = True  # (the mask itself)
    for axis in range(mask.ndim):
        edge[comp.take([0, -1], axis=axis)] = True
    return ~edge[comp]


def _perimeter(mask):
    """Boundary pixels of ``mask`` (at least 1): those with a face neighbour outside it
    (the array's edge is not a boundary: ``ndi.binary_erosion(border_value=1)``'s)."""
    interior = mask.copy()
    for axis in range(mask.ndim):
        lower = (slice(None),) * axis + (slice(None, -1),)
        upper = (slice(None),) * axis + (slice(1, None),)
        interior[upper] &= mask[lower]
        interior[lower] &= mask[upper]
    return max(int(np.count_nonzero(mask & ~interior)), 1)


def _gain(crop, new):
    """``(gain, moved)`` of replacing the given object by ``new`` (px): ``gain`` = data
    term of the given mask minus that of ``new`` (costs ``1 - t`` inside, ``t`` outside,
    ``t`` clipped to [0, 1]) per boundary pixel of the given object -- about the
    distance moved times how clearly the evidence says so --; ``moved`` = changed
    pixels per boundary pixel of the two outlines' mean (for a ring between two
    outlines its mean width: the distance the boundary moved)."""
    lose = crop.obj & ~new
    win = new & ~crop.obj & ~crop.other
    # boundary pixels of the given object: those with a face neighbour outside it (din = 1)
    given = max(int(np.count_nonzero(crop.din == 1)), 1)
    t_lose, t_win = np.clip(crop.t[lose], 0.0, 1.0), np.clip(crop.t[win], 0.0, 1.0)
    gain = float((1 - 2 * t_lose).sum() + (2 * t_win - 1).sum())
    return gain / given, float(lose.sum() + win.sum()) / (0.5 * (given + _perimeter(new)))


def _decide(crop, new, gated):
    """The object's new mask and status: it moves only with evidence (``gated``: interval
    mode; a data-term gain of at least ``_MIN_GAIN`` px)."""
    gain, moved = _gain(crop, new)
    if moved == 0 or (gated and gain < _MIN_GAIN):
        crop.status, crop.moved = "kept", 0.0
        return crop.obj.copy()
    crop.status, crop.moved = f"moved {moved:.1f} px", moved
    return new


def _paste(out, best, crop, new, u1):
    """Write ``new`` into ``out`` with the crop's id; a pixel claimed by two objects
    goes to the one with the larger ``u_1`` (touching objects never merge)."""
    view, bview = out[crop.sl], best[crop.sl]
    view[(view == crop.index)] = 0
    take = new & ((view == 0) | (u1 > bview))
    take &= ~crop.other  # never overwrite another object's given pixels
    view[take] = crop.index
    bview[take] = u1[take]


def correct_objects_iter(
    features,
    compact,
    ids,
    slices,
    *,
    volume_mode="interval",
    volume_factor=1.0,
    area_tolerance=None,
    band=None,
    margin=None,
    mask_weight=0.15,
    epsilon=0.01,
    tv_weight=0.05,
    edge=True,
    edge_beta=10.0,
    smooth=1.0,
    fill_holes=True,
    max_num_iter=300,
    prob=None,
    planes=False,
    edge_position="gradient",
):
    """Correct all objects of ``compact`` (ids ``1..n``) together (a generator).

    Parameters: see :func:`napari_vptv.core.correct.mask.correct_mask`; ``planes=True``
    (slice-by-slice stacks): every id lies in one plane of axis 0 and is corrected
    as a 2-D object of that plane (smoothing in-plane only). Yields ``(done,
    total)`` after every batched solve; returns (``StopIteration.value``)
    labels : ndarray, same shape as ``compact`` (compact ids)
    report : list of :class:`ObjectCorrection` (compact ids in ``label``)
    """
    feats = features
    if smooth > 0:
        sigma = (0.0,) + (smooth,) * (compact.ndim - 1) if planes else smooth
        feats = np.stack([ndi.gaussian_filter(ch, sigma) for ch in features]).astype(np.float32)
    widest = int(band) if band is not None else max(AUTO_BAND_RANGE)
    m = int(margin) if margin is not None else 2 * widest + 6
    crops = _crops(compact, ids, slices, m, planes)
    for c in crops:
        _prepare(
            c,
            feats[(slice(None),) + c.sl],
            None if prob is None else prob[c.sl],
            band=band,
            mask_weight=mask_weight,
            volume_mode=volume_mode,
            target_factor=volume_factor,
            area_tolerance=area_tolerance,
            edge=edge,
            edge_beta=edge_beta,
            edge_position=edge_position,
        )
    groups = _batches(crops)
    results = {}
    for done, group in enumerate(groups, start=1):
        for c, u1 in zip(
            group,
            _solve_group(
                group, volume_mode=volume_mode, epsilon=epsilon, tv_weight=tv_weight, max_num_iter=max_num_iter
            ),
        ):
            results[c.index] = u1
        yield done, len(groups)
    out = _assemble(compact, crops, results, fill_holes, volume_mode == "interval")
    return out, _report(out, crops)


def _assemble(compact, crops, results, fill_holes, gated):
    """The corrected labels: each solved object rounded, decided and pasted into a copy
    of ``compact``."""
    out = compact.copy()
    best = np.zeros(compact.shape, np.float32)
    for c in crops:
        if c.index in results:
            new = _round(c, results[c.index], fill_holes)
            if new.any():
                new = _decide(c, new, gated)
                _paste(out, best, c, new, results[c.index])
            else:
                c.status = "no evidence"
    return out


def _report(out, crops) -> List[ObjectCorrection]:
    """One :class:`ObjectCorrection` per crop; ``out`` is cleaned in place (pieces cut
    off by a neighbour dropped, an object lost to its neighbours restored)."""
    report: List[ObjectCorrection] = []
    for c in crops:
        area = int(c.obj.sum())
        if not c.status.startswith("moved"):
            # as given (pasted back or never touched): no neighbour takes a given pixel
            report.append(ObjectCorrection(c.index, area, area, c.status, round(c.moved, 2)))
            continue
        mine = out[c.sl] == c.index
        comp, k = ndi.label(mine)
        if k > 1:  # a neighbour's claim cut off a piece: drop pieces not touching the given object
            hit = np.unique(comp[c.obj & mine])
            out[c.sl][mine & ~np.isin(comp, hit[hit > 0])] = 0
        after = int((out[c.sl] == c.index).sum())
        if after == 0:  # lost to its neighbours: restore the given object
            out[c.sl][c.obj] = c.index
            after, c.status, c.moved = area, "no evidence", 0.0
        report.append(ObjectCorrection(c.index, area, after, c.status, round(c.moved, 2)))
    return report
