"""The npe2 manifest is installed, valid, and every command it names imports.

Catches the "plugin fails to load" class of bugs (renamed function, missing
module, manifest not shipped in the wheel / editable install).
"""

from __future__ import annotations

import pytest

npe2 = pytest.importorskip("npe2")

from npe2 import PluginManifest  # noqa: E402
from npe2.manifest.utils import import_python_name  # noqa: E402


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution("napari-vptv")


def test_manifest_is_installed_and_valid(manifest):
    assert manifest.name == "napari-vptv"
    assert manifest.display_name == "napari-vptv"  # the sample and plugin menus say what the README says
    # loading validates; also validate the file shipped inside the package
    from importlib.resources import as_file, files

    with as_file(files("napari_vptv") / "napari.yaml") as path:
        assert PluginManifest.from_file(path).name == "napari-vptv"
    ids = {c.id for c in manifest.contributions.commands}
    for w in manifest.contributions.widgets or []:
        assert w.command in ids
    for s in manifest.contributions.sample_data or []:
        assert s.command in ids


def test_every_command_imports(manifest):
    missing = []
    for cmd in manifest.contributions.commands:
        if cmd.python_name is None:
            continue
        try:
            obj = import_python_name(cmd.python_name)
        except Exception as exc:  # report all failures at once
            missing.append(f"{cmd.id} -> {cmd.python_name}: {type(exc).__name__}: {exc}")
            continue
        assert callable(obj), cmd.python_name
    assert not missing, "commands that do not import:\n" + "\n".join(missing)
    manifest.validate_imports()  # npe2's own check (`npe2 validate --imports`)


def test_widgets_declared(manifest):
    widgets = {w.command: w for w in manifest.contributions.widgets or []}
    assert set(widgets) >= {"napari-vptv.segment_widget", "napari-vptv.correct_widget"}
    assert all(not w.autogenerate for w in widgets.values())


def test_sample_data_commands_return_layer_data(manifest):
    for s in manifest.contributions.sample_data or []:
        cmd = next(c for c in manifest.contributions.commands if c.id == s.command)
        layers = import_python_name(cmd.python_name)()
        assert layers, s.key
        for data, kwargs, kind in layers:
            assert kind in ("image", "labels")
            assert data.shape[:2] == (300, 300)
            assert kwargs["name"]


def test_manifest_is_a_real_file_and_the_dependencies_age_well():
    """A symlink breaks on Windows checkouts; upper bounds without a known
    incompatibility make the plugin uninstallable beside a newer torch; napari and Qt
    are extras, so installing into an existing napari does not re-resolve napari."""
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[1]
    manifest_file = root / "src" / "napari_vptv" / "napari.yaml"
    assert manifest_file.is_file() and not manifest_file.is_symlink()
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = project["dependencies"]
    assert not [d for d in deps if re.search(r"<(?!=?\s*$)", d)], deps
    names = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & {"napari", "pyqt5", "pyqt6", "pyside2", "pyside6"}, names
    testing = " ".join(project["optional-dependencies"]["testing"])
    assert "napari[" in testing and "pytest-qt" in testing
