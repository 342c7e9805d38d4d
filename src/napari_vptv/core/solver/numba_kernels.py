"""Fused CPU kernels of the no-grad VPTV iteration (numba), 2-D float32 problems.

:func:`napari_vptv.core.solver.numba_loop.run_numba` drives them (backend
``"numba"``, chosen by :func:`napari_vptv.core.solver.dispatch.choose_backend`); 3-D
problems run their counterparts in :mod:`napari_vptv.core.solver.numba_kernels3d`,
built from this module's row helpers; the torch loop of
:mod:`napari_vptv.core.solver.fast` stays the path for GPUs, float64 and machines
without numba, the reference loop the one for autograd. One iteration of Algorithm 1
is one sweep over the rows of the image instead of ~20 eager torch kernels
(:func:`fused_pass`):

* row ``i``: the per-class reweighting of the softmax ``s`` by the new volume dual
  ``f`` (eq. 25) into ``u``, with the stopping test's sums (``|u - u_prev|^2``,
  class sums);
* row ``i - 1`` (its two ``u`` rows are final): the Chambolle step
  ``p <- Proj(p - tau grad u / (lambda e))`` (eq. 18) with its projection
  ``p / max(|p|, 1)``, and then the softmax of the *next* iteration on that row
  (eq. 26: the logits ``(-c - div q + f) / eps``, the divergence read from the
  normalised dual ``p = q / (lambda e)`` of the row and the one above, both final)
  and its class sums, which the next volume dual step needs.

:func:`softmax_pass` is the softmax alone (the first iteration, after a cost
update). The rows in flight stay in the L1 cache, so ``u``, ``s``, ``p`` and
``-c / eps`` are each read and written once per iteration.

Layout: row-interleaved, ``u``, ``s`` and ``-c / eps`` as ``(N, H, K, W)``, ``p`` as
``(N, H, K, 2, W)``, so that a row of every class and dual component is one
contiguous block (reading ``(N, K, H, W)`` planes row by row across the K planes
measured up to 4x slower for the projection loop here). Inner loops run over ``W``
and vectorise (AVX2 here), which needed, each measured: the exp as a polynomial
(:func:`_exp_row`); ``error_model="numpy"`` (:func:`_jit`); every inner loop writing
one array (LLVM cannot rule out that two written arrays overlap: 2-3x slower);
plain element indexing instead of row views (a view passed on costs an atomic
reference count increment and decrement: ~20 % of the pass) and the row helpers
inlined.

Denormal floats: with a small ``eps`` and large costs (the CLI's image-adapted WBC
preset: ``eps = 0.05``, Gaussian costs in the hundreds) most class probabilities
underflow below the smallest normal float32, and every operation on such a denormal
number takes a microcode assist on x86: 8 ms instead of 0.8 ms per sweep on a WBC
image (measured). The kernels therefore run with flush-to-zero / denormals-are-zero
(MXCSR, x86 only; restored on return, so torch and numpy outside are unaffected).
Values below 1.2e-38 become 0; a pixel whose reweighted class sum is then 0 is kept
at 0, as in the torch loop.

The volume dual (eq. 25, the same closed-form step as the torch loop, exact or
interval) and the volume residual of the stopping test are small ``(N, K)``
kernels too (:func:`volume_step`, :func:`volume_residual`): as torch calls they
cost ~0.5 ms per iteration in call overhead. The kernels do the torch loop's
operations in the same order and in float32 (float32 module constants keep numba
from promoting to float64), except that a division by a per-pixel sum or norm is a
multiplication by its reciprocal (one division per pixel instead of one per class);
the tau / (lambda e) and lambda e / eps planes are precomputed products and the exp
is a ~1 ulp polynomial, so results agree with the torch loop to float rounding
(``tests/test_vptv_numba.py``). Class sums are float32 over 16 rows, then float64.

Compilation: the kernels are compiled on first use (seconds) and cached on disk
(``cache=True``) in ``__pycache__`` next to this file or, where that is read-only,
in numba's user-wide cache directory (``NUMBA_CACHE_DIR`` overrides). If no cache
location is writable the kernels are compiled uncached (:func:`_jit`).
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["softmax_pass", "fused_pass", "volume_step", "volume_residual", "tempered_masses"]

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
    if fn.__name__.startswith("_"):  # row helpers: inlined into the passes (see below)
        options["inline"] = "always"
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


#: MXCSR bits flush-to-zero and denormals-are-zero (x86 SSE/AVX)
_FTZ_DAZ = np.uint32(0x8040)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _mxcsr_call(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [ir.PointerType(ir.IntType(8))])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(slot, ir.PointerType(ir.IntType(8)))])


if _X86:

    @intrinsic
    def _mxcsr_get(typingctx):
        """The x86 SSE/AVX control and status register (MXCSR) of this thread."""

        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.load(slot)

        return types.uint32(), codegen

    @intrinsic
    def _mxcsr_set(typingctx, value):
        """Load ``value`` into MXCSR."""

        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
            return context.get_dummy_value()

        return types.none(types.uint32), codegen
else:  # other CPUs: denormals are left as they are

    @numba.njit(inline="always")
    def _mxcsr_get():
        return np.uint32(0)

    @numba.njit(inline="always")
    def _mxcsr_set(value):
        return None


_TINY_NORMAL = np.float32(1.17549435e-38)  # the torch loop's clamp of the reweighted class sum
_FLUSH_ROWS = 16  # rows summed in float32 before a float64 flush (the sums stay accurate to ~1e-6)


@_jit
def _exp(v):
    """``exp(v)`` of a float32 ``v <= 0`` (the polynomial above; inlined into the loops)."""
    if v < _EXP_MIN:
        v = _EXP_MIN
    n = np.floor(v * _LOG2E + _HALF)
    r = v - n * _LN2_HI
    r = r - n * _LN2_LO
    r2 = r * r
    y = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * r2 + r + _ONE
    # 2^n: n in [-126, 0] here, a normal float32 with exponent field n + 127
    return y * _float32_from_bits((np.int32(n) + np.int32(127)) << 23)


@_jit
def _exp_row(z, k, shift):
    """``z[k] <- exp(z[k] - shift)`` in place (``z - shift <= 0``, float32 rows)."""
    for j in range(z.shape[1]):
        z[k, j] = _exp(z[k, j] - shift[j])


@_jit
def _logits_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, n, i, z):
    """``z[k] = -c / eps + f / eps - div q / eps`` for row ``i`` of image ``n``, each
    pixel's terms in the torch loop's order: ``- q_0[i] + q_0[i-1] - q_1[j] +
    q_1[j-1]`` (Chambolle's ``div``, ``q[-1] = q[last] = 0``: a missing term is left
    out, as ``z - 0 = z`` exactly). ``div``: ``(N or 1, 1, H or 1, W)``, ``lambda e /
    eps`` (one row for a scalar bound). The second axis's terms in a loop of their own."""
    h, k_cls, w = neg_cost.shape[1], neg_cost.shape[2], neg_cost.shape[3]
    dn = n if div.shape[0] > 1 else 0
    di = i if div.shape[2] > 1 else 0
    du = max(i - 1, 0) if div.shape[2] > 1 else 0
    for k in range(k_cls):
        fk = (f_lower[n, k] - f_upper[n, k]) * inv_eps
        if not has_tv:
            for j in range(w):
                z[k, j] = neg_cost[n, i, k, j] + fk
            continue
        if 0 < i < h - 1:
            for j in range(w):
                z[k, j] = (
                    neg_cost[n, i, k, j]
                    + fk
                    - div[dn, 0, di, j] * p[n, i, k, 0, j]
                    + div[dn, 0, du, j] * p[n, i - 1, k, 0, j]
                )
        elif i == 0 and h > 1:
            for j in range(w):
                z[k, j] = neg_cost[n, i, k, j] + fk - div[dn, 0, di, j] * p[n, i, k, 0, j]
        elif i > 0:
            for j in range(w):
                z[k, j] = neg_cost[n, i, k, j] + fk + div[dn, 0, du, j] * p[n, i - 1, k, 0, j]
        else:
            for j in range(w):
                z[k, j] = neg_cost[n, i, k, j] + fk
        for j in range(1, w - 1):
            z[k, j] = z[k, j] - div[dn, 0, di, j] * p[n, i, k, 1, j] + div[dn, 0, di, j - 1] * p[n, i, k, 1, j - 1]
        if w > 1:
            z[k, 0] = z[k, 0] - div[dn, 0, di, 0] * p[n, i, k, 1, 0]
            z[k, w - 1] = z[k, w - 1] + div[dn, 0, di, w - 2] * p[n, i, k, 1, w - 2]


@_jit
def _softmax_numerators(z, zmax, total):
    """``z[k] <- exp(z[k] - max_k z)`` and ``total <- 1 / sum_k z`` for a row ``(K, W)``.

    Two classes: one exp per pixel, the same numbers. The larger logit's numerator is
    ``exp(0) = 1`` exactly (the polynomial gives 1 at 0), the other's ``exp(min - max)``
    (both numerators 1 on a tie), so only that one is computed."""
    k_cls, w = z.shape
    for j in range(w):
        zmax[j] = z[0, j]
    for k in range(1, k_cls):
        for j in range(w):
            zmax[j] = max(zmax[j], z[k, j])
    if k_cls == 2:
        for j in range(w):
            total[j] = _exp(min(z[0, j], z[1, j]) - zmax[j])
        for k in range(2):
            for j in range(w):
                z[k, j] = _ONE if z[k, j] == zmax[j] else total[j]
    else:
        for k in range(k_cls):
            _exp_row(z, k, zmax)
    for j in range(w):
        total[j] = z[0, j]
    for k in range(1, k_cls):
        for j in range(w):
            total[j] = total[j] + z[k, j]
    for j in range(w):
        total[j] = _ONE / total[j]


@_jit
def _softmax_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, n, i, z, zmax, total, out, acc):
    """``out[n, i] = softmax(z)`` of row ``i`` (logits by :func:`_logits_row`) and
    ``acc += out[n, i]`` (float32 column sums); one division per pixel."""
    _logits_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, n, i, z)
    _softmax_numerators(z, zmax, total)
    k_cls, w = z.shape
    for k in range(k_cls):
        for j in range(w):
            out[n, i, k, j] = z[k, j] * total[j]
        for j in range(w):
            acc[k, j] = acc[k, j] + out[n, i, k, j]


@_jit
def _flush(acc32, acc64):
    """``acc64 += acc32; acc32 = 0`` (rows of float32 column sums into float64)."""
    for k in range(acc32.shape[0]):
        for j in range(acc32.shape[1]):
            acc64[k, j] += acc32[k, j]
        for j in range(acc32.shape[1]):
            acc32[k, j] = _ZERO


@_jit
def softmax_pass(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, u, mass):
    """``u = softmax(-c / eps + f / eps - div q / eps)`` over the classes (eq. 26)
    and ``mass[n, k] = sum_x u`` (float64), row by row.

    Parameters
    ----------
    neg_cost : ``(N, H, K, W)`` float32, ``-c / eps``
    f_lower, f_upper : ``(N, K)``, the volume dual ``f = f_lower - f_upper``
    inv_eps : float32, ``1 / eps``
    p : ``(N, H, K, 2, W)``, normalised dual (``q = lambda e p``); unused without TV
    div : ``(N, 1, H, W)``, ``lambda e / eps``, or ``(1, 1, 1, W)`` for a scalar bound
    u : ``(N, H, K, W)`` output; mass : ``(N, K)`` float64 output
    """
    n_img, h, k_cls, w = neg_cost.shape
    z, zmax, total = np.empty((k_cls, w), np.float32), np.empty(w, np.float32), np.empty(w, np.float32)
    acc, sums = np.zeros((k_cls, w), np.float32), np.zeros((k_cls, w))
    mode = _mxcsr_get()
    _mxcsr_set(mode | _FTZ_DAZ)
    for n in range(n_img):
        sums[:] = 0.0
        for i in range(h):
            _softmax_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, n, i, z, zmax, total, u, acc)
            if (i + 1) % _FLUSH_ROWS == 0 or i == h - 1:
                _flush(acc, sums)
        for k in range(k_cls):
            mass[n, k] = sums[k].sum()
    _mxcsr_set(mode)


@_jit
def _reweight_row(s, weight, u, reweight, check, n, i, total, acc, acc_sq):
    """``u[n, i] <- s * weight / sum_k (s * weight)`` (or ``<- s``) for row ``i``; with
    ``check`` first ``acc_sq += (u_new - u_old)^2`` (summed over classes), then
    ``acc += u_new`` (float32 column sums)."""
    k_cls, w = s.shape[2], s.shape[3]
    for j in range(w):
        total[j] = s[n, i, 0, j] * weight[n, 0] if reweight else _ONE
    if reweight:
        for k in range(1, k_cls):
            for j in range(w):
                total[j] = total[j] + s[n, i, k, j] * weight[n, k]
        for j in range(w):
            total[j] = _ONE / max(total[j], _TINY_NORMAL)
    for k in range(k_cls):
        wk = weight[n, k] if reweight else _ONE  # s * 1 * 1 = s exactly
        if check:
            for j in range(w):
                d = s[n, i, k, j] * wk * total[j] - u[n, i, k, j]
                acc_sq[0, j] = acc_sq[0, j] + d * d
        for j in range(w):
            u[n, i, k, j] = s[n, i, k, j] * wk * total[j]
        if check:
            for j in range(w):
                acc[k, j] = acc[k, j] + u[n, i, k, j]


@_jit
def _dual_row(u, p, step, n, i, scale):
    """``p <- Proj(p - step (u[next] - u))`` on row ``i`` of image ``n`` (rows ``i`` and
    ``i + 1`` of ``u`` final): forward differences with the last one 0 (Neumann, the
    component is then left as it is), then ``p / max(|p|, 1)`` on every pixel, as the
    torch loop (times ``1 / max(|p|, 1)``). ``step``: ``tau / (lambda e)`` as ``div`` in
    :func:`softmax_pass`; ``scale`` is a scratch row."""
    h, k_cls, w = u.shape[1], u.shape[2], u.shape[3]
    sn = n if step.shape[0] > 1 else 0
    si = i if step.shape[2] > 1 else 0
    for k in range(k_cls):
        if i < h - 1:
            for j in range(w):
                p[n, i, k, 0, j] = (
                    p[n, i, k, 0, j] - step[sn, 0, si, j] * u[n, i + 1, k, j] + step[sn, 0, si, j] * u[n, i, k, j]
                )
        for j in range(w - 1):
            p[n, i, k, 1, j] = (
                p[n, i, k, 1, j] - step[sn, 0, si, j] * u[n, i, k, j + 1] + step[sn, 0, si, j] * u[n, i, k, j]
            )
        for j in range(w):
            norm = p[n, i, k, 0, j] * p[n, i, k, 0, j] + p[n, i, k, 1, j] * p[n, i, k, 1, j]
            if norm < _ONE:
                norm = _ONE
            scale[j] = _ONE / np.sqrt(norm)
        for c in range(2):
            for j in range(w):
                p[n, i, k, c, j] = p[n, i, k, c, j] * scale[j]


@_jit
def fused_pass(
    neg_cost,
    f_lower,
    f_upper,
    inv_eps,
    p,
    div,
    step,
    has_tv,
    weight,
    reweight,
    check,
    next_softmax,
    s,
    u,
    mass_u,
    sq_change,
    mass_s,
):
    """One iteration of Algorithm 1 after its softmax, and the softmax of the next, in
    one sweep over the rows.

    Row ``i``: ``u <- s`` reweighted by the new volume dual (eq. 25, ``weight`` from
    :func:`volume_step`; ``u`` held the previous iterate, compared for the stopping
    test when ``check``); row ``i - 1``: the Chambolle step (eq. 18, :func:`_dual_row`)
    and, with ``next_softmax``, ``s <- softmax`` of the next iteration (eq. 26) from the
    new ``p`` and ``f``. ``f_lower`` / ``f_upper`` are already the new dual.

    Parameters
    ----------
    s : ``(N, H, K, W)``, the softmax of this iteration in, of the next out
    u : ``(N, H, K, W)``, the previous iterate in, the reweighted one out
    mass_u, mass_s : ``(N, K)`` float64, ``sum_x u`` (with ``check``) and ``sum_x s``
    sq_change : ``(N,)`` float64, ``sum_x sum_k (u_new - u_old)^2`` (with ``check``)
    step : ``tau / (lambda e)``, shaped as ``div``; other operands as in
    :func:`softmax_pass`.
    """
    n_img, h, k_cls, w = s.shape
    z, zmax, total = np.empty((k_cls, w), np.float32), np.empty(w, np.float32), np.empty(w, np.float32)
    acc_u, acc_s, acc_sq = (
        np.zeros((k_cls, w), np.float32),
        np.zeros((k_cls, w), np.float32),
        np.zeros((1, w), np.float32),
    )
    sum_u, sum_s, sum_sq = np.zeros((k_cls, w)), np.zeros((k_cls, w)), np.zeros((1, w))
    mode = _mxcsr_get()
    _mxcsr_set(mode | _FTZ_DAZ)
    for n in range(n_img):
        sum_u[:] = 0.0
        sum_s[:] = 0.0
        sum_sq[:] = 0.0
        for i in range(h + 1):
            if i < h:
                _reweight_row(s, weight, u, reweight, check, n, i, total, acc_u, acc_sq)
            if i > 0:
                if has_tv:
                    _dual_row(u, p, step, n, i - 1, zmax)
                if next_softmax:
                    _softmax_row(
                        neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, n, i - 1, z, zmax, total, s, acc_s
                    )
            if i % _FLUSH_ROWS == 0 or i == h:
                _flush(acc_u, sum_u)
                _flush(acc_s, sum_s)
                _flush(acc_sq, sum_sq)
        sq_change[n] = sum_sq.sum()
        for k in range(k_cls):
            mass_u[n, k] = sum_u[k].sum()
            mass_s[n, k] = sum_s[k].sum()
    _mxcsr_set(mode)


@_jit
def tempered_masses(cost, epsilons, out):
    """``out[e, n, k] = sum_x softmax_k(-cost / epsilons[e])`` (float64) for every
    ``eps`` of the volume rounding's eps-scaling (``cost = -log u``, ``(N, K, H, W)``):
    its class sums at ``f = 0``, the logits computed as torch does (``(-c) / eps`` in
    float32), row by row, float32 sums over 16 rows then float64."""
    n_img, k_cls, h, w = cost.shape
    n_eps = epsilons.shape[0]
    z, zmax, total = np.empty((k_cls, w), np.float32), np.empty(w, np.float32), np.empty(w, np.float32)
    acc, sums = np.zeros((n_eps * k_cls, w), np.float32), np.zeros((n_eps * k_cls, w))
    mode = _mxcsr_get()
    _mxcsr_set(mode | _FTZ_DAZ)
    for n in range(n_img):
        sums[:] = 0.0
        for i in range(h):
            for e in range(n_eps):
                eps = epsilons[e]
                for k in range(k_cls):
                    for j in range(w):
                        z[k, j] = -cost[n, k, i, j] / eps
                _softmax_numerators(z, zmax, total)
                for k in range(k_cls):
                    row = e * k_cls + k
                    for j in range(w):
                        acc[row, j] = acc[row, j] + z[k, j] * total[j]
            if (i + 1) % _FLUSH_ROWS == 0 or i == h - 1:
                _flush(acc, sums)
        for e in range(n_eps):
            for k in range(k_cls):
                out[e, n, k] = sums[e * k_cls + k].sum()
    _mxcsr_set(mode)


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
