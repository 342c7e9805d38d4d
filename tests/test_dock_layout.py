"""The docks on a laptop screen: opened from the Plugins menu in a 1366 px wide napari
window, after a run (long status lines, a filled table) and with every collapsible
section open, no dock scrolls sideways, no text is cut off, and the narrowest dock
stays narrow. In a real viewer under Xvfb:

    xvfb-run -a python -m pytest tests/test_dock_layout.py
"""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

#: A 1366 x 768 laptop screen, less the title and task bars.
LAPTOP = (1366, 728)
#: The narrowest a dock may need to be, in pixels (a quarter of the laptop screen).
MAX_MIN_WIDTH = 360
WIDGETS = ("VPTV segmentation", "Correct mask", "Train on my images")


def _settle(qtbot):
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
        qtbot.wait(10)


def _open(make_napari_viewer, qtbot, name):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(*LAPTOP)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-vptv", name)
    _settle(qtbot)
    return viewer, dock, widget


def _after_a_run(viewer, name, widget, wbc):
    """Run the widget once on a small image, as a user would before reading the dock."""
    image, _ = wbc
    if name == "VPTV segmentation":
        viewer.add_image(image, name="a blood smear with a long file name", rgb=True)
        widget.run(sync=True)
        assert widget.results.table.rowCount() >= 1
    elif name == "Correct mask":
        yy, xx = np.indices((64, 64))
        viewer.add_image(
            (0.1 + 0.7 * ((yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2)).astype(np.float32),
            name="a nucleus image with a long name",
        )
        rough = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 10**2).astype(np.int32)
        viewer.add_labels(rough, name="a rough nucleus mask drawn by hand")
        widget.max_iter.value = 60
        assert widget.run(sync=True) is not None
    for button in getattr(widget, "section_buttons", ()):  # open every collapsible section
        if not button.native.isChecked():
            button.native.click()


def _visible_texts(root):
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLabel

    for child in root.findChildren((QLabel, QAbstractButton)):
        if not child.isVisible() or child.width() <= 0:
            continue
        if any(isinstance(p, QComboBox) for p in _parents(child, root)):
            continue  # a choice box elides its text; the full text shows when it opens
        yield child


def _parents(widget, root):
    parent = widget.parentWidget()
    while parent is not None and parent is not root:
        yield parent
        parent = parent.parentWidget()


@pytest.mark.parametrize("name", WIDGETS)
def test_the_dock_fits_a_laptop_screen_without_sideways_scrolling(
    make_napari_viewer, qtbot, wbc, one_torch_thread, name
):
    from qtpy.QtWidgets import QScrollArea

    viewer, dock, widget = _open(make_napari_viewer, qtbot, name)
    _after_a_run(viewer, name, widget, wbc)
    _settle(qtbot)
    root = widget.native
    areas = root.findChildren(QScrollArea)
    assert areas, f"{name}: the dock does not scroll (it grows past a small screen instead)"
    for area in areas:
        content = area.widget()
        assert area.horizontalScrollBar().maximum() == 0, (
            f"{name}: scrolls sideways by {area.horizontalScrollBar().maximum()} px in a "
            f"{area.viewport().width()} px wide dock"
        )
        assert content.minimumSizeHint().width() <= area.viewport().width(), name
        assert area.minimumWidth() <= MAX_MIN_WIDTH, f"{name}: needs {area.minimumWidth()} px"
    assert root.minimumSizeHint().width() <= MAX_MIN_WIDTH, name
    right = dock.mapToGlobal(dock.rect().topRight()).x()
    for text in _visible_texts(root):
        shown = text.text() if hasattr(text, "text") else ""
        assert text.width() >= text.minimumSizeHint().width(), f"{name}: {shown[:60]!r} is cut off"
        end = text.mapToGlobal(text.rect().topRight()).x()
        assert end <= right + 1, f"{name}: {shown[:60]!r} runs past the dock's right edge"


def test_collapsed_advanced_settings_still_apply(make_napari_viewer, qtbot):
    """A setting in a collapsed section keeps its value and is remembered, and the section
    says it holds settings."""
    _, _, seg = _open(make_napari_viewer, qtbot, "VPTV segmentation")
    buttons = list(seg.section_buttons)
    assert buttons and all("Advanced" in b.text for b in buttons)
    assert not seg.seed.native.isVisible()  # collapsed at first
    seg.seed.value = 7
    assert seg.parameters()["seed"] == 7
    buttons[0].native.click()
    _settle(qtbot)
    assert seg.seed.native.isVisible()
    buttons[0].native.click()
    _settle(qtbot)
    assert not seg.seed.native.isVisible() and seg.seed.value == 7
