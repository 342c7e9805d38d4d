"""Command line interface: ``vptv`` (also ``python -m napari_vptv``).

Subcommands::

    vptv segment INPUT... --out DIR      segment images, folders, globs, TIFF stacks
                                         (--measure FILE.csv: one row per cell)
    vptv measure IMAGES LABELS --out FILE.csv   per-cell table of existing labels
    vptv evaluate --images DIR --masks DIR   score against ground-truth masks
    vptv demo [--out DIR]                run the WBC preset on the bundled samples
    vptv correct IMAGE MASK --out FILE   snap a rough mask to the image (VPTV)
    vptv train ...                       train a WBC network (napari_vptv.nn.train)
    vptv finetune --images DIR --masks DIR   fine-tune a WBC network on your own images

One module per subcommand, each with ``NAME``, ``add_parser(subparsers)`` (which
sets ``func``) and ``run(args) -> int``; a module with ``RAW_ARGS = True`` gets
every argument after its name unparsed. To add a subcommand, write such a module
and add its name to :data:`SUBCOMMANDS`.

Every error ends in one line on stderr (``vptv <command>: error: ...``) and a
non-zero exit status (2: bad command line or input, 1: some items failed, 130:
interrupted); set ``VPTV_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from .common import PROG, CLIError, Parser, echo_err

__all__ = ["main", "build_parser", "SUBCOMMANDS", "CLIError"]

#: The subcommand modules of this package, in the order of ``vptv --help``.
SUBCOMMANDS = ("segment", "measure", "evaluate", "demo", "correct", "train", "finetune")


def _modules():
    return [importlib.import_module(f"{__name__}.{name}") for name in SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The ``vptv`` argument parser."""
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Volume-preserving TV (VPTV) segmentation and VPTVU-net, headless.",
        epilog="Run 'vptv COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in _modules():
        module.add_parser(sub)
    return parser


def _parse(argv) -> argparse.Namespace:
    """Parsed arguments; a ``RAW_ARGS`` subcommand gets the rest of ``argv`` unparsed."""
    if argv:
        for module in _modules():
            if getattr(module, "RAW_ARGS", False) and argv[0] == module.NAME:
                return argparse.Namespace(command=module.NAME, raw_args=argv[1:], func=module.run)
    return build_parser().parse_args(_join_negative_lists(argv))


def _error_line(exc: BaseException, with_type: bool) -> str:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__ if not with_type else ""])[0]
    field = getattr(exc, "field", None)  # an OptionError: name the option in the CLI's words
    if field is not None:
        from .solver_options import FLAGS

        msg = f"{FLAGS.get(field, field)}: {msg}"
    return f"{type(exc).__name__}: {msg}" if with_type else msg


#: Options whose value is a comma-separated list that may start with a minus sign.
_LIST_OPTIONS = ("--volumes", "--lower", "--upper")


def _join_negative_lists(argv):
    """``--volumes -0.2,1.2`` -> ``--volumes=-0.2,1.2`` (argparse would take ``-0.2,1.2`` for an option)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (
            a in _LIST_OPTIONS
            and nxt is not None
            and len(nxt) > 1
            and nxt[0] == "-"
            and (nxt[1].isdigit() or nxt[1] == ".")
        ):
            out.append(f"{a}={nxt}")
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``vptv`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    cmd = f"{PROG} {args.command}"
    debug = bool(os.environ.get("VPTV_DEBUG"))
    try:
        if getattr(args, "threads", None):
            import torch

            from .solver_options import cap_threads

            torch.set_num_threads(int(cap_threads(args.threads)))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # e.g. argparse inside the trainer
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except (
        CLIError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
        RuntimeError,
        OSError,
    ) as exc:
        if debug:
            raise
        echo_err(f"{cmd}: error: {_error_line(exc, with_type=False)}")
        return 2
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        if debug:
            raise
        echo_err(f"{cmd}: error: {_error_line(exc, with_type=True)}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
