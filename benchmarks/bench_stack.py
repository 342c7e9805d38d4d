"""Headless stack segmentation: throughput and peak memory vs a plain in-memory loop.

A synthetic stack of N frames of 512x512 (uint8 grey: a few drifting discs on a
shaded, noisy background) is generated chunk by chunk into a temporary multi-page
TIFF (never committed, never held whole in memory), then segmented

* ``headless``: the production path, :func:`napari_vptv.core.batch.run.segment_file`
  (what ``vptv segment stack.tif --out DIR`` runs): the TIFF read slice by slice
  (``TiffFrames``), one dask ``map_blocks`` task per slice, local threaded scheduler
  (one torch thread per dask thread), labels stored chunk by chunk into a
  memory-mapped TIFF, per-slice volumes read back;
* ``loop``: the single-image solver ``vptv_segment`` called in a plain Python loop
  over the frames, already in memory (``tifffile.imread`` of the whole stack; torch
  with ``--loop-threads`` intra-op threads, default 1), labels into a preallocated
  array.

Each run is a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; its CPU
time (user + system, imports included) is reported too, a measure that is less
sensitive than wall time to other jobs on a shared machine. The
solver setting is deliberately cheap so 1000 frames finish on 2 CPU cores: 2 classes,
k-means start, ``max_num_iter`` iterations (default 10), no volume constraint,
eps = 0.01, lambda = 0.02. Both paths run the same solver with the same setting.

Usage::

    nice -n 10 python benchmarks/bench_stack.py                    # 100 and 1000 frames
    python benchmarks/bench_stack.py --frames 100 300 --json out.json

Goals: peak RSS <= 2 GB at 1000 frames, headless throughput within 1.5x of
the plain loop, time linear and memory flat in the number of frames.
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

SIZE = 512


def make_stack(path: Path, n_frames: int, size: int = SIZE, seed: int = 0) -> None:
    """Write the synthetic stack page by page (memory: one frame)."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    shading = 0.15 * xx + 0.1 * yy
    centres = rng.random((5, 2)).astype(np.float32)
    radii = (0.05 + 0.08 * rng.random(5)).astype(np.float32)
    drift = (rng.random((5, 2)).astype(np.float32) - 0.5) * 0.004
    with tifffile.TiffWriter(str(path), bigtiff=n_frames * size * size > 2**31) as tif:
        for t in range(n_frames):
            c = (centres + t * drift) % 1.0
            frame = 0.2 + shading
            for (cy, cx), r in zip(c, radii):
                frame = frame + 0.45 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
            frame = frame + rng.normal(0, 0.06, frame.shape).astype(np.float32)
            tif.write(
                np.clip(frame * 255, 0, 255).astype(np.uint8),
                contiguous=True,
                photometric="minisblack",
                metadata={"axes": "QYX"} if t == 0 else None,
            )


def _segment_kwargs(iters: int) -> dict:
    return dict(volume_mode="none", max_num_iter=iters, epsilon=0.01, tv_weight=0.02, seed=0)


def child_headless(path: str, out: str, iters: int, workers: int) -> dict:
    import torch  # noqa: F401 - imported before the clock starts, as in the loop

    import napari_vptv.core.solver.segment  # noqa: F401
    from napari_vptv.api import make_segment_fn
    from napari_vptv.core.batch.run import segment_file

    fn = make_segment_fn("vptv", preset="none", n_classes=2, **_segment_kwargs(iters))
    t0 = time.perf_counter()
    res = segment_file(path, out, fn, overwrite=True, num_workers=workers)
    dt = time.perf_counter() - t0
    if res.status != "done":
        raise SystemExit(f"headless run failed: {res.message}")
    return {"seconds": dt, "n": len(res.slice_volumes), "output": str(res.output)}


def child_loop(path: str, out: str, iters: int, workers: int, threads: int = 1) -> dict:
    import tifffile
    import torch

    torch.set_num_threads(threads)

    from napari_vptv.core.solver.segment import vptv_segment

    frames = tifffile.imread(path)  # the whole stack in memory
    labels = np.empty(frames.shape, np.uint8)
    kw = _segment_kwargs(iters)
    kw.pop("volume_mode")
    t0 = time.perf_counter()
    for i in range(len(frames)):
        labels[i] = vptv_segment(frames[i], 2, volume_mode="none", **kw).labels
    dt = time.perf_counter() - t0
    np.save(out + "/loop_labels.npy", labels)
    return {"seconds": dt, "n": len(frames)}


def run_child(kind: str, path: Path, out: Path, iters: int, workers: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--path",
        str(path),
        "--out-dir",
        str(out),
        "--iters",
        str(iters),
        "--workers",
        str(workers),
        "--loop-threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--iters", type=int, default=10, help="solver iterations per frame (default 10)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="dask threads (default: CPUs)")
    ap.add_argument(
        "--loop-threads",
        type=int,
        default=1,
        help="torch threads of the plain loop (default 1: on a busy 2-core machine, 2 torch "
        "threads are several times slower than 1)",
    )
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--tmp", default=None, help="folder for the temporary stack (default: system temp)")
    ap.add_argument("--child", choices=["headless", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        if args.child == "headless":
            res = child_headless(args.path, args.out_dir, args.iters, args.workers)
        else:
            res = child_loop(args.path, args.out_dir, args.iters, args.workers, args.loop_threads)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        res["peak_rss_mb"] = ru.ru_maxrss / 1024.0
        res["cpu_s"] = ru.ru_utime + ru.ru_stime  # whole process, imports included
        print(json.dumps(res))
        return 0

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="vptv-bench-stack-") as tmp:
        tmp = Path(tmp)
        for n in args.frames:
            path = tmp / f"stack_{n}.tif"
            t0 = time.perf_counter()
            make_stack(path, n)
            gen = time.perf_counter() - t0
            print(f"[{n} frames] generated {path.stat().st_size / 2**20:.0f} MB in {gen:.1f} s", flush=True)
            res = {}
            for kind in ("loop", "headless"):
                out = tmp / f"out_{kind}_{n}"
                out.mkdir()
                r = run_child(kind, path, out, args.iters, args.workers, args.loop_threads)
                res[kind] = r
                print(
                    f"[{n} frames] {kind:8s}: {r['seconds']:8.1f} s  {n / r['seconds']:6.2f} frames/s  "
                    f"peak RSS {r['peak_rss_mb']:7.0f} MB  CPU {r['cpu_s']:7.1f} s",
                    flush=True,
                )
            # both paths give the same labels?
            import tifffile

            loop_lab = np.load(tmp / f"out_loop_{n}" / "loop_labels.npy", mmap_mode="r")
            head_lab = tifffile.memmap(res["headless"]["output"], mode="r")
            agree = float(np.mean([np.mean(loop_lab[i] == head_lab[i]) for i in range(n)]))
            row = {
                "frames": n,
                "size": SIZE,
                "iters": args.iters,
                "workers": args.workers,
                "loop_torch_threads": args.loop_threads,
                "loop_s": res["loop"]["seconds"],
                "headless_s": res["headless"]["seconds"],
                "loop_fps": n / res["loop"]["seconds"],
                "headless_fps": n / res["headless"]["seconds"],
                "time_ratio_headless_over_loop": res["headless"]["seconds"] / res["loop"]["seconds"],
                "loop_cpu_s": res["loop"]["cpu_s"],
                "headless_cpu_s": res["headless"]["cpu_s"],
                "loop_peak_rss_mb": res["loop"]["peak_rss_mb"],
                "headless_peak_rss_mb": res["headless"]["peak_rss_mb"],
                "label_agreement": agree,
            }
            rows.append(row)
            print(
                f"[{n} frames] headless / loop time ratio {row['time_ratio_headless_over_loop']:.2f}, "
                f"labels agree on {agree:.4%} of pixels",
                flush=True,
            )
            del head_lab, loop_lab
            for f in path.parent.glob(f"out_*_{n}/*"):
                f.unlink()
            path.unlink()
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(
            f"scaling {a['frames']} -> {b['frames']} frames: time x{b['headless_s'] / a['headless_s']:.2f} "
            f"(frames x{b['frames'] / a['frames']:.0f}), peak RSS {a['headless_peak_rss_mb']:.0f} -> "
            f"{b['headless_peak_rss_mb']:.0f} MB (loop: {a['loop_peak_rss_mb']:.0f} -> "
            f"{b['loop_peak_rss_mb']:.0f} MB)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
