"""The image-adapted WBC method ``"vptv-adapted"`` (what :func:`napari_vptv.api.segment_image`
runs by default on a colour image) and the white-cell label rules every WBC method applies.

:func:`segment_adapted` seeds the variational solver with any network, refits the WBC
colour model on the image (:func:`napari_vptv.core.wbc.adapt.adapted_segment`) and applies
the nucleus and white-cell rules; :mod:`napari_vptv.api` re-exports it. The network code is
imported lazily (torch loads only when the method runs).

No napari or Qt imports here.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional

import numpy as np

from .core.solver.segment import SegmentationResult
from .core.solver.volumes import make_volume_spec
from .core.wbc.cell_rules import drop_cells_without_nucleus, drop_non_white_cells_in
from .core.wbc.windows import cell_windows, solve_in_windows
from .options import SegmentOptions
from .presets import VPTV_ADAPTED

__all__ = ["ADAPTED_WBC_SETTINGS", "segment_adapted", "adapted_from_prediction"]

ProgressCallback = Callable[[int, int], None]


def _solver_overrides(opts: SegmentOptions) -> Dict[str, Any]:
    """Solver settings that were given (the others keep the preset's / solver's defaults)."""
    names = ("edge", "max_num_iter", "epsilon", "tv_weight")
    return {k: getattr(opts, k) for k in names if getattr(opts, k) is not None}


def _nucleus_rule(opts: SegmentOptions) -> bool:
    """``opts.require_nucleus`` unless the user asked for volumes (exact fractions or
    bounds): the rule would break a constraint the user set, so that wins."""
    return (
        opts.require_nucleus
        and opts.volume_mode in (None, "none")
        and opts.volumes is None
        and opts.volume_bounds is None
    )


def _with_nucleus_rule(
    result: SegmentationResult,
    opts: SegmentOptions,
    diameter: Optional[float] = None,
    rgb=None,
    red_cell_diameter: Optional[float] = None,
) -> SegmentationResult:
    """WBC labels: cell regions without a nucleus become background (see :func:`_nucleus_rule`),
    then, with a ``diameter`` and the image ``rgb``, those too small for a white cell
    (``opts.white_cell_rule``; ``red_cell_diameter``: already measured, else measured here)."""
    if _nucleus_rule(opts):
        labels, n = drop_cells_without_nucleus(result.labels)
        info = dict(result.info)
        info["cells_without_nucleus_removed"] = n
        if opts.white_cell_rule and (diameter or rgb is not None):
            labels, m = drop_non_white_cells_in(labels, diameter, rgb, info, red_cell_diameter)
            n += m
        if n:
            k = result.probabilities.shape[0]
            result.labels, result.volumes = labels, np.bincount(labels.ravel(), minlength=k) / labels.size
        result.info = info
    return result


#: solver settings of the image-adapted WBC preset (:data:`napari_vptv.presets.VPTV_ADAPTED`)
ADAPTED_WBC_SETTINGS = {"epsilon": VPTV_ADAPTED.epsilon, "tv_weight": VPTV_ADAPTED.tv_weight}


def segment_adapted(
    image,
    options: Optional[SegmentOptions] = None,
    *,
    network: Optional[str] = None,
    callback: Optional[ProgressCallback] = None,
) -> SegmentationResult:
    """``"vptv-adapted"`` on one RGB image ``(H, W, 3)``, seeded by any network.

    What :func:`~napari_vptv.api.segment_image` runs by default on a colour image
    (:data:`napari_vptv.presets.VPTV_ADAPTED`), without its input checks and
    conversions, for a network that :class:`SegmentOptions` does not name (e.g. a
    training-run folder).

    Parameters
    ----------
    image : ndarray ``(H, W, 3)``
    options : SegmentOptions, optional
        Solver overrides, device, seed, diameter, cell rules (default: the defaults).
    network : str, optional
        The initialiser, as :func:`~napari_vptv.nn.weights.predict_wbc`'s ``method``
        (a shipped model, a ``.pt`` file or a training-run folder). Default:
        ``options.model`` or the preset's network.

    Returns
    -------
    SegmentationResult

    Raises
    ------
    RuntimeError
        The network code is not installed.
    """
    opts = (options or SegmentOptions()).replace(method="vptv-adapted")
    result = _adapted(np.asarray(image)[..., :3], opts, callback, network)
    if result is None:
        raise RuntimeError("method 'vptv-adapted' needs the napari_vptv.nn networks, which are not available")
    return result


#: a camera field's colour model is refitted on every ``FIELD_COLOUR_STEP``-th pixel of
#: the whole field (a quarter of the pixels). On 20 composed wbc fields: the same false
#: cells as at every pixel; steps 3 and 4 saved no measurable time, step 4 gave one
#: more false cell
FIELD_COLOUR_STEP = 2

#: an image of at least this many pixels (a 640 x 480 camera field) is treated as a
#: field even when its windows would cover it: one window, the colour model fitted on
#: every ``FIELD_COLOUR_STEP``-th pixel; crops below it keep the full-resolution fit
WHOLE_FIELD_PIXELS = 640 * 480


def _solve_field(rgb, pred, solve, windows, callback=None):
    """The image-adapted solve of a camera field: the colour model refitted on the whole
    field (every ``FIELD_COLOUR_STEP``-th pixel), the combined solve in ``windows`` only
    (:func:`~napari_vptv.core.wbc.windows.solve_in_windows`). A model refitted in each
    window would see few red cells and little plasma beside a platelet and take red
    cells for cytoplasm (11 false cells instead of 7 on 20 composed fields). None when no colour
    model can be fitted."""
    step = FIELD_COLOUR_STEP
    whole = solve(
        rgb[::step, ::step], pred.probabilities[:, ::step, ::step], network_weight=0.0, diameter=pred.diameter / step
    )
    if whole is None:
        return None
    return solve_in_windows(rgb, pred.probabilities, windows, partial(solve, class_model=whole.class_model), callback)


def _adapted(rgb, opts: SegmentOptions, callback, network: Optional[str] = None):
    """The WBC preset refitted to this image: a Gaussian colour model per class from the
    initialising network's confident pixels, EM updates, a volume interval around the
    network's class fractions, then the colour cost and the network's log-probabilities
    together (:func:`napari_vptv.core.wbc.adapt.adapted_segment`). A class the network does
    not see (e.g. no white cell) gives the network's own labels. None when the network
    code is not installed (the caller uses the fixed colour model then)."""
    try:
        from .nn.weights import predict_wbc
    except ImportError:
        return None
    preset = VPTV_ADAPTED
    # the rule runs once, on the result below (the network's own labels are used only
    # when no colour model can be fitted)
    network = network or opts.model or preset.network
    pred = predict_wbc(
        rgb,
        method=network,
        diameter=opts.diameter,
        device=opts.device,
        details=True,
        require_nucleus=False,
        augment=VPTV_ADAPTED.network_augment,
    )
    return adapted_from_prediction(rgb, pred, opts, network, callback)


def adapted_from_prediction(rgb, pred, opts: SegmentOptions, network: str, callback=None) -> SegmentationResult:
    """``"vptv-adapted"`` given the network's prediction ``pred`` (a
    :class:`~napari_vptv.nn.predict.NetworkPrediction` made without the nucleus rule and
    with the preset's test-time augmentation) of ``network`` on ``rgb``."""
    from .core.wbc.adapt import adapted_segment

    preset = VPTV_ADAPTED
    settings = {**preset.solver_kwargs(), **_solver_overrides(opts)}
    solve = partial(
        adapted_segment,
        channel_axis=-1,
        seed=opts.seed,
        device=opts.device,
        diameter=pred.diameter,
        colour_sigma_per_diameter=preset.colour_sigma_per_diameter,
        **settings,
    )
    windows = cell_windows(pred.probabilities, pred.diameter)
    if windows is None and rgb.shape[0] * rgb.shape[1] >= WHOLE_FIELD_PIXELS:
        # a field or tile crowded with cells: solved whole, its colour model still
        # fitted on every other pixel (a full-resolution EM costs a 1190 x 1190 tile
        # 1.2 s instead of 0.2 s)
        windows = [(slice(0, rgb.shape[0]), slice(0, rgb.shape[1]))]
    if windows is None:  # a crop: the whole image
        result = solve(rgb, pred.probabilities, callback=callback)
    else:  # a field: only around the network's candidate cells
        result = _solve_field(rgb, pred, solve, windows, callback)
    fitted = result is not None
    if not fitted:
        result = SegmentationResult.from_arrays(
            pred.labels,
            pred.probabilities,
            n_iter=0,
            converged=True,
            class_model=None,
            volume_spec=make_volume_spec(3, "none"),
        )
    result = _with_nucleus_rule(result, opts, pred.diameter, rgb, pred.info.get("red_cell_diameter"))
    result.diameter = float(pred.diameter)
    result.info = {
        **result.info,
        "diameter": float(pred.diameter),
        "diameter_estimated": bool(pred.estimated),
        "colour_model": "refitted on this image" if fitted else "none (no cell found)",
        "network": network,
    }
    return result
