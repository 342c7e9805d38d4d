"""A camera field as JPEG, read and segmented through the command line."""

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv.cli import main
from napari_vptv.core.io.samples import load_sample

pytest.importorskip("torch")


def _field():
    """A 640 x 480 field: two sample crops (white cell, red cells) on their plasma colour."""
    field = np.empty((480, 640, 3), np.uint8)
    truth = np.zeros((480, 640), np.int32)
    first, _ = load_sample("001")
    field[:] = np.median(first.reshape(-1, 3), axis=0).astype(np.uint8)
    for sample, (top, left) in (("001", (20, 10)), ("016", (170, 330))):
        img, mask = load_sample(sample)
        field[top : top + 300, left : left + 300] = img
        truth[top : top + 300, left : left + 300] = mask
    return field, truth


def test_a_jpeg_field_through_the_cli_finds_its_white_cells(tmp_path, capsys):
    field, truth = _field()
    path = tmp_path / "field.jpg"
    iio.imwrite(path, field, quality=90)
    assert path.read_bytes()[:2] == b"\xff\xd8"  # a JPEG file
    out = tmp_path / "out"
    assert main(["segment", str(path), "--out", str(out), "--instances", "--no-progress"]) == 0
    written = [p for p in out.iterdir() if p.is_file()]
    assert len(written) == 1 and written[0].stem == "field"
    labels = iio.imread(written[0])
    assert labels.shape == truth.shape and set(np.unique(labels)) <= {0, 1, 2}
    cells, n = ndi.label(labels > 0, np.ones((3, 3), bool))
    true_cells, n_true = ndi.label(truth > 0)
    assert n_true == 2
    for t in range(1, n_true + 1):  # each white cell found, with its nucleus
        overlap = np.bincount(cells[true_cells == t], minlength=n + 1)
        best = int(np.argmax(overlap[1:])) + 1
        iou = overlap[best] / ((cells == best) | (true_cells == t)).sum()
        assert iou > 0.8 and (labels[cells == best] == 2).any()
    instances = [p for p in (out / "cells").iterdir()]
    assert len(instances) == 1 and iio.imread(instances[0]).max() >= 2
