"""Allocation-free no-grad VPTV iteration (same numbers as the differentiable path).

:func:`napari_vptv.core.solver.reference.vptv_iterate` dispatches here when no gradient is
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

:func:`run_fast` hands CPU float32 2-D problems to the fused numba kernels of
:mod:`napari_vptv.core.solver.numba_kernels` (one sweep over the pixels per iteration, the same
steps; ``tests/test_vptv_numba.py``) when numba can be imported; :func:`use_numba` is
the one place that decides. The torch loop below remains the path for other devices,
3-D problems, float64 and machines without numba. :func:`rounding_steps_at_zero` is the
volume rounding's shortcut (:func:`napari_vptv.core.solver.segment.round_to_volumes`).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["FastVPTV", "run_fast", "use_numba", "NUMBA_AVAILABLE", "rounding_steps_at_zero"]

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
        if solver.has_tv:
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
        from . import numba_kernels as vptv_numba
    except ImportError:
        NUMBA_AVAILABLE = False
        return None
    return vptv_numba


def use_numba(solver: FastVPTV, volume_update=None) -> bool:
    """Whether :func:`run_fast` runs the fused numba kernels: numba importable, a CPU
    float32 problem with 2 spatial axes (the kernels' precision; they copy the
    operands into their own layout) and a volume rule the kernels know
    (``volume_update.fused``).
    Everything else (float64 included) runs the torch loop."""
    return (NUMBA_AVAILABLE and solver.n_spatial == 2 and solver.u.device.type == "cpu"
            and solver.u.dtype == torch.float32
            and (volume_update is None or hasattr(volume_update, "fused")) and _numba_kernels() is not None)


#: safety margin of :func:`rounding_steps_at_zero` on the volume residual: its class
#: sums differ from torch's float32 ones by ~1e-7 (same logits, ~1 ulp exp, other
#: summation order); closer to the tolerance, torch decides
ROUNDING_MARGIN = 1e-5


def rounding_steps_at_zero(cost: torch.Tensor, lower, upper, epsilons, volume_tol: float) -> int:
    """How many leading ``eps`` of the volume rounding's eps-scaling
    (:func:`napari_vptv.core.solver.segment.round_to_volumes`) end with the volume dual
    ``f = 0``: those whose softmax ``softmax(-cost / eps)`` already meets the interval
    ``[lower, upper]`` to ``volume_tol - ROUNDING_MARGIN`` (the dual solver then returns
    at once, with ``f = 0``). One fused numba sweep for all ``eps``
    (:func:`~napari_vptv.core.solver.numba_kernels.tempered_masses`) instead of one torch softmax
    each; 0 (nothing skipped) where the kernels do not apply (not CPU float32 2-D
    contiguous, no numba)."""
    if not (NUMBA_AVAILABLE and cost.device.type == "cpu" and cost.dtype == torch.float32 and cost.ndim == 4
            and cost.is_contiguous() and not cost.requires_grad) or _numba_kernels() is None:
        return 0
    eps = np.asarray(epsilons, np.float32)
    sums = np.zeros((len(eps),) + tuple(cost.shape[:2]))
    _numba_kernels().tempered_masses(cost.numpy(), eps, sums)
    mass = sums / (cost.shape[2] * cost.shape[3])
    lo, hi = (np.broadcast_to(np.asarray(b, np.float64), mass.shape[1:]) for b in (lower, upper))
    residual = np.maximum(lo - mass, 0) + np.maximum(mass - hi, 0)
    free = residual.max(axis=(1, 2)) < volume_tol - ROUNDING_MARGIN
    return len(eps) if free.all() else int(np.argmin(free))


def _numba_operands(solver: FastVPTV, neg_cost: np.ndarray, p: np.ndarray):
    """Fill the kernels' ``-c / eps`` (row-interleaved ``(N, H, K, W)``) and ``p = q /
    (lambda e)`` (``(N, H, K, 2, W)``), each in one pass with the torch loop's float32
    operations; return ``(step, div)``: ``step = tau / (lambda e)`` and ``div = lambda e
    / eps`` as ``(N, 1, H, W)`` planes (computed once per call instead of a division
    per pixel) or, for a scalar bound, ``(1, 1, 1, W)`` rows of the constant."""
    cost = solver.cost.detach().numpy()
    np.multiply(np.moveaxis(cost, 2, 1), np.float32(-1.0 / solver.epsilon), out=neg_cost)
    width = cost.shape[-1]
    if not solver.has_tv:
        dummy = np.zeros((1, 1, 1, width), np.float32)
        return dummy, dummy
    if solver.scalar_bound:
        step = np.full((1, 1, 1, width), solver.tau / solver.bound, np.float32)
        div = np.full((1, 1, 1, width), solver.bound / solver.epsilon, np.float32)
        bound = np.float32(solver.bound)
    else:
        step, div = (solver.tau / solver.bound).numpy(), (solver.bound / solver.epsilon).numpy()
        bound = np.moveaxis(solver.bound.numpy(), 2, 1)[:, :, :, None, :]  # (N, H, 1, 1, W)
    if solver.q_init is None:
        p.fill(0.0)
    else:
        np.divide(np.moveaxis(solver.q_init.detach().numpy(), 3, 1), bound, out=p)
    return step, div


#: largest set of work arrays (bytes) a thread keeps for its next solve
POOL_MAX_BYTES = 64 * 2**20
_POOL = threading.local()


def _take_buffers(solver: FastVPTV):
    """``(key, neg_cost, p, s, u)``: the kernels' row-interleaved float32 work arrays,
    this thread's from its previous solve of the same shape if kept. Fresh arrays of
    a few MB cost ~1-2 ms of page faults per call here (measured on 300x300x3), a
    tenth of a solve. Taken out of the pool while in use (a solve started from a
    callback gets its own)."""
    h, w = solver.cost.shape[2:]
    key = (solver.n, h, solver.k, w, solver.has_tv)
    kept, _POOL.kept = getattr(_POOL, "kept", None), None
    if kept is not None and kept[0] == key:
        return kept
    shape = (solver.n, h, solver.k, w)
    p = np.empty((solver.n, h, solver.k, 2, w), np.float32) if solver.has_tv else np.zeros((1, 1, 1, 2, 1), np.float32)
    return key, np.empty(shape, np.float32), p, np.empty(shape, np.float32), np.empty(shape, np.float32)


def _give_back(buffers) -> None:
    if sum(a.nbytes for a in buffers[1:]) <= POOL_MAX_BYTES:
        _POOL.kept = buffers


def _final_q(solver: FastVPTV, p: np.ndarray) -> torch.Tensor:
    """``q = lambda e p`` as a contiguous ``(N, K, 2, H, W)`` tensor from the kernels'
    ``p`` (one pass)."""
    p_view = torch.from_numpy(p).permute(0, 2, 3, 1, 4)
    q = torch.empty(p_view.shape, dtype=p_view.dtype)
    return torch.mul(p_view, solver.bound if solver.scalar_bound else solver.bound.unsqueeze(2), out=q)


def _class_view(u_rows: np.ndarray) -> torch.Tensor:
    """A ``(N, K, H, W)`` torch view of a row-interleaved ``(N, H, K, W)`` buffer."""
    return torch.from_numpy(u_rows).transpose(1, 2)


def _volume_terms(volume_update, shape):
    """``(exact, log_lo, log_hi, lo, hi)`` float32 ``(N, K)`` arrays of the volume rule
    (the ``fused`` attribute of :func:`napari_vptv.core.solver.reference._volume_rules`' update);
    no rule: never-binding bounds and a residual of 0."""
    if volume_update is None:
        inf = np.full(shape, np.inf, np.float32)
        return False, -inf, inf, np.zeros(shape, np.float32), np.ones(shape, np.float32)
    mode, *terms = volume_update.fused
    arrays = [np.ascontiguousarray(np.broadcast_to(t.to(torch.float32).numpy(), shape)) for t in terms]
    return mode == "exact", *arrays


def _run_numba(solver: FastVPTV, **loop):
    """:func:`run_fast` with the fused kernels on row-interleaved copies of
    ``-c / eps``, ``u`` and ``p`` (work arrays reused across calls, see
    :func:`_take_buffers`)."""
    buffers = _take_buffers(solver)
    try:
        return _iterate_numba(solver, *buffers[1:], **loop)
    finally:
        _give_back(buffers)


def _iterate_numba(solver: FastVPTV, neg_cost, p, s, u, *, volume_update, volume_residual, f_lower, f_upper,
                   max_num_iter, tol, volume_tol, cost_update, update_every, check_every, callback):
    """The loop of :func:`run_fast` on the kernels; only the cost update (a torch
    callable) and the callback see torch tensors (``(N, K, H, W)`` views of the work
    arrays).

    One sweep per iteration (:func:`~napari_vptv.core.solver.numba_kernels.fused_pass`): the
    softmax ``s`` of iteration ``it`` comes from the sweep of ``it - 1`` (or a
    :func:`~napari_vptv.core.solver.numba_kernels.softmax_pass` at the start and after a cost
    update), so ``s`` after the last sweep is the final ``u``."""
    kernels = _numba_kernels()
    eps, has_tv = solver.epsilon, solver.has_tv
    step, div = _numba_operands(solver, neg_cost, p)
    n, k = solver.n, solver.k
    exact, log_lo, log_hi, lo, hi = _volume_terms(volume_update, (n, k))
    f_lo = np.array(np.broadcast_to(f_lower.numpy(), (n, k)), np.float32)
    f_hi = np.array(np.broadcast_to(f_upper.numpy(), (n, k)), np.float32)
    pixels, inv_eps, eps32 = float(solver.u[0, 0].numel()), np.float32(1.0 / eps), np.float32(eps)
    mass_s, mass_u, sq_change = np.zeros((n, k)), np.zeros((n, k)), np.zeros(n)
    weight, residual = np.ones((n, k), np.float32), np.zeros(n, np.float32)
    cost, converged, it, fresh = None, np.zeros(n, bool), 0, False

    def softmax():
        kernels.softmax_pass(neg_cost, f_lo, f_hi, inv_eps, p, div, has_tv, s, mass_s)
        return True

    for it in range(1, max_num_iter + 1):
        if cost_update is not None and it > 1 and (it - 1) % update_every == 0:
            cost = cost_update(_class_view(u))
            np.multiply(np.moveaxis(cost.detach().numpy(), 2, 1), np.float32(-1.0 / eps), out=neg_cost)
            fresh = False
        fresh = fresh or softmax()
        if volume_update is not None:
            kernels.volume_step(mass_s, pixels, f_lo, f_hi, log_lo, log_hi, exact, eps32, weight)
        check = it > 1 and tol > 0 and (it - 2) % check_every == 0
        # the next softmax, unless the next iteration first updates the cost
        fresh = cost_update is None or it % update_every != 0
        kernels.fused_pass(neg_cost, f_lo, f_hi, inv_eps, p, div, step, has_tv, weight, volume_update is not None,
                           check, fresh, s, u, mass_u, sq_change, mass_s)
        if callback is not None:
            callback(it, _class_view(u))
        if check:
            converged = np.sqrt(sq_change / (k * pixels)) < tol
            if volume_update is not None:
                kernels.volume_residual(mass_u, pixels, lo, hi, residual)
                converged &= residual < volume_tol
            if converged.all():
                break
    if not fresh:
        softmax()
    if has_tv:
        solver.q_final = _final_q(solver, p)
    return (_class_view(s).contiguous(), torch.from_numpy(f_lo), torch.from_numpy(f_hi), cost, it,
            torch.from_numpy(converged))
