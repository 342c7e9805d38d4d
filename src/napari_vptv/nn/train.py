"""Train the plain U-net or the VPTVU-net on the WBC data set (paper Section 6, third
experiment), with checkpoints every epoch and automatic resume.

Usage::

    python -m napari_vptv.nn.train --arch unet --data /work/shared/data/wbc --out runs/unet \
        --epochs 10 --patches 8192 --seed 0

Protocol: the 90 images are split *by image* into training / validation
(``--val-images`` held out, fixed seed); ``--patches`` random 64 x 64 patches are drawn
once from the training images; every epoch visits them in a new random order with
random flips / rot90; Adam, batch 64, cosine learning-rate decay; loss = NLL of the
output probabilities. For the VPTVU-net the layer's exact volumes during training are
each patch's ground-truth class fractions (clipped to >= 1e-3, renormalised).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .layer import build_model

__all__ = ["train", "evaluate", "predict_batch", "main", "segmentation_scores"]


def _log(msg, fh=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)


def predict_batch(model, images_u8, *, volumes=None, volume_bounds=None, edge_weight=None):
    """Whole-image probabilities for uint8 images ``(N, H, W, 3)`` (one image at a time)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(len(images_u8)):
            x = D.normalise(images_u8[i][None])
            v = None if volumes is None else torch.as_tensor(np.asarray(volumes)[i] if np.ndim(volumes) == 2 else volumes, dtype=torch.float32)
            vb = None
            if volume_bounds is not None:
                vb = tuple(torch.as_tensor(b, dtype=torch.float32) for b in volume_bounds)
            out.append(model(x, volumes=v, volume_bounds=vb, edge_weight=edge_weight)[0].numpy())
    return np.stack(out)


def segmentation_scores(pred: np.ndarray, gt: np.ndarray, n_classes: int = 3) -> dict:
    """Mean pixel accuracy, per-class Dice and volume error for label stacks ``(N, H, W)``."""
    acc = (pred == gt).reshape(len(gt), -1).mean(axis=1)
    dice = []
    for k in range(n_classes):
        a, b = pred == k, gt == k
        inter = (a & b).reshape(len(gt), -1).sum(1)
        den = a.reshape(len(gt), -1).sum(1) + b.reshape(len(gt), -1).sum(1)
        dice.append(np.where(den > 0, 2 * inter / np.maximum(den, 1), 1.0))
    dice = np.stack(dice, 1)
    vp = D.class_fractions(pred, n_classes)
    vg = D.class_fractions(gt, n_classes)
    return {
        "pixel_accuracy": float(acc.mean()),
        "pixel_accuracy_per_image": [float(a) for a in acc],
        "dice": [float(d) for d in dice.mean(0)],
        "mean_dice": float(dice.mean()),
        # mean over images and classes of |predicted fraction - true fraction|
        "volume_error": float(np.abs(vp - vg).mean()),
    }


def evaluate(model, images_u8, labels, **kwargs) -> dict:
    probs = predict_batch(model, images_u8, **kwargs)
    return segmentation_scores(probs.argmax(1), labels, probs.shape[1])


def train(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    ids, images, labels = D.load_wbc(args.data)
    train_ids, val_ids = D.split_ids(ids, n_val=args.val_images, seed=args.split_seed)
    tr = np.array([ids.index(i) for i in train_ids])
    va = np.array([ids.index(i) for i in val_ids])
    frac_train = D.class_fractions(labels[tr])
    _log(f"{len(train_ids)} training / {len(val_ids)} validation images; "
         f"training-average fractions {np.round(frac_train.mean(0), 4).tolist()}")

    px, pl = D.sample_patches(images[tr], labels[tr], args.patches, args.patch_size, seed=args.seed)
    X = D.to_unit(px)  # (P, 3, s, s) in [0, 1]; normalised per batch after augmentation
    Y = torch.as_tensor(pl)
    vpx, vpl = D.sample_patches(images[va], labels[va], 512, args.patch_size, seed=args.seed + 1)
    VX, VY = D.normalise(vpx), torch.as_tensor(vpl)

    head = dict(epsilon=args.epsilon, tv_weight=args.tv_weight, num_iter=args.num_iter,
                backward=args.backward, volume_mode="exact")
    model = build_model(args.arch, unet_kwargs=dict(base_channels=args.base_channels, depth=args.depth),
                        head_kwargs=head)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(args.patches / args.batch)
    total_steps = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))

    ckpt_path = out / "checkpoint.pt"
    start_epoch, history = 0, []
    if ckpt_path.exists() and not args.no_resume:
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, history = ck["epoch"], ck["history"]
        _log(f"resumed from {ckpt_path} after epoch {start_epoch}")

    def nll(p, y):
        return torch.nn.functional.nll_loss(torch.log(p.clamp(min=1e-8)), y)

    is_vptv = args.arch != "unet"
    t_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(args.patches, generator=g)
        t0, run_loss, n_done = time.time(), 0.0, 0
        for step in range(steps_per_epoch):
            if args.max_steps and step >= args.max_steps:
                break
            idx = perm[step * args.batch:(step + 1) * args.batch]
            xb, yb = D.augment_batch(X[idx], Y[idx], g)
            if args.colour_aug > 0:
                xb = D.colour_jitter(xb, g, args.colour_aug)
            xb = D.normalise_unit(xb)
            vol = D.volume_targets(yb) if is_vptv else None
            # "volume dropout": with probability p the batch gets no volume constraint (TV
            # only), so the backbone cannot rely on the ground-truth fractions being given.
            if vol is not None and args.volume_dropout > 0 and float(torch.rand((), generator=g)) < args.volume_dropout:
                vol = None
            p = model(xb, volumes=vol)
            loss = nll(p, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach())
            n_done += 1
            if (step + 1) % args.log_every == 0:
                _log(f"epoch {epoch + 1} step {step + 1}/{steps_per_epoch} loss {run_loss / n_done:.4f} "
                     f"{(time.time() - t0) / n_done:.2f} s/step")
        # patch validation (GT volumes for the VPTV head, as in training)
        model.eval()
        with torch.inference_mode():
            vl, vacc = 0.0, 0.0
            for s in range(0, len(VX), 128):
                vy = VY[s:s + 128]
                p = model(VX[s:s + 128], volumes=D.volume_targets(vy) if is_vptv else None)
                vl += float(nll(p, vy)) * len(vy)
                vacc += float((p.argmax(1) == vy).float().mean()) * len(vy)
        rec = {"epoch": epoch + 1, "train_loss": run_loss / max(n_done, 1), "val_patch_loss": vl / len(VX),
               "val_patch_acc": vacc / len(VX), "epoch_seconds": time.time() - t0}
        history.append(rec)
        _log(json.dumps(rec))
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1, "history": history, "args": vars(args)}, ckpt_path.with_suffix(".tmp"))
        os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)
        if args.max_steps:
            break

    # whole-image validation
    kw = {}
    if is_vptv:
        kw = {"volumes": frac_train.mean(0)}
    scores = evaluate(model, images[va], labels[va], **kw)
    _log(f"validation (whole images): accuracy {scores['pixel_accuracy']:.4f} dice {np.round(scores['dice'], 4).tolist()}")
    torch.save(model.state_dict(), out / "model.pt")
    meta = {
        "arch": args.arch,
        "args": vars(args),
        "unet": {"in_channels": 3, "n_classes": 3, "base_channels": args.base_channels, "depth": args.depth},
        "head": head if is_vptv else None,
        "train_ids": train_ids,
        "val_ids": val_ids,
        "train_fractions_mean": frac_train.mean(0).tolist(),
        "train_fractions_p02": np.percentile(frac_train, 2, axis=0).tolist(),
        "train_fractions_p98": np.percentile(frac_train, 98, axis=0).tolist(),
        "data_digest_sha256": D.data_digest(args.data, list(train_ids) + list(val_ids)),
        "history": history,
        "validation": scores,
        "train_seconds_this_run": time.time() - t_start,
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m napari_vptv.nn.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["unet", "vptv-unet"], required=True)
    ap.add_argument("--data", required=True, help="WBC folder with images/ and masks/")
    ap.add_argument("--out", required=True, help="output folder (checkpoint.pt, model.pt, train_meta.json)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patches", type=int, default=12288)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-images", type=int, default=14)
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--tv-weight", type=float, default=1.0)
    ap.add_argument("--num-iter", type=int, default=20)
    ap.add_argument("--volume-dropout", type=float, default=0.0,
                    help="VPTVU-net: probability that a training batch gets no volume constraint")
    ap.add_argument("--backward", choices=["quasi", "full"], default="quasi")
    ap.add_argument("--colour-aug", type=float, default=1.0, help="strength of the colour jitter (0 = off)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster than 2 on a shared 2-core machine)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (timing / smoke runs)")
    ap.add_argument("--no-resume", action="store_true")
    return ap.parse_args(argv)


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
