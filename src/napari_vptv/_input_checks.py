"""Checks of an image against the settings before any work (used by :mod:`napari_vptv.api`).

* an ``(H, W, 3 or 4)`` array is a colour image (:func:`is_rgb_shape`);
* a cell diameter larger than the image is refused, naming the option;
* an image of one flat colour or of noise has no cells for the WBC methods
  (:func:`featureless_result`);
* an image that cannot be segmented in the memory left is refused with the size it
  needs (:func:`check_memory_for`).

No napari or Qt imports here.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .core.batch.memory import check_memory
from .core.io.intensity import featureless
from .core.solver.segment import SegmentationResult
from .core.solver.volumes import make_volume_spec
from .options import OptionError, SegmentOptions

__all__ = ["is_rgb_shape", "spatial_shape", "featureless_result", "check_memory_for"]


def is_rgb_shape(image) -> bool:
    """``(H, W, 3 or 4)`` with H, W > 4: a colour image."""
    shape = np.shape(image)
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def spatial_shape(image, channel_axis) -> Tuple[int, ...]:
    """The shape of ``image`` without its colour axis."""
    shape = list(np.shape(image))
    if channel_axis is not None:
        shape.pop(int(channel_axis) % len(shape))
    return tuple(shape)


def featureless_result(image, opts: SegmentOptions, channel_axis) -> Optional[SegmentationResult]:
    """WBC methods: no cells in an image of one flat colour or of noise
    (:func:`~napari_vptv.core.io.intensity.featureless`); refused when exact volumes are
    asked for. Also refuses a cell diameter larger than the image. None otherwise."""
    spatial = spatial_shape(image, channel_axis)
    if opts.diameter and spatial and opts.diameter > max(spatial):
        raise OptionError(
            "diameter",
            f"the cell diameter {opts.diameter:g} px is larger than the image "
            f"({' x '.join(map(str, spatial))} px); give the typical white-cell diameter in "
            "pixels, or 0 to estimate it",
        )
    rgb = channel_axis is not None and np.shape(image)[channel_axis] in (3, 4)
    reason = featureless(image, channel_axis) if rgb else None
    if reason is None:
        return None
    if opts.volumes is not None and opts.volume_mode in (None, "exact"):
        raise ValueError(f"{reason}: there are no cells to give the requested volumes")
    prob = np.zeros((3,) + spatial, np.float32)
    prob[0] = 1.0
    result = SegmentationResult.from_arrays(
        np.zeros(spatial, np.int32),
        prob,
        n_iter=0,
        converged=True,
        class_model=None,
        volume_spec=make_volume_spec(3, "none"),
    )
    result.info = {"no_cells": reason}
    return result


def check_memory_for(image, opts: SegmentOptions, channel_axis) -> None:
    """Refuse (one line, with the size needed) an image that cannot be segmented with
    ``opts`` in the memory this process has left (:func:`~napari_vptv.core.batch.memory.check_memory`)."""
    rgb = channel_axis is not None
    if opts.is_network:
        kind, what = "network", f"segment it with {opts.method}"
    elif (
        opts.resolved_preset(rgb) == "wbc"
        and opts.volume_mode is None
        and opts.volumes is None
        and opts.volume_bounds is None
    ):
        kind, what = "default", "segment it with the WBC preset"
    else:
        kind, what = "solver", "segment it with the variational solver"
    check_memory(spatial_shape(image, channel_axis), kind=kind, n_classes=opts.n_classes_for(rgb), what=what)
