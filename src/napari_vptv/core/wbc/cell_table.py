"""The per-cell table of ``vptv segment --measure``, ``vptv measure`` and the widget.

One table format everywhere: one row per cell per image (and per frame of a stack),
the columns of :func:`napari_vptv.core.wbc.measure.measure_cells` preceded by ``image``
(the file or layer name) and ``frame`` (0 for a 2-D image; stack frames numbered in C
order of the leading axes). The rows are written with
:func:`napari_vptv.core.wbc.measure.write_csv`.

No napari, Qt or torch imports here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .measure import border_cells, cell_instances, measure_cells

__all__ = [
    "LEAD_COLUMNS",
    "cell_rows",
    "measure_image",
    "concat_tables",
    "read_labels",
    "pair_files",
    "measure_files",
    "nucleus_area_per_image",
    "instance_image",
    "write_instances",
]

Table = Dict[str, np.ndarray]
PathLike = Union[str, Path]

#: Columns in front of those of :func:`measure_cells`.
LEAD_COLUMNS = ("image", "frame")


def cell_rows(image: str, frame: int, cells: Table) -> Table:
    """``cells`` (one 2-D frame's :func:`measure_cells` table) with ``image`` and ``frame`` first."""
    n = len(cells["cell"])
    colours = [k for k in cells if "intensity" in k]  # the mean colours last
    return {
        "image": np.full(n, image, dtype=object),
        "frame": np.full(n, int(frame), dtype=np.int64),
        **{k: v for k, v in cells.items() if k not in colours},
        **{k: cells[k] for k in colours},
    }


def concat_tables(tables: Sequence[Table]) -> Optional[Table]:
    """Row-wise concatenation of tables (None if there are none). A column missing
    from some table (e.g. the mean colours of a grey image, or of a frame without a
    cell) is empty (NaN) in its rows."""
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    keys: List[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys]

    def column(t, k):
        if k in t:
            return np.asarray(t[k])
        return np.full(len(t["cell"]) if "cell" in t else len(next(iter(t.values()))), np.nan)

    return {k: np.concatenate([column(t, k) for t in tables]) for k in keys}


def _is_rgb(image: np.ndarray, labels: np.ndarray) -> bool:
    return image.ndim == labels.ndim + 1 and image.shape[-1] in (3, 4)


def measure_image(
    labels, image=None, *, name: str, pixel_size: Optional[float] = None, diameter: Optional[float] = None
) -> Table:
    """The per-cell table of one label image or stack ``(..., H, W)``.

    Parameters
    ----------
    labels : (..., H, W) int array
        WBC class labels (0 background, 1 cytoplasm, 2 nucleus); leading axes are frames.
    image : (..., H, W[, C]) array, optional
        The image the labels were computed from (adds the mean colours).
    name : str
        The ``image`` column.
    pixel_size : float, optional
        Pixel size in µm (square pixels): adds the ``*_um2`` area columns.
    diameter : float, optional
        Cell diameter in px to split touching cells.
    """
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"labels of {name!r} must be at least 2-D, got shape {labels.shape}")
    if image is not None:
        image = np.asarray(image)
        if image.shape[: labels.ndim] != labels.shape:
            raise ValueError(f"image {name!r} has shape {image.shape}, its labels {labels.shape}: they must match")
        if image.ndim == labels.ndim + 1 and not _is_rgb(image, labels):
            raise ValueError(f"image {name!r} has a last axis of {image.shape[-1]}; expected grey or RGB")
    spacing = None if pixel_size is None else (float(pixel_size), float(pixel_size))
    lead = labels.shape[:-2]
    rows = []
    for frame, index in enumerate(np.ndindex(*lead) if lead else [()]):
        piece = None if image is None else image[index]
        cells = measure_cells(labels[index], image=piece, spacing=spacing, diameter=diameter)
        rows.append(cell_rows(name, frame, cells))
    return concat_tables(rows)


def instance_image(labels, *, diameter: Optional[float] = None) -> Tuple[np.ndarray, dict]:
    """The cell-instance labels of a WBC label image or stack ``(..., H, W)``.

    One id per white cell (1..n per frame, reading order), shared by its nucleus and
    cytoplasm: :func:`~napari_vptv.core.wbc.measure.cell_instances` with ``diameter``,
    the same instances and ids as the ``cell`` column of :func:`measure_image` with
    that ``diameter``. Returns ``(instances, facts)``; ``facts["touches_border"]``
    lists the ids of the cells cut by the image edge (per frame for a stack).
    """
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"labels must be at least 2-D, got shape {labels.shape}")
    out = np.zeros(labels.shape, np.int32)
    border = []
    for index in np.ndindex(*labels.shape[:-2]):
        out[index] = cell_instances(labels[index], diameter=diameter)
        border.append(border_cells(out[index]).tolist())
    return out, {"touches_border": border[0] if labels.ndim == 2 else border}


def write_instances(label_path: PathLike, out_path: PathLike, *, diameter: Optional[float] = None) -> Path:
    """:func:`instance_image` of a label file, written to ``out_path`` (PNG or TIFF;
    the border cells in its metadata, :func:`~napari_vptv.core.io.files.read_label_metadata`)."""
    from ..io.files import write_labels

    inst, facts = instance_image(read_labels(label_path), diameter=diameter)
    return write_labels(out_path, inst, metadata=facts)


def read_labels(path: PathLike) -> np.ndarray:
    """A label file as an integer array: labels 0/1/2 (a segmentation output), WBC grey
    masks 0/128/255 (mapped to 0/1/2), or a multi-page TIFF of labels (a stack)."""
    from ..io.files import read_mask

    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        from ..io.files import is_wbc_style, wbc_grey_to_labels

        try:
            arr = np.asarray(tifffile.imread(p))
        except Exception as exc:  # noqa: BLE001 - one line naming the file
            raise ValueError(f"cannot read labels {p}: {exc}") from None
        if arr.ndim > 2:
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"labels {p} are not integers (dtype {arr.dtype})")
            return wbc_grey_to_labels(arr) if arr.dtype == np.uint8 and is_wbc_style(arr) else arr.astype(np.int32)
    return read_mask(p)


def _stems(paths: Sequence[Path]) -> Dict[str, List[Path]]:
    out: Dict[str, List[Path]] = {}
    for p in paths:
        out.setdefault(p.stem, []).append(p)
    return out


def pair_files(images: Sequence[Path], labels: Sequence[Path]) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """Pair every image with the label file of the same stem (or ``<stem>_...``).

    Returns ``(pairs, problems)``; a problem is one line naming an image without a
    label file, or with two candidates.
    """
    by_stem = _stems(labels)
    pairs, problems = [], []
    for img in images:
        found = by_stem.get(img.stem) or [p for p in labels if p.stem.startswith(img.stem + "_")]
        if not found:
            problems.append(f"{img}: no label file named {img.stem}.* or {img.stem}_*")
        elif len(found) > 1:
            problems.append(f"{img}: several label files match ({', '.join(p.name for p in found)})")
        else:
            pairs.append((img, found[0]))
    return pairs, problems


def measure_files(
    pairs: Sequence[Tuple[Path, Optional[Path]]],
    *,
    pixel_size: Optional[float] = None,
    diameter: Optional[float] = None,
) -> Tuple[Optional[Table], List[str]]:
    """The per-cell table of ``(label file, image file or None)`` pairs.

    Returns ``(table, problems)``: the rows of every pair that could be read (None if
    none could; an image without a cell has no row), and one line per pair that
    could not be read.
    """
    from ..io.files import read_image

    tables, problems = [], []
    for labels_path, image_path in pairs:
        name = (image_path or labels_path).name
        try:
            labels = read_labels(labels_path)
            image = None if image_path is None else read_image(image_path)
            tables.append(measure_image(labels, image, name=name, pixel_size=pixel_size, diameter=diameter))
        except (ValueError, OSError) as exc:
            problems.append(f"{name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    return concat_tables(tables), problems


def nucleus_area_per_image(table: Table) -> Dict[str, float]:
    """Summed nucleus area (px) of every image of a cell table."""
    out: Dict[str, float] = {}
    for name, area in zip(table["image"], table["nucleus_area_px"]):
        out[str(name)] = out.get(str(name), 0.0) + float(area)
    return out
