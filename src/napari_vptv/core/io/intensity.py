"""Any dtype or bit depth of an image -> the 8-bit intensity scale (no napari, no Qt).

The methods are tuned on 8-bit images (the WBC colour model, the networks' input
normalisation), so every image is brought to that scale first, the same way for the
command line, the API and the widgets (:func:`normalise_intensity`):

* ``uint8``: unchanged;
* ``bool``: 0 / 255;
* integers of any width, signed or not: negative values are first offset by the
  smallest power of two that makes them non-negative (offset binary: ``int8``
  -128..127 -> 0..255). An 8-bit image in a wider container (values shifted left:
  12 bits in 16 is ``<< 4``; or multiplied by 257 for 16 bits) is mapped back exactly
  to ``uint8``, equal to the 8-bit image. Other data is read by its range, at the
  smallest camera bit depth (:data:`CAMERA_BITS`: 8, 10, 12, 14, 16) that holds its
  largest value: ``float32`` ``v / (2**b - 1)`` in [0, 1] (12-bit data stored in 16
  bits is read as 12-bit, a full 16-bit image as 16-bit);
* floats: within [0, 1] kept (``uint8`` when every value is a multiple of 1/255),
  integer-valued floats like integers, any other float scaled by the data's range.

Each conversion returns a one-line note saying which rule applied: the outputs'
metadata record it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

__all__ = ["normalise_intensity", "significant_bits", "featureless"]


def significant_bits(vmax: int) -> int:
    """Bits of the largest value of an image (at least 8): 4080 -> 12, 65535 -> 16."""
    return max(8, int(vmax).bit_length())


def normalise_intensity(image) -> Tuple[np.ndarray, Optional[str]]:
    """``(image on the 8-bit scale, note)``; the note is None when nothing changed.

    The result is ``uint8`` whenever the conversion is exact, else ``float32`` in
    [0, 1]. Non-numeric arrays and floats with NaN / infinite values are returned
    unchanged (the segmentation's own checks name those problems).
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8 or arr.size == 0:
        return arr, None
    if arr.dtype == bool:
        return arr.astype(np.uint8) * np.uint8(255), "boolean image read as 0 / 255"
    if np.issubdtype(arr.dtype, np.integer):
        return _integers(arr, arr.dtype.name)
    if np.issubdtype(arr.dtype, np.floating) and not np.iscomplexobj(arr):
        return _floats(arr)
    return arr, None


#: bit depths of camera data (read as the smallest of these that holds the largest value)
CAMERA_BITS = (8, 10, 12, 14, 16)


def _integers(arr: np.ndarray, what: str) -> Tuple[np.ndarray, Optional[str]]:
    lo, hi = int(arr.min()), int(arr.max())
    notes = []
    width = arr.dtype.itemsize * 8
    if lo < 0:
        offset = 1 << (-lo - 1).bit_length()  # smallest power of two >= -lo
        v = (arr.astype(np.int64) + offset).astype(np.uint64)
        hi += offset
        notes.append(f"signed values offset by +{offset}")
    else:
        v = arr.astype(np.uint64, copy=False)
        width -= 1 if arr.dtype.kind == "i" else 0  # int16 holds 15 bits of non-negative data
    exact = _exact_8_bit(v, hi, width)
    if exact is not None:
        out, how = exact
    else:
        bits = significant_bits(hi)
        bits = next((b for b in CAMERA_BITS if b >= bits), bits)
        out = (v.astype(np.float64) / float((1 << bits) - 1)).astype(np.float32)
        how = f"read as {bits}-bit data, scaled by 1/{(1 << bits) - 1} to [0, 1]"
    return out, f"{what} image: " + ", ".join(notes + [how])


def _exact_8_bit(v: np.ndarray, hi: int, width: int):
    """``(uint8 image, note)`` when ``v`` is an 8-bit image in a wider container: shifted
    left by as many bits as all values have zero at the bottom (12 bits in 16: << 4), or
    multiplied by ``(2**b - 1) / 255`` (x 257 for 16 bits); None otherwise."""
    bits = significant_bits(hi)
    common = int(np.bitwise_or.reduce(v.ravel())) if v.size else 0
    zeros = (common & -common).bit_length() - 1 if common else width  # trailing zero bits of every value
    top = min(width, 8 + zeros)
    if top >= bits:
        if top == 8:
            return v.astype(np.uint8), "values within 0..255 read as 8-bit"
        return (v >> np.uint64(top - 8)).astype(np.uint8), f"{top}-bit data shifted to 8 bits (exact)"
    b = -(-max(bits, 9) // 8) * 8  # the next whole number of bytes
    step = ((1 << b) - 1) // 255
    if b <= width and not np.any(v % np.uint64(step)):
        return (v // np.uint64(step)).astype(np.uint8), f"{b}-bit data divided by {step} (exact)"
    return None


def _floats(arr: np.ndarray) -> Tuple[np.ndarray, Optional[str]]:
    if not np.all(np.isfinite(arr)):
        return arr, None
    lo, hi = float(arr.min()), float(arr.max())
    what = arr.dtype.name
    if lo >= 0.0 and hi <= 1.0:
        steps = arr.astype(np.float64) * 255.0
        rounded = np.round(steps)
        if np.all(np.abs(steps - rounded) < 1e-3):
            return rounded.astype(np.uint8), f"{what} image in [0, 1] with 8-bit steps read as 8-bit (exact)"
        return arr, None
    if np.all(arr == np.round(arr)) and hi < 2.0**63:
        out, note = _integers(arr.astype(np.int64), what)
        return out, note.replace(": ", " with integer values: ", 1)
    if hi == lo:
        return np.zeros(arr.shape, np.float32), f"{what} image of one value ({lo:.6g}) read as 0"
    scaled = ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    return scaled, f"{what} image scaled by the data's range [{lo:.6g}, {hi:.6g}] to [0, 1]"


#: an image whose grey levels spread less than this (of 255) is one flat colour
FLAT_GREY_LEVELS = 2.0
#: neighbouring pixels of an image with structure correlate more than this (blood
#: smears: 0.96 or more; uncorrelated noise: about 0)
MIN_NEIGHBOUR_CORRELATION = 0.3


def featureless(image, channel_axis: Optional[int] = None) -> Optional[str]:
    """Why a 2-D image (on the 8-bit scale: ``uint8`` or [0, 1]) holds nothing to
    segment, or None: one flat colour (all black, all white), or pixels that do not
    correlate with their neighbours (noise). Large images are judged on block means
    of at most 512 px a side."""
    arr = np.asarray(image)
    scale = 1.0 if arr.dtype == np.uint8 else 255.0
    grey = arr.astype(np.float32)
    if channel_axis is not None:
        grey = np.moveaxis(grey, channel_axis, -1).mean(axis=-1)
    if grey.ndim != 2 or min(grey.shape) < 8 or not np.all(np.isfinite(grey)):
        return None
    step = int(np.ceil(max(grey.shape) / 512))
    if step > 1:
        h, w = (grey.shape[0] // step) * step, (grey.shape[1] // step) * step
        grey = grey[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    grey = (grey - grey.mean()) * scale
    spread = float(grey.std())
    if spread < FLAT_GREY_LEVELS:
        return f"the image is one flat colour (its grey levels spread {spread:.1f} of 255)"
    var = float((grey * grey).mean())
    corr = min(float((grey[:, :-1] * grey[:, 1:]).mean()), float((grey[:-1] * grey[1:]).mean())) / var
    if corr < MIN_NEIGHBOUR_CORRELATION:
        return f"the image has no structure (neighbouring pixels correlate {corr:.2f}: noise)"
    return None
