"""napari-vptv: volume-preserving TV (VPTV) segmentation for napari, the command
line and Python.

The public API is small: build a :class:`SegmentOptions` (or use a preset
constructor such as ``SegmentOptions.wbc()``) and call :func:`segment_image`
(what runs by default, with which settings: :mod:`napari_vptv.presets`). Masks are
corrected with :func:`correct_image` (:class:`CorrectOptions`); a network is
fine-tuned on your own images with :func:`finetune` and saved with
:func:`save_finetuned` (these two need torch).

>>> from napari_vptv import SegmentOptions, segment_image     # doctest: +SKIP
>>> result = segment_image(image, SegmentOptions.wbc())        # doctest: +SKIP
>>> result.labels, result.volumes                              # doctest: +SKIP

Heavy modules (torch, the networks, napari) are imported only when used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-vptv")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "METHODS",
    "PRESETS",
    "SegmentOptions",
    "SegmentFn",
    "SegmentationResult",
    "segment_image",
    "make_segment_fn",
    "evaluate_folder",
    "CorrectOptions",
    "correct_image",
    "finetune",
    "save_finetuned",
]

_API = {"SegmentFn", "segment_image", "make_segment_fn", "evaluate_folder", "correct_image"}
_OPTIONS = {"METHODS", "PRESETS", "SegmentOptions", "CorrectOptions"}
_FINETUNE = {"finetune", "save_finetuned"}


def __getattr__(name):
    # lazy: ``import napari_vptv`` (done by napari for the manifest) stays cheap
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _OPTIONS:
        from . import options

        return getattr(options, name)
    if name in _FINETUNE:  # torch: imported only when asked for
        from . import finetuning

        return getattr(finetuning, name)
    if name == "SegmentationResult":
        from .core.solver.segment import SegmentationResult

        return SegmentationResult
    raise AttributeError(f"module 'napari_vptv' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
