"""Is the VPTV iteration memory-bound or compute-bound? (the "<= 2x floor" goal)

Times one iteration of the default no-grad CPU loop (the fused numba sweep; 3 classes,
interval volumes, TV, as ``bench_solver.py``'s per-iteration figure) and the torch
copy-and-scale floor over the same bytes (u + q) at several square sizes, one thread,
CPU time, best of ``--repeat``. Small sizes keep every array in the L1 / L2 cache, where
a memory-bound loop would run many times faster per pixel than at 300 x 300 (whose
working set of about 6.5 MB lives in L3 / memory). If the sweep's time per pixel stays
the same while the copy's drops, the cost is arithmetic, not memory traffic.

Run by hand on a quiet machine::

    python benchmarks/bench_sweep_sizes.py --out benchmarks/results/bench_sweep_sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shifts as S  # noqa: E402  (benchmarks/shifts.py: machine(), commit())


def _best(fn, calls, repeat):
    fn()
    out = []
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(calls):
            fn()
        out.append((time.process_time() - t) / calls)
    return min(out)


def measure(size, n_iter, repeat):
    from napari_vptv.core.solver.reference import vptv_iterate

    g = torch.Generator().manual_seed(0)
    cost = torch.rand((1, 3, size, size), generator=g)
    bounds = (torch.tensor([0.2, 0.1, 0.05]), torch.tensor([0.8, 0.5, 0.4]))

    def solve(steps):
        with torch.no_grad():
            vptv_iterate(cost, volume_bounds=bounds, epsilon=1.0, tv_weight=2.0, max_num_iter=steps, tol=0)

    # per iteration: the difference of two iteration counts removes the per-call set-up
    n_short = n_iter // 4
    long, short = (_best(lambda k=k: solve(k), 1, repeat) for k in (n_iter, n_short))
    ms_iter = (long - short) / (n_iter - n_short) * 1e3
    src = torch.rand(3 * 3 * size * size)  # u + q (2 components) = 3 x (3, size, size)
    dst = torch.empty_like(src)
    calls = max(50, int(5e6 / src.numel()))
    ms_copy = _best(lambda: torch.mul(src, 0.5, out=dst), calls, repeat) * 1e3
    px = size * size
    return {
        "size": size,
        "ms_per_iteration": ms_iter,
        "ms_copy_floor": ms_copy,
        "ratio": ms_iter / ms_copy,
        "ns_per_pixel_iteration": ms_iter * 1e6 / px,
        "ns_per_pixel_copy": ms_copy * 1e6 / px,
        "working_set_mb": px * 3 * 4 * 6 / 1e6,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="48,96,150,300,600")
    ap.add_argument("--n-iter", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(int(s), args.n_iter, args.repeat) for s in args.sizes.split(",")]
    for r in rows:
        print(
            f"{r['size']:4d} px  working set {r['working_set_mb']:6.2f} MB  iteration {r['ns_per_pixel_iteration']:6.2f}"
            f" ns/px  copy floor {r['ns_per_pixel_copy']:5.2f} ns/px  ratio {r['ratio']:4.1f}",
            flush=True,
        )
    out = {
        "command": "python " + " ".join(sys.argv),
        "commit": S.commit(),
        "machine": S.machine(),
        "load_average_end": os.getloadavg()[0],
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
