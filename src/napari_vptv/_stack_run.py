"""Pieces of a segmentation run in the "VPTV segmentation" widget that need no widget:
the slices still to do of a resumed stack, the network details of a result,
moving the viewer to the slice being processed, and the plane it shows."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

__all__ = ["index_key", "pieces", "network_details", "show_slice", "current_plane"]


def index_key(index) -> str:
    return ",".join(map(str, index))


def pieces(data, segment_fn, *, rgb, mode, n_classes, todo=None, total=None):
    """:func:`segment_stack`, or only the pieces ``todo`` (a resumed run)."""
    from napari_vptv.core.batch.stack import segment_stack

    if todo is None:
        yield from segment_stack(data, segment_fn, rgb=rgb, mode=mode, n_classes=n_classes)
        return
    done0 = total - len(todo)
    for i, index in enumerate(todo, start=1):
        for item in segment_stack(data[index], segment_fn, rgb=rgb, mode=mode, n_classes=n_classes):
            yield item._replace(index=tuple(index), done=done0 + i, total=total)


def network_details(result) -> Optional[Dict[str, Any]]:
    """The cell diameter a result was computed at (network or variational auto mode):
    ``{"diameter", "estimated", "removed", "name"}`` (``name``: the network that seeded
    the variational auto mode), or None if the result carries none."""
    diameter = getattr(result, "diameter", None)
    if diameter is None:
        return None
    info = getattr(result, "info", None)
    info = info if isinstance(info, dict) else {}
    estimated = info.get("diameter_estimated")
    return {
        "diameter": float(diameter),
        "estimated": None if estimated is None else bool(estimated),
        "removed": int(info.get("cells_without_nucleus_removed") or 0),
        "name": info.get("network"),
    }


def show_slice(viewer, layer, index) -> None:
    """Move the viewer's sliders to ``index`` (leading axes of the image ``layer``)."""
    try:
        offset = viewer.dims.ndim - layer.ndim  # the layer's axes are the last world axes
        for a, i in enumerate(index):
            viewer.dims.set_point(offset + a, float(layer.translate[a] + layer.scale[a] * i))
    except Exception:  # noqa: BLE001 - only where the viewer looks
        pass


def current_plane(viewer, layer) -> np.ndarray:
    """The 2-D plane (plus colour) of ``layer`` at the viewer's current position."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[-1]
    n_lead = data.ndim - (3 if layer.rgb else 2)
    step = tuple(viewer.dims.current_step)
    # layer axes are the last layer.ndim world axes
    world = step[len(step) - layer.ndim :] if len(step) >= layer.ndim else (0,) * layer.ndim
    index = tuple(min(max(int(i), 0), data.shape[a] - 1) for a, i in enumerate(world[:n_lead]))
    return np.asarray(data[index] if index else data)
