"""Where does the image's edge lie relative to an accurate mask? (tuning split only)

For every object of the *true* mask (the ``identity`` corruption) this prints the
area, relative to the true area, of

* the *prior* ``M'`` of :func:`napari_vptv.core.correct.evidence.object_evidence`
  (the mask moved to the strongest edge of the image within the band),
* ``t > 1/2`` (the half level of the evidence, where the VPTV boundary goes unless
  the trust ``beta`` holds it),
* the corrected object of ``correct_mask`` (defaults) and of the seeded-watershed peer,

and the mean over objects. Ratios above 1 mean the image's edge lies outside the
annotated boundary. Run by hand::

    python benchmarks/diag_correct_edges.py --dataset wbc-d1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from bench_correct_nuclei import load  # noqa: E402
from correct_peers import seeded_watershed  # noqa: E402


def main(argv=None):
    import torch

    from napari_vptv.core.correct import evidence as ce
    from napari_vptv.core.correct.mask import correct_mask
    from napari_vptv.core.solver.segment import prepare_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["synth", "wbc", "wbc-d1"], default="wbc-d1")
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ratios = []
    print("image id | area / true area: prior, t > 1/2, VPTV, watershed")
    for key, img, ch, grey, truth in load(args.dataset, "tune", args.data, args.every):
        feats = prepare_image(img, ch)
        feats = np.stack([ndi.gaussian_filter(c, 1.0) for c in feats])
        out, peer = correct_mask(img, truth, channel_axis=ch), seeded_watershed(grey, truth)
        for i, s in enumerate(ndi.find_objects(truth), start=1):
            if s is None:
                continue
            sl = tuple(slice(max(a.start - 18, 0), a.stop + 18) for a in s)
            obj = truth[sl] == i
            other = (truth[sl] != 0) & ~obj
            band = ce.object_band(int(obj.sum()), obj.ndim)
            ev = ce.object_evidence(feats[(slice(None),) + sl], obj, other, band)
            t, prior = ev.t, ev.prior
            if t is None:
                continue
            area = obj.sum()
            r = [
                prior.sum() / area,
                ((t > 0.5) & ~other).sum() / area,
                (out == i).sum() / area,
                (peer == i).sum() / area,
            ]
            ratios.append(r)
            print(key, i, " ".join(f"{v:.2f}" for v in r), flush=True)
    print("mean", " ".join(f"{v:.3f}" for v in np.mean(ratios, 0)), f"({len(ratios)} objects)")


if __name__ == "__main__":
    main()
