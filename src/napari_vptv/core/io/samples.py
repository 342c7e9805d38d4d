"""Bundled sample images (no napari imports).

Three white blood cell images with their ground truth, from the data set of
Zheng, Wang, Wang & Liu, Micron 107:55-71 (2018),
doi:10.1016/j.micron.2018.01.010; images from the CellaVision blog
(blog.cellavision.com). GPL-3.0, see ``napari_vptv/samples/README.md`` and
``napari_vptv/samples/LICENSE-GPL-3.0.txt``.

Examples
--------
>>> from napari_vptv.core.io.samples import sample_ids, load_sample
>>> sample_ids()
['001', '004', '016']
>>> image, mask = load_sample("001")
>>> image.shape, image.dtype.name, mask.shape, sorted(set(mask.ravel().tolist()))
((300, 300, 3), 'uint8', (300, 300), [0, 1, 2])
"""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import Dict, List, Tuple, Union

import numpy as np

from .files import read_image, read_mask

__all__ = [
    "SAMPLES",
    "CLASS_NAMES",
    "CITATION",
    "sample_ids",
    "sample_info",
    "sample_path",
    "load_sample",
]

#: Sample id -> cell type.
SAMPLES: Dict[str, str] = {
    "001": "lymphocyte",
    "004": "neutrophil",
    "016": "monocyte",
}

#: Names of the labels 0, 1, 2 in the ground truth masks.
CLASS_NAMES: Tuple[str, ...] = ("background", "cytoplasm", "nucleus")

CITATION = (
    "X. Zheng, Y. Wang, G. Wang, J. Liu. Fast and robust segmentation of white "
    "blood cell images by self-supervised learning. Micron 107:55-71 (2018), "
    "doi:10.1016/j.micron.2018.01.010. Images from the CellaVision blog "
    "(blog.cellavision.com). GPL-3.0."
)


def sample_ids() -> List[str]:
    """Ids of the bundled samples, e.g. ``['001', '004', '016']``."""
    return list(SAMPLES)


def _key(sample_id: Union[str, int]) -> str:
    s = str(sample_id).strip()
    if s.lower().startswith("wbc_"):
        s = s[4:]
    if s.isdigit():
        s = f"{int(s):03d}"
    if s not in SAMPLES:
        raise ValueError(f"Unknown sample id {sample_id!r}; available: {', '.join(SAMPLES)}.")
    return s


def sample_info(sample_id: Union[str, int]) -> Dict[str, str]:
    """Id, cell type and a display name (``'WBC 001 (lymphocyte)'``)."""
    key = _key(sample_id)
    return {
        "id": key,
        "cell_type": SAMPLES[key],
        "name": f"WBC {key} ({SAMPLES[key]})",
    }


def sample_path(sample_id: Union[str, int], mask: bool = False):
    """Traversable resource of a sample image (or its mask)."""
    key = _key(sample_id)
    name = f"wbc_{key}_mask.png" if mask else f"wbc_{key}.png"
    return files("napari_vptv") / "samples" / name


def load_sample(sample_id: Union[str, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Load a bundled sample.

    Parameters
    ----------
    sample_id : str or int
        ``'001'``, ``1``, ``'wbc_001'``, ... (see :func:`sample_ids`).

    Returns
    -------
    image : ndarray, uint8, shape (300, 300, 3)
        RGB image.
    mask : ndarray, int32, shape (300, 300)
        Ground truth: 0 = background, 1 = cytoplasm, 2 = nucleus.
    """
    with as_file(sample_path(sample_id)) as p:
        image = read_image(p)[..., :3]
    with as_file(sample_path(sample_id, mask=True)) as p:
        mask = read_mask(p, n_classes=3, style="wbc")
    return np.ascontiguousarray(image), mask
