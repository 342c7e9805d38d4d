"""The widgets as napari opens them from the Plugins menu.

``viewer.window.add_plugin_dock_widget`` hands a plugin widget a proxy of the viewer
(napari's ``PublicOnlyProxy``): every layer the widget reads back is a new wrapper
object, so ``layer is other`` is false for the same layer. These tests run the
widgets only through that path, in a real viewer under Xvfb:

    xvfb-run -a python -m pytest tests/test_plugin_menu.py
"""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Labels  # noqa: E402

from napari_vptv._common import METADATA_KEY  # noqa: E402
from napari_vptv.core.io.samples import load_sample  # noqa: E402

FAST = 25
WIDGETS = ("VPTV segmentation", "Correct mask", "Train on my images")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("napari-vptv", name)
    return widget


@pytest.fixture
def seg(viewer, qtbot):
    w = open_widget(viewer, "VPTV segmentation")
    yield w
    if w.worker is not None and w.worker != "sync":
        w.cancel()
        qtbot.waitUntil(lambda: w.worker is None, timeout=60000)


@pytest.fixture
def cell(wbc):
    """The WBC crop of tests/conftest.py."""
    return wbc


def kinds(viewer):
    out = {}
    for layer in viewer.layers:
        meta = layer.metadata.get(METADATA_KEY) or {}
        out.setdefault(meta.get("kind"), []).append(layer.name)
    return out


def disc_stack(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    stack = np.empty((n, size, size), np.float32)
    for i in range(n):
        r = 8 + 2 * i
        stack[i] = 0.2 + 0.6 * ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r)
    return stack + rng.normal(0, 0.05, stack.shape).astype(np.float32)


def test_every_widget_opens_from_the_plugin_menu(viewer):
    from napari.utils._proxies import PublicOnlyProxy

    for name in WIDGETS:
        w = open_widget(viewer, name)
        assert isinstance(w.viewer, PublicOnlyProxy), name  # what a real user's widget gets
    viewer.open_sample("napari-vptv", "wbc_001")
    assert len(viewer.layers) == 1


def test_two_runs_without_keep_previous_leave_one_result(viewer, seg, cell):
    from napari_vptv._widget import METHOD_VPTV

    image, _ = cell
    viewer.add_image(image, name="cell", rgb=True)
    seg.method.value = METHOD_VPTV
    seg.preset.value = "WBC (3 classes)"
    seg.max_iter.value = FAST
    seg.keep_previous.value = False
    seg.measure.value = True
    seg.run(sync=True)
    first = kinds(viewer)
    assert first["segmentation"] == ["cell VPTV (variational)"], first
    assert first["cells"] == ["cell cells (variational)"], first
    seg.max_iter.value = FAST + 5
    seg.run(sync=True)
    after = kinds(viewer)
    assert after["segmentation"] == ["cell VPTV (variational)"], after
    assert after["cells"] == ["cell cells (variational)"], after
    assert after["cell_numbers"] == ["cell cell numbers (variational)"], after
    assert not [layer.name for layer in viewer.layers if "[2]" in layer.name]
    out = viewer.layers["cell VPTV (variational)"]
    assert out.metadata[METADATA_KEY]["params"]["max_num_iter"] == FAST + 5  # the second run's result
    assert np.asarray(out.data).any()


def test_keep_previous_adds_a_numbered_result(viewer, seg, cell):
    from napari_vptv._widget import METHOD_VPTV

    image, _ = cell
    viewer.add_image(image, name="cell", rgb=True)
    seg.method.value = METHOD_VPTV
    seg.max_iter.value = FAST
    seg.measure.value = False
    seg.keep_previous.value = True
    seg.run(sync=True)
    seg.run(sync=True)
    assert kinds(viewer)["segmentation"] == ["cell VPTV (variational)", "cell VPTV (variational) [2]"]


def test_cancel_then_run_resumes_only_the_missing_slices(viewer, seg):
    from napari_vptv._widget import METHOD_VPTV

    n = 5
    viewer.add_image(disc_stack(n), name="tstack")
    seg.method.value = METHOD_VPTV
    seg.preset.value = "custom"
    seg.n_classes.value = 2
    seg.volume_mode.value = "exact"
    seg.volumes.value = "0.8, 0.2"
    seg.max_iter.value = FAST
    seg.measure.value = False
    arrived = []

    def on_slice(item):
        arrived.append(item.index)
        if len(arrived) == 2 and item.done == 2:
            seg.cancel()  # as the Cancel button, after two slices

    seg.slice_finished.connect(on_slice)
    seg.run(sync=True)
    assert arrived == [(0,), (1,)]
    assert kinds(viewer)["segmentation"] == [f"tstack VPTV (variational) (cancelled 2/{n})"]
    assert "resumes" in seg.status.value
    partial = np.asarray(viewer.layers[-1].data[:2]).copy()

    arrived.clear()
    seg.run(sync=True)
    assert arrived == [(z,) for z in range(2, n)]  # only the missing slices
    assert kinds(viewer)["segmentation"] == ["tstack VPTV (variational)"]
    out = viewer.layers["tstack VPTV (variational)"]
    meta = out.metadata[METADATA_KEY]
    assert meta["complete"] and meta["slices_done"] == n
    np.testing.assert_array_equal(np.asarray(out.data[:2]), partial)
    assert len([layer for layer in viewer.layers if isinstance(layer, Labels)]) == 1


def test_correction_rerun_replaces_its_preview(viewer, qtbot):
    w = open_widget(viewer, "Correct mask")
    yy, xx = np.indices((64, 64))
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2
    image = (0.1 + 0.7 * disc).astype(np.float32)
    viewer.add_image(image, name="img")
    rough = np.zeros((64, 64), np.int32)
    rough[(yy - 32) ** 2 + (xx - 32) ** 2 <= 10**2] = 3
    viewer.add_labels(rough.copy(), name="rough")
    w.max_iter.value = 60
    assert w.run(sync=True) is not None
    assert w.run(sync=True) is not None
    names = kinds(viewer)
    assert names["correct_mask"] == ["rough corrected"], names
    assert w.accept()
    assert (np.asarray(viewer.layers["rough"].data) == 3).sum() > rough.astype(bool).sum()
    assert "correct_mask" not in kinds(viewer)


def test_cell_numbers_on_the_image_and_pixel_size_from_the_scale(viewer, seg, cell):
    from napari.layers import Points

    from napari_vptv._widget import METHOD_VPTV

    image, _ = cell
    two = np.empty((140, 300, 3), np.uint8)  # two cells side by side, apart: numbers 1, 2 left to right
    two[:] = image[2, 2]
    two[10:130, 10:130] = image
    two[14:134, 170:290] = image
    viewer.add_image(two, name="pair", rgb=True, scale=(0.1, 0.1))
    assert seg.pixel_size.value == pytest.approx(0.1)  # filled from the layer's scale
    seg.method.value = METHOD_VPTV
    seg.max_iter.value = FAST
    seg.run(sync=True)
    table = seg.results.cells
    assert len(table["cell"]) >= 2 and "cell_area_um2" in table
    numbers = viewer.layers["pair cell numbers (variational)"]
    assert isinstance(numbers, Points)
    shown = [str(t) for t in numbers.text.values]
    assert shown == [str(c) for c in table["cell"]]
    xs = np.asarray(numbers.data)[:, 1]
    assert np.all(np.diff(xs[:2]) > 0)  # reading order
    # the number sits on its cell
    cells_layer = seg.cells_layer
    for (y, x), cid in zip(np.asarray(numbers.data).round().astype(int), table["cell"]):
        assert cells_layer.data[y, x] == cid
    assert seg.output_layer.metadata[METADATA_KEY]["pixel_size_um"] == pytest.approx(0.1)
    assert "numbers drawn on the image" in seg.results.summary.value


def test_a_field_without_white_cells_says_so(viewer, seg):
    from napari_vptv._widget import METHOD_VPTV

    blank = np.full((96, 96, 3), (225, 205, 200), np.uint8)  # background of a smear, no cell
    viewer.add_image(blank, name="empty", rgb=True)
    seg.method.value = METHOD_VPTV
    seg.max_iter.value = FAST
    seg.run(sync=True)
    texts = seg.status.value + " " + seg.results.summary.value
    assert "no white cell found" in texts, texts
    assert "nan" not in texts.lower() and " 0 px" not in texts


@pytest.fixture(scope="module")
def lab_model(tmp_path_factory):
    """A user's fine-tuned model (one real training step of the U-net), in its own folder."""
    from napari_vptv.nn.finetune import FinetuneRecipe, finetune, samples_from_arrays, save_finetuned
    from napari_vptv.nn.sources import mask_to_labels

    names = ("wbc_001", "wbc_004", "wbc_016")
    images, masks = [], []
    for n in names:
        image, mask = load_sample(n)
        images.append(image[..., :3])
        masks.append(mask_to_labels(mask))
    result = finetune(
        samples_from_arrays(images, masks, names),
        base="unet",
        steps=1,
        seed=0,
        keep="always",
        recipe=FinetuneRecipe(batch=2),
    )
    return save_finetuned(result, tmp_path_factory.mktemp("models") / "lab.pt")


def test_the_default_method_offers_and_uses_my_model(viewer, cell, lab_model, monkeypatch):
    from napari_vptv._widget import METHOD_NET, METHOD_VPTV, VOLUME_AUTO
    from napari_vptv.api import segment_image
    from napari_vptv.user_models import MODELS_DIR_ENV

    monkeypatch.setenv(MODELS_DIR_ENV, str(lab_model.parent))
    seg = open_widget(viewer, "VPTV segmentation")
    image, _ = cell
    viewer.add_image(image, name="cell", rgb=True)
    seg.measure.value = False
    assert (seg.method.value, seg.volume_mode.value) == (METHOD_VPTV, VOLUME_AUTO)
    assert not seg.network.native.isHidden() and "lab" in seg.network.choices
    assert seg.segment_options().model == ""  # nothing picked: today's default

    default = seg.run(sync=True)
    np.testing.assert_array_equal(np.asarray(default.data), segment_image(image).labels)
    assert default.metadata[METADATA_KEY]["network"]["name"] == "unet"

    seg.network.value = "lab"
    assert "lab" in seg.auto_note.value
    seg.method.value = METHOD_NET  # each method keeps its own choice
    assert (seg.network.label, seg.network.value) == ("Network", "vptv-unet")
    seg.method.value = METHOD_VPTV
    assert (seg.network.label, seg.network.value) == ("Model", "lab")
    out = seg.run(sync=True)
    meta = out.metadata[METADATA_KEY]
    assert meta["params"]["model"] == str(lab_model) and meta["network"]["name"] == str(lab_model)
    assert "lab" in out.name
    np.testing.assert_array_equal(np.asarray(out.data), segment_image(image, model=str(lab_model)).labels)


def test_training_pairs_each_mask_with_its_own_image(viewer, seg, cell):
    """A result pairs with the image it was computed from (even after both were renamed),
    a mask with the image whose name it carries; other same-size pairings on request."""
    from napari_vptv._widget import METHOD_VPTV

    image, mask = cell
    other = load_sample("004")[0][90:210, 90:210, :3].copy()
    viewer.add_image(image, name="a", rgb=True)
    b = viewer.add_image(other, name="b", rgb=True)
    seg.image.value = seg.image.choices[-1]
    assert seg.image.value.name == "b"
    seg.method.value = METHOD_VPTV
    seg.measure.value = True  # its cell instances are no training mask
    seg.run(sync=True)
    seg.output_layer.name = "mask 2"
    b.name = "sample B"
    viewer.add_labels((mask > 0).astype(np.int32), name="a corrected")
    viewer.add_labels(np.zeros(mask.shape, np.int32), name="stray")

    w = open_widget(viewer, "Train on my images")

    def listed():
        return sorted((lab.name, im.name) for im, lab in w.pairs.choices)

    assert listed() == [("a corrected", "a"), ("mask 2", "sample B")]
    w.show_all.value = True
    assert listed() == sorted(
        [
            ("a corrected", "a"),
            ("a corrected", "sample B"),
            ("mask 2", "a"),
            ("mask 2", "sample B"),
            ("stray", "a"),
            ("stray", "sample B"),
        ]
    )
    w.show_all.value = False
    assert len(w.pairs.choices) == 2
    w.pairs.value = list(w.pairs.choices)
    assert "2 of 2" in w.pairs_note.value
    native = w.pairs.native
    assert native.minimumHeight() >= 8 * native.sizeHintForRow(0) and "selected" in native.styleSheet()


def _hue(rgb) -> float:
    from skimage.color import lab2lch, rgb2lab

    return float(np.degrees(lab2lch(rgb2lab(np.asarray(rgb, float)[None, None]))[0, 0, 2]))


def test_result_colours_read_as_their_legend_over_stained_cells(viewer, seg, cell):
    """Each class colour, drawn at the layer's opacity over the stained pixels of its class,
    keeps the hue of its legend swatch (within 20°); the cell outlines have one colour, in
    the legend too."""
    from napari_vptv._widget import METHOD_VPTV

    image, truth = cell
    viewer.add_image(image, name="cell", rgb=True)
    seg.method.value = METHOD_VPTV
    seg.run(sync=True)
    out = seg.output_layer
    legend = seg.legend.value.lower()
    seen = {}
    for k, name in ((1, "cytoplasm"), (2, "nucleus")):
        colour = np.asarray(out.get_color(k))[:3]
        assert f"#{''.join(f'{round(c * 255):02x}' for c in colour)}" in legend, (name, legend)
        stain = image[truth == k].mean(axis=0) / 255.0
        seen[name] = out.opacity * colour + (1 - out.opacity) * stain
        shift = abs((_hue(seen[name]) - _hue(colour) + 180) % 360 - 180)
        assert shift < 20, (name, shift)
    outline = {tuple(np.round(seg.cells_layer.get_color(c), 3)) for c in seg.results.cells["cell"]}
    assert len(outline) == 1 and seg.cells_layer.contour > 0
    hexa = "#" + "".join(f"{round(c * 255):02x}" for c in next(iter(outline))[:3])
    assert hexa in legend and "outline" in legend


def test_correction_preview_stands_out_and_the_input_stays_chosen(viewer):
    """The preview is drawn in one colour unlike the input's, with the mask before the
    correction outlined in another; Accept removes both. Adding or selecting another
    Labels layer never changes the input."""
    w = open_widget(viewer, "Correct mask")
    yy, xx = np.indices((64, 64))
    image = (0.1 + 0.7 * ((yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2)).astype(np.float32)
    viewer.add_image(image, name="img")
    rough = np.zeros((64, 64), np.int32)
    rough[(yy - 32) ** 2 + (xx - 32) ** 2 <= 10**2] = 1
    viewer.add_labels(rough.copy(), name="rough")
    assert w.labels.value.name == "rough"
    viewer.add_labels(np.zeros((64, 64), np.int32), name="drawn later")
    assert w.labels.value.name == "rough"  # adding a layer does not switch the input
    viewer.layers.selection.active = viewer.layers["drawn later"]
    assert w.labels.value.name == "rough"
    w.max_iter.value = 60
    preview = w.run(sync=True)
    names = kinds(viewer)
    assert names["correct_mask"] == ["rough corrected"] and names["correct_mask_before"] == ["rough before"], names
    before = viewer.layers["rough before"]
    np.testing.assert_array_equal(np.asarray(before.data), rough)
    given = np.asarray(viewer.layers["rough"].get_color(1))[:3]
    after, was = np.asarray(preview.get_color(1))[:3], np.asarray(before.get_color(1))[:3]
    assert preview.contour > 0 and before.contour > 0
    assert min(np.linalg.norm(after - given), np.linalg.norm(after - was), np.linalg.norm(was - given)) > 0.5
    assert w.labels.value.name == "rough"  # the run's own layers do not become the input either
    assert w.accept()
    assert "correct_mask" not in kinds(viewer) and "correct_mask_before" not in kinds(viewer)


def _controls(container):
    """Every input and button of a magicgui container, through nested containers."""
    from magicgui.widgets import Container, Label, ProgressBar

    for w in container:
        if isinstance(w, Container):
            yield from _controls(w)
        elif not isinstance(w, (Label, ProgressBar)):
            yield w


def test_every_control_has_a_wrapped_tooltip_and_plain_words(viewer):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QLabel

    for name in WIDGETS:
        w = open_widget(viewer, name)
        parts = [getattr(w, "body", w)] + ([w.results] if hasattr(w, "results") else [])
        controls = [c for part in parts for c in _controls(part)]
        assert len(controls) >= 8, name
        for c in controls:
            tip = c.tooltip or ""
            shown = f"{name}: {c.label or getattr(c, 'text', '')!r}"
            assert tip.strip(), f"{shown} has no tooltip"
            assert Qt.mightBeRichText(tip), f"{shown}: tooltip shown as one long line"
            probe = QLabel()
            probe.setWordWrap(True)
            probe.setText(tip)
            assert probe.sizeHint().width() <= 520, shown
            words = f"{c.label or ''} {getattr(c, 'text', '') or ''}"
            assert not set(words) & set("ελβ"), f"{shown}: a symbol on the panel"


def test_the_auto_note_speaks_plainly(viewer, seg):
    from napari_vptv._widget import METHOD_NET

    for method in (seg.method.value, METHOD_NET):
        seg.method.value = method
        for text in (seg.auto_note.value, seg.notice.value):
            assert not set(text) & set("ελβ"), text


def test_help_opens_the_docs(viewer):
    for name in WIDGETS:
        w = open_widget(viewer, name)
        assert "Help" in w.help_link.value, name
        w.help_link.native.linkActivated.emit("#help")  # as a click on the link
        page = w._help_page
        assert page is not None and page.isVisible(), name
        from napari_vptv._help import docs_page

        text = page.toPlainText()
        assert page.windowTitle().startswith("napari-vptv"), name
        # the widget's own docs page in a source checkout, else the README
        page_text = docs_page(w.HELP_SECTION)
        first = (page_text or "").lstrip("# ").splitlines()[0] if page_text else "napari-vptv"
        assert first in text and len(text) > 500, name
        page.close()


def test_custom_preset_with_two_classes_can_run(viewer, seg):
    from napari_vptv._widget import METHOD_VPTV

    viewer.add_image(disc_stack(1)[0], name="grey")
    seg.method.value = METHOD_VPTV
    seg.preset.value = "custom"
    seg.volume_mode.value = "interval"
    assert len(seg.lower.value.split(",")) == 3
    seg.n_classes.value = 2
    assert len(seg.lower.value.split(",")) == len(seg.upper.value.split(",")) == 2
    assert len(seg.volumes.value.split(",")) == 2
    assert seg.run_button.enabled, seg.reason.value
    assert "2 classes" in seg.status.value


def test_restore_notice_says_what_differs(make_napari_viewer):
    from napari_vptv._common import save_settings

    viewer = make_napari_viewer()
    first = open_widget(viewer, "VPTV segmentation")
    defaults = {key: w.value for key, w in first._persisted_widgets().items()}
    save_settings("segmentation", defaults)
    same = open_widget(make_napari_viewer(), "VPTV segmentation")
    assert "0 value" not in same.notice.value and "differ" not in same.notice.value
    save_settings("segmentation", {**defaults, "seed": 7, "max_iter": 40})
    changed = open_widget(make_napari_viewer(), "VPTV segmentation")
    text = changed.notice.value
    assert "Seed 7" in text and "Max iterations 40" in text, text


def test_stack_progress_bar_and_status_agree_and_the_viewer_follows(viewer, seg, qtbot):
    """A threaded 5-slice run, cancelled after 2 and resumed: after every slice the bar
    and the status give the same count of slices done (of all 5, also when resuming),
    and the viewer shows the slice being processed next."""
    from napari_vptv._widget import METHOD_VPTV

    n = 5
    viewer.add_image(disc_stack(n, size=160), name="tstack")  # slices slow enough to cancel between
    seg.method.value = METHOD_VPTV
    seg.preset.value = "custom"
    seg.n_classes.value = 2
    seg.volume_mode.value = "exact"
    seg.volumes.value = "0.95, 0.05"
    seg.max_iter.value = 4 * FAST
    seg.measure.value = False
    seen = []

    def on_slice(item):
        bar = seg._pbar  # None for a slice that arrives after the cancelled run closed its bar
        seen.append((item.done, bar and bar.n, bar and bar.total, seg.status.value, int(viewer.dims.current_step[0])))
        if item.done == 2 and len(seen) == 2:
            seg.cancel()

    seg.slice_finished.connect(on_slice)
    viewer.dims.set_current_step(0, n - 1)  # the user looks at the last slice
    seg.run()
    qtbot.waitUntil(lambda: seg.worker is None, timeout=120000)
    # slices already being computed when Cancel was pressed still arrive
    assert 2 <= len(seen) < n and "cancelled" in seg.status.value, seen
    seg.run()  # resumes
    qtbot.waitUntil(lambda: seg.worker is None, timeout=120000)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5], seen
    assert seg.output_layer.metadata[METADATA_KEY]["complete"]
    running = 0
    for done, bar, total, status, step in seen:
        assert step == min(done, n - 1), seen  # the next slice to be processed (the last at the end)
        if bar is not None and status.startswith("tstack:"):  # not yet the final done / cancelled message
            assert (bar, total) == (done, n) and f"{done}/{n}" in status, seen
            running += 1
    assert running >= 3, seen
