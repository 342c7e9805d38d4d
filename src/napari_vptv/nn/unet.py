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

__all__ = ["UNet", "count_parameters"]


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
            x = dec(torch.cat([skips.pop(), x], dim=1))
        x = self.head(x)
        return x[..., :h, :w]
