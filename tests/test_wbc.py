"""The WBC preset on the bundled sample images (no /work/shared data needed).

The samples are 3 of the 90 training images the shipped colour model was fitted
on; the cross-validated figures (no image scored with statistics it contributed
to) are in docs/results.md. Here the bounds only need to catch a broken solver,
colour model or class order (those give ~0.6 accuracy or swapped classes).
"""

import numpy as np
import pytest

from napari_vptv.api import METHODS, evaluate_folder, segment_image
from napari_vptv.core.io.samples import load_sample, sample_ids
from napari_vptv.core.solver.costs import HistogramModel
from napari_vptv.core.solver.segment import vptv_segment
from napari_vptv.core.wbc.preset import WBCModel, fit_wbc_model, load_wbc_model, wbc_preset

TOL = 0.005


@pytest.fixture(scope="module")
def samples():
    return {sid: load_sample(sid) for sid in sample_ids()}


@pytest.fixture(scope="module")
def interval_results(samples):
    return {sid: vptv_segment(img, **wbc_preset("interval")) for sid, (img, _) in samples.items()}


def test_shipped_model_is_sane():
    m = load_wbc_model()
    assert m.n_classes == 3 and m.n_images == 90
    assert m.log_prob.shape == (3, m.bins, m.bins, m.bins)
    np.testing.assert_allclose(m.fractions.sum(), 1.0, atol=1e-6)
    assert np.all(m.lower < m.fractions) and np.all(m.fractions < m.upper)
    # background brightest, nucleus darkest (stained purple)
    assert m.means[0].sum() > m.means[1].sum() > m.means[2].sum()


def test_preset_accuracy_and_interval_on_samples(samples, interval_results):
    model = load_wbc_model()
    accs = []
    for sid, (_, mask) in samples.items():
        r = interval_results[sid]
        assert r.labels.shape == mask.shape
        accs.append(np.mean(r.labels == mask))
        # achieved fractions inside the interval prior (+-0.5 %)
        assert np.all(r.volumes >= model.lower - TOL), (sid, r.volumes, model.lower)
        assert np.all(r.volumes <= model.upper + TOL), (sid, r.volumes, model.upper)
    assert np.mean(accs) >= 0.90, accs
    assert min(accs) >= 0.80, accs


def test_preset_exact_volumes_on_samples(samples):
    model = load_wbc_model()
    for img, mask in samples.values():
        r = vptv_segment(img, **wbc_preset("exact"))
        np.testing.assert_allclose(r.volumes, model.fractions, atol=TOL)
        assert np.mean(r.labels == mask) >= 0.75


def test_preset_deterministic(samples):
    img, _ = samples["001"]
    a = vptv_segment(img, **wbc_preset())
    b = vptv_segment(img, **wbc_preset())
    np.testing.assert_array_equal(a.labels, b.labels)


def test_segment_image_dispatcher_matches_solver(samples, interval_results):
    img, _ = samples["016"]
    r = segment_image(img, method="vptv", preset="wbc", volume_mode="interval")
    # an explicit volume constraint wins over the nucleus rule: the solver's labels as they are
    np.testing.assert_array_equal(r.labels, interval_results["016"].labels)
    # without volume settings the preset refits its colour model on the image (core.wbc.adapt)
    adapted = segment_image(img, method="vptv", preset="wbc")
    assert adapted.info["colour_model"] == "refitted on this image"
    assert np.mean(adapted.labels == samples["016"][1]) > 0.95
    # an explicit argument overrides the preset; volumes switch to exact mode
    r2 = segment_image(img, preset="wbc", volumes=[0.7, 0.18, 0.12])
    np.testing.assert_allclose(r2.volumes, [0.7, 0.18, 0.12], atol=TOL)
    assert set(METHODS) == {"auto", "vptv-adapted", "vptv", "unet", "vptv-unet"}


def test_segment_image_bad_input():
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match="method"):
        segment_image(img, method="magic")
    with pytest.raises(ValueError, match="preset"):
        segment_image(img, preset="cells")
    with pytest.raises(ValueError, match="RGB"):
        segment_image(img, preset="wbc")
    with pytest.raises(ValueError, match="3 classes"):
        segment_image(np.zeros((32, 32, 3), np.uint8), preset="wbc", n_classes=4)


def test_fit_wbc_model_roundtrip(samples, tmp_path):
    images = [s[0] for s in samples.values()]
    masks = [s[1] for s in samples.values()]
    m = fit_wbc_model(images, masks, bins=16)
    assert isinstance(m.histogram(), HistogramModel) and m.n_images == 3
    assert np.all(m.lower <= m.upper)
    m2 = WBCModel.load(m.save(tmp_path / "m.npz"))
    np.testing.assert_allclose(m2.log_prob, m.log_prob, atol=1e-2)
    np.testing.assert_allclose(m2.upper, m.upper)
    with pytest.raises(ValueError, match="masks"):
        fit_wbc_model(images, masks[:2])
    with pytest.raises(ValueError, match="labels 0, 1, 2"):
        fit_wbc_model(images[:1], [masks[0] + 5])
    with pytest.raises(ValueError, match="volume_mode"):
        wbc_preset("approximately")


def test_evaluate_folder_on_samples(samples, tmp_path):
    import imageio.v3 as iio

    from napari_vptv.core.io.files import write_labels

    (tmp_path / "images").mkdir()
    for sid, (img, mask) in list(samples.items())[:2]:
        iio.imwrite(tmp_path / "images" / f"{sid}.png", img)
        write_labels(tmp_path / "masks" / f"{sid}.png", mask, wbc_grey=True)
    rows, summary = evaluate_folder(tmp_path / "images", tmp_path / "masks")
    assert [r["id"] for r in rows] == list(samples)[:2]
    assert summary["n"] == 2 and summary["accuracy"] >= 0.85
    assert len(rows[0]["dice"]) == 3 and len(rows[0]["volume_error"]) == 3
    # a missing mask is named
    iio.imwrite(tmp_path / "images" / "999.png", samples["001"][0])
    with pytest.raises(FileNotFoundError, match="999.png"):
        evaluate_folder(tmp_path / "images", tmp_path / "masks")
    # a mask of the wrong size is named
    write_labels(tmp_path / "masks" / "999.png", np.zeros((10, 10), np.int32), wbc_grey=True)
    with pytest.raises(ValueError, match="999"):
        evaluate_folder(tmp_path / "images", tmp_path / "masks")
