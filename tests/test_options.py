"""The shared options object, the API dispatcher and the package layering."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

import napari_vptv
from napari_vptv import SegmentOptions, segment_image
from napari_vptv.api import SegmentFn, make_segment_fn

CORE = Path(napari_vptv.__file__).parent / "core"


def _grey(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n]
    disk = (y - n / 2) ** 2 + (x - n / 2) ** 2 < (n / 4) ** 2
    return (disk * 0.6 + 0.2 + rng.normal(0, 0.03, (n, n))).astype(np.float32)


def test_version_and_public_api():
    assert isinstance(napari_vptv.__version__, str) and napari_vptv.__version__
    for name in napari_vptv.__all__:
        assert getattr(napari_vptv, name) is not None


@pytest.mark.parametrize(
    "bad, word",
    [
        (dict(method="magic"), "method"),
        (dict(preset="cells"), "preset"),
        (dict(preset="wbc", n_classes=2), "3 classes"),
        (dict(method="vptv-unet", n_classes=4), "3 classes"),
        (dict(n_classes=1), "classes"),
        (dict(volumes=[0.5, 0.6]), "sum"),
        (dict(lower=[0.1, 0.1]), "both"),
        (dict(epsilon=0), "epsilon"),
        (dict(tv_weight=-1), "TV weight"),
        (dict(max_num_iter=0), "iterations"),
        (dict(diameter=-3), "diameter"),
        (dict(method="vptv-unet", model="unet"), "model"),
        (dict(model="weights.bin"), "model"),
    ],
)
def test_options_are_validated_once(bad, word):
    with pytest.raises(ValueError, match=word):
        SegmentOptions(**bad)


def test_options_are_frozen_normalised_and_picklable():
    opts = SegmentOptions(preset=None, volumes=np.array([0.75, 0.25]), diameter=12, model="vptv-unet")
    assert opts.preset == "none" and opts.volumes == (0.75, 0.25) and opts.diameter == 12.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 3
    assert pickle.loads(pickle.dumps(opts)) == opts
    assert opts.replace(seed=2).seed == 2 and opts.seed == 0
    assert SegmentOptions.wbc().n_classes_for(rgb=True) == 3
    assert SegmentOptions.auto().resolved_preset(rgb=False) == "none"
    assert SegmentOptions.auto().resolved_preset(rgb=True) == "wbc"
    assert SegmentOptions(method="unet").network_name == "unet"
    with pytest.raises(TypeError, match="unknown"):
        SegmentOptions.from_kwargs(colour="red")


def test_every_route_gives_the_same_labels():
    img = _grey()
    opts = SegmentOptions.kmeans(2, volumes=[0.8, 0.2], max_num_iter=80)
    direct = segment_image(img, opts).labels
    keywords = segment_image(img, n_classes=2, volumes=[0.8, 0.2], max_num_iter=80).labels
    fn = SegmentFn(opts)
    batch = make_segment_fn("vptv", preset="none", n_classes=2, volumes=[0.8, 0.2], max_num_iter=80)
    np.testing.assert_array_equal(direct, keywords)
    np.testing.assert_array_equal(direct, fn(img).labels)
    np.testing.assert_array_equal(direct, pickle.loads(pickle.dumps(batch))(img).labels)
    assert abs(np.mean(direct == 1) - 0.2) < 0.01


def _imports(path: Path):
    """(module text, level) of every import in a file, nested ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


#: Known exception, being reworked in the mask-correction issue: core/correct/mask.py
#: still asks the network for a nucleus probability.
_CORE_UPWARD_KNOWN = {"correct.py"}


def test_core_imports_neither_nn_nor_napari_nor_the_api():
    upward = []
    for f in sorted(CORE.glob("*.py")):
        if f.name in _CORE_UPWARD_KNOWN:
            continue
        for mod, level in _imports(f):
            top = mod.split(".")[0]
            if (
                (level == 0 and top in ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "superqt"))
                or (level == 0 and mod.startswith(("napari_vptv.nn", "napari_vptv.api", "napari_vptv.options")))
                or (level >= 2 and top in ("nn", "api", "options", "cli", "_widget"))
            ):
                upward.append(f"{f.name}: {'.' * level}{mod}")
    assert not upward, upward


def test_no_import_cycle_inside_core():
    graph = {}
    for f in CORE.glob("*.py"):
        graph[f.stem] = {mod.split(".")[0] for mod, level in _imports(f) if level == 1 and mod}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [m for m in graph if m in reach(m)]
    assert not cycles, cycles


def test_segment_image_without_method_or_preset_runs_the_best_method():
    """No method and no preset: "vptv-adapted" for RGB (as `vptv segment`), the generic
    solver for grey images or other class counts; the VPTVU-net when 3-class volumes
    are given; solver settings override the chosen method's, never choose another."""
    from napari_vptv.core.io.samples import load_sample

    image, _ = load_sample("wbc_001")
    rgb = image[..., :3]
    plain = segment_image(rgb)
    adapted = segment_image(rgb, SegmentOptions(method="vptv", preset="wbc"))
    named = segment_image(rgb, SegmentOptions(method="vptv-adapted"))
    np.testing.assert_array_equal(plain.labels, adapted.labels)
    np.testing.assert_array_equal(plain.labels, named.labels)
    assert plain.n_iter > 0 and plain.info["colour_model"] == "refitted on this image"
    grey = rgb.mean(axis=-1)
    assert segment_image(grey, n_classes=2, max_num_iter=50).n_iter > 0

    def method(rgb=True, **kw):
        return SegmentOptions(**kw).resolve(rgb).method

    assert method(rgb=False) == "vptv"
    assert method(n_classes=4) == "vptv"
    assert method(preset="none") == "vptv"
    assert method(epsilon=0.1) == "vptv-adapted"
    assert method() == "vptv-adapted"
    assert method(volumes=(0.7, 0.2, 0.1)) == "vptv-unet"
    assert method(volumes=(0.8, 0.2)) == "vptv"
    assert method(preset="wbc", volumes=(0.7, 0.2, 0.1)) == "vptv"  # an explicit preset: the solver
    assert method(method="vptv", preset="wbc", volume_mode="interval") == "vptv"
    assert method(method="unet") == "unet"
    assert SegmentOptions(volumes=(0.8, 0.2)).resolve(True).preset == "none"
    with pytest.raises(ValueError, match="vptv-adapted"):
        SegmentOptions(method="vptv-adapted", volumes=(0.7, 0.2, 0.1))
    with pytest.raises(ValueError, match="vptv-adapted"):
        SegmentOptions(method="vptv-adapted", preset="none")
