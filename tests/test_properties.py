"""Property test: within the documented ranges (:data:`napari_vptv.options.RANGES`),
the solver always returns finite probabilities, valid labels and volumes within tolerance.

Small random images, class counts, volumes and parameters drawn by hypothesis with a
fixed seed (``derandomize``): the same examples on every run.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_vptv import SegmentOptions, segment_image  # noqa: E402
from napari_vptv.options import RANGES  # noqa: E402


@st.composite
def problems(draw):
    k = draw(st.integers(2, 3))
    n = draw(st.integers(8, 16))
    raw = np.array(draw(st.lists(st.floats(0.2, 1.0), min_size=k, max_size=k)))
    volumes = raw / raw.sum()
    seed = draw(st.integers(0, 2**16))
    image = np.random.default_rng(seed).random((n, n)).astype(np.float32)
    eps_low, eps_high = RANGES["epsilon"]
    epsilon = 10 ** draw(st.floats(np.log10(eps_low), np.log10(eps_high)))
    tv_weight = draw(st.floats(*RANGES["tv_weight"]))
    return image, k, volumes, epsilon, tv_weight, seed


@settings(max_examples=25, deadline=None, derandomize=True)
@given(problems())
def test_solver_within_the_documented_ranges_is_finite_and_keeps_volumes(problem):
    import torch

    torch.set_num_threads(1)
    image, k, volumes, epsilon, tv_weight, seed = problem
    opts = SegmentOptions(
        n_classes=k,
        volumes=volumes,
        volume_mode="exact",
        epsilon=epsilon,
        tv_weight=tv_weight,
        max_num_iter=60,
        seed=seed,
    )
    res = segment_image(image, opts)
    assert np.all(np.isfinite(res.probabilities))
    assert res.labels.shape == image.shape and res.labels.min() >= 0 and res.labels.max() < k
    achieved = np.bincount(res.labels.ravel(), minlength=k) / res.labels.size
    # exact volumes are met up to the rounding of the pixel counts (one pixel per class)
    assert np.all(np.abs(achieved - volumes) <= k / res.labels.size), (achieved, volumes)
