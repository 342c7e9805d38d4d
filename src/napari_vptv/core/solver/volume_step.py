"""The volume dual of the VPTV u-subproblem without TV, by safeguarded Newton steps.

For fixed costs ``c`` the u-subproblem (eq. 19 without the TV term) has the solution
``u = softmax((-c + f) / eps)`` (eq. 26) where the volume dual ``f`` makes the class
fractions ``m_i(f) = mean_x u_i`` meet the constraint. The stabilised Sinkhorn
update (eq. 25) moves ``f_i`` by ``eps (log V_i - log m_i)``, i.e. with slope
``1/eps``; when ``u`` is nearly binary the true slope ``d log m_i / d f_i`` is far
smaller, so Sinkhorn needs hundreds of steps per ``eps`` (thousands of softmax
passes for the eps-scaled rounding of a WBC image).

Here each class's multiplier is solved exactly given the others (block
coordinate ascent on the concave dual): with ``r(x) = (-c_i + eps logsumexp_{j != i}
((-c_j + f_j)/eps)) / eps``, ``m_i = mean_x sigmoid(r(x) + f_i/eps)`` is monotone in
``f_i``, so a Newton step on it, safeguarded by a bracket and bisection, finds the
root in a few one-channel passes.

Interval constraints ``lo_i <= m_i <= hi_i`` use the same sign convention as
:func:`napari_vptv.core.solver.reference.vptv_iterate` (``f = f_lower - f_upper``, each
multiplier non-negative): a class whose fraction at ``f_i = 0`` lies inside its
interval keeps ``f_i = 0``; otherwise ``f_i`` puts it on the violated bound.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["solve_volume_dual"]


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = torch.clamp(p, 1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


def _solve_class(
    r: torch.Tensor, s0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, mass_tol: float, max_steps: int
) -> torch.Tensor:
    """Scaled multiplier ``s = f_i / eps`` per sample, ``r`` of shape ``(N, P)``.

    Returns ``s`` with ``mean sigmoid(r + s)`` in ``[lo, hi]`` (to ``mass_tol``), and
    ``s = 0`` when ``s = 0`` already satisfies the interval.
    """
    mass0 = torch.sigmoid(r).mean(dim=1)
    target = torch.where(mass0 < lo, lo, torch.where(mass0 > hi, hi, mass0))
    free = (mass0 >= lo) & (mass0 <= hi)
    # mean sigmoid(r + s) lies between sigmoid(min r + s) and sigmoid(max r + s):
    # the root is inside [logit(t) - max r, logit(t) - min r].
    lt = _logit(target)
    left, right = lt - r.amax(dim=1), lt - r.amin(dim=1)
    s = torch.clamp(s0, left, right)
    for _ in range(max_steps):
        sig = torch.sigmoid(r + s[:, None])
        h = sig.mean(dim=1) - target
        if bool((free | (h.abs() <= mass_tol)).all()):
            break
        slope = (sig * (1 - sig)).mean(dim=1)
        left = torch.where(h < 0, s, left)
        right = torch.where(h > 0, s, right)
        newton = s - h / torch.clamp(slope, min=1e-30)
        inside = (newton > left) & (newton < right) & (slope > 1e-12)
        s = torch.where(inside, newton, 0.5 * (left + right))
    return torch.where(free, torch.zeros_like(s), s)


def _kkt_residual(mass, lo, hi, s):
    """Violation of ``lo <= mass <= hi`` plus, for a non-zero multiplier ``s``, the
    distance of ``mass`` from the bound it must sit on (complementary slackness)."""
    residual = torch.clamp(lo - mass, min=0) + torch.clamp(mass - hi, min=0)
    return residual + torch.where(
        s < 0, torch.clamp(hi - mass, min=0), torch.where(s > 0, torch.clamp(mass - lo, min=0), torch.zeros_like(mass))
    )


def solve_volume_dual(
    cost: torch.Tensor,
    epsilon: float,
    *,
    volumes=None,
    volume_bounds=None,
    f: Optional[torch.Tensor] = None,
    volume_tol: float = 1e-4,
    max_sweeps: int = 50,
    max_newton: int = 60,
    patience: int = 3,
):
    """Volume dual ``f`` and ``u = softmax((-c + f)/eps)`` for fixed costs (no TV).

    Parameters
    ----------
    cost : tensor ``(N, K, *spatial)``
    epsilon : float
        ``eps`` of eq. 11.
    volumes : ``(K,)`` or ``(N, K)``, optional
        Exact fractions ``V_i``.
    volume_bounds : pair ``(lower, upper)``, optional
        Interval fractions.
    f : tensor ``(N, K)``, optional
        Warm start (e.g. from a larger ``eps``).
    volume_tol : float
        Stop when every class fraction is within ``volume_tol`` of its target /
        interval, and of its bound where the multiplier is non-zero (KKT).
    max_sweeps, max_newton : int
        Caps on the sweeps over the classes and the safeguarded Newton steps per
        class (bounded work per call; no unbounded inner loop).
    patience : int
        Stop when the largest residual has not fallen below 0.9x its best value
        for this many sweeps, and return the best iterate. Where large regions of
        ``u`` are exactly one-hot their costs tie, the class fractions move in jumps
        and the duals drift apart sweep after sweep without meeting the interval
        (WBC image 027: 50 sweeps at each of the rounding's 6 eps, 95 % of a
        7.8 s call). 0 = no such stop.

    Returns
    -------
    (u, f, n_sweeps) -- ``n_sweeps = 0`` when the warm start already meets the
    constraint (one softmax pass).
    """
    if (volumes is None) == (volume_bounds is None):
        raise ValueError("give exactly one of `volumes` or `volume_bounds`")
    n, k = cost.shape[:2]
    dt, dev = cost.dtype, cost.device

    def batch(v):
        v = torch.as_tensor(v, dtype=dt, device=dev)
        return v.unsqueeze(0).expand(n, -1) if v.ndim == 1 else v

    if volumes is not None:
        lo = hi = batch(volumes)
    else:
        lo, hi = batch(volume_bounds[0]), batch(volume_bounds[1])
    logits = (-cost / epsilon).reshape(n, k, -1)
    s = torch.zeros((n, k), dtype=dt, device=dev) if f is None else (f / epsilon).clone()
    others = torch.ones(k, dtype=torch.bool)
    sweep = best_sweep = 0
    best = None  # (largest residual, u, s) of the best sweep so far
    while True:
        u = torch.softmax(logits + s[:, :, None], dim=1)
        worst = float(_kkt_residual(u.mean(dim=2), lo, hi, s).amax())
        if sweep == max_sweeps or worst < volume_tol:
            return u.reshape(cost.shape), s * epsilon, sweep
        if best is None or worst < 0.9 * best[0]:
            best, best_sweep = (worst, u, s.clone()), sweep
        elif patience and sweep - best_sweep >= patience:
            return best[1].reshape(cost.shape), best[2] * epsilon, sweep
        sweep += 1
        for i in range(k):
            others[:] = True
            others[i] = False
            rest = torch.logsumexp(logits[:, others] + s[:, others, None], dim=1)
            s[:, i] = _solve_class(logits[:, i] - rest, s[:, i], lo[:, i], hi[:, i], 0.25 * volume_tol, max_newton)
