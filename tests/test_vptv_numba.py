"""The fused numba kernels of the no-grad VPTV loop (core.solver.numba_kernels, 2-D, and
core.solver.numba_kernels3d, 3-D) against the torch no-grad loop (core.solver.fast) they
replace on the CPU and the reference loop: same numbers to float32 rounding, same labels;
the fallback and the uncached (read-only) case.

Synthetic problems and the package's sample images only (no /work/shared).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from napari_vptv.core.io.samples import load_sample, sample_ids  # noqa: E402
from napari_vptv.core.solver import numba_loop  # noqa: E402
from napari_vptv.core.solver.dispatch import choose_backend  # noqa: E402
from napari_vptv.core.solver.reference import vptv_iterate  # noqa: E402
from napari_vptv.core.solver.segment import vptv_segment  # noqa: E402
from napari_vptv.core.wbc.preset import wbc_preset  # noqa: E402


def _run(numba_on, monkeypatch, fn, *args, **kwargs):
    monkeypatch.setattr(numba_loop, "NUMBA_AVAILABLE", numba_on)
    with torch.no_grad():
        return fn(*args, **kwargs)


def _problem(shape, mode, edge, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(shape, generator=g)
    k = shape[1]
    kw = {}
    if mode == "exact":
        v = torch.rand(k, generator=g) + 0.5
        kw["volumes"] = v / v.sum()
    elif mode == "interval":  # the first class's lower bound binds
        kw["volume_bounds"] = (torch.tensor([0.6] + [0.0] * (k - 1)), torch.full((k,), 0.9))
    if edge:
        kw["edge_weight"] = torch.rand((shape[0],) + shape[2:], generator=g)
    return cost, kw


@pytest.mark.parametrize("mode", ["none", "exact", "interval"])
@pytest.mark.parametrize("edge", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 31, 45), (1, 4, 1, 17), (1, 2, 16, 1)])
def test_numba_loop_matches_torch_loop(mode, edge, shape, monkeypatch):
    cost, kw = _problem(shape, mode, edge)
    args = dict(epsilon=0.1, tv_weight=0.1, max_num_iter=80, tol=1e-5, **kw)
    assert choose_backend("auto", cost)[0] == "numba"  # the problem runs the kernels
    fused = _run(True, monkeypatch, vptv_iterate, cost, **args)
    ref = _run(False, monkeypatch, vptv_iterate, cost, **args)
    assert (fused.backend, ref.backend) == ("numba", "torch")
    forced = vptv_iterate(cost, backend="torch", **args)  # the same loop, asked for by name
    torch.testing.assert_close(forced.u, ref.u, atol=0, rtol=0)
    assert fused.n_iter == ref.n_iter
    assert torch.equal(fused.converged, ref.converged)
    for name in ("u", "q", "f", "f_lower", "f_upper"):
        torch.testing.assert_close(getattr(fused, name), getattr(ref, name), atol=2e-5, rtol=0, msg=name)
    # a warm start continues identically and is not modified
    q_before = fused.q.clone()
    again = _run(True, monkeypatch, vptv_iterate, cost, state=fused, **{**args, "max_num_iter": 5})
    again_ref = _run(False, monkeypatch, vptv_iterate, cost, state=ref, **{**args, "max_num_iter": 5})
    assert torch.equal(fused.q, q_before)
    torch.testing.assert_close(again.u, again_ref.u, atol=2e-5, rtol=0)


# 3-D: planes, rows and columns of one voxel (each axis's boundary case), several volumes,
# 2 and 3 classes
@pytest.mark.parametrize("mode", ["none", "exact", "interval"])
@pytest.mark.parametrize("edge", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 9), (2, 2, 6, 8, 7), (1, 2, 1, 6, 8), (1, 2, 3, 4, 1), (1, 2, 4, 1, 6)])
def test_numba_3d_loop_matches_torch_and_reference_loops(mode, edge, shape, monkeypatch):
    cost, kw = _problem(shape, mode, edge, seed=2)
    args = dict(epsilon=0.1, tv_weight=0.1, max_num_iter=80, tol=1e-5, **kw)
    assert choose_backend("auto", cost)[0] == "numba"  # the 3-D kernels run the problem
    fused = _run(True, monkeypatch, vptv_iterate, cost, **args)
    loop = _run(False, monkeypatch, vptv_iterate, cost, **args)
    ref = vptv_iterate(cost, backend="reference", **args)
    assert (fused.backend, loop.backend, ref.backend) == ("numba", "torch", "reference")
    for other, atol in ((loop, 2e-5), (ref, 5e-5)):
        assert fused.n_iter == other.n_iter
        assert torch.equal(fused.converged, other.converged)
        for name in ("u", "q", "f", "f_lower", "f_upper"):
            torch.testing.assert_close(getattr(fused, name), getattr(other, name), atol=atol, rtol=0, msg=name)
        assert torch.equal(fused.u.argmax(dim=1), other.u.argmax(dim=1))  # same labels
    assert fused.q.shape == (shape[0], shape[1], 3) + shape[2:] and fused.q.is_contiguous()
    # a warm start continues identically and is not modified
    q_before = fused.q.clone()
    again = _run(True, monkeypatch, vptv_iterate, cost, state=fused, **{**args, "max_num_iter": 5})
    again_loop = _run(False, monkeypatch, vptv_iterate, cost, state=loop, **{**args, "max_num_iter": 5})
    assert torch.equal(fused.q, q_before)
    torch.testing.assert_close(again.u, again_loop.u, atol=2e-5, rtol=0)


def test_numba_3d_cost_update_and_callback(monkeypatch):
    """3-D: the cost update and the callback see ``(N, K, D, H, W)`` views of the kernels'
    plane-interleaved buffers, with the torch loop's values."""
    cost, kw = _problem((2, 3, 6, 5, 7), "exact", True, seed=3)
    seen = {True: [], False: []}

    def run(flag):
        def update(u):
            return cost + 0.5 * u

        def callback(it, u):
            seen[flag].append(u.sum(dim=(2, 3, 4)).clone())

        args = dict(epsilon=0.1, tv_weight=0.2, max_num_iter=30, tol=0, update_every=4)
        return _run(flag, monkeypatch, vptv_iterate, cost, cost_update=update, callback=callback, **args, **kw)

    fused, ref = run(True), run(False)
    assert fused.backend == "numba" and len(seen[True]) == len(seen[False]) == 30
    torch.testing.assert_close(torch.stack(seen[True]), torch.stack(seen[False]), atol=2e-3, rtol=1e-5)
    torch.testing.assert_close(fused.u, ref.u, atol=2e-5, rtol=0)
    torch.testing.assert_close(fused.cost, ref.cost, atol=2e-5, rtol=0)


def test_numba_3d_same_labels_on_a_volume(monkeypatch):
    """vptv_segment of a noisy 3-D ball (exact volumes, edge-weighted 3-D TV): the 3-D
    kernels give the torch loop's labels and iterations."""
    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[:12, :30, :34]
    truth = (((zz - 6) * 2.5) ** 2 + (yy - 15) ** 2 + (xx - 17) ** 2 < 10**2).astype(int)
    image = (0.3 + 0.4 * truth + 0.15 * rng.standard_normal(truth.shape)).astype(np.float32)
    args = dict(n_classes=2, volumes=(0.9, 0.1), epsilon=0.05, tv_weight=0.05, edge=True)
    fused = _run(True, monkeypatch, vptv_segment, image, **args)
    ref = _run(False, monkeypatch, vptv_segment, image, **args)
    assert (fused.state.backend, ref.state.backend) == ("numba", "torch")
    assert fused.n_iter == ref.n_iter
    np.testing.assert_array_equal(fused.labels, ref.labels)
    np.testing.assert_allclose(fused.probabilities, ref.probabilities, atol=1e-5, rtol=0)


def test_numba_loop_cost_update_and_callback(monkeypatch):
    """The EM-style cost update and the progress callback see (N, K, H, W) views of
    the kernels' row-interleaved buffers, with the torch loop's values."""
    cost, kw = _problem((1, 3, 24, 20), "exact", False, seed=3)
    seen = {True: [], False: []}

    def run(flag):
        def update(u):
            return cost + 0.5 * u

        def callback(it, u):
            seen[flag].append(u.sum(dim=(2, 3)).clone())

        return _run(
            flag,
            monkeypatch,
            vptv_iterate,
            cost,
            epsilon=0.1,
            tv_weight=0.2,
            max_num_iter=30,
            tol=0,
            cost_update=update,
            update_every=4,
            callback=callback,
            **kw,
        )

    fused, ref = run(True), run(False)
    assert len(seen[True]) == len(seen[False]) == 30
    torch.testing.assert_close(torch.stack(seen[True]), torch.stack(seen[False]), atol=2e-3, rtol=1e-5)
    torch.testing.assert_close(fused.u, ref.u, atol=2e-5, rtol=0)
    torch.testing.assert_close(fused.cost, ref.cost, atol=2e-5, rtol=0)


@pytest.mark.parametrize("sample", sample_ids())
def test_numba_same_labels_on_samples(sample, monkeypatch):
    """The WBC preset (interval volumes, colour histogram cost, TV) on the bundled
    sample images: same labels and iterations, probabilities within 1e-5."""
    image, _ = load_sample(sample)
    preset = wbc_preset("interval")
    fused = _run(True, monkeypatch, vptv_segment, image, **preset)
    ref = _run(False, monkeypatch, vptv_segment, image, **preset)
    assert fused.n_iter == ref.n_iter
    np.testing.assert_array_equal(fused.labels, ref.labels)
    np.testing.assert_allclose(fused.probabilities, ref.probabilities, atol=1e-5, rtol=0)


def test_numba_same_labels_synthetic_exact_volumes_with_edges(monkeypatch):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:80, :90]
    truth = ((yy - 40) ** 2 + (xx - 45) ** 2 < 25**2).astype(int) + ((yy - 40) ** 2 + (xx - 45) ** 2 < 10**2)
    image = (np.array([0.2, 0.5, 0.8])[truth] + 0.1 * rng.standard_normal(truth.shape)).astype(np.float32)
    args = dict(n_classes=3, volumes=(0.6, 0.3, 0.1), epsilon=0.05, tv_weight=0.05, edge=True)
    fused = _run(True, monkeypatch, vptv_segment, image, **args)
    ref = _run(False, monkeypatch, vptv_segment, image, **args)
    assert fused.n_iter == ref.n_iter
    np.testing.assert_array_equal(fused.labels, ref.labels)
    np.testing.assert_allclose(fused.volumes, (0.6, 0.3, 0.1), atol=0.005)


# bounds free at every eps (6 skipped), violated at the first (0), from the fourth (3)
@pytest.mark.parametrize(
    "bounds",
    [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.3, 0.2, 0.1), (0.5, 0.4, 0.3)), ((0.0, 0.0, 0.0), (0.3219, 1.0, 1.0))],
)
def test_rounding_skips_only_dual_steps_that_stay_zero(bounds, monkeypatch):
    """The volume rounding's shortcut (core.solver.numba_loop.rounding_steps_at_zero): the
    leading eps it skips are exactly those where the dual solver keeps f = 0, and the
    labels equal those of the full eps-scaling loop."""
    from napari_vptv.core.solver.segment import round_to_volumes
    from napari_vptv.core.solver.volume_step import solve_volume_dual
    from napari_vptv.core.solver.volumes import make_volume_spec

    g = torch.Generator().manual_seed(4)
    u = torch.softmax(3 * torch.randn((1, 3, 40, 50), generator=g), dim=1)
    spec = make_volume_spec(3, "interval", None, *bounds)
    cost = -torch.log(torch.clamp(u, min=1e-12))
    epsilons = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    steps = numba_loop.rounding_steps_at_zero(cost, *spec.solver_kwargs()["volume_bounds"], epsilons, 2e-4)
    f = None
    for i, eps in enumerate(epsilons):
        _, f, sweeps = solve_volume_dual(
            cost, eps, f=f, volume_tol=2e-4, volume_bounds=spec.solver_kwargs()["volume_bounds"]
        )
        if sweeps:  # the first eps whose f moves: nothing from here on is skipped
            assert steps <= i
            break
    else:
        assert steps == len(epsilons)
    fast = _run(True, monkeypatch, round_to_volumes, u, spec)
    full = _run(False, monkeypatch, round_to_volumes, u, spec)
    assert torch.equal(fast, full)


def test_kernels_restore_the_denormal_mode(monkeypatch):
    """The kernels flush denormals to zero while they run (x86 MXCSR) and restore the
    mode: numpy and torch afterwards still produce denormal numbers; a problem whose
    probabilities underflow (small eps, large costs) matches the torch loop."""
    g = torch.Generator().manual_seed(5)
    cost = 400 * torch.rand((1, 3, 20, 24), generator=g)
    args = dict(
        epsilon=0.05,
        tv_weight=0.05,
        max_num_iter=40,
        tol=1e-4,
        volume_bounds=(torch.tensor([0.2, 0.1, 0.1]), torch.tensor([0.6, 0.5, 0.5])),
    )
    fused = _run(True, monkeypatch, vptv_iterate, cost, **args)
    ref = _run(False, monkeypatch, vptv_iterate, cost, **args)
    assert (ref.u[ref.u > 0] < 1e-38).any()  # the torch loop has denormal probabilities here
    assert fused.n_iter == ref.n_iter
    torch.testing.assert_close(fused.u, ref.u, atol=2e-5, rtol=0)
    assert (np.array([1e-20], np.float32) * np.float32(1e-20))[0] > 0
    assert (torch.tensor([1e-20]) * 1e-20).item() > 0


def test_torch_loop_where_numba_does_not_apply(monkeypatch):
    """Without numba, for float64, 3-D and autograd the torch loops run (and give a result)."""
    cost, kw = _problem((1, 3, 12, 14), "interval", True)
    monkeypatch.setattr(numba_loop, "NUMBA_AVAILABLE", False)
    assert choose_backend("auto", cost)[0] == "torch"
    with torch.no_grad():
        st = vptv_iterate(cost, epsilon=0.1, tv_weight=0.1, max_num_iter=20, **kw)
    assert torch.isfinite(st.u).all() and st.n_iter > 1 and st.backend == "torch"
    monkeypatch.setattr(numba_loop, "NUMBA_AVAILABLE", True)
    assert choose_backend("auto", cost)[0] == "numba"
    name, reason = choose_backend("auto", cost.double())
    assert name == "torch" and "float64" in reason
    assert choose_backend("auto", cost[:, :, None])[0] == "numba"  # 3-D: the 3-D kernels
    name, reason = choose_backend("auto", cost[:, :, None, None])
    assert name == "torch" and "4-D" in reason
    assert choose_backend("auto", cost, needs_grad=True)[0] == "reference"


def test_kernels_compile_without_a_writable_cache(tmp_path):
    """Where numba finds no writable cache directory (read-only site-packages and
    cache dir), decorating with cache=True raises; the module falls back to uncached
    kernels and a solve still runs. Real numba, in a fresh process."""
    script = textwrap.dedent("""
        import torch
        from napari_vptv.core.solver import numba_kernels, numba_loop
        from napari_vptv.core.solver.reference import vptv_iterate
        cost = torch.rand(1, 3, 9, 11)
        with torch.no_grad():
            st = vptv_iterate(cost, epsilon=0.1, tv_weight=0.1, max_num_iter=5, volumes=torch.tensor([.5, .3, .2]))
        assert numba_loop.NUMBA_AVAILABLE and st.backend == "numba" and torch.isfinite(st.u).all()
        assert numba_kernels.softmax_pass._cache.__class__.__name__ == "NullCache"
        print("ok")
    """)
    unwritable = tmp_path / "file"
    unwritable.write_text("")  # a file: no directory can be made below it
    env = dict(
        os.environ, NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator", NUMBA_CACHE_DIR=str(unwritable / "cache")
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_torch_reweight_never_divides_zero_by_zero():
    """A pixel whose only non-zero class gets an underflowing weight (huge volume duals,
    e.g. the WBC preset's costs with eps 0.05) stays 0 instead of NaN."""
    import torch

    from napari_vptv.core.solver.fast import FastVPTV

    cost = torch.zeros(1, 3, 4, 5)
    fast = FastVPTV(cost, None, None, epsilon=0.05, tau=0.25)
    u = torch.zeros(1, 3, 4, 5)
    u[:, 0] = 1.0  # class 0 only
    u[:, :, 0, 0] = torch.tensor([0.5, 0.25, 0.25])
    log_w = torch.tensor([[-200.0, 0.0, 0.0]])  # exp underflows to 0 for class 0
    fast.reweight(u, log_w)
    assert torch.isfinite(u).all()
    assert torch.allclose(u[0, :, 0, 0], torch.tensor([0.0, 0.5, 0.5]))
    assert float(u[0, :, 1, 1].abs().sum()) == 0.0
