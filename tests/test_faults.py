"""Bad input and faults: one test per class of failure.

Each test failed before the fix it covers: a file destroyed or half-written, a
wrong result with exit 0, or an unclear error. Most cases are refused before any
segmentation runs, so the module is fast.
"""

from __future__ import annotations

import dataclasses
import errno
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_vptv.cli import main
from napari_vptv.core.io import files as io
from napari_vptv.core.io.outputs import OutputGuard, clean_stale_partials, partial_name
from napari_vptv.core.io.samples import load_sample, sample_ids
from napari_vptv.core.scoring.evaluate import pair_images_and_masks
from napari_vptv.options import OptionError, SegmentOptions

GREY = ["--preset", "none", "--classes", "2"]


def _grey_u8(n=32, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n]
    img = (((y - n / 2) ** 2 + (x - n / 2) ** 2) < 81) * 0.6 + 0.2 + rng.normal(0, 0.03, (n, n))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _eval_folders(tmp_path, mask_values=(0, 128, 255)):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    sid = sample_ids()[0]
    image, truth = load_sample(sid)
    iio.imwrite(images / "a.png", image)
    iio.imwrite(masks / "a.png", np.asarray(mask_values, np.uint8)[truth])
    return images, masks


def _one_line(err: str) -> bool:
    return err.strip().count("\n") == 0 and "Traceback" not in err


# --------------------------------------------------------------------------- #
# data lost or half-written: the output-path guard
# --------------------------------------------------------------------------- #
def test_evaluate_json_never_replaces_an_input_or_an_existing_file(tmp_path, capsys):
    images, masks = _eval_folders(tmp_path)
    before = (images / "a.png").read_bytes(), (masks / "a.png").read_bytes()
    for target in (images / "a.png", masks / "a.png"):
        rc = main(["evaluate", "--images", str(images), "--masks", str(masks), "--json", str(target), "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 2 and "input file" in err and _one_line(err)
    assert ((images / "a.png").read_bytes(), (masks / "a.png").read_bytes()) == before
    old = tmp_path / "old.json"
    old.write_text("{}")
    rc = main(["evaluate", "--images", str(images), "--masks", str(masks), "--json", str(old)])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert old.read_text() == "{}"


def test_segment_never_writes_onto_another_input_of_the_run(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    iio.imwrite(d / "grey.png", _grey_u8())
    tifffile.imwrite(d / "grey.tif", _grey_u8(seed=1))
    before = (d / "grey.tif").read_bytes()
    for extra in (["--overwrite"], []):
        rc = main(["segment", str(d), "--out", str(d), *GREY, "--format", "tif", "--no-progress", *extra])
        cap = capsys.readouterr()
        assert rc == 1
        assert "skipped (exists) " not in cap.out and "0 skipped" in cap.out  # the old, wrong message
        assert "grey.tif" in cap.err and "input" in cap.err
    assert (d / "grey.tif").read_bytes() == before


def test_a_full_disk_leaves_no_output_and_no_temporary_file(tmp_path):
    target = tmp_path / "labels.json"

    def half_then_full(tmp):
        tmp.write_text('{"rows": [')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        OutputGuard().write(target, half_then_full)
    assert list(tmp_path.iterdir()) == []
    target.write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        OutputGuard().write(target, lambda tmp: tmp.write_text("new"))
    OutputGuard(overwrite=True).write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"


def test_stale_partial_files_of_killed_runs_are_removed_and_reported(tmp_path, capsys):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    iio.imwrite(d / "a.png", _grey_u8())
    iio.imwrite(d / "c.png", _grey_u8())
    iio.imwrite(out / "a.png", np.zeros((32, 32), np.uint8))  # finished earlier: skipped
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = partial_name(out / "a.png", pid=dead)
    stale.write_bytes(b"x" * 1000)
    alive = partial_name(out / "c.tif")  # this process: a concurrent writer, kept
    alive.write_bytes(b"y")
    other = partial_name(out / "b.tif", pid=dead)  # not an output of this run: kept
    other.write_bytes(b"z")
    rc = main(["segment", str(d), "--out", str(out), *GREY, "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and "skipped (exists)" in cap.out
    assert not stale.exists() and alive.exists() and other.exists()
    assert "interrupted run" in cap.err and stale.name in cap.err
    assert clean_stale_partials(out, [out / "a.png", out / "c.tif"]) == []


def test_cleanup_never_touches_a_users_file_named_like_a_temporary_one(tmp_path, capsys):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    iio.imwrite(d / "NAME.png", _grey_u8())
    users = [
        out / ".NAME.partial-77777.txt",
        out / ".NAME.partial-77777.png",
        out / ".NAME.vptv-partial-77777.png",
        out / ".NAME.vptv-partial-77777-0123456789ab.txt",
    ]
    for f in users:
        f.write_text("the user's notes")
    for cmd in (
        ["segment", str(d), "--out", str(out), *GREY, "--no-progress"],
        ["correct", str(d), "--masks", str(d), "--out", str(out), "--max-iter", "5"],
    ):
        main(cmd)
        assert all(f.read_text() == "the user's notes" for f in users), capsys.readouterr()
    name = partial_name(out / "NAME.png").name
    assert name.startswith(".NAME.vptv-partial-") and name != partial_name(out / "NAME.png").name


def test_correct_never_writes_onto_its_image_or_mask(tmp_path, capsys):
    iio.imwrite(tmp_path / "img.png", _grey_u8())
    iio.imwrite(tmp_path / "mask.png", (_grey_u8() > 100).astype(np.uint8))
    before = (tmp_path / "mask.png").read_bytes()
    for target in ("mask.png", "img.png"):
        rc = main(
            [
                "correct",
                str(tmp_path / "img.png"),
                str(tmp_path / "mask.png"),
                "--out",
                str(tmp_path / target),
                "--overwrite",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "input file" in err and _one_line(err)
    assert (tmp_path / "mask.png").read_bytes() == before


# --------------------------------------------------------------------------- #
# wrong results with exit 0: one validated options layer, a numerical guard
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("eps", [1e300, 1e-300, 1e-40])
def test_extreme_epsilon_is_refused_naming_the_option(tmp_path, capsys, eps):
    with pytest.raises(OptionError, match="epsilon") as info:
        SegmentOptions(epsilon=eps)
    assert info.value.field == "epsilon"
    iio.imwrite(tmp_path / "a.png", _grey_u8())
    rc = main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), *GREY, "--epsilon", str(eps)])
    err = capsys.readouterr().err
    assert rc == 2 and "--epsilon" in err and _one_line(err)
    assert not (tmp_path / "o").exists()
    rc = main(
        [
            "correct",
            str(tmp_path / "a.png"),
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "c.png"),
            "--epsilon",
            str(eps),
        ]
    )
    assert rc == 2 and "--epsilon" in capsys.readouterr().err


def test_nan_probabilities_are_an_error_not_labels():
    from napari_vptv.api import _check_finite
    from napari_vptv.core.solver.segment import SegmentationResult
    from napari_vptv.core.solver.volumes import make_volume_spec

    prob = np.full((2, 8, 8), 0.5, np.float32)
    ok = SegmentationResult.from_arrays(
        np.zeros((8, 8), int), prob, n_iter=1, converged=True, class_model=None, volume_spec=make_volume_spec(2, "none")
    )
    opts = SegmentOptions(epsilon=1e-4)
    assert _check_finite(ok, opts) is ok
    prob[0, 0, 0] = np.nan  # what eps = 1e-40 gave before the options were range-checked
    bad = dataclasses.replace(ok, probabilities=prob) if dataclasses.is_dataclass(ok) else ok
    with pytest.raises(ValueError, match="NaN or infinite.*epsilon"):
        _check_finite(bad, opts)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(seed=-1), "seed"),
        (dict(n_classes="2"), "n_classes"),
        (dict(n_classes=10_000), "n_classes"),
        (dict(epsilon="0.1"), "epsilon"),
        (dict(device=None), "device"),
        (dict(volumes=[-0.2, 1.2]), "volumes"),
        (dict(max_num_iter=10**9), "max_num_iter"),
    ],
)
def test_api_errors_name_the_parameter(kwargs, field):
    with pytest.raises(OptionError) as info:
        SegmentOptions(**kwargs)
    assert info.value.field == field
    assert dataclasses.is_dataclass(SegmentOptions)


def test_api_errors_come_from_the_api_not_from_numpy_or_torch():
    from napari_vptv.api import SegmentFn, segment_image

    rgb = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="channel_axis=5"):
        segment_image(rgb, n_classes=2, channel_axis=5)
    with pytest.raises(ValueError, match="3 channels"):
        segment_image(rgb[..., :2], preset="wbc", channel_axis=-1)
    with pytest.raises(OptionError, match="device"):
        SegmentFn(SegmentOptions(device="nonsense"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="CUDA"):
            segment_image(rgb, n_classes=2, channel_axis=-1, device="cuda")


def test_cli_errors_name_the_flag(tmp_path, capsys):
    iio.imwrite(tmp_path / "a.png", _grey_u8())
    base = ["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]
    cases = [
        (["--preset", "none", "--volumes", "-0.2,1.2"], "--volumes"),
        ([*GREY, "--seed", "-1"], "--seed"),
        ([*GREY, "--device", "cuda:99" if not _has_cuda() else "bogus"], "--device"),
    ]
    for extra, flag in cases:
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc == 2 and flag in err and _one_line(err), err
        assert "expected one argument" not in err


def test_threads_are_capped_at_the_cpu_count(capsys):
    from napari_vptv.cli.solver_options import cap_threads

    assert cap_threads(100_000) == (os.cpu_count() or 1)
    assert "CPU" in capsys.readouterr().err
    assert cap_threads(1) == 1


def _has_cuda():
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- #
# masks the reader does not understand
# --------------------------------------------------------------------------- #
def test_grey_masks_off_the_wbc_values_are_refused_not_scored(tmp_path, capsys):
    images, masks = _eval_folders(tmp_path, mask_values=(0, 50, 100))
    rc = main(["evaluate", "--images", str(images), "--masks", str(masks)])
    err = capsys.readouterr().err
    assert rc == 2 and _one_line(err)
    assert "a.png" in err and "0, 50, 100" in err and "0/128/255" in err


def test_near_wbc_grey_values_are_read_within_the_tolerance(tmp_path):
    _, truth = load_sample(sample_ids()[0])
    iio.imwrite(tmp_path / "m.png", np.array([0, 127, 254], np.uint8)[truth])
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png", n_classes=3), truth)


def test_labels_beyond_the_classes_are_refused(tmp_path):
    lab = np.zeros((40, 40), np.uint8)
    lab[5:9, 5:9] = 1
    lab[20, 20] = 5  # one stray label
    iio.imwrite(tmp_path / "stray.png", lab)
    with pytest.raises(ValueError, match="label 5 is not below n_classes=3"):
        io.read_mask(tmp_path / "stray.png", n_classes=3)
    many = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)  # 10 000 instance labels
    tifffile.imwrite(tmp_path / "inst.tif", many)
    with pytest.raises(ValueError, match="10000 distinct"):
        io.read_mask(tmp_path / "inst.tif", n_classes=3)


def test_two_masks_for_one_image_are_reported_not_picked(tmp_path):
    images, masks = _eval_folders(tmp_path)
    tifffile.imwrite(masks / "a.tif", iio.imread(masks / "a.png"))
    with pytest.raises(ValueError, match="two masks.*a.png.*a.tif"):
        pair_images_and_masks(images, masks)


def test_forced_wbc_style_refuses_a_mask_far_from_the_grey_values(tmp_path):
    iio.imwrite(tmp_path / "m.png", np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1)))
    with pytest.raises(ValueError, match="not a WBC grey mask"):
        io.read_mask(tmp_path / "m.png", style="wbc")


# --------------------------------------------------------------------------- #
# unclear errors
# --------------------------------------------------------------------------- #
def test_empty_text_and_looping_files_are_named_clearly(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    with pytest.raises(ValueError, match="empty"):
        io.read_image(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="text.png"):
        io.read_image(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError, match="symbolic link"):
        io.read_image(tmp_path / "loop.png")


def test_an_unknown_scheduler_protocol_fails_at_once(tmp_path, capsys):
    iio.imwrite(tmp_path / "a.png", _grey_u8())
    rc = main(
        ["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), *GREY, "--scheduler", "bogus://127.0.0.1:1"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "unknown protocol 'bogus'" in err and _one_line(err)


def test_png_labels_round_trip_through_the_in_memory_encoder(tmp_path):
    lab = np.arange(12, dtype=np.uint8).reshape(3, 4)
    io.write_labels(tmp_path / "l.png", lab)
    np.testing.assert_array_equal(iio.imread(tmp_path / "l.png"), lab)


def _rgb():
    return load_sample(sample_ids()[0])[0]


# --------------------------------------------------------------------------- #
# file names: literal paths before patterns, names that are not UTF-8
# --------------------------------------------------------------------------- #
def test_an_existing_name_with_brackets_is_a_file_not_a_pattern(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "cell [1].png", _grey_u8(seed=1))
    rc = main(["segment", str(d / "cell [1].png"), "--out", str(tmp_path / "o"), *GREY, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert [f.name for f in (tmp_path / "o").iterdir()] == ["cell [1].png"]
    iio.imwrite(d / "cell 1.png", _grey_u8(seed=2))  # what the name matches as a pattern
    rc = main(["segment", str(d / "cell [1].png"), "--out", str(tmp_path / "o2"), *GREY, "--no-progress"])
    assert rc == 0 and sorted(f.name for f in (tmp_path / "o2").iterdir()) == ["cell [1].png"]
    assert io.list_images(d / "cell [1].png") == [d / "cell [1].png"]
    assert io.list_images(str(d / "cell [12].png")) == [d / "cell 1.png"]  # not a file: a pattern


def _bytes_name(folder, name: bytes, data: bytes):
    path = os.path.join(os.fsencode(folder), name)
    with open(path, "wb") as fh:
        fh.write(data)
    return os.fsdecode(path)


def test_non_utf8_file_names_are_printed_escaped_and_the_work_goes_on(tmp_path, capsys):
    d, masks = tmp_path / "in", tmp_path / "m"
    d.mkdir()
    masks.mkdir()
    png = iio.imwrite("<bytes>", _grey_u8(), extension=".png")
    _bytes_name(d, b"a\xff.png", png)
    iio.imwrite(d / "b.png", _grey_u8(seed=1))
    rc = main(["segment", str(d), "--out", str(tmp_path / "o"), *GREY, "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "a\\xff.png" in out and "2 done" in out
    assert len(os.listdir(os.fsencode(tmp_path / "o"))) == 2
    mask = iio.imwrite("<bytes>", (_grey_u8() > 100).astype(np.uint8), extension=".png")
    _bytes_name(masks, b"a\xff.png", mask)
    iio.imwrite(masks / "b.png", (_grey_u8(seed=1) > 100).astype(np.uint8))
    rc = main(["evaluate", "--images", str(d), "--masks", str(masks), *GREY, "--json", str(tmp_path / "e.json")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "a\\xff" in cap.out and (tmp_path / "e.json").exists()
    rc = main(["correct", str(d), "--masks", str(masks), "--out", str(tmp_path / "c"), "--max-iter", "20"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 corrected" in out and "a\\xff.png" in out


# --------------------------------------------------------------------------- #
# images without cells, impossible diameters, RGB arrays in the API
# --------------------------------------------------------------------------- #
def test_featureless_images_have_no_cells(tmp_path, capsys):
    from napari_vptv.api import segment_image

    rng = np.random.default_rng(0)
    flat = {
        "black": np.zeros((300, 300, 3), np.uint8),
        "white": np.full((300, 300, 3), 255, np.uint8),
        "noise": rng.integers(0, 256, (300, 300, 3)).astype(np.uint8),
    }
    for name, img in flat.items():
        iio.imwrite(tmp_path / f"{name}.png", img)
    rc = main(["segment", *(str(tmp_path / f"{n}.png") for n in flat), "--out", str(tmp_path / "o"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("volumes 1.0000 0.0000 0.0000") == 3 and "no cells" in out
    for name in flat:
        assert not iio.imread(tmp_path / "o" / f"{name}.png").any(), name
    for method in ("unet", "vptv-unet"):
        res = segment_image(flat["black"], method=method)
        assert not res.labels.any() and "flat colour" in res.info["no_cells"]
    with pytest.raises(ValueError, match="no structure.*no cells to give the requested volumes"):
        segment_image(flat["noise"], preset="wbc", volumes=[0.7, 0.2, 0.1])
    assert segment_image(_rgb()).labels.any()  # a real image still has its cells


def test_a_cell_diameter_larger_than_the_image_is_refused(tmp_path, capsys):
    from napari_vptv.api import segment_image

    iio.imwrite(tmp_path / "a.png", _rgb())
    rc = main(
        ["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--diameter", "100000", "--no-progress"]
    )
    cap = capsys.readouterr()
    assert rc == 1 and "diameter 100000 px is larger than the image (300 x 300 px)" in cap.err
    assert not (tmp_path / "o" / "a.png").exists()
    with pytest.raises(OptionError, match="larger than the image") as info:
        segment_image(_rgb(), method="unet", diameter=5000)
    assert info.value.field == "diameter"


@pytest.mark.parametrize("settings", [dict(n_classes=2), dict(volumes=[0.5, 0.5]), dict(preset="none")])
def test_an_rgb_array_gives_labels_of_its_spatial_shape(settings):
    from napari_vptv.api import segment_image

    rgb = _rgb()[:64, :80]
    assert segment_image(rgb, max_num_iter=30, **settings).labels.shape == (64, 80)


# --------------------------------------------------------------------------- #
# consistency between commands and between concurrent runs
# --------------------------------------------------------------------------- #
def test_hidden_resource_fork_files_are_skipped_by_every_command(tmp_path, capsys):
    images, masks = _eval_folders(tmp_path)
    for d in (images, masks):
        (d / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # not an image
    rc = main(["segment", str(images), "--out", str(tmp_path / "o"), *GREY, "--no-progress"])
    assert rc == 0 and "1 input(s)" in capsys.readouterr().out
    rc = main(["segment", str(images / "*.png"), "--out", str(tmp_path / "o2"), *GREY, "--no-progress"])
    assert rc == 0 and "1 input(s)" in capsys.readouterr().out
    rc = main(["evaluate", "--images", str(images), "--masks", str(masks)])
    assert rc == 0, capsys.readouterr().err
    rc = main(["correct", str(images), "--masks", str(masks), "--out", str(tmp_path / "c"), "--max-iter", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "1 corrected" in out and "._a" not in out
    assert [p for p, _ in pair_images_and_masks(images, masks)] == [images / "a.png"]


def test_a_second_run_skips_what_a_concurrent_run_wrote(tmp_path):
    """Two runs segment one file into one folder; the other run publishes while this
    one is still segmenting (the interleaving made deterministic with the real code)."""
    from napari_vptv.api import make_segment_fn
    from napari_vptv.core.batch.run import run_batch, segment_file

    iio.imwrite(tmp_path / "a.png", _grey_u8())
    out = tmp_path / "o"
    fn = make_segment_fn("vptv", preset="none", n_classes=2, max_num_iter=30)
    others = []

    def this_run(image, **kwargs):
        if not others:  # the other run finishes the same file now
            others.append(segment_file(tmp_path / "a.png", out, fn))
        return fn(image, **kwargs)

    this_run.n_classes = fn.n_classes
    summary = run_batch([tmp_path / "a.png"], out, this_run)
    assert others[0].status == "done"
    assert summary.ok and summary.results[0].status == "skipped", summary.results[0].message
    assert "another run" in summary.results[0].message
    assert sorted(f.name for f in out.iterdir()) == ["a.png"]


# --------------------------------------------------------------------------- #
# memory
# --------------------------------------------------------------------------- #
def test_an_image_that_cannot_fit_is_refused_with_the_size_it_needs():
    """Under a real 6 GB address-space limit (``ulimit -v``), as in a small container:
    the memory check names the size and the limit in one line. (White-cell images
    this large are segmented in tiles of bounded memory instead.)"""
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 * 10**9, 6 * 10**9))\n"
        "from napari_vptv.core.batch.memory import NotEnoughMemoryError, check_memory\n"
        "try:\n    check_memory((9000, 9000), kind='solver')\n"
        "except NotEnoughMemoryError as exc:\n    print(exc)\nelse:\n    print('accepted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "(9000 x 9000 px) needs about 15.4 GB" in proc.stdout and "ulimit -v" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1
    from napari_vptv.core.batch.memory import NotEnoughMemoryError, memory_needed

    assert memory_needed(5000 * 5000, kind="default") > 8e9 and issubclass(NotEnoughMemoryError, ValueError)
