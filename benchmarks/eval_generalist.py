"""Evaluate white-blood-cell methods per source: validation splits, leave-one-source-out,
crops without a white cell, multi-cell mosaics and a fixed synthetic shift suite.

Run by hand (not a test); every figure in docs/generalist.md comes from this script::

    python benchmarks/eval_generalist.py --data-root ../shared/data \
        --unet runs/gen-unet --vptv runs/gen-vptv-unet --out benchmarks/results/generalist_val.json

``--unet`` / ``--vptv`` take a training run folder (model.pt + train_meta.json) or a
shipped model name. Images are scored on the *validation* split recorded in the run's
metadata (``--split val``) or on every image of a source the run never saw
(``--split all --sources wbc-d1`` for leave-one-source-out). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_vptv.nn.predict import predict_cells
from napari_vptv.nn.sources import load_source
from napari_vptv.nn.train import segmentation_scores
from napari_vptv.nn.weights import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shifts as S  # noqa: E402  (benchmarks/shifts.py)

CLASSES = ("background", "cytoplasm", "nucleus")


def nc_ratio_errors(pred, gt, min_relative_area=0.25):
    """|N/(N+C)| error per ground-truth cell (connected cell region, dilated 5 px for the prediction)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(gt > 0)
    if n == 0:
        return []
    areas = np.bincount(lab.ravel())[1:]
    errs = []
    for k in np.nonzero(areas >= min_relative_area * areas.max())[0] + 1:
        region = lab == k
        grow = ndi.binary_dilation(region, iterations=5)
        tn, tc = (gt[region] == 2).sum(), (gt[region] == 1).sum()
        pn, pc = (pred[grow] == 2).sum(), (pred[grow] == 1).sum()
        if tn + tc == 0:
            continue
        errs.append(abs(tn / (tn + tc) - (pn / (pn + pc) if pn + pc else 0.0)))
    return errs


def make_predictor(spec, nets, args):
    """``spec``: "unet", "vptv-unet:PRIOR", "vptv:preset" or "vptv:adapted"."""
    kind, _, opt = spec.partition(":")
    if kind in ("unet", "vptv-unet"):
        model, meta = nets[kind]
        kw = {"prior": opt or None, "augment": args.augment, "require_nucleus": not args.keep_cells_without_nucleus}
        if args.comfort:
            kw["comfort_range"] = args.comfort

        def run(img, diameter=None):
            return predict_cells(model, meta, img, diameter=diameter, **kw).labels

        return run
    from napari_vptv.core.solver.segment import vptv_segment
    from napari_vptv.core.wbc.adapt import adapted_segment
    from napari_vptv.core.wbc.cell_rules import drop_cells_without_nucleus
    from napari_vptv.core.wbc.preset import wbc_preset

    def rule(labels):  # as the API applies it (SegmentOptions.require_nucleus)
        return labels if args.keep_cells_without_nucleus else drop_cells_without_nucleus(labels)[0]

    def run(img, diameter=None):
        if opt == "preset":
            return rule(vptv_segment(img, **wbc_preset()).labels)
        model, meta = nets["unet"]
        # the default method "vptv-adapted" (api.segment_adapted: one plain U-net pass), with this run's U-net
        pred = predict_cells(model, meta, img, diameter=diameter, augment=1, require_nucleus=False)
        p = pred.probabilities
        r = adapted_segment(
            img,
            p,
            network_weight=args.network_weight,
            epsilon=args.vptv_epsilon,
            tv_weight=args.vptv_tv,
            colour_sigma=args.colour_sigma,
            diameter=pred.diameter,
            rounding=args.rounding,
            own_covariance_share=args.own_covariance_share,
            **({"max_num_iter": args.max_iter} if args.max_iter else {}),
        )
        if r is None:  # a class without confident pixels (e.g. no cell): keep the network's labels
            return rule(p.argmax(0))
        return rule(r.labels)

    return run


def score(run, images, labels, diameters=None):
    preds, times = [], []
    for i, img in enumerate(images):
        t = time.perf_counter()
        preds.append(run(img, None if diameters is None else diameters[i]))
        times.append(time.perf_counter() - t)
    s = segmentation_scores(preds, labels)
    s["pixel_accuracy_per_image"] = [round(float(a), 5) for a in s["pixel_accuracy_per_image"]]
    s["seconds_per_image"] = [round(t, 4) for t in times]
    errs = [e for p, g in zip(preds, labels) for e in nc_ratio_errors(p, g)]
    s["nc_ratio_mae"] = float(np.mean(errs)) if errs else None
    s["seconds_median"] = float(np.median(times))
    s["seconds_max"] = float(np.max(times))
    return s, preds


def eval_no_cell(run, sources, size=100):
    fr = []
    for src in sources:
        for smp in src.val_eval:
            for crop in S.cell_free_crops(smp.image, smp.labels, size):
                fr.append(float((run(crop) > 0).mean()))
    fr = np.asarray(fr)
    return {
        "n_crops": int(len(fr)),
        "mean_cell_fraction": float(fr.mean()) if len(fr) else None,
        "share_above_2pct": float((fr > 0.02).mean()) if len(fr) else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--unet", default="unet")
    ap.add_argument("--vptv", default="vptv-unet")
    ap.add_argument(
        "--methods",
        default="unet,vptv-unet:self,vptv-unet:pooled,vptv-unet:training-average,"
        "vptv-unet:none,vptv:preset,vptv:adapted",
    )
    ap.add_argument("--sources", default="wbc,wbc-d1")
    ap.add_argument("--split", choices=["val", "all"], default="val")
    ap.add_argument("--suites", default="plain,no-cell,mosaic,shifts")
    ap.add_argument("--comfort", type=float, nargs=2, default=None)
    ap.add_argument("--vptv-epsilon", type=float, default=0.05)
    ap.add_argument("--vptv-tv", type=float, default=0.05)
    ap.add_argument(
        "--network-weight",
        type=float,
        default=None,
        help="vptv:adapted: weight of the U-net's -log p next to the colour cost "
        "(default: the API's, core.wbc.adapt.NETWORK_WEIGHT; 0 = colour model alone)",
    )
    ap.add_argument(
        "--colour-sigma",
        default=None,
        help="vptv:adapted: smoothing (px) of the image the colour model sees, or 'auto' "
        "(core.wbc.adapt.COLOUR_SIGMA_PER_DIAMETER x the estimated diameter); "
        "default: the API's, core.wbc.adapt.COLOUR_SIGMA",
    )
    ap.add_argument(
        "--min-nucleus-fraction",
        type=float,
        default=None,
        help="nucleus rule: nucleus share below which a cell part is dropped "
        "(default: core.wbc.cell_rules.MIN_NUCLEUS_FRACTION)",
    )
    ap.add_argument(
        "--rounding",
        choices=["volume", "argmax"],
        default=None,
        help="vptv:adapted: final labels by the volume-respecting rounding or argmax "
        "(default: the API's, core.wbc.adapt.ROUNDING)",
    )
    ap.add_argument(
        "--own-covariance-share",
        type=float,
        default=None,
        help="vptv:adapted: share of each class's own colour covariance in the combined solve, the rest "
        "their mean (default: the API's, core.wbc.adapt.OWN_COVARIANCE_SHARE; 1 = a covariance per class)",
    )
    ap.add_argument(
        "--max-iter",
        type=int,
        default=0,
        help="vptv:adapted: iteration cap of both solves (default 0: the API's, core.wbc.adapt.MAX_ITER)",
    )
    ap.add_argument(
        "--augment",
        type=int,
        choices=[1, 2, 8],
        default=2,
        help="test-time augmentation: transforms averaged (default: the user default, 2; older results used 1)",
    )
    ap.add_argument(
        "--keep-cells-without-nucleus",
        action="store_true",
        help="score the raw labels (no white-cell nucleus rule), as older results did",
    )
    ap.add_argument("--limit", type=int, default=0, help="score only the first N images per source (quick look)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.network_weight is None:
        from napari_vptv.core.wbc.adapt import NETWORK_WEIGHT

        args.network_weight = NETWORK_WEIGHT
    if args.colour_sigma is None:
        from napari_vptv.core.wbc.adapt import COLOUR_SIGMA

        args.colour_sigma = COLOUR_SIGMA
    args.colour_sigma = None if args.colour_sigma in ("auto", None) else float(args.colour_sigma)
    if args.rounding is None:
        from napari_vptv.core.wbc.adapt import ROUNDING

        args.rounding = ROUNDING
    if args.own_covariance_share is None:
        from napari_vptv.core.wbc.adapt import OWN_COVARIANCE_SHARE

        args.own_covariance_share = OWN_COVARIANCE_SHARE
    if args.min_nucleus_fraction is not None:  # read at call time by every method's rule
        from napari_vptv.core.wbc import cell_rules

        cell_rules.MIN_NUCLEUS_FRACTION = args.min_nucleus_fraction
    torch.set_num_threads(1)
    nets = {"unet": load_model(args.unet), "vptv-unet": load_model(args.vptv)}
    meta = nets["unet"][1]
    val_ids = {s["name"]: set(s["val_ids"]) for s in meta.get("sources", [])}
    if not val_ids and "val_ids" in meta:  # a single-source model of the first version
        val_ids = {"wbc": set(meta["val_ids"])}
    sources = []
    for name in args.sources.split(","):
        src = load_source(Path(args.data_root) / name, name)
        keep = (lambda s: True) if args.split == "all" else (lambda s, n=name: s.name in val_ids.get(n, ()))
        src.val_eval = [s for s in src.samples if keep(s)][: args.limit or None]
        if not src.val_eval:
            raise SystemExit(f"no {args.split} images of source {name} for this model (use --split all)")
        sources.append(src)
    suites = args.suites.split(",")
    result = {"args": vars(args), "torch_threads": 1, "machine": S.machine(), "commit": S.commit(), "methods": {}}
    for spec in args.methods.split(","):
        run = make_predictor(spec, nets, args)
        res = {}
        for src in sources:
            imgs, labs = [s.image for s in src.val_eval], [s.labels for s in src.val_eval]
            r = {}
            if "plain" in suites:
                r["plain"], _ = score(run, imgs, labs)
            if "mosaic" in suites:
                mi, ml = S.mosaics(imgs, labs)
                r["mosaic_2x2"], _ = score(run, mi, ml)
            if "shifts" in suites:
                r["shifts"] = {}
                for shift in S.SHIFTS:
                    si, sl = zip(*[S.apply_shift(shift, im, lb) for im, lb in zip(imgs, labs)])
                    r["shifts"][shift], _ = score(run, list(si), list(sl))
            res[src.name] = r
            print(
                spec,
                src.name,
                json.dumps(
                    {k: (v["pixel_accuracy"], v["dice"], v["nc_ratio_mae"]) for k, v in r.items() if k != "shifts"}
                ),
                flush=True,
            )
        if "no-cell" in suites:
            res["no_cell_crops"] = eval_no_cell(run, sources)
            print(spec, "no-cell", json.dumps(res["no_cell_crops"]), flush=True)
        result["methods"][spec] = res
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    sys.exit(main())
