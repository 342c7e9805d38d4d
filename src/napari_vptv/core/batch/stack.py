"""Slice-by-slice (or volume-by-volume) segmentation of stacks, without napari.

A plain generator, :func:`segment_stack`, walks the leading axes of an image stack
(ZYX, TYX, TZYX, ..., grey or RGB), segments one 2-D slice (or one 3-D volume) at a
time with any single-image function, and yields each finished piece as soon as it is
done. It serves the napari widget (wrapped in a ``thread_worker``: the output layer
fills in slice by slice and a Cancel stops between slices), the CLI and the tests.

Only one slice is read at a time: for a dask (or zarr, or memory-mapped) array
``data[index]`` is taken first and only that piece is converted with
``np.asarray``, so a stack larger than memory is never loaded whole.

>>> import numpy as np
>>> from napari_vptv.core.batch.stack import segment_stack
>>> stack = np.zeros((3, 8, 8)); stack[:, 2:6, 2:6] = 1
>>> def threshold(image, *, channel_axis=None):
...     return (image > 0.5).astype(np.int32)
>>> for item in segment_stack(stack, threshold):
...     print(item.index, item.done, item.total, item.labels.sum())
(0,) 1 3 16
(1,) 2 3 16
(2,) 3 3 16
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple

import numpy as np

__all__ = [
    "STACK_MODES",
    "StackSlice",
    "stack_layout",
    "segment_stack",
    "segment_stack_array",
    "label_dtype",
    "labels_of",
]

#: ``"slices"``: every 2-D plane separately; ``"volume"``: the last three spatial axes
#: together (3-D TV, 3-D class fractions).
STACK_MODES = ("slices", "volume")


class StackSlice(NamedTuple):
    """One finished piece of a stack, as yielded by :func:`segment_stack`.

    Attributes
    ----------
    index : tuple of int
        Index into the leading (non-segmented) axes; ``data[index]`` is the piece.
        ``()`` when the whole input was one piece.
    labels : ndarray or None
        Labels of the piece (its spatial shape), or None if it failed
        (``on_error="skip"``).
    done : int
        Number of pieces finished so far (this one included).
    total : int
        Number of pieces in the stack.
    volumes : ndarray or None
        Achieved class fractions of ``labels`` (from the segmentation result when it
        has ``volumes``, else counted).
    result : object
        What ``segment_fn`` returned (e.g. a ``SegmentationResult``), or None.
    error : Exception or None
        The error of a failed piece (``on_error="skip"``).
    """

    index: Tuple[int, ...]
    labels: Optional[np.ndarray]
    done: int
    total: int
    volumes: Optional[np.ndarray] = None
    result: Any = None
    error: Optional[BaseException] = None


def stack_layout(shape, *, rgb: bool = False, mode: str = "slices"):
    """Split a stack's shape into leading (iterated) axes and the piece's axes.

    Parameters
    ----------
    shape : tuple of int
        Shape of the image data (napari layout: leading axes, then Y, X, and a last
        colour axis of size 3 or 4 when ``rgb``).
    rgb : bool
        Whether the last axis holds colour channels.
    mode : {"slices", "volume"}
        ``"slices"``: pieces are 2-D planes (Y, X). ``"volume"``: pieces are 3-D
        volumes (Z, Y, X); the input needs at least three spatial axes.

    Returns
    -------
    leading_shape : tuple of int
        Shape of the iterated axes (``()`` for a single piece).
    label_shape : tuple of int
        Shape of the full output labels (the input's shape without the colour axis).

    Raises
    ------
    ValueError
        Unknown mode, too few axes, a zero-size axis, or a bad colour axis.
    """
    shape = tuple(int(s) for s in shape)
    if mode not in STACK_MODES:
        raise ValueError(f"mode must be one of {STACK_MODES}, got {mode!r}")
    if rgb:
        if len(shape) < 3 or shape[-1] not in (3, 4):
            raise ValueError(f"an RGB image needs a last colour axis of size 3 or 4, got shape {shape}")
        spatial = shape[:-1]
    else:
        spatial = shape
    n_piece = 2 if mode == "slices" else 3
    if len(spatial) < n_piece:
        what = "2-D" if mode == "slices" else "3-D (volume mode needs Z, Y, X)"
        raise ValueError(f"image must be at least {what}, got {len(spatial)} spatial axes (shape {shape}, rgb={rgb})")
    if any(s == 0 for s in shape):
        raise ValueError(f"image has a zero-size axis (shape {shape})")
    return spatial[: len(spatial) - n_piece], spatial


def label_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned integer dtype holding labels ``0 .. n_classes - 1``."""
    return np.dtype(np.uint8) if n_classes <= 256 else np.dtype(np.int32)


def labels_of(result) -> np.ndarray:
    """The label array of a segmentation result (or of a plain label array)."""
    labels = getattr(result, "labels", result)
    return np.asarray(labels)


def segment_stack(
    data,
    segment_fn: Callable[..., Any],
    *,
    rgb: bool = False,
    mode: str = "slices",
    on_error: str = "raise",
    n_classes: Optional[int] = None,
    warm_start: bool = False,
) -> Iterator[StackSlice]:
    """Segment a stack piece by piece, yielding each finished piece.

    Parameters
    ----------
    data : array-like
        numpy, dask, zarr or any array supporting integer indexing and ``.shape``.
        Layout: leading axes (e.g. T, Z), then Y, X, plus a last colour axis if
        ``rgb``. Only one piece at a time is converted to numpy.
    segment_fn : callable ``(image, *, channel_axis) -> labels or result``
        Single-image segmentation, called with a numpy piece (2-D, or 3-D in volume
        mode, plus a last colour axis when ``rgb``) and ``channel_axis=-1`` (RGB) or
        ``None`` (grey). It returns an integer label array of the piece's spatial
        shape, or an object with ``.labels`` (and optionally ``.volumes``), such as
        :class:`~napari_vptv.core.solver.segment.SegmentationResult`. E.g.
        ``functools.partial(vptv_segment, n_classes=3, volumes=[...])``.
    rgb : bool
        Whether the last axis is a colour axis (napari's ``layer.rgb``).
    mode : {"slices", "volume"}
        Segment every 2-D plane, or every 3-D volume of the last three spatial axes.
    on_error : {"raise", "skip"}
        ``"raise"``: an error in ``segment_fn`` propagates (the generator stops).
        ``"skip"``: the piece is yielded with ``labels=None`` and ``error`` set, and
        the rest continue.
    n_classes : int, optional
        Length of the counted ``volumes`` when ``segment_fn`` does not report them.
    warm_start : bool
        Pass the previous piece's result to ``segment_fn`` as ``warm_start=`` (None
        for the first piece and after a failed one), e.g. for
        :func:`~napari_vptv.core.solver.segment.vptv_segment`, which then starts from the
        previous slice's dual variables (fewer iterations on smooth stacks).
        ``segment_fn`` must accept a ``warm_start`` keyword.

    Yields
    ------
    StackSlice
        ``(index, labels, done, total, volumes, result, error)`` per piece, in
        C order of the leading axes.

    Raises
    ------
    ValueError
        Bad layout (see :func:`stack_layout`), unknown ``on_error``, or labels of the
        wrong shape from ``segment_fn``.

    Notes
    -----
    Stopping early (``generator.close()``, or napari's ``worker.quit()``) stops at
    the next piece boundary; pieces already yielded stay valid.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    leading, spatial = stack_layout(np.shape(data), rgb=rgb, mode=mode)
    if warm_start:
        _check_accepts(segment_fn, "warm_start")
    total = int(np.prod(leading, dtype=np.int64)) if leading else 1
    pieces = _segment_pieces(
        data,
        leading,
        spatial[len(leading) :],
        segment_fn,
        channel_axis=-1 if rgb else None,
        on_error=on_error,
        warm_start=warm_start,
    )
    for done, (index, result, labels, error) in enumerate(pieces, start=1):
        volumes = None if error is not None else _piece_volumes(result, labels, n_classes)
        yield StackSlice(index, labels, done, total, volumes, result, error)


def _segment_pieces(data, leading, piece_shape, segment_fn, *, channel_axis, on_error, warm_start):
    """Yield ``(index, result, labels, error)`` per piece, in C order of the leading axes.

    A failed piece gives ``(index, None, None, exc)`` (``on_error="skip"``) or raises.
    With ``warm_start`` the previous good result is passed on (None after a failure).
    """
    indices = itertools.product(*(range(n) for n in leading)) if leading else iter([()])
    previous = None
    for index in indices:
        piece = data[index] if index else data
        kwargs = {"warm_start": previous} if warm_start else {}
        try:
            arr = np.asarray(piece)  # only this piece is read / computed
            result = segment_fn(arr, channel_axis=channel_axis, **kwargs)
            labels = labels_of(result)
            if labels.shape != piece_shape:
                raise ValueError(
                    f"segment_fn returned labels of shape {labels.shape} for a piece of spatial shape {piece_shape}"
                )
        except Exception as exc:  # noqa: BLE001 - reported per piece or re-raised
            if on_error == "raise":
                raise
            previous = None
            yield tuple(index), None, None, exc
            continue
        previous = result
        yield tuple(index), result, labels, None


def _piece_volumes(result, labels, n_classes) -> np.ndarray:
    """Class fractions of a piece: the result's ``volumes`` if it has them, else counted."""
    volumes = getattr(result, "volumes", None)
    if volumes is None:
        k = n_classes if n_classes is not None else int(labels.max(initial=0)) + 1
        volumes = np.bincount(labels.ravel().astype(np.int64), minlength=k) / labels.size
    return np.asarray(volumes, dtype=float)


def _check_accepts(fn, name: str) -> None:
    """Raise a one-line ValueError unless ``fn`` takes keyword ``name`` (or ``**kw``)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # not introspectable: let the call tell
    if not any(p.name == name or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"warm_start=True needs a segment_fn that accepts a {name!r} keyword")


def segment_stack_array(
    data,
    segment_fn: Callable[..., Any],
    *,
    rgb: bool = False,
    mode: str = "slices",
    n_classes: Optional[int] = None,
    out: Optional[np.ndarray] = None,
    warm_start: bool = False,
) -> np.ndarray:
    """Run :func:`segment_stack` to the end and return the full label array.

    ``warm_start`` as in :func:`segment_stack`. ``out`` (shape = the input's shape
    without the colour axis) is filled in place if given; otherwise a ``uint8`` (``int32`` for more than 256 classes, or when
    ``n_classes`` is unknown) array is allocated.
    """
    _, label_shape = stack_layout(np.shape(data), rgb=rgb, mode=mode)
    if out is None:
        out = np.zeros(label_shape, dtype=label_dtype(n_classes) if n_classes else np.int32)
    elif tuple(out.shape) != tuple(label_shape):
        raise ValueError(f"out must have shape {label_shape}, got {out.shape}")
    for item in segment_stack(data, segment_fn, rgb=rgb, mode=mode, n_classes=n_classes, warm_start=warm_start):
        out[item.index] = item.labels
    return out
