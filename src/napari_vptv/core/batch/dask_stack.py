"""A stack segmented lazily with dask: one ``map_blocks`` task per slice (or volume).

The per-slice work is :func:`napari_vptv.core.batch.stack.segment_stack` (the same code
as the napari widget); a slice that fails is filled with a sentinel value that
:mod:`napari_vptv.core.batch.run` reports (and writes as 0). No napari, no Qt.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np

from .stack import segment_stack, stack_layout

__all__ = ["segment_stack_dask", "label_dtype_and_sentinel"]


def label_dtype_and_sentinel(n_classes: int):
    """Label dtype of a stack and the value marking a failed piece (its maximum)."""
    if n_classes < 255:
        return np.dtype(np.uint8), 255
    if n_classes < 65535:
        return np.dtype(np.uint16), 65535
    raise ValueError(f"too many classes for a label stack: {n_classes}")


def _segment_block(block, segment_fn, rgb, mode, sentinel, label_dtype, progress):
    """Segment every piece of one dask block; failed pieces are filled with ``sentinel``."""
    block = np.asarray(block)
    if rgb and block.shape[-1] == 4:
        block = block[..., :3]
    n_piece = 2 if mode == "slices" else 3
    n_lead = block.ndim - n_piece - (1 if rgb else 0)
    out = np.empty(block.shape[: n_lead + n_piece], dtype=label_dtype)
    for item in segment_stack(block, segment_fn, rgb=rgb, mode=mode, on_error="skip"):
        lab = item.labels
        bad = lab is None or lab.min() < 0 or lab.max() >= sentinel
        out[item.index] = sentinel if bad else lab
        if progress is not None:
            progress(1)
    return out


def segment_stack_dask(
    array,
    segment_fn: Callable[..., Any],
    *,
    rgb: bool = False,
    mode: str = "slices",
    n_classes: int = 2,
    progress: Optional[Callable[[int], None]] = None,
):
    """Lazy labels of a stack, one dask ``map_blocks`` task per slice (or volume).

    Parameters
    ----------
    array : array-like
        numpy, dask, zarr or :class:`TiffFrames`, napari layout (leading axes, Y, X,
        plus a last colour axis of size 3 or 4 when ``rgb``; an alpha channel is
        dropped).
    segment_fn : callable ``(image, *, channel_axis) -> labels or result``
        Single-image segmentation (:class:`napari_vptv.api.SegmentFn`, or any function accepted by
        :func:`napari_vptv.core.batch.stack.segment_stack`). Must be picklable for a
        distributed cluster.
    rgb : bool
        Whether the last axis is a colour axis.
    mode : {"slices", "volume"}
        2-D slices, or 3-D volumes (the last three spatial axes).
    n_classes : int
        Number of classes (chooses the label dtype).
    progress : callable ``(n) -> None``, optional
        Called with 1 after every finished piece (local schedulers only).

    Returns
    -------
    labels : dask.array.Array
        Shape of ``array`` without the colour axis, dtype ``uint8`` (``uint16``
        from 255 classes). A piece that failed is filled with
        ``np.iinfo(dtype).max`` (see :func:`store_labels_tiff`, which reports it).

    Raises
    ------
    ValueError
        Bad layout (zero-size axis, too few axes, bad colour axis).
    """
    import dask.array as da

    leading, spatial = stack_layout(np.shape(array), rgb=rgb, mode=mode)
    dtype, sentinel = label_dtype_and_sentinel(int(n_classes))
    piece = spatial[len(leading) :]
    chunks = (1,) * len(leading) + tuple(piece) + ((array.shape[-1],) if rgb else ())
    if isinstance(array, da.Array):
        darr = array.rechunk(chunks)
    else:
        name = None
        from ..io.tiff import TiffFrames

        if isinstance(array, TiffFrames):
            from dask.base import tokenize

            st = os.stat(array.path)
            name = "tiff-frames-" + tokenize(array.path, st.st_mtime_ns, st.st_size)
        darr = da.from_array(
            array, chunks=chunks, lock=False, name=name, meta=np.empty((0,) * len(chunks), dtype=array.dtype)
        )
    kwargs = dict(segment_fn=segment_fn, rgb=rgb, mode=mode, sentinel=sentinel, label_dtype=dtype, progress=progress)
    if rgb:
        return darr.map_blocks(
            _segment_block,
            dtype=dtype,
            drop_axis=darr.ndim - 1,
            meta=np.empty((0,) * (darr.ndim - 1), dtype=dtype),
            **kwargs,
        )
    return darr.map_blocks(_segment_block, dtype=dtype, meta=np.empty((0,) * darr.ndim, dtype=dtype), **kwargs)
