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

Run by hand::

    nice -n 10 python benchmarks/bench_solver.py --step 9 --threads 2
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
        from napari_vptv.core.io import load_wbc_dataset

        data = load_wbc_dataset(root)
        return [(i, im, m) for i, im, m in data[::step]], f"{root} (every {step}th image)"
    from napari_vptv.core.samples import load_sample, sample_ids

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
    return (f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} with {threads} thread(s); "
            f"load average at start {load[0]:.2f}")


def vptv(image, preset):
    from napari_vptv.core.segment import vptv_segment

    t0 = time.perf_counter()
    r = vptv_segment(image, **preset)
    return r.labels, time.perf_counter() - t0, r.n_iter


def vptv_iteration_only(image, preset):
    """Time of Algorithm 1 alone (costs given, no rounding)."""
    import torch

    from napari_vptv.core.segment import prepare_image
    from napari_vptv.core.vptv import vptv_iterate

    x = torch.from_numpy(prepare_image(image, -1))[None]
    cost = preset["class_model"].cost(x)
    lo, hi = preset["volume_bounds"]
    t0 = time.perf_counter()
    with torch.no_grad():
        st = vptv_iterate(cost, volume_bounds=(torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)),
                          epsilon=preset["epsilon"], tv_weight=preset["tv_weight"], max_num_iter=500, tol=1e-3)
    return time.perf_counter() - t0, st.n_iter


def chan_vese_labels(image):
    from skimage.color import rgb2gray
    from skimage.segmentation import chan_vese

    g = rgb2gray(image)
    t0 = time.perf_counter()
    seg = chan_vese(g, mu=0.25, lambda1=1, lambda2=1, tol=1e-3, max_num_iter=500, dt=0.5)
    dt = time.perf_counter() - t0
    # the darker phase is the white cell
    cell = seg if g[seg].mean() < g[~seg].mean() else ~seg
    return cell.astype(np.int32), dt


def random_walker_labels(image, seed=0):
    from skimage.segmentation import random_walker

    from napari_vptv.core.costs import kmeans_init

    x = image.astype(np.float64) / 255.0
    t0 = time.perf_counter()
    pix = x.reshape(-1, 3)
    means, _ = kmeans_init(pix, 3, seed=seed)  # ordered dark -> bright
    d = np.sqrt(((pix[:, None] - means[None]) ** 2).sum(-1))
    order = np.sort(d, axis=1)
    confident = order[:, 0] < 0.5 * order[:, 1]
    near = d.argmin(1)
    cls_of_cluster = np.array([2, 1, 0])  # darkest = nucleus, middle = cytoplasm, brightest = background
    markers = np.where(confident, cls_of_cluster[near] + 1, 0).reshape(image.shape[:2])
    lab = random_walker(x, markers, beta=130, mode="cg_j", tol=1e-3, channel_axis=-1)
    dt = time.perf_counter() - t0
    return (lab - 1).astype(np.int32), dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/work/shared/data/wbc")
    p.add_argument("--step", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="VPTV timing: best of n runs")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_vptv.core.wbc import wbc_preset

    images, source = load_images(args.root, args.step)
    print(f"# machine: {machine(args.threads)}")
    print(f"# images: {len(images)} from {source}")
    preset = wbc_preset("interval")
    vptv(images[0][1], preset)  # warm-up (imports, allocator)

    rows = []
    for sid, img, mask in images:
        t_v, it = min((vptv(img, preset)[1:] for _ in range(args.repeat)), key=lambda t: t[0])
        lab_v = vptv(img, preset)[0]
        t_it, n_it = vptv_iteration_only(img, preset)
        lab_c, t_c = chan_vese_labels(img)
        lab_r, t_r = random_walker_labels(img)
        fg = mask > 0
        rows.append(dict(
            id=sid, t_vptv=t_v, t_iter=t_it, n_iter=n_it, t_cv=t_c, t_rw=t_r,
            acc3_vptv=np.mean(lab_v == mask), acc3_rw=np.mean(lab_r == mask),
            acc2_vptv=np.mean((lab_v > 0) == fg), acc2_cv=np.mean((lab_c > 0) == fg),
            acc2_rw=np.mean((lab_r > 0) == fg),
        ))
        r = rows[-1]
        print(f"  {sid}: vptv {r['t_vptv']:.3f}s ({r['n_iter']} it, iteration {r['t_iter']:.3f}s) "
              f"acc3 {r['acc3_vptv']:.4f} | chan_vese {r['t_cv']:.3f}s acc2 {r['acc2_cv']:.4f} | "
              f"random_walker {r['t_rw']:.3f}s acc3 {r['acc3_rw']:.4f}", flush=True)
    m = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "id"}
    print()
    print("| method | s / image | time ratio to VPTV | 3-class pixel acc. | cell-vs-background acc. |")
    print("|---|---|---|---|---|")
    print(f"| VPTV, WBC preset (whole call, incl. volume rounding) | {m['t_vptv']:.3f} | 1.0 | "
          f"{m['acc3_vptv']:.4f} | {m['acc2_vptv']:.4f} |")
    print(f"| VPTV iteration only (Algorithm 1, {m['n_iter']:.0f} iterations avg) | {m['t_iter']:.3f} | "
          f"{m['t_iter'] / m['t_vptv']:.2f} | | |")
    print(f"| skimage chan_vese (grey, 2 phases) | {m['t_cv']:.3f} | {m['t_cv'] / m['t_vptv']:.1f} | n/a | "
          f"{m['acc2_cv']:.4f} |")
    print(f"| skimage random_walker (RGB, k-means seeds) | {m['t_rw']:.3f} | {m['t_rw'] / m['t_vptv']:.1f} | "
          f"{m['acc3_rw']:.4f} | {m['acc2_rw']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
