"""Regenerate docs/screenshots/, the only screenshots of the documentation: every
widget as napari opens it (Plugins menu), at a 1366x768 laptop screen (collapsed
sections as a dock first opens) and at 1920x1080 (every section open), after a run on
a bundled sample, with the default settings (never the settings remembered on this
machine)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/screenshots.py

Writes ``<widget>_<W>x<H>.png`` and prints, per screenshot, the dock's width, whether
anything is out of reach (a dock that scrolls sideways, or contents taller than the
dock without a scroll bar) and the widget's status line (for the captions).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = ((1366, 768), (1920, 1080))
WIDGETS = {"segmentation": "VPTV segmentation", "correct_mask": "Correct mask", "train": "Train on my images"}


def _settle(app, n=20):
    for _ in range(n):
        app.processEvents()


def _prepare(viewer, key, widget) -> str:
    """Load a sample and run the widget once (segmentation, correction); returns how the
    result compares with the sample's ground truth ("" without a run)."""
    from napari_vptv.core.io.samples import load_sample

    sample = "001" if key == "correct_mask" else "004"  # on 004 the correction keeps the mask (no contrast)
    viewer.open_sample("napari-vptv", f"wbc_{sample}")
    _, truth = load_sample(sample)
    score = ""
    if key == "segmentation":
        widget.reset_to_defaults()
        out = np.asarray(widget.run(sync=True).data)
        score = f"pixel accuracy {np.mean(out == truth):.3f} against the ground truth"
    elif key == "correct_mask":
        from scipy import ndimage as ndi

        rough = ndi.binary_erosion(truth > 0, iterations=6).astype(np.int32)
        viewer.add_labels(rough, name="rough cell")
        widget.labels.value = viewer.layers["rough cell"]
        widget.max_iter.value = 150
        out = np.asarray(widget.run(sync=True).data) > 0
        score = (
            f"cell Dice against the ground truth {_dice(rough > 0, truth > 0):.3f} before, "
            f"{_dice(out, truth > 0):.3f} after"
        )
    viewer.reset_view()
    return score


def _dice(a, b) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def _out_of_reach(widget) -> str:
    """What of the dock cannot be reached: "" if everything can."""
    from qtpy.QtWidgets import QScrollArea

    native = widget.native
    areas = native.findChildren(QScrollArea)
    if not areas:
        return "cut off at the bottom" if native.minimumSizeHint().height() > native.height() + 1 else ""
    wide = [a.horizontalScrollBar().maximum() for a in areas if a.horizontalScrollBar().maximum() > 0]
    return f"scrolls sideways by {max(wide)} px" if wide else ""


def shoot(out_dir: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_VPTV_CONFIG_DIR"] = tempfile.mkdtemp(prefix="vptv-screenshots-")  # the defaults
    for width, height in SIZES:
        for key, name in WIDGETS.items():
            viewer = napari.Viewer(show=True)
            app = QApplication.instance()
            viewer.window._qt_window.showNormal()
            viewer.window.resize(width, height - 40)  # a title bar / task bar takes the rest
            _, widget = viewer.window.add_plugin_dock_widget("napari-vptv", name)
            score = _prepare(viewer, key, widget)
            if width >= 1920:  # room for everything: every section open
                for button in getattr(widget, "section_buttons", ()):
                    button.native.setChecked(True)
            _settle(app)
            path = out_dir / f"{key}_{width}x{height}.png"
            viewer.screenshot(str(path), canvas_only=False)
            size = viewer.window._qt_window.size()
            print(
                f"{path.name}: window {size.width()}x{size.height()}, dock {widget.native.width()} px wide "
                f"(at least {widget.native.minimumSizeHint().width()}), {_out_of_reach(widget) or 'all reachable'}; "
                f"status: {widget.status.value}" + (f"; {score}" if score else "")
            )
            viewer.close()


if __name__ == "__main__":
    shoot(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "screenshots")
