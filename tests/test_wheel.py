"""The built wheel works on its own: built from this tree, installed into a fresh venv
(no editable install, no source tree on the path), its npe2 manifest is shipped and
``vptv demo`` runs on the bundled samples with the shipped weights.

Slow (a venv and the dependencies are installed: about 2 minutes, most of it torch
from pip's cache); torch is pinned to the version running the tests so pip reuses
it. ``TORCH_PIP_ARGS`` (as in ``.ci/run``) is passed on to pip.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout=1800):
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PIP_NO_INPUT": "1", "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], cwd=out)
    (path,) = out.glob("napari_vptv-*.whl")
    return path


def test_the_wheel_ships_the_manifest_weights_and_samples(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_vptv/napari.yaml" in names
    assert any(n.startswith("napari_vptv/models/") and n.endswith(".pt") for n in names)
    assert any(n.startswith("napari_vptv/samples/") for n in names)
    assert not any("__pycache__" in n for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "napari.manifest" in text and "vptv" in text


def test_the_wheel_installed_in_a_fresh_venv_runs_the_demo(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    pip = [str(bindir / "python"), "-m", "pip", "install", "-q"]
    extra = shlex.split(os.environ.get("TORCH_PIP_ARGS", ""))
    torch_version = torch.__version__.split("+")[0]
    _run([*pip, f"torch=={torch_version}", *extra], cwd=tmp_path)
    _run([*pip, str(wheel)], cwd=tmp_path)
    # run from an empty folder: only the installed package can be imported
    work = tmp_path / "run"
    work.mkdir()
    where = _run([str(bindir / "python"), "-c", "import napari_vptv; print(napari_vptv.__file__)"], cwd=work)
    assert str(env_dir) in where.stdout
    proc = _run([str(bindir / "vptv"), "demo", "--out", "demo"], cwd=work)
    assert (work / "demo").is_dir() and any((work / "demo").iterdir()), proc.stdout
