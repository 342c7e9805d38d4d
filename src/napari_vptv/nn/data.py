"""Network input conventions: class names, input normalisation, volume targets.

Loading and splitting training sources is :mod:`napari_vptv.nn.sources`; patches
:mod:`napari_vptv.nn.sampler`; augmentation :mod:`napari_vptv.nn.augment`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASSES", "MEAN", "STD", "normalise", "normalise_unit", "volume_targets"]

CLASSES = ("background", "cytoplasm", "nucleus")
#: Input normalisation: x = (rgb / 255 - MEAN) / STD (fixed, recorded in the metadata).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


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


def normalise(images):
    """uint8 ``(..., H, W, 3)`` numpy or torch -> float32 torch ``(..., 3, H, W)``."""
    import torch

    t = torch.as_tensor(np.asarray(images))
    t = t.to(torch.float32).div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    t = t.movedim(-1, -3)
    return (t - mean) / std


