"""One entry point for every segmentation method (used by the CLI and the widget).

``method="vptv"``
    The variational VPTV solver (:func:`~napari_vptv.core.segment.vptv_segment`,
    Algorithm 1). With ``preset="wbc"`` it uses the WBC preset
    (:func:`~napari_vptv.core.wbc.wbc_preset`: learned colour likelihood, interval
    volume prior, tuned ``eps`` / ``lambda``); explicit arguments override the preset.
``method="unet"`` / ``"vptv-unet"``
    The shipped white-blood-cell networks (plain softmax head / VPTV-softmax head),
    through :func:`napari_vptv.nn.weights.predict_wbc` (imported lazily, so torch and
    the network code load only when a network is asked for).

No napari or Qt imports here.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .segment import SegmentationResult, vptv_segment
from .volumes import make_volume_spec

__all__ = ["METHODS", "PRESETS", "segment_image"]

#: Segmentation methods understood by :func:`segment_image`.
METHODS = ("vptv", "unet", "vptv-unet")
#: Presets understood by :func:`segment_image` (None / "none": no preset; "auto":
#: "wbc" for RGB images with 3 or unspecified classes, else none).
PRESETS = (None, "none", "wbc", "auto")


def _resolve_preset(preset, method, channel_axis, n_classes):
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "auto":
        if method != "vptv":
            return "wbc"
        return "wbc" if channel_axis is not None and n_classes in (None, 3) else None
    return None if preset == "none" else preset


def _rgb_channel_axis(image, channel_axis):
    """Channel axis for an RGB(A) WBC image: given, or -1 for ``(H, W, 3|4)``."""
    arr = np.asarray(image)
    if channel_axis is not None:
        return channel_axis
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return -1
    raise ValueError(
        f"the WBC preset needs an RGB image (H, W, 3); got shape {arr.shape} without a channel axis "
        "(use preset=None for grey images)"
    )


def _bounds_pair(volume_bounds):
    if volume_bounds is None:
        return None
    try:
        lo, hi = volume_bounds
    except (TypeError, ValueError):
        raise ValueError("volume_bounds must be a pair (lower, upper) of per-class fractions") from None
    if lo is None and hi is None:
        return None
    return lo, hi


def segment_image(
    image,
    *,
    method: str = "vptv",
    preset: Optional[str] = None,
    n_classes: Optional[int] = None,
    volume_mode: Optional[str] = None,
    volumes: Optional[Sequence[float]] = None,
    volume_bounds: Optional[tuple] = None,
    epsilon: Optional[float] = None,
    tv_weight: Optional[float] = None,
    seed: int = 0,
    device: str = "cpu",
    callback: Optional[Callable[[int, int], None]] = None,
    channel_axis: Optional[int] = None,
    **solver_kwargs,
) -> SegmentationResult:
    """Segment one image with the variational solver or a shipped network.

    Parameters
    ----------
    image : ndarray
        Grey ``(H, W)`` / ``(Z, H, W)`` or colour image (``channel_axis``). The WBC
        preset and the networks need RGB ``(H, W, 3)``.
    method : {"vptv", "unet", "vptv-unet"}
        See the module docstring.
    preset : {None, "none", "wbc", "auto"}
        ``"wbc"``: the white blood cell preset (3 classes; volumes default to the
        preset's interval prior, or its training-average fractions for
        ``volume_mode="exact"``). The networks are WBC networks and always use it.
    n_classes : int, optional
        Number of classes (the WBC preset and the networks fix it to 3).
    volume_mode : {"exact", "interval", "none"}, optional
        Default: inferred from ``volumes`` / ``volume_bounds``; the preset's default
        (``"interval"``) when neither is given.
    volumes : sequence of float, optional
        Exact class fractions ``V_i`` (sum 1).
    volume_bounds : (lower, upper), optional
        Per-class fraction intervals.
    epsilon, tv_weight : float, optional
        ``eps`` and ``lambda`` of eq. 11; default: the preset's / solver's /
        network's value.
    seed : int
        Seed of the k-means initialisation (only random step).
    device : str
        torch device.
    callback : callable ``(iteration, max_iterations)``, optional
        Progress hook (variational solver only).
    channel_axis : int, optional
        Colour axis (``-1`` for RGB). With the WBC preset an ``(H, W, 3)`` image is
        taken as RGB even when it is None.
    **solver_kwargs
        Any other keyword of :func:`~napari_vptv.core.segment.vptv_segment`
        (``edge``, ``similarity``, ``max_num_iter``, ``tol``, ...). For the networks,
        ``max_num_iter`` sets the unrolled iterations ``T``.

    Returns
    -------
    SegmentationResult
        For the networks, ``n_iter`` is 0 and ``class_model`` is None.

    Raises
    ------
    ValueError
        Unknown method / preset, impossible volumes, bad image.
    RuntimeError
        A network method is asked for but the network code or its weights are not
        available.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    preset = _resolve_preset(preset, method, channel_axis, n_classes)
    if volume_mode is not None and volume_mode not in ("exact", "interval", "none"):
        raise ValueError(f"volume_mode must be 'exact', 'interval' or 'none', got {volume_mode!r}")
    bounds = _bounds_pair(volume_bounds)
    if preset == "wbc" and n_classes not in (None, 3):
        raise ValueError(f"the WBC preset has 3 classes (background, cytoplasm, nucleus), got n_classes={n_classes}")

    if method != "vptv":
        return _segment_network(image, method, volume_mode, volumes, bounds, epsilon, tv_weight,
                                device, channel_axis, solver_kwargs)

    if preset == "wbc":
        from .wbc import wbc_preset

        channel_axis = _rgb_channel_axis(image, channel_axis)
        arr = np.asarray(image)
        if np.moveaxis(arr, channel_axis, -1).shape[-1] == 4:  # RGBA -> RGB
            arr = np.moveaxis(np.moveaxis(arr, channel_axis, -1)[..., :3], -1, channel_axis)
        image = arr
        if volume_mode is None:
            volume_mode = "exact" if volumes is not None else "interval"
        overrides = {k: v for k, v in solver_kwargs.items() if v is not None}
        if epsilon is not None:
            overrides["epsilon"] = epsilon
        if tv_weight is not None:
            overrides["tv_weight"] = tv_weight
        kw = wbc_preset(volume_mode, **overrides)
        if volume_mode == "exact" and volumes is not None:
            kw["volumes"] = volumes
        if volume_mode == "interval" and bounds is not None:
            kw["volume_bounds"] = bounds
        kw["channel_axis"] = channel_axis
        return vptv_segment(image, seed=seed, device=device, callback=callback, **kw)

    kw = {k: v for k, v in solver_kwargs.items() if v is not None}
    if epsilon is not None:
        kw["epsilon"] = epsilon
    if tv_weight is not None:
        kw["tv_weight"] = tv_weight
    return vptv_segment(
        image,
        n_classes,
        volumes=volumes,
        volume_mode=volume_mode,
        volume_bounds=bounds,
        channel_axis=channel_axis,
        seed=seed,
        device=device,
        callback=callback,
        **kw,
    )


def _segment_network(image, method, volume_mode, volumes, bounds, epsilon, tv_weight, device,
                     channel_axis, solver_kwargs):
    try:
        from ..nn.weights import predict_wbc
    except ImportError as exc:  # network code missing from this installation
        raise RuntimeError(f"method {method!r} needs the napari_vptv.nn networks, which are not available: {exc}") from exc
    arr = np.asarray(image)
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"method {method!r} needs an RGB image (H, W, 3); got shape {np.shape(image)}")

    # Validate the volume arguments here, so the error names them the same way
    # as for the solver.
    if volume_mode is None:
        volume_mode = "exact" if volumes is not None else ("interval" if bounds is not None else None)
    net_volumes = None
    if volume_mode == "exact" and volumes is not None:
        net_volumes = make_volume_spec(3, "exact", volumes).volumes
    elif volume_mode == "interval" and bounds is not None:
        spec = make_volume_spec(3, "interval", lower=bounds[0], upper=bounds[1])
        net_volumes = np.stack([spec.lower, spec.upper])
    kwargs = {}
    if solver_kwargs.get("max_num_iter") is not None:
        kwargs["num_iter"] = int(solver_kwargs["max_num_iter"])
    try:
        labels, prob = predict_wbc(
            arr, method=method, volumes=net_volumes, volume_mode=volume_mode,
            epsilon=epsilon, tv_weight=tv_weight, device=device, **kwargs,
        )
    except FileNotFoundError as exc:
        raise RuntimeError(f"the pretrained weights of {method!r} are not available: {exc}") from exc
    prob = np.asarray(prob, dtype=np.float32)
    k = prob.shape[0]
    mode = volume_mode or "none"
    if mode == "exact" and net_volumes is not None:
        spec = make_volume_spec(k, "exact", net_volumes)
    elif mode == "interval" and net_volumes is not None:
        spec = make_volume_spec(k, "interval", lower=net_volumes[0], upper=net_volumes[1])
    else:
        spec = make_volume_spec(k, "none")
    return SegmentationResult.from_arrays(
        labels, prob, n_iter=0, converged=True, class_model=None, volume_spec=spec
    )
