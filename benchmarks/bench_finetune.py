"""Fine-tuning benchmark (issue 17), leave-one-source-out: the user's situation.

For a target source, start from a network that never saw it (a training run on the
*other* source, e.g. ``runs/loso-wbc`` for target ``wbc-d1``), fine-tune it on ``k``
images of the target (drawn from the target's training split, nested: the 3 images
of k = 3 are among the 5 of k = 5) for a time budget, and score on the target's
held-out validation split (the same split as the generalist configs: ``n_val``
images, ``split_seed`` 0), never seen by any run here. Controls: the base model
alone, and training the same architecture from random weights on the same images
for the same time. Scoring runs the user's path (:func:`predict_cells`, diameter
estimated, the model's own defaults). One torch thread; run by hand::

    python benchmarks/bench_finetune.py --data-root ../shared/data --target wbc-d1 \
        --base runs/loso-wbc --ks 1,3,5,10 --minutes 2 --goal-minutes 5 \
        --out benchmarks/results/finetune_wbc-d1.json

Each fine-tuning run holds one of its k pairs out (k >= 3) to keep the best model, as
the widget and ``vptv finetune`` do, so it trains on k - 1 of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_vptv.nn.finetune import finetune
from napari_vptv.nn.layer import build_model
from napari_vptv.nn.predict import predict_cells
from napari_vptv.nn.sources import load_source
from napari_vptv.nn.train import segmentation_scores
from napari_vptv.nn.weights import load_model

N_VAL = {"wbc": 14, "wbc-d1": 40}


def _model_from(result):
    meta = result.metadata
    model = build_model(meta["arch"], unet_kwargs=meta["unet"], head_kwargs=meta.get("head") or {})
    model.load_state_dict(result.state_dict)
    return model.eval(), meta


def score(model, meta, test) -> dict:
    preds = [predict_cells(model, meta, s.image).labels for s in test]
    sc = segmentation_scores(preds, [s.labels for s in test])
    return {"pixel_accuracy": sc["pixel_accuracy"], "dice": sc["dice"], "mean_dice": sc["mean_dice"],
            "volume_error": sc["volume_error"]}


def _run(samples, base, minutes, scratch, seed, lr):
    t0 = time.time()
    refused = None
    try:
        res = finetune(samples, base=base, minutes=minutes, seed=seed, threads=1, scratch=scratch,
                       check_labels=not scratch, lr=lr)
    except ValueError as exc:  # the swapped-label check refused: recorded, then trained anyway
        refused = str(exc)
        res = finetune(samples, base=base, minutes=minutes, seed=seed, threads=1, scratch=scratch,
                       check_labels=False, lr=lr)
    ft = res.metadata["finetune"]
    return res, {"label_check_refused": refused, "steps_done": ft["steps_done"], "steps_planned": ft["steps_planned"],
                 "train_seconds": ft["train_seconds"], "wall_seconds": time.time() - t0,
                 "held_out_val_score": res.val_score, "best_step": ft["best_step"]}


def summarise(paths) -> str:
    """Markdown table of result files (``python benchmarks/bench_finetune.py --summarise F...``)."""
    lines = ["| target | model | k | min | steps | pixel acc. | Dice bg | Dice cyto | Dice nucleus |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        d = json.loads(Path(path).read_text())
        for r in d["rows"]:
            mode = {"base": f"base ({', '.join(d['base_trained_on'])} only)"}.get(r["mode"], r["mode"])
            steps = r.get("steps_done", "")
            lines.append(f"| {d['target']} | {mode} | {r['k']} | {r['minutes']:g} | {steps} | "
                         f"{r['pixel_accuracy']:.4f} | " + " | ".join(f"{x:.4f}" for x in r["dice"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--summarise":
        print(summarise(argv[1:]))
        return None
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--target", required=True, choices=sorted(N_VAL))
    ap.add_argument("--base", required=True, help="model that never saw the target (run folder or .pt)")
    ap.add_argument("--ks", default="1,3,5,10")
    ap.add_argument("--minutes", type=float, default=2.0, help="budget of the k sweep")
    ap.add_argument("--goal-minutes", type=float, default=5.0, help="extra budget for k = --goal-k (0: none)")
    ap.add_argument("--goal-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-finetune", type=float, default=1e-3)
    ap.add_argument("--lr-scratch", type=float, default=2e-3, help="the generalist's from-scratch rate")
    ap.add_argument("--reference", default=None, help="also score this model (e.g. the shipped generalist)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    src = load_source(Path(args.data_root) / args.target, args.target, N_VAL[args.target], 0)
    test = src.val
    pool = [src.train[i] for i in np.random.default_rng(args.seed).permutation(len(src.train))]
    base_model, base_meta = load_model(args.base)
    base_pt = Path(args.base) / "model.pt" if Path(args.base).is_dir() else Path(args.base)
    out = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "target": args.target, "test_split": f"validation split of {args.target} ({len(test)} images, split_seed 0)",
        "test_ids": [s.name for s in test], "base": str(args.base),
        "base_sha256": hashlib.sha256(base_pt.read_bytes()).hexdigest() if base_pt.is_file() else None,
        "base_trained_on": [s["name"] for s in base_meta.get("sources", []) if s.get("train_ids")],
        "torch_threads": 1, "rows": [],
    }

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))

    out["rows"].append({"mode": "base", "k": 0, "minutes": 0, **score(base_model, base_meta, test)})
    if args.reference:
        m, meta = load_model(args.reference)
        out["rows"].append({"mode": f"reference:{args.reference}", "k": 0, "minutes": 0, **score(m, meta, test)})
    save()
    plan = [(k, args.minutes) for k in map(int, args.ks.split(","))]
    if args.goal_minutes:
        plan.append((args.goal_k, args.goal_minutes))
    for k, minutes in plan:
        samples = pool[:k]
        for scratch in (False, True):
            res, info = _run(samples, args.base, minutes, scratch, args.seed,
                             args.lr_scratch if scratch else args.lr_finetune)
            m, meta = _model_from(res)
            row = {"mode": "scratch" if scratch else "finetune", "k": k, "minutes": minutes,
                   "train_ids": [s.name for s in samples], **info, **score(m, meta, test)}
            out["rows"].append(row)
            print(json.dumps({x: row[x] for x in ("mode", "k", "minutes", "steps_done", "pixel_accuracy", "dice")}),
                  flush=True)
            save()
    return out


if __name__ == "__main__":
    main()
