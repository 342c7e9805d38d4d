"""Real fluorescence nuclei for the correction benchmarks: stardist's bundled examples.

The ``stardist`` wheel ships two annotated nuclei images (``stardist/data/images``):

* ``img2d.tif`` / ``mask2d.tif`` -- DSB2018 fluorescence nuclei, 512 x 512, 125 nuclei;
* ``img3d.tif`` / ``mask3d.tif`` -- a 31 x 61 x 57 nuclei stack (z sampled about half
  as finely as y / x), 51 nuclei, most of them cut by the stack's faces.

They are read straight from the wheel (``pip download --no-deps stardist``; not a
dependency of the package). Images are scaled to 8-bit at their 99.8th percentile,
as a user exporting a display-scaled image would.

Split (fixed, never changed after a look at results):

* ``tune``: the 2-D nuclei whose centroid column is < 256 (left half) and the whole
  3-D stack;
* ``heldout``: the 2-D nuclei whose centroid column is >= 256 (right half).

The correction always runs on the whole image (every nucleus's mask corrupted);
the split only selects which nuclei are scored (ids are kept, so a subset of ids
is scored by foreground Dice over those ids).
"""

from __future__ import annotations

import glob
import io
import os
import zipfile

import numpy as np
from scipy import ndimage as ndi

__all__ = ["find_wheel", "load_stardist", "split_ids", "subset"]

_WHEEL_GLOBS = ("stardist-*.whl", "/tmp/stardist-*.whl")


def find_wheel(path=None):
    """The stardist wheel: ``path``, ``$STARDIST_WHEEL``, or ``./`` / ``/tmp`` (``pip download``)."""
    if path:
        return path
    if os.environ.get("STARDIST_WHEEL"):
        return os.environ["STARDIST_WHEEL"]
    for pattern in _WHEEL_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    raise FileNotFoundError(
        "no stardist wheel found: run `cd /tmp && pip download --no-deps stardist` or pass --wheel PATH"
    )


def _scale8(img):
    """8-bit image scaled at its 99.8th percentile (values above it saturate)."""
    img = img.astype(np.float64)
    lo, hi = float(img.min()), float(np.percentile(img, 99.8))
    return np.clip(np.round(255 * (img - lo) / max(hi - lo, 1e-9)), 0, 255).astype(np.uint8)


def load_stardist(ndim=2, wheel=None):
    """``(image uint8, labels int32)`` of the stardist 2-D or 3-D example."""
    import tifffile

    name = "2d" if ndim == 2 else "3d"
    with zipfile.ZipFile(find_wheel(wheel)) as z:
        img = tifffile.imread(io.BytesIO(z.read(f"stardist/data/images/img{name}.tif")))
        lab = tifffile.imread(io.BytesIO(z.read(f"stardist/data/images/mask{name}.tif")))
    return _scale8(img), lab.astype(np.int32)


def split_ids(labels, split):
    """Ids scored in ``split``: 2-D ``tune`` = centroid column < 256, ``heldout`` = the rest,
    ``all`` = every id; 3-D: every id (the stack is tuning data)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if labels.ndim == 3 or split == "all":
        return ids
    cols = ndi.center_of_mass(np.ones_like(labels), labels, ids)
    left = np.array([c[-1] < labels.shape[-1] / 2 for c in cols])
    return ids[left] if split == "tune" else ids[~left]


def subset(labels, ids):
    """``labels`` with every id not in ``ids`` set to 0."""
    return np.where(np.isin(labels, ids), labels, 0)
