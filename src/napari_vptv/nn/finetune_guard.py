"""The guard of a fine-tuning run: is the new model better than the base on the user's images?

A fine-tuned model is only worth keeping when it beats the base on images it was not
trained on. With a handful of pairs one held-out pair cannot tell two good models
apart, so the check is a *cross-validation*: the pairs are split into ``K`` folds
(:func:`folds`, ``K = min(n, MAX_FOLDS)``), a model is fine-tuned on all folds but one
with the same recipe and budget share, and both it and the base segment the fold left
out. Every pair is scored once, by a model that never saw it.

The score is the user's: the labels of every *method* the model will serve (by
default the network method: diameter estimated, VPTV layer, the nucleus rule; the
API adds the default method, which refits a colour model to the network's
probabilities) against the user's masks, as pixel accuracy and Dice per class. The
fine-tuned model (trained on all pairs afterwards) is kept when, on the mean Dice
over the three classes and the held-out images, it beats the base by more than
:data:`MIN_GAIN` **with every method**: a model that helps the network but not the
default method is not kept.

The gain must hold *beyond one standard error* of the per-image gains (``mean - sd /
sqrt(n)``): on three pairs a mean gain carried by one lucky image is not a gain. On the
second training source, 3 pairs, a model whose three cross-validated images gained 0.57
and 0.22 points on average (default method, network) lost 0.4 points of pixel accuracy
on the other 37 images of that source (``benchmarks/bench_finetune.py``, k = 3, seed 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "MAX_FOLDS",
    "MIN_GAIN",
    "NETWORK_METHOD",
    "GuardScores",
    "Segmenter",
    "folds",
    "assured_gain",
    "per_image_gains",
    "score_pairs",
    "standard_error",
    "verdict",
]

#: at most this many cross-validation folds (each costs one fine-tuning run)
MAX_FOLDS = 3
#: the cross-validated mean Dice must beat the base's by more than this to keep the model
#: (0.2 points: a gain smaller than what a few pairs can measure is not claimed)
MIN_GAIN = 0.002

#: ``segmenter(model, meta, image, device) -> labels (H, W)``: one method run with a loaded model
Segmenter = Callable[..., np.ndarray]


def network_labels(model, meta, image, device: str = "cpu") -> np.ndarray:
    """The network method's labels (:func:`~.predict.predict_cells` with its defaults)."""
    from .predict import predict_cells

    return predict_cells(model, meta, image, device=device).labels


#: the method every check scores when no other is given
NETWORK_METHOD = {"vptv-unet": network_labels}


@dataclass
class GuardScores:
    """Scores of one model on held-out pairs: per-image pixel accuracy and per-class Dice."""

    names: List[str] = field(default_factory=list)
    pixel_accuracy: List[float] = field(default_factory=list)
    dice: List[List[float]] = field(default_factory=list)

    def extend(self, other: "GuardScores") -> None:
        self.names += other.names
        self.pixel_accuracy += other.pixel_accuracy
        self.dice += other.dice

    @property
    def mean_dice(self) -> float:
        return float(np.mean(self.dice)) if self.dice else float("nan")

    def summary(self) -> dict:
        """Means over the images: ``pixel_accuracy``, ``dice`` per class, ``mean_dice``, ``n_images``."""
        if not self.dice:
            return {"n_images": 0}
        return {
            "pixel_accuracy": float(np.mean(self.pixel_accuracy)),
            "dice": [float(x) for x in np.mean(self.dice, axis=0)],
            "mean_dice": self.mean_dice,
            "n_images": len(self.names),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def folds(n: int, seed: int = 0, max_folds: int = MAX_FOLDS) -> List[List[int]]:
    """Indices of ``n`` pairs in ``min(n, max_folds)`` folds of near-equal size (drawn with
    ``seed``); no folds when ``n < 2`` (nothing to hold out)."""
    if n < 2:
        return []
    k = min(n, max_folds)
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in perm[j::k]) for j in range(k)]


def score_pairs(
    model, meta, samples: Sequence, device: str = "cpu", methods: Optional[Mapping[str, Segmenter]] = None
) -> Dict[str, GuardScores]:
    """Each method's labels on ``samples`` against their masks: ``{method: GuardScores}``."""
    from ..core.scoring.metrics import dice_per_class, pixel_accuracy

    out = {}
    for name, segment in (methods or NETWORK_METHOD).items():
        scores = out[name] = GuardScores()
        for s in samples:
            pred = segment(model, meta, s.image, device)
            scores.names.append(s.name)
            scores.pixel_accuracy.append(float(pixel_accuracy(pred, s.labels)))
            scores.dice.append([float(x) for x in dice_per_class(pred, s.labels, 3)])
    return out


def verdict(finetuned: Mapping[str, GuardScores], base: Mapping[str, GuardScores], min_gain: float = MIN_GAIN) -> dict:
    """Is the fine-tuned model better, by every method?

    Returns ``{"better", "gain", "finetuned", "base", "reason", "methods"}``: ``better``
    is True when every method's mean Dice gains more than ``min_gain`` beyond one
    standard error of its per-image gains (:func:`assured_gain`), None when nothing was
    held out; ``gain`` is the mean gain of the method that decides (the lowest assured
    gain); ``within_spread`` says that this mean gain was above ``min_gain`` but not
    beyond its spread;
    ``finetuned`` / ``base`` are the summaries of the first method (the one a user runs
    by default); ``methods`` holds ``{"gain", "standard_error", "image_gains",
    "finetuned", "base"}`` per method.
    """
    names = list(finetuned)
    first = names[0] if names else None
    if first is None or not finetuned[first].dice:
        empty = GuardScores().summary()
        return {
            "better": None,
            "gain": None,
            "finetuned": empty,
            "base": empty,
            "methods": {},
            "reason": "fewer than 2 pairs: nothing to hold out, the gain cannot be measured",
        }
    gains = {m: per_image_gains(finetuned[m], base[m]) for m in names}
    mean = {m: float(gains[m].mean()) for m in names}
    spread = {m: standard_error(gains[m]) for m in names}
    worst = min(names, key=lambda m: mean[m] - spread[m])
    gain = mean[worst]
    better = bool(assured_gain(gains[worst]) > min_gain)
    within_spread = bool(not better and gain > min_gain)
    per_method = "; ".join(
        f"{m}: {finetuned[m].mean_dice:.4f} vs {base[m].mean_dice:.4f} "
        f"(gain {100 * mean[m]:+.2f} ± {100 * spread[m]:.2f} pt)"
        for m in names
    )
    reason = f"cross-validated mean Dice, fine-tuned vs base, on {len(finetuned[first].names)} held-out pair(s): "
    reason += per_method
    if not better:
        state = "no gain beyond the spread of the images" if within_spread else "worse" if gain < 0 else "not better"
        reason += f"; {state} with {worst}"
    return {
        "better": better,
        "gain": gain,
        "within_spread": within_spread,
        "finetuned": finetuned[first].summary(),
        "base": base[first].summary(),
        "reason": reason,
        "methods": {
            m: {
                "gain": mean[m],
                "standard_error": spread[m],
                "image_gains": [float(g) for g in gains[m]],
                "finetuned": finetuned[m].summary(),
                "base": base[m].summary(),
            }
            for m in names
        },
    }


def per_image_gains(finetuned: GuardScores, base: GuardScores) -> np.ndarray:
    """Mean-Dice gain of every held-out image (fine-tuned minus base, the same images)."""
    if finetuned.names != base.names:
        raise ValueError("the fine-tuned and base scores are not on the same held-out images")
    return np.mean(finetuned.dice, axis=1) - np.mean(base.dice, axis=1)


def assured_gain(image_gains) -> float:
    """The mean of the per-image gains less one standard error: the gain the check
    compares with :data:`MIN_GAIN`."""
    image_gains = np.asarray(image_gains, float)
    return float(image_gains.mean() - standard_error(image_gains))


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` (0 for fewer than 2)."""
    values = np.asarray(values, float)
    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
