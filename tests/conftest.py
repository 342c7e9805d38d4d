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
