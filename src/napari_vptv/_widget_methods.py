"""Which networks the segmentation widget offers, and what "auto (per image)" does.

*auto (per image)* is the widget's name for "no volume / ε / λ settings": the
:class:`~napari_vptv.options.SegmentOptions` then leave them None and
:func:`napari_vptv.api.segment_image` uses each method's own tuned defaults, as
``vptv segment`` does -- the network's per-image volume prior and layer parameters
from its metadata, or for the variational solver the WBC preset refitted to each
image (colour model from the U-net's confident pixels, volume interval around its
class fractions). :func:`auto_description` says that in the widget, with the numbers.

No napari or Qt imports here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

__all__ = ["VOLUME_AUTO", "network_choices", "resolve_network", "network_defaults", "auto_description"]

#: The volume-mode choice of the widget meaning "the method's own per-image defaults".
VOLUME_AUTO = "auto (per image)"


def network_choices() -> List[Tuple[str, str]]:
    """``(label, name)`` of the shipped networks and the user's fine-tuned models."""
    from .user_models import network_choices as choices

    return choices()


def resolve_network(name: str) -> Tuple[str, str]:
    """``(model, method)`` for :class:`SegmentOptions` from a network name.

    ``model`` is ``""`` for a shipped network (its method names it) and the ``.pt``
    path of a user's model. Raises ``ValueError`` with a sentence naming the model.
    """
    from .user_models import SHIPPED, model_and_method

    model, method = model_and_method(name)
    return ("" if model in SHIPPED else model), method


def network_defaults(name: str) -> Dict[str, Any]:
    """The tuned test-time settings (``prior``, ``epsilon``, ``tv_weight``, ``num_iter``)
    in a network's metadata; ``{}`` if they cannot be read. Never raises."""
    try:
        model, _ = resolve_network(name)
        if not model:
            from .nn.weights import model_metadata

            meta = model_metadata(name)
        else:
            meta = json.loads(Path(model).with_suffix(".json").read_text())
        return dict(meta.get("defaults") or {})
    except Exception:  # noqa: BLE001 - only a description
        return {}


def _adapted_settings() -> Dict[str, float]:
    from .api import ADAPTED_WBC_SETTINGS

    return dict(ADAPTED_WBC_SETTINGS)


def auto_description(method: str, network: str = "vptv-unet") -> str:
    """One or two sentences: what *auto (per image)* runs for ``method`` (and network)."""
    if method == "vptv":
        from .core.wbc.adapt import MAX_ITER

        s = _adapted_settings()
        net = "the U-net" if network in ("", "unet", "vptv-unet") else f"your model {network!r}"
        return (
            f"WBC colour model refitted to each image from {net}'s confident pixels, then solved on the "
            f"colours and its probabilities together; volume interval around its class fractions; "
            f"boundary softness {s['epsilon']:g}, smoothness {s['tv_weight']:g}, at most {MAX_ITER} iterations "
            f"(as `vptv segment`)."
        )
    if method == "unet":
        return "Plain softmax U-net: no volume prior, no boundary softness or smoothness (as `vptv segment --method unet`)."
    d = network_defaults(network)
    prior = d.get("prior", "self")
    what = "each image's own predicted class fractions" if prior == "self" else f"prior {prior!r}"
    numbers = ", ".join(
        f"{name} {d[k]:g}"
        for name, k in (("boundary softness", "epsilon"), ("smoothness", "tv_weight"), ("solver steps", "num_iter"))
        if isinstance(d.get(k), (int, float))
    )
    tuned = f"; {numbers}, as tuned for this network" if numbers else "; the network's own tuned settings"
    return f"Volume prior from {what}{tuned} (as `vptv segment`)."
