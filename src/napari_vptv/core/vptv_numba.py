"""Fused CPU kernels of the no-grad VPTV iteration (numba), 2-D float32 problems.

:func:`napari_vptv.core.vptv_fast.run_fast` dispatches here (see
:func:`~napari_vptv.core.vptv_fast.use_numba`); the torch loop of
:mod:`napari_vptv.core.vptv_fast` stays the path for autograd, GPUs, 3-D, float64
and machines without numba. One iteration of Algorithm 1 is two passes over the
pixels instead of ~20 eager torch kernels:

* :func:`softmax_pass` -- the logits ``(-c - div q + f) / eps`` (eq. 26, the
  divergence read from the normalised dual ``p = q / (lambda e)`` of the two
  neighbouring pixels), the softmax over the classes and the class sums
  ``sum_x u_i(x)`` the volume dual needs;
* :func:`dual_pass` -- the per-class reweighting of ``u`` by the new volume dual
  ``f`` (eq. 25), the stopping test's sums (``|u - u_prev|^2``, class sums) and,
  one row behind, the Chambolle step ``p <- Proj(p - tau grad u / (lambda e))``
  (eq. 18) with its projection ``p / max(|p|, 1)``.

Layout: row-interleaved, ``u`` and ``-c / eps`` as ``(N, H, K, W)``, ``p`` as
``(N, H, K, 2, W)``, so that a row of every class and dual component is one
contiguous block (reading ``(N, K, H, W)`` planes row by row across the K planes
measured up to 4x slower for the projection loop here). Inner loops run over ``W`` and vectorise (the exp is a
polynomial, :func:`_exp_row`).

The volume dual (eq. 25, the same closed-form step as the torch loop, exact or
interval) and the volume residual of the stopping test are small ``(N, K)``
kernels too (:func:`volume_step`, :func:`volume_residual`): as torch calls they
cost ~0.5 ms per iteration in call overhead. The kernels do the torch loop's
operations in the same order and in float32 (float32 module constants keep numba from promoting
to float64); the tau / (lambda e) and lambda e / eps planes are precomputed
products instead of per-pixel divisions and the exp is a ~1 ulp polynomial, so
results agree with the torch loop to float rounding (``tests/test_vptv_numba.py``).

Compilation: the kernels are compiled on first use (seconds) and cached on disk
(``cache=True``) in ``__pycache__`` next to this file or, where that is read-only,
in numba's user-wide cache directory (``NUMBA_CACHE_DIR`` overrides). If no cache
location is writable the kernels are compiled uncached (:func:`_jit`).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = ["softmax_pass", "dual_pass", "volume_step", "volume_residual"]

# Cephes expf (S. L. Moshier): exp(x) = 2^n exp(r), |r| <= ln 2 / 2, degree-5
# polynomial, < 1 ulp here; written so that LLVM vectorises the pixel loop (a call
# to libm's expf per pixel costs ~5 ns here, more than the rest of the pass).
# float32 globals keep float32 arithmetic float32 in numba.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.0)  # exp(-87) is still a normal float32; the softmax needs no less
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_TINY = np.float32(1e-30)  # the torch loop's clamp of the class mass before its log
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


def _jit(fn):
    """``numba.njit(cache=True)``; without a writable cache location numba refuses
    ``cache=True`` at decoration time, so fall back to an uncached kernel.

    ``error_model="numpy"``: a float division does not test for a zero divisor (the
    Python model's test keeps LLVM from vectorising the loop; no divisor here is
    zero: softmax sums are >= 1, projection norms >= 1). IEEE semantics are kept
    (``fastmath=False``). Inner loops take their bound from the array they write
    (a bound from another array's shape measured 4x slower: not vectorised)."""
    options = dict(fastmath=False, nogil=True, error_model="numpy")
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **options)(fn)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as float32 (no conversion): builds ``2^n`` from its
    exponent field without a libm call, so the pixel loop vectorises."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@_jit
def _exp_row(x, shift, total, first):
    """``x <- exp(x - shift)`` in place (``x - shift <= 0``, float32 rows) and
    ``total <- x`` (``first``) or ``total + x``: the softmax numerators and their
    running class sum in one vectorised loop."""
    for j in range(x.shape[0]):
        v = x[j] - shift[j]
        if v < _EXP_MIN:
            v = _EXP_MIN
        n = np.floor(v * _LOG2E + _HALF)
        r = v - n * _LN2_HI
        r = r - n * _LN2_LO
        r2 = r * r
        y = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * r2 + r + _ONE
        # 2^n: n in [-126, 0] here, a normal float32 with exponent field n + 127
        e = y * _float32_from_bits((np.int32(n) + np.int32(127)) << 23)
        x[j] = e
        total[j] = e if first else total[j] + e


@_jit
def _copy(src, dst):
    """``dst[:] = src`` for 1-D rows (numba's slice assignment is a generic,
    unvectorised loop)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@_jit
def _logits_row(neg_cost, f_lower, f_upper, inv_eps, p, div_plane, div_const, has_tv, scalar_bound, n, i,
                zero_row, z):
    """``z[k] = -c / eps + f / eps - div q / eps`` for row ``i`` of image ``n``, each
    pixel's terms in the torch loop's order: ``- q_0[i] + q_0[i-1] - q_1[j] +
    q_1[j-1]`` (Chambolle's ``div``, ``q[-1] = q[last] = 0``; a missing term is
    ``zero_row``, and ``z - 0 = z`` exactly)."""
    h, k_cls = neg_cost.shape[1], neg_cost.shape[2]
    s_here = div_const if scalar_bound else div_plane[n, 0, i]
    s_up = div_const if scalar_bound else div_plane[n, 0, max(i - 1, 0)]  # (row 0: times zero_row)
    for k in range(k_cls):
        zk, cost = z[k], neg_cost[n, i, k]
        fk = (f_lower[n, k] - f_upper[n, k]) * inv_eps
        if not has_tv:
            for j in range(zk.shape[0]):
                zk[j] = cost[j] + fk
            continue
        p0 = p[n, i, k, 0] if i < h - 1 else zero_row
        p0_up = p[n, i - 1, k, 0] if i > 0 else zero_row
        p1 = p[n, i, k, 1]
        last = zk.shape[0] - 1
        for j in range(1, zk.shape[0] - 1):
            zk[j] = cost[j] + fk - s_here[j] * p0[j] + s_up[j] * p0_up[j] - s_here[j] * p1[j] + s_here[j - 1] * p1[j - 1]
        zk[0] = cost[0] + fk - s_here[0] * p0[0] + s_up[0] * p0_up[0]
        if last > 0:
            zk[0] = zk[0] - s_here[0] * p1[0]
            zk[last] = cost[last] + fk - s_here[last] * p0[last] + s_up[last] * p0_up[last]
            zk[last] = zk[last] + s_here[last - 1] * p1[last - 1]


@_jit
def softmax_pass(neg_cost, f_lower, f_upper, inv_eps, p, div_plane, div_const, has_tv, scalar_bound, u, mass):
    """``u = softmax(-c / eps + f / eps - div q / eps)`` over the classes (eq. 26)
    and ``mass[n, k] = sum_x u`` (float64), row by row.

    Parameters
    ----------
    neg_cost : ``(N, H, K, W)`` float32, ``-c / eps``
    f_lower, f_upper : ``(N, K)``, the volume dual ``f = f_lower - f_upper``
    inv_eps : float32, ``1 / eps``
    p : ``(N, H, K, 2, W)``, normalised dual (``q = lambda e p``); unused without TV
    div_plane : ``(N, 1, H, W)``, ``lambda e / eps`` (unless ``scalar_bound``)
    div_const : ``(W,)`` filled with ``lambda / eps`` (used if ``scalar_bound``)
    u : ``(N, H, K, W)`` output; mass : ``(N, K)`` float64 output
    """
    n_img, h, k_cls, w = neg_cost.shape
    z = np.empty((k_cls, w), dtype=np.float32)
    zero_row = np.zeros(w, dtype=np.float32)
    zmax = np.empty(w, dtype=np.float32)
    total = np.empty(w, dtype=np.float32)
    row_mass = np.empty((k_cls, w), dtype=np.float64)
    for n in range(n_img):
        row_mass[:] = 0.0
        for i in range(h):
            _logits_row(neg_cost, f_lower, f_upper, inv_eps, p, div_plane, div_const, has_tv, scalar_bound, n, i,
                        zero_row, z)
            _copy(z[0], zmax)
            for k in range(1, k_cls):
                zk = z[k]
                for j in range(zmax.shape[0]):
                    zmax[j] = max(zmax[j], zk[j])
            for k in range(k_cls):
                _exp_row(z[k], zmax, total, k == 0)
            for k in range(k_cls):
                zk, uk, mk = z[k], u[n, i, k], row_mass[k]
                for j in range(uk.shape[0]):
                    v = zk[j] / total[j]
                    uk[j] = v
                    mk[j] += v
        for k in range(k_cls):
            mass[n, k] = row_mass[k].sum()


@_jit
def dual_pass(u, weight, u_prev, p, step_plane, step_const, reweight, has_tv, check, scalar_bound, mass,
              sq_change):
    """Reweight ``u`` by the new volume dual, sums for the stopping test, Chambolle
    step on ``p``; all in place, row by row.

    ``reweight``: ``u <- u * weight[n, k] / sum_k (u * weight[n, k])`` (eq. 25 without
    a second exp pass). ``check``: ``mass[n, k] = sum_x u`` and ``sq_change[n] =
    sum (u - u_prev)^2`` (float64). ``has_tv``: the Chambolle step (eq. 18) with
    ``s = tau / (lambda e)`` (``step_const`` row or ``step_plane``), see
    :func:`_dual_row`. Row ``i - 1`` is stepped right after row ``i`` is final.
    """
    n_img, h, k_cls, w = u.shape
    total = np.empty(w, dtype=u.dtype)
    row_mass = np.empty((k_cls, w), dtype=np.float64)
    row_sq = np.empty(w, dtype=np.float64)
    for n in range(n_img):
        row_mass[:] = 0.0
        row_sq[:] = 0.0
        for i in range(h + 1):
            if i < h and reweight:
                u0, w0 = u[n, i, 0], weight[n, 0]
                for j in range(u0.shape[0]):
                    u0[j] = u0[j] * w0
                _copy(u0, total)
                for k in range(1, k_cls):
                    uk, wk = u[n, i, k], weight[n, k]
                    for j in range(uk.shape[0]):
                        uk[j] = uk[j] * wk
                        total[j] = total[j] + uk[j]
                for k in range(k_cls):
                    uk = u[n, i, k]
                    for j in range(uk.shape[0]):
                        uk[j] = uk[j] / total[j]
            if i < h and check:
                for k in range(k_cls):
                    uk, prev, mk = u[n, i, k], u_prev[n, i, k], row_mass[k]
                    for j in range(row_sq.shape[0]):
                        d = np.float64(uk[j]) - np.float64(prev[j])
                        row_sq[j] += d * d
                        mk[j] += uk[j]
            if has_tv and i > 0:
                _dual_row(u, p, step_const if scalar_bound else step_plane[n, 0, i - 1], n, i - 1)
        if check:
            sq_change[n] = row_sq.sum()
            for k in range(k_cls):
                mass[n, k] = row_mass[k].sum()


@_jit
def _dual_row(u, p, step, n, i):
    """``p <- Proj(p - step (u[next] - u))`` on row ``i`` of image ``n`` (rows ``i`` and
    ``i + 1`` of ``u`` final): forward differences with the last one 0 (Neumann, the
    component is then left as it is), then ``p / max(|p|, 1)`` on every pixel, as the
    torch loop; one loop per class."""
    h, k_cls = u.shape[1], u.shape[2]
    for k in range(k_cls):
        p0, p1, uk = p[n, i, k, 0], p[n, i, k, 1], u[n, i, k]
        below = u[n, min(i + 1, h - 1), k]
        last = p0.shape[0] - 1
        for j in range(p0.shape[0]):
            a = p0[j]
            if i < h - 1:
                a = a - step[j] * below[j] + step[j] * uk[j]
            b = p1[j]
            if j < last:
                b = b - step[j] * uk[min(j + 1, last)] + step[j] * uk[j]
            norm = a * a + b * b
            if norm < _ONE:
                norm = _ONE
            r = np.sqrt(norm)
            p0[j] = a / r
            p1[j] = b / r


@_jit
def volume_step(mass, pixels, f_lower, f_upper, log_lo, log_hi, exact, eps, weight):
    """The volume dual step (eq. 25) from the class sums, in place, and the per-class
    reweighting ``weight = exp(log_w - max log_w)``, ``log_w = (f_new - f) / eps``.

    Exact volumes (``log_lo = log V``): ``f <- f + eps (log V - log m)``; interval
    volumes: ``f_lower <- max(f_lower + eps (log lo - log m), 0)``, ``f_upper <-
    max(f_upper + eps (log m - log hi), 0)`` (``log lo = -inf`` / ``log hi = +inf``
    for bounds that cannot bind). ``m = max(mass / pixels, 1e-30)``, float32.
    """
    for n in range(mass.shape[0]):
        for k in range(mass.shape[1]):
            mean = np.float32(mass[n, k] / pixels)
            log_mass = np.log(max(mean, _TINY))
            f_old = f_lower[n, k] - f_upper[n, k]
            if exact:
                f_lower[n, k] = f_lower[n, k] + eps * (log_lo[n, k] - log_mass)
            else:
                f_lower[n, k] = max(f_lower[n, k] + eps * (log_lo[n, k] - log_mass), _ZERO)
                f_upper[n, k] = max(f_upper[n, k] + eps * (log_mass - log_hi[n, k]), _ZERO)
            weight[n, k] = (f_lower[n, k] - f_upper[n, k] - f_old) / eps
        top = weight[n, 0]
        for k in range(1, mass.shape[1]):
            top = max(top, weight[n, k])
        for k in range(mass.shape[1]):
            weight[n, k] = np.exp(weight[n, k] - top)


@_jit
def volume_residual(mass, pixels, lo, hi, out):
    """``out[n] = max_k (max(lo - m, 0) + max(m - hi, 0))``, ``m = mass / pixels``
    (float32; ``lo = hi = V`` for exact volumes gives ``|m - V|``)."""
    for n in range(mass.shape[0]):
        worst = _ZERO
        for k in range(mass.shape[1]):
            m = np.float32(mass[n, k] / pixels)
            worst = max(worst, max(lo[n, k] - m, _ZERO) + max(m - hi[n, k], _ZERO))
        out[n] = worst
