"""Pieces shared by the plugin's napari widgets (segmentation, mask correction).

Status line and notifications, the threaded run with a napari progress bar, Cancel,
and the lookup of the plugin's own output layers. Outputs are tagged in
``layer.metadata["vptv"]`` with a ``kind`` and the ``source`` layer's name; a widget
only ever reuses a Labels layer carrying its own kind and source, so a user's layer
(or another widget's output) is never overwritten.

The widgets' parameter values (not the layer choices) are remembered between sessions
in ``<config dir>/<widget>.json``; the directory is
``platformdirs.user_config_dir("napari-vptv")`` unless the environment variable
``NAPARI_VPTV_CONFIG_DIR`` names another one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

METADATA_KEY = "vptv"

#: Environment variable overriding the directory of the remembered widget settings.
CONFIG_DIR_ENV = "NAPARI_VPTV_CONFIG_DIR"


def settings_dir() -> Path:
    """Directory of the remembered widget settings (``$NAPARI_VPTV_CONFIG_DIR`` or
    the per-user config directory of napari-vptv)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-vptv"))


def settings_path(name: str) -> Path:
    """JSON file holding the settings of widget ``name``."""
    return settings_dir() / f"{name}.json"


def load_settings(name: str) -> Dict[str, Any]:
    """The saved settings of widget ``name``; ``{}`` if the file is missing,
    unreadable or not a JSON object. Never raises."""
    try:
        with open(settings_path(name), encoding="utf-8") as fh:
            values = json.load(fh)
    except Exception:  # noqa: BLE001 - missing / corrupt file: defaults
        return {}
    return values if isinstance(values, dict) else {}


def save_settings(name: str, values: Dict[str, Any]) -> bool:
    """Write ``values`` (JSON-serialisable) as the settings of widget ``name``.

    Written to a temporary file and renamed, so an interrupted write never leaves a
    truncated file. Returns False (and raises nothing) if it cannot be written.
    """
    try:
        path = settings_path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    except Exception:  # noqa: BLE001
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(values, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return True
    except Exception:  # noqa: BLE001 - read-only home etc.: settings are a convenience
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def layer_id(layer) -> Optional[str]:
    """napari's ``unique_id`` of a layer (or of the layer behind a viewer proxy)."""
    uid = getattr(layer, "unique_id", None) if layer is not None else None
    return None if uid is None else str(uid)


def same_layer(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same napari layer (plain or proxied)."""
    return a is not None and b is not None and layer_id(a) == layer_id(b)


def live_layer(layers, layer):
    """The layer of ``layers`` that is ``layer`` (see :func:`same_layer`), or None."""
    if layer is None:
        return None
    uid = layer_id(layer)
    return next((candidate for candidate in layers if layer_id(candidate) == uid), None)


def _fits(saved, current) -> bool:
    """Whether ``saved`` has the JSON type of a widget value like ``current``."""
    if isinstance(current, bool):
        return isinstance(saved, bool)
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(current, str):
        return isinstance(saved, str)
    return False


class WidgetRunMixin:
    """Mixin for a magicgui ``Container`` with ``viewer``, ``status``, ``run_button``,
    ``cancel_button``, ``worker``, ``_pbar``, ``_cancel_requested`` and the worker
    callbacks ``_on_yield`` / ``_on_aborted`` / ``_on_finished``.

    Subclasses set ``OUTPUT_KIND`` and ``CANCEL_NOTE`` (what Cancel does); to remember
    settings between sessions, ``SETTINGS_NAME`` and ``_persisted_widgets()``.
    """

    OUTPUT_KIND = ""
    CANCEL_NOTE = "Stop the running job."
    #: File stem of the remembered settings ("" = none).
    SETTINGS_NAME = ""
    #: Text of the README where this widget's help starts (see :func:`napari_vptv._help.open_help`).
    HELP_SECTION = ""

    def open_help(self):
        """Open the documentation at this widget's section; returns the help window (or
        None when a documentation URL was handed to the web browser)."""
        from ._help import open_help

        self._help_page = open_help(self.HELP_SECTION, getattr(self, "native", None))
        return self._help_page

    # ---------------------------------------------------------------- settings
    def _persisted_widgets(self) -> Dict[str, Any]:
        """``{key: magicgui value widget}`` remembered between sessions, in the order
        they are restored (widgets whose callbacks rewrite others come first)."""
        return {}

    def _save_settings(self) -> bool:
        """Save the current values of ``_persisted_widgets()``. Never raises."""
        if not self.SETTINGS_NAME:
            return False
        try:
            values = {key: w.value for key, w in self._persisted_widgets().items()}
        except Exception:  # noqa: BLE001
            return False
        return save_settings(self.SETTINGS_NAME, values)

    def _restore_settings(self) -> list:
        """Set the widgets to the saved values; unknown keys and values that no longer
        fit a widget (type, range, choice) are skipped. Returns the restored keys."""
        if not self.SETTINGS_NAME:
            return []
        saved = load_settings(self.SETTINGS_NAME)
        restored = []
        for key, w in self._persisted_widgets().items():
            if key not in saved:
                continue
            value = saved[key]
            try:
                if not _fits(value, w.value):
                    continue
                if w.value != value:
                    w.value = value
                restored.append(key)
            except (ValueError, TypeError):
                continue
        return restored

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

    # ------------------------------------------------------------------ choices
    def _image_choices(self, *_):
        """(name, layer) of every Image layer, for the image combo box."""
        import napari

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    # ------------------------------------------------------------ output layers
    def _find_output_layer(self, source: str):
        """The newest Labels layer tagged by this widget (same kind) for ``source``."""
        import napari

        for layer in reversed(list(self.viewer.layers)):
            meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
            if (
                isinstance(layer, napari.layers.Labels)
                and isinstance(meta, dict)
                and meta.get("kind") == self.OUTPUT_KIND
                and meta.get("source") == source
            ):
                return layer
        return None

    def _free_name(self, name: str, own=None) -> str:
        """``name``, or ``name [2]``, ``[3]``... if another layer already has it."""
        taken = {layer.name for layer in self.viewer.layers if not same_layer(layer, own)}
        if name not in taken:
            return name
        i = 2
        while f"{name} [{i}]" in taken:
            i += 1
        return f"{name} [{i}]"
