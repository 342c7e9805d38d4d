"""Reading and writing images and label masks (numpy in, numpy out).

No napari or Qt imports here: the CLI, the API, fine-tuning, the tests and the
widgets all use these helpers. The one image reader and the one mask reader live in
:mod:`napari_vptv.core.io.imread` and :mod:`napari_vptv.core.io.masks` and are re-exported
here:

* :func:`read_image` decodes any PNG / JPEG / BMP / GIF / TIFF (every page, palette
  and CMYK converted, ``notes`` say what was converted);
* :func:`normalise_intensity` brings any dtype or bit depth to the 8-bit scale;
* :func:`read_mask` / :func:`mask_to_labels` read masks with one set of rules (WBC
  grey 0/128/255, labels 0/1/2, [0, 1] float grey; colour masks refused) and
  :func:`find_mask` pairs an image with its mask (two candidates are refused).

Every command (``segment``, ``evaluate``, ``correct``, ``finetune``) and the API read
files through these functions, so one input gives one reading everywhere.
"""

from __future__ import annotations

import glob as _glob
import io as io_module
import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .imread import TIFF_SUFFIXES, read_image
from .intensity import normalise_intensity
from .masks import (
    WBC_GREY_TOLERANCE,
    WBC_GREY_VALUES,
    WBC_STRAY_FRACTION,
    find_mask,
    is_wbc_style,
    labels_to_wbc_grey,
    mask_to_labels,
    read_mask,
    wbc_grey_to_labels,
)

PathLike = Union[str, Path]

__all__ = [
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "WBC_GREY_VALUES",
    "WBC_GREY_TOLERANCE",
    "WBC_STRAY_FRACTION",
    "read_image",
    "read_mask",
    "mask_to_labels",
    "find_mask",
    "normalise_intensity",
    "wbc_grey_to_labels",
    "labels_to_wbc_grey",
    "is_wbc_style",
    "write_labels",
    "read_label_metadata",
    "list_images",
    "is_pattern",
    "is_hidden",
    "printable",
    "load_wbc_dataset",
]

#: File suffixes treated as images by :func:`list_images`.
IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def write_labels(
    path: PathLike,
    labels: np.ndarray,
    *,
    wbc_grey: bool = False,
    metadata: Optional[dict] = None,
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
    metadata : dict, optional
        JSON-serialisable facts about the labels (e.g. the input's conversions):
        stored as the PNG text chunk ``vptv`` or in the TIFF description
        (:func:`read_label_metadata` reads them back).

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
        raise ValueError(f"Cannot write labels to '{p}': use a .png or .tif file (lossless formats only).")
    p.parent.mkdir(parents=True, exist_ok=True)

    if suffix == ".png":
        _write_png_labels(p, lab, vmax, metadata)
    else:
        import tifffile

        for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
            if vmax <= np.iinfo(dt).max:
                out = lab.astype(dt)
                break
        tifffile.imwrite(str(p), out, compression="zlib", metadata={"vptv": metadata} if metadata else {})
    return p


def read_label_metadata(path: PathLike) -> dict:
    """The ``metadata`` a label file was written with by :func:`write_labels` (``{}`` if none)."""
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(str(p)) as tif:
            meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
        return dict(meta.get("vptv") or {})
    from PIL import Image

    with Image.open(p) as im:
        text = im.text.get("vptv") if hasattr(im, "text") else None
    return json.loads(text) if text else {}


def _write_png_labels(p: Path, lab: np.ndarray, vmax: int, metadata: Optional[dict] = None) -> None:
    """8-bit (16-bit above 255) PNG; encoded in memory, then one plain write."""
    if lab.ndim != 2:
        raise ValueError(f"PNG output needs a 2-D label image; got shape {lab.shape}. Use a .tif file for stacks.")
    if vmax > 65535:
        raise ValueError(f"labels go up to {vmax}, too many for PNG; use a .tif file.")
    from PIL import Image, PngImagePlugin

    out = lab.astype(np.uint8 if vmax <= 255 else np.uint16)
    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_itxt("vptv", json.dumps(metadata))
    buf = io_module.BytesIO()
    Image.fromarray(out).save(buf, format="PNG", pnginfo=info)
    # encoded in memory: a full disk raises a clean OSError at the one plain write
    p.write_bytes(buf.getvalue())


# --------------------------------------------------------------------------- #
# folders and data sets
# --------------------------------------------------------------------------- #
def printable(path) -> str:
    """A path as text that can always be printed or written to JSON: bytes of a
    non-UTF-8 file name are shown as ``\\xff`` escapes instead of failing."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_pattern(entry: PathLike) -> bool:
    """Whether ``entry`` is taken as a glob pattern: it has ``*``, ``?`` or ``[`` and
    is not the name of an existing file or folder (an existing path is never a
    pattern: ``cell [1].png`` is that file)."""
    s = str(entry)
    return any(c in s for c in "*?[") and not os.path.lexists(Path(s).expanduser())


def is_hidden(path: PathLike) -> bool:
    """Hidden files (``.name``; ``._name`` resource forks of macOS): never inputs of a folder."""
    return Path(path).name.startswith(".")


def list_images(
    folder_or_glob: PathLike,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> List[Path]:
    """List image files, sorted by path.

    Parameters
    ----------
    folder_or_glob : str or Path
        A folder (its image files, not recursive, hidden files left out), a glob
        pattern such as ``"data/*.png"`` or ``"data/**/*.tif"`` (recursive), or a
        single file. An existing path is taken literally even if its name has
        ``[`` or ``*`` (:func:`is_pattern`).
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
    if is_pattern(s):
        files = [Path(f) for f in _glob.glob(str(p), recursive=True)]
        return sorted(f for f in files if f.is_file() and not is_hidden(f))
    if not p.exists():
        raise FileNotFoundError(f"Folder or file '{printable(p)}' does not exist.")
    if p.is_file():
        return [p]
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in sfx and not is_hidden(f))


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
                f"WBC data set folder '{d}' does not exist (expected <root>/images/NNN.png and <root>/masks/NNN.png)."
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
            raise FileNotFoundError(f"Image '{images[key]}' has no mask in '{mask_dir}'.")
        img = _as_rgb_uint8(read_image(images[key]), images[key])
        mask = read_mask(masks[key], n_classes=3, style="wbc")
        if mask.shape != img.shape[:2]:
            raise ValueError(f"Mask '{masks[key]}' has shape {mask.shape}, image has {img.shape[:2]}.")
        out.append((key, img, mask))
    return out
