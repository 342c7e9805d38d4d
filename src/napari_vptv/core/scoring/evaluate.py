"""Evaluate a segmentation method on a folder of images with ground-truth masks.

This is the engine of ``vptv evaluate``: images and masks are paired by file stem
(``images/001.png`` <-> ``masks/001.png``; a mask named ``001_mask.png`` is also
accepted), each image is segmented with a given single-image function (from the API
layer: :class:`napari_vptv.api.SegmentFn`, see :func:`napari_vptv.api.evaluate_folder`)
and scored with :mod:`napari_vptv.core.scoring.metrics` (the paper's pixel accuracy
``|L ∩ L_gt| / |L|``, Dice per class, per-class error of the class fractions).

No napari or Qt imports here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..io.files import IMAGE_SUFFIXES, list_images, printable, read_image, read_mask
from ..io.masks import find_mask, index_masks
from .metrics import evaluate as _score
from .metrics import summarize

__all__ = ["pair_images_and_masks", "score_folder"]


def pair_images_and_masks(images_dir, masks_dir) -> List[Tuple[Path, Path]]:
    """Pair every image in ``images_dir`` with the mask of the same file stem.

    The one pairing rule of ``vptv evaluate`` and fine-tuning: masks are found with
    :func:`~napari_vptv.core.io.masks.find_mask` (``NAME.*`` or ``NAME_mask.*``, ...);
    hidden files (``._001.png``) are neither images nor masks.

    Raises
    ------
    FileNotFoundError
        A folder does not exist, or an image has no mask (the message names it).
    ValueError
        ``images_dir`` holds no images, two images share a stem, or an image has
        two masks (``a.png`` and ``a.tif``): one is never picked silently.
    """
    images_dir, masks_dir = Path(images_dir).expanduser(), Path(masks_dir).expanduser()
    for what, d in (("images", images_dir), ("masks", masks_dir)):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder '{d}' does not exist or is not a folder")
    images = list_images(images_dir)  # hidden files (._001.png) left out, as everywhere
    if not images:
        raise ValueError(f"no images (.png, .jpg, .tif, .bmp, .gif) found in '{printable(images_dir)}'")
    stems: Dict[str, Path] = {}
    for img in images:
        if img.stem in stems:
            raise ValueError(
                f"images '{printable(stems[img.stem].name)}' and '{printable(img.name)}' in "
                f"'{printable(images_dir)}' have one stem; their masks cannot be told apart: rename one"
            )
        stems[img.stem] = img
    masks = index_masks(masks_dir, IMAGE_SUFFIXES)
    pairs = []
    missing = []
    for img in images:
        found = find_mask(img, masks)
        if found is None:
            missing.append(printable(img.name))
        else:
            pairs.append((img, found))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"no mask for image '{missing[0]}'{more} in '{printable(masks_dir)}' "
            "(masks are matched by file stem, e.g. images/001.png <-> masks/001.png)"
        )
    return pairs


def _load_pair(img_path: Path, mask_path: Path, segment_fn, notes: Optional[List[str]] = None):
    """(image, truth labels, channel axis); the mask must have the method's classes."""
    notes = [] if notes is None else notes
    image = read_image(img_path, notes=notes)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    n_classes = segment_fn.n_classes(rgb) if hasattr(segment_fn, "n_classes") else None
    mask_notes: List[str] = []
    truth = read_mask(mask_path, n_classes=n_classes, notes=mask_notes)
    notes.extend(f"mask: {n}" for n in mask_notes)
    if image.shape[: truth.ndim] != truth.shape:
        raise ValueError(
            f"mask '{mask_path.name}' has shape {truth.shape}, but image '{img_path.name}' has "
            f"spatial shape {image.shape[: truth.ndim]}"
        )
    channel_axis = -1 if image.ndim == truth.ndim + 1 else None
    if channel_axis is not None and image.shape[-1] == 4:
        image = image[..., :3]
    return image, truth, channel_axis


def score_folder(
    images_dir,
    masks_dir,
    segment_fn: Callable[..., object],
    *,
    progress: Optional[Callable[[int, int], None]] = None,
):
    """Segment every image of a folder with ``segment_fn`` and score it against its mask.

    Parameters
    ----------
    images_dir, masks_dir : str or Path
        Folders of images and of masks with the same file stems. Masks are WBC
        grey masks (0/128/255 -> 0/1/2, nearest value) or integer label images
        (:func:`~napari_vptv.core.io.files.read_mask`).
    segment_fn : callable ``(image, *, channel_axis) -> SegmentationResult``
        Single-image segmentation, e.g. :class:`napari_vptv.api.SegmentFn`.
    progress : callable ``(done, total)``, optional
        Called after every image (and once with ``done = 0`` before the first).

    Every image and mask is read and checked before the first segmentation, so a
    bad mask stops the run at once, not after minutes of work. A mask must be a
    WBC grey mask or hold labels below the method's number of classes
    (``segment_fn.n_classes(rgb)``).

    Returns
    -------
    rows : list of dict
        One per image: ``id`` (file stem), ``image``, ``mask`` (paths),
        ``accuracy``, ``dice`` (per class), ``mean_dice``, ``volume_error``
        (per class, absolute), ``fractions``, ``truth_fractions``, ``n_iter``,
        ``time`` (seconds of the segmentation).
    summary : dict
        Means over the images (:func:`~napari_vptv.core.scoring.metrics.summarize`):
        ``n``, ``accuracy`` (the mean pixel accuracy), ``dice``, ``mean_dice``,
        ``volume_error``, ``time``, ...

    Raises
    ------
    FileNotFoundError
        Missing folder or a mask missing for an image (named).
    ValueError
        Unreadable image or mask, or a mask whose size differs from its image
        (named), bad method / volumes.
    """
    pairs = pair_images_and_masks(images_dir, masks_dir)
    for img_path, mask_path in pairs:  # every pair checked before minutes of work
        _load_pair(img_path, mask_path, segment_fn)
    total = len(pairs)
    if progress is not None:
        progress(0, total)
    rows = []
    for done, (img_path, mask_path) in enumerate(pairs, 1):
        notes: List[str] = []
        image, truth, channel_axis = _load_pair(img_path, mask_path, segment_fn, notes)
        t0 = time.perf_counter()
        try:
            result = segment_fn(image, channel_axis=channel_axis)
        except ValueError as exc:
            raise ValueError(f"image '{printable(img_path.name)}': {exc}") from exc
        dt = time.perf_counter() - t0
        k = max(int(result.probabilities.shape[0]), int(truth.max()) + 1)
        row = {"id": printable(img_path.stem), "image": printable(img_path), "mask": printable(mask_path)}
        row.update(_score(result.labels, truth, k))
        notes += (getattr(result, "info", None) or {}).get("conversions", [])
        row.update(n_iter=int(result.n_iter), time=dt, conversions=notes)
        rows.append(row)
        if progress is not None:
            progress(done, total)
    return rows, summarize(rows)
