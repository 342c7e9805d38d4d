"""Make docs/screenshot_widget.png: the segmentation widget on WBC 001 (real viewer).

    xvfb-run -a -s "-screen 0 1700x1150x24" python docs/screenshot_widget.py docs/screenshot_widget.png

Prints the achieved class fractions and the pixel accuracy against the sample's
ground truth (quoted under the screenshot in the README).
"""

from __future__ import annotations

import sys

import numpy as np


def main(path: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vptv._widget import SegmentationWidget
    from napari_vptv.core.io.samples import load_sample

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1650, 1100)
    viewer.open_sample("napari-vptv", "wbc_001")
    widget = SegmentationWidget(viewer)
    widget.reset_to_defaults()  # not the settings of the last session on this machine
    viewer.window.add_dock_widget(widget, name="VPTV segmentation")
    out = widget.run(sync=True)
    widget.results.select_row(0)
    viewer.layers.selection.active = out
    viewer.reset_view()
    for _ in range(10):
        QApplication.processEvents()
    _, truth = load_sample("001")
    print(widget.status.value)
    print(widget.results.summary.value)
    print(f"pixel accuracy vs ground truth: {np.mean(np.asarray(out.data) == truth):.3f}")
    viewer.screenshot(path, canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot_widget.png")
