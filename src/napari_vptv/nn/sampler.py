"""Scale-aware random patches from several sources.

Each patch picks a source (by weight), an image of its training split, a zoom ``s``
(log-uniform in ``scale_range`` around the image's own scale, then limited so the cell
diameter after zooming stays in ``diameter_range``), and a centre (with probability
``p_cell`` on a cell pixel, else anywhere). The ``patch / s`` window around the centre
is cut with symmetric padding past the border and resampled to ``patch x patch``:
the image with antialiased bilinear interpolation, the labels by resampling their
one-hot maps the same way and taking the argmax (smooth label edges at any zoom).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import white_point
from .sources import Source

__all__ = ["SamplerConfig", "sample_batch", "resize_image", "resize_probabilities"]


@dataclass
class SamplerConfig:
    patch_size: int = 96
    scale_range: tuple = (0.5, 2.0)
    diameter_range: tuple = (36.0, 220.0)
    p_cell: float = 0.6

    def to_dict(self) -> dict:
        return asdict(self)


def resize_image(x: torch.Tensor, size) -> torch.Tensor:
    """Antialiased bilinear resize of ``(B, C, H, W)`` to ``size = (h, w)``."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_probabilities(p: torch.Tensor, size) -> torch.Tensor:
    """Resize class maps ``(B, K, H, W)`` (bilinear, antialiased), renormalised."""
    q = resize_image(p, size).clamp(min=0)
    return q / q.sum(dim=1, keepdim=True).clamp(min=1e-12)


def _window(a: np.ndarray, cy: int, cx: int, c: int) -> np.ndarray:
    H, W = a.shape[:2]
    y0, x0 = cy - c // 2, cx - c // 2
    pads = [(max(0, -y0), max(0, y0 + c - H)), (max(0, -x0), max(0, x0 + c - W))]
    ys, xs = slice(max(0, y0), min(H, y0 + c)), slice(max(0, x0), min(W, x0 + c))
    w = a[ys, xs]
    if any(p for pair in pads for p in pair):
        w = np.pad(w, pads + [(0, 0)] * (a.ndim - 2), mode="symmetric")
    return w


def _one_patch(sample, rng, cfg: SamplerConfig, n_classes: int):
    P = cfg.patch_size
    lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
    s = float(np.exp(rng.uniform(lo, hi)))
    if sample.diameter > 0:
        d = np.clip(sample.diameter * s, *cfg.diameter_range)
        s = d / sample.diameter
    c = max(8, int(round(P / s)))
    H, W = sample.labels.shape
    if rng.random() < cfg.p_cell and (sample.labels > 0).any():
        ys, xs = np.nonzero(sample.labels > 0)
        j = rng.integers(len(ys))
        cy, cx = int(ys[j]), int(xs[j])
    else:
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
    img = _window(sample.image, cy, cx, c)
    lab = _window(sample.labels, cy, cx, c)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
    onehot = F.one_hot(torch.from_numpy(np.ascontiguousarray(lab)), n_classes).permute(2, 0, 1)[None].float()
    return resize_image(x, (P, P))[0].clamp(0, 1), resize_image(onehot, (P, P))[0].argmax(0)


def sample_batch(
    sources: Sequence[Source],
    weights: Sequence[float],
    batch: int,
    rng: np.random.Generator,
    cfg: SamplerConfig,
    n_classes: int = 3,
    with_white: bool = False,
):
    """``batch`` patches: float ``(B, 3, P, P)`` in [0, 1] and labels int64 ``(B, P, P)``.

    With ``with_white``, also the white point ``(B, 3)`` of each patch's whole image (a
    patch may show no empty slide; its image does).
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    xs, ys, whites = [], [], []
    for _ in range(batch):
        src = sources[rng.choice(len(sources), p=w)]
        sample = src.train[rng.integers(len(src.train))]
        x, y = _one_patch(sample, rng, cfg, n_classes)
        xs.append(x)
        ys.append(y)
        if with_white:
            if sample.white is None:
                sample.white = white_point(sample.image)
            whites.append(torch.as_tensor(sample.white, dtype=torch.float32))
    if with_white:
        return torch.stack(xs), torch.stack(ys), torch.stack(whites)
    return torch.stack(xs), torch.stack(ys)
