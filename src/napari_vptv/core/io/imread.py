"""Decoding image files into numpy arrays: the one image reader of every command.

:func:`read_image` is what ``vptv segment``, ``evaluate``, ``correct``, fine-tuning and
the API read files with (re-exported by :mod:`napari_vptv.core.io.files`). It returns the
pixels in napari layout (leading axes, Y, X, colour last) and converts what the
methods cannot take as stored, saying so in ``notes``:

* TIFF (:mod:`tifffile`): every page; pages written as separate series (appended
  one by one) are stacked when they have one shape and dtype, and refused with a
  message naming the shapes otherwise; palette TIFFs are converted to RGB, CMYK
  (separated) to RGB, min-is-white grey is inverted;
* PNG, JPEG, BMP, GIF (Pillow): palette images (GIF, indexed PNG) are converted to
  RGB (to grey when the palette is grey), CMYK JPEGs to RGB, 1-bit images to
  0 / 255, grey + alpha to grey; a file of several frames (an animation) is refused;
* an alpha channel is dropped.

The dtype is kept (16-bit stays 16-bit): :func:`napari_vptv.core.io.intensity.normalise_intensity`
brings any bit depth to the 8-bit scale when an image is segmented.

No napari or Qt imports here.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

__all__ = ["TIFF_SUFFIXES", "read_image", "tiff_layout", "tiff_needs_full_read"]

PathLike = Union[str, Path]

#: Suffixes of TIFF files (multi-page stacks are read lazily).
TIFF_SUFFIXES = (".tif", ".tiff")
_PALETTE, _SEPARATED, _MINISWHITE, _RGB = 3, 5, 0, 2  # tifffile.PHOTOMETRIC values


def check_file(path: PathLike, what: str) -> Path:
    """``path`` as a Path if it is a non-empty file; a one-line error otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        if p.is_symlink():
            raise FileNotFoundError(
                f"{what} file '{p}' is a symbolic link that cannot be followed (loop or missing target)."
            )
        raise FileNotFoundError(f"{what} file '{p}' does not exist.")
    if p.is_dir():
        raise ValueError(f"{what} path '{p}' is a directory, not a file.")
    if p.stat().st_size == 0:
        raise ValueError(f"{what} file '{p}' is empty (0 bytes).")
    return p


def read_image(path: PathLike, *, notes: Optional[List[str]] = None, for_mask: bool = False) -> np.ndarray:
    """Read a PNG, JPEG, BMP, GIF or TIFF image into a numpy array.

    Parameters
    ----------
    path : str or Path
        Image file.
    notes : list, optional
        Receives one line per conversion made (palette -> RGB, CMYK -> RGB, pages
        stacked, alpha dropped, ...), for the outputs' metadata.
    for_mask : bool
        Read a label mask: a palette image gives its indices (a grey palette its grey
        values), not colours, and a TIFF of 3 or 4 planes stored "planar RGB" (what
        ``tifffile.imwrite`` makes of a ``(3, H, W)`` array) stays a stack of planes.

    Returns
    -------
    image : ndarray
        ``(H, W)`` grey, ``(H, W, 3)`` RGB, or a stack ``(Z, H, W[, 3])``, in the
        file's dtype.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        A directory, an empty or undecodable file, a TIFF whose pages differ in
        shape, an animation: the message names the file and the problem.
    """
    p = check_file(path, "Image")
    notes = [] if notes is None else notes
    try:
        if p.suffix.lower() in TIFF_SUFFIXES:
            img = _read_tiff(p, notes, for_mask)
        else:
            img = _read_pillow(p, notes, "index" if for_mask else "rgb")
    except _Refused as exc:
        raise ValueError(f"Image file '{p}' {exc}") from None
    except Exception as exc:  # decoder errors come in many types
        detail = f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "UnidentifiedImageError":
            detail = "not a PNG, JPEG, BMP, GIF or TIFF image"
        raise ValueError(f"Could not read image file '{p}': {detail}") from exc
    if img.size == 0:
        raise ValueError(f"Image file '{p}' contains no pixels.")
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img


class _Refused(ValueError):
    """A file this reader understands but will not guess about (the message says why)."""


# --------------------------------------------------------------------------- #
# Pillow: PNG, JPEG, BMP, GIF
# --------------------------------------------------------------------------- #
def _read_pillow(p: Path, notes: List[str], palette: str) -> np.ndarray:
    from PIL import Image

    with Image.open(p) as im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise _Refused(
                f"has {frames} frames (an animation or multi-page file); only single-frame "
                "images are read: save the frames as a multi-page TIFF"
            )
        im.load()
        mode = im.mode
        if mode in ("P", "PA"):
            im = _from_palette(im, notes, palette)
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
            notes.append(f"{mode} image converted to RGB")
        elif mode == "1":
            im = im.convert("L")
            notes.append("1-bit image read as 0 / 255")
        elif mode in ("LA", "La", "RGBA", "RGBa"):
            im = im.convert("L" if mode[0] == "L" else "RGB")
            notes.append("alpha channel dropped")
        return np.array(im)  # writable (np.asarray of a Pillow image is read-only)


def _from_palette(im, notes: List[str], palette: str):
    """A palette image as grey (grey palette), RGB(A) (colour), or its indices (masks)."""
    lut = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(np.asarray(im))
    used = used[used < len(lut)]
    if len(lut) and np.all(lut[used, 0] == lut[used, 1]) and np.all(lut[used, 0] == lut[used, 2]):
        notes.append("palette image with grey colours read as grey")
        return im.convert("L")
    if palette == "index":
        notes.append("palette image: its colour indices read as labels")
        return im.convert("P") if im.mode == "PA" else im
    notes.append("palette image converted to RGB")
    return im.convert("RGB")


# --------------------------------------------------------------------------- #
# TIFF
# --------------------------------------------------------------------------- #
def tiff_layout(series) -> Tuple[Tuple[int, ...], Optional[Tuple[int, int]], bool]:
    """(napari shape, sample-axis move ``(from, to)`` or None, rgb) of a tifffile series.

    Samples (``S``) form the colour axis (moved last) when the TIFF says RGB or CMYK
    (except planar float data, see below); otherwise (e.g. a 4-slice float stack
    stored planar, "minisblack") they are a leading axis, moved just before Y, X.
    """
    shape = tuple(int(s) for s in series.shape)
    axes = series.axes
    s_pos = axes.find("S")
    if s_pos < 0:
        return shape, None, False
    photometric = getattr(series.pages[0], "photometric", None)
    is_rgb = int(photometric) in (_RGB, _SEPARATED) if photometric is not None else False
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


def tiff_needs_full_read(tif) -> bool:
    """Whether an open TIFF must be read by :func:`read_image` rather than page by page:
    several series (pages appended one by one), or colours stored as palette, CMYK or
    min-is-white."""
    if len(tif.series) != 1:
        return True
    photometric = getattr(tif.series[0].pages[0], "photometric", None)
    return photometric is not None and int(photometric) in (_PALETTE, _SEPARATED, _MINISWHITE)


def _read_tiff(p: Path, notes: List[str], for_mask: bool = False) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(str(p)) as tif:
        if not tif.series:
            raise _Refused("holds no image data")
        arrays = [_series_array(s, notes if i == 0 else [], for_mask) for i, s in enumerate(tif.series)]
    if len(arrays) == 1:
        return arrays[0]
    kinds = sorted({(a.shape, a.dtype.name) for a in arrays})
    if len(kinds) > 1:
        shown = ", ".join(f"{s} {d}" for s, d in kinds[:4])
        raise _Refused(
            f"holds {len(arrays)} images of different shapes or types ({shown}); "
            "save each image in its own file or all pages with one shape"
        )
    notes.append(f"{len(arrays)} TIFF series (pages written one by one) read as a stack of {len(arrays)}")
    return np.stack(arrays)


def _series_array(series, notes: List[str], for_mask: bool = False) -> np.ndarray:
    """One tifffile series in napari layout, with palette / CMYK / min-is-white converted."""
    arr = np.asarray(series.asarray())
    if for_mask and series.axes.endswith("SYX"):  # planes of labels, not planar colour
        return arr
    shape, move, rgb = tiff_layout(series)
    if move is not None:
        arr = np.moveaxis(arr, *move)
    arr = arr.reshape(shape)
    ph = getattr(series.pages[0], "photometric", None)
    photometric = int(ph) if ph is not None else -1
    page = series.pages[0]
    if photometric == _PALETTE and for_mask:
        notes.append("palette TIFF: its colour indices read as labels")
    elif photometric == _PALETTE and getattr(page, "colormap", None) is not None:
        cmap = np.asarray(page.colormap)  # (3, 2**bits), usually 16-bit
        if cmap.max() > 255:
            cmap = np.round(cmap / 257.0)
        lut = np.ascontiguousarray(cmap.T.astype(np.uint8))
        arr = lut[np.clip(arr.astype(np.int64), 0, len(lut) - 1)]
        notes.append("palette TIFF converted to RGB")
    elif photometric == _SEPARATED and rgb:
        arr = _cmyk_to_rgb(arr)
        notes.append("CMYK TIFF converted to RGB")
    elif photometric == _MINISWHITE:
        arr = (
            ~arr
            if arr.dtype == bool
            else (np.iinfo(arr.dtype).max - arr if arr.dtype.kind in "ui" else arr.max() - arr)
        )
        notes.append("min-is-white TIFF inverted (0 = black)")
    elif photometric == _RGB and rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
        notes.append("alpha channel dropped")
    return arr


def _cmyk_to_rgb(arr: np.ndarray) -> np.ndarray:
    """CMYK ink values (last axis) -> RGB in the same dtype (the usual naive conversion)."""
    full = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    ink = arr.astype(np.float64) / full
    if ink.shape[-1] == 3:  # CMY without black
        ink = np.concatenate([ink, np.zeros(ink.shape[:-1] + (1,))], axis=-1)
    rgb = (1.0 - ink[..., :3]) * (1.0 - ink[..., 3:4]) * full
    return np.round(rgb).astype(arr.dtype) if arr.dtype.kind in "ui" else rgb.astype(arr.dtype)
