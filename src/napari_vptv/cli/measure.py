"""``vptv measure``: per-cell table (CSV) of existing WBC label images.

The same table as ``vptv segment --measure`` and the widget's "Export CSV…"
(:mod:`napari_vptv.core.wbc.cell_table`): one row per cell per image.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Optional, Sequence, Tuple

from .common import CLIError, echo, echo_err, positive_float

__all__ = ["NAME", "add_parser", "run", "add_measure_options", "write_measurements"]

NAME = "measure"


def add_measure_options(p, *, with_file: bool) -> None:
    """``--measure FILE.csv`` (``vptv segment``) and ``--pixel-size UM``."""
    g = p.add_argument_group("measurements (white blood cells)")
    if with_file:
        g.add_argument(
            "--measure",
            metavar="FILE.csv",
            default=None,
            help="also write one row per cell per image: areas, N/(N+C), N/C, nucleus lobes, "
            "solidity, circularity, touches_border (same table as 'vptv measure')",
        )
    g.add_argument(
        "--pixel-size",
        type=positive_float,
        default=None,
        metavar="UM",
        help="pixel size in µm: adds the areas in µm² (default: areas in px only)",
    )
    if not with_file:  # 'vptv segment' has --diameter already (the same number: it also splits cells)
        g.add_argument(
            "--diameter",
            type=positive_float,
            default=None,
            metavar="PX",
            help="typical cell diameter in px: split touching cells bigger than 1.5 cell areas (default: no split)",
        )


def write_measurements(
    pairs: Sequence[Tuple[Path, Optional[Path]]], path, *, pixel_size=None, diameter=None, overwrite: bool = False
) -> int:
    """Measure ``(labels, image)`` file pairs into the CSV ``path``; returns the exit status
    (1 if some pair could not be measured)."""
    from ..core.wbc.cell_table import measure_files
    from ..core.wbc.measure import write_csv

    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise CLIError(f"{out} exists; use --overwrite or another file name (nothing was written)")
    if out.suffix.lower() != ".csv":
        raise CLIError(f"the measurements file must end in .csv, got '{out}'")
    table, problems = measure_files(pairs, pixel_size=pixel_size, diameter=diameter)
    for line in problems:
        echo_err(f"not measured: {line}")
    if table is None:
        raise CLIError("no image could be measured; nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, out, overwrite=True)
    n_images = len(pairs) - len(problems)
    empty = n_images - len(set(table["image"].tolist()))
    echo(
        f"measured {len(table['cell'])} cell(s) in {n_images} image(s) -> {out}"
        + (f"; no white cell found in {empty} image(s)" if empty else "")
    )
    return 1 if problems else 0


def add_parser(sub) -> None:
    """Register ``vptv measure`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "measure",
        help="per-cell table (CSV) of existing WBC label images",
        description=textwrap.fill(
            "Measure every white cell of existing label images (labels 0/1/2 = background / cytoplasm / "
            "nucleus as written by 'vptv segment', or grey masks 0/128/255) and write one row per cell "
            "per image to --out: areas, N/(N+C), N/C, nucleus lobes and solidity, cell solidity and "
            "circularity, touches_border. IMAGES and LABELS are files, folders or glob patterns; a label "
            "file is paired with the image of the same stem (or '<stem>_...'). The images give the "
            "mean colours; the areas come from the labels alone."
        ),
        epilog="example:\n  vptv measure smears/ labels/ --out cells.csv --pixel-size 0.1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", metavar="IMAGES", help="image file, folder or glob pattern")
    p.add_argument("labels", metavar="LABELS", help="label file, folder or glob pattern")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="CSV file to write (required)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_measure_options(p, with_file=False)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``vptv measure``; returns the exit status."""
    from ..core.io.files import IMAGE_SUFFIXES, list_images
    from ..core.wbc.cell_table import pair_files

    images = list_images(args.images)
    labels = list_images(args.labels, suffixes=tuple(IMAGE_SUFFIXES))
    if not images:
        raise CLIError(f"no image files in {args.images!r}")
    if not labels:
        raise CLIError(f"no label files in {args.labels!r}")
    if Path(args.images).is_file() and Path(args.labels).is_file():
        pairs, problems = [(images[0], labels[0])], []  # one image and its labels, named as the user likes
    else:
        pairs, problems = pair_files(images, labels)
    for line in problems:
        echo_err(f"not measured: {line}")
    if not pairs:
        raise CLIError("no image has a label file; nothing was written")
    status = write_measurements(
        [(lab, img) for img, lab in pairs],
        args.out,
        pixel_size=args.pixel_size,
        diameter=args.diameter,
        overwrite=args.overwrite,
    )
    return 1 if problems else status
