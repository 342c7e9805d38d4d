"""Tests of the ``vptv`` command line (napari_vptv.cli); no /work/shared needed.

Most tests call ``main(argv)`` in-process (fast); a few run the installed ``vptv``
script / ``python -m napari_vptv`` end to end in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_vptv.cli import main
from napari_vptv.core.io.samples import load_sample, sample_ids

GREY = ["--preset", "none", "--classes", "2"]


# small images: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grey(n=32, r=9.0, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n]
    img = (((y - n / 2) ** 2 + (x - n / 2) ** 2) < r * r) * 0.6 + 0.2 + rng.normal(0, 0.03, (n, n))
    return np.clip(img, 0, 1).astype(np.float32)


def _grey_u8(**kw):
    return (_grey(**kw) * 255).astype(np.uint8)


def _vptv_script() -> str:
    exe = Path(sys.executable).with_name("vptv")
    return str(exe) if exe.exists() else shutil.which("vptv")


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


# --------------------------------------------------------------------------- #
# end to end (subprocess)
# --------------------------------------------------------------------------- #
def test_python_m_help_and_version():
    r = _run([sys.executable, "-m", "napari_vptv", "--help"])
    assert r.returncode == 0, r.stderr
    for cmd in ("segment", "evaluate", "demo", "correct", "train"):
        assert cmd in r.stdout
    r = _run([sys.executable, "-m", "napari_vptv", "--version"])
    assert r.returncode == 0 and r.stdout.startswith("vptv ")


@pytest.mark.skipif(_vptv_script() is None, reason="the vptv console script is not installed")
def test_installed_script_batch_with_a_bad_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "a.png", _grey_u8(seed=0))
    iio.imwrite(d / "b.png", _grey_u8(seed=1))
    (d / "c.png").write_bytes(b"this is not a png")
    out = tmp_path / "out"
    r = _run([_vptv_script(), "segment", str(d), "--out", str(out), *GREY, "--max-iter", "30"])
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "FAILED" in r.stderr and "c.png" in r.stderr
    assert "3 input(s): 2 done, 0 skipped (exists), 1 failed" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    # resume: nothing redone, the bad file still reported
    r = _run([_vptv_script(), "segment", str(d / "a.png"), str(d / "b.png"), "--out", str(out), *GREY])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skipped (exists)") == 3  # two lines + the summary


@pytest.mark.skipif(_vptv_script() is None, reason="the vptv console script is not installed")
def test_installed_script_errors_are_one_line(tmp_path):
    r = _run([_vptv_script(), "segment", str(tmp_path), "--out", str(tmp_path / "o"), "--volumes", "0.5,0.7"])
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "sum to 1" in r.stderr
    r = _run([_vptv_script(), "segment"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "required" in r.stderr
    r = _run([_vptv_script(), "evaluate", "--images", str(tmp_path / "nope"), "--masks", str(tmp_path)])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- #
# segment (in-process)
# --------------------------------------------------------------------------- #
def test_segment_files_glob_stack_resume_overwrite(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "one.png", _grey_u8(seed=0))
    tifffile.imwrite(d / "two.tif", _grey(seed=1))
    stack = np.stack([_grey(r=6 + i, seed=i) for i in range(3)])
    tifffile.imwrite(d / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"

    rc = main(
        [
            "segment",
            str(d / "one.png"),
            str(d / "*.tif"),
            "--out",
            str(out),
            *GREY,
            "--volumes",
            "0.8,0.2",
            "--format",
            "tif",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["one.tif", "stack.tif", "two.tif"]
    assert tifffile.imread(out / "stack.tif").shape == (3, 32, 32)
    assert tifffile.imread(out / "one.tif").shape == (32, 32)
    assert "3 input(s): 3 done" in text
    assert text.count("slice [") == 3  # per-slice volumes
    import re

    vols = [tuple(map(float, m)) for m in re.findall(r"volumes (\d\.\d{4}) (\d\.\d{4})", text)]
    assert len(vols) == 6  # 2 images, the stack mean, 3 slices
    assert all(abs(b - 0.2) <= 0.01 for _, b in vols)

    before = (out / "one.tif").stat().st_mtime_ns
    rc = main(["segment", str(d), "--out", str(out), *GREY, "--format", "tif", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.count("skipped (exists)") == 4 and "0 done, 3 skipped" in text
    assert (out / "one.tif").stat().st_mtime_ns == before

    rc = main(
        ["segment", str(d / "one.png"), "--out", str(out), *GREY, "--format", "tif", "--overwrite", "--no-progress"]
    )
    assert rc == 0
    assert "1 done" in capsys.readouterr().out
    assert (out / "one.tif").stat().st_mtime_ns != before


def test_segment_missing_and_bad_inputs_continue(tmp_path, capsys):
    iio.imwrite(tmp_path / "ok.png", _grey_u8())
    (tmp_path / "notes.txt").write_text("hello")
    st = np.stack([_grey(seed=i) for i in range(3)])
    st[1, 2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", st, photometric="minisblack")
    rc = main(
        [
            "segment",
            str(tmp_path / "ok.png"),
            str(tmp_path / "missing.png"),
            str(tmp_path / "notes.txt"),
            str(tmp_path / "nan.tif"),
            "--out",
            str(tmp_path / "out"),
            *GREY,
            "-q",
            "--no-progress",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 1
    assert "4 input(s): 1 done, 0 skipped (exists), 3 failed" in cap.out
    assert "missing.png" in cap.err and "does not exist" in cap.err
    assert "notes.txt" in cap.err
    assert "1 of 3 slices failed" in cap.err and "NaN" in cap.err
    assert (tmp_path / "out" / "ok.png").exists()
    assert tifffile.imread(tmp_path / "out" / "nan.tif").shape == (3, 32, 32)  # the good slices are kept


def test_segment_usage_errors(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--volumes", "x"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert (
        main(
            [
                "segment",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--preset",
                "none",
                "--classes",
                "3",
                "--volumes",
                "0.5,0.5",
            ]
        )
        == 2
    )
    assert "one value per class" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["segment", "a.png", "--out", "o", "--3d", "--volume-per-slice"]) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert main(["nonsense"]) == 2


def test_segment_rgb_wbc_preset_and_3d(tmp_path, capsys):
    image, truth = load_sample(sample_ids()[0])
    iio.imwrite(tmp_path / "cell.png", image)
    rc = main(["segment", str(tmp_path / "cell.png"), "--out", str(tmp_path / "out"), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    lab = iio.imread(tmp_path / "out" / "cell.png")
    assert lab.shape == (300, 300) and lab.max() == 2  # the WBC preset: 3 classes
    assert np.mean(lab == truth) > 0.9

    n = 12
    z, y, x = np.mgrid[:n, :n, :n]
    ball = (z - 6) ** 2 + (y - 6) ** 2 + (x - 6) ** 2 < 16
    vol = (ball * 0.6 + 0.2 + np.random.default_rng(0).normal(0, 0.05, ball.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ball.tif", vol, photometric="minisblack")
    f = float(ball.mean())
    rc = main(
        [
            "segment",
            str(tmp_path / "ball.tif"),
            "--out",
            str(tmp_path / "out3d"),
            *GREY,
            "--3d",
            "--volumes",
            f"{1 - f},{f}",
            "--no-progress",
        ]
    )
    assert rc == 0
    lab = tifffile.imread(tmp_path / "out3d" / "ball.tif")
    assert lab.shape == ball.shape and abs(lab.mean() - f) <= 0.01


def test_segment_with_distributed_scheduler_address(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    tifffile.imwrite(tmp_path / "st.tif", np.stack([_grey(seed=i) for i in range(3)]), photometric="minisblack")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        rc = main(
            [
                "segment",
                str(tmp_path / "st.tif"),
                "--out",
                str(tmp_path / "out"),
                *GREY,
                "--scheduler",
                cluster.scheduler_address,
                "--no-progress",
                "-q",
            ]
        )
    assert rc == 0, capsys.readouterr().err
    assert tifffile.imread(tmp_path / "out" / "st.tif").shape == (3, 32, 32)
    rc = main(
        [
            "segment",
            str(tmp_path / "st.tif"),
            "--out",
            str(tmp_path / "o2"),
            *GREY,
            "--scheduler",
            "nonsense://127.0.0.1:1",
            "--no-progress",
        ]
    )
    assert rc == 2 and "cannot connect" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# evaluate / demo / correct / train
# --------------------------------------------------------------------------- #
def _eval_folders(tmp_path, n=2, integer_masks=False, crop=slice(None)):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for sid in sample_ids()[:n]:
        image, truth = load_sample(sid)
        iio.imwrite(images / f"{sid}.png", np.ascontiguousarray(image[crop, crop]))
        m = truth[crop, crop]
        iio.imwrite(masks / f"{sid}.png", (m if integer_masks else np.array([0, 128, 255])[m]).astype(np.uint8))
    return images, masks


@pytest.mark.parametrize("integer_masks", [False, True])
def test_evaluate_output_shape(tmp_path, capsys, integer_masks):
    images, masks = _eval_folders(tmp_path, integer_masks=integer_masks)
    rc = main(["evaluate", "--images", str(images), "--masks", str(masks), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(out) == 3
    assert out[0].startswith(sample_ids()[0]) and "accuracy" in out[0] and "dice" in out[0]
    assert "volume error" in out[0]
    last = out[-1]
    assert last.startswith("mean pixel accuracy: ")
    value = last.split(": ")[1]
    assert len(value.split(".")[1]) == 4
    data = json.loads((tmp_path / "r.json").read_text())
    accs = [r["accuracy"] for r in data["rows"]]
    assert float(value) == pytest.approx(np.mean(accs), abs=1e-4)
    assert float(value) > 0.8


def test_evaluate_mismatched_mask_size(tmp_path, capsys):
    images, masks = _eval_folders(tmp_path, n=1)
    sid = sample_ids()[0]
    iio.imwrite(masks / f"{sid}.png", np.zeros((50, 60), np.uint8))
    rc = main(["evaluate", "--images", str(images), "--masks", str(masks)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "shape" in err and f"{sid}.png" in err
    assert err.strip().count("\n") == 0


def test_demo_writes_labels_and_overlays(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    for sid in sample_ids():
        lab = iio.imread(out / f"wbc_{sid}_labels.png")
        assert set(np.unique(lab)) <= {0, 128, 255}
        ov = iio.imread(out / f"wbc_{sid}_overlay.png")
        assert ov.shape == (300, 300, 3) and ov.dtype == np.uint8
        fig = iio.imread(out / f"wbc_{sid}_compare.png")  # image | vptv | network | truth, legend below
        assert fig.ndim == 3 and fig.shape[1] > 4 * 300 and fig.shape[0] > 300
    assert text.strip().splitlines()[-1].startswith("mean pixel accuracy: ")
    assert float(text.strip().splitlines()[-1].split(": ")[1]) > 0.9
    assert "mean pixel accuracy of vptv-unet: " in text and "neutrophil" in text.split("What the numbers")[1]
    # rerunnable: its own unchanged outputs are replaced, nothing else is touched
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--compare", "none"]) == 0, capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    # a file it did not write (or one changed since) is never overwritten silently
    iio.imwrite(out / f"wbc_{sample_ids()[0]}_overlay.png", np.zeros((4, 4), np.uint8))
    assert main(["demo", "--out", str(out), "--compare", "none"]) == 2
    assert "was not written by an earlier demo" in capsys.readouterr().err


def test_correct_subcommand(tmp_path, capsys):
    pytest.importorskip("napari_vptv.core.correct.mask")
    img = _grey(48, 10.0)
    iio.imwrite(tmp_path / "img.png", (img * 255).astype(np.uint8))
    y, x = np.mgrid[:48, :48]
    rough = (((y - 26) ** 2 + (x - 24) ** 2) < 9.0**2).astype(np.uint8)  # shifted, smaller
    iio.imwrite(tmp_path / "rough.png", rough)
    rc = main(["correct", str(tmp_path / "img.png"), str(tmp_path / "rough.png"), "--out", str(tmp_path / "fixed.png")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    fixed = iio.imread(tmp_path / "fixed.png")
    assert fixed.shape == (48, 48) and set(np.unique(fixed)) <= {0, 1}
    assert (
        main(["correct", str(tmp_path / "img.png"), str(tmp_path / "rough.png"), "--out", str(tmp_path / "fixed.png")])
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    iio.imwrite(tmp_path / "small.png", rough[:20, :20])
    assert (
        main(["correct", str(tmp_path / "img.png"), str(tmp_path / "small.png"), "--out", str(tmp_path / "x.png")]) == 2
    )
    assert "shape" in capsys.readouterr().err


def test_train_forwards_arguments(capsys):
    pytest.importorskip("napari_vptv.nn.train")
    assert main(["train", "--help"]) == 0
    assert "--config" in capsys.readouterr().out
    assert main(["train", "--arch", "nope"]) == 2
    assert main(["train", "--config", "no-such-config", "--data-root", ".", "--out", "x"]) == 2
    assert "no-such-config" in capsys.readouterr().err
