"""``vptv finetune``: fine-tune a WBC network on a folder of your own images and masks.

    vptv finetune --images DIR --masks DIR [--out MODEL.pt | --name NAME] [--minutes M]
                  [--base unet|vptv-unet|MODEL] [--steps N] [--seed S] [--overwrite]

The model is written as ``MODEL.pt`` + ``MODEL.json`` (``--out``) or into the user's
model folder as ``NAME.pt`` (``--name``; the folder is printed), and is then usable
as ``vptv segment ... --model NAME_OR_PATH``. ``--base`` may name one of your
models to continue training it. See :mod:`napari_vptv.nn.finetune`.
"""

from __future__ import annotations

from pathlib import Path

from .common import CLIError, echo, nonneg_float, positive_float, positive_int

__all__ = ["NAME", "add_parser", "run"]

NAME = "finetune"


def add_parser(sub) -> None:
    """Register ``vptv finetune`` on the subparsers ``sub``."""
    p = sub.add_parser(
        NAME,
        help="fine-tune a WBC network on your own images and masks",
        description=(
            "Fine-tune the shipped generalist (or one of your models) on image / mask pairs with the same "
            "file stems. Masks: grey 0/128/255 or integer labels 0/1/2 (background / cytoplasm / nucleus), "
            "as 'vptv evaluate' reads them. With 3 or more pairs one is held out and the model with the best "
            "mean Dice on it is kept. Never replaces an existing model without --overwrite."
        ),
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--masks", required=True, metavar="DIR", help="folder of masks (same file stems)")
    p.add_argument("--out", default=None, metavar="MODEL.pt",
                   help="model file to write (its .json is written beside it)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="save as NAME in your model folder (default when --out is not given: "
                        "'finetuned-<images folder name>')")
    p.add_argument("--minutes", type=positive_float, default=3.0, metavar="M",
                   help="time budget of the training (default: %(default)s)")
    p.add_argument("--base", default="vptv-unet", metavar="MODEL",
                   help="model to start from: unet, vptv-unet, or a model name / .pt file to continue "
                        "training (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="train exactly N steps (reproducible; --minutes still caps the time)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out pair and the patches (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name / path")
    p.add_argument("--no-label-check", action="store_true",
                   help="train even when the masks' classes look swapped relative to the base model")
    p.add_argument("--lr", type=nonneg_float, default=None, help="learning rate (default: 0.001)")
    p.set_defaults(func=run)


def _target(args) -> Path:
    from ..user_models import check_model_name, user_model_path

    if args.out:
        out = Path(args.out).expanduser()
        if out.suffix != ".pt":
            raise CLIError(f"--out must name a .pt file, got '{out}'")
        if args.name and check_model_name(args.name) != out.stem:
            raise CLIError(f"give either --out or --name (--out '{out}' names the model '{out.stem}')")
        return out
    return user_model_path(args.name or f"finetuned-{Path(args.images).expanduser().resolve().name}")


def run(args) -> int:
    """Run ``vptv finetune``; returns the exit status."""
    from ..nn.finetune import finetune, samples_from_folders, save_finetuned
    from ..user_models import resolve_model

    target = _target(args)
    if not args.overwrite and (target.exists() or target.with_suffix(".json").exists()):
        raise CLIError(f"model '{target}' exists; choose another --out / --name or pass --overwrite")
    base = resolve_model(args.base)
    samples = samples_from_folders(args.images, args.masks)
    echo(f"fine-tuning {base} on {len(samples)} image(s) for at most {args.minutes:g} min")
    extra = {"lr": args.lr} if args.lr else {}

    def progress(step, total, loss, val_score):
        if val_score is not None:
            echo(f"step {step}/{total}  loss {loss:.4f}  held-out mean Dice {val_score:.4f}")

    result = finetune(samples, base=base, minutes=args.minutes, steps=args.steps, seed=args.seed,
                      threads=args.threads, callback=progress, check_labels=not args.no_label_check, **extra)
    path = save_finetuned(result, target, overwrite=args.overwrite)
    ft = result.metadata["finetune"]
    score = "n/a (fewer than 3 pairs)" if result.val_score is None else (
        f"{result.val_score:.4f} (base model {result.base_val_score:.4f})")
    echo(f"saved {path} (+ {path.with_suffix('.json').name}): {ft['steps_done']} steps in "
         f"{ft['train_seconds'] / 60:.1f} min, held-out mean Dice {score}")
    for w in result.warnings:
        echo(f"warning: {w}")
    echo(f"use it with: vptv segment IMAGES --method {result.metadata['arch']} --model {path}")
    return 0
