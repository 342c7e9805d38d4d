"""Whole-image prediction with a white-blood-cell network: scale normalisation by the
cell diameter, then the plain softmax or the VPTV-softmax layer with a volume prior.

Scale (as cellpose does with its ``diameter``): the network was trained on cells of
``diameter_range`` pixels (see the model metadata). An image whose cells are outside
``comfort_range`` is resized so they fall inside it, and the logits are resized back
(bilinear) before the layer runs at full resolution. With ``diameter`` 0 / None the
diameter is estimated from the network's own cell mask (:func:`cell_diameter` of a
first pass), repeated once at the corrected scale when the first estimate came from a
scale far from the comfortable one.

Volume priors of the VPTV layer (``prior``):

``"self"`` (default)
    an interval around the network's own soft class fractions on this image,
    ``[f (1 - r) - a, f (1 + r) + a]``: the layer keeps each class near the evidence of
    the image (no white cell -> no cell pixels) while TV and the volume dual clean the
    boundaries. Works on fields with any number of cells.
``"pooled"``
    the 2nd-98th percentile interval of the training crops' fractions, all sources.
``"training-average"``
    exact training-average fractions (the paper's choice).
``"source:NAME"``
    the 2nd-98th percentile interval of one training source.
``"none"``
    TV-softmax without a volume term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.wbc.adapt import fraction_bounds
from ..core.wbc.cell_rules import drop_cells_without_nucleus
from ..core.wbc.red_cells import red_cell_diameter
from .data import input_norm_of, normalise
from .layer import VPTVSoftmax
from .sampler import resize_image
from .sources import cell_diameter

__all__ = ["NetworkPrediction", "predict_cells", "PRIORS", "prior_volumes", "as_rgb_uint8"]

PRIORS = ("self", "pooled", "training-average", "none")
#: cells smaller / larger than this (px) are resized into it before the network runs
DEFAULT_COMFORT_RANGE = (56.0, 170.0)
#: first pass on at most this many pixels (large fields are downsampled for it)
FIRST_PASS_MAX_PIXELS = 1024 * 1024
#: network-pixel diameter below which a detected blob does not count as a cell when
#: the diameter is estimated (half the smallest training diameter, 36 px)
MIN_CELL_DIAMETER = 18.0
#: cell-like regions less solid than this (area over convex-hull area) do not count
#: when the diameter is estimated: on some composed fields (``bench_fields.py``) a
#: network takes a lace of pale plasma and red-cell texture for a cell (0.50-0.63 for
#: the whole-field laces, 0.72-0.81 for smaller ones), which made the estimate the
#: whole field and the white cells too small to be found. Every estimating region of
#: the held-out crops of both sources is at least 0.85 (unet) / 0.89 (vptv-unet); two
#: touching round cells 0.88. When no region passes, all of them count (as before).
MIN_CELL_SOLIDITY = 0.85
#: an estimated white-cell diameter is at least this many red-cell diameters
#: (:func:`~napari_vptv.core.wbc.red_cells.red_cell_diameter` of the first pass's
#: background, when the field shows red cells clearly). The smallest white cells
#: (small lymphocytes, 7-8 µm) are about as wide as a red cell (7-8 µm); on the
#: training crops with a red-cell estimate the ratio is 1.55 and more. Without this
#: floor a field whose only "cells" are platelets was scaled up until the platelets
#: had a white cell's size (``bench_fields.py``).
MIN_WHITE_PER_RED_CELL = 1.0
#: the red cells are measured on every ``d // RED_CELL_STEP_PER_DIAMETER``-th pixel
#: (``d``: the first pass's white-cell estimate, px): red cells are at least a third
#: of a white cell across, so they stay >= 12 samples wide, while the distance
#: transform and the h-maxima cost a quarter at step 2 (a 640 x 480 field: ~0.08 s
#: -> ~0.02 s)
RED_CELL_STEP_PER_DIAMETER = 36.0
SELF_PRIOR_RELATIVE = 0.15
SELF_PRIOR_ABSOLUTE = 0.005


@dataclass
class NetworkPrediction:
    """``labels`` (H, W) int32, ``probabilities`` (K, H, W) float32, the cell
    ``diameter`` used (px, 0 when no cell was found), whether it was ``estimated``,
    the ``scale`` the network ran at and the ``volume_bounds`` / ``volumes`` applied."""

    labels: np.ndarray
    probabilities: np.ndarray
    diameter: float
    estimated: bool
    scale: float
    info: dict = field(default_factory=dict)


def as_rgb_uint8(image) -> np.ndarray:
    """``(H, W, 3)`` uint8 from grey, RGB or RGBA; floats in [0, 1] are scaled by 255."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) RGB (or (H, W) grey / (H, W, 4) RGBA), got shape {a.shape}")
    a = a[..., :3]
    if min(a.shape[:2]) < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if not np.all(np.isfinite(a)):
        raise ValueError("image contains NaN or infinite values")
    if np.issubdtype(a.dtype, np.floating) and np.nanmax(a) <= 1.0:
        return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


#: test-time augmentation: how many of the 8 flips / quarter turns are averaged
AUGMENT_CHOICES = (1, 2, 8)
#: the default: the image and its mirror image. On the sources a network never saw
#: (leave-one-source-out, docs/results.md) this gained about 1 pt, as much as all 8,
#: for one more network pass.
DEFAULT_AUGMENT = 2
_TRANSFORMS = {
    1: ((0, False),),
    2: ((0, False), (0, True)),
    8: tuple((k, flip) for k in range(4) for flip in (False, True)),
}


def augment_count(augment) -> int:
    """Number of averaged transforms for an ``augment`` setting: 1, 2 or 8
    (``True`` = 8, ``False`` = 1)."""
    if isinstance(augment, (bool, np.bool_)):
        return 8 if augment else 1
    try:
        n = int(augment)
    except (TypeError, ValueError):
        n = -1
    if n not in AUGMENT_CHOICES or n != augment:
        raise ValueError(f"augment must be one of {AUGMENT_CHOICES} (transforms averaged), got {augment!r}")
    return n


def _transformed_logits(model, x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Backbone logits of ``x`` turned ``k`` quarter turns (and mirrored), turned back."""
    xt = torch.rot90(x, k, (2, 3)) if k else x
    lg = model.logits(torch.flip(xt, (3,)) if flip else xt)
    lg = torch.flip(lg, (3,)) if flip else lg
    return torch.rot90(lg, -k, (2, 3)) if k else lg


def _logits_at(model, x: torch.Tensor, scale: float, augment: int = 1, plain=None) -> torch.Tensor:
    """Backbone logits of ``x`` (1, 3, H, W) run at ``scale``, returned at (H, W).

    ``augment`` transforms (see :data:`AUGMENT_CHOICES`; the network was trained on all
    8, :func:`~napari_vptv.nn.augment.dihedral`) are averaged. ``plain``: this scale's
    untransformed logits if already computed (the diameter estimate's last pass).
    """
    H, W = x.shape[-2:]
    resized = abs(scale - 1.0) >= 1e-3
    if resized:
        x = resize_image(x, (max(16, int(round(H * scale))), max(16, int(round(W * scale)))))
    total = None
    for k, flip in _TRANSFORMS[augment]:
        if plain is not None and not k and not flip:
            lg = plain
        else:
            lg = _transformed_logits(model, x, k, flip)
            if resized:  # bilinear resizing is linear: resizing each pass = resizing the mean
                lg = torch.nn.functional.interpolate(lg, size=(H, W), mode="bilinear", align_corners=False)
        total = lg if total is None else total + lg
    return total / len(_TRANSFORMS[augment])


def comfort_range_of(meta: dict, comfort_range: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """The cell-diameter range (px) a model runs images at: ``comfort_range`` if given,
    else the model's tuned one (``meta["defaults"]``), else :data:`DEFAULT_COMFORT_RANGE`."""
    return tuple(comfort_range or (meta.get("defaults") or {}).get("comfort_range") or DEFAULT_COMFORT_RANGE)


def _scale_for(diameter: float, comfort: Tuple[float, float]) -> float:
    if diameter <= 0:
        return 1.0
    return float(np.clip(diameter, *comfort) / diameter)


def _network_pass(model, x, diameter, comfort, max_pixels, augment=1, rgb=None):
    """Logits at the scale the diameter calls for; estimates the diameter when None
    (the estimate uses plain passes, and the red cells of ``rgb`` when given;
    ``augment`` transforms are averaged at the final scale, reusing the estimate's
    plain pass). Returns ``(logits, diameter, scale, red_cell_diameter)``, the last
    None when not measured (a given diameter)."""
    if diameter:
        s = min(_scale_for(diameter, comfort), 4.0)
        return _logits_at(model, x, s, augment), float(diameter), s, None
    lg, d, s, red = _estimate_pass(model, x, comfort, max_pixels, rgb)
    if augment > 1:
        lg = _logits_at(model, x, s, augment, plain=lg)
    return lg, d, s, red


def _red_cells(rgb, labels, cap: float, diameter: float = 0.0) -> Optional[float]:
    """The red-cell diameter (px) measured on the background of ``labels`` (0.0 without
    a clear estimate, None without ``rgb``); large fields are measured on every
    ``1 / cap``-th pixel, fields of large cells (white-cell ``diameter``) on every
    ``diameter // RED_CELL_STEP_PER_DIAMETER``-th (the estimate scaled back)."""
    if rgb is None:
        return None
    step = max(1, int(round(1.0 / cap)), int(diameter // RED_CELL_STEP_PER_DIAMETER))
    return red_cell_diameter(rgb[::step, ::step], labels[::step, ::step] == 0) * step


def _estimate_pass(model, x, comfort, max_pixels, rgb=None):
    """Plain logits at the scale of the estimated diameter: ``(logits, diameter, scale,
    red_cell_diameter)``."""
    H, W = x.shape[-2:]
    cap = min(1.0, float(np.sqrt(max_pixels / (H * W))))
    s, d_prev, lg, red = cap, None, None, None
    for _ in range(3):  # first pass, then at most two corrections
        lg = _logits_at(model, x, s)
        # measured at full resolution; blobs far below the smallest cell the network
        # was trained on (at this scale) are debris, not evidence of small cells
        # no region with a cell's shape (a field of texture without a white cell): all
        # regions, as small or field-wide as they are, are the best scale there is
        labels = lg[0].argmax(0).cpu().numpy()
        d = cell_diameter(labels, min_diameter=MIN_CELL_DIAMETER / s, min_solidity=MIN_CELL_SOLIDITY) or cell_diameter(
            labels, min_diameter=MIN_CELL_DIAMETER / s
        )
        if d <= 0:
            return lg, 0.0, s, red
        if red is None:  # the red cells' scale, from the first pass's background
            red = _red_cells(rgb, labels, cap, d)
        d = max(d, MIN_WHITE_PER_RED_CELL * (red or 0.0))
        s_new = min(_scale_for(d, comfort), cap * 4.0)
        if abs(np.log(s_new / s)) < np.log(1.15) or (d_prev and abs(np.log(d / d_prev)) < np.log(1.15)):
            return lg, d, s, red
        s_last, s, d_prev = s, s_new, d
    return lg, d, s_last, red  # the scale these logits were computed at


def prior_volumes(meta: dict, prior: str, soft_fractions: Optional[np.ndarray] = None):
    """``("exact", (K,))``, ``("interval", (lo, hi))`` or ``("none", None)`` for a prior name."""
    pooled = meta.get("volume_priors_pooled") or meta.get("volume_priors")
    if prior == "none":
        return "none", None
    if prior == "training-average":
        return "exact", np.asarray(pooled["mean"])
    if prior == "pooled":
        return "interval", (np.asarray(pooled["p02"]), np.asarray(pooled["p98"]))
    if prior.startswith("source:"):
        name = prior.split(":", 1)[1]
        for s in meta.get("sources", []):
            if s["name"] == name and s.get("volume_priors"):
                vp = s["volume_priors"]
                return "interval", (np.asarray(vp["p02"]), np.asarray(vp["p98"]))
        known = [s["name"] for s in meta.get("sources", []) if s.get("volume_priors")]
        raise ValueError(f"unknown source prior {prior!r}; this model knows sources {known}")
    if prior == "self":
        return "interval", fraction_bounds(soft_fractions, SELF_PRIOR_RELATIVE, SELF_PRIOR_ABSOLUTE)
    raise ValueError(f"prior must be one of {PRIORS} or 'source:NAME', got {prior!r}")


def _check_volumes(mode, v):
    v = np.asarray(v, dtype=np.float64)
    if mode == "exact" and (v.shape != (3,) or np.any(v <= 0) or abs(v.sum() - 1) > 1e-3):
        raise ValueError(f"volumes must be 3 positive fractions summing to 1, got {v.tolist()}")
    if mode == "interval" and (
        v.shape != (2, 3)
        or np.any(v[0] > v[1])
        or np.any(v < 0)
        or np.any(v > 1)
        or v[0].sum() > 1 + 1e-6
        or v[1].sum() < 1 - 1e-6
    ):
        raise ValueError(
            f"volume bounds must be (2, 3) with lower <= upper in [0, 1], sum(lower) <= 1 <= "
            f"sum(upper); got {v.tolist()}"
        )
    return v


def _layer_volumes(meta, logits, prior, volumes, volume_mode):
    """The ``(mode, kwargs)`` the VPTV layer runs with."""
    if volumes is not None:
        mode = volume_mode or "exact"
        v = _check_volumes(mode, volumes)
    else:
        soft = torch.softmax(logits, 1).mean(dim=(0, 2, 3)).double().cpu().numpy()
        mode, v = prior_volumes(meta, prior, soft)
        if volume_mode == "none":
            mode = "none"
    dt, dev = logits.dtype, logits.device
    if mode == "exact":
        return mode, {"volumes": torch.as_tensor(np.asarray(v), dtype=dt, device=dev)}
    if mode == "interval":
        return mode, {"volume_bounds": tuple(torch.as_tensor(np.asarray(r), dtype=dt, device=dev) for r in v)}
    return "none", {}


def predict_cells(
    model,
    meta: dict,
    image,
    *,
    diameter: Optional[float] = None,
    prior: Optional[str] = None,
    volumes=None,
    volume_mode: Optional[str] = None,
    epsilon: Optional[float] = None,
    tv_weight: Optional[float] = None,
    num_iter: Optional[int] = None,
    comfort_range: Optional[Sequence[float]] = None,
    device: str = "cpu",
    require_nucleus: bool = True,
    augment=DEFAULT_AUGMENT,
) -> NetworkPrediction:
    """Segment one RGB image with a loaded network (see the module docstring).

    Parameters
    ----------
    model, meta : from :func:`napari_vptv.nn.weights.load_pretrained`.
    image : ndarray ``(H, W, 3)`` (grey / RGBA / float accepted, see :func:`as_rgb_uint8`).
    diameter : float, optional
        Typical white-cell diameter in pixels; 0 / None = estimate.
    prior : str, optional
        Volume prior of the VPTV layer (module docstring); default: the model's.
    volumes : array, optional
        Explicit ``(3,)`` exact fractions or ``(2, 3)`` bounds (``volume_mode``).
    epsilon, tv_weight, num_iter : optional
        ``eps``, ``lambda``, ``T`` of the layer; default: the model's tuned values.
    require_nucleus : bool
        Set cell regions without a nucleus to background in the labels
        (:func:`~napari_vptv.core.wbc.cell_rules.drop_cells_without_nucleus`); the
        probabilities are the network's.
    augment : {1, 2, 8} or bool
        Test-time augmentation: the logits averaged over the image and its mirror image
        (2, default), all 8 flips / quarter turns (8, ``True``) or none (1,
        ``False``); the network time grows by that factor (the diameter estimate is
        not repeated). About +1 pt on sources the network never saw.
    """
    if diameter is not None and (not np.isfinite(diameter) or diameter < 0):
        raise ValueError(f"diameter must be >= 0 pixels (0 = estimate), got {diameter}")
    augment = augment_count(augment)
    rgb = as_rgb_uint8(image)
    dflt = dict(meta.get("defaults") or {})
    comfort = comfort_range_of(meta, comfort_range)
    x = normalise(rgb[None], input_norm_of(meta)).to(device)
    with torch.inference_mode():
        logits, d, s, red = _network_pass(model, x, diameter or None, comfort, FIRST_PASS_MAX_PIXELS, augment, rgb)
        info = {"prior": None}
        if meta["arch"] == "unet" or int(dflt.get("num_iter", 5) if num_iter is None else num_iter) == 0:
            probs = torch.softmax(logits, dim=1)
        else:
            prior = prior or dflt.get("prior", "self")
            mode, kw = _layer_volumes(meta, logits, prior, volumes, volume_mode)
            layer = VPTVSoftmax(
                epsilon=float(dflt.get("epsilon", 1.0) if epsilon is None else epsilon),
                tv_weight=float(dflt.get("tv_weight", 1.0) if tv_weight is None else tv_weight),
                num_iter=int(dflt.get("num_iter", 5) if num_iter is None else num_iter),
                volume_mode=mode,
            )
            probs = layer(logits, **kw)
            info = {
                "prior": prior if volumes is None else "given",
                "volume_mode": mode,
                **{k: [t.tolist() for t in v] if isinstance(v, tuple) else v.tolist() for k, v in kw.items()},
            }
    info["augment"] = augment
    if red is not None:  # measured with the diameter: the white-cell rule reuses it
        info["red_cell_diameter"] = float(red)
    p = probs[0].float().cpu().numpy()
    labels = p.argmax(0).astype(np.int32)
    if require_nucleus:
        labels, info["cells_without_nucleus_removed"] = drop_cells_without_nucleus(labels)
    return NetworkPrediction(labels, p, d, not diameter, s, info)
