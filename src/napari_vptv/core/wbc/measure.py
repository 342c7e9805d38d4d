"""Per-cell measurements of a white blood cell segmentation (no napari, no torch).

What a haematologist reads from a white cell: its area, the areas of its nucleus and
cytoplasm, the nucleus-to-cytoplasm ratio (blasts have a high one), the number of
nucleus lobes (segmented neutrophils have 2-5) and the nucleus shape.

* :func:`cell_instances` -- cell instances from the class labels (cytoplasm and
  nucleus are one cell; touching cells are split with the cell diameter when given).
* :func:`measure_cells` -- one row per cell, computed with
  :func:`skimage.measure.regionprops_table`.
* :func:`class_areas` -- area of every class of one image / frame.
* :func:`measure_stack` -- both for every frame of a stack, with a ``frame`` column.
* :func:`write_csv` -- a table (dict of equal-length columns) as CSV, written to a
  temporary file and renamed so an interrupted write leaves nothing behind.

Tables are ``dict[str, ndarray]`` with equal-length columns (what
``regionprops_table`` returns; ``pandas.DataFrame(table)`` works). Areas are in pixels
(``*_px``) and, when the pixel ``spacing`` is given, in square units of the spacing
(``*_um2``, the spacing taken as µm per pixel).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table

__all__ = [
    "CYTOPLASM",
    "NUCLEUS",
    "cell_instances",
    "border_cells",
    "reading_order",
    "measure_cells",
    "class_areas",
    "measure_stack",
    "write_csv",
]

#: Class ids of the WBC labels (see :data:`napari_vptv.core.io.samples.CLASS_NAMES`).
CYTOPLASM, NUCLEUS = 1, 2

Table = Dict[str, np.ndarray]

#: A component bigger than this many expected cell areas is split (touching cells).
SPLIT_FACTOR = 1.5
#: A cell component smaller than this share of the reference area is a speck (default ``min_area``).
MIN_CELL_SHARE = 0.1
#: A nucleus piece smaller than this share of the cell's nucleus is not a lobe (noise).
MIN_LOBE_SHARE = 0.05


def _pixel_area(spacing: Optional[Sequence[float]]) -> Optional[float]:
    if spacing is None:
        return None
    spacing = np.asarray(spacing, dtype=float)
    if spacing.size != 2 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be two positive pixel sizes (y, x), got {spacing.tolist()}")
    return float(np.prod(spacing))


def cell_instances(
    labels,
    *,
    cell_classes: Sequence[int] = (CYTOPLASM, NUCLEUS),
    diameter: Optional[float] = None,
    min_area: Optional[float] = None,
) -> np.ndarray:
    """Cell instances (1, 2, ...; 0 = no cell) of a 2-D class label image.

    Parameters
    ----------
    labels : (H, W) int array
        Class labels (0 background, 1 cytoplasm, 2 nucleus for WBC).
    cell_classes : sequence of int
        Classes that make up a cell.
    diameter : float, optional
        Typical cell diameter in pixels. Components larger than ``SPLIT_FACTOR``
        times the area ``pi d^2 / 4`` are split along the ridges of the distance
        transform (watershed from maxima at least ``d / 2`` apart). None or 0: no split.
    min_area : float, optional
        Components smaller than this (px) are specks, not cells, and are dropped.
        Default: ``MIN_CELL_SHARE`` of the expected cell area ``pi d^2 / 4`` when
        ``diameter`` is given, else of the largest component.

    Returns
    -------
    (H, W) int32 array of instance ids, numbered 1..n in reading order
    (:func:`reading_order`).
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import relabel_sequential, watershed

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D image, got shape {labels.shape}")
    mask = np.isin(labels, list(cell_classes))
    inst = _drop_specks(connected_components(mask, connectivity=1).astype(np.int32), diameter, min_area)
    if not diameter or diameter <= 0 or inst.max() == 0:
        return reading_order(inst)
    expected = np.pi * float(diameter) ** 2 / 4.0
    areas = np.bincount(inst.ravel())
    big = np.nonzero(areas > SPLIT_FACTOR * expected)[0]
    big = big[big > 0]
    if big.size == 0:
        return reading_order(inst)
    region = np.isin(inst, big)
    dist = ndi.distance_transform_edt(region)
    peaks = peak_local_max(
        dist, min_distance=max(1, int(diameter / 2)), labels=np.where(region, inst, 0), exclude_border=False
    )
    markers = np.zeros_like(inst)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    split = watershed(-dist, markers, mask=region)
    out = inst.copy()
    out[region] = split[region] + inst.max()
    return reading_order(relabel_sequential(out)[0].astype(np.int32))


def border_cells(inst) -> np.ndarray:
    """Sorted ids of the instances of a 2-D instance image that reach its edge (cells
    cut by the field's edge: their areas are too small), as ``touches_border`` of
    :func:`measure_cells`."""
    inst = np.asarray(inst)
    edge = np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]])
    return np.unique(edge[edge > 0]).astype(np.int64)


def reading_order(inst: np.ndarray) -> np.ndarray:
    """Renumber instances 1..n in reading order: rows of cells top to bottom, each row
    left to right. A cell starts a new row when its centre lies below the current
    row's first centre by more than half the median cell height."""
    inst = np.asarray(inst)
    n = int(inst.max(initial=0))
    if n <= 1:
        return inst.astype(np.int32)
    got = regionprops_table(inst, properties=("label", "centroid", "bbox"))
    ids, cy, cx = (np.asarray(got[k], dtype=float) for k in ("label", "centroid-0", "centroid-1"))
    half = 0.5 * float(np.median(np.asarray(got["bbox-2"]) - np.asarray(got["bbox-0"])))
    order, row, top = [], [], None
    for i in np.argsort(cy, kind="stable"):
        if top is not None and cy[i] - top > half:
            order += sorted(row, key=lambda j: cx[j])
            row, top = [], None
        top = cy[i] if top is None else top
        row.append(i)
    order += sorted(row, key=lambda j: cx[j])
    lut = np.zeros(n + 1, np.int32)
    lut[ids[order].astype(int)] = np.arange(1, len(order) + 1)
    return lut[inst]


def _drop_specks(inst: np.ndarray, diameter, min_area) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    areas = np.bincount(inst.ravel())
    areas[0] = 0
    if areas.max(initial=0) == 0:
        return inst
    if min_area is None:
        reference = np.pi * float(diameter) ** 2 / 4.0 if diameter and diameter > 0 else areas.max()
        min_area = MIN_CELL_SHARE * reference
    small = areas < min_area
    small[0] = False
    if not small.any():
        return inst
    return relabel_sequential(np.where(small[inst], 0, inst))[0].astype(np.int32)


def _lobes(region_mask: np.ndarray) -> int:
    """Connected pieces of a cell's nucleus (8-connected), ignoring specks."""
    pieces = connected_components(region_mask, connectivity=2)
    sizes = np.bincount(pieces.ravel())[1:]
    if sizes.size == 0:
        return 0
    return int(np.sum(sizes >= MIN_LOBE_SHARE * sizes.sum()))


def _per_cell(inst: np.ndarray, where: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of ``where`` inside every cell 1..n."""
    return np.bincount(inst[where].ravel(), minlength=n + 1)[1:].astype(np.int64)


def _nucleus_shape(inst, nucleus, ids, image) -> Table:
    """Nucleus solidity, lobes (and mean colour) per cell id; NaN / 0 without nucleus."""
    n_inst = np.where(nucleus, inst, 0)
    props = ["label", "solidity"] + (["intensity_mean"] if image is not None else [])
    got = regionprops_table(n_inst, intensity_image=image, properties=props, extra_properties=(_lobes,))
    row = {int(v): i for i, v in enumerate(got["label"])}
    take = np.array([row.get(int(c), -1) for c in ids], dtype=int)

    def column(values, missing):
        values = np.asarray(values, dtype=float)
        return np.where(take >= 0, values[np.clip(take, 0, None)] if values.size else missing, missing)

    out = {
        "nucleus_solidity": column(got["solidity"], np.nan),
        "nucleus_lobes": column(got["_lobes"], 0).astype(np.int64),
    }
    out.update({f"nucleus_{k}": column(v, np.nan) for k, v in got.items() if k.startswith("intensity_mean")})
    return out


def _cytoplasm_colour(inst, cytoplasm, ids, image) -> Table:
    c_inst = np.where(cytoplasm, inst, 0)
    got = regionprops_table(c_inst, intensity_image=image, properties=("label", "intensity_mean"))
    row = {int(v): i for i, v in enumerate(got["label"])}
    take = np.array([row.get(int(c), -1) for c in ids], dtype=int)
    out = {}
    for k, v in got.items():
        if k.startswith("intensity_mean"):
            v = np.asarray(v, dtype=float)
            out[f"cytoplasm_{k}"] = np.where(take >= 0, v[np.clip(take, 0, None)] if v.size else np.nan, np.nan)
    return out


def _checked_instances(labels, image, instances, diameter, cell_classes) -> np.ndarray:
    """The cell instances of :func:`measure_cells` (given or from :func:`cell_instances`),
    after checking that ``instances`` and ``image`` match the labels' shape."""
    inst = (
        cell_instances(labels, cell_classes=cell_classes, diameter=diameter)
        if instances is None
        else np.asarray(instances, dtype=np.int32)
    )
    if inst.shape != labels.shape:
        raise ValueError(f"instances have shape {inst.shape}, labels {labels.shape}")
    if image is not None and np.shape(image)[:2] != labels.shape:
        raise ValueError(f"image has shape {np.shape(image)}, labels {labels.shape}: they must match")
    return inst


def measure_cells(
    labels,
    *,
    image=None,
    spacing: Optional[Sequence[float]] = None,
    diameter: Optional[float] = None,
    cytoplasm: int = CYTOPLASM,
    nucleus: int = NUCLEUS,
    instances: Optional[np.ndarray] = None,
) -> Table:
    """One row per cell of a 2-D WBC label image.

    Parameters
    ----------
    labels : (H, W) int array
        Class labels; ``cytoplasm`` and ``nucleus`` are the class ids of the two
        compartments (all other ids are background).
    image : (H, W) or (H, W, C) array, optional
        The image; adds the mean colour of the nucleus and of the cytoplasm
        (``nucleus_intensity_mean-c`` / ``cytoplasm_intensity_mean-c``).
    spacing : (float, float), optional
        Pixel size (y, x) in µm; adds the ``*_um2`` area columns.
    diameter : float, optional
        Typical cell diameter in pixels, to split touching cells
        (:func:`cell_instances`).
    cytoplasm, nucleus : int
        Class ids.
    instances : (H, W) int array, optional
        Cell instances to use instead of :func:`cell_instances`.

    Returns
    -------
    dict of 1-D arrays, one entry per cell (ordered by ``cell`` id):
    ``cell``, ``centroid_y``, ``centroid_x``, ``cell_area_px``,
    ``nucleus_area_px``, ``cytoplasm_area_px`` (and ``*_um2``), ``nc_ratio``
    ``N / (N + C)``, ``n_to_c`` ``N / C`` (inf without cytoplasm),
    ``nucleus_lobes``, ``nucleus_solidity`` (NaN without nucleus),
    ``cell_solidity``, ``cell_circularity`` ``4 pi A / P^2``, ``touches_border``
    (the cell reaches the image edge: it may be cut off, its areas too small).

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[2:12, 2:12] = 1; lab[4:8, 4:8] = 2
    >>> t = measure_cells(lab)
    >>> t["cell_area_px"].tolist(), t["nucleus_area_px"].tolist(), t["nc_ratio"].tolist()
    ([100], [16], [0.16])
    """
    labels = np.asarray(labels)
    inst = _checked_instances(labels, image, instances, diameter, (cytoplasm, nucleus))
    got = regionprops_table(inst, properties=("label", "centroid", "area", "perimeter", "solidity", "bbox"))
    ids = np.asarray(got["label"], dtype=np.int64)
    n = int(inst.max(initial=0))
    nuc = _per_cell(inst, labels == nucleus, n)[ids - 1] if ids.size else np.zeros(0, np.int64)
    cyt = _per_cell(inst, labels == cytoplasm, n)[ids - 1] if ids.size else np.zeros(0, np.int64)
    table = _area_columns(got, ids, nuc, cyt, spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        table.update(_nucleus_shape(inst, labels == nucleus, ids, image))
        table.update(_cell_shape_columns(got, labels.shape))
    if image is not None:
        table.update(_cytoplasm_colour(inst, labels == cytoplasm, ids, image))
    return table


def _area_columns(got, ids, nuc, cyt, spacing) -> Table:
    """Centroids, areas (pixels, and um^2 with a ``spacing``) and the nucleus / cytoplasm ratios."""
    area = np.asarray(got["area"], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        table: Table = {
            "cell": ids,
            "centroid_y": np.asarray(got["centroid-0"], dtype=float),
            "centroid_x": np.asarray(got["centroid-1"], dtype=float),
            "cell_area_px": area,
            "nucleus_area_px": nuc,
            "cytoplasm_area_px": cyt,
        }
        pixel = _pixel_area(spacing)
        if pixel is not None:
            for part in ("cell", "nucleus", "cytoplasm"):
                table[f"{part}_area_um2"] = table[f"{part}_area_px"] * pixel
        table["nc_ratio"] = np.where(nuc + cyt > 0, nuc / np.maximum(nuc + cyt, 1), np.nan)
        table["n_to_c"] = np.where(cyt > 0, nuc / np.maximum(cyt, 1), np.where(nuc > 0, np.inf, np.nan))
    return table


def _cell_shape_columns(got, shape) -> Table:
    """Solidity, circularity and whether the cell touches the image border."""
    area = np.asarray(got["area"], dtype=np.int64)
    perimeter = np.asarray(got["perimeter"], dtype=float)
    h, w = shape
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeter > 0, 4 * np.pi * area / perimeter**2, np.nan)
    touches = (
        (np.asarray(got["bbox-0"]) == 0)
        | (np.asarray(got["bbox-1"]) == 0)
        | (np.asarray(got["bbox-2"]) == h)
        | (np.asarray(got["bbox-3"]) == w)
    )
    return {
        "cell_solidity": np.asarray(got["solidity"], dtype=float),
        "cell_circularity": circularity,
        "touches_border": touches,
    }


def class_areas(
    labels, n_classes: int, *, class_names: Optional[Sequence[str]] = None, spacing: Optional[Sequence[float]] = None
) -> Table:
    """Area of every class: one row per class.

    Returns
    -------
    dict with ``class`` (id), ``name``, ``area_px``, ``fraction`` (of the image)
    and, with ``spacing``, ``area_um2``.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(n_classes)]
    table: Table = {
        "class": np.arange(n_classes),
        "name": np.asarray(names[:n_classes], dtype=object),
        "area_px": counts.astype(np.int64),
        "fraction": counts / max(labels.size, 1),
    }
    pixel = _pixel_area(spacing)
    if pixel is not None:
        table["area_um2"] = counts * pixel
    return table


def measure_stack(labels, *, image=None, rgb: bool = False, **kwargs) -> Tuple[Table, Table]:
    """:func:`measure_cells` of every 2-D frame of a stack, with a ``frame`` column.

    Parameters
    ----------
    labels : (..., H, W) int array
        Class labels; leading axes (T, Z, ...) are frames, numbered in C order.
    image : (..., H, W[, C]) array, optional
        The image (``rgb``: last axis is colour).
    rgb : bool
        Whether ``image`` has a colour axis.
    **kwargs
        Passed to :func:`measure_cells`.

    Returns
    -------
    cells : table, one row per cell and frame (``frame`` first).
    frames : table, one row per frame: ``frame``, ``cells`` (count), and the
        class areas ``cytoplasm_area_px`` / ``nucleus_area_px`` (and ``*_um2``).
    """
    labels = np.asarray(labels)
    lead = labels.shape[:-2]
    rows, frames = [], []
    for frame, index in enumerate(np.ndindex(*lead) if lead else [()]):
        piece_image = None
        if image is not None:
            piece_image = np.asarray(image[index] if index else image)
        t = measure_cells(labels[index] if index else labels, image=piece_image, **kwargs)
        rows.append({"frame": np.full(len(t["cell"]), frame, dtype=np.int64), **t})
        frames.append(_frame_row(frame, labels[index] if index else labels, t, kwargs))
    return _concat(rows), _concat(frames)


def _frame_row(frame: int, labels, cells: Table, kwargs) -> Table:
    nucleus, cytoplasm = kwargs.get("nucleus", NUCLEUS), kwargs.get("cytoplasm", CYTOPLASM)
    row: Table = {
        "frame": np.array([frame]),
        "cells": np.array([len(cells["cell"])]),
        "cytoplasm_area_px": np.array([int(np.sum(labels == cytoplasm))]),
        "nucleus_area_px": np.array([int(np.sum(labels == nucleus))]),
    }
    pixel = _pixel_area(kwargs.get("spacing"))
    if pixel is not None:
        row["cytoplasm_area_um2"] = row["cytoplasm_area_px"] * pixel
        row["nucleus_area_um2"] = row["nucleus_area_px"] * pixel
    return row


def _concat(tables) -> Table:
    keys = list(tables[0]) if tables else []
    return {k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in keys}


def write_csv(table: Table, path, *, overwrite: bool = False) -> Path:
    """Write a table as CSV (header row, then one row per entry).

    Written to a temporary file next to ``path`` and renamed, so an interrupted write
    never leaves a truncated file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another file name (nothing was written)")
    keys = list(table)
    n = len(table[keys[0]]) if keys else 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(keys)
            for i in range(n):
                writer.writerow([_cell_text(table[k][i]) for k in keys])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _cell_text(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{float(value):.6g}"
    return str(value.item() if isinstance(value, np.generic) else value)
