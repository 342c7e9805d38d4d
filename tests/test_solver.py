"""The variational VPTV solver on synthetic images (fast; no /work/shared data).

Volumes are class fractions of the image; "within 0.5 %" means an absolute
difference of at most 0.005 between achieved and requested fractions.
"""

import numpy as np
import pytest
import torch

from napari_vptv.core.solver.costs import kmeans_init, kmeans_labels
from napari_vptv.core.solver.reference import divergence, gradient, vptv_iterate
from napari_vptv.core.solver.segment import class_argmax, prepare_image, vptv_segment
from napari_vptv.core.solver.volume_step import solve_volume_dual

TOL = 0.005


def _disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _three_phase(seed=0, shape=(64, 64), noise=0.08):
    """Grey image with three regions (truth fractions ~0.45 / 0.40 / 0.15), classes
    ordered by brightness as the k-means initialisation orders them."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.int32)
    truth[:, int(0.6 * shape[1]) :] = 1
    truth[_disc(shape, (shape[0] // 2, shape[1] // 4), shape[0] // 4.6)] = 2
    levels = np.array([0.2, 0.5, 0.8])
    img = levels[truth] + noise * rng.standard_normal(shape)
    return img.astype(np.float32), truth


def _fig4_toy(seed=0, n=96):
    """The paper's Fig. 4 toy: a circle whose intensity varies across it, on a black
    background, plus Gaussian noise of variance 0.01."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] / (n - 1)
    circle = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 <= 0.4**2
    img = np.where(circle, 0.3 + 0.7 * xx, 0.0)  # inhomogeneous: dark left, bright right
    img = img + rng.normal(0.0, np.sqrt(0.01), img.shape)
    return img.astype(np.float32), circle


# --------------------------------------------------------------------------- #
# volumes are met
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("volumes", [(0.5, 0.3, 0.2), (0.7, 0.2, 0.1), (0.34, 0.33, 0.33)])
def test_exact_volumes_grey_three_classes(volumes):
    img, _ = _three_phase()
    r = vptv_segment(img, 3, volumes=volumes, epsilon=0.05, tv_weight=0.05)
    assert r.labels.shape == img.shape
    np.testing.assert_allclose(r.volumes, volumes, atol=TOL)
    assert r.volume_spec.mode == "exact"


@pytest.mark.parametrize("volumes", [(0.25, 0.75), (0.4, 0.6)])
def test_exact_volumes_rgb_two_classes(volumes):
    rng = np.random.default_rng(1)
    disc = _disc((64, 64), (32, 32), 20)
    img = np.where(disc[..., None], [0.8, 0.3, 0.4], [0.9, 0.85, 0.8]) + 0.05 * rng.standard_normal((64, 64, 3))
    img = np.clip(img, 0, 1).astype(np.float32)
    r = vptv_segment(img, 2, volumes=volumes, channel_axis=-1, epsilon=0.05, tv_weight=0.05)
    np.testing.assert_allclose(r.volumes, volumes, atol=TOL)
    assert r.probabilities.shape == (2, 64, 64)
    np.testing.assert_allclose(r.probabilities.sum(0), 1.0, atol=1e-4)


def test_interval_volumes_binding_and_free_grey():
    img, truth = _three_phase()
    true_fr = np.bincount(truth.ravel(), minlength=3) / truth.size  # ~[0.45, 0.40, 0.15]
    # class 1 forced below its true fraction, class 2 forced above: both bounds bind
    lower = np.array([0.0, 0.05, true_fr[2] + 0.05])
    upper = np.array([1.0, true_fr[1] - 0.08, 1.0])
    r = vptv_segment(img, 3, volume_mode="interval", volume_bounds=(lower, upper), epsilon=0.05, tv_weight=0.05)
    assert np.all(r.volumes >= lower - TOL) and np.all(r.volumes <= upper + TOL), r.volumes
    assert abs(r.volumes[1] - upper[1]) <= TOL and abs(r.volumes[2] - lower[2]) <= TOL
    # wide intervals containing the truth: nothing binds, the classes are found
    r2 = vptv_segment(img, 3, volume_bounds=([0.3, 0.2, 0.05], [0.7, 0.6, 0.3]), epsilon=0.05, tv_weight=0.05)
    assert r2.volume_spec.mode == "interval"
    np.testing.assert_allclose(r2.volumes, true_fr, atol=0.02)


def test_interval_volumes_rgb_two_classes():
    rng = np.random.default_rng(2)
    disc = _disc((64, 64), (30, 34), 22)  # ~37 % of the image; darker, so class 0
    img = np.where(disc[..., None], [0.3, 0.2, 0.6], [0.9, 0.9, 0.9]) + 0.05 * rng.standard_normal((64, 64, 3))
    img = np.clip(img, 0, 1).astype(np.float32)
    lower, upper = [0.1, 0.7], [0.3, 0.9]  # the disc must shrink to <= 30 %
    r = vptv_segment(img, 2, volume_bounds=(lower, upper), channel_axis=-1, epsilon=0.05, tv_weight=0.05)
    assert lower[0] - TOL <= r.volumes[0] <= upper[0] + TOL
    assert abs(r.volumes[0] - 0.3) <= TOL
    assert np.all(disc[r.labels == 0])  # what is kept of class 0 lies in the disc


@pytest.mark.parametrize("v1", [0.25, 0.65])
def test_fig4_toy_volumes(v1):
    """Fig. 4 of the paper: with V1 = 25 % (less than the circle) and V1 = 65 % (more
    than the circle) the segmented areas follow the requested volumes."""
    img, circle = _fig4_toy()
    r = vptv_segment(img, 2, volumes=[1 - v1, v1], epsilon=0.01, tv_weight=0.02)
    assert abs(r.volumes[1] - v1) <= TOL
    assert abs(np.mean(r.labels == 1) - v1) <= TOL
    # the bright class sits on the circle: V1 = 25 % lies inside it, 65 % covers it
    if v1 < circle.mean():
        assert np.mean(circle[r.labels == 1]) > 0.95
    else:
        assert np.mean(r.labels[circle] == 1) > 0.95


def test_vptv_beats_kmeans_on_noisy_toy():
    rng = np.random.default_rng(3)
    truth = _disc((80, 80), (40, 40), 25).astype(np.int32)
    img = (0.35 + 0.3 * truth + 0.25 * rng.standard_normal(truth.shape)).astype(np.float32)
    feats = prepare_image(img).reshape(1, -1).T
    means, _ = kmeans_init(feats, 2, seed=0)
    km = kmeans_labels(feats, means).reshape(truth.shape)
    acc_km = np.mean(km == truth)
    vol = np.bincount(truth.ravel()) / truth.size
    r = vptv_segment(img, 2, volumes=vol, epsilon=0.01, tv_weight=0.05)
    acc_vptv = np.mean(r.labels == truth)
    assert acc_vptv > acc_km + 0.1, (acc_vptv, acc_km)
    assert acc_vptv > 0.95


def test_deterministic_for_a_seed():
    img, _ = _three_phase(seed=4, noise=0.15)
    a = vptv_segment(img, 3, volumes=[0.6, 0.25, 0.15], seed=7, epsilon=0.05, tv_weight=0.05)
    b = vptv_segment(img, 3, volumes=[0.6, 0.25, 0.15], seed=7, epsilon=0.05, tv_weight=0.05)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.n_iter == b.n_iter


def test_three_d_ball_volume():
    rng = np.random.default_rng(5)
    n = 24
    zz, yy, xx = np.mgrid[:n, :n, :n]
    ball = (zz - 12) ** 2 + (yy - 11) ** 2 + (xx - 13) ** 2 <= 8**2  # ~16 % of the volume
    img = (0.2 + 0.6 * ball + 0.1 * rng.standard_normal(ball.shape)).astype(np.float32)
    v = [0.8, 0.2]
    r = vptv_segment(img, 2, volumes=v, epsilon=0.05, tv_weight=0.05)
    assert r.labels.shape == img.shape
    np.testing.assert_allclose(r.volumes, v, atol=TOL)
    # the class-1 voxels contain the ball
    assert np.mean(r.labels[ball] == 1) > 0.95


# --------------------------------------------------------------------------- #
# discrete operators
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 2, 7, 9, 11)])
def test_gradient_divergence_adjoint(shape):
    g = torch.Generator().manual_seed(0)
    n_spatial = len(shape) - 2
    u = torch.randn(shape, generator=g, dtype=torch.float64)
    q = torch.randn(shape[:2] + (n_spatial,) + shape[2:], generator=g, dtype=torch.float64)
    lhs = (gradient(u, n_spatial) * q).sum()
    rhs = -(u * divergence(q, n_spatial)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
    # Neumann boundary: the last forward difference along each axis is zero
    gu = gradient(u, n_spatial)
    assert torch.all(gu[:, :, 0, -1] == 0)


# --------------------------------------------------------------------------- #
# bad input -> ValueError naming the problem
# --------------------------------------------------------------------------- #
_IMG = _three_phase()[0]


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.full((8, 8), np.nan, np.float32), {}, "NaN"),
        (np.array([[0.1, np.inf], [0.2, 0.3]], np.float32), {}, "infinite"),
        (np.zeros((0, 5), np.float32), {}, "empty"),
        (np.zeros(10, np.float32), {}, "2-D or 3-D"),
        (np.zeros((3, 4, 5, 6), np.float32), {}, "2-D or 3-D"),
        (np.full((16, 16), 0.5, np.float32), {}, "distinct values"),
        (_IMG, {"volumes": [0.0, 0.5, 0.5]}, r"fractions in \(0, 1\]"),
        (_IMG, {"volumes": [-0.2, 0.7, 0.5]}, r"fractions in \(0, 1\]"),
        (_IMG, {"volumes": [1.5, 0.2, 0.3]}, r"fractions in \(0, 1\]"),
        (_IMG, {"n_classes": 3, "volumes": [0.5, 0.5]}, "one value per class"),
        (_IMG, {"volumes": [0.5, 0.3, 0.1]}, "sum to 1"),
        (_IMG, {"volume_bounds": ([0.5, 0.1, 0.1], [0.4, 0.5, 0.5])}, "empty"),
        (_IMG, {"volume_bounds": ([0.5, 0.3, 0.3], [0.9, 0.5, 0.5])}, "lower volume bounds sum"),
        (_IMG, {"volume_bounds": ([0.1, 0.1, 0.1], [0.3, 0.3, 0.3])}, "upper volume bounds sum"),
        (_IMG, {"volume_bounds": ([0.1, 0.1, 0.1], [0.9, 0.0, 0.5])}, "upper volume bounds must be > 0"),
        (_IMG, {"volume_bounds": ([-0.1, 0.1, 0.1], [0.9, 0.5, 0.5])}, r"lie in \[0, 1\]"),
        (_IMG, {"volume_mode": "interval"}, "lower and upper"),
        (_IMG, {"volume_mode": "exact"}, "needs `volumes`"),
        (_IMG, {"volume_mode": "sometimes"}, "volume_mode"),
        (_IMG, {"n_classes": 1}, "n_classes"),
        (_IMG, {"epsilon": 0.0}, "epsilon"),
        (_IMG, {"epsilon": -1.0}, "epsilon"),
        (_IMG, {"epsilon": float("nan")}, "epsilon"),
        (_IMG, {"tv_weight": -0.1}, "tv_weight"),
        (_IMG, {"tv_weight": float("nan")}, "tv_weight"),
        (_IMG, {"similarity": "cosine"}, "similarity"),
        (_IMG, {"similarity": "histogram"}, "histogram"),
        (_IMG, {"max_num_iter": 0}, "max_num_iter"),
    ],
)
def test_bad_input_raises_value_error(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vptv_segment(image, **kwargs)


def test_bad_cost_shape_and_probabilities():
    with pytest.raises(ValueError, match="shape"):
        vptv_segment(_IMG, 2, cost=np.zeros((2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        vptv_segment(_IMG, 2, probabilities=-np.ones((2,) + _IMG.shape, np.float32))
    with pytest.raises(ValueError, match="not both"):
        p = np.full((2,) + _IMG.shape, 0.5, np.float32)
        vptv_segment(_IMG, 2, probabilities=p, cost=p)


def test_given_probabilities_respect_volumes():
    """The network path: a probability map instead of a similarity model."""
    img, truth = _three_phase()
    rng = np.random.default_rng(6)
    p = np.stack([(truth == i) * 0.6 + 0.2 + 0.1 * rng.random(truth.shape) for i in range(3)]).astype(np.float32)
    p /= p.sum(0, keepdims=True)
    r = vptv_segment(img, probabilities=p, volumes=[0.5, 0.3, 0.2], epsilon=0.05, tv_weight=0.05)
    np.testing.assert_allclose(r.volumes, [0.5, 0.3, 0.2], atol=TOL)


# --------------------------------------------------------------------------- #
# fast no-grad loop == differentiable loop; Newton volume dual
# --------------------------------------------------------------------------- #
def _random_problem(shape, mode, edge, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(shape, generator=g, dtype=dtype)
    k = shape[1]
    kw = {}
    if mode == "exact":
        v = torch.rand(k, generator=g, dtype=dtype) + 0.5
        kw["volumes"] = v / v.sum()
    elif mode == "interval":
        kw["volume_bounds"] = (torch.full((k,), 0.5 / k, dtype=dtype), torch.full((k,), 1.5 / k, dtype=dtype))
    if edge:
        kw["edge_weight"] = torch.rand((shape[0],) + shape[2:], generator=g, dtype=dtype)
    return cost, kw


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 2, 7, 9, 11)])
@pytest.mark.parametrize("mode", ["none", "exact", "interval"])
@pytest.mark.parametrize("edge", [False, True])
# float32: the fast loop keeps q normalised (q / lambda e) and -c / eps precomputed, so
# its roundings differ from the differentiable loop's; exact volumes integrate them in f
# (measured up to 2.3e-5 after 60 steps on the 3-D problem). float64 is the exactness check.
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 5e-5)])
def test_fast_loop_matches_differentiable_loop(shape, mode, edge, dtype, atol):
    cost, kw = _random_problem(shape, mode, edge, dtype)
    args = dict(epsilon=0.1, tv_weight=0.1, max_num_iter=60, tol=1e-5, **kw)
    ref = vptv_iterate(cost, backend="reference", **args)
    with torch.no_grad():
        fast = vptv_iterate(cost, **args)  # no_grad -> the in-place loop
    assert fast.n_iter == ref.n_iter
    for name in ("u", "q", "f", "f_lower", "f_upper"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=atol, rtol=0, msg=name)
    assert torch.equal(fast.converged, ref.converged)
    # a warm start from the result continues identically and is not modified
    q_before = fast.q.clone()
    again_ref = vptv_iterate(cost, backend="reference", state=ref, **{**args, "max_num_iter": 5})
    again = vptv_iterate(cost, backend="auto", state=fast, **{**args, "max_num_iter": 5})
    assert torch.equal(fast.q, q_before)
    torch.testing.assert_close(again.u, again_ref.u, atol=atol, rtol=0)


def test_fast_loop_with_cost_update_matches():
    cost, kw = _random_problem((1, 3, 20, 20), "exact", False, torch.float64, seed=3)

    def update(u):  # any function of u, applied every 4 iterations
        return cost + 0.1 * u

    args = dict(epsilon=0.1, tv_weight=0.2, max_num_iter=30, tol=0, cost_update=update, update_every=4, **kw)
    ref = vptv_iterate(cost, backend="reference", **args)
    fast = vptv_iterate(cost, backend="auto", **args)
    torch.testing.assert_close(fast.u, ref.u, atol=1e-10, rtol=0)
    torch.testing.assert_close(fast.cost, ref.cost, atol=1e-10, rtol=0)


def test_differentiable_path_gradcheck():
    """backward="full" differentiates through every step: check against finite differences."""
    cost, kw = _random_problem((1, 2, 4, 5), "interval", True, torch.float64, seed=1)
    cost.requires_grad_(True)

    def run(c):
        return vptv_iterate(c, epsilon=0.5, tv_weight=0.3, max_num_iter=3, tol=0, **kw).u

    assert run(cost).requires_grad  # autograd picks the differentiable loop by itself
    assert torch.autograd.gradcheck(run, (cost,), eps=1e-6, atol=1e-6)


def test_backend_choice_is_reported_and_checked():
    """backend="auto" names the loop it ran and why; a loop that cannot run the problem
    is refused with a sentence naming the backend."""
    cost, kw = _random_problem((1, 3, 8, 9), "exact", False, torch.float64, seed=1)
    state = vptv_iterate(cost, epsilon=0.5, max_num_iter=3, **kw)
    assert state.backend == "torch" and "float64" in state.backend_reason  # the kernels are float32
    assert vptv_iterate(cost, epsilon=0.5, max_num_iter=3, backend="reference", **kw).backend == "reference"
    cost.requires_grad_(True)
    state = vptv_iterate(cost, epsilon=0.5, max_num_iter=3, **kw)
    assert state.backend == "reference" and state.u.requires_grad and "gradient" in state.backend_reason
    for backend in ("torch", "numba"):
        with pytest.raises(ValueError, match=f"backend '{backend}' gives no gradient"):
            vptv_iterate(cost, epsilon=0.5, max_num_iter=3, backend=backend, **kw)
    with pytest.raises(ValueError, match="backend 'numba' cannot run this problem: float64"):
        vptv_iterate(cost.detach(), epsilon=0.5, max_num_iter=3, backend="numba", **kw)
    with pytest.raises(ValueError, match="backend must be one of"):
        vptv_segment(np.zeros((8, 8), np.float32), backend="gpu")


@pytest.mark.parametrize("mode", ["exact", "interval"])
def test_newton_volume_dual_matches_sinkhorn_fixed_point(mode):
    cost, kw = _random_problem((2, 3, 24, 24), mode, False, torch.float64, seed=2)
    kw.pop("edge_weight", None)
    if mode == "interval":  # make bounds bind: fractions of the free solution lie outside
        kw["volume_bounds"] = (
            torch.tensor([0.4, 0.0, 0.0], dtype=torch.float64),
            torch.tensor([1.0, 0.25, 1.0], dtype=torch.float64),
        )
    eps = 0.1
    ref = vptv_iterate(cost, epsilon=eps, tv_weight=0.0, max_num_iter=5000, tol=1e-10, volume_tol=1e-8, **kw)
    assert bool(ref.converged.all())
    u, f, sweeps = solve_volume_dual(cost, eps, volume_tol=1e-7, **kw)
    assert 0 < sweeps < 50
    torch.testing.assert_close(u, ref.u, atol=1e-4, rtol=0)


def test_volume_dual_stops_when_the_residual_stalls():
    """One-hot probabilities (ties everywhere, as in the rounding of a saturated
    solve): the class fractions move in jumps and the KKT test is never met. The
    solver stops after ``patience`` sweeps without progress and returns the best
    iterate instead of running its 50-sweep cap (WBC image 027)."""
    lab = torch.zeros(1, 20, 20, dtype=torch.long)
    lab[:, :10] = 1
    lab[:, :, :4] = 2
    u = torch.nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).double()
    cost = -torch.log(torch.clamp(u, min=1e-12))
    bounds = (
        torch.tensor([0.7, 0.10, 0.04], dtype=torch.float64),
        torch.tensor([0.96, 0.14, 0.07], dtype=torch.float64),
    )
    capped, _, n_capped = solve_volume_dual(cost, 0.01, volume_bounds=bounds, volume_tol=2e-4, patience=0)
    stopped, _, n_stopped = solve_volume_dual(cost, 0.01, volume_bounds=bounds, volume_tol=2e-4)
    assert n_capped == 50 and n_stopped <= 5
    torch.testing.assert_close(stopped.mean(dim=(2, 3)), capped.mean(dim=(2, 3)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("check_every", [1, 3])
def test_check_every_same_in_both_loops(check_every):
    """The stopping test every k iterations: both loops stop at the same iteration,
    one of 2, 2 + k, ..., and agree."""
    cost, kw = _random_problem((1, 3, 16, 16), "interval", True, torch.float64, seed=4)
    args = dict(epsilon=0.1, tv_weight=0.1, max_num_iter=200, tol=1e-4, check_every=check_every, **kw)
    ref = vptv_iterate(cost, backend="reference", **args)
    fast = vptv_iterate(cost, backend="auto", **args)
    assert bool(fast.converged.all()) and fast.n_iter == ref.n_iter
    assert (fast.n_iter - 2) % check_every == 0
    torch.testing.assert_close(fast.u, ref.u, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="check_every"):
        vptv_iterate(cost, check_every=0, **{k: v for k, v in args.items() if k != "check_every"})


def test_inactive_bounds_keep_multipliers_zero():
    """A lower bound of 0 / upper bound of 1 never binds: its multiplier stays 0."""
    cost, _ = _random_problem((1, 3, 12, 12), "none", False, torch.float64, seed=5)
    bounds = (torch.tensor([0.0, 0.4, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.2], dtype=torch.float64))
    st = vptv_iterate(cost, volume_bounds=bounds, epsilon=0.1, tv_weight=0.1, max_num_iter=300, tol=1e-6)
    assert torch.all(st.f_lower[:, [0, 2]] == 0) and torch.all(st.f_upper[:, [0, 1]] == 0)
    mass = st.u.mean(dim=(2, 3))[0]
    assert mass[1] >= 0.4 - 1e-3 and mass[2] <= 0.2 + 1e-3


def test_class_argmax_is_argmax_first_on_ties():
    u = torch.rand(2, 4, 9, 7, generator=torch.Generator().manual_seed(0))
    u[0, 1, 0, 0] = u[0, 3, 0, 0] = 2.0  # a tie: the first index wins
    assert torch.equal(class_argmax(u), u.argmax(dim=1)) and class_argmax(u)[0, 0, 0] == 1


def test_warm_start_same_labels_fewer_iterations():
    img, _ = _three_phase(seed=3)
    kw = dict(
        volume_mode="interval", volume_bounds=([0.3, 0.3, 0.1], [0.6, 0.5, 0.2]), epsilon=0.05, tv_weight=0.05, tol=1e-4
    )
    cold = vptv_segment(img, 3, **kw)
    noisy = img + np.random.default_rng(0).normal(0, 0.01, img.shape).astype(np.float32)
    ref = vptv_segment(noisy, 3, **kw)
    warm = vptv_segment(noisy, 3, warm_start=cold, **kw)
    assert np.mean(warm.labels == ref.labels) > 0.995
    assert warm.n_iter < ref.n_iter
    with pytest.raises(ValueError, match="warm_start has shape"):
        vptv_segment(img[:40], 3, warm_start=cold, **kw)
