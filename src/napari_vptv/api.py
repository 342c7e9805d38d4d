"""The thin API layer: one dispatcher from :class:`SegmentOptions` to labels.

``segment_image(image, options)`` sends ``method="vptv"`` to the variational
solver in :mod:`napari_vptv.core` (with the WBC preset's colour model and priors
from :mod:`napari_vptv.core.wbc` when the preset applies) and the network methods
to :func:`napari_vptv.nn.weights.predict_wbc` (imported lazily: torch and the
network code load only when a network is asked for).

The widget, the ``vptv`` command line and the batch engine all call
:func:`segment_image` through a :class:`SegmentFn` (a picklable
``fn(image, *, channel_axis)``) built from the same options object.

No napari or Qt imports here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from .core.cell_rules import drop_cells_without_nucleus, drop_non_white_cells
from ._input_checks import check_memory_for, featureless_result, is_rgb_shape
from .core.intensity import normalise_intensity
from .core.segment import SegmentationResult, vptv_segment
from .core.volumes import make_volume_spec
from .options import METHODS, PRESETS, SegmentOptions, auto_choice

__all__ = [
    "METHODS",
    "PRESETS",
    "SegmentOptions",
    "SegmentFn",
    "segment_image",
    "make_segment_fn",
    "evaluate_folder",
    "wbc_priors",
    "check_device",
]

ProgressCallback = Callable[[int, int], None]


def _auto_settings(image, channel_axis, settings: Dict[str, Any]) -> Dict[str, Any]:
    """Settings with the measured best method when neither a method nor a preset is
    asked for (:func:`~napari_vptv.options.auto_method`)."""
    if "method" in settings or "preset" in settings:
        return settings
    shape = list(np.shape(image))
    if channel_axis is not None and shape:
        shape.append(shape.pop(int(channel_axis) % len(shape)))  # colour axis last
    bounds = settings.get("volume_bounds")
    request = dict(
        n_classes=settings.get("n_classes"), volumes=[settings.get(k) for k in ("volumes", "lower", "upper")]
        + (list(bounds) if bounds is not None else []),
        solver_settings=any(settings.get(k) is not None for k in ("epsilon", "tv_weight", "edge", "max_num_iter")),
        rgb=len(shape) == 3 and shape[-1] in (3, 4),
    )
    method, preset = auto_choice(**request)
    return {**settings, "method": method, **({"preset": preset} if preset else {})}


def _as_options(options: Optional[SegmentOptions], settings: Dict[str, Any]) -> SegmentOptions:
    if options is None:
        return SegmentOptions.from_kwargs(**settings)
    if not isinstance(options, SegmentOptions):
        raise TypeError(f"options must be a SegmentOptions, got {type(options).__name__}")
    if settings:
        bounds = settings.pop("volume_bounds", None)
        if bounds is not None:
            settings["lower"], settings["upper"] = bounds
        return options.replace(**settings)
    return options


def segment_image(
    image,
    options: Optional[SegmentOptions] = None,
    *,
    channel_axis: Optional[int] = None,
    callback: Optional[ProgressCallback] = None,
    **settings,
) -> SegmentationResult:
    """Segment one image with the variational solver or a shipped network.

    Parameters
    ----------
    image : ndarray
        Grey ``(H, W)`` / ``(Z, H, W)`` or colour image (``channel_axis``). The WBC
        preset and the networks need RGB ``(H, W, 3)``. Any dtype or bit depth
        (16-bit, 12 bits in 16, signed, float) is first brought to the 8-bit scale
        (:func:`~napari_vptv.core.intensity.normalise_intensity`), so it gives the
        8-bit image's labels; ``result.info["conversions"]`` says how. An
        ``(H, W, 3)`` image is RGB (labels ``(H, W)``) unless ``channel_axis`` says
        otherwise. With the WBC methods an image of one flat colour or of noise has no
        cells (all background, ``result.info["no_cells"]`` says why).
    options : SegmentOptions, optional
        The settings. Default: made from ``settings``; when these name neither a
        ``method`` nor a ``preset``, the best method measured across sources
        (:func:`~napari_vptv.options.auto_method`): for a 2-D RGB image the
        variational solver with the image-adapted WBC preset (the VPTVU-net when
        3-class volumes are given), the generic solver for grey images, other
        class counts or solver settings.
    channel_axis : int, optional
        Colour axis (``-1`` for RGB). An ``(H, W, 3)`` image is taken as RGB even when
        it is None.
    callback : callable ``(iteration, max_iterations)``, optional
        Progress hook (variational solver only); it may raise to stop the solve.
    **settings
        Fields of :class:`SegmentOptions` (and ``volume_bounds=(lower, upper)``),
        overriding those of ``options``.

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

    Examples
    --------
    >>> from napari_vptv.core.samples import load_sample          # doctest: +SKIP
    >>> image, _ = load_sample("001")                             # doctest: +SKIP
    >>> segment_image(image, SegmentOptions.wbc()).labels.shape   # doctest: +SKIP
    (300, 300)
    """
    _check_channel_axis(image, channel_axis)
    image, conversion = normalise_intensity(image)
    if channel_axis is None and is_rgb_shape(image):
        channel_axis = -1  # (H, W, 3): a colour image, never a 3-slice grey volume
    if options is None:
        settings = _auto_settings(image, channel_axis, settings)
    opts = _as_options(options, settings)
    check_device(opts.device)
    check_memory_for(image, opts, channel_axis)  # before any work: the size it needs, if it cannot fit
    result = _check_finite(_dispatch(image, opts, channel_axis, callback), opts)
    if conversion:
        result.info = {**(getattr(result, "info", None) or {}), "conversions": [conversion]}
    return result


def _dispatch(image, opts: SegmentOptions, channel_axis, callback) -> SegmentationResult:
    """The method / preset of ``opts`` on ``image`` (see :func:`segment_image`)."""
    wbc = opts.is_network or opts.resolved_preset(channel_axis is not None) == "wbc"
    if wbc:
        empty = featureless_result(image, opts, channel_axis)
        if empty is not None:
            return empty
    if opts.is_network:
        return _segment_network(image, opts, channel_axis)
    if wbc:
        return _segment_wbc(image, opts, channel_axis, callback)
    return vptv_segment(
        image,
        opts.n_classes,
        volumes=opts.volumes,
        volume_mode=opts.volume_mode,
        volume_bounds=opts.volume_bounds,
        channel_axis=channel_axis,
        seed=opts.seed,
        device=opts.device,
        callback=callback,
        **_solver_overrides(opts),
    )


def _check_channel_axis(image, channel_axis) -> None:
    ndim = np.ndim(image)
    if channel_axis is not None and not -ndim <= int(channel_axis) < ndim:
        raise ValueError(f"channel_axis={channel_axis} is outside the image's {ndim} axes (shape {np.shape(image)})")


def check_device(device: str) -> None:
    """Raise a one-line ``OptionError`` unless ``device`` names a torch device this machine has."""
    import torch

    from .options import OptionError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError("device", f"device {device!r} is not a torch device name (e.g. 'cpu', 'cuda')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"device {device!r}: this torch build or machine has no CUDA GPU; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", f"device {device!r}: Apple MPS is not available here; use 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError("device", f"device {device!r} is not supported; use 'cpu' or 'cuda'")


def _check_finite(result: SegmentationResult, opts: SegmentOptions) -> SegmentationResult:
    """Numerical guard: NaN / Inf probabilities are an error, never labels."""
    prob = getattr(result, "probabilities", None)
    if prob is not None and not np.all(np.isfinite(prob)):
        raise ValueError(
            "the segmentation produced NaN or infinite probabilities; the likely cause is epsilon "
            f"({opts.epsilon if opts.epsilon is not None else 'default'}) or tv_weight "
            f"({opts.tv_weight if opts.tv_weight is not None else 'default'}); try epsilon from 0.001 to 10"
        )
    return result


def _solver_overrides(opts: SegmentOptions) -> Dict[str, Any]:
    """Solver settings that were given (the others keep the preset's / solver's defaults)."""
    names = ("edge", "max_num_iter", "epsilon", "tv_weight")
    return {k: getattr(opts, k) for k in names if getattr(opts, k) is not None}


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


def _segment_wbc(image, opts: SegmentOptions, channel_axis, callback) -> SegmentationResult:
    """The solver with the WBC preset (:func:`~napari_vptv.core.wbc.wbc_preset`)."""
    from .core.wbc import wbc_preset

    channel_axis = _rgb_channel_axis(image, channel_axis)
    arr = np.asarray(image)
    n_channels = np.moveaxis(arr, channel_axis, -1).shape[-1]
    if n_channels not in (3, 4):
        raise ValueError(f"the WBC preset needs an RGB image with 3 channels; got {n_channels} (shape {arr.shape})")
    if n_channels == 4:  # RGBA -> RGB
        arr = np.moveaxis(np.moveaxis(arr, channel_axis, -1)[..., :3], -1, channel_axis)
    if opts.volume_mode is None and opts.volumes is None and opts.volume_bounds is None:
        adapted = _segment_wbc_adapted(arr, opts, channel_axis, callback)
        if adapted is not None:
            return adapted
    volume_mode = opts.volume_mode
    if volume_mode is None:
        volume_mode = "exact" if opts.volumes is not None else "interval"
    kw = wbc_preset(volume_mode, **_solver_overrides(opts))
    if volume_mode == "exact" and opts.volumes is not None:
        kw["volumes"] = opts.volumes
    if volume_mode == "interval" and opts.volume_bounds is not None:
        kw["volume_bounds"] = opts.volume_bounds
    kw["channel_axis"] = channel_axis
    return _with_nucleus_rule(vptv_segment(arr, seed=opts.seed, device=opts.device, callback=callback, **kw), opts)


def _nucleus_rule(opts: SegmentOptions) -> bool:
    """``opts.require_nucleus`` unless the user asked for volumes (exact fractions or
    bounds): the rule would break a constraint the user set, so that wins."""
    return opts.require_nucleus and opts.volume_mode in (None, "none") and opts.volumes is None \
        and opts.volume_bounds is None


def _with_nucleus_rule(result: SegmentationResult, opts: SegmentOptions,
                       diameter: Optional[float] = None) -> SegmentationResult:
    """WBC labels: cell regions without a nucleus become background (see :func:`_nucleus_rule`),
    then, with a ``diameter``, those too small for a white cell (``opts.white_cell_rule``)."""
    if _nucleus_rule(opts):
        labels, n = drop_cells_without_nucleus(result.labels)
        info = dict(getattr(result, "info", None) or {})
        info["cells_without_nucleus_removed"] = n
        if opts.white_cell_rule and diameter:
            labels, m = drop_non_white_cells(labels, diameter)
            info["non_white_cells_removed"] = m
            n += m
        if n:
            k = result.probabilities.shape[0]
            result.labels, result.volumes = labels, np.bincount(labels.ravel(), minlength=k) / labels.size
        result.info = info
    return result


#: solver settings of the image-adapted WBC preset (benchmarks/eval_generalist.py)
ADAPTED_WBC_SETTINGS = {"epsilon": 0.05, "tv_weight": 0.05}


def _segment_wbc_adapted(arr, opts: SegmentOptions, channel_axis, callback, network: Optional[str] = None):
    """The WBC preset refitted to this image: a Gaussian colour model per class from the
    generalist U-net's confident pixels, EM updates, a volume interval around the
    network's class fractions, then the colour cost and the network's log-probabilities
    together (:func:`napari_vptv.core.adapt.adapted_segment`). A class the network does
    not see (e.g. no white cell) gives the network's own labels. None when the network
    code is not installed (the fixed colour model is used then). ``network``: the
    initialiser, as :func:`~napari_vptv.nn.weights.predict_wbc`'s ``method``; default:
    ``opts.model`` (e.g. a fine-tuned model) or the shipped U-net."""
    try:
        from .nn.weights import predict_wbc
    except ImportError:
        return None
    from .core.adapt import adapted_segment

    rgb = np.moveaxis(arr, channel_axis, -1)
    # the rule runs once, on the result below (the U-net's own labels are used only
    # when no colour model can be fitted). One plain network pass: test-time
    # augmentation of this initialiser did not improve the result (validation splits,
    # wbc / wbc-d1: 0.9766 / 0.9681 plain vs 0.9756 / 0.9682 with the mirror image;
    # docs/solver-speed.md) and doubled its time.
    network = network or opts.model or "unet"
    pred = predict_wbc(rgb, method=network, diameter=opts.diameter, device=opts.device, details=True,
                       require_nucleus=False, augment=1)
    settings = {**ADAPTED_WBC_SETTINGS, **{k: v for k, v in _solver_overrides(opts).items()
                                           if k in ("epsilon", "tv_weight", "max_num_iter", "edge")}}
    result = adapted_segment(rgb, pred.probabilities, channel_axis=-1, seed=opts.seed, device=opts.device,
                             callback=callback, diameter=pred.diameter, **settings)
    fitted = result is not None
    if not fitted:
        result = SegmentationResult.from_arrays(pred.labels, pred.probabilities, n_iter=0, converged=True,
                                                class_model=None, volume_spec=make_volume_spec(3, "none"))
    result = _with_nucleus_rule(result, opts, pred.diameter)
    result.diameter = float(pred.diameter)
    result.info = {**(getattr(result, "info", None) or {}), "diameter": float(pred.diameter),
                   "diameter_estimated": bool(pred.estimated),
                   "colour_model": "refitted on this image" if fitted else "none (no cell found)",
                   "network": network}
    return result


def _network_volumes(opts: SegmentOptions):
    """(volume_mode, volumes in :func:`predict_wbc`'s layout) checked like the solver's."""
    bounds = opts.volume_bounds
    volume_mode = opts.volume_mode
    if volume_mode is None:
        volume_mode = "exact" if opts.volumes is not None else ("interval" if bounds is not None else None)
    net_volumes = None
    if volume_mode == "exact" and opts.volumes is not None:
        net_volumes = make_volume_spec(3, "exact", opts.volumes).volumes
    elif volume_mode == "interval" and bounds is not None:
        spec = make_volume_spec(3, "interval", lower=bounds[0], upper=bounds[1])
        net_volumes = np.stack([spec.lower, spec.upper])
    return volume_mode, net_volumes


def _segment_network(image, opts: SegmentOptions, channel_axis) -> SegmentationResult:
    """A shipped network through :func:`napari_vptv.nn.weights.predict_wbc`."""
    try:
        from .nn.weights import predict_wbc
    except ImportError as exc:  # network code missing from this installation
        raise RuntimeError(f"method {opts.method!r} needs the napari_vptv.nn networks, "
                           f"which are not available: {exc}") from exc
    arr = np.asarray(image)
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"method {opts.method!r} needs an RGB image (H, W, 3); got shape {np.shape(image)}")
    volume_mode, net_volumes = _network_volumes(opts)
    kwargs = {}
    if opts.max_num_iter is not None:
        kwargs["num_iter"] = opts.max_num_iter
    try:
        pred = predict_wbc(
            arr, method=opts.network_name, volumes=net_volumes, volume_mode=volume_mode,
            epsilon=opts.epsilon, tv_weight=opts.tv_weight, device=opts.device,
            diameter=opts.diameter, details=True, require_nucleus=_nucleus_rule(opts),
            augment=opts.augment, **kwargs,
        )
        labels, prob = pred.labels, pred.probabilities
    except FileNotFoundError as exc:
        raise RuntimeError(f"the pretrained weights of {opts.method!r} are not available: {exc}") from exc
    prob = np.asarray(prob, dtype=np.float32)
    k = prob.shape[0]
    mode = volume_mode or "none"
    if mode == "exact" and net_volumes is not None:
        spec = make_volume_spec(k, "exact", net_volumes)
    elif mode == "interval" and net_volumes is not None:
        spec = make_volume_spec(k, "interval", lower=net_volumes[0], upper=net_volumes[1])
    else:
        spec = make_volume_spec(k, "none")
    if _nucleus_rule(opts) and opts.white_cell_rule:  # the nucleus rule ran in the network's prediction
        labels, pred.info["non_white_cells_removed"] = drop_non_white_cells(labels, pred.diameter)
    result = SegmentationResult.from_arrays(labels, prob, n_iter=0, converged=True, class_model=None,
                                            volume_spec=spec)
    # what the network decided on its own: shown by the widget, stored in layer metadata
    result.diameter = float(pred.diameter)
    result.info = {"diameter": float(pred.diameter), "diameter_estimated": bool(pred.estimated),
                   "scale": float(pred.scale), **pred.info}
    return result


class SegmentFn:
    """Picklable single-image segmentation ``fn(image, *, channel_axis) -> result``.

    What the batch engine (:mod:`napari_vptv.core.batch`), the stack generator
    (:func:`napari_vptv.core.stack.segment_stack`) and the dask workers call.

    Parameters
    ----------
    options : SegmentOptions
        The validated settings.
    callback : callable ``(iteration, max_iterations)``, optional
        Progress hook of the variational solver (the widget's Cancel); leave it
        None for dask workers (it must be picklable there).
    """

    def __init__(self, options: SegmentOptions, callback: Optional[ProgressCallback] = None):
        if not isinstance(options, SegmentOptions):
            raise TypeError(f"options must be a SegmentOptions, got {type(options).__name__}")
        check_device(options.device)  # once, before a batch reads any file
        self.options = options
        self.callback = callback

    def __repr__(self):
        return f"SegmentFn({self.options!r})"

    @property
    def method(self) -> str:
        """The method of the options."""
        return self.options.method

    @property
    def preset(self) -> str:
        """The (unresolved) preset of the options."""
        return self.options.preset

    def resolved_preset(self, rgb: bool) -> str:
        """See :meth:`SegmentOptions.resolved_preset`."""
        return self.options.resolved_preset(rgb)

    def n_classes(self, rgb: bool) -> int:
        """Number of classes of the labels for an RGB / grey input."""
        return self.options.n_classes_for(rgb)

    def __call__(self, image, *, channel_axis=None):
        callback = None if self.options.is_network else self.callback
        return segment_image(np.asarray(image), self.options, channel_axis=channel_axis, callback=callback)


def make_segment_fn(
    method: str = "vptv",
    *,
    preset: str = "auto",
    n_classes: Optional[int] = None,
    volume_mode: Optional[str] = None,
    volumes: Optional[Sequence[float]] = None,
    lower: Optional[Sequence[float]] = None,
    upper: Optional[Sequence[float]] = None,
    epsilon: Optional[float] = None,
    tv_weight: Optional[float] = None,
    edge: Optional[bool] = None,
    max_num_iter: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
    diameter: float = 0.0,
    model: str = "",
) -> SegmentFn:
    """Validate segmentation settings and return a picklable :class:`SegmentFn`.

    The keyword form of ``SegmentFn(SegmentOptions(...))``, with the batch
    default ``preset="auto"``.

    Parameters
    ----------
    method, preset, n_classes, volume_mode, volumes, lower, upper, epsilon, tv_weight, edge, max_num_iter, seed, device, diameter, model
        Fields of :class:`SegmentOptions`.

    Returns
    -------
    SegmentFn

    Raises
    ------
    ValueError
        Unknown method / preset, or impossible volumes (checked here, before any
        image is read).
    """
    return SegmentFn(SegmentOptions(
        method=method, preset=preset, n_classes=n_classes, volume_mode=volume_mode, volumes=volumes,
        lower=lower, upper=upper, epsilon=epsilon, tv_weight=tv_weight, edge=edge,
        max_num_iter=max_num_iter, seed=seed, device=device, diameter=diameter, model=model,
    ))


def evaluate_folder(
    images_dir,
    masks_dir,
    options: Optional[SegmentOptions] = None,
    *,
    progress: Optional[ProgressCallback] = None,
    **settings,
):
    """Segment every image of a folder and score it against its mask.

    Parameters
    ----------
    images_dir, masks_dir : str or Path
        Folders of images and of masks with the same file stems (see
        :func:`napari_vptv.core.evaluate.score_folder`).
    options : SegmentOptions, optional
        Default: made from ``settings`` with ``preset="wbc"`` unless given.
    progress : callable ``(done, total)``, optional
        Called after every image (and once with ``done = 0`` before the first).
    **settings
        Fields of :class:`SegmentOptions` (and ``volume_bounds``).

    Returns
    -------
    rows : list of dict
    summary : dict
        See :func:`napari_vptv.core.evaluate.score_folder`.
    """
    from .core.evaluate import score_folder

    if options is None:
        settings.setdefault("preset", "wbc")
    fn = SegmentFn(_as_options(options, settings))
    return score_folder(images_dir, masks_dir, fn, progress=progress)


def wbc_priors(method: str = "vptv") -> Dict[str, Any]:
    """Settings of the WBC preset, for the widget's fields. Never raises.

    Parameters
    ----------
    method : {"vptv", "vptv-unet"}
        Whose settings: the network's shipped metadata (training-average priors,
        2nd / 98th percentiles, the layer's eps, lambda) for the VPTVU-net, the shipped
        colour model and :data:`~napari_vptv.core.wbc.WBC_DEFAULTS` for the solver.

    Returns
    -------
    dict
        ``{"volumes", "lower", "upper", "source"}`` and, when known,
        ``"epsilon"``, ``"tv_weight"``, ``"edge"``. Each source falls back to the
        other, then to :data:`~napari_vptv.core.wbc.WBC_TRAINING_FRACTIONS`.
    """
    from .core.wbc import WBC_TRAINING_FRACTIONS

    out: Dict[str, Any] = {}
    order = (_net_priors, _colour_model_priors) if method == "vptv-unet" else (_colour_model_priors, _net_priors)
    for i, source in enumerate(order):
        try:
            got = source()
        except Exception:  # noqa: BLE001 - a missing/partial module or file is fine here
            continue
        for k, v in got.items():
            # solver settings only from the method's own source
            if v is not None and k not in out and (i == 0 or k in ("volumes", "lower", "upper", "source")):
                out[k] = v
        if "volumes" in out and "lower" in out:
            break
    if "volumes" not in out or "lower" not in out or "upper" not in out:
        out.setdefault("volumes", WBC_TRAINING_FRACTIONS["mean"])
        out["lower"], out["upper"] = WBC_TRAINING_FRACTIONS["p02"], WBC_TRAINING_FRACTIONS["p98"]
        out.setdefault("source", "fractions of the WBC training masks")
    return out


def _net_priors() -> Dict[str, Any]:
    from .nn.weights import model_metadata

    meta = model_metadata("vptv-unet")
    pri = meta.get("volume_priors") or {}
    head = meta.get("head") or {}
    return {"volumes": pri.get("mean"), "lower": pri.get("p02"), "upper": pri.get("p98"),
            "epsilon": head.get("epsilon"), "tv_weight": head.get("tv_weight"), "source": "VPTVU-net metadata"}


def _colour_model_priors() -> Dict[str, Any]:
    from .core.wbc import WBC_DEFAULTS, load_wbc_model

    got = {k: WBC_DEFAULTS.get(k) for k in ("epsilon", "tv_weight", "edge")}
    model = load_wbc_model()
    got.update(volumes=model.fractions, lower=model.lower, upper=model.upper, source="WBC colour model")
    return got
