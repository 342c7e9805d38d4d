"""Inputs of a batch (no napari, no Qt): files, folders and glob patterns expanded
into :class:`InputItem` s (:func:`iter_inputs`), and the layout of one input file read
from its header where possible (:func:`inspect_input`).

:mod:`napari_vptv.core.batch.run` re-exports these names.
"""

from __future__ import annotations

import glob as _glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from ..io.files import IMAGE_SUFFIXES, TIFF_SUFFIXES, is_hidden, is_pattern, printable, read_image
from ..io.imread import tiff_needs_full_read
from ..io.tiff import tiff_layout
from .stack import stack_layout

__all__ = ["InputItem", "InputInfo", "iter_inputs", "inspect_input"]

PathLike = Union[str, Path]


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

    * a file is taken as it is (whatever its suffix: a non-image fails when read),
      also when its name has ``[`` or ``*`` (an existing path is never a pattern);
    * a folder gives its image files (by suffix, not recursive, hidden files such
      as ``._003.png`` left out), sorted;
    * a pattern (``*``, ``?``, ``[``) gives the matching files (hidden ones left
      out), sorted (``**`` is recursive);
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
        if is_pattern(s):
            found = sorted(
                Path(f) for f in _glob.glob(str(p), recursive=True) if Path(f).is_file() and not is_hidden(f)
            )
            if not found:
                yield InputItem(p, f"no file matches the pattern '{printable(s)}'")
                continue
        elif not p.exists():
            yield InputItem(p, f"input '{printable(s)}' does not exist")
            continue
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in sfx and not is_hidden(f))
            if not found:
                yield InputItem(p, f"folder '{printable(s)}' holds no image files ({', '.join(sfx)})")
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
    #: the decoded pixels of a non-TIFF file (read whole to learn its layout; kept so
    #: that the file is decoded once) or of a TIFF that must be read whole (pages
    #: written one by one, palette or CMYK colours), None for a TIFF read lazily
    pixels: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    #: what the reader converted (palette -> RGB, pages stacked, ...), for the metadata
    notes: Tuple[str, ...] = ()

    @property
    def is_stack(self) -> bool:
        """Whether there are slices (leading axes) to iterate over."""
        return len(self.leading) > 0

    @property
    def label_ndim(self) -> int:
        """Dimensionality of the label image (the shape without the colour axis)."""
        return len(self.shape) - (1 if self.rgb else 0)


def inspect_input(path: PathLike, *, mode: str = "slices") -> InputInfo:
    """Read the layout of an image file (TIFF: from the header only).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing or unreadable file, a zero-size axis, too few spatial axes.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input '{printable(p)}' does not exist")
    pixels, notes = None, []
    if p.suffix.lower() in TIFF_SUFFIXES:
        shape, dtype, rgb, whole = _tiff_header(p)
        if whole:  # read now, with the reader's conversions
            pixels = read_image(p, notes=notes)
            rgb = rgb and pixels.shape[-1] == 3
            shape, dtype = pixels.shape, pixels.dtype
    else:
        img = pixels = read_image(p, notes=notes)  # PNG/JPEG/BMP are small: just read them
        shape, dtype = img.shape, img.dtype
        rgb = img.ndim == 3 and img.shape[-1] in (3, 4)
    if any(s == 0 for s in shape):
        raise ValueError(f"input '{printable(p)}' has a zero-size axis (shape {tuple(shape)})")
    leading, _ = stack_layout(shape, rgb=rgb, mode=mode)
    return InputInfo(p, tuple(shape), np.dtype(dtype), bool(rgb), tuple(leading), pixels, tuple(notes))


def _tiff_header(p: Path):
    """(shape, dtype, rgb, must be read whole) of a TIFF from its header."""
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tif:
            if not tif.series:
                raise ValueError("no image series")
            series = tif.series[0]
            shape, _, rgb = tiff_layout(series)
            palette = int(getattr(series.pages[0], "photometric", -1) or -1) == 3
            return shape, np.dtype(series.dtype), rgb or palette, tiff_needs_full_read(tif)
    except (ValueError, OSError, tifffile.TiffFileError, IndexError, KeyError) as exc:
        raise ValueError(f"could not read TIFF file '{printable(p)}': {exc}") from None
