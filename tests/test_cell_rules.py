"""The white-cell rule: cell regions without a nucleus are not white cells."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv.core.io.samples import load_sample
from napari_vptv.core.wbc.cell_rules import drop_cells_without_nucleus


def _regions_all_have_nucleus(labels, min_fraction=0.10):
    regions, n = ndi.label(labels > 0, structure=np.ones((3, 3), bool))
    for r in range(1, n + 1):
        cell = regions == r
        if (labels[cell] == 2).mean() < min_fraction:
            return False
    return True


def test_drops_nucleus_free_regions_keeps_cells_and_input():
    lab = np.zeros((40, 60), np.int32)
    lab[5:25, 5:25] = 1
    lab[10:18, 10:18] = 2  # a white cell
    lab[30:38, 40:50] = 1  # a red cell taken for cytoplasm
    lab[2:6, 50:54] = 2  # a lone nucleus fragment: all nucleus, kept
    before = lab.copy()
    out, n = drop_cells_without_nucleus(lab)
    assert n == 1
    assert np.array_equal(lab, before)  # input untouched
    assert (out[30:38, 40:50] == 0).all()
    assert np.array_equal(out[:26], lab[:26])
    # a region with a nucleus share below the threshold goes too
    lab[30:38, 40] = 2  # 8 of 80 px: 10 %
    assert drop_cells_without_nucleus(lab, min_nucleus_fraction=0.12)[1] == 1  # the cell has 16 %
    assert drop_cells_without_nucleus(lab, min_nucleus_fraction=0.05)[1] == 0


def test_default_threshold_drops_a_red_cell_with_a_nuclear_rim_keeps_a_small_nucleus():
    """The default (half the smallest nucleus share of a labelled white cell, 0.205):
    a red cell whose rim was called nucleus (~6 %) goes, a white cell whose nucleus is
    only 15 % of it stays."""
    from napari_vptv.core.wbc.cell_rules import MIN_NUCLEUS_FRACTION

    assert MIN_NUCLEUS_FRACTION == pytest.approx(0.10)
    shape = (80, 160)
    lab = np.zeros(shape, np.int32)
    red = _disc(shape, (40, 40), 25)
    lab[red] = 1
    lab[red & ~_disc(shape, (40, 40), 24)] = 2  # a one-pixel "nucleus" rim
    white = _disc(shape, (40, 115), 30)
    lab[white] = 1
    lab[_disc(shape, (40, 115), 11.6)] = 2  # 15 % nucleus
    assert 0.04 < (lab[red] == 2).mean() < 0.09 and 0.13 < (lab[white] == 2).mean() < 0.17
    out, n = drop_cells_without_nucleus(lab)
    assert n == 1 and not out[red].any() and np.array_equal(out[white], lab[white])


def test_works_in_3d_and_on_empty_labels():
    vol = np.zeros((4, 10, 10), np.int32)
    vol[1:3, 2:5, 2:5] = 1
    out, n = drop_cells_without_nucleus(vol)
    assert n == 1 and not out.any()
    assert drop_cells_without_nucleus(np.zeros((5, 5), np.int32))[1] == 0


@pytest.mark.parametrize("method", ["vptv-unet", "vptv"])
def test_segment_image_applies_the_rule_and_can_turn_it_off(method):
    from napari_vptv.api import segment_image
    from napari_vptv.options import SegmentOptions

    image = load_sample("wbc_016")[0][..., :3]
    on = segment_image(image, SegmentOptions(method=method, preset="wbc"))
    off = segment_image(image, SegmentOptions(method=method, preset="wbc", require_nucleus=False))
    assert _regions_all_have_nucleus(on.labels)
    expected, n = drop_cells_without_nucleus(off.labels)
    assert np.array_equal(on.labels, expected)
    assert on.info["cells_without_nucleus_removed"] == n
    assert "cells_without_nucleus_removed" not in (getattr(off, "info", None) or {})


def test_an_explicit_volume_constraint_wins_over_the_rule():
    from napari_vptv.api import segment_image
    from napari_vptv.options import SegmentOptions

    image = load_sample("wbc_016")[0][..., :3]
    r = segment_image(image, SegmentOptions(method="vptv", preset="wbc", volumes=[0.7, 0.18, 0.12]))
    np.testing.assert_allclose(r.volumes, [0.7, 0.18, 0.12], atol=0.01)
    assert "cells_without_nucleus_removed" not in (getattr(r, "info", None) or {})


def test_cli_flags_reach_the_options():
    import argparse

    from napari_vptv.cli.solver_options import add_solver_options, options_from_args

    p = argparse.ArgumentParser()
    add_solver_options(p, default_preset="auto")
    opts = options_from_args(p.parse_args(["--method", "unet"]))
    assert opts.require_nucleus and opts.augment == 2
    opts = options_from_args(p.parse_args(["--method", "unet", "--keep-cells-without-nucleus", "--augment", "8"]))
    assert not opts.require_nucleus and opts.augment == 8


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def test_a_red_cell_touching_the_white_cell_is_split_off_and_dropped():
    shape = (100, 150)
    white, red = _disc(shape, (50, 45), 30), _disc(shape, (50, 97), 24)
    lab = np.zeros(shape, np.int32)
    lab[white | red] = 1
    lab[_disc(shape, (50, 45), 15)] = 2
    out, n = drop_cells_without_nucleus(lab)
    assert n == 1
    assert not out[red & ~white].any()  # the red cell is gone...
    assert (out[white] == lab[white]).mean() > 0.98  # ...the white cell stays
    # without the split, the touching red cell rides along with the nucleus
    kept, n = drop_cells_without_nucleus(lab, neck_depth=None)
    assert n == 0 and np.array_equal(kept, lab)


def test_a_lobed_nucleus_and_a_round_cell_are_not_split_apart():
    shape = (120, 120)
    lab = np.zeros(shape, np.int32)
    lab[_disc(shape, (60, 60), 45)] = 1
    for c in [(45, 45), (50, 75), (78, 62)]:  # three nuclear lobes
        lab[_disc(shape, c, 12)] = 2
    out, n = drop_cells_without_nucleus(lab)
    assert n == 0 and np.array_equal(out, lab)
