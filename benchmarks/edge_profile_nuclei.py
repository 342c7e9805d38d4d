"""Where do annotators draw a nucleus's edge? The intensity profile across annotated boundaries.

For every annotated nucleus (2-D: the nucleus; 3-D: every plane's cross-section,
in-plane distances, as z is sampled more coarsely) the image is averaged on the level
sets of the signed distance ``sd`` to the annotated boundary (pixel centres; ``sd <
0`` inside, half-pixel bins, other nuclei excluded). From that profile ``P(sd)``:

* levels: ``I_in`` = median inside deeper than 3 px, ``I_out`` = median of the ring
  3-7 px outside (the local background);
* ``level at annotation``: ``(P(0) - I_out) / (I_in - I_out)`` -- 0.5 means the
  annotated edge is the half-maximum, small values an outer-rim outline;
* positions (px, relative to the annotated boundary, > 0 = outside it) of the
  half-maximum crossing, of the strongest gradient (steepest descent of ``P``,
  sub-pixel by a parabola), of the *outer foot* (where ``P`` has fallen to 10 % of
  the step above ``I_out``) and of the tangent foot (the steepest tangent meets
  ``I_out``).

Printed as medians and quartiles over nuclei, for the raw image and the image
smoothed with sigma 1 (what the correction works on), per split (see
``stardist_data.py``: ``tune`` = left half of the 2-D nuclei, ``heldout`` = right
half, ``3d`` = the stack). Run by hand::

    python benchmarks/edge_profile_nuclei.py --out benchmarks/results/edge_profile_stardist.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from stardist_data import load_stardist, split_ids  # noqa: E402

OFFSETS = np.arange(-6.0, 8.01, 0.5)


def profile(img, obj, other):
    """Mean of ``img`` on the level sets ``sd = o`` (``|sd - o| <= 0.5``) of one 2-D object crop."""
    sd = np.where(obj, 0.5 - ndi.distance_transform_edt(obj), ndi.distance_transform_edt(~obj) - 0.5)
    keep = ~other
    p = np.full(OFFSETS.size, np.nan)
    for i, o in enumerate(OFFSETS):
        sel = keep & (np.abs(sd - o) <= 0.5)
        if sel.sum() >= 3:
            p[i] = img[sel].mean()
    core = obj & (sd <= -3)
    ring = keep & (sd >= 3) & (sd <= 7)
    if core.sum() < 5 or ring.sum() < 5:
        return None
    return p, float(np.median(img[core])), float(np.median(img[ring]))


def _crossing(p, level, start):
    """First ``o >= OFFSETS[start]`` where ``p`` falls below ``level`` (linear interpolation)."""
    for i in range(start, p.size - 1):
        if p[i] >= level > p[i + 1]:
            return OFFSETS[i] + (p[i] - level) / (p[i] - p[i + 1]) * (OFFSETS[1] - OFFSETS[0])
    return np.nan


def positions(p, i_in, i_out):
    """Level at the annotation and the positions of half-maximum, gradient, outer and tangent foot."""
    if np.isnan(p[OFFSETS >= -3]).any() or i_in - i_out <= 0:
        return None
    p = np.where(np.isnan(p), i_in, p)  # deep inside a small nucleus: no pixels
    step = i_in - i_out
    zero = int(np.argmin(np.abs(OFFSETS)))
    level = (p[zero] - i_out) / step
    slope = -np.gradient(p, OFFSETS)
    win = np.nonzero(np.abs(OFFSETS) <= 4)[0]
    k = win[np.argmax(slope[win])]
    a, b, c = slope[k - 1], slope[k], slope[k + 1]
    d = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    grad = OFFSETS[k] + np.clip(d, -0.5, 0.5) * 0.5
    start = int(np.searchsorted(OFFSETS, -3.0))
    half = _crossing(p, i_out + 0.5 * step, start)
    foot = _crossing(p, i_out + 0.1 * step, start)
    p_at = np.interp(grad, OFFSETS, p)
    tangent = grad + (p_at - i_out) / max(slope[k], 1e-9)
    return dict(
        level=float(level),
        half_max=float(half),
        max_gradient=float(grad),
        outer_foot=float(foot),
        tangent_foot=float(tangent),
        contrast=float(step),
    )


def measure(img, labels, ids, planes):
    """Per object (and plane) measurements on the raw and sigma-1 image."""
    out = []
    smooth = ndi.gaussian_filter(img.astype(np.float64), (0, 1, 1) if planes else 1.0)
    raw = img.astype(np.float64)
    stack_raw = raw if planes else raw[None]
    stack_sm = smooth if planes else smooth[None]
    stack_lab = labels if planes else labels[None]
    for z in range(stack_lab.shape[0]):
        lab = stack_lab[z]
        for i, s in enumerate(ndi.find_objects(lab), start=1):
            if s is None or i not in ids:
                continue
            sl = tuple(slice(max(a.start - 9, 0), a.stop + 9) for a in s)
            obj = lab[sl] == i
            other = (lab[sl] != 0) & ~obj
            area = int(obj.sum())
            if area < 30:
                continue
            rec = dict(id=int(i), plane=int(z), area=area)
            for name, im in (("raw", stack_raw[z]), ("smooth", stack_sm[z])):
                pr = profile(im[sl], obj, other)
                res = positions(*pr) if pr is not None else None
                if res is None:
                    break
                rec[name] = res
            else:
                out.append(rec)
    return out


def summary(recs):
    """Median and quartiles of every measurement."""
    res = {"n": len(recs)}
    for name in ("raw", "smooth"):
        for key in ("level", "half_max", "max_gradient", "outer_foot", "tangent_foot"):
            v = np.array([r[name][key] for r in recs], float)
            v = v[np.isfinite(v)]
            res[f"{name}:{key}"] = [float(np.percentile(v, q)) for q in (25, 50, 75)] if v.size else None
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    results = {}
    img2, lab2 = load_stardist(2, args.wheel)
    img3, lab3 = load_stardist(3, args.wheel)
    for name, img, lab, split in (
        ("2d-tune", img2, lab2, "tune"),
        ("2d-heldout", img2, lab2, "heldout"),
        ("3d", img3, lab3, "tune"),
    ):
        ids = set(split_ids(lab, split).tolist())
        recs = measure(img, lab, ids, planes=lab.ndim == 3)
        small = [r for r in recs if r["area"] < 300]
        results[name] = dict(
            all=summary(recs), small=summary(small), large=summary([r for r in recs if r["area"] >= 300])
        )
        print(
            f"\n{name}: {len(recs)} nuclei{' cross-sections' if lab.ndim == 3 else ''} "
            f"({len(small)} under 300 px); median [quartiles], px from the annotated boundary (> 0 = outside)"
        )
        for k, v in results[name]["all"].items():
            if k != "n" and v is not None:
                print(f"  {k:20s} {v[1]:+.2f}  [{v[0]:+.2f}, {v[2]:+.2f}]")
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        commit = commit or os.environ.get("VPTV_CODE_COMMIT", "")  # a `git archive` has no .git
        Path(args.out).write_text(
            json.dumps(dict(command="python " + " ".join(sys.argv), commit=commit, results=results), indent=1)
        )


if __name__ == "__main__":
    main()
