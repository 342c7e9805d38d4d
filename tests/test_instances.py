"""Cell-instance labels: one id per white cell, shared by nucleus and cytoplasm, the table's cell ids."""

from __future__ import annotations

import csv

import imageio.v3 as iio
import numpy as np

from napari_vptv.cli import main
from napari_vptv.core.io.files import read_label_metadata
from napari_vptv.core.io.samples import load_sample
from napari_vptv.core.wbc.cell_table import instance_image, measure_image


def _cells():
    """Three cells: two inside, one cut by the left edge; labels 0/1/2."""
    lab = np.zeros((60, 80), np.uint8)
    lab[5:25, 30:50] = 1
    lab[10:18, 35:43] = 2
    lab[35:55, 50:70] = 1
    lab[40:48, 55:63] = 2
    lab[30:50, 0:12] = 1
    lab[35:45, 0:5] = 2
    return lab


def test_one_id_per_cell_shared_by_its_compartments_and_the_table_ids():
    lab = _cells()
    inst, facts = instance_image(lab)
    assert inst.shape == lab.shape and set(np.unique(inst)) == {0, 1, 2, 3}
    assert np.array_equal(inst > 0, lab > 0)
    for i in (1, 2, 3):  # nucleus and cytoplasm of a cell share its id
        assert set(np.unique(lab[inst == i])) == {1, 2}
    table = measure_image(lab, name="x")
    assert table["cell"].tolist() == [1, 2, 3]
    for i, y, x in zip(table["cell"], table["centroid_y"], table["centroid_x"]):
        yy, xx = np.nonzero(inst == i)
        assert abs(yy.mean() - y) < 1e-6 and abs(xx.mean() - x) < 1e-6
    assert facts["touches_border"] == table["cell"][table["touches_border"]].tolist() == [int(inst[40, 0])]


def test_stacks_have_instances_per_frame():
    lab = np.stack([_cells(), np.zeros((60, 80), np.uint8), _cells()[:, ::-1]])
    inst, facts = instance_image(lab)
    assert inst.shape == lab.shape and not inst[1].any() and inst[0].max() == inst[2].max() == 3
    assert facts["touches_border"][1] == [] and len(facts["touches_border"][2]) == 1


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_segment_instances_writes_the_cells_of_the_measure_table(tmp_path):
    import torch

    torch.set_num_threads(1)
    image = load_sample("wbc_016")[0][..., :3].copy()
    image[:, :40] = image[:, 130:170][:, ::-1]  # a white cell cut by the left edge
    src = tmp_path / "field.png"
    iio.imwrite(src, image)
    out, table = tmp_path / "lab", tmp_path / "cells.csv"
    assert main(["segment", str(src), "--out", str(out), "--measure", str(table), "--instances", "--no-progress"]) == 0
    labels = iio.imread(out / "field.png")
    inst = iio.imread(out / "cells" / "field.png")
    assert inst.shape == labels.shape and np.array_equal(inst > 0, labels > 0)
    rows = _rows(table)
    ids = sorted(int(r["cell"]) for r in rows)
    assert len(ids) >= 2 and ids == sorted(set(np.unique(inst)) - {0})
    for r in rows:
        i = int(r["cell"])
        assert int(r["cell_area_px"]) == int((inst == i).sum())
        assert set(np.unique(labels[inst == i])) <= {1, 2}
    cut = sorted(int(r["cell"]) for r in rows if r["touches_border"] == "True")
    assert cut and read_label_metadata(out / "cells" / "field.png")["touches_border"] == cut
