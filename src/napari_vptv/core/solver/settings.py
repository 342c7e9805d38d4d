"""The settings one run of Algorithm 1 passes to whichever loop runs it.

:class:`VolumeRule` is the volume constraint (exact fractions or an interval) with its
stabilised Sinkhorn step (eq. 25) and the residual of the stopping test;
:class:`LoopSettings` holds it with the iteration limits, the stopping test and the
hooks. :func:`napari_vptv.core.solver.reference.vptv_iterate` builds both once and
hands the same objects to the reference, torch or numba loop
(:mod:`napari_vptv.core.solver.dispatch`), so the three loops read one set of
settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["VolumeRule", "LoopSettings"]


def _as_batch_volumes(v, cost, name):
    v = torch.as_tensor(v, dtype=cost.dtype, device=cost.device)
    if v.ndim == 1:
        v = v.unsqueeze(0).expand(cost.shape[0], -1)
    if v.shape != cost.shape[:2]:
        raise ValueError(f"{name} must have shape (K,) or (N, K) = {tuple(cost.shape[:2])}, got {tuple(v.shape)}")
    return v


@dataclass(frozen=True, eq=False)
class VolumeRule:
    """The volume constraint of one solve and its dual step.

    Attributes
    ----------
    exact : bool
        ``True``: class fractions driven to ``lower`` (= ``upper``); ``False``: kept in
        the interval ``[lower, upper]``.
    epsilon : float
        The entropic regularisation (the step of the dual update).
    log_lower, log_upper : tensor ``(N, K)``
        Logs of the bounds; a bound that never binds (lower 0, upper 1) is ``-inf`` /
        ``+inf``, so its clipped step is 0 without a mask.
    lower, upper : tensor ``(N, K)``
        The bounds (both the target for exact volumes).
    """

    exact: bool
    epsilon: float
    log_lower: torch.Tensor
    log_upper: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    @classmethod
    def of(cls, volumes, volume_bounds, cost: torch.Tensor, epsilon: float) -> Optional["VolumeRule"]:
        """The rule of ``volumes`` (exact) or ``volume_bounds`` (interval) on the shape
        and dtype of ``cost``; None when neither is given (no volume term)."""
        if volumes is not None:
            log_v = torch.log(_as_batch_volumes(volumes, cost, "volumes"))
            target = torch.exp(log_v)
            return cls(True, epsilon, log_v, log_v, target, target)
        if volume_bounds is None:
            return None
        lo = _as_batch_volumes(volume_bounds[0], cost, "volume_bounds[0]")
        hi = _as_batch_volumes(volume_bounds[1], cost, "volume_bounds[1]")
        inf = torch.tensor(float("inf"), dtype=lo.dtype, device=lo.device)
        log_lo = torch.where(lo > 0, torch.log(torch.clamp(lo, min=1e-12)), -inf)
        log_hi = torch.where(hi < 1, torch.log(torch.clamp(hi, max=1.0)), inf)
        return cls(False, epsilon, log_lo, log_hi, lo, hi)

    def update(self, f_lower: torch.Tensor, f_upper: torch.Tensor, log_mass: torch.Tensor):
        """The stabilised Sinkhorn step (eq. 25) in closed form, one per outer
        iteration; for intervals one clipped step per bound. Returns
        ``(f_lower, f_upper)``."""
        eps = self.epsilon
        if self.exact:
            return f_lower + eps * (self.log_lower - log_mass), f_upper
        f_lower = torch.clamp(f_lower + eps * (self.log_lower - log_mass), min=0.0)
        f_upper = torch.clamp(f_upper + eps * (log_mass - self.log_upper), min=0.0)
        return f_lower, f_upper

    def residual(self, mass: torch.Tensor) -> torch.Tensor:
        """The ``(N, K)`` absolute volume violation of the class fractions ``mass``."""
        if self.exact:
            return (mass - self.lower).abs()
        return torch.clamp(self.lower - mass, min=0) + torch.clamp(mass - self.upper, min=0)


@dataclass(frozen=True)
class LoopSettings:
    """Everything a loop of Algorithm 1 needs besides the problem and the duals.

    Attributes
    ----------
    volume : VolumeRule or None
        The volume constraint (None: no volume term).
    max_num_iter : int
        Iteration cap ``T``.
    tol, volume_tol : float
        Stopping test: RMS change of ``u`` below ``tol`` and every class fraction
        within ``volume_tol`` of its target / interval (``tol = 0``: run ``T`` steps).
    check_every : int
        The stopping test runs at iterations ``2, 2 + check_every, ...``.
    cost_update : callable ``u -> cost`` or None
        The similarity update (Algorithm 1 step 5), every ``update_every`` iterations.
    update_every : int
    callback : callable ``(iteration, u)`` or None
        Progress hook, after every iteration.
    """

    volume: Optional[VolumeRule]
    max_num_iter: int
    tol: float
    volume_tol: float
    check_every: int
    cost_update: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    update_every: int = 10
    callback: Optional[Callable[[int, torch.Tensor], None]] = None

    def check_at(self, it: int) -> bool:
        """Whether the stopping test runs after iteration ``it``."""
        return it > 1 and self.tol > 0 and (it - 2) % self.check_every == 0

    def updates_cost_at(self, it: int) -> bool:
        """Whether iteration ``it`` starts with a cost update."""
        return self.cost_update is not None and it > 1 and (it - 1) % self.update_every == 0
