"""``vptv evaluate``: segment a folder of images and score them against ground-truth masks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .common import CLIError, echo, echo_err, progress_bar
from .solver_options import add_solver_options, options_from_args

__all__ = ["NAME", "add_parser", "run"]

NAME = "evaluate"


def add_parser(sub) -> None:
    """Register ``vptv evaluate`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate",
        help="segment a folder of images and score them against ground-truth masks",
        description=(
            "Segment every image of --images and compare with the mask of the same stem in --masks "
            "(WBC-style grey masks 0/128/255 -> classes 0/1/2, or integer label images). Prints one "
            "line per image (id, pixel accuracy, Dice per class, volume error per class) and ends "
            "with the line 'mean pixel accuracy: 0.XXXX'. Defaults: as 'vptv segment'."
        ),
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images (required)")
    p.add_argument("--masks", required=True, metavar="DIR", help="folder of masks with the same file stems (required)")
    add_solver_options(p)
    p.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="also write all figures to a JSON file, never an input file (default: no file)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


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


def run(args) -> int:
    """Run ``vptv evaluate``; returns the exit status."""
    from ..api import evaluate_folder

    options = options_from_args(args)
    for what, d in (("--images", args.images), ("--masks", args.masks)):
        p = Path(d).expanduser()
        if not p.exists():
            raise CLIError(f"{what} folder '{p}' does not exist")
        if not p.is_dir():
            raise CLIError(f"{what} '{p}' is not a folder")
    guard = None
    if args.json:  # checked before the work: never onto an image or mask, never over a file without --overwrite
        from ..core.io.outputs import OutputGuard
        from ..core.scoring.evaluate import pair_images_and_masks

        inputs = [f for pair in pair_images_and_masks(args.images, args.masks) for f in pair]
        guard = OutputGuard(inputs, overwrite=args.overwrite)
        try:
            guard.check(args.json)
        except (ValueError, FileExistsError) as exc:
            raise CLIError(f"--json: {exc}") from None
    bar = {"bar": None}

    def progress(done, total=None, *rest):
        b = bar["bar"]
        if b is None:
            b = bar["bar"] = progress_bar(total, "evaluate", args.no_progress, unit="image")
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
        echo(_format_row(row))
    accs = [float(_row_get(r, "accuracy", "pixel_accuracy", default=np.nan)) for r in rows]
    mean_acc = _row_get(summary or {}, "mean_accuracy", "accuracy", "mean_pixel_accuracy", default=None)
    if mean_acc is None or not np.isfinite(float(mean_acc)):
        mean_acc = float(np.nanmean(accs))
    mean_acc = float(mean_acc)
    errors = [r for r in rows if _row_get(r, "error")]
    if guard is not None:
        record = {
            "method": args.method,
            "preset": args.preset,
            "volume_mode": args.volume_mode,
            "options": options.to_dict(),
            "rows": rows,
            "summary": summary,
            "mean_pixel_accuracy": mean_acc,
        }
        text = json.dumps(_jsonable(record), indent=1)
        guard.write(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if errors:
        echo_err(f"{len(errors)} image(s) could not be evaluated")
    echo(f"mean pixel accuracy: {mean_acc:.4f}")
    return 1 if errors else 0
