"""Wall time of ``vptv correct`` vs. the seeded-watershed peer, process start included.

Both run as fresh processes on the same files (a 1024 x 1024 synthetic fluorescence
image with ~150 nuclei, mask dilated by 3 px): read image and mask, correct, write the
result. Median of ``--repeats`` runs. Run by hand::

    python benchmarks/time_correct_cli.py --out benchmarks/results/time_correct_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

PEER = """
import sys; sys.path.insert(0, {here!r})
import numpy as np, tifffile
from correct_peers import seeded_watershed
img = tifffile.imread({img!r}).astype(np.float32); lab = tifffile.imread({mask!r})
grey = (img - img.min()) / (img.max() - img.min())
tifffile.imwrite({out!r}, seeded_watershed(grey, lab))
"""


def main(argv=None):
    import tifffile
    from skimage.segmentation import expand_labels
    from synth_nuclei import synth_nuclei

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="OMP/torch threads of the child processes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    img, truth = synth_nuclei(args.seed, (1024, 1024), 150)
    mask = expand_labels(truth, 3).astype(np.uint16)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}  # may already be set in the caller's environment
    times = {"vptv": [], "watershed": []}
    with tempfile.TemporaryDirectory() as d:
        ip, mp = str(Path(d) / "img.tif"), str(Path(d) / "mask.tif")
        tifffile.imwrite(ip, img)
        tifffile.imwrite(mp, mask)
        for r in range(args.repeats):
            for name in times:
                out = str(Path(d) / f"{name}{r}.tif")
                if name == "vptv":
                    cmd = [str(Path(sys.executable).parent / "vptv"), "correct", ip, mp, "--out", out]
                else:
                    cmd = [sys.executable, "-c", PEER.format(here=str(HERE), img=ip, mask=mp, out=out)]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    res = {k: float(np.median(v)) for k, v in times.items()}
    res["ratio"] = res["vptv"] / res["watershed"]
    print(json.dumps(dict(n_nuclei=int(truth.max()), times=times, median=res), indent=1))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                dict(command="python " + " ".join(sys.argv), n_nuclei=int(truth.max()), times=times, median=res),
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
