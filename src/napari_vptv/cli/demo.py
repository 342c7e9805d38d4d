"""``vptv demo``: the WBC preset on the bundled samples; labels, overlays, accuracy.

The demo can be run again and again: it writes into its own folder (``--out``,
default ``vptv-demo``) and keeps a manifest (``.vptv-demo.json``) of the files it
wrote with their SHA-256. On a rerun it replaces exactly those files, and only if
they are unchanged; any other file of the same name is left alone (the run stops
before any work and says so) unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .common import CLIError, echo, fmt_vec
from .solver_options import add_solver_options, options_from_args

__all__ = ["NAME", "add_parser", "run", "overlay_image", "comparison_figure", "MANIFEST"]

NAME = "demo"
#: Name of the demo's manifest in its output folder.
MANIFEST = ".vptv-demo.json"
#: Overlay colours (RGB 0..1) of the classes; class 0 is not tinted.
PALETTE = np.array([[0, 0, 0], [1, 0.85, 0], [0.85, 0, 0.85], [0, 0.8, 0.9], [0.2, 0.9, 0.2], [1, 0.5, 0]], float)

_EXPECT = (
    "What the numbers mean: pixel accuracy is the share of pixels whose class (background, cytoplasm, "
    "nucleus) equals the ground truth's. The README's headline figures are means over many images "
    "(0.982-0.989 for the variational default and 0.981-0.987 for the networks on 54 held-out validation "
    "images of two labs, per lab); three samples are a smoke test, not a benchmark. Expect each sample near "
    "0.97-0.99 with either method; a point of difference between the methods on one image is normal. "
    "The neutrophil (004) is the hardest: its pale, granular cytoplasm has almost the colour of the "
    "background (see its cytoplasm Dice, the second Dice value)."
)


def add_parser(sub) -> None:
    """Register ``vptv demo`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "demo",
        help="segment the bundled WBC samples; write labels and overlays",
        description=(
            "Run the main job on the bundled white blood cell samples (WBC preset): writes "
            "wbc_<id>_labels.png (grey 0/128/255 like the ground truth), wbc_<id>_overlay.png (image with "
            "coloured classes and boundaries: cytoplasm yellow, nucleus magenta, black boundaries) and "
            "wbc_<id>_compare.png (image | --method | the --compare network | ground truth, with a legend), and prints the "
            "achieved class fractions and the pixel accuracy against the shipped ground truth. Rerunning "
            "replaces only the demo's own unchanged outputs (listed in --out/.vptv-demo.json)."
        ),
    )
    p.add_argument("--out", default="vptv-demo", metavar="DIR", help="output folder (default: %(default)s)")
    # the samples are white blood cells with 3-class ground truth: the WBC preset, 3 classes
    add_solver_options(p, omit=("preset", "n_classes"))
    p.add_argument(
        "--compare",
        default="vptv-unet",
        choices=["vptv-unet", "unet", "none"],
        help="network shown next to the result of --method, at its own settings (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="also replace files of the same names that the demo did not write (default: refuse)",
    )
    p.set_defaults(func=run)


def overlay_image(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 overlay: classes > 0 tinted over the colour image, class boundaries drawn.

    Class 1 yellow, 2 magenta, 3 cyan, ... (class 0 untinted); boundaries by
    :func:`skimage.segmentation.mark_boundaries`.
    """
    from skimage.segmentation import mark_boundaries
    from skimage.util import img_as_float

    img = img_as_float(image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1))
    palette = PALETTE
    lab = np.asarray(labels).astype(np.intp)
    colours = palette[np.where(lab > 0, (lab - 1) % (len(palette) - 1) + 1, 0)]
    a = np.where(lab[..., None] > 0, alpha, 0.0)
    tinted = img * (1 - a) + colours * a
    edged = mark_boundaries(tinted, lab, color=(0, 0, 0), mode="inner")
    return np.clip(np.round(edged * 255), 0, 255).astype(np.uint8)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(out: Path) -> dict:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return dict(data.get("files", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _check_targets(out: Path, names, manifest: dict, overwrite: bool) -> None:
    """Stop before any work if a target exists that is not the demo's own unchanged output."""
    for name in names:
        path = out / name
        if path.exists() and not overwrite and manifest.get(name) != _sha256(path):
            raise CLIError(
                f"'{path}' already exists and was not written by an earlier demo (or was changed since); "
                "use --overwrite to replace it, or another --out"
            )


def _write_png(out: Path, name: str, array: np.ndarray, manifest: dict) -> Path:
    """Atomic write of one demo PNG, recorded in the manifest at once (a killed run stays rerunnable)."""
    import imageio.v3 as iio

    from ..core.io.outputs import OutputGuard

    path = OutputGuard(overwrite=True).write(out / name, lambda tmp: iio.imwrite(tmp, array, extension=".png"))
    manifest[name] = _sha256(path)
    text = json.dumps({"files": manifest}, indent=1, sort_keys=True)
    OutputGuard(overwrite=True).write(out / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def comparison_figure(panels, titles, class_names) -> np.ndarray:
    """Panels side by side with a title over each and a colour legend below (RGB uint8)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = panels[0].shape[:2]
    pad, title_h, legend_h = 6, 22, 26
    width = len(panels) * (w + pad) + pad
    canvas = Image.new("RGB", (width, title_h + h + legend_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x = pad + i * (w + pad)
        canvas.paste(Image.fromarray(panel), (x, title_h))
        draw.text((x, 4), title, fill="black", font=font)
    x, y = pad, title_h + h + 8
    for k, name in enumerate(class_names):
        colour = tuple(int(255 * c) for c in (PALETTE[k] if k else (0.85, 0.85, 0.85)))
        draw.rectangle([x, y, x + 12, y + 12], fill=colour, outline="black")
        label = f"{name}" + (" (not tinted)" if k == 0 else "")
        draw.text((x + 16, y), label, fill="black", font=font)
        x += 24 + int(draw.textlength(label, font=font))
    draw.line([x, y + 6, x + 14, y + 6], fill="black", width=2)
    draw.text((x + 18, y), "class boundary", fill="black", font=font)
    return np.asarray(canvas)


def _score_line(name: str, s: dict) -> str:
    return (
        f"{name}: volumes {fmt_vec(s['fractions'])} (truth {fmt_vec(s['truth_fractions'])})  "
        f"accuracy {s['accuracy']:.4f}  dice {fmt_vec(s['dice'])}"
    )


def _network_fn(args):
    """The comparison network's SegmentFn, or None (with a note) when it cannot run here."""
    if args.compare == "none" or args.compare == args.method:
        return None
    from ..api import SegmentFn

    try:
        # the network at its own settings: the volume and solver options are the main method's
        return SegmentFn(
            options_from_args(
                args,
                preset="wbc",
                method=args.compare,
                volume_mode=None,
                volumes=None,
                lower=None,
                upper=None,
                epsilon=None,
                tv_weight=None,
                edge=None,
                max_num_iter=None,
                model="",
            )
        )
    except (ValueError, RuntimeError, ImportError) as exc:
        echo(f"(no network comparison: {exc})")
        return None


def run(args) -> int:
    """Run ``vptv demo``; returns the exit status."""
    from ..api import SegmentFn
    from ..core.io.files import labels_to_wbc_grey
    from ..core.io.samples import CLASS_NAMES, load_sample, sample_ids, sample_info
    from ..core.scoring.metrics import evaluate as score

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out '{out}' exists and is not a folder")
    fn = SegmentFn(options_from_args(args, preset="wbc"))
    args.method = fn.resolved_method(rgb=True)  # the samples are RGB: reports name the method that runs
    net = _network_fn(args)
    kinds = ("labels", "overlay", "compare")
    manifest = _read_manifest(out)
    _check_targets(out, [f"wbc_{sid}_{kind}.png" for sid in sample_ids() for kind in kinds], manifest, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    accs, net_accs = [], []
    echo(f"method {args.method}, WBC preset; classes: {', '.join(CLASS_NAMES)}")
    for sid in sample_ids():
        info = sample_info(sid)
        image, truth = load_sample(sid)
        labels = np.asarray(fn(image, channel_axis=-1).labels)
        s = score(labels, truth, 3)
        accs.append(s["accuracy"])
        echo(_score_line(f"{info['name']} {args.method}", s))
        panels, titles = [image[..., :3], overlay_image(image, labels)], ["image", args.method]
        if net is not None:
            net_labels = np.asarray(net(image, channel_axis=-1).labels)
            ns = score(net_labels, truth, 3)
            net_accs.append(ns["accuracy"])
            echo(_score_line(f"{info['name']} {args.compare}", ns))
            panels.append(overlay_image(image, net_labels))
            titles.append(args.compare)
        panels.append(overlay_image(image, truth))
        titles.append("ground truth")
        pngs = {
            f"wbc_{sid}_labels.png": labels_to_wbc_grey(labels),
            f"wbc_{sid}_overlay.png": panels[1],
            f"wbc_{sid}_compare.png": comparison_figure(panels, titles, CLASS_NAMES),
        }
        written = [_write_png(out, name, array, manifest) for name, array in pngs.items()]
        echo(f"    wrote {', '.join(str(p) for p in written)}")
    echo("")
    echo(_EXPECT)
    if net_accs:
        echo(f"mean pixel accuracy of {args.compare}: {float(np.mean(net_accs)):.4f}")
    echo(f"mean pixel accuracy: {float(np.mean(accs)):.4f}")
    return 0
