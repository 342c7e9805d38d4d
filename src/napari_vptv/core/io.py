"""Reading and writing images and label masks (numpy in, numpy out).

No napari or Qt imports here: the CLI, the tests and the widgets all use these
helpers.

Mask conventions
----------------
Two kinds of mask files are understood by :func:`read_mask`:

* **WBC style** (the white blood cell data set of Zheng et al. 2018): a grey
  image with ``0`` = background, ``128`` = cytoplasm, ``255`` = nucleus, each
  within :data:`WBC_GREY_TOLERANCE` grey levels (so 0/127/254 is read too).
  A few pixels (about 0.003 % of the published masks) carry other grey values
  from anti-aliasing; up to :data:`WBC_STRAY_FRACTION` of the pixels may; every
  pixel is mapped to the *nearest* of 0/128/255 and the result is the label
  image 0/1/2.
* **Integer labels**: any other integer image is returned unchanged
  (``0`` = first class, ``1`` = second class, ...). With ``n_classes`` (as
  ``vptv evaluate`` gives it) every label must be below it: a grey mask such
  as 0/50/100, or an instance mask with many ids, is refused with a message
  saying what was found, never scored as extra classes.
"""

from __future__ import annotations

import glob as _glob
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

__all__ = [
    "IMAGE_SUFFIXES",
    "WBC_GREY_VALUES",
    "WBC_GREY_TOLERANCE",
    "WBC_STRAY_FRACTION",
    "read_image",
    "read_mask",
    "wbc_grey_to_labels",
    "labels_to_wbc_grey",
    "is_wbc_style",
    "write_labels",
    "list_images",
    "load_wbc_dataset",
]

#: File suffixes treated as images by :func:`list_images`.
IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Suffixes of TIFF files (multi-page stacks are read lazily).
TIFF_SUFFIXES = (".tif", ".tiff")

#: Grey values of the WBC ground truth: background, cytoplasm, nucleus.
WBC_GREY_VALUES: Tuple[int, ...] = (0, 128, 255)
#: A pixel within this many grey levels of 0, 128 or 255 has that WBC class.
WBC_GREY_TOLERANCE = 8
#: Largest share of pixels of a WBC mask that may lie outside the tolerance
#: (anti-aliasing; 0.003 % in the published masks).
WBC_STRAY_FRACTION = 0.01


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #
def _check_file(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        if p.is_symlink():
            raise FileNotFoundError(f"{what} file '{p}' is a symbolic link that cannot be followed (loop or missing target).")
        raise FileNotFoundError(f"{what} file '{p}' does not exist.")
    if p.is_dir():
        raise ValueError(f"{what} path '{p}' is a directory, not a file.")
    if p.stat().st_size == 0:
        raise ValueError(f"{what} file '{p}' is empty (0 bytes).")
    return p


def read_image(path: PathLike) -> np.ndarray:
    """Read a PNG, JPEG, BMP or TIFF image into a numpy array.

    Parameters
    ----------
    path : str or Path
        Image file. ``.tif``/``.tiff`` files are read with :mod:`tifffile`
        (any dimensionality), everything else with :mod:`imageio`.

    Returns
    -------
    image : ndarray
        The pixel data as stored (e.g. ``(H, W)`` grey, ``(H, W, 3)`` RGB,
        ``(H, W, 4)`` RGBA, or ``(Z, H, W)`` for a TIFF stack). The dtype is
        the file's dtype.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a directory or cannot be decoded as an image.
    """
    p = _check_file(path, "Image")
    try:
        if p.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            img = tifffile.imread(str(p))
        else:
            import imageio.v3 as iio

            img = iio.imread(p)
    except Exception as exc:  # decoder errors come in many types
        detail = f"{type(exc).__name__}: {exc}"
        if "backend" in str(exc) or "iomode" in str(exc):  # imageio's words for "no decoder knows this file"
            detail = "not a PNG, JPEG, BMP or TIFF image"
        raise ValueError(f"Could not read image file '{p}': {detail}") from exc
    img = np.asarray(img)
    if img.size == 0:
        raise ValueError(f"Image file '{p}' contains no pixels.")
    return img


# --------------------------------------------------------------------------- #
# masks
# --------------------------------------------------------------------------- #
def wbc_grey_to_labels(mask: np.ndarray) -> np.ndarray:
    """Map a WBC grey mask to labels 0/1/2 (nearest of 0/128/255).

    Ties (e.g. 64) go to the lower class.
    """
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.uint8) * 255
    grey = np.asarray(WBC_GREY_VALUES, dtype=np.float64)
    # The thresholds halfway between the grey values: 64 -> 0, 192 -> 255.
    # np.digitize with right=True puts values equal to a threshold in the
    # lower bin, which resolves ties downwards.
    thresholds = (grey[:-1] + grey[1:]) / 2.0
    return np.digitize(m.astype(np.float64), thresholds, right=True).astype(np.int32)


def labels_to_wbc_grey(labels: np.ndarray) -> np.ndarray:
    """Map labels 0/1/2 back to the WBC grey values 0/128/255 (uint8)."""
    lab = np.asarray(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 2):
        raise ValueError(
            "labels must only contain 0, 1 and 2 to be written as a WBC grey mask; "
            f"got values from {lab.min()} to {lab.max()}."
        )
    return np.asarray(WBC_GREY_VALUES, dtype=np.uint8)[lab.astype(np.intp)]


def is_wbc_style(mask: np.ndarray) -> bool:
    """Guess whether ``mask`` is a WBC grey mask (0/128/255) or integer labels.

    A mask is WBC style if

    * its unique values are a subset of {0, 128, 255} and it contains 128 or
      255 (an all-zero mask is the same under both readings), or
    * at least 99 % of its pixels are within :data:`WBC_GREY_TOLERANCE` of 0,
      128 or 255 (all of them unless it is 8-bit), and the pixels near 128 or
      255 outnumber the "other" (anti-aliased) pixels — i.e. a few stray grey
      values from anti-aliasing.

    Anything else (e.g. labels 0, 1, 2, ..., or a uint16 instance mask) is
    treated as an integer label image.
    """
    m = np.asarray(mask)
    if m.dtype == bool or m.size == 0:
        return False
    if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        return False
    uniq = np.unique(m)
    canon = np.isin(uniq, WBC_GREY_VALUES)
    if canon.all():
        return bool(np.isin(uniq, (128, 255)).any())
    near = _near_wbc_grey(m)
    if m.dtype != np.uint8 and not near.all():
        return False
    n_other = int(m.size - near.sum())
    n_fg = int((near & (m >= 128 - WBC_GREY_TOLERANCE)).sum())
    return near.mean() >= 1.0 - WBC_STRAY_FRACTION and n_fg > n_other


def _near_wbc_grey(m: np.ndarray) -> np.ndarray:
    """Pixels within :data:`WBC_GREY_TOLERANCE` of one of 0/128/255."""
    grey = np.asarray(WBC_GREY_VALUES, dtype=np.float64)
    dist = np.min(np.abs(m.astype(np.float64)[..., None] - grey), axis=-1)
    return dist <= WBC_GREY_TOLERANCE


def _describe_values(m: np.ndarray) -> str:
    uniq = np.unique(m)
    shown = ", ".join(str(v) for v in uniq[:6].tolist()) + (", ..." if len(uniq) > 6 else "")
    return f"{len(uniq)} distinct value(s) ({shown})"


def _to_single_channel(m: np.ndarray, p: Path) -> np.ndarray:
    """Collapse an RGB(A) mask whose colour channels are equal to one channel."""
    if m.ndim == 3 and m.shape[-1] in (3, 4) and m.shape[0] > 4:
        rgb = m[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
            rgb[..., 0], rgb[..., 2]
        ):
            return rgb[..., 0]
        raise ValueError(
            f"Mask file '{p}' is a colour image with differing channels; "
            "expected a grey-level or integer label image."
        )
    return m


def read_mask(
    path: PathLike,
    n_classes: Optional[int] = None,
    *,
    style: str = "auto",
) -> np.ndarray:
    """Read a mask file as an integer label image.

    Parameters
    ----------
    path : str or Path
        Mask file (PNG, TIFF, ...).
    n_classes : int, optional
        If given, check that every label is in ``range(n_classes)`` and raise
        ``ValueError`` otherwise. WBC-style masks have 3 classes.
    style : {'auto', 'wbc', 'labels'}
        ``'wbc'`` maps grey values to the nearest of 0/128/255 → 0/1/2;
        ``'labels'`` passes integer labels through; ``'auto'`` (default)
        decides with :func:`is_wbc_style`.

    Returns
    -------
    labels : ndarray of int
        ``int32`` label image (``int64`` if labels do not fit in int32).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is unreadable, is not a label image (negative or
        non-integer values, colour), or has labels outside ``range(n_classes)``.
    """
    if style not in ("auto", "wbc", "labels"):
        raise ValueError(f"style must be 'auto', 'wbc' or 'labels'; got {style!r}.")
    p = Path(path).expanduser()
    m = _to_single_channel(read_image(p), p)

    wbc = style == "wbc" or (style == "auto" and is_wbc_style(m))
    if wbc:
        stray = 1.0 - float(_near_wbc_grey(m).mean()) if m.dtype != bool else 0.0
        if stray > WBC_STRAY_FRACTION:
            raise ValueError(
                f"Mask file '{p}' is not a WBC grey mask: {stray:.1%} of its pixels are more than "
                f"{WBC_GREY_TOLERANCE} grey levels from 0/128/255 ({_describe_values(m)})."
            )
        labels = wbc_grey_to_labels(m)
        if n_classes is not None and n_classes < 3 and labels.max() >= n_classes:
            raise ValueError(
                f"Mask file '{p}' is a WBC-style mask with 3 classes "
                f"(0/128/255) but n_classes={n_classes}."
            )
        return labels

    if m.dtype == bool:
        m = m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)) or not np.all(m == np.round(m)):
            raise ValueError(
                f"Mask file '{p}' has non-integer values; expected integer labels."
            )
    elif not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"Mask file '{p}' has unsupported dtype {m.dtype}.")
    if m.min() < 0:
        raise ValueError(f"Mask file '{p}' has negative labels (min {m.min()}).")
    big = m.max() > np.iinfo(np.int32).max
    labels = m.astype(np.int64 if big else np.int32)
    if n_classes is not None and labels.max() >= n_classes:
        raise ValueError(
            f"Mask file '{p}' has {_describe_values(m)}: neither a WBC grey mask "
            f"(0/128/255 within {WBC_GREY_TOLERANCE}) nor class labels 0..{n_classes - 1} "
            f"(label {int(labels.max())} is not below n_classes={n_classes})."
        )
    return labels


def write_labels(
    path: PathLike,
    labels: np.ndarray,
    *,
    wbc_grey: bool = False,
) -> Path:
    """Write a label image to disk, losslessly.

    Parameters
    ----------
    path : str or Path
        Output file. ``.png`` → 8-bit PNG (16-bit if labels exceed 255);
        ``.tif``/``.tiff`` → TIFF with the smallest unsigned dtype that fits.
        Without a suffix, ``.png`` is appended for labels ≤ 255 and ``.tif``
        otherwise. Lossy formats (JPEG) are refused. Parent folders are created.
    labels : ndarray of int
        Non-negative integer labels.
    wbc_grey : bool
        Write labels 0/1/2 as the WBC grey values 0/128/255 (so the file looks
        like the published ground truth and reads back with :func:`read_mask`).

    Returns
    -------
    path : Path
        The file written (with the suffix actually used).
    """
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise ValueError(f"labels must be an integer array; got dtype {lab.dtype}.")
    if lab.size == 0:
        raise ValueError("labels is empty.")
    if lab.min() < 0:
        raise ValueError(f"labels must be non-negative; got minimum {lab.min()}.")
    if wbc_grey:
        lab = labels_to_wbc_grey(lab)
    vmax = int(lab.max())

    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix == "":
        suffix = ".png" if vmax <= 255 else ".tif"
        p = p.with_name(p.name + suffix)
    if suffix not in (".png",) + TIFF_SUFFIXES:
        raise ValueError(
            f"Cannot write labels to '{p}': use a .png or .tif file "
            "(lossless formats only)."
        )
    p.parent.mkdir(parents=True, exist_ok=True)

    if suffix == ".png":
        _write_png_labels(p, lab, vmax)
    else:
        import tifffile

        for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
            if vmax <= np.iinfo(dt).max:
                out = lab.astype(dt)
                break
        tifffile.imwrite(str(p), out, compression="zlib")
    return p


def _write_png_labels(p: Path, lab: np.ndarray, vmax: int) -> None:
    """8-bit (16-bit above 255) PNG; encoded in memory, then one plain write."""
    if lab.ndim != 2:
        raise ValueError(f"PNG output needs a 2-D label image; got shape {lab.shape}. Use a .tif file for stacks.")
    if vmax > 65535:
        raise ValueError(f"labels go up to {vmax}, too many for PNG; use a .tif file.")
    import imageio.v3 as iio

    out = lab.astype(np.uint8 if vmax <= 255 else np.uint16)
    # a full disk raises a clean OSError here instead of leaving the encoder to fail
    # (and complain) in its destructor
    p.write_bytes(iio.imwrite("<bytes>", out, extension=".png"))


# --------------------------------------------------------------------------- #
# folders and data sets
# --------------------------------------------------------------------------- #
def list_images(
    folder_or_glob: PathLike,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> List[Path]:
    """List image files, sorted by path.

    Parameters
    ----------
    folder_or_glob : str or Path
        A folder (its image files, not recursive), a glob pattern such as
        ``"data/*.png"`` or ``"data/**/*.tif"`` (recursive), or a single file.
    suffixes : sequence of str
        Suffixes (case-insensitive) that count as images when listing a folder.

    Returns
    -------
    files : list of Path
        Sorted; empty if a folder or pattern holds no images.

    Raises
    ------
    FileNotFoundError
        If a plain path (no wildcard) does not exist.
    """
    s = str(folder_or_glob)
    p = Path(s).expanduser()
    sfx = tuple(x.lower() for x in suffixes)
    if any(c in s for c in "*?["):
        files = [Path(f) for f in _glob.glob(str(p), recursive=True)]
        return sorted(f for f in files if f.is_file())
    if not p.exists():
        raise FileNotFoundError(f"Folder or file '{p}' does not exist.")
    if p.is_file():
        return [p]
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in sfx)


def _as_rgb_uint8(img: np.ndarray, p: Path) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"Image file '{p}' has shape {img.shape}; expected RGB.")
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"Image file '{p}' has dtype {img.dtype}; expected uint8.")
    return np.ascontiguousarray(img)


def load_wbc_dataset(
    root: PathLike,
    ids: Optional[Iterable[Union[str, int]]] = None,
) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """Load the WBC data set (``images/NNN.png`` + ``masks/NNN.png``).

    Parameters
    ----------
    root : str or Path
        Folder containing ``images/`` and ``masks/``.
    ids : iterable of str or int, optional
        Only these image ids (``"001"`` or ``1``). Default: every image.

    Returns
    -------
    samples : list of (image_id, image, mask)
        Sorted by id; ``image`` is ``uint8 (H, W, 3)``, ``mask`` is ``int32
        (H, W)`` with 0 = background, 1 = cytoplasm, 2 = nucleus.

    Raises
    ------
    FileNotFoundError
        If ``root``, ``images/`` or ``masks/`` is missing, or an image has no
        mask (or a requested id has no image).
    """
    root = Path(root).expanduser()
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (root, img_dir, mask_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"WBC data set folder '{d}' does not exist "
                "(expected <root>/images/NNN.png and <root>/masks/NNN.png)."
            )
    images = {f.stem: f for f in list_images(img_dir)}
    masks = {f.stem: f for f in list_images(mask_dir)}
    if ids is None:
        wanted = sorted(images)
    else:
        wanted = []
        for i in ids:
            key = f"{int(i):03d}" if str(i).isdigit() else str(i)
            if key not in images:
                raise FileNotFoundError(f"No image '{key}' in '{img_dir}'.")
            wanted.append(key)
    out = []
    for key in wanted:
        if key not in masks:
            raise FileNotFoundError(
                f"Image '{images[key]}' has no mask in '{mask_dir}'."
            )
        img = _as_rgb_uint8(read_image(images[key]), images[key])
        mask = read_mask(masks[key], n_classes=3, style="wbc")
        if mask.shape != img.shape[:2]:
            raise ValueError(
                f"Mask '{masks[key]}' has shape {mask.shape}, "
                f"image has {img.shape[:2]}."
            )
        out.append((key, img, mask))
    return out
