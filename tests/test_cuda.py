"""The solver and the networks on a CUDA device. Skipped without one.

On a machine with a GPU these check that the default method, the variational solver
and a network give the CPU's labels, and that the iteration synchronises with the host
only at its stopping tests (``check_every`` is 10 on CUDA), not every iteration.
"""

import warnings

import pytest

torch = pytest.importorskip("torch")

from napari_vptv.api import segment_image  # noqa: E402
from napari_vptv.core.io.samples import load_sample  # noqa: E402
from napari_vptv.core.solver.reference import vptv_iterate  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize(
    "settings", [{}, {"method": "vptv", "preset": "wbc", "volume_mode": "interval"}, {"method": "unet"}]
)
def test_cuda_gives_the_cpu_labels(settings):
    image, _ = load_sample("001")
    cpu = segment_image(image, device="cpu", **settings).labels
    gpu = segment_image(image, device="cuda", **settings).labels
    assert gpu.shape == cpu.shape
    assert (gpu == cpu).mean() > 0.999  # float rounding differs between the devices' kernels


def test_cuda_iteration_syncs_only_at_its_stopping_tests():
    g = torch.Generator(device="cuda").manual_seed(0)
    cost = torch.rand((1, 3, 300, 300), generator=g, device="cuda")
    bounds = (torch.tensor([0.2, 0.1, 0.05], device="cuda"), torch.tensor([0.8, 0.5, 0.4], device="cuda"))
    n_iter = 60
    vptv_iterate(cost, volume_bounds=bounds, epsilon=1.0, tv_weight=2.0, max_num_iter=5, tol=0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                vptv_iterate(cost, volume_bounds=bounds, epsilon=1.0, tv_weight=2.0, max_num_iter=n_iter, tol=0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # one per stopping test (every 10th iteration) plus the set-up and the result: not one per iteration
    assert len(syncs) <= n_iter // 10 + 10, [str(w.message)[:120] for w in syncs[:5]]
