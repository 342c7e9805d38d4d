"""The result layers of the "VPTV segmentation" widget
(:class:`napari_vptv._widget.SegmentationWidget`): the output Labels layer (resumed,
replaced or new), its metadata and names, the done message, and the measurements
(the cells table, the cell instances and numbers layers)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import METADATA_KEY, layer_id
from ._counting import NUMBERS_KIND, add_cell_numbers
from ._measure_table import add_cells_layer, measure_result
from ._outputs import RESULT_OPACITY, apply_classes, claim, find_own_output, live_layer, seal, tag
from ._stack_run import index_key

__all__ = ["OUTPUT_KIND", "ResultLayersMixin"]

OUTPUT_KIND = "segmentation"


class ResultLayersMixin:
    """The output, cells and numbers layers of a segmentation run (``self._run_state``)."""

    def _named(self, volumes) -> str:
        names = self._run_state["names"]
        return ", ".join(f"{name} {float(v):.3g}" for name, v in zip(names, np.ravel(volumes)))

    def _done_message(self) -> str:
        st = self._run_state
        vol = st["layer"].metadata[METADATA_KEY]["volumes"]
        what = f"{st['total']} slices, mean fractions" if st["total"] > 1 else "fractions"
        net = st["network"]
        extra = ""
        if net is not None and not net["diameter"]:
            extra = "; no white cell found"
        elif net is not None:
            how = "estimated" if net.get("estimated") else "given"
            extra = f"; cell diameter {net['diameter']:.0f} px ({how})"
            if net.get("removed"):
                extra += f"; {net['removed']} region(s) without a nucleus set to background"
        return f"done: {st['layer'].name!r}; {what}: {self._named(vol)}{extra}"

    def _measure(self, out):
        from napari.utils.notifications import show_warning

        st = self._run_state
        diameter = float(self.diameter.value) or (st["network"] or {}).get("diameter") or None
        size = float(self.pixel_size.value)
        try:
            cells, frames, instances = measure_result(
                np.asarray(out.data),
                st["image"],
                names=st["names"],
                diameter=diameter,
                spacing=(size, size) if size else None,
            )
        except Exception as exc:  # noqa: BLE001 - a failed measurement keeps the result
            self._error(f"Measurements failed: {exc}", show_warning)
            return
        self.cells_layer = None
        if cells is not None:
            self._add_cell_layers(out, cells, instances)
        tag(
            out,
            {
                "measurements": {
                    "cells": None if cells is None else int(len(cells["cell"])),
                    "frames": int(len(frames["frame"])),
                },
                "pixel_size_um": size or None,
            },
        )
        seal(out)
        self.results.show_tables(cells, frames, cells_layer=self.cells_layer, source=out.name)

    def _add_cell_layers(self, out, cells, instances):
        """The cell instances (contours, the table as features) and their numbers on the image;
        with "Keep previous results" off they replace the plugin's own untouched ones."""
        st = self._run_state
        size = float(self.pixel_size.value)
        meta = {
            "source": st["source"],
            "method": st["params"]["method"],
            "result": out.name,
            "pixel_size_um": size or None,
        }

        def own(kind):
            return (
                None
                if self.keep_previous.value
                else find_own_output(self.viewer.layers, kind=kind, source=st["source"], method=st["params"]["method"])
            )

        old = own("cells")
        if old is not None:
            self.viewer.layers.remove(old)  # the plugin's own untouched cells layer of the replaced result
        name = self._free_name(f"{st['source']} cells ({st['label']})")
        self.cells_layer = add_cells_layer(self.viewer, instances, cells, name=name, like=out, meta=meta)
        old = own(NUMBERS_KIND)
        self.numbers_layer = add_cell_numbers(
            self.viewer,
            cells,
            like=out,
            meta=meta,
            old=old,
            name=self._free_name(f"{st['source']} cell numbers ({st['label']})", old),
        )
        self.viewer.layers.selection.active = out

    # ------------------------------------------------------------ output layer
    def _output_layer(self):
        """The output Labels layer of this run: resumed, replaced (own) or new."""
        from napari_vptv.core.batch.stack import label_dtype

        st = self._run_state
        if live_layer(self.viewer.layers, st["layer"]) is not None:
            return st["layer"]
        shape, method = st["label_shape"], st["params"]["method"]
        own = find_own_output(self.viewer.layers, kind=OUTPUT_KIND, source=st["source"], method=method)
        if own is not None and own.data.shape != shape:
            own = None
        resume = own is not None and self._resumable(own)
        if resume:
            st["done_indices"] = [list(i) for i in own.metadata[METADATA_KEY].get("done_indices", [])]
            st["volumes"] = {
                tuple(map(int, k.split(","))) if k else (): np.asarray(v)
                for k, v in (own.metadata[METADATA_KEY].get("slice_volumes") or {}).items()
            }
            st["done"] = len(st["done_indices"])
            layer = own
        elif own is not None and not self.keep_previous.value:
            own.data = np.zeros(shape, dtype=label_dtype(st["spec"].n_classes))
            layer = own
        else:
            layer = self.viewer.add_labels(
                np.zeros(shape, dtype=label_dtype(st["spec"].n_classes)),
                name=self._free_name(self._base_name()),
                scale=tuple(st["image"].scale),
                translate=tuple(st["image"].translate),
                opacity=RESULT_OPACITY,
            )
            claim(layer)
        layer.name = self._free_name(self._base_name(), layer)
        apply_classes(layer, st["names"])
        st["layer"] = layer
        self.output_layer = layer
        self._update_metadata(layer, complete=False)
        return layer

    def _resumable(self, layer) -> bool:
        meta = layer.metadata[METADATA_KEY]
        done = meta.get("done_indices") or []
        return (
            not meta.get("complete")
            and str(meta.get("status", "")).startswith("cancelled")
            and meta.get("params") == self._run_state["params"]
            and 0 < len(done) < meta.get("slices_total", 0)
        )

    def _base_name(self) -> str:
        st = self._run_state
        return f"{st['source']} VPTV ({st['label']})"

    def _rename(self, layer, note: str):
        layer.name = self._free_name(f"{self._base_name()} ({note})", layer)
        seal(layer)  # the plugin's own rename: still untouched

    def _update_metadata(self, layer, *, complete: bool, status: Optional[str] = None):
        st = self._run_state
        per = st["volumes"]
        volumes = np.mean(np.stack(list(per.values())), axis=0).tolist() if per else []
        n, m = st["done"], st["total"]
        spec = st["spec"]
        tag(
            layer,
            {
                "kind": OUTPUT_KIND,
                "source": st["source"],
                "image_id": layer_id(st["image"]),  # the source image, even once renamed
                "method": st["params"]["method"],
                "method_label": st["label"],
                "class_names": list(st["names"]),
                "params": dict(st["params"]),
                "volume_spec": {  # "auto": the method's own per-image prior
                    "mode": "auto" if st["params"]["volume_mode"] == "auto" else spec.mode,
                    "volumes": None if spec.volumes is None else spec.volumes.tolist(),
                    "lower": None if spec.lower is None else spec.lower.tolist(),
                    "upper": None if spec.upper is None else spec.upper.tolist(),
                },
                "complete": bool(complete),
                "slices_done": n,
                "slices_total": m,
                "done_indices": [list(i) for i in st["done_indices"]],
                "status": status or ("complete" if complete else f"running: {n} of {m} slices"),
                "volumes": volumes,
                "slice_volumes": {index_key(k): np.asarray(v).tolist() for k, v in per.items()} if m > 1 else None,
                "network": st["network"],
            },
        )
