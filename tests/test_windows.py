"""Solving a field only around its candidate white cells (core/wbc/windows.py)."""

import numpy as np
import pytest

from napari_vptv.core.wbc.windows import MIN_MARGIN, cell_windows, solve_in_windows


def _probabilities(shape, blobs):
    """Background probability 1 except in the given boxes, where cytoplasm is likely."""
    p = np.zeros((3,) + shape, np.float32)
    p[0] = 1.0
    for r0, r1, c0, c1 in blobs:
        p[0, r0:r1, c0:c1] = 0.2
        p[1, r0:r1, c0:c1] = 0.8
    return p


def test_two_distant_candidates_give_two_windows_with_their_margins():
    p = _probabilities((400, 600), [(50, 90, 60, 100), (300, 340, 450, 490)])
    windows = cell_windows(p, diameter=40.0)
    assert len(windows) == 2
    margin = int(np.ceil(0.25 * 40))
    assert windows[0] == (slice(50 - margin, 90 + margin), slice(60 - margin, 100 + margin))
    assert windows[1] == (slice(300 - margin, 340 + margin), slice(450 - margin, 490 + margin))


def test_overlapping_windows_merge_a_platelet_gets_the_smallest_margin_and_a_speck_none():
    blobs = [(50, 90, 60, 100), (95, 130, 60, 100), (300, 308, 300, 308), (200, 202, 500, 502)]
    windows = cell_windows(_probabilities((400, 600), blobs), diameter=40.0)
    assert len(windows) == 2
    assert windows[0] == (slice(40, 140), slice(50, 110))
    assert windows[1] == (slice(300 - MIN_MARGIN, 308 + MIN_MARGIN), slice(300 - MIN_MARGIN, 308 + MIN_MARGIN))
    assert cell_windows(_probabilities((400, 600), [(200, 202, 500, 502)]), diameter=40.0) == []


def test_a_crop_filled_by_its_cell_is_solved_whole_and_an_empty_field_has_no_window():
    assert cell_windows(_probabilities((300, 300), [(40, 260, 40, 260)]), diameter=200.0) is None
    assert cell_windows(_probabilities((300, 300), [(40, 60, 40, 60)]), diameter=None) is None
    assert cell_windows(_probabilities((300, 300), []), diameter=50.0) == []


def test_a_camera_field_is_solved_in_windows_with_the_whole_fields_colour_model():
    pytest.importorskip("torch")
    from napari_vptv.adapted import FIELD_COLOUR_STEP, adapted_from_prediction
    from napari_vptv.core.io.samples import load_sample
    from napari_vptv.core.wbc.adapt import adapted_segment
    from napari_vptv.nn.weights import predict_wbc
    from napari_vptv.options import SegmentOptions
    from napari_vptv.presets import VPTV_ADAPTED

    img, _ = load_sample("001")
    field = np.empty((480, 640, 3), np.uint8)
    field[:] = np.median(img.reshape(-1, 3), axis=0).astype(np.uint8)
    field[90:390, 170:470] = img
    pred = predict_wbc(
        field, details=True, require_nucleus=False, augment=VPTV_ADAPTED.network_augment, method="vptv-unet"
    )
    windows = cell_windows(pred.probabilities, pred.diameter)
    assert windows, "a field with one white cell in the middle is solved in windows"
    opts = SegmentOptions(require_nucleus=False, white_cell_rule=False)
    result = adapted_from_prediction(field, pred, opts, "vptv-unet")
    assert result.info["solved_windows"] >= 1 and result.info["solved_share"] < 0.5
    inside = np.zeros(field.shape[:2], bool)
    for win in windows:
        inside[win] = True
    assert not result.labels[~inside].any()  # the plasma around stays background
    big = max(windows, key=lambda w: (w[0].stop - w[0].start) * (w[1].stop - w[1].start))
    settings = dict(
        channel_axis=-1,
        colour_sigma_per_diameter=VPTV_ADAPTED.colour_sigma_per_diameter,
        **VPTV_ADAPTED.solver_kwargs(),
    )
    step = FIELD_COLOUR_STEP  # the colour model: the whole field's, on every step-th pixel
    whole = adapted_segment(
        field[::step, ::step],
        pred.probabilities[:, ::step, ::step],
        **{**settings, "network_weight": 0.0},
        diameter=pred.diameter / step,
    )
    alone = adapted_segment(
        field[big],
        pred.probabilities[(slice(None),) + big],
        diameter=pred.diameter,
        class_model=whole.class_model,
        **settings,
    )
    np.testing.assert_array_equal(result.labels[big], alone.labels)  # a window is a crop


def test_a_crowded_field_is_solved_whole_with_the_colour_model_of_every_other_pixel(monkeypatch):
    pytest.importorskip("torch")
    import napari_vptv.adapted as adapted
    from napari_vptv.core.io.samples import load_sample
    from napari_vptv.nn.weights import predict_wbc
    from napari_vptv.options import SegmentOptions
    from napari_vptv.presets import VPTV_ADAPTED

    # four crops side by side: 600 x 600 px (more than a camera field), cells everywhere
    pairs = (("001", "004"), ("016", "001"))
    rows = [np.concatenate([load_sample(a)[0][..., :3], load_sample(b)[0][..., :3]], axis=1) for a, b in pairs]
    field = np.ascontiguousarray(np.concatenate(rows, axis=0))
    pred = predict_wbc(
        field, details=True, require_nucleus=False, augment=VPTV_ADAPTED.network_augment, method="vptv-unet"
    )
    assert cell_windows(pred.probabilities, pred.diameter) is None  # windows would cover most of it
    opts = SegmentOptions(require_nucleus=False, white_cell_rule=False)
    result = adapted.adapted_from_prediction(field, pred, opts, "vptv-unet")
    assert result.info["solved_windows"] == 1 and result.info["solved_share"] == 1.0
    monkeypatch.setattr(adapted, "WHOLE_FIELD_PIXELS", field.shape[0] * field.shape[1] + 1)
    crop_like = adapted.adapted_from_prediction(field, pred, opts, "vptv-unet")  # full-resolution fit
    assert "solved_windows" not in crop_like.info
    assert np.mean(result.labels == crop_like.labels) > 0.99


def test_windows_the_solve_rejects_keep_the_network_labels():
    p = _probabilities((100, 100), [(10, 20, 10, 20)])
    image = np.zeros((100, 100, 3), np.uint8)
    assert solve_in_windows(image, p, [(slice(5, 25), slice(5, 25))], lambda img, prob: None) is None


def test_a_given_colour_model_replaces_step_one_of_the_adapted_solve():
    pytest.importorskip("torch")
    from napari_vptv.core.io.samples import load_sample
    from napari_vptv.core.solver.costs import GaussianModel
    from napari_vptv.core.wbc.adapt import adapted_segment
    from napari_vptv.nn.weights import predict_wbc

    img, _ = load_sample("016")
    pred = predict_wbc(img, details=True, require_nucleus=False, method="vptv-unet")
    both = adapted_segment(img, pred.probabilities, diameter=pred.diameter)
    step_one = adapted_segment(img, pred.probabilities, diameter=pred.diameter, network_weight=0.0)
    given = adapted_segment(img, pred.probabilities, diameter=pred.diameter, class_model=step_one.class_model)
    np.testing.assert_array_equal(given.labels, both.labels)
    assert not np.array_equal(step_one.labels, both.labels)  # step two does change the labels
    m = step_one.class_model  # a model with cytoplasm and nucleus colours swapped is used as given
    swapped = GaussianModel(np.asarray(m.means)[[0, 2, 1]], np.asarray(m.covariances)[[0, 2, 1]], kind=m.kind)
    other = adapted_segment(img, pred.probabilities, diameter=pred.diameter, class_model=swapped)
    assert not np.array_equal(other.labels, both.labels)
