"""Time of the default method per 300x300 image, one thread, CPU time (goal: <= 150 ms).

* ``segment_image`` with every default on 30 CellaVision images (the U-net initialiser with
  its diameter estimate, both solves, the nucleus rule);
* the same pipeline seeded by the leave-one-source-out U-net trained on wbc-d1 only
  (``vptv train --config benchmarks/configs/train-loso-wp-train-wbc-d1.json --out
  runs/loso-wp-wbc-d1``) on every third CellaVision image: images of a source that
  network never saw.

Run by hand on a quiet machine::

    python benchmarks/time_default.py --data-root ../shared/data --loso-run runs/loso-wp-wbc-d1 \
        --out benchmarks/results/time_default.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shifts as S  # noqa: E402  (benchmarks/shifts.py: machine(), commit())


def cpu_ms(run, images):
    """CPU milliseconds of ``run(image)`` per image."""
    out = []
    for im in images:
        t = time.process_time()
        run(im)
        out.append(time.process_time() - t)
    return np.asarray(out) * 1e3


def summary(ms):
    return {
        "mean": float(ms.mean()),
        "median": float(np.median(ms)),
        "p90": float(np.percentile(ms, 90)),
        "max": float(ms.max()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--loso-run", required=True, help="run folder of the U-net trained on wbc-d1 only")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from skimage.io import imread

    from napari_vptv.api import segment_adapted, segment_image

    torch.set_num_threads(1)
    images = [imread(f)[..., :3] for f in sorted((Path(args.data_root) / "wbc" / "images").glob("*.png"))]
    segment_image(images[0])  # warm-up: numba cache, weights
    default = cpu_ms(segment_image, images[1:31])

    def unseen(img):  # the default method ("vptv-adapted") itself, seeded by the wbc-d1-only U-net
        return segment_adapted(img, network=args.loso_run).labels

    unseen(images[0])  # warm-up: load the run's weights

    out = {
        "command": "python " + " ".join(sys.argv),
        "commit": S.commit(),
        "machine": S.machine(),
        "load_average_end": os.getloadavg()[0],
        "default_segment_image_wbc_30_images_cpu_ms": summary(default),
        "unseen_wbc_d1_only_unet_30_images_cpu_ms": summary(cpu_ms(unseen, images[::3])),
    }
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
