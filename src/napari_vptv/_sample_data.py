"""npe2 sample-data contributions (File > Open Sample > napari-vptv).

Each function returns a list of napari ``LayerData`` tuples
``(data, kwargs, layer_type)``. No napari import is needed here.

The images are from the white blood cell data set of Zheng, Wang, Wang & Liu,
Micron 107:55-71 (2018), doi:10.1016/j.micron.2018.01.010; images from the
CellaVision blog (blog.cellavision.com). GPL-3.0: see
``napari_vptv/samples/README.md``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .core.io.samples import CITATION, CLASS_NAMES, load_sample, sample_info

LayerData = Tuple[Any, Dict[str, Any], str]

__all__ = [
    "wbc_sample_1",
    "wbc_sample_2",
    "wbc_sample_3",
    "wbc_sample_1_with_truth",
    "wbc_sample_2_with_truth",
    "wbc_sample_3_with_truth",
]


def _metadata(key: str, role: str) -> Dict[str, Any]:
    # Deliberately NOT the "napari_vptv" key that tags the plugin's own output
    # layers: sample layers are user data and must never be replaced/deleted.
    return {
        "napari_vptv_sample": {"role": role, "sample_id": key},
        "citation": CITATION,
    }


def _layers(sample_id: str, with_truth: bool) -> List[LayerData]:
    info = sample_info(sample_id)
    image, mask = load_sample(info["id"])
    layers: List[LayerData] = [
        (
            image,
            {
                "name": info["name"],
                "rgb": True,
                "metadata": _metadata(info["id"], "sample_image"),
            },
            "image",
        )
    ]
    if with_truth:
        layers.append(
            (
                mask,
                {
                    "name": f"WBC {info['id']} ground truth",
                    "metadata": {
                        **_metadata(info["id"], "ground_truth"),
                        "class_names": list(CLASS_NAMES),
                    },
                    "opacity": 0.5,
                },
                "labels",
            )
        )
    return layers


def wbc_sample_1() -> List[LayerData]:
    """WBC 001, a lymphocyte (RGB, 300 x 300)."""
    return _layers("001", with_truth=False)


def wbc_sample_2() -> List[LayerData]:
    """WBC 004, a neutrophil (RGB, 300 x 300)."""
    return _layers("004", with_truth=False)


def wbc_sample_3() -> List[LayerData]:
    """WBC 016, a monocyte (RGB, 300 x 300)."""
    return _layers("016", with_truth=False)


def wbc_sample_1_with_truth() -> List[LayerData]:
    """WBC 001 (lymphocyte) plus its ground truth as a Labels layer."""
    return _layers("001", with_truth=True)


def wbc_sample_2_with_truth() -> List[LayerData]:
    """WBC 004 (neutrophil) plus its ground truth as a Labels layer."""
    return _layers("004", with_truth=True)


def wbc_sample_3_with_truth() -> List[LayerData]:
    """WBC 016 (monocyte) plus its ground truth as a Labels layer."""
    return _layers("016", with_truth=True)
