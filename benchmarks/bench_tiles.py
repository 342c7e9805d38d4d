"""Large scans: time and peak memory of the default method on a composed scan of one size.

The scan is tiled from 640 x 480 fields of ``bench_fields.py`` (whole red cells pasted
on plasma, white cells and platelets of the wbc held-out images, ``--background
red-cells``), cut to ``--side`` x ``--side`` px, and segmented with
``segment_image`` (one torch thread; above 1536 x 1536 it runs in tiles). Peak
memory is the process's maximum resident set (``ru_maxrss``), so run one size per
process::

    for s in 1024 2048 4096; do nice python benchmarks/bench_tiles.py --side $s; done
    python benchmarks/bench_tiles.py --side 4096 --threads 2   # two tiles at once

Needs ../shared/data. Appends one JSON line per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fields as bf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def compose_scan(side: int, seed: int = 0) -> np.ndarray:
    """A ``side`` x ``side`` scan tiled from composed red-cell fields of wbc."""
    data = bf.held_out("wbc")
    diam = np.median([np.sqrt(4 * (m > 0).sum() / np.pi) for _, _, m in data])
    squares = bf.background_squares(data, max(16, int(round(0.4 * diam))))
    red_cells = bf.red_cell_cutouts(data, diam)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(-(-side // 480)):
        rows.append(
            np.concatenate(
                [
                    bf.compose(data, squares, (480, 640), rng, 2, int(rng.integers(3, 11)), red_cells)[0]
                    for _ in range(-(-side // 640))
                ],
                axis=1,
            )
        )
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:side, :side])


def main(argv=None):
    import torch

    from napari_vptv.api import segment_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tiles.jsonl"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads; the tiles run this many at once (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    scan = compose_scan(args.side)
    ticks = []
    t, cpu = time.perf_counter(), time.process_time()
    result = segment_image(scan, callback=lambda done, total: ticks.append((done, total)))
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    row = {
        "side": args.side,
        "megapixels": args.side**2 / 1e6,
        "threads": args.threads,
        "seconds": round(seconds, 1),
        "seconds_per_megapixel": round(seconds / (args.side**2 / 1e6), 2),
        # CPU time of the process (with one thread: what the scan costs on a quiet core)
        "cpu_seconds": round(cpu, 1),
        "cpu_seconds_per_megapixel": round(cpu / (args.side**2 / 1e6), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tiles": result.info.get("tiles"),
        "diameter": round(float(result.diameter), 1),
        "red_cell_diameter": round(float(result.info.get("red_cell_diameter", 0.0)), 1),
        "cells": int(ndi.label(result.labels > 0)[1]),
        "progress_calls": len(ticks),
        "commit": commit,
        "machine": bf._machine(),
    }
    print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
