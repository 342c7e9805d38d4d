"""Digests of the labels the plugin produces, to show that a refactoring changes no output.

Segments the bundled samples and the first ``--n`` images of a data folder with each
method, hashes every label image (SHA-256 of its bytes) and writes them to JSON. Run it
before and after a change and compare::

    python benchmarks/label_digests.py --data-root ../shared/data --out /tmp/before.json
    # ... change the code ...
    python benchmarks/label_digests.py --data-root ../shared/data --out /tmp/after.json --compare /tmp/before.json

``--compare`` prints every image whose labels differ and exits with status 1 if any do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from napari_vptv import SegmentOptions, segment_image
from napari_vptv.core.io.imread import read_image

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "napari_vptv" / "samples"


def inputs(data_root, n):
    """``(name, path)`` of the bundled samples, then the first ``n`` images of ``wbc``."""
    paths = sorted(p for p in SAMPLES.glob("*.png") if not p.stem.endswith("_mask"))
    if data_root:
        paths += sorted((Path(data_root) / "wbc" / "images").glob("*"))[:n]
    return [(p.stem if p.parent == SAMPLES else f"wbc/{p.stem}", p) for p in paths]


def digests(data_root, n, methods):
    out = {}
    for method in methods:
        options = SegmentOptions(method=method)
        for name, path in inputs(data_root, n):
            labels = np.ascontiguousarray(segment_image(read_image(path), options).labels)
            out[f"{method}:{name}"] = hashlib.sha256(labels.tobytes()).hexdigest()
            print(method, name, out[f"{method}:{name}"][:12], flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", help="folder holding wbc/images (optional)")
    ap.add_argument("--n", type=int, default=20, help="images of wbc/images to include")
    ap.add_argument("--methods", default="vptv-adapted,vptv-unet,vptv")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="an earlier --out to compare with")
    args = ap.parse_args(argv)
    result = digests(args.data_root, args.n, args.methods.split(","))
    Path(args.out).write_text(json.dumps(result, indent=1))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    changed = sorted(k for k in before.keys() | result.keys() if before.get(k) != result.get(k))
    for key in changed:
        print("differs:", key)
    print(f"{len(result) - len(changed)} of {len(result)} label images identical")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
