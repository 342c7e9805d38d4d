"""Segmentation quality metrics (numpy only).

The VPTV paper reports *pixel accuracy*: the fraction of pixels whose label
equals the ground truth. Dice per class and the class-fraction ("volume")
error are added because volume preservation is what the method is about.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

__all__ = [
    "pixel_accuracy",
    "dice_per_class",
    "class_fractions",
    "volume_error",
    "evaluate",
    "summarize",
]


def _as_labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.intp)
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)):
            return a.astype(np.intp)
        raise ValueError(f"{name} must be an integer label array; got dtype {a.dtype}.")
    return a


def _check_pair(labels, truth):
    labels = _as_labels(labels, "labels")
    truth = _as_labels(truth, "truth")
    if labels.shape != truth.shape:
        raise ValueError(f"labels and truth must have the same shape; got {labels.shape} and {truth.shape}.")
    if labels.size == 0:
        raise ValueError("labels and truth are empty.")
    return labels, truth


def _n_classes(n_classes: Optional[int], *arrays: np.ndarray) -> int:
    top = max(int(a.max()) for a in arrays) + 1
    if n_classes is None:
        return top
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1; got {n_classes}.")
    if top > n_classes:
        raise ValueError(f"labels contain class {top - 1}, which is not below n_classes={n_classes}.")
    return int(n_classes)


def _check_nonneg(*arrays: np.ndarray) -> None:
    for a in arrays:
        if a.min() < 0:
            raise ValueError(f"labels must be non-negative; got minimum {a.min()}.")


def pixel_accuracy(labels, truth) -> float:
    """Fraction of pixels whose label equals the ground truth (in [0, 1])."""
    labels, truth = _check_pair(labels, truth)
    return float(np.mean(labels == truth))


def class_fractions(labels, n_classes: Optional[int] = None) -> np.ndarray:
    """Fraction of pixels in each class ``0 .. n_classes-1`` (sums to 1).

    ``n_classes`` defaults to ``labels.max() + 1``.
    """
    labels = _as_labels(labels, "labels")
    if labels.size == 0:
        raise ValueError("labels is empty.")
    _check_nonneg(labels)
    k = _n_classes(n_classes, labels)
    counts = np.bincount(labels.ravel().astype(np.intp), minlength=k)
    return counts / labels.size


def dice_per_class(labels, truth, n_classes: Optional[int] = None) -> np.ndarray:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of each class.

    A class absent from both ``labels`` and ``truth`` gets Dice 1 (nothing to
    find, nothing found), so the result never contains NaN.
    ``n_classes`` defaults to ``max(labels.max(), truth.max()) + 1``.
    """
    labels, truth = _check_pair(labels, truth)
    _check_nonneg(labels, truth)
    k = _n_classes(n_classes, labels, truth)
    pred = labels.ravel().astype(np.intp)
    t = truth.ravel().astype(np.intp)
    n_pred = np.bincount(pred, minlength=k).astype(np.float64)
    n_true = np.bincount(t, minlength=k).astype(np.float64)
    inter = np.bincount(t[pred == t], minlength=k).astype(np.float64)
    denom = n_pred + n_true
    dice = np.ones(k, dtype=np.float64)
    nz = denom > 0
    dice[nz] = 2.0 * inter[nz] / denom[nz]
    return dice


def volume_error(labels, truth, n_classes: Optional[int] = None) -> np.ndarray:
    """Absolute difference of the class fractions, per class."""
    labels, truth = _check_pair(labels, truth)
    _check_nonneg(labels, truth)
    k = _n_classes(n_classes, labels, truth)
    return np.abs(class_fractions(labels, k) - class_fractions(truth, k))


def evaluate(labels, truth, n_classes: Optional[int] = None) -> Dict[str, object]:
    """All metrics of one image, as a dict for :func:`summarize`.

    Keys: ``accuracy`` (float), ``dice`` (array per class), ``mean_dice``
    (float), ``volume_error`` (array per class), ``fractions`` and
    ``truth_fractions`` (arrays per class).
    """
    labels, truth = _check_pair(labels, truth)
    _check_nonneg(labels, truth)
    k = _n_classes(n_classes, labels, truth)
    dice = dice_per_class(labels, truth, k)
    return {
        "accuracy": pixel_accuracy(labels, truth),
        "dice": dice,
        "mean_dice": float(dice.mean()),
        "volume_error": volume_error(labels, truth, k),
        "fractions": class_fractions(labels, k),
        "truth_fractions": class_fractions(truth, k),
    }


def summarize(results: Iterable[Mapping[str, object]]) -> Dict[str, object]:
    """Mean of each numeric entry over a list of per-image result dicts.

    Scalars give a float, per-class arrays give an array of per-class means
    (NaNs are ignored). A key missing from some dicts is averaged over the
    dicts that have it; non-numeric entries (e.g. an image id) and entries
    whose shapes differ between dicts are skipped. ``n`` holds the number of
    dicts.

    Examples
    --------
    >>> summarize([{"id": "001", "accuracy": 1.0}, {"id": "002", "accuracy": 0.5}])
    {'n': 2, 'accuracy': 0.75}
    """
    results = list(results)
    out: Dict[str, object] = {"n": len(results)}
    keys = []
    for r in results:
        for key in r:
            if key not in keys:
                keys.append(key)
    for key in keys:
        vals = [r[key] for r in results if key in r]
        try:
            raw = [np.asarray(v) for v in vals]
        except (TypeError, ValueError):
            continue
        if any(a.dtype.kind not in "biuf" for a in raw):
            continue  # strings ("001"), objects, ...
        arrs = [a.astype(np.float64) for a in raw]
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            continue
        stack = np.stack(arrs)
        with warnings.catch_warnings():  # all-NaN columns -> NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(stack, axis=0)
        out[key] = float(mean) if mean.ndim == 0 else mean
    return out
