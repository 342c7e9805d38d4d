"""Tuning of the correction defaults on the tuning split only.

Tuning split: WBC images 001, 018, 036, 052, 069, 084; wbc-d1 images number 12, 36,
60, ... of the sorted files (every 24th from the 13th: 10 images); synthetic seeds 0-3
(512 x 512, 60 nuclei). Kinds identity, dilate3, erode3, dilate4, shift3. Each
argument is one variant, a JSON dict of ``correct_mask`` keyword arguments; keys
starting with ``_`` set constants of :mod:`napari_vptv.core.correct.evidence`
(tuning only), e.g.::

    python benchmarks/tune_correct_nuclei.py {} '{"mask_weight": 0.25}' '{"_SECTORS": 0}' \
        --out benchmarks/results/correct_tune.jsonl

Prints foreground Dice per (dataset, kind) and the mean over all cells (the
selection rule); ``--out`` appends one JSON line per variant with the command and
commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_correct_nuclei import corrupt, load, scores  # noqa: E402
from correct_peers import seeded_watershed  # noqa: E402

KINDS = ("identity", "dilate3", "erode3", "dilate4", "shift3")


def evaluate(variant, datasets, kinds, data_root):
    """Mean foreground Dice per ``(dataset, kind)`` of one variant (``{"peer": "watershed"}``: the peer)."""
    from napari_vptv.core.correct.mask import correct_mask

    params = dict(variant)
    peer = params.pop("peer", None)
    saved = {}
    private = [k for k in params if k.startswith("_")]
    if private:
        from napari_vptv.core.correct import evidence as correct_evidence
    for k in private:
        saved[k] = getattr(correct_evidence, k)
        setattr(correct_evidence, k, params.pop(k))
    res, seconds = {}, 0.0
    try:
        for ds in datasets:
            for _key, img, ch, grey, truth in load(ds, "tune", data_root):
                for j, kind in enumerate(kinds):
                    given = corrupt(truth, kind, j)
                    t0 = time.perf_counter()
                    out = seeded_watershed(grey, given) if peer else correct_mask(img, given, channel_axis=ch, **params)
                    seconds += time.perf_counter() - t0
                    res.setdefault(f"{ds}:{kind}", []).append(scores(out, truth, given)["dice_fg"])
    finally:
        for k, v in saved.items():
            setattr(correct_evidence, k, v)
    return {k: float(np.mean(v)) for k, v in res.items()}, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help='JSON dicts of correct_mask keywords (or {"peer": "watershed"})')
    ap.add_argument("--datasets", default="wbc,wbc-d1,synth")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default=None, help="append one JSON line per variant")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    for v in args.variants:
        cells, seconds = evaluate(json.loads(v), args.datasets.split(","), args.kinds.split(","), args.data)
        mean = float(np.mean(list(cells.values())))
        print(v, " ".join(f"{k}={d:.4f}" for k, d in cells.items()), f"mean={mean:.4f} {seconds:.0f}s", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(
                    json.dumps(
                        dict(
                            variant=json.loads(v),
                            cells=cells,
                            mean=mean,
                            seconds=seconds,
                            command="python " + " ".join(sys.argv),
                            commit=commit,
                        )
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
