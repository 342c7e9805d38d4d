"""``vptv segment``: images, folders, globs and TIFF stacks -> one label file per input."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np

from .common import CLIError, echo, echo_err, fmt_vec, positive_int, progress_bar
from .measure import add_measure_options, write_measurements
from .solver_options import add_solver_options, cap_threads, options_from_args

__all__ = ["NAME", "add_parser", "run"]

NAME = "segment"
#: Address protocols of dask.distributed schedulers.
_SCHEDULER_PROTOCOLS = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def add_parser(sub) -> None:
    """Register ``vptv segment`` on the subparsers ``sub``."""
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
            "  vptv segment smears/ --out labels/ --measure cells.csv --pixel-size 0.1 \\\n"
            "      --instances                                            # + OUT/cells/: one id per cell\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder, glob pattern or TIFF stack")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (required; created if missing)")
    add_solver_options(p, default_preset="auto")
    s = p.add_argument_group("stacks and batches")
    dim = s.add_mutually_exclusive_group()
    dim.add_argument(
        "--volume-per-slice",
        dest="volume3d",
        action="store_false",
        default=False,
        help="segment stacks slice by slice; the volumes / priors apply to every 2-D slice (default)",
    )
    dim.add_argument(
        "--3d",
        dest="volume3d",
        action="store_true",
        help="segment the last three spatial axes of a stack as one 3-D volume (3-D TV; "
        "the volumes are 3-D class fractions)",
    )
    s.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="address of a dask.distributed scheduler (e.g. tcp://host:8786) to run the "
        "slices of stacks on a cluster; the workers must see the input and output "
        "folders (default: local threads)",
    )
    s.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="threads of the local scheduler: files segmented at once, or a single stack's "
        "slices (default: the number of CPUs)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    s.add_argument(
        "--format",
        choices=["png", "tif"],
        default="png",
        help="format of 2-D label images (stacks are always TIFF) (default: %(default)s)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no per-slice volume lines for stacks")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_measure_options(p, with_file=True)
    p.add_argument(
        "--instances",
        action="store_true",
        help="also write the cell-instance labels of every label image into OUT/cells/ (same "
        "name): one id per white cell, shared by its nucleus and cytoplasm, the 'cell' ids of "
        "--measure; the ids of cells cut by the image edge are in the file's metadata",
    )
    p.set_defaults(func=run)


def _connect(address: str):
    """A ``distributed.Client`` of the scheduler at ``address`` (one-line errors)."""
    try:
        from distributed import Client
    except ImportError:
        raise CLIError("--scheduler needs the 'distributed' package (pip install distributed)") from None
    scheme = address.split("://")[0] if "://" in address else "tcp"
    if scheme not in _SCHEDULER_PROTOCOLS:  # distributed would retry an unknown protocol, then leak a traceback
        raise CLIError(
            f"cannot connect to the dask scheduler at {address!r}: unknown protocol {scheme!r} (use tcp://HOST:PORT)"
        )
    try:
        return Client(address, timeout="15s", set_as_default=False)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot connect to the dask scheduler at {address!r}: {exc}") from None


def _measure_path(args):
    """The ``--measure`` file (None without it); an existing one needs ``--overwrite``."""
    path = Path(args.measure).expanduser() if args.measure else None
    if path is not None and path.exists() and not args.overwrite:
        raise CLIError(f"--measure '{path}' exists; use --overwrite or another file name")
    return path


def _measure_outputs(summary, path, args) -> int:
    """``--measure``: the per-cell table of every label file written or kept; the exit status."""
    pairs = [(r.output, Path(r.input)) for r in summary.results if r.ok and r.output is not None]
    if not pairs:
        echo_err("no label image to measure; --measure file not written")
        return 0
    return write_measurements(
        pairs, path, pixel_size=args.pixel_size, diameter=getattr(args, "diameter", None), overwrite=True
    )


def _write_instances(summary, out_dir: Path, args) -> None:
    """``--instances``: the cell instances of every label file written or kept, into ``OUT/cells/``."""
    from ..core.wbc.cell_table import write_instances

    for r in summary.results:
        if r.ok and r.output is not None:
            path = write_instances(
                r.output, out_dir / "cells" / Path(r.output).name, diameter=getattr(args, "diameter", None)
            )
            echo(f"cells {r.input} -> {path}")


def run(args) -> int:
    """Run ``vptv segment``; returns the exit status."""
    from ..api import SegmentFn
    from ..core.batch.run import iter_inputs, run_batch

    if args.classes is not None and args.classes < 2:
        raise CLIError(f"--classes must be >= 2, got {args.classes}")
    fn = SegmentFn(options_from_args(args))
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out '{out_dir}' exists and is not a folder")
    measure_path = _measure_path(args)
    items = list(iter_inputs(args.inputs))
    client = _connect(args.scheduler) if args.scheduler else None
    scheduler = client
    bar = progress_bar(len(items), "segment", args.no_progress)

    def slice_bar(total, name):
        return progress_bar(total, name, args.no_progress, unit="slice", leave=False)

    def report(res):
        name = str(res.input)
        if res.status == "skipped":
            echo(f"skipped (exists) {name} -> {res.output}")
        elif res.status == "done" or res.slice_volumes:
            tag = "done" if res.status == "done" else "partial"
            if len(res.slice_volumes) == 1 and res.slice_volumes[0][0] == () and not res.failed_slices:
                echo(f"{tag} {name} -> {res.output}  volumes {fmt_vec(res.slice_volumes[0][1])}")
            else:
                vols = np.array([v for _, v in res.slice_volumes]) if res.slice_volumes else np.zeros((0, 1))
                mean = fmt_vec(vols.mean(axis=0)) if len(vols) else "-"
                echo(
                    f"{tag} {name} -> {res.output}  shape {tuple(res.shape)}, "
                    f"{len(res.slice_volumes)} slice(s), mean volumes {mean}"
                )
                if not args.quiet:
                    for idx, v in res.slice_volumes:
                        echo(f"    slice {list(idx)}: volumes {fmt_vec(v)}")
            if res.notes:
                echo(f"    note: {'; '.join(res.notes)}")
        if res.status == "failed":
            echo_err(f"FAILED {name}: {res.message}")
        bar.update(1)

    try:
        summary = run_batch(
            items,
            out_dir,
            fn,
            fmt=args.format,
            overwrite=args.overwrite,
            mode="volume" if args.volume3d else "slices",
            scheduler=scheduler,
            num_workers=cap_threads(args.workers, "--workers"),
            on_result=report,
            progress_factory=slice_bar,
        )
    finally:
        bar.close()
        if client is not None:
            client.close()
    if summary.stale_removed:
        names = ", ".join(f.name for f in summary.stale_removed)
        echo_err(f"removed {len(summary.stale_removed)} temporary file(s) left by an interrupted run: {names}")
    echo(summary.line())
    if args.instances:
        _write_instances(summary, out_dir, args)
    status = 0 if measure_path is None else _measure_outputs(summary, measure_path, args)
    if summary.failed:
        echo_err(f"{len(summary.failed)} input(s) failed:")
        for r in summary.failed:
            echo_err(f"  {r.input}: {r.message}")
        return 1
    return status
