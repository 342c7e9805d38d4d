"""Pieces shared by the plugin's napari widgets (segmentation, mask correction).

Status line and notifications, the threaded run with a napari progress bar, Cancel,
and the lookup of the plugin's own output layers. Outputs are tagged in
``layer.metadata["vptv"]`` with a ``kind`` and the ``source`` layer's name; a widget
only ever reuses a Labels layer carrying its own kind and source, so a user's layer
(or another widget's output) is never overwritten.
"""

from __future__ import annotations

METADATA_KEY = "vptv"


class WidgetRunMixin:
    """Mixin for a magicgui ``Container`` with ``viewer``, ``status``, ``run_button``,
    ``cancel_button``, ``worker``, ``_pbar``, ``_cancel_requested`` and the worker
    callbacks ``_on_yield`` / ``_on_aborted`` / ``_on_finished``.

    Subclasses set ``OUTPUT_KIND`` and ``CANCEL_NOTE`` (what Cancel does).
    """

    OUTPUT_KIND = ""
    CANCEL_NOTE = "Stop the running job."

    # ------------------------------------------------------------------ status
    def _set_status(self, text: str):
        self.status.value = text

    def _error(self, text: str, notify):
        self._set_status(text)
        notify(text)

    # ------------------------------------------------------------- threaded run
    def _make_worker(self, gen, *, total: int, desc: str, failure: str):
        """A not-yet-started ``thread_worker`` over the generator function ``gen``,
        wired to the widget's callbacks and a napari progress bar."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress
        from napari.utils.notifications import show_error

        self._pbar = progress(total=total, desc=desc)
        worker = thread_worker(gen, start_thread=False)()
        worker.yielded.connect(self._on_yield)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        worker.errored.connect(lambda exc: self._error(f"{failure}: {exc}", show_error))
        self.worker = worker
        return worker

    def _close_progress(self):
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def cancel(self):
        """Request a stop (see ``CANCEL_NOTE``); the worker quits at its next yield."""
        if self.worker is None:
            return
        self._cancel_requested = True
        self.cancel_button.enabled = False
        self._set_status("cancelling...")
        if self.worker != "sync":
            self.worker.quit()

    # ------------------------------------------------------------ output layers
    def _find_output_layer(self, source: str):
        """The newest Labels layer tagged by this widget (same kind) for ``source``."""
        import napari

        for layer in reversed(list(self.viewer.layers)):
            meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
            if (isinstance(layer, napari.layers.Labels) and isinstance(meta, dict)
                    and meta.get("kind") == self.OUTPUT_KIND and meta.get("source") == source):
                return layer
        return None

    def _free_name(self, name: str, own=None) -> str:
        """``name``, or ``name [2]``, ``[3]``... if another layer already has it."""
        taken = {layer.name for layer in self.viewer.layers if layer is not own}
        if name not in taken:
            return name
        i = 2
        while f"{name} [{i}]" in taken:
            i += 1
        return f"{name} [{i}]"
