"""Peer methods for instance-mask correction (scikit-image baselines).

All take a grey float image in [0, 1] and instance labels, and return labels with
the same ids. Markers are each object eroded by ``r`` px; the background marker is
everything outside the mask expanded by ``r`` px.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import gaussian, sobel
from skimage.morphology import ball, disk
from skimage.segmentation import (
    expand_labels,
    inverse_gaussian_gradient,
    morphological_geodesic_active_contour,
    random_walker,
    watershed,
)


def erode_labels(labels, r):
    """Each object eroded by a disc (3-D: a ball) of radius ``r`` (objects never merge)."""
    out = np.zeros_like(labels)
    fp = disk(r) if labels.ndim == 2 else ball(r)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        obj = np.pad(labels[sl] == i, r)
        er = ndi.binary_erosion(obj, fp)[tuple(slice(r, -r) for _ in obj.shape)]
        out[sl][er] = i
    return out


def _markers(labels, r):
    markers = erode_labels(labels, r)
    bg = int(labels.max()) + 1
    markers[expand_labels(labels, r) == 0] = bg
    return markers, bg


def seeded_watershed(grey, labels, r=4, sigma=1.0):
    """The main peer: watershed on the Sobel of a Gaussian-smoothed image."""
    markers, bg = _markers(labels, r)
    out = watershed(sobel(gaussian(grey, sigma)), markers)
    out[out == bg] = 0
    return out.astype(labels.dtype)


def random_walker_refine(grey, labels, r=4, beta=130):
    """Random-walker segmentation from the same markers (unknown = the boundary band)."""
    markers, bg = _markers(labels, r)
    # every label must have a seed; objects eroded away get their given core back
    for i in np.setdiff1d(np.unique(labels), np.unique(markers)):
        if i:
            markers[labels == i] = i
    out = random_walker(gaussian(grey, 1.0), markers, beta=beta, mode="cg_j", tol=1e-3)
    out[out == bg] = 0
    return out.astype(labels.dtype)


def per_slice(peer):
    """A 2-D peer applied to every plane of a 3-D stack (axis 0) on its own."""

    def run(grey, labels, **kw):
        if labels.ndim == 2:
            return peer(grey, labels, **kw)
        out = np.zeros_like(labels)
        for z in range(labels.shape[0]):
            if labels[z].any():
                out[z] = peer(grey[z], labels[z], **kw)
        return out

    run.__name__ = f"{peer.__name__}_per_slice"
    return run


def geodesic_active_contour(grey, labels, iterations=30, margin=12):
    """Morphological GAC per object on its crop (balloon 0), initialised by the mask."""
    out = labels.copy()
    g = inverse_gaussian_gradient(gaussian(grey, 1.0))
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in sl)
        crop = out[sl]
        obj = labels[sl] == i
        ls = morphological_geodesic_active_contour(
            g[sl], iterations, init_level_set=obj, smoothing=1, balloon=0
        ).astype(bool)
        crop[crop == i] = 0
        crop[ls & (crop == 0) & ((labels[sl] == 0) | obj)] = i
    return out
