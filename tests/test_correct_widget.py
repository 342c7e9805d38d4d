"""The "Correct mask" widget in a real napari viewer: 3-D stacks (true 3-D and slice by
slice), the preview and its Accept / Discard, per-object change statistics.

Synthetic images built here (no /work/shared); needs a real X server:

    xvfb-run -a python -m pytest tests/test_correct_widget.py
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

FAST = 120


def _nuclei_stack(n_planes=4, shape=(56, 72), seed=3):
    """Fluorescence-like stack: per plane three bright nuclei (one dim) drifting from
    plane to plane (a time series), blurred, noisy; and the true labels (ids 4, 7, 9)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    truth = np.zeros((n_planes,) + shape, np.int32)
    image = np.zeros((n_planes,) + shape, np.float32)
    nuclei = [(4, (18, 16), 9, 1.0), (7, (36, 40), 11, 0.45), (9, (18, 54), 8, 0.8)]
    for z in range(n_planes):
        level = np.full(shape, 0.1, np.float32)
        for lab, (cy, cx), r, bright in nuclei:
            disc = (yy - cy - z) ** 2 + (xx - cx - 2 * z) ** 2 <= r * r
            disc &= truth[z] == 0
            truth[z][disc] = lab
            level[disc] = 0.1 + 0.7 * bright
        image[z] = ndi.gaussian_filter(level + rng.normal(0, 0.04, shape), 1.0)
    return image, truth


def _erode_each(labels, r):
    out = np.zeros_like(labels)
    for lab in np.unique(labels[labels > 0]):
        out[ndi.binary_erosion(labels == lab, iterations=r)] = lab
    return out


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _shown(widget):
    """Shown unless hidden (``visible`` is False while the test window is not mapped)."""
    return widget.enabled and not widget.native.isHidden()


def test_stack_choice_only_for_3d_labels(viewer_and_widget):
    viewer, w = viewer_and_widget
    image, truth = _nuclei_stack()
    viewer.add_image(image[0], name="plane")
    flat = viewer.add_labels(truth[0], name="flat")
    assert w.labels.value is flat and not _shown(w.stack_mode)
    viewer.add_image(image, name="stack")
    stack = viewer.add_labels(truth, name="rough stack")
    assert w.labels.value is flat  # the chosen input stays
    w.labels.value = stack
    assert _shown(w.stack_mode)
    w.labels.value = flat
    assert not _shown(w.stack_mode)


def test_slice_by_slice_on_a_3d_stack_keeps_ids_and_the_users_layer(viewer_and_widget, qtbot):
    from napari_vptv._correct_widget import KIND, METADATA_KEY

    viewer, w = viewer_and_widget
    image, truth = _nuclei_stack()
    rough = np.stack([_erode_each(p, 3) for p in truth])
    viewer.add_image(image, name="nuclei")
    user = viewer.add_labels(rough.copy(), name="rough")
    w.image.value, w.labels.value = viewer.layers["nuclei"], user
    w.stack_mode.value = "slice by slice"
    w.max_iter.value = FAST
    assert w.parameters()["stack_mode"] == "slices"
    n_layers = len(viewer.layers)
    assert w.run() is not None  # threaded, as from the Run button
    qtbot.waitUntil(lambda: w.worker is None, timeout=180000)
    out = w.output_layer
    assert len(viewer.layers) == n_layers + 2 and out is viewer.layers["rough corrected"]
    np.testing.assert_array_equal(viewer.layers["rough before"].data, rough)  # outlined under the preview
    assert out.metadata[METADATA_KEY]["kind"] == KIND
    assert out.metadata[METADATA_KEY]["params"]["stack_mode"] == "slices"
    np.testing.assert_array_equal(user.data, rough)  # the user's layer untouched until Accept
    for z in range(truth.shape[0]):  # every plane keeps its ids
        assert set(np.unique(out.data[z])) == set(np.unique(rough[z]))
    # true 3-D on this drifting stack gives 0.947: the planes must be corrected on their own
    assert _dice(out.data > 0, truth > 0) >= 0.96 > _dice(rough > 0, truth > 0) + 0.2
    # per object (summed over planes): one row per id, areas of the layers
    table = out.features
    assert sorted(table["index"]) == [4, 7, 9]
    for _, row in table.iterrows():
        assert row["area_before"] == np.sum(rough == row["index"])
        assert row["area_after"] == np.sum(out.data == row["index"])
        assert row["area_after"] > row["area_before"] and row["status"].startswith("moved")
    assert "3 objects" in w.status.value


def test_true_3d_mode_on_a_stack(viewer_and_widget):
    viewer, w = viewer_and_widget
    zz, yy, xx = np.indices((20, 30, 30))
    truth = ((zz - 10) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2 <= 7**2).astype(np.int32) * 5
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(0.2 + 0.6 * (truth > 0) + rng.normal(0, 0.05, truth.shape), 0.7)
    rough = ndi.binary_erosion(truth > 0, iterations=2).astype(np.int32) * 5
    viewer.add_image(image.astype(np.float32), name="ball")
    user = viewer.add_labels(rough.copy(), name="rough ball")
    w.image.value = viewer.layers["ball"]
    assert _shown(w.stack_mode) and w.stack_mode.value == "3-D"
    w.max_iter.value = 100
    out = w.run(sync=True)
    assert out is not None and out is not user
    assert set(np.unique(out.data)) == {0, 5}
    assert _dice(out.data > 0, truth > 0) >= 0.9 > _dice(rough > 0, truth > 0)
    np.testing.assert_array_equal(user.data, rough)


@pytest.fixture
def previewed(viewer_and_widget):
    """A 2-D correction run: (viewer, widget, user's Labels layer, its data before, preview)."""
    viewer, w = viewer_and_widget
    image, truth = _nuclei_stack(n_planes=1)
    rough = _erode_each(truth[0], 3)
    viewer.add_image(image[0], name="nuclei")
    user = viewer.add_labels(rough.copy(), name="rough")
    w.image.value = viewer.layers["nuclei"]
    w.max_iter.value = FAST
    out = w.run(sync=True)
    assert out is not None
    return viewer, w, user, rough, out


def test_accept_writes_the_preview_into_the_layer_as_one_undo_step(previewed):
    viewer, w, user, rough, out = previewed
    assert w.accept_button.enabled and w.discard_button.enabled and w.table_button.enabled
    corrected = np.array(out.data)
    assert not np.array_equal(corrected, rough)
    assert w.accept()
    np.testing.assert_array_equal(user.data, corrected)
    assert out not in viewer.layers and w.output_layer is None
    assert viewer.layers.selection.active is user
    assert not w.accept_button.enabled and "undoes" in w.status.value
    user.undo()  # Ctrl+Z in napari
    np.testing.assert_array_equal(user.data, rough)
    assert not w.accept()  # nothing left to accept


def test_accept_refuses_a_layer_edited_after_the_run(previewed):
    viewer, w, user, rough, out = previewed
    user.data_setitem((np.array([0]), np.array([0])), 4)  # the user paints a pixel
    edited = np.array(user.data)
    assert not w.accept()
    assert "edited" in w.status.value
    np.testing.assert_array_equal(user.data, edited)
    assert out in viewer.layers  # the preview stays


def test_discard_removes_only_the_preview(previewed):
    viewer, w, user, rough, out = previewed
    names = [layer.name for layer in viewer.layers]
    assert w.discard()
    assert [layer.name for layer in viewer.layers] == [n for n in names if n not in (out.name, "rough before")]
    np.testing.assert_array_equal(user.data, rough)
    assert not w.discard_button.enabled


def test_removing_the_preview_by_hand_disables_accept(previewed):
    viewer, w, user, rough, out = previewed
    viewer.layers.remove(out)
    assert not w.accept_button.enabled and not w.accept()
    assert "rough before" not in viewer.layers  # its outline of the mask before goes with it
    np.testing.assert_array_equal(user.data, rough)


def test_table_button_opens_the_features_table_of_the_preview(previewed):
    viewer, w, user, rough, out = previewed
    table = w.table_button
    assert table.enabled
    dock = w.show_table()
    assert dock is not None and viewer.layers.selection.active is out
    assert sorted(out.features["index"]) == [4, 7, 9]
    np.testing.assert_array_equal(out.features["area_before"], [np.sum(rough == i) for i in (4, 7, 9)])


def test_the_input_changes_only_when_the_user_picks_it(viewer_and_widget):
    viewer, w = viewer_and_widget
    image, truth = _nuclei_stack(n_planes=1)
    viewer.add_image(image[0], name="nuclei")
    first = viewer.add_labels(truth[0].copy(), name="first")
    assert w.labels.value is first  # nothing was chosen: the first Labels layer
    second = viewer.add_labels(truth[0].copy(), name="second")
    assert w.labels.value is first  # added later: not switched to
    viewer.layers.selection.active = second  # selected in the layer list (e.g. by another widget)
    assert w.labels.value is first
    w.labels.value = second  # the user's choice
    assert w.labels.value is second


def test_accept_acts_on_the_preview_of_the_chosen_labels_layer(viewer_and_widget):
    viewer, w = viewer_and_widget
    image, truth = _nuclei_stack(n_planes=1)
    viewer.add_image(image[0], name="nuclei")
    w.max_iter.value = FAST
    rough_a = _erode_each(truth[0], 3)
    rough_b = _erode_each(truth[0], 2)
    a = viewer.add_labels(rough_a.copy(), name="a")
    out_a = np.array(w.run(sync=True).data)
    b = viewer.add_labels(rough_b.copy(), name="b")
    w.labels.value = b
    assert w.run(sync=True) is not None
    w.labels.value = a  # back to the first layer: its preview is still there
    assert w.accept()
    np.testing.assert_array_equal(a.data, out_a)
    np.testing.assert_array_equal(b.data, rough_b)
    assert "a corrected" not in viewer.layers and "b corrected" in viewer.layers
    assert w.discard() and "b corrected" not in viewer.layers
    np.testing.assert_array_equal(b.data, rough_b)


def test_changes_table_sums_planes_and_names_kept_objects():
    from napari_vptv._correct_report import report_summary
    from napari_vptv._correct_widget import changes_table
    from napari_vptv.core.correct.mask import ObjectCorrection

    report = [
        ObjectCorrection(7, 100, 120, "moved 2.0 px", 2.0),
        ObjectCorrection(3, 50, 50, "no evidence"),
        ObjectCorrection(7, 80, 80, "kept"),
        ObjectCorrection(7, 10, 10, "kept"),
        ObjectCorrection(5, 40, 30, "moved 1.2 px", 1.2),
        ObjectCorrection(7, 30, 40, "moved 3.0 px", 3.0),
        ObjectCorrection(8, 30, 40, "moved 3.0 px", 3.0),
        ObjectCorrection(8, 30, 40, "moved 2.0 px", 2.0),
    ]
    table = changes_table(report)
    assert table["index"].tolist() == [3, 5, 7, 8]
    assert table["area_before"].tolist() == [50, 40, 220, 60] and table["area_after"].tolist() == [50, 30, 250, 80]
    assert table["change_%"].tolist() == [0.0, -25.0, round(100 * 30 / 220, 1), round(100 * 20 / 60, 1)]
    assert table["status"].tolist() == [
        "no evidence",
        "moved 1.2 px",
        "moved 2.5 px (2 planes), kept (2 planes)",
        "moved 2.5 px",
    ]
    assert report_summary(table).endswith("3 moved, 1 kept as given")
    assert len(changes_table([])) == 0
