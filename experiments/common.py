"""Shared helpers of the experiment scripts (synthetic images, timing, tables)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "output"
CACHE = HERE / "cache"


def setup_threads(n: int = 1) -> None:
    """One BLAS / torch thread per process (the machine is shared)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


def toy_circle(size: int = 128, *, fraction: float = 0.65, low: float = 0.05, high: float = 1.0,
               noise_var: float = 0.01, seed: int = 0):
    """The Fig. 4 test image: an inhomogeneous circle on a black background + noise.

    The circle covers ``fraction`` of the image; its intensity rises linearly from
    ``low`` (left edge) to ``high`` (right edge); Gaussian white noise of variance
    ``noise_var`` is added (the result is not clipped). Returns ``(image, truth)``,
    truth 1 inside the circle.
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float64) + 0.5
    c = size / 2.0
    r = np.sqrt(fraction * size * size / np.pi)
    truth = ((yy - c) ** 2 + (xx - c) ** 2 <= r * r).astype(np.int32)
    ramp = low + (high - low) * np.clip((xx - (c - r)) / (2 * r), 0, 1)
    clean = truth * ramp
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, np.sqrt(noise_var), clean.shape)
    return noisy.astype(np.float32), truth


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def save_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# --------------------------------------------------------------------------- #
# figures without matplotlib (Pillow only)
# --------------------------------------------------------------------------- #
PALETTE = np.array([[0, 0, 0], [255, 200, 40], [40, 160, 255], [230, 60, 60], [80, 220, 120]], np.uint8)


def to_rgb(arr, kind="image"):
    """uint8 RGB view of an image (float, min-max scaled), labels or probabilities."""
    a = np.asarray(arr)
    if kind == "labels":
        return PALETTE[np.clip(a, 0, len(PALETTE) - 1)]
    if kind == "prob":
        g = (np.clip(a, 0, 1) * 255).astype(np.uint8)
        return np.stack([g] * 3, -1)
    a = a.astype(np.float64)
    if a.ndim == 2:
        lo, hi = np.percentile(a, 0.5), np.percentile(a, 99.5)
        g = (np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)
        return np.stack([g] * 3, -1)
    if a.max() > 1.5:
        return a.astype(np.uint8)
    return (np.clip(a, 0, 1) * 255).astype(np.uint8)


def panel(tiles, path, *, ncols=4, tile=None, title=None, font_size=13):
    """Write a grid of captioned tiles ``[(caption, rgb uint8), ...]`` as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    imgs = []
    for cap, rgb in tiles:
        im = Image.fromarray(np.asarray(rgb, np.uint8))
        if tile is not None:
            im = im.resize((tile, int(round(tile * im.height / im.width))), Image.NEAREST)
        imgs.append((cap, im))
    w = max(im.width for _, im in imgs)
    h = max(im.height for _, im in imgs)
    lines = max(len(cap.split("\n")) for cap, _ in imgs)
    cap_h = (font_size + 3) * lines + 4
    top = (font_size + 8) if title else 0
    nrows = (len(imgs) + ncols - 1) // ncols
    pad = 6
    canvas = Image.new("RGB", (ncols * (w + pad) + pad, top + nrows * (h + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 3), title, fill="black", font=font)
    for n, (cap, im) in enumerate(imgs):
        r, c = divmod(n, ncols)
        x = pad + c * (w + pad)
        y = top + pad + r * (h + cap_h + pad)
        canvas.paste(im, (x, y))
        draw.multiline_text((x, y + h + 2), cap, fill="black", font=font, spacing=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path
