"""Tests of the baseline methods (k-means, EMTV, TDS, ADVP) and of the auction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from napari_vptv.core.scoring.baselines import (
    advp_segment,
    auction_assign,
    emtv_segment,
    kmeans_segment,
    tds_segment,
    volume_counts,
)
from napari_vptv.core.solver.segment import SegmentationResult


def _two_phase(shape=(40, 48), lo=0.2, hi=0.8):
    truth = np.zeros(shape, np.int32)
    truth[8:30, 10:34] = 1  # bright rectangle = class 1 (k-means orders by brightness)
    return np.where(truth == 1, hi, lo).astype(np.float32), truth


def _noisy_disc(shape=(48, 48), sd=0.15, seed=1):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = ((yy - 24) ** 2 + (xx - 24) ** 2 < 14**2).astype(np.int32)
    rng = np.random.default_rng(seed)
    img = 0.3 + 0.4 * truth + rng.normal(0, sd, shape)
    return img.astype(np.float32), truth


# --------------------------------------------------------------------------- #
# clean images are segmented perfectly
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "method",
    [
        lambda im: kmeans_segment(im, 2),
        lambda im: tds_segment(im, 2, tv_weight=0.02, sigma=2.0),
        lambda im: emtv_segment(im, 2, tv_weight=0.1),
        lambda im: advp_segment(im, volumes=[1 - 22 * 24 / (40 * 48), 22 * 24 / (40 * 48)]),
    ],
    ids=["kmeans", "tds", "emtv", "advp"],
)
def test_clean_two_phase_is_perfect(method):
    img, truth = _two_phase()
    res = method(img)
    assert isinstance(res, SegmentationResult)
    assert res.labels.shape == truth.shape and res.labels.dtype == np.int32
    np.testing.assert_array_equal(res.labels, truth)
    assert res.probabilities.shape == (2,) + truth.shape
    np.testing.assert_allclose(res.volumes, np.bincount(truth.ravel()) / truth.size)


def test_kmeans_colour_perfect_and_ordered():
    img, truth = _two_phase()
    rgb = np.stack([img, img * 0.5, 1 - img], axis=-1)
    res = kmeans_segment(rgb, 2, channel_axis=-1)
    # class 0 = darker (sum of channels 0.2+0.1+0.8 = 1.1 < 0.8+0.4+0.2 = 1.4)
    np.testing.assert_array_equal(res.labels, truth)


# --------------------------------------------------------------------------- #
# regularisation helps on noise; ADVP hits volumes exactly
# --------------------------------------------------------------------------- #
def test_tds_and_emtv_denoise_better_than_kmeans():
    img, truth = _noisy_disc()
    acc_km = np.mean(kmeans_segment(img, 2).labels == truth)
    acc_tds = np.mean(tds_segment(img, 2, tv_weight=0.02, sigma=2.0).labels == truth)
    acc_emtv = np.mean(emtv_segment(img, 2, tv_weight=0.1).labels == truth)
    assert acc_km < 0.97
    assert acc_tds > acc_km + 0.01
    assert acc_emtv > acc_km + 0.01


def test_emtv_iteration_budget_and_progress():
    """E-steps of at most inner_num_iter; the last one is cut at max_num_iter; the callback sees the total."""
    img, _ = _noisy_disc()
    calls = []
    res = emtv_segment(
        img, 2, tv_weight=0.1, max_num_iter=12, inner_num_iter=5, callback=lambda i, m: calls.append((i, m))
    )
    assert res.n_iter == 12 and not res.converged
    totals = [0] + [i for i, _ in calls]
    assert calls[-1] == (12, 12) and len(calls) >= 3  # several E-step / M-step rounds
    assert all(0 < b - a <= 5 for a, b in zip(totals, totals[1:]))
    # with the default budget the EM alternation stops because u no longer changes
    full = emtv_segment(img, 2, tv_weight=0.1)
    assert full.converged and full.n_iter < 500
    assert full.class_model.kind == "gaussian" and full.class_model.covariances is not None


@pytest.mark.parametrize("volumes", [[0.5, 0.5], [0.8, 0.2], [0.35, 0.65]])
def test_advp_hits_volumes_exactly(volumes):
    img, _ = _noisy_disc(shape=(37, 41))
    res = advp_segment(img, volumes=volumes, tv_weight=0.02)
    counts = np.bincount(res.labels.ravel(), minlength=2)
    np.testing.assert_array_equal(counts, volume_counts(volumes, img.size))
    assert abs(counts.sum() - img.size) == 0
    np.testing.assert_allclose(res.volumes, counts / img.size)


def test_advp_three_classes_colour_exact_counts():
    rng = np.random.default_rng(3)
    img = rng.random((30, 33, 3)).astype(np.float32)
    vols = [0.2, 0.3, 0.5]
    res = advp_segment(img, volumes=vols, channel_axis=-1, tv_weight=0.05)
    np.testing.assert_array_equal(np.bincount(res.labels.ravel(), minlength=3), volume_counts(vols, 30 * 33))


def test_advp_with_true_volume_beats_kmeans_on_noise():
    img, truth = _noisy_disc(sd=0.25)
    frac = truth.mean()
    acc_km = np.mean(kmeans_segment(img, 2).labels == truth)
    acc_advp = np.mean(advp_segment(img, volumes=[1 - frac, frac], tv_weight=0.02).labels == truth)
    assert acc_advp > acc_km


def test_same_seed_same_labels():
    img, _ = _noisy_disc()
    a = advp_segment(img, volumes=[0.6, 0.4], seed=5)
    b = advp_segment(img, volumes=[0.6, 0.4], seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(tds_segment(img, 2, seed=2).labels, tds_segment(img, 2, seed=2).labels)


# --------------------------------------------------------------------------- #
# the auction
# --------------------------------------------------------------------------- #
def _optimum(benefit, caps):
    slots = np.repeat(benefit, caps, axis=0)  # one row per unit of capacity
    r, c = linear_sum_assignment(-slots)
    return slots[r, c].sum()


@pytest.mark.parametrize("seed", range(6))
def test_auction_is_optimal_within_n_eps(seed):
    rng = np.random.default_rng(seed)
    k, n = 3, 13
    benefit = rng.random((k, n))
    caps = volume_counts(rng.random(k) + 0.3, n)
    eps = 1e-4
    labels, prices = auction_assign(benefit, caps, epsilon_min=eps)
    np.testing.assert_array_equal(np.bincount(labels, minlength=k), caps)
    value = benefit[labels, np.arange(n)].sum()
    opt = _optimum(benefit, caps)
    assert value >= opt - n * eps - 1e-12
    # and at least as good as greedy (each class in turn takes its best free items)
    free = np.ones(n, bool)
    greedy = 0.0
    for i in range(k):
        idx = np.flatnonzero(free)
        take = idx[np.argsort(-benefit[i, idx])[: caps[i]]]
        greedy += benefit[i, take].sum()
        free[take] = False
    assert value >= greedy - 1e-12


def test_auction_integer_benefits_exact():
    rng = np.random.default_rng(11)
    benefit = rng.integers(0, 20, size=(4, 16)).astype(float)
    caps = np.array([3, 5, 2, 6])
    labels, _ = auction_assign(benefit, caps, epsilon_min=1.0 / (2 * 16))
    assert benefit[labels, np.arange(16)].sum() == _optimum(benefit, caps)


def test_auction_zero_capacity_class_and_errors():
    benefit = np.array([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0], [0.0, 1.0, 0.0]])
    labels, _ = auction_assign(benefit, [2, 0, 1])
    assert 1 not in labels and np.bincount(labels, minlength=3).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="sum to the number of items"):
        auction_assign(benefit, [1, 1, 0.0 + 2])
    with pytest.raises(ValueError, match="capacities"):
        auction_assign(benefit, [1.5, 1.5, 0])
    with pytest.raises(ValueError, match="NaN"):
        auction_assign(np.full((2, 2), np.nan), [1, 1])


def test_volume_counts_sum_and_rounding():
    c = volume_counts([0.333, 0.333, 0.334], 100)
    assert c.sum() == 100 and np.all(np.abs(c - np.array([33.3, 33.3, 33.4])) < 1)


# --------------------------------------------------------------------------- #
# bad input -> clear ValueError
# --------------------------------------------------------------------------- #
def test_bad_input_errors():
    img, _ = _two_phase()
    with pytest.raises(ValueError, match="sum to 1"):
        advp_segment(img, volumes=[0.5, 0.6])
    with pytest.raises(ValueError, match="one value per class"):
        advp_segment(img, 3, volumes=[0.5, 0.5])
    with pytest.raises(ValueError, match="sigma"):
        tds_segment(img, 2, sigma=0)
    with pytest.raises(ValueError, match="tv_weight"):
        emtv_segment(img, 2, tv_weight=-1)
    with pytest.raises(ValueError, match="n_classes"):
        kmeans_segment(img, 1)
    with pytest.raises(ValueError, match="similarity"):
        tds_segment(img, 2, similarity="histogram")
