"""Lazy reading and chunked writing of TIFF stacks (no napari, no Qt).

* :class:`TiffFrames`: a picklable, lazily read view of a multi-page TIFF in napari
  layout (leading axes, Y, X, colour last), reading only the pages a slice needs;
* :func:`store_labels_tiff`: computes a dask label array chunk by chunk into an
  uncompressed TIFF, so memory stays flat however long the stack is (the local
  threaded scheduler by default; a ``dask.distributed`` client works as well,
  provided the workers see the output folder).
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from .imread import TIFF_SUFFIXES, read_image, tiff_layout

__all__ = ["TiffFrames", "open_lazy", "store_labels_tiff", "tiff_layout"]

PathLike = Union[str, Path]


_TIFF_CACHE: dict = {}
_TIFF_CACHE_LOCK = threading.Lock()


class TiffFrames:
    """Lazy, picklable view of a multi-page TIFF as an array of napari layout.

    Supports ``shape``, ``dtype``, ``ndim`` and basic slicing, reading only the pages
    needed (one page per 2-D plane), so ``dask.array.from_array(TiffFrames(path),
    chunks=(1, ..., H, W))`` reads a stack slice by slice. Files whose pages are
    not one plane each (e.g. tiled volumes) are read whole on first access.
    """

    def __init__(self, path: PathLike):
        import tifffile

        self.path = str(path)
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            self.shape, self._move, self.rgb = tiff_layout(series)
            self.dtype = np.dtype(series.dtype)
            self._axes = series.axes
            n_planes = len(series.pages)
            page_shape = tuple(series.pages[0].shape) if n_planes else ()
        plane = self.shape[-3:] if self.rgb else self.shape[-2:]
        self._plane = tuple(plane)
        self._lead = tuple(self.shape[: len(self.shape) - len(plane)])
        n_lead = int(np.prod(self._lead, dtype=np.int64)) if self._lead else 1
        self._per_page = n_planes == n_lead and int(np.prod(page_shape)) == int(np.prod(plane))
        # RGB stored planar: each page is (S, Y, X)
        self._planar = self.rgb and self._move is not None and page_shape[:1] == (self.shape[-1],)
        self.ndim = len(self.shape)

    def __getstate__(self):
        return dict(self.__dict__)

    def __repr__(self):
        return f"TiffFrames({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def _handle(self):
        import tifffile

        key = (self.path, os.getpid(), threading.get_ident())
        with _TIFF_CACHE_LOCK:
            entry = _TIFF_CACHE.get(key)
            if entry is None:
                if len(_TIFF_CACHE) > 64:  # keep the number of open files bounded
                    for old in list(_TIFF_CACHE)[:32]:
                        _TIFF_CACHE.pop(old).close()
                entry = _TIFF_CACHE[key] = tifffile.TiffFile(self.path)
        return entry

    def _read_plane(self, flat_index: int) -> np.ndarray:
        tif = self._handle()
        page = tif.series[0].pages[flat_index]
        arr = page.asarray()
        if self._planar and arr.ndim == 3 and arr.shape[0] in (3, 4):
            arr = np.moveaxis(arr, 0, -1)
        return arr.reshape(self._plane)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if not self._per_page:
            import tifffile

            arr = tifffile.imread(self.path)
            if self._move is not None:
                arr = np.moveaxis(arr, *self._move)
            return np.asarray(arr.reshape(self.shape)[key])
        n = len(self._lead)
        lead_key, plane_key = key[:n], key[n:]
        ranges, squeeze = [], []
        for k, size in zip(lead_key, self._lead):
            if isinstance(k, slice):
                ranges.append(range(*k.indices(size)))
                squeeze.append(False)
            else:
                k = int(k)
                if not -size <= k < size:
                    raise IndexError(f"index {k} out of range for an axis of size {size}")
                ranges.append(range(k % size, k % size + 1))
                squeeze.append(True)
        out = np.empty(tuple(len(r) for r in ranges) + self._plane, dtype=self.dtype)
        for pos in itertools.product(*(range(len(r)) for r in ranges)):
            idx = tuple(r[i] for r, i in zip(ranges, pos))
            flat = int(np.ravel_multi_index(idx, self._lead)) if n else 0
            out[pos] = self._read_plane(flat)
        out = out[(slice(None),) * n + tuple(plane_key)]
        sq = tuple(0 if s else slice(None) for s in squeeze)
        return out[sq]

    def __array__(self, dtype=None, copy=None):
        arr = self[...]
        return arr.astype(dtype) if dtype is not None else arr


def open_lazy(path: PathLike, pixels: Optional[np.ndarray] = None):
    """The decoded image when the caller has it (``pixels``: a non-TIFF file, or a TIFF
    that :func:`~napari_vptv.core.io.imread.read_image` had to read whole), else a lazy
    array for a TIFF (:class:`TiffFrames`) or the file decoded now."""
    p = Path(path)
    if pixels is None and p.suffix.lower() in TIFF_SUFFIXES:
        return TiffFrames(p)
    img = read_image(p) if pixels is None else pixels
    if img.ndim == 3 and img.shape[-1] == 2:
        img = img[..., 0]
    return img


_MEMMAPS: dict = {}
_MEMMAP_LOCK = threading.Lock()


def _contiguous_offset(key, shape):
    """Flat start index of ``array[key]`` if that region is contiguous in C order, else None."""
    starts, lengths = [], []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                return None
            starts.append(start)
            lengths.append(max(stop - start, 0))
        else:
            starts.append(int(k) % n)
            lengths.append(1)
    starts += [0] * (len(shape) - len(starts))
    lengths += list(shape[len(lengths) :])
    if 0 in lengths:
        return None
    # contiguous: after the first axis with more than one element, every axis is whole
    first = next((i for i, ln in enumerate(lengths) if ln != 1), len(lengths))
    if any(lengths[i] != shape[i] for i in range(first + 1, len(shape))):
        return None
    return int(np.ravel_multi_index(starts, shape)) if shape else 0


class _TiffFileTarget:
    """``__setitem__`` target for ``dask.array.store`` writing into an uncompressed TIFF.

    Contiguous regions (one block per slice) are written with ``os.pwrite`` at their
    offset, so written pages stay in the OS page cache and do not add to the
    process's memory (a memory map would count every page it touched); other regions
    go through ``tifffile.memmap``. Picklable: workers of a distributed cluster open
    the file themselves, so it must be on a file system they see.
    """

    def __init__(self, path: PathLike, shape, dtype, dataoffset: int):
        self.path = str(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.dataoffset = int(dataoffset)

    def _mm(self):
        import tifffile

        key = (self.path, os.getpid())
        with _MEMMAP_LOCK:
            mm = _MEMMAPS.get(key)
            if mm is None:
                mm = _MEMMAPS[key] = tifffile.memmap(self.path, mode="r+")
        return mm

    def __setitem__(self, key, value):
        if not isinstance(key, tuple):
            key = (key,)
        start = _contiguous_offset(key, self.shape)
        if start is None:
            self._mm()[key] = value
            return
        buf = np.ascontiguousarray(value, dtype=self.dtype)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, buf.tobytes(), self.dataoffset + start * self.dtype.itemsize)
        finally:
            os.close(fd)

    def read(self, index: Tuple[int, ...]) -> np.ndarray:
        """Read ``array[index]`` (leading integer indices) with a plain file read."""
        piece = self.shape[len(index) :]
        start = int(np.ravel_multi_index(tuple(index) + (0,) * len(piece), self.shape))
        count = int(np.prod(piece, dtype=np.int64))
        with open(self.path, "rb") as fh:
            fh.seek(self.dataoffset + start * self.dtype.itemsize)
            return np.fromfile(fh, dtype=self.dtype, count=count).reshape(piece)

    def close(self):
        with _MEMMAP_LOCK:
            mm = _MEMMAPS.pop((self.path, os.getpid()), None)
        if mm is not None:
            mm.flush()
            del mm


def store_labels_tiff(
    labels,
    path: PathLike,
    *,
    scheduler=None,
    num_workers: Optional[int] = None,
    metadata: Optional[dict] = None,
) -> Path:
    """Compute a dask label array chunk by chunk into a (memory-mapped) TIFF file.

    Parameters
    ----------
    labels : dask.array.Array
        E.g. from :func:`segment_stack_dask`.
    path : str or Path
        TIFF file to create (uncompressed, contiguous, readable with
        ``tifffile.imread`` as an array of ``labels.shape``).
    scheduler : str or distributed.Client, optional
        ``"threads"`` (default), ``"sync"``, or a ``dask.distributed`` client.
    num_workers : int, optional
        Threads of the local threaded scheduler.
    metadata : dict, optional
        Extra tifffile metadata (stored as JSON in the description).

    Returns
    -------
    target
        The written file (``.path``), with ``.read(index)`` to read a slice back
        without mapping the file.
    """
    import dask.array as da
    import tifffile

    p = Path(path)
    md = {"axes": "Q" * (labels.ndim - 2) + "YX"}
    if metadata:
        md.update(metadata)
    mm = tifffile.memmap(str(p), shape=labels.shape, dtype=labels.dtype, metadata=md)
    del mm  # created (uncompressed, contiguous); every writer opens it itself
    with tifffile.TiffFile(str(p)) as tif:
        dataoffset = tif.series[0].dataoffset
    target = _TiffFileTarget(p, labels.shape, labels.dtype, dataoffset)
    kwargs = {}
    if scheduler is None or isinstance(scheduler, str):
        kwargs["scheduler"] = scheduler or "threads"
        if num_workers:
            kwargs["num_workers"] = int(num_workers)
    else:
        kwargs["scheduler"] = scheduler  # a distributed Client
    try:
        da.store(labels, target, lock=False, compute=True, **kwargs)
    finally:
        target.close()
    return target
