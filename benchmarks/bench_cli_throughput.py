"""CLI throughput of ``vptv segment --method vptv`` vs scikit-image ``chan_vese``.

Both run as fresh processes on the same ``--n`` WBC images (300x300 RGB, the first
``--n`` of ``--root``/images in name order), start-up included: read every image,
segment, write a PNG label image per input.

* **vptv** -- ``vptv segment IMAGES --out DIR --method vptv --workers 1 --threads 1``
  (the default WBC preset of the CLI; the numba kernels of core.solver.numba_kernels);
* **vptv-torch** -- the same CLI call in a process where
  ``core.solver.numba_loop.NUMBA_AVAILABLE = False`` (the torch no-grad loop), for reference
  (inputs it fails on are listed; the CLI continues past them);
* **vptv-2workers** (``--two-workers``) -- the first call with ``--workers 2``: the
  files segmented in two threads on both cores (the kernels and torch release the
  GIL); not the reported comparison (the peer runs on one core), shown beside it;
* **vptv-fixed-preset** (``--fixed-preset``) -- ``--volume-mode interval`` added: the
  solver with the WBC preset's fixed, learned colour model and no network, to show
  what the U-net initialiser of the default costs;
* **chan_vese** -- one Python process: ``skimage.segmentation.chan_vese`` on the grey
  image with the parameters of ``benchmarks/bench_solver.py`` (two phases, darker =
  cell), PNG written with imageio.

Each child gets one thread (``OMP_NUM_THREADS=1`` etc.); rounds are interleaved
(vptv, vptv-torch, chan_vese, vptv, ...) so that the ratios come from the same load.
Reported per method: wall seconds and child CPU seconds (user + sys, from
``resource.getrusage(RUSAGE_CHILDREN)``) per round and their medians, and the
ratios to chan_vese. The goal: vptv / chan_vese <= 0.12.

``--compile`` also times the numba JIT: one ``vptv segment`` call on one image with an
empty numba cache (``NUMBA_CACHE_DIR`` set to a fresh folder, in-tree cache disabled)
and then with that cache filled.

Run by hand (nice: the machine is shared)::

    nice -n 5 python benchmarks/bench_cli_throughput.py --n 50 --rounds 2 --compile \
        --out benchmarks/results/bench_solver_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHAN_VESE = """
import sys
import imageio.v3 as iio, numpy as np
from skimage.color import rgb2gray
from skimage.segmentation import chan_vese
out = sys.argv[1]
for path in sys.argv[2:]:
    g = rgb2gray(iio.imread(path)[..., :3])
    seg = chan_vese(g, mu=0.25, lambda1=1, lambda2=1, tol=1e-3, max_num_iter=500, dt=0.5)
    cell = seg if g[seg].mean() < g[~seg].mean() else ~seg
    name = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    iio.imwrite(f"{out}/{name}.png", cell.astype(np.uint8))
"""

VPTV_TORCH = """
import sys
from napari_vptv.core.solver import numba_loop
numba_loop.NUMBA_AVAILABLE = False
from napari_vptv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, env):
    """``(wall s, child CPU s, failed inputs)`` of one process; raises if it fails
    other than by reporting failed inputs (``vptv segment`` continues past them)."""
    c0, t0 = _child_cpu(), time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    failed = [line.strip() for line in out.stderr.splitlines() if line.startswith("FAILED")]
    if out.returncode != 0 and not failed:
        raise RuntimeError(f"{cmd[:3]} failed: {out.stderr[-1500:]}")
    return wall, cpu, failed


def commands(images, out_dir, workers=1):
    vptv = str(Path(sys.executable).parent / "vptv")
    seg = [
        "segment",
        *images,
        "--out",
        out_dir,
        "--method",
        "vptv",
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--overwrite",
    ]
    two = [a if a != "1" or seg[i - 1] != "--workers" else "2" for i, a in enumerate(seg)]
    return {
        "vptv": [vptv, *seg],
        # the solver alone: the WBC preset's fixed, learned colour model (an explicit
        # volume mode skips the U-net-seeded adapted preset)
        "vptv-fixed-preset": [vptv, *seg, "--volume-mode", "interval"],
        "vptv-2workers": [vptv, *two],
        "vptv-torch": [sys.executable, "-c", VPTV_TORCH, *seg],
        "chan_vese": [sys.executable, "-c", CHAN_VESE, out_dir, *images],
    }


def compile_cost(image, env):
    """Wall / CPU of one ``vptv segment`` call with an empty numba cache, then warm."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        cold_env = dict(env, NUMBA_CACHE_DIR=cache, NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator")
        cmd = commands([image], out)["vptv"]
        cold = timed(cmd, cold_env)[:2]
        warm = timed(cmd, cold_env)[:2]
        n_files = len(list(Path(cache).rglob("*.nbc")))
    return dict(
        cold_wall_s=cold[0],
        cold_cpu_s=cold[1],
        warm_wall_s=warm[0],
        warm_cpu_s=warm[1],
        compile_cpu_s=cold[1] - warm[1],
        cached_files=n_files,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/work/shared/data/wbc")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time the numba JIT (cold vs warm cache)")
    ap.add_argument("--two-workers", action="store_true", help="also time `vptv segment --workers 2`")
    ap.add_argument(
        "--fixed-preset",
        action="store_true",
        help="also time `vptv segment --volume-mode interval`: the solver with the fixed colour "
        "model, no network (an earlier CLI default)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    images = sorted(str(p) for p in (Path(args.root) / "images").glob("*.png"))[: args.n]
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
    env = dict(os.environ, **threads)
    load0 = os.getloadavg()[0]
    print(f"# {len(images)} images from {args.root}; load average {load0:.2f}; nice {os.nice(0)}", flush=True)
    names = (
        ("vptv", "vptv-torch")
        + (("vptv-2workers",) if args.two_workers else ())
        + (("vptv-fixed-preset",) if args.fixed_preset else ())
        + ("chan_vese",)
    )
    times = {k: {"wall_s": [], "cpu_s": []} for k in names}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            for name in times:
                out_dir = str(Path(d) / f"{name}{r}")
                Path(out_dir).mkdir()
                wall, cpu, failed = timed(commands(images, out_dir)[name], env)
                assert len(list(Path(out_dir).glob("*.png"))) + len(failed) == len(images), name
                times[name]["wall_s"].append(wall)
                times[name]["cpu_s"].append(cpu)
                times[name].setdefault("failed_inputs", []).append(failed)
                print(f"  round {r} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, failed: {failed}", flush=True)
    med = {k: {m: float(np.median(v[m])) for m in ("wall_s", "cpu_s")} for k, v in times.items()}
    ratios = {f"{k}/chan_vese_{m}": med[k][m] / med["chan_vese"][m] for k in names[:-1] for m in ("wall_s", "cpu_s")}
    print(json.dumps(dict(median=med, ratios=ratios), indent=1))
    comp = compile_cost(images[0], env) if args.compile else None
    if comp:
        print(f"# numba JIT: {comp}")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        Path(args.out).write_text(
            json.dumps(
                dict(
                    command="python " + " ".join(sys.argv),
                    commit=commit,
                    images=f"{args.root}/images, first {len(images)}",
                    load_average_start=load0,
                    load_average_end=os.getloadavg()[0],
                    nice=os.nice(0),
                    times=times,
                    median=med,
                    ratios=ratios,
                    numba_compile=comp,
                ),
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
