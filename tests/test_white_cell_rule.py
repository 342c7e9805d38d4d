"""The white-cell rule: cell regions too small for a white cell (platelets, specks) are not white cells."""

import argparse

import numpy as np
import pytest

from napari_vptv.core.io.samples import load_sample
from napari_vptv.core.wbc.cell_rules import drop_non_white_cells


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def _field():
    """A 40 px white cell, a cell cut by the right edge, a platelet (all nucleus with a
    halo) and a big cell with a speck of nucleus; 40 px diameter."""
    shape = (120, 200)
    lab = np.zeros(shape, np.int32)
    lab[_disc(shape, (40, 40), 20)] = 1
    lab[_disc(shape, (40, 40), 11)] = 2  # the white cell
    lab[_disc(shape, (60, 205), 20)] = 1
    lab[_disc(shape, (60, 205), 12)] = 2  # cut: 15 px wide, 39 px along the edge
    lab[_disc(shape, (100, 100), 6)] = 1
    lab[_disc(shape, (100, 100), 5)] = 2  # a platelet: 12 px across
    lab[_disc(shape, (40, 120), 20)] = 1
    lab[_disc(shape, (40, 120), 3)] = 2  # nucleus 5 px across: not a white cell's
    return lab


def test_drops_small_regions_and_speck_nuclei_keeps_white_cells_and_cut_cells():
    lab = _field()
    before = lab.copy()
    out, n = drop_non_white_cells(lab, 40.0)
    assert np.array_equal(lab, before)  # input untouched
    assert n == 2
    assert not out[85:115, 85:115].any()  # the platelet
    assert not out[15:65, 95:145].any()  # the cell without a nucleus-like nucleus
    assert np.array_equal(out[:, :70], lab[:, :70])  # the white cell
    assert np.array_equal(out[:, 170:], lab[:, 170:])  # the cell cut by the edge


def test_thresholds_scale_with_the_diameter_and_no_diameter_means_no_rule():
    lab = _field()
    assert drop_non_white_cells(lab, 60.0)[1] == 2
    # an estimate pulled down by platelets is raised to the biggest cell with a clear cytoplasm
    assert drop_non_white_cells(lab, 10.0)[1] == 2
    platelets = np.zeros_like(lab)  # no cell with a clear cytoplasm: the estimate is all there is
    for c in ((30, 30), (80, 150)):
        platelets[_disc(lab.shape, c, 6)] = 1
        platelets[_disc(lab.shape, c, 5)] = 2
    assert drop_non_white_cells(platelets, 40.0)[1] == 2 and drop_non_white_cells(platelets, 10.0)[1] == 0
    assert drop_non_white_cells(lab, 40.0, min_nucleus_share=0.1)[1] == 1
    assert drop_non_white_cells(lab, 40.0, min_cell_share=0.2, min_nucleus_share=0.1)[1] == 0
    for d in (None, 0.0, float("nan")):
        out, n = drop_non_white_cells(lab, d)
        assert n == 0 and np.array_equal(out, lab)


def _with_platelets(image, colour, centres, radius=9):
    yy, xx = np.indices(image.shape[:2])
    out = image.astype(float)
    for c in centres:
        a = np.clip((radius - np.hypot(yy - c[0], xx - c[1])) / 2, 0, 1)[..., None]
        out = out * (1 - a) + np.asarray(colour, float) * a
    return out.astype(np.uint8)


@pytest.mark.parametrize("method", ["auto", "vptv-unet"])
def test_segment_image_turns_platelets_into_background_and_can_turn_it_off(method):
    from napari_vptv.api import segment_image

    image, mask = load_sample("wbc_016")
    image = image[..., :3]
    centres = [(30, 30), (30, 270), (270, 30)]
    field = _with_platelets(image, image[mask == 2].mean(0), centres)  # nucleus-coloured blobs, 18 px
    kw = {} if method == "auto" else {"method": method}
    off = segment_image(field, white_cell_rule=False, **kw)
    on = segment_image(field, **kw)
    expected, n = drop_non_white_cells(off.labels, off.diameter)
    assert np.array_equal(on.labels, expected) and on.info["non_white_cells_removed"] == n
    assert all(on.labels[c] == 0 for c in centres)
    if method == "auto":  # the default method takes the blobs for cells without the rule
        assert all(off.labels[c] > 0 for c in centres) and n >= len(centres)
    assert (on.labels[120:180, 120:180] > 0).mean() > 0.9  # the white cell stays


def test_cli_flag_reaches_the_options():
    from napari_vptv.cli.solver_options import add_solver_options, options_from_args

    p = argparse.ArgumentParser()
    add_solver_options(p, default_preset="auto")
    assert options_from_args(p.parse_args([])).white_cell_rule
    assert not options_from_args(p.parse_args(["--no-white-cell-rule"])).white_cell_rule
