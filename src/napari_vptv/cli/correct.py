"""``vptv correct``: snap a rough label mask to the image's boundaries, keeping areas."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from ..core.correct.settings import EDGE_POSITIONS, CorrectSettings
from ..options import CorrectOptions, OptionError
from .common import CLIError, echo, nonneg_float, positive_float, positive_int

__all__ = ["NAME", "add_parser", "run"]

NAME = "correct"

#: the defaults quoted in the help (those of the core's CorrectSettings)
_DEFAULTS = CorrectSettings()


def add_parser(sub) -> None:
    """Parser of ``vptv correct`` (the mask-correction engine's options live here)."""
    p = sub.add_parser(
        "correct",
        help="snap a rough label mask to the image's boundaries (size bias unknown by default)",
        description=(
            "Correct MASK (instance labels, a binary mask, or class labels with --mode semantic) "
            "with VPTV: by default each object's boundary may move within a band around the given one "
            "(the size bias is unknown) and the image decides where; --volume-mode exact keeps each area. "
            "Writes the corrected mask to --out (PNG or TIFF). Many images: "
            "vptv correct IMAGES... --masks DIR --out DIR (files, folders or globs; each image's mask is "
            "DIR/<stem>.png or .tif; outputs <stem>.png, or .tif for stacks; existing outputs are skipped)."
        ),
        usage="%(prog)s IMAGE MASK --out FILE [options]\n       %(prog)s IMAGES... --masks DIR --out DIR [options]",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE MASK | IMAGES",
        help="an image file (grey or RGB) and its mask file (integer labels, binary, or WBC grey); "
        "with --masks: image files, folders or globs",
    )
    p.add_argument(
        "--masks",
        metavar="DIR",
        default=None,
        help="folder of masks named like the images (<stem>.png / .tif): correct every image",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE_OR_DIR",
        help="output mask file, .png or .tif (never IMAGE or MASK); with --masks an output folder (required)",
    )
    p.add_argument(
        "--mode",
        choices=["objects", "semantic"],
        default=_DEFAULTS.mode,
        help="objects: one two-phase VPTV per label id; semantic: one multi-class VPTV (default: %(default)s)",
    )
    p.add_argument(
        "--volume-factor",
        type=positive_float,
        default=None,
        metavar="F",
        help=f"target area = mask area x F (default {_DEFAULTS.volume_factor:g})",
    )
    p.add_argument(
        "--volume-tolerance",
        type=nonneg_float,
        default=None,
        metavar="T",
        help="allow areas within (1 +- T) x target (default 0: exact)",
    )
    p.add_argument(
        "--volume-mode",
        choices=["interval", "exact", "factor"],
        default=None,
        help="interval: unknown size bias, each boundary may move up to --band px (default unless "
        "--volume-factor is given); exact: keep each area; factor: area x --volume-factor",
    )
    p.add_argument(
        "--area-tolerance",
        type=nonneg_float,
        default=None,
        metavar="T",
        help="interval mode: also keep each area within (1 +- T) x the given one (default: no limit)",
    )
    p.add_argument(
        "--band",
        type=positive_int,
        default=None,
        metavar="PX",
        help="interval mode: largest boundary error to correct in pixels (default: per object, half its radius, 4-6)",
    )
    _add_solver_arguments(p)


def _add_solver_arguments(p) -> None:
    """The solver settings of ``vptv correct`` (eps, lambda, edge, iterations, costs, ...)."""
    p.add_argument(
        "--epsilon",
        type=positive_float,
        default=None,
        metavar="E",
        help=f"entropic regularisation eps, 1e-4 to 100; smaller is sharper (default {_DEFAULTS.epsilon:g})",
    )
    p.add_argument(
        "--tv-weight",
        type=nonneg_float,
        default=None,
        metavar="L",
        help=f"weight lambda of the total-variation (boundary length) term, 0 to 100 (default {_DEFAULTS.tv_weight:g})",
    )
    p.add_argument(
        "--edge",
        dest="edge_position",
        nargs="?",
        choices=EDGE_POSITIONS,
        default=None,
        const=None,
        help="where the boundary goes across a nucleus's edge: rim = the outer, dimmer rim, half-max = halfway "
        "between background and interior, gradient = the strongest gradient (default: as annotated, half-max "
        "for grey 2-D images, rim for grey 3-D stacks, gradient for colour)",
    )
    p.add_argument(
        "--no-edge",
        dest="edge",
        action="store_false",
        default=None,
        help="plain TV instead of edge-weighted TV (default: edge-weighted)",
    )
    p.add_argument(
        "--max-iter",
        dest="max_num_iter",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"iterations per solve, 1 to 100000 (default {_DEFAULTS.max_num_iter})",
    )
    p.add_argument(
        "--margin",
        type=positive_int,
        default=None,
        metavar="PX",
        help="crop margin around each object in pixels (default: automatic)",
    )
    p.add_argument(
        "--mask-weight",
        type=nonneg_float,
        default=None,
        metavar="B",
        help=f"trust in the given mask (cost of leaving it; costs are in [0, 1]; default {_DEFAULTS.mask_weight:g})",
    )
    p.add_argument(
        "--model",
        choices=["colour", "vptv-unet"],
        default=None,
        help="costs from a colour model of the mask (default) or the VPTVU-net (WBC nuclei)",
    )
    p.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill holes of corrected objects (default: on)",
    )
    p.add_argument(
        "--stack-mode",
        choices=["volume", "slices"],
        default=None,
        help="3-D masks: correct each object in 3-D (volume, default) or every plane as 2-D objects "
        "(slices: for stacks whose planes are not one sampled volume, e.g. a time series)",
    )
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed (default %(default)s)")
    p.add_argument("--device", default=_DEFAULTS.device, help="torch device (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


#: The flag of each :class:`~napari_vptv.options.CorrectOptions` field whose name differs.
_FLAGS = {"max_num_iter": "--max-iter"}


def correct_options(args) -> CorrectOptions:
    """The :class:`~napari_vptv.options.CorrectOptions` of the command line: every field
    from the argument of the same name (``dest``), unset ones (None) left to its defaults;
    validated before any file is read, a bad value names its flag."""
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(CorrectOptions)}
    try:
        return CorrectOptions(**{name: value for name, value in given.items() if value is not None})
    except OptionError as exc:
        flag = _FLAGS.get(exc.field, "--" + exc.field.replace("_", "-"))
        raise CLIError(f"{flag}: {exc}") from None


def run(args) -> int:
    """Run ``vptv correct``; returns the exit status."""
    args.options = correct_options(args)
    if args.masks is not None:
        return _run_many(args)
    if len(args.inputs) != 2:
        raise CLIError(f"give IMAGE and MASK (or images with --masks DIR); got {len(args.inputs)} path(s)")
    from ..core.io.files import write_labels
    from ..core.io.outputs import OutputGuard

    image_path, mask_path = args.inputs
    out = Path(args.out).expanduser()
    if out.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise CLIError(f"--out must be a .png or .tif file, got '{out}'")
    guard = OutputGuard([image_path, mask_path], overwrite=args.overwrite)
    guard.check(out)  # before the work: never onto IMAGE or MASK, never over a file without --overwrite
    corrected, changed, meta = _correct_pair(args, image_path, mask_path)
    guard.write(out, lambda tmp: write_labels(tmp, corrected, metadata=meta))
    echo(f"wrote {out}  ({changed:.2%} of the pixels changed)")
    return 0


def _mask_for(image_path: Path, masks: Path):
    """The mask ``<stem>.png`` / ``.tif`` of an image; two of them are refused (ValueError)."""
    from ..core.io.masks import find_mask

    return find_mask(image_path, masks, suffixes=(".png", ".tif", ".tiff"))


def _run_many(args) -> int:
    """Every image of ``args.inputs`` with its mask in ``--masks``; one output per image in
    ``--out``. Existing outputs are skipped (``--overwrite`` redoes them); a failing image
    is reported and the others are still done."""
    from ..core.batch.run import iter_inputs, output_path
    from ..core.io.files import write_labels
    from ..core.io.outputs import OutputGuard, clean_stale_partials

    masks, out_dir = Path(args.masks).expanduser(), Path(args.out).expanduser()
    if not masks.is_dir():
        raise CLIError(f"--masks must be a folder, got '{masks}'")
    if out_dir.suffix.lower() in (".png", ".tif", ".tiff") or (out_dir.exists() and not out_dir.is_dir()):
        raise CLIError(f"with --masks, --out is a folder for the corrected masks, got '{out_dir}'")
    out_dir.mkdir(parents=True, exist_ok=True)
    items = list(iter_inputs(args.inputs))
    clean_stale_partials(out_dir, [output_path(i.path, out_dir, is_stack=s) for i in items for s in (False, True)])
    counts = {"corrected": 0, "skipped": 0, "failed": 0}
    for item in items:
        try:
            mask_path = None if item.problem else _mask_for(item.path, masks)
            problem = item.problem or (None if mask_path else f"no mask '{item.path.stem}.png' or '.tif' in '{masks}'")
        except ValueError as exc:  # two masks for one image
            mask_path, problem = None, str(exc)
        if problem:
            echo(f"FAILED {item.path}: {problem}")
            counts["failed"] += 1
            continue
        guard = OutputGuard([item.path, mask_path], overwrite=args.overwrite)
        done = [o for o in (output_path(item.path, out_dir, is_stack=s) for s in (False, True)) if o.exists()]
        if done and not args.overwrite:
            echo(f"skipped {item.path}: {done[0]} exists (--overwrite to redo)")
            counts["skipped"] += 1
            continue
        try:
            corrected, changed, meta = _correct_pair(args, item.path, mask_path)
            out = guard.write(
                output_path(item.path, out_dir, is_stack=corrected.ndim > 2),
                lambda tmp, c=corrected, m=meta: write_labels(tmp, c, metadata=m),
            )
        except FileExistsError:  # another run wrote it meanwhile: kept, as a finished one is
            echo(f"skipped {item.path}: written meanwhile by another run")
            counts["skipped"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 -- one image's problem must not stop the batch
            echo(f"FAILED {item.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            counts["failed"] += 1
            continue
        echo(f"wrote {out}  ({changed:.2%} of the pixels changed)")
        counts["corrected"] += 1
    echo(", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if counts["failed"] else 0


def _correct_pair(args, image_path, mask_path):
    """Correct one image / mask pair: ``(corrected labels, share of pixels changed, metadata)``
    (the metadata name the inputs and every conversion made to read them)."""
    from ..core.io.files import normalise_intensity, printable, read_image, read_mask

    notes, mask_notes = [], []
    image, conversion = normalise_intensity(read_image(image_path, notes=notes))
    notes += [conversion] if conversion else []
    mask = read_mask(mask_path, style="labels", notes=mask_notes)  # ids are kept: a 0/255 mask stays 0/255
    meta = {
        "input": printable(Path(image_path).name),
        "mask": printable(Path(mask_path).name),
        "conversions": [printable(n) for n in notes] + [f"mask: {printable(n)}" for n in mask_notes],
    }
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    if rgb:
        image = image[..., :3]
    if mask.shape != image.shape[: mask.ndim] or mask.ndim != image.ndim - (1 if rgb else 0):
        raise CLIError(
            f"mask '{mask_path}' has shape {mask.shape}, the image's spatial shape is "
            f"{image.shape[:-1] if rgb else image.shape}"
        )
    from ..correction import correct_image

    corrected = np.asarray(correct_image(image, mask, args.options, channel_axis=-1 if rgb else None))
    return corrected, float(np.mean(corrected != mask)), meta
