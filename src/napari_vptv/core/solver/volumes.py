"""Validation of volume constraints (class area fractions).

Three modes (see :func:`napari_vptv.core.solver.reference.vptv_iterate`):

``"exact"``
    ``mean_x u_i = V_i``; the paper's constraint set U(V) (eq. 2 / 11). The fractions
    must each be in (0, 1) and sum to 1 (within ``SUM_TOLERANCE``).
``"interval"``
    ``lo_i <= mean_x u_i <= hi_i``; an extension. Needs ``0 <= lo_i <= hi_i <= 1``,
    ``sum lo <= 1 <= sum hi`` (otherwise no segmentation can satisfy all bounds).
``"none"``
    No volume constraint (EMTV-like).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

VOLUME_MODES = ("exact", "interval", "none")
#: exact fractions must sum to 1 within this tolerance (they are then renormalised).
SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class VolumeSpec:
    """A validated volume constraint for ``n_classes`` classes.

    Attributes
    ----------
    mode : "exact", "interval" or "none"
    volumes : (K,) exact fractions (mode "exact"), else None
    lower, upper : (K,) bounds (mode "interval"), else None
    """

    mode: str
    n_classes: int
    volumes: Optional[np.ndarray] = None
    lower: Optional[np.ndarray] = None
    upper: Optional[np.ndarray] = None

    def solver_kwargs(self) -> dict:
        """Keyword arguments for :func:`~napari_vptv.core.solver.reference.vptv_iterate`."""
        if self.mode == "exact":
            return {"volumes": self.volumes}
        if self.mode == "interval":
            return {"volume_bounds": (self.lower, self.upper)}
        return {}

    def residual(self, fractions) -> np.ndarray:
        """Per-class distance of achieved ``fractions`` from the constraint."""
        fractions = np.asarray(fractions, dtype=float)
        if self.mode == "exact":
            return np.abs(fractions - self.volumes)
        if self.mode == "interval":
            return np.clip(self.lower - fractions, 0, None) + np.clip(fractions - self.upper, 0, None)
        return np.zeros_like(fractions)


def _as_vector(values, name, n_classes) -> np.ndarray:
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{name} must be comma-separated numbers, got {values!r}") from None
    arr = np.asarray(values, dtype=float).ravel()
    if n_classes is not None and arr.size != n_classes:
        raise ValueError(f"{name} must give one value per class ({n_classes}), got {arr.size}: {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers, got {arr.tolist()}")
    return arr


def make_volume_spec(
    n_classes: int,
    mode: Optional[str] = None,
    volumes: Optional[Sequence[float]] = None,
    lower: Optional[Sequence[float]] = None,
    upper: Optional[Sequence[float]] = None,
) -> VolumeSpec:
    """Check a volume constraint and return a :class:`VolumeSpec`.

    ``mode=None`` picks ``"exact"`` if ``volumes`` is given, ``"interval"`` if bounds
    are given, else ``"none"``. Raises ``ValueError`` with a sentence naming the
    problem for impossible volumes: values <= 0 or > 1, wrong count, exact fractions
    not summing to 1, empty or crossing intervals.
    """
    if int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes}")
    n_classes = int(n_classes)
    if mode is None:
        mode = "exact" if volumes is not None else ("interval" if lower is not None or upper is not None else "none")
    if mode not in VOLUME_MODES:
        raise ValueError(f"volume_mode must be one of {VOLUME_MODES}, got {mode!r}")

    if mode == "none":
        return VolumeSpec("none", n_classes)

    if mode == "exact":
        if volumes is None:
            raise ValueError("volume_mode 'exact' needs `volumes` (one fraction per class)")
        v = _as_vector(volumes, "volumes", n_classes)
        if np.any(v <= 0) or np.any(v > 1):
            raise ValueError(f"volumes must be fractions in (0, 1], got {v.tolist()}")
        total = v.sum()
        if abs(total - 1) > SUM_TOLERANCE:
            raise ValueError(
                f"exact volumes must sum to 1 (they are fractions of the image), got {v.tolist()} summing to {total:.4f}"
            )
        return VolumeSpec("exact", n_classes, volumes=v / total)

    # interval
    if lower is None or upper is None:
        raise ValueError("volume_mode 'interval' needs both lower and upper bounds per class")
    lo = _as_vector(lower, "lower volume bounds", n_classes)
    hi = _as_vector(upper, "upper volume bounds", n_classes)
    if np.any(lo < 0) or np.any(hi > 1):
        raise ValueError(f"volume bounds must lie in [0, 1], got lower={lo.tolist()} upper={hi.tolist()}")
    if np.any(hi <= 0):
        raise ValueError(f"upper volume bounds must be > 0 (a class cannot be empty), got {hi.tolist()}")
    bad = np.nonzero(lo > hi)[0]
    if bad.size:
        raise ValueError(
            f"volume interval of class {int(bad[0])} is empty: lower {lo[bad[0]]:.4f} > upper {hi[bad[0]]:.4f}"
        )
    if lo.sum() > 1 + 1e-9:
        raise ValueError(f"lower volume bounds sum to {lo.sum():.4f} > 1: no segmentation can satisfy them")
    if hi.sum() < 1 - 1e-9:
        raise ValueError(f"upper volume bounds sum to {hi.sum():.4f} < 1: no segmentation can satisfy them")
    return VolumeSpec("interval", n_classes, lower=lo, upper=hi)
