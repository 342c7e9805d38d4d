"""Benchmark: correcting biased nuclei masks, VPTV vs. scikit-image peers.

Data (no real fluorescence nuclei on this machine):

* ``synth``: synthetic fluorescence nuclei (``synth_nuclei.py``), 1024 x 1024,
  ~150 nuclei; tuning seeds 0-3 (512 x 512), held-out seeds 1000+ (never looked at
  while choosing parameters).
* ``wbc``: ``/work/shared/data/wbc`` nuclei (mask value 255, components = objects),
  tuning = every 15th image (001, 018, 036, 052, 069, 084), held out = the rest.
* ``wbc-d1``: ``/work/shared/data/wbc-d1`` (another source, small nuclei), tuning =
  every 24th image of the sorted files from the 13th (014, 045, ..., 287: 10
  images), held out = the rest.

Corruptions of the true instance mask: ``identity``, ``dilateN`` (labels expanded by
N px, objects never merge), ``erodeN`` (each object eroded by a disc of radius N),
``shift3`` (whole mask moved 3 px in a seeded random direction), ``polygon`` (a
hand-drawn-like ~16-vertex polygon per object through boundary points perturbed by
2 px, as ``exp_correct_masks.py``'s; earlier ids win where polygons overlap),
``threshold`` (a user's threshold of the image: Otsu of the smoothed grey image for
fluorescence -- nuclei bright --, the darkest class of a 3-class multi-Otsu for
brightfield RGB -- nuclei dark --; holes filled; split into the given ids by a
watershed of the distance transform from each true object eroded 2 px, so parts not
reached from an object are dropped). Methods: ``vptv``
(:func:`correct_mask`, defaults: unknown bias), ``watershed`` (the main peer),
``randomwalker``, ``gac`` (morphological geodesic active contours).

Run by hand, e.g.::

    python benchmarks/bench_correct_nuclei.py --dataset synth --split heldout \
        --out benchmarks/results/correct_nuclei_synth.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from correct_peers import erode_labels, geodesic_active_contour, random_walker_refine, seeded_watershed  # noqa: E402
from synth_nuclei import synth_nuclei  # noqa: E402

WBC_TUNE = ("001", "018", "036", "052", "069", "084")
PEERS = {"watershed": seeded_watershed, "randomwalker": random_walker_refine, "gac": geodesic_active_contour}


def polygonise(labels, seed, vertices=16, jitter=2.0):
    """Each object redrawn as a ~``vertices``-gon through boundary points moved by ``jitter`` px."""
    from skimage.draw import polygon as draw_polygon
    from skimage.measure import find_contours

    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = np.pad(labels[sl] == i, 1)
        contours = find_contours(obj.astype(float), 0.5)
        if not contours:
            continue
        c = max(contours, key=len) - 1 + np.array([s.start for s in sl])
        pts = c[:: max(len(c) // vertices, 3)]
        pts = pts + rng.normal(0, jitter, size=pts.shape)
        rr, cc = draw_polygon(pts[:, 0], pts[:, 1], labels.shape)
        free = out[rr, cc] == 0
        out[rr[free], cc[free]] = i
    return out


def threshold_mask(grey, labels, bright):
    """A user's threshold of ``grey`` split into the ids of ``labels`` (see the module docstring)."""
    from skimage.filters import gaussian, threshold_multiotsu, threshold_otsu
    from skimage.segmentation import watershed

    g = gaussian(grey, 1.0)
    fg = g > threshold_otsu(g) if bright else g < threshold_multiotsu(g, 3)[0]
    fg = ndi.binary_fill_holes(fg)
    markers = erode_labels(labels, 2)
    for i in np.setdiff1d(np.unique(labels), np.unique(markers)):
        markers[labels == i] = i  # an object eroded away keeps its marker
    return watershed(-ndi.distance_transform_edt(fg), markers, mask=fg | (markers > 0)).astype(labels.dtype)


def corrupt(labels, kind, seed, grey=None, bright=True):
    """A corrupted copy of the instance mask ``labels`` (``grey`` / ``bright``: for ``threshold``)."""
    from skimage.segmentation import expand_labels

    if kind == "polygon":
        return polygonise(labels, seed)
    if kind == "threshold":
        return threshold_mask(grey, labels, bright)
    if kind == "identity":
        return labels.copy()
    if kind.startswith("dilate"):
        return expand_labels(labels, int(kind[6:]))
    if kind.startswith("erode"):
        return erode_labels(labels, int(kind[5:]))
    if kind.startswith("shift"):
        ang = np.random.default_rng(seed).uniform(0, 2 * np.pi)
        d = np.round(int(kind[5:]) * np.array([np.sin(ang), np.cos(ang)])).astype(int)
        return ndi.shift(labels, d, order=0, mode="constant")
    raise ValueError(f"unknown corruption {kind!r}")


def load(dataset, split, data_root, every=1, truth="shape"):
    """Yield ``(key, image, channel_axis, grey, labels)`` (``truth``: of the synthetic images,
    see ``synth_nuclei``)."""
    if dataset == "synth":
        seeds, shape, n = ((0, 1, 2, 3), (512, 512), 60) if split == "tune" else (range(1000, 1006), (1024, 1024), 150)
        for s in list(seeds)[::every]:
            img, lab = synth_nuclei(s, shape, n, truth=truth)
            grey = (img - img.min()) / float(img.max() - img.min())
            yield f"s{s}", img, None, grey.astype(np.float32), lab
        return
    from skimage.color import rgb2gray
    from skimage.io import imread

    root = Path(data_root) / dataset
    files = sorted((root / "images").glob("*.png"))
    tune = {"wbc": WBC_TUNE, "wbc-d1": tuple(f.stem for f in files[12::24])}
    for f in [f for f in files if (f.stem in tune[dataset]) == (split == "tune")][::every]:
        key = f.stem
        img = imread(f)[..., :3]
        lab, _ = ndi.label(imread(root / "masks" / f.name) == 255)
        yield key, img, -1, rgb2gray(img).astype(np.float32), lab.astype(np.int32)


def scores(out, truth, given):
    a, b = out > 0, truth > 0
    fg = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    ids = [i for i in np.unique(truth) if i]
    per = []
    for i in ids:
        o, t = out == i, truth == i
        per.append(2 * (o & t).sum() / max(o.sum() + t.sum(), 1))
    lost = len(set(np.unique(given)) - set(np.unique(out)))
    extra = len(set(np.unique(out)) - set(np.unique(given)))
    return dict(dice_fg=fg, dice_obj=float(np.mean(per)), ids_lost=lost, ids_extra=extra, merged=merged(out, truth))


def merged(out, truth):
    """True objects whose main output object (most of their pixels) is also another's main one."""
    main = {}
    for i, sl in enumerate(ndi.find_objects(truth), start=1):
        if sl is None:
            continue
        o = out[sl][truth[sl] == i]
        o = o[o > 0]
        if o.size:
            main[i] = int(np.bincount(o).argmax())
    counts = np.bincount(list(main.values())) if main else np.zeros(1, int)
    return int(sum(counts[v] > 1 for v in main.values()))


def run(args):
    import torch

    torch.set_num_threads(1)
    from napari_vptv.core.correct.mask import correct_mask

    kinds = args.kinds.split(",")
    methods = args.methods.split(",")
    params = json.loads(args.params) if args.params else {}
    rows = []
    for key, img, ch, grey, truth in load(args.dataset, args.split, args.data, args.every, args.truth):
        for j, kind in enumerate(kinds):
            given = corrupt(truth, kind, seed=zlib.crc32(key.encode()) + j, grey=grey, bright=ch is None)
            if not given.any():
                continue
            before = scores(given, truth, given)
            for m in methods:
                t0 = time.perf_counter()
                if m == "vptv":
                    out = correct_mask(img, given, channel_axis=ch, **params)
                else:
                    out = PEERS[m](grey, given)
                dt = time.perf_counter() - t0
                row = dict(
                    dataset=args.dataset,
                    split=args.split,
                    id=key,
                    kind=kind,
                    method=m,
                    seconds=dt,
                    n_objects=int(len(np.unique(given)) - 1),
                    **{f"{k}_before": v for k, v in before.items()},
                    **scores(out, truth, given),
                )
                rows.append(row)
            print(
                key,
                kind,
                " ".join(
                    f"{r['method']}:{r['dice_fg_before']:.3f}->{r['dice_fg']:.3f}({r['seconds']:.2f}s)"
                    for r in rows
                    if r["id"] == key and r["kind"] == kind
                ),
                flush=True,
            )
    return rows


def summarize(rows):
    """Mean scores per (corruption, method); ``time_ratio`` = mean seconds / the watershed peer's."""
    table = []
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for kind in kinds:
        ws = [r["seconds"] for r in rows if r["kind"] == kind and r["method"] == "watershed"]
        for m in methods:
            rs = [r for r in rows if r["kind"] == kind and r["method"] == m]
            if not rs:
                continue
            mean = {
                k: float(np.mean([r[k] for r in rs]))
                for k in ("dice_fg_before", "dice_fg", "dice_obj_before", "dice_obj", "seconds")
            }
            table.append(
                dict(
                    kind=kind,
                    method=m,
                    n=len(rs),
                    **mean,
                    worst_dice_fg=float(np.min([r["dice_fg"] for r in rs])),
                    ids_lost=int(sum(r["ids_lost"] for r in rs)),
                    merged=int(sum(r.get("merged", 0) for r in rs)),
                    time_ratio=mean["seconds"] / float(np.mean(ws)) if ws else float("nan"),
                )
            )
    print(
        "\n| corruption | method | n | fg Dice before | fg Dice after | worst | object Dice before | after "
        "| ids lost | merged | s / image | x peer time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        print(
            f"| {t['kind']} | {t['method']} | {t['n']} | {t['dice_fg_before']:.4f} | {t['dice_fg']:.4f} | "
            f"{t['worst_dice_fg']:.4f} | {t['dice_obj_before']:.4f} | {t['dice_obj']:.4f} | {t['ids_lost']} | "
            f"{t['merged']} | {t['seconds']:.2f} | {t['time_ratio']:.1f} |"
        )
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["synth", "wbc", "wbc-d1"], default="synth")
    ap.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--kinds", default="identity,dilate2,dilate3,dilate4,erode2,erode3,erode4,shift3")
    ap.add_argument("--methods", default="vptv,watershed,gac")
    ap.add_argument(
        "--truth",
        choices=["shape", "annotated"],
        default="shape",
        help="synth: the mask of the shapes, or the outline annotators draw (dim outer rim inside)",
    )
    ap.add_argument("--every", type=int, default=1, help="use every n-th image (of the sorted files / seeds)")
    ap.add_argument("--params", default=None, help="JSON of correct_mask keyword arguments (tuning)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--summarize", default=None, metavar="JSON", help="print the table of a saved --out file")
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(json.loads(Path(args.summarize).read_text())["rows"])
        return
    rows = run(args)
    table = summarize(rows)
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        # a `git archive` of the code has no .git: its commit is given in VPTV_CODE_COMMIT
        commit = commit or os.environ.get("VPTV_CODE_COMMIT", "")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(dict(command="python " + " ".join(sys.argv), commit=commit, table=table, rows=rows), indent=1)
        )


if __name__ == "__main__":
    main()
