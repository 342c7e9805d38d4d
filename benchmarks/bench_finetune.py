"""Fine-tuning benchmark: the user's situation, starting from the shipped generalist.

A "lab" is a held-out split the shipped model never trained on: the ``wbc-d1`` or
``wbc`` validation split, or ``synthetic`` (the ``wbc`` validation split under the
composed fixed shifts of :mod:`shifts`: stain, pallor, blur). For every ``k`` and
seed, ``k`` pairs are drawn from the lab (the user's corrected images), the shipped
model is fine-tuned on them with :func:`napari_vptv.finetune` as the CLI and the
widget run it (the guard's cross-validation with the default and the network method
included, ``keep="always"`` so that the model is scored whatever the guard says), and scored on the rest of the lab and on the other
source's validation split (forgetting), with the network method and with the
default method (image-adapted preset) taking the model's probabilities.

``guarded`` rows give what the user ends up with: the fine-tuned model when the guard
keeps it, the base otherwise. Run by hand (one torch thread per process)::

    python benchmarks/bench_finetune.py --data-root ../shared/data --target wbc-d1 --ks 1,3,5,10 \
        --seeds 0,1,2 --steps 200 --out benchmarks/results/finetune_shipped_wbc-d1.json
    python benchmarks/bench_finetune.py --summarise benchmarks/results/finetune_shipped_*.json

Results are written after every run, and a rerun skips the runs already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as C  # noqa: E402
from shifts import machine  # noqa: E402

from napari_vptv.finetuning import finetune, save_finetuned  # noqa: E402
from napari_vptv.nn.weights import load_model  # noqa: E402


def scores(model_path, model, meta, test, other, with_default):
    out = {"target": C.score_network(model, meta, test)}
    if other:
        out["other"] = C.score_network(model, meta, other)
    if with_default:
        out["target_default"] = C.score_default(model_path, test)
    return out


def one_run(base, pool, other, k, seed, args):
    train, test = C.draw(pool, k, seed)
    t0 = time.perf_counter()
    res = finetune(
        train, base=base, steps=args.steps or None, minutes=args.minutes, seed=seed, keep="always", threads=args.threads
    )
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = save_finetuned(res, Path(d) / "m.pt")
        model, meta = load_model(path)
        sc = scores(path, model, meta, test, other, args.default)
    ft = res.metadata["finetune"]
    return {
        "k": k,
        "seed": seed,
        "train": [s.name for s in train],
        "seconds": seconds,
        "steps_final": ft["final"]["steps"],
        "folds": ft["folds"],
        "kept_by_guard": res.verdict["better"],
        "verdict": {key: res.verdict.get(key) for key in ("better", "gain", "finetuned", "base", "methods")},
        "commit": C.git_commit(),
        **sc,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root")
    ap.add_argument("--target", default="wbc-d1", choices=C.TARGETS)
    ap.add_argument("--base", default="vptv-unet")
    ap.add_argument("--ks", default="1,3,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=200, help="steps per training (0: use --minutes)")
    ap.add_argument("--minutes", type=float, default=5.0, help="budget of a whole run when --steps is 0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-default", dest="default", action="store_false", help="skip scoring the default method")
    ap.add_argument("--out")
    ap.add_argument("--summarise", nargs="+", metavar="JSON")
    args = ap.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    doc.update(command=" ".join(sys.argv), commit=C.git_commit(), machine=machine(), args=vars(args))
    pool, other = C.lab(args.data_root, args.target)
    if "base" not in doc:
        model, meta = load_model(args.base)
        doc["base"] = {"draws": {}}
        for seed in [int(s) for s in args.seeds.split(",")]:
            for k in [int(x) for x in args.ks.split(",")]:
                _, test = C.draw(pool, k, seed)
                doc["base"]["draws"][f"{k}/{seed}"] = scores(args.base, model, meta, test, [], args.default)
        doc["base"]["other"] = C.score_network(model, meta, other)
        out.write_text(json.dumps(doc, indent=1))
    done = {(r["k"], r["seed"]) for r in doc["rows"]}
    for k in [int(x) for x in args.ks.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            if (k, seed) in done:
                continue
            doc["rows"].append(one_run(args.base, pool, other, k, seed, args))
            print(
                json.dumps({key: doc["rows"][-1][key] for key in ("k", "seed", "seconds", "kept_by_guard")}), flush=True
            )
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(out)


def _row(target, k, label, rs, others, kept=""):
    acc = np.array([r["target"]["pixel_accuracy"] for r in rs])
    cyto = np.mean([r["target"]["dice"][1] for r in rs])
    nuc = np.mean([r["target"]["dice"][2] for r in rs])
    dflt = [r["target_default"]["pixel_accuracy"] for r in rs if "target_default" in r]
    dtext = f"{np.mean(dflt):.4f}" if dflt else ""
    other = f"{np.mean([o['pixel_accuracy'] for o in others]):.4f}"
    return (
        f"| {target} | {k} | {label} | {acc.mean():.4f} ({acc.min():.4f}-{acc.max():.4f}) | {cyto:.3f} | "
        f"{nuc:.3f} | {dtext} | {other} | {kept} |"
    )


def kept(row) -> bool:
    """Whether the check keeps the run's model under the current rule: every method's
    cross-validated gain above MIN_GAIN beyond one standard error of its per-image gains
    (the run's own ``kept_by_guard`` for rows recorded without per-image gains)."""
    from napari_vptv.nn.finetune_guard import MIN_GAIN, assured_gain

    methods = (row.get("verdict") or {}).get("methods")
    if not methods or any("image_gains" not in m for m in methods.values()):
        return bool(row["kept_by_guard"])
    return all(assured_gain(m["image_gains"]) > MIN_GAIN for m in methods.values())


def summarise(paths) -> str:
    """Markdown table of result files: per lab and k, the mean (and range) over the seeds."""
    lines = [
        "| lab | k | model | pixel acc. (range over seeds) | cyto Dice | nucleus Dice | "
        "default method, pixel acc. | other source, pixel acc. | kept by the guard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        d = json.loads(Path(path).read_text())
        target = d["args"]["target"]
        for k in sorted({r["k"] for r in d["rows"]}):
            rows = [r for r in d["rows"] if r["k"] == k]
            base = [d["base"]["draws"][f"{k}/{r['seed']}"] for r in rows]
            base_other = d["base"]["other"]
            guarded = [r if kept(r) else b for r, b in zip(rows, base)]
            n_kept = sum(kept(r) for r in rows)
            lines.append(_row(target, k, "shipped model", base, [base_other] * len(rows)))
            lines.append(_row(target, k, "fine-tuned", rows, [r["other"] for r in rows]))
            lines.append(
                _row(
                    target,
                    k,
                    "**what the user gets**",
                    guarded,
                    [r["other"] if kept(r) else base_other for r in rows],
                    f"{n_kept} of {len(rows)}",
                )
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
