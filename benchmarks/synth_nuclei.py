"""Synthetic fluorescence (DAPI / Hoechst-like) nuclei images with exact instance masks.

Used by ``bench_correct_nuclei.py`` because no real fluorescence nuclei data is on
this machine. Every image is drawn from a seed:

* nuclei: ellipses and lobed shapes (radius modulated by 2-4 lobes), radii 7-22 px,
  random orientation; some placed to touch or overlap a neighbour (overlaps are
  split by the nearest centre, as in an instance mask);
* brightness: per-nucleus level (a fraction of the nuclei dim, 0.25-0.45 of the
  bright level), smooth internal texture, brighter rim or nucleoli-like dark spots;
* optics: Gaussian blur (PSF sigma 1-2 px); uneven illumination (a smooth field,
  +-30 %); background offset; small bright debris not in the mask;
* noise: Poisson (photon count) plus Gaussian read noise; written as uint16.

``truth="shape"`` (default; the figures of ``bench_correct_nuclei.py``): the mask is
the set of pixels inside the (unblurred) shapes -- a threshold at half maximum.
``truth="annotated"``: nuclei as annotators outline them -- every nucleus has a
dimmer outer rim (1.5-3 px, 50-70 % of its interior) instead of the brighter one,
and the mask is where its noise-free blurred image reaches ``ANNOTATED_LEVEL`` of
the step from the background to its interior (the level measured at annotated
boundaries of real nuclei, ``edge_profile_nuclei.py``), so the dim rim is inside.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: level (background 0, a nucleus's interior 1) at which annotators draw the outline
ANNOTATED_LEVEL = 0.45


def _shape_field(yy, xx, cy, cx, ry, rx, theta, lobes, lobe_amp, phase):
    """Level set ``< 1`` inside an ellipse whose radius is modulated by ``lobes`` lobes."""
    c, s = np.cos(theta), np.sin(theta)
    y, x = yy - cy, xx - cx
    u, v = c * x + s * y, -s * x + c * y
    ang = np.arctan2(v, u)
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    mod = 1.0 + lobe_amp * np.cos(lobes * ang + phase) if lobes else 1.0
    return r / mod


def _place_nuclei(rng, shape, n):
    """Centres, radii and shape parameters; about 30 % touch a previous nucleus."""
    h, w = shape
    params = []
    for _ in range(n * 20):
        if len(params) == n:
            break
        ry = rng.uniform(7, 22)
        rx = ry * rng.uniform(0.6, 1.0)
        if params and rng.random() < 0.3:
            p = params[rng.integers(len(params))]
            ang = rng.uniform(0, 2 * np.pi)
            d = 0.9 * (p["ry"] + ry)  # centre distance slightly below the sum of radii: touching
            cy, cx = p["cy"] + d * np.sin(ang), p["cx"] + d * np.cos(ang)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if not (ry <= cy < h - ry and ry <= cx < w - ry):
            continue
        if any(np.hypot(cy - p["cy"], cx - p["cx"]) < 0.8 * (ry + p["ry"]) for p in params):
            continue  # keep overlaps small: every nucleus stays visible
        lobes = int(rng.choice([0, 0, 0, 2, 3, 4]))
        params.append(
            dict(
                cy=cy,
                cx=cx,
                ry=ry,
                rx=rx,
                theta=rng.uniform(0, np.pi),
                lobes=lobes,
                lobe_amp=rng.uniform(0.08, 0.2) if lobes else 0.0,
                phase=rng.uniform(0, 2 * np.pi),
            )
        )
    return params


def _annotated_truth(parts, psf, shape):
    """Labels where each nucleus's noise-free blurred signal reaches ``ANNOTATED_LEVEL`` of
    its interior level (a pixel two nuclei reach goes to the one it is deeper in)."""
    labels = np.zeros(shape, np.int32)
    depth = np.zeros(shape, np.float32)
    pad = int(4 * psf) + 2
    for i, (inside, level, one) in enumerate(parts, start=1):
        ys, xs = np.nonzero(inside)
        sl = (slice(max(ys.min() - pad, 0), ys.max() + pad + 1), slice(max(xs.min() - pad, 0), xs.max() + pad + 1))
        ratio = ndi.gaussian_filter(one[sl], psf) / level
        take = (ratio >= ANNOTATED_LEVEL) & (ratio > depth[sl])
        labels[sl][take] = i
        depth[sl][take] = ratio[take]
    return labels


def synth_nuclei(
    seed: int,
    shape=(512, 512),
    n_nuclei: int = 60,
    *,
    photons: float = 200.0,
    read_noise: float = 4.0,
    dim_fraction: float = 0.25,
    truth: str = "shape",
):
    """One synthetic fluorescence nuclei image and its instance mask.

    Parameters
    ----------
    seed : int
        Everything (placement, shapes, brightness, noise) follows from it.
    shape : (H, W)
    n_nuclei : int
        Target number of nuclei (fewer if they do not fit).
    photons : float
        Expected photon count of a bright nucleus (Poisson noise level).
    read_noise : float
        Gaussian read noise (counts).
    dim_fraction : float
        Fraction of dim nuclei (0.25-0.45 of the bright level).
    truth : {"shape", "annotated"}
        The mask: the shapes, or the outline annotators draw (see the module docstring).

    Returns
    -------
    image : uint16 (H, W)
    labels : int32 (H, W), 0 = background, 1..n nuclei
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.indices(shape, dtype=np.float32)
    params = _place_nuclei(rng, shape, n_nuclei)
    best = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture /= texture.std() + 1e-9
    if truth not in ("shape", "annotated"):
        raise ValueError(f"truth must be 'shape' or 'annotated', got {truth!r}")
    parts = []
    for i, p in enumerate(params, start=1):
        f = _shape_field(yy, xx, p["cy"], p["cx"], p["ry"], p["rx"], p["theta"], p["lobes"], p["lobe_amp"], p["phase"])
        inside = (f < 1) & (f < best)
        best[inside] = f[inside]
        labels[inside] = i
        level = rng.uniform(0.25, 0.45) if rng.random() < dim_fraction else rng.uniform(0.75, 1.0)
        if truth == "annotated":  # a dimmer outer rim, 1.5-3 px wide
            width, dim = rng.uniform(1.5, 3.0), rng.uniform(0.5, 0.7)
            depth = ndi.distance_transform_edt(inside)
            rim = np.where(depth[inside] <= width, dim, 1.0)
        else:  # a slightly brighter rim
            rim = 1.0 + 0.15 * np.clip(f[inside] - 0.6, 0, 1) / 0.4
        signal[inside] = level * rim * (1.0 + 0.12 * texture[inside])  # chromatin texture
        if truth == "annotated":
            parts.append((inside, level, np.where(inside, signal, 0.0)))
    # debris: small bright specks outside the nuclei (not in the mask)
    for _ in range(int(rng.integers(3, 10))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.0, 2.5)
        speck = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        signal[speck & (labels == 0)] = rng.uniform(0.3, 0.9)
    psf = rng.uniform(1.0, 2.0)
    if truth == "annotated":
        labels = _annotated_truth(parts, psf, shape)
    signal = ndi.gaussian_filter(signal, psf)
    illum = ndi.gaussian_filter(rng.standard_normal((h // 32 + 2, w // 32 + 2)), 1.0)
    illum = ndi.zoom(illum, (h / illum.shape[0], w / illum.shape[1]), order=3)[:h, :w]
    illum = 1.0 + 0.3 * illum / (np.abs(illum).max() + 1e-9)
    expected = photons * (0.08 + signal) * illum
    counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    counts += rng.normal(0, read_noise, shape) + 100.0  # camera offset
    return np.clip(counts, 0, 65535).astype(np.uint16), labels


if __name__ == "__main__":
    img, lab = synth_nuclei(0)
    print(img.shape, img.dtype, img.min(), img.max(), lab.max(), "nuclei")
