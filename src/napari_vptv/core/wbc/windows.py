"""Solve only where a white cell may be: windows around the network's candidate cells.

A camera field is mostly red cells and plasma that the initialising network calls
background with confidence; the variational solve there costs time and can only add
false cytoplasm on red cells. :func:`cell_windows` boxes the regions the network gives
any real chance of being a cell, with a margin relative to the cell diameter, and
:func:`solve_in_windows` runs a per-image solve on each box as if it were a crop,
keeping the network's answer elsewhere. When the boxes cover most of the image (a
one-cell crop), the image is solved whole, as before.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

from ..solver.segment import SegmentationResult
from ..solver.volumes import make_volume_spec

__all__ = [
    "CELL_CHANCE",
    "MARGIN_PER_DIAMETER",
    "MAX_WINDOW_SHARE",
    "MIN_CANDIDATE_SHARE",
    "cell_windows",
    "solve_in_windows",
]

#: a pixel is a candidate when the network gives it at least this chance of being
#: cytoplasm or nucleus; below it the combined cost's network term (``-log u``, floor
#: ``log 1e-4``) outweighs the colour costs of this method on the validation images
CELL_CHANCE = 0.05

#: margin around each candidate region, as a share of its size (the larger side of its
#: box, at most the white-cell diameter): the colour model needs background next to
#: the cell, and the edge may move outwards by a fraction of the object's size
MARGIN_PER_DIAMETER = 0.25

#: the smallest margin, px (the solver's edge weight and smoothing need a few pixels)
MIN_MARGIN = 4

#: candidate regions whose box is narrower than this share of the white-cell diameter
#: are specks (texture, dust) and get no window: the network's labels stand there, and
#: anything that small is not a white cell for the white-cell rule (< 0.4 of the
#: diameter). Platelets (0.2-0.33) still get one. On composed fields of the second
#: training source, 100-200 candidate regions per field, most of them specks.
MIN_CANDIDATE_SHARE = 0.15

#: windows covering more than this share of the image: solve the image whole (crops
#: keep their figures; the saving would be small)
MAX_WINDOW_SHARE = 0.5

Window = Tuple[slice, slice]


def _grown(box: Window, margin_per_diameter: float, diameter: float, shape) -> List[int]:
    size = min(diameter, max(box[0].stop - box[0].start, box[1].stop - box[1].start))
    margin = max(MIN_MARGIN, int(np.ceil(margin_per_diameter * size)))
    return [
        max(0, box[0].start - margin),
        min(shape[0], box[0].stop + margin),
        max(0, box[1].start - margin),
        min(shape[1], box[1].stop + margin),
    ]


def _merged(boxes: List[List[int]], shape) -> List[List[int]]:
    """Overlapping or touching boxes joined into their bounding box until none are:
    the boxes are drawn, their connected unions boxed again, until the count stays
    (linear in pixels, whatever the number of boxes)."""
    while True:
        drawn = np.zeros(shape, bool)
        for r0, r1, c0, c1 in boxes:
            drawn[r0:r1, c0:c1] = True
        regions, n = ndi.label(drawn)
        merged = [[r.start, r.stop, c.start, c.stop] for r, c in ndi.find_objects(regions)]
        if n == len(boxes):
            return merged
        boxes = merged


def cell_windows(
    probabilities: np.ndarray,
    diameter: Optional[float],
    *,
    cell_chance: float = CELL_CHANCE,
    margin_per_diameter: float = MARGIN_PER_DIAMETER,
    max_share: float = MAX_WINDOW_SHARE,
) -> Optional[List[Window]]:
    """Boxes around the candidate white cells of a 2-D image.

    Parameters
    ----------
    probabilities : ndarray ``(K, H, W)``
        Class probabilities ``u_i(x)``, class 0 the background.
    diameter : float or None
        White-cell diameter in pixels; a region's margin is ``margin_per_diameter`` of
        its box's larger side, at most of ``diameter``, at least ``MIN_MARGIN`` px.
    cell_chance : float
        Candidate pixels: ``1 - u_0(x) >= cell_chance``; regions narrower than
        ``MIN_CANDIDATE_SHARE`` of ``diameter`` get no window.
    max_share : float
        When the windows cover more than this share of the image, None.

    Returns
    -------
    list of ``(slice, slice)`` (empty: no candidate of a platelet's size), or None:
    solve the whole image (windows too large, no diameter, or not a 2-D image).
    """
    p = np.asarray(probabilities)
    if p.ndim != 3 or not diameter or diameter <= 0:
        return None
    regions, n = ndi.label(1.0 - p[0] >= cell_chance)
    if n == 0:
        return []
    smallest = MIN_CANDIDATE_SHARE * diameter
    candidates = [
        b for b in ndi.find_objects(regions) if max(b[0].stop - b[0].start, b[1].stop - b[1].start) >= smallest
    ]
    if not candidates:
        return []
    boxes = _merged([_grown(b, margin_per_diameter, diameter, p.shape[1:]) for b in candidates], p.shape[1:])
    windows = [(slice(b[0], b[1]), slice(b[2], b[3])) for b in boxes]
    return None if _share(windows, p.shape[1:]) > max_share else windows


def solve_in_windows(
    image: np.ndarray,
    probabilities: np.ndarray,
    windows: List[Window],
    solve: Callable[..., Optional[SegmentationResult]],
    callback: Optional[Callable[[int, int], None]] = None,
) -> Optional[SegmentationResult]:
    """``solve(image[window], probabilities[:, window])`` in every window; the network's
    argmax and probabilities elsewhere (and in a window whose solve gives None). None
    when no window was solved (the caller keeps the network's labels).

    ``image`` is ``(H, W, C)`` or ``(H, W)``; ``callback(done, total)`` counts windows.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    labels = p.argmax(0).astype(np.int32)
    probs = p.copy()
    solved, n_iter, converged, model = 0, 0, True, None
    for i, win in enumerate(windows):
        result = solve(image[win], p[(slice(None),) + win])
        if callback is not None:
            callback(i + 1, len(windows))
        if result is None:
            continue
        labels[win] = result.labels
        probs[(slice(None),) + win] = result.probabilities
        solved += 1
        n_iter, converged = max(n_iter, result.n_iter), converged and result.converged
        model = result.class_model if model is None else model
    if not solved:
        return None
    merged = SegmentationResult.from_arrays(
        labels,
        probs,
        n_iter=n_iter,
        converged=converged,
        class_model=model,
        volume_spec=make_volume_spec(p.shape[0], "none"),
    )
    merged.info = {"solved_windows": solved, "solved_share": _share(windows, labels.shape)}
    return merged


def _share(windows: List[Window], shape) -> float:
    area = sum((w[0].stop - w[0].start) * (w[1].stop - w[1].start) for w in windows)
    return float(area) / float(shape[0] * shape[1])
