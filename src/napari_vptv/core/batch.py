"""Headless batch segmentation of files, folders, globs and stacks (no napari, no Qt).

The engine behind ``vptv segment``:

* :func:`iter_inputs` expands files, folders and glob patterns into input items
  (a missing path or a pattern matching nothing becomes an item that fails with a
  clear message, so one typo does not stop a batch);
* :func:`segment_file` segments one file and writes one label file next to the
  others in the output folder (same stem). A 2-D image (grey or RGB) gives a PNG or
  TIFF label image; a stack (multi-page TIFF: ZYX, TYX, TZYX, ..., grey or RGB) gives
  a multi-page TIFF of the same leading shape, segmented slice by slice (or volume by
  volume, ``mode="volume"``) with dask;
* :func:`segment_stack_dask` turns a stack (numpy, dask, or the lazy TIFF reader
  :class:`TiffFrames`) into a lazy dask array of labels, one ``map_blocks`` task per
  slice, with the per-slice work done by
  :func:`napari_vptv.core.stack.segment_stack` (the same code as the napari widget);
* :func:`store_labels_tiff` computes such an array chunk by chunk into a
  memory-mapped TIFF, so memory stays flat however long the stack is. The local
  threaded scheduler is the default; a ``dask.distributed`` ``Client`` (e.g. from
  ``--scheduler ADDRESS``) works as well, provided the workers see the output folder.

Resume and safety rules: an output that already exists is skipped (``"skipped"``)
unless ``overwrite=True``; outputs are first written under a hidden temporary name
and moved into place only when complete (an interrupted run never leaves a
half-written file under the final name, and a file that appeared meanwhile is not
clobbered). Errors are captured per item (unreadable file, NaN slice, zero-size axis,
...) and per slice: the other slices and files are still done.

>>> from napari_vptv.core.batch import make_segment_fn, segment_file   # doctest: +SKIP
>>> fn = make_segment_fn("vptv", preset="none", n_classes=2)          # doctest: +SKIP
>>> segment_file("stack.tif", "out/", fn).status                      # doctest: +SKIP
'done'
"""

from __future__ import annotations

import glob as _glob
import itertools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .io import IMAGE_SUFFIXES, read_image, write_labels
from .stack import segment_stack, stack_layout

__all__ = [
    "METHODS",
    "PRESETS",
    "InputItem",
    "InputInfo",
    "FileResult",
    "BatchSummary",
    "SegmentFn",
    "make_segment_fn",
    "iter_inputs",
    "inspect_input",
    "output_path",
    "TiffFrames",
    "open_lazy",
    "segment_stack_dask",
    "store_labels_tiff",
    "segment_file",
    "run_batch",
]

PathLike = Union[str, Path]

METHODS = ("vptv", "unet", "vptv-unet")
#: ``"auto"``: the WBC preset for RGB images when the number of classes is unset or 3,
#: no preset otherwise.
PRESETS = ("auto", "wbc", "none")
_TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------- #
# the per-image segmentation function
# --------------------------------------------------------------------------- #
def _labels_of(result) -> np.ndarray:
    return np.asarray(getattr(result, "labels", result))


class SegmentFn:
    """Picklable single-image segmentation ``fn(image, *, channel_axis) -> result``.

    The callable handed to :func:`napari_vptv.core.stack.segment_stack` and to the
    dask workers. Build it with :func:`make_segment_fn`, which validates the options
    once, before any file is read.
    """

    def __init__(self, method: str = "vptv", preset: str = "auto", **options):
        self.method = method
        self.preset = preset
        self.options = {k: v for k, v in options.items() if v is not None}

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"SegmentFn(method={self.method!r}, preset={self.preset!r}, {opts})"

    # which preset applies to an image with / without colour channels
    def resolved_preset(self, rgb: bool) -> str:
        if self.preset != "auto":
            return self.preset
        if self.method != "vptv":
            return "wbc"  # the networks are WBC networks
        k = self.options.get("n_classes")
        return "wbc" if rgb and (k is None or int(k) == 3) else "none"

    def n_classes(self, rgb: bool) -> int:
        """Number of classes of the labels for an RGB / grey input."""
        if self.resolved_preset(rgb) == "wbc":
            return 3
        k = self.options.get("n_classes")
        if k is not None:
            return int(k)
        if self.options.get("volumes") is not None:
            return len(self.options["volumes"])
        if self.options.get("lower") is not None:
            return len(self.options["lower"])
        return 2

    def __call__(self, image, *, channel_axis=None):
        from .methods import segment_image  # the single dispatcher (solver and networks)

        rgb = channel_axis is not None
        opts = dict(self.options)
        lower, upper = opts.pop("lower", None), opts.pop("upper", None)
        if lower is not None or upper is not None:
            opts["volume_bounds"] = (lower, upper)
        return segment_image(np.asarray(image), method=self.method, preset=self.resolved_preset(rgb),
                             channel_axis=channel_axis, **opts)


def make_segment_fn(
    method: str = "vptv",
    *,
    preset: str = "auto",
    n_classes: Optional[int] = None,
    volume_mode: Optional[str] = None,
    volumes: Optional[Sequence[float]] = None,
    lower: Optional[Sequence[float]] = None,
    upper: Optional[Sequence[float]] = None,
    epsilon: Optional[float] = None,
    tv_weight: Optional[float] = None,
    edge: Optional[bool] = None,
    max_num_iter: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
) -> SegmentFn:
    """Validate segmentation options and return a picklable :class:`SegmentFn`.

    Parameters
    ----------
    method : {"vptv", "unet", "vptv-unet"}
        Variational solver or one of the shipped WBC networks.
    preset : {"auto", "wbc", "none"}
        ``"wbc"``: the white blood cell preset (3 classes, learned colour model,
        volume priors); ``"none"``: k-means initialised solver; ``"auto"``: WBC for
        RGB images when ``n_classes`` is unset or 3, else none.
    n_classes : int, optional
        Number of classes ``I`` (default 2 without a preset).
    volume_mode : {"exact", "interval", "none"}, optional
        Inferred from the given volumes / bounds when None (the preset's default
        for the WBC preset).
    volumes : sequence of float, optional
        Exact class fractions ``V_i`` (sum 1), applied to every slice.
    lower, upper : sequence of float, optional
        Per-class fraction bounds (``volume_mode="interval"``).
    epsilon, tv_weight, edge, max_num_iter : optional
        Solver settings ``eps``, ``lambda``, edge function, iterations (defaults:
        the preset's or :func:`~napari_vptv.core.segment.vptv_segment`'s).
    seed : int
        Seed of the k-means initialisation.
    device : str
        torch device.

    Raises
    ------
    ValueError
        Unknown method / preset, or impossible volumes (checked here, before any
        image is read).
    """
    from .volumes import make_volume_spec

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if n_classes is not None and (int(n_classes) != n_classes or n_classes < 2):
        raise ValueError(f"the number of classes must be an integer >= 2, got {n_classes}")
    if preset == "wbc" and n_classes not in (None, 3):
        raise ValueError(f"the WBC preset has 3 classes, got n_classes={n_classes}")
    if method != "vptv" and n_classes not in (None, 3):
        raise ValueError(f"method {method!r} (a WBC network) has 3 classes, got n_classes={n_classes}")
    if (lower is None) != (upper is None):
        raise ValueError("interval volumes need both lower and upper bounds")
    if epsilon is not None and not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive number, got {epsilon}")
    if tv_weight is not None and not (np.isfinite(tv_weight) and tv_weight >= 0):
        raise ValueError(f"the TV weight must be >= 0, got {tv_weight}")
    if max_num_iter is not None and int(max_num_iter) < 1:
        raise ValueError(f"the maximum number of iterations must be >= 1, got {max_num_iter}")
    volumes = None if volumes is None else [float(v) for v in volumes]
    lower = None if lower is None else [float(v) for v in lower]
    upper = None if upper is None else [float(v) for v in upper]
    k = n_classes
    if k is None:
        given = volumes if volumes is not None else lower
        k = len(given) if given is not None else (3 if (preset == "wbc" or method != "vptv") else None)
    if volume_mode is not None or volumes is not None or lower is not None:
        # validate now (one clear message before any file is touched)
        if not (volume_mode in ("exact", "interval") and volumes is None and lower is None
                and (preset != "none" or method != "vptv")):  # else: the preset's priors
            make_volume_spec(k if k is not None else 2, volume_mode, volumes, lower, upper)
    return SegmentFn(
        method,
        preset,
        n_classes=n_classes,
        volume_mode=volume_mode,
        volumes=volumes,
        lower=lower,
        upper=upper,
        epsilon=epsilon,
        tv_weight=tv_weight,
        edge=edge,
        max_num_iter=max_num_iter,
        seed=int(seed),
        device=device,
    )


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class InputItem:
    """One input of a batch: a file, or a problem found while listing the inputs."""

    path: Path
    problem: Optional[str] = None


def iter_inputs(
    paths_or_globs: Iterable[PathLike],
    *,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> Iterator[InputItem]:
    """Expand files, folders and glob patterns into :class:`InputItem` s.

    * a file is taken as it is (whatever its suffix: a non-image fails when read);
    * a folder gives its image files (by suffix, not recursive), sorted;
    * a pattern (``*``, ``?``, ``[``) gives the matching files, sorted
      (``**`` is recursive);
    * a missing path, a pattern matching nothing or a folder without images gives
      an item with ``problem`` set;
    * a file listed twice is given once.
    """
    seen = set()
    sfx = tuple(s.lower() for s in suffixes)
    for entry in paths_or_globs:
        if isinstance(entry, InputItem):  # already expanded
            key = os.path.realpath(entry.path)
            if entry.problem is None and key in seen:
                continue
            seen.add(key)
            yield entry
            continue
        s = str(entry)
        p = Path(s).expanduser()
        if any(c in s for c in "*?["):
            found = sorted(Path(f) for f in _glob.glob(str(p), recursive=True) if Path(f).is_file())
            if not found:
                yield InputItem(p, f"no file matches the pattern '{s}'")
                continue
        elif not p.exists():
            yield InputItem(p, f"input '{s}' does not exist")
            continue
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in sfx
                           and not f.name.startswith("."))
            if not found:
                yield InputItem(p, f"folder '{s}' holds no image files ({', '.join(sfx)})")
                continue
        else:
            found = [p]
        for f in found:
            key = os.path.realpath(f)
            if key in seen:
                continue
            seen.add(key)
            yield InputItem(f)


@dataclass(frozen=True)
class InputInfo:
    """Layout of an input file, read from its header where possible.

    ``shape`` is in napari layout (leading axes, Y, X, then a colour axis when
    ``rgb``); ``leading`` are the leading (slice) axes, ``()`` for a 2-D image.
    """

    path: Path
    shape: Tuple[int, ...]
    dtype: np.dtype
    rgb: bool
    leading: Tuple[int, ...]

    @property
    def is_stack(self) -> bool:
        """Whether there are slices (leading axes) to iterate over."""
        return len(self.leading) > 0

    @property
    def label_ndim(self) -> int:
        """Dimensionality of the label image (the shape without the colour axis)."""
        return len(self.shape) - (1 if self.rgb else 0)


def _tiff_layout(series) -> Tuple[Tuple[int, ...], Optional[Tuple[int, int]], bool]:
    """(napari shape, sample-axis move ``(from, to)`` or None, rgb) of a tifffile series.

    Samples (``S``) form the colour axis (moved last) when the TIFF says RGB (except
    planar float data, see below); otherwise (e.g. a 4-slice float stack stored planar, "minisblack") they are a
    leading axis, moved just before Y, X.
    """
    shape = tuple(int(s) for s in series.shape)
    axes = series.axes
    s_pos = axes.find("S")
    if s_pos < 0:
        return shape, None, False
    photometric = getattr(series.pages[0], "photometric", None)
    is_rgb = int(photometric) == 2 if photometric is not None else False  # PHOTOMETRIC.RGB
    if is_rgb and axes.endswith("SYX") and np.dtype(series.dtype).kind == "f":
        # tifffile.imwrite stores a (3 or 4, Y, X) array as planar RGB by default;
        # for float data that is nearly always a small stack, not a colour image
        is_rgb = False
    if is_rgb and shape[s_pos] in (3, 4):
        to = len(shape) - 1
    else:
        to = len(shape) - 3 if axes.endswith("S") else max(axes.find("Y") - 1, 0)
        is_rgb = False
    order = list(range(len(shape)))
    order.insert(to, order.pop(s_pos))
    return tuple(shape[i] for i in order), ((s_pos, to) if s_pos != to else None), is_rgb


def inspect_input(path: PathLike, *, mode: str = "slices") -> InputInfo:
    """Read the layout of an image file (TIFF: from the header only).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing or unreadable file, a zero-size axis, too few spatial axes.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input '{p}' does not exist")
    if p.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(str(p)) as tif:
                if not tif.series:
                    raise ValueError("no image series")
                series = tif.series[0]
                shape, _, rgb = _tiff_layout(series)
                dtype = np.dtype(series.dtype)
        except (ValueError, OSError, tifffile.TiffFileError, IndexError, KeyError) as exc:
            raise ValueError(f"could not read TIFF file '{p}': {exc}") from None
    else:
        img = read_image(p)  # PNG/JPEG/BMP are small: just read them
        shape, dtype = img.shape, img.dtype
        rgb = img.ndim == 3 and img.shape[-1] in (3, 4)
        if img.ndim == 3 and img.shape[-1] == 2:  # grey + alpha
            shape, rgb = img.shape[:2], False
    if any(s == 0 for s in shape):
        raise ValueError(f"input '{p}' has a zero-size axis (shape {tuple(shape)})")
    leading, _ = stack_layout(shape, rgb=rgb, mode=mode)
    return InputInfo(p, tuple(shape), np.dtype(dtype), bool(rgb), tuple(leading))


def output_path(info_or_path, out_dir: PathLike, fmt: str = "png", *, is_stack: Optional[bool] = None) -> Path:
    """Output file for an input: ``out_dir / <stem>.<fmt>``; stacks and volumes always ``.tif``."""
    p = info_or_path.path if isinstance(info_or_path, InputInfo) else Path(info_or_path)
    if isinstance(info_or_path, InputInfo):
        stack = info_or_path.label_ndim > 2
    else:
        stack = bool(is_stack)
    if fmt not in ("png", "tif"):
        raise ValueError(f"output format must be 'png' or 'tif', got {fmt!r}")
    suffix = ".tif" if (stack or fmt == "tif") else ".png"
    return Path(out_dir) / (p.stem + suffix)


def _possible_outputs(path: Path, out_dir: Path, fmt: str) -> List[Path]:
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return [output_path(path, out_dir, fmt, is_stack=False), output_path(path, out_dir, fmt, is_stack=True)]
    return [output_path(path, out_dir, fmt, is_stack=False)]


# --------------------------------------------------------------------------- #
# lazy stacks
# --------------------------------------------------------------------------- #
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
            self.shape, self._move, self.rgb = _tiff_layout(series)
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
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
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


def open_lazy(path: PathLike):
    """A lazy array for a TIFF (:class:`TiffFrames`), the decoded image otherwise."""
    p = Path(path)
    if p.suffix.lower() in _TIFF_SUFFIXES:
        return TiffFrames(p)
    img = read_image(p)
    if img.ndim == 3 and img.shape[-1] == 2:
        img = img[..., 0]
    return img


# --------------------------------------------------------------------------- #
# dask: segment a stack slice by slice
# --------------------------------------------------------------------------- #
def _label_dtype_and_sentinel(n_classes: int):
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
        Single-image segmentation (:class:`SegmentFn`, or any function accepted by
        :func:`napari_vptv.core.stack.segment_stack`). Must be picklable for a
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
    dtype, sentinel = _label_dtype_and_sentinel(int(n_classes))
    piece = spatial[len(leading):]
    chunks = (1,) * len(leading) + tuple(piece) + ((array.shape[-1],) if rgb else ())
    if isinstance(array, da.Array):
        darr = array.rechunk(chunks)
    else:
        name = None
        if isinstance(array, TiffFrames):
            from dask.base import tokenize

            st = os.stat(array.path)
            name = "tiff-frames-" + tokenize(array.path, st.st_mtime_ns, st.st_size)
        darr = da.from_array(array, chunks=chunks, lock=False, name=name,
                             meta=np.empty((0,) * len(chunks), dtype=array.dtype))
    kwargs = dict(segment_fn=segment_fn, rgb=rgb, mode=mode, sentinel=sentinel, label_dtype=dtype, progress=progress)
    if rgb:
        return darr.map_blocks(_segment_block, dtype=dtype, drop_axis=darr.ndim - 1,
                               meta=np.empty((0,) * (darr.ndim - 1), dtype=dtype), **kwargs)
    return darr.map_blocks(_segment_block, dtype=dtype, meta=np.empty((0,) * darr.ndim, dtype=dtype), **kwargs)


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
    lengths += list(shape[len(lengths):])
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
        piece = self.shape[len(index):]
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


# --------------------------------------------------------------------------- #
# one file
# --------------------------------------------------------------------------- #
@dataclass
class FileResult:
    """Outcome of :func:`segment_file`.

    Attributes
    ----------
    input : Path
    output : Path or None
    status : "done", "skipped" or "failed"
    message : str
        Reason of a skip / failure ("" when done).
    shape : tuple
        Label shape written.
    slice_volumes : list of (index, fractions)
        Achieved class fractions per slice (one entry ``((), fractions)`` for a
        2-D image); failed slices are absent.
    failed_slices : list of (index, message)
    """

    input: Path
    output: Optional[Path] = None
    status: str = "done"
    message: str = ""
    shape: Tuple[int, ...] = ()
    slice_volumes: List[Tuple[Tuple[int, ...], np.ndarray]] = field(default_factory=list)
    failed_slices: List[Tuple[Tuple[int, ...], str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def _error_text(exc: BaseException) -> str:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    if isinstance(exc, (ValueError, FileNotFoundError, IndexError)):
        return msg
    return f"{type(exc).__name__}: {msg}"


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished temporary file into place; never clobber without ``overwrite``."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic, fails if ``final`` exists
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise FileExistsError(f"output '{final}' appeared meanwhile; not overwritten") from None
    except OSError:  # file systems without hard links
        if final.exists():
            tmp.unlink(missing_ok=True)
            raise FileExistsError(f"output '{final}' appeared meanwhile; not overwritten") from None
        os.replace(tmp, final)
        return
    tmp.unlink()


def _volumes(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels.ravel().astype(np.int64), minlength=k)[: max(k, int(labels.max()) + 1)] / labels.size


def segment_file(
    path: PathLike,
    out_dir: PathLike,
    segment_fn: SegmentFn,
    *,
    fmt: str = "png",
    overwrite: bool = False,
    mode: str = "slices",
    scheduler=None,
    num_workers: Optional[int] = None,
    progress_factory: Optional[Callable[[int, str], Any]] = None,
) -> FileResult:
    """Segment one image or stack file and write its label file into ``out_dir``.

    Never raises for a problem with this file: the :class:`FileResult` says
    ``"failed"`` with the reason (missing or unreadable file, zero-size axis, a NaN
    image, ...). A stack with some failed slices is written (failed slices as 0,
    listed in the TIFF description under ``failed_slices``) and reported as failed.

    Parameters
    ----------
    path : str or Path
    out_dir : str or Path
        Created if needed.
    segment_fn : SegmentFn
        From :func:`make_segment_fn` (or any callable ``(image, *, channel_axis)``
        with an ``n_classes(rgb)`` method).
    fmt : {"png", "tif"}
        Format of 2-D label images (stacks are always TIFF).
    overwrite : bool
        Replace an existing output (otherwise it is skipped).
    mode : {"slices", "volume"}
        Stacks: per 2-D slice (the volumes apply per slice) or per 3-D volume.
    scheduler, num_workers
        See :func:`store_labels_tiff` (stacks only).
    progress_factory : callable ``(total, description) -> tqdm-like``, optional
        Creates a progress bar over the slices of a stack (``update(n)``, ``close()``).
    """
    p = Path(path)
    out_dir = Path(out_dir)
    result = FileResult(p)
    try:
        for cand in _possible_outputs(p, out_dir, fmt):
            if p.exists() and cand.exists() and os.path.samefile(cand, p):
                raise ValueError(f"the output '{cand}' would be the input file itself; choose another output folder")
        # resume: skip before reading anything (the name only depends on the header)
        if not overwrite and p.exists():
            for cand in _possible_outputs(p, out_dir, fmt):
                if cand.exists():
                    try:
                        if output_path(inspect_input(p, mode=mode), out_dir, fmt) != cand:
                            continue
                    except (ValueError, OSError):
                        pass
                    result.output, result.status, result.message = cand, "skipped", "exists"
                    return result
        info = inspect_input(p, mode=mode)
        final = output_path(info, out_dir, fmt)
        result.output = final
        if final.exists() and not overwrite:
            result.status, result.message = "skipped", "exists"
            return result
        out_dir.mkdir(parents=True, exist_ok=True)
        k = segment_fn.n_classes(info.rgb) if hasattr(segment_fn, "n_classes") else 2
        if not info.is_stack:
            image = open_lazy(p)
            if info.rgb and image.shape[-1] == 4:
                image = image[..., :3]
            res = segment_fn(image, channel_axis=-1 if info.rgb else None)
            labels = _labels_of(res)
            tmp = _tmp_name(final)
            try:
                write_labels(tmp, labels)
                _publish(tmp, final, overwrite)
            finally:
                tmp.unlink(missing_ok=True)
            vol = getattr(res, "volumes", None)
            result.slice_volumes.append(((), np.asarray(vol) if vol is not None else _volumes(labels, k)))
            result.shape = labels.shape
            return result
        result.shape = _segment_stack_file(
            p, info, final, segment_fn, k, result, overwrite=overwrite, mode=mode,
            scheduler=scheduler, num_workers=num_workers, progress_factory=progress_factory,
        )
        if result.failed_slices:
            result.status = "failed"
            idx, msg = result.failed_slices[0]
            result.message = (
                f"{len(result.failed_slices)} of {len(result.failed_slices) + len(result.slice_volumes)} "
                f"slices failed (written as 0), first: slice {idx}: {msg}"
            )
    except Exception as exc:  # noqa: BLE001 - per-item error capture
        result.status, result.message = "failed", _error_text(exc)
    return result


def _segment_stack_file(p, info, final, segment_fn, k, result, *, overwrite, mode, scheduler,
                        num_workers, progress_factory):
    import json

    import tifffile

    local = scheduler is None or isinstance(scheduler, str)
    total = int(np.prod(info.leading, dtype=np.int64))
    bar = progress_factory(total, p.name) if progress_factory is not None else None
    progress = None
    if bar is not None and local:
        lock = threading.Lock()

        def progress(n):
            with lock:
                bar.update(n)

    array = open_lazy(p)
    labels = segment_stack_dask(array, segment_fn, rgb=info.rgb, mode=mode, n_classes=k, progress=progress)
    _, sentinel = _label_dtype_and_sentinel(k)
    tmp = _tmp_name(final)
    n_threads = num_workers or os.cpu_count() or 1
    torch_threads = None
    if local and (scheduler in (None, "threads")) and n_threads > 1:
        try:  # one torch thread per dask thread: no oversubscription
            import torch

            torch_threads = torch.get_num_threads()
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_threads))
        except ImportError:
            pass
    try:
        target = store_labels_tiff(labels, tmp, scheduler=scheduler, num_workers=num_workers)
        if bar is not None and not local:
            bar.update(total)
        # per-slice volumes and failures, read back one slice at a time (plain reads:
        # memory stays flat however long the stack is)
        piece_axes = 2 if mode == "slices" else 3
        lead_shape = tuple(labels.shape[: labels.ndim - piece_axes])
        for idx in np.ndindex(*lead_shape):
            sl = target.read(idx)
            if sl.flat[0] == sentinel and np.all(sl == sentinel):
                msg = _rerun_error(array, idx, segment_fn, info.rgb, mode)
                result.failed_slices.append((idx, msg))
                target[idx + (slice(None),) * piece_axes] = np.zeros_like(sl)
            else:
                result.slice_volumes.append((idx, _volumes(sl, k)))
        if result.failed_slices:  # say so in the file too (tifffile keeps shape / axes)
            desc = {"shape": list(labels.shape), "axes": "Q" * (labels.ndim - 2) + "YX",
                    "failed_slices": [[list(i), m] for i, m in result.failed_slices]}
            tifffile.tiffcomment(str(tmp), json.dumps(desc))
        _publish(tmp, final, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        if bar is not None:
            bar.close()
    return tuple(labels.shape)


def _rerun_error(array, idx, segment_fn, rgb, mode) -> str:
    """Re-run one failed piece in this process to get its error message."""
    try:
        piece = np.asarray(array[idx])
        if rgb and piece.shape[-1] == 4:
            piece = piece[..., :3]
        for item in segment_stack(piece[None], segment_fn, rgb=rgb, mode=mode, on_error="skip"):
            if item.error is not None:
                return _error_text(item.error)
            lab = item.labels
            if lab.min() < 0:
                return f"segmentation returned a negative label {int(lab.min())}"
        return "the segmentation failed on a worker but succeeded when re-run here; run again"
    except Exception as exc:  # noqa: BLE001
        return _error_text(exc)


# --------------------------------------------------------------------------- #
# many files
# --------------------------------------------------------------------------- #
@dataclass
class BatchSummary:
    """Counts and per-file results of :func:`run_batch`."""

    results: List[FileResult] = field(default_factory=list)

    @property
    def done(self) -> List[FileResult]:
        return [r for r in self.results if r.status == "done"]

    @property
    def skipped(self) -> List[FileResult]:
        return [r for r in self.results if r.status == "skipped"]

    @property
    def failed(self) -> List[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        return (f"{len(self.results)} input(s): {len(self.done)} done, "
                f"{len(self.skipped)} skipped (exists), {len(self.failed)} failed")


def run_batch(
    inputs: Iterable[PathLike],
    out_dir: PathLike,
    segment_fn: SegmentFn,
    *,
    fmt: str = "png",
    overwrite: bool = False,
    mode: str = "slices",
    scheduler=None,
    num_workers: Optional[int] = None,
    on_result: Optional[Callable[[FileResult], None]] = None,
    progress_factory: Optional[Callable[[int, str], Any]] = None,
) -> BatchSummary:
    """Segment every input (see :func:`iter_inputs`) into ``out_dir``.

    Each file is independent: a failure is recorded and the others are done.
    Two inputs with the same stem (``a.png`` and ``a.tif``) would write the same
    output; the second is reported as failed rather than overwriting the first.
    ``on_result`` is called after each file.
    """
    summary = BatchSummary()
    claimed = {}
    for item in iter_inputs(inputs):
        if item.problem is not None:
            res = FileResult(item.path, status="failed", message=item.problem)
        else:
            stems = {str(c) for c in _possible_outputs(item.path, Path(out_dir), fmt)}
            clash = next((claimed[s] for s in stems if s in claimed), None)
            if clash is not None:
                res = FileResult(item.path, status="failed",
                                 message=f"same output name as '{clash}' (same file stem); rename one of them")
            else:
                for s in stems:
                    claimed[s] = item.path
                res = segment_file(item.path, out_dir, segment_fn, fmt=fmt, overwrite=overwrite, mode=mode,
                                   scheduler=scheduler, num_workers=num_workers,
                                   progress_factory=progress_factory)
        summary.results.append(res)
        if on_result is not None:
            on_result(res)
    return summary
