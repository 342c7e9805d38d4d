"""Network input conventions: class names, input normalisation, volume targets.

Loading and splitting training sources is :mod:`napari_vptv.nn.sources`; patches
:mod:`napari_vptv.nn.sampler`; augmentation :mod:`napari_vptv.nn.augment`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CLASSES",
    "INPUT_NORMS",
    "MEAN",
    "STD",
    "WHITE_TARGET",
    "apply_white",
    "input_norm_of",
    "normalise",
    "normalise_unit",
    "volume_targets",
    "white_gain",
    "white_point",
]

CLASSES = ("background", "cytoplasm", "nucleus")
#: Input normalisation: x = (rgb / 255 - MEAN) / STD (fixed, recorded in the metadata).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: Colour conventions a network can be trained with (``meta["input_norm"]``): "none" feeds
#: the RGB as it is; "white-point" first divides each channel by the colour of the image's
#: brightest pixels (the empty slide between the cells), mapped to :data:`WHITE_TARGET`.
#: Labs differ most in that colour (white, pink, yellow backgrounds; camera white balance),
#: so removing it per image makes a network trained on one lab see another lab's smear in
#: its own colours (von Kries adaptation).
INPUT_NORMS = ("none", "white-point")
WHITE_TARGET = 0.92
#: fraction of the brightest pixels whose median colour is the white point
WHITE_QUANTILE = 0.95
#: per-channel gains are limited to this range, so a crop without any empty slide is not
#: pushed to white
WHITE_GAIN_RANGE = (0.8, 2.0)


def volume_targets(labels, n_classes: int = 3, floor: float = 1e-3):
    """Ground-truth fractions of a batch of label patches (torch), clipped to ``>= floor``
    and renormalised, used as the layer's exact volumes during training."""
    import torch

    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    frac = onehot.mean(dim=(1, 2))
    frac = frac.clamp(min=floor)
    return frac / frac.sum(dim=1, keepdim=True)


def normalise_unit(x):
    """float ``(..., 3, H, W)`` in [0, 1] -> the network input (see :data:`MEAN`, :data:`STD`)."""
    import torch

    mean = torch.tensor(MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def input_norm_of(meta: dict) -> str:
    """The colour convention a model was trained with (older models: "none")."""
    norm = meta.get("input_norm") or (meta.get("config") or {}).get("input_norm") or "none"
    if norm not in INPUT_NORMS:
        raise ValueError(f"unknown input normalisation {norm!r} in the model metadata (known: {INPUT_NORMS})")
    return norm


def white_point(rgb) -> np.ndarray:
    """White point of one image: the median colour of its brightest pixels, ``(3,)`` in [0, 1].

    ``rgb`` is uint8 ``(H, W, 3)``. Large images are subsampled (the estimate is a median).
    """
    x = np.asarray(rgb).reshape(-1, 3)
    step = max(1, x.shape[0] // 250_000)
    x = x[::step].astype(np.float32) / 255.0
    # the channel mean written out: the same float32 values as x.mean(axis=1), 6x faster
    lum = (x[:, 0] + x[:, 1] + x[:, 2]) / np.float32(3)
    bright = x[lum >= np.quantile(lum, WHITE_QUANTILE)]
    return np.maximum(np.median(bright, axis=0), 1.0 / 255.0)


def white_gain(white, dtype):
    """Per-channel gains mapping white points ``(..., 3)`` (torch) to :data:`WHITE_TARGET`,
    clipped to :data:`WHITE_GAIN_RANGE`."""
    return (WHITE_TARGET / white.to(dtype).clamp(min=1e-3)).clamp(*WHITE_GAIN_RANGE)


def apply_white(x, white):
    """Map the white point of float ``(B, 3, H, W)`` images in [0, 1] to :data:`WHITE_TARGET`.

    ``white`` is ``(B, 3)`` (torch); see :func:`white_gain`.
    """
    gain = white_gain(white, x.dtype)
    return x * gain.view(*gain.shape, 1, 1)


def normalise(images, input_norm: str = "none"):
    """uint8 ``(..., H, W, 3)`` numpy or torch -> float32 torch ``(..., 3, H, W)``.

    ``input_norm`` is the model's colour convention (:data:`INPUT_NORMS`).
    """
    import torch

    arr = np.asarray(images)
    t = torch.as_tensor(arr).to(torch.float32).div_(255.0)  # (..., H, W, 3)
    if input_norm == "white-point":
        white = torch.as_tensor(np.stack([white_point(a) for a in arr.reshape(-1, *arr.shape[-3:])]))
        gain = white_gain(white, torch.float32)
        # scaled in (H, W, 3) order: the same values as apply_white, and the memory layout of
        # the plain input, which the convolutions run fastest on (about 25 ms per 300 x 300)
        t = t * gain.view(*arr.shape[:-3], 1, 1, 3)
    elif input_norm != "none":
        raise ValueError(f"unknown input normalisation {input_norm!r} (known: {INPUT_NORMS})")
    t = t.movedim(-1, -3)
    return normalise_unit(t)
