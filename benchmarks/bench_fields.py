"""Composed camera fields: white-cell count, compartments and speed with an exact score.

Fields of 640x480 px (default) are composed from the held-out images of the shipped
model (``val_ids`` of ``src/napari_vptv/models/vptv-unet.json``) of one source at a
time, at that source's magnification:

* the background is a mosaic of white-cell-free squares (red cells and plasma) cut
  from those images, flipped and turned at random (``--background mosaic``, the
  default), or (``--background red-cells``) whole red cells cut out of those images
  and pasted, flipped and turned, on their plasma colour: a field with the red cells'
  scale, which the mosaic cuts into pieces (a source whose red cells are too pale to
  cut out, like wbc-d1, keeps the mosaic; the JSON says which);
* zero to several white cells are pasted with a thin ring of their own surroundings
  (their ground truth mask is the field's truth), some cut by the field's edge;
* small purple platelet-like blobs are synthesised (2.4-4 µm against a 12 µm cell:
  0.2-0.33 of the source's median cell diameter; nucleus colour of the source,
  grainy, soft-edged): their truth is background.

Every field is segmented with the default method (``segment_image(field)``, one torch
thread) with the white-cell rule on and off. Predicted cells are the connected
(8-neighbour) non-background regions; a predicted cell matches a true cell at IoU
>= 0.5. Reported: recall, precision, per-cell Dice of the matched cells (cell mask
and nucleus), the mean absolute N/(N+C) error of matched cells not cut by the edge,
the share of non-background pixels outside every true cell, and seconds per
megapixel against the held-out single crops segmented the same way. ``--crops`` also
records the held-out pixel accuracy of the crops with the rule on and off.

Run by hand (needs ../shared/data)::

    nice python benchmarks/bench_fields.py --fields 20 --crops
    nice python benchmarks/bench_fields.py --fields 20 --background red-cells --out benchmarks/results/fields_red_cells.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
META = ROOT / "src" / "napari_vptv" / "models" / "vptv-unet.json"
DATA = ROOT.parent / "shared" / "data"


def held_out(name):
    from napari_vptv.core.io.files import load_wbc_dataset

    meta = json.loads(META.read_text())
    ids = next(s["val_ids"] for s in meta["sources"] if s["name"] == name)
    return load_wbc_dataset(DATA / name, ids)


def background_squares(data, size, min_squares=4):
    """Per image, its white-cell-free ``size`` squares (4 px clear of any cell, no white
    padding), stride size / 2; images with fewer than ``min_squares`` are left out."""
    out = []
    for _, img, mask in data:
        near = ndi.binary_dilation(mask > 0, iterations=4) | (img.min(-1) > 245)
        got = [
            img[y : y + size, x : x + size]
            for y in range(0, img.shape[0] - size + 1, size // 2)
            for x in range(0, img.shape[1] - size + 1, size // 2)
            if not near[y : y + size, x : x + size].any()
        ]
        if len(got) >= min_squares:
            out.append(got)
    if not out:
        raise RuntimeError(f"no held-out image has {min_squares} white-cell-free {size} px squares")
    return out


def mosaic(per_image, shape, rng):
    """A field tiled with the squares of one image (its colours), flipped / turned at random."""
    squares = per_image[rng.integers(len(per_image))]
    size = squares[0].shape[0]
    field = np.zeros((*shape, 3), np.uint8)
    for y in range(0, shape[0], size):
        for x in range(0, shape[1], size):
            sq = np.rot90(squares[rng.integers(len(squares))], rng.integers(4))
            sq = sq[:, ::-1] if rng.random() < 0.5 else sq
            h, w = min(size, shape[0] - y), min(size, shape[1] - x)
            field[y : y + h, x : x + w] = sq[:h, :w]
    return field


def red_cell_cutouts(data, diam):
    """The whole red cells of the held-out images, as ``(rgb, alpha)`` cut-outs.

    Red cells are the background pixels darker than the plasma in green (Otsu), pale
    centres filled; whole ones are the connected regions that touch neither the image
    edge nor the white cell (3 px), are solid (>= 0.85) and at least a quarter of the
    source's median white-cell diameter wide. Also returns each image's plasma colour
    (median of the background pixels above the threshold)."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    cutouts, plasma = [], []
    for _, img, mask in data:
        green, bg = img[..., 1].astype(float), mask == 0
        t = threshold_otsu(green[bg])
        plasma.append(np.median(img[bg & (green >= t)], axis=0))
        red = ndi.binary_fill_holes(ndi.binary_opening(bg & (green < t)))
        near = ndi.binary_dilation(mask > 0, iterations=3)
        for r in regionprops(label(red)):
            y0, x0, y1, x1 = r.bbox
            if y0 == 0 or x0 == 0 or y1 == img.shape[0] or x1 == img.shape[1] or near[r.slice][r.image].any():
                continue
            if r.solidity < 0.85 or r.equivalent_diameter_area < 0.25 * diam:
                continue
            m = np.pad(r.image, 3)
            alpha = np.clip(ndi.gaussian_filter(ndi.binary_dilation(m, iterations=1).astype(float), 1.0), 0, 1)
            ys, xs = slice(max(0, y0 - 3), y1 + 3), slice(max(0, x0 - 3), x1 + 3)
            rgb = img[ys, xs]
            if rgb.shape[:2] != alpha.shape:  # next to the edge: no room for the margin
                continue
            cutouts.append((rgb, alpha))
    return cutouts, plasma


def red_cell_field(cutouts, plasma, shape, rng, cover=0.45):
    """Plasma of one image's colour (with grain) and whole red cells pasted at random
    (flipped / turned) until ``cover`` of the field is red cell."""
    colour = np.asarray(plasma[rng.integers(len(plasma))], float)
    grain = ndi.gaussian_filter(rng.normal(0, 3, shape), 1.0)[..., None]
    field = np.clip(colour + grain, 0, 255)
    covered = np.zeros(shape, bool)
    for _ in range(2000):
        if covered.mean() >= cover:
            break
        rgb, alpha = cutouts[rng.integers(len(cutouts))]
        k, flip = rng.integers(4), rng.random() < 0.5
        rgb, alpha = np.rot90(rgb, k), np.rot90(alpha, k)
        if flip:
            rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        h, w = alpha.shape
        top, left = rng.integers(-h // 2, shape[0] - h // 2), rng.integers(-w // 2, shape[1] - w // 2)
        y0, x0, y1, x1 = max(0, top), max(0, left), min(shape[0], top + h), min(shape[1], left + w)
        sy, sx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
        if (covered[y0:y1, x0:x1] & (alpha[sy, sx] > 0.5)).mean() > 0.05:  # little overlap
            continue
        a = alpha[sy, sx, None]
        field[y0:y1, x0:x1] = field[y0:y1, x0:x1] * (1 - a) + rgb[sy, sx] * a
        covered[y0:y1, x0:x1] |= alpha[sy, sx] > 0.5
    return field.astype(np.uint8)


def _paste(field, truth, inst, cell_id, img, mask, top, left):
    """Paste the cell of ``(img, mask)`` with a ring of its surroundings at (top, left) (may overhang)."""
    d = np.sqrt(4 * (mask > 0).sum() / np.pi)
    ring = ndi.binary_dilation(mask > 0, iterations=max(2, int(0.08 * d)))
    alpha = np.clip(ndi.gaussian_filter(ring.astype(float), 1.5) * 1.5, 0, 1)
    alpha[mask > 0] = 1.0
    H, W = truth.shape
    h, w = mask.shape
    y0, x0, y1, x1 = max(0, top), max(0, left), min(H, top + h), min(W, left + w)
    if y1 <= y0 or x1 <= x0:
        return
    sy, sx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
    a = alpha[sy, sx, None]
    field[y0:y1, x0:x1] = (field[y0:y1, x0:x1] * (1 - a) + img[sy, sx] * a).astype(np.uint8)
    cell = mask[sy, sx] > 0
    truth[y0:y1, x0:x1][cell] = mask[sy, sx][cell]
    inst[y0:y1, x0:x1][cell] = cell_id


def _platelet(field, centre, radii, colour, rng):
    H, W = field.shape[:2]
    yy, xx = np.indices((H, W))
    r = np.hypot((yy - centre[0]) / radii[0], (xx - centre[1]) / radii[1])
    alpha = np.clip((1.0 - r) * min(radii) / 1.5, 0, 1)[..., None]
    grain = ndi.gaussian_filter(rng.normal(0, 18, (H, W)), 1.0)[..., None]
    blob = np.clip(np.asarray(colour, float) * rng.uniform(0.85, 1.1) + grain, 0, 255)
    field[:] = (field * (1 - alpha) + blob * alpha).astype(np.uint8)


def compose(data, squares, shape, rng, max_cells, n_platelets, red_cells=None):
    """One field: ``(image, class truth, instance truth)``; the background is a mosaic of
    ``squares`` or, with ``red_cells = (cutouts, plasma)``, whole pasted red cells."""
    field = mosaic(squares, shape, rng) if red_cells is None else red_cell_field(*red_cells, shape, rng)
    truth = np.zeros(shape, np.int32)
    inst = np.zeros(shape, np.int32)
    diam = np.median([np.sqrt(4 * (m > 0).sum() / np.pi) for _, _, m in data])
    placed = []
    for cell_id in range(1, rng.integers(0, max_cells + 1) + 1):
        _, img, mask = data[rng.integers(len(data))]
        h, w = mask.shape
        cy, cx = ndi.center_of_mass(mask > 0)
        for _ in range(50):  # centre in the field, or cut by its edge
            c = (
                (rng.uniform(-0.25, 1.25) * shape[0], rng.uniform(-0.25, 1.25) * shape[1])
                if rng.random() < 0.3
                else (rng.uniform(0.15, 0.85) * shape[0], rng.uniform(0.15, 0.85) * shape[1])
            )
            if all(np.hypot(c[0] - p[0], c[1] - p[1]) > 1.3 * diam for p in placed):
                placed.append(c)
                _paste(field, truth, inst, cell_id, img, mask, int(c[0] - cy), int(c[1] - cx))
                break
    colour = np.mean([img[m == 2].mean(0) for _, img, m in data], axis=0)
    free = ndi.binary_dilation(inst > 0, iterations=int(0.3 * diam)) == 0
    for _ in range(n_platelets):
        ys, xs = np.nonzero(free)
        k = rng.integers(len(ys))
        radii = rng.uniform(0.1, 0.165, 2) * diam
        _platelet(field, (ys[k], xs[k]), radii, colour, rng)
    inst = _renumber(inst)
    return field, truth, inst


def _renumber(inst):
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(inst)[0]


def _touches(mask):
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def score(labels, truth, inst):
    """Matching of the predicted cells (8-connected regions) to the true ones at IoU >= 0.5."""
    pred, n_pred = ndi.label(labels > 0, np.ones((3, 3)))
    n_true = int(inst.max())
    both = np.bincount(inst.ravel() * (n_pred + 1) + pred.ravel(), minlength=(n_true + 1) * (n_pred + 1)).reshape(
        n_true + 1, n_pred + 1
    )
    t_area, p_area = both.sum(1), both.sum(0)
    cells = []
    for t in range(1, n_true + 1):
        p = int(np.argmax(both[t, 1:])) + 1 if n_pred else 0
        inter = both[t, p] if p else 0
        iou = inter / (t_area[t] + p_area[p] - inter) if p else 0.0
        if iou < 0.5:
            cells.append({"matched": False, "cut": _touches(inst == t)})
            continue
        tm, pm = inst == t, pred == p
        tn, pn = tm & (truth == 2), pm & (labels == 2)
        nc_t, nc_p = tn.sum() / tm.sum(), pn.sum() / pm.sum()
        cells.append(
            {
                "matched": True,
                "cut": _touches(tm),
                "pred": p,
                "dice": 2 * inter / (t_area[t] + p_area[p]),
                "nucleus_dice": 2 * (tn & pn).sum() / max(1, tn.sum() + pn.sum()),
                "nc_error": abs(float(nc_p - nc_t)),
            }
        )
    matched = {c["pred"] for c in cells if c["matched"]}
    false = [p for p in range(1, n_pred + 1) if p not in matched]
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "cells": cells,
        "false_cells": len(false),
        "false_areas": [int(p_area[p]) for p in false],
        "outside_share": float(((labels > 0) & (inst == 0)).mean()),
    }


def summarise(scores, seconds, pixels, cpu_seconds=None):
    cells = [c for s in scores for c in s["cells"]]
    found = [c for c in cells if c["matched"]]
    inner = [c for c in found if not c["cut"]]
    n_pred = sum(s["n_pred"] for s in scores)
    false = sum(s["false_cells"] for s in scores)
    return {
        "fields": len(scores),
        "true_cells": len(cells),
        "cut_true_cells": sum(c["cut"] for c in cells),
        "recall": len(found) / max(1, len(cells)),
        "recall_not_cut": len(inner) / max(1, sum(not c["cut"] for c in cells)),
        "precision": (n_pred - false) / max(1, n_pred),
        "false_cells_per_field": false / len(scores),
        "false_cell_areas_px": sorted(a for s in scores for a in s["false_areas"]),
        "cell_dice": float(np.mean([c["dice"] for c in found])) if found else None,
        "nucleus_dice": float(np.mean([c["nucleus_dice"] for c in found])) if found else None,
        "nc_abs_error_not_cut": float(np.mean([c["nc_error"] for c in inner])) if inner else None,
        "outside_pixel_share": float(np.mean([s["outside_share"] for s in scores])),
        "seconds_per_megapixel": float(np.sum(seconds) / (np.sum(pixels) / 1e6)),
        "seconds_per_field_median": float(np.median(seconds)),
        # CPU time of the one-thread process: what the field costs on a quiet core
        "cpu_seconds_per_field_median": float(np.median(cpu_seconds)) if cpu_seconds else None,
        "cpu_seconds_per_field_p90": float(np.percentile(cpu_seconds, 90)) if cpu_seconds else None,
        "fields_without_white_cell": sum(s["n_true"] == 0 for s in scores),
        "false_cells_in_fields_without_white_cell": sum(s["false_cells"] for s in scores if s["n_true"] == 0),
        # per field: true cells, found, false cells, the diameter estimate (px)
        "by_field": [
            [s["n_true"], sum(c["matched"] for c in s["cells"]), s["false_cells"], round(s["diameter_estimate"], 1)]
            for s in scores
        ],
    }


#: fewest whole red cells a source must give for the ``red-cells`` background
MIN_RED_CUTOUTS = 3


def run_fields(name, n_fields, shape, seed, max_cells, platelets, background="mosaic"):
    from napari_vptv.api import segment_image

    data = held_out(name)
    diam = np.median([np.sqrt(4 * (m > 0).sum() / np.pi) for _, _, m in data])
    squares = background_squares(data, max(16, int(round(0.4 * diam))))
    red_cells = None
    if background == "red-cells":
        red_cells = red_cell_cutouts(data, diam)
        if len(red_cells[0]) < MIN_RED_CUTOUTS:  # red cells too pale to cut out: the mosaic
            red_cells, background = None, "mosaic"
    rng = np.random.default_rng(seed)
    runs = {True: ([], [], []), False: ([], [], [])}
    for _ in range(n_fields):
        field, truth, inst = compose(data, squares, shape, rng, max_cells, int(rng.integers(*platelets)), red_cells)
        for rule in (True, False):
            t, cpu = time.perf_counter(), time.process_time()
            result = segment_image(field, white_cell_rule=rule)
            runs[rule][1].append(time.perf_counter() - t)
            runs[rule][2].append(time.process_time() - cpu)
            runs[rule][0].append(
                {
                    **score(result.labels, truth, inst),
                    "diameter_estimate": float(getattr(result, "diameter", 0.0) or 0.0),
                }
            )
    pixels = [shape[0] * shape[1]] * n_fields
    crop_s, crop_cpu, crop_px = [], [], []
    for _, img, _ in data:
        t, cpu = time.perf_counter(), time.process_time()
        segment_image(img)
        crop_s.append(time.perf_counter() - t)
        crop_cpu.append(time.process_time() - cpu)
        crop_px.append(img.shape[0] * img.shape[1])
    return {
        "source": name,
        "held_out_images": len(data),
        "median_cell_diameter_px": float(diam),
        "background_square_px": squares[0][0].shape[0],
        "background_images": len(squares),
        "background": background,
        "red_cell_cutouts": len(red_cells[0]) if red_cells else 0,
        "rule_on": summarise(*runs[True][:2], pixels, runs[True][2]),
        "rule_off": summarise(*runs[False][:2], pixels, runs[False][2]),
        "crops_seconds_per_megapixel": float(np.sum(crop_s) / (np.sum(crop_px) / 1e6)),
        "crops_seconds_median": float(np.median(crop_s)),
        "crops_cpu_seconds_per_megapixel": float(np.sum(crop_cpu) / (np.sum(crop_px) / 1e6)),
    }


def crop_accuracy(name):
    """Held-out pixel accuracy of the single crops, white-cell rule on and off."""
    from napari_vptv.api import segment_image

    data = held_out(name)
    acc = {
        rule: [float((segment_image(img, white_cell_rule=rule).labels == m).mean()) for _, img, m in data]
        for rule in (True, False)
    }
    return {
        "images": len(data),
        "accuracy_rule_on": float(np.mean(acc[True])),
        "accuracy_rule_off": float(np.mean(acc[False])),
        "images_changed": int(sum(a != b for a, b in zip(acc[True], acc[False]))),
    }


def _machine():
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="wbc,wbc-d1")
    ap.add_argument("--fields", type=int, default=20, help="fields per source")
    ap.add_argument("--size", default="480x640", help="field HxW")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--background",
        choices=("mosaic", "red-cells"),
        default="mosaic",
        help="field background: a mosaic of white-cell-free squares, or whole red cells cut out of "
        "the held-out images and pasted on their plasma colour (sources with too few whole red "
        "cells fall back to the mosaic)",
    )
    ap.add_argument("--crops", action="store_true", help="also the crops' held-out pixel accuracy, rule on / off")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fields.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in args.size.split("x"))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "command": "python benchmarks/bench_fields.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "machine": _machine(),
        "field_shape": shape,
        "sources": {},
    }
    for name in args.sources.split(","):
        # cells per field scale with the field's room for them; 3-10 platelets
        diam = np.median([np.sqrt(4 * (m > 0).sum() / np.pi) for _, _, m in held_out(name)])
        max_cells = int(np.clip(shape[0] * shape[1] / (2.5 * diam) ** 2, 1, 8))
        r = run_fields(name, args.fields, shape, args.seed, max_cells, (3, 11), args.background)
        r["max_cells_per_field"] = max_cells
        if args.crops:
            r["crops"] = crop_accuracy(name)
        result["sources"][name] = r
        print(name, {k: v for k, v in r["rule_on"].items() if k not in ("false_cell_areas_px", "by_field")}, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
