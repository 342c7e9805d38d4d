"""The VPTV iteration (Algorithm 1 of Li, Liu, Cui, Huang & Tai) in torch.

This module is the single implementation of the volume-preserving, TV-regularised
softmax iteration. It serves both

* the variational solver (:func:`napari_vptv.core.solver.segment.vptv_segment`), which runs
  it to tolerance with costs from an intensity / colour similarity model, and
* the network layer (:class:`napari_vptv.nn.layer.VPTVSoftmax`), which unrolls it for
  a fixed number of steps on costs ``C = -logits``.

Everything here works on batched tensors of shape ``(N, K, *spatial)`` (``N`` images,
``K`` classes, 2-D or 3-D spatial grid) so that one call handles a mini-batch or a
stack, and nothing here knows about numpy, napari or Qt.

The model (eq. 11/12 of the paper)::

    min_{u in U(V)} max_{|q_i| <= lambda e}  <u, C + div q> + eps <u, log u>

is solved by alternating

* softmax primal step (eq. 26, Algorithm 1 step 2)::

      u_i = softmax_i((-c_i - div q_i + f_i) / eps)

* Chambolle projected dual step for the edge-weighted TV (eq. 18, step 3)::

      q_i <- Proj_{|q| <= lambda e}(q_i - tau grad u_i),   tau = 0.5 eps

* stabilised Sinkhorn update of the volume dual variable (eq. 25, step 4)::

      f_i <- f_i + eps log V_i - eps log mean_x u_i(x)

  (volumes are fractions of the image, so the pixel sum of eq. 25 becomes a mean).

Two extensions that the paper does not have:

* ``interval`` volumes ``lo_i <= mean u_i <= hi_i``: the same log-domain update split
  into two non-negative multipliers, one per bound, each clipped at zero
  (``f = f_lower - f_upper``). A bound that is not active keeps its multiplier at 0, so
  inside the interval the class is free (as with no volume constraint).
* an optional ``cost_update`` callback that recomputes the costs from the current
  ``u`` every few iterations (the paper's step 5 "update the similarity", the EM-like
  update of the class means / covariances).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .dispatch import choose_backend
from .settings import LoopSettings, VolumeRule

__all__ = [
    "gradient",
    "divergence",
    "project_dual",
    "vptv_probabilities",
    "VPTVState",
    "vptv_iterate",
]


def gradient(u: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Forward-difference gradient with Neumann boundary (Chambolle 2004).

    Parameters
    ----------
    u : tensor, shape ``(..., *spatial)``
    n_spatial : number of trailing spatial axes (2 or 3).

    Returns
    -------
    tensor, shape ``(..., n_spatial, *spatial)``; the last difference along each axis
    is zero.
    """
    parts = []
    for d in range(n_spatial):
        axis = u.ndim - n_spatial + d
        diff = torch.diff(u, dim=axis)
        parts.append(F.pad(diff, _pad_spec(u.ndim, axis, 0, 1)))
    return torch.stack(parts, dim=u.ndim - n_spatial)


def divergence(q: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Discrete divergence, the negative adjoint of :func:`gradient`.

    ``<grad u, q> = -<u, div q>`` holds exactly, which is what makes the dual step
    (eq. 18) a projected gradient ascent on ``<u, div q>``.

    Parameters
    ----------
    q : tensor, shape ``(..., n_spatial, *spatial)``
    """
    comp_axis = q.ndim - n_spatial - 1
    out = None
    for d in range(n_spatial):
        qd = q.select(comp_axis, d)
        axis = qd.ndim - n_spatial + d
        n = qd.shape[axis]
        # div p = p[i] - p[i-1] with p[-1] = p[n-1] = 0 (Chambolle's convention).
        head = qd.narrow(axis, 0, n - 1)
        term = F.pad(head, _pad_spec(qd.ndim, axis, 0, 1)) - F.pad(head, _pad_spec(qd.ndim, axis, 1, 0))
        out = term if out is None else out + term
    return out


def _pad_spec(ndim: int, axis: int, before: int, after: int) -> tuple:
    """``F.pad`` spec padding only ``axis`` (F.pad counts axes from the last)."""
    spec = [0, 0] * (ndim - axis)
    spec[-2], spec[-1] = before, after
    return tuple(spec)


def project_dual(q: torch.Tensor, bound: torch.Tensor | float, n_spatial: int) -> torch.Tensor:
    """Pointwise projection onto ``{|q(x)|_2 <= bound(x)}`` (the set Q of eq. 12).

    ``Proj(q) = bound q / max(|q|, bound)`` (below eq. 18).
    """
    comp_axis = q.ndim - n_spatial - 1
    # (sum of squares over the small component axis; torch.linalg.vector_norm over a
    # non-trailing axis is ~50x slower on CPU)
    norm = torch.sqrt((q * q).sum(dim=comp_axis, keepdim=True))
    if isinstance(bound, torch.Tensor):
        bound = bound.unsqueeze(comp_axis)
    # q * bound / max(norm, bound); written as a clamp of the scale factor so that a
    # zero bound (lambda = 0) gives q = 0 without 0/0.
    scale = torch.clamp(bound / torch.clamp(norm, min=1e-12), max=1.0)
    return q * scale


def vptv_probabilities(
    cost: torch.Tensor,
    q: Optional[torch.Tensor],
    f: Optional[torch.Tensor],
    epsilon: float,
) -> torch.Tensor:
    """Class probabilities ``u = softmax((-C - div q + f) / eps)`` (eq. 26).

    This is the closing softmax of the VPTV-softmax layer: the paper's "quasi
    dropout" back-propagates through this function only, with ``q`` and ``f`` held
    constant (Section 5.2).

    Parameters
    ----------
    cost : tensor ``(N, K, *spatial)``
    q : tensor ``(N, K, D, *spatial)`` or None (no TV term)
    f : tensor ``(N, K)`` or None (no volume term)
    """
    return torch.softmax(_logits(cost, q, f, epsilon), dim=1)


def _logits(cost, q, f, epsilon):
    n_spatial = cost.ndim - 2
    z = -cost
    if q is not None:
        z = z - divergence(q, n_spatial)
    if f is not None:
        z = z + f.reshape(f.shape + (1,) * n_spatial)
    return z / epsilon


@dataclass
class VPTVState:
    """Result / warm-start state of :func:`vptv_iterate`.

    Attributes
    ----------
    u : class probabilities ``(N, K, *spatial)``
    q : TV dual variable ``(N, K, D, *spatial)`` (None if ``tv_weight == 0``)
    f : volume dual variable ``f = f_lower - f_upper``, shape ``(N, K)``
    f_lower, f_upper : non-negative multipliers of the lower / upper volume bounds
        (interval mode; for exact mode ``f_lower`` holds ``f`` and ``f_upper`` is 0)
    cost : the costs in use at the end (changed by ``cost_update``)
    n_iter : iterations performed
    converged : per-sample bool tensor ``(N,)``
    backend, backend_reason : the loop that ran and why
        (:func:`~napari_vptv.core.solver.dispatch.choose_backend`)
    """

    u: torch.Tensor
    q: Optional[torch.Tensor]
    f: torch.Tensor
    f_lower: torch.Tensor
    f_upper: torch.Tensor
    cost: torch.Tensor
    n_iter: int
    converged: torch.Tensor
    backend: str = ""
    backend_reason: str = ""


def vptv_iterate(
    cost: torch.Tensor,
    *,
    volumes=None,
    volume_bounds=None,
    epsilon: float = 0.01,
    tv_weight: float = 0.0,
    edge_weight: Optional[torch.Tensor] = None,
    tau: Optional[float] = None,
    max_num_iter: int = 300,
    tol: float = 1e-3,
    volume_tol: float = 1e-3,
    check_every: Optional[int] = None,
    cost_update: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    update_every: int = 10,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
    state: Optional[VPTVState] = None,
    backend: str = "auto",
) -> VPTVState:
    """Run Algorithm 1 on a batch of cost maps.

    Parameters
    ----------
    cost : tensor ``(N, K, *spatial)``
        Per-class costs ``c_i(x)`` (lower = more likely). For a network, ``-logits``.
    volumes : tensor ``(K,)`` or ``(N, K)``, optional
        **Exact** volume fractions ``V_i`` (each in (0, 1), summing to 1): the class means ``mean_x u_i`` are
        driven to them (constraint set U(V) of eq. 2).
    volume_bounds : pair of tensors ``(lower, upper)``, each ``(K,)`` or ``(N, K)``, optional
        **Interval** volumes ``lower_i <= mean_x u_i <= upper_i``; exclusive with ``volumes``. Neither given: no
        volume constraint (EMTV-like, eq. 6/10).
    epsilon : float
        Entropic regularisation ``eps`` (eq. 11). Small -> nearly binary ``u`` and sharp volumes; large -> smooth.
    tv_weight : float
        ``lambda``, weight of the edge-weighted TV (bound of the dual set Q); 0 disables the TV term.
    edge_weight : tensor ``(N, *spatial)`` or ``(*spatial)``, optional
        ``e(x)`` of eq. 11: ``|q_i(x)| <= lambda e(x)``. None means ``e = 1``.
    tau : float, optional
        Dual step ``tau_q``; default ``0.5 * epsilon`` as in the paper.
    max_num_iter : int
        ``T``, maximum iterations.
    tol : float
        Stop when the root-mean-square change of ``u`` between two iterations is below ``tol`` for every sample
        (``||u^{t+1} - u^t|| < tol``, Section 6); ``tol = 0`` runs exactly ``max_num_iter`` steps (the unrolled layer).
    volume_tol : float
        Convergence also requires every class fraction ``mean_x u_i`` within ``volume_tol`` of its target / interval.
    check_every : int, optional
        Run the stopping test at iterations ``2, 2 + check_every, ...`` only: it reads a result on the host, which
        stalls a GPU queue. Default: 1 on the CPU, 10 on other devices.
    cost_update : callable ``u -> cost``, optional
        Similarity update (Algorithm 1 step 5), called every ``update_every`` iterations; returns new costs.
    callback : callable ``(iteration, u) -> None``, optional
        Progress hook, called after every iteration.
    state : VPTVState, optional
        Warm start (``q``, ``f_lower``, ``f_upper`` are reused; never modified).
    backend : {"auto", "reference", "torch", "numba"}
        The loop; which one ``"auto"`` picks and why: :mod:`napari_vptv.core.solver.dispatch`. Only the reference
        loop (this module's) back-propagates; the others give ``callback`` a work buffer valid during the call.
        All three give the same numbers up to float rounding (tested).

    Returns
    -------
    VPTVState
    """
    _check_arguments(cost, epsilon, tv_weight, volumes, volume_bounds)
    tau = 0.5 * epsilon if tau is None else float(tau)
    volume = VolumeRule.of(volumes, volume_bounds, cost, epsilon)
    bound = _dual_bound(cost, tv_weight, edge_weight)
    q, f_lower, f_upper = _initial_duals(cost, tv_weight, state)
    settings = LoopSettings(
        volume=volume,
        max_num_iter=int(max_num_iter),
        tol=float(tol),
        volume_tol=float(volume_tol),
        check_every=_check_interval(check_every, cost.device),
        cost_update=cost_update,
        update_every=int(update_every),
        callback=callback,
    )
    return _run_loop(cost, q, bound, epsilon, tau, f_lower, f_upper, settings, backend)


def _check_arguments(cost, epsilon, tv_weight, volumes, volume_bounds):
    """The argument checks of :func:`vptv_iterate` that need no volume parsing."""
    if cost.ndim < 4:
        raise ValueError(f"cost must have shape (N, K, *spatial) with 2 or 3 spatial axes, got {tuple(cost.shape)}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
    if volumes is not None and volume_bounds is not None:
        raise ValueError("give either exact `volumes` or `volume_bounds`, not both")


def _dual_bound(cost, tv_weight, edge_weight):
    """The radius ``lambda e(x)`` of the dual set Q (eq. 12): None without TV, the
    float ``lambda`` for ``e = 1``, else a tensor ``(N or 1, 1, *spatial)``."""
    if not tv_weight > 0:  # (not `<= 0`: a NaN weight gives no TV term, as in _initial_duals)
        return None
    if edge_weight is None:
        return tv_weight
    e = torch.as_tensor(edge_weight, dtype=cost.dtype, device=cost.device)
    if e.ndim == cost.ndim - 2:
        e = e.unsqueeze(0)
    # (N or 1, 1, *spatial): broadcast over classes
    return (tv_weight * e).unsqueeze(1)


def _initial_duals(cost, tv_weight, state):
    """``(q, f_lower, f_upper)`` to start from: the warm start's, else zeros (``q`` is
    None without TV, and None for a cold start: :func:`_run_loop` starts it at 0)."""
    n, k = cost.shape[:2]
    if state is not None:
        q = state.q if tv_weight > 0 else None
        return q, state.f_lower, state.f_upper
    # both multipliers start as the same zero tensor (neither loop writes into them)
    zeros = cost.new_zeros((n, k))
    return None, zeros, zeros


def _check_interval(check_every, device):
    """``check_every`` as an int >= 1; default 1 on the CPU, where the stopping test is
    cheap, 10 elsewhere, where reading its result on the host stalls the queue."""
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 10
    if int(check_every) < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    return int(check_every)


def _run_loop(cost, q, bound, epsilon, tau, f_lower, f_upper, settings, backend):
    """Run the loop :func:`~napari_vptv.core.solver.dispatch.choose_backend` picks and
    pack the result as a :class:`VPTVState`."""
    inputs = (cost, bound, q, f_lower, f_upper)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
    name, reason = choose_backend(backend, cost, needs_grad=needs_grad)
    if name == "reference":
        if q is None and bound is not None:  # TV from q = 0 (the other loops start there without a tensor)
            q = cost.new_zeros((cost.shape[0], cost.shape[1], cost.ndim - 2) + tuple(cost.shape[2:]))
        u, q, f_lower, f_upper, new_cost, it, converged = _iterate_autograd(
            cost, q, bound, epsilon, tau, f_lower, f_upper, settings
        )
    else:
        from .fast import FastVPTV, run_torch
        from .numba_loop import run_numba

        with torch.no_grad():
            solver = FastVPTV(cost, q, bound, epsilon, tau)
            run = run_numba if name == "numba" else run_torch
            u, f_lower, f_upper, new_cost, it, converged = run(solver, f_lower, f_upper, settings)
            q = solver.q
    return VPTVState(
        u=u,
        q=q,
        f=f_lower - f_upper,
        f_lower=f_lower,
        f_upper=f_upper,
        cost=cost if new_cost is None else new_cost,
        n_iter=it,
        converged=converged,
        backend=name,
        backend_reason=reason,
    )


def _iterate_autograd(cost, q, bound, epsilon, tau, f_lower, f_upper, settings: LoopSettings):
    """The reference loop: out-of-place ops only, so autograd can run through all
    steps (the network layer's ``backward="full"``). Same steps as the other loops."""
    volume, callback = settings.volume, settings.callback
    n_spatial = cost.ndim - 2
    n, k = cost.shape[:2]
    spatial_dims = tuple(range(2, cost.ndim))
    new_cost = None
    u_prev = None
    converged = torch.zeros(n, dtype=torch.bool, device=cost.device)
    it = 0
    for it in range(1, settings.max_num_iter + 1):
        if settings.updates_cost_at(it):
            cost = new_cost = settings.cost_update(u_prev)

        f = f_lower - f_upper
        # Step 2: softmax primal step.
        u = vptv_probabilities(cost, q, f, epsilon)

        # Step 4 (done before step 3 here; same fixed point): stabilised Sinkhorn
        # update of f from the current marginals. Because only f changes, the new u
        # is the old one reweighted per class -- no second exp over the image.
        if volume is not None:
            log_mass = torch.log(torch.clamp(u.mean(dim=spatial_dims), min=1e-30))
            f_lower, f_upper = volume.update(f_lower, f_upper, log_mass)
            delta = (f_lower - f_upper - f) / epsilon
            delta = delta - delta.amax(dim=1, keepdim=True)
            w = torch.exp(delta).reshape((n, k) + (1,) * n_spatial)
            u = u * w
            # 0 / 0 where the only non-zero class's weight underflowed: keep 0 (no NaN)
            u = u / u.sum(dim=1, keepdim=True).clamp(min=torch.finfo(u.dtype).tiny)

        # Step 3: Chambolle projected dual step for the edge-weighted TV.
        if q is not None:
            q = project_dual(q - tau * gradient(u, n_spatial), bound, n_spatial)

        if callback is not None:
            callback(it, u)
        if settings.check_at(it):
            change = torch.sqrt(((u - u_prev) ** 2).mean(dim=tuple(range(1, u.ndim))))
            converged = change < settings.tol
            if volume is not None:
                converged = converged & (volume.residual(u.mean(dim=spatial_dims)).amax(dim=1) < settings.volume_tol)
            if bool(converged.all()):
                u_prev = u
                break
        u_prev = u

    u = vptv_probabilities(cost, q, f_lower - f_upper, epsilon)
    return u, q, f_lower, f_upper, new_cost, it, converged
