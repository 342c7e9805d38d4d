"""The numba VPTV loop (backend ``"numba"``): CPU float32 2-D and 3-D problems, no gradient.

:func:`napari_vptv.core.solver.reference.vptv_iterate` runs it where
:func:`napari_vptv.core.solver.dispatch.choose_backend` picks ``"numba"``. The
iteration is the one of :func:`napari_vptv.core.solver.fast.run_torch`, one sweep over
the pixels per iteration with the fused kernels of
:mod:`napari_vptv.core.solver.numba_kernels` (2-D) or
:mod:`napari_vptv.core.solver.numba_kernels3d` (3-D) (same steps, same numbers to
float32 rounding; ``tests/test_vptv_numba.py``). This module owns numba's
availability (:data:`NUMBA_AVAILABLE`, :func:`kernels`), the kernels' row-interleaved
work arrays (3-D: a volume's planes as the rows, ``(N, D, K, H W)``) and
:func:`rounding_steps_at_zero`, the volume rounding's shortcut
(:func:`napari_vptv.core.solver.segment.round_to_volumes`).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .settings import LoopSettings, VolumeRule

if TYPE_CHECKING:
    from .fast import FastVPTV

__all__ = ["NUMBA_AVAILABLE", "kernels", "unavailable_because", "run_numba", "rounding_steps_at_zero"]

#: numba is installed (checked without importing it: the import costs start-up time
#: and happens on the first solve); set to False to keep ``backend="auto"`` off the
#: kernels (the torch loop runs instead)
NUMBA_AVAILABLE = importlib.util.find_spec("numba") is not None


def kernels(n_spatial: int = 2):
    """The :mod:`~napari_vptv.core.solver.numba_kernels` module (``n_spatial=3``:
    :mod:`~napari_vptv.core.solver.numba_kernels3d`), or None (and
    :data:`NUMBA_AVAILABLE` set to False) where numba is installed but cannot be
    imported (e.g. a NumPy it does not support)."""
    global NUMBA_AVAILABLE
    if not NUMBA_AVAILABLE:
        return None
    try:
        from . import numba_kernels, numba_kernels3d
    except ImportError:
        NUMBA_AVAILABLE = False
        return None
    return numba_kernels3d if n_spatial == 3 else numba_kernels


def unavailable_because(cost: torch.Tensor) -> str:
    """Why the kernels cannot run a problem with costs ``cost`` (``""``: they can).
    They need numba, the CPU, float32 (their precision) and 2 or 3 spatial axes (they
    copy the operands into their own row-interleaved layout)."""
    if cost.ndim not in (4, 5):
        return f"{cost.ndim - 2}-D problem (the numba kernels are 2-D and 3-D)"
    if cost.device.type != "cpu":
        return f"device {cost.device.type} (the numba kernels run on the CPU)"
    if cost.dtype != torch.float32:
        return f"{str(cost.dtype).replace('torch.', '')} costs (the numba kernels are float32)"
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed"
    if kernels() is None:
        return "numba cannot be imported or is switched off (numba_loop.NUMBA_AVAILABLE is False)"
    return ""


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
    if (
        not (
            NUMBA_AVAILABLE
            and cost.device.type == "cpu"
            and cost.dtype == torch.float32
            and cost.ndim == 4
            and cost.is_contiguous()
            and not cost.requires_grad
        )
        or kernels() is None
    ):
        return 0
    eps = np.asarray(epsilons, np.float32)
    sums = np.zeros((len(eps),) + tuple(cost.shape[:2]))
    kernels().tempered_masses(cost.numpy(), eps, sums)
    mass = sums / (cost.shape[2] * cost.shape[3])
    lo, hi = (np.broadcast_to(np.asarray(b, np.float64), mass.shape[1:]) for b in (lower, upper))
    residual = np.maximum(lo - mass, 0) + np.maximum(mass - hi, 0)
    free = residual.max(axis=(1, 2)) < volume_tol - ROUNDING_MARGIN
    return len(eps) if free.all() else int(np.argmin(free))


def _fill_rows(cost: np.ndarray, scale, out: np.ndarray) -> None:
    """``out = scale * cost`` from ``(N, K, *spatial)`` into the row-interleaved buffer
    ``out`` (``(N, H, K, W)``; 3-D: ``(N, D, K, H W)``), one pass."""
    moved = np.moveaxis(cost, 1, 2)  # (N, H, K, W) / (N, D, K, H, W)
    np.multiply(moved, scale, out=out.reshape(moved.shape))


def _numba_operands(solver: FastVPTV, neg_cost: np.ndarray, p: np.ndarray):
    """Fill the kernels' ``-c / eps`` (row-interleaved ``(N, H, K, W)``; 3-D: ``(N, D, K,
    H W)``) and ``p = q / (lambda e)`` (``(N, H, K, 2, W)``; 3-D: ``(N, D, K, 3, H W)``),
    each in one pass with the torch loop's float32 operations; return ``(step, div)``:
    ``step = tau / (lambda e)`` and ``div = lambda e / eps`` as ``(N, 1, H, W)`` planes
    (computed once per call instead of a division per pixel) or, for a scalar bound,
    ``(1, 1, 1, W)`` rows of the constant (3-D: ``(N, 1, D, H W)`` / ``(1, 1, 1, H
    W)``)."""
    cost = solver.cost.detach().numpy()
    _fill_rows(cost, np.float32(-1.0 / solver.epsilon), neg_cost)
    size = neg_cost.shape[-1]
    if not solver.has_tv:
        dummy = np.zeros((1, 1, 1, size), np.float32)
        return dummy, dummy
    if solver.scalar_bound:
        step = np.full((1, 1, 1, size), solver.tau / solver.bound, np.float32)
        div = np.full((1, 1, 1, size), solver.bound / solver.epsilon, np.float32)
        bound = np.float32(solver.bound)
    else:
        rows = (solver.bound.shape[0], 1, neg_cost.shape[1], size)
        step = (solver.tau / solver.bound).numpy().reshape(rows)
        div = (solver.bound / solver.epsilon).numpy().reshape(rows)
        bound = np.moveaxis(solver.bound.numpy(), 2, 1)[:, :, :, None]  # (N, H, 1, 1, W) / (N, D, 1, 1, H, W)
    if solver.q_init is None:
        p.fill(0.0)
    else:
        q = np.moveaxis(solver.q_init.detach().numpy(), 3, 1)  # (N, H, K, 2, W) / (N, D, K, 3, H, W)
        np.divide(q, bound, out=p.reshape(q.shape))
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
    spatial, dims = tuple(solver.cost.shape[2:]), solver.n_spatial
    key = (solver.n, spatial, solver.k, solver.has_tv)
    kept, _POOL.kept = getattr(_POOL, "kept", None), None
    if kept is not None and kept[0] == key:
        return kept
    h, w = spatial[0], int(np.prod(spatial[1:]))  # rows (3-D: planes), row length
    shape = (solver.n, h, solver.k, w)
    p = (
        np.empty((solver.n, h, solver.k, dims, w), np.float32)
        if solver.has_tv
        else np.zeros((1, 1, 1, dims, 1), np.float32)
    )
    return key, np.empty(shape, np.float32), p, np.empty(shape, np.float32), np.empty(shape, np.float32)


def _give_back(buffers) -> None:
    if sum(a.nbytes for a in buffers[1:]) <= POOL_MAX_BYTES:
        _POOL.kept = buffers


def _final_q(solver: FastVPTV, p: np.ndarray) -> torch.Tensor:
    """``q = lambda e p`` as a contiguous ``(N, K, n_spatial, *spatial)`` tensor from the
    kernels' ``p`` (one pass; numpy's strided multiply, ~4x faster here than torch's on
    the permuted view)."""
    spatial = tuple(solver.cost.shape[2:])
    rows = p.reshape(p.shape[:4] + spatial[1:])  # (N, H, K, 2, W) / (N, D, K, 3, H, W)
    view = np.moveaxis(rows, 1, 3)  # (N, K, n_spatial, *spatial)
    q = np.empty(view.shape, np.float32)
    bound = np.float32(solver.bound) if solver.scalar_bound else solver.bound.numpy()[:, :, None]
    return torch.from_numpy(np.multiply(view, bound, out=q))


def _class_view(u_rows: np.ndarray, spatial) -> torch.Tensor:
    """A ``(N, K, *spatial)`` torch view of a row-interleaved ``(N, H, K, W)`` (3-D:
    ``(N, D, K, H W)``) buffer."""
    return torch.from_numpy(u_rows).reshape(u_rows.shape[:3] + tuple(spatial[1:])).transpose(1, 2)


def _passes(solver: FastVPTV):
    """``(softmax_pass, fused_pass)`` of the problem's dimension, both with the 2-D
    kernels' signature (the 3-D kernels get the row length ``W`` and the x factor row,
    1 except on the last column of every row, added)."""
    if solver.n_spatial == 2:
        return kernels().softmax_pass, kernels().fused_pass
    k3, (height, width) = kernels(3), solver.cost.shape[-2:]
    xmask = np.ones((height, width), np.float32)
    xmask[:, -1] = 0.0
    xmask, width = xmask.ravel(), int(width)
    return (lambda *a: k3.softmax_pass_3d(*a, width, xmask)), (lambda *a: k3.fused_pass_3d(*a, width, xmask))


def _volume_terms(volume: Optional[VolumeRule], shape):
    """``(exact, log_lo, log_hi, lo, hi)`` float32 ``(N, K)`` arrays of the volume rule;
    no rule: never-binding bounds and a residual of 0."""
    if volume is None:
        inf = np.full(shape, np.inf, np.float32)
        return False, -inf, inf, np.zeros(shape, np.float32), np.ones(shape, np.float32)
    terms = (volume.log_lower, volume.log_upper, volume.lower, volume.upper)
    arrays = [np.ascontiguousarray(np.broadcast_to(t.to(torch.float32).numpy(), shape)) for t in terms]
    return volume.exact, *arrays


def run_numba(solver: FastVPTV, f_lower: torch.Tensor, f_upper: torch.Tensor, settings: LoopSettings):
    """The loop of Algorithm 1 with the fused kernels (backend ``"numba"``) on
    row-interleaved copies of ``-c / eps``, ``u`` and ``p`` (work arrays reused across
    calls, see :func:`_take_buffers`); returns ``(u, f_lower, f_upper, cost, n_iter,
    converged)`` as :func:`napari_vptv.core.solver.fast.run_torch` does. ``callback``
    receives a ``(N, K, *spatial)`` view of a work array: valid during the call only."""
    buffers = _take_buffers(solver)
    try:
        return _iterate_numba(solver, *buffers[1:], f_lower, f_upper, settings)
    finally:
        _give_back(buffers)


def _iterate_numba(solver: FastVPTV, neg_cost, p, s, u, f_lower, f_upper, settings: LoopSettings):
    """The loop of :func:`run_numba`; only the cost update (a torch callable) and the
    callback see torch tensors (``(N, K, *spatial)`` views of the work arrays).

    One sweep per iteration (:func:`~napari_vptv.core.solver.numba_kernels.fused_pass`, 3-D:
    :func:`~napari_vptv.core.solver.numba_kernels3d.fused_pass_3d`): the
    softmax ``s`` of iteration ``it`` comes from the sweep of ``it - 1`` (or a
    :func:`~napari_vptv.core.solver.numba_kernels.softmax_pass` at the start and after a cost
    update), so ``s`` after the last sweep is the final ``u``."""
    fused, (softmax_pass, fused_pass) = kernels(), _passes(solver)
    volume, cost_update, callback = settings.volume, settings.cost_update, settings.callback
    tol, update_every = settings.tol, settings.update_every
    eps, has_tv = solver.epsilon, solver.has_tv
    step, div = _numba_operands(solver, neg_cost, p)
    n, k, spatial = solver.n, solver.k, tuple(solver.cost.shape[2:])
    exact, log_lo, log_hi, lo, hi = _volume_terms(volume, (n, k))
    f_lo = np.array(np.broadcast_to(f_lower.numpy(), (n, k)), np.float32)
    f_hi = np.array(np.broadcast_to(f_upper.numpy(), (n, k)), np.float32)
    pixels, inv_eps, eps32 = float(solver.u[0, 0].numel()), np.float32(1.0 / eps), np.float32(eps)
    mass_s, mass_u, sq_change = np.zeros((n, k)), np.zeros((n, k)), np.zeros(n)
    weight, residual = np.ones((n, k), np.float32), np.zeros(n, np.float32)
    cost, converged, it, fresh = None, np.zeros(n, bool), 0, False

    def softmax():
        softmax_pass(neg_cost, f_lo, f_hi, inv_eps, p, div, has_tv, s, mass_s)
        return True

    for it in range(1, settings.max_num_iter + 1):
        if settings.updates_cost_at(it):
            cost = cost_update(_class_view(u, spatial))
            _fill_rows(cost.detach().numpy(), np.float32(-1.0 / eps), neg_cost)
            fresh = False
        fresh = fresh or softmax()
        if volume is not None:
            fused.volume_step(mass_s, pixels, f_lo, f_hi, log_lo, log_hi, exact, eps32, weight)
        check = settings.check_at(it)
        # the next softmax, unless the next iteration first updates the cost
        fresh = cost_update is None or it % update_every != 0
        fused_pass(
            neg_cost,
            f_lo,
            f_hi,
            inv_eps,
            p,
            div,
            step,
            has_tv,
            weight,
            volume is not None,
            check,
            fresh,
            s,
            u,
            mass_u,
            sq_change,
            mass_s,
        )
        if callback is not None:
            callback(it, _class_view(u, spatial))
        if check:
            converged = np.sqrt(sq_change / (k * pixels)) < tol
            if volume is not None:
                fused.volume_residual(mass_u, pixels, lo, hi, residual)
                converged &= residual < settings.volume_tol
            if converged.all():
                break
    if not fresh:
        softmax()
    if has_tv:
        solver.q_final = _final_q(solver, p)
    return (
        _class_view(s, spatial).contiguous(),
        torch.from_numpy(f_lo),
        torch.from_numpy(f_hi),
        cost,
        it,
        torch.from_numpy(converged),
    )
