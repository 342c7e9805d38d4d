"""Benchmark: correcting nuclei masks on real annotated fluorescence nuclei (stardist's examples).

Data and split: see ``stardist_data.py`` (2-D: left half of the nuclei = tuning,
right half = held out; the 3-D stack = tuning). Corruptions of the annotation:
``identity`` (the accurate mask), ``dilate3`` (labels expanded by 3 px, never
merging), ``erode3`` (each object eroded by a disc of radius 3); in 3-D the stack's
z is sampled about twice as coarsely as y / x, so the 3-D corruptions act in every
plane (``dilate3xy`` / ``erode3xy``, as a mask drawn slice by slice). Every row
corrupts the whole image and scores the split's nuclei: foreground Dice over their
ids, mean object Dice, ids lost (of all ids), and where the outlines lie: per object
(area after - true area) / true boundary pixels, mean (``bias_px``, > 0: too far out)
and mean absolute (``abs_err_px``).

Methods: ``vptv`` (:func:`correct_mask`, defaults unless ``--params``),
``watershed`` (the seeded-watershed peer; 3-D: on the volume), ``watershed2d`` (3-D
only: the peer on every plane). Each method runs ``--repeat`` times per row; the
time is the median of the process's CPU time (``time.process_time``, one torch thread:
other jobs on the machine do not inflate it; the wall-clock median is kept as
``wall_seconds``, its ratio as ``wall_ratio``), and ``x peer`` divides it by the
watershed's median measured in the same run (after one untimed warm-up correction).
``--params`` keys starting with ``_`` set constants of ``core/correct/evidence.py`` /
``objects.py`` (tuning on the tuning rows only). Run by hand::

    python benchmarks/bench_correct_stardist.py --out benchmarks/results/correct_stardist.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_correct_3d import corrupt3d  # noqa: E402
from bench_correct_nuclei import corrupt, scores  # noqa: E402
from correct_peers import per_slice, seeded_watershed  # noqa: E402
from stardist_data import load_stardist, split_ids, subset  # noqa: E402

ROWS = {"2d-heldout": (2, "heldout"), "2d-tune": (2, "tune"), "3d": (3, "tune")}


def _status_counts(report):
    """``{"moved": n, "kept": n, ...}``: the word before any number / colon of each status."""
    return dict(Counter(r.status.split(":")[0].split(" ")[0] for r in report))


def _set_constants(params):
    """Apply (and return the old values of) ``_NAME`` keys: module constants of the
    correction's evidence / objects modules (tuning only)."""
    import importlib

    saved = []
    for key in [k for k in params if k.startswith("_")]:
        for name in ("napari_vptv.core.correct.evidence", "napari_vptv.core.correct.objects"):
            mod = importlib.import_module(name)
            if hasattr(mod, key):
                saved.append((mod, key, getattr(mod, key)))
                setattr(mod, key, params.pop(key))
                break
        else:
            raise KeyError(f"no correction constant {key}")
    return saved


def placement(out, truth, ids):
    """``(bias, abs_err)`` px: per object, (area after - true area) / true boundary pixels
    (how far out, > 0, or in the outline lies on average), mean and mean absolute."""
    from scipy import ndimage as ndi

    errs = []
    for i in ids:
        t = truth == i
        boundary = max(int((t & ~ndi.binary_erosion(t, border_value=1)).sum()), 1)
        errs.append((int((out == i).sum()) - int(t.sum())) / boundary)
    return float(np.mean(errs)), float(np.mean(np.abs(errs)))


def _warm_up():
    """One small correction first: imports and compiling are not timed."""
    from napari_vptv.core.correct.mask import correct_mask

    yy, xx = np.indices((48, 48))
    mask = ((yy - 24) ** 2 + (xx - 24) ** 2 <= 100).astype(np.int32)
    correct_mask((100 + 100 * mask).astype(np.uint8), mask)


def run_row(name, kind, methods, params, repeat, wheel):
    """Rows of one (data, corruption): one per method."""
    from napari_vptv.core.correct.mask import correct_mask

    ndim, split = ROWS[name]
    img, truth = load_stardist(ndim, wheel)
    grey = (img / 255.0).astype(np.float32)
    given = corrupt3d(truth, kind + "xy" if kind != "identity" else kind) if ndim == 3 else corrupt(truth, kind, 0)
    ids = split_ids(truth, split)
    before = scores(subset(given, ids), subset(truth, ids), subset(given, ids))
    rows = []
    for m in methods:
        if m == "watershed2d" and ndim == 2:
            continue
        times, walls, extra = [], [], {}
        for _ in range(repeat):
            report = []
            t0, w0 = time.process_time(), time.perf_counter()
            if m == "vptv":
                out = correct_mask(img, given, report=report, **params)
            elif m == "watershed":
                out = seeded_watershed(grey, given)
            else:
                out = per_slice(seeded_watershed)(grey, given)
            times.append(time.process_time() - t0)
            walls.append(time.perf_counter() - w0)
        if m == "vptv":
            mine = [r for r in report if r.label in set(ids.tolist())]
            extra = dict(status=_status_counts(mine))
        sc = scores(subset(out, ids), subset(truth, ids), subset(given, ids))
        sc["ids_lost"] = len(set(np.unique(given)) - set(np.unique(out)))
        sc["bias_px"], sc["abs_err_px"] = placement(out, truth, ids)
        rows.append(
            dict(
                data=name,
                split=split,
                kind=kind,
                method=m,
                n_objects=int(ids.size),
                seconds=float(np.median(times)),
                times=times,
                wall_seconds=float(np.median(walls)),
                wall_times=walls,
                **{f"{k}_before": v for k, v in before.items()},
                **sc,
                **extra,
            )
        )
        r = rows[-1]
        print(
            f"{name} {kind} {m}: {r['dice_fg_before']:.4f} -> {r['dice_fg']:.4f} obj {r['dice_obj']:.4f} "
            f"lost {r['ids_lost']} bias {r['bias_px']:+.2f} |err| {r['abs_err_px']:.2f} px "
            f"{r['seconds']:.2f}s {extra.get('status', '')}",
            flush=True,
        )
    ws = [r for r in rows if r["method"] == "watershed"]
    for r in rows:
        r["time_ratio"] = r["seconds"] / ws[0]["seconds"] if ws else float("nan")
        r["wall_ratio"] = r["wall_seconds"] / ws[0]["wall_seconds"] if ws else float("nan")
    return rows


def table(rows):
    print(
        "\n| data (split) | mask given | n | before | vptv | watershed | watershed per plane | ids lost (vptv) "
        "| vptv s | x peer time | vptv status |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = list(dict.fromkeys((r["data"], r["kind"]) for r in rows))
    for data, kind in keys:
        by = {r["method"]: r for r in rows if r["data"] == data and r["kind"] == kind}
        v = by.get("vptv")
        first = next(iter(by.values()))

        def dice(m, by=by):
            return f"{by[m]['dice_fg']:.4f}" if m in by else "-"

        print(
            f"| {data} ({first['split']}) | {kind} | {first['n_objects']} | {first['dice_fg_before']:.4f} | "
            f"{dice('vptv')} | {dice('watershed')} | {dice('watershed2d')} | "
            f"{v['ids_lost'] if v else '-'} | {v['seconds'] if v else float('nan'):.2f} | "
            f"{v['time_ratio'] if v else float('nan'):.2f} | {v.get('status', '') if v else ''} |"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="2d-heldout,3d", help=f"comma list of {sorted(ROWS)}")
    ap.add_argument("--kinds", default="identity,dilate3,erode3")
    ap.add_argument("--methods", default="vptv,watershed,watershed2d")
    ap.add_argument("--params", default=None, help="JSON of correct_mask keyword arguments")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wheel", default=None, help="path of the stardist wheel (default: ./ or /tmp)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    params = json.loads(args.params) if args.params else {}
    _set_constants(params)
    _warm_up()
    rows = []
    for name in args.data.split(","):
        for kind in args.kinds.split(","):
            rows += run_row(name, kind, args.methods.split(","), params, args.repeat, args.wheel)
    table(rows)
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        commit = commit or os.environ.get("VPTV_CODE_COMMIT", "")  # a `git archive` has no .git
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                dict(
                    command="python " + " ".join(sys.argv),
                    commit=commit,
                    src_modified=bool(dirty),
                    machine=machine,
                    rows=rows,
                ),
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
