"""The preview of the "Correct mask" widget
(:class:`napari_vptv._correct_widget.CorrectMaskWidget`): the corrected mask as an
outlined Labels layer over the input with the given mask's outline under it, and
what Accept, Discard and Table do with it."""

from __future__ import annotations

import numpy as np

from ._outputs import claim, live_layer, same_layer, single_colour, tag

__all__ = ["AFTER_COLOUR", "BEFORE_COLOUR", "BEFORE_KIND", "CorrectPreviewMixin"]

#: The preview's outlines (after the correction) and the given mask's (before): colours
#: unlike napari's label colours of the input and unlike each other.
AFTER_COLOUR = "#00FFFF"
BEFORE_COLOUR = "#FF00FF"
BEFORE_KIND = "correct_mask_before"


def _show_changes(layer, table) -> None:
    """Draw the output as outlines in :data:`AFTER_COLOUR` (over the filled input: both
    visible) and give every object its area before / after as layer features."""
    single_colour(layer, AFTER_COLOUR)
    layer.contour = 2
    layer.opacity = 1.0
    if len(table):
        layer.features = table


class CorrectPreviewMixin:
    """The previews of the runs (``self._previews``) and the Accept / Discard / Table
    buttons' actions; the widget sets ``OUTPUT_KIND``, ``_run`` and the buttons."""

    # ------------------------------------------------------------ output layer
    def _write_output(self, data: np.ndarray):
        """Write the preview: into this widget's live preview of the same Labels layer
        (matched by layer id, see :func:`napari_vptv._outputs.same_layer`), else a new layer."""
        st = self._run
        src = st["labels_layer"]
        meta = {
            "kind": self.OUTPUT_KIND,
            "source": st["source"],
            "image": st["image"],
            "image_id": st["image_id"],
            "params": dict(st["params"]),
            "complete": True,
        }
        self._prune_previews()
        old = next((pv for pv in reversed(self._previews) if same_layer(pv["target"], src)), None)
        if old is not None and old["layer"].data.shape == data.shape:
            layer = old["layer"]
            layer.data = data
            layer.name = self._free_name(f"{st['source']} corrected", layer)
        else:
            layer = self.viewer.add_labels(
                data,
                name=self._free_name(f"{st['source']} corrected"),
                scale=tuple(src.scale),
                translate=tuple(src.translate),
                opacity=0.6,
            )
            claim(layer)
        tag(layer, meta)
        _show_changes(layer, st["table"])
        before = self._before_layer(old, src, st, meta)
        layers = list(self.viewer.layers)
        at, below = (next(i for i, ly in enumerate(layers) if same_layer(ly, x)) for x in (layer, before))
        if below > at:  # the before outline under the preview's
            self.viewer.layers.move(below, at)
        self.viewer.layers.selection.active = layer
        self.output_layer = layer
        self._previews = [pv for pv in self._previews if not same_layer(pv["layer"], layer)]
        self._previews.append(
            {"layer": layer, "before": before, "target": src, "given": st["given"], "source": st["source"]}
        )
        self._update_preview_buttons()

    def _before_layer(self, old, src, st, meta):
        """The mask as it was given, outlined in :data:`BEFORE_COLOUR` under the preview
        (the previous preview's, updated, or a new one)."""
        layer = None if old is None else live_layer(self.viewer.layers, old.get("before"))
        if layer is not None and layer.data.shape == st["given"].shape:
            layer.data = st["given"].copy()
        else:
            layer = self.viewer.add_labels(
                st["given"].copy(),
                name=self._free_name(f"{st['source']} before"),
                scale=tuple(src.scale),
                translate=tuple(src.translate),
                opacity=1.0,
            )
            claim(layer)
        tag(layer, {**meta, "kind": BEFORE_KIND})
        single_colour(layer, BEFORE_COLOUR)
        layer.contour = 2
        return layer

    # ----------------------------------------------------------- accept / discard
    def _live_preview(self):
        """The preview Accept / Discard / Table act on: that of the Labels layer chosen in
        the Labels field, else the newest; None if no preview layer is left in the viewer."""
        self._prune_previews()
        chosen = [pv for pv in self._previews if same_layer(pv["target"], self.labels.value)]
        return (chosen or self._previews or [None])[-1]

    def _update_preview_buttons(self, *_):
        live = self._live_preview() is not None and self.worker is None
        for button in (self.accept_button, self.discard_button, self.table_button):
            button.enabled = live

    def accept(self) -> bool:
        """Write the preview into the Labels layer it corrects, as one undoable step
        (``layer.undo()`` / Ctrl+Z restores it), and remove the preview. Refused (one-line
        message, nothing changed) if there is no preview, the layer is gone, or it was
        edited after the run."""
        from napari.utils.notifications import show_warning

        pv = self._live_preview()
        if pv is None:
            self._error("Nothing to accept: run a correction first.", show_warning)
            return False
        target = pv["target"]
        if live_layer(self.viewer.layers, target) is None:
            self._error(f"Labels layer {pv['source']!r} is no longer in the viewer; nothing written.", show_warning)
            return False
        current = np.asarray(target.data)
        if current.shape != pv["given"].shape or not np.array_equal(current, pv["given"]):
            self._error(f"{target.name!r} was edited after the correction; run again before accepting.", show_warning)
            return False
        corrected = np.asarray(pv["layer"].data)
        where = np.nonzero(corrected != current)
        try:
            with target.block_history():  # one undo step
                target.data_setitem(where, corrected[where])
        except Exception as exc:  # noqa: BLE001 - e.g. read-only or lazy (dask) layer data
            self._error(f"Could not write into {target.name!r}: {exc}", show_warning)
            return False
        self._remove_preview(pv)
        self.viewer.layers.selection.active = target  # so that Ctrl+Z applies to it
        self._set_status(
            f"accepted into {target.name!r} ({where[0].size} pixels changed); Ctrl+Z in that layer undoes it"
        )
        return True

    def discard(self) -> bool:
        """Remove the preview layer; the Labels layer stays as it is."""
        pv = self._live_preview()
        if pv is None:
            self._set_status("no preview to discard")
            return False
        self._remove_preview(pv)
        self._set_status(f"preview discarded; {pv['source']!r} unchanged")
        return True

    def _prune_previews(self):
        """Forget previews whose layer the user removed, and remove their before outlines."""
        gone = [pv for pv in self._previews if live_layer(self.viewer.layers, pv["layer"]) is None]
        self._previews = [pv for pv in self._previews if all(pv is not g for g in gone)]
        for pv in gone:
            before = live_layer(self.viewer.layers, pv.get("before"))
            if before is not None:
                self.viewer.layers.remove(before)

    def _remove_preview(self, pv):
        self._previews = [p for p in self._previews if p is not pv]
        if same_layer(self.output_layer, pv["layer"]):
            self.output_layer = None
        self.viewer.layers.remove(pv["layer"])
        before = live_layer(self.viewer.layers, pv.get("before"))
        if before is not None:
            self.viewer.layers.remove(before)
        self._update_preview_buttons()

    def show_table(self):
        """Open napari's Features table widget on the preview (per-object areas)."""
        from napari.utils.notifications import show_warning

        pv = self._live_preview()
        if pv is None:
            self._error("No preview: run a correction first.", show_warning)
            return None
        self.viewer.layers.selection.active = pv["layer"]
        try:
            _, table = self.viewer.window.add_plugin_dock_widget("napari", "Features table widget")
        except Exception as exc:  # noqa: BLE001 - an older napari without the widget
            self._error(
                f"napari's Features table widget is not available ({exc}); hover the objects to see their areas.",
                show_warning,
            )
            return None
        return table
