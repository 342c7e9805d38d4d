"""Validation of trained U-net / VPTVU-net runs on the held-out WBC images, test-time
exploration of the layer parameters, and export of the shipped weights.

Usage (reproduces the shipped ``models/``)::

    python -m napari_vptv.nn.evaluate --unet runs/unet --vptv runs/vptv-unet \
        --data /work/shared/data/wbc --out runs/eval.json --export

All choices (test-time eps, T, lambda, volume mode) are tuned on the *validation*
split of the training run (the 14 held-out images); the 10 images withheld from the
data set are never seen.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .layer import VPTVSoftmax, build_model
from .train import segmentation_scores

CLASSES = list(D.CLASSES)


def load_run(run_dir):
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "train_meta.json").read_text())
    head = meta.get("head") or {}
    model = build_model(meta["arch"], unet_kwargs=meta["unet"], head_kwargs=head)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return model.eval(), meta


def val_logits(model, images):
    with torch.inference_mode():
        return [model.logits(D.normalise(im[None])) for im in images]


def scores_for(logits, labels, layer=None, kw=None):
    preds = []
    with torch.inference_mode():
        for lg in logits:
            p = torch.softmax(lg, 1) if layer is None else layer(lg, **(kw or {}))
            preds.append(p[0].argmax(0).numpy())
    return segmentation_scores(np.stack(preds), labels)


def _row(name, s, extra=None):
    r = {"config": name, "pixel_accuracy": s["pixel_accuracy"], "dice": s["dice"], "mean_dice": s["mean_dice"],
         "volume_error": s["volume_error"]}
    if extra:
        r.update(extra)
    return r


def run(args):
    torch.set_num_threads(args.threads)
    ids, images, labels = D.load_wbc(args.data)
    unet, um = load_run(args.unet)
    vnet, vm = load_run(args.vptv)
    assert um["val_ids"] == vm["val_ids"] and um["train_ids"] == vm["train_ids"], "runs use different splits"
    va = np.array([ids.index(i) for i in vm["val_ids"]])
    vimg, vlab = images[va], labels[va]
    mean = torch.tensor(vm["train_fractions_mean"], dtype=torch.float32)
    lo = torch.tensor(vm["train_fractions_p02"], dtype=torch.float32)
    hi = torch.tensor(vm["train_fractions_p98"], dtype=torch.float32)
    vkw = {"exact": {"volumes": mean}, "interval": {"volume_bounds": (lo, hi)}, "none": {}}
    h = vm["head"]

    t0 = time.time()
    UL = val_logits(unet, vimg)
    VL = val_logits(vnet, vimg)
    rows = [_row("U-net (softmax)", scores_for(UL, vlab), {"net": "unet"})]
    rows.append(_row("VPTVU-net backbone + plain softmax", scores_for(VL, vlab), {"net": "vptv-unet"}))
    for mode in ("exact", "interval", "none"):
        layer = VPTVSoftmax(epsilon=h["epsilon"], tv_weight=h["tv_weight"], num_iter=h["num_iter"], volume_mode=mode)
        rows.append(_row(f"VPTVU-net, as trained, volumes={mode}", scores_for(VL, vlab, layer, vkw[mode]),
                         {"net": "vptv-unet", "volume_mode": mode, "epsilon": h["epsilon"],
                          "tv_weight": h["tv_weight"], "num_iter": h["num_iter"]}))
    # oracle: each image's own true fractions (upper bound of the exact-volume protocol)
    layer = VPTVSoftmax(epsilon=h["epsilon"], tv_weight=h["tv_weight"], num_iter=h["num_iter"], volume_mode="exact")
    true_frac = D.class_fractions(vlab)
    preds = []
    with torch.inference_mode():
        for lg, fr in zip(VL, true_frac):
            v = torch.tensor(np.clip(fr, 1e-3, None) / np.clip(fr, 1e-3, None).sum(), dtype=torch.float32)
            preds.append(layer(lg, volumes=v)[0].argmax(0).numpy())
    rows.append(_row("VPTVU-net, oracle per-image true volumes (not available at test)",
                     segmentation_scores(np.stack(preds), vlab), {"net": "vptv-unet", "oracle": True}))

    grid = []
    for net, LG in (("vptv-unet", VL), ("unet", UL)):
        for mode, eps, T, lam in itertools.product(("exact", "interval", "none"), args.eps_grid, args.T_grid,
                                                    args.lam_grid):
            if mode == "none" and lam == 0:
                continue
            layer = VPTVSoftmax(epsilon=eps, tv_weight=lam, num_iter=T, volume_mode=mode)
            s = scores_for(LG, vlab, layer, vkw[mode])
            grid.append(_row(f"{net} + layer at test", s, {"net": net, "volume_mode": mode, "epsilon": eps,
                                                           "num_iter": T, "tv_weight": lam}))
    print(f"grid of {len(grid)} configurations in {time.time() - t0:.0f} s", flush=True)
    best = {}
    for net in ("vptv-unet", "unet"):
        cand = [g for g in grid if g["net"] == net and g["num_iter"] <= args.max_default_iter]
        # prefer the highest accuracy; ties (within 1e-4) -> fewer iterations (faster)
        best[net] = max(cand, key=lambda g: (round(g["pixel_accuracy"], 4), -g["num_iter"]))
        for mode in ("exact", "interval", "none"):
            c = [g for g in cand if g["volume_mode"] == mode]
            best[f"{net}/{mode}"] = max(c, key=lambda g: (round(g["pixel_accuracy"], 4), -g["num_iter"]))
    result = {"val_ids": vm["val_ids"], "rows": rows, "best": best, "grid": grid}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in rows + [dict(best[k], config=f"best {k}") for k in best]:
        print(f"{r['config'][:60]:60s} acc {r['pixel_accuracy']:.4f} dice {np.round(r['dice'], 4).tolist()} "
              f"volerr {r['volume_error']:.4f} "
              + " ".join(f"{k}={r[k]}" for k in ("volume_mode", "epsilon", "num_iter", "tv_weight") if k in r))
    if args.export:
        export(args, um, vm, rows, best)
    return result


def export(args, um, vm, rows, best):
    from .weights import export_weights

    common = {
        "classes": CLASSES,
        "normalisation": {"formula": "x = (rgb / 255 - mean) / std", "mean": list(D.MEAN), "std": list(D.STD),
                          "input": "RGB uint8 (H, W, 3)"},
        "volume_priors": {"mean": vm["train_fractions_mean"], "p02": vm["train_fractions_p02"],
                          "p98": vm["train_fractions_p98"], "source": "ground-truth class fractions of the training-split images"},
        "train_ids": vm["train_ids"],
        "val_ids": vm["val_ids"],
        "data_digest_sha256": vm["data_digest_sha256"],
        "data": "WBC Dataset 2 (Zheng et al., Micron 2018; images from the CellaVision blog), GPL-3.0",
        "licence_note": "Trained on GPL-3.0 data (Zheng et al. 2018, CellaVision blog images).",
    }
    for name, run_dir, m in (("unet", args.unet, um), ("vptv-unet", args.vptv, vm)):
        model, _ = load_run(run_dir)
        meta = dict(common)
        meta.update({"arch": m["arch"], "unet": m["unet"], "head": m["head"], "training": {
            "args": m["args"], "history": m["history"]}})
        if name == "unet":
            meta["validation"] = {"softmax": rows[0]}
        else:
            b = best["vptv-unet"] if args.default_mode == "any" else best[f"vptv-unet/{args.default_mode}"]
            meta["head"] = dict(m["head"])
            meta["defaults"] = {"volume_mode": b["volume_mode"], "epsilon": b["epsilon"], "tv_weight": b["tv_weight"],
                                "num_iter": b["num_iter"],
                                "selected_on": "validation split (14 held-out images), best pixel accuracy "
                                               f"with volume mode '{args.default_mode}' and T <= {args.max_default_iter}"}
            meta["validation"] = {"as_trained": rows[1:], "default": b,
                                  "best_per_volume_mode": {k: v for k, v in best.items() if k.startswith("vptv-unet/")}}
        pt = export_weights(model.state_dict(), name, meta)
        print(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m napari_vptv.nn.evaluate")
    ap.add_argument("--unet", required=True)
    ap.add_argument("--vptv", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="eval.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps-grid", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--T-grid", type=int, nargs="+", default=[3, 5, 10, 20])
    ap.add_argument("--max-default-iter", type=int, default=1000,
                    help="only configurations with T <= this are eligible as the shipped default (inference-time budget)")
    ap.add_argument("--lam-grid", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--default-mode", choices=["any", "exact", "interval", "none"], default="interval",
                    help="volume mode of the shipped VPTVU-net default (best T / eps / lambda within it)")
    ap.add_argument("--export", action="store_true", help="write models/unet.* and models/vptv-unet.*")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
