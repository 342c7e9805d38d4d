"""Fine-tune a trained WBC network on a user's own corrected images (cellpose 2.0's loop).

A user gives a few image / mask pairs (arrays from napari layers, or two folders).
:func:`finetune` starts from a trained model (a shipped generalist, a user model to
continue, or a training run) and:

1. refuses masks whose classes look swapped (:func:`~.finetune_data.check_labels`);
2. **cross-validates the recipe** (:mod:`.finetune_guard`): with ``n >= 2`` pairs in
   ``K = min(n, 3)`` folds, a copy of the base is fine-tuned on all folds but one and
   both it and the base segment the fold left out, so every pair is scored by a model
   that never saw it;
3. when the cross-validated score beats the base's with every method the model will
   serve (the network method; :func:`napari_vptv.finetune` adds the default method),
   fine-tunes the base on **all** pairs with the same recipe (:mod:`.finetune_loop`) and returns it; otherwise the
   base is kept (nothing to save) unless ``keep="always"``: the result then carries the
   base's own weights, which :func:`save_finetuned` writes when asked
   (``base_if_not_better``), so a script's next command still finds a model that is
   exactly the base.

The time budget is shared by the ``K + 1`` trainings (each gets an equal share of the
time left); the learning-rate schedule of each follows its elapsed time, so the
budget is used whatever the machine's speed. ``steps`` instead runs exactly that many
steps per training (reproducible given ``seed``).

The metadata of the new model is the base's (input normalisation, defaults, comfort
range, volume priors: everything the inference path reads) plus a ``finetune``
record: the base and the sha256 of its weights, every image (name, sha256 of its pixels
and mask, size, cell diameter), the recipe, steps and seconds, and the verdict with
the cross-validated scores of both models: the numbers the CLI and the widget print.

:func:`save_finetuned` writes ``NAME.pt`` + ``NAME.json`` with
:func:`~napari_vptv.nn.weights.export_weights` (loadable by
:func:`~napari_vptv.nn.weights.load_model`) and never replaces a model unless asked.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

import numpy as np

from .finetune_data import IMAGE_SUFFIXES, array_sha256, label_order_check, samples_from_arrays, samples_from_folders
from .finetune_data import check_labels as _check_labels
from .finetune_guard import NETWORK_METHOD, GuardScores, Segmenter, folds, score_pairs, verdict
from .finetune_loop import RECIPE, FinetuneRecipe, interpolate_weights, run_loop

__all__ = [
    "FinetuneResult",
    "FinetuneProgress",
    "RECIPE",
    "FinetuneRecipe",
    "KEEP_CHOICES",
    "samples_from_arrays",
    "samples_from_folders",
    "finetune",
    "save_finetuned",
    "label_order_check",
    "IMAGE_SUFFIXES",
    "describe_verdict",
]

#: "better": keep the fine-tuned model only when it beats the base on held-out pairs;
#: "always": keep it whatever the check says (the verdict is still recorded)
KEEP_CHOICES = ("better", "always")
#: keys of a training run's metadata that describe the base's own training, not the new model
_BASE_RUN_KEYS = (
    "validation",
    "history",
    "best",
    "steps",
    "steps_done",
    "train_seconds",
    "commit",
    "torch",
    "weights_file",
    "weights_sha256",
    "name",
    "saved",
    "finetune",
)
#: the learning rate must lie in this open interval
LR_RANGE = (0.0, 0.1)


@dataclass
class FinetuneProgress:
    """What a running fine-tuning reports after every step.

    ``fraction`` of the whole run (budget or steps) done, the ``phase`` ("check 1/3" for a
    cross-validation training, "final" for the model kept), its ``step`` and ``loss``.
    """

    fraction: float
    phase: str
    step: int
    loss: float


@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune`.

    ``state_dict`` / ``metadata`` of the fine-tuned model (``state_dict`` None when the
    base is kept or the run was cancelled); ``verdict`` (:func:`.finetune_guard.verdict`:
    ``better``, ``gain``, the cross-validated scores of both models); ``cancelled`` by
    the user; ``kept``: a model to save. When the base is kept, ``base_weights`` holds
    the base's own weights and ``metadata`` the base's with the record of the check.
    """

    state_dict: Optional[dict]
    metadata: dict
    verdict: dict
    cancelled: bool = False
    warnings: List[str] = field(default_factory=list)
    base_weights: Optional[dict] = None

    @property
    def kept(self) -> bool:
        return self.state_dict is not None

    @property
    def val_score(self) -> Optional[float]:
        """Cross-validated mean Dice of the fine-tuned recipe (None without held-out pairs)."""
        return (self.verdict.get("finetuned") or {}).get("mean_dice")

    @property
    def base_val_score(self) -> Optional[float]:
        """The base's mean Dice on the same held-out pairs."""
        return (self.verdict.get("base") or {}).get("mean_dice")


def describe_verdict(result: FinetuneResult, base_saved_as=None) -> str:
    """One plain sentence for the user: better or not, with the measured scores;
    ``base_saved_as``: where the base's weights were written when it was kept."""
    v = result.verdict
    if result.cancelled:
        return "cancelled: nothing was saved, the base model is unchanged"
    base_kept = "the base model is kept, nothing was saved"
    if base_saved_as is not None:
        base_kept = f"the base model is kept: {base_saved_as} holds its weights, unchanged"
    if v.get("better") is None:
        return "one pair cannot show whether fine-tuning helps (nothing left to test on): " + (
            "the model is kept unchecked" if result.kept else f"{base_kept}; give 2 or more pairs"
        )
    methods = v.get("methods") or {"": {"finetuned": v["finetuned"], "base": v["base"]}}
    parts = []
    for name, m in methods.items():
        ft, base = m["finetuned"], m["base"]
        label = f"{name}: " if len(methods) > 1 else ""
        spread = ""
        if m.get("standard_error") is not None:
            spread = f" (gain {100 * m['gain']:+.2f} ± {100 * m['standard_error']:.2f} pt)"
        parts.append(
            f"{label}mean Dice {ft['mean_dice']:.3f} vs base {base['mean_dice']:.3f}{spread}, pixel accuracy "
            f"{ft['pixel_accuracy']:.3f} vs {base['pixel_accuracy']:.3f}"
        )
    n = v["finetuned"]["n_images"]
    scores = "; ".join(parts) + f" on {n} held-out pair(s), cross-validated"
    if v["better"]:
        return f"better than the base: {scores}"
    worse = [name for name, m in methods.items() if name and m.get("gain", 0) < 0]
    why = f" (worse with {', '.join(worse)})" if worse else ""
    if not worse and v.get("within_spread"):
        why = " (the gain is smaller than its spread over your images)"
    return f"NOT better than the base{why}: {scores}; " + ("kept anyway as asked" if result.kept else base_kept)


def _check_options(minutes, steps, keep, recipe, lr):
    if not (steps or (minutes is not None and np.isfinite(minutes) and minutes > 0)):
        raise ValueError(f"the time budget must be > 0 minutes, got {minutes}")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    if not (0.0 < recipe.interpolation <= 1.0):
        raise ValueError(f"the recipe's interpolation must be in (0, 1], got {recipe.interpolation}")
    if lr is not None:
        if not (np.isfinite(lr) and LR_RANGE[0] < lr < LR_RANGE[1]):
            raise ValueError(f"the learning rate must be > {LR_RANGE[0]:g} and < {LR_RANGE[1]:g}, got {lr}")
        recipe = dataclasses.replace(recipe, lr=float(lr))
    return recipe


def _load_base(base, device):
    from .weights import load_model

    try:
        return load_model(base, device=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"cannot load the base model: {exc}") from None


class _Clock:
    """Shares the budget between the trainings and turns their steps into overall progress."""

    def __init__(self, minutes, steps, n_phases, callback):
        self.t0, self.total = time.perf_counter(), (minutes or 0.0) * 60.0
        self.steps, self.n_phases, self.done, self.callback = steps, n_phases, 0, callback

    def phase_seconds(self) -> Optional[float]:
        if self.steps:
            return None  # the steps rule: reproducible whatever the machine's speed
        left = self.total - (time.perf_counter() - self.t0)
        return max(1.0, left / max(1, self.n_phases - self.done))

    def hook(self, phase):
        if self.callback is None:
            return None

        def report(frac, step, loss):
            if self.steps:
                overall = (self.done + frac) / self.n_phases
            else:
                overall = (time.perf_counter() - self.t0) / self.total
            self.callback(FinetuneProgress(float(min(1.0, overall)), phase, step, loss))

        return report

    def finish_phase(self):
        self.done += 1


def _train(base_model, meta, pairs, clock, phase, recipe, seed, should_stop, device):
    model = copy.deepcopy(base_model)
    res = run_loop(
        model,
        meta,
        pairs,
        recipe=recipe,
        seed=seed,
        steps=clock.steps,
        seconds=clock.phase_seconds(),
        callback=clock.hook(phase),
        should_stop=should_stop,
        device=device,
    )
    interpolate_weights(base_model, model, recipe.interpolation)
    clock.finish_phase()
    return model, res


def _cross_validate(model, meta, samples, clock, recipe, seed, should_stop, device, methods):
    """Held-out scores of the fine-tuned recipe and of the base, per method; None when cancelled."""
    parts = folds(len(samples), seed)
    names = list(methods or NETWORK_METHOD)
    tuned = {m: GuardScores() for m in names}
    base = {m: GuardScores() for m in names}
    runs = []
    if not parts:
        return verdict(tuned, base), runs
    for j, held in enumerate(parts):
        train = [s for i, s in enumerate(samples) if i not in held]
        test = [samples[i] for i in held]
        fold_model, res = _train(
            model, meta, train, clock, f"check {j + 1}/{len(parts)}", recipe, seed, should_stop, device
        )
        if res.cancelled:
            return None, runs
        for scores, net in ((tuned, fold_model), (base, model)):
            for m, got in score_pairs(net, meta, test, device, methods).items():
                scores[m].extend(got)
        runs.append({"held_out": [s.name for s in test], "steps": res.steps, "seconds": res.seconds})
    per_image = {m: {"finetuned": tuned[m].to_dict(), "base": base[m].to_dict()} for m in names}
    return verdict(tuned, base) | {"per_image": per_image}, runs


def _check_finite(model, meta, samples, device):
    """Refuse a model that produces NaN or infinity on its own training images."""
    import torch

    from .data import input_norm_of, normalise

    with torch.inference_mode():
        for s in samples[:3]:
            lg = model.logits(normalise(s.image[None], input_norm_of(meta)).to(device))
            if not torch.isfinite(lg).all():
                raise ValueError(
                    "the fine-tuned model produces NaN / infinite values on its own training images "
                    "(learning rate too high?); nothing was saved"
                )


def finetune(
    samples: Sequence,
    *,
    base: str = "vptv-unet",
    minutes: Optional[float] = 5.0,
    steps: Optional[int] = None,
    seed: int = 0,
    threads: Optional[int] = None,
    device: str = "cpu",
    callback: Optional[Callable[[FinetuneProgress], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    check_labels: bool = True,
    keep: str = "better",
    recipe: FinetuneRecipe = RECIPE,
    lr: Optional[float] = None,
    methods: Optional[Mapping[str, Segmenter]] = None,
) -> FinetuneResult:
    """Fine-tune ``base`` on image / mask pairs, keeping it only if it beats the base.

    Parameters
    ----------
    samples : from :func:`samples_from_arrays` or :func:`samples_from_folders`.
    base : str
        ``"unet"``, ``"vptv-unet"``, a model file ``NAME.pt`` (continue training a
        fine-tuned model) or a training-run folder (:func:`~.weights.load_model`).
    minutes : float
        Time budget of the whole run (cross-validation and the final training).
    steps : int, optional
        Exactly this many steps per training instead (reproducible given ``seed``).
    seed : int
        Seed of the folds and of every patch draw.
    threads : int, optional
        torch CPU threads (default: torch's current setting).
    device : str
        Torch device of the training (``"cpu"``, ``"cuda"``).
    callback : ``callback(FinetuneProgress)`` after every step.
    should_stop : ``should_stop() -> bool``, polled after every step (Cancel): the run
        stops and nothing is kept.
    check_labels : bool
        Refuse masks whose classes look swapped relative to the base model.
    keep : {"better", "always"}
        Keep the fine-tuned model only when the cross-validation shows a gain, or always.
    recipe : :class:`~.finetune_loop.FinetuneRecipe`
        How each training runs (default: the measured recipe).
    lr : float, optional
        Peak learning rate instead of the recipe's (0 < lr < 0.1).
    methods : ``{name: segmenter(model, meta, image, device) -> labels}``, optional
        The methods the check scores, the one a user runs by default first (default:
        the network method only; :func:`napari_vptv.finetune` adds the default
        method). The model is kept only when it is not worse with any of them.

    Raises
    ------
    ValueError
        Bad pairs or options, swapped labels, a base model that cannot be loaded, a
        model that produces NaN (one line each).
    """
    recipe = _check_options(minutes, steps, keep, recipe, lr)
    samples = _sample_list(samples, threads)
    t_start = time.time()
    model, meta = _load_base(base, device)
    label_check = _check_labels(model, meta, samples) if check_labels else None
    clock = _Clock(minutes, steps, len(folds(len(samples), seed)) + 1, callback)
    verdict, runs = _cross_validate(model, meta, samples, clock, recipe, seed, should_stop, device, methods)
    if verdict is None:
        return FinetuneResult(None, {}, {"better": None}, cancelled=True)
    if keep == "better" and not verdict["better"]:
        runs = {"folds": runs, "final": None, "seconds": time.time() - t_start}
        record = _run_record(base, meta, samples, recipe, seed, runs, verdict, label_check)
        return FinetuneResult(None, _metadata(meta, record), verdict, base_weights=_cpu_state(model))
    tuned, res = _train(model, meta, samples, clock, "final", recipe, seed, should_stop, device)
    if res.cancelled:
        return FinetuneResult(None, {}, verdict, cancelled=True)
    _check_finite(tuned, meta, samples, device)
    runs = {"folds": runs, "final": {"steps": res.steps, "seconds": res.seconds}, "seconds": time.time() - t_start}
    record = _run_record(base, meta, samples, recipe, seed, runs, verdict, label_check)
    return FinetuneResult(_cpu_state(tuned), _metadata(meta, record), verdict)


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _sample_list(samples: Sequence, threads: Optional[int]) -> list:
    """The pairs as a list (a ValueError when there are none); sets torch's thread count when given."""
    import torch

    samples = list(samples)
    if not samples:
        raise ValueError("no image / mask pair given")
    if threads:
        torch.set_num_threads(int(threads))
    return samples


def _run_record(
    base: str, meta: dict, samples: list, recipe: FinetuneRecipe, seed: int, runs: dict, verdict: dict, label_check
) -> dict:
    """What the fine-tuned model's metadata records about its run; ``runs`` holds the
    ``"folds"``, ``"final"`` and ``"seconds"`` entries."""
    from .train import _priors

    return {
        "base": _base_info(base, meta),
        "base_finetune": meta.get("finetune"),
        "images": [_image_record(s) for s in samples],
        "recipe": recipe.to_dict(),
        "seed": seed,
        **runs,
        "verdict": verdict,
        "label_check": label_check,
        "kept_because": "better" if verdict["better"] else "asked (keep='always')" if runs["final"] else None,
        "weights": "fine-tuned" if runs["final"] else "the base's, unchanged: fine-tuning was not better",
        "user_class_fractions": _priors(samples)["mean"],
    }


def _image_record(s) -> dict:
    return {
        "name": s.name,
        "image_sha256": array_sha256(s.image),
        "mask_sha256": array_sha256(s.labels),
        "shape": list(s.labels.shape),
        "cell_diameter": s.diameter,
    }


def _metadata(base_meta: dict, record: dict) -> dict:
    """The base's metadata (all the inference path reads) with the fine-tuning record."""
    meta = copy.deepcopy(base_meta)
    record["base"]["training"] = {k: meta.pop(k) for k in _BASE_RUN_KEYS if k in meta}
    record["base"]["training"].pop("finetune", None)
    meta["finetune"] = json.loads(json.dumps(record, default=float))
    return meta


def _base_info(base, meta) -> dict:
    """Name and sha256 of the base model's weights (shipped, user file or run folder)."""
    from .weights import MODEL_NAMES, _sha256

    p = Path(str(base)).expanduser()
    if str(base) in MODEL_NAMES or p.suffix == ".pt":
        sha = meta.get("weights_sha256")
    else:
        sha = _sha256(p / "model.pt")
    return {
        "model": str(base) if str(base) in MODEL_NAMES else str(p.resolve()),
        "weights_sha256": sha,
        "arch": meta["arch"],
    }


def save_finetuned(result: FinetuneResult, path, *, overwrite: bool = False, base_if_not_better: bool = False) -> Path:
    """Write ``result`` as ``path`` (``NAME.pt``) with ``NAME.json`` beside it.

    ``base_if_not_better``: when the check kept the base, write the base's own weights
    (its metadata records the check and ``"weights": "the base's, unchanged ..."``), so
    that a command using ``path`` next gets exactly the base's results.

    Raises
    ------
    FileExistsError
        ``NAME.pt`` or ``NAME.json`` exists and ``overwrite`` is False.
    ValueError
        ``path`` does not end in ``.pt``, or there is nothing to save (cancelled, or
        the base was kept without ``base_if_not_better``).
    """
    from .weights import export_weights

    weights = result.state_dict
    if weights is None and base_if_not_better and not result.cancelled:
        weights = result.base_weights
    if weights is None:
        raise ValueError(f"nothing to save: {describe_verdict(result)}")
    path = Path(path).expanduser()
    if path.suffix != ".pt":
        raise ValueError(f"a model file must end in .pt, got '{path}'")
    targets = (path, path.with_suffix(".json"))
    if not overwrite and any(p.exists() for p in targets):
        raise FileExistsError(f"model '{path}' exists; choose another name or allow replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target, then renamed: the .json (the marker load_model needs)
    # appears last, so an interrupted save never leaves a model that looks complete
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.vptv-partial-", dir=path.parent))
    try:
        meta = dict(result.metadata, name=path.stem, saved=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            export_weights(weights, path.stem, json.loads(json.dumps(meta)), tmp)
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
            free = shutil.disk_usage(path.parent).free
            raise OSError(
                f"could not write the model '{path}' ({free / 2**20:.0f} MB free): {' '.join(str(exc).split())[:200]}"
            ) from None
        if overwrite and targets[1].exists():
            targets[1].unlink()
        os.replace(tmp / path.name, path)
        os.replace(tmp / targets[1].name, targets[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
