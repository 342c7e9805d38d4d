"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def vptv_config_dir(tmp_path, monkeypatch):
    """Remembered widget settings go to a fresh directory per test, never to the
    user's real config directory (and no test sees another test's settings)."""
    path = tmp_path / "vptv-config"
    monkeypatch.setenv("NAPARI_VPTV_CONFIG_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def wbc():
    """A 120 x 120 crop of a bundled WBC sample around the cell (keeps tests fast)."""
    from napari_vptv.core.io.samples import load_sample

    image, mask = load_sample("001")
    return image[90:210, 90:210].copy(), mask[90:210, 90:210].copy()


@pytest.fixture
def one_torch_thread():
    """Small images: one torch thread (2 threads on a busy 2-core machine are ~10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def viewer_and_widget(make_napari_viewer, qtbot):
    """A real viewer with the *Correct mask* widget docked; a running worker is
    cancelled and awaited at teardown."""
    pytest.importorskip("pytestqt")
    from napari_vptv._correct_widget import CorrectMaskWidget

    viewer = make_napari_viewer()
    w = CorrectMaskWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correct mask")
    yield viewer, w
    if w.worker is not None and w.worker != "sync":
        w.cancel()
        qtbot.waitUntil(lambda: w.worker is None, timeout=60000)
