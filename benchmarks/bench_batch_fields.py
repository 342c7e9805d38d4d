"""Batch throughput on camera fields: ``vptv segment FOLDER --workers 1`` against ``--workers N``.

``--fields`` 640 x 480 fields are composed as in ``bench_fields.py`` (wbc held-out
images, whole red cells, 0-1 white cells, platelets; ``--seed``), written as JPEG
(quality 90) into a temporary folder, and segmented by the command line with the
default method, start-up included, in fresh processes: ``--workers 1`` (one file at a
time, one thread) and ``--workers N`` (N files at once), rounds interleaved so both
see the same load. Reported: wall seconds per round, their medians, fields per
second and the throughput ratio, and whether both runs wrote the same labels.

Run by hand on a quiet machine (needs ../shared/data)::

    python benchmarks/bench_batch_fields.py --fields 40 --rounds 3 --out benchmarks/results/batch_fields.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fields as bf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_fields(folder: Path, n: int, seed: int) -> None:
    import imageio.v3 as iio

    data = bf.held_out("wbc")
    diam = np.median([np.sqrt(4 * (m > 0).sum() / np.pi) for _, _, m in data])
    squares = bf.background_squares(data, max(16, int(round(0.4 * diam))))
    red_cells = bf.red_cell_cutouts(data, diam)
    rng = np.random.default_rng(seed)
    for i in range(n):
        field, _, _ = bf.compose(data, squares, (480, 640), rng, 1, int(rng.integers(3, 11)), red_cells)
        iio.imwrite(folder / f"field{i:03d}.jpg", field, quality=90)


def run(folder: Path, out: Path, workers: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "napari_vptv", "segment", str(folder), "--out", str(out)]
    cmd += ["--workers", str(workers), "--no-progress", "--quiet", "--overwrite"]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch_fields.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        write_fields(tmp / "in", args.fields, args.seed)
        seconds = {1: [], args.workers: []}
        for _ in range(args.rounds):
            for w in seconds:
                seconds[w].append(run(tmp / "in", tmp / f"out{w}", w))
        same = digest(tmp / "out1") == digest(tmp / f"out{args.workers}")
    med = {w: float(np.median(s)) for w, s in seconds.items()}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "command": "python benchmarks/bench_batch_fields.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "machine": bf._machine(),
        "fields": args.fields,
        "seconds": {str(w): s for w, s in seconds.items()},
        "median_seconds": {str(w): m for w, m in med.items()},
        "fields_per_second": {str(w): args.fields / m for w, m in med.items()},
        "throughput_ratio": med[1] / med[args.workers],
        "same_labels": same,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
