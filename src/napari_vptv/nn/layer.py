"""The VPTV-softmax layer (Section 5 of the paper) and the VPTVU-net.

The layer unrolls :func:`napari_vptv.core.solver.reference.vptv_iterate` (the single implementation
of Algorithm 1) for ``T`` steps on the costs ``C = -logits`` and returns the class
probabilities ``u = softmax((-C - div q^T + f^T) / eps)``.

Two backward modes:

``"quasi"`` (the paper's "quasi dropout", Section 5.2)
    The ``T`` iterations run under ``torch.no_grad()`` on the detached costs; the
    output is the closing softmax :func:`~napari_vptv.core.solver.reference.vptv_probabilities`
    evaluated with grad on ``-logits`` and the constants ``q^T``, ``f^T``. The gradient
    is therefore exactly the gradient of that final softmax with ``q``, ``f`` fixed.
``"full"``
    Back-propagation through all ``T`` steps (memory ~ ``T`` copies of the state).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..core.solver.reference import vptv_iterate, vptv_probabilities
from .unet import UNet, inference_backbone

__all__ = ["VPTVSoftmax", "VPTVUNet", "SoftmaxUNet", "build_model"]

_BACKWARDS = ("quasi", "full")
_VOLUME_MODES = ("exact", "interval", "none")


class VPTVSoftmax(nn.Module):
    """Volume-preserving, TV-regularised softmax (unrolled Algorithm 1).

    Parameters
    ----------
    epsilon : float
        Entropic parameter ``eps`` (paper: 1 for the WBC U-net).
    tv_weight : float
        ``lambda``, weight of the (edge-weighted) TV term; 0 disables it.
    num_iter : int
        ``T``, number of unrolled iterations (run exactly, ``tol = 0``).
    backward : {"quasi", "full"}
        Gradient mode, see the module docstring.
    volume_mode : {"exact", "interval", "none"}
        Which volume constraint ``forward`` applies: exact fractions (``volumes``),
        an interval (``volume_bounds``), or none (TV-softmax). With ``"exact"`` /
        ``"interval"`` and no volumes passed to ``forward``, no volume term is used.

    Shape
    -----
    ``forward(logits (N, K, H, W), volumes (K,) | (N, K), volume_bounds=(lo, hi),
    edge_weight (N, H, W) | (H, W))`` -> probabilities ``(N, K, H, W)``.
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        tv_weight: float = 1.0,
        num_iter: int = 20,
        backward: str = "quasi",
        volume_mode: str = "exact",
    ):
        super().__init__()
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if tv_weight < 0:
            raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
        if int(num_iter) < 0:
            raise ValueError(f"num_iter must be >= 0, got {num_iter}")
        if backward not in _BACKWARDS:
            raise ValueError(f"backward must be one of {_BACKWARDS}, got {backward!r}")
        if volume_mode not in _VOLUME_MODES:
            raise ValueError(f"volume_mode must be one of {_VOLUME_MODES}, got {volume_mode!r}")
        self.epsilon = float(epsilon)
        self.tv_weight = float(tv_weight)
        self.num_iter = int(num_iter)
        self.backward = backward
        self.volume_mode = volume_mode

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, tv_weight={self.tv_weight}, num_iter={self.num_iter}, "
            f"backward={self.backward!r}, volume_mode={self.volume_mode!r}"
        )

    def _volume_kwargs(self, volumes, volume_bounds):
        if self.volume_mode == "exact" and volumes is not None:
            return {"volumes": volumes}
        if self.volume_mode == "interval" and volume_bounds is not None:
            return {"volume_bounds": volume_bounds}
        return {}

    def solve(self, logits, volumes=None, volume_bounds=None, edge_weight=None):
        """Run the ``T`` iterations; returns the :class:`~napari_vptv.core.solver.reference.VPTVState`."""
        kw = self._volume_kwargs(volumes, volume_bounds)
        return vptv_iterate(
            -logits,
            **kw,
            epsilon=self.epsilon,
            tv_weight=self.tv_weight,
            edge_weight=edge_weight,
            max_num_iter=self.num_iter,
            tol=0.0,
        )

    def forward(
        self,
        logits: torch.Tensor,
        volumes=None,
        volume_bounds=None,
        edge_weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if logits.ndim < 4:
            raise ValueError(f"logits must be (N, K, *spatial), got shape {tuple(logits.shape)}")
        if self.num_iter == 0:
            return torch.softmax(logits / self.epsilon, dim=1)
        if self.backward == "full":
            return self.solve(logits, volumes, volume_bounds, edge_weight).u
        with torch.no_grad():
            state = self.solve(logits.detach(), volumes, volume_bounds, edge_weight)
        q = None if state.q is None else state.q.detach()
        return vptv_probabilities(-logits, q, state.f.detach(), self.epsilon)


class SoftmaxUNet(nn.Module):
    """Plain U-net: backbone logits followed by a softmax. ``forward`` returns probabilities.

    ``volumes`` / ``volume_bounds`` / ``edge_weight`` are accepted and ignored so that both
    networks have the same call signature.
    """

    def __init__(self, backbone: Optional[nn.Module] = None, **unet_kwargs):
        super().__init__()
        self.backbone = backbone if backbone is not None else UNet(**unet_kwargs)

    def logits(self, x):
        return inference_backbone(self.backbone)(x)

    def forward(self, x, volumes=None, volume_bounds=None, edge_weight=None):
        return torch.softmax(self.backbone(x), dim=1)


class VPTVUNet(nn.Module):
    """U-net backbone + :class:`VPTVSoftmax` head (the paper's VPTVU-net)."""

    def __init__(
        self,
        backbone: Optional[nn.Module] = None,
        *,
        epsilon: float = 1.0,
        tv_weight: float = 1.0,
        num_iter: int = 20,
        backward: str = "quasi",
        volume_mode: str = "exact",
        **unet_kwargs,
    ):
        super().__init__()
        self.backbone = backbone if backbone is not None else UNet(**unet_kwargs)
        self.head = VPTVSoftmax(
            epsilon=epsilon, tv_weight=tv_weight, num_iter=num_iter, backward=backward, volume_mode=volume_mode
        )

    def logits(self, x):
        return inference_backbone(self.backbone)(x)

    def forward(self, x, volumes=None, volume_bounds=None, edge_weight=None):
        return self.head(self.backbone(x), volumes=volumes, volume_bounds=volume_bounds, edge_weight=edge_weight)


def build_model(arch: str, *, unet_kwargs: Optional[dict] = None, head_kwargs: Optional[dict] = None) -> nn.Module:
    """``arch`` in {"unet", "vptv-unet"}."""
    unet_kwargs = dict(unet_kwargs or {})
    if arch == "unet":
        return SoftmaxUNet(**unet_kwargs)
    if arch in ("vptv-unet", "vptvunet", "vptv"):
        return VPTVUNet(**(head_kwargs or {}), **unet_kwargs)
    raise ValueError(f"arch must be 'unet' or 'vptv-unet', got {arch!r}")
