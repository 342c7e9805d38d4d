"""Mask correction: where the edge goes, what is left alone, and the per-object report.

Synthetic images only. Nuclei are drawn as annotators outline them: a bright
interior with a dimmer outer rim, blurred; the true outline is where the noise-free
image falls to the annotated level (45 % of the step between background and the
nucleus's interior, as measured on annotated fluorescence nuclei,
``benchmarks/edge_profile_nuclei.py``), so the rim is inside it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv.core.correct.mask import correct_mask

ANNOTATED_LEVEL = 0.45


def annotated_nuclei(seed=0, shape=(120, 160), rim=None, rim_level=None):
    """Grey nuclei (ellipses) with chromatin texture and a dim outer rim, blurred, Poisson
    noise; the truth where each one's noise-free blurred image reaches ``ANNOTATED_LEVEL``.
    ``rim`` / ``rim_level``: the rim's width (px) and brightness (share of the interior);
    None: drawn per nucleus (1.5-3 px, 0.5-0.7)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    centres = [(30, 30, 12), (30, 80, 10), (32, 128, 14), (85, 35, 9), (88, 85, 13), (90, 130, 11)]
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture /= texture.std()
    truth = np.zeros(shape, np.int32)
    signal = np.zeros(shape)
    for i, (cy, cx, r) in enumerate(centres, start=1):
        cy, cx = cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)
        theta, squeeze = rng.uniform(0, np.pi), rng.uniform(0.75, 1.0)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        inside = np.hypot(u, v / squeeze) <= r
        width = rng.uniform(1.5, 3.0) if rim is None else rim
        dim = rng.uniform(0.5, 0.7) if rim_level is None else rim_level
        level = 0.4 if i == 4 else rng.uniform(0.8, 1.0)
        depth = ndi.distance_transform_edt(inside)
        one = np.where(inside, level * np.where(depth <= width, dim, 1.0) * (1 + 0.15 * texture), 0.0)
        clean = ndi.gaussian_filter(one, 1.5)
        truth[clean >= ANNOTATED_LEVEL * level] = i
        signal += one
    image = rng.poisson(300 * (0.1 + ndi.gaussian_filter(signal, 1.5))) + 100
    return image.astype(np.uint16), truth


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def nuclei():
    return annotated_nuclei(1)


def test_accurate_annotated_masks_are_left_as_they_are(one_torch_thread):
    for seed in (0, 2):
        image, truth = annotated_nuclei(seed)
        report = []
        out = correct_mask(image, truth, report=report)
        assert dice(out > 0, truth > 0) >= 0.99
        assert [r.status for r in report] == ["kept"] * 6
        np.testing.assert_array_equal(out, truth)  # left as it is: not a pixel moved


@pytest.mark.parametrize("bias", ["dilate", "erode"])
def test_each_object_reports_whether_it_moved(nuclei, bias, one_torch_thread):
    from skimage.segmentation import expand_labels

    image, truth = nuclei
    if bias == "dilate":
        rough = expand_labels(truth, 3)
    else:
        rough = np.zeros_like(truth)
        for i in range(1, 7):
            rough[ndi.binary_erosion(truth == i, iterations=3)] = i
    report = []
    out = correct_mask(image, rough, report=report)
    assert [r.label for r in report] == list(range(1, 7))
    for r in report:
        assert r.status.startswith("moved ") and r.status.endswith(" px"), r.status
        assert 1.5 <= float(r.status.split()[1]) <= 4.5 and r.moved_px == pytest.approx(
            float(r.status.split()[1]), abs=0.051
        )
        assert r.area_after == (out == r.label).sum()
    assert dice(out > 0, truth > 0) >= 0.95


def test_no_contrast_is_reported_as_no_evidence(nuclei, one_torch_thread):
    image, truth = nuclei
    rough = truth.copy()
    rough[100:116, 4:20] = 9  # a flat background patch
    report = []
    out = correct_mask(image, rough, report=report)
    status = {r.label: r.status for r in report}
    assert status[9] == "no evidence"
    np.testing.assert_array_equal(out == 9, rough == 9)


def test_edge_choice_moves_the_outline_the_expected_way(one_torch_thread):
    from skimage.segmentation import expand_labels

    # a rim as dim as the annotated level: the strongest gradient is the step from the
    # interior to the rim, the half-maximum about there too, the rim's outer edge beyond
    image, truth = annotated_nuclei(rim=3.0, rim_level=0.45)
    rough = expand_labels(truth, 3)
    area = {}
    for where in ("rim", "half-max", "gradient"):
        out = correct_mask(image, rough, edge_position=where)
        area[where] = int((out > 0).sum())
        if where == "rim":
            assert dice(out > 0, truth > 0) >= 0.95
    # the outer rim lies outside the half-maximum, which lies outside the strongest
    # gradient (the step from the bright interior to the dim rim)
    assert area["rim"] > area["half-max"] > area["gradient"]
    assert area["rim"] > 1.1 * area["gradient"]


def test_unknown_edge_position_is_refused():
    image, truth = annotated_nuclei(shape=(120, 160))
    with pytest.raises(ValueError, match="edge_position"):
        correct_mask(image, truth, edge_position="outer")


def test_as_annotated_is_the_half_maximum_in_2d_the_rim_in_3d_the_gradient_in_colour(nuclei, one_torch_thread):
    from skimage.segmentation import expand_labels

    from napari_vptv.core.correct.mask import annotated_edge

    assert annotated_edge(1, 2) == "half-max"
    assert annotated_edge(1, 3) == "rim"
    assert annotated_edge(3, 2) == "gradient"
    image, truth = nuclei
    rough = expand_labels(truth, 3)
    default = correct_mask(image, rough)
    np.testing.assert_array_equal(default, correct_mask(image, rough, edge_position="half-max"))
    assert (default > 0).sum() < (correct_mask(image, rough, edge_position="rim") > 0).sum()


def test_gradient_edge_next_to_unlabelled_neighbours_still_moves(one_torch_thread):
    # an eroded nucleus ringed by bright, unlabelled neighbour rims: the thin shells
    # either side of its edge overlap, its plateau and the background do not
    yy, xx = np.indices((64, 64))
    d = np.hypot(yy - 32, xx - 32)
    img = np.where(d <= 12, 100.0, 50.0)
    img[(d > 13) & (d <= 17) & (np.sin(6 * np.arctan2(yy - 32, xx - 32)) > 0)] = 200.0
    image = ndi.gaussian_filter(img, 1.0).astype(np.uint8)
    truth = d <= 12
    rough = ndi.binary_erosion(truth, iterations=3).astype(np.int32)
    report = []
    out = correct_mask(image, rough, report=report, edge_position="gradient")
    assert report[0].status.startswith("moved"), report[0].status
    assert dice(out > 0, truth) >= dice(rough > 0, truth) + 0.1
