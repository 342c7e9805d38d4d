"""The measurement table of the segmentation widget (per cell, per frame).

:func:`measure_result` computes the tables of a finished result with
:mod:`napari_vptv.core.wbc.measure` and adds the cell instances as a Labels layer whose
``features`` are the per-cell table (hovering a cell shows its areas and ratio).
:class:`MeasurementTable` shows the table in the widget: sortable columns, a click on
a row selects that cell (and moves the viewer to its frame and position), and
"Export CSV…" writes every column.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from ._common import METADATA_KEY
from ._outputs import CELL_OUTLINE, claim, live_layer, seal, single_colour, tag
from .core.wbc.measure import class_areas, measure_cells, write_csv

Table = Dict[str, np.ndarray]

#: (column, header) shown in the widget; the CSV has every column.
SHOWN_CELL_COLUMNS = (
    ("frame", "frame"),
    ("cell", "cell"),
    ("cell_area", "cell area"),
    ("nucleus_area", "nucleus area"),
    ("cytoplasm_area", "cytoplasm area"),
    ("nc_ratio", "N/(N+C)"),
    ("nucleus_lobes", "lobes"),
    ("nucleus_solidity", "nucleus solidity"),
)


def layer_spacing(layer) -> Optional[Sequence[float]]:
    """The (y, x) pixel size of a layer if it has a scale other than 1, else None."""
    scale = np.asarray(layer.scale, dtype=float)[-2:]
    return None if np.allclose(scale, 1.0) else tuple(scale)


def _frames(shape_lead):
    return list(np.ndindex(*shape_lead)) if shape_lead else [()]


def measure_result(
    labels: np.ndarray,
    image_layer,
    *,
    names: Sequence[str],
    diameter: Optional[float],
    spacing: Optional[Sequence[float]] = None,
):
    """Per-cell (WBC classes) or per-class tables of a label array (any leading axes).

    Returns ``(cells, frames, instances)``: the per-cell table (None when the classes
    are not the WBC ones) in the format of ``vptv segment --measure``
    (:mod:`napari_vptv.core.wbc.cell_table`, ``image`` = the layer's name), a per-frame
    table of class areas, and the cell instance array (globally unique ids across
    frames; None without cells). ``spacing``: the (y, x) pixel size in µm (default:
    the image layer's scale, if not 1).
    """
    from .core.wbc.cell_table import cell_rows, concat_tables
    from .core.wbc.measure import cell_instances

    spacing = layer_spacing(image_layer) if spacing is None else tuple(spacing)
    wbc = list(names[1:3]) == ["cytoplasm", "nucleus"]
    lead = labels.shape[:-2]
    rows, frames = [], []
    instances = np.zeros(labels.shape, np.int32) if wbc else None
    offset = 0
    for frame, index in enumerate(_frames(lead)):
        lab = labels[index] if index else labels
        area = class_areas(lab, len(names), class_names=names, spacing=spacing)
        frame_row = {"frame": np.array([frame])}
        for k, name in enumerate(names):
            frame_row[f"{name}_area_px"] = area["area_px"][k : k + 1]
            if "area_um2" in area:
                frame_row[f"{name}_area_um2"] = area["area_um2"][k : k + 1]
        frames.append(frame_row)
        if not wbc:
            continue
        inst = cell_instances(lab, diameter=diameter)
        inst[inst > 0] += offset
        image = np.asarray(image_layer.data[index] if index else image_layer.data)
        t = measure_cells(lab, image=image, spacing=spacing, instances=inst)
        offset = int(inst.max(initial=offset))
        instances[index] = inst
        rows.append(cell_rows(image_layer.name, frame, t))
    cells = concat_tables(rows) if rows else None
    frame_table = {k: np.concatenate([r[k] for r in frames]) for k in frames[0]}
    return cells, frame_table, instances


def _cells_summary(cells: Table, source: str, n_frames: int, unit: str) -> str:
    """'img: 4 cells; median N/(N+C) 0.41; areas in µm²', or 'no white cell found'."""
    where = f" in {n_frames} frames" if n_frames > 1 else ""
    n = len(cells["cell"])
    if n == 0:
        return f"{source}: no white cell found{where}"
    ratios = np.asarray(cells["nc_ratio"], dtype=float)
    ratio = f"; median N/(N+C) {np.nanmedian(ratios):.2f}" if np.isfinite(ratios).any() else "; no nucleus found"
    cut = int(np.sum(cells.get("touches_border", np.zeros(n, bool))))
    edge = f" ({cut} at the image edge)" if cut else ""
    return f"{source}: {n} cell{'s' if n != 1 else ''}{edge}{where}{ratio}; areas in {unit}; numbers drawn on the image"


def add_cells_layer(viewer, instances: np.ndarray, cells: Table, *, name: str, like, meta: dict):
    """A Labels layer of the cell instances (contours) whose features are ``cells``."""
    import pandas as pd

    features = pd.DataFrame({"index": cells["cell"], **{k: v for k, v in cells.items() if k not in ("cell", "image")}})
    layer = viewer.add_labels(
        instances, name=name, scale=tuple(like.scale), translate=tuple(like.translate), opacity=1.0, features=features
    )
    single_colour(layer, CELL_OUTLINE)  # one colour, as in the widget's legend
    layer.contour = 2
    claim(layer)
    tag(layer, {**meta, "kind": "cells"})
    seal(layer)
    return layer


class MeasurementTable(Container):
    """Sortable table of the last result's measurements, with CSV export.

    Attributes
    ----------
    cells : dict of columns or None
        Per-cell table of the last result.
    frames : dict of columns or None
        Per-frame class areas of the last result.
    cells_layer : the Labels layer of the cell instances (or None).
    selected_cell : int or None
        Cell id of the clicked row.
    """

    def __init__(self, viewer):
        super().__init__(labels=False)
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget

        self.viewer = viewer
        self.cells: Optional[Table] = None
        self.frames: Optional[Table] = None
        self.cells_layer = None
        self.selected_cell: Optional[int] = None
        self.summary = Label(value="No measurements yet: run a segmentation.")
        self.summary.native.setWordWrap(True)
        self.export_button = PushButton(
            text="Export CSV…", enabled=False, tooltip="Save the per-cell table (and the per-frame areas) as CSV files"
        )
        self.table = QTableWidget(0, 0)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setMinimumHeight(150)
        self.table.cellClicked.connect(lambda row, _col: self.select_row(row))
        self.extend([self.summary])
        self.native.layout().addWidget(self.table)
        self.append(self.export_button)
        self.export_button.changed.connect(lambda *_: self._export_dialog())

    # ------------------------------------------------------------------ show
    def show_tables(self, cells: Optional[Table], frames: Table, *, cells_layer=None, source: str = ""):
        """Fill the table with ``cells`` (or, without cells, the per-frame class areas)."""
        self.cells, self.frames, self.cells_layer = cells, frames, cells_layer
        self.selected_cell = None
        unit = "µm²" if cells is not None and "cell_area_um2" in cells else "px"
        if cells is not None:
            shown = [
                (self._column(cells, key), f"{head} ({unit})" if "area" in key else head)
                for key, head in SHOWN_CELL_COLUMNS
                if self._column(cells, key) is not None
            ]
            n_frames = len(frames["frame"])
            if n_frames == 1:
                shown = [s for s in shown if s[1] != "frame"]
            self.summary.value = _cells_summary(cells, source, n_frames, unit)
        else:
            shown = [(key, key.replace("_", " ")) for key in frames]
            self.summary.value = f"{source}: class areas per frame"
        self._fill(cells if cells is not None else frames, shown)
        self.export_button.enabled = True

    @staticmethod
    def _column(table: Table, key: str) -> Optional[str]:
        for candidate in (f"{key}_um2", f"{key}_px", key):
            if candidate in table:
                return candidate
        return None

    def _fill(self, table: Table, shown):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QTableWidgetItem

        n = len(next(iter(table.values()))) if table else 0
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setRowCount(n)
        self.table.setColumnCount(len(shown))
        self.table.setHorizontalHeaderLabels([head for _, head in shown])
        cell_ids = table.get("cell")
        for i in range(n):
            for j, (key, _) in enumerate(shown):
                value = table[key][i]
                item = QTableWidgetItem()
                number = float(value) if np.isscalar(value) and not isinstance(value, str) else None
                if number is not None:  # sort numerically
                    item.setData(Qt.DisplayRole, round(number, 3) if not float(number).is_integer() else int(number))
                else:
                    item.setText(str(value))
                if cell_ids is not None:
                    item.setData(Qt.UserRole, int(cell_ids[i]))
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()

    # ----------------------------------------------------------------- select
    def select_row(self, row: int) -> Optional[int]:
        """Select the cell of table row ``row`` (as displayed, after sorting)."""
        from qtpy.QtCore import Qt

        item = self.table.item(row, 0)
        if item is None or self.cells is None:
            return None
        cell = item.data(Qt.UserRole)
        if cell is None:
            return None
        self.selected_cell = int(cell)
        i = int(np.nonzero(self.cells["cell"] == cell)[0][0])
        layer = self.cells_layer
        if live_layer(self.viewer.layers, layer) is not None:
            layer.selected_label = int(cell)
            self.viewer.layers.selection.active = layer
            lead = layer.data.ndim - 2
            if lead:
                index = np.unravel_index(int(self.cells["frame"][i]), layer.data.shape[:lead])
                world = np.asarray(
                    layer.data_to_world(list(index) + [self.cells["centroid_y"][i], self.cells["centroid_x"][i]])
                )
                for axis, value in enumerate(world[:lead]):
                    self.viewer.dims.set_point(self.viewer.dims.ndim - layer.data.ndim + axis, value)
            yx = layer.data_to_world([0] * lead + [self.cells["centroid_y"][i], self.cells["centroid_x"][i]])
            self.viewer.camera.center = tuple(np.asarray(yx)[-2:])
        return self.selected_cell

    # ----------------------------------------------------------------- export
    def export_csv(self, path, *, overwrite: bool = False):
        """Write the per-cell table (or, without cells, the per-frame class areas) as CSV."""
        table = self.cells if self.cells is not None else self.frames
        if table is None:
            raise ValueError("nothing to export: run a segmentation first")
        return write_csv(table, path, overwrite=overwrite)

    def _export_dialog(self):
        from napari.utils.notifications import show_error, show_info
        from qtpy.QtWidgets import QFileDialog

        # the dialog itself asks before replacing an existing file
        path, _ = QFileDialog.getSaveFileName(self.native, "Export measurements", "measurements.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            show_info(f"Measurements written to {self.export_csv(path, overwrite=True)}")
        except Exception as exc:  # noqa: BLE001 - shown to the user
            show_error(f"Could not write {path}: {exc}")


def result_meta(layer) -> dict:
    """The plugin's metadata of a result layer."""
    return dict(layer.metadata.get(METADATA_KEY) or {})
