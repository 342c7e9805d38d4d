"""The one mask reader: label masks from files or arrays, with one set of rules.

``vptv evaluate``, ``vptv correct``, fine-tuning (``vptv finetune`` and its widget) and
the API read masks with :func:`read_mask` (a file) or :func:`mask_to_labels` (an
array, e.g. a napari layer), and find a mask for an image with :func:`find_mask`;
all re-exported by :mod:`napari_vptv.core.io.files`. No napari or Qt imports here.

Rules
-----
* **WBC grey** (the white blood cell data set of Zheng et al. 2018): ``0`` =
  background, ``128`` = cytoplasm, ``255`` = nucleus, each within
  :data:`WBC_GREY_TOLERANCE` grey levels (so 0/127/254 is read too). Up to
  :data:`WBC_STRAY_FRACTION` of the pixels may carry other grey values from
  anti-aliasing; every pixel goes to the *nearest* of 0/128/255 -> labels 0/1/2.
* **Integer labels** ``0, 1, 2, ...`` are returned unchanged. With ``n_classes``
  every label must be below it: a grey mask such as 0/50/100, or an instance mask
  with many ids, is refused naming what was found, never scored as extra classes.
* **Float masks**: integer-valued floats are labels; floats within [0, 1] that are
  not integers are a grey mask on the [0, 1] scale (0 / 0.5 / 1 -> 0/1/2, read as
  0/128/255); any other float (NaN, negative, fractional above 1) is refused.
* **Colour masks**: an RGB(A) mask whose channels are equal is read as grey; a
  mask whose channels differ is refused (never read from one channel).
* **Palette masks** (indexed PNG): a grey palette gives its grey values, a colour
  palette its indices (the labels of such files).
* Two mask files for one image (``003.png`` and ``003.tif``) are refused by
  :func:`find_mask`; hidden files (``._003.png``, ``.003.png``) are never masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .imread import read_image

__all__ = [
    "WBC_GREY_VALUES",
    "WBC_GREY_TOLERANCE",
    "WBC_STRAY_FRACTION",
    "MASK_NAME_SUFFIXES",
    "read_mask",
    "mask_to_labels",
    "find_mask",
    "wbc_grey_to_labels",
    "labels_to_wbc_grey",
    "is_wbc_style",
]

PathLike = Union[str, Path]

#: Grey values of the WBC ground truth: background, cytoplasm, nucleus.
WBC_GREY_VALUES: Tuple[int, ...] = (0, 128, 255)
#: A pixel within this many grey levels of 0, 128 or 255 has that WBC class.
WBC_GREY_TOLERANCE = 8
#: Largest share of pixels of a WBC mask that may lie outside the tolerance
#: (anti-aliasing; 0.003 % in the published masks).
WBC_STRAY_FRACTION = 0.01
#: A mask of image ``NAME.png`` is ``NAME<suffix>.<any image suffix>``, tried in this order.
MASK_NAME_SUFFIXES = ("", "_mask", "-mask", "_label", "_labels", "_gt")


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
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in uniq[:6].tolist())
    return f"{len(uniq)} distinct value(s) ({shown}{', ...' if len(uniq) > 6 else ''})"


def _to_single_channel(m: np.ndarray, name: str) -> np.ndarray:
    """Collapse an RGB(A) mask whose colour channels are equal to one channel."""
    if m.ndim == 3 and m.shape[-1] in (3, 4) and m.shape[0] > 4:
        rgb = m[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        raise ValueError(
            f"{name} is a colour image with differing channels; expected a grey-level or integer label "
            "image (0/1/2 or grey 0/128/255), not a colour-coded one."
        )
    return m


def _float_mask(m: np.ndarray, name: str, notes: List[str]) -> np.ndarray:
    """Integer-valued floats as integers, a [0, 1] grey mask on the 8-bit scale; refuse the rest."""
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} has NaN or infinite values; expected integer labels or grey values.")
    if np.all(m == np.round(m)):
        return m.astype(np.int64)
    if m.min() >= 0 and m.max() <= 1:
        notes.append("float mask in [0, 1] read as grey 0..255 (0.5 = 128 = cytoplasm)")
        return m.astype(np.float64) * 255.0
    raise ValueError(
        f"{name} has non-integer values outside [0, 1] ({_describe_values(m)}); expected integer labels, "
        "grey 0/128/255, or a [0, 1] grey mask (0 / 0.5 / 1)."
    )


def mask_to_labels(
    mask,
    n_classes: Optional[int] = None,
    *,
    style: str = "auto",
    name: str = "mask",
    notes: Optional[List[str]] = None,
) -> np.ndarray:
    """Turn a mask array into an integer label image with the rules of this module.

    Parameters
    ----------
    mask : array
        Grey, integer-label, float, boolean or RGB(A) mask (see the module's rules).
    n_classes : int, optional
        If given, every label must be in ``range(n_classes)`` (``ValueError``
        otherwise). WBC grey masks have 3 classes.
    style : {'auto', 'wbc', 'labels'}
        ``'wbc'`` maps grey values to the nearest of 0/128/255 -> 0/1/2;
        ``'labels'`` passes integer labels through (a 0/255 mask stays 0/255);
        ``'auto'`` (default) decides with :func:`is_wbc_style`.
    name : str
        How messages name the mask (e.g. ``"Mask file 'masks/003.png'"``).
    notes : list, optional
        Receives one line per conversion (grey -> labels, float scale, ...).

    Returns
    -------
    labels : ndarray
        ``int32`` (``int64`` if the labels do not fit).

    Raises
    ------
    ValueError
        One line naming the mask and the problem.
    """
    if style not in ("auto", "wbc", "labels"):
        raise ValueError(f"style must be 'auto', 'wbc' or 'labels'; got {style!r}.")
    notes = [] if notes is None else notes
    m = np.asarray(mask)
    if m.size == 0:
        raise ValueError(f"{name} is empty.")
    m = _to_single_channel(m, name)
    if m.dtype == bool:
        m = m.astype(np.uint8)
    elif np.issubdtype(m.dtype, np.floating):
        m = _float_mask(m, name, notes)
    elif not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"{name} has unsupported dtype {m.dtype}.")
    if style == "wbc" or (style == "auto" and is_wbc_style(m)):
        return _wbc_labels(m, n_classes, name, notes)
    if not np.issubdtype(m.dtype, np.integer):  # a [0, 1] float mask that is not WBC grey
        raise ValueError(
            f"{name} is a [0, 1] float mask whose values are not 0 / 0.5 / 1 ({_describe_values(m / 255.0)}); "
            "expected integer labels or grey 0/128/255."
        )
    if m.min() < 0:
        raise ValueError(f"{name} has negative labels (min {m.min()}).")
    labels = m.astype(np.int64 if m.max() > np.iinfo(np.int32).max else np.int32)
    if n_classes is not None and labels.max() >= n_classes:
        raise ValueError(
            f"{name} has {_describe_values(m)}: neither a WBC grey mask "
            f"(0/128/255 within {WBC_GREY_TOLERANCE}) nor class labels 0..{n_classes - 1} "
            f"(label {int(labels.max())} is not below n_classes={n_classes})."
        )
    return labels


def _wbc_labels(m: np.ndarray, n_classes: Optional[int], name: str, notes: List[str]) -> np.ndarray:
    stray = 1.0 - float(_near_wbc_grey(m).mean())
    if stray > WBC_STRAY_FRACTION:
        raise ValueError(
            f"{name} is not a WBC grey mask: {stray:.1%} of its pixels are more than "
            f"{WBC_GREY_TOLERANCE} grey levels from 0/128/255 ({_describe_values(m)})."
        )
    labels = wbc_grey_to_labels(m)
    if n_classes is not None and n_classes < 3 and labels.max() >= n_classes:
        raise ValueError(f"{name} is a WBC-style mask with 3 classes (0/128/255) but n_classes={n_classes}.")
    notes.append("grey mask 0/128/255 read as labels 0/1/2 (nearest grey)")
    return labels


def read_mask(
    path: PathLike,
    n_classes: Optional[int] = None,
    *,
    style: str = "auto",
    notes: Optional[List[str]] = None,
) -> np.ndarray:
    """Read a mask file as an integer label image (:func:`mask_to_labels` on the file's
    pixels, read with :func:`~napari_vptv.core.io.imread.read_image`).

    Parameters
    ----------
    path : str or Path
        Mask file (PNG, TIFF, BMP, ...).
    n_classes, style, notes
        See :func:`mask_to_labels`.

    Returns
    -------
    labels : ndarray of int
        ``int32`` label image (``int64`` if labels do not fit in int32).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is unreadable, is not a label image (negative or non-integer
        values, colour), or has labels outside ``range(n_classes)``.
    """
    p = Path(path).expanduser()
    notes = [] if notes is None else notes
    m = read_image(p, notes=notes, for_mask=True)
    return mask_to_labels(m, n_classes, style=style, name=f"Mask file '{p}'", notes=notes)


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def index_masks(masks_dir: PathLike, suffixes: Sequence[str]) -> Dict[str, List[Path]]:
    """The mask files of a folder by stem (hidden files left out), for :func:`find_mask`."""
    sfx = tuple(s.lower() for s in suffixes)
    found: Dict[str, List[Path]] = {}
    for f in sorted(Path(masks_dir).expanduser().iterdir()):
        if f.is_file() and f.suffix.lower() in sfx and not _is_hidden(f):
            found.setdefault(f.stem, []).append(f)
    return found


def find_mask(
    image: PathLike,
    masks: Union[PathLike, Dict[str, List[Path]]],
    suffixes: Sequence[str] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"),
) -> Optional[Path]:
    """The mask of ``image`` in a folder (or an index from :func:`index_masks`), or None.

    A mask has the image's stem plus one of :data:`MASK_NAME_SUFFIXES`, with any
    image suffix. Two files for the first stem found (``003.png`` and ``003.tif``)
    are refused with a ``ValueError`` naming both: one is never picked silently.
    """
    index = masks if isinstance(masks, dict) else index_masks(masks, suffixes)
    stem = Path(image).stem
    for extra in MASK_NAME_SUFFIXES:
        found = index.get(stem + extra)
        if found and len(found) > 1:
            names = " and ".join(f"'{f.name}'" for f in found)
            count = "two" if len(found) == 2 else str(len(found))
            raise ValueError(
                f"image '{Path(image).name}' has {count} masks, {names}, in '{found[0].parent}'; remove or rename one"
            )
        if found:
            return found[0]
    return None
