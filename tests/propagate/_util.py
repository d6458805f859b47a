"""Synthetic inputs shared by the propagation tests."""

from __future__ import annotations

import numpy as np
import torch


def smooth_texture(h: int, w: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """A smooth random texture in [0, 1] (well-conditioned for registration everywhere)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    return t.astype(np.float32)


def smooth_field(h: int, w: int, amplitude: float, seed: int = 1) -> torch.Tensor:
    """A smooth displacement field ``[1, 2, h, w]`` (pixels) with max |u| ~ amplitude."""
    yy, xx = np.meshgrid(np.linspace(0, np.pi, h), np.linspace(0, np.pi, w), indexing="ij")
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.6, 1.0, 2)
    uy = amplitude * a * np.sin(yy) * np.cos(0.5 * xx)
    ux = amplitude * b * np.sin(xx) * np.cos(0.7 * yy)
    return torch.from_numpy(np.stack([uy, ux])[None].astype(np.float32))


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def dice(a, b) -> float:
    a = np.asarray(a) > 0.5
    b = np.asarray(b) > 0.5
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def moving_disc_volume(D: int = 12, h: int = 48, w: int = 40, seed: int = 0):
    """A bright disc drifting and growing across slices on a smooth textured background:
    image ``[D, h, w]`` float32 and label uint8."""
    bg = smooth_texture(h, w, seed, 3.0) * 0.3
    img = np.zeros((D, h, w), np.float32)
    lab = np.zeros((D, h, w), np.uint8)
    for z in range(D):
        m = disc(h, w, 20 + 0.4 * z, 16 + 0.5 * z, 7 + 0.3 * z)
        lab[z] = m
        img[z] = bg + 0.7 * m
    from scipy import ndimage

    img = ndimage.gaussian_filter(img, (0, 1.0, 1.0)).astype(np.float32)
    return img, lab
