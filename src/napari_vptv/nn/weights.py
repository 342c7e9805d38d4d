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
from typing import Optional, Tuple

import numpy as np

__all__ = ["MODELS_DIR", "MODEL_NAMES", "load_pretrained", "predict_wbc", "export_weights", "model_metadata"]

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
    import torch

    _check_name(name)
    d = Path(models_dir) if models_dir is not None else MODELS_DIR
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
        raise RuntimeError(f"could not load weights file '{pt}': {exc}") from exc
    return model.to(device).eval(), meta


def _cached(name: str, device: str):
    key = (name, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_pretrained(name, device=device)
        return _CACHE[key]


def _as_rgb_uint8(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) RGB (or (H, W) grey / (H, W, 4) RGBA), got shape {a.shape}")
    a = a[..., :3]
    if min(a.shape[:2]) < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating) and np.nanmax(a) <= 1.0:
        return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def predict_wbc(
    image: np.ndarray,
    *,
    method: str = "vptv-unet",
    volumes=None,
    volume_mode: Optional[str] = None,
    epsilon: Optional[float] = None,
    tv_weight: Optional[float] = None,
    num_iter: Optional[int] = None,
    edge_weight: Optional[np.ndarray] = None,
    device: str = "cpu",
) -> Tuple[np.ndarray, np.ndarray]:
    """Segment a white-blood-cell image with a shipped network (whole image, any size).

    Parameters
    ----------
    image : ndarray ``(H, W, 3)`` uint8 RGB (grey ``(H, W)`` and RGBA accepted; float
        images in [0, 1] are scaled by 255).
    method : {"vptv-unet", "unet"}
    volumes : array, optional
        ``volume_mode="exact"``: ``(3,)`` fractions (background, cytoplasm, nucleus)
        summing to 1. ``volume_mode="interval"``: ``(2, 3)`` lower / upper bounds.
        Default: the shipped priors of the training split (training-average fractions
        for exact, 2nd-98th percentiles for interval).
    volume_mode : {"exact", "interval", "none"}, optional
        Default: the shipped default (see ``model_metadata("vptv-unet")["defaults"]``).
    epsilon, tv_weight, num_iter : optional
        Layer parameters ``eps``, ``lambda``, ``T``; default: shipped values.
    edge_weight : ndarray ``(H, W)``, optional
        ``e(x)`` of the TV term (default 1).
    device : str

    Returns
    -------
    labels : ndarray ``(H, W)`` int32, 0 = background, 1 = cytoplasm, 2 = nucleus
    probabilities : ndarray ``(3, H, W)`` float32

    The volume / layer arguments are ignored for ``method="unet"``.
    """
    import torch

    from . import data as D
    from .layer import VPTVSoftmax

    name = _check_name(method)
    rgb = _as_rgb_uint8(image)
    model, meta = _cached(name, device)
    x = D.normalise(rgb[None]).to(device)
    with torch.inference_mode():
        logits = model.logits(x)
        if name == "unet":
            probs = torch.softmax(logits, dim=1)
        else:
            dflt = meta["defaults"]
            mode = volume_mode or dflt["volume_mode"]
            if mode not in ("exact", "interval", "none"):
                raise ValueError(f"volume_mode must be 'exact', 'interval' or 'none', got {mode!r}")
            eps = float(dflt["epsilon"] if epsilon is None else epsilon)
            lam = float(dflt["tv_weight"] if tv_weight is None else tv_weight)
            T = int(dflt["num_iter"] if num_iter is None else num_iter)
            layer = VPTVSoftmax(epsilon=eps, tv_weight=lam, num_iter=T, volume_mode=mode)
            kw = {}
            if mode == "exact":
                v = np.asarray(meta["volume_priors"]["mean"] if volumes is None else volumes, dtype=np.float64)
                if v.shape != (3,) or np.any(v <= 0) or abs(v.sum() - 1) > 1e-3:
                    raise ValueError(f"volumes must be 3 positive fractions summing to 1, got {v.tolist()}")
                kw["volumes"] = torch.as_tensor(v, dtype=x.dtype, device=device)
            elif mode == "interval":
                b = np.asarray(
                    [meta["volume_priors"]["p02"], meta["volume_priors"]["p98"]] if volumes is None else volumes,
                    dtype=np.float64,
                )
                if b.shape != (2, 3) or np.any(b[0] > b[1]) or np.any(b < 0) or np.any(b > 1):
                    raise ValueError(f"volumes for interval mode must be (2, 3) bounds lo <= hi in [0, 1], got {b.tolist()}")
                kw["volume_bounds"] = tuple(torch.as_tensor(r, dtype=x.dtype, device=device) for r in b)
            ew = None
            if edge_weight is not None:
                ew = torch.as_tensor(np.asarray(edge_weight), dtype=x.dtype, device=device)
                if ew.shape != tuple(rgb.shape[:2]):
                    raise ValueError(f"edge_weight must have shape {rgb.shape[:2]}, got {tuple(ew.shape)}")
            probs = layer(logits, edge_weight=ew, **kw)
    p = probs[0].float().cpu().numpy()
    return p.argmax(0).astype(np.int32), p
