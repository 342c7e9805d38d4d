"""The mask-correction API: CorrectOptions, api.correct_image and its network evidence
(synthetic images and the bundled WBC sample; no viewer)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_vptv
from napari_vptv.api import CorrectOptions, correct_image, correct_image_iter, correction_evidence
from napari_vptv.core.correct.mask import correct_mask
from napari_vptv.options import OptionError


@pytest.fixture(scope="module")
def disc_image():
    yy, xx = np.indices((70, 80))
    truth = (yy - 35) ** 2 + (xx - 40) ** 2 <= 13**2
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(0.2 + 0.6 * truth + rng.normal(0, 0.08, truth.shape), 0.7).astype(np.float32)
    rough = np.zeros(truth.shape, np.uint16)
    rough[ndi.shift(truth.astype(np.uint8), (3, -2), order=0) > 0] = 5
    return image, rough, truth


def test_correct_image_is_the_core_correction(disc_image):
    image, rough, truth = disc_image
    opts = CorrectOptions(max_num_iter=120, volume_mode="interval", edge=True)
    out = correct_image(image, rough, opts)
    np.testing.assert_array_equal(out, correct_mask(image, rough, max_num_iter=120, volume_mode="interval", edge=True))
    assert set(np.unique(out)) == {0, 5}
    assert 2 * ((out > 0) & truth).sum() / ((out > 0).sum() + truth.sum()) > 0.9
    # keywords override the options; the generator reports progress and returns the same labels
    exact = correct_image(image, rough, opts, volume_mode="exact")
    assert (exact > 0).sum() == (rough > 0).sum()
    gen = correct_image_iter(image, rough, opts)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            np.testing.assert_array_equal(stop.value, out)
            break
    assert steps and steps[-1].done == steps[-1].total
    with pytest.raises(InterruptedError):
        correct_image(image, rough, opts, should_stop=lambda: True)


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(mode="blobs"), "mode"),
        (dict(model="cellpose"), "model"),
        (dict(volume_mode="approx"), "volume_mode"),
        (dict(epsilon=0), "epsilon"),
        (dict(max_num_iter=0), "max_num_iter"),
        (dict(band=0), "band"),
        (dict(volume_tolerance=1.0), "volume_tolerance"),
        (dict(volume_factor=-1), "volume_factor"),
        (dict(margin=2.5), "margin"),
        (dict(stack_mode="4d"), "stack_mode"),
        (dict(device=""), "device"),
    ],
)
def test_correct_options_are_validated_once(bad, field):
    with pytest.raises(OptionError) as err:
        CorrectOptions(**bad)
    assert err.value.field == field


def test_network_evidence_on_the_options_device():
    from napari_vptv.core.io.samples import load_sample

    image, truth = load_sample("001")
    opts = CorrectOptions(model="vptv-unet", device="cpu")
    nucleus = correction_evidence(image, opts, channel_axis=-1)
    assert nucleus.shape == truth.shape and 0 <= nucleus.min() and nucleus.max() <= 1
    assert nucleus[truth == 2].mean() > 0.8 > nucleus[truth == 0].mean()
    classes = correction_evidence(image, opts.replace(mode="semantic"), channel_axis=-1)
    assert classes.shape == (3,) + truth.shape
    assert correction_evidence(image, CorrectOptions(), channel_axis=-1) is None
    with pytest.raises(OptionError, match="RGB"):
        correction_evidence(image[..., 0], opts)
    with pytest.raises(RuntimeError):  # the device is used: no such device here
        correction_evidence(image, opts.replace(device="meta:7"), channel_axis=-1)


def test_correction_and_finetuning_are_exported():
    for name in ("CorrectOptions", "correct_image", "finetune", "save_finetuned"):
        assert name in napari_vptv.__all__ and callable(getattr(napari_vptv, name))
    # the API's fine-tuning: its check scores the default method as well as the network
    from napari_vptv.finetuning import finetune, save_finetuned

    assert napari_vptv.finetune is finetune and napari_vptv.save_finetuned is save_finetuned
