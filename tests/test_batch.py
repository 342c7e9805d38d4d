"""Tests of the headless batch engine napari_vptv.core.batch.run (no napari, no /work/shared)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_vptv.api import make_segment_fn
from napari_vptv.core.batch.dask_stack import segment_stack_dask
from napari_vptv.core.batch.run import (
    FileResult,
    inspect_input,
    iter_inputs,
    run_batch,
    segment_file,
)
from napari_vptv.core.io import tiff
from napari_vptv.core.io.outputs import publish
from napari_vptv.core.io.tiff import TiffFrames, store_labels_tiff


def _write_zero_size_tiff(path):
    """A deliberately broken input; tifffile warns that it is nonconformant (expected here)."""
    with pytest.warns(UserWarning, match="zero-size"):
        tifffile.imwrite(path, np.zeros((0, 8, 8), np.uint8))


# small images: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# a cheap real solver: 2 classes, k-means initialised, few iterations
FAST = dict(preset="none", n_classes=2, max_num_iter=500)


def _disk(n=32, r=9.0, cy=None, cx=None):
    cy = n / 2 if cy is None else cy
    cx = n / 2 if cx is None else cx
    y, x = np.mgrid[:n, :n]
    return (y - cy) ** 2 + (x - cx) ** 2 < r * r


def _grey(n=32, r=9.0, seed=0):
    rng = np.random.default_rng(seed)
    img = _disk(n, r) * 0.6 + 0.2 + rng.normal(0, 0.03, (n, n))
    return np.clip(img, 0, 1).astype(np.float32)


def _stack(n_slices=4, n=32, seed=0):
    return np.stack([_grey(n, 6.0 + i, seed + i) for i in range(n_slices)])


def _grey_u8(**kw):
    return (_grey(**kw) * 255).astype(np.uint8)


def _threshold(image, *, channel_axis=None):
    """A deterministic single-image segmentation for the plumbing tests."""
    img = np.asarray(image, dtype=float)
    if channel_axis is not None:
        img = img.mean(axis=channel_axis)
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")
    return (img > 0.5).astype(np.int32)


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #
def test_iter_inputs_files_folders_globs_and_problems(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("b.png", "a.png", "c.tif"):
        (d / name).write_bytes(b"x")
    (d / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()

    items = list(iter_inputs([d]))
    assert [i.path.name for i in items] == ["a.png", "b.png", "c.tif"]  # sorted, by suffix
    assert all(i.problem is None for i in items)

    items = list(
        iter_inputs(
            [str(d / "*.png"), d / "a.png", str(tmp_path / "nope.png"), str(tmp_path / "zz*.tif"), tmp_path / "empty"]
        )
    )
    assert [i.path.name for i in items if i.problem is None] == ["a.png", "b.png"]  # a.png once
    problems = [i.problem for i in items if i.problem]
    assert len(problems) == 3
    assert "does not exist" in problems[0]
    assert "no file matches" in problems[1]
    assert "holds no image files" in problems[2]
    # an explicitly given file is taken whatever its suffix (it fails when read)
    assert [i.path.name for i in iter_inputs([d / "notes.txt"])] == ["notes.txt"]


def test_inspect_input_layouts(tmp_path):
    grey = (np.random.default_rng(0).random((5, 16, 20)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "z.tif", grey, photometric="minisblack")
    info = inspect_input(tmp_path / "z.tif")
    assert info.shape == (5, 16, 20) and not info.rgb and info.leading == (5,) and info.is_stack

    rgb = (np.random.default_rng(1).random((3, 16, 20, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    info = inspect_input(tmp_path / "rgb.tif")
    assert info.shape == (3, 16, 20, 3) and info.rgb and info.leading == (3,)

    # tifffile stores a (3, Y, X) float array as planar "RGB" by default: a stack
    tifffile.imwrite(tmp_path / "f3.tif", grey[:3].astype(np.float32))
    info = inspect_input(tmp_path / "f3.tif")
    assert info.shape == (3, 16, 20) and not info.rgb

    iio.imwrite(tmp_path / "one.png", rgb[0])
    info = inspect_input(tmp_path / "one.png")
    assert info.shape == (16, 20, 3) and info.rgb and not info.is_stack
    # the decoded pixels travel with the layout (segment_file decodes a PNG once); a TIFF's do not
    np.testing.assert_array_equal(info.pixels, rgb[0])
    assert inspect_input(tmp_path / "rgb.tif").pixels is None

    _write_zero_size_tiff(tmp_path / "zero.tif")
    with pytest.raises(ValueError, match="zero-size"):
        inspect_input(tmp_path / "zero.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="could not read TIFF"):
        inspect_input(tmp_path / "junk.tif")


@pytest.mark.parametrize("kind", ["grey", "rgb", "planar_rgb", "hyperstack"])
def test_tiff_frames_reads_slices_lazily(tmp_path, kind):
    rng = np.random.default_rng(2)
    if kind == "grey":
        data = (rng.random((4, 12, 10)) * 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    elif kind == "rgb":
        data = (rng.random((3, 12, 10, 3)) * 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / "s.tif", data, photometric="rgb")
    elif kind == "planar_rgb":
        planar = (rng.random((2, 3, 12, 10)) * 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / "s.tif", planar, photometric="rgb", planarconfig="separate")
        data = np.moveaxis(planar, 1, -1)
    else:
        data = rng.random((2, 3, 12, 10)).astype(np.float32)
        tifffile.imwrite(tmp_path / "s.tif", data, imagej=True)
    frames = TiffFrames(tmp_path / "s.tif")
    assert frames.shape == data.shape
    np.testing.assert_array_equal(np.asarray(frames), data)
    np.testing.assert_array_equal(frames[1], data[1])
    np.testing.assert_array_equal(frames[-1, ..., 2:5], data[-1, ..., 2:5])
    np.testing.assert_array_equal(frames[0:2], data[0:2])


# --------------------------------------------------------------------------- #
# dask
# --------------------------------------------------------------------------- #
def test_segment_stack_dask_matches_per_slice_and_flags_failures():
    stack = _stack(5)
    stack[2, 3, 3] = np.nan
    labels = segment_stack_dask(stack, _threshold, n_classes=2)
    assert labels.shape == stack.shape and labels.dtype == np.uint8
    assert labels.chunks[0] == (1,) * 5  # one task per slice
    out = labels.compute(scheduler="sync")
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(out[i], _threshold(stack[i]))
    assert np.all(out[2] == 255)  # the sentinel of a failed slice


def test_segment_stack_dask_rgb_and_bad_layouts():
    rgb = np.zeros((2, 3, 8, 9, 3), np.float32)
    rgb[..., 2:5, 2:5, :] = 1
    labels = segment_stack_dask(rgb, _threshold, rgb=True)
    assert labels.shape == (2, 3, 8, 9)
    assert labels.compute(scheduler="sync").sum() == 2 * 3 * 9
    with pytest.raises(ValueError, match="zero-size"):
        segment_stack_dask(np.zeros((0, 8, 8)), _threshold)
    with pytest.raises(ValueError, match="at least 2-D"):
        segment_stack_dask(np.zeros(8), _threshold)


def test_store_labels_tiff_roundtrip(tmp_path):
    import dask.array as da

    lab = (np.arange(6 * 7 * 8) % 3).reshape(6, 7, 8).astype(np.uint8)
    target = store_labels_tiff(da.from_array(lab, chunks=(1, 7, 8)), tmp_path / "l.tif", num_workers=2)
    np.testing.assert_array_equal(tifffile.imread(target.path), lab)
    np.testing.assert_array_equal(target.read((4,)), lab[4])
    # blocks that are not contiguous in the file go through a memory map
    target = store_labels_tiff(da.from_array(lab, chunks=(2, 3, 8)), tmp_path / "m.tif", num_workers=2)
    np.testing.assert_array_equal(tifffile.imread(target.path), lab)


def test_contiguous_offset():
    shape = (4, 5, 6)
    assert tiff._contiguous_offset((slice(2, 3), slice(0, 5), slice(0, 6)), shape) == 60
    assert tiff._contiguous_offset((1, slice(None), slice(None)), shape) == 30
    assert tiff._contiguous_offset((slice(1, 3), slice(0, 5), slice(0, 6)), shape) == 30
    assert tiff._contiguous_offset((1, 2, slice(1, 4)), shape) == 43
    assert tiff._contiguous_offset((slice(1, 3), slice(0, 2), slice(0, 6)), shape) is None
    assert tiff._contiguous_offset((slice(0, 4, 2), slice(None), slice(None)), shape) is None


# --------------------------------------------------------------------------- #
# one file / many files, with the real solver
# --------------------------------------------------------------------------- #
def test_segment_file_decodes_a_png_once(tmp_path, monkeypatch):
    """The layout check and the segmentation share one decode of a PNG (the real
    reader, counted)."""
    from napari_vptv.core.batch import inputs
    from napari_vptv.core.io import files as io

    calls = []

    def counted(path, **kwargs):
        calls.append(Path(path).name)
        return io.read_image(path, **kwargs)

    monkeypatch.setattr(inputs, "read_image", counted)
    monkeypatch.setattr(tiff, "read_image", counted)
    iio.imwrite(tmp_path / "img.png", (_grey(32, 9.0) * 255).astype(np.uint8))
    res = segment_file(tmp_path / "img.png", tmp_path / "out", make_segment_fn("vptv", **FAST, volumes=[0.75, 0.25]))
    assert res.status == "done", res.message
    assert calls == ["img.png"]


def test_segment_file_2d_and_stack_with_real_solver(tmp_path):
    fn = make_segment_fn("vptv", **FAST, volumes=[0.75, 0.25])
    img = _grey(32, 9.0)
    iio.imwrite(tmp_path / "img.png", (img * 255).astype(np.uint8))
    res = segment_file(tmp_path / "img.png", tmp_path / "out", fn)
    assert res.status == "done", res.message
    assert res.output == tmp_path / "out" / "img.png"
    lab = iio.imread(res.output)
    assert lab.shape == (32, 32) and set(np.unique(lab)) <= {0, 1}
    assert abs(np.mean(lab == 1) - 0.25) <= 0.01  # the requested volume (solver accuracy is tested elsewhere)

    stack = _stack(3)
    tifffile.imwrite(tmp_path / "st.tif", stack, photometric="minisblack")
    res = segment_file(tmp_path / "st.tif", tmp_path / "out", fn)
    assert res.status == "done", res.message
    assert res.output.suffix == ".tif"
    lab = tifffile.imread(res.output)
    assert lab.shape == (3, 32, 32)
    assert len(res.slice_volumes) == 3
    for (_idx, vol), sl in zip(res.slice_volumes, lab):
        # volumes apply per slice
        assert abs(np.mean(sl == 1) - 0.25) <= 0.01
        np.testing.assert_allclose(vol, [np.mean(sl == 0), np.mean(sl == 1)])
    # same input, same seed -> same labels
    res2 = segment_file(tmp_path / "st.tif", tmp_path / "out2", fn)
    np.testing.assert_array_equal(tifffile.imread(res2.output), lab)


def test_segment_file_nan_slice_others_done(tmp_path):
    fn = make_segment_fn("vptv", **FAST)
    stack = _stack(4)
    stack[1, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", stack, photometric="minisblack")
    res = segment_file(tmp_path / "nan.tif", tmp_path / "out", fn)
    assert res.status == "failed"
    assert "1 of 4 slices failed" in res.message and "NaN" in res.message
    assert [i for i, _ in res.failed_slices] == [(1,)]
    assert [i for i, _ in res.slice_volumes] == [(0,), (2,), (3,)]
    lab = tifffile.imread(res.output)
    assert lab.shape == (4, 32, 32)
    assert lab[1].max() == 0 and all(lab[i].max() == 1 for i in (0, 2, 3))
    with tifffile.TiffFile(res.output) as tif:
        desc = json.loads(tif.pages[0].description)
    assert desc["failed_slices"][0][0] == [1]


def test_run_batch_bad_items_are_reported_and_others_done(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img = _grey()
    iio.imwrite(d / "u8.png", (img * 255).astype(np.uint8))
    tifffile.imwrite(d / "u16.tif", (img * 60000).astype(np.uint16))  # mixed dtypes
    tifffile.imwrite(d / "f32.tif", img)
    (d / "broken.png").write_bytes(b"\x89PNG but not really")
    _write_zero_size_tiff(d / "zero.tif")
    (d / "dup.png").write_bytes((d / "u8.png").read_bytes())
    iio.imwrite(tmp_path / "dup.png", (img * 255).astype(np.uint8))  # same stem elsewhere

    summary = run_batch(
        [d, tmp_path / "dup.png", tmp_path / "missing.png"], tmp_path / "out", make_segment_fn("vptv", **FAST)
    )
    status = {r.input.name + ("@top" if r.input.parent == tmp_path else ""): r for r in summary.results}
    assert {k for k, r in status.items() if r.status == "done"} == {"u8.png", "u16.tif", "f32.tif", "dup.png"}
    assert "Could not read" in status["broken.png"].message
    assert "zero-size" in status["zero.tif"].message
    assert "same output name" in status["dup.png@top"].message
    assert "does not exist" in status["missing.png@top"].message
    assert not summary.ok and len(summary.failed) == 4
    assert "4 done" in summary.line() and "4 failed" in summary.line()
    # the good ones agree although their dtypes differ
    ref = iio.imread(tmp_path / "out" / "u8.png")
    for name in ("u16.png", "f32.png"):
        assert np.mean(iio.imread(tmp_path / "out" / name) == ref) > 0.99


def test_resume_skips_and_overwrite_replaces(tmp_path):
    img = _grey()
    iio.imwrite(tmp_path / "a.png", (img * 255).astype(np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"user's file")
    fn = make_segment_fn("vptv", **FAST)
    res = segment_file(tmp_path / "a.png", out, fn)
    assert res.status == "skipped" and res.message == "exists"
    assert (out / "a.png").read_bytes() == b"user's file"  # never silently overwritten
    res = segment_file(tmp_path / "a.png", out, fn, overwrite=True)
    assert res.status == "done"
    assert iio.imread(out / "a.png").shape == (32, 32)
    assert not list(out.glob(".*partial*"))  # no temporary left behind


def test_output_never_replaces_the_input(tmp_path):
    iio.imwrite(tmp_path / "a.png", _grey_u8())
    before = (tmp_path / "a.png").read_bytes()
    for overwrite in (False, True):
        res = segment_file(tmp_path / "a.png", tmp_path, make_segment_fn("vptv", **FAST), overwrite=overwrite)
        assert res.status == "failed" and "input file itself" in res.message
    assert (tmp_path / "a.png").read_bytes() == before


def test_output_never_replaces_another_input_of_the_run(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    iio.imwrite(tmp_path / "in" / "a.png", _grey_u8())
    iio.imwrite(tmp_path / "out" / "a.png", _grey_u8(seed=1))
    before = (tmp_path / "out" / "a.png").read_bytes()
    summary = run_batch(
        [tmp_path / "in" / "a.png", tmp_path / "out" / "a.png"], tmp_path / "out", _threshold, overwrite=True
    )
    first, second = summary.results
    assert first.status == "failed" and f"the input '{tmp_path / 'out' / 'a.png'}' of this run" in first.message
    assert second.status == "failed" and "same output name" in second.message  # same stem as the first
    assert (tmp_path / "out" / "a.png").read_bytes() == before


def test_publish_never_clobbers(tmp_path):
    tmp = tmp_path / ".x.partial.png"
    final = tmp_path / "x.png"
    tmp.write_bytes(b"new")
    final.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="not overwritten"):
        publish(tmp, final, overwrite=False)
    assert final.read_bytes() == b"old" and not tmp.exists()


def test_volume_mode_3d_ball(tmp_path):
    n = 16
    z, y, x = np.mgrid[:n, :n, :n]
    ball = (z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 < 5.0**2
    rng = np.random.default_rng(0)
    vol = (ball * 0.6 + 0.2 + rng.normal(0, 0.05, ball.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ball.tif", vol, photometric="minisblack")
    frac = float(ball.mean())
    fn = make_segment_fn("vptv", preset="none", n_classes=2, volumes=[1 - frac, frac], max_num_iter=60)
    res = segment_file(tmp_path / "ball.tif", tmp_path / "out", fn, mode="volume")
    assert res.status == "done", res.message
    assert [i for i, _ in res.slice_volumes] == [()]  # one 3-D piece
    lab = tifffile.imread(res.output)
    assert lab.shape == ball.shape
    assert abs(lab.mean() - frac) <= 0.01
    assert np.mean(lab.astype(bool) == ball) > 0.97


def test_make_segment_fn_validates_early():
    with pytest.raises(ValueError, match="sum to 1"):
        make_segment_fn("vptv", preset="none", volumes=[0.5, 0.6])
    with pytest.raises(ValueError, match="one value per class"):
        make_segment_fn("vptv", preset="none", n_classes=3, volumes=[0.5, 0.5])
    with pytest.raises(ValueError, match="method"):
        make_segment_fn("nope")
    with pytest.raises(ValueError, match="3 classes"):
        make_segment_fn("vptv", preset="wbc", n_classes=2)
    with pytest.raises(ValueError, match="lower and upper"):
        make_segment_fn("vptv", preset="none", lower=[0.1, 0.1])
    fn = make_segment_fn("vptv", preset="auto")
    assert fn.n_classes(rgb=True) == 3 and fn.n_classes(rgb=False) == 2


def test_distributed_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    tifffile.imwrite(tmp_path / "st.tif", _stack(4), photometric="minisblack")
    fn = make_segment_fn("vptv", **FAST, volumes=[0.8, 0.2])
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        res = segment_file(tmp_path / "st.tif", tmp_path / "out", fn, scheduler=client)
    assert res.status == "done", res.message
    lab = tifffile.imread(res.output)
    assert lab.shape == (4, 32, 32)
    for sl in lab:
        assert abs(sl.mean() - 0.2) <= 0.01
    # the same labels as the local threaded scheduler
    res_local = segment_file(tmp_path / "st.tif", tmp_path / "out_local", fn)
    np.testing.assert_array_equal(tifffile.imread(res_local.output), lab)


def test_file_result_ok():
    assert FileResult(Path("a")).ok
    assert not FileResult(Path("a"), status="failed").ok


def test_files_segmented_at_once_give_the_same_outputs_in_input_order(tmp_path):
    import threading

    from napari_vptv.core.io.samples import load_sample

    d = tmp_path / "in"
    d.mkdir()
    for name in ("001", "004", "016"):
        iio.imwrite(d / f"wbc{name}.png", load_sample(name)[0])
    tifffile.imwrite(d / "stack.tif", (_stack() * 255).astype(np.uint8))
    fn = make_segment_fn("vptv-adapted")

    class Recording:  # the real function, noting the threads that segment the RGB files
        threads = set()

        def __call__(self, image, **kw):
            if np.ndim(image) == 3 and np.shape(image)[-1] == 3:
                self.threads.add(threading.get_ident())
            return fn(image, **kw)

        def __getattr__(self, name):
            return getattr(fn, name)

    seen = []
    one = run_batch([d], tmp_path / "one", fn, num_workers=1)
    rec = Recording()
    two = run_batch([d], tmp_path / "two", rec, num_workers=2, on_result=lambda r: seen.append(threading.get_ident()))
    assert len(rec.threads) == 2 and threading.get_ident() not in rec.threads  # two files at once
    assert [r.input for r in two.results] == [r.input for r in one.results] == sorted(d.iterdir())
    assert two.ok and len(two.done) == 4 and seen == [threading.get_ident()] * 4  # reported by the caller's thread
    for r1, r2 in zip(one.results, two.results):
        a, b = (tifffile.imread(r.output) if r.output.suffix == ".tif" else iio.imread(r.output) for r in (r1, r2))
        np.testing.assert_array_equal(a, b)
