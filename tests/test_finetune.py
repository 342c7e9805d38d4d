"""Fine-tuning on a user's own images: the real trainer for a few steps on the
package's sample images (tiny batches), saving / reloading / predicting, refusal of
swapped labels and of broken or foreign model files, the CLI and the napari widget
in a real viewer. No data set needed; models go to a temporary folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_vptv.core.samples import load_sample  # noqa: E402
from napari_vptv.nn.finetune import (  # noqa: E402
    finetune,
    samples_from_arrays,
    samples_from_folders,
    save_finetuned,
)
from napari_vptv.nn.sources import mask_to_labels  # noqa: E402
from napari_vptv.nn.weights import load_model, predict_wbc  # noqa: E402
from napari_vptv.user_models import MODELS_DIR_ENV, list_user_models, resolve_model  # noqa: E402

NAMES = ("wbc_001", "wbc_004", "wbc_016")
TINY = {"batch": 2}  # a few real steps on 96 px patches: seconds, not minutes


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
    """One real fine-tune of the U-net: 3 steps, one pair held out."""
    samples = samples_from_arrays([p[0] for p in pairs], [p[1] for p in pairs], NAMES)
    steps = []
    result = finetune(samples, base="unet", steps=3, seed=0, callback=lambda *a: steps.append(a), **TINY)
    return result, steps


def test_finetune_changes_weights_and_keeps_the_best(tuned):
    result, steps = tuned
    base, _ = load_model("unet")
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, result.state_dict[k])]
    assert changed, "fine-tuning left every weight unchanged"
    assert [s[0] for s in steps] == [1, 2, 3] and all(s[1] == 3 for s in steps)
    assert all(np.isfinite(s[2]) for s in steps)
    ft = result.metadata["finetune"]
    held = [im for im in ft["images"] if im["role"] == "validation"]
    assert len(held) == 1 and len(ft["images"]) == 3
    assert result.val_score == max(s[3] for s in steps if s[3] is not None)
    assert ft["best_step"] in (1, 2, 3) and ft["steps_done"] == 3 and not result.stopped


def test_metadata_names_base_images_and_user_prior(tuned, pairs):
    result, _ = tuned
    meta = result.metadata
    ft = meta["finetune"]
    assert ft["base"]["model"] == "unet" and len(ft["base"]["weights_sha256"]) == 64
    assert [im["name"] for im in ft["images"]] == list(NAMES)
    assert all(len(im["image_sha256"]) == 64 and len(im["mask_sha256"]) == 64 for im in ft["images"])
    # the volume prior is the class fractions of the user's training masks
    train = [p[1] for n, p in zip(NAMES, pairs) if n in meta["sources"][0]["train_ids"]]
    expect = np.mean([np.bincount(t.ravel(), minlength=3) / t.size for t in train], axis=0)
    np.testing.assert_allclose(meta["volume_priors_pooled"]["mean"], expect)
    assert meta["volume_priors_pooled"]["n_images"] == 2


def test_saved_model_reloads_and_predicts(tuned, pairs, tmp_path):
    result, _ = tuned
    path = save_finetuned(result, tmp_path / "lab.pt")
    model, meta = load_model(path)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], result.state_dict[k]) for k in sd)
    assert meta["finetune"]["steps_done"] == 3 and meta["weights_sha256"]
    labels, prob = predict_wbc(pairs[0][0], method=str(path))
    assert labels.shape == pairs[0][1].shape and prob.shape == (3,) + labels.shape
    assert (labels == pairs[0][1]).mean() > 0.8  # 3 tiny steps from a good model stay good
    with pytest.raises(FileExistsError, match="exists"):
        save_finetuned(result, path)  # never replaced without asking
    save_finetuned(result, path, overwrite=True)
    load_model(path)


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


def test_training_on_swapped_labels_is_flagged_by_its_validation_score(pairs):
    swap = np.array([0, 2, 1])
    samples = samples_from_arrays([p[0] for p in pairs], [swap[p[1]] for p in pairs], NAMES)
    result = finetune(samples, base="unet", steps=2, check_labels=False, **TINY)
    assert result.val_score < 0.7
    assert any("check that the masks use 0 = background" in w for w in result.warnings)


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
    with pytest.raises(ValueError, match="0/1/2"):
        samples_from_arrays([image], [mask * 7])
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        samples_from_arrays([image, image], [mask])


def test_cli_finetune_then_segment_with_the_model(tmp_path, models_dir):
    import imageio.v3 as iio

    from napari_vptv.cli import main

    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for n in NAMES[:2]:
        image, mask = load_sample(n)
        iio.imwrite(imgs / f"{n}.png", image[..., :3])
        iio.imwrite(masks / f"{n}.png", np.asarray(mask, dtype=np.uint8))
    assert len(samples_from_folders(imgs, masks)) == 2
    args = ["finetune", "--images", str(imgs), "--masks", str(masks), "--name", "cli-model", "--base", "unet",
            "--steps", "2", "--threads", "1"]
    assert main(args) == 0
    assert list_user_models() == ["cli-model"]
    assert main(args) == 2  # exists: refused
    assert main(args + ["--overwrite"]) == 0
    out = tmp_path / "seg"
    assert main(["segment", str(imgs / f"{NAMES[0]}.png"), "--out", str(out), "--model", "cli-model",
                 "--no-progress"]) == 0
    assert any(out.iterdir())


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


def test_widget_trains_and_the_model_is_offered(make_napari_viewer, qtbot):
    from qtpy.QtCore import QTimer

    from napari_vptv._finetune_widget import FinetuneWidget

    viewer = _viewer_with_pairs(make_napari_viewer)
    w = FinetuneWidget(viewer)
    _select_pairs(w)
    w.model_name.value, w.minutes.value = "lab-a", 0.1
    w.base.value = "unet"
    w.train_options = {"batch": 2, "steps": 3}
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
    assert [x[0] for x in w.val_scores] == [1, 2, 3] and len(w.losses) == 3
    assert w.progress.value == w.progress.max == 3
    assert "saved 'lab-a'" in w.status.value
    model, meta = load_model(w.saved_path)
    assert meta["finetune"]["images"][0]["name"] == f"{NAMES[0]} corrected"
    assert "lab-a" in w.base.choices  # offered to continue training
    # the same name again is refused before any training
    w.train_options = {"batch": 2, "steps": 2}
    assert w.train() is None and "exists" in w.status.value


def test_widget_cancel_keeps_the_best_model_so_far(make_napari_viewer, qtbot):
    from napari_vptv._finetune_widget import FinetuneWidget

    viewer = _viewer_with_pairs(make_napari_viewer)
    w = FinetuneWidget(viewer)
    _select_pairs(w)
    w.model_name.value, w.minutes.value = "lab-b", 30.0
    w.base.value = "unet"
    w.train_options = {"batch": 2, "steps": 500}
    w.train()
    qtbot.waitUntil(lambda: len(w.losses) >= 1, timeout=600000)
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=600000)
    assert w.result is not None and w.result.stopped
    ft = w.result.metadata["finetune"]
    assert ft["steps_done"] < 500 and ft["best_step"] is not None
    assert w.saved_path.is_file() and list_user_models() == ["lab-b"]
    assert "best model kept" in w.status.value
