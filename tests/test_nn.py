"""Tests of the VPTV-softmax layer, the U-net / VPTVU-net and the shipped weights.

Small and CPU-only: no training beyond a 2-step smoke run.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_vptv.core.solver.reference import vptv_iterate, vptv_probabilities  # noqa: E402
from napari_vptv.nn import data as D  # noqa: E402
from napari_vptv.nn.augment import dihedral  # noqa: E402
from napari_vptv.nn.layer import SoftmaxUNet, VPTVSoftmax, VPTVUNet, build_model  # noqa: E402
from napari_vptv.nn.sources import split_names  # noqa: E402
from napari_vptv.nn.unet import UNet, count_parameters, inference_backbone  # noqa: E402


def _logits(shape=(1, 2, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- layer
@pytest.mark.parametrize("volume_mode", ["exact", "interval", "none"])
def test_full_backward_gradcheck(volume_mode):
    L = _logits().requires_grad_(True)
    layer = VPTVSoftmax(epsilon=0.7, tv_weight=0.3, num_iter=4, backward="full", volume_mode=volume_mode)
    v = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    vb = (torch.tensor([0.35, 0.2], dtype=torch.float64), torch.tensor([0.8, 0.65], dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: layer(x, volumes=v, volume_bounds=vb), (L,), eps=1e-6, atol=1e-5)


def test_quasi_backward_is_final_softmax_gradient():
    L = _logits((1, 3, 5, 5), seed=1).requires_grad_(True)
    eps = 0.8
    layer = VPTVSoftmax(epsilon=eps, tv_weight=0.4, num_iter=6, backward="quasi")
    v = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    w = _logits((1, 3, 5, 5), seed=2)
    out = layer(L, volumes=v)
    (g_quasi,) = torch.autograd.grad((out * w).sum(), L)

    with torch.no_grad():
        st = vptv_iterate(-L, volumes=v, epsilon=eps, tv_weight=0.4, max_num_iter=6, tol=0.0)
    q, f = st.q.clone(), st.f.clone()
    fixed = lambda x: vptv_probabilities(-x, q, f, eps)  # noqa: E731
    torch.testing.assert_close(out, fixed(L))
    (g_fixed,) = torch.autograd.grad((fixed(L) * w).sum(), L)
    torch.testing.assert_close(g_quasi, g_fixed)
    # and that closing softmax's gradient is right (finite differences)
    assert torch.autograd.gradcheck(fixed, (L,), eps=1e-6, atol=1e-5)
    # quasi differs from full backprop (the dropped path through q, f is real)
    full = VPTVSoftmax(epsilon=eps, tv_weight=0.4, num_iter=6, backward="full")
    (g_full,) = torch.autograd.grad((full(L, volumes=v) * w).sum(), L)
    assert not torch.allclose(g_full, g_quasi)


def test_forward_meets_exact_volumes():
    g = torch.Generator().manual_seed(3)
    L = 3 * torch.randn(2, 3, 16, 16, generator=g)
    v = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    layer = VPTVSoftmax(epsilon=0.1, tv_weight=0.05, num_iter=300, volume_mode="exact")
    with torch.no_grad():
        u = layer(L, volumes=v)
    torch.testing.assert_close(u.sum(1), torch.ones(2, 16, 16))
    assert (u.mean(dim=(2, 3)) - v).abs().max() < 1e-2
    # hard labels roughly too, for small eps
    lab = u.argmax(1)
    frac = torch.stack([(lab == k).float().mean(dim=(1, 2)) for k in range(3)], 1)
    assert (frac - v).abs().max() < 0.05


def test_forward_meets_interval_volumes():
    g = torch.Generator().manual_seed(4)
    L = 2 * torch.randn(1, 3, 12, 12, generator=g)
    L[:, 0] += 4  # class 0 dominates without constraint
    lo = torch.tensor([0.2, 0.25, 0.25])
    hi = torch.tensor([0.5, 0.6, 0.6])
    layer = VPTVSoftmax(epsilon=0.1, tv_weight=0.0, num_iter=400, volume_mode="interval")
    with torch.no_grad():
        m = layer(L, volume_bounds=(lo, hi)).mean(dim=(2, 3))[0]
    assert torch.all(m >= lo - 1e-2) and torch.all(m <= hi + 1e-2)


def test_volume_mode_none_and_zero_iter_is_softmax():
    L = _logits((1, 3, 4, 4))
    assert torch.allclose(VPTVSoftmax(num_iter=0)(L), torch.softmax(L, 1))
    assert torch.allclose(
        VPTVSoftmax(tv_weight=0, num_iter=5, volume_mode="none")(L, volumes=[0.2, 0.3, 0.5]), torch.softmax(L, 1)
    )


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="backward"):
        VPTVSoftmax(backward="nope")
    with pytest.raises(ValueError, match="volume_mode"):
        VPTVSoftmax(volume_mode="x")
    with pytest.raises(ValueError, match="epsilon"):
        VPTVSoftmax(epsilon=0)


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (300, 300)])
def test_unet_shapes_any_size(hw):
    net = UNet(base_channels=4, depth=3).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, *hw))
    assert y.shape == (1, 3, *hw)


def test_default_unet_size():
    n = count_parameters(UNet())
    assert 300_000 <= n <= 600_000


def _trained_batchnorm_unet(seed=0):
    """A small U-net whose BatchNorms carry non-trivial running statistics and affines."""
    torch.manual_seed(seed)
    net = SoftmaxUNet(base_channels=4, depth=2)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # running means / variances away from 0 / 1
            net.backbone(torch.rand(2, 3, 32, 32) * 3 + 1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    return net.eval()


def test_inference_folds_batchnorm_with_the_same_logits():
    net = _trained_batchnorm_unet()
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        folded = inference_backbone(net.backbone)
        assert folded is not net.backbone
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert inference_backbone(net.backbone) is folded  # cached
        torch.testing.assert_close(net.logits(x), net.backbone(x), rtol=1e-5, atol=1e-5)
    assert "_folded" not in "".join(net.state_dict())  # the cache is not part of the weights
    # with gradients on (training, fine-tuning) the module itself runs
    assert inference_backbone(net.backbone) is net.backbone
    assert net.logits(x).requires_grad


def test_inference_fold_follows_weight_changes():
    net = _trained_batchnorm_unet()
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        before = net.logits(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)  # one fine-tuning step changes the weights in place
    net.train()
    net.logits(x).square().mean().backward()
    opt.step()
    net.eval()
    with torch.inference_mode():
        after = net.logits(x)
        torch.testing.assert_close(after, net.backbone(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    # a rebuilt copy does not carry the previous one inside it (fine-tuning rounds would nest copies)
    assert "_folded" not in net.backbone.__dict__["_folded"][1].__dict__


def test_vptv_unet_odd_size_probabilities():
    net = VPTVUNet(base_channels=4, num_iter=5).eval()
    with torch.no_grad():
        p = net(torch.randn(2, 3, 31, 45), volumes=torch.tensor([0.7, 0.2, 0.1]))
    assert p.shape == (2, 3, 31, 45)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 31, 45))


@pytest.mark.parametrize("arch", ["unet", "vptv-unet"])
def test_smoke_training(arch):
    torch.manual_seed(0)
    net = build_model(arch, unet_kwargs=dict(base_channels=4), head_kwargs=dict(num_iter=5))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 1.0).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        xb, yb = dihedral(x, y, g)
        p = net(xb, volumes=D.volume_targets(yb))
        loss = torch.nn.functional.nll_loss(torch.log(p.clamp(min=1e-8)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_augment_keeps_pairs_aligned():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (8, 6, 6), generator=g)
    x = y[:, None].float().expand(8, 3, 6, 6)
    xa, ya = dihedral(x, y, g)
    assert torch.equal(xa[:, 0].long(), ya)


def test_volume_targets_clipped_and_normalised():
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[1, :4] = 2
    v = D.volume_targets(y)
    torch.testing.assert_close(v.sum(1), torch.ones(2))
    assert torch.all(v >= 9e-4)


def test_split_is_by_image_and_deterministic():
    ids = [f"{i:03d}" for i in range(90)]
    tr, va = split_names(ids, 14, seed=0)
    assert len(tr) == 76 and len(va) == 14 and not set(tr) & set(va)
    assert (tr, va) == split_names(ids, 14, seed=0)


# --------------------------------------------------------------------------- weights
def test_weights_round_trip(tmp_path):
    from napari_vptv.nn import weights as W

    net = VPTVUNet(base_channels=4, num_iter=3, tv_weight=0.5)
    meta = {
        "arch": "vptv-unet",
        "unet": {"base_channels": 4, "depth": 3},
        "head": {"epsilon": 1.0, "tv_weight": 0.5, "num_iter": 3},
    }
    W.export_weights(net.state_dict(), "vptv-unet", meta, models_dir=tmp_path)
    loaded, m2 = W.load_pretrained("vptv-unet", models_dir=tmp_path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert m2["weights_sha256"] == json.loads((tmp_path / "vptv-unet.json").read_text())["weights_sha256"]

    # corrupt -> error naming the file
    pt = tmp_path / "vptv-unet.pt"
    data = bytearray(pt.read_bytes())
    data[-10] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="vptv-unet.pt"):
        W.load_pretrained("vptv-unet", models_dir=tmp_path)
    pt.unlink()
    with pytest.raises(RuntimeError, match="vptv-unet.pt"):
        W.load_pretrained("vptv-unet", models_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown pretrained"):
        W.load_pretrained("resnet", models_dir=tmp_path)


def _shipped(name):
    from napari_vptv.nn import weights as W

    return (W.MODELS_DIR / f"{name}.pt").exists()


@pytest.mark.parametrize("name", ["unet", "vptv-unet"])
def test_shipped_weights_load_and_predict(name):
    if not _shipped(name):
        pytest.skip(f"{name} weights not shipped yet")
    from napari_vptv.nn import weights as W

    model, meta = W.load_pretrained(name)
    assert meta["classes"] == ["background", "cytoplasm", "nucleus"]
    for src in meta["sources"]:
        assert src["train_ids"] and not set(src["train_ids"]) & set(src["val_ids"])
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (41, 57, 3), dtype=np.uint8)
    labels, probs = W.predict_wbc(img, method=name)
    assert labels.shape == (41, 57) and labels.dtype == np.int32
    assert probs.shape == (3, 41, 57)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-4)


def test_predict_wbc_modes_and_errors():
    if not _shipped("vptv-unet"):
        pytest.skip("vptv-unet weights not shipped yet")
    from napari_vptv.nn.weights import predict_wbc

    img = np.full((24, 24, 3), 200, np.uint8)
    for mode in ("exact", "interval", "none"):
        lab, p = predict_wbc(img, volume_mode=mode, num_iter=3)
        assert lab.shape == (24, 24)
    _, p = predict_wbc(img, volume_mode="exact", volumes=[0.5, 0.3, 0.2], epsilon=0.05, num_iter=300)
    np.testing.assert_allclose(p.mean(axis=(1, 2)), [0.5, 0.3, 0.2], atol=1e-2)
    with pytest.raises(ValueError, match="volumes"):
        predict_wbc(img, volume_mode="exact", volumes=[0.5, 0.6, 0.2])
    with pytest.raises(ValueError, match="image"):
        predict_wbc(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="'foo'"):
        predict_wbc(img, method="foo")
