"""Mask correction for every front end: :func:`correct_image` and its generator.

A :class:`~napari_vptv.options.CorrectOptions` says how; this module turns its
``model`` into evidence (:func:`correction_evidence`: the one place that asks the
VPTVU-net, on the options' ``device``) and runs
:func:`napari_vptv.core.correct.mask.correct_mask_iter` with the core settings
(:meth:`CorrectOptions.to_settings`). ``vptv correct`` and the
"Correct mask" widget call it; :mod:`napari_vptv.api` re-exports it.

No napari or Qt imports here; torch and the network code load only when the
network's evidence is asked for.
"""

from __future__ import annotations

from typing import Callable, Generator, Optional

import numpy as np

from .options import CorrectOptions, OptionError

__all__ = ["CorrectOptions", "correct_image", "correct_image_iter", "correction_evidence"]


def _as_options(options: Optional[CorrectOptions], settings) -> CorrectOptions:
    if options is None:
        return CorrectOptions(**settings)
    if not isinstance(options, CorrectOptions):
        raise TypeError(f"options must be a CorrectOptions, got {type(options).__name__}")
    return options.replace(**settings) if settings else options


def _colour_image(image, channel_axis):
    """``(image, channel_axis)`` with an RGBA image cut to RGB, colour last."""
    arr = np.asarray(image)
    if channel_axis is None:
        return arr, None
    arr = np.moveaxis(arr, int(channel_axis), -1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr, -1


def correction_evidence(image, options: CorrectOptions, channel_axis: Optional[int] = None):
    """The evidence array of ``options.model`` (None for the colour model).

    ``"vptv-unet"``: the VPTVU-net's class probabilities of the RGB ``image`` on
    ``options.device`` -- the nucleus probability ``(H, W)`` in the objects mode, all
    three classes ``(3, H, W)`` in the semantic mode.

    Raises
    ------
    OptionError
        The network's evidence asked for on an image without 3 colour channels.
    """
    if options.model == "colour":
        return None
    image, channel_axis = _colour_image(image, channel_axis)
    if channel_axis is None or image.shape[-1] != 3 or image.ndim != 3:
        raise OptionError("model", f"model {options.model!r} needs an RGB image (H, W, 3); got shape {image.shape}")
    from .nn.weights import predict_wbc

    _, probs = predict_wbc(image, method=options.model, device=options.device)
    return probs[2] if options.mode == "objects" else probs


def correct_image_iter(
    image,
    mask,
    options: Optional[CorrectOptions] = None,
    *,
    channel_axis: Optional[int] = None,
    report: Optional[list] = None,
    **settings,
) -> Generator:
    """Generator form of :func:`correct_image`: yields the core's progress steps
    (``step.done``, ``step.total``) and returns the corrected labels.

    The network evidence (``model="vptv-unet"``) is computed when the generator
    starts, so a worker thread that runs it does that work too.
    """
    from .core.correct.mask import correct_mask_iter

    opts = _as_options(options, settings)
    image, channel_axis = _colour_image(image, channel_axis)
    evidence = correction_evidence(image, opts, channel_axis)
    settings = opts.to_settings()
    return (
        yield from correct_mask_iter(image, mask, settings, channel_axis=channel_axis, evidence=evidence, report=report)
    )


def correct_image(
    image,
    mask,
    options: Optional[CorrectOptions] = None,
    *,
    channel_axis: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    report: Optional[list] = None,
    **settings,
) -> np.ndarray:
    """Snap a rough label mask to the image's boundaries with VPTV.

    Parameters
    ----------
    image : ndarray
        Grey ``(H, W)`` / ``(Z, H, W)`` or colour image (``channel_axis``; RGBA is cut
        to RGB).
    mask : ndarray of int
        Instance labels (``mode="objects"``), a binary mask (one object) or class
        labels (``mode="semantic"``), of the image's spatial shape.
    options : CorrectOptions, optional
        The settings (default: made from ``settings``).
    channel_axis : int, optional
        Colour axis of ``image`` (None: grey).
    progress : callable ``(done, total)``, optional
        Called after every step of the solver.
    should_stop : callable, optional
        Checked after every step; True stops with ``InterruptedError``.
    report : list, optional
        Filled with one row per object (areas before / after, see
        :func:`~napari_vptv.core.correct.mask.correct_mask`).
    **settings
        Fields of :class:`~napari_vptv.options.CorrectOptions`, overriding those of
        ``options``.

    Returns
    -------
    ndarray
        The corrected labels, shape and ids of ``mask``.

    Raises
    ------
    ValueError
        A bad setting (an :class:`~napari_vptv.options.OptionError` names it), a mask
        that does not fit the image, an empty mask.
    InterruptedError
        ``should_stop`` returned True.

    Examples
    --------
    >>> corrected = correct_image(image, rough, CorrectOptions(volume_mode="exact"))  # doctest: +SKIP
    """
    from .core.correct.mask import run_correction

    gen = correct_image_iter(image, mask, options, channel_axis=channel_axis, report=report, **settings)
    return run_correction(gen, progress, should_stop)
