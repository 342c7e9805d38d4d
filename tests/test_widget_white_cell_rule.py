"""The segmentation widget's switch for the white-cell rule."""

from __future__ import annotations

import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_vptv._widget import SegmentationWidget  # noqa: E402
from napari_vptv.options import SegmentOptions  # noqa: E402


def test_the_white_cell_rule_switch(make_napari_viewer):
    w = SegmentationWidget(make_napari_viewer())
    switch = w.white_cell_rule
    assert switch.value is SegmentOptions().white_cell_rule is True
    assert "platelet" in switch.tooltip and "red cells" in switch.tooltip
    assert w.segment_options().white_cell_rule is True
    switch.value = False
    assert w.segment_options().white_cell_rule is False and w.parameters()["white_cell_rule"] is False
    assert switch.enabled == w.require_nucleus.enabled
    w.reset_button.changed.emit(True)
    assert switch.value is True
