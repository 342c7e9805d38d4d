"""The thin API layer: one dispatcher from :class:`SegmentOptions` to labels.

``segment_image(image, options)`` resolves the options for the image
(:meth:`SegmentOptions.resolve`; what each named method runs with which settings:
:mod:`napari_vptv.presets`), sends ``"vptv-adapted"`` and ``"vptv"`` to the
variational solver in :mod:`napari_vptv.core` (with the WBC preset's colour model and
priors from :mod:`napari_vptv.core.wbc.preset` when the preset applies) and the network methods
to :func:`napari_vptv.nn.weights.predict_wbc` (imported lazily: torch and the
network code load only when a network is asked for).

The widget, the ``vptv`` command line and the batch engine all call
:func:`segment_image` through a :class:`SegmentFn` (a picklable
``fn(image, *, channel_axis)``) built from the same options object.

No napari or Qt imports here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from ._input_checks import check_memory_for, featureless_result, is_rgb_shape
from .adapted import ADAPTED_WBC_SETTINGS as ADAPTED_WBC_SETTINGS  # re-exported (the widget's defaults)
from .adapted import (
    _adapted,
    _nucleus_rule,
    _solver_overrides,
    _with_nucleus_rule,
    adapted_from_prediction,
    segment_adapted,
)
from .core.io.intensity import normalise_intensity
from .core.solver.segment import SegmentationResult, vptv_segment
from .core.solver.volumes import make_volume_spec
from .core.wbc.cell_rules import drop_non_white_cells_in
from .correction import correct_image, correct_image_iter, correction_evidence
from .options import METHODS, PRESETS, CorrectOptions, SegmentOptions
from .presets import DEFAULT_METHOD, WBC_COLOUR

__all__ = [
    "METHODS",
    "PRESETS",
    "SegmentOptions",
    "SegmentFn",
    "segment_image",
    "segment_adapted",
    "adapted_from_prediction",
    "make_segment_fn",
    "evaluate_folder",
    "wbc_priors",
    "check_device",
    "CorrectOptions",
    "correct_image",
    "correct_image_iter",
    "correction_evidence",
]

ProgressCallback = Callable[[int, int], None]


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
    tile_progress: Optional[ProgressCallback] = None,
    scheduler=None,
    **settings,
) -> SegmentationResult:
    """Segment one image with the variational solver or a shipped network.

    Parameters
    ----------
    image : ndarray
        Grey ``(H, W)`` / ``(Z, H, W)`` or colour image (``channel_axis``). The WBC
        preset and the networks need RGB ``(H, W, 3)``. Any dtype or bit depth
        (16-bit, 12 bits in 16, signed, float) is first brought to the 8-bit scale
        (:func:`~napari_vptv.core.io.intensity.normalise_intensity`), so it gives the
        8-bit image's labels; ``result.info["conversions"]`` says how. An
        ``(H, W, 3)`` image is RGB (labels ``(H, W)``) unless ``channel_axis`` says
        otherwise. With the WBC methods an image of one flat colour or of noise has no
        cells (all background, ``result.info["no_cells"]`` says why).
    options : SegmentOptions, optional
        The settings. Default: made from ``settings``. Their ``"auto"`` method and
        preset are resolved for this image (:meth:`SegmentOptions.resolve`,
        :mod:`napari_vptv.presets`): for an RGB image ``"vptv-adapted"``, the
        variational solver with the WBC colour model refitted on the image (the
        VPTVU-net when 3-class volumes are given), the generic solver for grey images
        or other class counts.
    channel_axis : int, optional
        Colour axis (``-1`` for RGB). An ``(H, W, 3)`` image is taken as RGB even when
        it is None.
    callback : callable ``(iteration, max_iterations)``, optional
        Progress hook (variational solver only); it may raise to stop the solve. An
        image segmented in tiles (:mod:`napari_vptv.tiles`) calls it ``(tile, tiles)``
        instead.
    tile_progress : callable ``(tile, tiles)``, optional
        Called after every tile when the image is segmented in tiles (instead of
        ``callback`` there); not called otherwise. It may raise to stop the run.
    scheduler : distributed.Client, optional
        Where the tiles of an image segmented in tiles run (a ``dask.distributed``
        cluster; its workers need this package); default: this process's threads.
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
    >>> from napari_vptv.core.io.samples import load_sample          # doctest: +SKIP
    >>> image, _ = load_sample("001")                             # doctest: +SKIP
    >>> segment_image(image, SegmentOptions.wbc()).labels.shape   # doctest: +SKIP
    (300, 300)
    """
    _check_channel_axis(image, channel_axis)
    image, conversion = normalise_intensity(image)
    if channel_axis is None and is_rgb_shape(image):
        channel_axis = -1  # (H, W, 3): a colour image, never a 3-slice grey volume
    opts = _as_options(options, settings).resolve(_is_colour(image, channel_axis))
    check_device(opts.device)
    if channel_axis in (-1, 2) and _tiles().needs_tiles(image, opts):  # bounded memory, one scale
        return _in_tiles(image, opts, tile_progress or callback, scheduler)
    check_memory_for(image, opts, channel_axis)  # before any work: the size it needs, if it cannot fit
    result = _check_finite(_dispatch(image, opts, channel_axis, callback), opts)
    if conversion:
        result.info = {**result.info, "conversions": [conversion]}
    return result


def _tiles():
    from . import tiles

    return tiles


def _in_tiles(image, opts: SegmentOptions, progress, scheduler) -> SegmentationResult:
    """A large RGB image in tiles (:func:`napari_vptv.tiles.segment_in_tiles`), the
    white-cell rule on the stitched labels."""
    rule = opts.white_cell_rule and _nucleus_rule(opts)
    return _tiles().segment_in_tiles(
        image, opts, segment_image, white_cell_rule=rule, progress=progress, scheduler=scheduler
    )


def _is_colour(image, channel_axis) -> bool:
    """Whether ``image`` is an RGB(A) image: a channel axis of 3 or 4 channels."""
    return channel_axis is not None and np.shape(image)[int(channel_axis)] in (3, 4)


def _dispatch(image, opts: SegmentOptions, channel_axis, callback) -> SegmentationResult:
    """The method / preset of the resolved ``opts`` on ``image`` (see :func:`segment_image`)."""
    wbc = opts.is_network or opts.preset == "wbc"
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
    prob = result.probabilities
    if prob is not None and not np.all(np.isfinite(prob)):
        raise ValueError(
            "the segmentation produced NaN or infinite probabilities; the likely cause is epsilon "
            f"({opts.epsilon if opts.epsilon is not None else 'default'}) or tv_weight "
            f"({opts.tv_weight if opts.tv_weight is not None else 'default'}); try epsilon from 0.001 to 10"
        )
    return result


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
    """The solver with the WBC preset: ``"vptv-adapted"`` (:func:`segment_adapted`), or
    with volume settings the shipped colour model (:func:`~napari_vptv.core.wbc.preset.wbc_preset`,
    :data:`~napari_vptv.presets.WBC_COLOUR`)."""
    from .core.wbc.preset import wbc_preset

    channel_axis = _rgb_channel_axis(image, channel_axis)
    arr = np.asarray(image)
    n_channels = np.moveaxis(arr, channel_axis, -1).shape[-1]
    if n_channels not in (3, 4):
        raise ValueError(f"the WBC preset needs an RGB image with 3 channels; got {n_channels} (shape {arr.shape})")
    if n_channels == 4:  # RGBA -> RGB
        arr = np.moveaxis(np.moveaxis(arr, channel_axis, -1)[..., :3], -1, channel_axis)
    if opts.method == "vptv-adapted":
        adapted = _adapted(np.moveaxis(arr, channel_axis, -1), opts, callback)
        if adapted is not None:
            return adapted
    volume_mode = opts.volume_mode
    if volume_mode is None:
        volume_mode = "exact" if opts.volumes is not None else WBC_COLOUR.volume_mode
    kw = wbc_preset(volume_mode, **{**WBC_COLOUR.solver_kwargs(), **_solver_overrides(opts)})
    if volume_mode == "exact" and opts.volumes is not None:
        kw["volumes"] = opts.volumes
    if volume_mode == "interval" and opts.volume_bounds is not None:
        kw["volume_bounds"] = opts.volume_bounds
    kw["channel_axis"] = channel_axis
    return _with_nucleus_rule(vptv_segment(arr, seed=opts.seed, device=opts.device, callback=callback, **kw), opts)


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
        raise RuntimeError(
            f"method {opts.method!r} needs the napari_vptv.nn networks, which are not available: {exc}"
        ) from exc
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
            arr,
            method=opts.network_name,
            volumes=net_volumes,
            volume_mode=volume_mode,
            epsilon=opts.epsilon,
            tv_weight=opts.tv_weight,
            device=opts.device,
            diameter=opts.diameter,
            details=True,
            require_nucleus=_nucleus_rule(opts),
            augment=opts.augment,
            **kwargs,
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
        labels, _ = drop_non_white_cells_in(
            labels, pred.diameter, arr[..., :3], pred.info, pred.info.get("red_cell_diameter")
        )
    result = SegmentationResult.from_arrays(labels, prob, n_iter=0, converged=True, class_model=None, volume_spec=spec)
    # what the network decided on its own: shown by the widget, stored in layer metadata
    result.diameter = float(pred.diameter)
    result.info = {
        "diameter": float(pred.diameter),
        "diameter_estimated": bool(pred.estimated),
        "scale": float(pred.scale),
        **pred.info,
    }
    return result


class SegmentFn:
    """Picklable single-image segmentation ``fn(image, *, channel_axis) -> result``.

    What the batch engine (:mod:`napari_vptv.core.batch.run`), the stack generator
    (:func:`napari_vptv.core.batch.stack.segment_stack`) and the dask workers call.

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
        """The (unresolved) method of the options."""
        return self.options.method

    @property
    def preset(self) -> str:
        """The (unresolved) preset of the options."""
        return self.options.preset

    def resolved_preset(self, rgb: bool) -> str:
        """See :meth:`SegmentOptions.resolved_preset`."""
        return self.options.resolved_preset(rgb)

    def resolved_method(self, rgb: bool) -> str:
        """The named method that runs on an RGB / grey input (:meth:`SegmentOptions.resolve`)."""
        return self.options.resolve(rgb).method

    def n_classes(self, rgb: bool) -> int:
        """Number of classes of the labels for an RGB / grey input."""
        return self.options.resolve(rgb).n_classes_for(rgb)

    #: the batch engine may pass ``tile_progress`` (see :meth:`__call__`)
    reports_tiles = True

    def __call__(self, image, *, channel_axis=None, tile_progress=None, scheduler=None):
        """Segment ``image``; ``tile_progress(tile, tiles)`` is called after every tile when
        the image is segmented in tiles (the command line's per-image bar), which run
        on ``scheduler`` (a ``distributed.Client``) when given."""
        callback = None if self.options.is_network else self.callback
        return segment_image(
            np.asarray(image),
            self.options,
            channel_axis=channel_axis,
            callback=callback,
            tile_progress=tile_progress,
            scheduler=scheduler,
        )


def make_segment_fn(method: str = DEFAULT_METHOD, **settings) -> SegmentFn:
    """Validate segmentation settings and return a picklable :class:`SegmentFn`.

    The keyword form of ``SegmentFn(SegmentOptions(method=method, **settings))``:
    the same defaults as every other entry point (:mod:`napari_vptv.presets`).

    Parameters
    ----------
    method : str
        See :class:`SegmentOptions` (default ``"auto"``).
    **settings
        Any other field of :class:`SegmentOptions` (``preset``, ``n_classes``,
        ``volumes``, ``epsilon``, ``require_nucleus``, ``augment``, ...) and
        ``volume_bounds=(lower, upper)``.

    Returns
    -------
    SegmentFn

    Raises
    ------
    ValueError
        Unknown method / preset, or impossible volumes (checked here, before any
        image is read).
    TypeError
        An unknown setting.
    """
    return SegmentFn(SegmentOptions.from_kwargs(method=method, **settings))


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
        :func:`napari_vptv.core.scoring.evaluate.score_folder`).
    options : SegmentOptions, optional
        Default: made from ``settings`` (the defaults of :class:`SegmentOptions`).
    progress : callable ``(done, total)``, optional
        Called after every image (and once with ``done = 0`` before the first).
    **settings
        Fields of :class:`SegmentOptions` (and ``volume_bounds``).

    Returns
    -------
    rows : list of dict
    summary : dict
        See :func:`napari_vptv.core.scoring.evaluate.score_folder`.
    """
    from .core.scoring.evaluate import score_folder

    fn = SegmentFn(_as_options(options, settings))
    return score_folder(images_dir, masks_dir, fn, progress=progress)


def wbc_priors(method: str = "vptv") -> Dict[str, Any]:
    """Settings of the WBC preset, for the widget's fields. Never raises.

    Parameters
    ----------
    method : {"vptv", "vptv-unet"}
        Whose settings: the network's shipped metadata (training-average priors,
        2nd / 98th percentiles, the layer's eps, lambda) for the VPTVU-net, the shipped
        colour model and :data:`~napari_vptv.presets.WBC_COLOUR` for the solver.

    Returns
    -------
    dict
        ``{"volumes", "lower", "upper", "source"}`` and, when known,
        ``"epsilon"``, ``"tv_weight"``, ``"edge"``. Each source falls back to the
        other, then to :data:`~napari_vptv.core.wbc.preset.WBC_TRAINING_FRACTIONS`.
    """
    from .core.wbc.preset import WBC_TRAINING_FRACTIONS

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
    return {
        "volumes": pri.get("mean"),
        "lower": pri.get("p02"),
        "upper": pri.get("p98"),
        "epsilon": head.get("epsilon"),
        "tv_weight": head.get("tv_weight"),
        "source": "VPTVU-net metadata",
    }


def _colour_model_priors() -> Dict[str, Any]:
    from .core.wbc.preset import load_wbc_model

    got = {k: getattr(WBC_COLOUR, k) for k in ("epsilon", "tv_weight", "edge")}
    model = load_wbc_model()
    got.update(volumes=model.fractions, lower=model.lower, upper=model.upper, source="WBC colour model")
    return got
