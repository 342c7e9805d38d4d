"""A small U-net backbone (CPU-sized) returning per-class logits.

``UNet(in_channels=3, n_classes=3, base_channels=16, depth=3)``: ``depth`` down-sampling
levels, each a double 3x3 convolution (BatchNorm + ReLU), max-pool down, transposed-
convolution up, skip connections by concatenation, 1x1 convolution to ``n_classes``
logits. Any ``H, W`` is accepted: the input is reflect-padded to a multiple of
``2**depth`` and the logits are cropped back, so whole 300 x 300 images work.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["UNet", "count_parameters", "inference_backbone"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-net producing logits ``(N, n_classes, H, W)`` from images ``(N, in_channels, H, W)``.

    Parameters
    ----------
    in_channels : int
        Input channels (3 for RGB).
    n_classes : int
        Number of output classes ``K``.
    base_channels : int
        Channels of the first level; level ``l`` has ``base_channels * 2**l``.
    depth : int
        Number of pooling steps (the bottleneck is at ``1 / 2**depth`` resolution).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 3, base_channels: int = 16, depth: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_channels = base_channels
        self.depth = depth
        ch = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for i in range(depth):
            self.down.append(_DoubleConv(cin, ch[i]))
            cin = ch[i]
        self.bottleneck = _DoubleConv(ch[depth - 1], ch[depth])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2))
            self.dec.append(_DoubleConv(2 * ch[i], ch[i]))
        self.head = nn.Conv2d(ch[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected input (N, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if (h > ph and w > pw) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec in zip(self.up, self.dec):
            x = up(x)
            if isinstance(dec[0], _SkipConv):  # the inference copy: no concatenation
                x = dec[0](skips.pop(), x)
                for layer in list(dec)[1:]:
                    x = layer(x)
            else:
                x = dec(torch.cat([skips.pop(), x], dim=1))
        x = self.head(x)
        return x[..., :h, :w]


class _SkipConv(nn.Module):
    """``conv(cat([skip, x]))`` computed as ``conv_skip(skip) + conv_x(x)``: the same
    convolution with its weights split along the input channels. Concatenating
    channels-last maps copies them element by element (3-4 ms of a 640 x 480 pass,
    6 % of it); two half-width convolutions cost what the full one does."""

    def __init__(self, conv: nn.Conv2d, n_skip: int):
        super().__init__()
        kw = dict(kernel_size=conv.kernel_size, padding=conv.padding, stride=conv.stride)
        self.skip = nn.Conv2d(n_skip, conv.out_channels, bias=False, **kw)
        self.x = nn.Conv2d(conv.in_channels - n_skip, conv.out_channels, bias=conv.bias is not None, **kw)
        with torch.no_grad():
            self.skip.weight.copy_(conv.weight[:, :n_skip])
            self.x.weight.copy_(conv.weight[:, n_skip:])
            if conv.bias is not None:
                self.x.bias.copy_(conv.bias)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.x(x).add_(self.skip(skip))


def _weights_version(module: nn.Module) -> tuple:
    """Identity and in-place version counter of every parameter and buffer: changes
    whenever the weights do (an optimiser step, ``load_state_dict``, ``.to``)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def _folded_copy(unet: nn.Module) -> nn.Module:
    """An eval-mode copy of ``unet`` with each BatchNorm folded into the convolution
    before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    cached = unet.__dict__.pop("_folded", None)  # not copied along: copies would nest
    try:
        with torch.inference_mode(False), torch.no_grad():
            folded = copy.deepcopy(unet).eval()
    finally:
        if cached is not None:
            unet.__dict__["_folded"] = cached
    with torch.inference_mode(False), torch.no_grad():  # normal tensors, even when called in inference mode
        for block in folded.modules():
            if isinstance(block, _DoubleConv):
                for i in (0, 3):  # Conv2d, BatchNorm2d, ReLU, Conv2d, BatchNorm2d, ReLU
                    block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                    block[i + 1] = nn.Identity()
        for dec in folded.dec:
            dec[0] = _SkipConv(dec[0], dec[0].in_channels // 2)
        # channels-last weights make the CPU convolutions (oneDNN) 1.4-1.9x faster on
        # 300 x 300 to 640 x 480 inputs; the logits stay within ~1e-5
        folded = folded.to(memory_format=torch.channels_last)
    for t in (*folded.parameters(), *folded.buffers()):
        t.requires_grad_(False)
    return folded


def inference_backbone(unet: nn.Module) -> nn.Module:
    """The module to run for inference: ``unet`` itself while it trains or gradients
    are on, else a cached copy with the BatchNorms folded into the convolutions.

    Folding is the standard inference rewrite of conv + BN (same function, float
    rounding aside: logits within ~1e-5). It removes the BatchNorm passes over every
    feature map: 3-7 % of ``predict_cells`` on a 300 x 300 image, a third of a bare
    pass on a contiguous NCHW input (docs/results.md). The copy is
    rebuilt when any weight changes (fine-tuning in the same process).
    """
    if not isinstance(unet, UNet) or unet.training or torch.is_grad_enabled():
        return unet
    key = _weights_version(unet)
    cached = unet.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        cached = (key, _folded_copy(unet))
        unet.__dict__["_folded"] = cached  # not a submodule: no state_dict entry
    return cached[1]
