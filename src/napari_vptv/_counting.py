"""Counting on the canvas: cell numbers drawn on the image, and the pixel size.

* :func:`add_cell_numbers` -- a Points layer "<image> cell numbers (<method>)" with
  each cell's number (the table's ``cell`` column, in reading order) drawn at its
  centre, so every row of the table can be found on the image and the other way round.
* :func:`pixel_size_field` -- the widget's "Pixel size (µm)" field; it is filled
  from the image layer's scale (:func:`pixel_size_of`) and, when set, gives the
  areas in µm² and is recorded in the result layers' metadata.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import FloatSpinBox

from ._help import wrap_tip
from ._outputs import claim, seal, tag

__all__ = ["NUMBERS_KIND", "NUMBER_COLOUR", "add_cell_numbers", "pixel_size_field", "pixel_size_of"]

#: ``metadata["vptv"]["kind"]`` of the cell-number layer.
NUMBERS_KIND = "cell_numbers"
#: Colour of the numbers: yellow stays legible over purple nuclei and pink cytoplasm.
NUMBER_COLOUR = "#FFFF00"


def pixel_size_field() -> FloatSpinBox:
    return FloatSpinBox(
        label="Pixel size (µm)",
        min=0.0,
        max=1000.0,
        step=0.01,
        value=0.0,
        tooltip=wrap_tip(
            "Size of one pixel in micrometres, to give the cell areas in µm². Filled from the image "
            "layer's scale when it has one; 0 = unknown (areas in pixels). Recorded in the result "
            "layers' metadata; the layers keep the image's scale so that they stay aligned with it."
        ),
    )


def pixel_size_of(layer) -> float:
    """The pixel size of an image layer's scale (equal y and x scale other than 1), else 0."""
    if layer is None:
        return 0.0
    scale = np.asarray(getattr(layer, "scale", [1.0, 1.0]), dtype=float)[-2:]
    if scale.size == 2 and np.isclose(scale[0], scale[1]) and not np.isclose(scale[0], 1.0) and scale[0] > 0:
        return float(scale[0])
    return 0.0


def add_cell_numbers(viewer, cells, *, like, name: str, meta: dict, old=None):
    """Draw every cell's number at its centre as a Points layer with text.

    ``like`` gives the layer's scale and translate (and the leading axes of a stack);
    ``old`` is the plugin's own numbers layer to replace (its data is rewritten).
    """
    lead = tuple(like.data.shape[:-2])
    frames = np.asarray(cells["frame"], dtype=int)
    index = np.stack(np.unravel_index(frames, lead), axis=1) if lead else np.zeros((len(frames), 0))
    coords = np.column_stack([index, cells["centroid_y"], cells["centroid_x"]]).astype(float)
    features = {"cell": np.asarray(cells["cell"], dtype=int)}
    text = {"string": "{cell}", "size": 12, "color": NUMBER_COLOUR, "anchor": "center"}
    if old is not None:
        old.data = coords
        old.features = features
        old.text = text
        layer = old
    else:
        layer = viewer.add_points(
            coords,
            features=features,
            text=text,
            size=1,
            face_color="transparent",
            border_width=0,
            name=name,
            scale=tuple(like.scale),
            translate=tuple(like.translate),
        )
        claim(layer)
    layer.name = name
    tag(layer, {**meta, "kind": NUMBERS_KIND})
    seal(layer)
    return layer
