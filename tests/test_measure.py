"""Per-cell measurements (core.wbc.measure) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vptv.core.wbc.measure import cell_instances, class_areas, measure_cells, measure_stack, write_csv


def two_cells():
    """Cell A: 10 x 10 square (rows 2-11, cols 2-11) with a 4 x 4 nucleus.
    Cell B: 8 x 12 rectangle (rows 20-27, cols 5-16) with two 3 x 3 nucleus lobes."""
    lab = np.zeros((32, 24), np.uint8)
    lab[2:12, 2:12] = 1
    lab[4:8, 4:8] = 2
    lab[20:28, 5:17] = 1
    lab[22:25, 6:9] = 2
    lab[22:25, 12:15] = 2
    return lab


def test_hand_computed_cells():
    t = measure_cells(two_cells())
    assert t["cell"].tolist() == [1, 2]
    assert t["cell_area_px"].tolist() == [100, 96]
    assert t["nucleus_area_px"].tolist() == [16, 18]
    assert t["cytoplasm_area_px"].tolist() == [84, 78]
    np.testing.assert_allclose(t["nc_ratio"], [16 / 100, 18 / 96])
    np.testing.assert_allclose(t["n_to_c"], [16 / 84, 18 / 78])
    assert t["nucleus_lobes"].tolist() == [1, 2]
    np.testing.assert_allclose(t["nucleus_solidity"][0], 1.0)
    assert t["nucleus_solidity"][1] < 0.7  # two separate lobes: convex hull has a gap
    np.testing.assert_allclose(t["centroid_y"], [6.5, 23.5])
    np.testing.assert_allclose(t["centroid_x"], [6.5, 10.5])
    assert "cell_area_um2" not in t


def test_areas_in_um2_with_spacing():
    t = measure_cells(two_cells(), spacing=(0.5, 0.25))
    np.testing.assert_allclose(t["cell_area_um2"], [100 * 0.125, 96 * 0.125])
    np.testing.assert_allclose(t["nucleus_area_um2"], [2.0, 18 * 0.125])
    with pytest.raises(ValueError, match="spacing"):
        measure_cells(two_cells(), spacing=(0, 1))


def test_mean_colour_per_compartment():
    lab = two_cells()
    image = np.zeros(lab.shape + (3,), np.float32)
    image[lab == 1] = (200, 100, 50)
    image[lab == 2] = (40, 20, 120)
    t = measure_cells(lab, image=image)
    np.testing.assert_allclose(t["nucleus_intensity_mean-2"], [120, 120])
    np.testing.assert_allclose(t["cytoplasm_intensity_mean-0"], [200, 200])


def test_cell_without_nucleus_and_empty_image():
    lab = np.zeros((10, 10), np.uint8)
    lab[2:5, 2:5] = 1
    t = measure_cells(lab)
    assert t["nucleus_area_px"].tolist() == [0] and t["nucleus_lobes"].tolist() == [0]
    assert np.isnan(t["nucleus_solidity"][0]) and t["nc_ratio"][0] == 0
    empty = measure_cells(np.zeros((8, 8), np.uint8))
    assert all(len(v) == 0 for v in empty.values())


def test_touching_cells_split_with_diameter():
    yy, xx = np.indices((40, 60))
    lab = np.zeros((40, 60), np.uint8)
    lab[(yy - 20) ** 2 + (xx - 18) ** 2 <= 12**2] = 1
    lab[(yy - 20) ** 2 + (xx - 40) ** 2 <= 12**2] = 1  # overlaps the first: one component
    assert cell_instances(lab).max() == 1
    split = cell_instances(lab, diameter=24)
    assert split.max() == 2
    assert split[20, 10] != split[20, 48]


def test_class_areas_and_stack():
    lab = two_cells()
    a = class_areas(lab, 3, class_names=("background", "cytoplasm", "nucleus"), spacing=(2, 2))
    counts = [int((lab == k).sum()) for k in range(3)]
    assert a["area_px"].tolist() == counts and a["area_um2"].tolist() == [4 * c for c in counts]
    assert a["name"].tolist() == ["background", "cytoplasm", "nucleus"]
    stack = np.stack([lab, np.zeros_like(lab), lab[::-1]])
    cells, frames = measure_stack(stack)
    assert cells["frame"].tolist() == [0, 0, 2, 2]
    assert frames["cells"].tolist() == [2, 0, 2]
    assert frames["nucleus_area_px"].tolist() == [34, 0, 34]


def test_write_csv_never_overwrites(tmp_path):
    t = measure_cells(two_cells())
    path = write_csv(t, tmp_path / "cells.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("cell,centroid_y") and len(lines) == 3
    path.write_text("mine")
    with pytest.raises(FileExistsError):
        write_csv(t, path)
    assert path.read_text() == "mine"
    write_csv(t, path, overwrite=True)
    assert path.read_text().startswith("cell,")


def test_specks_are_not_cells():
    lab = two_cells()
    lab[30, 20] = 1  # one stray pixel
    assert cell_instances(lab).max() == 2
    assert cell_instances(lab, min_area=0).max() == 3
    assert len(measure_cells(lab)["cell"]) == 2
