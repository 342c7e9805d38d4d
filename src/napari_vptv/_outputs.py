"""The plugin's output layers in napari: who owns them, their names, class colours.

Ownership. A run writes to a layer the plugin created; the layer stays the plugin's
only while it is *untouched*: the same layer (not a duplicate, whose metadata is a
copy), under the name the plugin gave it, with the data the plugin wrote (checked
with a CRC-32 of the data). A renamed, duplicated or painted output belongs to the
user from then on and is never written to again.

"The same layer" is decided by ids, never by object identity: napari hands a widget
opened from the Plugins menu a proxy of the viewer, and every layer read through it
is a new wrapper object. ``metadata["vptv"]["token"]`` is the run's id (registered
in this process by :func:`claim`) and ``metadata["vptv"]["layer_id"]`` napari's
``Layer.unique_id`` of the layer it was given to; a duplicate copies the metadata
but gets a new ``unique_id``. :func:`same_layer` and :func:`live_layer` compare
layers the same way.

Classes. Every class has a fixed colour (class 0 is napari's transparent
background; classes 1, 2, ... take the colours of :data:`CLASS_COLOURS` in order: for
the WBC classes cytoplasm = orange ``#E69F00``, nucleus = blue ``#1E90FF``, an
orange / blue pair that colour-blind eyes tell apart) and a name, stored in the
Labels layer's ``features`` so that napari's status bar says e.g. ``class: nucleus``
when hovering. The colours were chosen over stained smears: drawn at the result's
opacity over a purple nucleus, the blue keeps its hue (the former bluish green turned
steel-blue). The cell outlines of the measurements are all :data:`CELL_OUTLINE`.
"""

from __future__ import annotations

import re
import uuid
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np

from ._common import METADATA_KEY, layer_id, live_layer, same_layer
from .core.io.samples import CLASS_NAMES

__all__ = [
    "CLASS_COLOURS",
    "CELL_OUTLINE",
    "RESULT_OPACITY",
    "single_colour",
    "METHOD_LABELS",
    "class_names_for",
    "class_colour",
    "apply_classes",
    "legend_html",
    "name_classes_in",
    "method_label",
    "claim",
    "seal",
    "is_untouched",
    "layer_id",
    "same_layer",
    "live_layer",
]

#: Colours of classes 1, 2, ... (orange / blue first, then Okabe-Ito); class 0 is transparent.
CLASS_COLOURS = ("#E69F00", "#1E90FF", "#F0E442", "#CC79A7", "#009E73", "#D55E00", "#56B4E9", "#999999")
#: Opacity of a result's filled classes (the stain stays visible underneath).
RESULT_OPACITY = 0.5
#: Colour of every cell's outline (the measured cells, numbered on the image).
CELL_OUTLINE = "#000000"

#: How a method appears in layer names.
METHOD_LABELS = {"vptv": "variational", "vptv-unet": "VPTVU-net", "unet": "U-net"}

# token -> napari unique_id of the layer the plugin wrote (this process only)
_OWNED: Dict[str, str] = {}


def class_names_for(n_classes: int, wbc: bool) -> List[str]:
    """``["background", "cytoplasm", "nucleus"]`` for WBC, else ``["class 0", ...]``."""
    if wbc and n_classes == len(CLASS_NAMES):
        return list(CLASS_NAMES)
    return [f"class {i}" for i in range(n_classes)]


def class_colour(k: int) -> Optional[str]:
    """Hex colour of class ``k`` (None for class 0, drawn transparent)."""
    return None if k == 0 else CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]


def apply_classes(layer, names: Sequence[str]) -> None:
    """Give a Labels layer the fixed class colours and the class names as features."""
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    colours = {None: "transparent", 0: "transparent"}
    colours.update({k: class_colour(k) for k in range(1, len(names))})
    layer.colormap = DirectLabelColormap(color_dict=colours)
    layer.features = pd.DataFrame({"index": np.arange(len(names)), "class": list(names)})


def legend_html(names: Sequence[str], outline: bool = False) -> str:
    """An HTML legend: coloured squares and class names; with ``outline``, the cell
    outline of the measurements (a line on a white ground, as over a smear)."""
    parts = []
    for k, name in enumerate(names):
        colour = class_colour(k)
        swatch = "&#9633;" if colour is None else f"<span style='color:{colour}'>&#9632;</span>"
        parts.append(f"{swatch}&nbsp;{name}" + (" (not drawn)" if colour is None else ""))
    if outline:
        parts.append(
            f"<span style='color:{CELL_OUTLINE}; background:#ffffff'>&nbsp;&#9645;&nbsp;</span>"
            "&nbsp;cell outline (numbered)"
        )
    return "&nbsp;&nbsp; ".join(parts)


def single_colour(layer, colour: str) -> None:
    """Draw every label of a Labels layer in ``colour`` (0 stays transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    # label 1 named too: napari takes a dict of only the default and 0 for a cyclic colormap
    layer.colormap = DirectLabelColormap(color_dict={None: colour, 0: "transparent", 1: colour})


def name_classes_in(message: str, names: Sequence[str]) -> str:
    """Replace "class 1" (0-based) by the class name and say the order of per-class values."""

    def repl(m):
        k = int(m.group(1))
        return f"class {names[k]!r}" if 0 <= k < len(names) else m.group(0)

    text = re.sub(r"class (\d+)", repl, message)
    if re.search(r"volume|per class|one value", text) and not names[0].startswith("class "):
        text += f" (values in class order: {', '.join(names)})"
    return text


def method_label(method: str, model: str = "") -> str:
    """``"variational"``, ``"VPTVU-net"``, ... or the file stem of a fine-tuned model
    (``"variational, STEM"`` when the model seeds the variational method)."""
    if model and model.endswith(".pt"):
        from pathlib import Path

        return f"variational, {Path(model).stem}" if method == "vptv" else Path(model).stem
    return METHOD_LABELS.get(method, method)


# ------------------------------------------------------------------ ownership
def _fingerprint(data) -> str:
    arr = np.ascontiguousarray(np.asarray(data))
    return f"{arr.shape}:{arr.dtype}:{zlib.crc32(arr.view(np.uint8).ravel()) if arr.size else 0}"


def claim(layer) -> str:
    """Register ``layer`` as the plugin's own; returns its token. Both the token and
    the layer's id are written to ``layer.metadata["vptv"]``."""
    token = uuid.uuid4().hex
    _OWNED[token] = layer_id(layer)
    tag(layer, {"token": token, "layer_id": layer_id(layer)})
    return token


def seal(layer) -> None:
    """Record the layer's current name and data as the plugin's (after writing)."""
    meta = dict(layer.metadata.get(METADATA_KEY) or {})
    meta["layer_name"] = layer.name
    meta["fingerprint"] = _fingerprint(layer.data)
    md = dict(layer.metadata)
    md[METADATA_KEY] = meta
    layer.metadata = md


def is_untouched(layer) -> bool:
    """Whether ``layer`` is the plugin's own output, not renamed, duplicated or edited."""
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    if not isinstance(meta, dict):
        return False
    token, uid = meta.get("token"), layer_id(layer)
    if not token or _OWNED.get(token) != uid or meta.get("layer_id") != uid:
        return False  # a duplicate (copied metadata, new unique_id) or a layer of an earlier session
    if meta.get("layer_name") != layer.name:
        return False
    return meta.get("fingerprint") == _fingerprint(layer.data)


def find_own_output(layers, *, kind: str, source: str, method: Optional[str] = None):
    """The newest untouched plugin output of ``kind`` for ``source`` (and ``method``)."""
    for layer in reversed(list(layers)):
        meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
        if not isinstance(meta, dict) or meta.get("kind") != kind or meta.get("source") != source:
            continue
        if method is not None and meta.get("method") != method:
            continue
        if is_untouched(layer):
            return layer
    return None


def tag(layer, meta: Dict) -> None:
    """Merge ``meta`` into ``layer.metadata[METADATA_KEY]``."""
    md = dict(layer.metadata)
    md[METADATA_KEY] = {**(md.get(METADATA_KEY) or {}), **meta}
    layer.metadata = md
