"""Fine-tuning on a user's own images: the real trainer for a few steps on the
package's sample images (tiny batches), saving / reloading / predicting, refusal of
swapped labels and of broken or foreign model files, the CLI and the napari widget
in a real viewer. No data set needed; models go to a temporary folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_vptv.core.io.samples import load_sample  # noqa: E402
from napari_vptv.nn.finetune import (  # noqa: E402
    FinetuneRecipe,
    describe_verdict,
    finetune,
    samples_from_arrays,
    samples_from_folders,
    save_finetuned,
)
from napari_vptv.nn.sources import mask_to_labels  # noqa: E402
from napari_vptv.nn.weights import load_model, predict_wbc  # noqa: E402
from napari_vptv.user_models import MODELS_DIR_ENV, list_user_models, resolve_model  # noqa: E402

NAMES = ("wbc_001", "wbc_004", "wbc_016")
#: a few real steps on 96 px patches: seconds, not minutes
TINY = {"recipe": FinetuneRecipe(batch=2)}


@pytest.fixture(autouse=True)
def models_dir(tmp_path, monkeypatch):
    """User models go to a fresh folder per test, never to the user's real one."""
    path = tmp_path / "models"
    monkeypatch.setenv(MODELS_DIR_ENV, str(path))
    torch.set_num_threads(1)
    return path


@pytest.fixture(scope="module")
def pairs():
    out = []
    for n in NAMES:
        image, mask = load_sample(n)
        out.append((image[..., :3], mask_to_labels(mask)))
    return out


@pytest.fixture(scope="module")
def tuned(pairs):
    """One real fine-tune of the U-net kept whatever the check says: 3 steps per training."""
    samples = samples_from_arrays([p[0] for p in pairs], [p[1] for p in pairs], NAMES)
    progress = []
    result = finetune(samples, base="unet", steps=3, seed=0, callback=progress.append, keep="always", **TINY)
    return result, progress


def test_finetune_changes_weights_and_reports_progress(tuned):
    result, progress = tuned
    base, _ = load_model("unet")
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, result.state_dict[k])]
    assert changed, "fine-tuning left every weight unchanged"
    # 3 pairs: 3 cross-validation trainings, then the final one, 3 steps each
    assert [p.phase for p in progress] == ["check 1/3"] * 3 + ["check 2/3"] * 3 + ["check 3/3"] * 3 + ["final"] * 3
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(np.isfinite(p.loss) for p in progress)
    assert not result.cancelled and result.kept


def test_every_pair_is_scored_once_by_a_model_that_never_saw_it(tuned):
    result, _ = tuned
    ft = result.metadata["finetune"]
    held = [n for fold in ft["folds"] for n in fold["held_out"]]
    assert sorted(held) == sorted(NAMES)
    v = ft["verdict"]
    assert v["finetuned"]["n_images"] == v["base"]["n_images"] == 3
    assert sorted(v["per_image"]["vptv-unet"]["finetuned"]["names"]) == sorted(NAMES)
    # the numbers the front ends print are the metadata's
    assert result.val_score == v["finetuned"]["mean_dice"] and result.base_val_score == v["base"]["mean_dice"]
    assert f"{v['finetuned']['mean_dice']:.3f}" in describe_verdict(result)


def test_weight_interpolation_is_the_midpoint_and_keeps_counters(pairs):
    from napari_vptv.nn.finetune_loop import interpolate_weights

    base, _ = load_model("unet")
    samples = samples_from_arrays([p[0] for p in pairs[:2]], [p[1] for p in pairs[:2]], NAMES[:2])
    full = finetune(samples, base="unet", steps=2, keep="always", recipe=FinetuneRecipe(batch=2, interpolation=1.0))
    half = finetune(samples, base="unet", steps=2, keep="always", recipe=FinetuneRecipe(batch=2, interpolation=0.5))
    sb = base.state_dict()
    moved = 0
    for name, w in full.state_dict.items():
        if w.is_floating_point():
            torch.testing.assert_close(half.state_dict[name], (sb[name] + w) / 2)
            moved += int(not torch.equal(w, sb[name]))
        else:
            assert torch.equal(half.state_dict[name], w)
    assert moved
    interpolate_weights(base, base, 0.3)  # a model averaged with itself is unchanged
    assert all(torch.equal(v, sb[k]) for k, v in base.state_dict().items())
    with pytest.raises(ValueError, match="interpolation"):
        finetune(samples, base="unet", steps=1, recipe=FinetuneRecipe(interpolation=0.0))


def _scores(*mean_dice):
    from napari_vptv.nn.finetune_guard import GuardScores

    return GuardScores(
        names=[f"p{i}" for i in range(len(mean_dice))],
        pixel_accuracy=list(mean_dice),
        dice=[[d, d, d] for d in mean_dice],
    )


def test_the_check_keeps_a_model_only_if_every_method_gains():
    from napari_vptv.nn.finetune_guard import MIN_GAIN, verdict

    base = {"vptv-adapted": _scores(0.90, 0.90), "vptv-unet": _scores(0.90, 0.90)}
    both_better = {"vptv-adapted": _scores(0.92, 0.92), "vptv-unet": _scores(0.93, 0.93)}
    v = verdict(both_better, base)
    assert v["better"] and v["gain"] == pytest.approx(0.02)  # the smaller gain decides
    assert v["finetuned"]["mean_dice"] == pytest.approx(0.92)  # the first method is the one reported first
    # a large network gain does not excuse a loss with the default method
    network_only = {"vptv-adapted": _scores(0.89, 0.90), "vptv-unet": _scores(0.99, 0.99)}
    v = verdict(network_only, base)
    assert v["better"] is False and "worse with vptv-adapted" in v["reason"]
    assert v["methods"]["vptv-adapted"]["gain"] == pytest.approx(-0.005) == v["gain"]
    # a gain too small to measure with one method is not enough either
    barely = {"vptv-adapted": _scores(0.90 + MIN_GAIN / 2, 0.90 + MIN_GAIN / 2), "vptv-unet": _scores(0.95, 0.95)}
    v = verdict(barely, base)
    assert v["better"] is False and "not better with vptv-adapted" in v["reason"]


def test_the_api_checks_the_default_method_too(pairs):
    import napari_vptv
    from napari_vptv.finetuning import CHECKED_METHODS

    samples = samples_from_arrays([p[0] for p in pairs[:2]], [p[1] for p in pairs[:2]], NAMES[:2])
    result = napari_vptv.finetune(samples, base="vptv-unet", steps=1, keep="always", **TINY)
    v = result.metadata["finetune"]["verdict"]
    assert list(v["methods"]) == list(CHECKED_METHODS)
    for m in CHECKED_METHODS:
        assert v["methods"][m]["base"]["n_images"] == 2
    # the default method is not the network: its scores are its own
    assert v["methods"]["vptv-adapted"]["base"] != v["methods"]["vptv-unet"]["base"]
    text = describe_verdict(result)
    assert "vptv-adapted: mean Dice" in text and "vptv-unet: mean Dice" in text
    assert text.count(" ± ") == 2  # each method's gain with its spread over the images


def _recording(meta):
    """A copy of ``meta`` that records the top-level keys read from it."""
    seen = set()

    class Recording(dict):
        def __getitem__(self, k):
            seen.add(k)
            return super().__getitem__(k)

        def get(self, k, default=None):
            seen.add(k)
            return super().get(k, default)

    return Recording(meta), seen


@pytest.mark.parametrize("base", ["unet", "vptv-unet"])
def test_no_field_the_inference_path_reads_is_lost(base, pairs, tmp_path):
    """Every metadata field the base's inference reads has the same value in a saved
    fine-tuned model (a lost ``input_norm`` once fed raw colours to a white-point model)."""
    from napari_vptv.nn.predict import predict_cells
    from napari_vptv.nn.weights import _build

    model, meta = load_model(base)
    rec, seen = _recording(meta)
    _build(rec)
    for prior in (None, "pooled", "training-average"):
        predict_cells(model, rec, pairs[0][0], prior=prior)
    assert {"arch", "input_norm", "defaults"} <= seen
    samples = samples_from_arrays([p[0] for p in pairs[:2]], [p[1] for p in pairs[:2]], NAMES[:2])
    result = finetune(samples, base=base, steps=1, keep="always", **TINY)
    _, saved = load_model(save_finetuned(result, tmp_path / "m.pt"))
    for key in seen:
        assert saved.get(key) == meta.get(key), key


def test_a_model_that_is_not_better_is_not_kept(pairs):
    # a learning rate far too high wrecks the network in a few steps
    samples = samples_from_arrays([p[0] for p in pairs], [p[1] for p in pairs], NAMES)
    result = finetune(samples, base="unet", steps=3, lr=0.09, **TINY)
    assert not result.kept and result.verdict["better"] is False
    assert result.val_score < result.base_val_score
    assert describe_verdict(result).startswith("NOT better")
    with pytest.raises(ValueError, match="nothing to save"):
        save_finetuned(result, "x.pt")


def test_a_base_kept_can_be_saved_as_the_base_itself(pairs, tmp_path):
    samples = samples_from_arrays([p[0] for p in pairs], [p[1] for p in pairs], NAMES)
    result = finetune(samples, base="unet", steps=3, lr=0.09, **TINY)
    assert not result.kept
    path = save_finetuned(result, tmp_path / "m.pt", base_if_not_better=True)
    saved, meta = load_model(path)
    base, base_meta = load_model("unet")
    for (name, a), b in zip(saved.state_dict().items(), base.state_dict().values()):
        assert torch.equal(a, b), name
    assert meta["finetune"]["weights"].startswith("the base's")
    assert meta["finetune"]["verdict"]["better"] is False
    assert meta["input_norm"] == base_meta["input_norm"]
    assert "holds its weights, unchanged" in describe_verdict(result, base_saved_as=path)
    cancelled = finetune(samples, base="unet", steps=50, should_stop=lambda: True, **TINY)
    with pytest.raises(ValueError, match="nothing to save"):
        save_finetuned(cancelled, tmp_path / "c.pt", base_if_not_better=True)


def test_one_pair_cannot_be_checked(pairs):
    samples = samples_from_arrays([pairs[0][0]], [pairs[0][1]], NAMES[:1])
    result = finetune(samples, base="unet", steps=1, **TINY)
    assert not result.kept and result.verdict["better"] is None
    assert "2 or more pairs" in describe_verdict(result)


def test_the_time_budget_is_used_and_cancel_keeps_nothing(pairs):
    samples = samples_from_arrays([p[0] for p in pairs[:2]], [p[1] for p in pairs[:2]], NAMES[:2])
    progress = []
    result = finetune(samples, base="unet", minutes=0.1, keep="always", callback=progress.append, **TINY)
    assert result.kept and not result.cancelled
    assert progress[-1].phase == "final" and progress[-1].fraction > 0.9
    stop = finetune(samples, base="unet", steps=50, should_stop=lambda: True, **TINY)
    assert stop.cancelled and not stop.kept and describe_verdict(stop).startswith("cancelled")


@pytest.mark.parametrize("lr", [0.0, 1e6, float("nan")])
def test_bad_learning_rate_is_refused(pairs, lr):
    samples = samples_from_arrays([pairs[0][0]], [pairs[0][1]], NAMES[:1])
    with pytest.raises(ValueError, match="learning rate"):
        finetune(samples, base="unet", steps=1, lr=lr, **TINY)


def test_a_model_producing_nan_is_refused(pairs):
    from napari_vptv.nn.finetune import _check_finite
    from napari_vptv.nn.finetune_data import samples_from_arrays as arrays

    model, meta = load_model("unet")
    samples = arrays([pairs[0][0]], [pairs[0][1]])
    _check_finite(model, meta, samples, "cpu")  # the shipped model is fine
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        _check_finite(model, meta, samples, "cpu")


def test_saved_model_reloads_and_predicts(tuned, pairs, tmp_path):
    result, _ = tuned
    path = save_finetuned(result, tmp_path / "lab.pt")
    model, meta = load_model(path)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], result.state_dict[k]) for k in sd)
    assert meta["finetune"]["final"]["steps"] == 3 and meta["weights_sha256"]
    labels, prob = predict_wbc(pairs[0][0], method=str(path))
    assert labels.shape == pairs[0][1].shape and prob.shape == (3,) + labels.shape
    assert (labels == pairs[0][1]).mean() > 0.8  # 3 tiny steps from a good model stay good
    with pytest.raises(FileExistsError, match="exists"):
        save_finetuned(result, path)  # never replaced without asking
    save_finetuned(result, path, overwrite=True)
    load_model(path)


def test_the_default_method_uses_a_fine_tuned_model(tuned, pairs, tmp_path):
    from napari_vptv.api import segment_image

    path = save_finetuned(tuned[0], tmp_path / "lab.pt")
    res = segment_image(pairs[0][0], model=str(path))
    assert res.info["network"] == str(path) and res.info["colour_model"] == "refitted on this image"
    assert segment_image(pairs[0][0]).info["network"] == "unet"


def test_user_model_name_resolves(tuned, models_dir):
    result, _ = tuned
    assert list_user_models() == []
    save_finetuned(result, models_dir / "my-lab.pt")
    assert list_user_models() == ["my-lab"]
    assert resolve_model("my-lab") == str(models_dir / "my-lab.pt")
    assert resolve_model("unet") == "unet"
    with pytest.raises(ValueError, match="my-lab"):
        resolve_model("nope")


def test_swapped_labels_are_refused(pairs):
    swap = np.array([0, 2, 1])  # nucleus and cytoplasm exchanged
    samples = samples_from_arrays([p[0] for p in pairs], [swap[p[1]] for p in pairs], NAMES)
    with pytest.raises(ValueError, match="swapped"):
        finetune(samples, base="unet", steps=2, **TINY)


@pytest.mark.parametrize("content", [b"not a model", None])
def test_broken_or_foreign_model_file_is_a_clear_error(tmp_path, tuned, content):
    if content is None:  # a foreign state dict with a made-up metadata file
        path = tmp_path / "foreign.pt"
        torch.save({"conv.weight": torch.zeros(2, 2)}, path)
        from napari_vptv.nn.weights import _sha256

        path.with_suffix(".json").write_text(json.dumps({"arch": "unet", "unet": {}, "weights_sha256": _sha256(path)}))
    else:  # a saved model whose weights file was damaged afterwards
        path = save_finetuned(tuned[0], tmp_path / "broken.pt")
        path.write_bytes(content)
    with pytest.raises(RuntimeError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg


def test_bad_pairs_are_named(pairs):
    image, mask = pairs[0]
    with pytest.raises(ValueError, match="shape"):
        samples_from_arrays([image], [mask[:10]])
    with pytest.raises(ValueError, match=r"labels 0\.\.2"):
        samples_from_arrays([image], [mask * 7])
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        samples_from_arrays([image, image], [mask])


def test_pairs_are_read_by_the_rules_every_command_uses(pairs, tmp_path):
    """Float masks 0 / 0.5 / 1 keep their cytoplasm, colour masks are refused (never read
    from the red channel), a 16-bit image gives the 8-bit image's pixels, and a stem with
    two masks is refused."""
    import imageio.v3 as iio

    image, labels = pairs[0]
    (s,) = samples_from_arrays([image], [labels / 2.0])
    np.testing.assert_array_equal(s.labels, labels)
    (s16,) = samples_from_arrays([image.astype(np.uint16) * 257], [labels])
    np.testing.assert_array_equal(s16.image, image)
    colour = np.stack([labels * 100, labels * 50, labels], -1).astype(np.uint8)
    with pytest.raises(ValueError, match="channel"):
        samples_from_arrays([image], [colour])
    imgs, masks = tmp_path / "i", tmp_path / "m"
    imgs.mkdir()
    masks.mkdir()
    iio.imwrite(imgs / "003.png", image)
    iio.imwrite(masks / "003.png", labels.astype(np.uint8))
    iio.imwrite(masks / "003.tif", labels.astype(np.uint8))
    with pytest.raises(ValueError, match="two masks"):
        samples_from_folders(imgs, masks)


def test_cli_finetune_then_segment_with_the_model(tmp_path, models_dir, capsys):
    import imageio.v3 as iio

    from napari_vptv.cli import main

    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for n in NAMES[:2]:
        image, mask = load_sample(n)
        iio.imwrite(imgs / f"{n}.png", image[..., :3])
        iio.imwrite(masks / f"{n}.png", np.asarray(mask, dtype=np.uint8))
    (imgs / "._x.png").write_bytes(b"resource fork")  # a hidden file is not a training image
    assert len(samples_from_folders(imgs, masks)) == 2
    args = [
        "finetune",
        "--images",
        str(imgs),
        "--masks",
        str(masks),
        "--name",
        "cli-model",
        "--base",
        "unet",
        "--steps",
        "2",
        "--threads",
        "1",
        "--keep-anyway",
    ]
    assert main(args) == 0
    assert list_user_models() == ["cli-model"]
    assert main(args[:-1] + ["--name", "x", "--lr", "1e6"]) == 2  # refused before training
    assert main(args[:-1] + ["--name", "x", "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(args) == 2  # exists: refused
    assert main(args + ["--overwrite"]) == 0
    out = tmp_path / "seg"
    assert (
        main(["segment", str(imgs / f"{NAMES[0]}.png"), "--out", str(out), "--model", "cli-model", "--no-progress"])
        == 0
    )
    assert any(out.iterdir())


def test_cli_finetune_not_better_writes_the_base_or_nothing(tmp_path, models_dir, capsys):
    import imageio.v3 as iio

    from napari_vptv.cli import main

    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for n in NAMES:
        image, mask = load_sample(n)
        iio.imwrite(imgs / f"{n}.png", image[..., :3])
        iio.imwrite(masks / f"{n}.png", np.asarray(mask, dtype=np.uint8))
    # a learning rate far too high wrecks the network: the check keeps the base
    args = ["finetune", "--images", str(imgs), "--masks", str(masks), "--base", "unet", "--steps", "3"]
    args += ["--threads", "1", "--lr", "0.09"]
    assert main(args + ["--out", str(tmp_path / "none.pt"), "--no-base-copy"]) == 0
    assert "not saved" in capsys.readouterr().out and not (tmp_path / "none.pt").exists()
    assert main(args + ["--out", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "did not help" in out and "holds its weights, unchanged" in out
    saved, meta = load_model(tmp_path / "m.pt")
    base, _ = load_model("unet")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), base.state_dict().values()))
    assert meta["finetune"]["verdict"]["better"] is False


def test_cli_bad_model_is_one_line(tmp_path, capsys):
    from napari_vptv.cli import main

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"junk")
    img = tmp_path / "a.png"
    import imageio.v3 as iio

    iio.imwrite(img, load_sample(NAMES[0])[0][..., :3])
    assert main(["segment", str(img), "--out", str(tmp_path / "o"), "--model", str(bad), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "x.pt" in err[-1]


# --------------------------------------------------------------------------- widget
def _viewer_with_pairs(make_napari_viewer):
    viewer = make_napari_viewer()
    for n in NAMES:
        image, mask = load_sample(n)
        viewer.add_image(image[..., :3], name=n, rgb=True)
        viewer.add_labels(mask_to_labels(mask).astype(np.int32), name=f"{n} corrected")
    return viewer


def _select_pairs(widget):
    from napari_vptv._finetune_widget import pair_choices

    chosen = [d for _, d in pair_choices(widget.viewer.layers) if d[1].name == f"{d[0].name} corrected"]
    assert len(chosen) == 3
    widget.pairs.value = chosen


def _open_widget(viewer):
    """The widget as napari opens it from the Plugins menu (with a proxy of the viewer)."""
    _, w = viewer.window.add_plugin_dock_widget("napari-vptv", "Train on my images")
    return w


def test_widget_trains_and_the_model_is_offered(make_napari_viewer, qtbot):
    from qtpy.QtCore import QTimer

    viewer = _viewer_with_pairs(make_napari_viewer)
    w = _open_widget(viewer)
    _select_pairs(w)
    w.model_name.value, w.minutes.value = "lab-a", 0.1
    w.base.value = "unet"
    w.keep_anyway.value = True
    w.train_options = {"steps": 3, **TINY}
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(50)
    assert w.train() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=600000)
    timer.stop()
    assert ticks, "the event loop did not run during training"
    assert w.saved_path is not None and w.saved_path.is_file(), w.status.value
    assert list_user_models() == ["lab-a"]
    assert w.phases == ["check 1/3"] * 3 + ["check 2/3"] * 3 + ["check 3/3"] * 3 + ["final"] * 3
    assert w.progress.value == w.progress.max == 100
    assert "saved 'lab-a'" in w.status.value
    # the status shows the numbers stored in the model's metadata
    model, meta = load_model(w.saved_path)
    assert f"{meta['finetune']['verdict']['finetuned']['mean_dice']:.3f}" in w.status.value
    assert meta["finetune"]["images"][0]["name"] == f"{NAMES[0]} corrected"
    assert "lab-a" in w.base.choices  # offered to continue training
    # the same name again is refused before any training
    assert w.train() is None and "exists" in w.status.value


def test_widget_cancel_saves_nothing(make_napari_viewer, qtbot):
    viewer = _viewer_with_pairs(make_napari_viewer)
    w = _open_widget(viewer)
    _select_pairs(w)
    w.model_name.value, w.minutes.value = "lab-b", 30.0
    w.base.value = "unet"
    w.train_options = {"steps": 500, **TINY}
    w.train()
    qtbot.waitUntil(lambda: len(w.losses) >= 1, timeout=600000)
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=600000)
    assert w.result is not None and w.result.cancelled and not w.result.kept
    assert w.saved_path is None and list_user_models() == []
    assert "cancelled" in w.status.value and w.progress.value < 100


def test_a_gain_carried_by_one_image_is_not_a_gain():
    from napari_vptv.nn.finetune_guard import MIN_GAIN, verdict

    base = {"vptv-unet": _scores(0.90, 0.90, 0.90)}
    # +0.5 pt on average, but one image gained 3 pt while the other two lost
    lucky = {"vptv-unet": _scores(0.93, 0.8975, 0.8875)}
    v = verdict(lucky, base)
    assert v["gain"] == pytest.approx(0.005) and v["gain"] > MIN_GAIN
    assert v["better"] is False and "spread" in v["reason"]
    assert v["methods"]["vptv-unet"]["image_gains"] == pytest.approx([0.03, -0.0025, -0.0125])
    # the same mean gain on every image is a gain
    steady = {"vptv-unet": _scores(0.905, 0.905, 0.905)}
    assert verdict(steady, base)["better"] is True
