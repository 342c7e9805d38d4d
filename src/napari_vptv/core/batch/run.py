"""Headless batch segmentation of files, folders, globs and stacks (no napari, no Qt).

The engine behind ``vptv segment``:

* :func:`iter_inputs` expands files, folders and glob patterns into input items
  (a missing path or a pattern matching nothing becomes an item that fails with a
  clear message, so one typo does not stop a batch);
* :func:`segment_file` segments one file and writes one label file next to the
  others in the output folder (same stem). A 2-D image (grey or RGB) gives a PNG or
  TIFF label image; a stack (multi-page TIFF: ZYX, TYX, TZYX, ..., grey or RGB) gives
  a multi-page TIFF of the same leading shape, segmented slice by slice (or volume by
  volume, ``mode="volume"``) with dask;
* stacks are read lazily (:class:`napari_vptv.core.io.tiff.TiffFrames`), segmented with
  :func:`napari_vptv.core.batch.dask_stack.segment_stack_dask` and written chunk by chunk by
  :func:`napari_vptv.core.io.tiff.store_labels_tiff`.

Resume and safety rules: an output that already exists is skipped (``"skipped"``)
unless ``overwrite=True``, also when another run writing the same folder finished it
while this one was segmenting; outputs are first written under a hidden temporary name
and moved into place only when complete (an interrupted run never leaves a
half-written file under the final name, and a file that appeared meanwhile is not
clobbered). Errors are captured per item (unreadable file, NaN slice, zero-size axis,
...) and per slice: the other slices and files are still done.

>>> from napari_vptv.api import make_segment_fn                       # doctest: +SKIP
>>> from napari_vptv.core.batch.run import segment_file                   # doctest: +SKIP
>>> fn = make_segment_fn("vptv", preset="none", n_classes=2)          # doctest: +SKIP
>>> segment_file("stack.tif", "out/", fn).status                      # doctest: +SKIP
'done'
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..io.files import TIFF_SUFFIXES, printable, write_labels
from ..io.outputs import OutputGuard, clean_stale_partials, partial_name, publish
from ..io.tiff import open_lazy, store_labels_tiff
from .dask_stack import label_dtype_and_sentinel, segment_stack_dask
from .inputs import InputInfo, InputItem, inspect_input, iter_inputs
from .stack import labels_of, segment_stack

__all__ = [
    "SegmentCallable",
    "InputItem",
    "InputInfo",
    "FileResult",
    "BatchSummary",
    "iter_inputs",
    "inspect_input",
    "output_path",
    "segment_file",
    "shared_torch_threads",
    "run_batch",
]

PathLike = Union[str, Path]

#: A single-image segmentation ``fn(image, *, channel_axis) -> result or labels``,
#: optionally with an ``n_classes(rgb)`` method: :class:`napari_vptv.api.SegmentFn`
#: (the batch engine itself does not know the methods).
SegmentCallable = Callable[..., Any]


def output_path(info_or_path, out_dir: PathLike, fmt: str = "png", *, is_stack: Optional[bool] = None) -> Path:
    """Output file for an input: ``out_dir / <stem>.<fmt>``; stacks and volumes always ``.tif``."""
    p = info_or_path.path if isinstance(info_or_path, InputInfo) else Path(info_or_path)
    if isinstance(info_or_path, InputInfo):
        stack = info_or_path.label_ndim > 2
    else:
        stack = bool(is_stack)
    if fmt not in ("png", "tif"):
        raise ValueError(f"output format must be 'png' or 'tif', got {fmt!r}")
    suffix = ".tif" if (stack or fmt == "tif") else ".png"
    return Path(out_dir) / (p.stem + suffix)


def _possible_outputs(path: Path, out_dir: Path, fmt: str) -> List[Path]:
    if path.suffix.lower() in TIFF_SUFFIXES:
        return [output_path(path, out_dir, fmt, is_stack=False), output_path(path, out_dir, fmt, is_stack=True)]
    return [output_path(path, out_dir, fmt, is_stack=False)]


# --------------------------------------------------------------------------- #
# one file
# --------------------------------------------------------------------------- #
@dataclass
class FileResult:
    """Outcome of :func:`segment_file`.

    Attributes
    ----------
    input : Path
    output : Path or None
    status : "done", "skipped" or "failed"
    message : str
        Reason of a skip / failure ("" when done).
    shape : tuple
        Label shape written.
    slice_volumes : list of (index, fractions)
        Achieved class fractions per slice (one entry ``((), fractions)`` for a
        2-D image); failed slices are absent.
    failed_slices : list of (index, message)
    notes : list of str
        What was converted to read the input (palette -> RGB, 16 -> 8 bits, ...);
        also stored in the output file's metadata.
    """

    input: Path
    output: Optional[Path] = None
    status: str = "done"
    message: str = ""
    shape: Tuple[int, ...] = ()
    slice_volumes: List[Tuple[Tuple[int, ...], np.ndarray]] = field(default_factory=list)
    failed_slices: List[Tuple[Tuple[int, ...], str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def _error_text(exc: BaseException) -> str:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    if isinstance(exc, (ValueError, FileNotFoundError, IndexError)):
        return msg
    return f"{type(exc).__name__}: {msg}"


def _volumes(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels.ravel().astype(np.int64), minlength=k)[: max(k, int(labels.max()) + 1)] / labels.size


def _finished_output(p: Path, out_dir: Path, fmt: str, mode: str) -> Optional[Path]:
    """The existing output of ``p`` (resume), found before reading any pixel (the name depends on the header)."""
    if not p.exists():
        return None
    for cand in _possible_outputs(p, out_dir, fmt):
        if cand.exists():
            try:
                if output_path(inspect_input(p, mode=mode), out_dir, fmt) != cand:
                    continue
            except (ValueError, OSError):
                pass
            return cand
    return None


def segment_file(
    path: PathLike,
    out_dir: PathLike,
    segment_fn: SegmentCallable,
    *,
    fmt: str = "png",
    overwrite: bool = False,
    mode: str = "slices",
    scheduler=None,
    num_workers: Optional[int] = None,
    progress_factory: Optional[Callable[[int, str], Any]] = None,
    run_inputs: Sequence[PathLike] = (),
) -> FileResult:
    """Segment one image or stack file and write its label file into ``out_dir``.

    Never raises for a problem with this file: the :class:`FileResult` says
    ``"failed"`` with the reason (missing or unreadable file, zero-size axis, a NaN
    image, ...). A stack with some failed slices is written (failed slices as 0,
    listed in the TIFF description under ``failed_slices``) and reported as failed.

    Parameters
    ----------
    path : str or Path
    out_dir : str or Path
        Created if needed.
    segment_fn : SegmentCallable
        From :func:`napari_vptv.api.make_segment_fn` (or any callable ``(image, *, channel_axis)``
        with an ``n_classes(rgb)`` method).
    fmt : {"png", "tif"}
        Format of 2-D label images (stacks are always TIFF).
    overwrite : bool
        Replace an existing output (otherwise it is skipped).
    mode : {"slices", "volume"}
        Stacks: per 2-D slice (the volumes apply per slice) or per 3-D volume.
    scheduler, num_workers
        See :func:`store_labels_tiff` (stacks only).
    progress_factory : callable ``(total, description) -> tqdm-like``, optional
        Creates a progress bar over the slices of a stack (``update(n)``, ``close()``).
    run_inputs : sequence of path
        Every input of the run: an output that would be one of them (e.g. ``a.png``
        -> ``out/a.tif`` when ``out/a.tif`` is itself an input) is refused, even
        with ``overwrite``.
    """
    p = Path(path)
    result = FileResult(p)
    guard = OutputGuard([p, *run_inputs], overwrite=overwrite)
    stack_options = {"scheduler": scheduler, "num_workers": num_workers, "progress_factory": progress_factory}
    try:
        _segment_file_into(
            p, Path(out_dir), segment_fn, result, guard, fmt=fmt, overwrite=overwrite, mode=mode, **stack_options
        )
    except FileExistsError as exc:
        if overwrite or result.output is None or not result.output.exists():
            result.status, result.message = "failed", _error_text(exc)
        else:  # another run wrote it meanwhile: its file is kept, as a finished one is
            result.status, result.message = "skipped", "exists (written meanwhile by another run)"
            result.slice_volumes, result.failed_slices = [], []
    except Exception as exc:  # noqa: BLE001 - per-item error capture
        result.status, result.message = "failed", _error_text(exc)
    return result


def _segment_file_into(
    p: Path,
    out_dir: Path,
    segment_fn,
    result: FileResult,
    guard: OutputGuard,
    *,
    fmt: str,
    overwrite: bool,
    mode: str,
    **stack_options,
) -> None:
    """The work of :func:`segment_file`: fills ``result``; raises on a problem (the caller reports it)."""
    _refuse_input_as_output(p, out_dir, fmt, guard)
    done = None if overwrite else _finished_output(p, out_dir, fmt, mode)
    if done is not None:
        result.output, result.status, result.message = done, "skipped", "exists"
        return
    info = inspect_input(p, mode=mode)
    final = output_path(info, out_dir, fmt)
    result.output = final
    if final.exists() and not overwrite:
        result.status, result.message = "skipped", "exists"
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    k = segment_fn.n_classes(info.rgb) if hasattr(segment_fn, "n_classes") else 2
    if not info.is_stack:
        progress, scheduler = stack_options.get("progress_factory"), stack_options.get("scheduler")
        cluster = None if scheduler is None or isinstance(scheduler, str) else scheduler
        _segment_image_file(
            p, info, final, segment_fn, k, result, overwrite=overwrite, progress_factory=progress, cluster=cluster
        )
        return
    result.shape = _segment_stack_file(
        p, info, final, segment_fn, k, result, overwrite=overwrite, mode=mode, **stack_options
    )
    if result.failed_slices:
        result.status, result.message = "failed", _failed_slices_message(result)


def _refuse_input_as_output(p: Path, out_dir: Path, fmt: str, guard: OutputGuard) -> None:
    """A one-line ValueError if any possible output of ``p`` is an input of the run (even with overwrite)."""
    for cand in _possible_outputs(p, out_dir, fmt):
        src = guard.input_of(cand)
        if src is not None:
            what = "the input file itself" if src == p else f"the input '{src}' of this run"
            raise ValueError(f"the output '{cand}' would be {what}; choose another output folder")


def _failed_slices_message(result: FileResult) -> str:
    """``"2 of 5 slices failed (written as 0), first: slice (1,): ..."``."""
    idx, msg = result.failed_slices[0]
    return (
        f"{len(result.failed_slices)} of {len(result.failed_slices) + len(result.slice_volumes)} "
        f"slices failed (written as 0), first: slice {idx}: {msg}"
    )


def _segment_image_file(
    p, info, final, segment_fn, k, result, *, overwrite, progress_factory=None, cluster=None
) -> None:
    """A 2-D image: segment, write atomically (temporary file + rename), record the volumes.
    A segmentation function with ``reports_tiles`` reports the tiles of a large image
    to a bar of ``progress_factory``, made at the first tile, and runs them on
    ``cluster`` (a ``distributed.Client``) when given."""
    image = open_lazy(p, info.pixels)
    if info.rgb and image.shape[-1] == 4:
        image = image[..., :3]
    bar = None

    def tile_done(done, total):
        nonlocal bar
        if bar is None:
            bar = progress_factory(total, f"{p.name} (tiles)")
        bar.update(done - bar.n)

    tiled = getattr(segment_fn, "reports_tiles", False)
    hook = {"tile_progress": tile_done} if progress_factory and tiled else {}
    if cluster is not None and tiled:
        hook["scheduler"] = cluster
    try:
        res = segment_fn(image, channel_axis=-1 if info.rgb else None, **hook)
    finally:
        if bar is not None:
            bar.close()
    labels = labels_of(res)
    found = getattr(res, "info", None) or {}
    result.notes = list(info.notes) + list(found.get("conversions", []))
    if found.get("no_cells"):
        result.notes.append(f"no cells: {found['no_cells']}")
    tmp = partial_name(final)
    try:
        write_labels(tmp, labels, metadata=_output_metadata(p, result.notes))
        publish(tmp, final, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    vol = getattr(res, "volumes", None)
    result.slice_volumes.append(((), np.asarray(vol) if vol is not None else _volumes(labels, k)))
    result.shape = labels.shape


def _segment_stack_file(
    p, info, final, segment_fn, k, result, *, overwrite, mode, scheduler, num_workers, progress_factory
):
    import json

    import tifffile

    local = scheduler is None or isinstance(scheduler, str)
    total = int(np.prod(info.leading, dtype=np.int64))
    bar = progress_factory(total, p.name) if progress_factory is not None else None
    progress = None
    if bar is not None and local:
        lock = threading.Lock()

        def progress(n):
            with lock:
                bar.update(n)

    array = open_lazy(p, info.pixels)
    result.notes = list(info.notes)
    if info.dtype != np.uint8:
        result.notes.append(f"{info.dtype.name} slices each brought to the 8-bit scale by their significant bits")
    labels = segment_stack_dask(array, segment_fn, rgb=info.rgb, mode=mode, n_classes=k, progress=progress)
    _, sentinel = label_dtype_and_sentinel(k)
    tmp = partial_name(final)
    n_threads = num_workers or os.cpu_count() or 1
    with shared_torch_threads(n_threads if local and scheduler in (None, "threads") else 1):
        try:
            meta = {"vptv": _output_metadata(p, result.notes)}
            target = store_labels_tiff(labels, tmp, scheduler=scheduler, num_workers=num_workers, metadata=meta)
            if bar is not None and not local:
                bar.update(total)
            # per-slice volumes and failures, read back one slice at a time (plain reads:
            # memory stays flat however long the stack is)
            piece_axes = 2 if mode == "slices" else 3
            lead_shape = tuple(labels.shape[: labels.ndim - piece_axes])
            for idx in np.ndindex(*lead_shape):
                sl = target.read(idx)
                if sl.flat[0] == sentinel and np.all(sl == sentinel):
                    msg = _rerun_error(array, idx, segment_fn, info.rgb, mode)
                    result.failed_slices.append((idx, msg))
                    target[idx + (slice(None),) * piece_axes] = np.zeros_like(sl)
                else:
                    result.slice_volumes.append((idx, _volumes(sl, k)))
            if result.failed_slices:  # say so in the file too (tifffile keeps shape / axes)
                desc = {
                    "shape": list(labels.shape),
                    "axes": "Q" * (labels.ndim - 2) + "YX",
                    **meta,
                    "failed_slices": [[list(i), m] for i, m in result.failed_slices],
                }
                tifffile.tiffcomment(str(tmp), json.dumps(desc))
            publish(tmp, final, overwrite)
        finally:
            tmp.unlink(missing_ok=True)
            if bar is not None:
                bar.close()
    return tuple(labels.shape)


@contextlib.contextmanager
def shared_torch_threads(workers: int, total: Optional[int] = None):
    """torch's CPU threads shared out between ``workers`` threads that each run torch:
    ``total // workers`` each (``total``: default the CPUs), no oversubscription; the
    previous setting is restored on exit. Nothing changes for one worker."""
    previous = None
    if workers > 1:
        try:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(max(1, (total or os.cpu_count() or 1) // workers))
        except ImportError:
            pass
    try:
        yield
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


def _output_metadata(p: Path, notes: Sequence[str]) -> dict:
    """What a label file records about its input: the name and every conversion made."""
    return {"input": printable(p.name), "conversions": [printable(n) for n in notes]}


def _rerun_error(array, idx, segment_fn, rgb, mode) -> str:
    """Re-run one failed piece in this process to get its error message."""
    try:
        piece = np.asarray(array[idx])
        if rgb and piece.shape[-1] == 4:
            piece = piece[..., :3]
        for item in segment_stack(piece[None], segment_fn, rgb=rgb, mode=mode, on_error="skip"):
            if item.error is not None:
                return _error_text(item.error)
            lab = item.labels
            if lab.min() < 0:
                return f"segmentation returned a negative label {int(lab.min())}"
        return "the segmentation failed on a worker but succeeded when re-run here; run again"
    except Exception as exc:  # noqa: BLE001
        return _error_text(exc)


# --------------------------------------------------------------------------- #
# many files
# --------------------------------------------------------------------------- #
@dataclass
class BatchSummary:
    """Counts and per-file results of :func:`run_batch`.

    ``stale_removed`` lists the temporary files of killed earlier runs that were
    removed from the output folder before this run started.
    """

    results: List[FileResult] = field(default_factory=list)
    stale_removed: List[Path] = field(default_factory=list)

    @property
    def done(self) -> List[FileResult]:
        return [r for r in self.results if r.status == "done"]

    @property
    def skipped(self) -> List[FileResult]:
        return [r for r in self.results if r.status == "skipped"]

    @property
    def failed(self) -> List[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        return (
            f"{len(self.results)} input(s): {len(self.done)} done, "
            f"{len(self.skipped)} skipped (exists), {len(self.failed)} failed"
        )


def run_batch(
    inputs: Iterable[PathLike],
    out_dir: PathLike,
    segment_fn: SegmentCallable,
    *,
    fmt: str = "png",
    overwrite: bool = False,
    mode: str = "slices",
    scheduler=None,
    num_workers: Optional[int] = None,
    on_result: Optional[Callable[[FileResult], None]] = None,
    progress_factory: Optional[Callable[[int, str], Any]] = None,
) -> BatchSummary:
    """Segment every input (see :func:`iter_inputs`) into ``out_dir``.

    Each file is independent: a failure is recorded and the others are done.
    Two inputs with the same stem (``a.png`` and ``a.tif``) would write the same
    output; the second is reported as failed rather than overwriting the first.
    No output may be an input of the run (:class:`~napari_vptv.core.io.outputs.OutputGuard`).
    Temporary files left in ``out_dir`` by killed runs for this run's outputs are
    removed first (``summary.stale_removed``; nothing else is ever removed).
    ``on_result`` is called after each file.

    With the local threaded scheduler (``scheduler`` None or ``"threads"``) and more
    than one file, ``num_workers`` files (default: the CPUs) are segmented at once,
    each on one thread (:func:`_run_in_threads`); ``summary.results`` keeps the
    inputs' order, ``on_result`` follows the order they finish in. A single file (or
    another scheduler) gets the workers for its stack's slices instead.
    """
    summary = BatchSummary()
    items = list(iter_inputs(inputs))
    run_inputs = [item.path for item in items if item.problem is None]
    outputs = [c for path in run_inputs for c in _possible_outputs(path, Path(out_dir), fmt)]
    summary.stale_removed = clean_stale_partials(out_dir, outputs)
    plan = _plan(items, Path(out_dir), fmt)
    settings = dict(fmt=fmt, overwrite=overwrite, mode=mode, progress_factory=progress_factory, run_inputs=run_inputs)
    jobs = [i for i, res in enumerate(plan) if res is None]
    workers = _file_workers(num_workers, scheduler, len(jobs))
    for res in plan:  # the inputs refused before any work
        if res is not None and on_result is not None:
            on_result(res)
    if workers == 1:
        for i in jobs:
            plan[i] = segment_file(
                items[i].path, out_dir, segment_fn, scheduler=scheduler, num_workers=num_workers, **settings
            )
            if on_result is not None:
                on_result(plan[i])
    else:
        _run_in_threads(
            plan,
            items,
            jobs,
            workers,
            lambda path: segment_file(path, out_dir, segment_fn, num_workers=1, **settings),
            on_result,
        )
    summary.results.extend(plan)
    return summary


def _plan(items, out_dir: Path, fmt: str) -> List[Optional[FileResult]]:
    """Per input, the :class:`FileResult` of an input refused before any work (a
    problem found while listing it, or the same output name as an earlier input), else
    None (to be segmented)."""
    claimed, plan = {}, []
    for item in items:
        if item.problem is not None:
            plan.append(FileResult(item.path, status="failed", message=item.problem))
            continue
        stems = {str(c) for c in _possible_outputs(item.path, out_dir, fmt)}
        clash = next((claimed[s] for s in stems if s in claimed), None)
        if clash is not None:
            message = f"same output name as '{clash}' (same file stem); rename one of them"
            plan.append(FileResult(item.path, status="failed", message=message))
            continue
        for s in stems:
            claimed[s] = item.path
        plan.append(None)
    return plan


def _file_workers(num_workers: Optional[int], scheduler, n_files: int) -> int:
    """How many files are segmented at once: ``num_workers`` (default: the CPUs) with
    the local threaded scheduler and more than one file, else 1 (then a stack's slices
    share the workers, as with a single file)."""
    if n_files < 2 or scheduler not in (None, "threads"):
        return 1
    return max(1, min(n_files, num_workers or os.cpu_count() or 1))


def _run_in_threads(plan, items, jobs, workers: int, segment_one, on_result) -> None:
    """``plan[i] = segment_one(items[i].path)`` for every ``i`` of ``jobs``, ``workers``
    files at once (the solver kernels and torch release the GIL), each file's own
    work on one thread; ``on_result`` as each file finishes. On an interrupt the files
    not started are dropped and the running ones finish (each output is published
    whole or not at all)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vptv-file")
    try:
        with shared_torch_threads(workers):
            futures = {pool.submit(segment_one, items[i].path): i for i in jobs}
            for future in as_completed(futures):
                plan[futures[future]] = future.result()
                if on_result is not None:
                    on_result(plan[futures[future]])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
