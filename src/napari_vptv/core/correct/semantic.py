"""Semantic mode of the mask correction (no napari, no Qt): one multi-class VPTV on
the whole image, class volumes from the mask's class fractions, class models
estimated from the mask (or given class probabilities); see
:func:`napari_vptv.core.correct.mask.correct_mask`."""

from __future__ import annotations

import numpy as np

__all__ = ["semantic_iter"]


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

    from ..solver.costs import GaussianModel, HistogramModel

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


def _prob_cost(p_classes):
    """Costs in [0, 1] from class probabilities ``(K, ...)`` (same clipping as colour)."""
    nll = -np.log(np.clip(p_classes, 1e-6, None))
    diff = nll - nll.min(axis=0, keepdims=True)
    return (np.minimum(diff, _CLIP) / _CLIP).astype(np.float32)


# ----------------------------------------------------------------------------- solver
def _solve(
    features, cost, volumes, volume_tolerance, epsilon, tv_weight, edge, max_num_iter, seed, device, domain=None
):
    """VPTV labels of a crop; two classes are rounded by a quantile of ``u_1``.

    For two classes the volume-respecting rounding of
    :func:`napari_vptv.core.solver.segment.round_to_volumes` (the ``eps -> 0`` transport
    limit with cost ``-log u``) is a threshold: the ``V_1 |Omega|`` pixels with the
    largest ``log u_1 - log u_0`` (= largest ``u_1``) are class 1. It is computed
    directly here (a sort instead of an eps-scaling loop). In interval mode the
    argmax count is clipped to the bounds.
    """
    from ..solver.segment import vptv_segment

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


def semantic_iter(
    features,
    m,
    model_prob,
    *,
    volume_factor,
    volume_tolerance,
    similarity,
    em_rounds,
    epsilon,
    tv_weight,
    edge,
    max_num_iter,
    seed,
    device,
    out_dtype,
):
    """Semantic mode (a generator): yields ``(done, total)`` after every solver pass,
    returns (``StopIteration.value``) the corrected class labels."""
    spatial = features.shape[1:]
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
                f"volume_factor {volume_factor} makes the foreground classes cover {fg.sum():.3f} >= 1 of the image"
            )
        frac = np.concatenate([[1 - fg.sum()], fg])
    frac = np.clip(frac, 1e-6, None)
    frac = frac / frac.sum()
    if model_prob is not None and k != 3:
        raise ValueError(
            f"evidence in semantic mode needs a 3-class mask (background, cytoplasm, nucleus), "
            f"got {k} classes {values.tolist()}"
        )
    total = 1 + (0 if model_prob is not None else int(em_rounds))
    labels = inverse
    for r in range(total):
        if model_prob is not None:
            cost = _prob_cost(model_prob)
        else:
            cost = _fit_cost(features, labels, np.ones(spatial, bool), k, similarity)
        labels = _solve(features, cost, frac, volume_tolerance, epsilon, tv_weight, edge, max_num_iter, seed, device)
        yield r + 1, total
    return values[labels].astype(out_dtype)
