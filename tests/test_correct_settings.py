"""The correction's settings in one place: the core's CorrectSettings, its keyword
overrides, and the API's CorrectOptions / the CLI built on it (no viewer)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv.cli import build_parser
from napari_vptv.cli.correct import correct_options
from napari_vptv.core.correct.mask import correct_mask, correct_mask_iter
from napari_vptv.core.correct.settings import CorrectSettings, resolve_settings
from napari_vptv.options import CorrectOptions


@pytest.fixture(scope="module")
def disc():
    yy, xx = np.indices((60, 64))
    truth = (yy - 30) ** 2 + (xx - 32) ** 2 <= 11**2
    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter(0.2 + 0.6 * truth + rng.normal(0, 0.05, truth.shape), 0.8).astype(np.float32)
    rough = ndi.binary_erosion(truth, iterations=3).astype(np.int32) * 4
    return image, rough


def test_unknown_setting_is_a_one_line_error_naming_it(disc):
    image, rough = disc
    with pytest.raises(TypeError) as info:
        correct_mask(image, rough, tv_weigth=0.1)
    message = str(info.value)
    assert "\n" not in message
    assert "unknown correction setting 'tv_weigth'" in message and "did you mean 'tv_weight'?" in message
    with pytest.raises(TypeError, match="unknown correction setting 'colour'"):
        next(correct_mask_iter(image, rough, colour=True))
    with pytest.raises(TypeError, match="unknown correction setting 'bogus'"):
        CorrectSettings().replace(bogus=1)
    with pytest.raises(TypeError, match="settings must be a CorrectSettings"):
        correct_mask(image, rough, {"band": 2})


def test_bad_values_are_refused_when_the_settings_are_made():
    for kw, match in (
        ({"tv_weight": -1}, "tv_weight"),
        ({"epsilon": 0}, "epsilon"),
        ({"stack_mode": "planes"}, "stack_mode"),
        ({"edge_position": "outer"}, "edge_position"),
        ({"mask_weight": np.nan}, "mask_weight"),
    ):
        with pytest.raises(ValueError, match=match):
            CorrectSettings(**kw)


def test_settings_object_and_keywords_give_the_same_labels(disc):
    image, rough = disc
    by_keywords = correct_mask(image, rough, band=2, max_num_iter=80)
    np.testing.assert_array_equal(by_keywords, correct_mask(image, rough, CorrectSettings(band=2, max_num_iter=80)))
    # keywords override the fields of a settings object; the object itself is unchanged
    base = CorrectSettings(band=2, max_num_iter=300)
    np.testing.assert_array_equal(by_keywords, correct_mask(image, rough, base, max_num_iter=80))
    assert base.max_num_iter == 300
    assert resolve_settings(None, {}) == CorrectSettings()


def test_correct_options_and_core_settings_agree_on_defaults():
    core, options = CorrectSettings(), CorrectOptions()
    core_fields = {f.name: f for f in dataclasses.fields(CorrectSettings)}
    for f in dataclasses.fields(CorrectOptions):
        if f.name == "model":  # the evidence, not a core setting
            continue
        assert f.name in core_fields, f.name
        value = getattr(options, f.name)
        assert value is None or value == getattr(core, f.name), f.name
    assert options.to_settings() == core
    # a field that is set reaches the core settings, the others keep the core's defaults
    assert CorrectOptions(tv_weight=0.2, band=3).to_settings() == CorrectSettings(tv_weight=0.2, band=3)


def test_cli_builds_the_options_from_its_flags():
    parse = build_parser().parse_args
    plain = correct_options(parse(["correct", "img.png", "mask.png", "--out", "o.png"]))
    assert plain == CorrectOptions() and plain.to_settings() == CorrectSettings()
    args = parse(
        ["correct", "img.png", "mask.png", "--out", "o.png", "--mode", "semantic", "--volume-mode", "exact"]
        + ["--volume-factor", "1.2", "--volume-tolerance", "0.1", "--area-tolerance", "0.2", "--band", "3"]
        + ["--epsilon", "0.02", "--tv-weight", "0.1", "--edge", "rim", "--no-edge", "--max-iter", "50"]
        + ["--margin", "7", "--mask-weight", "0.3", "--model", "vptv-unet", "--no-fill-holes"]
        + ["--stack-mode", "slices", "--seed", "3", "--device", "cpu:0"]
    )
    assert correct_options(args) == CorrectOptions(
        mode="semantic",
        model="vptv-unet",
        volume_mode="exact",
        volume_factor=1.2,
        volume_tolerance=0.1,
        area_tolerance=0.2,
        band=3,
        margin=7,
        epsilon=0.02,
        tv_weight=0.1,
        edge=False,
        mask_weight=0.3,
        fill_holes=False,
        max_num_iter=50,
        stack_mode="slices",
        seed=3,
        device="cpu:0",
        edge_position="rim",
    )
