"""Make docs/screenshot_correct_widget.png: the "Correct mask" widget on a synthetic
fluorescence image whose nuclei mask is 3 px too fat (real viewer).

    xvfb-run -a -s "-screen 0 1700x1150x24" python docs/screenshot_correct_widget.py docs/screenshot_correct_widget.png

The image is ``benchmarks/synth_nuclei.py`` seed 2000 (not a tuning or benchmark
seed), 384 x 384, 40 nuclei; the rough mask is the true one expanded by 3 px. The
widget runs with its defaults; the preview is shown as contours over the rough mask
and napari's Features table (the widget's Table button) lists every object's area
before / after. Prints the status line and the foreground Dice before / after
(quoted in docs/correction.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def main(path: str) -> None:
    import os
    import tempfile

    os.environ["NAPARI_VPTV_CONFIG_DIR"] = tempfile.mkdtemp(prefix="vptv-screenshot-")
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication, QDockWidget
    from skimage.segmentation import expand_labels

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synth_nuclei import synth_nuclei

    from napari_vptv._correct_widget import CorrectMaskWidget

    image, truth = synth_nuclei(2000, shape=(384, 384), n_nuclei=40)
    rough = expand_labels(truth, 3)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1650, 1100)
    viewer.add_image(image, name="nuclei (synthetic DAPI)", colormap="gray")
    viewer.add_labels(rough, name="rough mask", opacity=0.35)  # the nuclei show through
    widget = CorrectMaskWidget(viewer)  # defaults: no settings remembered in the temporary config dir
    viewer.window.add_dock_widget(widget, name="Correct mask")
    out = widget.run(sync=True)
    widget.show_table()
    viewer.layers.selection.active = out
    for _ in range(10):
        QApplication.processEvents()
    docks = viewer.window._qt_window.findChildren(QDockWidget)  # the table gets a readable height
    right = [d for d in docks if d.isVisible() and d.x() > viewer.window._qt_window.width() // 2]
    viewer.window._qt_window.resizeDocks(right, [640, 380][: len(right)], Qt.Vertical)
    for _ in range(10):
        QApplication.processEvents()
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.8  # a close-up: the rough masks' rims outside the corrected contours
    viewer.scene.camera.center = (0, 250, 170)
    for _ in range(10):
        QApplication.processEvents()
    print(widget.status.value)
    print(f"foreground Dice vs truth: rough {_dice(rough, truth):.3f}, corrected {_dice(out.data, truth):.3f}")
    viewer.screenshot(path, canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot_correct_widget.png")
