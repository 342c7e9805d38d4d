"""The user's own (fine-tuned) models: where they live and how a name finds one.

A user model is ``NAME.pt`` + ``NAME.json`` (written by
:func:`napari_vptv.nn.finetune.save_finetuned`) in the user's model folder,
``platformdirs.user_data_dir("napari-vptv") / "models"``, or the folder named by the
environment variable ``NAPARI_VPTV_MODELS_DIR``. Everywhere a model is asked for
(``--model`` of the CLI, the widgets, :class:`~napari_vptv.options.SegmentOptions`
through :func:`resolve_model`) a shipped name, a user model's name or the path of a
``.pt`` file is accepted. No torch import here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List

__all__ = [
    "MODELS_DIR_ENV",
    "user_models_dir",
    "list_user_models",
    "user_model_path",
    "resolve_model",
    "check_model_name",
    "model_and_method",
    "network_choices",
]

#: Environment variable overriding the user's model folder (tests, shared lab folders).
MODELS_DIR_ENV = "NAPARI_VPTV_MODELS_DIR"
SHIPPED = ("vptv-unet", "unet")
SHIPPED_LABELS = {"vptv-unet": "VPTVU-net generalist (vptv-unet)", "unet": "U-net generalist (unet)"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def user_models_dir() -> Path:
    """``$NAPARI_VPTV_MODELS_DIR`` or ``<user data dir of napari-vptv>/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-vptv")) / "models"


def check_model_name(name: str) -> str:
    """A model name: letters, digits, ``. _ -``, not a shipped name. Raises ``ValueError``."""
    name = str(name).strip()
    if name.endswith(".pt"):
        name = name[:-3]
    if not _NAME.match(name) or name.startswith("."):
        raise ValueError(
            f"model name {name!r} must be 1-80 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    if name in SHIPPED:
        raise ValueError(f"model name {name!r} is a shipped model's; choose another")
    return name


def user_model_path(name: str) -> Path:
    """``<user model folder>/NAME.pt`` (the file may not exist yet)."""
    return user_models_dir() / f"{check_model_name(name)}.pt"


def list_user_models() -> List[str]:
    """Names of the complete models (``.pt`` with its ``.json``) in the user's folder, sorted."""
    d = user_models_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.pt") if p.with_suffix(".json").is_file() and not p.name.startswith("."))


def resolve_model(name_or_path) -> str:
    """A shipped name unchanged; a user model's name -> its ``.pt`` path; an existing
    ``.pt`` file or training-run folder -> its path.

    Raises
    ------
    ValueError
        Nothing of that name or path (the message lists the user's models).
    """
    text = str(name_or_path).strip()
    if text in SHIPPED or not text:
        return text
    p = Path(text).expanduser()
    if p.suffix == ".pt" and p.is_file():
        return str(p)
    if p.is_dir() and (p / "train_meta.json").is_file():
        return str(p)
    if _NAME.match(text) and not text.endswith(".pt") and text in list_user_models():
        return str(user_models_dir() / f"{text}.pt")
    mine = list_user_models()
    raise ValueError(
        f"model {text!r} is neither a shipped model {SHIPPED}, a model in '{user_models_dir()}' "
        f"({', '.join(mine) if mine else 'none yet'}), nor an existing .pt file or training-run folder"
    )


def network_choices() -> List[tuple]:
    """``(label, model name)`` of the shipped networks, then of the user's models: the
    choices of a widget's model list (pass the name to :func:`model_and_method`)."""
    return [(SHIPPED_LABELS[n], n) for n in SHIPPED] + [(f"{n} (my model)", n) for n in list_user_models()]


def model_and_method(name_or_path):
    """``(model, method)`` for :class:`~napari_vptv.options.SegmentOptions`: the resolved
    model and the network method of its architecture (from its metadata file).

    Raises
    ------
    ValueError
        Unknown model, or a metadata file that is missing / unreadable / names no network.
    """
    model = resolve_model(name_or_path)
    if model in SHIPPED:
        return model, model
    p = Path(model)
    meta_path = p / "train_meta.json" if p.is_dir() else p.with_suffix(".json")
    try:
        arch = json.loads(meta_path.read_text()).get("arch")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"model '{model}' has no readable metadata file '{meta_path}': {exc}") from None
    if arch not in SHIPPED:
        raise ValueError(f"'{meta_path}' does not describe a napari-vptv network (arch {arch!r})")
    return model, arch
