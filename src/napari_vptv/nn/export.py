"""Export a finished training run as a shipped model (``models/<name>.pt`` + ``.json``).

Usage (what produced the shipped generalist weights)::

    python -m napari_vptv.nn.export --run runs/gen-unet --name unet \
        --defaults '{"prior": "self"}' --validation benchmarks/results/generalist_val.json

The metadata keeps everything needed to trust and reproduce the weights: the
training config and commit, the sources with their train / validation image ids and
data digests, the volume priors of the training split, the augmentation and scale
ranges, the test-time defaults (``defaults``, chosen on the validation splits) and
the validation figures. Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .data import CLASSES, MEAN, STD, WHITE_GAIN_RANGE, WHITE_QUANTILE, WHITE_TARGET, input_norm_of
from .weights import MODELS_DIR, export_weights

__all__ = ["export_run"]

LICENCE_NOTE = (
    "Trained on GPL-3.0 data: WBC Dataset 2 (images from the CellaVision blog) and WBC Dataset 1 "
    "(images provided by Jiangxi Tecom Science Corporation), published by Zheng, Wang, Wang & Liu, "
    "'Fast and Robust Segmentation of White Blood Cell Images by Self-supervised Learning', "
    "Micron 107:55-71 (2018), doi:10.1016/j.micron.2018.01.010."
)


def export_run(run_dir, name: str, defaults: dict, validation: dict = None, models_dir=None) -> Path:
    """Write ``<name>.pt`` / ``<name>.json`` from ``run_dir`` (``model.pt`` + ``train_meta.json``)."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "train_meta.json").read_text())
    sd = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    norm = {
        "formula": "x = (rgb / 255 - mean) / std",
        "mean": list(MEAN),
        "std": list(STD),
        "input": "RGB uint8 (H, W, 3)",
    }
    if input_norm_of(meta) == "white-point":
        norm.update(
            formula="x = (rgb / 255 * clip(target / white, *gain_range) - mean) / std",
            white=f"per image: per-channel median of the pixels with brightness >= its {WHITE_QUANTILE} quantile",
            target=WHITE_TARGET,
            gain_range=list(WHITE_GAIN_RANGE),
        )
    meta.update(
        classes=list(CLASSES),
        input_norm=input_norm_of(meta),
        normalisation=norm,
        volume_priors=meta["volume_priors_pooled"],
        defaults=dict(defaults),
        licence_note=LICENCE_NOTE,
    )
    if validation is not None:
        meta["validation"] = validation
    return export_weights(sd, name, meta, models_dir or MODELS_DIR)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m napari_vptv.nn.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="training run folder (model.pt, train_meta.json)")
    ap.add_argument("--name", required=True, help="model name, e.g. unet or vptv-unet")
    ap.add_argument("--defaults", default="{}", help="JSON of test-time defaults (prior, epsilon, tv_weight, num_iter)")
    ap.add_argument("--validation", default=None, help="JSON file of validation figures to embed")
    ap.add_argument("--models-dir", default=None, help="target folder (default: the package's models/)")
    args = ap.parse_args(argv)
    val = json.loads(Path(args.validation).read_text()) if args.validation else None
    print(export_run(args.run, args.name, json.loads(args.defaults), val, args.models_dir))


if __name__ == "__main__":
    main()
