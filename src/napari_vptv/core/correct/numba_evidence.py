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
    A sample moved off the crop adds 0 (the numpy code reads zero padding).

    The samples are grouped by bin in raster order (a stable counting sort), and four
    shifts are summed side by side: each sum still adds its terms in raster order, in
    four independent chains instead of one scattered store per term."""
    h, w = sd.shape
    n_bins = sums.shape[1]
    pad = 0
    for k in range(shifts.shape[0]):
        pad = max(pad, abs(shifts[k, 0]), abs(shifts[k, 1]))
    width = w + 2 * pad
    padded = np.zeros((h + 2 * pad) * width)
    for i in range(h):
        for j in range(w):
            padded[(i + pad) * width + j + pad] = grad[i, j]
    bins = np.full(h * w, -1, np.int64)
    for i in range(h):
        for j in range(w):
            v = sd[i, j]
            if abs(v) <= limit:
                b = min(max(int(np.rint((v + band) / step)), 0), n_bins - 1)
                bins[i * w + j] = b
                count[b] += 1
    start = np.zeros(n_bins + 1, np.int64)
    for b in range(n_bins):
        start[b + 1] = start[b] + count[b]
    fill = start[:-1].copy()
    base = np.empty(start[n_bins], np.int64)
    for p in range(h * w):
        b = bins[p]
        if b >= 0:
            base[fill[b]] = (p // w + pad) * width + p % w + pad
            fill[b] += 1
    off = np.empty(shifts.shape[0], np.int64)
    for k in range(shifts.shape[0]):
        off[k] = shifts[k, 0] * width + shifts[k, 1]
    n_shifts = shifts.shape[0]
    for b in range(n_bins):
        k = 0
        while k + 4 <= n_shifts:
            o0, o1, o2, o3 = off[k], off[k + 1], off[k + 2], off[k + 3]
            a0 = a1 = a2 = a3 = 0.0
            for s in range(start[b], start[b + 1]):
                q = base[s]
                a0 += padded[q + o0]
                a1 += padded[q + o1]
                a2 += padded[q + o2]
                a3 += padded[q + o3]
            sums[k, b], sums[k + 1, b], sums[k + 2, b], sums[k + 3, b] = a0, a1, a2, a3
            k += 4
        while k < n_shifts:
            a0, o0 = 0.0, off[k]
            for s in range(start[b], start[b + 1]):
                a0 += padded[base[s] + o0]
            sums[k, b] = a0
            k += 1
