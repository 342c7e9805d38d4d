"""``vptv demo``: the WBC preset on the bundled samples; labels, overlays, accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import CLIError, echo, fmt_vec, positive_int
from .solver_options import METHOD_HELP, options_from_args

__all__ = ["NAME", "add_parser", "run", "overlay_image"]

NAME = "demo"


def add_parser(sub) -> None:
    """Register ``vptv demo`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "demo",
        help="segment the bundled WBC samples; write labels and overlays",
        description=(
            "Run the main job on the bundled white blood cell samples (WBC preset): writes "
            "<id>_labels.png (grey 0/128/255 like the ground truth) and <id>_overlay.png (image with "
            "coloured classes and boundaries), prints the achieved class fractions and the pixel "
            "accuracy against the shipped ground truth."
        ),
    )
    p.add_argument("--out", default="vptv-demo", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--method", choices=["vptv", "unet", "vptv-unet"], default="vptv", help=METHOD_HELP)
    p.add_argument(
        "--volume-mode",
        choices=["interval", "exact", "none"],
        default=None,
        help="volume constraint (default: the preset's)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads (default: torch's)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing demo outputs")
    p.set_defaults(func=run)


def overlay_image(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 overlay: classes > 0 tinted over the colour image, class boundaries drawn.

    Class 1 yellow, 2 magenta, 3 cyan, ... (class 0 untinted); boundaries by
    :func:`skimage.segmentation.mark_boundaries`.
    """
    from skimage.segmentation import mark_boundaries
    from skimage.util import img_as_float

    img = img_as_float(image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1))
    palette = np.array(
        [[0, 0, 0], [1, 0.85, 0], [0.85, 0, 0.85], [0, 0.8, 0.9], [0.2, 0.9, 0.2], [1, 0.5, 0]], dtype=float
    )
    lab = np.asarray(labels).astype(np.intp)
    colours = palette[np.where(lab > 0, (lab - 1) % (len(palette) - 1) + 1, 0)]
    a = np.where(lab[..., None] > 0, alpha, 0.0)
    tinted = img * (1 - a) + colours * a
    edged = mark_boundaries(tinted, lab, color=(0, 0, 0), mode="inner")
    return np.clip(np.round(edged * 255), 0, 255).astype(np.uint8)


def run(args) -> int:
    """Run ``vptv demo``; returns the exit status."""
    import imageio.v3 as iio

    from ..api import SegmentFn
    from ..core.io import write_labels
    from ..core.metrics import evaluate as score
    from ..core.samples import CLASS_NAMES, load_sample, sample_ids, sample_info

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out '{out}' exists and is not a folder")
    fn = SegmentFn(options_from_args(args, preset="wbc"))
    out.mkdir(parents=True, exist_ok=True)
    accs = []
    echo(f"method {args.method}, WBC preset; classes: {', '.join(CLASS_NAMES)}")
    for sid in sample_ids():
        info = sample_info(sid)
        lab_path = out / f"wbc_{sid}_labels.png"
        ov_path = out / f"wbc_{sid}_overlay.png"
        if not args.overwrite and (lab_path.exists() or ov_path.exists()):
            raise CLIError(f"'{lab_path}' already exists; use --overwrite or another --out")
        image, truth = load_sample(sid)
        res = fn(image, channel_axis=-1)
        labels = np.asarray(getattr(res, "labels", res))
        write_labels(lab_path, labels, wbc_grey=True)
        iio.imwrite(ov_path, overlay_image(image, labels))
        s = score(labels, truth, 3)
        accs.append(s["accuracy"])
        echo(
            f"{info['name']}: volumes {fmt_vec(s['fractions'])} (truth {fmt_vec(s['truth_fractions'])})  "
            f"accuracy {s['accuracy']:.4f}  dice {fmt_vec(s['dice'])}"
        )
        echo(f"    wrote {lab_path} and {ov_path}")
    echo(f"mean pixel accuracy: {float(np.mean(accs)):.4f}")
    return 0
