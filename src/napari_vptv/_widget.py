"""napari widget "VPTV segmentation" (npe2: ``napari_vptv._widget:SegmentationWidget``).

Segments an Image layer (grey or RGB, 2-D or with leading axes ZYX / TYX / TZYX) with
the pretrained VPTVU-net (the default), the U-net, the user's fine-tuned networks or
the variational VPTV solver. The fields and their checks
live in :mod:`napari_vptv._widget_fields`, the output layers' ownership, names and
class colours in :mod:`napari_vptv._outputs`, the measurement table in
:mod:`napari_vptv._measure_table`, the result layers of a run (output, cells, numbers)
in :mod:`napari_vptv._widget_results`; this module runs.

* The work is the napari-free generator :func:`napari_vptv.core.batch.stack.segment_stack`
  run in a ``napari.qt.threading.thread_worker``; a napari progress bar counts slices
  (of the whole stack, as the status line does, also when resuming), the viewer shows
  the slice being processed, the output layer fills in as slices finish, and Cancel
  stops at the next slice boundary (or, inside a long 2-D solve, at the next
  iteration). Run again with the same settings resumes a cancelled stack: only the
  missing slices are computed. The worker's events are handled one at a time, in order.
* Output: a new Labels layer per run, "<image> VPTV (<method>)", with fixed class
  colours and the class names as layer features (hovering says "nucleus"). With
  "Keep previous results" unchecked a run replaces only the plugin's own untouched
  result of the same method and image; a renamed, duplicated or edited result is the
  user's and is never written to.
* Measurements (WBC classes): a per-cell table (areas, N/(N+C), lobes, solidity) in
  the widget, as features of a "<image> cells (<method>)" Labels layer, and as CSV.
* Run is disabled while an input is invalid (the reason is shown next to it);
  problems are napari notifications, never exceptions.

Heavy imports (torch, the solver, the network) happen inside the functions that need
them, so opening napari's plugin menu stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from psygnal import Signal

from . import _warmup
from ._common import METADATA_KEY, WidgetRunMixin
from ._counting import pixel_size_field, pixel_size_of
from ._help import help_link, wrap_tooltips
from ._layout import Form, advanced_section, dock_body
from ._measure_table import MeasurementTable
from ._outputs import live_layer, method_label, seal
from ._stack_run import network_details, pieces, show_slice
from ._widget_fields import (  # noqa: F401 - re-exported names of the fields
    METHOD_NET,
    METHOD_VPTV,
    METHODS,
    PRESET_CUSTOM,
    PRESET_KMEANS,
    PRESET_WBC,
    STACK_SLICES,
    STACK_VOLUME,
    VOLUME_AUTO,
    VOLUME_CHOICES,
    SegmentSettings,
    fmt,
    wrapped,
)
from ._widget_results import OUTPUT_KIND, ResultLayersMixin

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["SegmentationWidget", "METADATA_KEY"]


class _Cancelled(Exception):
    """Raised from the solver's iteration callback when Cancel was pressed."""


class SegmentationWidget(WidgetRunMixin, ResultLayersMixin, SegmentSettings):
    """Dock widget "VPTV segmentation".

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari / npe2).

    Attributes
    ----------
    synchronous : bool
        Run in the calling (GUI) thread instead of a worker thread (for tests and
        scripts). ``run(sync=True)`` does the same for one call.
    worker : the running ``GeneratorWorker`` or None.
    output_layer : the Labels layer of the last run (or None).
    cells_layer : the cell instance Labels layer of the last measured run (or None).
    results : :class:`~napari_vptv._measure_table.MeasurementTable` of the last run.
    slice_finished : psygnal Signal
        Emitted in the GUI thread with each finished
        :class:`~napari_vptv.core.batch.stack.StackSlice`, after it was written to the
        output layer.
    """

    slice_finished = Signal(object)

    OUTPUT_KIND = OUTPUT_KIND
    CANCEL_NOTE = "Stop at the next slice boundary (or solver iteration)."
    SETTINGS_NAME = "segmentation"
    HELP_SECTION = "In napari"
    # the fields' list, not the mixin's empty default (which comes first in the MRO)
    _persisted_widgets = SegmentSettings._persisted_widgets

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__(napari_viewer)
        self.synchronous = False
        self.worker = None
        self.output_layer = None
        self.cells_layer = None
        self.numbers_layer = None
        self.pixel_size = pixel_size_field()
        self._cancel_requested = False
        self._iteration: Optional[Tuple[int, int]] = None
        self._pbar = None
        self._run_state: Dict[str, Any] = {}
        self._status_is_problem = False
        self._handling = False  # a worker event is being handled (see _one_at_a_time)
        self._pending: list = []
        buttons = self._build_controls()
        self.results = MeasurementTable(napari_viewer)
        self._defaults = {key: w.value for key, w in self._persisted_widgets().items()}
        self.body = self._build_body(buttons)
        wrap_tooltips(self.body)
        wrap_tooltips(self.results)
        self._connect()
        self._reset_image_choices()
        self.restore_or_default(self._defaults, self._restore_settings)  # the last session's settings
        self._refresh_run_state()
        _warmup.start()  # napari's first-use compiling, off the GUI thread

    def _build_controls(self):
        """Run, Cancel and Reset (returned as a row), the help link and the reason Run is disabled."""
        self.run_button = PushButton(
            text="Run",
            tooltip="Segment the chosen image with these settings (a stack slice by slice; a cancelled stack resumes)",
        )
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Finishes the current slice, then stops; Run resumes"
        )
        self.help_link = help_link(self.HELP_SECTION, self)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.reset_button],
            layout="horizontal",
            labels=False,
            label="",
        )
        buttons.margins = (0, 0, 0, 0)
        self.reason = wrapped(Label(label="", value=""))
        self.reason.native.setStyleSheet("QLabel { color: #ff8080; }")
        self.reason.visible = False
        return buttons

    def _build_body(self, buttons):
        """The scrolling body: the fields in their groups, the buttons, status and table."""
        return dock_body(
            self,
            [
                self.help_link,
                Form(
                    [
                        self.image,
                        self.method,
                        self.network,
                        self.preset,
                        self.n_classes,
                        self.legend,
                        self.volume_mode,
                        self.auto_note,
                        self.volumes,
                        self.lower,
                        self.upper,
                    ]
                ),
                self.estimate,
                Form([self.epsilon, self.tv_weight]),
                self.measure,
                Form([self.pixel_size]),
                self.keep_previous,
                *advanced_section(
                    self,
                    [
                        self.max_iter,
                        self.diameter,
                        self.augment,
                        self.seed,
                        self.device,
                        self.stack_mode,
                        self.edge,
                        self.require_nucleus,
                        self.white_cell_rule,
                    ],
                ),
                self.notice,
                buttons,
                self.reason,
                Form([self.status]),
                self.results,  # full width (outside the label column): the table needs the room
            ],
        )

    def _connect(self):
        """Buttons, fields and the viewer's layer list to the widget's handlers."""
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        for w in self._persisted_widgets().values():
            w.changed.connect(self._refresh_run_state)
        self.image.changed.connect(self._refresh_run_state)
        self.image.changed.connect(self._pixel_size_from_layer)
        layers_events = self.viewer.layers.events
        for ev in (layers_events.inserted, layers_events.removed, layers_events.reordered):
            ev.connect(self._reset_image_choices)

    # ------------------------------------------------------------ choices / state
    def _reset_image_choices(self, *_):
        # keep names in the combo box up to date when a layer is renamed
        import napari

        for layer in self.viewer.layers:
            if isinstance(layer, napari.layers.Image):
                layer.events.name.connect(self._reset_image_choices)  # no-op if connected
        self.image.reset_choices()
        self._refresh_run_state()

    def _pixel_size_from_layer(self, *_):
        """Fill "Pixel size (µm)" from the chosen image layer's scale, if it has one."""
        size = pixel_size_of(self.image.value)
        if size:
            self.pixel_size.value = size

    def reset_choices(self, *_):  # called by napari on layer changes
        super().reset_choices()
        body = getattr(self, "body", None)
        if body is not None:  # the fields sit in the scrolling body
            body.reset_choices()

    def _set_status(self, text: str):
        super()._set_status(text)
        self._status_is_problem = False

    def _error(self, text: str, notify):
        super()._error(text, notify)
        self._status_is_problem = True

    def _refresh_run_state(self, *_):
        """Enable Run only while the inputs are valid; say why not; clear stale problems."""
        if getattr(self, "reason", None) is None or self.worker is not None:
            return
        try:
            self.check_inputs(scan_values=False)
            problem = ""
        except Exception as exc:  # noqa: BLE001 - shown next to Run
            problem = str(exc)
        self.run_button.enabled = not problem
        self.reason.value = problem
        self.reason.visible = bool(problem)
        if self._status_is_problem and not problem:
            self._set_status("ready")

    # ------------------------------------------------------------------ running
    def _make_segment_fn(self, spec, params):
        """``fn(image, *, channel_axis)`` for :func:`segment_stack`; Cancel stops the solver."""
        from napari_vptv.api import SegmentFn

        def callback(it, max_it=None, *_):
            if self._cancel_requested:
                raise _Cancelled()
            self._iteration = (int(it), int(max_it if max_it is not None else params["max_num_iter"]))

        return SegmentFn(self.segment_options(spec, params), callback=callback)

    def run(self, sync: Optional[bool] = None):
        """Validate the inputs and segment the chosen image.

        Parameters
        ----------
        sync : bool, optional
            Run in the calling thread (blocking); default ``self.synchronous``.

        Returns
        -------
        The worker (threaded run), the output Labels layer (synchronous run), or None
        if the inputs are invalid or a run is already going on.
        """
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:
            self._error("A segmentation is already running: wait for it or press Cancel.", show_warning)
            return None
        try:
            layer, spec, params, mode = self.check_inputs()
        except Exception as exc:  # noqa: BLE001 - any bad input becomes a notification
            self._error(str(exc), show_error)
            return None
        self._save_settings()
        gen = self._start(layer, spec, params, mode)
        if sync if sync is not None else self.synchronous:
            return self._run_sync(gen)
        st = self._run_state
        # the bar counts all slices, as the status does; a resumed run starts at the slices done
        worker = self._make_worker(gen, total=st["total"], desc=f"VPTV {layer.name}", failure="Segmentation failed")
        if st["done_indices"]:
            self._pbar.update(len(st["done_indices"]))
        self._timer_start()
        worker.start()
        return worker

    def _start(self, layer, spec, params, mode):
        """Set up the run state and the output layer; returns the generator function."""
        from napari_vptv.core.batch.stack import stack_layout

        leading, label_shape = stack_layout(layer.data.shape, rgb=layer.rgb, mode=mode)
        total = int(np.prod(leading)) if leading else 1
        segment_fn = self._make_segment_fn(spec, params)
        self._cancel_requested = False
        self._iteration = None
        self._run_state = {
            "image": layer,
            "source": layer.name,
            "params": params,
            "spec": spec,
            "names": self.class_names(),
            "label_shape": tuple(label_shape),
            "total": total,
            "done": 0,
            "volumes": {},
            "done_indices": [],
            "layer": None,
            "error": None,
            "network": None,
            "label": method_label(params["method"], params["model"]),
        }
        # Create (or pick) the output layer now, in the GUI thread, before the worker
        # competes for the GIL: building a layer makes many Qt calls.
        self._output_layer()
        st = self._run_state
        done = {tuple(i) for i in st["done_indices"]}
        todo = None
        if done:  # a resumed run: only the missing pieces
            todo = [i for i in (np.ndindex(*leading) if leading else [()]) if tuple(i) not in done]
        st["order"] = [tuple(i) for i in (todo if todo is not None else np.ndindex(*leading))] if leading else []
        self._show_next_slice()
        data, rgb, k = layer.data, bool(layer.rgb), spec.n_classes

        def gen():
            # every error is caught and yielded: superqt swallows RuntimeErrors
            # (e.g. from torch) raised inside a generator worker
            try:
                for item in pieces(data, segment_fn, rgb=rgb, mode=mode, n_classes=k, todo=todo, total=total):
                    yield ("slice", item)
            except _Cancelled:
                yield ("cancelled", None)
            except Exception as exc:  # noqa: BLE001
                yield ("error", exc)

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        what = f"resuming: {len(done)}/{total} slices already done" if done else f"0/{total} slices"
        self._set_status(f"running on {layer.name!r}: {what}")
        return gen

    def _run_sync(self, gen):
        self.worker = "sync"
        try:
            for msg in gen():
                self._on_yield(msg)
                if self._cancel_requested and msg[0] == "slice":
                    self._on_aborted()
                    return self.output_layer
        finally:
            if self.worker == "sync":
                self._on_finished()
        return self.output_layer

    # ----------------------------------------------------------- worker events
    # One at a time, in the worker's order: updating the bar or the layer repaints, and a
    # repaint may deliver the worker's next event while one is being handled.
    def _on_yield(self, msg):
        self._one_at_a_time(self._handle_yield, msg)

    def _on_aborted(self):
        self._one_at_a_time(self._handle_aborted)

    def _on_finished(self):
        self._one_at_a_time(self._handle_finished)

    def _one_at_a_time(self, handler, *args):
        if self._handling:
            self._pending.append((handler, args))
            return
        self._handling = True
        try:
            handler(*args)
            while self._pending:
                handler, args = self._pending.pop(0)
                handler(*args)
        finally:
            self._handling = False

    def _handle_yield(self, msg):
        kind, payload = msg
        if kind == "slice":
            self._on_slice(payload)
        elif kind == "cancelled":
            self._cancel_requested = True
            self._on_aborted()
        elif kind == "error":
            self._on_error(payload)

    def _on_slice(self, item):
        st = self._run_state
        out = self._output_layer()
        out.data[item.index] = item.labels.astype(out.data.dtype, copy=False)
        st["done"] = item.done
        st["done_indices"].append(list(item.index))
        st["volumes"][item.index] = np.asarray(item.volumes, dtype=float)
        details = network_details(item.result)
        if details is not None:  # the count of removed regions adds up over the slices
            details["removed"] += (st["network"] or {}).get("removed", 0)
            st["network"] = details
        self._update_metadata(out, complete=item.done == st["total"])
        self._set_status(
            f"{st['source']}: {item.done}/{st['total']} slices"
            + (f"; {self._named(item.volumes)}" if st["total"] == 1 else "")
        )
        if self._pbar is not None:
            self._pbar.update(item.done - self._pbar.n)  # the same count as the status
        self._show_next_slice()
        out.refresh()
        self.slice_finished.emit(item)

    def _show_next_slice(self):
        """Move the viewer to the slice being processed next (a stack run slice by slice)."""
        st = self._run_state
        done = {tuple(i) for i in st["done_indices"]}
        index = next((i for i in st.get("order") or [] if i not in done), None)
        if index:
            show_slice(self.viewer, st["image"], index)

    def _on_error(self, exc):
        from napari.utils.notifications import show_error

        st = self._run_state
        st["error"] = exc
        where = f" (slice {st['done'] + 1} of {st['total']})" if st["total"] > 1 else ""
        if st["layer"] is not None:
            self._update_metadata(
                st["layer"], complete=False, status=f"failed after {st['done']} of {st['total']} slices"
            )
            self._rename(st["layer"], f"failed {st['done']}/{st['total']}")
        self._error(f"Segmentation failed{where}: {exc}", show_error)

    def _handle_aborted(self):
        st = self._run_state
        if st.get("aborted_handled"):
            return
        st["aborted_handled"] = True
        n, m = st.get("done", 0), st.get("total", 0)
        out = st.get("layer")
        if out is not None and n < m:
            self._update_metadata(out, complete=False, status=f"cancelled after {n} of {m} slices")
            self._rename(out, f"cancelled {n}/{m}")
            self._set_status(
                f"cancelled after {n} of {m} slices (the current slice was finished); "
                "Run with the same settings resumes"
            )
        elif out is None:
            self._set_status("cancelled before the first slice finished; no output")
        else:
            self._set_status(f"{st['source']}: done ({m}/{m} slices) before cancel")

    def _handle_finished(self):
        self._timer_stop()
        self._close_progress()
        st = self._run_state
        out = st.get("layer")
        if live_layer(self.viewer.layers, out) is not None:
            seal(out)  # from now on, a rename / paint / duplicate makes it the user's
        if st.get("error") is None and not self._cancel_requested and out is not None and st["done"] == st["total"]:
            self._set_status(self._done_message())
            if self.measure.value:
                self._measure(out)
        self._refresh_run_state()

    # ------------------------------------------------------------------ status
    def _timer_start(self):
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll_iteration)
        self._timer.start()

    def _timer_stop(self):
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.stop()
            self._timer = None

    def _poll_iteration(self):
        it = self._iteration
        st = self._run_state
        if it is None or self.worker is None or self._cancel_requested:
            return
        self._set_status(
            f"{st['source']}: {st['done']}/{st['total']} slices; slice {min(st['done'] + 1, st['total'])} "
            f"at iteration {it[0]}/{it[1]}"
        )
