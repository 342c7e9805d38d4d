"""numba kernels of the per-object evidence (:mod:`napari_vptv.core.correct.evidence`).

Two sums over the pixels near an object's given boundary run for every object and
were, as numpy, a gather or a boolean selection of a few thousand samples followed
by a ``bincount`` (about 15 % of the correction of stardist's dilated nuclei, mostly
numpy call overhead and temporary arrays). Each kernel here is one loop over the
crop's pixels in raster order, so every sum adds the same float64 terms in the same
order as the numpy code (``evidence._level_sums_numpy`` /
``evidence._shift_scores_numpy``, which run where numba cannot be imported): the
results are identical (``tests/test_correct_kernels.py``).

Compiled on first use and cached on disk like the solver's kernels
(:func:`napari_vptv.core.solver.numba_kernels._jit`).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["level_sums", "shift_scores"]


def _jit(fn):
    """``numba.njit(cache=True)``, uncached where no cache location is writable."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True)(fn)


@_jit
def level_sums(rel, levels, step, sector, ns, values, sums, count):  # pragma: no cover - compiled
    """Add ``values`` (float64) and sample counts into ``sums`` / ``count`` (``len(levels)
    * ns``, key ``level * ns + sector``) over the samples (1-D arrays, raster order) with
    ``|rel - levels[i]| <= 1/2``; the candidate levels of a sample are the five around
    ``(rel - levels[0]) / step``, as in the numpy code."""
    n_levels = levels.size
    for s in range(rel.size):
        r = rel[s]
        first = int(np.floor((r - levels[0]) / step))
        for j in range(first - 2, first + 3):
            if 0 <= j < n_levels and abs(r - levels[j]) <= 0.5:
                key = j * ns + sector[s]
                sums[key] += values[s]
                count[key] += 1


@_jit
def shift_scores(grad, sd, limit, band, step, shifts, sums, count):  # pragma: no cover - compiled
    """Sums of ``grad`` (2-D, float64) at ``x + shift`` per shift and offset bin over the
    samples ``x`` with ``|sd(x)| <= limit`` (bin ``rint((sd + band) / step)`` clipped to
    the bins), into ``sums`` ``(len(shifts), n_bins)``; samples per bin into ``count``.
    A sample moved off the crop adds nothing (the numpy code reads zero padding)."""
    h, w = sd.shape
    n_bins = sums.shape[1]
    rows = np.empty(h * w, np.int64)
    cols = np.empty(h * w, np.int64)
    bins = np.empty(h * w, np.int64)
    n = 0
    for i in range(h):
        for j in range(w):
            v = sd[i, j]
            if abs(v) <= limit:
                b = int(np.rint((v + band) / step))
                rows[n], cols[n], bins[n] = i, j, min(max(b, 0), n_bins - 1)
                count[bins[n]] += 1
                n += 1
    for k in range(shifts.shape[0]):
        dy, dx = shifts[k, 0], shifts[k, 1]
        for s in range(n):
            i, j = rows[s] + dy, cols[s] + dx
            if 0 <= i < h and 0 <= j < w:
                sums[k, bins[s]] += grad[i, j]
