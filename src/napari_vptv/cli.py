"""Command line interface: ``vptv`` (also ``python -m napari_vptv``).

Subcommands::

    vptv segment INPUT... --out DIR      segment images, folders, globs, TIFF stacks
    vptv evaluate --images DIR --masks DIR   score against ground-truth masks
    vptv demo [--out DIR]                run the WBC preset on the bundled samples
    vptv correct IMAGE MASK --out FILE   snap a rough mask to the image (VPTV)
    vptv train ...                       train a WBC network (napari_vptv.nn.train)

Every error ends in one line on stderr (``vptv <command>: error: ...``) and a
non-zero exit status (2: bad command line or input, 1: some items failed, 130:
interrupted); set ``VPTV_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["main", "build_parser"]

PROG = "vptv"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (plus a hint) and exit with 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- #
# argument types
# --------------------------------------------------------------------------- #
def _floats(text: str) -> List[float]:
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.77,0.13,0.10, got {text!r}"
        ) from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    if not all(np.isfinite(vals)):
        raise argparse.ArgumentTypeError(f"numbers must be finite, got {text!r}")
    return vals


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def _fmt_vec(v) -> str:
    return " ".join(f"{float(x):.4f}" for x in np.atleast_1d(v))


# --------------------------------------------------------------------------- #
# parser
# --------------------------------------------------------------------------- #
_METHOD_HELP = (
    "vptv: the variational VPTV solver (Algorithm 1); unet / vptv-unet: the shipped "
    "white-blood-cell networks (plain softmax / VPTV-softmax head) (default: %(default)s)"
)


def _add_solver_options(p: argparse.ArgumentParser, *, default_preset: str) -> None:
    g = p.add_argument_group("segmentation")
    g.add_argument("--method", choices=["vptv", "unet", "vptv-unet"], default="vptv", help=_METHOD_HELP)
    g.add_argument("--preset", choices=["auto", "wbc", "none"], default=default_preset,
                   help="wbc: white blood cell preset (3 classes: background/cytoplasm/nucleus, learned "
                        "colour model, volume priors from the training masks); none: k-means initialised "
                        "solver; auto: wbc for RGB images when --classes is unset or 3 (default: %(default)s)")
    g.add_argument("--classes", type=int, default=None, metavar="K",
                   help="number of classes (default: 3 with the WBC preset, else 2)")
    g.add_argument("--volume-mode", choices=["exact", "interval", "none"], default=None,
                   help="exact: class fractions = --volumes (the paper); interval: --lower <= fraction "
                        "<= --upper; none: no volume constraint (default: from the options given; "
                        "the WBC preset's default is interval)")
    g.add_argument("--volumes", type=_floats, default=None, metavar="V1,V2,...",
                   help="exact class fractions, one per class, summing to 1, e.g. 0.77,0.13,0.10")
    g.add_argument("--lower", type=_floats, default=None, metavar="L1,L2,...",
                   help="lower bounds of the class fractions (interval mode)")
    g.add_argument("--upper", type=_floats, default=None, metavar="U1,U2,...",
                   help="upper bounds of the class fractions (interval mode)")
    g.add_argument("--epsilon", type=_positive_float, default=None, metavar="E",
                   help="entropic regularisation eps (eq. 11; default: the preset's / 0.01)")
    g.add_argument("--tv-weight", type=_nonneg_float, default=None, metavar="L",
                   help="TV weight lambda (eq. 11; default: the preset's / 0.02)")
    g.add_argument("--edge", action=argparse.BooleanOptionalAction, default=None,
                   help="use the edge function e(x) = 1/(1 + eps'|grad G*I|) in the TV term")
    g.add_argument("--max-iter", type=_positive_int, default=None, metavar="N",
                   help="maximum number of solver iterations (default 500)")
    g.add_argument("--seed", type=int, default=0, help="seed of the k-means initialisation (default 0)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch CPU threads for one image (default: torch's; stacks use --workers)")
    _add_diameter_option(g)


def _add_diameter_option(p) -> None:
    p.add_argument("--diameter", type=_nonneg_float, default=0.0, metavar="PX",
                   help="cell diameter in pixels for the networks; 0 estimates it automatically "
                        "(default: %(default)s)")


def _options_from_args(args, **fixed):
    """The :class:`~napari_vptv.options.SegmentOptions` of the command line (validated)."""
    from .options import SegmentOptions

    given = dict(
        method=args.method,
        preset=getattr(args, "preset", None),
        n_classes=getattr(args, "classes", None),
        volume_mode=args.volume_mode,
        volumes=getattr(args, "volumes", None),
        lower=getattr(args, "lower", None),
        upper=getattr(args, "upper", None),
        epsilon=getattr(args, "epsilon", None),
        tv_weight=getattr(args, "tv_weight", None),
        edge=getattr(args, "edge", None),
        max_num_iter=getattr(args, "max_iter", None),
        seed=getattr(args, "seed", 0),
        device=args.device,
        diameter=getattr(args, "diameter", 0.0),
    )
    given.update(fixed)
    return SegmentOptions(**given)


def _add_segment_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images, folders, globs and TIFF stacks; one label file per input",
        description=textwrap.fill(
            "Segment every INPUT (image files, folders of images, glob patterns such as 'data/*.tif', "
            "multi-page TIFF stacks) and write one label file per input into --out, with the input's "
            "stem: a PNG (or --format tif) for a 2-D image, a multi-page TIFF of the same leading "
            "shape for a stack. Labels are 0..K-1. Outputs that already exist are skipped (resume) "
            "unless --overwrite. A failing input is reported and the others continue; the exit "
            "status is 1 if any input failed."
        ),
        epilog=(
            "examples:\n"
            "  vptv segment smear.png --out labels/                      # WBC preset (RGB)\n"
            "  vptv segment data/ --out labels/ --volume-mode exact --volumes 0.77,0.13,0.10\n"
            "  vptv segment 'stacks/*.tif' --out labels/ --preset none --classes 2 \\\n"
            "      --volumes 0.8,0.2                                      # per slice\n"
            "  vptv segment big.tif --out labels/ --scheduler tcp://host:8786\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder, glob pattern or TIFF stack")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    _add_solver_options(p, default_preset="auto")
    s = p.add_argument_group("stacks and batches")
    dim = s.add_mutually_exclusive_group()
    dim.add_argument("--volume-per-slice", dest="volume3d", action="store_false", default=False,
                     help="segment stacks slice by slice; the volumes / priors apply to every 2-D "
                          "slice (default)")
    dim.add_argument("--3d", dest="volume3d", action="store_true",
                     help="segment the last three spatial axes of a stack as one 3-D volume (3-D TV; "
                          "the volumes are 3-D class fractions)")
    s.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="address of a dask.distributed scheduler (e.g. tcp://host:8786) to run the "
                        "slices of stacks on a cluster; the workers must see the input and output "
                        "folders (default: local threads)")
    s.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="threads of the local scheduler (default: the number of CPUs)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    s.add_argument("--format", choices=["png", "tif"], default="png",
                   help="format of 2-D label images (stacks are always TIFF) (default: %(default)s)")
    s.add_argument("-q", "--quiet", action="store_true", help="no per-slice volume lines for stacks")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="segment a folder of images and score them against ground-truth masks",
        description=(
            "Segment every image of --images and compare with the mask of the same stem in --masks "
            "(WBC-style grey masks 0/128/255 -> classes 0/1/2, or integer label images). Prints one "
            "line per image (id, pixel accuracy, Dice per class, volume error per class) and ends "
            "with the line 'mean pixel accuracy: 0.XXXX'. Defaults: the WBC preset."
        ),
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--masks", required=True, metavar="DIR", help="folder of masks (same file stems)")
    p.add_argument("--method", choices=["vptv", "unet", "vptv-unet"], default="vptv", help=_METHOD_HELP)
    p.add_argument("--preset", choices=["wbc", "none"], default="wbc",
                   help="wbc: the white blood cell preset; none: k-means initialised solver "
                        "(default: %(default)s)")
    p.add_argument("--volume-mode", choices=["interval", "exact", "none"], default=None,
                   help="volume constraint (default: the method's / preset's default)")
    p.add_argument("--volumes", type=_floats, default=None, metavar="V1,V2,...",
                   help="exact class fractions (with --volume-mode exact; default: training averages)")
    p.add_argument("--classes", type=int, default=None, metavar="K", help="number of classes (preset none)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's)")
    _add_diameter_option(p)
    p.add_argument("--json", metavar="FILE", default=None, help="also write all figures to a JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _add_demo_parser(sub) -> None:
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
    p.add_argument("--method", choices=["vptv", "unet", "vptv-unet"], default="vptv", help=_METHOD_HELP)
    p.add_argument("--volume-mode", choices=["interval", "exact", "none"], default=None,
                   help="volume constraint (default: the preset's)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing demo outputs")
    p.set_defaults(func=_cmd_demo)


def _add_correct_parser(sub) -> None:
    """Parser of ``vptv correct`` (the mask-correction engine's options live here)."""
    p = sub.add_parser(
        "correct",
        help="snap a rough label mask to the image's boundaries, keeping each object's area",
        description=(
            "Correct MASK (instance labels, a binary mask, or class labels with --mode semantic) "
            "with VPTV: each object keeps its area (volume), the image decides the boundary. "
            "Writes the corrected mask to --out (PNG or TIFF)."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image file (grey or RGB)")
    p.add_argument("mask", metavar="MASK", help="mask file (integer labels, binary, or WBC grey)")
    p.add_argument("--out", required=True, metavar="FILE", help="output mask file (.png or .tif)")
    p.add_argument("--mode", choices=["objects", "semantic"], default="objects",
                   help="objects: one two-phase VPTV per label id; semantic: one multi-class VPTV "
                        "(default: %(default)s)")
    p.add_argument("--volume-factor", type=_positive_float, default=None, metavar="F",
                   help="target area = mask area x F (default 1)")
    p.add_argument("--volume-tolerance", type=_nonneg_float, default=None, metavar="T",
                   help="allow areas within (1 +- T) x target (default 0: exact)")
    p.add_argument("--epsilon", type=_positive_float, default=None, metavar="E", help="eps (eq. 11)")
    p.add_argument("--tv-weight", type=_nonneg_float, default=None, metavar="L", help="lambda (eq. 11)")
    p.add_argument("--edge", action=argparse.BooleanOptionalAction, default=None,
                   help="edge-weighted TV (default: on)")
    p.add_argument("--max-iter", type=_positive_int, default=None, metavar="N", help="iterations per solve")
    p.add_argument("--margin", type=_positive_int, default=None, metavar="PX",
                   help="crop margin around each object in pixels (default: automatic)")
    p.add_argument("--mask-weight", type=_nonneg_float, default=None, metavar="B",
                   help="trust in the given mask (cost of leaving it; costs are in [0, 1]; default 0.4)")
    p.add_argument("--model", choices=["colour", "vptv-unet"], default=None,
                   help="costs from a colour model of the mask (default) or the VPTVU-net (WBC nuclei)")
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                   help="fill holes of corrected objects (default: on)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_correct)


def _add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a WBC network (U-net / VPTVU-net); options: 'vptv train --help'",
        description="Train a white blood cell network; all arguments go to napari_vptv.nn.train.",
        add_help=False,
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    """The ``vptv`` argument parser."""
    try:
        from importlib.metadata import version as _dist_version

        version = _dist_version("napari-vptv")
    except Exception:  # noqa: BLE001 - not installed (source tree)
        version = "unknown"

    parser = _Parser(
        prog=PROG,
        description="Volume-preserving TV (VPTV) segmentation and VPTVU-net, headless.",
        epilog="Run 'vptv COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_segment_parser(sub)
    _add_evaluate_parser(sub)
    _add_demo_parser(sub)
    _add_correct_parser(sub)
    _add_train_parser(sub)
    return parser


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _out(msg: str = "") -> None:
    """A result line on stdout, without breaking a progress bar."""
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(msg)
    sys.stdout.flush()


def _err(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(msg, file=sys.stderr)


def _bar(total: int, desc: str, disable: bool, unit: str = "file", leave: bool = True):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=True if disable else None, leave=leave,
                dynamic_ncols=True)


# --------------------------------------------------------------------------- #
# segment
# --------------------------------------------------------------------------- #
def _cmd_segment(args) -> int:
    from .api import SegmentFn
    from .core.batch import iter_inputs, run_batch

    if args.classes is not None and args.classes < 2:
        raise CLIError(f"--classes must be >= 2, got {args.classes}")
    fn = SegmentFn(_options_from_args(args))
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out '{out_dir}' exists and is not a folder")
    items = list(iter_inputs(args.inputs))
    scheduler, client = None, None
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise CLIError("--scheduler needs the 'distributed' package (pip install distributed)") from None
        try:
            client = Client(args.scheduler, timeout="15s", set_as_default=False)
        except Exception as exc:  # noqa: BLE001
            raise CLIError(f"cannot connect to the dask scheduler at {args.scheduler!r}: {exc}") from None
        scheduler = client
    bar = _bar(len(items), "segment", args.no_progress)

    def slice_bar(total, name):
        return _bar(total, name, args.no_progress, unit="slice", leave=False)

    def report(res):
        name = str(res.input)
        if res.status == "skipped":
            _out(f"skipped (exists) {name} -> {res.output}")
        elif res.status == "done" or res.slice_volumes:
            tag = "done" if res.status == "done" else "partial"
            if len(res.slice_volumes) == 1 and res.slice_volumes[0][0] == () and not res.failed_slices:
                _out(f"{tag} {name} -> {res.output}  volumes {_fmt_vec(res.slice_volumes[0][1])}")
            else:
                vols = np.array([v for _, v in res.slice_volumes]) if res.slice_volumes else np.zeros((0, 1))
                mean = _fmt_vec(vols.mean(axis=0)) if len(vols) else "-"
                _out(f"{tag} {name} -> {res.output}  shape {tuple(res.shape)}, "
                     f"{len(res.slice_volumes)} slice(s), mean volumes {mean}")
                if not args.quiet:
                    for idx, v in res.slice_volumes:
                        _out(f"    slice {list(idx)}: volumes {_fmt_vec(v)}")
        if res.status == "failed":
            _err(f"FAILED {name}: {res.message}")
        bar.update(1)

    try:
        summary = run_batch(
            items, out_dir, fn, fmt=args.format, overwrite=args.overwrite,
            mode="volume" if args.volume3d else "slices", scheduler=scheduler, num_workers=args.workers,
            on_result=report, progress_factory=slice_bar,
        )
    finally:
        bar.close()
        if client is not None:
            client.close()
    _out(summary.line())
    if summary.failed:
        _err(f"{len(summary.failed)} input(s) failed:")
        for r in summary.failed:
            _err(f"  {r.input}: {r.message}")
        return 1
    return 0


# --------------------------------------------------------------------------- #
# evaluate
# --------------------------------------------------------------------------- #
def _row_get(row, *keys, default=None):
    for k in keys:
        if isinstance(row, dict) and k in row:
            return row[k]
        if hasattr(row, k):
            return getattr(row, k)
    return default


def _format_row(row) -> str:
    rid = _row_get(row, "id", "image_id", "name", "image", default="?")
    rid = Path(str(rid)).stem if isinstance(rid, (str, Path)) and os.sep in str(rid) else rid
    err = _row_get(row, "error")
    if err:
        return f"{rid}  error: {err}"
    acc = float(_row_get(row, "accuracy", "pixel_accuracy", default=np.nan))
    dice = np.atleast_1d(_row_get(row, "dice", default=[]))
    verr = _row_get(row, "volume_error", default=None)
    parts = [f"{rid}", f"accuracy {acc:.4f}"]
    if dice.size:
        parts.append("dice " + " ".join(f"{float(d):.4f}" for d in dice))
    if verr is not None:
        parts.append("volume error " + " ".join(f"{float(d):.4f}" for d in np.atleast_1d(verr)))
    return "  ".join(parts)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dict__") and not isinstance(x, type):
        return _jsonable(vars(x))
    return x


def _cmd_evaluate(args) -> int:
    from .api import evaluate_folder

    options = _options_from_args(args)
    for what, d in (("--images", args.images), ("--masks", args.masks)):
        p = Path(d).expanduser()
        if not p.exists():
            raise CLIError(f"{what} folder '{p}' does not exist")
        if not p.is_dir():
            raise CLIError(f"{what} '{p}' is not a folder")
    bar = {"bar": None}

    def progress(done, total=None, *rest):
        b = bar["bar"]
        if b is None:
            b = bar["bar"] = _bar(total, "evaluate", args.no_progress, unit="image")
        b.n = int(done)
        b.refresh()

    try:
        rows, summary = evaluate_folder(args.images, args.masks, options, progress=progress)
    finally:
        if bar["bar"] is not None:
            bar["bar"].close()
    rows = list(rows)
    if not rows:
        raise CLIError(f"no images were evaluated in '{args.images}'")
    for row in rows:
        _out(_format_row(row))
    accs = [float(_row_get(r, "accuracy", "pixel_accuracy", default=np.nan)) for r in rows]
    mean_acc = _row_get(summary or {}, "mean_accuracy", "accuracy", "mean_pixel_accuracy", default=None)
    if mean_acc is None or not np.isfinite(float(mean_acc)):
        mean_acc = float(np.nanmean(accs))
    mean_acc = float(mean_acc)
    errors = [r for r in rows if _row_get(r, "error")]
    if args.json:
        jp = Path(args.json).expanduser()
        if jp.parent and not jp.parent.exists():
            jp.parent.mkdir(parents=True, exist_ok=True)
        jp.write_text(json.dumps(_jsonable({"method": args.method, "preset": args.preset,
                                            "volume_mode": args.volume_mode, "rows": rows,
                                            "summary": summary, "mean_pixel_accuracy": mean_acc}),
                                 indent=1))
    if errors:
        _err(f"{len(errors)} image(s) could not be evaluated")
    _out(f"mean pixel accuracy: {mean_acc:.4f}")
    return 1 if errors else 0


# --------------------------------------------------------------------------- #
# demo
# --------------------------------------------------------------------------- #
def overlay_image(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 overlay: classes > 0 tinted over the colour image, class boundaries drawn.

    Class 1 yellow, 2 magenta, 3 cyan, ... (class 0 untinted); boundaries by
    :func:`skimage.segmentation.mark_boundaries`.
    """
    from skimage.segmentation import mark_boundaries
    from skimage.util import img_as_float

    img = img_as_float(image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1))
    palette = np.array([[0, 0, 0], [1, 0.85, 0], [0.85, 0, 0.85], [0, 0.8, 0.9], [0.2, 0.9, 0.2],
                        [1, 0.5, 0]], dtype=float)
    lab = np.asarray(labels).astype(np.intp)
    colours = palette[np.where(lab > 0, (lab - 1) % (len(palette) - 1) + 1, 0)]
    a = np.where(lab[..., None] > 0, alpha, 0.0)
    tinted = img * (1 - a) + colours * a
    edged = mark_boundaries(tinted, lab, color=(0, 0, 0), mode="inner")
    return np.clip(np.round(edged * 255), 0, 255).astype(np.uint8)


def _cmd_demo(args) -> int:
    import imageio.v3 as iio

    from .api import SegmentFn
    from .core.io import write_labels
    from .core.metrics import evaluate as score
    from .core.samples import CLASS_NAMES, load_sample, sample_ids, sample_info

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out '{out}' exists and is not a folder")
    fn = SegmentFn(_options_from_args(args, preset="wbc"))
    out.mkdir(parents=True, exist_ok=True)
    accs = []
    _out(f"method {args.method}, WBC preset; classes: {', '.join(CLASS_NAMES)}")
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
        _out(f"{info['name']}: volumes {_fmt_vec(s['fractions'])} (truth {_fmt_vec(s['truth_fractions'])})  "
             f"accuracy {s['accuracy']:.4f}  dice {_fmt_vec(s['dice'])}")
        _out(f"    wrote {lab_path} and {ov_path}")
    _out(f"mean pixel accuracy: {float(np.mean(accs)):.4f}")
    return 0


# --------------------------------------------------------------------------- #
# correct
# --------------------------------------------------------------------------- #
def _cmd_correct(args) -> int:
    import inspect

    from .core.io import read_image, read_mask, write_labels

    try:
        from .core.correct import correct_mask
    except ImportError as exc:
        raise CLIError(f"the mask-correction module is not available ({exc})") from None
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise CLIError(f"'{out}' already exists; use --overwrite to replace it")
    if out.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise CLIError(f"--out must be a .png or .tif file, got '{out}'")
    image = read_image(args.image)
    mask = read_mask(args.mask)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    if rgb:
        image = image[..., :3]
    if mask.shape != image.shape[: mask.ndim] or mask.ndim != image.ndim - (1 if rgb else 0):
        raise CLIError(f"mask '{args.mask}' has shape {mask.shape}, the image's spatial shape is "
                       f"{image.shape[:-1] if rgb else image.shape}")
    opts = {
        "mode": args.mode, "volume_factor": args.volume_factor, "volume_tolerance": args.volume_tolerance,
        "epsilon": args.epsilon, "tv_weight": args.tv_weight, "edge": args.edge,
        "max_num_iter": args.max_iter, "seed": args.seed, "device": args.device,
        "margin": args.margin, "mask_weight": args.mask_weight, "model": args.model,
        "fill_holes": args.fill_holes,
    }
    accepted = inspect.signature(correct_mask).parameters
    kwargs = {k: v for k, v in opts.items() if v is not None and k in accepted}
    corrected = correct_mask(image, mask, channel_axis=-1 if rgb else None, **kwargs)
    corrected = np.asarray(corrected)
    tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    try:
        write_labels(tmp, corrected)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    changed = float(np.mean(corrected != mask))
    _out(f"wrote {out}  ({changed:.2%} of the pixels changed)")
    return 0


# --------------------------------------------------------------------------- #
# train
# --------------------------------------------------------------------------- #
def _cmd_train(args) -> int:
    try:
        from .nn.train import main as train_main
    except ImportError as exc:
        raise CLIError(f"training is not available ({exc})") from None
    ret = train_main(list(args.train_args))  # its parser names itself "vptv train"
    return ret if isinstance(ret, int) else 0


# --------------------------------------------------------------------------- #
# entry point
# --------------------------------------------------------------------------- #
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``vptv`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":  # everything after 'train' belongs to the trainer
        args = argparse.Namespace(command="train", train_args=argv[1:], func=_cmd_train)
    else:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    cmd = f"{PROG} {args.command}"
    debug = bool(os.environ.get("VPTV_DEBUG"))
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(int(args.threads))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # e.g. argparse inside the trainer
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError, RuntimeError, OSError) as exc:
        if debug:
            raise
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"{cmd}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        if debug:
            raise
        msg = (str(exc).strip().splitlines() or [""])[0]
        print(f"{cmd}: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
