"""The training loop of a fine-tuning run: a strong base model adapted to a few images.

A shipped generalist already segments most labs well, so fine-tuning must *add* what
the user's images show without losing what the base knows. The rules below were
measured one at a time against the generalist trainer's settings on the user's
situation (the shipped model, 5 pairs of a lab, scored on the rest of the lab and on
the other training source; ``benchmarks/ablate_finetune.py``, docs/finetune.md):

- **BatchNorm frozen** (running statistics and layers in eval mode): statistics
  re-estimated on a handful of patches no longer match whole images.
- **A small learning rate** (:attr:`FinetuneRecipe.lr`), warm-up, then cosine decay
  along the *elapsed* fraction of the budget (time budget) or of the steps.
- **Patches at the scale inference uses**: the user's images are seen at the scale
  the model will run them at (the comfortable cell-diameter range of the model's
  metadata), jittered by ``scale_jitter``.
- **No stain / colour jitter** (``colour_jitter`` 0): one lab has one stain, and the
  generalist's strong colour augmentation taught the network to ignore exactly the
  colours that set this lab apart (optics, noise and compression augmentation stay).
- **Weight averaging with the base** (``interpolation`` 0.75, WiSE-FT, Wortsman et
  al. 2022): the model kept is three quarters of the way from the base to the
  fine-tuned weights. A few pairs that do not represent the lab well pull the
  fine-tuned weights towards them; the average keeps most of the gain and loses less
  where the pairs mislead (shipped model, 5 pairs of the synthetic lab, 3 draws,
  pixel accuracy on the rest of the lab, default / network method: base 0.964 /
  0.963; fine-tuned 0.971 / 0.971; averaged 0.25: 0.974 / 0.970, 0.5: 0.977 / 0.973,
  0.75: 0.978 / 0.974; the worst draw 0.957 / 0.964 fine-tuned, 0.978 / 0.972 at 0.75;
  ``benchmarks/ablate_interpolation.py``).

Measured and not adopted (kept as options, default off): an L2-SP anchor to the base
weights (Li et al. 2018) and replay of the bundled sample images; neither kept the
other source's accuracy, and both cost accuracy on the user's lab.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["FinetuneRecipe", "RECIPE", "LoopResult", "interpolate_weights", "run_loop", "replay_samples"]


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a fine-tuning run trains (the defaults are the measured recipe).

    Attributes
    ----------
    lr : float
        Peak learning rate of Adam (the generalist's last stage used 5e-4).
    batch : int
        Patches per step.
    warmup : int
        Steps of linear warm-up.
    freeze_batchnorm : bool
        Keep BatchNorm running statistics of the base (layers in eval mode).
    anchor_weight : float
        L2-SP weight: ``anchor_weight * sum((w - w_base)^2)`` is added to the loss.
    scale_jitter : float
        Patches are drawn at the inference scale times ``[1 / j, j]``.
    replay : float
        Share of each batch drawn from the bundled sample images (0 = none).
    colour_jitter : float
        The base's stain / colour augmentation ranges times this (1 = the generalist's,
        0 = none): one lab has one stain, which the model should learn as it is.
    interpolation : float
        Weight averaging with the base after training (WiSE-FT, Wortsman et al. 2022):
        the model kept is ``w_base + interpolation * (w_tuned - w_base)`` (1 = the
        fine-tuned weights, 0 = the base).
    """

    lr: float = 2e-4
    batch: int = 16
    warmup: int = 10
    freeze_batchnorm: bool = True
    anchor_weight: float = 0.0
    scale_jitter: float = 1.25
    replay: float = 0.0
    colour_jitter: float = 0.0
    interpolation: float = 0.75

    def to_dict(self) -> dict:
        return asdict(self)


#: the recipe every front end uses
RECIPE = FinetuneRecipe()
#: the generalist trainer's settings, for the ablation benchmark (what fine-tuning did before)
GENERALIST_LIKE = FinetuneRecipe(
    lr=1e-3,
    warmup=20,
    freeze_batchnorm=False,
    anchor_weight=0.0,
    scale_jitter=0.0,
    replay=0.0,
    colour_jitter=1.0,
    interpolation=1.0,
)


@dataclass
class LoopResult:
    """``steps`` done, training ``seconds``, whether the user ``cancelled``, the loss history."""

    steps: int
    seconds: float
    cancelled: bool
    losses: List[float]


def interpolate_weights(base: torch.nn.Module, tuned: torch.nn.Module, alpha: float) -> None:
    """Set ``tuned``'s floating-point parameters and buffers to ``base + alpha * (tuned - base)``
    in place (integer buffers such as BatchNorm's step counters are left as they are)."""
    if alpha == 1.0:
        return
    ref = base.state_dict()
    with torch.no_grad():
        for name, value in tuned.state_dict().items():
            if value.is_floating_point():
                value.copy_(ref[name].to(value.device) + alpha * (value - ref[name].to(value.device)))


def replay_samples():
    """The bundled sample images with their masks (CellaVision, part of the base's
    training data), as :class:`~napari_vptv.nn.sources.Sample` objects."""
    from ..core.io.samples import load_sample, sample_ids
    from .sources import Sample, cell_diameter

    out = []
    for sid in sample_ids():
        image, mask = load_sample(sid)
        lab = mask.astype(np.int64)
        out.append(Sample(f"sample-{sid}", image, lab, cell_diameter(lab)))
    return out


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Warm-up over ``warmup`` steps, then cosine decay to 2 % along ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _sampler_config(meta: dict, recipe: FinetuneRecipe, patch_size: int):
    from .predict import comfort_range_of
    from .sampler import SamplerConfig

    base = dict(meta.get("sampler") or {})
    if recipe.scale_jitter and recipe.scale_jitter >= 1.0:
        comfort = comfort_range_of(meta)
        return SamplerConfig(
            patch_size=patch_size,
            scale_range=(1 / recipe.scale_jitter, recipe.scale_jitter),
            diameter_range=comfort,
            p_cell=base.get("p_cell", 0.6),
        )
    return SamplerConfig(**{**base, "patch_size": patch_size})


#: stain / colour ranges of :class:`~napari_vptv.nn.augment.AugmentConfig`: symmetric
#: (``1 +- x`` or ``+- x``) and multiplicative (``(lo, hi)`` around 1) ones
_SYMMETRIC = ("hed_scale", "hed_shift", "hue_degrees", "white_balance", "brightness")
_AROUND_ONE = ("saturation", "contrast", "gamma", "class_od_gain")


def augment_config(meta: dict, colour_jitter: float):
    """The base's augmentation with its stain / colour ranges times ``colour_jitter``
    (optics, noise and compression unchanged)."""
    from .augment import AugmentConfig

    cfg = dict(meta.get("augment") or {})
    base = AugmentConfig(**cfg)
    f = float(colour_jitter)
    for k in _SYMMETRIC:
        cfg[k] = getattr(base, k) * f
    for k in _AROUND_ONE:
        lo, hi = getattr(base, k)
        cfg[k] = (1 + (lo - 1) * f, 1 + (hi - 1) * f)
    for k in ("p_grey", "p_class_colour", "p_red_cells"):
        cfg[k] = getattr(base, k) * f
    return AugmentConfig(**cfg)


def _set_train_mode(model, freeze_batchnorm: bool):
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _batch_parts(user, replay, recipe, cfg, seed):
    """``(source, step config, salt)`` of each part of a batch: the user's pairs, plus
    the ``recipe.replay`` share drawn from the replay samples."""
    from .sources import Source

    n_replay = int(round(recipe.replay * recipe.batch)) if replay else 0
    return [
        (Source("s", None, list(samples), list(samples), []), dict(cfg, batch=n, seed=seed), salt)
        for samples, n, salt in ((user, recipe.batch - n_replay, 0), (replay, n_replay, 1))
        if n > 0
    ]


def _batch(parts, step, scfg, acfg):
    """One batch of step ``step`` from the parts of :func:`_batch_parts`."""
    from .train import _step_batch

    drawn = [_step_batch([src], [1.0], step * 2 + salt, cfg, scfg, acfg) for src, cfg, salt in parts]
    x = torch.cat([p[0] for p in drawn])
    y = torch.cat([p[1] for p in drawn])
    vols = [p[2] for p in drawn]
    vol = None if any(v is None for v in vols) else torch.cat(vols)
    return x, y, vol


def run_loop(
    model,
    meta: dict,
    samples: Sequence,
    *,
    recipe: FinetuneRecipe = RECIPE,
    seed: int = 0,
    steps: Optional[int] = None,
    seconds: Optional[float] = None,
    callback: Optional[Callable[[float, int, float], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    replay: Optional[Sequence] = None,
    device: str = "cpu",
) -> LoopResult:
    """Train ``model`` (in place) on ``samples`` for ``steps`` steps or ``seconds`` seconds.

    Parameters
    ----------
    model : the base network (``unet`` or ``vptv-unet``), modified in place.
    meta : its metadata (input normalisation, sampler, augmentation, comfort range).
    samples : :class:`~napari_vptv.nn.sources.Sample` pairs to train on.
    steps, seconds : the budget; with ``steps`` the run is deterministic given ``seed``
        (``seconds`` then only caps it); with ``seconds`` alone the learning-rate schedule
        follows the elapsed fraction of the time.
    callback : ``callback(progress, step, loss)`` after every step, ``progress`` in [0, 1].
    should_stop : polled after every step; True cancels (the weights so far are kept).
    replay : samples mixed in (share ``recipe.replay``); default: the bundled samples.
    device : torch device of ``model``.
    """
    from .data import input_norm_of

    if not (steps or seconds):
        raise ValueError("give a number of steps or a time budget")
    scfg = _sampler_config(meta, recipe, int((meta.get("sampler") or {}).get("patch_size", 96)))
    acfg = augment_config(meta, recipe.colour_jitter)
    cfg = {
        "arch": meta["arch"],
        "input_norm": input_norm_of(meta),
        "volume_dropout": (meta.get("config") or {}).get("volume_dropout", 0.3),
    }
    replay = (replay_samples() if replay is None else list(replay)) if recipe.replay > 0 else []
    parts = _batch_parts(samples, replay, recipe, cfg, seed)
    anchor = [p.detach().clone() for p in model.parameters()] if recipe.anchor_weight > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    _set_train_mode(model, recipe.freeze_batchnorm)
    t0, step, losses, cancelled = time.perf_counter(), 0, [], False
    while True:
        elapsed = time.perf_counter() - t0
        progress = step / steps if steps else elapsed / seconds
        if progress >= 1.0 or (seconds and elapsed >= seconds):
            break
        for g in opt.param_groups:
            g["lr"] = recipe.lr * _lr_factor(progress, step, recipe.warmup)
        x, y, vol = _batch(parts, step, scfg, acfg)
        x, y = x.to(device), y.to(device)
        vol = None if vol is None else vol.to(device)
        p = model(x, volumes=vol)
        loss = torch.nn.functional.nll_loss(torch.log(p.clamp(min=1e-8)), y)
        if anchor is not None:
            loss = loss + recipe.anchor_weight * sum(((w - w0) ** 2).sum() for w, w0 in zip(model.parameters(), anchor))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"the training loss became {losses[-1]} at step {step}: lower the learning rate")
        if callback is not None:
            done = step / steps if steps else (time.perf_counter() - t0) / seconds
            callback(min(1.0, done), step, losses[-1])
        if should_stop is not None and should_stop():
            cancelled = True
            break
    model.eval()
    return LoopResult(step, time.perf_counter() - t0, cancelled, losses)
