"""Mask correction's fast paths give what the plain numpy / scipy code gives.

The evidence's numba kernels (``core/correct/numba_evidence.py``) against their numpy
fallbacks, the rounding's hole filling and boundary count against scipy's
morphology, and whole corrections with and without numba. Synthetic data only.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv.core.correct import evidence, objects
from napari_vptv.core.correct.mask import correct_mask
from napari_vptv.core.solver import numba_loop


def blob_sd(shape, seed):
    """Signed distance to a random smooth blob (negative inside), as the evidence uses it."""
    rng = np.random.default_rng(seed)
    obj = ndi.gaussian_filter(rng.random(shape), 3) > 0.5
    obj[tuple(s // 2 for s in shape)] = True
    return np.where(obj, 0.5 - ndi.distance_transform_edt(obj), ndi.distance_transform_edt(~obj) - 0.5)


@pytest.mark.parametrize("shape", [(40, 52), (9, 30, 33)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_level_sums_kernel_equals_numpy(shape, seed):
    sd = blob_sd(shape, seed)
    rng = np.random.default_rng(seed)
    values = rng.random(shape)
    for levels, rel, sectors in [
        (np.arange(-5, 5 + 0.01, evidence._STEP), sd, evidence._sectors(sd)),
        (np.arange(-1.5, 5 + 0.01, evidence._STEP), sd - rng.uniform(-2, 2), (np.zeros(shape, int), 1)),
    ]:
        sector, ns = sectors
        fast = evidence._level_sums(rel, levels, sector, ns, values)
        slow = evidence._level_sums_numpy(rel, levels, sector, ns, values)
        for a, b in zip(fast, slow):
            assert a.shape == b.shape and np.array_equal(a, b)  # the same sums, bit for bit
        fast32 = evidence._level_sums(rel, levels, sector, ns, values.astype(np.float32))
        assert np.array_equal(
            fast32[0], evidence._level_sums_numpy(rel, levels, sector, ns, values.astype(np.float32))[0]
        )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("band", [1, 4, 6])
def test_shift_scores_kernel_equals_numpy(seed, band):
    sd = blob_sd((45, 50), seed)
    grad = np.random.default_rng(seed).random(sd.shape)
    shifts = evidence._disc_shifts(min(evidence._SHIFT_MAX, band))
    n_bins = np.arange(-band, band + 0.01, evidence._STEP).size
    fast = evidence._shift_scores(grad, sd, band, shifts, n_bins)
    slow = evidence._shift_scores_numpy(grad, sd, band, shifts, n_bins)
    for a, b in zip(fast, slow):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_kernels_are_used_and_can_be_switched_off(monkeypatch):
    assert evidence._numba() is not None
    monkeypatch.setattr(numba_loop, "NUMBA_AVAILABLE", False)
    assert evidence._numba() is None


def test_correction_without_the_kernels_gives_the_same_labels(monkeypatch):
    """The evidence kernels against their numpy fallbacks on whole corrections (the
    solver's loop unchanged): dilated, eroded and shifted discs, touching objects
    included."""
    yy, xx = np.indices((110, 130))
    truth = np.zeros(yy.shape, np.int32)
    for i, (cy, cx, r) in enumerate([(30, 30, 11), (30, 54, 12), (75, 40, 14), (80, 95, 9), (35, 100, 13)], 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    rng = np.random.default_rng(3)
    image = ndi.gaussian_filter(0.2 + 0.6 * (truth > 0) + rng.normal(0, 0.05, truth.shape), 1.0).astype(np.float32)
    grown = ndi.grey_dilation(truth, size=(5, 5))
    grown[truth > 0] = truth[truth > 0]
    eroded = np.where(ndi.grey_erosion(truth, size=(5, 5)) == truth, truth, 0)
    for given in (grown, eroded, np.roll(truth, (2, -1), (0, 1))):
        with_numba = correct_mask(image, given, max_num_iter=100)
        with monkeypatch.context() as m:
            m.setattr(evidence, "_numba", lambda: None)
            without = correct_mask(image, given, max_num_iter=100)
        assert np.array_equal(with_numba, without)
        assert set(np.unique(with_numba)) == set(np.unique(given))


def test_holes_and_perimeter_match_scipy_morphology():
    rng = np.random.default_rng(0)
    for _ in range(400):
        shape = tuple(rng.integers(1, 14, size=rng.integers(2, 4)))
        mask = rng.random(shape) < rng.random()
        holes = objects._holes(mask)
        assert np.array_equal(mask | holes, ndi.binary_fill_holes(mask)) and not (holes & mask).any()
        boundary = int((mask & ~ndi.binary_erosion(mask, border_value=1)).sum())
        assert objects._perimeter(mask) == max(boundary, 1)


def test_median_is_numpys():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 10, 11, 400, 401]:
        for dtype in (np.float64, np.float32):
            x = rng.normal(size=n).astype(dtype)
            x[: n // 3] = x[0]  # ties
            got, want = evidence._median(x.copy()), np.median(x)
            assert got == want and np.asarray(got).dtype == np.asarray(want).dtype


def test_unique_ids_table_is_numpys():
    from napari_vptv.core.correct.mask import _unique_inverse

    rng = np.random.default_rng(0)
    for scale in (1, 1000003):  # small ids: the table; large sparse ids: np.unique
        for _ in range(50):
            shape = tuple(rng.integers(1, 20, size=rng.integers(2, 4)))
            m = rng.integers(0, rng.integers(1, 40), size=shape).astype(np.int64) * scale
            values, inverse = _unique_inverse(m)
            want_values, want_inverse = np.unique(m, return_inverse=True)
            assert values.dtype == want_values.dtype and np.array_equal(values, want_values)
            assert np.array_equal(inverse.reshape(m.shape), want_inverse.reshape(m.shape))
