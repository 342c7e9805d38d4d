"""Baseline segmentation methods of the paper's experiments (Section 6, Fig. 4).

All functions follow the shape of :func:`napari_vptv.core.solver.segment.vptv_segment`:
image first, keyword parameters after ``*``, ``channel_axis`` for colour, ``seed``
for the only random step (the k-means initialisation), and they return the same
:class:`~napari_vptv.core.solver.segment.SegmentationResult`.

``kmeans_segment``
    Nearest-mean assignment after k-means on the pixel intensities / colours.
``emtv_segment``
    EMTV (Liu, Ku & Leung 2012, the paper's ref. [8]; eq. 6): the VPTV iteration with
    ``eps = 1``, no volume constraint and the Gaussian negative log-likelihood
    ``-log(alpha_i p_i(h; m_i, Sigma_i))`` as cost, re-estimated (EM) from ``u``.
``tds_segment``
    Threshold dynamics segmentation (MBO; Esedoglu & Tsai 2006): heat-kernel
    convolution of the class indicators plus the fidelity, then thresholding
    (``argmin``), no volume constraint (the paper's eq. 2 without ``U(V)``).
``advp_segment``
    Auction dynamics with volume preservation (Jacobs, Merkurjev & Esedoglu 2018):
    threshold dynamics in which the thresholding step is an auction that assigns
    the pixels to the classes under exact volume (pixel count) constraints.
``auction_assign``, ``volume_counts``
    The membership auction used by ADVP and by the exact rounding of the solver,
    re-exported from :mod:`napari_vptv.core.solver.assign`.

Length-term scaling
-------------------
``tds_segment`` and ``advp_segment`` take the same ``tv_weight`` (``lambda``) as
VPTV, a weight on the boundary length. The heat-kernel energy
``R(u) = sum_i <u_i, G_sigma * (1 - u_i)>`` of a straight interface between two
classes is ``2 sigma / sqrt(2 pi)`` per unit length (``sigma`` = kernel standard
deviation in pixels), while ``lambda sum_i |grad u_i|`` gives ``2 lambda``; so the
threshold-dynamics energy is ``sum_i <c_i, u_i> + mu R(u)`` with
``mu = lambda sqrt(2 pi) / sigma``, which approximates the TV model (1) at the same
``lambda``. Each step minimises the linearisation (a majoriser, ``R`` is concave)
``sum_i <u_i, c_i + 2 mu G_sigma * (1 - u_i^t)>``, i.e. assigns every pixel to
``argmin_i c_i(x) - 2 mu (G_sigma * u_i^t)(x)`` -- freely (TDS) or by an auction
under the volume constraint (ADVP) -- so the energy never increases.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from ..solver.assign import auction_assign, volume_counts
from ..solver.costs import GaussianModel, kmeans_init, kmeans_labels
from ..solver.segment import SegmentationResult, _initial_model, prepare_image
from ..solver.volumes import make_volume_spec

__all__ = [
    "kmeans_segment",
    "emtv_segment",
    "tds_segment",
    "advp_segment",
    "auction_assign",
    "volume_counts",
]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _check_n_classes(n_classes) -> int:
    if n_classes is None or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes}")
    return int(n_classes)


def _hard_result(labels, n_classes, n_iter, converged, model, spec) -> SegmentationResult:
    labels = labels.astype(np.int32)
    onehot = (labels[None] == np.arange(n_classes).reshape((-1,) + (1,) * labels.ndim)).astype(np.float32)
    result = SegmentationResult.from_arrays(
        labels, onehot, n_iter=n_iter, converged=converged, class_model=model, volume_spec=spec
    )
    result.soft_volumes = result.volumes.copy()  # hard labels: u is the one-hot labelling
    return result


def _model_cost(model, x_t) -> np.ndarray:
    """Costs ``(K, *spatial)`` (float64) of a class model on features ``x_t`` (1, C, *spatial)."""
    import torch

    with torch.no_grad():
        return model.cost(x_t)[0].double().cpu().numpy()


def _onehot_t(labels, n_classes, x_t):
    import torch

    lab = torch.from_numpy(labels.astype(np.int64))
    u = torch.nn.functional.one_hot(lab, n_classes).movedim(-1, 0)[None]
    return u.to(dtype=x_t.dtype)


# --------------------------------------------------------------------------- #
# k-means
# --------------------------------------------------------------------------- #
def kmeans_segment(
    image, n_classes: int = 2, *, channel_axis: Optional[int] = None, seed: int = 0
) -> SegmentationResult:
    """k-means segmentation of the pixel intensities (or colours).

    Parameters
    ----------
    image : ndarray
        2-D or 3-D image, grey or with a channel axis.
    n_classes : int
        Number of clusters ``I`` (>= 2).
    channel_axis : int or None
        Colour axis (``-1`` for RGB ``(H, W, 3)``); None for grey.
    seed : int
        Seed of the k-means++ initialisation and of the pixel subsample
        (:func:`napari_vptv.core.solver.costs.kmeans_init`).

    Returns
    -------
    SegmentationResult
        Hard labels, ordered by increasing mean intensity (class 0 is the darkest);
        ``probabilities`` are the one-hot labels; ``class_model`` holds the means.
    """
    k = _check_n_classes(n_classes)
    feats = prepare_image(image, channel_axis)
    pixels = feats.reshape(feats.shape[0], -1).T
    means, _ = kmeans_init(pixels, k, seed=seed)
    labels = kmeans_labels(pixels, means).reshape(feats.shape[1:])
    return _hard_result(labels, k, 1, True, GaussianModel(means, None, "mean"), make_volume_spec(k, "none"))


# --------------------------------------------------------------------------- #
# EMTV
# --------------------------------------------------------------------------- #
def emtv_segment(
    image,
    n_classes: int = 2,
    *,
    tv_weight: float = 0.1,
    max_num_iter: int = 500,
    tol: float = 1e-3,
    inner_num_iter: int = 50,
    channel_axis: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
    callback: Optional[Callable[[int, int], None]] = None,
) -> SegmentationResult:
    """EMTV segmentation (the paper's eq. 6): VPTV with ``eps = 1`` and no volumes.

    The cost is the Gaussian-mixture negative log-likelihood
    ``c_i(x) = -log alpha_i + 0.5 (h - m_i)^T Sigma_i^{-1} (h - m_i) + 0.5 log det Sigma_i``;
    ``u`` is the softmax of ``-c_i - div q_i`` (the E-step with the TV dual ``q``,
    solved by :func:`napari_vptv.core.solver.reference.vptv_iterate` with ``epsilon = 1`` and
    no volume constraint), alternating with the M-step that re-estimates
    ``alpha_i = mean u_i``, ``m_i`` and ``Sigma_i`` from ``u`` (eq. 5).
    Initialised by k-means (means, covariances and fractions of the clusters).

    Parameters
    ----------
    image : ndarray
        2-D or 3-D image, grey or with a channel axis.
    n_classes : int
        Number of classes ``I``.
    tv_weight : float
        ``lambda`` of eq. 6, in units of the log-likelihood (much larger than the
        VPTV ``lambda`` for ``|h - m|^2`` costs: a Gaussian of standard deviation
        0.1 has costs of order ``1 / (2 * 0.01)``). Too large a weight for the
        class separation lets the EM update merge the classes (both Gaussians drift
        to the same mean and the labels follow the TV alone) -- a known weakness
        of EM-type segmentation, seen e.g. at ``tv_weight >= 0.2`` for two classes
        0.3 / 0.7 with noise of standard deviation 0.15.
    max_num_iter, tol : int, float
        Limit on the total number of E-step iterations, and tolerance on the RMS
        change of ``u`` (inside an E-step and between two M-steps).
    inner_num_iter : int
        Maximum iterations of one E-step.
    channel_axis : int or None
        Colour axis; None for grey.
    seed : int
        Seed of the k-means initialisation.
    device : str
        torch device.
    callback : callable ``(iteration, max_num_iter)``, optional
        Progress hook.

    Returns
    -------
    SegmentationResult
        ``labels = argmax_i u_i``; ``class_model`` is the final Gaussian model.

    References
    ----------
    J. Liu, Y.-B. Ku, S. Leung, "Expectation-maximization algorithm with total
    variation regularization for vector-valued image segmentation", J. Vis. Commun.
    Image Represent. 23(8) (2012) 1234-1244 (the paper's ref. [8]).
    """
    k = _check_n_classes(n_classes)
    _check_emtv_settings(tv_weight, max_num_iter)
    mixture = _GaussianMixture(prepare_image(image, channel_axis), k, seed, device)
    loop = {"tv_weight": tv_weight, "max_num_iter": max_num_iter, "tol": tol, "inner_num_iter": inner_num_iter}
    u, n_iter, converged = _emtv_iterate(mixture, callback=callback, **loop)
    spec = make_volume_spec(k, "none")
    return SegmentationResult.from_arrays(
        u.argmax(axis=0), u, n_iter=n_iter, converged=converged, class_model=mixture.model, volume_spec=spec
    )


def _check_emtv_settings(tv_weight, max_num_iter) -> None:
    """A ValueError for a negative / non-finite ``tv_weight`` or fewer than one iteration."""
    if not np.isfinite(tv_weight) or tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
    if int(max_num_iter) < 1:
        raise ValueError(f"max_num_iter must be >= 1, got {max_num_iter}")


class _GaussianMixture:
    """EMTV's class model: Gaussians ``(m_i, Sigma_i)`` and mixture weights ``alpha_i``.

    Initialised by k-means (means, covariances and cluster fractions). ``cost()`` is
    the negative log-likelihood ``-log alpha_i + 0.5 Mahalanobis + 0.5 log det``;
    ``update(u)`` is the M-step (eq. 5).
    """

    def __init__(self, feats, k, seed, device):
        import torch

        self.k = k
        self.dev = torch.device(device)
        self.x = torch.from_numpy(feats).to(self.dev)[None]
        self.model = _initial_model(feats, k, "gaussian", None, seed)
        pixels = feats.reshape(feats.shape[0], -1).T
        frac0 = np.bincount(kmeans_labels(pixels, self.model.means), minlength=k) / pixels.shape[0]
        self.alpha = np.clip(frac0, 1e-3, None)

    def cost(self):
        import torch

        x = self.x
        la = torch.as_tensor(np.log(self.alpha), dtype=x.dtype, device=self.dev)
        return self.model.cost(x) - la.reshape((1, self.k) + (1,) * (x.ndim - 2))

    def update(self, u) -> None:
        self.model = self.model.update(self.x, u)
        self.alpha = np.clip(u.mean(dim=tuple(range(2, u.ndim)))[0].double().cpu().numpy(), 1e-6, None)


def _emtv_iterate(mixture, *, tv_weight, max_num_iter, tol, inner_num_iter, callback):
    """Alternate E-steps (``u``, ``q``) and M-steps until ``u`` stops changing.

    Alternating minimisation (eq. 5 with TV): the E-step is iterated to tolerance
    with the parameters fixed (warm-started dual ``q``), then the M-step updates
    ``alpha``, ``m``, ``Sigma``. Returns ``u`` ``(K, *spatial)``, the total number of
    E-step iterations and whether ``u`` converged.
    """
    import torch

    from ..solver.reference import vptv_iterate

    state = None
    u_prev = None
    total = 0
    converged = False
    with torch.no_grad():
        while total < int(max_num_iter):
            state = vptv_iterate(
                mixture.cost(),
                epsilon=1.0,
                tv_weight=float(tv_weight),
                max_num_iter=min(int(inner_num_iter), int(max_num_iter) - total),
                tol=float(tol),
                state=state,
            )
            total += int(state.n_iter)
            if callback is not None:
                callback(total, max_num_iter)
            u_t = state.u
            if u_prev is not None and float(torch.sqrt(((u_t - u_prev) ** 2).mean())) < tol:
                converged = True
                break
            u_prev = u_t
            mixture.update(u_t)
    return state.u[0].cpu().numpy(), total, converged


# --------------------------------------------------------------------------- #
# threshold dynamics (TDS) and auction dynamics (ADVP)
# --------------------------------------------------------------------------- #
def _threshold_dynamics(
    image,
    n_classes,
    *,
    counts,
    tv_weight,
    sigma,
    similarity,
    update_means,
    max_num_iter,
    channel_axis,
    seed,
    callback,
    auction_kwargs,
):
    import torch
    from scipy.ndimage import gaussian_filter

    k = _check_n_classes(n_classes)
    if not np.isfinite(tv_weight) or tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma (heat-kernel standard deviation in pixels) must be > 0, got {sigma}")
    if similarity not in ("mean", "mahalanobis", "gaussian"):
        raise ValueError(f"similarity must be 'mean', 'mahalanobis' or 'gaussian', got {similarity!r}")
    if int(max_num_iter) < 1:
        raise ValueError(f"max_num_iter must be >= 1, got {max_num_iter}")
    feats = prepare_image(image, channel_axis)
    spatial = feats.shape[1:]
    n = int(np.prod(spatial))
    x = torch.from_numpy(feats)[None]
    model = _initial_model(feats, k, similarity, None, seed)
    cost = _model_cost(model, x).reshape(k, n)
    mu2 = 2.0 * tv_weight * math.sqrt(2.0 * math.pi) / sigma

    prices = None

    def assign(c):
        nonlocal prices
        if counts is None:
            return c.argmin(axis=0)
        kw = dict(auction_kwargs)
        warm = kw.pop("warm_levels", 0)
        if prices is not None and warm:
            # warm-started prices are close: skip the coarsest eps phases
            kw["epsilon_start"] = float(c.max() - c.min()) / kw.get("scaling", 5.0) ** (1 + warm)
        lab, prices = auction_assign(-c, counts, prices=prices, **kw)
        return lab

    labels = assign(cost)
    converged = False
    it = 0
    for it in range(1, int(max_num_iter) + 1):
        if update_means:
            model = model.update(x, _onehot_t(labels.reshape(spatial), k, x))
            cost = _model_cost(model, x).reshape(k, n)
        if mu2 > 0:
            conv = np.stack(
                [
                    gaussian_filter((labels == i).reshape(spatial).astype(np.float64), sigma, mode="reflect").ravel()
                    for i in range(k)
                ]
            )
            c = cost - mu2 * conv
        else:
            c = cost
        new = assign(c)
        if callback is not None:
            callback(it, max_num_iter)
        if np.array_equal(new, labels):
            converged = True
            break
        labels = new
    return labels.reshape(spatial), it, converged, model


def tds_segment(
    image,
    n_classes: int = 2,
    *,
    tv_weight: float = 0.02,
    sigma: float = 2.0,
    similarity: str = "mean",
    update_means: bool = True,
    max_num_iter: int = 100,
    channel_axis: Optional[int] = None,
    seed: int = 0,
    callback: Optional[Callable[[int, int], None]] = None,
) -> SegmentationResult:
    """Threshold dynamics segmentation (TDS, MBO scheme), no volume constraint.

    Minimises the paper's eq. (2) without the volume constraint,
    ``sum_i <c_i, u_i> + mu sum_i <u_i, G_sigma * (1 - u_i)>``, by alternating
    (1) a heat-kernel convolution of the class indicators
    (:func:`scipy.ndimage.gaussian_filter`, standard deviation ``sigma``) and
    (2) thresholding ``l(x) = argmin_i c_i(x) - 2 mu (G_sigma * u_i)(x)``, with
    ``mu = tv_weight sqrt(2 pi) / sigma`` (see the module notes: then
    ``tv_weight`` weighs the boundary length like the TV weight ``lambda`` of
    VPTV). Optionally the class means / covariances are re-estimated from the
    labels before every step (Esedoglu & Tsai's piecewise-constant Mumford-Shah).
    Stops when the labels no longer change.

    Parameters
    ----------
    image : ndarray
        2-D or 3-D image, grey or with a channel axis.
    n_classes : int
        Number of classes ``I``.
    tv_weight : float
        ``lambda``, weight of the boundary length (same units as VPTV's).
    sigma : float
        Heat-kernel standard deviation in pixels (``sqrt(2 dt)``, the time step).
    similarity : {"mean", "mahalanobis", "gaussian"}
        Cost ``c_i``; ``"mean"`` is ``|h - m_i|^2`` (the paper's Fig. 4 choice).
    update_means : bool
        Re-estimate the class model from the current labels at every step.
    max_num_iter : int
        Maximum number of thresholding steps.
    channel_axis : int or None
        Colour axis; None for grey.
    seed : int
        Seed of the k-means initialisation.
    callback : callable ``(iteration, max_num_iter)``, optional

    Returns
    -------
    SegmentationResult

    References
    ----------
    J. Liu, X.-C. Tai, H. Huang, Z. Huan, "A fast segmentation method based on
    constraint optimization and its applications: intensity inhomogeneity and
    texture segmentation", Pattern Recognit. 44(9) (2011) (the paper's TDS, ref. [23]);
    B. Merriman, J. Bence, S. Osher (1992); S. Esedoglu, Y.-H. R. Tsai, "Threshold
    dynamics for the piecewise constant Mumford-Shah functional", J. Comput. Phys.
    211 (2006); D. Wang, H. Li, X. Wei, X.-P. Wang, "An efficient iterative
    thresholding method for image segmentation", J. Comput. Phys. 350 (2017).
    """
    k = _check_n_classes(n_classes)
    labels, it, conv, model = _threshold_dynamics(
        image,
        k,
        counts=None,
        tv_weight=tv_weight,
        sigma=sigma,
        similarity=similarity,
        update_means=update_means,
        max_num_iter=max_num_iter,
        channel_axis=channel_axis,
        seed=seed,
        callback=callback,
        auction_kwargs={},
    )
    return _hard_result(labels, k, it, conv, model, make_volume_spec(k, "none"))


def advp_segment(
    image,
    n_classes: Optional[int] = None,
    *,
    volumes: Sequence[float],
    tv_weight: float = 0.02,
    sigma: float = 2.0,
    similarity: str = "mean",
    update_means: bool = True,
    max_num_iter: int = 100,
    auction_epsilon: Optional[float] = None,
    auction_scaling: float = 5.0,
    channel_axis: Optional[int] = None,
    seed: int = 0,
    callback: Optional[Callable[[int, int], None]] = None,
) -> SegmentationResult:
    """Auction dynamics with volume preservation (ADVP).

    Threshold dynamics (see :func:`tds_segment`) in which the thresholding step is
    replaced by the exact volume-constrained assignment: every step solves
    ``max sum_x -(c_{l(x)}(x) - 2 mu (G_sigma * u_{l(x)}^t)(x))`` over labelings with
    exactly ``V_i`` pixels in class ``i`` (the paper's eq. 2 with ``U(V)``), by the
    membership auction with eps-scaling (:func:`auction_assign`), warm-started with
    the previous step's prices. The first labeling is the auction on the fidelity
    alone; later auctions start from the previous prices and skip the three
    coarsest eps phases (only ``auction_epsilon`` sets the optimality guarantee).
    The labels always have the prescribed pixel counts.

    Parameters
    ----------
    image : ndarray
        2-D or 3-D image, grey or with a channel axis.
    n_classes : int, optional
        Number of classes; defaults to ``len(volumes)``.
    volumes : sequence of float
        Class fractions ``V_i / |Omega|`` (sum 1), in the class order of the
        k-means initialisation (class 0 = darkest). They are turned into integer
        pixel counts by largest-remainder rounding (:func:`volume_counts`).
    tv_weight, sigma, similarity, update_means, max_num_iter : see :func:`tds_segment`.
    auction_epsilon : float, optional
        Final bid increment of the auction (default: benefit spread / (4 |Omega|)).
    auction_scaling : float
        eps-scaling factor of the auction.
    channel_axis : int or None
        Colour axis; None for grey.
    seed : int
        Seed of the k-means initialisation.
    callback : callable ``(iteration, max_num_iter)``, optional

    Returns
    -------
    SegmentationResult
        ``volumes`` equal ``volume_counts(volumes, n_pixels) / n_pixels`` exactly.

    References
    ----------
    M. Jacobs, E. Merkurjev, S. Esedoglu, "Auction dynamics: a volume constrained
    MBO scheme", J. Comput. Phys. 354 (2018) 288-310.
    """
    k, spec = _exact_volume_spec(volumes, n_classes)
    feats_shape = prepare_image(image, channel_axis).shape[1:]
    counts = volume_counts(spec.volumes, int(np.prod(feats_shape)))
    auction = {"epsilon_min": auction_epsilon, "scaling": auction_scaling, "warm_levels": 3}
    flow = {"tv_weight": tv_weight, "sigma": sigma, "similarity": similarity, "update_means": update_means}
    run = {"max_num_iter": max_num_iter, "channel_axis": channel_axis, "seed": seed, "callback": callback}
    labels, it, conv, model = _threshold_dynamics(image, k, counts=counts, auction_kwargs=auction, **flow, **run)
    return _hard_result(labels, k, it, conv, model, spec)


def _exact_volume_spec(volumes, n_classes):
    """(number of classes, exact volume spec) of :func:`advp_segment`'s ``volumes``; a
    ValueError when they are missing or do not fit ``n_classes``."""
    if volumes is None:
        raise ValueError("advp_segment needs `volumes` (one fraction per class, summing to 1)")
    if n_classes is None:
        n_classes = len(np.atleast_1d(volumes)) if not isinstance(volumes, str) else len(volumes.split(","))
    k = _check_n_classes(n_classes)
    return k, make_volume_spec(k, "exact", volumes)
