"""The guard of a fine-tuning run: is the new model better than the base on the user's images?

A fine-tuned model is only worth keeping when it beats the base on images it was not
trained on. With a handful of pairs one held-out pair cannot tell two good models
apart, so the check is a *cross-validation*: the pairs are split into ``K`` folds
(:func:`folds`, ``K = min(n, MAX_FOLDS)``), a model is fine-tuned on all folds but one
with the same recipe and budget share, and both it and the base segment the fold left
out. Every pair is scored once, by a model that never saw it. The fine-tuned model
(trained on all pairs afterwards) is kept when the cross-validated score beats the
base's by more than :data:`MIN_GAIN`.

The score is the user's: the labels of the network method (diameter estimated,
VPTV layer, the nucleus rule) against the user's masks, as pixel accuracy and Dice
per class; the decision uses the mean Dice over the three classes and images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Sequence

import numpy as np

__all__ = ["MAX_FOLDS", "MIN_GAIN", "GuardScores", "folds", "score_pairs", "verdict"]

#: at most this many cross-validation folds (each costs one fine-tuning run)
MAX_FOLDS = 3
#: the cross-validated mean Dice must beat the base's by more than this to keep the model
#: (0.2 points: a gain smaller than what a few pairs can measure is not claimed)
MIN_GAIN = 0.002


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
        return {"pixel_accuracy": float(np.mean(self.pixel_accuracy)),
                "dice": [float(x) for x in np.mean(self.dice, axis=0)], "mean_dice": self.mean_dice,
                "n_images": len(self.names)}

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


def score_pairs(model, meta, samples: Sequence, device: str = "cpu") -> GuardScores:
    """The network method's labels on ``samples`` against their masks."""
    from ..core.metrics import dice_per_class, pixel_accuracy
    from .predict import predict_cells

    out = GuardScores()
    for s in samples:
        pred = predict_cells(model, meta, s.image, device=device).labels
        out.names.append(s.name)
        out.pixel_accuracy.append(float(pixel_accuracy(pred, s.labels)))
        out.dice.append([float(x) for x in dice_per_class(pred, s.labels, 3)])
    return out


def verdict(finetuned: GuardScores, base: GuardScores, min_gain: float = MIN_GAIN) -> dict:
    """``{"better": bool, "gain": mean Dice difference, "finetuned": summary, "base": summary}``;
    ``better`` is None when nothing was held out."""
    if not finetuned.dice:
        return {"better": None, "gain": None, "finetuned": finetuned.summary(), "base": base.summary(),
                "reason": "fewer than 2 pairs: nothing to hold out, the gain cannot be measured"}
    gain = finetuned.mean_dice - base.mean_dice
    better = bool(gain > min_gain)
    reason = (f"cross-validated mean Dice {finetuned.mean_dice:.4f} against the base's {base.mean_dice:.4f} "
              f"on {len(finetuned.names)} held-out pair(s)")
    return {"better": better, "gain": float(gain), "finetuned": finetuned.summary(), "base": base.summary(),
            "reason": reason}
