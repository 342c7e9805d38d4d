"""Speed and accuracy of the VPTV solver vs scikit-image peers, in one run.

For each 300x300 RGB WBC image (every ``--step``-th of /work/shared/data/wbc, or the
bundled samples when that folder is absent):

* **VPTV** -- the WBC preset (3 classes, colour histogram cost, interval volume
  prior), solved to tolerance, plus the volume-respecting rounding; time of the
  whole ``vptv_segment`` call and of the iteration alone;
* **chan_vese** -- ``skimage.segmentation.chan_vese`` on the grey image (two
  phases: the darker phase is taken as the white cell);
* **random_walker** -- ``skimage.segmentation.random_walker`` on the RGB image,
  seeded from k-means (3 clusters ordered by brightness: brightest = background,
  middle = cytoplasm, darkest = nucleus; pixels clearly closer to one centre are
  seeds).

Accuracy: 3-class pixel accuracy (chan_vese cannot give 3 classes) and the
2-class accuracy "white cell vs background" (cytoplasm + nucleus vs background),
which all three give. Note that the WBC preset's colour model was fitted on these
same 90 images (the cross-validated accuracy is in docs/results.md); the peers
learn nothing.

Iteration cost (one torch thread recommended): ms per iteration of the fast
no-grad loop on a 300x300 RGB 3-class problem next to a plain numpy float32
Chambolle dual step and a torch copy-and-scale pass over the same bytes, measured
in the same run; per-image solve time median / max, iterations and softmax passes
(iterations + 1 + the rounding's torch dual-solver passes; the rounding shortcut's one
numba sweep over all eps, core.solver.numba_loop.rounding_steps_at_zero, is not counted);
``--compile`` also times a ``torch.compile`` (inductor) version of one step.

Every time is taken twice: wall clock and the process CPU time
(``time.process_time``, one torch thread): on a machine shared with other jobs the
CPU time is the steadier figure. Per image: time to tolerance of the whole call
(best of ``--repeat``), of the iteration alone, iterations; over the images p50 /
p95 / max. ``--stack N`` adds a 512x512 RGB stack throughput (frames per second) of
N frames (a WBC image reflect-padded to 512x512, shifted by 2 pixels per frame):
one core cold start, one core with warm starts (``segment_stack(warm_start=True)``),
and both cores (two halves of the stack in two threads, cold and warm).

Solver paths (``--paths``): ``numba`` -- the fused kernels of core.solver.numba_kernels (the
default no-grad CPU path), ``torch`` -- the torch no-grad loop of core.solver.fast
(``numba_loop.NUMBA_AVAILABLE = False``), timed on the same images in the same run;
the peers and the floor are measured once. The numba kernels are compiled (or loaded
from the cache) in the warm-up call, outside the timings; the JIT cost is measured
by ``benchmarks/bench_cli_throughput.py --compile``.

Run by hand (nice: the machine is shared)::

    nice -n 5 python benchmarks/bench_solver.py --step 9 --threads 1 --repeat 3 --stack 8 \
        --out benchmarks/results/bench_solver.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def load_images(root, step):
    root = Path(root)
    if (root / "images").is_dir():
        from napari_vptv.core.io.files import load_wbc_dataset

        data = load_wbc_dataset(root)
        return [(i, im, m) for i, im, m in data[::step]], f"{root} (every {step}th image)"
    from napari_vptv.core.io.samples import load_sample, sample_ids

    return [(s, *load_sample(s)) for s in sample_ids()], "bundled samples (no data folder)"


def machine(threads):
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} with {threads} thread(s); "
        f"load average at start {load[0]:.2f}"
    )


PATHS = ("numba", "torch")


#: numba's availability as found at the first :func:`use_path` call
_NUMBA_INSTALLED = []


def use_path(name):
    """Select the no-grad solver loop for what follows: ``numba`` or ``torch``."""
    from napari_vptv.core.solver import numba_loop

    if not _NUMBA_INSTALLED:
        _NUMBA_INSTALLED.append(numba_loop.NUMBA_AVAILABLE and numba_loop.kernels() is not None)
    if name == "numba" and not _NUMBA_INSTALLED[0]:
        raise SystemExit("numba is not importable: run with --paths torch")
    numba_loop.NUMBA_AVAILABLE = name == "numba"


_ROUNDING_PASSES = []


def _count_rounding_passes():
    """Wrap the rounding's volume-dual solver to count its softmax passes (1 + sweeps
    per call)."""
    from napari_vptv.core.solver import volume_step as vptv_volume

    orig = vptv_volume.solve_volume_dual

    def counted(*a, **k):
        out = orig(*a, **k)
        _ROUNDING_PASSES.append(1 + out[2])
        return out

    vptv_volume.solve_volume_dual = counted


def vptv(image, preset):
    """``(labels, wall s, cpu s, iterations)`` of one whole ``vptv_segment`` call."""
    from napari_vptv.core.solver.segment import vptv_segment

    _ROUNDING_PASSES.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    r = vptv_segment(image, **preset)
    return r.labels, time.perf_counter() - t0, time.process_time() - c0, r.n_iter


def vptv_iteration_only(image, preset):
    """Time of Algorithm 1 alone (costs given, no rounding)."""
    import torch

    from napari_vptv.core.solver.reference import vptv_iterate
    from napari_vptv.core.solver.segment import prepare_image

    x = torch.from_numpy(prepare_image(image, -1))[None]
    cost = preset["class_model"].cost(x)
    lo, hi = preset["volume_bounds"]
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        st = vptv_iterate(
            cost,
            volume_bounds=(torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)),
            epsilon=preset["epsilon"],
            tv_weight=preset["tv_weight"],
            max_num_iter=500,
            tol=1e-3,
        )
    return time.perf_counter() - t0, time.process_time() - c0, st.n_iter


def per_iteration(paths, n_iter=60, repeat=7):
    """ms / iteration of each no-grad loop (300x300, 3 classes, interval volumes, TV)
    and two floors measured now: a numpy float32 Chambolle dual step and a torch
    copy-and-scale pass over the same bytes as one iteration's arrays (u, q)."""
    import torch

    from napari_vptv.core.solver.reference import vptv_iterate

    g = torch.Generator().manual_seed(0)
    cost = torch.rand((1, 3, 300, 300), generator=g)
    bounds = (torch.tensor([0.2, 0.1, 0.05]), torch.tensor([0.8, 0.5, 0.4]))

    def solve():
        with torch.no_grad():
            vptv_iterate(cost, volume_bounds=bounds, epsilon=1.0, tv_weight=2.0, max_num_iter=n_iter, tol=0)

    def best(fn, n):
        fn()
        return min(_timed(fn, n) for _ in range(repeat))

    u = np.random.default_rng(0).random((3, 300, 300), dtype=np.float32)
    q = np.zeros((2, 3, 300, 300), np.float32)

    def chambolle():  # q <- Proj(q - tau grad u), plain numpy float32
        gx = np.zeros_like(u)
        gy = np.zeros_like(u)
        gx[:, :-1] = u[:, 1:] - u[:, :-1]
        gy[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
        q[0] -= 0.5 * gx
        q[1] -= 0.5 * gy
        scale = np.minimum(2.0 / np.maximum(np.sqrt(q[0] ** 2 + q[1] ** 2), 1e-12), 1.0)
        q[0] *= scale
        q[1] *= scale

    src = torch.rand(3 * 3 * 300 * 300)  # u + q (2 components) = 3 x (3, 300, 300)
    dst = torch.empty_like(src)
    out = dict(
        ms_numpy_chambolle_step=best(chambolle, 20) / 20 * 1e3,
        ms_torch_copy_scale_u_q=best(lambda: torch.mul(src, 0.5, out=dst), 50) / 50 * 1e3,
    )
    for path in paths:  # interleaved with the floors' load: floors first, then each path
        use_path(path)
        ms = best(solve, 1) / n_iter * 1e3
        out[f"ms_per_iteration_{path}"] = ms
        out[f"ratio_to_copy_scale_{path}"] = ms / out["ms_torch_copy_scale_u_q"]
        out[f"ratio_to_numpy_chambolle_{path}"] = ms / out["ms_numpy_chambolle_step"]
    use_path(paths[0])
    return out


def _timed(fn, n):
    """Process CPU time of ``n`` calls (steadier than wall time on a shared machine)."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return time.process_time() - t0


def compiled_step():
    """torch.compile (inductor, CPU) of one functional VPTV step vs the same step eager
    and vs the fast loop: compile time and ms / step."""
    import torch

    def step(neg_cost, q, f, eps: float, tau: float, bound: float):
        z = neg_cost.clone()
        z[:, :, :-1, :] -= q[:, :, 0, :-1, :]
        z[:, :, 1:, :] += q[:, :, 0, :-1, :]
        z[:, :, :, :-1] -= q[:, :, 1, :, :-1]
        z[:, :, :, 1:] += q[:, :, 1, :, :-1]
        u = torch.softmax((z + f[:, :, None, None]) / eps, dim=1)
        g0 = torch.zeros_like(u)
        g0[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
        g1 = torch.zeros_like(u)
        g1[:, :, :, :-1] = u[:, :, :, 1:] - u[:, :, :, :-1]
        q0, q1 = q[:, :, 0] - tau * g0, q[:, :, 1] - tau * g1
        sc = torch.clamp(bound / torch.clamp(torch.sqrt(q0 * q0 + q1 * q1), min=1e-12), max=1.0)
        return u, torch.stack([q0 * sc, q1 * sc], 2), u.mean(dim=(2, 3))

    c = torch.rand(1, 3, 300, 300)
    q0, f = torch.zeros(1, 3, 2, 300, 300), torch.zeros(1, 3)
    out = {}
    try:
        t0 = time.perf_counter()
        cs = torch.compile(step, dynamic=False)
        cs(-c, q0, f, 1.0, 0.5, 2.0)
        out["compile_s"] = time.perf_counter() - t0
        fns = [("eager", step), ("compiled", cs)]
    except Exception as e:  # no compiler: report and fall back
        out["compile_error"] = f"{type(e).__name__}: {e}"[:200]
        fns = [("eager", step)]
    for name, fn in fns:
        q = q0
        for _ in range(3):
            _, q, _ = fn(-c, q, f, 1.0, 0.5, 2.0)
        t0 = time.perf_counter()
        for _ in range(50):
            _, q, _ = fn(-c, q, f, 1.0, 0.5, 2.0)
        out[f"ms_per_step_{name}"] = (time.perf_counter() - t0) / 50 * 1e3
    return out


def _clock():
    return time.perf_counter(), time.process_time()


def _since(start):
    return time.perf_counter() - start[0], time.process_time() - start[1]


def chan_vese_labels(image):
    from skimage.color import rgb2gray
    from skimage.segmentation import chan_vese

    g = rgb2gray(image)
    t0 = _clock()
    seg = chan_vese(g, mu=0.25, lambda1=1, lambda2=1, tol=1e-3, max_num_iter=500, dt=0.5)
    wall, cpu = _since(t0)
    # the darker phase is the white cell
    cell = seg if g[seg].mean() < g[~seg].mean() else ~seg
    return cell.astype(np.int32), wall, cpu


def random_walker_labels(image, seed=0):
    from skimage.segmentation import random_walker

    from napari_vptv.core.solver.costs import kmeans_init

    x = image.astype(np.float64) / 255.0
    t0 = _clock()
    pix = x.reshape(-1, 3)
    means, _ = kmeans_init(pix, 3, seed=seed)  # ordered dark -> bright
    d = np.sqrt(((pix[:, None] - means[None]) ** 2).sum(-1))
    order = np.sort(d, axis=1)
    confident = order[:, 0] < 0.5 * order[:, 1]
    near = d.argmin(1)
    cls_of_cluster = np.array([2, 1, 0])  # darkest = nucleus, middle = cytoplasm, brightest = background
    markers = np.where(confident, cls_of_cluster[near] + 1, 0).reshape(image.shape[:2])
    lab = random_walker(x, markers, beta=130, mode="cg_j", tol=1e-3, channel_axis=-1)
    wall, cpu = _since(t0)
    return (lab - 1).astype(np.int32), wall, cpu


def make_stack(image, n_frames, size=512, shift=2):
    """``(n_frames, size, size, 3)`` uint8: ``image`` reflect-padded to ``size`` and
    shifted by ``shift`` pixels per frame (a slowly drifting field of view)."""
    h, w = image.shape[:2]
    big = np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")[:size, :size]
    return np.stack([np.roll(big, (shift * t, shift * t), axis=(0, 1)) for t in range(n_frames)])


def stack_throughput(image, preset, n_frames):
    """Frames per second of a 512x512 RGB stack: one core cold / warm start, both cores
    (two halves in two threads, one torch thread each) cold / warm; iterations and the
    agreement of warm-start labels with cold-start labels."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from napari_vptv.core.batch.stack import segment_stack
    from napari_vptv.core.solver.segment import vptv_segment

    stack = make_stack(image, n_frames)
    fn = functools.partial(vptv_segment, **{k: v for k, v in preset.items() if k != "channel_axis"})

    def run(part, warm):
        return [(s.labels, s.result.n_iter) for s in segment_stack(part, fn, rgb=True, warm_start=warm)]

    out, labels = {}, {}
    for warm in (False, True):
        t0 = _clock()
        res = run(stack, warm)
        wall, cpu = _since(t0)
        key = "warm" if warm else "cold"
        labels[key] = [r[0] for r in res]
        out[f"one_core_{key}"] = dict(
            fps_wall=n_frames / wall, fps_cpu=n_frames / cpu, iterations=[int(r[1]) for r in res]
        )
        halves = (stack[: n_frames // 2], stack[n_frames // 2 :])
        t0 = _clock()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(functools.partial(run, warm=warm), halves))
        wall, cpu = _since(t0)
        out[f"two_cores_{key}"] = dict(fps_wall=n_frames / wall, fps_cpu=n_frames / cpu)
    out["warm_vs_cold_label_agreement_min"] = float(
        min(np.mean(a == b) for a, b in zip(labels["cold"], labels["warm"]))
    )
    out["iterations_saved_by_warm_start"] = 1 - sum(out["one_core_warm"]["iterations"]) / sum(
        out["one_core_cold"]["iterations"]
    )
    out["frames"], out["shape"] = n_frames, list(stack.shape)
    return out


def _pct(values):
    v = np.asarray(values, dtype=float)
    return dict(p50=float(np.median(v)), p95=float(np.percentile(v, 95)), max=float(v.max()))


def run_images(images, preset, repeat, paths):
    """Per image: each solver path (whole call best of ``repeat``, iteration alone),
    then the peers once; labels of the paths compared."""
    rows = []
    for sid, img, mask in images:
        fg = mask > 0
        row, labels = dict(id=sid), {}
        for path in paths:
            use_path(path)
            runs = [vptv(img, preset) for _ in range(repeat)]
            lab_v, t_v, c_v, it = min(runs, key=lambda r: r[2])
            t_it, c_it, n_it = vptv_iteration_only(img, preset)
            labels[path] = lab_v
            row.update(
                {
                    f"t_vptv_{path}": t_v,
                    f"cpu_vptv_{path}": c_v,
                    f"t_iter_{path}": t_it,
                    f"cpu_iter_{path}": c_it,
                    f"n_iter_{path}": n_it,
                    f"ms_per_iteration_cpu_{path}": 1e3 * c_it / n_it,
                    f"softmax_passes_{path}": it + 1 + sum(_ROUNDING_PASSES),
                    f"acc3_vptv_{path}": np.mean(lab_v == mask),
                    f"acc2_vptv_{path}": np.mean((lab_v > 0) == fg),
                }
            )
        use_path(paths[0])
        lab_c, t_c, c_c = chan_vese_labels(img)
        lab_r, t_r, c_r = random_walker_labels(img)
        row.update(
            t_cv=t_c,
            cpu_cv=c_c,
            t_rw=t_r,
            cpu_rw=c_r,
            acc3_rw=np.mean(lab_r == mask),
            acc2_cv=np.mean((lab_c > 0) == fg),
            acc2_rw=np.mean((lab_r > 0) == fg),
            labels_equal_across_paths=float(all(np.array_equal(labels[paths[0]], v) for v in labels.values())),
        )
        rows.append(row)
        per_path = " | ".join(
            f"{q} {row[f'cpu_vptv_{q}']:.3f}s cpu ({row[f'n_iter_{q}']} it, {row[f'ms_per_iteration_cpu_{q}']:.2f} ms/it)"
            for q in paths
        )
        print(
            f"  {sid}: {per_path} | acc3 {row[f'acc3_vptv_{paths[0]}']:.4f} | chan_vese {c_c:.3f}s cpu | "
            f"random_walker {c_r:.3f}s cpu | labels equal {bool(row['labels_equal_across_paths'])}",
            flush=True,
        )
    return rows


def summarise(rows, floor, paths):
    m = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "id"}
    ref = f"cpu_vptv_{paths[0]}"
    print()
    print(
        f"| method | CPU s / image | CPU time ratio to VPTV ({paths[0]}) | 3-class pixel acc. | cell-vs-background acc. |"
    )
    print("|---|---|---|---|---|")
    for q in paths:
        print(
            f"| VPTV {q}, WBC preset (whole call, incl. volume rounding) | {m[f'cpu_vptv_{q}']:.3f} | "
            f"{m[f'cpu_vptv_{q}'] / m[ref]:.2f} | {m[f'acc3_vptv_{q}']:.4f} | {m[f'acc2_vptv_{q}']:.4f} |"
        )
        print(
            f"| VPTV {q} iteration only ({m[f'n_iter_{q}']:.0f} iterations avg) | {m[f'cpu_iter_{q}']:.3f} | "
            f"{m[f'cpu_iter_{q}'] / m[ref]:.2f} | | |"
        )
    print(
        f"| skimage chan_vese (grey, 2 phases) | {m['cpu_cv']:.3f} | {m['cpu_cv'] / m[ref]:.1f} | n/a | "
        f"{m['acc2_cv']:.4f} |"
    )
    print(
        f"| skimage random_walker (RGB, k-means seeds) | {m['cpu_rw']:.3f} | {m['cpu_rw'] / m[ref]:.1f} | "
        f"{m['acc3_rw']:.4f} | {m['acc2_rw']:.4f} |"
    )
    summary = dict(labels_equal_across_paths=int(sum(r["labels_equal_across_paths"] for r in rows)), images=len(rows))
    for q in paths:
        ms_it = [r[f"ms_per_iteration_cpu_{q}"] for r in rows]
        s = summary[q] = dict(
            vptv_call_wall_s=_pct([r[f"t_vptv_{q}"] for r in rows]),
            vptv_call_cpu_s=_pct([r[f"cpu_vptv_{q}"] for r in rows]),
            iteration_wall_s=_pct([r[f"t_iter_{q}"] for r in rows]),
            iteration_cpu_s=_pct([r[f"cpu_iter_{q}"] for r in rows]),
            ms_per_iteration_cpu=_pct(ms_it),
            ms_per_iteration_cpu_to_copy_floor=float(np.median(ms_it) / floor["ms_torch_copy_scale_u_q"]),
            iterations=[int(r[f"n_iter_{q}"]) for r in rows],
            softmax_passes=[int(r[f"softmax_passes_{q}"]) for r in rows],
            ratio_vptv_call_to_chan_vese_cpu=float(
                sum(r[f"cpu_vptv_{q}"] for r in rows) / sum(r["cpu_cv"] for r in rows)
            ),
            ratio_vptv_call_to_chan_vese_wall=float(sum(r[f"t_vptv_{q}"] for r in rows) / sum(r["t_cv"] for r in rows)),
            acc3_vptv_mean=m[f"acc3_vptv_{q}"],
        )
        c = s["vptv_call_cpu_s"]
        print(
            f"# {q}: VPTV call CPU p50 {c['p50']:.3f}s p95 {c['p95']:.3f}s max {c['max']:.3f}s "
            f"(max/p50 {c['max'] / c['p50']:.2f}); ms/iteration (CPU) median {np.median(ms_it):.2f} = "
            f"{s['ms_per_iteration_cpu_to_copy_floor']:.1f}x the copy floor; CPU time ratio VPTV / chan_vese "
            f"{s['ratio_vptv_call_to_chan_vese_cpu']:.3f}"
        )
    print(f"# labels equal across paths: {summary['labels_equal_across_paths']} / {len(rows)} images")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/work/shared/data/wbc")
    p.add_argument("--step", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="VPTV timing: best (CPU time) of n runs")
    p.add_argument("--stack", type=int, default=0, help="frames of the 512x512 stack throughput (0: skip)")
    p.add_argument("--paths", default=",".join(PATHS), help="solver paths to time, of numba,torch")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd step")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    paths = [q for q in args.paths.split(",") if q]
    if not paths or any(q not in PATHS for q in paths):
        raise SystemExit(f"--paths: give some of {','.join(PATHS)}")

    import torch

    torch.set_num_threads(args.threads)
    from napari_vptv.core.wbc.preset import wbc_preset

    images, source = load_images(args.root, args.step)
    print(f"# machine: {machine(args.threads)}")
    print(f"# images: {len(images)} from {source}")
    preset = wbc_preset("interval")
    _count_rounding_passes()
    for q in paths:  # warm-up (imports, allocator, numba JIT or cache load)
        use_path(q)
        vptv(images[0][1], preset)
    floor = per_iteration(paths)
    per_path = "; ".join(
        f"{q} {floor[f'ms_per_iteration_{q}']:.2f} ms ({floor[f'ratio_to_copy_scale_{q}']:.1f}x floor)" for q in paths
    )
    print(
        f"# per iteration (300x300x3, CPU time): {per_path}; numpy float32 Chambolle dual step "
        f"{floor['ms_numpy_chambolle_step']:.2f} ms; torch copy-and-scale of u+q (floor) "
        f"{floor['ms_torch_copy_scale_u_q']:.3f} ms",
        flush=True,
    )
    comp = compiled_step() if args.compile else None
    if comp:
        print(f"# torch.compile: {comp}", flush=True)
    rows = run_images(images, preset, args.repeat, paths)
    summary = summarise(rows, floor, paths)
    stack = {}
    if args.stack:
        for q in paths:
            use_path(q)
            stack[q] = stack_throughput(images[0][1], preset, args.stack)
            print(f"# 512x512 stack, {q}: {stack[q]}", flush=True)
    if args.out:
        import json
        import subprocess
        import sys

        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        Path(args.out).write_text(
            json.dumps(
                dict(
                    command="python " + " ".join(sys.argv),
                    commit=commit,
                    machine=machine(args.threads),
                    load_average_at_end=os.getloadavg()[0],
                    nice=os.nice(0),
                    images=source,
                    per_iteration=floor,
                    torch_compile=comp,
                    summary=summary,
                    stack_512=stack or None,
                    rows=[{k: (v if isinstance(v, str) else float(v)) for k, v in r.items()} for r in rows],
                ),
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
