"""Test-time stain normalisation (Macenko et al. 2009) for the leave-one-source-out test.

Each test image's two dominant stain vectors in optical density (the extreme angles
of its stained pixels in the plane of the two main eigenvectors; empty slide = the
image's white point, as the networks' input normalisation) are mapped onto the
training source's median stain vectors and 99th-percentile concentrations, then the
leave-one-source-out U-net (white-point input) segments the re-stained image. Tried
and not adopted (docs/results.md): it lost in both directions.

Run by hand::

    python benchmarks/try_stain_normalisation.py --data-root ../shared/data --train wbc-d1 --test wbc \
        --run runs/loso-wp-wbc-d1 --out benchmarks/results/try_macenko_train-wbc-d1_test-wbc.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from napari_vptv.nn.data import white_point
from napari_vptv.nn.predict import predict_cells
from napari_vptv.nn.sources import load_source
from napari_vptv.nn.train import segmentation_scores
from napari_vptv.nn.weights import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shifts as S  # noqa: E402  (benchmarks/shifts.py: machine(), commit())

BETA, ALPHA = 0.15, 1.0


def od_of(rgb, io):
    return -np.log(np.maximum(rgb.astype(np.float64), 1.0) / io)


def stains(rgb):
    io = 255.0 * white_point(rgb).astype(np.float64)
    od = od_of(rgb, io).reshape(-1, 3)
    odh = od[(od > BETA).any(1)]
    if len(odh) < 50:
        return None
    w, v = np.linalg.eigh(np.cov(odh.T))
    v = v[:, [2, 1]]
    if v[0, 0] < 0:
        v[:, 0] *= -1
    if v[0, 1] < 0:
        v[:, 1] *= -1
    t = odh @ v
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, ALPHA), np.percentile(phi, 100 - ALPHA)
    a = v @ np.array([np.cos(lo), np.sin(lo)])
    b = v @ np.array([np.cos(hi), np.sin(hi)])
    # haematoxylin-like first: more red-channel OD (absorbs red -> looks blue/purple)
    he = np.array([a, b]) if a[0] > b[0] else np.array([b, a])
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    c = np.linalg.lstsq(he.T, od.T, rcond=None)[0]  # (2, N)
    cmax = np.percentile(c, 99, axis=1)
    return he, cmax, io, c


def normalise(rgb, ref_he, ref_cmax):
    s = stains(rgb)
    if s is None:
        return rgb
    he, cmax, io, c = s
    c = c * (ref_cmax / np.maximum(cmax, 1e-6))[:, None]
    od = (ref_he.T @ c).T.reshape(rgb.shape)
    out = io * np.exp(-od)
    return np.clip(out, 0, 255).astype(np.uint8)


def reference(samples):
    """Median stain vectors and max concentrations over a source's images."""
    hes, cms = [], []
    for s in samples:
        r = stains(s.image)
        if r is None:
            continue
        hes.append(r[0])
        cms.append(r[1])
    he = np.median(hes, 0)
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    return he, np.median(cms, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--train", required=True, help="the source the run was trained on (stain reference)")
    ap.add_argument("--test", required=True, help="the unseen source, every image scored")
    ap.add_argument("--run", required=True, help="training-run folder of the leave-one-source-out U-net")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.data_root)
    tr, te = load_source(root / args.train, args.train), load_source(root / args.test, args.test)
    model, meta = load_model(args.run)
    ref_he, ref_cm = reference(tr.samples)
    out = {
        "command": "python " + " ".join(sys.argv),
        "commit": S.commit(),
        "machine": S.machine(),
        "reference_stains": ref_he.tolist(),
        "reference_max_concentrations": ref_cm.tolist(),
        "scores": {},
    }
    for mode in ["plain", "macenko"]:
        preds = [
            predict_cells(model, meta, s.image if mode == "plain" else normalise(s.image, ref_he, ref_cm)).labels
            for s in te.samples
        ]
        sc = segmentation_scores(preds, [s.labels for s in te.samples])
        out["scores"][mode] = {k: v for k, v in sc.items() if not isinstance(v, list)}
        print(mode, out["scores"][mode], flush=True)
    out["load_average_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
