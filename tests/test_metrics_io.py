"""Tests of napari_vptv.core.io.files, core.scoring.metrics and core.samples (no viewer)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_vptv.core.io import files as io
from napari_vptv.core.io.samples import (
    CITATION,
    load_sample,
    sample_ids,
    sample_info,
    sample_path,
)
from napari_vptv.core.scoring import metrics

WBC_ROOT = Path(os.environ.get("VPTV_WBC_ROOT", "/work/shared/data/wbc"))


# --------------------------------------------------------------------------- #
# masks
# --------------------------------------------------------------------------- #
def _wbc_grey(rng=None):
    m = np.zeros((40, 50), np.uint8)
    m[10:30, 10:40] = 128
    m[15:25, 20:30] = 255
    return m


def test_wbc_mask_anti_aliased_nearest(tmp_path):
    m = _wbc_grey()
    # anti-aliased values as in the published masks, plus edge cases
    m[0, 0:4] = [2, 7, 45, 50]  # -> 0
    m[12, 12:16] = [100, 150, 191, 127]  # -> 128
    m[20, 22:25] = [192, 200, 254]  # -> 255
    m[1, 0] = 64  # tie 0/128 -> lower class
    p = tmp_path / "mask.png"
    iio.imwrite(p, m)
    lab = io.read_mask(p)
    assert lab.dtype == np.int32 and lab.shape == m.shape
    assert list(lab[0, 0:4]) == [0, 0, 0, 0]
    assert list(lab[12, 12:16]) == [1, 1, 1, 1]
    assert list(lab[20, 22:25]) == [2, 2, 2]
    assert lab[1, 0] == 0
    ref = io.wbc_grey_to_labels(_wbc_grey())
    assert set(np.unique(ref)) == {0, 1, 2}
    assert (lab == 2).sum() == (_wbc_grey() == 255).sum()


def test_integer_labels_pass_through(tmp_path):
    lab = np.zeros((20, 20), np.uint8)
    lab[5:10, 5:10] = 1
    lab[12:18, 12:18] = 2
    p = tmp_path / "labels.png"
    iio.imwrite(p, lab)
    out = io.read_mask(p, n_classes=3)
    np.testing.assert_array_equal(out, lab)
    with pytest.raises(ValueError, match="n_classes=2"):
        io.read_mask(p, n_classes=2)
    # uint16 instance labels that happen to include 128 and 255 stay labels
    inst = np.arange(400, dtype=np.uint16).reshape(20, 20)
    pt = tmp_path / "inst.tif"
    tifffile.imwrite(pt, inst)
    np.testing.assert_array_equal(io.read_mask(pt), inst)


def test_is_wbc_style():
    assert io.is_wbc_style(_wbc_grey())
    assert not io.is_wbc_style(np.zeros((5, 5), np.uint8))  # ambiguous -> labels
    assert not io.is_wbc_style(np.array([[0, 1, 2]], np.uint8))
    m = _wbc_grey()
    m[0, :3] = 7
    assert io.is_wbc_style(m)
    # mostly background with a few small integer labels is NOT WBC style
    lab = np.zeros((100, 100), np.uint8)
    lab[0, :5] = [1, 2, 3, 4, 5]
    assert not io.is_wbc_style(lab)


def test_read_mask_forced_style_and_rgb(tmp_path):
    m = _wbc_grey()
    p = tmp_path / "rgb_mask.png"
    iio.imwrite(p, np.stack([m] * 3, -1))
    np.testing.assert_array_equal(io.read_mask(p), io.wbc_grey_to_labels(m))
    np.testing.assert_array_equal(io.read_mask(p, style="labels"), m)
    col = np.stack([m, m // 2, m], -1)
    iio.imwrite(tmp_path / "col.png", col)
    with pytest.raises(ValueError, match="col.png"):
        io.read_mask(tmp_path / "col.png")
    with pytest.raises(ValueError, match="style"):
        io.read_mask(p, style="nope")


# --------------------------------------------------------------------------- #
# errors name the file
# --------------------------------------------------------------------------- #
def test_missing_files_raise_clear_errors(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        io.read_image(missing)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        io.read_mask(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        io.list_images(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="images"):
        io.load_wbc_dataset(tmp_path)
    with pytest.raises(ValueError, match="directory"):
        io.read_image(tmp_path)


def test_unreadable_file_raises_value_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        io.read_image(bad)
    badtif = tmp_path / "broken.tif"
    badtif.write_bytes(b"nope")
    with pytest.raises(ValueError, match="broken.tif"):
        io.read_mask(badtif)


# --------------------------------------------------------------------------- #
# writing and listing
# --------------------------------------------------------------------------- #
def test_write_labels_roundtrip(tmp_path):
    lab = np.zeros((30, 30), np.int64)
    lab[5:20, 5:20] = 1
    lab[8:12, 8:12] = 2
    p = io.write_labels(tmp_path / "out" / "a.png", lab)
    assert p.exists() and iio.imread(p).dtype == np.uint8
    np.testing.assert_array_equal(io.read_mask(p), lab)

    g = io.write_labels(tmp_path / "grey.png", lab, wbc_grey=True)
    assert set(np.unique(iio.imread(g))) == {0, 128, 255}
    np.testing.assert_array_equal(io.read_mask(g), lab)

    many = np.arange(900, dtype=np.int32).reshape(30, 30)
    t = io.write_labels(tmp_path / "many", many)
    assert t.suffix == ".tif"
    np.testing.assert_array_equal(io.read_mask(t), many)
    assert io.write_labels(tmp_path / "few", lab).suffix == ".png"

    stack = np.stack([lab, lab])
    np.testing.assert_array_equal(io.read_mask(io.write_labels(tmp_path / "s.tiff", stack)), stack)
    with pytest.raises(ValueError, match="tif"):
        io.write_labels(tmp_path / "s.png", stack)
    with pytest.raises(ValueError, match="lossless"):
        io.write_labels(tmp_path / "a.jpg", lab)
    with pytest.raises(ValueError, match="non-negative"):
        io.write_labels(tmp_path / "neg.png", lab - 1)


def test_list_images(tmp_path):
    for name in ["b.png", "a.tif", "c.JPG", "notes.txt", "10.png", "2.png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    names = [p.name for p in io.list_images(tmp_path)]
    assert names == sorted(["10.png", "2.png", "a.tif", "b.png", "c.JPG"])
    assert [p.name for p in io.list_images(str(tmp_path / "*.png"))] == [
        "10.png",
        "2.png",
        "b.png",
    ]
    assert io.list_images(str(tmp_path / "*.bmp")) == []
    assert io.list_images(tmp_path / "b.png") == [tmp_path / "b.png"]


def test_load_wbc_dataset_small(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in ("002", "001"):
        iio.imwrite(tmp_path / "images" / f"{i}.png", rng.integers(0, 255, (8, 9, 3), dtype=np.uint8))
        iio.imwrite(tmp_path / "masks" / f"{i}.png", np.full((8, 9), 128, np.uint8))
    data = io.load_wbc_dataset(tmp_path)
    assert [d[0] for d in data] == ["001", "002"]
    img, mask = data[0][1], data[0][2]
    assert img.shape == (8, 9, 3) and img.dtype == np.uint8
    assert mask.shape == (8, 9) and np.all(mask == 1)
    assert [d[0] for d in io.load_wbc_dataset(tmp_path, ids=[2])] == ["002"]
    (tmp_path / "masks" / "002.png").unlink()
    with pytest.raises(FileNotFoundError, match="002.png"):
        io.load_wbc_dataset(tmp_path)


@pytest.mark.skipif(not WBC_ROOT.is_dir(), reason="WBC data set not available")
def test_load_real_wbc_dataset_fractions():
    data = io.load_wbc_dataset(WBC_ROOT)
    assert len(data) == 90
    fr = np.mean([metrics.class_fractions(m, 3) for _, _, m in data], axis=0)
    assert all(set(np.unique(m)) <= {0, 1, 2} for _, _, m in data)
    np.testing.assert_allclose(fr, [0.77, 0.13, 0.10], atol=0.02)


# --------------------------------------------------------------------------- #
# bundled samples
# --------------------------------------------------------------------------- #
def test_samples():
    ids = sample_ids()
    assert len(ids) >= 3
    for i in ids:
        img, mask = load_sample(i)
        assert img.shape == (300, 300, 3) and img.dtype == np.uint8
        assert mask.shape == (300, 300) and set(np.unique(mask)) == {0, 1, 2}
    assert sample_info(1)["name"] == "WBC 001 (lymphocyte)"
    np.testing.assert_array_equal(load_sample("wbc_001")[1], load_sample(1)[1])
    with pytest.raises(ValueError, match="available"):
        load_sample("999")
    folder = sample_path(ids[0]).parent
    assert (folder / "LICENSE-GPL-3.0.txt").is_file()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "10.1016/j.micron.2018.01.010" in readme and "CellaVision" in readme
    assert "GPL" in CITATION


def test_sample_data_layer_tuples():
    from napari_vptv import _sample_data as sd

    layers = sd.wbc_sample_1()
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and kwargs["name"].startswith("WBC 001")
    assert data.shape == (300, 300, 3)
    layers = sd.wbc_sample_3_with_truth()
    assert [k for _, _, k in layers] == ["image", "labels"]
    assert layers[1][0].shape == (300, 300)


# --------------------------------------------------------------------------- #
# metrics
# --------------------------------------------------------------------------- #
def test_pixel_accuracy():
    t = np.array([[0, 1], [2, 2]])
    assert metrics.pixel_accuracy(t, t) == 1.0
    assert metrics.pixel_accuracy(np.array([[0, 1], [2, 0]]), t) == 0.75
    with pytest.raises(ValueError, match="same shape"):
        metrics.pixel_accuracy(t, t[:1])


def test_dice_per_class():
    t = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0, 1, 1, 1, 0, 0])
    d = metrics.dice_per_class(p, t, n_classes=3)
    # class 0: |A|=3,|B|=2,inter=1 -> 2/5; class 1: |A|=3,|B|=4,inter=2 -> 4/7
    np.testing.assert_allclose(d, [2 / 5, 4 / 7, 1.0])  # class 2 absent -> 1
    assert not np.any(np.isnan(d))
    np.testing.assert_allclose(metrics.dice_per_class(t, t, 3), [1, 1, 1])
    # class present in truth only -> 0
    assert metrics.dice_per_class(np.zeros(4, int), np.array([0, 0, 1, 1]), 2)[1] == 0
    with pytest.raises(ValueError, match="n_classes"):
        metrics.dice_per_class(t, t + 3, n_classes=3)


def test_fractions_and_volume_error():
    t = np.array([[0, 0, 1, 2]])
    p = np.array([[0, 1, 1, 1]])
    np.testing.assert_allclose(metrics.class_fractions(t, 3), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(metrics.class_fractions(t, 4), [0.5, 0.25, 0.25, 0])
    np.testing.assert_allclose(metrics.volume_error(p, t, 3), [0.25, 0.5, 0.25])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.class_fractions(np.array([-1, 0]), 2)


def test_evaluate_and_summarize():
    t = np.array([[0, 0, 1, 2]])
    r1 = metrics.evaluate(t, t, 3)
    r2 = metrics.evaluate(np.array([[0, 1, 1, 1]]), t, 3)
    r1["id"], r2["id"] = "001", "002"
    s = metrics.summarize([r1, r2])
    assert s["n"] == 2 and "id" not in s
    assert math.isclose(s["accuracy"], (1.0 + 0.5) / 2)
    assert s["dice"].shape == (3,)
    np.testing.assert_allclose(s["volume_error"], [0.125, 0.25, 0.125])
    # NaNs are ignored; missing keys averaged over the dicts that have them
    s2 = metrics.summarize([{"x": 1.0}, {"x": float("nan")}, {"y": 3.0}])
    assert s2["x"] == 1.0 and s2["y"] == 3.0
    assert metrics.summarize([]) == {"n": 0}
