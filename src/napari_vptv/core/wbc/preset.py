"""The white blood cell (WBC) preset: learned colour models and volume priors.

Three classes, as in the WBC ground truth of Zheng et al. (2018):

====  ===========================================  ==============
0     background (plasma *and* red blood cells)    mask grey 0
1     white-cell cytoplasm                         mask grey 128
2     white-cell nucleus                           mask grey 255
====  ===========================================  ==============

A :class:`WBCModel` holds everything learned from labelled training images:

* per-class colour statistics (mean ``m_i`` and covariance ``Sigma_i`` of the RGB
  values in [0, 1]): the starting point of the Gaussian similarity
  (``similarity="gaussian"`` / ``"mahalanobis"``), refined per image by the EM-like
  update of Algorithm 1 (step 5);
* a nonparametric class-conditional colour likelihood ``p(h | i)``: a smoothed
  joint RGB histogram per class (:class:`~napari_vptv.core.solver.costs.HistogramModel`),
  cost ``c_i(x) = -log p(h(x) | i)``;
* the volume priors: the exact training-average class fractions (the paper's
  protocol, ``volume_mode="exact"``) and per-class intervals from the 2nd-98th
  percentiles of the training-mask fractions (``volume_mode="interval"``).

The shipped model (``napari_vptv/models/wbc_colour_model.npz``) is fitted on the
90 public training images with :func:`fit_wbc_model`; :func:`wbc_preset` turns it
into keyword arguments of :func:`~napari_vptv.core.solver.segment.vptv_segment`.
The accuracy of the preset was measured with 5-fold cross-validation by image
(``benchmarks/eval_wbc_cv.py``, results in ``docs/results.md``).

Examples
--------
>>> from napari_vptv.core.io.samples import load_sample
>>> from napari_vptv.core.solver.segment import vptv_segment
>>> from napari_vptv.core.wbc.preset import wbc_preset
>>> image, mask = load_sample("001")
>>> result = vptv_segment(image, **wbc_preset())          # doctest: +SKIP
>>> float((result.labels == mask).mean()) > 0.9          # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import as_file, files
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..io.samples import CLASS_NAMES
from ..solver.costs import GaussianModel, HistogramModel

__all__ = [
    "WBC_CLASSES",
    "WBC_DEFAULTS",
    "WBC_TRAINING_FRACTIONS",
    "WBCModel",
    "fit_wbc_model",
    "load_wbc_model",
    "wbc_preset",
]

#: Names of the WBC classes 0, 1, 2 (the sample masks' classes).
WBC_CLASSES = CLASS_NAMES

#: Solver settings of the WBC preset (chosen by cross-validation, docs/results.md).
WBC_DEFAULTS = {
    "similarity": "histogram",
    "epsilon": 1.0,
    "tv_weight": 2.0,
    "edge": False,
    "em_update": False,
}

#: Class fractions (background, cytoplasm, nucleus) of the 90 public WBC training
#: masks: mean, 2nd and 98th percentiles. Used only where neither the shipped colour
#: model nor the network metadata can be read.
WBC_TRAINING_FRACTIONS = {
    "mean": (0.770, 0.128, 0.102),
    "p02": (0.599, 0.027, 0.049),
    "p98": (0.904, 0.261, 0.191),
}

_MODEL_FILE = "wbc_colour_model.npz"


@dataclass
class WBCModel:
    """Colour models and volume priors learned from labelled WBC images.

    Attributes
    ----------
    means : (3, 3) per-class mean RGB (in [0, 1]).
    covariances : (3, 3, 3) per-class RGB covariance.
    log_prob : (3, B, B, B) ``log p(h | i)`` of the smoothed colour histograms.
    bins : ``B``, histogram bins per channel.
    fractions : (3,) average class fractions of the training masks (sum 1).
    lower, upper : (3,) interval prior (percentiles of the training fractions).
    n_images : number of training images.
    """

    means: np.ndarray
    covariances: np.ndarray
    log_prob: np.ndarray
    bins: int
    fractions: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_images: int = 0

    @property
    def n_classes(self) -> int:
        return int(self.means.shape[0])

    def gaussian(self, kind: str = "gaussian") -> GaussianModel:
        """The per-class Gaussian similarity model (``kind``: "mean", "mahalanobis" or "gaussian")."""
        return GaussianModel(self.means.astype(np.float64), self.covariances.astype(np.float64), kind)

    def histogram(self) -> HistogramModel:
        """The nonparametric class-conditional colour likelihood."""
        return HistogramModel(self.log_prob.astype(np.float32), int(self.bins))

    def class_model(self, similarity: str):
        """The similarity model for ``similarity`` ("histogram" or a Gaussian kind)."""
        if similarity == "histogram":
            return self.histogram()
        if similarity in ("mean", "mahalanobis", "gaussian"):
            return self.gaussian(similarity)
        raise ValueError(f"similarity must be 'histogram', 'gaussian', 'mahalanobis' or 'mean', got {similarity!r}")

    def save(self, path) -> Path:
        """Write the model to a compressed ``.npz`` (histograms as float16)."""
        path = Path(path)
        np.savez_compressed(
            path,
            means=self.means.astype(np.float32),
            covariances=self.covariances.astype(np.float32),
            log_prob=self.log_prob.astype(np.float16),
            bins=np.int64(self.bins),
            fractions=self.fractions.astype(np.float64),
            lower=self.lower.astype(np.float64),
            upper=self.upper.astype(np.float64),
            n_images=np.int64(self.n_images),
        )
        return path

    @classmethod
    def load(cls, path) -> "WBCModel":
        """Read a model written by :meth:`save`."""
        with np.load(path) as z:
            return cls(
                means=z["means"].astype(np.float64),
                covariances=z["covariances"].astype(np.float64),
                log_prob=z["log_prob"].astype(np.float32),
                bins=int(z["bins"]),
                fractions=z["fractions"].astype(np.float64),
                lower=z["lower"].astype(np.float64),
                upper=z["upper"].astype(np.float64),
                n_images=int(z["n_images"]),
            )


def _features(image) -> np.ndarray:
    """RGB pixels ``(P, 3)`` in [0, 1] (same scaling as the solver's ``prepare_image``)."""
    from ..solver.segment import prepare_image

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"WBC images must be RGB (H, W, 3), got shape {arr.shape}")
    feats = prepare_image(arr[..., :3], channel_axis=-1)
    return feats.reshape(3, -1).T


def fit_wbc_model(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    bins: int = 32,
    sigma: float = 0.5,
    floor: float = 1e-6,
    percentiles: tuple = (2.0, 98.0),
    widen: float = 0.0,
) -> WBCModel:
    """Learn the WBC colour models and volume priors from labelled images.

    Parameters
    ----------
    images : sequence of ``(H, W, 3)`` RGB arrays (uint8, or float in [0, 1]).
    masks : sequence of ``(H, W)`` integer label arrays, 0/1/2.
    bins : int
        Histogram bins per RGB channel (``bins**3`` cells per class).
    sigma : float
        Gaussian smoothing of the histograms, in bins.
    floor : float
        Probability floor that keeps ``-log p`` of unseen colours finite.
    percentiles : (low, high)
        Percentiles of the per-image class fractions that define the interval prior.
    widen : float
        Absolute amount by which each interval is widened on both sides (clipped
        to [0, 1]).

    Returns
    -------
    WBCModel
    """
    images, masks = list(images), list(masks)
    if len(images) == 0:
        raise ValueError("fit_wbc_model needs at least one image")
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    feats, labs, fracs = [], [], []
    for i, (img, m) in enumerate(zip(images, masks)):
        f = _features(img)
        m = np.asarray(m)
        if m.shape != np.asarray(img).shape[:2]:
            raise ValueError(f"mask {i} has shape {m.shape}, image {i} has {np.asarray(img).shape[:2]}")
        if m.min() < 0 or m.max() > 2:
            raise ValueError(f"mask {i} must hold labels 0, 1, 2; got values {m.min()}..{m.max()}")
        feats.append(f)
        labs.append(m.ravel())
        fracs.append(np.bincount(m.ravel().astype(np.intp), minlength=3) / m.size)
    x = np.concatenate(feats)
    y = np.concatenate(labs)
    fracs = np.stack(fracs)
    means = np.stack([x[y == i].mean(0) if np.any(y == i) else np.full(3, 0.5) for i in range(3)])
    covs = np.stack([np.cov(x[y == i].T) if np.sum(y == i) > 3 else np.eye(3) * 1e-2 for i in range(3)])
    hist = HistogramModel.fit(x, y, 3, bins=bins, sigma=sigma, floor=floor)
    lo = np.percentile(fracs, percentiles[0], axis=0)
    hi = np.percentile(fracs, percentiles[1], axis=0)
    lo = np.clip(lo - widen, 0.0, 1.0)
    hi = np.clip(hi + widen, 0.0, 1.0)
    return WBCModel(
        means=means,
        covariances=covs,
        log_prob=hist.log_prob,
        bins=int(bins),
        fractions=fracs.mean(0),
        lower=lo,
        upper=hi,
        n_images=len(images),
    )


@lru_cache(maxsize=4)
def _load_cached(path: Optional[str]) -> WBCModel:
    if path is not None:
        return WBCModel.load(path)
    res = files("napari_vptv") / "models" / _MODEL_FILE
    with as_file(res) as p:
        if not Path(p).exists():
            raise FileNotFoundError(
                f"the WBC colour model {_MODEL_FILE} is missing from the napari_vptv package "
                "(re-create it with `python benchmarks/eval_wbc_cv.py --fit-package-model`)"
            )
        return WBCModel.load(p)


def load_wbc_model(path=None) -> WBCModel:
    """The shipped WBC model (fitted on the 90 public training images), or one from ``path``."""
    return _load_cached(None if path is None else str(path))


def wbc_preset(
    volume_mode: str = "interval",
    *,
    model: Optional[WBCModel] = None,
    similarity: Optional[str] = None,
    **overrides,
) -> dict:
    """Keyword arguments of :func:`~napari_vptv.core.solver.segment.vptv_segment` for WBC images.

    Parameters
    ----------
    volume_mode : {"interval", "exact", "none"}
        ``"interval"`` (default): per-class fraction intervals of the training
        masks; ``"exact"``: the training-average fractions (the paper's protocol);
        ``"none"``: no volume constraint.
    model : WBCModel, optional
        Defaults to :func:`load_wbc_model`.
    similarity : str, optional
        Override the preset's similarity ("histogram", "gaussian", "mahalanobis").
    **overrides
        Any other ``vptv_segment`` keyword (``epsilon``, ``tv_weight``, ``edge``, ...).

    Returns
    -------
    dict
        Includes ``n_classes=3``, ``channel_axis=-1``, ``class_model``, the volume
        constraint and the solver settings of :data:`WBC_DEFAULTS`.
    """
    if volume_mode not in ("interval", "exact", "none"):
        raise ValueError(f"volume_mode must be 'interval', 'exact' or 'none', got {volume_mode!r}")
    model = load_wbc_model() if model is None else model
    kw = dict(WBC_DEFAULTS)
    if similarity is not None:
        kw["similarity"] = similarity
    kw.update(overrides)
    kw["class_model"] = model.class_model(kw["similarity"])
    kw.update(n_classes=3, channel_axis=-1, volume_mode=volume_mode)
    if volume_mode == "interval":
        kw["volume_bounds"] = (model.lower.copy(), model.upper.copy())
    elif volume_mode == "exact":
        kw["volumes"] = model.fractions.copy()
    return kw
