"""``vptv measure`` and ``vptv segment --measure``: one per-cell table format (CSV)."""

from __future__ import annotations

import csv

import imageio.v3 as iio
import numpy as np
import pytest

from napari_vptv.cli import main
from napari_vptv.core.io.samples import load_sample
from napari_vptv.core.wbc.measure import measure_cells

# small images: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def two_cells():
    """Labels 0/1/2 with two cells: one inside (10x10 cell, 4x4 nucleus), one cut by the left edge."""
    lab = np.zeros((40, 50), np.uint8)
    lab[5:15, 20:30] = 1
    lab[8:12, 23:27] = 2
    lab[22:34, 0:8] = 1
    lab[25:31, 0:4] = 2
    return lab


def test_measure_labels_folder_with_pixel_size(tmp_path, capsys):
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir(), labels.mkdir()
    lab = two_cells()
    rgb = np.full(lab.shape + (3,), 200, np.uint8)
    rgb[lab == 2] = (90, 40, 140)
    iio.imwrite(images / "a.png", rgb)
    iio.imwrite(labels / "a.png", lab)
    iio.imwrite(images / "b.png", rgb[:, ::-1].copy())
    iio.imwrite(labels / "b.png", (lab[:, ::-1] * 127.5).round().astype(np.uint8))  # grey mask 0/128/255
    out = tmp_path / "cells.csv"
    assert main(["measure", str(images), str(labels), "--out", str(out), "--pixel-size", "0.5"]) == 0
    assert "measured 4 cell(s) in 2 image(s)" in capsys.readouterr().out
    rows = read_rows(out)
    assert [(r["image"], r["frame"], r["cell"]) for r in rows] == [
        ("a.png", "0", "1"),
        ("a.png", "0", "2"),
        ("b.png", "0", "1"),
        ("b.png", "0", "2"),
    ]
    a = [r for r in rows if r["image"] == "a.png"]
    inner = next(r for r in a if r["touches_border"] == "False")
    edge = next(r for r in a if r["touches_border"] == "True")
    assert (int(inner["cell_area_px"]), int(inner["nucleus_area_px"]), int(inner["cytoplasm_area_px"])) == (100, 16, 84)
    assert float(inner["cell_area_um2"]) == pytest.approx(25.0) and float(inner["nucleus_area_um2"]) == 4.0
    assert float(inner["nc_ratio"]) == pytest.approx(0.16) and float(inner["n_to_c"]) == pytest.approx(16 / 84)
    assert inner["nucleus_lobes"] == "1" and float(inner["cell_circularity"]) > 0.5
    assert int(edge["nucleus_area_px"]) == 24
    # the same numbers as the core function (the widget's table uses it too)
    core = measure_cells(lab, spacing=(0.5, 0.5))
    np.testing.assert_allclose(sorted(float(r["cell_solidity"]) for r in a), sorted(core["cell_solidity"]))
    b = [r for r in rows if r["image"] == "b.png"]
    assert sorted(int(r["nucleus_area_px"]) for r in b) == [16, 24]  # the grey mask read as 0/1/2


def test_measure_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    iio.imwrite(images / "a.png", np.zeros((20, 20), np.uint8))
    labels = tmp_path / "lab"
    labels.mkdir()
    iio.imwrite(labels / "other.png", np.zeros((20, 20), np.uint8))
    out = tmp_path / "cells.csv"
    assert main(["measure", str(images), str(labels), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no label file named a.*" in err and err.strip().splitlines()[-1].startswith("vptv measure: error:")
    assert not out.exists()
    out.write_text("mine\n")
    iio.imwrite(labels / "a.png", two_cells()[:20, :20])
    assert main(["measure", str(images), str(labels), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine\n"


def test_segment_measure_is_the_measure_table(tmp_path, capsys):
    image, _ = load_sample("001")
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "cell.png", image[90:210, 90:210])
    seg = tmp_path / "seg.csv"
    code = main(
        [
            "segment",
            str(src),
            "--out",
            str(tmp_path / "lab"),
            "--measure",
            str(seg),
            "--pixel-size",
            "0.1",
            "--no-progress",
            "--max-iter",
            "30",
        ]
    )
    assert code == 0, capsys.readouterr()
    rows = read_rows(seg)
    assert len(rows) >= 1 and rows[0]["image"] == "cell.png"
    assert float(rows[0]["cell_area_um2"]) == pytest.approx(int(rows[0]["cell_area_px"]) * 0.01)
    again = tmp_path / "again.csv"
    assert main(["measure", str(src), str(tmp_path / "lab"), "--out", str(again), "--pixel-size", "0.1"]) == 0
    assert seg.read_text() == again.read_text()
    # an existing table is kept unless --overwrite
    assert main(["segment", str(src), "--out", str(tmp_path / "lab"), "--measure", str(seg)]) == 2
    assert "exists" in capsys.readouterr().err and seg.read_text() == again.read_text()


def test_cells_are_numbered_in_reading_order():
    from napari_vptv.core.wbc.measure import cell_instances

    lab = np.zeros((60, 80), np.uint8)
    # two rows of cells; within a row the centres differ a little in height
    centres = {(12, 60): 2, (14, 10): 1, (10, 35): 1, (45, 50): 2, (47, 15): 1}
    for (cy, cx), _ in centres.items():
        lab[cy - 4 : cy + 4, cx - 4 : cx + 4] = 1
        lab[cy - 1 : cy + 1, cx - 1 : cx + 1] = 2
    inst = cell_instances(lab)
    order = [int(inst[cy, cx]) for cy, cx in [(14, 10), (10, 35), (12, 60), (47, 15), (45, 50)]]
    assert order == [1, 2, 3, 4, 5]
    t = measure_cells(lab)
    assert t["centroid_x"][:3].tolist() == sorted(t["centroid_x"][:3].tolist())
