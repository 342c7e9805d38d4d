"""Mask correction with VPTV (core engine and the "Correct mask" widget).

Synthetic images only (no /work/shared); the widget tests need a real X server:

    xvfb-run -a python -m pytest tests/test_correct.py
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv.core.correct.mask import CorrectionProgress, correct_mask, correct_mask_iter

FAST = dict(max_num_iter=150)


def disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def noisy(truth_levels, seed=0, sigma=0.08):
    rng = np.random.default_rng(seed)
    img = truth_levels + rng.normal(0, sigma, truth_levels.shape)
    return ndi.gaussian_filter(img, 0.7).astype(np.float32)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def shifted(mask, dy, dx):
    return ndi.shift(mask.astype(np.uint8), (dy, dx), order=0, mode="constant") > 0


@pytest.fixture(scope="module")
def one_disc():
    truth = disc((80, 90), (40, 45), 14)
    image = noisy(0.2 + 0.6 * truth)
    return image, truth


def test_shifted_disc_is_recovered_with_its_id(one_disc):
    image, truth = one_disc
    rough = np.zeros(truth.shape, np.uint16)
    rough[shifted(truth, 4, -3)] = 7
    kept = rough.copy()
    assert dice(rough > 0, truth) < 0.8
    out = correct_mask(image, rough, **FAST)
    assert out.dtype == np.uint16 and out.shape == rough.shape
    assert set(np.unique(out)) == {0, 7}
    assert dice(out == 7, truth) >= 0.95
    np.testing.assert_array_equal(rough, kept)  # the input labels are never modified in place


def test_exact_volume_keeps_the_given_area(one_disc):
    image, truth = one_disc
    rough = shifted(truth, 4, -3).astype(np.int32)
    out = correct_mask(image, rough, volume_mode="exact", mask_weight=0.4, **FAST)
    assert abs(int((out == 1).sum()) - int(rough.sum())) <= 0.03 * rough.sum()
    assert dice(out == 1, truth) >= 0.93


def fluorescent_nuclei(seed=0):
    """Blurred grey nuclei, one dim, two touching, with Poisson noise (uint16)."""
    shape = (96, 128)
    discs = [disc(shape, (30, 30), 13), disc(shape, (30, 56), 13), disc(shape, (70, 95), 11), disc(shape, (68, 40), 9)]
    truth = np.zeros(shape, np.int32)
    signal = np.zeros(shape)
    for i, (d, level) in enumerate(zip(discs, (1.0, 0.9, 0.3, 0.8)), start=1):
        truth[d & (truth == 0)] = i
        signal[d] = level
    signal = ndi.gaussian_filter(signal, 1.5)
    rng = np.random.default_rng(seed)
    image = rng.poisson(300 * (0.1 + signal)) + 100
    return image.astype(np.uint16), truth


def erode_each(labels, r):
    out = np.zeros_like(labels)
    for i in np.unique(labels)[1:]:
        out[ndi.binary_erosion(labels == i, iterations=r)] = i
    return out


@pytest.mark.parametrize("bias", ["dilate", "erode"])
def test_unknown_size_bias_is_fixed_on_fluorescence(bias):
    from skimage.segmentation import expand_labels

    image, truth = fluorescent_nuclei()
    rough = expand_labels(truth, 3) if bias == "dilate" else erode_each(truth, 3)
    assert ndi.label(truth > 0)[1] == 3  # nuclei 1 and 2 touch
    before = dice(rough > 0, truth > 0)
    report = []
    out = correct_mask(image, rough, report=report)
    assert set(np.unique(out)) == set(np.unique(truth))  # ids kept, nothing lost or merged
    assert dice(out > 0, truth > 0) >= 0.95 and dice(out > 0, truth > 0) > before + 0.05
    for i in range(1, 5):  # the dim nucleus too
        assert dice(out == i, truth == i) > dice(rough == i, truth == i)
        assert ndi.label(out == i)[1] == 1
    assert [r.label for r in report] == [1, 2, 3, 4]
    assert all(r.status.startswith("moved") and r.area_after == (out == r.label).sum() for r in report)


def test_accurate_masks_stay(one_disc):
    image, truth = one_disc
    out = correct_mask(image, truth.astype(np.int32), **FAST)
    assert dice(out == 1, truth) >= 0.99
    image, truth = fluorescent_nuclei(seed=1)
    out = correct_mask(image, truth)
    assert dice(out > 0, truth > 0) >= 0.98


def small_nuclei(seed=0):
    """Nine small blurred grey nuclei (radius 5-8 px), one dim, with Poisson noise."""
    rng = np.random.default_rng(seed)
    shape = (90, 90)
    truth = np.zeros(shape, np.int32)
    signal = np.zeros(shape)
    for i, (cy, cx) in enumerate([(15 + 30 * a, 15 + 30 * b) for a in range(3) for b in range(3)], start=1):
        d = disc(shape, (cy + rng.integers(-2, 3), cx + rng.integers(-2, 3)), rng.uniform(5, 8))
        truth[d] = i
        signal[d] = 0.35 if i == 5 else rng.uniform(0.8, 1.0)
    image = rng.poisson(200 * (0.1 + ndi.gaussian_filter(signal, 1.2))) + 100
    return image.astype(np.uint16), truth


@pytest.mark.parametrize("bias", ["identity", "dilate", "erode"])
def test_small_nuclei_biased_by_3px(bias):
    """Nuclei of radius 5-8 px: a 3 px error is half the radius; the band shrinks with the size."""
    from skimage.segmentation import expand_labels

    image, truth = small_nuclei()
    rough = {"identity": truth, "dilate": expand_labels(truth, 3), "erode": erode_each(truth, 2)}[bias]
    out = correct_mask(image, rough)
    assert set(np.unique(out)) == set(np.unique(truth))
    if bias == "identity":
        assert dice(out > 0, truth > 0) >= 0.97
    else:
        assert dice(out > 0, truth > 0) >= 0.92 and dice(out > 0, truth > 0) > dice(rough > 0, truth > 0) + 0.1


def stained_cell(seed=0):
    """RGB brightfield-like cell: dark purple nucleus, pale cytoplasm 5 px wide, yellowish background."""
    shape = (72, 72)
    nucleus = disc(shape, (36, 36), 14)
    cell = disc(shape, (36, 36), 19)
    rgb = np.empty(shape + (3,))
    rgb[:] = (0.95, 0.92, 0.6)
    rgb[cell] = (0.75, 0.6, 0.7)
    rgb[nucleus] = (0.35, 0.15, 0.4)
    rng = np.random.default_rng(seed)
    rgb = np.stack([ndi.gaussian_filter(rgb[..., c], 1.0) for c in range(3)], -1) + rng.normal(0, 0.02, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), nucleus.astype(np.int32)


@pytest.mark.parametrize("bias", ["identity", "dilate"])
def test_nucleus_edge_is_the_cytoplasm_edge_not_the_cell_edge(bias):
    """The outside level comes from the material next to the nucleus (cytoplasm), not the background."""
    image, truth = stained_cell()
    rough = truth if bias == "identity" else ndi.binary_dilation(truth, iterations=3).astype(np.int32)
    out = correct_mask(image, rough, channel_axis=-1)
    assert dice(out == 1, truth) >= (0.99 if bias == "identity" else 0.97)


def test_edge_offset_finds_the_bias():
    from napari_vptv.core.correct.evidence import edge_offset

    truth = disc((60, 60), (30, 30), 14)
    image = ndi.gaussian_filter(truth.astype(float), 1.5)
    for grow in (-3, 0, 3):
        given = (
            ndi.binary_dilation(truth, iterations=grow)
            if grow > 0
            else (ndi.binary_erosion(truth, iterations=-grow) if grow < 0 else truth)
        )
        sd = np.where(given, 0.5 - ndi.distance_transform_edt(given), ndi.distance_transform_edt(~given) - 0.5)
        off = edge_offset(image, sd, 6, np.zeros(truth.shape, bool))
        assert np.all(np.abs(off + grow) <= 1.0), (grow, np.unique(off))


def test_shifted_small_nuclei_are_moved_back_whole():
    """A mask shifted by (2, -2) px on small nuclei (radius 6-9, band 4): the whole-object
    shift search puts every object back (sector offsets alone reached 0.965 / worst 0.959)."""
    from napari_vptv.core.correct.evidence import _gradient, best_shift

    yy, xx = np.indices((120, 140))
    truth = np.zeros((120, 140), np.int32)
    for i, (cy, cx, r) in enumerate([(30, 30, 7), (30, 75, 8), (80, 40, 9), (85, 100, 7), (40, 115, 6)], 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter(0.2 + 0.6 * (truth > 0) + rng.normal(0, 0.08, truth.shape), 1.2).astype(np.float32)
    given = ndi.shift(truth, (2, -2), order=0)
    obj = given[:60, :60] == 1
    sd = np.where(obj, 0.5 - ndi.distance_transform_edt(obj), ndi.distance_transform_edt(~obj) - 0.5)
    assert best_shift(_gradient(image[:60, :60], np.zeros_like(obj)), sd, 4) == (-2, 2)
    out = correct_mask(image, given, max_num_iter=150)
    assert dice(out > 0, truth > 0) >= 0.985 > dice(given > 0, truth > 0) + 0.2
    assert min(dice(out == i, truth == i) for i in range(1, 6)) >= 0.98


def test_edge_offset_prefers_the_edge_nearest_the_mask():
    """Two edges of about equal strength in the band (nucleus / thin cytoplasm / background):
    the nucleus edge on the given boundary wins over a slightly stronger one 3 px out."""
    from napari_vptv.core.correct.evidence import edge_offset

    nucleus, cell = disc((60, 60), (30, 30), 12), disc((60, 60), (30, 30), 15)
    image = ndi.gaussian_filter(0.5 * cell + 0.48 * nucleus, 1.0)  # outer step 0.50, inner 0.48
    sd = np.where(nucleus, 0.5 - ndi.distance_transform_edt(nucleus), ndi.distance_transform_edt(~nucleus) - 0.5)
    off = edge_offset(image, sd, 6, np.zeros(nucleus.shape, bool))
    assert np.all(np.abs(off) <= 1.0), np.unique(off)


def test_explicit_band_limits_the_move():
    from skimage.segmentation import expand_labels

    image, truth = small_nuclei(seed=1)
    rough = expand_labels(truth, 4)
    out = correct_mask(image, rough, band=2)
    for i in range(1, 10):
        inner = ndi.binary_erosion(rough == i, iterations=2)  # chessboard-safe: city-block depth <= Euclidean
        assert np.all(out[inner] == i)


def test_sample_wbc_nucleus_mask():
    from napari_vptv.core.io.samples import load_sample, sample_ids

    image, classes = load_sample(sample_ids()[0])
    truth = classes == 2  # nucleus
    rough = ndi.binary_dilation(truth, iterations=3).astype(np.int32)
    out = correct_mask(image, rough, channel_axis=-1)
    assert dice(out > 0, truth) > dice(rough, truth) + 0.01
    same = correct_mask(image, truth.astype(np.int32), channel_axis=-1)
    assert dice(same > 0, truth) >= 0.97


def test_same_input_same_labels(one_disc):
    image, truth = one_disc
    rough = shifted(truth, 3, 3).astype(np.int32)
    a = correct_mask(image, rough, **FAST)
    b = correct_mask(image, rough, **FAST)
    np.testing.assert_array_equal(a, b)


def test_volume_factor_scales_the_area(one_disc):
    image, truth = one_disc
    rough = ndi.binary_erosion(truth, iterations=2).astype(np.int32)
    plain = (correct_mask(image, rough, volume_mode="exact", **FAST) == 1).sum()
    grown = (correct_mask(image, rough, volume_factor=1.2, **FAST) == 1).sum()  # factor mode implied
    assert grown > 1.1 * plain
    exact = correct_mask(image, rough, volume_factor=truth.sum() / rough.sum(), **FAST)
    assert dice(exact == 1, truth) >= 0.97


def test_area_tolerance_bounds_the_change(one_disc):
    image, truth = one_disc
    rough = ndi.binary_dilation(truth, iterations=4).astype(np.int32)
    out = correct_mask(image, rough, area_tolerance=0.05, **FAST)
    assert (out == 1).sum() >= 0.95 * rough.sum() - 1
    free = correct_mask(image, rough, **FAST)
    assert (free == 1).sum() < (out == 1).sum()


def test_touching_objects_stay_two_and_keep_ids():
    shape = (70, 100)
    a, b = disc(shape, (35, 35), 14), disc(shape, (35, 63), 14)  # touching at x = 49
    assert ndi.label(a | b)[1] == 1
    image = noisy(0.2 + 0.6 * (a | b), seed=1)
    rough = np.zeros(shape, np.uint32)
    rough[shifted(a, 2, -3)] = 3
    rough[shifted(b, -2, 3) & (rough == 0)] = 70000  # large, sparse ids are kept too
    out = correct_mask(image, rough, **FAST)
    assert out.dtype == np.uint32 and set(np.unique(out)) == {0, 3, 70000}
    for lab, truth in ((3, a), (70000, b)):
        assert ndi.label(out == lab)[1] == 1
        assert dice(out == lab, truth) >= 0.9


def test_object_without_contrast_is_kept_and_reported():
    image, truth = fluorescent_nuclei()
    rough = truth.copy()
    rough[5:20, 100:120] = 9  # a blob on plain background
    report = []
    out = correct_mask(image, rough, report=report)
    np.testing.assert_array_equal(out == 9, rough == 9)
    assert {r.label: r.status for r in report}[9] == "no evidence"


def test_object_touching_the_border():
    shape = (60, 60)
    truth = disc(shape, (5, 30), 12)  # cut by the top border
    image = noisy(0.2 + 0.6 * truth, seed=2)
    rough = shifted(truth, 3, 4).astype(np.int32) * 2
    out = correct_mask(image, rough, **FAST)
    assert set(np.unique(out)) == {0, 2}
    assert dice(out == 2, truth) >= 0.93
    assert dice(out == 2, truth) > dice(rough == 2, truth)


def test_3d_eroded_ball():
    z, y, x = np.indices((24, 28, 28))
    truth = (z - 12) ** 2 + (y - 14) ** 2 + (x - 14) ** 2 <= 7**2
    image = noisy(0.2 + 0.6 * truth, seed=5)
    rough = ndi.binary_erosion(truth, iterations=2).astype(np.int32)
    out = correct_mask(image, rough, max_num_iter=100)
    assert dice(rough, truth) < 0.85
    assert dice(out == 1, truth) >= 0.9 and ndi.label(out == 1)[1] == 1


def test_3d_slices_mode_corrects_every_plane_and_keeps_ids():
    """stack_mode="slices": each plane corrected as 2-D objects, ids kept, nothing leaks across planes."""
    z, y, x = np.indices((6, 48, 64))
    truth = np.zeros((6, 48, 64), np.int32)
    truth[(z >= 1) & ((y - 24) ** 2 + (x - 18) ** 2 <= 10**2)] = 3
    truth[(z <= 3) & ((y - 24) ** 2 + (x - 44) ** 2 <= 9**2)] = 8
    image = noisy(0.2 + 0.6 * (truth > 0), seed=6)
    rough = np.stack([erode_each(plane, 3) for plane in truth])
    report = []
    out = correct_mask(image, rough, stack_mode="slices", report=report, max_num_iter=100)
    assert set(np.unique(out)) == {0, 3, 8}
    assert not (out[0] == 3).any() and not (out[4:] == 8).any()  # absent where the given mask is
    assert dice(out > 0, truth > 0) >= 0.93 > dice(rough > 0, truth > 0) + 0.1
    # one report entry per object and plane, with the input's ids
    assert len(report) == int(sum(len(np.unique(p)) - 1 for p in rough))
    assert {r.label for r in report} == {3, 8}
    with pytest.raises(ValueError, match="stack_mode"):
        correct_mask(image, rough, stack_mode="planes")


def test_cli_correct_folder_pairs_masks_skips_done_and_reports_failures(tmp_path, one_disc, capsys):
    """``vptv correct IMAGES... --masks DIR --out DIR``: one output per image, masks found
    by stem, existing outputs skipped, a missing mask reported without stopping the rest."""
    import tifffile

    from napari_vptv.cli import main
    from napari_vptv.core.io.files import read_mask, write_labels

    image, truth = one_disc
    imgs, masks, out = tmp_path / "imgs", tmp_path / "masks", tmp_path / "out"
    imgs.mkdir()
    masks.mkdir()
    for name, (dy, dx) in {"a": (4, -3), "b": (-3, 2)}.items():
        tifffile.imwrite(imgs / f"{name}.tif", image)
        write_labels(masks / f"{name}.png", shifted(truth, dy, dx).astype(np.uint8))
    tifffile.imwrite(imgs / "c.tif", image)  # no mask for c
    args = ["correct", str(imgs), "--masks", str(masks), "--out", str(out), "--max-iter", "150"]
    assert main(args) == 1  # c failed
    text = capsys.readouterr().out
    assert "FAILED" in text and "c.tif" in text and "2 corrected, 0 skipped, 1 failed" in text
    for name in "ab":
        assert dice(read_mask(out / f"{name}.png") > 0, truth) >= 0.9
    before = (out / "a.png").stat().st_mtime_ns
    assert main(["correct", str(imgs / "a.tif")] + args[2:]) == 0  # rerun: skipped, untouched
    assert "0 corrected, 1 skipped" in capsys.readouterr().out
    assert (out / "a.png").stat().st_mtime_ns == before
    assert main(["correct", str(imgs / "a.tif"), "--out", str(out / "x.png")]) != 0  # one path, no --masks


def test_cli_correct_stack_mode_slices(tmp_path):
    """``vptv correct --stack-mode slices`` gives the API's slice-by-slice result."""
    import tifffile

    from napari_vptv.cli import main
    from napari_vptv.core.io.files import read_mask

    z, y, x = np.indices((3, 40, 40))
    truth = np.zeros((3, 40, 40), np.uint8)
    truth[(z >= 1) & ((y - 20) ** 2 + (x - 20) ** 2 <= 9**2)] = 5
    image = noisy(0.2 + 0.6 * (truth > 0), seed=2).astype(np.float32)
    rough = np.stack([erode_each(plane, 2) for plane in truth]).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "mask.tif", rough)
    out = tmp_path / "fixed.tif"
    assert (
        main(
            [
                "correct",
                str(tmp_path / "img.tif"),
                str(tmp_path / "mask.tif"),
                "--out",
                str(out),
                "--stack-mode",
                "slices",
                "--max-iter",
                "100",
            ]
        )
        == 0
    )
    expected = correct_mask(image, rough, stack_mode="slices", max_num_iter=100)
    np.testing.assert_array_equal(read_mask(out), expected)
    assert not (read_mask(out)[0] > 0).any()


def test_rgb_image_and_bool_mask(one_disc):
    _, truth = one_disc
    rgb = np.stack([0.9 - 0.5 * truth, 0.8 - 0.6 * truth, 0.9 - 0.1 * truth], -1)
    rgb = np.clip(rgb + np.random.default_rng(3).normal(0, 0.05, rgb.shape), 0, 1)
    image = (rgb * 255).astype(np.uint8)
    out = correct_mask(image, shifted(truth, -4, 2), channel_axis=-1, **FAST)
    assert out.dtype == np.int32
    assert dice(out == 1, truth) >= 0.95


def test_generator_reports_progress_and_stop(one_disc):
    image, truth = one_disc
    rough = np.zeros(truth.shape, np.int32)
    rough[10:20, 10:20] = 1
    rough[shifted(truth, 2, 2)] = 4
    steps = []
    gen = correct_mask_iter(image, rough, **FAST)
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert steps and steps[-1].done == steps[-1].total and isinstance(steps[0], CorrectionProgress)
    assert set(np.unique(result)) == {0, 1, 4}
    seen = []
    with pytest.raises(InterruptedError):
        correct_mask(image, rough, progress=lambda d, t: seen.append((d, t)), should_stop=lambda: True, **FAST)
    assert len(seen) == 1


def test_semantic_mode_keeps_class_values():
    shape = (60, 60)
    cell = disc(shape, (30, 30), 20)
    nucleus = disc(shape, (30, 30), 9)
    levels = 0.9 - 0.35 * cell - 0.4 * nucleus
    image = noisy(levels, seed=4, sigma=0.05)
    truth = np.where(nucleus, 255, np.where(cell, 128, 0)).astype(np.uint8)
    rough = np.where(shifted(nucleus, 3, 0), 255, np.where(shifted(cell, 0, 3), 128, 0)).astype(np.uint8)
    out = correct_mask(image, rough, mode="semantic", **FAST)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 128, 255}
    assert np.mean(out == truth) > np.mean(rough == truth)
    assert dice(out == 255, nucleus) >= 0.9


@pytest.mark.parametrize(
    "image, mask, match",
    [
        (np.zeros((20, 20)), np.ones((20, 21), int), "shape"),
        (np.zeros((20, 20)), np.zeros((20, 20), int), "empty"),
        (np.zeros((20, 20)), np.full((20, 20), 0.5), "non-integer"),
        (np.full((20, 20), np.nan), np.ones((20, 20), int), "NaN"),
        (np.zeros((20, 20, 3)), np.ones((20, 20), int), "shape"),  # forgot channel_axis
    ],
)
def test_bad_inputs_raise_clear_errors(image, mask, match):
    with pytest.raises(ValueError, match=match):
        correct_mask(image, mask)


def test_bad_parameters_raise():
    image, mask = np.random.default_rng(0).random((20, 20)), np.ones((20, 20), int)
    for kw, match in (
        ({"mode": "x"}, "mode"),
        ({"volume_factor": 0}, "volume_factor"),
        ({"margin": -1}, "margin"),
        ({"evidence": np.ones((3, 3))}, "evidence"),
        ({"volume_mode": "z"}, "volume_mode"),
        ({"band": 0}, "band"),
        ({"area_tolerance": 1.5}, "area_tolerance"),
    ):
        with pytest.raises(ValueError, match=match):
            correct_mask(image, mask, **kw)
    with pytest.raises(ValueError, match="two classes"):
        correct_mask(image, mask, mode="semantic")


def test_integer_valued_float_mask_is_accepted(one_disc):
    image, truth = one_disc
    out = correct_mask(image, truth.astype(np.float32) * 3, **FAST)
    assert set(np.unique(out)) == {0, 3}


# ------------------------------------------------------------------------ widget
def test_widget_writes_new_corrected_layer(viewer_and_widget, one_disc, qtbot):
    from napari_vptv._correct_widget import KIND, METADATA_KEY

    viewer, w = viewer_and_widget
    image, truth = one_disc
    rough = np.zeros(truth.shape, np.int32)
    rough[shifted(truth, 4, 3)] = 2
    viewer.add_image(image, name="cells")
    lab = viewer.add_labels(rough.copy(), name="rough")
    w.reset_choices()
    w.image.value = viewer.layers["cells"]
    w.labels.value = lab
    w.max_iter.value = 150
    worker = w.run()  # threaded, as in the GUI
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=120000)
    out = viewer.layers["rough corrected"]
    assert out is w.output_layer and out is not lab
    assert out.metadata[METADATA_KEY]["kind"] == KIND and out.metadata[METADATA_KEY]["source"] == "rough"
    assert dice(out.data == 2, truth) >= 0.95
    np.testing.assert_array_equal(lab.data, rough)  # input untouched
    # a second run replaces the data of its own layer only
    n_layers = len(viewer.layers)
    w.run(sync=True)
    assert len(viewer.layers) == n_layers and w.output_layer is out


def test_widget_bad_input_is_a_notification(viewer_and_widget):
    from napari.utils.notifications import notification_manager

    viewer, w = viewer_and_widget
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    viewer.add_image(np.zeros((30, 30), np.float32), name="img")
    lab = viewer.add_labels(np.ones((30, 31), np.int32), name="wrong")
    w.reset_choices()
    w.labels.value = lab
    assert w.run(sync=True) is None
    assert any("shape" in m for m in seen)
    assert [layer.name for layer in viewer.layers] == ["img", "wrong"]


def test_cli_correct(tmp_path, one_disc):
    from napari_vptv.cli import main
    from napari_vptv.core.io.files import read_mask, write_labels

    image, truth = one_disc
    img_path, mask_path, out = tmp_path / "img.tif", tmp_path / "rough.png", tmp_path / "fixed.png"
    import tifffile

    tifffile.imwrite(img_path, image)
    write_labels(mask_path, shifted(truth, 4, -3).astype(np.uint8))
    assert (
        main(["correct", str(img_path), str(mask_path), "--out", str(out), "--max-iter", "150", "--mask-weight", "0.4"])
        == 0
    )
    fixed = read_mask(out)
    assert dice(fixed > 0, truth) >= 0.95


def test_widget_settings_remembered(viewer_and_widget, one_disc, make_napari_viewer):
    from napari_vptv._common import settings_path
    from napari_vptv._correct_widget import CorrectMaskWidget

    viewer, w = viewer_and_widget
    image, truth = one_disc
    viewer.add_image(image, name="cells")
    viewer.add_labels(shifted(truth, 2, 2).astype(np.int32), name="rough")
    w.reset_choices()
    w.image.value, w.labels.value = viewer.layers["cells"], viewer.layers["rough"]
    w.epsilon.value, w.tv_weight.value, w.margin.value = 0.02, 0.08, 12
    w.volume_factor.value, w.fill_holes.value, w.max_iter.value = 1.05, False, 60
    assert w.run(sync=True) is not None

    w2 = CorrectMaskWidget(make_napari_viewer())
    assert w2.parameters() == w.parameters()
    assert w2.epsilon.value == pytest.approx(0.02) and w2.margin.value == 12 and w2.fill_holes.value is False

    settings_path("correct_mask").write_text("not json {", encoding="utf-8")
    w3 = CorrectMaskWidget(make_napari_viewer())
    assert w3.epsilon.value == pytest.approx(0.01) and w3.margin.value == 0 and w3.max_iter.value == 300
