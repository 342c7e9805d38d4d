"""Summed nucleus area per image from ``vptv segment --measure`` against ground truth.

Runs ``vptv segment FOLDER --out LABELS --measure cells.csv`` (the CLI's defaults) on
the held-back validation images of one source (the ``val_ids`` the shipped model's
metadata lists for it, never trained on), sums ``nucleus_area_px`` over the cells of
each image and compares with the nucleus pixels (grey 255) of its mask::

    python benchmarks/measure_nucleus_area.py --data-root ../shared/data --source wbc \
        --out benchmarks/results/measure_nucleus_area_wbc.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_vptv.cli import main as vptv
from napari_vptv.core.io.files import read_mask


def val_ids(source: str):
    meta = json.loads((Path(__file__).resolve().parents[1] / "src/napari_vptv/models/vptv-unet.json").read_text())
    return next(s["val_ids"] for s in meta["sources"] if s["name"] == source)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--source", default="wbc")
    ap.add_argument("--out", default=None, help="JSON file for the per-image figures")
    args = ap.parse_args()
    root = Path(args.data_root) / args.source
    ids = val_ids(args.source)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for i in ids:
            os.symlink((root / "images" / f"{i}.png").resolve(), images / f"{i}.png")
        table = Path(tmp) / "cells.csv"
        argv = ["segment", str(images), "--out", str(Path(tmp) / "labels"), "--measure", str(table), "--no-progress"]
        t0 = time.perf_counter()
        code = vptv(argv)
        seconds = time.perf_counter() - t0
        with open(table, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    if code != 0:
        raise SystemExit(f"vptv segment exited with {code}")
    measured = {}
    for r in rows:
        measured[r["image"]] = measured.get(r["image"], 0.0) + float(r["nucleus_area_px"])
    per_image = []
    for i in ids:
        truth = int((read_mask(root / "masks" / f"{i}.png") == 2).sum())
        got = measured.get(f"{i}.png", 0.0)
        per_image.append(
            {"image": f"{i}.png", "measured_px": got, "truth_px": truth, "error_pct": 100.0 * (got - truth) / truth}
        )
        print(f"{i}.png  measured {got:8.0f} px  truth {truth:6d} px  {per_image[-1]['error_pct']:+6.1f} %")
    err = np.array([p["error_pct"] for p in per_image])
    summary = {
        "source": args.source,
        "images": len(ids),
        "command": "vptv "
        + " ".join(argv[:1] + ["FOLDER"] + argv[2:3] + ["LABELS"] + argv[4:5] + ["cells.csv"] + argv[6:]),
        "median_error_pct": float(np.median(err)),
        "median_abs_error_pct": float(np.median(np.abs(err))),
        "max_abs_error_pct": float(np.max(np.abs(err))),
        "within_10_pct": int(np.sum(np.abs(err) <= 10)),
        "seconds": round(seconds, 1),
        "per_image": per_image,
    }
    print(
        f"median |error| {summary['median_abs_error_pct']:.1f} % (signed {summary['median_error_pct']:+.1f} %), "
        f"max {summary['max_abs_error_pct']:.1f} %, within 10 %: {summary['within_10_pct']}/{len(ids)}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
