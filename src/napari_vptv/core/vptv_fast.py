"""Allocation-free no-grad VPTV iteration (same numbers as the differentiable path).

:func:`napari_vptv.core.vptv.vptv_iterate` dispatches here when no gradient is
needed. Every step of Algorithm 1 is written as fused in-place operations on
buffers allocated once per call, so one iteration is about 20 element-wise
kernels (2-D, one array pass each):

* the logits ``(-c - div q + f) / eps`` are built in one buffer: ``-c / eps`` is
  precomputed, ``f / eps`` is added in the same kernel that copies it, and the
  divergence is added with two slice updates per axis (``div q = q[i] - q[i-1]``,
  Chambolle's convention) whose scale rides in the ``alpha`` / ``value`` argument,
  no ``pad`` / ``stack`` / ``diff``;
* the softmax (eq. 26) is torch's fused kernel writing into a preallocated buffer;
* the Sinkhorn / interval update of ``f`` (eq. 25) is an ``(N, K)`` computation,
  followed by a per-class reweighting of ``u`` in place (class sums by slice adds);
* the dual variable is kept normalised, ``p = q / (lambda e)`` with ``|p| <= 1``,
  so the Chambolle step (eq. 18) is two scaled slice updates per axis and the
  projection is ``p <- p / max(|p|, 1)``: squared norm, ``clamp_``, ``sqrt_``,
  one divide (``q`` is returned as ``lambda e p``);
* the stopping test (a reduction and, on a GPU, a host synchronisation) runs only
  every ``check_every`` iterations.

The trajectory is the one of the differentiable path up to float rounding (the
operations are the same, only their order and the scaling of ``q`` differ), which
``tests/test_solver.py`` checks on random 2-D and 3-D problems.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["FastVPTV", "run_fast"]

#: smallest ``lambda e(x)`` used to normalise ``q``: a zero bound gives ``q ~ 0``
MIN_BOUND = 1e-12


class FastVPTV:
    """Preallocated buffers and in-place steps of one :func:`vptv_iterate` call.

    Parameters
    ----------
    cost : tensor ``(N, K, *spatial)``
    q : tensor ``(N, K, D, *spatial)`` or None; copied (the caller's warm start is
        never modified).
    bound : float or tensor ``(N or 1, 1, *spatial)`` or None
        ``lambda e``, the radius of the dual set Q (None: no TV).
    epsilon, tau : float
    """

    def __init__(self, cost: torch.Tensor, q: Optional[torch.Tensor], bound, epsilon: float, tau: float):
        self.n, self.k = cost.shape[:2]
        self.n_spatial = cost.ndim - 2
        self.spatial_dims = tuple(range(2, cost.ndim))
        self.epsilon, self.tau = float(epsilon), float(tau)
        self.neg_cost = torch.mul(cost, -1.0 / self.epsilon)  # -c / eps
        self.logits = torch.empty_like(cost)
        self.u = torch.empty_like(cost)
        self.u_prev = torch.empty_like(cost)
        plane = (self.n, 1) + tuple(cost.shape[2:])
        self.class_sum = cost.new_empty(plane)
        self.bound = self.inv_bound = self.p = None
        if bound is None:
            return
        self.scalar_bound = not isinstance(bound, torch.Tensor)
        self.norm = torch.empty_like(cost)
        shape = (self.n, self.k, self.n_spatial) + tuple(cost.shape[2:])
        if self.scalar_bound:
            self.bound = max(float(bound), MIN_BOUND)
        else:
            self.bound = torch.clamp(bound, min=MIN_BOUND).expand(plane).contiguous()
        if q is None:
            self.p = cost.new_zeros(shape)
        elif self.scalar_bound:
            self.p = q / self.bound
        else:
            self.p = q / self.bound.unsqueeze(2)

    @property
    def q(self) -> Optional[torch.Tensor]:
        """The TV dual ``q = lambda e p`` (a new tensor)."""
        if self.p is None:
            return None
        return self.p * (self.bound if self.scalar_bound else self.bound.unsqueeze(2))

    def set_cost(self, cost: torch.Tensor) -> None:
        torch.mul(cost, -1.0 / self.epsilon, out=self.neg_cost)

    def _slices(self, axis: int, length: int):
        """``(head, tail)`` index tuples for ``x[..., 0:n-1, ...]`` / ``x[..., 1:n, ...]``
        along spatial ``axis`` of a ``(N, K, *spatial)`` tensor."""
        pre = (slice(None),) * (2 + axis)
        return pre + (slice(0, length - 1),), pre + (slice(1, length),)

    def probabilities(self, f: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """``out = softmax((-c - div q + f) / eps)`` over the class axis (eq. 26)."""
        z = self.logits
        if f is not None:
            torch.add(self.neg_cost, f.reshape(f.shape + (1,) * self.n_spatial), alpha=1.0 / self.epsilon, out=z)
        else:
            z.copy_(self.neg_cost)
        if self.p is not None:
            # -div q / eps, axis by axis: div_d q = q_d[i] - q_d[i-1], q_d[-1] = q_d[n-1] = 0
            for d in range(self.n_spatial):
                head, tail = self._slices(d, z.shape[2 + d])
                p_head = self.p[:, :, d][head]
                if self.scalar_bound:
                    scale = self.bound / self.epsilon
                    z[head].sub_(p_head, alpha=scale)
                    z[tail].add_(p_head, alpha=scale)
                else:
                    b_head = self.bound[head]
                    z[head].addcmul_(p_head, b_head, value=-1.0 / self.epsilon)
                    z[tail].addcmul_(p_head, b_head, value=1.0 / self.epsilon)
        return torch.softmax(z, dim=1, out=out)

    def _sum_classes(self, u: torch.Tensor) -> torch.Tensor:
        """``sum_i u_i`` into ``class_sum`` by slice adds (cheaper than a strided
        reduction over a short class axis)."""
        s = self.class_sum
        if self.k == 1:
            return s.copy_(u)
        torch.add(u[:, 0:1], u[:, 1:2], out=s)
        for i in range(2, self.k):
            s.add_(u[:, i:i + 1])
        return s

    def reweight(self, u: torch.Tensor, log_w: torch.Tensor) -> None:
        """``u <- u * exp(log_w) / sum_i (u_i * exp(log_w_i))`` (new ``f``, no second exp pass)."""
        w = torch.exp(log_w - log_w.amax(dim=1, keepdim=True))
        u.mul_(w.reshape(w.shape + (1,) * self.n_spatial))
        u.div_(self._sum_classes(u))

    def dual_step(self, u: torch.Tensor) -> None:
        """``q <- Proj_Q(q - tau grad u)`` (eq. 18) on ``p = q / (lambda e)``, in place."""
        p, tau, norm = self.p, self.tau, self.norm
        for d in range(self.n_spatial):
            head, tail = self._slices(d, u.shape[2 + d])
            p_head = p[:, :, d][head]
            # p - tau (u[i+1] - u[i]) / (lambda e); the last forward difference is 0 (Neumann)
            if self.scalar_bound:
                step = tau / self.bound
                p_head.sub_(u[tail], alpha=step).add_(u[head], alpha=step)
            else:
                b_head = self.bound[head]
                p_head.addcdiv_(u[tail], b_head, value=-tau).addcdiv_(u[head], b_head, value=tau)
        torch.mul(p[:, :, 0], p[:, :, 0], out=norm)
        for d in range(1, self.n_spatial):
            norm.addcmul_(p[:, :, d], p[:, :, d])
        # Proj: p / max(|p|, 1) (exactly p where |p| <= 1; sqrt + div is ~2x faster
        # than rsqrt + mul on the CPU)
        norm.clamp_(min=1.0).sqrt_()
        p.div_(norm.unsqueeze(2))

    def rms_change(self) -> torch.Tensor:
        """Per-sample root-mean-square of ``u - u_prev``, shape ``(N,)``."""
        diff = torch.sub(self.u, self.u_prev, out=self.logits)
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
    check_every: int,
    callback,
):
    """The loop of Algorithm 1 on a :class:`FastVPTV`; returns
    ``(u, f_lower, f_upper, cost, n_iter, converged)`` with ``u`` a fresh tensor.

    The stopping test runs at iterations ``2, 2 + check_every, ...`` (the only host
    synchronisation of the loop). ``callback`` receives a work buffer as ``u``:
    valid during the call only.
    """
    cost = None
    eps = solver.epsilon
    converged = torch.zeros(solver.n, dtype=torch.bool, device=solver.u.device)
    it = 0
    for it in range(1, max_num_iter + 1):
        if cost_update is not None and it > 1 and (it - 1) % update_every == 0:
            cost = cost_update(solver.u_prev)
            solver.set_cost(cost)
        f = f_lower - f_upper
        u = solver.probabilities(f, solver.u)
        if volume_update is not None:
            mass = u.mean(dim=solver.spatial_dims)
            f_lower, f_upper = volume_update(f_lower, f_upper, torch.log(torch.clamp(mass, min=1e-30)))
            solver.reweight(u, (f_lower - f_upper - f) / eps)
        if solver.p is not None:
            solver.dual_step(u)
        if callback is not None:
            callback(it, u)
        if it > 1 and tol > 0 and (it - 2) % check_every == 0:
            converged = solver.rms_change() < tol
            if volume_residual is not None:
                converged = converged & (volume_residual(u.mean(dim=solver.spatial_dims)).amax(dim=1) < volume_tol)
            if bool(converged.all()):
                break
        solver.swap()
    f = f_lower - f_upper
    u = solver.probabilities(f, torch.empty_like(solver.u))
    return u, f_lower, f_upper, cost, it, converged
