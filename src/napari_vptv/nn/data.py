"""WBC data for training: loading, image-level split, patch sampling, augmentation.

Self-contained (imageio + numpy) so that training does not depend on the GUI / CLI
modules. Masks are mapped 0/128/255 -> 0/1/2 by nearest grey value.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

__all__ = [
    "CLASSES",
    "load_wbc",
    "split_ids",
    "class_fractions",
    "sample_patches",
    "augment_batch",
    "normalise",
    "data_digest",
    "volume_targets",
    "colour_jitter",
    "to_unit",
]

CLASSES = ("background", "cytoplasm", "nucleus")
_GREY = np.array([0, 128, 255], dtype=np.int16)
#: Input normalisation: x = (rgb / 255 - MEAN) / STD (fixed, recorded in the metadata).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _mask_to_labels(m: np.ndarray) -> np.ndarray:
    if m.ndim == 3:
        m = m[..., 0]
    d = np.abs(m.astype(np.int16)[..., None] - _GREY)
    return d.argmin(axis=-1).astype(np.int64)


def load_wbc(root) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Load every ``images/NNN.png`` with its ``masks/NNN.png``.

    Returns ``(ids, images uint8 (N, H, W, 3), labels int64 (N, H, W))`` sorted by id.
    """
    import imageio.v3 as iio

    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"WBC data folder '{root}' must contain images/ and masks/")
    ids, imgs, masks = [], [], []
    for p in sorted(img_dir.glob("*.png")):
        mp = mask_dir / p.name
        if not mp.exists():
            raise FileNotFoundError(f"image '{p}' has no mask '{mp}'")
        img = np.asarray(iio.imread(p))
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        imgs.append(img[..., :3].astype(np.uint8))
        masks.append(_mask_to_labels(np.asarray(iio.imread(mp))))
        ids.append(p.stem)
    return ids, np.stack(imgs), np.stack(masks)


def data_digest(root, ids: Sequence[str]) -> str:
    """sha256 over the image and mask files of ``ids`` (in order)."""
    h = hashlib.sha256()
    root = Path(root)
    for i in ids:
        for sub in ("images", "masks"):
            p = root / sub / f"{i}.png"
            h.update(f"{sub}/{i}.png".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def split_ids(ids: Sequence[str], n_val: int = 14, seed: int = 0) -> Tuple[List[str], List[str]]:
    """Image-level split (validation images never appear in training patches)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    train = sorted(ids[i] for i in perm[n_val:])
    return train, val


def class_fractions(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Per-image class fractions, ``(N, K)`` for labels ``(N, H, W)``."""
    flat = labels.reshape(labels.shape[0], -1)
    return np.stack([(flat == k).mean(axis=1) for k in range(n_classes)], axis=1)


def volume_targets(labels, n_classes: int = 3, floor: float = 1e-3):
    """Ground-truth fractions of a batch of label patches (torch), clipped to ``>= floor``
    and renormalised, used as the layer's exact volumes during training."""
    import torch

    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    frac = onehot.mean(dim=(1, 2))
    frac = frac.clamp(min=floor)
    return frac / frac.sum(dim=1, keepdim=True)


def sample_patches(images: np.ndarray, labels: np.ndarray, n: int, size: int = 64, seed: int = 0):
    """``n`` random ``size x size`` patches (uniform image, uniform position).

    Returns ``(patches uint8 (n, size, size, 3), labels int64 (n, size, size))``.
    """
    rng = np.random.default_rng(seed)
    N, H, W = labels.shape
    idx = rng.integers(0, N, n)
    ys = rng.integers(0, H - size + 1, n)
    xs = rng.integers(0, W - size + 1, n)
    px = np.empty((n, size, size, 3), np.uint8)
    pl = np.empty((n, size, size), np.int64)
    for j, (i, y, x) in enumerate(zip(idx, ys, xs)):
        px[j] = images[i, y : y + size, x : x + size]
        pl[j] = labels[i, y : y + size, x : x + size]
    return px, pl


def to_unit(images):
    """uint8 ``(..., H, W, 3)`` -> float32 torch ``(..., 3, H, W)`` in [0, 1] (no normalisation)."""
    import torch

    return torch.as_tensor(np.asarray(images)).to(torch.float32).div_(255.0).movedim(-1, -3)


def normalise_unit(x):
    """float ``(..., 3, H, W)`` in [0, 1] -> the network input (see :data:`MEAN`, :data:`STD`)."""
    import torch

    mean = torch.tensor(MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def colour_jitter(x, generator, strength: float = 1.0):
    """Random stain / illumination variation of a batch ``(B, 3, H, W)`` in [0, 1]:
    per-channel gains (+-12 %), brightness (+-0.08), contrast (x0.75..1.25) and
    saturation (x0.5..1.4), each drawn per sample. The WBC images differ visibly in
    staining (e.g. grey-blue vs pink red blood cells); without this the U-net
    mistakes grey-blue red cells for cytoplasm on unseen images."""
    import torch

    B = x.shape[0]

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand((B,) + shape, generator=generator)

    s = strength
    gain = 1 + s * U(-0.12, 0.12, 3, 1, 1)
    bright = s * U(-0.08, 0.08, 1, 1, 1)
    contrast = 1 + s * U(-0.25, 0.25, 1, 1, 1)
    sat = 1 + s * U(-0.5, 0.4, 1, 1, 1)
    x = x * gain + bright
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * contrast + m
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * sat
    return x.clamp(0.0, 1.0)


def normalise(images):
    """uint8 ``(..., H, W, 3)`` numpy or torch -> float32 torch ``(..., 3, H, W)``."""
    import torch

    t = torch.as_tensor(np.asarray(images))
    t = t.to(torch.float32).div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    t = t.movedim(-1, -3)
    return (t - mean) / std


def augment_batch(x, y, generator):
    """Random flips / rot90 (the 8 dihedral symmetries), per sample. ``x (B,C,H,W)``, ``y (B,H,W)``."""
    import torch

    B = x.shape[0]
    ops = torch.randint(0, 8, (B,), generator=generator)
    xs, ys = [], []
    for b in range(B):
        o = int(ops[b])
        xb, yb = x[b], y[b]
        if o & 4:
            xb, yb = xb.flip(-1), yb.flip(-1)
        k = o & 3
        if k:
            xb, yb = torch.rot90(xb, k, (-2, -1)), torch.rot90(yb, k, (-2, -1))
        xs.append(xb)
        ys.append(yb)
    return torch.stack(xs), torch.stack(ys)
