"""Fused CPU kernels of the no-grad VPTV iteration (numba), 3-D float32 problems.

The 3-D counterparts of :func:`~napari_vptv.core.solver.numba_kernels.softmax_pass` and
:func:`~napari_vptv.core.solver.numba_kernels.fused_pass`, driven by
:func:`napari_vptv.core.solver.numba_loop.run_numba` (backend ``"numba"``) for
``(N, K, D, H, W)`` costs. The steps, their order, the float32 arithmetic, the
polynomial exp, the flush-to-zero mode and the class sums are those of the 2-D
kernels (same row helpers: the softmax numerators, the reweighting, the float64
flushes; see :mod:`napari_vptv.core.solver.numba_kernels`), so the results agree with
the torch loop to float rounding (``tests/test_vptv_numba.py``).

Layout: the planes of a volume one after the other, each plane of every class one
contiguous block (its ``H`` rows of ``W`` voxels end to end, so that the inner loops
run over ``H W`` voxels: over the ``W`` voxels of a row, as short as 15-40 for the
nuclei crops of mask correction, the per-row overhead of the ~30 loops of a sweep
measured up to 3x slower): ``u``, ``s`` and ``-c / eps`` as ``(N, D, K, H W)``, the
normalised dual ``p = q / (lambda e)`` as ``(N, D, K, 3, H W)`` (components z, y, x,
the order of the torch loop's axes), ``lambda e / eps`` and ``tau / (lambda e)`` as
``(N, 1, D, H W)`` or, for a scalar bound, ``(1, 1, 1, H W)``. The x terms' factors
are multiplied by ``xmask``, a row of ``H W`` that is 1 except on the last column of
every row, 0 (exact: ``a * 1 = a``; the x difference and the x divergence term that do
not exist there add ``+- 0`` and leave the value as it is, so no voxel needs a test of
its column).

One sweep per iteration as in 2-D, the planes taking the place of the rows: plane
``i`` is reweighted, plane ``i - 1`` (the new ``u`` of planes ``i - 1`` and ``i``
known) gets its Chambolle step and the next softmax; the y terms are the neighbours
``W`` voxels along in the same plane.

The helpers come from :mod:`~napari_vptv.core.solver.numba_kernels` and are inlined
here: numba's disk cache checks only this file's time stamp, so after editing those
helpers delete this module's cache files (``__pycache__/numba_kernels3d*.nbi`` /
``.nbc``) or touch this file.
"""

from __future__ import annotations

import numpy as np

from .numba_kernels import (
    _FLUSH_ROWS,
    _FTZ_DAZ,
    _ONE,
    _flush,
    _jit,
    _mxcsr_get,
    _mxcsr_set,
    _reweight_row,
    _softmax_numerators,
)

__all__ = ["softmax_pass_3d", "fused_pass_3d"]


@_jit
def _logits_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, width, xmask, n, i, z):
    """``z[k] = -c / eps + f / eps - div q / eps`` for plane ``i`` of volume ``n`` (``width``
    = ``W``), each voxel's terms in the torch loop's order: z (the planes ``i`` and ``i -
    1``), y (offset ``W`` in the plane), x (offset 1, the factors times ``xmask``: 0 on
    the last column, so the missing terms add ``+- 0``, leaving ``z`` as it is)."""
    planes, k_cls, size = neg_cost.shape[1], neg_cost.shape[2], neg_cost.shape[3]
    dn = n if div.shape[0] > 1 else 0
    di = i if div.shape[2] > 1 else 0
    du = max(i - 1, 0) if div.shape[2] > 1 else 0
    for k in range(k_cls):
        fk = (f_lower[n, k] - f_upper[n, k]) * inv_eps
        if not has_tv:
            for j in range(size):
                z[k, j] = neg_cost[n, i, k, j] + fk
            continue
        if 0 < i < planes - 1:
            for j in range(size):
                z[k, j] = (
                    neg_cost[n, i, k, j]
                    + fk
                    - div[dn, 0, di, j] * p[n, i, k, 0, j]
                    + div[dn, 0, du, j] * p[n, i - 1, k, 0, j]
                )
        elif i == 0 and planes > 1:
            for j in range(size):
                z[k, j] = neg_cost[n, i, k, j] + fk - div[dn, 0, di, j] * p[n, i, k, 0, j]
        elif i > 0:
            for j in range(size):
                z[k, j] = neg_cost[n, i, k, j] + fk + div[dn, 0, du, j] * p[n, i - 1, k, 0, j]
        else:
            for j in range(size):
                z[k, j] = neg_cost[n, i, k, j] + fk
        if size > width:  # y: own term where a next row exists, then the previous row's
            for j in range(width):
                z[k, j] = z[k, j] - div[dn, 0, di, j] * p[n, i, k, 1, j]
            for j in range(width, size - width):
                z[k, j] = (
                    z[k, j]
                    - div[dn, 0, di, j] * p[n, i, k, 1, j]
                    + div[dn, 0, di, j - width] * p[n, i, k, 1, j - width]
                )
            for j in range(size - width, size):
                z[k, j] = z[k, j] + div[dn, 0, di, j - width] * p[n, i, k, 1, j - width]
        for j in range(1, size - 1):
            z[k, j] = (
                z[k, j]
                - div[dn, 0, di, j] * xmask[j] * p[n, i, k, 2, j]
                + div[dn, 0, di, j - 1] * xmask[j - 1] * p[n, i, k, 2, j - 1]
            )
        if size > 1:
            z[k, 0] = z[k, 0] - div[dn, 0, di, 0] * xmask[0] * p[n, i, k, 2, 0]
            z[k, size - 1] = z[k, size - 1] + div[dn, 0, di, size - 2] * xmask[size - 2] * p[n, i, k, 2, size - 2]


@_jit
def _softmax_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, width, xmask, n, i, z, zmax, total, out, acc):
    """``out[n, i] = softmax(z)`` of plane ``i`` (logits by :func:`_logits_row`) and
    ``acc += out[n, i]`` (float32 column sums)."""
    _logits_row(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, width, xmask, n, i, z)
    _softmax_numerators(z, zmax, total)
    k_cls, size = z.shape
    for k in range(k_cls):
        for j in range(size):
            out[n, i, k, j] = z[k, j] * total[j]
        for j in range(size):
            acc[k, j] = acc[k, j] + out[n, i, k, j]


@_jit
def _dual_row(u, p, step, width, xmask, n, i, scale):
    """``p <- Proj(p - step grad u)`` on plane ``i`` (forward differences along z, y, x;
    the last one along an axis is 0 and leaves the component as it is: the x step is
    times ``xmask``, 0 on the last column), then ``p / max(|p|, 1)``, as the 2-D kernel;
    ``scale`` is a scratch row."""
    planes, k_cls, size = u.shape[1], u.shape[2], u.shape[3]
    sn = n if step.shape[0] > 1 else 0
    si = i if step.shape[2] > 1 else 0
    for k in range(k_cls):
        if i < planes - 1:
            for j in range(size):
                p[n, i, k, 0, j] = (
                    p[n, i, k, 0, j] - step[sn, 0, si, j] * u[n, i + 1, k, j] + step[sn, 0, si, j] * u[n, i, k, j]
                )
        for j in range(size - width):
            p[n, i, k, 1, j] = (
                p[n, i, k, 1, j] - step[sn, 0, si, j] * u[n, i, k, j + width] + step[sn, 0, si, j] * u[n, i, k, j]
            )
        for j in range(size - 1):
            p[n, i, k, 2, j] = (
                p[n, i, k, 2, j]
                - step[sn, 0, si, j] * xmask[j] * u[n, i, k, j + 1]
                + step[sn, 0, si, j] * xmask[j] * u[n, i, k, j]
            )
        for j in range(size):
            norm = p[n, i, k, 0, j] * p[n, i, k, 0, j] + p[n, i, k, 1, j] * p[n, i, k, 1, j]
            norm = norm + p[n, i, k, 2, j] * p[n, i, k, 2, j]
            if norm < _ONE:
                norm = _ONE
            scale[j] = _ONE / np.sqrt(norm)
        for c in range(3):
            for j in range(size):
                p[n, i, k, c, j] = p[n, i, k, c, j] * scale[j]


@_jit
def softmax_pass_3d(neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, u, mass, width, xmask):
    """:func:`~napari_vptv.core.solver.numba_kernels.softmax_pass` of a volume: ``u =
    softmax(-c / eps + f / eps - div q / eps)`` and ``mass[n, k] = sum_x u`` (float64);
    operands in this module's layout, ``width`` = ``W``, ``xmask`` the x factor row."""
    n_img, planes, k_cls, size = neg_cost.shape
    z, zmax, total = np.empty((k_cls, size), np.float32), np.empty(size, np.float32), np.empty(size, np.float32)
    acc, sums = np.zeros((k_cls, size), np.float32), np.zeros((k_cls, size))
    mode = _mxcsr_get()
    _mxcsr_set(mode | _FTZ_DAZ)
    for n in range(n_img):
        sums[:] = 0.0
        for i in range(planes):
            _softmax_row(
                neg_cost, f_lower, f_upper, inv_eps, p, div, has_tv, width, xmask, n, i, z, zmax, total, u, acc
            )
            if (i + 1) % _FLUSH_ROWS == 0 or i == planes - 1:
                _flush(acc, sums)
        for k in range(k_cls):
            mass[n, k] = sums[k].sum()
    _mxcsr_set(mode)


@_jit
def fused_pass_3d(
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
    width,
    xmask,
):
    """:func:`~napari_vptv.core.solver.numba_kernels.fused_pass` of a volume (same
    operands in this module's layout, ``width`` = ``W``, ``xmask`` the x factor row): plane ``i`` reweighted (eq.
    25), plane ``i - 1`` the Chambolle step (eq. 18) and, with ``next_softmax``, the next
    iteration's softmax (eq. 26)."""
    n_img, planes, k_cls, size = s.shape
    z, zmax, total = np.empty((k_cls, size), np.float32), np.empty(size, np.float32), np.empty(size, np.float32)
    acc_u, acc_s, acc_sq = (
        np.zeros((k_cls, size), np.float32),
        np.zeros((k_cls, size), np.float32),
        np.zeros((1, size), np.float32),
    )
    sum_u, sum_s, sum_sq = np.zeros((k_cls, size)), np.zeros((k_cls, size)), np.zeros((1, size))
    mode = _mxcsr_get()
    _mxcsr_set(mode | _FTZ_DAZ)
    for n in range(n_img):
        sum_u[:] = 0.0
        sum_s[:] = 0.0
        sum_sq[:] = 0.0
        for i in range(planes + 1):
            if i < planes:
                _reweight_row(s, weight, u, reweight, check, n, i, total, acc_u, acc_sq)
            if i > 0:
                if has_tv:
                    _dual_row(u, p, step, width, xmask, n, i - 1, zmax)
                if next_softmax:
                    _softmax_row(
                        neg_cost,
                        f_lower,
                        f_upper,
                        inv_eps,
                        p,
                        div,
                        has_tv,
                        width,
                        xmask,
                        n,
                        i - 1,
                        z,
                        zmax,
                        total,
                        s,
                        acc_s,
                    )
            if i % _FLUSH_ROWS == 0 or i == planes:
                _flush(acc_u, sum_u)
                _flush(acc_s, sum_s)
                _flush(acc_sq, sum_sq)
        sq_change[n] = sum_sq.sum()
        for k in range(k_cls):
            mass_u[n, k] = sum_u[k].sum()
            mass_s[n, k] = sum_s[k].sum()
    _mxcsr_set(mode)
