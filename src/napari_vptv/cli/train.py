"""``vptv train``: every argument after ``train`` goes to :func:`napari_vptv.nn.train.main`."""

from __future__ import annotations

import argparse

from .common import CLIError

__all__ = ["NAME", "add_parser", "run"]

NAME = "train"
#: Everything after "vptv train" is passed on unparsed (the trainer has its own parser).
RAW_ARGS = True


def add_parser(sub) -> None:
    """Register ``vptv train`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a WBC network (U-net / VPTVU-net); options: 'vptv train --help'",
        description="Train a white blood cell network; all arguments go to napari_vptv.nn.train.",
        add_help=False,
    )
    p.add_argument("raw_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``vptv train``; returns the exit status."""
    try:
        from ..nn.train import main as train_main
    except ImportError as exc:
        raise CLIError(f"training is not available ({exc})") from None
    ret = train_main(list(args.raw_args))  # its parser names itself "vptv train"
    return ret if isinstance(ret, int) else 0
