"""Training sources: folders of RGB images with three-class masks, of any size.

A *source* is one lab / microscope / stain: a folder with ``images/NAME.png`` and
``masks/NAME.png`` (grey 0 = background, 128 = cytoplasm, 255 = nucleus, or integer
labels 0/1/2). Images of one source may differ in size. Each image carries the cell
diameter measured on its mask (:func:`cell_diameter`), which drives the scale
augmentation and the scale normalisation at inference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["Sample", "Source", "load_source", "cell_diameter", "mask_to_labels", "split_names"]


def mask_to_labels(mask: np.ndarray) -> np.ndarray:
    """Map a WBC mask to labels 0/1/2: grey 0/128/255 by nearest grey value (the
    drawings carry a few anti-aliased pixels), or integer labels 0/1/2 unchanged."""
    from ..core.io.files import wbc_grey_to_labels

    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.max() <= 2:
        return m.astype(np.int64)
    return wbc_grey_to_labels(m).astype(np.int64)


def cell_diameter(
    labels: np.ndarray, min_relative_area: float = 0.25, min_diameter: float = 0.0, min_solidity: float = 0.0
) -> float:
    """Typical white-cell diameter in pixels of a label image (0 = background).

    The median equivalent-circle diameter ``sqrt(4 A / pi)`` of the connected
    cell regions (cytoplasm + nucleus) whose area is at least ``min_relative_area``
    of the largest one: fragments and cells cut by the border count less than whole
    cells. Regions smaller than a disc of ``min_diameter`` are ignored (debris,
    platelets), and so are regions whose solidity (area over convex-hull area) is
    below ``min_solidity`` (a lace of plasma and red-cell texture taken for cell,
    never a white cell's shape). Returns 0.0 when there is no cell.
    """
    from scipy import ndimage as ndi

    cell = np.asarray(labels) > 0
    lab, n = ndi.label(cell)
    if n == 0:
        return 0.0
    areas = np.bincount(lab.ravel())[1:].astype(np.float64)
    big = areas >= np.pi / 4 * min_diameter**2
    if min_solidity > 0:
        big &= _solidity(lab, n, big) >= min_solidity
    areas = areas[big]
    if areas.size == 0:
        return 0.0
    keep = areas[areas >= min_relative_area * areas.max()]
    return float(np.median(np.sqrt(4.0 * keep / np.pi)))


def _solidity(lab: np.ndarray, n: int, which: np.ndarray) -> np.ndarray:
    """Solidity of the regions 1..n of ``lab`` where ``which`` (others: 1.0)."""
    from skimage.measure import regionprops

    out = np.ones(n)
    for r in regionprops(lab):
        if which[r.label - 1]:
            out[r.label - 1] = r.solidity
    return out


@dataclass
class Sample:
    """One training image: ``image`` uint8 ``(H, W, 3)``, ``labels`` int64 ``(H, W)``."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    diameter: float
    #: white point of the whole image (:func:`napari_vptv.nn.data.white_point`), set on first use
    white: Optional[np.ndarray] = None


@dataclass
class Source:
    """All images of one source, with an image-level train / validation split."""

    name: str
    root: Path
    samples: List[Sample]
    train: List[Sample] = field(default_factory=list)
    val: List[Sample] = field(default_factory=list)

    def digest(self) -> str:
        """sha256 over the image and mask files (names and bytes, sorted by name)."""
        h = hashlib.sha256()
        for s in self.samples:
            for sub in ("images", "masks"):
                p = self.root / sub / f"{s.name}.png"
                h.update(f"{sub}/{s.name}.png".encode())
                h.update(p.read_bytes())
        return h.hexdigest()


def split_names(names: Sequence[str], n_val: int, seed: int = 0):
    """Image-level split: ``n_val`` names drawn with ``seed`` go to validation."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(names))
    val = sorted(names[i] for i in perm[:n_val])
    train = sorted(names[i] for i in perm[n_val:])
    return train, val


def load_source(root, name: str = None, n_val: int = 0, split_seed: int = 0) -> Source:
    """Load every ``images/*.png`` of ``root`` with its mask and split by image.

    Raises
    ------
    FileNotFoundError
        If ``root`` lacks ``images/`` or ``masks/`` or an image has no mask.
    """
    import imageio.v3 as iio

    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"source folder '{root}' must contain images/ and masks/")
    samples = []
    for p in sorted(img_dir.glob("*.png")):
        mp = mask_dir / p.name
        if not mp.exists():
            raise FileNotFoundError(f"image '{p}' has no mask '{mp}'")
        img = np.asarray(iio.imread(p))
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        lab = mask_to_labels(np.asarray(iio.imread(mp)))
        if lab.shape != img.shape[:2]:
            raise ValueError(f"mask '{mp}' has shape {lab.shape}, image has {img.shape[:2]}")
        samples.append(Sample(p.stem, np.ascontiguousarray(img[..., :3].astype(np.uint8)), lab, cell_diameter(lab)))
    if not samples:
        raise FileNotFoundError(f"no images/*.png in '{root}'")
    src = Source(name or root.name, root, samples)
    train, val = split_names([s.name for s in samples], n_val, split_seed)
    by = {s.name: s for s in samples}
    src.train = [by[n] for n in train]
    src.val = [by[n] for n in val]
    return src
