"""Weight interpolation between the shipped model and a fine-tuned one (WiSE-FT).

For each draw of ``k`` pairs, the shipped model is fine-tuned once (the final
training of :func:`napari_vptv.nn.finetune.finetune`: the recipe, ``--steps`` steps,
the draw's seed) and the models ``base + alpha * (tuned - base)`` are scored on the
rest of the lab with the network method and the default method::

    python benchmarks/ablate_interpolation.py --data-root ../shared/data --target wbc-d1 --k 5 \
        --seeds 0,1,2 --out benchmarks/results/finetune_interpolation_wbc-d1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as C  # noqa: E402
from shifts import machine  # noqa: E402

from napari_vptv.finetuning import checked_methods  # noqa: E402
from napari_vptv.nn.finetune_loop import RECIPE, run_loop  # noqa: E402
from napari_vptv.nn.weights import load_model  # noqa: E402

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate(base, tuned, alpha):
    out = copy.deepcopy(base)
    sb, st = base.state_dict(), tuned.state_dict()
    out.load_state_dict({k: (sb[k] + alpha * (st[k] - sb[k])) if sb[k].is_floating_point() else st[k] for k in sb})
    return out.eval()


def score(model, meta, test, methods):
    out = {}
    for name, seg in methods.items():
        preds = [seg(model, meta, s.image, "cpu") for s in test]
        out[name] = C._scores(preds, test)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--target", default="wbc-d1", choices=C.TARGETS)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    doc.update(command=" ".join(sys.argv), commit=C.git_commit(), machine=machine(), args=vars(args))
    pool, _ = C.lab(args.data_root, args.target)
    methods = checked_methods()
    done = {r["seed"] for r in doc["rows"]}
    for seed in [int(s) for s in args.seeds.split(",")]:
        if seed in done:
            continue
        train, test = C.draw(pool, args.k, seed)
        base, meta = load_model("vptv-unet")
        tuned = copy.deepcopy(base)
        run_loop(tuned, meta, train, recipe=RECIPE, seed=seed, steps=args.steps)
        row = {"seed": seed, "train": [s.name for s in train], "alphas": {}}
        for a in ALPHAS:
            row["alphas"][str(a)] = score(interpolate(base, tuned, a), meta, test, methods)
            print(seed, a, {m: round(v["pixel_accuracy"], 4) for m, v in row["alphas"][str(a)].items()}, flush=True)
        doc["rows"].append(row)
        out.write_text(json.dumps(doc, indent=1))
    for a in ALPHAS:
        print(
            a,
            {
                m: round(float(np.mean([r["alphas"][str(a)][m]["pixel_accuracy"] for r in doc["rows"]])), 4)
                for m in methods
            },
        )


if __name__ == "__main__":
    main()
