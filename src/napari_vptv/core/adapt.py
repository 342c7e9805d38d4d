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

from .costs import GaussianModel

__all__ = ["gaussian_from_probabilities", "fraction_interval", "fraction_bounds"]


def gaussian_from_probabilities(features: np.ndarray, probabilities: np.ndarray, *, kind: str = "gaussian",
                                confidence: float = 0.8, min_pixels: int = 30) -> Optional[GaussianModel]:
    """Fit one Gaussian per class on confidently assigned pixels.

    Parameters
    ----------
    features : ndarray ``(C, *spatial)``, float in [0, 1] (as
        :func:`napari_vptv.core.segment.prepare_image` returns).
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
