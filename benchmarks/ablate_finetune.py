"""Why fine-tuning from the shipped generalist hurt, one cause at a time.

Starts from the shipped network, fine-tunes on ``k`` pairs of a held-out split with a
fixed number of steps under a sequence of recipes, each adding one rule to the one
before (``GENERALIST_LIKE`` is what fine-tuning did before: the generalist trainer's
settings), and scores the network method on the rest of the split (the target) and
on the other source's validation split (forgetting)::

    python benchmarks/ablate_finetune.py --data-root ../shared/data --target wbc-d1 --k 5 \
        --steps 300 --seeds 0 --out benchmarks/results/finetune_ablation_wbc-d1.json

``--target synthetic:wbc`` uses the ``wbc`` validation split under the composed fixed
shifts (:data:`finetune_common.SYNTHETIC_LAB`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as C  # noqa: E402
from shifts import machine  # noqa: E402

from napari_vptv.nn.finetune_loop import GENERALIST_LIKE, RECIPE, run_loop  # noqa: E402
from napari_vptv.nn.weights import load_model  # noqa: E402


def grid(spec):
    import itertools

    axes = [(k, [float(v) for v in vals.split(",")]) for k, vals in (p.split("=") for p in spec.split(";"))]
    for combo in itertools.product(*[vals for _, vals in axes]):
        change = {k: v for (k, _), v in zip(axes, combo)}
        yield ", ".join(f"{k} {v:g}" for k, v in change.items()), dataclasses.replace(RECIPE, **change)


def recipes():
    """The generalist trainer's settings, then the adopted rules one at a time, then the
    two measured and not adopted (an L2-SP anchor, replay of the bundled samples)."""
    r = GENERALIST_LIKE
    steps = [("generalist trainer settings", r)]
    for label, change in (
        ("+ BatchNorm frozen", {"freeze_batchnorm": True}),
        (f"+ lr {RECIPE.lr:g}, warm-up {RECIPE.warmup}", {"lr": RECIPE.lr, "warmup": RECIPE.warmup}),
        (f"+ inference-scale patches (x/÷ {RECIPE.scale_jitter:g})", {"scale_jitter": RECIPE.scale_jitter}),
        ("+ no stain / colour jitter (the recipe)", {"colour_jitter": RECIPE.colour_jitter}),
    ):
        r = dataclasses.replace(r, **change)
        steps.append((label, r))
    assert r == RECIPE
    steps.append(("recipe + L2-SP anchor 1e-3 (not adopted)", dataclasses.replace(RECIPE, anchor_weight=1e-3)))
    steps.append(("recipe + replay of the samples 25 % (not adopted)", dataclasses.replace(RECIPE, replay=0.25)))
    return steps


def target_sets(data_root, target, k, seed):
    pool, other = C.lab(data_root, target)
    train, test = C.draw(pool, k, seed)
    return train, test, other


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--target", default="wbc-d1", choices=C.TARGETS)
    ap.add_argument("--base", default="vptv-unet")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--only", default="", help="comma-separated recipe indices to run (default: all)")
    ap.add_argument(
        "--grid",
        default="",
        help="instead: the full recipe with these changes, e.g. "
        "'colour_jitter=1,0.3,0;lr=2e-4,5e-4' (every combination)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, meta = load_model(args.base)
    rows = []
    out = Path(args.out)
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, test, other = target_sets(args.data_root, args.target, args.k, seed)
        rows.append(
            {
                "seed": seed,
                "recipe": "base",
                "target": C.score_network(base, meta, test),
                "other": C.score_network(base, meta, other),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for i, (label, recipe) in enumerate(grid(args.grid) if args.grid else recipes()):
            if args.only and str(i) not in args.only.split(","):
                continue
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            res = run_loop(model, meta, train, recipe=recipe, seed=seed, steps=args.steps)
            rows.append(
                {
                    "seed": seed,
                    "recipe": label,
                    "settings": recipe.to_dict(),
                    "steps": res.steps,
                    "seconds": time.perf_counter() - t0,
                    "target": C.score_network(model, meta, test),
                    "other": C.score_network(model, meta, other),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(
                json.dumps(
                    {
                        "command": " ".join(sys.argv),
                        "commit": C.git_commit(),
                        "machine": machine(),
                        "args": vars(args),
                        "rows": rows,
                    },
                    indent=1,
                )
            )


if __name__ == "__main__":
    main()
