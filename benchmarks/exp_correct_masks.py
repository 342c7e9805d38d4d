"""Experiment: correct corrupted WBC nucleus masks with VPTV.

For every training image of the WBC data set (nucleus = mask value 255), the
ground-truth nucleus mask is corrupted in several ways (fixed seeds), then corrected
with :func:`napari_vptv.core.correct.mask.correct_mask`; mean nucleus Dice and pixel
accuracy (binary nucleus vs. rest) before / after are reported per corruption kind.

Run by hand (not a test), niced, e.g.::

    nice -n 10 python benchmarks/exp_correct_masks.py --data /work/shared/data/wbc \
        --out benchmarks/results/correct_masks.json > benchmarks/results/correct_masks.log 2>&1 &

Options select a subset (``--ids``, ``--every``), corruption kinds and the correction
parameters, so the same script serves the parameter search on a subset and the
final run on all 90 images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

KINDS = ("identity", "dilate3", "erode3", "jitter", "shift5", "polygon", "hull")


def _disk(r):
    from skimage.morphology import disk

    return disk(r).astype(bool)


def _sdf(m):
    """Signed distance (positive inside)."""
    return ndi.distance_transform_edt(m) - ndi.distance_transform_edt(~m)


def _smooth_noise(shape, rng, sigma, amp):
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return n / (n.std() + 1e-12) * amp


def corrupt(truth: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A corrupted copy of the boolean nucleus mask ``truth`` (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    t = truth.astype(bool)
    if kind == "identity":
        return t.copy()
    if kind == "dilate3":
        return ndi.binary_dilation(t, _disk(3))
    if kind == "erode3":
        return ndi.binary_erosion(t, _disk(3))
    if kind == "jitter":
        # boundary moved in and out by a smooth random field (std 2 px, ~10 px correlation)
        return _sdf(t) + _smooth_noise(t.shape, rng, 8.0, 2.0) > 0
    if kind == "shift5":
        ang = rng.uniform(0, 2 * np.pi)
        d = np.round(5 * np.array([np.sin(ang), np.cos(ang)])).astype(int)
        return ndi.shift(t.astype(np.uint8), d, order=0, mode="constant") > 0
    if kind == "polygon":
        # hand-drawn-like: a coarse polygon through perturbed boundary points, per component
        from skimage.draw import polygon as draw_polygon
        from skimage.measure import find_contours

        out = np.zeros_like(t)
        lab, n = ndi.label(t)
        for i in range(1, n + 1):
            comp = np.pad(lab == i, 1)
            cs = find_contours(comp.astype(float), 0.5)
            if not cs:
                continue
            c = max(cs, key=len) - 1
            step = max(len(c) // 16, 3)
            pts = c[::step] + rng.normal(0, 2.0, size=c[::step].shape)
            rr, cc = draw_polygon(pts[:, 0], pts[:, 1], t.shape)
            out[rr, cc] = True
        return ndi.binary_opening(out, _disk(1)) | (out & ~ndi.binary_erosion(out))
    if kind == "hull":
        # convex hull of each component, its boundary wobbled (std 1.5 px) and shrunk to the true area
        from skimage.morphology import convex_hull_object

        h = convex_hull_object(t, connectivity=2)
        s = _sdf(h) + _smooth_noise(t.shape, rng, 10.0, 1.5)
        # a hand drawing has about the right area: threshold the field at the true area
        thr = np.sort(s.ravel())[::-1][int(t.sum()) - 1]
        return s >= thr
    raise ValueError(f"unknown corruption kind {kind!r}; choose from {KINDS}")


def dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/data/wbc")
    ap.add_argument("--ids", default=None, help="comma-separated image ids (default: all)")
    ap.add_argument("--every", type=int, default=1, help="use every n-th image (subset for tuning)")
    ap.add_argument("--offset", type=int, default=0, help="start index for --every")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--volume-factor", default="1.0", help="float, or per kind 'dilate3=0.9,erode3=1.1' (others 1.0)")
    ap.add_argument("--volume-tolerance", type=float, default=0.0)
    ap.add_argument("--margin", type=int, default=None)
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--tv-weight", type=float, default=0.05)
    ap.add_argument("--no-edge", action="store_true")
    ap.add_argument("--model", default="colour")
    ap.add_argument("--similarity", default="gaussian")
    ap.add_argument("--em-rounds", type=int, default=1)
    ap.add_argument("--max-num-iter", type=int, default=300)
    ap.add_argument("--mask-weight", type=float, default=0.4)
    ap.add_argument("--no-fill-holes", action="store_true")
    ap.add_argument("--smooth", type=float, default=0.0)
    ap.add_argument("--out", default=None, help="JSON file for per-image results and the summary")
    ap.add_argument(
        "--rows", default=None, help="JSON-lines file: one line per corrected mask, appended as the run goes"
    )
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="ROWS",
        help="only print the summary table of existing --rows files",
    )
    args = ap.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for f in args.summarize for line in Path(f).read_text().splitlines() if line]
        kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
        factors = {}
        for r in rows:
            factors.setdefault(r["kind"], r.get("volume_factor", 1.0))
        return _summary(rows, kinds, factors)

    import torch

    torch.set_num_threads(1)
    from napari_vptv.core.correct.mask import correct_mask
    from napari_vptv.core.io.files import load_wbc_dataset

    kinds = [k for k in args.kinds.split(",") if k]
    factors = {k: 1.0 for k in kinds}
    if "=" in args.volume_factor:
        for part in args.volume_factor.split(","):
            k, v = part.split("=")
            factors[k.strip()] = float(v)
    else:
        factors = {k: float(args.volume_factor) for k in kinds}

    ids = args.ids.split(",") if args.ids else None
    data = load_wbc_dataset(args.data, ids=ids)
    data = data[args.offset :: args.every]
    params = dict(
        volume_tolerance=args.volume_tolerance,
        margin=args.margin,
        epsilon=args.epsilon,
        tv_weight=args.tv_weight,
        edge=not args.no_edge,
        model=args.model,
        similarity=args.similarity,
        em_rounds=args.em_rounds,
        max_num_iter=args.max_num_iter,
        seed=args.seed,
        mask_weight=args.mask_weight,
        fill_holes=not args.no_fill_holes,
        smooth=args.smooth,
    )
    print(f"# {len(data)} images, kinds {kinds}, factors {factors}, params {params}", flush=True)
    rows = []
    t0 = time.perf_counter()
    for n_img, (key, img, gt) in enumerate(data):
        truth = gt == 2
        for j, kind in enumerate(kinds):
            seed = args.seed * 100003 + int(key) * 101 + j
            rough = corrupt(truth, kind, seed)
            if not rough.any():
                continue
            t = time.perf_counter()
            out = correct_mask(img, rough.astype(np.int32), channel_axis=-1, volume_factor=factors[kind], **params)
            dt = time.perf_counter() - t
            fixed = out > 0
            row = dict(
                id=key,
                kind=kind,
                dice_before=dice(rough, truth),
                dice_after=dice(fixed, truth),
                acc_before=float(np.mean(rough == truth)),
                acc_after=float(np.mean(fixed == truth)),
                area_true=int(truth.sum()),
                area_given=int(rough.sum()),
                area_after=int(fixed.sum()),
                seconds=dt,
                volume_factor=factors[kind],
            )
            rows.append(row)
            if args.rows:
                with open(args.rows, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
        last = [r for r in rows if r["id"] == key]
        print(
            f"{n_img + 1}/{len(data)} {key} "
            + " ".join(f"{r['kind']}:{r['dice_before']:.3f}->{r['dice_after']:.3f}" for r in last)
            + f"  [{time.perf_counter() - t0:.0f}s]",
            flush=True,
        )

    summary = _summary(rows, kinds, factors)
    print(f"# total {time.perf_counter() - t0:.0f}s, mean {np.mean([r['seconds'] for r in rows]):.2f}s per mask")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                dict(
                    params=params, factors=factors, kinds=kinds, command=" ".join(sys.argv), summary=summary, rows=rows
                ),
                indent=1,
            )
        )
    return summary


def _summary(rows, kinds, factors):
    summary = {}
    n_img = len({r["id"] for r in rows})
    print(f"\n{n_img} images")
    print("\nkind      n   Dice before  Dice after  acc before  acc after  worst dDice  factor")
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        db = np.mean([r["dice_before"] for r in rs])
        da = np.mean([r["dice_after"] for r in rs])
        ab = np.mean([r["acc_before"] for r in rs])
        aa = np.mean([r["acc_after"] for r in rs])
        worst = min(r["dice_after"] - r["dice_before"] for r in rs)
        summary[kind] = dict(
            n=len(rs),
            dice_before=db,
            dice_after=da,
            acc_before=ab,
            acc_after=aa,
            worst_delta_dice=worst,
            volume_factor=factors[kind],
        )
        print(
            f"{kind:9s} {len(rs):3d}   {db:.4f}      {da:.4f}      {ab:.4f}      {aa:.4f}    {worst:+.4f}   {factors[kind]}"
        )
    allb = np.mean([r["dice_before"] for r in rows])
    alla = np.mean([r["dice_after"] for r in rows])
    print(f"all       {len(rows):3d}   {allb:.4f}      {alla:.4f}")
    return summary


if __name__ == "__main__":
    main()
