"""Fine-tune a trained WBC network on a user's own corrected images (cellpose 2.0's loop).

A user gives a few image / mask pairs (arrays from napari layers, or two folders);
:func:`finetune` starts from a trained model (a shipped generalist, a user model to
continue, or a training run), trains it with the generalist trainer
(:func:`napari_vptv.nn.train.train`: the same scale-aware patches and augmentation)
for a time budget, and returns the weights with their metadata:

- with >= 3 pairs, one pair (drawn with ``seed``) is held out; the model kept is the
  one with the best mean Dice on it (also when the run is cancelled);
- the volume prior (``volume_priors_pooled``) comes from the user's masks;
- the metadata names the base model (and its sha256), every training image with the
  sha256 of its pixels and mask, the steps, the seconds and the validation scores.

Before training, the base model's predictions are compared with the masks under the
6 orderings of the 3 classes: masks whose labels are swapped (e.g. nucleus = 1) are
refused with a one-line error, since the network would unlearn what it knows.

:func:`save_finetuned` writes ``NAME.pt`` + ``NAME.json`` with
:func:`~napari_vptv.nn.weights.export_weights` (loadable by
:func:`~napari_vptv.nn.weights.load_model`) and never replaces a model unless asked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from .data import input_norm_of
from .sources import Sample, Source, cell_diameter, mask_to_labels, split_names

__all__ = ["FinetuneResult", "FINETUNE_DEFAULTS", "samples_from_arrays", "samples_from_folders",
           "user_source", "finetune", "save_finetuned", "label_order_check", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
CLASS_NAMES = ("background", "cytoplasm", "nucleus")
#: training settings of a fine-tuning run (the sampler / augmentation are the base model's)
FINETUNE_DEFAULTS = {"batch": 16, "lr": 1e-3, "warmup": 20, "eval_fraction": 0.1, "max_steps": 5000}
#: a class ordering that agrees this much better with the base model than the given one
#: means the masks' labels are swapped
LABEL_SWAP_MARGIN = 0.15
#: a held-out mean Dice below this is reported as a warning
LOW_VAL_SCORE = 0.7


class ArraySource(Source):
    """A :class:`Source` held in memory (no folder): its digest hashes the arrays."""

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.samples:
            h.update(s.name.encode())
            h.update(_array_sha256(s.image).encode())
            h.update(_array_sha256(s.labels).encode())
        return h.hexdigest()


@dataclass
class FinetuneResult:
    """Weights (``state_dict``) and ``metadata`` of a fine-tuned model; ``val_score``
    (mean Dice on the held-out pair, None with < 3 pairs) of the model kept,
    ``base_val_score`` of the base model on the same pair, ``stopped`` when Cancel or
    the time budget ended the run before its planned steps."""

    state_dict: dict
    metadata: dict
    val_score: Optional[float]
    base_val_score: Optional[float]
    stopped: bool
    warnings: List[str] = field(default_factory=list)


def _array_sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _mask_labels(name: str, mask) -> np.ndarray:
    """Labels 0/1/2 of a mask: integer labels 0/1/2, or grey 0/128/255 (a few
    anti-aliased grey pixels are mapped to the nearest grey)."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        m = m[..., 0]
    if m.size == 0 or m.min() < 0:
        raise ValueError(f"mask of {name!r} is empty or has negative values")
    if m.max() <= 2:
        return m.astype(np.int64)
    if np.isin(m, (0, 128, 255)).mean() < 0.99:
        raise ValueError(f"mask of {name!r} must hold labels 0/1/2 (background/cytoplasm/nucleus) or grey "
                         f"0/128/255, got values {np.unique(m)[:8].tolist()}")
    return mask_to_labels(m)


def _as_sample(name: str, image, mask) -> Sample:
    from .predict import as_rgb_uint8

    img = as_rgb_uint8(image)
    lab = _mask_labels(name, mask)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"mask of {name!r} has shape {lab.shape}, its image has {img.shape[:2]}")
    return Sample(name, np.ascontiguousarray(img), lab, cell_diameter(lab))


def samples_from_arrays(images: Sequence, masks: Sequence, names: Optional[Sequence[str]] = None) -> List[Sample]:
    """Image / mask pairs from arrays: RGB ``(H, W, 3)`` images, masks with labels 0/1/2
    (background / cytoplasm / nucleus) or grey 0/128/255 (the formats ``evaluate`` reads).

    Raises
    ------
    ValueError
        No pair, unequal counts, a mask of another shape or with other values (named).
    """
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    if not images:
        raise ValueError("no image / mask pair given")
    names = list(names) if names is not None else [f"image{i:03d}" for i in range(len(images))]
    if len(set(names)) != len(names):
        raise ValueError(f"image names must be unique, got {names}")
    return [_as_sample(n, im, m) for n, im, m in zip(names, images, masks)]


def samples_from_folders(images_dir, masks_dir) -> List[Sample]:
    """Pairs from two folders: every image with a mask of the same stem (any of
    :data:`IMAGE_SUFFIXES`). Raises ``FileNotFoundError`` naming the folder / image."""
    import imageio.v3 as iio

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"folder '{d}' does not exist")
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    paths = [p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in '{images_dir}'")
    missing = [p.name for p in paths if p.stem not in masks]
    if missing:
        raise FileNotFoundError(f"no mask in '{masks_dir}' for image(s) {', '.join(missing[:5])}")
    out = []
    for p in paths:
        try:
            image, mask = iio.imread(p), iio.imread(masks[p.stem])
        except Exception as exc:  # noqa: BLE001 - any reader error, named
            raise ValueError(f"cannot read '{p}' or its mask: {exc}") from exc
        out.append(_as_sample(p.stem, image, mask))
    return out


def user_source(samples: Sequence[Sample], seed: int = 0, name: str = "user") -> ArraySource:
    """The pairs as one source; with >= 3 pairs one (drawn with ``seed``) is held out."""
    n_val = 1 if len(samples) >= 3 else 0
    train, val = split_names([s.name for s in samples], n_val, seed)
    by = {s.name: s for s in samples}
    return ArraySource(name, None, list(samples), [by[n] for n in train], [by[n] for n in val])


def label_order_check(model, meta, samples: Sequence[Sample], max_images: int = 6) -> dict:
    """Pixel agreement of the base model with the masks under each class ordering.

    Returns ``{"given": acc, "best": acc, "order": (i, j, k)}``: ``order[c]`` is the
    label the base model gives to what the mask calls ``c``.
    """
    from .predict import predict_cells

    preds, gts = [], []
    for s in list(samples)[:max_images]:
        pred = predict_cells(model, meta, s.image, diameter=s.diameter or None, num_iter=0)
        preds.append(pred.labels.ravel())
        gts.append(s.labels.ravel())
    p, t = np.concatenate(preds), np.concatenate(gts)
    scores = {perm: float((np.asarray(perm)[t] == p).mean()) for perm in itertools.permutations(range(3))}
    best = max(scores, key=scores.get)
    return {"given": scores[(0, 1, 2)], "best": scores[best], "order": best}


def _check_labels(model, meta, samples):
    chk = label_order_check(model, meta, samples)
    if chk["best"] - chk["given"] > LABEL_SWAP_MARGIN:
        swapped = ", ".join(f"{CLASS_NAMES[c]} is {o}" for c, o in enumerate(chk["order"]) if c != o)
        raise ValueError(
            f"the masks' labels look swapped: the base model agrees with {chk['given']:.0%} of the mask pixels "
            f"as given but {chk['best']:.0%} if {swapped}; masks must use 0 = background, 1 = cytoplasm, "
            "2 = nucleus (or grey 0/128/255)")
    return chk


def _base_info(base, meta) -> dict:
    """Name and sha256 of the base model's weights (shipped, user file or run folder)."""
    from .weights import MODEL_NAMES, _sha256

    p = Path(str(base)).expanduser()
    if str(base) in MODEL_NAMES or p.suffix == ".pt":
        sha = meta.get("weights_sha256")
    else:
        sha = _sha256(p / "model.pt")
    return {"model": str(base) if str(base) in MODEL_NAMES else str(p.resolve()), "weights_sha256": sha,
            "arch": meta["arch"]}


def _config(meta, steps, seed, opts) -> dict:
    cfg = {
        "arch": meta["arch"], "unet": dict(meta["unet"]), "sources": [{"name": "user", "weight": 1.0}],
        "seed": seed, "split_seed": seed, "steps": int(steps), "batch": opts["batch"], "lr": opts["lr"],
        "warmup": min(opts["warmup"], max(1, steps // 5)), "weight_decay": 0.0,
        "sampler": dict(meta.get("sampler") or {}), "augment": dict(meta.get("augment") or {}),
        "log_every": max(1, steps // 20), "eval_every": max(1, int(round(steps * opts["eval_fraction"]))),
        "input_norm": input_norm_of(meta),
    }
    if meta["arch"] != "unet":
        cfg.update(head=dict(meta.get("head") or {}), volume_dropout=(meta.get("config") or {}).get("volume_dropout", 0.3))
    return cfg


def _seconds_per_step(model, source, cfg) -> float:
    """Time of one training step on a throw-away copy (sets the step count of a budget)."""
    import copy

    import torch

    from .augment import AugmentConfig
    from .sampler import SamplerConfig
    from .train import _step_batch

    probe = copy.deepcopy(model).train()
    opt = torch.optim.Adam(probe.parameters(), lr=0.0)
    scfg, acfg = SamplerConfig(**cfg["sampler"]), AugmentConfig(**cfg["augment"])
    times = []
    for i in range(2):  # the first step pays for allocations
        t0 = time.perf_counter()
        x, y, vol = _step_batch([source], [1.0], 10**9 + i, cfg, scfg, acfg)
        loss = torch.nn.functional.nll_loss(torch.log(probe(x, volumes=vol).clamp(min=1e-8)), y)
        opt.zero_grad()
        loss.backward()
        times.append(time.perf_counter() - t0)
    return min(times)


def _plan_steps(model, source, meta, minutes, steps, seed, opts):
    if steps:
        return int(steps)
    per_step = _seconds_per_step(model, source, _config(meta, 100, seed, opts))
    # ~10 % of the budget goes to validation and overheads
    return int(np.clip(0.9 * 60.0 * minutes / per_step, 10, opts["max_steps"]))


def finetune(samples: Sequence[Sample], *, base: str = "vptv-unet", minutes: float = 3.0,
             steps: Optional[int] = None, seed: int = 0, threads: Optional[int] = None,
             callback: Optional[Callable] = None, should_stop: Optional[Callable[[], bool]] = None,
             check_labels: bool = True, scratch: bool = False, **train_options) -> FinetuneResult:
    """Fine-tune ``base`` on image / mask pairs (see the module docstring).

    Parameters
    ----------
    samples : from :func:`samples_from_arrays` or :func:`samples_from_folders`.
    base : str
        ``"unet"``, ``"vptv-unet"``, a model file ``NAME.pt`` (continue training a
        fine-tuned model) or a training-run folder (:func:`~.weights.load_model`).
    minutes : float
        Time budget of the training loop; the run stops with the best model so far.
    steps : int, optional
        Planned steps (deterministic given ``seed`` unless ``minutes`` runs out first);
        default: as many as fit ``minutes`` by the time of one step.
    callback : ``callback(step, total, loss, val_score)``, called after every step.
    should_stop : ``should_stop() -> bool``, polled after every step (Cancel).
    threads : int, optional
        torch CPU threads (default: torch's current setting).
    check_labels : bool
        Refuse masks whose classes look swapped relative to the base model.
    scratch : bool
        Train ``base``'s architecture from random weights instead (the control of the
        benchmark; no label check).
    train_options : override :data:`FINETUNE_DEFAULTS` (``batch``, ``lr``, ...).

    Raises
    ------
    ValueError
        Bad pairs, swapped labels, a base model that cannot be loaded (one line each).
    """
    import torch

    from .train import _validate, train
    from .weights import load_model

    if not (minutes > 0 or steps):
        raise ValueError(f"the time budget must be > 0 minutes, got {minutes}")
    unknown = set(train_options) - set(FINETUNE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown fine-tuning option(s): {', '.join(sorted(unknown))}")
    opts = dict(FINETUNE_DEFAULTS, **train_options)
    try:
        model, meta = load_model(base)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"cannot load the base model: {exc}") from None
    source = user_source(samples, seed)
    label_check = _check_labels(model, meta, source.samples) if check_labels and not scratch else None
    base_val = _validate(model, [source], meta["arch"] != "unet", input_norm_of(meta))
    base_score = float(np.mean(base_val["user"]["dice"])) if base_val else None
    cfg = _config(meta, _plan_steps(model, source, meta, minutes, steps, seed, opts), seed, opts)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="vptv-finetune-"))
    try:
        tmeta = train(cfg, work, sources=[source], resume=False, max_minutes=minutes or 0.0,
                      threads=threads or torch.get_num_threads(), init=None if scratch else model.state_dict(),
                      callback=callback, should_stop=should_stop,
                      keep_best=bool(source.val), finish_early=True)
        state = torch.load(work / "model.pt", map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = _result(state, meta, tmeta, base, source, base_score, label_check, time.time() - t0)
    result.metadata["finetune"]["from_scratch"] = bool(scratch)
    return result


def _result(state, base_meta, tmeta, base, source, base_score, label_check, seconds) -> FinetuneResult:
    best = tmeta.get("best")
    val_score = best["val_score"] if best else None
    warnings = []
    if val_score is not None and base_score is not None and val_score < base_score:
        warnings.append(f"the fine-tuned model scores {val_score:.3f} (mean Dice) on the held-out pair "
                        f"{source.val[0].name!r}, below the base model's {base_score:.3f}: check the masks")
    if val_score is not None and val_score < LOW_VAL_SCORE:
        warnings.append(f"the fine-tuned model scores only {val_score:.3f} (mean Dice) on the held-out pair "
                        f"{source.val[0].name!r}: check that the masks use 0 = background, 1 = cytoplasm, "
                        "2 = nucleus, or train longer")
    keep = ("classes", "normalisation", "defaults", "data", "licence_note")
    meta = {k: base_meta[k] for k in keep if k in base_meta}
    meta.update({k: tmeta[k] for k in ("arch", "unet", "head", "sampler", "augment", "sources",
                                       "volume_priors_pooled", "training_cell_diameter_median", "commit", "torch")})
    meta["volume_priors"] = dict(tmeta["volume_priors_pooled"], source="the user's training masks")
    meta["finetune"] = {
        "base": _base_info(base, base_meta),
        "base_finetune": base_meta.get("finetune"),  # lineage when continuing a user model
        "images": [{"name": s.name, "role": "validation" if s in source.val else "training",
                    "image_sha256": _array_sha256(s.image), "mask_sha256": _array_sha256(s.labels),
                    "shape": list(s.labels.shape), "cell_diameter": s.diameter} for s in source.samples],
        "steps_planned": tmeta["steps"], "steps_done": tmeta["steps_done"], "best_step": best and best["step"],
        "train_seconds": tmeta["train_seconds"], "seconds": seconds, "config": tmeta["config"],
        "val_score": val_score, "base_val_score": base_score, "val_metric": "mean Dice (3 classes), held-out pair",
        "history": tmeta["history"], "label_check": label_check, "warnings": warnings,
        "stopped_early": tmeta["steps_done"] < tmeta["steps"],
    }
    return FinetuneResult(state, meta, val_score, base_score, tmeta["steps_done"] < tmeta["steps"], warnings)


def save_finetuned(result: FinetuneResult, path, *, overwrite: bool = False) -> Path:
    """Write ``result`` as ``path`` (``NAME.pt``) with ``NAME.json`` beside it.

    Raises
    ------
    FileExistsError
        ``NAME.pt`` or ``NAME.json`` exists and ``overwrite`` is False.
    ValueError
        ``path`` does not end in ``.pt``.
    """
    from .weights import export_weights

    path = Path(path).expanduser()
    if path.suffix != ".pt":
        raise ValueError(f"a model file must end in .pt, got '{path}'")
    targets = (path, path.with_suffix(".json"))
    if not overwrite and any(p.exists() for p in targets):
        raise FileExistsError(f"model '{path}' exists; choose another name or allow replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target, then renamed: the .json (the marker load_model needs)
    # appears last, so an interrupted save never leaves a model that looks complete
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
    try:
        meta = dict(result.metadata, name=path.stem, saved=time.strftime("%Y-%m-%dT%H:%M:%S"))
        export_weights(result.state_dict, path.stem, json.loads(json.dumps(meta)), tmp)
        if overwrite and targets[1].exists():
            targets[1].unlink()
        os.replace(tmp / path.name, path)
        os.replace(tmp / targets[1].name, targets[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
