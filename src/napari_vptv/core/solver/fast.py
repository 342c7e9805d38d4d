"""The torch no-grad VPTV loop (backend ``"torch"``): allocation-free, in place.

:func:`napari_vptv.core.solver.reference.vptv_iterate` runs it where
:func:`napari_vptv.core.solver.dispatch.choose_backend` picks ``"torch"`` (no
gradient needed and the numba kernels do not apply: GPUs, float64,
machines without numba). Every step of Algorithm 1 is written as fused in-place
operations on buffers allocated once per call, so one iteration is about 20
element-wise kernels (2-D, one array pass each):

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

The trajectory is the one of the reference loop up to float rounding (the
operations are the same, only their order and the scaling of ``q`` differ), which
``tests/test_solver.py`` checks on random 2-D and 3-D problems. :class:`FastVPTV`
(the problem, its buffers and steps) also carries the problem to the numba loop
(:mod:`napari_vptv.core.solver.numba_loop`).
"""

from __future__ import annotations

from typing import Optional

import torch

from .settings import LoopSettings

__all__ = ["FastVPTV", "run_torch"]

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
        self.cost, self.q_init, self.q_final = cost, q, None
        self._neg_cost = self._p = None  # built on first use: the numba path builds its own layout
        self.logits = torch.empty_like(cost)
        self.u = torch.empty_like(cost)
        self.u_prev = torch.empty_like(cost)
        plane = (self.n, 1) + tuple(cost.shape[2:])
        self.class_sum = cost.new_empty(plane)
        self.bound = None
        self.has_tv = bound is not None
        if bound is None:
            return
        self.scalar_bound = not isinstance(bound, torch.Tensor)
        self.norm = torch.empty_like(cost)
        if self.scalar_bound:
            self.bound = max(float(bound), MIN_BOUND)
        else:
            self.bound = torch.clamp(bound, min=MIN_BOUND).expand(plane).contiguous()

    @property
    def neg_cost(self) -> torch.Tensor:
        """``-c / eps``."""
        if self._neg_cost is None:
            self._neg_cost = torch.mul(self.cost, -1.0 / self.epsilon)
        return self._neg_cost

    @property
    def p(self) -> Optional[torch.Tensor]:
        """The normalised TV dual ``p = q / (lambda e)`` (None without TV)."""
        if self._p is None and self.has_tv:
            q = self.q_init
            if q is None:
                self._p = self.cost.new_zeros((self.n, self.k, self.n_spatial) + tuple(self.cost.shape[2:]))
            else:
                self._p = q / (self.bound if self.scalar_bound else self.bound.unsqueeze(2))
        return self._p

    @property
    def q(self) -> Optional[torch.Tensor]:
        """The TV dual ``q = lambda e p`` (a new tensor)."""
        if not self.has_tv:
            return None
        if self.q_final is not None:
            return self.q_final
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
        if self.has_tv:
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
            s.add_(u[:, i : i + 1])
        return s

    def reweight(self, u: torch.Tensor, log_w: torch.Tensor) -> None:
        """``u <- u * exp(log_w) / sum_i (u_i * exp(log_w_i))`` (new ``f``, no second exp pass)."""
        w = torch.exp(log_w - log_w.amax(dim=1, keepdim=True))
        u.mul_(w.reshape(w.shape + (1,) * self.n_spatial))
        # a pixel whose only non-zero class got a weight that underflowed sums to 0:
        # keep it at 0 (the next primal step rebuilds it) instead of 0 / 0 = NaN
        u.div_(self._sum_classes(u).clamp_(min=torch.finfo(u.dtype).tiny))

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


def run_torch(solver: FastVPTV, f_lower: torch.Tensor, f_upper: torch.Tensor, settings: LoopSettings):
    """The loop of Algorithm 1 on a :class:`FastVPTV` (backend ``"torch"``); returns
    ``(u, f_lower, f_upper, cost, n_iter, converged)`` with ``u`` a fresh tensor.

    The stopping test runs at iterations ``2, 2 + check_every, ...`` (the only host
    synchronisation of the loop). ``callback`` receives a work buffer as ``u``:
    valid during the call only.
    """
    volume, callback = settings.volume, settings.callback
    cost = None
    eps = solver.epsilon
    converged = torch.zeros(solver.n, dtype=torch.bool, device=solver.u.device)
    it = 0
    for it in range(1, settings.max_num_iter + 1):
        if settings.updates_cost_at(it):
            cost = settings.cost_update(solver.u_prev)
            solver.set_cost(cost)
        f = f_lower - f_upper
        u = solver.probabilities(f, solver.u)
        if volume is not None:
            mass = u.mean(dim=solver.spatial_dims)
            f_lower, f_upper = volume.update(f_lower, f_upper, torch.log(torch.clamp(mass, min=1e-30)))
            solver.reweight(u, (f_lower - f_upper - f) / eps)
        if solver.has_tv:
            solver.dual_step(u)
        if callback is not None:
            callback(it, u)
        if settings.check_at(it):
            converged = solver.rms_change() < settings.tol
            if volume is not None:
                converged = converged & (
                    volume.residual(u.mean(dim=solver.spatial_dims)).amax(dim=1) < settings.volume_tol
                )
            if bool(converged.all()):
                break
        solver.swap()
    f = f_lower - f_upper
    u = solver.probabilities(f, torch.empty_like(solver.u))
    return u, f_lower, f_upper, cost, it, converged
