"""ms per iteration of each loop of Algorithm 1 (``backend=`` of the solver), side by side.

Problems: the WBC preset's colour costs (3 classes), volume interval, TV weight and
epsilon on a WBC image at 300x300 (the image) and 640x480 (the image reflect-padded),
float32 on the CPU; plus the same 300x300 problem in float64 (where the numba kernels
do not apply) and a 3-D one (the 300x300 costs stacked 8 deep, 3-D TV). Each loop
runs ``--iters`` iterations to no tolerance (``tol=0``); the figure is the median of
``--repeat`` runs of the process CPU time per iteration (steadier than the wall clock
on a shared machine; with one thread the two agree when the machine is idle; both are
printed), after one warm-up run (which compiles or loads the numba kernels). The reference loop runs under ``torch.no_grad`` (its speed
without the autograd graph; with one it is slower still).

Run (the machine is shared: nice, one torch thread)::

    nice -n 5 python benchmarks/bench_backends.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def wbc_problem(image_path, shape):
    """``(cost (1, 3, H, W) float32, volume_bounds, epsilon, tv_weight)`` of the WBC preset."""
    import numpy as np
    import torch
    from PIL import Image

    from napari_vptv.core.solver.segment import prepare_image
    from napari_vptv.core.wbc.preset import wbc_preset

    image = np.asarray(Image.open(image_path).convert("RGB"))
    h, w = shape
    ph, pw = max(h - image.shape[0], 0), max(w - image.shape[1], 0)
    image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")[:h, :w]
    preset = wbc_preset("interval")
    x = torch.from_numpy(prepare_image(image, -1))[None]
    cost = preset["class_model"].cost(x).to(torch.float32).contiguous()
    lo, hi = (torch.tensor(b, dtype=torch.float32) for b in preset["volume_bounds"])
    return cost, (lo, hi), float(preset["epsilon"]), float(preset["tv_weight"])


def ms_per_iteration(backend, cost, bounds, epsilon, tv_weight, iters, repeat):
    import torch

    from napari_vptv.core.solver.reference import vptv_iterate

    bounds = tuple(b.to(cost.dtype) for b in bounds)

    def run():
        with torch.no_grad():
            st = vptv_iterate(
                cost,
                volume_bounds=bounds,
                epsilon=epsilon,
                tv_weight=tv_weight,
                max_num_iter=iters,
                tol=0,
                backend=backend,
            )
        assert st.backend == backend and st.n_iter == iters

    run()
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        wall.append((time.perf_counter() - t0) * 1000 / iters)
        cpu.append((time.process_time() - c0) * 1000 / iters)
    return statistics.median(cpu), statistics.median(wall)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--image",
        default="/work/shared/data/wbc/images/001.png",
        help="RGB image (default: WBC image 001; the bundled sample when absent)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    path = args.image
    if not os.path.exists(path):
        from napari_vptv.core.io.samples import sample_ids, sample_path

        path = str(sample_path(sample_ids()[0]))
    print(
        f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{args.threads} torch thread(s); image {path}; {args.iters} iterations, median of {args.repeat}"
    )
    rows = []
    for label, shape in (("300x300 float32", (300, 300)), ("640x480 float32", (480, 640))):
        cost, bounds, eps, tv = wbc_problem(path, shape)
        rows.append(
            (
                label,
                {
                    b: ms_per_iteration(b, cost, bounds, eps, tv, args.iters, args.repeat)
                    for b in ("reference", "torch", "numba")
                },
            )
        )
    cost, bounds, eps, tv = wbc_problem(path, (300, 300))
    rows.append(
        (
            "300x300 float64",
            {
                b: ms_per_iteration(b, cost.double(), bounds, eps, tv, args.iters, args.repeat)
                for b in ("reference", "torch")
            },
        )
    )
    vol = cost[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()
    rows.append(
        (
            "8x300x300 float32 (3-D)",
            {
                b: ms_per_iteration(b, vol, bounds, eps, tv, args.iters, args.repeat)
                for b in ("reference", "torch", "numba")
            },
        )
    )
    for i, clock in enumerate(("CPU", "wall")):
        print(f"\nms per iteration ({clock} time)")
        print(f"{'problem':<26}{'reference':>11}{'torch':>9}{'numba':>9}   fastest")
        for label, ms in rows:
            t = {b: v[i] for b, v in ms.items()}
            cells = "".join(
                f"{t[b]:>{w}.2f}" if b in t else f"{'n/a':>{w}}"
                for b, w in (("reference", 11), ("torch", 9), ("numba", 9))
            )
            print(f"{label:<26}{cells}   {min(t, key=t.get)}")


if __name__ == "__main__":
    main()
