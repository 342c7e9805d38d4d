"""napari's first-use work, done ahead in a background thread when a dock opens.

The first time a process shows a Labels layer with a given colormap kind and data type,
napari compiles numba code for it (the label → texture mapping): about 1.3 s for the
result's class colours (uint8) at the start of the first run and another second for
the measured cells (int32) at its end, in the GUI thread, so the viewer froze then.
:func:`start` compiles the same code paths once per process in a daemon thread while
the user is still choosing settings; a run that comes earlier waits only for what is
left (numba compiles one thing at a time). Best effort: nothing here ever raises.
"""

from __future__ import annotations

import threading

__all__ = ["start", "done"]

_lock = threading.Lock()
_thread = None


def _warm() -> None:
    import numpy as np
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    from ._outputs import CLASS_COLOURS

    classes = DirectLabelColormap(
        color_dict={None: "transparent", 0: "transparent", 1: CLASS_COLOURS[0], 2: CLASS_COLOURS[1]}
    )
    outline = DirectLabelColormap(color_dict={None: "#000000", 0: "transparent", 1: "#000000"})
    # in the order a run needs them: its result layer (created with napari's default
    # colormap, then given the class colours), the layer's features, the cell outlines
    steps = [(label_colormap(), "uint8"), (classes, "uint8"), "pandas", (label_colormap(), "int32"), (outline, "int32")]
    for step in steps:
        try:
            if step == "pandas":
                import pandas  # noqa: F401 - napari's layer features import it on first use

                continue
            cmap, dtype = step
            values = np.arange(4, dtype=dtype).reshape(2, 2)
            cmap.map(values.ravel())  # the texture of the colours
            cmap._data_to_texture(values)  # the layer's data as napari draws it
        except Exception:  # noqa: BLE001 - another napari: nothing to warm up
            pass


def _run() -> None:
    try:
        _warm()
    except Exception:  # noqa: BLE001 - best effort
        pass


def start() -> threading.Thread:
    """Start the warm-up (once per process); returns its thread."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="napari-vptv warm-up", daemon=True)
            _thread.start()
        return _thread


def done() -> bool:
    """Whether the warm-up has finished."""
    return _thread is not None and not _thread.is_alive()
