"""Shipped pretrained WBC networks: export, verified loading, numpy-in/numpy-out prediction.

Files in ``napari_vptv/models/``: ``<name>.pt`` (a ``state_dict`` saved with
``torch.save``, loaded with ``torch.load(..., weights_only=True)``) and ``<name>.json``
(metadata: classes, input normalisation, architecture, layer parameters, volume
priors of the training split, train / validation image ids, data digest, validation
figures and the sha256 of the ``.pt`` file, which is checked before loading).
Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = [
    "MODELS_DIR",
    "MODEL_NAMES",
    "load_pretrained",
    "load_model",
    "predict_wbc",
    "export_weights",
    "model_metadata",
]

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_NAMES = ("vptv-unet", "unet")
_CACHE: dict = {}
_LOCK = threading.Lock()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {MODEL_NAMES}")
    return name


def model_metadata(name: str = "vptv-unet") -> dict:
    """The metadata JSON of a shipped model (no torch import)."""
    _check_name(name)
    path = MODELS_DIR / f"{name}.json"
    if not path.is_file():
        raise RuntimeError(f"metadata file '{path}' of pretrained model {name!r} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"metadata file '{path}' of pretrained model {name!r} is unreadable: {exc}") from exc


def export_weights(state_dict, name: str, metadata: dict, models_dir: Optional[Path] = None) -> Path:
    """Write ``<name>.pt`` and ``<name>.json`` (with the weights' sha256) into ``models_dir``."""
    import torch

    d = Path(models_dir) if models_dir is not None else MODELS_DIR
    d.mkdir(parents=True, exist_ok=True)
    pt = d / f"{name}.pt"
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    torch.save(sd, pt)
    meta = dict(metadata)
    meta["weights_file"] = pt.name
    meta["weights_sha256"] = _sha256(pt)
    (d / f"{name}.json").write_text(json.dumps(meta, indent=1))
    return pt


def _build(meta: dict):
    from .layer import build_model

    # the loaded head uses the shipped test-time defaults (volume mode, eps, lambda, T) when
    # present; the training-time head parameters stay in meta["head"]
    head = dict(meta.get("head") or {})
    head.update({k: v for k, v in (meta.get("defaults") or {}).items() if k != "selected_on"})
    head = {k: head[k] for k in ("epsilon", "tv_weight", "num_iter", "backward", "volume_mode") if k in head}
    return build_model(meta["arch"], unet_kwargs=meta["unet"], head_kwargs=head)


def load_pretrained(name: str = "vptv-unet", device: str = "cpu", models_dir: Optional[Path] = None):
    """Load a shipped network after checking the sha256 recorded in its metadata.

    Parameters
    ----------
    name : {"vptv-unet", "unet"}
    device : str
        Torch device for the returned model.
    models_dir : path, optional
        Folder holding ``<name>.pt`` / ``<name>.json`` (default: the package's ``models/``).

    Returns
    -------
    model : torch.nn.Module in eval mode (``forward(x) -> probabilities``; ``.logits(x)``)
    metadata : dict

    Raises
    ------
    RuntimeError
        If the weights or metadata file is missing, unreadable, or its sha256 does not
        match the metadata (the message names the file).
    """
    _check_name(name)
    return _load_verified(Path(models_dir) if models_dir is not None else MODELS_DIR, name, device)


def _load_verified(d: Path, name: str, device: str):
    """Load ``d/<name>.pt`` after checking it against the sha256 in ``d/<name>.json``."""
    import torch

    meta_path = d / f"{name}.json"
    if not meta_path.is_file():
        raise RuntimeError(f"metadata file '{meta_path}' of pretrained model {name!r} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"metadata file '{meta_path}' is unreadable: {exc}") from exc
    pt = d / meta.get("weights_file", f"{name}.pt")
    if not pt.is_file():
        raise RuntimeError(f"weights file '{pt}' of pretrained model {name!r} is missing")
    digest = _sha256(pt)
    if digest != meta.get("weights_sha256"):
        raise RuntimeError(
            f"weights file '{pt}' is corrupt or was modified: sha256 {digest} does not match "
            f"{meta.get('weights_sha256')} recorded in '{meta_path}'"
        )
    try:
        sd = torch.load(pt, map_location=device, weights_only=True)
        model = _build(meta)
        model.load_state_dict(sd)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(
            f"could not load weights file '{pt}' (not a napari-vptv {meta.get('arch')} "
            f"network?): {' '.join(str(exc).split())[:300]}"
        ) from exc
    return model.to(device).eval(), meta


def _load_run(run_dir: Path, device: str):
    """A training run folder (``model.pt`` + ``train_meta.json``, see :mod:`.train`)."""
    import torch

    meta_path = run_dir / "train_meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        model = _build(meta)
        model.load_state_dict(torch.load(run_dir / "model.pt", map_location=device, weights_only=True))
    except Exception as exc:  # noqa: BLE001 - re-raised with the folder name
        raise RuntimeError(
            f"could not load the training run in '{run_dir}': {' '.join(str(exc).split())[:300]}"
        ) from exc
    return model.to(device).eval(), meta


def load_model(name_or_path, device: str = "cpu"):
    """A network by shipped name (``"vptv-unet"``, ``"unet"``), model file
    (``NAME.pt`` with its ``NAME.json`` beside it, as :func:`export_weights` writes)
    or training-run folder. Returns ``(model, metadata)``; raises ``RuntimeError`` /
    ``ValueError`` naming the file when it is missing, corrupt or foreign."""
    if str(name_or_path) in MODEL_NAMES:
        return load_pretrained(str(name_or_path), device=device)
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "train_meta.json").is_file():
        return _load_run(p, device)
    if p.suffix == ".pt" and p.is_file():
        return _load_verified(p.parent, p.stem, device)
    raise ValueError(
        f"model {str(name_or_path)!r} is neither a shipped model {MODEL_NAMES}, "
        "a .pt file with its .json beside it, nor a training-run folder"
    )


def _cached(name: str, device: str):
    p = Path(name)
    # a user's model file may be rewritten (fine-tuned again): its mtime is part of the key
    stamp = p.stat().st_mtime_ns if name not in MODEL_NAMES and p.exists() else None
    key = (name, str(device), stamp)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_model(name, device=device)
        return _CACHE[key]


def predict_wbc(
    image: np.ndarray,
    *,
    method: str = "vptv-unet",
    diameter: Optional[float] = None,
    prior: Optional[str] = None,
    volumes=None,
    volume_mode: Optional[str] = None,
    epsilon: Optional[float] = None,
    tv_weight: Optional[float] = None,
    num_iter: Optional[int] = None,
    edge_weight: Optional[np.ndarray] = None,
    device: str = "cpu",
    details: bool = False,
    require_nucleus: bool = True,
    augment=2,
):
    """Segment a white-blood-cell image with a shipped network (whole image, any size).

    Parameters
    ----------
    image : ndarray ``(H, W, 3)`` uint8 RGB (grey ``(H, W)`` and RGBA accepted; float
        images in [0, 1] are scaled by 255).
    method : str
        A shipped network ("vptv-unet", "unet"), a model file or a training-run folder
        (see :func:`load_model`).
    diameter : float, optional
        Typical white-cell diameter in pixels; 0 / None = estimate from the image.
    prior : str, optional
        Volume prior of the VPTV layer: "self" (default), "pooled",
        "training-average", "source:NAME" or "none" (see :mod:`napari_vptv.nn.predict`).
    volumes : array, optional
        Explicit ``(3,)`` exact fractions (background, cytoplasm, nucleus) or ``(2, 3)``
        lower / upper bounds (``volume_mode="interval"``); overrides ``prior``.
    volume_mode : {"exact", "interval", "none"}, optional
        How ``volumes`` are read; "none" turns the volume term off.
    epsilon, tv_weight, num_iter : optional
        Layer parameters ``eps``, ``lambda``, ``T``; default: shipped values.
    edge_weight : ignored (kept for compatibility; the layer runs with ``e = 1``).
    device : str
    details : bool
        Return the :class:`~napari_vptv.nn.predict.NetworkPrediction` (diameter,
        scale, prior) instead of the pair.
    require_nucleus : bool
        Cell regions without a nucleus become background (see
        :func:`~napari_vptv.core.wbc.cell_rules.drop_cells_without_nucleus`).
    augment : {1, 2, 8} or bool
        Test-time augmentation: transforms averaged (2: the image and its mirror,
        default; 8 / True: all flips and quarter turns; 1 / False: none).

    Returns
    -------
    labels : ndarray ``(H, W)`` int32, 0 = background, 1 = cytoplasm, 2 = nucleus
    probabilities : ndarray ``(3, H, W)`` float32

    The volume / layer arguments are ignored for ``method="unet"``.
    """
    from .predict import predict_cells

    model, meta = _cached(str(method), device)
    pred = predict_cells(
        model,
        meta,
        image,
        diameter=diameter,
        prior=prior,
        volumes=volumes,
        volume_mode=volume_mode,
        epsilon=epsilon,
        tv_weight=tv_weight,
        num_iter=num_iter,
        device=device,
        require_nucleus=require_nucleus,
        augment=augment,
    )
    return pred if details else (pred.labels, pred.probabilities)
