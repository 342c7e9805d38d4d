"""Large fields and scan tiles segmented in overlapping tiles at one working scale.

:func:`segment_in_tiles` runs the white-cell methods on an RGB image of any size in
tiles (``dask.array.map_overlap``), so memory is bounded by the tiles, not by the
image. The tiles run one per CPU thread torch was given (each on one torch thread,
dask's threaded scheduler; as many as fit in memory: :func:`tile_workers`), one at a
time on one thread, or on a ``dask.distributed`` cluster (``scheduler``):

1. the white-cell diameter is estimated once, by the network at full resolution on
   the whole image up to a megapixel (exactly the estimate of an untiled run) or on
   windows of that size (:func:`estimate_windows`, :func:`overview_diameter`), unless
   ``options.diameter`` is given;
2. every tile (``tile`` px square, plus a margin of :data:`MARGIN_PER_DIAMETER` cell
   diameters on each side that the neighbours own) is segmented with that diameter,
   i.e. at the same network scale, with the nucleus rule but without the white-cell
   rule; the margins are dropped. A white cell that crosses a tile's edge lies whole
   in the tile and its margin, so both tiles label it from the same pixels: it comes
   out as one connected cell, without a seam or a duplicate;
3. the white-cell rule (:func:`~napari_vptv.core.wbc.cell_rules.drop_non_white_cells`)
   runs once on the stitched labels, with the red-cell scale read on the same windows.

``progress(done, total)`` is called after each tile; it may raise to stop (the same
contract as :func:`~napari_vptv.api.segment_image`'s ``callback``).
:func:`~napari_vptv.api.segment_image` sends RGB images of more than
:data:`TILED_ABOVE_PIXELS` pixels here, its ``callback`` receiving the tiles.
"""

from __future__ import annotations

import contextvars
import math
import threading
from functools import partial
from typing import Callable, Optional

import numpy as np

from .core.batch.run import shared_torch_threads
from .core.solver.segment import SegmentationResult
from .core.solver.volumes import make_volume_spec
from .core.wbc.cell_rules import drop_non_white_cells
from .core.wbc.red_cells import red_cell_diameter
from .options import SegmentOptions

__all__ = ["TILE", "MARGIN_PER_DIAMETER", "TILED_ABOVE_PIXELS", "segment_in_tiles", "needs_tiles", "tile_workers"]

#: side (px) of a tile's own square
TILE = 1024

#: margin on each side of a tile, in white-cell diameters (a cell touching the tile's
#: square lies whole within one diameter of it; a quarter more for its surroundings)
MARGIN_PER_DIAMETER = 1.25

#: margin (px) when no white cell is found on the overview
DEFAULT_MARGIN = 128

#: :func:`napari_vptv.api.segment_image` tiles RGB white-cell images above this size
#: (one untiled 2048 x 2048 field peaks at 2.0 GB; a 1024 px tile with its margins
#: under 1 GB)
TILED_ABOVE_PIXELS = 1536 * 1536

#: the windows on which the diameter is estimated have at most this many pixels
OVERVIEW_PIXELS = 1024 * 1024


#: set while the tiles are segmented: a tile is never tiled again
_IN_TILES = contextvars.ContextVar("napari_vptv_in_tiles", default=False)


def needs_tiles(image, opts: SegmentOptions) -> bool:
    """Whether :func:`~napari_vptv.api.segment_image` sends ``image`` (an RGB white-cell
    image, ``opts`` resolved) here: a white-cell method on more than
    :data:`TILED_ABOVE_PIXELS` pixels, not itself a tile."""
    if _IN_TILES.get():
        return False
    shape = np.shape(image)
    wbc = opts.is_network or opts.method == "vptv-adapted"
    return wbc and len(shape) == 3 and shape[-1] in (3, 4) and shape[0] * shape[1] > TILED_ABOVE_PIXELS


def _network_of(opts: SegmentOptions) -> str:
    from .presets import VPTV_ADAPTED

    return opts.network_name if opts.is_network else (opts.model or VPTV_ADAPTED.network)


def _windows(shape, side):
    """Up to five ``side``-px windows (slices): the centre and the quadrants' centres."""
    h, w = shape[:2]
    out = []
    for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
        y0 = int(np.clip(fy * h - side / 2, 0, max(0, h - side)))
        x0 = int(np.clip(fx * w - side / 2, 0, max(0, w - side)))
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        if window not in out:
            out.append(window)
    return out


def estimate_windows(shape) -> list:
    """Where the scales are read: the whole image up to :data:`OVERVIEW_PIXELS` pixels,
    else windows of that size covering about a third of it (the centre, then the
    quadrants' centres, at most five)."""
    side, pixels = int(math.sqrt(OVERVIEW_PIXELS)), shape[0] * shape[1]
    if pixels <= OVERVIEW_PIXELS:
        return [(slice(None), slice(None))]
    return _windows(shape, side)[: int(np.clip(round(pixels / (3 * OVERVIEW_PIXELS)), 1, 5))]


def overview_diameter(rgb: np.ndarray, opts: SegmentOptions) -> float:
    """The white-cell diameter (px) the network estimates at full resolution on the
    :func:`estimate_windows` (on an image up to a megapixel exactly what an untiled
    run estimates): the median of the windows' estimates, windows without a cell left
    out; 0.0 when no cell is found. A downsampled overview would show the cells
    smaller than the network finds them reliably."""
    from .nn.weights import predict_wbc

    found = [
        predict_wbc(
            np.ascontiguousarray(rgb[w]), method=_network_of(opts), device=opts.device, details=True, augment=1
        ).diameter
        for w in estimate_windows(rgb.shape)
    ]
    found = [d for d in found if d > 0]
    return float(np.median(found)) if found else 0.0


def _red_cells(rgb: np.ndarray, labels: np.ndarray) -> float:
    """The red-cell diameter read on the :func:`estimate_windows` (median of those
    with an estimate): bounded memory on a whole scan."""
    found = [red_cell_diameter(rgb[w], labels[w] == 0) for w in estimate_windows(rgb.shape)]
    found = [d for d in found if d > 0]
    return float(np.median(found)) if found else 0.0


def _axis_chunks(n: int, tile: int, margin: int) -> tuple:
    """Tiles of ``tile`` px along an axis of ``n``, the last one merged into its
    neighbour when it is narrower than the margin (dask needs margin <= tile)."""
    tile = max(tile, margin)
    sizes = [tile] * (n // tile) + ([n % tile] if n % tile else [])
    if len(sizes) > 1 and sizes[-1] < margin:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    return tuple(sizes)


def segment_in_tiles(
    image,
    opts: SegmentOptions,
    segment: Callable[..., SegmentationResult],
    *,
    white_cell_rule: bool,
    tile: Optional[int] = None,
    margin: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    workers: Optional[int] = None,
    scheduler=None,
) -> SegmentationResult:
    """Segment an RGB image of any size in overlapping tiles (see the module docstring).

    :func:`napari_vptv.api.segment_image` sends large images here itself; call this
    for other tile sizes: ``segment_in_tiles(image, opts, segment_image,
    white_cell_rule=True, tile=512)``.

    Parameters
    ----------
    image : (H, W, 3) array
        RGB (RGBA: the alpha is dropped); any dtype :func:`segment_image` takes.
    opts : SegmentOptions
        Resolved options of a white-cell method.
    segment : callable ``(tile_image, opts) -> SegmentationResult``
        The single-image segmentation (:func:`napari_vptv.api.segment_image`).
    white_cell_rule : bool
        Apply the white-cell rule to the stitched labels (the tiles run without it).
    tile : int
        Side of each tile's own square (px, at least 64; default :data:`TILE`).
    margin : int, optional
        Margin on each side of a tile (px); default :data:`MARGIN_PER_DIAMETER` white-cell
        diameters (at least 32 px), or :data:`DEFAULT_MARGIN` when no cell is found.
    progress : callable ``(done, total)``, optional
        Called after every tile (from the thread that segmented it, one call at a
        time); may raise to stop: the tiles not started are dropped.
    workers : int, optional
        Tiles segmented at once, in threads, each with one torch thread; default
        :func:`tile_workers` (the CPU threads torch has, as many as fit in memory).
        The labels do not depend on it.
    scheduler : distributed.Client, optional
        Run the tiles on this ``dask.distributed`` cluster instead (its workers need
        this package and ``segment``); each tile is sent back and written here as it
        arrives, ``progress`` called here.

    Returns
    -------
    SegmentationResult
        Labels and probabilities of the whole image; ``info["tiles"]`` says how it was
        cut, ``diameter`` is the overview's estimate (or the given one).
    """
    rgb, tile = _tile_input(image, opts, tile)
    diameter = float(opts.diameter or overview_diameter(rgb, opts))
    if margin is None:
        margin = max(32, math.ceil(MARGIN_PER_DIAMETER * diameter)) if diameter else DEFAULT_MARGIN
    tile_opts = opts.replace(diameter=diameter, white_cell_rule=False)
    segment_tile = _TileSegmenter(segment, tile_opts)
    target, total = _run_tiles(rgb, tile, margin, segment_tile, progress, workers, scheduler)
    return _stitched_result(
        target.labels,
        target.probabilities,
        rgb,
        diameter,
        white_cell_rule,
        {
            "tiles": {"tile": tile, "margin": int(margin), "count": total},
            "diameter": diameter,
            "diameter_estimated": not opts.diameter,
        },
    )


def _tile_input(image, opts: SegmentOptions, tile: Optional[int]):
    """The RGB image (intensity-normalised, alpha dropped) and the tile side, checked."""
    from .core.io.intensity import normalise_intensity

    rgb, _ = normalise_intensity(np.asarray(image))
    rgb = np.ascontiguousarray(rgb[..., :3])
    if not (opts.is_network or opts.method == "vptv-adapted"):
        raise ValueError(f"tiles are for the white-cell methods; got method {opts.method!r}")
    tile = int(tile or TILE)
    if tile < 64:
        raise ValueError(f"tile must be at least 64 px, got {tile}")
    return rgb, tile


def tile_workers(n_tiles: int, tile_pixels: int, threads: Optional[int] = None) -> int:
    """How many tiles are segmented at once: one per CPU thread torch was given
    (``threads``, default ``torch.get_num_threads()``; a batch that runs several files
    at once gives each one thread, so their tiles run one at a time), at most as many
    as fit, :func:`~napari_vptv.core.batch.memory.memory_needed` each, in the memory
    left, and at least one."""
    from .core.batch.memory import available_memory, memory_needed

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    room, _ = available_memory()
    fit = n_tiles if room is None else room // max(1, memory_needed(tile_pixels, kind="default"))
    return int(max(1, min(n_tiles, threads, fit)))


class _TileSegmenter:
    """``segment(tile, options)`` as a one-argument, picklable callable (a cluster's
    workers receive it)."""

    def __init__(self, segment, options: SegmentOptions):
        self.segment, self.options = segment, options

    def __call__(self, block):
        return self.segment(block, self.options)


def _segment_block(block: np.ndarray, segment_tile) -> np.ndarray:
    """One tile (RGB + an empty channel) -> labels + 3 probabilities, same shape."""
    token = _IN_TILES.set(True)  # in this thread: a tile is never tiled again
    try:
        res = segment_tile(block[..., :3])
    finally:
        _IN_TILES.reset(token)
    return np.concatenate(
        [res.labels[..., None].astype(np.float32), np.moveaxis(res.probabilities, 0, -1).astype(np.float32)],
        axis=-1,
    )


def _run_tiles(
    rgb: np.ndarray, tile: int, margin: int, segment_tile, progress, workers: Optional[int] = None, scheduler=None
):
    """Segment ``rgb`` tile by tile (``segment_tile(tile_rgb) -> SegmentationResult``)
    into a :class:`_Stitched`, ``workers`` tiles at once (default :func:`tile_workers`;
    dask's threads, the solver's kernels and torch release the GIL) or on the
    ``scheduler``'s cluster (a ``distributed.Client``); returns it and the number of tiles."""
    import dask.array as da

    # a fourth (empty) channel: the blocks come back as labels + 3 probabilities, same shape
    arr = da.from_array(
        np.concatenate([rgb, np.zeros(rgb.shape[:2] + (1,), np.uint8)], axis=-1),
        chunks=(_axis_chunks(rgb.shape[0], tile, margin), _axis_chunks(rgb.shape[1], tile, margin), 4),
    )
    total, done, lock = int(np.prod(arr.numblocks)), [0], threading.Lock()
    if workers is None:
        workers = 1 if scheduler is not None else tile_workers(total, (tile + 2 * margin) ** 2)

    def run(block):
        out = _segment_block(block, segment_tile)
        with lock:  # one report at a time, in order
            done[0] += 1
            if progress is not None:
                progress(done[0], total)
        return out

    depth = {0: min(margin, rgb.shape[0]), 1: min(margin, rgb.shape[1]), 2: 0}
    options = dict(depth=depth, boundary="none", trim=True, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    target = _Stitched(rgb.shape[:2])
    if scheduler is not None:
        stitched = da.map_overlap(partial(_segment_block, segment_tile=segment_tile), arr, **options)
        _gather_tiles(scheduler, stitched, target, progress)
        return target, total
    stitched = da.map_overlap(run, arr, **options)
    local = {"scheduler": "threads", "num_workers": workers} if workers > 1 else {"scheduler": "synchronous"}
    # one torch thread per tile; each tile is written into the whole-image arrays as it is done
    with shared_torch_threads(workers, total=workers):
        da.store(stitched, target, lock=False, **local)
    return target, total


def _gather_tiles(client, stitched, target, progress) -> None:
    """Compute the tiles on ``client``'s cluster and write each into ``target`` here as
    it arrives (the whole image's arrays stay in this process); ``progress`` as they
    arrive. On a stop, the tiles not yet done are cancelled."""
    from dask.array.core import slices_from_chunks
    from distributed import as_completed

    blocks = list(stitched.to_delayed().ravel())  # C order, as slices_from_chunks
    where = slices_from_chunks(stitched.chunks)
    futures = client.compute(blocks)
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for n, future in enumerate(as_completed(futures, loop=client.loop), 1):
            target[where[index[future.key]]] = future.result()
            future.release()
            if progress is not None:
                progress(n, len(futures))
    finally:
        client.cancel(futures)


class _Stitched:
    """The whole image's labels and ``(3, H, W)`` probabilities, written tile by tile
    (a ``da.store`` target for blocks of labels + 3 probabilities)."""

    def __init__(self, shape):
        self.labels = np.zeros(shape, np.int32)
        self.probabilities = np.zeros((3, *shape), np.float32)
        self.shape, self.dtype, self.ndim = (*shape, 4), np.dtype(np.float32), 3

    def __setitem__(self, key, block):
        ys, xs = key[:2]
        self.labels[ys, xs] = block[..., 0]
        self.probabilities[:, ys, xs] = np.moveaxis(block[..., 1:], -1, 0)


def _stitched_result(labels, probabilities, rgb, diameter, white_cell_rule, info) -> SegmentationResult:
    if white_cell_rule:
        info["red_cell_diameter"] = red = _red_cells(rgb, labels)
        labels, info["non_white_cells_removed"] = drop_non_white_cells(labels, diameter, red_cell_diameter=red)
    result = SegmentationResult.from_arrays(
        labels, probabilities, n_iter=0, converged=True, volume_spec=make_volume_spec(3, "none")
    )
    result.diameter = diameter
    result.info = info
    return result
