"""The documentation site builds strict and its home page renders, with its images, in a real browser.

Builds the site with ``mkdocs build --strict`` into a temporary folder, then opens the home page in
headless Chromium (Debian's ``chromium``): once to dump the rendered DOM, once to take a screenshot.
Skipped when the ``docs`` extra (mkdocs-material, mkdocstrings) or Chromium is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_home_page_renders_with_its_images(site, tmp_path):
    home = site / "index.html"
    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", home.as_uri())
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    assert re.search(r"<h1[^>]*>\s*napari-vptv", html), "the home page has no title"
    assert "Tutorial" in html and "Results" in html, "the navigation is missing"
    images = re.findall(r'<img[^>]*\bsrc="([^"]+)"', html)
    local = [src for src in images if not src.startswith(("http:", "https:", "data:"))]
    assert local, "the home page shows no image"
    for src in local:
        assert (site / src).is_file(), f"the home page's image {src} is not in the site"

    shot = tmp_path / "home.png"
    run = _chromium(tmp_path / "profile-shot", "--window-size=1280,1000", f"--screenshot={shot}", home.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.uint8)
    # The page is light; the widget screenshot on it is mostly napari's dark theme. Without the image
    # (a broken link shows only its alt text) almost no pixel is that dark.
    dark = float((pixels < 60).mean())
    assert dark > 0.05, f"the home page's screenshot is not drawn (dark share {dark:.3f})"


def test_cli_and_api_reference_are_generated(site):
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    from napari_vptv.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        assert f'id="vptv-{name}"' in cli, f"the CLI reference has no section for vptv {name}"
    assert "--out" in cli
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("segment_image", "SegmentOptions", "finetune"):
        assert name in api, f"the API reference does not document {name}"
