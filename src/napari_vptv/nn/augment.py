"""Augmentations for what differs between labs: stain, colour, illumination, optics,
camera noise and compression (scale is handled by :mod:`napari_vptv.nn.sampler`).

All functions take a float batch ``(B, 3, H, W)`` in [0, 1] and a ``torch.Generator``
and draw their parameters per sample, so a run is reproducible from its seed.

Class-conditional recolouring (:func:`augment_class_colour`, off unless
``p_class_colour > 0``) gives each class region of a patch (background with its red
cells, cytoplasm, nucleus) its own random stain: per-channel optical-density gains,
blended across class borders by Gaussian-smoothed masks. Labs differ exactly there
(blue versus tan cytoplasm, pink versus pale red cells), which one global colour
transform cannot imitate.

Stain jitter works in haematoxylin-eosin-DAB optical density space (Ruifrok &
Johnston colour deconvolution, the matrices of :func:`skimage.color.rgb2hed`), as in
stain augmentation for histology (Tellez et al. 2018). Hue is rotated about the grey
axis of RGB, which keeps grey (background glass) grey.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AugmentConfig",
    "augment_class_colour",
    "augment_colour",
    "augment_optics",
    "augment_red_cells",
    "augment_synthetic_red_cells",
    "dihedral",
]


@dataclass
class AugmentConfig:
    """Per-sample augmentation ranges (each drawn uniformly; ``p_*`` are probabilities)."""

    hed_scale: float = 0.25  # HED channel gain 1 +- this
    hed_shift: float = 0.05  # HED channel offset +- this (optical density units)
    hue_degrees: float = 30.0  # hue rotation +- this
    saturation: tuple = (0.6, 1.5)
    white_balance: float = 0.12  # per-channel gain 1 +- this
    brightness: float = 0.10
    contrast: tuple = (0.7, 1.3)
    gamma: tuple = (0.7, 1.4)
    p_blur: float = 0.3
    blur_sigma: tuple = (0.3, 1.6)
    p_noise: float = 0.4
    noise_sigma: tuple = (0.005, 0.04)
    p_jpeg: float = 0.3
    jpeg_quality: tuple = (35, 95)
    p_grey: float = 0.03
    p_class_colour: float = 0.0  # probability of a per-class recolouring (0 = off)
    class_od_gain: tuple = (0.6, 1.6)  # per class and channel OD gain, log-uniform
    class_mask_sigma: float = 1.5  # smoothing (px) of the class masks that blend the gains
    p_red_cells: float = 0.0  # probability of re-staining the background's red cells (0 = off)
    red_cell_od_gain: tuple = (0.2, 5.0)  # their optical density (over the glass) times this, log-uniform
    red_cell_tint: float = 0.3  # per-channel log-gain jitter +- this on top (pink / purple / grey)
    p_synthetic_red_cells: float = 0.0  # probability of drawing extra red cells into the background
    synthetic_red_cell_cover: tuple = (0.1, 0.6)  # fraction of the patch their discs cover
    synthetic_red_cell_density: tuple = (0.08, 0.6)  # their peak optical density

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(g, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _hed_matrices(dtype):
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    return torch.as_tensor(hed_from_rgb, dtype=dtype), torch.as_tensor(rgb_from_hed, dtype=dtype)


def _stain_jitter(x, g, cfg):
    B = x.shape[0]
    to_hed, to_rgb = _hed_matrices(x.dtype)
    od = -torch.log(x.clamp(min=1.0 / 255.0))  # (B, 3, H, W) optical density
    hed = torch.einsum("bchw,cd->bdhw", od, to_hed)
    a = 1 + _uniform(g, -cfg.hed_scale, cfg.hed_scale, B, 3, 1, 1)
    b = _uniform(g, -cfg.hed_shift, cfg.hed_shift, B, 3, 1, 1)
    od = torch.einsum("bdhw,dc->bchw", hed * a + b, to_rgb)
    return torch.exp(-od.clamp(min=0.0))


def _hue_rotate(x, g, cfg):
    B = x.shape[0]
    th = torch.deg2rad(_uniform(g, -cfg.hue_degrees, cfg.hue_degrees, B))
    k = torch.full((3,), 1 / math.sqrt(3.0), dtype=x.dtype)
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=x.dtype)
    eye = torch.eye(3, dtype=x.dtype)
    c, s = torch.cos(th).view(B, 1, 1), torch.sin(th).view(B, 1, 1)
    R = c * eye + s * K + (1 - c) * torch.outer(k, k)  # Rodrigues, (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", R, x)


def augment_colour(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Stain (HED), hue, saturation, white balance, brightness, contrast, gamma, grey."""
    B = x.shape[0]
    x = _stain_jitter(x, g, cfg)
    x = _hue_rotate(x, g, cfg).clamp(0, 1)
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * _uniform(g, *cfg.saturation, B, 1, 1, 1)
    x = x * (1 + _uniform(g, -cfg.white_balance, cfg.white_balance, B, 3, 1, 1))
    x = x + _uniform(g, -cfg.brightness, cfg.brightness, B, 1, 1, 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - m) * _uniform(g, *cfg.contrast, B, 1, 1, 1) + m).clamp(0, 1)
    x = x ** _uniform(g, *cfg.gamma, B, 1, 1, 1)
    to_grey = (torch.rand(B, generator=g) < cfg.p_grey).view(B, 1, 1, 1)
    return torch.where(to_grey, x.mean(dim=1, keepdim=True).expand_as(x), x)


def _gaussian_blur(x, sigma):
    """Per-sample Gaussian blur, ``sigma`` (B,) (0 = none), one grouped convolution."""
    B, C, H, W = x.shape
    r = int(math.ceil(3 * float(sigma.max())))
    if r < 1:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).to(x.dtype))
    k = k.repeat_interleave(C, 0)  # (B*C, 2r+1)
    y = x.reshape(1, B * C, H, W)
    y = F.pad(y, (r, r, r, r), mode="reflect" if min(H, W) > r else "replicate")
    y = F.conv2d(y, k.view(B * C, 1, 1, -1), groups=B * C)
    y = F.conv2d(y, k.view(B * C, 1, -1, 1), groups=B * C)
    return y.view(B, C, H, W)


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    a = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    b = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(b.copy()).permute(2, 0, 1).to(img.dtype) / 255.0


def augment_optics(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Defocus blur, camera noise and JPEG compression."""
    B = x.shape[0]
    blur = torch.rand(B, generator=g) < cfg.p_blur
    sigma = torch.where(blur, _uniform(g, *cfg.blur_sigma, B), torch.zeros(B))
    x = _gaussian_blur(x, sigma)
    noisy = (torch.rand(B, generator=g) < cfg.p_noise).view(B, 1, 1, 1)
    sd = _uniform(g, *cfg.noise_sigma, B, 1, 1, 1)
    x = (x + noisy * sd * torch.randn(x.shape, generator=g)).clamp(0, 1)
    jpeg = torch.rand(B, generator=g) < cfg.p_jpeg
    q = torch.randint(int(cfg.jpeg_quality[0]), int(cfg.jpeg_quality[1]) + 1, (B,), generator=g)
    if bool(jpeg.any()):
        x = torch.stack([_jpeg(x[b], int(q[b])) if jpeg[b] else x[b] for b in range(B)])
    return x


def augment_class_colour(
    x: torch.Tensor, y: torch.Tensor, g: torch.Generator, cfg: AugmentConfig, n_classes: int = 3
) -> torch.Tensor:
    """Recolour each class region of ``x`` (labels ``y`` ``(B, H, W)``) by its own random
    optical-density gains (see the module docstring). Draws nothing when disabled."""
    if cfg.p_class_colour <= 0:
        return x
    B = x.shape[0]
    on = (torch.rand(B, generator=g) < cfg.p_class_colour).view(B, 1, 1, 1)
    lo, hi = math.log(cfg.class_od_gain[0]), math.log(cfg.class_od_gain[1])
    gains = torch.exp(_uniform(g, lo, hi, B, n_classes, 3)).to(x.dtype)
    masks = F.one_hot(y, n_classes).permute(0, 3, 1, 2).to(x.dtype)
    masks = _gaussian_blur(masks, torch.full((B,), float(cfg.class_mask_sigma)))
    gain_map = torch.einsum("bkhw,bkc->bchw", masks, gains)
    od = -torch.log(x.clamp(min=1.0 / 255.0))
    return torch.where(on, torch.exp(-od * gain_map), x)


def augment_red_cells(
    x: torch.Tensor, y: torch.Tensor, white: torch.Tensor, g: torch.Generator, cfg: AugmentConfig
) -> torch.Tensor:
    """Re-stain what lies on the background class (red cells, platelets, debris).

    Red cells are the strongest difference between smears that a white-cell network
    must ignore: strongly pink in one lab, pale ghosts in another. Their optical density
    over the empty glass, ``-log(x / white)``, is multiplied by a log-uniform gain (one
    per sample, times a per-channel tint), blended by the smoothed background mask so
    the white cell is untouched. The glass itself (density 0 over ``white``, the
    image's white point ``(B, 3)``) keeps its colour. Draws nothing when disabled.
    """
    if cfg.p_red_cells <= 0:
        return x
    B = x.shape[0]
    on = (torch.rand(B, generator=g) < cfg.p_red_cells).view(B, 1, 1, 1)
    lo, hi = math.log(cfg.red_cell_od_gain[0]), math.log(cfg.red_cell_od_gain[1])
    log_gain = _uniform(g, lo, hi, B, 1) + _uniform(g, -cfg.red_cell_tint, cfg.red_cell_tint, B, 3)
    bg = (y == 0).to(x.dtype)[:, None]
    bg = _gaussian_blur(bg, torch.full((B,), float(cfg.class_mask_sigma)))
    w = white.to(x.dtype).view(B, 3, 1, 1).clamp(min=1.0 / 255.0)
    od = (-torch.log(x.clamp(min=1.0 / 255.0) / w)).clamp(min=0.0)  # density over the glass
    gain = 1.0 + bg * (torch.exp(log_gain).view(B, 3, 1, 1) - 1.0)
    out = (w * torch.exp(-od * gain)).clamp(0.0, 1.0)
    # pixels brighter than the white point (od clamped to 0) keep their value
    out = torch.where(x > w, x, out)
    return torch.where(on, out, x)


# optical-density colour of eosin (skimage's rgb_from_hed): the pink of stained red cells
_EOSIN_OD = torch.tensor([0.07, 0.99, 0.11])


def _red_cell_density(H: int, W: int, diameter: float, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Optical density ``(3, H, W)`` of random biconcave red-cell discs of about half the
    white-cell ``diameter`` (rim denser than the central pallor, soft 1 px edge)."""
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    cover = float(_uniform(g, *cfg.synthetic_red_cell_cover, 1))
    r_mean = max(3.0, 0.5 * diameter * float(_uniform(g, 0.45, 0.65, 1)))
    n = int(round(cover * H * W / (math.pi * r_mean**2)))
    density = torch.zeros(H, W)
    peak = float(_uniform(g, *cfg.synthetic_red_cell_density, 1))
    for _ in range(min(n, 60)):
        cy, cx = float(_uniform(g, 0, H, 1)), float(_uniform(g, 0, W, 1))
        r = r_mean * float(_uniform(g, 0.85, 1.15, 1))
        aspect, angle = float(_uniform(g, 0.75, 1.0, 1)), float(_uniform(g, 0, math.pi, 1))
        u = (yy - cy) * math.cos(angle) + (xx - cx) * math.sin(angle)
        v = -(yy - cy) * math.sin(angle) + (xx - cx) * math.cos(angle)
        rho = torch.sqrt(u**2 + (v / aspect) ** 2) / r
        pallor = float(_uniform(g, 0.3, 1.0, 1))
        inside = torch.sigmoid((1.0 - rho) * r)  # ~1 px soft edge
        density += inside * (pallor + (1.0 - pallor) * rho.clamp(max=1.0) ** 2)
    tint = torch.exp(_uniform(g, -cfg.red_cell_tint, cfg.red_cell_tint, 3))
    return peak * density.clamp(max=2.0)[None] * (_EOSIN_OD * tint).view(3, 1, 1)


def augment_synthetic_red_cells(
    x: torch.Tensor, y: torch.Tensor, g: torch.Generator, cfg: AugmentConfig
) -> torch.Tensor:
    """Draw pink red-cell discs into the background of some patches.

    A source with pale red-cell ghosts never shows the network a strongly stained,
    nucleus-free disc, so it calls other labs' red cells cytoplasm. The discs lie
    behind the white cell (weighted by the smoothed background mask) and are sized from
    the patch's white cell (its equivalent diameter; 36-120 px when none is visible).
    Labels are unchanged: red cells are background. Draws nothing when disabled.
    """
    if cfg.p_synthetic_red_cells <= 0:
        return x
    B, _, H, W = x.shape
    on = torch.rand(B, generator=g) < cfg.p_synthetic_red_cells
    bg = _gaussian_blur((y == 0).to(x.dtype)[:, None], torch.full((B,), float(cfg.class_mask_sigma)))
    out = x.clone()
    for b in torch.nonzero(on).flatten().tolist():
        area = float((y[b] > 0).sum())
        d = 2.0 * math.sqrt(area / math.pi) if area > 200 else float(_uniform(g, 36.0, 120.0, 1))
        od = _red_cell_density(H, W, d, g, cfg).to(x.dtype)
        out[b] = x[b] * torch.exp(-od * bg[b])
    return out


def dihedral(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """Random flips / rot90 (the 8 symmetries of the square), per sample."""
    ops = torch.randint(0, 8, (x.shape[0],), generator=g)
    xs, ys = [], []
    for b in range(x.shape[0]):
        o = int(ops[b])
        xb, yb = x[b], y[b]
        if o & 4:
            xb, yb = xb.flip(-1), yb.flip(-1)
        if o & 3:
            xb, yb = torch.rot90(xb, o & 3, (-2, -1)), torch.rot90(yb, o & 3, (-2, -1))
        xs.append(xb)
        ys.append(yb)
    return torch.stack(xs), torch.stack(ys)
