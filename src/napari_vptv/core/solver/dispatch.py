"""Which loop of Algorithm 1 runs, and why: the ``backend=`` of the solver.

Three loops compute the same iteration (same steps, same numbers to float rounding,
tested against each other in ``tests/test_solver.py`` and ``tests/test_vptv_numba.py``):

``"reference"`` (:mod:`napari_vptv.core.solver.reference`)
    Out-of-place torch operations, so autograd runs through every step: the loop of
    the network layer's ``backward="full"`` and the readable one.
``"torch"`` (:mod:`napari_vptv.core.solver.fast`)
    The allocation-free in-place torch loop, no gradient: any device, 2-D and 3-D,
    float32 and float64.
``"numba"`` (:mod:`napari_vptv.core.solver.numba_loop`)
    Fused CPU kernels, one sweep over the pixels per iteration, no gradient: CPU,
    float32, 2-D and 3-D.

:func:`choose_backend` decides for
:func:`~napari_vptv.core.solver.reference.vptv_iterate` (and so for
:func:`~napari_vptv.core.solver.segment.vptv_segment`, the network layer, mask
correction and the baselines); the result's ``backend`` and ``backend_reason`` say
which loop ran and why. ``"auto"``: ``"reference"`` when a gradient is needed, else
``"numba"`` where it applies, else ``"torch"``.

Which loop runs where:

* CPU, 2-D images and 3-D volumes (the plugin, the CLI, the API on a laptop or a
  server, mask correction's batched object crops): ``"numba"``.
* float64 costs, a GPU, or no numba: ``"torch"``.
* Training the network through the layer (gradients): ``"reference"``.

Measured with ``nice -n 5 python benchmarks/bench_backends.py --threads 1`` on the
tree of the commit that added this module (parent ``b73d3d1``): 2-core x86_64 VM
shared with other jobs (load average about 7), no GPU, torch 2.13.0+cpu, one torch
thread; the WBC preset's costs, volume interval, eps and TV weight on WBC image 001
(300x300; reflect-padded to 640x480); 100 iterations, no tolerance; ms per iteration,
median of 5 of the process CPU time (wall time about twice that under this load);
``reference`` under ``no_grad``::

    problem                    reference  torch  numba  fastest
    300x300 float32                 4.19   1.53   0.87  numba
    640x480 float32                16.32   5.14   3.39  numba
    300x300 float64                 9.62   3.61    n/a  torch
    8x300x300 float32 (3-D)        63.10  23.65    n/a  torch

All three are kept: ``"numba"`` is the fastest on every 2-D CPU problem; ``"torch"``
is the fastest where the kernels do not apply (float64 above; on a GPU it is the only
no-grad loop); ``"reference"`` is the only one with gradients. The 3-D kernels
(:mod:`napari_vptv.core.solver.numba_kernels3d`) came later; the same command on
their commit (same machine, load average about 3) gave for the 3-D row reference
101.4, torch 39.0, numba 23.1 ms (2-D rows: 7.70 / 2.65 / 1.04 and 22.5 / 7.26 /
5.54 ms). On mask correction's batched nuclei crops (``(N, 2, D, H, W)`` of 10-22 x
18-39 x 14-39 voxels, about 15 iterations each; stardist's 3-D stack with the dilated
mask of ``benchmarks/bench_correct_stardist.py``) the batched solves of one
correction took about 0.15-0.17 s of CPU time against 0.34 s in the torch loop.
"""

from __future__ import annotations

from typing import Tuple

__all__ = ["BACKENDS", "choose_backend"]

#: the values of ``backend=``
BACKENDS = ("auto", "reference", "torch", "numba")


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` (a sentence naming ``backend``) for an unknown value."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def choose_backend(backend: str, cost, *, needs_grad: bool = False) -> Tuple[str, str]:
    """The loop that runs a problem, and why.

    Parameters
    ----------
    backend : {"auto", "reference", "torch", "numba"}
        What the caller asks for (see the module docstring).
    cost : tensor ``(N, K, *spatial)``
        The problem's costs: their device, dtype and number of spatial axes decide
        whether the numba kernels apply.
    needs_grad : bool
        Whether a gradient must flow through the loop (grad mode on and an input that
        requires it).

    Returns
    -------
    name : str
        ``"reference"``, ``"torch"`` or ``"numba"``.
    reason : str
        One sentence: why this loop.

    Raises
    ------
    ValueError
        Unknown ``backend``; ``"torch"`` / ``"numba"`` asked for where a gradient is
        needed; ``"numba"`` asked for a problem its kernels cannot run.
    """
    from .numba_loop import unavailable_because

    check_backend(backend)
    if backend == "reference":
        return "reference", "asked for (backend='reference')"
    if needs_grad:
        if backend != "auto":
            raise ValueError(
                f"backend {backend!r} gives no gradient, but an input requires one: use backend='reference' or 'auto'"
            )
        return "reference", "a gradient is needed (grad mode on and an input requires grad)"
    why_not = unavailable_because(cost)
    if backend == "numba":
        if why_not:
            raise ValueError(f"backend 'numba' cannot run this problem: {why_not}")
        return "numba", "asked for (backend='numba')"
    if backend == "torch":
        return "torch", "asked for (backend='torch')"
    if not why_not:
        return "numba", "no gradient needed, CPU float32 2-D or 3-D problem: the numba kernels are the fastest loop"
    return "torch", f"no gradient needed; not numba: {why_not}"
