"""Allocation-free no-grad VPTV iteration (same numbers as the differentiable path).

:func:`napari_vptv.core.vptv.vptv_iterate` dispatches here when no gradient is
needed. Every step of Algorithm 1 is written as in-place operations on buffers
allocated once per call:

* the logits ``(-c - div q + f) / eps`` are built in one buffer, the divergence
  added with two slice updates per axis (``div q = q[i] - q[i-1]``, Chambolle's
  convention), no ``pad`` / ``stack`` / ``diff``;
* the softmax (eq. 26) is done in the log domain in place: subtract the class
  maximum, ``exp_``, divide by the class sum;
* the Sinkhorn / interval update of ``f`` (eq. 25) is an ``(N, K)`` computation,
  followed by a per-class reweighting of ``u`` in place;
* the Chambolle step (eq. 18) subtracts ``tau`` times the forward differences of
  ``u`` slice by slice from ``q`` and projects ``q`` in place.

The trajectory is the one of the differentiable path up to float rounding (the
operations are the same, only their order within a sum can differ), which
``tests/test_solver.py`` checks on random 2-D and 3-D problems.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["FastVPTV"]


class FastVPTV:
    """Preallocated buffers and in-place steps of one :func:`vptv_iterate` call.

    Parameters
    ----------
    cost : tensor ``(N, K, *spatial)``
    q : tensor ``(N, K, D, *spatial)`` or None; copied (the caller's warm start is
        never modified).
    bound : float or tensor ``(N or 1, 1, *spatial)`` or None
        ``lambda e(x)``, the radius of the dual set Q (None: no TV).
    epsilon, tau : float
    """

    def __init__(self, cost: torch.Tensor, q: Optional[torch.Tensor], bound, epsilon: float, tau: float):
        self.n, self.k = cost.shape[:2]
        self.n_spatial = cost.ndim - 2
        self.spatial_dims = tuple(range(2, cost.ndim))
        self.epsilon, self.tau = float(epsilon), float(tau)
        self.bound = bound
        self.neg_cost = torch.neg(cost)
        self.u = torch.empty_like(cost)
        self.u_prev = torch.empty_like(cost)
        self.work = torch.empty_like(cost)  # |q| in the projection, u - u_prev in the stop test
        self.class_max = cost.new_empty((self.n, 1) + tuple(cost.shape[2:]))
        self.q = None
        if bound is not None:
            self.q = q.clone() if q is not None else cost.new_zeros((self.n, self.k, self.n_spatial) + tuple(cost.shape[2:]))

    def set_cost(self, cost: torch.Tensor) -> None:
        torch.neg(cost, out=self.neg_cost)

    def _slices(self, axis: int, length: int):
        """``(head, tail)`` index tuples for ``x[..., 0:n-1, ...]`` / ``x[..., 1:n, ...]``
        along spatial ``axis`` of a ``(N, K, *spatial)`` tensor."""
        pre = (slice(None),) * (2 + axis)
        return pre + (slice(0, length - 1),), pre + (slice(1, length),)

    def probabilities(self, f: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """``out = softmax((-c - div q + f) / eps)`` over the class axis (eq. 26)."""
        out.copy_(self.neg_cost)
        if self.q is not None:
            # -div q, axis by axis: div_d q = q_d[i] - q_d[i-1] with q_d[-1] = q_d[n-1] = 0
            for d in range(self.n_spatial):
                length = out.shape[2 + d]
                head, tail = self._slices(d, length)
                q_head = self.q[:, :, d][head]
                out[head].sub_(q_head)
                out[tail].add_(q_head)
        if f is not None:
            out.add_(f.reshape(f.shape + (1,) * self.n_spatial))
        out.div_(self.epsilon)
        torch.amax(out, dim=1, keepdim=True, out=self.class_max)
        out.sub_(self.class_max).exp_()
        torch.sum(out, dim=1, keepdim=True, out=self.class_max)
        return out.div_(self.class_max)

    def reweight(self, u: torch.Tensor, log_w: torch.Tensor) -> None:
        """``u <- u * exp(log_w) / sum_i (u_i * exp(log_w_i))`` (new ``f``, no second exp pass)."""
        w = torch.exp(log_w - log_w.amax(dim=1, keepdim=True))
        u.mul_(w.reshape(w.shape + (1,) * self.n_spatial))
        torch.sum(u, dim=1, keepdim=True, out=self.class_max)
        u.div_(self.class_max)

    def dual_step(self, u: torch.Tensor) -> None:
        """``q <- Proj_Q(q - tau grad u)`` (eq. 18), in place."""
        q, tau, norm = self.q, self.tau, self.work
        for d in range(self.n_spatial):
            head, tail = self._slices(d, u.shape[2 + d])
            q_head = q[:, :, d][head]
            # q - tau (u[i+1] - u[i]); the last forward difference is 0 (Neumann)
            q_head.sub_(u[tail], alpha=tau).add_(u[head], alpha=tau)
        torch.mul(q[:, :, 0], q[:, :, 0], out=norm)
        for d in range(1, self.n_spatial):
            norm.addcmul_(q[:, :, d], q[:, :, d])
        # scale = min(bound / max(|q|, 1e-12), 1)  (a zero bound gives q = 0)
        norm.sqrt_().clamp_(min=1e-12)
        if isinstance(self.bound, torch.Tensor):
            torch.div(self.bound, norm, out=norm)
        else:
            norm.reciprocal_().mul_(self.bound)
        norm.clamp_(max=1.0)
        q.mul_(norm.unsqueeze(2))

    def rms_change(self) -> torch.Tensor:
        """Per-sample root-mean-square of ``u - u_prev``, shape ``(N,)``."""
        diff = torch.sub(self.u, self.u_prev, out=self.work)
        return torch.linalg.vector_norm(diff.reshape(self.n, -1), dim=1) / (diff[0].numel() ** 0.5)

    def swap(self) -> None:
        self.u, self.u_prev = self.u_prev, self.u


def run_fast(
    solver: FastVPTV,
    *,
    volume_update: Optional[Callable],
    volume_residual: Optional[Callable],
    f_lower: torch.Tensor,
    f_upper: torch.Tensor,
    max_num_iter: int,
    tol: float,
    volume_tol: float,
    cost_update,
    update_every: int,
    callback,
):
    """The loop of Algorithm 1 on a :class:`FastVPTV`; returns
    ``(u, f_lower, f_upper, cost, n_iter, converged)`` with ``u`` a fresh tensor.

    ``callback`` receives a work buffer as ``u``: valid during the call only.
    """
    cost = None
    eps = solver.epsilon
    converged = torch.zeros(solver.n, dtype=torch.bool, device=solver.u.device)
    have_prev = False
    it = 0
    for it in range(1, max_num_iter + 1):
        if cost_update is not None and have_prev and (it - 1) % update_every == 0:
            cost = cost_update(solver.u_prev)
            solver.set_cost(cost)
        f = f_lower - f_upper
        u = solver.probabilities(f, solver.u)
        if volume_update is not None:
            mass = u.mean(dim=solver.spatial_dims)
            f_lower, f_upper = volume_update(f_lower, f_upper, torch.log(torch.clamp(mass, min=1e-30)))
            solver.reweight(u, (f_lower - f_upper - f) / eps)
        if solver.q is not None:
            solver.dual_step(u)
        if callback is not None:
            callback(it, u)
        if have_prev and tol > 0:
            converged = solver.rms_change() < tol
            if volume_residual is not None:
                converged = converged & (volume_residual(u.mean(dim=solver.spatial_dims)).amax(dim=1) < volume_tol)
            if bool(converged.all()):
                break
        solver.swap()
        have_prev = True
    f = f_lower - f_upper
    u = solver.probabilities(f, torch.empty_like(solver.u))
    return u, f_lower, f_upper, cost, it, converged
