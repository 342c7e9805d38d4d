"""Train the generalist U-net or VPTVU-net on several white-blood-cell sources.

Usage (reproduces the shipped weights; configs live in ``napari_vptv/models/``)::

    vptv train --config generalist-unet --data-root ../shared/data --out runs/unet
    vptv train --config generalist-vptv-unet --data-root ../shared/data --out runs/vptv-unet

Protocol: each source is split *by image* into training and validation
(``n_val`` images per source, fixed ``split_seed``). Every step draws a fresh batch
of patches (:mod:`~napari_vptv.nn.sampler`: source by weight, zoom 0.5-2x limited to
a cell-diameter range, centre on a cell with probability ``p_cell``), applies the
dihedral symmetries, stain / colour / illumination jitter and blur / noise / JPEG
(:mod:`~napari_vptv.nn.augment`); Adam with warm-up and cosine decay; loss = NLL of
the output probabilities. For the VPTVU-net the layer's exact volumes are each
patch's ground-truth class fractions (the paper's training), dropped with
probability ``volume_dropout`` so the backbone does not rely on them.

Every random draw of step ``t`` comes from generators seeded with ``(seed, t)``, so
a run resumed from its checkpoint is the same run. A checkpoint (model, optimiser,
history) is written atomically every ``eval_every`` steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .augment import (
    AugmentConfig,
    augment_class_colour,
    augment_colour,
    augment_optics,
    augment_red_cells,
    augment_synthetic_red_cells,
    dihedral,
)
from .layer import build_model
from .sampler import SamplerConfig, sample_batch
from .sources import load_source
from .weights import _sha256

__all__ = ["train", "main", "segmentation_scores", "load_config", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "models"


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def segmentation_scores(pred: np.ndarray, gt: np.ndarray, n_classes: int = 3) -> dict:
    """Mean pixel accuracy, per-class Dice and volume error over a list of label images."""
    from ..core.scoring.metrics import dice_per_class, pixel_accuracy, volume_error

    acc = [pixel_accuracy(p, t) for p, t in zip(pred, gt)]
    dice = np.asarray([dice_per_class(p, t, n_classes) for p, t in zip(pred, gt)])
    verr = [volume_error(p, t, n_classes) for p, t in zip(pred, gt)]
    return {
        "pixel_accuracy": float(np.mean(acc)),
        "pixel_accuracy_per_image": acc,
        "dice": [float(x) for x in dice.mean(0)],
        "mean_dice": float(dice.mean()),
        "volume_error": float(np.mean(verr)),
    }


def load_config(name_or_path) -> dict:
    """A training config: a JSON path, or the name of one shipped in ``models/``
    (``generalist-unet`` -> ``models/train-generalist-unet.json``)."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"train-{name_or_path}.json"
    if not p.is_file():
        raise FileNotFoundError(f"training config '{name_or_path}' not found (looked for '{p}')")
    return json.loads(p.read_text())


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _lr_factor(step, total, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


def _validate(model, sources, is_vptv, norm="none"):
    """Whole-image validation at native scale, per source (plain softmax of the
    backbone: the figure that tracks learning; test-time layers are chosen later)."""
    model.eval()
    out = {}
    with torch.inference_mode():
        for src in sources:
            if not src.val:
                continue
            preds = [model.logits(D.normalise(s.image[None], norm))[0].argmax(0).numpy() for s in src.val]
            sc = segmentation_scores(preds, [s.labels for s in src.val])
            out[src.name] = {"pixel_accuracy": sc["pixel_accuracy"], "dice": sc["dice"]}
    model.train()
    return out


def _priors(samples):
    fr = np.stack([np.bincount(s.labels.ravel(), minlength=3)[:3] / s.labels.size for s in samples])
    return {
        "mean": fr.mean(0).tolist(),
        "p02": np.percentile(fr, 2, 0).tolist(),
        "p98": np.percentile(fr, 98, 0).tolist(),
        "n_images": len(samples),
    }


def _load_sources(cfg, data_root):
    sources = []
    for sc in cfg["sources"]:
        src = load_source(Path(data_root) / sc["path"], sc["name"], sc.get("n_val", 0), cfg.get("split_seed", 0))
        if sc.get("train", True) is False:  # validation-only source (leave-one-source-out)
            src.val, src.train = src.samples, []
        sources.append(src)
    return sources


def _setup(cfg, data_root, sources=None):
    sources = _load_sources(cfg, data_root) if sources is None else list(sources)
    for src in sources:
        _log(
            f"source {src.name}: {len(src.train)} train / {len(src.val)} val images, median cell diameter "
            f"{np.median([s.diameter for s in src.samples]):.1f} px"
        )
    head = cfg.get("head") or {}
    model = build_model(cfg["arch"], unet_kwargs=cfg["unet"], head_kwargs=head)
    return sources, model


def _step_batch(sources, weights, step, cfg, scfg, acfg):
    seed = int(cfg.get("seed", 0))
    rng = np.random.default_rng([seed, step])
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    white_norm = cfg.get("input_norm", "none") == "white-point"
    xb, yb, white = sample_batch(sources, weights, cfg["batch"], rng, scfg, with_white=True)
    xb, yb = dihedral(xb, yb, g)
    xb = augment_class_colour(xb, yb, g, acfg)
    xb = augment_red_cells(xb, yb, white, g, acfg)
    xb = augment_synthetic_red_cells(xb, yb, g, acfg)
    if white_norm:
        # the white point rides along as one extra pixel column, so it gets the same colour
        # augmentation as the patch and the normalisation then removes the augmented cast
        B, _, P, _ = xb.shape
        xb = torch.cat([xb, white.view(B, 3, 1, 1).expand(B, 3, P, 1)], dim=3)
    xb = augment_colour(xb, g, acfg)
    if white_norm:
        xb = D.apply_white(xb[..., :-1], xb[..., 0, -1])
    xb = augment_optics(xb, g, acfg)
    vol = None
    if cfg["arch"] != "unet" and float(torch.rand((), generator=g)) >= cfg.get("volume_dropout", 0.0):
        vol = D.volume_targets(yb)
    return D.normalise_unit(xb), yb, vol


def _mean_val_score(val: dict):
    """Mean Dice over the classes and the validated sources (None without validation)."""
    scores = [float(np.mean(v["dice"])) for v in val.values()]
    return float(np.mean(scores)) if scores else None


def _init_backbone(model, cfg, init):
    """Load the backbone weights of ``init`` (a ``model.pt`` path or a state dict)."""
    if cfg.get("init") and init is None:
        raise ValueError(f"config starts from a trained '{cfg['init']}' model: pass its model.pt with --init")
    if init is None:
        return cfg
    sd = init if isinstance(init, dict) else torch.load(init, map_location="cpu", weights_only=True)
    model.backbone.load_state_dict({k.split("backbone.", 1)[1]: v for k, v in sd.items() if k.startswith("backbone.")})
    if isinstance(init, dict):
        return cfg
    _log(f"backbone initialised from {init}")
    return dict(cfg, init_sha256=_sha256(init))


def _resume(ckpt, model, opt, sched):
    """Restore a run from its checkpoint; returns ``(step, history, seconds)``."""
    # our own checkpoint (optimiser state holds non-tensor values): trusted file
    ck = torch.load(ckpt, weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    _log(f"resumed from {ckpt} at step {ck['step']}")
    return ck["step"], ck["history"], ck.get("seconds", 0.0)


def _checkpoint(ckpt, model, opt, sched, cfg, history):
    """Write the run's state atomically (temporary file, then rename)."""
    rec = history[-1]
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": rec["step"],
        "history": history,
        "seconds": rec["seconds"],
        "config": cfg,
    }
    tmp = ckpt.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt)


def _sampling(cfg, sources):
    """The training sources, their sampling weights, the sampler and augmentation settings."""
    train_sources = [s for s in sources if s.train]
    weights = [next(c.get("weight", 1.0) for c in cfg["sources"] if c["name"] == s.name) for s in train_sources]
    return train_sources, weights, SamplerConfig(**cfg.get("sampler", {})), AugmentConfig(**cfg.get("augment", {}))


def _optimiser(model, cfg, total):
    """Adam and its learning-rate schedule (:func:`_lr_factor`: linear warm-up, then cosine decay)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    warmup = int(cfg.get("warmup", 200))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, warmup))
    return opt, sched


def _train_step(model, opt, sched, batch) -> float:
    """One optimiser step on ``batch`` ``(x, y, volumes)``; the loss before the step."""
    x, y, vol = batch
    p = model(x, volumes=vol)
    loss = torch.nn.functional.nll_loss(torch.log(p.clamp(min=1e-8)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def _evaluate(model, sources, cfg, step, clock, history, best, keep_best):
    """Validate at ``step`` and append the record to ``history``; ``clock`` is (start of this
    run, seconds of the earlier runs). (mean validation score, best weights so far with ``keep_best``)."""
    t_run, seconds = clock
    rec = {
        "step": step,
        "val": _validate(model, sources, cfg["arch"] != "unet", cfg.get("input_norm", "none")),
        "seconds": seconds + time.time() - t_run,
    }
    history.append(rec)
    _log(json.dumps(rec))
    val_score = _mean_val_score(rec["val"])
    if keep_best and val_score is not None and (best is None or val_score > best["val_score"]):
        best = {
            "step": step,
            "val_score": val_score,
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }
    return val_score, best


def train(
    cfg: dict,
    out,
    data_root=None,
    *,
    sources=None,
    resume: bool = True,
    max_minutes: float = 0.0,
    threads: int = 1,
    init=None,
    callback=None,
    should_stop=None,
    keep_best: bool = False,
    finish_early: bool = False,
) -> dict:
    """Train from a config dict; writes ``checkpoint.pt``, ``model.pt``, ``train_meta.json``
    into ``out``. Returns the metadata (``{}`` when stopped early without ``finish_early``).

    Parameters
    ----------
    sources : list of :class:`~napari_vptv.nn.sources.Source`, optional
        Training / validation images already in memory (e.g. a user's arrays, see
        :mod:`.finetune`); default: the config's source folders under ``data_root``.
    init : path or state dict, optional
        A ``model.pt`` (or its state dict) whose backbone weights start the run
        (configs with an ``"init"`` entry need it).
    callback : callable, optional
        ``callback(step, total, loss, val_score)`` after every step; ``val_score``
        (mean validation Dice) is None except at validation steps.
    should_stop : callable, optional
        Polled after every step; True stops like the time budget ``max_minutes``.
    keep_best : bool
        ``model.pt`` holds the weights of the best validation step, not the last.
    finish_early : bool
        When stopped, write ``model.pt`` and metadata instead of a checkpoint to resume.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.manual_seed(int(cfg.get("seed", 0)))
    sources, model = _setup(cfg, data_root, sources)
    cfg = _init_backbone(model, cfg, init)
    train_sources, weights, scfg, acfg = _sampling(cfg, sources)
    total = int(cfg["steps"])
    opt, sched = _optimiser(model, cfg, total)
    ckpt = out / "checkpoint.pt"
    start, history, seconds = _resume(ckpt, model, opt, sched) if resume and ckpt.exists() else (0, [], 0.0)
    model.train()
    t_run, t_log, loss_sum, n_loss = time.time(), time.time(), 0.0, 0
    step, best = start, None
    while step < total:
        loss_value = _train_step(model, opt, sched, _step_batch(train_sources, weights, step, cfg, scfg, acfg))
        step += 1
        loss_sum, n_loss = loss_sum + loss_value, n_loss + 1
        if step % cfg.get("log_every", 50) == 0:
            _log(f"step {step}/{total} loss {loss_sum / n_loss:.4f} {(time.time() - t_log) / n_loss:.2f} s/step")
            t_log, loss_sum, n_loss = time.time(), 0.0, 0
        out_of_time = max_minutes and (time.time() - t_run) > 60 * max_minutes
        stop = out_of_time or bool(should_stop is not None and should_stop())
        val_score = None
        if step % cfg.get("eval_every", 500) == 0 or step == total or stop:
            val_score, best = _evaluate(model, sources, cfg, step, (t_run, seconds), history, best, keep_best)
            _checkpoint(ckpt, model, opt, sched, cfg, history)
        if callback is not None:
            callback(step, total, loss_value, val_score)
        if stop and finish_early:
            _log(f"stopped at step {step}/{total} ({'time budget' if out_of_time else 'requested'})")
            break
        if stop:
            _log(f"time budget of {max_minutes} min reached at step {step}; rerun to resume")
            return {}
    if best is not None:
        model.load_state_dict(best["state"])
    return _finish(model, cfg, sources, history, seconds + time.time() - t_run, out, scfg, acfg, step, best)


def _finish(model, cfg, sources, history, seconds, out, scfg, acfg, step=None, best=None):
    train_samples = [s for src in sources for s in src.train]
    meta = {
        "arch": cfg["arch"],
        "input_norm": cfg.get("input_norm", "none"),
        "config": cfg,
        "sampler": scfg.to_dict(),
        "augment": acfg.to_dict(),
        "unet": dict(cfg["unet"]),
        "head": cfg.get("head") if cfg["arch"] != "unet" else None,
        "sources": [
            {
                "name": s.name,
                "train_ids": [x.name for x in s.train],
                "val_ids": [x.name for x in s.val],
                "data_digest_sha256": s.digest(),
                "median_cell_diameter": float(np.median([x.diameter for x in s.samples])),
                "volume_priors": _priors(s.train) if s.train else None,
            }
            for s in sources
        ],
        "volume_priors_pooled": _priors(train_samples),
        "training_cell_diameter_median": float(np.median([s.diameter for s in train_samples])),
        "history": history,
        "steps": int(cfg["steps"]),
        "steps_done": int(cfg["steps"] if step is None else step),
        "best": None if best is None else {"step": best["step"], "val_score": best["val_score"]},
        "train_seconds": seconds,
        "commit": _git_commit(),
        "torch": torch.__version__,
    }
    torch.save(model.state_dict(), out / "model.tmp")
    os.replace(out / "model.tmp", out / "model.pt")
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    _log(f"done: {out / 'model.pt'} after {seconds / 60:.1f} min")
    return meta


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="vptv train", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config",
        required=True,
        help="training config: a JSON file or a shipped name (generalist-unet, generalist-vptv-unet)",
    )
    ap.add_argument("--data-root", required=True, help="folder holding the sources' folders named in the config")
    ap.add_argument("--out", required=True, help="run folder (checkpoint.pt, model.pt, train_meta.json)")
    ap.add_argument("--steps", type=int, default=0, help="override the config's number of steps")
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop after this many minutes with a checkpoint (rerun to resume); 0 = no limit",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--init", default=None, help="model.pt of a finished run to start from (configs with 'init')")
    ap.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.steps:
        cfg["steps"] = args.steps
    train(
        cfg,
        args.out,
        args.data_root,
        resume=not args.no_resume,
        max_minutes=args.max_minutes,
        threads=args.threads,
        init=args.init,
    )


if __name__ == "__main__":
    main()
