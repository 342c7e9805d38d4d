"""The "VPTV segmentation" widget in a real napari viewer (run under Xvfb).

xvfb-run -a python -m pytest tests/test_widget.py
"""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Labels  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from napari_vptv._widget import METADATA_KEY, METHOD_NET, METHOD_VPTV, VOLUME_AUTO, SegmentationWidget  # noqa: E402
from napari_vptv.core.io.samples import load_sample  # noqa: E402

FAST = 25  # solver iterations in tests: the labels meet the volumes for any count


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine torch's thread pool mostly spins."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def notes():
    """Notifications shown during the test: list of (severity, message)."""
    seen = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, qtbot):
    w = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(w, name="VPTV segmentation")
    yield w
    if w.worker is not None and w.worker != "sync":
        w.cancel()
        qtbot.waitUntil(lambda: w.worker is None, timeout=60000)


def labels_layers(viewer):
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def snapshot(viewer):
    return [(layer.name, type(layer).__name__, id(layer)) for layer in viewer.layers]


def errors(notes):
    return [m for s, m in notes if "error" in s.lower()]


def fractions(labels, k):
    return np.bincount(np.asarray(labels).ravel(), minlength=k) / np.asarray(labels).size


def ball(shape=(24, 24, 24), radius=7.0, seed=0):
    z, y, x = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    inside = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= radius**2
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * inside + rng.normal(0, 0.1, shape)).astype(np.float32), inside


def disc_stack(n=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    stack = np.empty((n, size, size), np.float32)
    for i in range(n):
        r = 10 + 3 * i
        stack[i] = 0.2 + 0.6 * ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r)
    return stack + rng.normal(0, 0.05, stack.shape).astype(np.float32)


# --------------------------------------------------------------------------- npe2
def test_widget_from_manifest(viewer):
    dock, w = viewer.window.add_plugin_dock_widget("napari-vptv", "VPTV segmentation")
    assert isinstance(w, SegmentationWidget)
    assert w.image.value is None  # no image yet
    viewer.open_sample("napari-vptv", "wbc_001")
    assert w.image.value is viewer.layers[-1]  # choices follow the layer list


# -------------------------------------------------------------------- 2-D WBC runs
def test_wbc_sample_interval(viewer, widget, wbc, notes):
    widget.method.value = METHOD_VPTV
    viewer.open_sample("napari-vptv", "wbc_001")
    image_layer = viewer.layers[-1]
    assert image_layer.rgb
    widget.image.value = image_layer
    widget.preset.value = "WBC (3 classes)"
    assert widget.volume_mode.value == VOLUME_AUTO  # the preset's default
    widget.volume_mode.value = "interval"  # the fixed preset's prior interval
    assert not widget.lower.native.isHidden() and not widget.epsilon.native.isHidden()
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    assert not errors(notes), notes
    assert out is not None and out in viewer.layers and isinstance(out, Labels)
    assert out.name == f"{image_layer.name} VPTV (variational)"
    assert out.data.shape == (300, 300) and out.data.dtype == np.uint8
    meta = out.metadata[METADATA_KEY]
    assert meta["source"] == image_layer.name and meta["method"] == "vptv" and meta["complete"]
    spec = meta["volume_spec"]
    achieved = fractions(out.data, 3)
    np.testing.assert_allclose(meta["volumes"], achieved)
    assert np.all(achieved >= np.asarray(spec["lower"]) - 0.005), (achieved, spec)
    assert np.all(achieved <= np.asarray(spec["upper"]) + 0.005), (achieved, spec)
    assert set(np.unique(out.data)) <= {0, 1, 2}
    assert widget.run_button.enabled and widget.worker is None


def test_rerun_replaces_own_result_only_when_asked(viewer, widget, wbc, notes):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.keep_previous.value = False
    widget.preset.value = "custom"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.7, 0.2, 0.1"
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    np.testing.assert_allclose(fractions(out.data, 3), [0.7, 0.2, 0.1], atol=0.005)
    first = out.data.copy()

    widget.volumes.value = "0.6, 0.25, 0.15"
    out2 = widget.run(sync=True)
    assert not errors(notes), notes
    assert out2 is out and len(labels_layers(viewer)) == 1
    assert out.name == "cell VPTV (variational)"
    np.testing.assert_allclose(fractions(out.data, 3), [0.6, 0.25, 0.15], atol=0.005)
    assert not np.array_equal(first, out.data)
    assert out.metadata[METADATA_KEY]["params"]["volumes"] == "0.6, 0.25, 0.15"

    # the default: keep previous results, a new layer per run
    widget.keep_previous.value = True
    kept = out.data.copy()
    out3 = widget.run(sync=True)
    assert out3 is not out and out3.name == "cell VPTV (variational) [2]"
    np.testing.assert_array_equal(out.data, kept)
    assert len(labels_layers(viewer)) == 2


def test_renamed_duplicated_or_edited_results_are_the_users(viewer, widget, wbc, notes):
    widget.method.value = METHOD_VPTV
    from napari.layers._layer_actions import _duplicate_layer

    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.keep_previous.value = False  # even when asked to replace the previous result
    widget.preset.value = "custom"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.7, 0.2, 0.1"
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    out.name = "variational (keep)"
    kept = out.data.copy()
    out2 = widget.run(sync=True)
    assert out2 is not out and out.name == "variational (keep)"
    np.testing.assert_array_equal(out.data, kept)

    viewer.layers.selection = {out2}
    _duplicate_layer(viewer.layers)
    copy = viewer.layers[f"{out2.name} copy"]
    assert copy.metadata[METADATA_KEY]["token"] == out2.metadata[METADATA_KEY]["token"]  # copied metadata
    out3 = widget.run(sync=True)
    assert out3 is out2  # the original, untouched: replaced as asked; the copy is not
    assert copy in viewer.layers and copy.name == f"{out2.name} copy"

    out3.data[0:4, 0:4] = (out3.data[0:4, 0:4] + 1) % 3  # a user's edit (like painting)
    out3.refresh()
    edited = out3.data.copy()
    out4 = widget.run(sync=True)
    assert out4 is not out3
    np.testing.assert_array_equal(out3.data, edited)
    assert not errors(notes), notes


def test_each_method_its_own_named_layer(viewer, widget, wbc, notes):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.keep_previous.value = False
    widget.max_iter.value = FAST
    widget.measure.value = False
    variational = widget.run(sync=True)
    widget.method.value = METHOD_NET
    # the switch says what it changed, not silently
    assert not widget.notice.native.isHidden() and METHOD_NET in widget.notice.value
    assert "Max iterations" in widget.notice.value
    network = widget.run(sync=True)
    assert not errors(notes), notes
    assert network is not variational and variational in viewer.layers
    assert (variational.name, network.name) == ("cell VPTV (variational)", "cell VPTV (VPTVU-net)")
    assert network.metadata[METADATA_KEY]["method_label"] == "VPTVU-net"


def test_user_layer_with_output_name_untouched(viewer, widget, wbc):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    mine = np.full(image.shape[:2], 7, np.uint8)
    user = viewer.add_labels(mine.copy(), name="cell VPTV (variational)")
    widget.preset.value = "custom"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.7, 0.2, 0.1"
    widget.max_iter.value = FAST
    widget.keep_previous.value = False
    out = widget.run(sync=True)
    assert out is not user and out.name == "cell VPTV (variational) [2]"
    out2 = widget.run(sync=True)
    assert out2 is out
    assert user in viewer.layers and user.name == "cell VPTV (variational)"
    np.testing.assert_array_equal(user.data, mine)
    assert METADATA_KEY not in user.metadata
    assert len(labels_layers(viewer)) == 2


# ----------------------------------------------------------------------- bad input
def test_bad_inputs_notify_and_change_nothing(viewer, widget, wbc, notes):
    widget.method.value = METHOD_VPTV
    # no image layer
    before = snapshot(viewer)
    assert widget.run(sync=True) is None
    assert errors(notes) and "No image layer" in errors(notes)[-1]
    assert "No image layer" in widget.status.value

    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.preset.value = "custom"
    widget.max_iter.value = FAST

    # exact volumes summing to 1.4
    before = snapshot(viewer)
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.8, 0.4, 0.2"
    assert widget.run(sync=True) is None
    assert "sum to 1" in errors(notes)[-1] and "sum to 1" in widget.status.value
    assert snapshot(viewer) == before

    # wrong number of volumes, crossing interval
    widget.volumes.value = "0.5, 0.5"
    assert widget.run(sync=True) is None and "one value per class" in errors(notes)[-1]
    widget.volume_mode.value = "interval"
    widget.lower.value = "0.5, 0.3, 0.1"
    widget.upper.value = "0.9, 0.2, 0.2"
    assert widget.run(sync=True) is None and "empty" in errors(notes)[-1]
    assert snapshot(viewer) == before

    # a NaN image
    bad = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    bad[3, 4] = np.nan
    viewer.add_image(bad, name="nan image")
    widget.image.value = viewer.layers["nan image"]
    widget.volume_mode.value = "none"
    before = snapshot(viewer)
    assert widget.run(sync=True) is None
    assert "NaN" in errors(notes)[-1]
    assert snapshot(viewer) == before

    # 3-D volume mode on a 2-D image
    widget.image.value = viewer.layers["cell"]
    widget.stack_mode.value = "3-D volume (variational only)"
    assert widget.run(sync=True) is None and "3-D volume mode" in errors(notes)[-1]
    assert snapshot(viewer) == before

    # still works afterwards
    widget.stack_mode.value = "slice by slice"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.7, 0.2, 0.1"
    out = widget.run(sync=True)
    assert out is not None and out.metadata[METADATA_KEY]["complete"]


def test_error_inside_a_slice_is_a_notification(viewer, widget, notes):
    """A NaN slice in a lazy stack fails inside the run: notification, layer marked failed."""
    widget.method.value = METHOD_VPTV
    da = pytest.importorskip("dask.array")
    stack = disc_stack(3, 32)
    stack[1, 5, 5] = np.nan
    viewer.add_image(da.from_array(stack, chunks=(1, 32, 32)), name="lazy")
    widget.preset.value = "custom"
    widget.n_classes.value = 2
    widget.volume_mode.value = "none"
    widget.max_iter.value = 10
    out = widget.run(sync=True)
    assert "NaN" in errors(notes)[-1] and "slice 2 of 3" in errors(notes)[-1]
    meta = out.metadata[METADATA_KEY]
    assert not meta["complete"] and meta["slices_done"] == 1
    assert "failed" in out.name
    assert widget.run_button.enabled and widget.worker is None


# -------------------------------------------------------------------------- stacks
def test_stack_slice_by_slice(viewer, widget, notes):
    widget.method.value = METHOD_VPTV
    stack = disc_stack(4, 64)
    viewer.add_image(stack, name="zstack")
    widget.preset.value = "custom"
    widget.n_classes.value = 2
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.8, 0.2"
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    assert not errors(notes), notes
    assert out.data.shape == (4, 64, 64) and out.data.dtype == np.uint8
    meta = out.metadata[METADATA_KEY]
    assert meta["complete"] and meta["slices_total"] == 4 and meta["slices_done"] == 4
    assert len(meta["slice_volumes"]) == 4
    for z in range(4):
        np.testing.assert_allclose(fractions(out.data[z], 2), [0.8, 0.2], atol=0.005)
        np.testing.assert_allclose(meta["slice_volumes"][str(z)], fractions(out.data[z], 2))


def test_rgb_time_series(viewer, widget, wbc):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    crop = image[:96, :96]
    stack = np.stack([crop, np.ascontiguousarray(crop[::-1])])  # T, Y, X, RGB
    viewer.add_image(stack, name="movie", rgb=True)
    widget.preset.value = "custom"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.5, 0.3, 0.2"
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    assert out.data.shape == (2, 96, 96)
    for t in range(2):
        np.testing.assert_allclose(fractions(out.data[t], 3), [0.5, 0.3, 0.2], atol=0.005)


def test_volume_mode_ball(viewer, widget, notes):
    widget.method.value = METHOD_VPTV
    image, inside = ball()
    viewer.add_image(image, name="ball")
    frac = inside.mean()
    widget.preset.value = "custom"
    widget.n_classes.value = 2
    widget.volume_mode.value = "exact"
    widget.volumes.value = f"{1 - frac:.5f}, {frac:.5f}"
    widget.stack_mode.value = "3-D volume (variational only)"
    widget.max_iter.value = 60
    out = widget.run(sync=True)
    assert not errors(notes), notes
    assert out.data.shape == image.shape
    assert out.metadata[METADATA_KEY]["slices_total"] == 1
    seg = out.data == 1
    assert abs(seg.mean() - frac) < 0.005
    dice = 2 * (seg & inside).sum() / (seg.sum() + inside.sum())
    assert dice > 0.95, dice


def test_volume_mode_refused_for_network(viewer, widget, notes):
    viewer.add_image(ball()[0], name="ball")
    widget.method.value = METHOD_NET
    widget.stack_mode.value = "3-D volume (variational only)"
    before = snapshot(viewer)
    assert widget.run(sync=True) is None
    assert errors(notes)
    assert snapshot(viewer) == before


def test_network_method(viewer, widget, wbc, notes):
    """VPTVU-net from the widget if its weights are shipped, else a clear error."""
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.preset.value = "estimate from image (k-means)"
    widget.n_classes.value = 2
    widget.method.value = METHOD_NET
    assert widget.n_classes.value == 3 and not widget.n_classes.enabled
    assert widget.preset.value == "WBC (3 classes)"
    try:
        from napari_vptv.nn.weights import model_metadata

        model_metadata("vptv-unet")
        available = True
    except Exception:
        available = False
    before = snapshot(viewer)
    out = widget.run(sync=True)
    if not available:
        assert out is None and "not available" in errors(notes)[-1]
        assert snapshot(viewer) == before
        return
    assert not errors(notes), notes
    assert out.data.shape == image.shape[:2]
    meta = out.metadata[METADATA_KEY]
    assert meta["method"] == "vptv-unet" and meta["complete"]
    np.testing.assert_allclose(meta["volumes"], fractions(out.data, 3))


# ------------------------------------------------- defaults: the best measured method
def test_default_run_is_the_image_adapted_variational_method(viewer, widget, notes):
    """Untouched widget on the sample = ``vptv segment``'s default (``segment_image``
    without a method): the variational solver with the image-adapted WBC preset and
    its own volumes, ε and λ (no settings passed)."""
    from napari_vptv.api import segment_image
    from napari_vptv.options import SegmentOptions

    viewer.open_sample("napari-vptv", "wbc_001")
    assert widget.method.value == METHOD_VPTV
    assert widget.preset.value == "WBC (3 classes)" and widget.volume_mode.value == VOLUME_AUTO
    for w in (widget.volumes, widget.lower, widget.upper, widget.epsilon, widget.tv_weight, widget.estimate):
        assert w.native.isHidden(), w.label
    assert not widget.auto_note.native.isHidden() and "refitted" in widget.auto_note.value
    assert widget.run_button.enabled, widget.reason.value
    opts = widget.segment_options()
    assert (opts.volume_mode, opts.volumes, opts.lower, opts.upper, opts.epsilon, opts.tv_weight) == (None,) * 6
    assert opts.max_num_iter is None and not widget.max_iter.enabled  # the preset's own iteration cap
    out = widget.run(sync=True)
    assert not errors(notes), notes
    image, truth = load_sample("001")
    np.testing.assert_array_equal(out.data, segment_image(image).labels)
    np.testing.assert_array_equal(out.data, segment_image(image, SegmentOptions(method="vptv", preset="wbc")).labels)
    assert np.mean(out.data == truth) > 0.97  # the sample's ground truth
    meta = out.metadata[METADATA_KEY]
    assert meta["method"] == "vptv" and meta["volume_spec"]["mode"] == "auto"
    assert meta["params"]["epsilon"] is None and meta["params"]["lower"] is None


def test_network_run_uses_its_own_defaults(viewer, widget, notes):
    """The network chosen, nothing else: the VPTVU-net with its own per-image prior and
    tuned ε, λ."""
    from napari_vptv.api import segment_image
    from napari_vptv.options import SegmentOptions

    viewer.open_sample("napari-vptv", "wbc_001")
    widget.method.value = METHOD_NET
    assert widget.network.value == "vptv-unet" and widget.volume_mode.value == VOLUME_AUTO
    assert not widget.auto_note.native.isHidden() and "own predicted class fractions" in widget.auto_note.value
    out = widget.run(sync=True)
    assert not errors(notes), notes
    image, truth = load_sample("001")
    np.testing.assert_array_equal(out.data, segment_image(image, SegmentOptions(method="vptv-unet")).labels)
    assert np.mean(out.data == truth) > 0.97
    meta = out.metadata[METADATA_KEY]
    assert meta["method"] == "vptv-unet" and meta["volume_spec"]["mode"] == "auto"
    assert out.name.endswith("VPTV (VPTVU-net)") and "estimated" in widget.status.value


def test_variational_auto_is_the_image_adapted_preset(viewer, widget, notes):
    """Variational + WBC preset in auto mode = ``SegmentOptions(method="vptv", preset="wbc")``
    (colour model refitted per image); the interval mode is the fixed preset."""
    from napari_vptv.api import segment_image
    from napari_vptv.options import SegmentOptions

    viewer.open_sample("napari-vptv", "wbc_001")
    widget.method.value = METHOD_NET
    widget.method.value = METHOD_VPTV  # back to the default: the note says what it does
    assert "refitted to each image" in widget.notice.value or "own, per image" in widget.notice.value
    assert widget.volume_mode.value == VOLUME_AUTO and "refitted" in widget.auto_note.value
    assert widget.diameter.enabled and widget.network.label == "Model" and widget.network.value == "unet"
    out = widget.run(sync=True)
    assert not errors(notes), notes
    image, _ = load_sample("001")
    adapted = segment_image(image, SegmentOptions(method="vptv", preset="wbc")).labels
    np.testing.assert_array_equal(out.data, adapted)

    widget.volume_mode.value = "interval"
    assert widget.notice.native.isHidden()  # the method-change note described auto mode
    assert not widget.lower.native.isHidden() and widget.auto_note.native.isHidden()
    assert widget.network.native.isHidden()  # the fixed preset: no network seeds it
    opts = widget.segment_options()
    assert opts.volume_mode == "interval" and opts.lower is not None and opts.epsilon is not None
    fixed = widget.run(sync=True)
    expected = segment_image(image, opts).labels
    np.testing.assert_array_equal(fixed.data, expected)
    assert not np.array_equal(fixed.data, out.data)


def test_auto_mode_only_where_the_method_has_its_own_defaults(viewer, widget, wbc):
    viewer.add_image(wbc[0], name="cell", rgb=True)
    widget.method.value = METHOD_VPTV
    widget.preset.value = "custom"  # the variational solver has no per-image defaults here
    assert widget.volume_mode.value == "interval" and "auto (per image) is for" in widget.status.value
    widget.volume_mode.value = VOLUME_AUTO
    assert widget.volume_mode.value == "interval"
    widget.method.value = METHOD_NET  # the network has its own prior under any preset
    widget.preset.value = "custom"
    widget.volume_mode.value = VOLUME_AUTO
    assert widget.volume_mode.value == VOLUME_AUTO and widget.segment_options().volume_mode is None
    widget.reset_to_defaults()
    assert (widget.method.value, widget.preset.value, widget.volume_mode.value) == (
        METHOD_VPTV,
        "WBC (3 classes)",
        VOLUME_AUTO,
    )


def test_settings_saved_before_auto_mode_still_restore(make_napari_viewer, wbc, notes):
    """A settings file of the previous version (variational, interval bounds) restores as it was."""
    import json

    from napari_vptv._common import settings_path

    path = settings_path("segmentation")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "method": "Variational VPTV",
                "preset": "WBC (3 classes)",
                "n_classes": 3,
                "volume_mode": "interval",
                "epsilon": 1.0,
                "tv_weight": 2.0,
                "edge": False,
                "max_iter": 500,
                "diameter": 0.0,
                "seed": 0,
                "device": "cpu",
                "stack_mode": "slice by slice",
                "keep_previous": True,
                "measure": True,
                "volumes": "0.77, 0.13, 0.1",
                "lower": "0.6, 0.03, 0.05",
                "upper": "0.9, 0.26, 0.19",
            }
        ),
        encoding="utf-8",
    )
    viewer = make_napari_viewer()
    viewer.add_image(wbc[0], name="cell", rgb=True)
    w = SegmentationWidget(viewer)
    assert (w.method.value, w.volume_mode.value, w.lower.value) == (METHOD_VPTV, "interval", "0.6, 0.03, 0.05")
    assert not w.lower.native.isHidden() and "restored" in w.notice.value
    opts = w.segment_options()
    assert opts.lower == (0.6, 0.03, 0.05) and opts.epsilon == 1.0
    assert w.run_button.enabled and not errors(notes)

    # a file naming the network by its former label falls back to the default method
    path.write_text(json.dumps({"method": "VPTVU-net (WBC, pretrained)", "volume_mode": "interval"}))
    w = SegmentationWidget(viewer)
    assert (w.method.value, w.volume_mode.value) == (METHOD_VPTV, "interval")
    assert w.segment_options().lower is not None and not errors(notes)


def test_own_fine_tuned_model_is_a_network_choice(viewer, widget, wbc, tmp_path, monkeypatch, notes):
    """A user's model (here the shipped U-net's weights saved as a user model) is offered
    under Network; its architecture picks the method; the layer is named after it."""
    import json
    import shutil

    from napari_vptv.api import segment_image
    from napari_vptv.nn.weights import MODELS_DIR
    from napari_vptv.options import SegmentOptions
    from napari_vptv.user_models import MODELS_DIR_ENV

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv(MODELS_DIR_ENV, str(models))
    shutil.copy(MODELS_DIR / "unet.pt", models / "my-unet.pt")
    meta = json.loads((MODELS_DIR / "unet.json").read_text())
    meta["weights_file"] = "my-unet.pt"
    (models / "my-unet.json").write_text(json.dumps(meta))

    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.method.value = METHOD_VPTV
    widget.method.value = METHOD_NET  # the list is read again
    assert "my-unet" in widget.network.choices
    widget.network.value = "my-unet"
    assert "Plain softmax U-net" in widget.auto_note.value
    widget.volume_mode.value = "interval"  # a U-net has no volume layer
    assert not widget.run_button.enabled and "volume layer" in widget.reason.value
    widget.volume_mode.value = VOLUME_AUTO
    out = widget.run(sync=True)
    assert not errors(notes), notes
    assert out.name == "cell VPTV (my-unet)"
    params = out.metadata[METADATA_KEY]["params"]
    assert params["method"] == "unet" and params["model"] == str(models / "my-unet.pt")
    expected = segment_image(image, SegmentOptions(method="unet", model=str(models / "my-unet.pt"))).labels
    np.testing.assert_array_equal(out.data, expected)
    np.testing.assert_array_equal(out.data, segment_image(image, SegmentOptions(method="unet")).labels)

    (models / "my-unet.json").unlink()  # the model is gone: refused with its name, nothing added
    before = snapshot(viewer)
    widget.reset_choices()  # as napari does on layer changes: the choice stays, marked
    assert widget.network.value == "my-unet"
    assert widget.run(sync=True) is None
    assert snapshot(viewer) == before and "'my-unet'" in errors(notes)[-1]


# ------------------------------------------------------------------------ threaded
def test_threaded_run_and_second_run_refused(viewer, widget, wbc, qtbot, notes):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.preset.value = "custom"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.7, 0.2, 0.1"
    widget.max_iter.value = FAST
    worker = widget.run()
    assert worker is not None and widget.worker is worker
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    assert widget.run() is None  # refused while running
    assert any("already running" in m for _, m in notes)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    out = viewer.layers["cell VPTV (variational)"]
    assert out.metadata[METADATA_KEY]["complete"]
    np.testing.assert_allclose(fractions(out.data, 3), [0.7, 0.2, 0.1], atol=0.005)
    assert len(labels_layers(viewer)) == 1
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancel_mid_run(viewer, widget, qtbot):
    widget.method.value = METHOD_VPTV
    n = 10
    stack = disc_stack(n, 128, seed=1)  # at this size the solver runs all 300 iterations
    viewer.add_image(stack, name="tstack")
    widget.preset.value = "custom"
    widget.n_classes.value = 2
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.8, 0.2"
    widget.max_iter.value = 300
    arrived = []

    def first_slice_visible(item):
        # the output layer fills in as slices arrive (GUI thread, threaded run)
        layer = widget.output_layer
        arrived.append(
            (
                item.index,
                bool(layer.data[item.index].any()),
                layer.metadata[METADATA_KEY]["complete"],
                layer.data[item.done :].any(),
            )
        )

    widget.slice_finished.connect(first_slice_visible)
    widget.run()
    assert widget.output_layer is not None and not widget.output_layer.data.any()
    qtbot.waitUntil(lambda: len(arrived) >= 1, timeout=120000)
    widget.cancel()
    assert arrived[0] == ((0,), True, False, False)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    out = widget.output_layer
    meta = out.metadata[METADATA_KEY]
    done = meta["slices_done"]
    assert 1 <= done < n
    assert not meta["complete"]
    assert meta["status"] == f"cancelled after {done} of {n} slices"
    assert out.name == f"tstack VPTV (variational) (cancelled {done}/{n})"
    assert f"cancelled after {done} of {n}" in widget.status.value
    assert "finish" in widget.status.value and "resumes" in widget.status.value
    # finished slices are complete segmentations, the rest untouched (zeros)
    for z in range(done):
        np.testing.assert_allclose(fractions(out.data[z], 2), [0.8, 0.2], atol=0.005)
    assert not out.data[done:].any()
    finished = out.data[:done].copy()
    # Run with the same settings resumes: only the missing slices, in the same layer
    arrived.clear()
    out2 = widget.run(sync=True)
    assert out2 is out and out.name == "tstack VPTV (variational)"
    assert [a[0] for a in arrived] == [(z,) for z in range(done, n)]
    np.testing.assert_array_equal(out.data[:done], finished)
    meta = out.metadata[METADATA_KEY]
    assert meta["complete"] and meta["slices_done"] == n and len(meta["slice_volumes"]) == n
    for z in range(n):
        np.testing.assert_allclose(fractions(out.data[z], 2), [0.8, 0.2], atol=0.005)
    assert len(labels_layers(viewer)) == 1


def test_dask_layer_read_slice_by_slice(viewer, widget):
    widget.method.value = METHOD_VPTV
    da = pytest.importorskip("dask.array")
    base = disc_stack(5, 48)
    computed = []

    def load(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(base, chunks=(1, 48, 48)).map_blocks(load, dtype=base.dtype)
    viewer.add_image(lazy, name="lazy")
    shown = set(computed)  # napari reads the displayed slice itself
    widget.preset.value = "custom"
    widget.n_classes.value = 2
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.8, 0.2"
    widget.max_iter.value = 10

    seen_at_slice = {}
    widget.slice_finished.connect(lambda item: seen_at_slice.__setitem__(item.index[0], set(computed)))
    out = widget.run(sync=True)
    assert out.data.shape == (5, 48, 48) and out.metadata[METADATA_KEY]["complete"]
    for z in range(5):
        # when slice z arrives only chunks 0..z, the next one (the viewer shows the slice
        # being processed) and the one displayed at first were read
        assert seen_at_slice[z] <= set(range(z + 2)) | shown, (z, seen_at_slice[z])


# ------------------------------------------------------------------ presets / k-means
def test_estimate_from_image(viewer, widget):
    widget.method.value = METHOD_VPTV
    stack = disc_stack(2, 64)
    viewer.add_image(stack, name="discs")
    widget.preset.value = "custom"
    widget.n_classes.value = 2
    frac = widget.estimate_volumes()
    yy, xx = np.indices((64, 64))
    truth = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 100).mean()
    assert abs(frac[1] - truth) < 0.02  # bright class = the disc of slice 0
    assert widget.volumes.value == ", ".join(f"{v:.3g}" for v in frac)
    viewer.dims.set_current_step(0, 1)  # slice 1: disc radius 13
    frac1 = widget.estimate_volumes()
    assert frac1[1] > frac[1]
    widget.preset.value = "estimate from image (k-means)"  # fills in, too
    assert widget.volume_spec().mode in ("interval", "exact", "none")


# ------------------------------------------------------------ remembered settings
def test_settings_remembered_in_a_new_session(viewer, widget, wbc, make_napari_viewer, vptv_config_dir, notes):
    widget.method.value = METHOD_VPTV
    from napari_vptv._common import settings_path

    image, _ = wbc
    widget.image.value = viewer.add_image(image, name="crop", rgb=True)
    widget.preset.value = "WBC (3 classes)"
    widget.volume_mode.value = "interval"
    preset_lower = widget.lower.value
    widget.lower.value = "0.5, 0.02, 0.04"  # the user's text, not the preset's
    assert widget.lower.value != preset_lower
    widget.epsilon.value = 0.05
    widget.tv_weight.value = 0.03
    widget.seed.value = 7
    widget.max_iter.value = FAST
    assert widget.run(sync=True) is not None and not errors(notes), notes
    assert settings_path("segmentation").parent == vptv_config_dir
    assert settings_path("segmentation").is_file()

    viewer2 = make_napari_viewer()
    viewer2.add_image(image, name="other", rgb=True)
    w2 = SegmentationWidget(viewer2)
    assert w2.preset.value == "WBC (3 classes)" and w2.volume_mode.value == "interval"
    assert w2.lower.value == "0.5, 0.02, 0.04"  # not overwritten by the preset callback
    assert w2.upper.value == widget.upper.value
    assert w2.epsilon.value == pytest.approx(0.05) and w2.tv_weight.value == pytest.approx(0.03)
    assert w2.seed.value == 7 and w2.max_iter.value == FAST
    assert w2.parameters() == dict(widget.parameters())
    assert "restored" in w2.status.value
    assert not w2.notice.native.isHidden() and "restored" in w2.notice.value  # shown clearly, not only in the status
    w2.reset_to_defaults()
    assert w2.epsilon.value != pytest.approx(0.05) and w2.seed.value == 0 and w2.notice.native.isHidden()
    assert {k: w.value for k, w in w2._persisted_widgets().items()} == w2._defaults
    assert w2.image.value is viewer2.layers["other"]  # layer choices are not remembered


def test_settings_custom_classes_remembered(viewer, widget, make_napari_viewer):
    widget.method.value = METHOD_VPTV
    image = disc_stack(n=1, size=40)[0]
    widget.image.value = viewer.add_image(image, name="disc")
    widget.n_classes.value = 2
    widget.preset.value = "estimate from image (k-means)"
    widget.volume_mode.value = "exact"
    estimated = widget.volumes.value
    widget.volumes.value = "0.8, 0.2"  # the user corrects the k-means estimate
    assert estimated != widget.volumes.value
    widget.edge.value = True
    widget.max_iter.value = FAST
    assert widget.run(sync=True) is not None

    # an image in the new viewer: restoring the k-means preset must not re-estimate
    # over the saved volume text
    viewer2 = make_napari_viewer()
    viewer2.add_image(image, name="disc")
    w2 = SegmentationWidget(viewer2)
    assert (w2.preset.value, w2.n_classes.value, w2.volume_mode.value) == ("estimate from image (k-means)", 2, "exact")
    assert w2.volumes.value == "0.8, 0.2" and w2.edge.value is True
    assert w2.volume_spec().volumes.tolist() == pytest.approx([0.8, 0.2])


def test_refused_run_saves_nothing(viewer, widget):
    from napari_vptv._common import settings_path

    widget.epsilon.value = 0.07
    assert widget.run(sync=True) is None  # no image
    assert not settings_path("segmentation").exists()


def test_corrupt_or_stale_settings_are_ignored(make_napari_viewer, notes):
    import json

    from napari_vptv._common import settings_path

    defaults = SegmentationWidget(make_napari_viewer()).parameters()
    path = settings_path("segmentation")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"epsilon": 0.05, "seed": ', encoding="utf-8")  # truncated JSON
    w = SegmentationWidget(make_napari_viewer())
    assert w.parameters() == defaults and not errors(notes)

    for junk in ("[1, 2]", "null", ""):
        path.write_text(junk, encoding="utf-8")
        assert SegmentationWidget(make_napari_viewer()).parameters() == defaults

    # unknown keys, vanished choices, wrong types, out-of-range values are skipped;
    # the values that still fit are restored
    path.write_text(
        json.dumps(
            {
                "method": "a method that no longer exists",
                "n_classes": "three",
                "diameter": -5.0,
                "max_iter": 10**9,
                "edge": "yes",
                "volumes": None,
                "unknown_key": 1,
                "seed": 7,
                "network": "a model that was deleted",
                "volume_mode": "a mode that never existed",
            }
        ),
        encoding="utf-8",
    )
    w = SegmentationWidget(make_napari_viewer())
    got = w.parameters()
    assert got["seed"] == 7
    assert {k: v for k, v in got.items() if k != "seed"} == {k: v for k, v in defaults.items() if k != "seed"}
    assert not errors(notes)


# ------------------------------------------------------- class names / measurements
def test_class_names_on_hover_legend_fields_and_errors(viewer, widget, wbc, notes):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    widget.preset.value = "WBC (3 classes)"
    widget.volume_mode.value = "interval"
    for text in ("background", "cytoplasm", "nucleus"):
        assert text in widget.legend.value and text in widget.lower.label and text in widget.upper.label
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    assert list(out.features["class"]) == ["background", "cytoplasm", "nucleus"]
    ys, xs = np.nonzero(out.data == 2)
    assert "class: nucleus" in out.get_status((ys[0], xs[0]))["value"]
    colours = out.colormap.color_dict
    assert colours[0][3] == 0 and not np.allclose(colours[1], colours[2])  # fixed, distinct class colours
    assert "nucleus" in widget.status.value and "cytoplasm" in widget.status.value

    widget.lower.value = "0.5, 0.3, 0.1"
    widget.upper.value = "0.9, 0.2, 0.2"
    assert widget.run(sync=True) is None
    assert "'cytoplasm'" in errors(notes)[-1] and "class 1" not in errors(notes)[-1]


def test_run_disabled_while_inputs_invalid(viewer, widget, wbc, notes):
    assert not widget.run_button.enabled and "No image layer" in widget.reason.value
    assert widget.run(sync=True) is None and "No image layer" in widget.status.value
    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True)
    assert widget.run_button.enabled and not widget.reason.visible
    assert widget.status.value == "ready"  # the stale problem is gone
    widget.preset.value = "custom"
    widget.volume_mode.value = "exact"
    widget.volumes.value = "0.8, 0.4, 0.2"
    assert not widget.run_button.enabled and "sum to 1" in widget.reason.value
    assert "2px" in widget.volumes.native.styleSheet()
    widget.volumes.value = "0.7, 0.2, 0.1"
    assert widget.run_button.enabled and not widget.reason.visible


def test_measurements_table_cells_layer_and_csv(viewer, widget, wbc, tmp_path, notes):
    widget.method.value = METHOD_VPTV
    from napari_vptv.core.wbc.measure import measure_cells

    image, _ = wbc
    viewer.add_image(image, name="cell", rgb=True, scale=(0.1, 0.1))  # 0.1 µm per pixel
    widget.preset.value = "WBC (3 classes)"
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    assert not errors(notes), notes
    cells_layer = widget.cells_layer
    assert cells_layer is not None and cells_layer.name == "cell cells (variational)"
    assert tuple(cells_layer.scale) == (0.1, 0.1)
    expected = measure_cells(out.data, image=image, spacing=(0.1, 0.1))
    table = widget.results.cells
    assert len(table["cell"]) == len(expected["cell"]) >= 1
    np.testing.assert_allclose(table["nucleus_area_um2"], expected["nucleus_area_um2"])
    np.testing.assert_allclose(table["nucleus_area_px"] * 0.01, table["nucleus_area_um2"])
    np.testing.assert_allclose(table["nc_ratio"], expected["nc_ratio"])
    assert widget.results.table.rowCount() == len(table["cell"])
    headers = [widget.results.table.horizontalHeaderItem(j).text() for j in range(widget.results.table.columnCount())]
    assert "cell area (µm²)" in headers and "N/(N+C)" in headers
    # hovering a cell shows its measurements (layer features)
    big = int(table["cell"][np.argmax(table["cell_area_px"])])
    ys, xs = np.nonzero(cells_layer.data == big)
    assert "nc_ratio" in cells_layer.get_status((ys[0] * 0.1, xs[0] * 0.1), world=True)["value"]
    # a row click selects that cell
    assert widget.results.select_row(0) == cells_layer.selected_label
    path = widget.results.export_csv(tmp_path / "cells.csv")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + len(table["cell"]) and "cell_area_um2" in lines[0]
    with pytest.raises(FileExistsError):
        widget.results.export_csv(path)


def test_stack_measured_per_frame(viewer, widget, wbc):
    widget.method.value = METHOD_VPTV
    image, _ = wbc
    crop = image[:96, :96]
    viewer.add_image(np.stack([crop, np.ascontiguousarray(crop[::-1])]), name="movie", rgb=True)
    widget.preset.value = "WBC (3 classes)"
    widget.max_iter.value = FAST
    out = widget.run(sync=True)
    frames = widget.results.frames
    assert frames["frame"].tolist() == [0, 1]
    for t in range(2):
        assert frames["nucleus_area_px"][t] == np.sum(out.data[t] == 2)
    cells = widget.results.cells
    assert set(cells["frame"].tolist()) <= {0, 1} and len(set(cells["cell"].tolist())) == len(cells["cell"])


# ------------------------------------------------- mask correction
def test_correct_mask_defaults_to_new_labels_and_reports_changes(viewer, notes):
    from napari_vptv._correct_widget import CorrectMaskWidget

    viewer.open_sample("napari-vptv", "wbc_001_truth")
    truth = viewer.layers[-1]
    w = CorrectMaskWidget(viewer)
    image = viewer.layers[0]
    rough = np.zeros(truth.data.shape, np.uint8)
    rough[np.asarray(truth.data) > 0] = 1
    from scipy import ndimage as ndi

    rough = ndi.binary_erosion(rough, iterations=6).astype(np.uint8)  # a too-small mask
    user = viewer.add_labels(rough, name="rough")
    assert w.labels.value is user  # the newest Labels layer, not the ground truth
    w.image.value = image
    w.max_iter.value = 60
    out = w.run(sync=True)
    assert not errors(notes), notes
    assert out.contour > 0  # drawn as outlines over the filled input
    row = out.features[out.features["index"] == 1].iloc[0]
    assert row["area_before"] == rough.sum() and row["area_after"] == np.sum(out.data == 1)
    assert "median area" in w.status.value and "%" in w.status.value
    assert w.labels.value is user  # our own output does not become the next input
