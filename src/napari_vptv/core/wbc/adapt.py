"""Per-image colour models for the variational solver, seeded by class probabilities.

A colour model learned on one lab's smears (the WBC preset) misses the cells of
another stain. Here the model is refitted on the image itself: each class's mean and
covariance come from the pixels that a first segmentation (e.g. the network's
softmax) assigns to it with confidence, and the solver's EM updates refine them.
The volume prior is an interval around the first segmentation's class fractions, so
a class the image shows no evidence of stays (nearly) empty.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..solver.costs import GaussianModel

__all__ = [
    "NETWORK_WEIGHT",
    "OWN_COVARIANCE_SHARE",
    "adapted_segment",
    "gaussian_from_probabilities",
    "shrink_covariances",
    "fraction_interval",
    "fraction_bounds",
]


def gaussian_from_probabilities(
    features: np.ndarray,
    probabilities: np.ndarray,
    *,
    kind: str = "gaussian",
    confidence: float = 0.8,
    min_pixels: int = 30,
) -> Optional[GaussianModel]:
    """Fit one Gaussian per class on confidently assigned pixels.

    Parameters
    ----------
    features : ndarray ``(C, *spatial)``, float in [0, 1] (as
        :func:`napari_vptv.core.solver.segment.prepare_image` returns).
    probabilities : ndarray ``(K, *spatial)``, class probabilities ``u_i(x)``.
    kind : {"gaussian", "mahalanobis", "mean"}
        Cost formula of the returned model.
    confidence : float
        Pixels with ``u_i(x) >= confidence`` enter class ``i``'s statistics (boundary
        pixels are mixtures and would blur the colours).
    min_pixels : int
        Fewer confident pixels than this for any class: return None (the class is
        absent or too small to have a colour of its own).
    """
    x = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(probabilities.shape[0], -1)
    if x.shape[1] != p.shape[1]:
        raise ValueError(f"features cover {x.shape[1]} pixels, probabilities {p.shape[1]}")
    means, covs = [], []
    for k in range(p.shape[0]):
        sel = p[k] >= confidence
        if sel.sum() < min_pixels:
            return None
        xs = x[:, sel]
        means.append(xs.mean(axis=1))
        covs.append(np.atleast_2d(np.cov(xs)) + 1e-5 * np.eye(x.shape[0]))
    return GaussianModel(np.stack(means), np.stack(covs), kind=kind)


def shrink_covariances(model: GaussianModel, own_share: float) -> GaussianModel:
    """``model`` with each class's covariance ``S_i`` replaced by
    ``own_share * S_i + (1 - own_share) * mean_j S_j`` (the classes' mean covariance, each
    class counted once whatever its area): 1 keeps the model, 0 gives every class the
    same colour spread (a linear boundary between classes)."""
    if not 0.0 <= own_share <= 1.0:
        raise ValueError(f"own_share must be in [0, 1], got {own_share}")
    if model.covariances is None or own_share == 1.0:
        return model
    covs = np.asarray(model.covariances, dtype=np.float64)
    shrunk = own_share * covs + (1.0 - own_share) * covs.mean(axis=0)[None]
    return GaussianModel(np.asarray(model.means), shrunk, kind=model.kind)


def fraction_interval(probabilities: np.ndarray, relative: float = 0.15, absolute: float = 0.005):
    """``(lower, upper)`` class-fraction bounds around the mean of ``probabilities``
    ``(K, *spatial)`` (see :func:`fraction_bounds`)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return fraction_bounds(p.reshape(p.shape[0], -1).mean(axis=1), relative, absolute)


def fraction_bounds(fractions, relative: float = 0.15, absolute: float = 0.005):
    """``(lower, upper)`` bounds ``f (1 -+ relative) -+ absolute`` around class
    fractions ``f`` (K,), clipped to [0, 1]."""
    f = np.asarray(fractions, dtype=np.float64)
    lo = np.clip(f * (1 - relative) - absolute, 0.0, 1.0)
    hi = np.clip(f * (1 + relative) + absolute, 0.0, 1.0)
    return lo, hi


#: weight ``w`` of the network's negative log-probabilities next to the refitted colour
#: model's cost in :func:`adapted_segment` (0 = the refitted colour model only)
NETWORK_WEIGHT = 1.0

#: iteration cap of both solves of :func:`adapted_segment`, chosen on the validation
#: splits (diameter-relative smoothing; wbc / wbc-d1 plain, mean of the 10
#: synthetic shifts): 100: 0.9886 / 0.9759, 0.9838 / 0.9739; 50: 0.9886 / 0.9760;
#: 30: 0.9886 / 0.9776; 20: 0.9886 / 0.9783, 0.9862 / 0.9756; 10: 0.9885 / 0.9790 but
#: a worse worst shift. The solve starts from the network's probabilities and a
#: colour model fitted to them; more iterations let the EM updates drift from that
#: start. The EM solve of a hard image never passes the volume test (the EM update and
#: the interval volume dual pull against each other), so the cap also bounds the time
#: (docs/results.md, CHANGELOG.md).
MAX_ITER = 20

#: Gaussian smoothing (px) of the image the colour model sees; None (the default):
#: ``COLOUR_SIGMA_PER_DIAMETER`` x the cell diameter, 0 without a diameter. Camera
#: noise widens every class's colour spread: synthetic noise 0.03 on the wbc validation
#: images scored 0.937 unsmoothed and 0.987 smoothed. A fixed 1 px cost 0.3 pt on the
#: smaller wbc-d1 cells (leave-one-source-out); relative to the diameter it costs
#: nothing there (docs/results.md).
COLOUR_SIGMA = None

#: final labels of the combined solve: "argmax" of its probabilities, not the
#: volume-respecting rounding. The volume interval here is not the user's but a soft
#: prior around the network's fractions, which the probabilities already meet; on the
#: validation splits the two tie (wbc 0.9892 / 0.9889, wbc-d1 0.9778 / 0.9783, shift
#: means 0.9866 / 0.9864 and 0.9753 / 0.9756), and argmax removes the rounding's tail
#: on hard images (unseen-source median 0.32 -> 0.25 s, 90th percentile 0.72 -> 0.36 s;
#: docs/results.md). Volumes a user gives still take the rounding.
ROUNDING = "argmax"

#: share of each class's own colour covariance in the combined solve's colour cost, the
#: rest being the classes' mean covariance (:func:`shrink_covariances`; regularised
#: discriminant analysis). With a covariance per class, a pixel that mixes two classes
#: (the blurred rim of a cell or of its nucleus) lies far out for the class of tight
#: colour (the empty slide) and inside the wide one (cytoplasm), so the colour cost moves
#: every boundary ~1 px into the tighter class, against the network, which learnt where
#: the drawn boundary lies. The rim's share of a cell grows as 1 / diameter: on the
#: small wbc-d1 cells (~70 px) the default lost to the network alone (validation
#: 0.9778 vs 0.9807 for its own U-net pass; 27 of 40 images lower, the smaller half of
#: the cells -0.6 pt, the larger half +0.01 pt). Validation (wbc / wbc-d1): 1 (a
#: covariance per class, as before): 0.9892 / 0.9778; 0.5: 0.9893 / 0.9824; 0.2:
#: 0.9891 / 0.9829; 0: 0.9888 / 0.9826 but -0.2 pt on half-scale wbc images (shift
#: suite); halving the colour cost instead: 0.9894 / 0.9786; also shrinking in the EM
#: solve: 0.9881 / 0.9825. 0.5 loses nowhere by more than 0.1 pt (shift suite,
#: leave-one-source-out; docs/results.md).
OWN_COVARIANCE_SHARE = 0.5

#: smoothing as a fraction of the cell diameter (1 px for ~150 px CellaVision cells,
#: 0.5 px for the ~75 px wbc-d1 cells)
COLOUR_SIGMA_PER_DIAMETER = 1.0 / 150.0


def adapted_segment(
    image,
    probabilities: np.ndarray,
    *,
    network_weight: float = NETWORK_WEIGHT,
    channel_axis: Optional[int] = -1,
    epsilon: float = 0.05,
    tv_weight: float = 0.05,
    max_num_iter: int = MAX_ITER,
    colour_sigma: Optional[float] = COLOUR_SIGMA,
    diameter: Optional[float] = None,
    rounding: str = ROUNDING,
    colour_sigma_per_diameter: float = COLOUR_SIGMA_PER_DIAMETER,
    class_model: Optional[GaussianModel] = None,
    own_covariance_share: float = OWN_COVARIANCE_SHARE,
    **solver,
):
    """VPTV with a colour model refitted on this image, seeded by ``probabilities``.

    1. A Gaussian per class from the confidently assigned pixels
       (:func:`gaussian_from_probabilities`), refined by the solver's EM updates, with
       the class fractions held in :func:`fraction_interval` of ``probabilities``.
    2. With ``network_weight`` ``w > 0``, one more solve on the cost
       ``o_i(x) = colour_i(x) - w log u_i(x)`` (``u`` = ``probabilities``): a product of
       the two experts, so the network's shape knowledge and the image's own colours
       both count. The network alone misses colours it never saw; the colour model
       alone confuses classes of similar colour (red cells and cytoplasm). The colour
       covariances are shrunk towards their mean here (``OWN_COVARIANCE_SHARE``).

    Parameters
    ----------
    image : ndarray, with ``channel_axis``
    probabilities : ndarray ``(K, *spatial)``, e.g. a network's softmax.
    network_weight : float
        ``w`` above (0 = the refitted colour model alone).
    colour_sigma : float or None
        Gaussian smoothing in pixels of the image the colour model is fitted on and
        evaluated on (0 = none); the labels keep the image's grid. None:
        ``colour_sigma_per_diameter * diameter`` (0 without a diameter).
    diameter : float, optional
        Cell diameter in pixels (e.g. the network's estimate), for ``colour_sigma=None``.
    colour_sigma_per_diameter : float
        See ``colour_sigma``.
    class_model : GaussianModel, optional
        A colour model refitted already (step 1 run on a larger image, e.g. the whole
        camera field of which ``image`` is a window: :mod:`.windows`); step 1 is skipped.
        Ignored when ``network_weight <= 0``.
    own_covariance_share : float in [0, 1]
        Step 2's :func:`shrink_covariances` share (see ``OWN_COVARIANCE_SHARE``).
    rounding : {"argmax", "volume"}
        How the final labels are taken (:func:`~napari_vptv.core.solver.segment.vptv_segment`);
        see ``ROUNDING``.
    epsilon, tv_weight, max_num_iter, **solver
        Passed to :func:`~napari_vptv.core.solver.segment.vptv_segment` (both solves).

    Returns
    -------
    SegmentationResult, or None when some class has too few confident pixels to fit
    its colour (e.g. no cell in the image): the caller keeps ``probabilities``.
    """
    from ..solver.segment import vptv_segment

    probabilities = np.asarray(probabilities, dtype=np.float64)
    if colour_sigma is None:  # relative to the cell: the same smoothing at every magnification
        colour_sigma = colour_sigma_per_diameter * diameter if diameter else 0.0
    features = _smoothed_features(image, channel_axis, colour_sigma)
    common = _interval_settings(probabilities, epsilon, tv_weight, max_num_iter, solver)
    refitted = class_model
    if refitted is None or network_weight <= 0:
        # with a second solve only this solve's colour model is used: its labels need no
        # volume rounding (the rounding of a hard image costs 0.2-0.8 s)
        result = _em_solve(features, probabilities, common, rounding if network_weight <= 0 else "argmax")
        if result is None or network_weight <= 0:
            return result
        refitted = result.class_model
    shrunk = shrink_covariances(refitted, own_covariance_share)
    cost = _combined_cost(shrunk, features, probabilities, network_weight)
    combined = vptv_segment(features, cost=cost.astype(np.float32), em_update=False, rounding=rounding, **common)
    combined.class_model = refitted  # as refitted (a caller passing it back shrinks it once)
    return combined


def _em_solve(features: np.ndarray, probabilities: np.ndarray, common: dict, rounding: str):
    """Step 1 of :func:`adapted_segment`: the colour model fitted on the confident pixels
    and refined by the solver's EM updates (None when a class has too few of them)."""
    from ..solver.segment import vptv_segment

    model = gaussian_from_probabilities(features, probabilities)
    if model is None:
        return None
    return vptv_segment(features, class_model=model, similarity="gaussian", em_update=True, rounding=rounding, **common)


def _interval_settings(probabilities: np.ndarray, epsilon, tv_weight, max_num_iter, solver: dict) -> dict:
    """Settings of both solves: the network's class fractions widened to a volume interval
    (:func:`fraction_interval`), the solver's settings."""
    return dict(
        n_classes=probabilities.shape[0],
        channel_axis=0,
        volume_bounds=fraction_interval(probabilities),
        volume_mode="interval",
        epsilon=epsilon,
        tv_weight=tv_weight,
        max_num_iter=max_num_iter,
        **solver,
    )


def _smoothed_features(image, channel_axis, colour_sigma: float) -> np.ndarray:
    """The solver's features ``(C, *spatial)`` (float32 in [0, 1]), each channel smoothed
    by a Gaussian of ``colour_sigma`` pixels when it is positive."""
    from scipy.ndimage import gaussian_filter

    from ..solver.segment import prepare_image

    features = prepare_image(image, channel_axis)
    if colour_sigma > 0:
        features = gaussian_filter(features, (0,) + (colour_sigma,) * (features.ndim - 1))
    return features


def _combined_cost(model, features: np.ndarray, probabilities: np.ndarray, network_weight: float) -> np.ndarray:
    """The colour cost of ``model`` minus ``network_weight`` times the network's log-probabilities."""
    import torch

    colour = model.cost(torch.as_tensor(features, dtype=torch.float64)[None])[0].numpy()
    # floor: a network's "impossible" must not outweigh every colour (log 1e-4 ~ -9)
    return colour - network_weight * np.log(np.clip(probabilities, 1e-4, 1.0))
