"""Shared pieces of the ``vptv`` subcommands: the error type, the one-line parser,
argument types and output helpers (result lines, progress bars)."""

from __future__ import annotations

import argparse
import sys
from typing import List

import numpy as np

__all__ = [
    "PROG",
    "CLIError",
    "Parser",
    "floats",
    "positive_int",
    "positive_float",
    "nonneg_float",
    "fmt_vec",
    "echo",
    "echo_err",
    "progress_bar",
]

PROG = "vptv"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (plus a hint) and exit with 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- #
# argument types
# --------------------------------------------------------------------------- #
def floats(text: str) -> List[float]:
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


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def fmt_vec(v) -> str:
    return " ".join(f"{float(x):.4f}" for x in np.atleast_1d(v))


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #
def _safe(msg) -> str:
    """Text that any terminal or log can take: the bytes of a non-UTF-8 file name are
    shown as ``\\xff`` escapes, characters the stream cannot encode as escapes."""
    from ..core.io.files import printable

    text = printable(msg)
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def echo(msg: str = "") -> None:
    """A result line on stdout, without breaking a progress bar."""
    msg = _safe(msg)
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(msg)
    sys.stdout.flush()


def echo_err(msg: str) -> None:
    """A message line on stderr, without breaking a progress bar."""
    msg = _safe(msg)
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(msg, file=sys.stderr)


def progress_bar(total: int, desc: str, disable: bool, unit: str = "file", leave: bool = True):
    """A tqdm bar on stderr (none when ``disable`` or stderr is not a terminal)."""
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=True if disable else None,
        leave=leave,
        dynamic_ncols=True,
    )
