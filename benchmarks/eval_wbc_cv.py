"""Cross-validated accuracy of the WBC preset on the 90 public WBC images.

5-fold cross-validation by image: the colour statistics (Gaussian means /
covariances, colour histograms) and the volume priors (interval percentiles,
training-average fractions) are fitted on 4 folds and the 5th fold is
segmented with them, so no image is scored with statistics it contributed to.
Folds: image ``j`` (in sorted id order) belongs to fold ``j % 5``.

Run by hand (not a test; needs /work/shared/data/wbc)::

    nice -n 10 python benchmarks/eval_wbc_cv.py                      # preset, interval + exact
    nice -n 10 python benchmarks/eval_wbc_cv.py --subset 3 --grid    # tuning grid, every 3rd image
    python benchmarks/eval_wbc_cv.py --fit-package-model             # refit the shipped model (all 90)

Prints one row per configuration: mean pixel accuracy, per-class Dice and
volume error (mean absolute class-fraction error), iterations and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/work/shared/data/wbc"
PACKAGE_MODEL = Path(__file__).resolve().parents[1] / "src" / "napari_vptv" / "models" / "wbc_colour_model.npz"


def load(root):
    from napari_vptv.core.io.files import load_wbc_dataset

    data = load_wbc_dataset(root)
    ids = [d[0] for d in data]
    return ids, np.stack([d[1] for d in data]), np.stack([d[2] for d in data])


def caps(masks, folds, fit_kwargs):
    """Best possible mean accuracy when the label fractions are forced to the
    (CV) training-average fractions, resp. into the (CV) intervals: an oracle that
    only moves the surplus pixels of one class to another loses
    ``0.5 * ||v - t||_1`` (t: true fractions, v: the closest admissible fractions)."""
    from scipy.optimize import linprog

    exact, interval = [], []
    for k in np.unique(folds):
        tr = folds != k
        fr = np.stack([np.bincount(m.ravel(), minlength=3) / m.size for m in masks[tr]])
        lo = np.percentile(fr, fit_kwargs.get("percentiles", (2, 98))[0], axis=0)
        hi = np.percentile(fr, fit_kwargs.get("percentiles", (2, 98))[1], axis=0)
        lo, hi = np.clip(lo - fit_kwargs.get("widen", 0), 0, 1), np.clip(hi + fit_kwargs.get("widen", 0), 0, 1)
        mean = fr.mean(0)
        for m in masks[~tr]:
            t = np.bincount(m.ravel(), minlength=3) / m.size
            exact.append(1 - 0.5 * np.abs(mean - t).sum())
            # min ||v - t||_1 s.t. lo <= v <= hi, sum v = 1  (LP in v and slack s >= |v - t|)
            n = 3
            c = np.r_[np.zeros(n), np.ones(n)]
            a_ub = np.block([[np.eye(n), -np.eye(n)], [-np.eye(n), -np.eye(n)]])
            b_ub = np.r_[t, -t]
            a_eq = np.r_[np.ones(n), np.zeros(n)][None]
            res = linprog(
                c,
                A_ub=a_ub,
                b_ub=b_ub,
                A_eq=a_eq,
                b_eq=[1.0],
                bounds=[(lo[i], hi[i]) for i in range(n)] + [(0, None)] * n,
            )
            interval.append(1 - 0.5 * res.fun)
    return float(np.mean(exact)), float(np.mean(interval))


def run_config(ids, images, masks, folds, models, cfg, mode, subset=1, log=None):
    from napari_vptv.core.scoring.metrics import evaluate, summarize
    from napari_vptv.core.solver.segment import vptv_segment
    from napari_vptv.core.wbc.preset import wbc_preset

    rows = []
    for j in range(0, len(ids), subset):
        kw = wbc_preset(mode, model=models[folds[j]], **cfg)
        t0 = time.perf_counter()
        r = vptv_segment(images[j], **kw)
        dt = time.perf_counter() - t0
        row = evaluate(r.labels, masks[j], 3)
        row.update(id=ids[j], time=dt, n_iter=r.n_iter, volume_residual=float(r.volume_spec.residual(r.volumes).max()))
        rows.append(row)
        if log:
            print(f"  {ids[j]} acc {row['accuracy']:.4f} it {r.n_iter} {dt:.2f}s", file=log, flush=True)
    return rows, summarize(rows)


def fmt(name, mode, s):
    d = s["dice"]
    v = s["volume_error"]
    return (
        f"| {name} | {mode} | {s['accuracy']:.4f} | {d[0]:.3f} / {d[1]:.3f} / {d[2]:.3f} | "
        f"{v[0]:.3f} / {v[1]:.3f} / {v[2]:.3f} | {s['n_iter']:.0f} | {s['time']:.2f} |"
    )


GRID = [
    # (label, similarity overrides)
    ("histogram eps=1 lam=2 (preset)", dict(similarity="histogram", epsilon=1.0, tv_weight=2.0)),
    ("histogram eps=0.5 lam=1", dict(similarity="histogram", epsilon=0.5, tv_weight=1.0)),
    ("histogram eps=2 lam=4", dict(similarity="histogram", epsilon=2.0, tv_weight=4.0)),
    ("histogram eps=1 lam=4 edge", dict(similarity="histogram", epsilon=1.0, tv_weight=4.0, edge=True)),
    ("histogram eps=1 lam=0 (no TV)", dict(similarity="histogram", epsilon=1.0, tv_weight=0.0)),
    ("gaussian eps=0.5 lam=1, no EM", dict(similarity="gaussian", epsilon=0.5, tv_weight=1.0, em_update=False)),
    ("gaussian eps=0.5 lam=1, EM", dict(similarity="gaussian", epsilon=0.5, tv_weight=1.0, em_update=True)),
    ("mahalanobis eps=0.5 lam=1, EM", dict(similarity="mahalanobis", epsilon=0.5, tv_weight=1.0, em_update=True)),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--subset", type=int, default=1, help="score every n-th image only (1 = all 90)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--grid", action="store_true", help="run the tuning grid, not only the preset")
    p.add_argument("--modes", default="interval,exact")
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--widen", type=float, default=0.0)
    p.add_argument("--json", help="write per-image rows and summaries here")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--fit-package-model", action="store_true", help=f"fit on all images and write {PACKAGE_MODEL}")
    args = p.parse_args(argv)

    import sys

    import torch

    torch.set_num_threads(1)
    from napari_vptv.core.wbc.preset import WBC_DEFAULTS, fit_wbc_model

    ids, images, masks = load(args.root)
    fit_kwargs = dict(bins=args.bins, sigma=args.sigma, widen=args.widen)
    if args.fit_package_model:
        model = fit_wbc_model(images, masks, **fit_kwargs)
        model.save(PACKAGE_MODEL)
        print(
            f"wrote {PACKAGE_MODEL} ({PACKAGE_MODEL.stat().st_size / 1024:.0f} KB) from {len(ids)} images; "
            f"fractions {np.round(model.fractions, 4).tolist()}, lower {np.round(model.lower, 4).tolist()}, "
            f"upper {np.round(model.upper, 4).tolist()}"
        )
        return 0

    folds = np.arange(len(ids)) % args.folds
    t0 = time.time()
    models = [fit_wbc_model(images[folds != k], masks[folds != k], **fit_kwargs) for k in range(args.folds)]
    print(
        f"# {len(ids)} images, {args.folds}-fold CV by image, scoring every {args.subset} image(s); "
        f"fit {fit_kwargs} in {time.time() - t0:.1f}s; torch threads {torch.get_num_threads()}"
    )
    ce, ci = caps(masks, folds, fit_kwargs)
    print(f"# cap (oracle) mean accuracy: exact CV-average fractions {ce:.4f}, CV intervals {ci:.4f}")
    print(
        "| configuration | volumes | mean pixel acc. | Dice bg / cyto / nucleus | volume error bg / cyto / nucleus | iters | s/image |"
    )
    print("|---|---|---|---|---|---|---|")
    grid = GRID if args.grid else [("preset " + json.dumps(WBC_DEFAULTS), {})]
    out = {}
    for name, cfg in grid:
        for mode in args.modes.split(","):
            rows, s = run_config(
                ids, images, masks, folds, models, cfg, mode, args.subset, log=sys.stderr if args.verbose else None
            )
            print(fmt(name, mode, s), flush=True)
            out[f"{name} [{mode}]"] = {
                "summary": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()},
                "rows": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows],
            }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
