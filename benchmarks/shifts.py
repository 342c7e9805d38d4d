"""A fixed suite of synthetic lab-to-lab shifts of an image and its labels, and the
multi-cell / cell-free test images of benchmarks/eval_generalist.py.

Every shift is deterministic (fixed parameters, fixed noise seed), so two runs score
exactly the same inputs.
"""

from __future__ import annotations

import io
import os
import platform

import numpy as np

SHIFTS = ("hue+25", "hue-25", "stain-hed", "pale", "dark-gamma", "blur1.5", "noise0.03", "jpeg30", "scale0.5", "scale2")


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def commit():
    """HEAD of the checkout the benchmarks run from, "+dirty" with uncommitted changes
    (None outside a git checkout)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _hue(img, degrees):
    th = np.deg2rad(degrees)
    k = np.ones(3) / np.sqrt(3)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = np.cos(th) * np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * np.outer(k, k)
    return np.clip(img.astype(np.float64) @ R.T, 0, 255)


def _hed(img, gains):
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(img) * np.asarray(gains)
    return np.clip(hed2rgb(hed) * 255, 0, 255)


def _jpeg(img, q):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


#: class-conditional stains: per class (background, cytoplasm, nucleus) optical-density gains
#: per RGB channel; "cyto-tan" turns the cytoplasm pale tan (a lab whose cytoplasm the
#: generalist finds hardest)
CLASS_STAINS = {"cyto-tan": ((1, 1, 1), (0.3, 0.6, 0.9), (1, 1, 1))}


def _class_od(img, labels, gains, sigma=1.5):
    """Each class region's optical density times its gains, blended across borders."""
    from scipy import ndimage as ndi

    od = -np.log((img.astype(np.float64) + 1) / 256)
    w = np.stack([ndi.gaussian_filter((labels == c).astype(float), sigma) for c in range(3)], -1)
    w /= w.sum(-1, keepdims=True)
    return 256 * np.exp(-od * np.einsum("hwc,cd->hwd", w, np.asarray(gains, dtype=float))) - 1


def apply_shift(name, img, labels):
    """``(image uint8, labels)`` after the named shift (labels change only with scale)."""
    from scipy import ndimage as ndi
    from skimage.transform import rescale

    f = img.astype(np.float64)
    if name.startswith("scale"):
        s = float(name[5:])
        out = rescale(img, s, channel_axis=-1, order=1, anti_aliasing=s < 1, preserve_range=True)
        lab = rescale(labels, s, order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
        return np.clip(np.round(out), 0, 255).astype(np.uint8), lab
    if name in CLASS_STAINS:
        f = _class_od(img, labels, CLASS_STAINS[name])
    elif name == "hue+25":
        f = _hue(img, 25)
    elif name == "hue-25":
        f = _hue(img, -25)
    elif name == "stain-hed":
        f = _hed(img, (1.4, 0.7, 1.0))
    elif name == "pale":
        f = 255 - (255 - f) * 0.6
    elif name == "dark-gamma":
        f = 255 * (f / 255) ** 1.6
    elif name == "blur1.5":
        f = ndi.gaussian_filter(f, (1.5, 1.5, 0))
    elif name == "noise0.03":
        f = f + np.random.default_rng(0).normal(0, 0.03 * 255, f.shape)
    elif name == "jpeg30":
        return _jpeg(img, 30), labels
    else:
        raise ValueError(f"unknown shift {name!r}")
    return np.clip(np.round(f), 0, 255).astype(np.uint8), labels


def mosaics(images, labels):
    """2 x 2 mosaics of consecutive groups of four images, each cropped to the group's
    smallest height / width (a field with four white cells)."""
    out_i, out_l = [], []
    for j in range(0, len(images) - 3, 4):
        ims, lbs = images[j : j + 4], labels[j : j + 4]
        h = min(i.shape[0] for i in ims)
        w = min(i.shape[1] for i in ims)
        ims = [i[:h, :w] for i in ims]
        lbs = [b[:h, :w] for b in lbs]
        out_i.append(np.concatenate([np.concatenate(ims[:2], 1), np.concatenate(ims[2:], 1)], 0))
        out_l.append(np.concatenate([np.concatenate(lbs[:2], 1), np.concatenate(lbs[2:], 1)], 0))
    return out_i, out_l


def cell_free_crops(image, labels, size=100, stride=50):
    """Every ``size`` x ``size`` window (step ``stride``) without a white-cell pixel."""
    H, W = labels.shape
    out = []
    for y in range(0, H - size + 1, stride):
        for x in range(0, W - size + 1, stride):
            if not (labels[y : y + size, x : x + size] > 0).any():
                out.append(image[y : y + size, x : x + size])
    return out
