"""Correct an existing label mask with VPTV (no napari, no Qt).

A user has a rough mask of nuclei or cells (thresholding, another tool, a quick
hand drawing) and wants it snapped to the image's boundaries without the objects
growing, shrinking, merging or vanishing. The volume constraint of VPTV (the
paper's eq. 2 / 11) is made for this: the mask gives each object's expected area,
the image gives the edges.

>>> from napari_vptv.core.correct import correct_mask
>>> corrected = correct_mask(image, rough_labels, channel_axis=-1)   # doctest: +SKIP

Two modes:

``"objects"`` (instance labels, or a binary mask = one object)
    For every label id: crop a margin around the object, estimate a two-class
    colour / intensity model from the mask's inside and outside in the crop (or take
    the pretrained VPTVU-net's nucleus probabilities), set the object's volume
    ``V_1`` to its mask area (times ``volume_factor``) as a fraction of the crop,
    solve the two-phase VPTV problem (Algorithm 1) on the crop, keep the connected
    components that overlap the given object and paste them back with the same id.
    Pixels of other objects are outside the crop's domain (a prohibitive cost for the
    object class), so objects never merge and ids are preserved.
``"semantic"`` (e.g. background / cytoplasm / nucleus)
    One multi-class VPTV on the whole image; class ``i``'s volume is its fraction in
    the given mask, the class models are estimated from the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np

from .segment import prepare_image

__all__ = ["correct_mask", "correct_mask_iter", "CorrectionProgress", "CORRECTION_MODES", "CORRECTION_MODELS"]

CORRECTION_MODES = ("objects", "semantic")
CORRECTION_MODELS = ("colour", "vptv-unet")
COLOUR_SIMILARITIES = ("gaussian", "mahalanobis", "mean", "histogram")

#: cost added to the object class on pixels of other objects (costs are in [0, 1])
_PROHIBITIVE = 50.0


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


def _check_params(mode, model, similarity, volume_factor, volume_tolerance, margin, epsilon, tv_weight,
                  em_rounds, max_num_iter):
    if mode not in CORRECTION_MODES:
        raise ValueError(f"mode must be one of {CORRECTION_MODES}, got {mode!r}")
    if model not in CORRECTION_MODELS:
        raise ValueError(f"model must be one of {CORRECTION_MODELS}, got {model!r}")
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


# ----------------------------------------------------------------------------- costs
def _fit_cost(features, labels, weights_mask, n_classes, similarity):
    """Costs ``(K, *spatial)`` in [0, 1] from a class model fitted to ``labels``.

    The model (Gaussian per class, or a colour histogram) is fitted on the pixels
    where ``weights_mask`` is True. The negative log-likelihoods are turned into
    differences to the best class and clipped at ``_CLIP`` nats, then divided by
    ``_CLIP``: a pixel's costs say how much less likely each class is than the best
    one, with very unlikely classes saturating (robust to colour outliers).
    """
    import torch

    from .costs import GaussianModel, HistogramModel

    c = features.shape[0]
    pix = features.reshape(c, -1)[:, weights_mask.ravel()].T.astype(np.float64)  # (P, C)
    lab = labels.ravel()[weights_mask.ravel()]
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None]
    if similarity == "histogram":
        model = HistogramModel.fit(pix, lab, n_classes, bins=16 if c > 1 else 64, sigma=1.0, floor=1e-4)
    else:
        means = np.empty((n_classes, c))
        covs = np.empty((n_classes, c, c))
        spread = np.atleast_2d(np.cov(pix.T)) if pix.shape[0] > 1 else np.eye(c) * 1e-2
        for i in range(n_classes):
            p = pix[lab == i]
            if p.shape[0] == 0:
                means[i] = pix.mean(0)
                covs[i] = spread
                continue
            means[i] = p.mean(0)
            covs[i] = np.atleast_2d(np.cov(p.T)) if p.shape[0] > c + 1 else spread
        model = GaussianModel(means, covs, similarity)
    with torch.no_grad():
        nll = model.cost(x)[0].double().numpy()
    if similarity == "mean":
        # squared distances -> nats with the pooled per-channel variance of the classes
        var = float(np.mean([np.trace(cv) / c for cv in covs]))
        nll = nll / (2 * max(var, 1e-6))
    diff = nll - nll.min(axis=0, keepdims=True)
    return (np.minimum(diff, _CLIP) / _CLIP).astype(np.float32)


_CLIP = 8.0


def _net_nucleus_probability(image, channel_axis, device):
    """Nucleus probability map of the shipped VPTVU-net (WBC images only)."""
    from ..nn.weights import predict_wbc  # lazy: imports torch and the network

    arr = np.asarray(image)
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(
            f"model 'vptv-unet' needs an RGB image (H, W, 3) with channel_axis=-1, got shape {np.shape(image)}"
        )
    _, probs = predict_wbc(arr, method="vptv-unet", device=device)
    return probs  # (3, H, W): background, cytoplasm, nucleus


def _prob_cost(p_classes):
    """Costs in [0, 1] from class probabilities ``(K, ...)`` (same clipping as colour)."""
    nll = -np.log(np.clip(p_classes, 1e-6, None))
    diff = nll - nll.min(axis=0, keepdims=True)
    return (np.minimum(diff, _CLIP) / _CLIP).astype(np.float32)


# ----------------------------------------------------------------------------- solver
def _solve(features, cost, volumes, volume_tolerance, epsilon, tv_weight, edge, max_num_iter, seed, device,
           domain=None):
    """VPTV labels of a crop; two classes are rounded by a quantile of ``u_1``.

    For two classes the volume-respecting rounding of
    :func:`napari_vptv.core.segment.round_to_volumes` (the ``eps -> 0`` transport
    limit with cost ``-log u``) is a threshold: the ``V_1 |Omega|`` pixels with the
    largest ``log u_1 - log u_0`` (= largest ``u_1``) are class 1. It is computed
    directly here (a sort instead of an eps-scaling loop). In interval mode the
    argmax count is clipped to the bounds.
    """
    from .segment import vptv_segment

    volumes = np.asarray(volumes, dtype=float)
    kw = {}
    if volume_tolerance > 0:
        lo = np.clip(volumes * (1 - volume_tolerance), 0, 1)
        hi = np.clip(volumes * (1 + volume_tolerance), 0, 1)
        # keep the interval feasible: sum lo <= 1 <= sum hi
        kw["volume_bounds"] = (lo, np.maximum(hi, volumes))
    else:
        kw["volumes"] = volumes
    two = len(volumes) == 2
    res = vptv_segment(
        features,
        len(volumes),
        cost=cost,
        epsilon=epsilon,
        tv_weight=tv_weight,
        edge=edge,
        channel_axis=0,
        max_num_iter=max_num_iter,
        rounding="argmax" if two else "volume",
        seed=seed,
        device=device,
        **kw,
    )
    if not two:
        return res.labels
    u1 = res.probabilities[1]
    n = u1.size
    if volume_tolerance > 0:
        lo, hi = kw["volume_bounds"][0][1] * n, kw["volume_bounds"][1][1] * n
        count = int(np.clip(np.count_nonzero(u1 > 0.5), np.ceil(lo), np.floor(hi)))
    else:
        count = int(round(volumes[1] * n))
    score = u1.ravel().astype(np.float64)
    if domain is not None:
        score[~domain.ravel()] = -1.0
        count = min(count, int(domain.sum()))
    order = np.argsort(-score, kind="stable")
    labels = np.zeros(n, np.int32)
    labels[order[:count]] = 1
    return labels.reshape(u1.shape)


def _auto_margin(area, ndim):
    # equivalent radius of the object; a quarter of it, at least 8 pixels
    r = (area / np.pi) ** 0.5 if ndim == 2 else (3 * area / (4 * np.pi)) ** (1 / 3)
    return int(max(8, round(0.5 * r)))


def _core_pixels(obj, domain, area, ndim, fraction=0.35, min_pixels=16):
    """Pixels to fit the first class model on: away from the given boundary.

    A rough mask is wrong mostly near its boundary (shifted, dilated, hand-drawn), so
    the inside model is fitted on pixels deeper than ``r`` inside the object and the
    outside model on pixels farther than ``r`` from it, ``r = fraction x`` the
    object's equivalent radius (at least 1 pixel). Falls back to all pixels of a
    class that would keep fewer than ``min_pixels``.
    """
    from scipy.ndimage import distance_transform_edt

    radius = (area / np.pi) ** 0.5 if ndim == 2 else (3 * area / (4 * np.pi)) ** (1 / 3)
    r = max(1.0, fraction * radius)
    inside = distance_transform_edt(obj) > r
    outside = (distance_transform_edt(~obj) > r) & domain
    if inside.sum() < min_pixels:
        inside = obj
    if outside.sum() < min_pixels:
        outside = domain & ~obj
    return inside | outside


def _keep_overlapping(obj_new, obj_old):
    """Connected components of ``obj_new`` that overlap ``obj_old`` (else the largest)."""
    from scipy import ndimage as ndi

    comp, n = ndi.label(obj_new)
    if n <= 1:
        return obj_new
    hit = np.unique(comp[obj_old & (comp > 0)])
    hit = hit[hit > 0]
    if hit.size == 0:
        sizes = np.bincount(comp.ravel())[1:]
        hit = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(comp, hit)


def _correct_object(features, out, mask, lab, sl_obj, *, margin, volume_factor, volume_tolerance,
                    epsilon, tv_weight, edge, model_prob, similarity, em_rounds, max_num_iter, seed, device,
                    mask_weight, fill_holes, smooth):
    spatial = features.shape[1:]
    obj_full = mask[sl_obj] == lab
    area = int(obj_full.sum())
    m = _auto_margin(area, len(spatial)) if margin is None else int(margin)
    sl = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, n in zip(sl_obj, spatial))
    feat = features[(slice(None),) + sl]
    cfeat = feat
    if smooth > 0:
        from scipy.ndimage import gaussian_filter

        cfeat = np.stack([gaussian_filter(ch, smooth) for ch in feat]).astype(np.float32)
    obj = mask[sl] == lab
    cur = out[sl]
    other = (cur != 0) & (cur != lab)
    domain = ~other
    n_pix = obj.size
    n_dom = int(domain.sum())
    target = float(np.clip(area * volume_factor, 1, max(n_dom - 1, 1)))
    if n_dom < 2 or target >= n_dom:
        return  # no room to move: keep the given object as it is
    v1 = target / n_pix
    volumes = np.array([1.0 - v1, v1])

    labels = obj.astype(np.int64)
    fit_on = _core_pixels(obj, domain, area, len(spatial))
    new = obj
    for r in range(max(int(em_rounds), 0) + 1):
        if model_prob is not None and r == 0:
            p1 = model_prob[sl]
            cost = _prob_cost(np.stack([1.0 - p1, p1]))
        elif model_prob is not None:
            break
        else:
            cost = _fit_cost(cfeat, labels, fit_on if r == 0 else domain, 2, similarity)
        if mask_weight > 0:
            cost[1][~obj] += mask_weight
            cost[0][obj] += mask_weight
        cost[1][other] = _PROHIBITIVE
        seg = _solve(feat, cost, volumes, volume_tolerance, epsilon, tv_weight, edge, max_num_iter, seed, device,
                     domain=domain)
        new = (seg == 1) & domain
        if fill_holes:
            from scipy.ndimage import binary_fill_holes

            # fill only holes the given mask calls object (a ring-shaped nucleus keeps its hole)
            new = (new | (binary_fill_holes(new) & obj)) & domain
        labels = new.astype(np.int64)
        if not new.any():
            break
    new = _keep_overlapping(new, obj)
    if not new.any():
        return  # the object would vanish: keep it as given
    cur[cur == lab] = 0
    cur[new] = lab


def correct_mask_iter(
    image,
    mask,
    *,
    channel_axis: Optional[int] = None,
    mode: str = "objects",
    volume_factor: float = 1.0,
    volume_tolerance: float = 0.0,
    margin: Optional[int] = None,
    epsilon: float = 0.01,
    tv_weight: float = 0.05,
    edge: bool = True,
    model: str = "colour",
    similarity: str = "gaussian",
    em_rounds: int = 1,
    mask_weight: float = 0.4,
    fill_holes: bool = True,
    smooth: float = 0.0,
    max_num_iter: int = 300,
    seed: int = 0,
    device: str = "cpu",
) -> Generator[CorrectionProgress, None, np.ndarray]:
    """Generator version of :func:`correct_mask`.

    Yields a :class:`CorrectionProgress` after every object (semantic mode: after
    every solver pass) and returns the corrected labels (``StopIteration.value``).
    Stopping the generator early (e.g. a Cancel button) leaves the inputs untouched.
    Parameters: see :func:`correct_mask`.
    """
    from scipy import ndimage as ndi

    _check_params(mode, model, similarity, volume_factor, volume_tolerance, margin, epsilon, tv_weight,
                  em_rounds, max_num_iter)
    if not np.isfinite(mask_weight) or mask_weight < 0:
        raise ValueError(f"mask_weight must be >= 0, got {mask_weight}")
    if not np.isfinite(smooth) or smooth < 0:
        raise ValueError(f"smooth must be >= 0 (a Gaussian sigma in pixels), got {smooth}")
    features = prepare_image(image, channel_axis)
    spatial = features.shape[1:]
    mask_in = np.asarray(mask)
    m = _check_mask(mask, spatial)
    out_dtype = mask_in.dtype if np.issubdtype(mask_in.dtype, np.integer) else np.int32

    model_prob = None
    if model == "vptv-unet":
        if len(spatial) != 2:
            raise ValueError("model 'vptv-unet' works on 2-D RGB images only")
        model_prob = _net_nucleus_probability(image, channel_axis, device)

    if mode == "semantic":
        values, inverse = np.unique(m, return_inverse=True)
        inverse = inverse.reshape(m.shape)
        k = values.size
        if k < 2:
            raise ValueError(
                f"semantic mode needs at least two classes in the mask (e.g. background and nucleus), "
                f"got only the value {int(values[0])}"
            )
        frac = np.bincount(inverse.ravel(), minlength=k) / inverse.size
        if volume_factor != 1.0:
            # the factor scales the foreground classes; the first (lowest) value is background
            fg = frac[1:] * volume_factor
            if fg.sum() >= 1:
                raise ValueError(
                    f"volume_factor {volume_factor} makes the foreground classes cover {fg.sum():.3f} >= 1 "
                    "of the image"
                )
            frac = np.concatenate([[1 - fg.sum()], fg])
        frac = np.clip(frac, 1e-6, None)
        frac = frac / frac.sum()
        total = 1 + (0 if model_prob is not None else int(em_rounds))
        labels = inverse
        for r in range(total):
            if model_prob is not None:
                if k != 3:
                    raise ValueError(
                        f"model 'vptv-unet' in semantic mode needs a 3-class mask (background, cytoplasm, "
                        f"nucleus), got {k} classes {values.tolist()}"
                    )
                cost = _prob_cost(model_prob)
            else:
                cost = _fit_cost(features, labels, np.ones(spatial, bool), k, similarity)
            labels = _solve(features, cost, frac, volume_tolerance, epsilon, tv_weight, edge, max_num_iter,
                            seed, device)
            yield CorrectionProgress(r + 1, total, 0)
        return values[labels].astype(out_dtype)

    p_nuc = None if model_prob is None else model_prob[2]
    # compact ids 1..n internally (label ids may be large and sparse), mapped back at the end
    values, inverse = np.unique(m, return_inverse=True)
    if values[0] != 0:
        values = np.concatenate([[0], values])
        inverse = inverse + 1
    compact = inverse.reshape(m.shape).astype(np.int64)
    slices = ndi.find_objects(compact)
    ids = [i + 1 for i, s in enumerate(slices) if s is not None]
    out = compact.copy()
    for done, lab in enumerate(ids, start=1):
        _correct_object(
            features, out, compact, lab, slices[lab - 1],
            margin=margin, volume_factor=volume_factor, volume_tolerance=volume_tolerance, epsilon=epsilon,
            tv_weight=tv_weight, edge=edge, model_prob=p_nuc, similarity=similarity, em_rounds=em_rounds,
            max_num_iter=max_num_iter, seed=seed, device=device, mask_weight=mask_weight,
            fill_holes=fill_holes, smooth=smooth,
        )
        yield CorrectionProgress(done, len(ids), int(values[lab]))
    return values[out].astype(out_dtype)


def correct_mask(
    image,
    mask,
    *,
    channel_axis: Optional[int] = None,
    mode: str = "objects",
    volume_factor: float = 1.0,
    volume_tolerance: float = 0.0,
    margin: Optional[int] = None,
    epsilon: float = 0.01,
    tv_weight: float = 0.05,
    edge: bool = True,
    model: str = "colour",
    similarity: str = "gaussian",
    em_rounds: int = 1,
    mask_weight: float = 0.4,
    fill_holes: bool = True,
    smooth: float = 0.0,
    max_num_iter: int = 300,
    seed: int = 0,
    device: str = "cpu",
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> np.ndarray:
    """Snap a rough label mask to the image's boundaries, keeping each object's area.

    Parameters
    ----------
    image : ndarray
        2-D or 3-D image, grey or with a channel axis (``channel_axis``).
    mask : ndarray of int (or bool)
        Instance labels (0 = background), a binary mask (one object), or -- with
        ``mode="semantic"`` -- class labels such as 0 / 1 / 2. Same spatial shape as
        ``image``. Float arrays are accepted only if they hold whole numbers.
    channel_axis : int or None
        Axis of the colour channels (``-1`` for RGB ``(H, W, 3)``); None for grey.
    mode : {"objects", "semantic"}
        ``"objects"``: one two-phase VPTV per label id on a crop around it.
        ``"semantic"``: one multi-class VPTV on the whole image, class volumes from
        the mask's class fractions.
    volume_factor : float
        The target volume ``V`` of each object (eq. 2) is its mask area times this
        factor, e.g. 1.1 if the mask is known to be about 10 % too small.
    volume_tolerance : float
        0 (default): exact volumes, ``mean u_1 = V`` (the paper's U(V)). ``t > 0``:
        interval volumes ``V (1 - t) <= mean u_1 <= V (1 + t)``, the image decides the
        area within the interval (useful if the mask is systematically too large or
        too small by an unknown amount).
    margin : int or None
        Pixels added around each object's bounding box for its crop (clipped at the
        image border). None: half the object's equivalent radius, at least 8.
    epsilon : float
        Entropic regularisation ``eps`` (eq. 11).
    tv_weight : float
        ``lambda``, weight of the (edge-weighted) TV term (eq. 11). The costs are
        scaled to [0, 1] (see Notes).
    edge : bool
        Use the edge function ``e(x) = 1/(1 + beta |grad G_sigma * I|)`` in the TV.
    model : {"colour", "vptv-unet"}
        Costs from a colour / intensity model estimated from the mask (inside vs.
        outside each object's crop), or from the shipped VPTVU-net's nucleus
        probability (white-blood-cell RGB images, nuclei masks; needs the shipped
        weights).
    similarity : {"gaussian", "mahalanobis", "mean", "histogram"}
        Class model for ``model="colour"`` (see :mod:`napari_vptv.core.costs`).
    em_rounds : int
        Re-estimations of the class model from the corrected mask, each followed by
        another solve (Algorithm 1 step 5 done between solves). 0 = one solve.
    max_num_iter : int
        ``T``, iterations per solve.
    seed : int
        Seed (the solver is deterministic; kept for API symmetry).
    device : str
        torch device.
    progress : callable ``(done, total) -> None``, optional
        Called after every object.
    should_stop : callable ``() -> bool``, optional
        Checked after every object; if it returns True the correction stops and
        ``InterruptedError`` is raised (the inputs are untouched).

    Returns
    -------
    labels : ndarray
        Corrected mask, same shape as ``mask``, same dtype for integer masks (int32
        otherwise). Label ids are preserved; objects never merge; an object the
        correction would remove is kept as given.

    Raises
    ------
    ValueError
        Mask shape differs from the image's spatial shape, empty mask, float mask
        with non-integer values, NaN / infinite image values, invalid parameters.

    Notes
    -----
    Per object (crop ``Omega``, given object ``M``), the cost of class ``i``
    (0 = outside, 1 = object) is

    ``c_i(x) = min(l_best(x) - l_i(x), 8) / 8 + beta [x in M xor i = 1]``

    with ``l_i`` the log-likelihood of the class model (so the data part is in
    [0, 1] and 0 for the most likely class) and ``beta = mask_weight``: leaving the
    given mask costs ``beta``, so only pixels whose colour clearly disagrees with the
    mask move, and an accurate mask stays as it is. The first class model is fitted
    on pixels away from the given boundary (deeper than 0.35 x the object's
    equivalent radius inside it / farther outside it), because a rough mask is wrong
    mostly near its boundary; ``em_rounds`` refits on the corrected object.
    Pixels of other objects get a prohibitive cost for the object class. The
    two-phase problem (eq. 11 with ``U(V)``, ``V_1 = target / |Omega|``) is solved
    by Algorithm 1; labels are the ``V_1 |Omega|`` pixels with the largest
    ``u_1`` (the two-class case of the volume-respecting rounding), then holes are
    filled and only the components touching ``M`` are kept, so the corrected area
    equals the target up to those two steps.

    References
    ----------
    F. Li, J. Liu, Z. Cui, Z. Huang, X.-C. Tai, "Volume preserving image segmentation
    with entropic regularization optimal transport and its applications in deep
    learning", eq. 11 and Algorithm 1.
    """
    gen = correct_mask_iter(
        image, mask, channel_axis=channel_axis, mode=mode, volume_factor=volume_factor,
        volume_tolerance=volume_tolerance, margin=margin, epsilon=epsilon, tv_weight=tv_weight, edge=edge,
        model=model, similarity=similarity, em_rounds=em_rounds, mask_weight=mask_weight,
        fill_holes=fill_holes, smooth=smooth, max_num_iter=max_num_iter, seed=seed, device=device,
    )
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
