"""Fine-tuning as the widget, the command line and :func:`napari_vptv.finetune` run it.

:func:`napari_vptv.nn.finetune.finetune` trains and checks a model; the check scores
the methods it is given. This module gives it the two methods a fine-tuned model
serves: the default method (``"vptv-adapted"``, :data:`napari_vptv.presets.VPTV_ADAPTED`,
which refits a colour model to the network's probabilities) and the network method
(``"vptv-unet"``). A model is kept only when it is better with both, so a model that
helps the network but hurts what users run by default is not saved.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .options import SegmentOptions

__all__ = ["CHECKED_METHODS", "checked_methods", "finetune", "save_finetuned"]

#: the methods the check scores, in this order (the first is the one reported first)
CHECKED_METHODS = ("vptv-adapted", "vptv-unet")


def checked_methods(options: Optional[SegmentOptions] = None) -> Dict[str, object]:
    """``{method: segmenter(model, meta, image, device) -> labels}`` for :data:`CHECKED_METHODS`,
    run as :func:`napari_vptv.segment_image` runs them with ``options`` (default: the
    defaults) and a loaded model instead of a named one."""
    from .api import adapted_from_prediction
    from .nn.finetune_guard import network_labels
    from .nn.predict import predict_cells
    from .presets import VPTV_ADAPTED

    opts = options or SegmentOptions()

    def adapted(model, meta, image, device="cpu") -> np.ndarray:
        rgb = np.asarray(image)[..., :3]
        pred = predict_cells(
            model,
            meta,
            rgb,
            diameter=opts.diameter,
            device=device,
            require_nucleus=False,
            augment=VPTV_ADAPTED.network_augment,
        )
        return adapted_from_prediction(rgb, pred, opts.replace(device=device), "the model being checked").labels

    return {"vptv-adapted": adapted, "vptv-unet": network_labels}


def finetune(samples: Sequence, *, options: Optional[SegmentOptions] = None, **kwargs):
    """Fine-tune a network on image / mask pairs; kept only if better with the default method
    *and* the network method.

    :func:`napari_vptv.nn.finetune.finetune` with ``methods`` =
    :func:`checked_methods` ``(options)``; every other argument (``base``, ``minutes``,
    ``steps``, ``seed``, ``device``, ``callback``, ``should_stop``, ``keep``, ``lr``, …) is
    passed on.

    Returns
    -------
    napari_vptv.nn.finetune.FinetuneResult
    """
    from .nn.finetune import finetune as _finetune

    kwargs.setdefault("methods", checked_methods(options))
    return _finetune(samples, **kwargs)


def save_finetuned(result, path, *, overwrite: bool = False, base_if_not_better: bool = False):
    """Write a kept model as ``NAME.pt`` + ``NAME.json``, or the base's own weights when
    the check kept the base and ``base_if_not_better`` (:func:`napari_vptv.nn.finetune.save_finetuned`)."""
    from .nn.finetune import save_finetuned as _save

    return _save(result, path, overwrite=overwrite, base_if_not_better=base_if_not_better)
