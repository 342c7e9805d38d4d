"""Regenerate docs/screenshots/: every widget as napari opens it (Plugins menu), at a
1366x768 laptop screen and at 1920x1080, after a run on a bundled sample::

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/screenshots.py

Writes ``<widget>_<W>x<H>.png`` and prints, per screenshot, whether the dock is cut
off (its contents taller than the visible part without a scroll bar).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIZES = ((1366, 768), (1920, 1080))
WIDGETS = {"segmentation": "VPTV segmentation", "correct_mask": "Correct mask", "train": "Train on my images"}


def _settle(app, n=20):
    for _ in range(n):
        app.processEvents()


def _prepare(viewer, key, widget):
    """Load a sample and run the widget once (segmentation, correction)."""
    sample = "001" if key == "correct_mask" else "004"  # on 004 the correction keeps the mask (no contrast)
    viewer.open_sample("napari-vptv", f"wbc_{sample}")
    if key == "segmentation":
        widget.reset_to_defaults()
        widget.run(sync=True)
    elif key == "correct_mask":
        from scipy import ndimage as ndi

        from napari_vptv.core.io.samples import load_sample

        _, truth = load_sample(sample)
        rough = ndi.binary_erosion(truth > 0, iterations=6).astype(np.int32)
        viewer.add_labels(rough, name="rough cell")
        widget.labels.value = viewer.layers["rough cell"]
        widget.max_iter.value = 150
        widget.run(sync=True)
    viewer.reset_view()


def _cut_off(widget) -> bool:
    """Whether the dock's contents are taller than what is shown, without a scroll bar to reach them."""
    from qtpy.QtWidgets import QScrollArea

    native = widget.native
    parent = native
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        return False  # scrolls
    return native.minimumSizeHint().height() > native.height() + 1


def shoot(out_dir: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    out_dir.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        for key, name in WIDGETS.items():
            viewer = napari.Viewer(show=True)
            app = QApplication.instance()
            viewer.window._qt_window.showNormal()
            viewer.window.resize(width, height - 40)  # a title bar / task bar takes the rest
            _, widget = viewer.window.add_plugin_dock_widget("napari-vptv", name)
            _prepare(viewer, key, widget)
            _settle(app)
            path = out_dir / f"{key}_{width}x{height}.png"
            viewer.screenshot(str(path), canvas_only=False)
            size = viewer.window._qt_window.size()
            print(f"{path.name}: window {size.width()}x{size.height()}, dock {widget.native.width()} px wide, "
                  f"{'CUT OFF' if _cut_off(widget) else 'all reachable'}")
            viewer.close()


if __name__ == "__main__":
    shoot(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "screenshots")
