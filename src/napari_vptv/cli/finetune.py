"""``vptv finetune``: fine-tune a WBC network on a folder of your own images and masks.

    vptv finetune --images DIR --masks DIR [--out MODEL.pt | --name NAME] [--minutes M]
                  [--base unet|vptv-unet|MODEL] [--steps N] [--seed S] [--keep-anyway] [--overwrite]

The model is written as ``MODEL.pt`` + ``MODEL.json`` (``--out``) or into the user's
model folder as ``NAME.pt`` (``--name``; the folder is printed), and is then usable
as ``vptv segment ... --model NAME_OR_PATH`` (with the default method or a network
method). The fine-tuned model is written only when a cross-validation on your pairs
shows that it beats the base (``--keep-anyway`` writes it regardless); otherwise the
base's own weights are written under that name, unchanged and marked so in the
``.json`` (``--no-base-copy``: nothing is written), so a script's next command gets the
base's results. The command prints both models' held-out scores either way. ``--base`` may name one of your models to continue
training it. See :mod:`napari_vptv.nn.finetune`.
"""

from __future__ import annotations

from pathlib import Path

from ..nn.finetune_loop import RECIPE
from .common import CLIError, echo, positive_float, positive_int

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
            "as 'vptv evaluate' reads them. With 2 or more pairs the recipe is cross-validated (up to 3 folds: "
            "fine-tuned on the other pairs, scored on the pairs left out, against the base model on the same "
            "pairs); the fine-tuned model is saved only when it beats the base there, else the base's weights "
            "are saved unchanged under that name (see --no-base-copy). Never replaces an existing model "
            "without --overwrite."
        ),
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--masks", required=True, metavar="DIR", help="folder of masks (same file stems)")
    p.add_argument(
        "--out", default=None, metavar="MODEL.pt", help="model file to write (its .json is written beside it)"
    )
    p.add_argument(
        "--name",
        default=None,
        metavar="NAME",
        help="save as NAME in your model folder (default when --out is not given: 'finetuned-<images folder name>')",
    )
    p.add_argument(
        "--minutes",
        type=positive_float,
        default=5.0,
        metavar="M",
        help="time budget of the whole run, checks and final training (default: %(default)s)",
    )
    p.add_argument(
        "--base",
        default="vptv-unet",
        metavar="MODEL",
        help="model to start from: unet, vptv-unet, or a model name / .pt file to continue "
        "training (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="train exactly N steps per training instead of a time budget (reproducible)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the cross-validation folds and of the patches, >= 0 (default 0)"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads (default: torch's)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name / path")
    p.add_argument(
        "--no-base-copy",
        action="store_true",
        help="when fine-tuning is not better, write nothing (default: write the base's weights, unchanged, "
        "under the model's name, so the commands that use it next get the base's results)",
    )
    p.add_argument(
        "--no-label-check",
        action="store_true",
        help="train even when the masks' classes look swapped relative to the base model",
    )
    p.add_argument(
        "--keep-anyway",
        action="store_true",
        help="save the model even when it is not better than the base on your held-out pairs",
    )
    p.add_argument(
        "--lr", type=positive_float, default=None, help=f"peak learning rate, > 0 and < 0.1 (default: {RECIPE.lr:g})"
    )
    p.add_argument("--device", default="cpu", help="torch device of the training (default: cpu)")
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


#: a fine-tuned model takes about 2 MB; refuse to start with less free space than this
MIN_FREE_BYTES = 50 * 2**20


def _check_free_space(target: Path) -> None:
    import shutil

    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise CLIError(
            f"only {free / 2**20:.0f} MB free in '{folder}': the model needs about 2 MB and the "
            f"run refuses to start below {MIN_FREE_BYTES // 2**20} MB"
        )


def _progress_printer():
    last = {"phase": None, "tenth": -1}

    def progress(p):
        tenth = int(p.fraction * 10)
        if p.phase != last["phase"] or tenth != last["tenth"]:
            last.update(phase=p.phase, tenth=tenth)
            echo(f"{p.fraction:4.0%}  {p.phase}  step {p.step}  loss {p.loss:.4f}")

    return progress


def run(args) -> int:
    """Run ``vptv finetune``; returns the exit status."""
    from ..finetuning import finetune, save_finetuned
    from ..nn.finetune import describe_verdict, samples_from_folders
    from ..user_models import resolve_model

    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    target = _target(args)
    if not args.overwrite and (target.exists() or target.with_suffix(".json").exists()):
        raise CLIError(f"model '{target}' exists; choose another --out / --name or pass --overwrite")
    _check_free_space(target)
    base = resolve_model(args.base)
    samples = samples_from_folders(args.images, args.masks)
    budget = f"{args.steps} steps per training" if args.steps else f"at most {args.minutes:g} min"
    echo(f"fine-tuning {base} on {len(samples)} image(s), {budget}")
    result = finetune(
        samples,
        base=base,
        minutes=args.minutes,
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        callback=_progress_printer(),
        check_labels=not args.no_label_check,
        keep="always" if args.keep_anyway else "better",
        lr=args.lr,
    )
    if not result.kept and (result.cancelled or args.no_base_copy):
        echo(f"not saved: {describe_verdict(result)}")
        return 0
    _check_free_space(target)
    # the base's own weights when it was kept: the commands that use this model next
    # (a script's 'vptv segment --model') get exactly the base's results
    path = save_finetuned(result, target, overwrite=args.overwrite, base_if_not_better=True)
    if not result.kept:
        echo(f"fine-tuning did not help; {describe_verdict(result, base_saved_as=path)}")
        return 0
    echo(f"saved {path} (+ {path.with_suffix('.json').name}): {describe_verdict(result)}")
    for w in result.warnings:
        echo(f"warning: {w}")
    echo(f"use it with: vptv segment IMAGES --model {path}")
    return 0
