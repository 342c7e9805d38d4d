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

:func:`run_fast` hands CPU float32 / float64 2-D problems to the fused numba
kernels of :mod:`napari_vptv.core.vptv_numba` (two passes over the pixels per
iteration, the same steps; ``tests/test_vptv_numba.py``) when numba can be
imported; :func:`use_numba` is the one place that decides. The torch loop below
remains the path for other devices, 3-D problems and machines without numba.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["FastVPTV", "run_fast", "use_numba", "NUMBA_AVAILABLE"]

#: numba is installed (checked without importing it: the import costs start-up time
#: and happens on the first solve); set to False to force the torch loop
NUMBA_AVAILABLE = importlib.util.find_spec("numba") is not None

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
    valid during the call only. Dispatches to :func:`_run_numba` where
    :func:`use_numba` says so.
    """
    if use_numba(solver, volume_update):
        return _run_numba(solver, volume_update=volume_update, volume_residual=volume_residual,
                          f_lower=f_lower, f_upper=f_upper, max_num_iter=max_num_iter, tol=tol,
                          volume_tol=volume_tol, cost_update=cost_update, update_every=update_every,
                          check_every=check_every, callback=callback)
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


def _numba_kernels():
    """The :mod:`vptv_numba` module, or None (and :data:`NUMBA_AVAILABLE` set to False)
    where numba is installed but cannot be imported (e.g. a NumPy it does not support)."""
    global NUMBA_AVAILABLE
    if not NUMBA_AVAILABLE:
        return None
    try:
        from . import vptv_numba
    except ImportError:
        NUMBA_AVAILABLE = False
        return None
    return vptv_numba


def use_numba(solver: FastVPTV, volume_update=None) -> bool:
    """Whether :func:`run_fast` runs the fused numba kernels: numba importable, a CPU
    float32 problem with 2 spatial axes in contiguous buffers (the kernels' layout and
    precision) and a volume rule the kernels know (``volume_update.fused``).
    Everything else (float64 included) runs the torch loop."""
    buffers = [solver.neg_cost, solver.u, solver.u_prev] + ([solver.p] if solver.p is not None else [])
    return (NUMBA_AVAILABLE and solver.n_spatial == 2 and solver.u.device.type == "cpu"
            and solver.u.dtype == torch.float32
            and all(t.is_contiguous() for t in buffers)
            and (volume_update is None or hasattr(volume_update, "fused")) and _numba_kernels() is not None)


def _rows(x: np.ndarray) -> np.ndarray:
    """``(N, K, H, ...)`` -> the kernels' row-interleaved ``(N, H, K, ...)`` copy."""
    return np.ascontiguousarray(np.moveaxis(x, 2 if x.ndim == 4 else 3, 1))


def _numba_operands(solver: FastVPTV):
    """Kernel operands: ``(p, step_plane, div_plane, step_const, div_const)``, ``p``
    as a row-interleaved ``(N, H, K, 2, W)`` copy; the planes are ``tau / (lambda e)``
    and ``lambda e / eps`` (computed once per call instead of a division per pixel),
    the constants rows of ``tau / lambda`` and ``lambda / eps`` for a scalar bound;
    dummies of the right rank where unused."""
    width = solver.u.shape[-1]
    dummy_plane = np.zeros((1, 1, 1, 1), np.float32)
    if solver.p is None:
        zeros = np.zeros(width, np.float32)
        return np.zeros((1, 1, 1, 2, 1), np.float32), dummy_plane, dummy_plane, zeros, zeros
    p = _rows(solver.p.numpy())
    if solver.scalar_bound:
        step = np.full(width, solver.tau / solver.bound, np.float32)
        div = np.full(width, solver.bound / solver.epsilon, np.float32)
        return p, dummy_plane, dummy_plane, step, div
    step = (solver.tau / solver.bound).numpy()
    div = (solver.bound / solver.epsilon).numpy()
    return p, step, div, dummy_plane[0, 0, 0], dummy_plane[0, 0, 0]


def _class_view(u_rows: np.ndarray) -> torch.Tensor:
    """A ``(N, K, H, W)`` torch view of a row-interleaved ``(N, H, K, W)`` buffer."""
    return torch.from_numpy(u_rows).transpose(1, 2)


def _volume_terms(volume_update, shape):
    """``(exact, log_lo, log_hi, lo, hi)`` float32 ``(N, K)`` arrays of the volume rule
    (the ``fused`` attribute of :func:`napari_vptv.core.vptv._volume_rules`' update);
    no rule: never-binding bounds and a residual of 0."""
    if volume_update is None:
        inf = np.full(shape, np.inf, np.float32)
        return False, -inf, inf, np.zeros(shape, np.float32), np.ones(shape, np.float32)
    mode, *terms = volume_update.fused
    arrays = [np.ascontiguousarray(np.broadcast_to(t.to(torch.float32).numpy(), shape)) for t in terms]
    return mode == "exact", *arrays


def _run_numba(solver: FastVPTV, *, volume_update, volume_residual, f_lower, f_upper, max_num_iter, tol,
               volume_tol, cost_update, update_every, check_every, callback):
    """:func:`run_fast` with the fused kernels on row-interleaved copies of
    ``-c / eps``, ``u`` and ``p``; only the cost update (a torch callable) and the
    callback see torch tensors (``(N, K, H, W)`` views of the work buffers)."""
    kernels = _numba_kernels()
    eps, has_tv, scalar = solver.epsilon, solver.p is not None, solver.p is None or solver.scalar_bound
    p, step_plane, div_plane, step_const, div_const = _numba_operands(solver)
    neg_cost = _rows(solver.neg_cost.numpy())
    u, u_prev = np.empty_like(neg_cost), np.empty_like(neg_cost)
    n, k = solver.n, solver.k
    exact, log_lo, log_hi, lo, hi = _volume_terms(volume_update, (n, k))
    f_lo = np.array(np.broadcast_to(f_lower.numpy(), (n, k)), np.float32)
    f_hi = np.array(np.broadcast_to(f_upper.numpy(), (n, k)), np.float32)
    pixels, inv_eps, eps32 = float(solver.u[0, 0].numel()), np.float32(1.0 / eps), np.float32(eps)
    mass, sq_change = np.zeros((n, k), np.float64), np.zeros(n, np.float64)
    weight, residual = np.ones((n, k), np.float32), np.zeros(n, np.float32)
    cost, converged, it = None, np.zeros(n, bool), 0
    for it in range(1, max_num_iter + 1):
        if cost_update is not None and it > 1 and (it - 1) % update_every == 0:
            cost = cost_update(_class_view(u_prev))
            solver.set_cost(cost)
            np.copyto(neg_cost, np.moveaxis(solver.neg_cost.numpy(), 2, 1))
        kernels.softmax_pass(neg_cost, f_lo, f_hi, inv_eps, p, div_plane, div_const, has_tv, scalar, u, mass)
        if volume_update is not None:
            kernels.volume_step(mass, pixels, f_lo, f_hi, log_lo, log_hi, exact, eps32, weight)
        check = it > 1 and tol > 0 and (it - 2) % check_every == 0
        if volume_update is not None or has_tv or check:
            kernels.dual_pass(u, weight, u_prev, p, step_plane, step_const, volume_update is not None, has_tv,
                              check, scalar, mass, sq_change)
        if callback is not None:
            callback(it, _class_view(u))
        if check:
            converged = np.sqrt(sq_change / (k * pixels)) < tol
            if volume_update is not None:
                kernels.volume_residual(mass, pixels, lo, hi, residual)
                converged &= residual < volume_tol
            if converged.all():
                break
        u, u_prev = u_prev, u
    kernels.softmax_pass(neg_cost, f_lo, f_hi, inv_eps, p, div_plane, div_const, has_tv, scalar, u_prev, mass)
    if has_tv:
        solver.p.copy_(torch.from_numpy(p).permute(0, 2, 3, 1, 4))
    return (_class_view(u_prev).contiguous(), torch.from_numpy(f_lo), torch.from_numpy(f_hi), cost, it,
            torch.from_numpy(converged))
