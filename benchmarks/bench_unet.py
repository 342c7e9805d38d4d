"""Inference time per 300 x 300 image: U-net vs VPTVU-net (same run, same machine).

    PYTHONPATH=src python benchmarks/bench_unet.py [--repeats 20] [--threads 2] [--image path.png]

Uses the shipped weights (``napari_vptv/models``) when present, otherwise randomly
initialised networks of the same architecture (timing does not depend on the weights).
The VPTVU-net is timed with its shipped test-time defaults (volume mode, eps, lambda, T)
through :func:`napari_vptv.nn.weights.predict_wbc`'s code path (backbone + layer).
Targets: <= 150 ms per image for the VPTVU-net and <= 1.5x the U-net.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time(fn, repeats):
    fn()
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--sweep", type=int, nargs="*", default=[], help="also time the VPTVU-net with these T (num_iter) values"
    )
    ap.add_argument("--image", default=None, help="a 300x300 RGB image (default: random)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_vptv.nn import weights as W
    from napari_vptv.nn.layer import build_model

    if args.image:
        import imageio.v3 as iio

        img = np.asarray(iio.imread(args.image))[..., :3]
    else:
        img = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)

    shipped = all((W.MODELS_DIR / f"{n}.pt").exists() for n in W.MODEL_NAMES)
    if shipped:
        fn_unet = lambda: W.predict_wbc(img, method="unet")  # noqa: E731
        fn_vptv = lambda: W.predict_wbc(img, method="vptv-unet")  # noqa: E731
        d = W.model_metadata("vptv-unet")["defaults"]
        cfg = (
            f"shipped weights; VPTV defaults prior={d.get('prior', d.get('volume_mode'))}, eps={d['epsilon']}, "
            f"lambda={d['tv_weight']}, T={d['num_iter']}; test-time augmentation: predict_wbc's default"
        )
    else:
        from napari_vptv.nn import data as D

        uk = dict(base_channels=8, depth=4)
        u = build_model("unet", unet_kwargs=uk).eval()
        v = build_model(
            "vptv-unet", unet_kwargs=uk, head_kwargs=dict(num_iter=20, tv_weight=1.0, volume_mode="exact")
        ).eval()
        vol = torch.tensor([0.76, 0.13, 0.11])

        def fn_unet():
            with torch.inference_mode():
                return u(D.normalise(img[None]))[0].argmax(0).numpy()

        def fn_vptv():
            with torch.inference_mode():
                return v(D.normalise(img[None]), volumes=vol)[0].argmax(0).numpy()

        cfg = "random-initialised networks (no shipped weights); VPTV exact volumes, eps=1, lambda=1, T=20"

    mu, bu = _time(fn_unet, args.repeats)
    mv, bv = _time(fn_vptv, args.repeats)
    print(
        f"machine: {platform.machine()} {_cpu_name()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"config: {cfg}; image {img.shape}; median of {args.repeats} repeats (after 2 warm-ups), numpy in -> labels out"
    )
    print(f"U-net      : median {1000 * mu:7.1f} ms   (min {1000 * bu:6.1f} ms)")
    print(f"VPTVU-net  : median {1000 * mv:7.1f} ms   (min {1000 * bv:6.1f} ms)")
    print(f"ratio VPTVU-net / U-net: {mv / mu:.2f}  (targets: <= 150 ms, <= 1.5x)")
    for T in args.sweep:
        if shipped:
            f = lambda T=T: W.predict_wbc(img, method="vptv-unet", num_iter=T)  # noqa: E731
        else:
            v.head.num_iter = T
            f = fn_vptv
        m, b = _time(f, args.repeats)
        print(f"VPTVU-net T={T:3d}: median {1000 * m:7.1f} ms   ratio {m / mu:.2f}")


if __name__ == "__main__":
    main()
