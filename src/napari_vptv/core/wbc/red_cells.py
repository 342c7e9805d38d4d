"""The red cells' size on a stained blood image: a scale every field has.

Red cells are 7-8 µm across on every smear, white cells 7-20 µm, platelets 2-4 µm.
A field without a white cell gives the white-cell rule
(:func:`~napari_vptv.core.wbc.cell_rules.drop_non_white_cells`) no white-cell size
to compare platelets with; its red cells do.

Red cells belong to the "background" class of the WBC labels. Within the background
pixels, haemoglobin makes them darker than the plasma in the green channel:
:func:`red_cell_diameter` thresholds it (Otsu), takes the Euclidean distance
transform of the red-cell mask and reads the diameter from its local maxima (twice
the inscribed radius), so touching and overlapping red cells count one by one. Pale
centres are left as they are (they can only make the estimate smaller; filling
holes would also fill plasma enclosed by a ring of red cells and make it larger).

The estimate is given up (0.0) when the image does not show red cells clearly: too
little contrast between the two sides of the threshold, too small or too large a
red share of the background, or fewer than :data:`MIN_RED_CELLS` red-cell maxima.
Pale, ghost-like red cells (rapid stains, e.g. the second training source) are not
found; the rule then keeps its other references.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MIN_RED_CELLS", "MIN_RED_CONTRAST", "red_cell_diameter"]

#: fewest red-cell maxima (of at least half the 90th-percentile radius) for an estimate
MIN_RED_CELLS = 5

#: least difference (8-bit green levels) between the median plasma and the median
#: red-cell pixel for the threshold to mean anything (wbc crops: 40-90)
MIN_RED_CONTRAST = 25.0

#: the red cells' share of the background pixels must lie in this range
RED_SHARE_RANGE = (0.05, 0.9)

#: smallest inscribed radius (px) of a red cell that counts; also the peaks' spacing
MIN_RED_RADIUS = 3.0

#: a red cell's distance maximum stands this share of the typical radius above the
#: saddle to its neighbours (two overlapping cells: two maxima; an oval cell: one)
RIDGE_DEPTH = 0.2


def _red_mask(green: np.ndarray, background: np.ndarray) -> Optional[np.ndarray]:
    """The red-cell pixels of ``background`` (Otsu on the green channel), or None when
    the threshold does not separate two clear populations."""
    from skimage.filters import threshold_otsu

    values = green[background]
    if values.size < 100 or values.min() == values.max():
        return None
    t = threshold_otsu(values)
    red = background & (green < t)
    plasma = background & (green >= t)
    share = red.sum() / background.sum()
    if not RED_SHARE_RANGE[0] <= share <= RED_SHARE_RANGE[1] or not plasma.any():
        return None
    if np.median(green[plasma]) - np.median(green[red]) < MIN_RED_CONTRAST:
        return None
    return ndi.binary_fill_holes(ndi.binary_opening(red, iterations=1))


def red_cell_diameter(rgb: np.ndarray, background: Optional[np.ndarray] = None) -> float:
    """Typical red-cell diameter (px) of a stained blood image, 0.0 when not clear.

    Parameters
    ----------
    rgb : (H, W, 3) array
        8-bit RGB (other dtypes are compared on their own scale).
    background : (H, W) bool array, optional
        The pixels that may be red cells or plasma (the "background" class of the
        labels); default: all.

    Returns
    -------
    float
        Twice the inscribed radius at the red cells' distance maxima: the
        area-weighted median over the maxima of at least half the 90th-percentile
        radius (platelets and specks are far smaller), or 0.0.

    Examples
    --------
    >>> img = np.full((120, 160, 3), 230, np.uint8)
    >>> yy, xx = np.indices(img.shape[:2])
    >>> for cy, cx in [(25, 25), (25, 80), (25, 135), (90, 25), (90, 80), (90, 135)]:
    ...     img[np.hypot(yy - cy, xx - cx) < 15] = (200, 120, 140)
    >>> round(red_cell_diameter(img))
    30
    """
    from skimage.feature import peak_local_max

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        return 0.0
    green = rgb[..., 1].astype(np.float32)
    background = np.ones(green.shape, bool) if background is None else np.asarray(background, bool)
    red = _red_mask(green, background)
    if red is None:
        return 0.0
    dist = ndi.distance_transform_edt(red)
    peaks = peak_local_max(dist, min_distance=int(MIN_RED_RADIUS), threshold_abs=MIN_RED_RADIUS, exclude_border=False)
    radii = dist[tuple(peaks.T)]
    if radii.size < MIN_RED_CELLS:
        return 0.0
    depth = RIDGE_DEPTH * np.percentile(radii, 90)
    radii = _one_per_cell(dist, depth, step=max(1, min(2, int(depth))))
    radii = radii[radii >= 0.5 * np.percentile(radii, 90)] if radii.size else radii
    if radii.size < MIN_RED_CELLS:
        return 0.0
    return float(2.0 * np.median(radii))


def _one_per_cell(dist: np.ndarray, depth: float, step: int = 1) -> np.ndarray:
    """The distance maxima that stand ``depth`` above the saddles to their neighbours
    (h-maxima): one per red cell, not the lesser maxima along an oval cell's ridge.

    The h-maxima are found on every ``step``-th pixel (the grey reconstruction sorts
    every pixel: half of a field's segmentation time at full resolution); each top,
    spread back to full resolution, still covers its maximum (a top reaches ``depth``
    >= ``step`` px around it), so the radii are read exactly."""
    from skimage.morphology import h_maxima

    small = dist[::step, ::step]
    tops, n = ndi.label(h_maxima(small, max(1.0, depth)), structure=np.ones((3, 3), bool))
    if step > 1:
        tops = np.repeat(np.repeat(tops, step, axis=0), step, axis=1)[: dist.shape[0], : dist.shape[1]]
    return np.asarray(ndi.maximum(dist, tops, np.arange(1, n + 1)), float).reshape(-1)
