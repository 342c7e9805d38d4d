"""The named methods and their settings (napari_vptv.presets): one default for every
entry point, and the core functions' own defaults equal to the presets' numbers."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from napari_vptv import presets
from napari_vptv.api import evaluate_folder, make_segment_fn
from napari_vptv.cli import build_parser
from napari_vptv.options import SegmentOptions


def test_core_defaults_are_the_presets():
    from napari_vptv.core.solver.segment import vptv_segment
    from napari_vptv.core.wbc import adapt
    from napari_vptv.core.wbc.preset import WBC_DEFAULTS, wbc_preset

    assert WBC_DEFAULTS == presets.WBC_COLOUR.solver_kwargs()
    kw = wbc_preset("interval")
    assert {k: kw[k] for k in WBC_DEFAULTS} == presets.WBC_COLOUR.solver_kwargs()
    a = presets.VPTV_ADAPTED
    sig = inspect.signature(adapt.adapted_segment).parameters
    assert {k: sig[k].default for k in a.solver_kwargs()} == a.solver_kwargs()
    assert sig["colour_sigma_per_diameter"].default == a.colour_sigma_per_diameter
    assert adapt.MAX_ITER == a.max_num_iter and adapt.NETWORK_WEIGHT == a.network_weight
    sig = inspect.signature(vptv_segment).parameters
    g = presets.GENERIC
    for name in ("epsilon", "tv_weight", "edge", "max_num_iter", "similarity", "em_update"):
        assert sig[name].default == getattr(g, name), name


def test_network_and_rule_defaults_are_the_presets():
    from napari_vptv.nn.predict import DEFAULT_AUGMENT

    opts = SegmentOptions()
    assert DEFAULT_AUGMENT == presets.NETWORKS.augment == opts.augment
    assert opts.diameter == presets.NETWORKS.diameter
    assert opts.require_nucleus == presets.CELL_RULES.require_nucleus
    assert opts.white_cell_rule == presets.CELL_RULES.white_cell_rule


def test_every_entry_point_has_the_same_default():
    default = SegmentOptions()
    assert default.method == presets.DEFAULT_METHOD and default.preset == "auto"
    assert make_segment_fn().options == default
    assert dict(inspect.signature(evaluate_folder).parameters)["options"].default is None
    parser = build_parser()
    for command in ("segment", "evaluate", "demo"):
        args = parser.parse_args(
            [command]
            + (["x", "--out", "o"] if command == "segment" else [])
            + (["--images", "i", "--masks", "m"] if command == "evaluate" else [])
        )
        assert args.method == presets.DEFAULT_METHOD, command
        assert getattr(args, "preset", "auto") == "auto", command
    assert default.resolve(rgb=True).method == "vptv-adapted"
    assert default.resolve(rgb=False).method == "vptv"


def test_presets_are_frozen_and_named():
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.VPTV_ADAPTED.epsilon = 1.0
    assert presets.settings_of("vptv-adapted") is presets.VPTV_ADAPTED
    assert presets.settings_of("vptv", "wbc") is presets.WBC_COLOUR
    assert presets.settings_of("vptv") is presets.GENERIC
    with pytest.raises(ValueError, match="named methods"):
        presets.settings_of("auto")
    text = presets.describe()
    assert "vptv-adapted: epsilon=0.05" in text and text.startswith("default method: 'auto'")


def test_make_segment_fn_passes_every_field():
    fn = make_segment_fn("vptv-unet", require_nucleus=False, augment=8, white_cell_rule=False, diameter=30)
    assert fn.options == SegmentOptions(
        method="vptv-unet", require_nucleus=False, augment=8, white_cell_rule=False, diameter=30
    )
    with pytest.raises(TypeError, match="colour"):
        make_segment_fn(colour="red")
