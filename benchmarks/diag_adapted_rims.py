"""Where the default method ("vptv-adapted") departs from its own U-net pass, per image:
pixels lost and won by class, cell and nucleus areas against the drawn ones, and, in the
band of +-2 px around the drawn cell outline, the colour cost's and the network's margin
between background and cytoplasm. Run by hand (not a test)::

    python benchmarks/diag_adapted_rims.py --data-root ../shared/data --own-covariance-share 1 \
        --out benchmarks/results/diag_adapted_rims_share1.json

Validation images of the shipped U-net; the U-net pass is one plain pass with the nucleus
rule, as the default seeds its solve. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_vptv.core.wbc.adapt import OWN_COVARIANCE_SHARE, _smoothed_features, adapted_segment
from napari_vptv.core.wbc.cell_rules import drop_cells_without_nucleus
from napari_vptv.nn.predict import predict_cells
from napari_vptv.nn.sources import load_source
from napari_vptv.nn.weights import load_model


def image_row(model, meta, smp, share):
    """One image's figures: accuracies, lost / won pixels by (truth, label), areas, rim margins."""
    img, gt = smp.image, smp.labels
    pred = predict_cells(model, meta, img, augment=1, require_nucleus=False)
    p, d = pred.probabilities, float(pred.diameter)
    seed = drop_cells_without_nucleus(p.argmax(0))[0]
    r = adapted_segment(img, p, diameter=d, own_covariance_share=share)
    out = seed if r is None else drop_cells_without_nucleus(r.labels)[0]
    row = {"id": smp.name, "diameter": d, "unet": float((seed == gt).mean()), "default": float((out == gt).mean())}
    for g in range(3):
        for q in range(3):
            if g != q:
                row[f"lost_{g}_as_{q}"] = int(((out != gt) & (seed == gt) & (gt == g) & (out == q)).sum())
                row[f"won_{g}_from_{q}"] = int(((out == gt) & (seed != gt) & (gt == g) & (seed == q)).sum())
    for name, lab in (("truth", gt), ("unet", seed), ("default", out)):
        row[f"cell_px_{name}"], row[f"nucleus_px_{name}"] = int((lab > 0).sum()), int((lab == 2).sum())
    if r is not None:
        feats = _smoothed_features(img, -1, d / 150.0)
        colour = r.class_model.cost(torch.as_tensor(feats, dtype=torch.float64)[None])[0].numpy()
        net = -np.log(np.clip(p, 1e-4, 1.0))
        cell = gt > 0
        band = np.abs(ndi.distance_transform_edt(~cell) - ndi.distance_transform_edt(cell)) <= 2
        row["rim_colour_margin"] = float(np.median((colour[0] - colour[1])[band]))  # > 0: colour says cytoplasm
        row["rim_network_margin"] = float(np.median((net[0] - net[1])[band]))
        row["logdet"] = [float(np.linalg.slogdet(c)[1]) for c in r.class_model.covariances]
    return row


def summary(rows):
    diff = np.array([r["default"] - r["unet"] for r in rows])
    small = np.array([r["diameter"] for r in rows]) < np.median([r["diameter"] for r in rows])
    keys = [k for k in rows[0] if k.startswith(("lost_", "won_", "cell_px", "nucleus_px"))]
    out = {
        "images": len(rows),
        "unet": float(np.mean([r["unet"] for r in rows])),
        "default": float(np.mean([r["default"] for r in rows])),
        "images_lower": int((diff < 0).sum()),
        "images_higher": int((diff > 0).sum()),
        "median_diameter": float(np.median([r["diameter"] for r in rows])),
        "gain_smaller_half": float(diff[small].mean()),
        "gain_larger_half": float(diff[~small].mean()),
        **{k: int(sum(r[k] for r in rows)) for k in keys},
    }
    with_rim = [r for r in rows if "logdet" in r]
    out["rim_colour_margin_median"] = float(np.median([r["rim_colour_margin"] for r in with_rim]))
    out["rim_network_margin_median"] = float(np.median([r["rim_network_margin"] for r in with_rim]))
    out["logdet_mean"] = np.mean([r["logdet"] for r in with_rim], axis=0).tolist()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--sources", default="wbc,wbc-d1")
    ap.add_argument("--own-covariance-share", type=float, default=OWN_COVARIANCE_SHARE)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, meta = load_model("unet")
    val_ids = {s["name"]: set(s["val_ids"]) for s in meta["sources"]}
    result = {"args": vars(args), "sources": {}}
    for name in args.sources.split(","):
        src = load_source(Path(args.data_root) / name, name)
        rows = [image_row(model, meta, s, args.own_covariance_share) for s in src.samples if s.name in val_ids[name]]
        result["sources"][name] = {"summary": summary(rows), "images": rows}
        print(name, json.dumps(result["sources"][name]["summary"]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
