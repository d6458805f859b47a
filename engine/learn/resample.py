"""Resampling between a case's own voxel grid and the segmenter's planned grid.

Downsampling averages (``area``: an exact box filter for integer factors, so thin
structures fade instead of aliasing); upsampling is trilinear. A volume already at
the requested size is returned as it is (no copy).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resample"]


def resample(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``volume`` ``(D, H, W)`` float resampled to ``size`` (float32)."""
    size = tuple(int(s) for s in size)
    if tuple(volume.shape) == size:
        return volume
    x = volume.float()[None, None]
    down = all(n <= s for n, s in zip(size, volume.shape))
    if down:
        out = F.interpolate(x, size=size, mode="area")
    else:
        out = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return out[0, 0].contiguous()
