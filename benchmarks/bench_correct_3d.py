"""Benchmark: correcting 3-D nuclei masks, true 3-D vs. slice by slice, vs. the watershed peer.

A synthetic fluorescence stack of ellipsoidal nuclei (isotropic voxels; some
touching; Gaussian PSF blur, uneven illumination, Poisson + Gaussian noise) with its
exact instance mask. Corruptions of the true mask: ``identity``, ``dilate2``
(labels expanded by 2 voxels in 3-D, never merging), ``erode2`` (each object eroded
by a ball of radius 2), ``dilate3xy`` / ``erode3xy`` (3 px in every plane only, as
a mask drawn slice by slice). Methods: ``vptv3d``
(``correct_mask(..., stack_mode="volume")``, defaults), ``vptv2d``
(``stack_mode="slices"``), ``watershed3d`` (the seeded-watershed peer on the volume),
``watershed2d`` (the peer on every plane). Scores: foreground Dice, mean 3-D object
Dice (same id), ids lost, merged objects, seconds. Run by hand::

    python benchmarks/bench_correct_3d.py --out benchmarks/results/correct_3d_synth.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from bench_correct_nuclei import scores, summarize  # noqa: E402
from correct_peers import erode_labels, per_slice, seeded_watershed  # noqa: E402


def synth_stack(seed, shape=(32, 192, 192), n=30, photons=200.0):
    """A fluorescence stack of ellipsoidal nuclei (radii 5-8 voxels in z, 8-16 in y / x) and its labels."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    signal = np.zeros(shape, np.float32)
    centres = []
    for _ in range(n * 30):
        if len(centres) == n:
            break
        r = np.array([rng.uniform(5, 8), rng.uniform(8, 16), rng.uniform(8, 16)])
        c = np.array(
            [rng.uniform(r[0], shape[0] - r[0]), rng.uniform(r[1], shape[1] - r[1]), rng.uniform(r[2], shape[2] - r[2])]
        )
        if any(np.linalg.norm((c - c2) / ((r + r2) / 2)) < 1.7 for c2, r2 in centres):
            continue  # neighbours may touch, not overlap much
        centres.append((c, r))
        f = np.sqrt(((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2)
        inside = (f < 1) & (f < best)
        best[inside] = f[inside]
        labels[inside] = len(centres)
        level = rng.uniform(0.25, 0.45) if rng.random() < 0.25 else rng.uniform(0.75, 1.0)
        signal[inside] = level
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    signal *= 1.0 + 0.12 * texture / (texture.std() + 1e-9)
    signal = ndi.gaussian_filter(signal, rng.uniform(1.0, 1.5))
    field = ndi.gaussian_filter(rng.standard_normal(shape), 24.0)
    illum = np.clip(1.0 + 0.15 * field / (field.std() + 1e-12), 0.7, 1.3)  # uneven illumination
    counts = rng.poisson(photons * (0.08 + signal) * illum).astype(np.float32) + rng.normal(100, 4, shape)
    return np.clip(counts, 0, 65535).astype(np.uint16), labels


def corrupt3d(labels, kind):
    """``identity``, ``dilateN`` / ``erodeN`` (3-D), ``dilateNxy`` / ``erodeNxy`` (every plane only)."""
    from skimage.segmentation import expand_labels

    if kind == "identity":
        return labels.copy()
    planes = kind.endswith("xy")
    name = kind[:-2] if planes else kind
    op, r = ("dilate", int(name[6:])) if name.startswith("dilate") else ("erode", int(name[5:]))
    one = (lambda lab: expand_labels(lab, r)) if op == "dilate" else (lambda lab: erode_labels(lab, r))
    return np.stack([one(p) for p in labels]) if planes else one(labels)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="3000")
    ap.add_argument("--kinds", default="identity,dilate2,erode2,dilate3xy,erode3xy")
    ap.add_argument("--methods", default="vptv3d,vptv2d,watershed3d,watershed2d")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from napari_vptv.core.correct.mask import correct_mask

    run = {
        "vptv3d": lambda img, g, grey: correct_mask(img, g, stack_mode="volume"),
        "vptv2d": lambda img, g, grey: correct_mask(img, g, stack_mode="slices"),
        "watershed3d": lambda img, g, grey: seeded_watershed(grey, g),
        "watershed2d": lambda img, g, grey: per_slice(seeded_watershed)(grey, g),
    }
    rows = []
    for seed in map(int, args.seeds.split(",")):
        img, truth = synth_stack(seed)
        grey = ((img - img.min()) / float(img.max() - img.min())).astype(np.float32)
        for kind in args.kinds.split(","):
            given = corrupt3d(truth, kind)
            before = scores(given, truth, given)
            for m in args.methods.split(","):
                t0 = time.perf_counter()
                out = run[m](img, given, grey)
                dt = time.perf_counter() - t0
                rows.append(
                    dict(
                        id=f"s{seed}",
                        kind=kind,
                        method=m,
                        seconds=dt,
                        n_objects=int(truth.max()),
                        **{f"{k}_before": v for k, v in before.items()},
                        **scores(out, truth, given),
                    )
                )
                r = rows[-1]
                print(
                    seed,
                    kind,
                    m,
                    f"{r['dice_fg_before']:.3f}->{r['dice_fg']:.3f} obj {r['dice_obj']:.3f} "
                    f"lost {r['ids_lost']} merged {r['merged']} {dt:.1f}s",
                    flush=True,
                )
    table = summarize(rows)
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        commit = commit or os.environ.get("VPTV_CODE_COMMIT", "")  # a `git archive` has no .git
        Path(args.out).write_text(
            json.dumps(dict(command="python " + " ".join(sys.argv), commit=commit, table=table, rows=rows), indent=1)
        )


if __name__ == "__main__":
    main()
