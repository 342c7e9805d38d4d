"""A user's image / mask pairs for fine-tuning: reading, checking, hashing.

Pairs come from arrays (napari layers) or two folders (images and masks with the same
file stems). Masks hold labels 0/1/2 (background / cytoplasm / nucleus) or grey
0/128/255, the formats ``vptv evaluate`` reads. :func:`label_order_check` compares
the base model's predictions with the masks under the 6 orderings of the classes, so
masks whose labels are swapped (e.g. nucleus = 1) are refused before training.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import List, Optional, Sequence

import numpy as np

from ..core.io.files import IMAGE_SUFFIXES  # noqa: F401 - the image files a folder of pairs may hold
from .sources import Sample, Source, cell_diameter

__all__ = [
    "ArraySource",
    "IMAGE_SUFFIXES",
    "CLASS_NAMES",
    "LABEL_SWAP_MARGIN",
    "samples_from_arrays",
    "samples_from_folders",
    "label_order_check",
    "check_labels",
    "array_sha256",
]

CLASS_NAMES = ("background", "cytoplasm", "nucleus")
#: a class ordering that agrees this much better with the base model than the given one
#: means the masks' labels are swapped
LABEL_SWAP_MARGIN = 0.15


class ArraySource(Source):
    """A :class:`Source` held in memory (no folder): its digest hashes the arrays."""

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.samples:
            h.update(s.name.encode())
            h.update(array_sha256(s.image).encode())
            h.update(array_sha256(s.labels).encode())
        return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _mask_labels(name: str, mask) -> np.ndarray:
    """Labels 0/1/2 of a mask, with the rules every command reads masks by
    (:func:`napari_vptv.core.io.masks.mask_to_labels`)."""
    from ..core.io.masks import mask_to_labels as to_labels

    m = np.asarray(mask)
    if m.size == 0:
        raise ValueError(f"mask of {name!r} is empty")
    return to_labels(m, n_classes=3, name=f"mask of {name!r}").astype(np.int64)


def _as_sample(name: str, image, mask) -> Sample:
    from ..core.io.intensity import normalise_intensity
    from .predict import as_rgb_uint8

    img = as_rgb_uint8(normalise_intensity(image)[0])
    lab = _mask_labels(name, mask)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"mask of {name!r} has shape {lab.shape}, its image has {img.shape[:2]}")
    return Sample(name, np.ascontiguousarray(img), lab, cell_diameter(lab))


def samples_from_arrays(images: Sequence, masks: Sequence, names: Optional[Sequence[str]] = None) -> List[Sample]:
    """Image / mask pairs from arrays: RGB ``(H, W, 3)`` images, masks with labels 0/1/2
    (background / cytoplasm / nucleus) or grey 0/128/255 (the formats ``evaluate`` reads).

    Raises
    ------
    ValueError
        No pair, unequal counts, a mask of another shape or with other values (named).
    """
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    if not images:
        raise ValueError("no image / mask pair given")
    names = list(names) if names is not None else [f"image{i:03d}" for i in range(len(images))]
    if len(set(names)) != len(names):
        raise ValueError(f"image names must be unique, got {names}")
    return [_as_sample(n, im, m) for n, im, m in zip(names, images, masks)]


def samples_from_folders(images_dir, masks_dir) -> List[Sample]:
    """Pairs from two folders, paired by the rule every command uses
    (:func:`napari_vptv.core.scoring.evaluate.pair_images_and_masks`: same file stem, hidden
    files skipped, ambiguous stems refused) and read with the shared readers. Raises
    ``FileNotFoundError`` / ``ValueError`` naming the folder or file."""
    from ..core.io.imread import read_image
    from ..core.io.masks import read_mask
    from ..core.scoring.evaluate import pair_images_and_masks

    out = []
    for p, mp in pair_images_and_masks(images_dir, masks_dir):
        try:
            image, mask = read_image(p), read_mask(mp, n_classes=3)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot use '{p.name}' / '{mp.name}': {exc}") from None
        out.append(_as_sample(p.stem, image, mask))
    return out


def label_order_check(model, meta, samples: Sequence[Sample], max_images: int = 6) -> dict:
    """Pixel agreement of the base model with the masks under each class ordering.

    Returns ``{"given": acc, "best": acc, "order": (i, j, k)}``: ``order[c]`` is the
    label the base model gives to what the mask calls ``c``.
    """
    from .predict import predict_cells

    preds, gts = [], []
    for s in list(samples)[:max_images]:
        pred = predict_cells(model, meta, s.image, diameter=s.diameter or None, num_iter=0)
        preds.append(pred.labels.ravel())
        gts.append(s.labels.ravel())
    p, t = np.concatenate(preds), np.concatenate(gts)
    scores = {perm: float((np.asarray(perm)[t] == p).mean()) for perm in itertools.permutations(range(3))}
    best = max(scores, key=scores.get)
    return {"given": scores[(0, 1, 2)], "best": scores[best], "order": best}


def check_labels(model, meta, samples):
    """Raise ``ValueError`` when the masks' classes look swapped; returns :func:`label_order_check`."""
    chk = label_order_check(model, meta, samples)
    if chk["best"] - chk["given"] > LABEL_SWAP_MARGIN:
        swapped = ", ".join(f"{CLASS_NAMES[c]} is {o}" for c, o in enumerate(chk["order"]) if c != o)
        raise ValueError(
            f"the masks' labels look swapped: the base model agrees with {chk['given']:.0%} of the mask pixels "
            f"as given but {chk['best']:.0%} if {swapped}; masks must use 0 = background, 1 = cytoplasm, "
            "2 = nucleus (or grey 0/128/255)"
        )
    return chk
