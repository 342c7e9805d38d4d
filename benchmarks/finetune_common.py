"""Shared pieces of the fine-tuning benchmarks: the held-out splits and scoring.

The shipped generalist was trained on the training splits of ``wbc`` and ``wbc-d1``;
their validation splits (14 / 40 images, ``split_names(names, n_val, 0)``, listed in
the model's metadata) were never trained on. A benchmark "lab" is one of these
validation splits: ``k`` of its images are the user's corrected pairs, the rest is
the test set; the other source's validation split measures forgetting.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from napari_vptv.nn.predict import predict_cells
from napari_vptv.nn.sources import load_source, split_names
from napari_vptv.nn.train import segmentation_scores

N_VAL = {"wbc": 14, "wbc-d1": 40}
OTHER = {"wbc": "wbc-d1", "wbc-d1": "wbc"}


TARGETS = ("wbc", "wbc-d1", "synthetic:wbc", "synthetic:wbc-d1")


def lab(data_root, target):
    """``(the lab's pairs, the other source's validation split)`` of a benchmark target:
    a source's validation split, or ``synthetic:SOURCE`` (that split under
    :data:`SYNTHETIC_LAB`)."""
    source = target.split(":", 1)[-1]
    pool = validation_split(data_root, source)
    if target.startswith("synthetic:"):
        pool = shifted(pool)
    return pool, validation_split(data_root, OTHER[source])


def validation_split(data_root, name):
    """The source's validation samples (never trained on by the shipped model)."""
    src = load_source(Path(data_root) / name, name, N_VAL[name], 0)
    return list(src.val)


def draw(samples, k, seed):
    """``k`` training pairs drawn with ``seed`` and the rest (the test set)."""
    names = [s.name for s in samples]
    rest, picked = split_names(names, k, seed)
    by = {s.name: s for s in samples}
    return [by[n] for n in picked], [by[n] for n in rest]


def score_network(model, meta, test) -> dict:
    """Pixel accuracy and per-class Dice of the network method (the user's path)."""
    preds = [predict_cells(model, meta, s.image).labels for s in test]
    return _scores(preds, test)


def score_default(model_path, test) -> dict:
    """The default method (image-adapted variational preset) with a model's probabilities."""
    from napari_vptv.api import segment_image

    preds = [segment_image(s.image, model=str(model_path) if model_path else "").labels for s in test]
    return _scores(preds, test)


def _scores(preds, test):
    sc = segmentation_scores(preds, [s.labels for s in test])
    return {
        "pixel_accuracy": sc["pixel_accuracy"],
        "dice": sc["dice"],
        "mean_dice": sc["mean_dice"],
        "n_images": len(test),
    }


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


#: a synthetic new lab: the fixed shifts of :mod:`shifts` composed: a pale tan cytoplasm
#: (class-conditional stain) seen through blurrier optics
SYNTHETIC_LAB = ("cyto-tan", "blur1.5")


def shifted(samples, names=SYNTHETIC_LAB):
    """``samples`` under the composed fixed shifts of :mod:`shifts` (a synthetic new lab)."""
    import shifts as S

    from napari_vptv.nn.sources import Sample, cell_diameter

    out = []
    for s in samples:
        img, lab = s.image, s.labels
        for name in names:
            img, lab = S.apply_shift(name, img, lab)
        out.append(Sample(s.name, img, lab, cell_diameter(lab)))
    return out
