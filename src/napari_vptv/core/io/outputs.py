"""The one output-path guard of every writer (``segment``, ``evaluate --json``,
``correct``, ``demo``): nothing lost, nothing half-written.

Rules (:class:`OutputGuard`):

* never write onto an input of the same run (not even with ``overwrite``);
* never replace an existing file unless ``overwrite``;
* always write a hidden temporary file next to the target
  (``.<stem>.vptv-partial-<pid>-<token><suffix>``: the tool's name, the writing
  process and a random token) and move it into place only when complete, so a full
  disk or a kill leaves no truncated file under the final name;
* a temporary file left by a killed run (its process no longer exists) is
  *stale*: :func:`clean_stale_partials` removes it and returns its name so the
  caller can say so. Only names of exactly that form, for an output of the current
  run, are ever removed: a user's ``.NAME.partial-77777.txt`` is never touched.

No napari, Qt or torch imports here.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Union

__all__ = ["OutputGuard", "partial_name", "publish", "stale_partials", "clean_stale_partials"]

PathLike = Union[str, Path]

_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.vptv-partial-(?P<pid>\d+)-[0-9a-f]{12}(?P<suffix>\.[^.]*)?$")


def partial_name(final: PathLike, pid: Optional[int] = None) -> Path:
    """A fresh hidden temporary name for ``final`` while this process writes it:
    ``.<stem>.vptv-partial-<pid>-<12 random hex digits><suffix>``."""
    final = Path(final)
    pid = os.getpid() if pid is None else pid
    return final.with_name(f".{final.stem}.vptv-partial-{pid}-{secrets.token_hex(6)}{final.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours (or cannot tell): leave its file alone
    return True


def stale_partials(folder: PathLike, outputs: Optional[Iterable[PathLike]] = None) -> List[Path]:
    """Temporary files of this tool in ``folder`` whose writing process no longer
    exists (sorted); with ``outputs``, only those of these output files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = None if outputs is None else {Path(o).name for o in outputs}
    found = []
    for f in folder.iterdir():
        m = _PARTIAL.match(f.name)
        if not m or (names is not None and m.group("stem") + (m.group("suffix") or "") not in names):
            continue
        if f.is_file() and not f.is_symlink() and not _pid_alive(int(m.group("pid"))):
            found.append(f)
    return sorted(found)


def clean_stale_partials(folder: PathLike, outputs: Optional[Iterable[PathLike]] = None) -> List[Path]:
    """Remove the stale temporary files of ``folder``; returns the removed paths.

    Only names that :func:`partial_name` makes (``.<stem>.vptv-partial-<pid>-<token><suffix>``)
    whose process is gone are touched (a concurrent run's file is kept); with
    ``outputs`` (the run's output files), only the temporary files of those.
    """
    removed = []
    for f in stale_partials(folder, outputs):
        try:
            f.unlink()
            removed.append(f)
        except FileNotFoundError:
            pass
    return removed


def publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished temporary file into place; never clobber without ``overwrite``.

    Raises
    ------
    FileExistsError
        ``final`` appeared meanwhile and ``overwrite`` is False (``tmp`` is removed).
    """
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic, fails if ``final`` exists
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise FileExistsError(f"output '{final}' appeared meanwhile; not overwritten") from None
    except OSError:  # file systems without hard links
        if final.exists():
            tmp.unlink(missing_ok=True)
            raise FileExistsError(f"output '{final}' appeared meanwhile; not overwritten") from None
        os.replace(tmp, final)
        return
    tmp.unlink()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class OutputGuard:
    """Checks and writes the outputs of one run.

    Parameters
    ----------
    inputs : iterable of path
        The run's input files (images, masks): never written to.
    overwrite : bool
        Whether an existing output may be replaced.
    option : str
        How the caller names the overwrite switch in messages (``"--overwrite"``
        on the command line, ``"overwrite=True"`` in Python).
    """

    def __init__(self, inputs: Iterable[PathLike] = (), *, overwrite: bool = False, option: str = "--overwrite"):
        self.inputs = [Path(p).expanduser() for p in inputs]
        self.overwrite = bool(overwrite)
        self.option = option

    def input_of(self, path: PathLike) -> Optional[Path]:
        """The input of this run that ``path`` is (same file or same absolute path), or None."""
        target = Path(path).expanduser()
        for p in self.inputs:
            if _same_file(p, target) or p.absolute() == target.absolute():
                return p
        return None

    def check(self, path: PathLike) -> Path:
        """``path`` if this run may write it.

        Raises
        ------
        ValueError
            ``path`` is an input of the run, or an existing folder.
        FileExistsError
            ``path`` exists and overwriting is off.
        """
        target = Path(path).expanduser()
        src = self.input_of(target)
        if src is not None:
            raise ValueError(f"output '{target}' is the input file '{src}' of this run; choose another output")
        if target.is_dir():
            raise ValueError(f"output '{target}' is a folder, not a file")
        if target.exists() and not self.overwrite:
            raise FileExistsError(f"'{target}' already exists; use {self.option} to replace it")
        return target

    def write(self, path: PathLike, writer: Callable[[Path], object]) -> Path:
        """Check ``path``, call ``writer(temporary_path)`` and move the result into place.

        The temporary file is removed if ``writer`` fails (e.g. the disk is full),
        so no truncated output is ever left under either name.
        """
        target = self.check(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_name(target)
        try:
            writer(tmp)
            publish(tmp, target, self.overwrite)
        finally:
            tmp.unlink(missing_ok=True)
        return target
