"""Residual-weighted, foreground-balanced patch sampling and flip augmentation.

Public API
----------
``PatchSampler(image, target, weight, patch, residual=None, fg_fraction=0.5,
floor=0.25, generator=None)``
    Prepares one case (all tensors ``(D, H, W)`` on the model's device) and
    ``sample(n)`` returns ``(image, target, weight)`` patches, each
    ``(n, 1, pd, ph, pw)`` float32, without any host synchronisation: every random
    draw comes from ``generator`` (a ``torch.Generator`` on the case's device).

    Patch centres are drawn per voxel. With probability ``fg_fraction`` (a Bernoulli
    draw per patch) the centre is a uniformly drawn target-foreground voxel
    (``target > 0.5``); otherwise it is drawn with probability
    ``(1 - floor) * R / sum(R) + floor / N`` where ``R`` is the residual ``|Q - P|``
    (uniform when no residual is given). The patch start is the centre minus half the
    patch, clamped into the volume. Volumes smaller than the patch are padded
    (image with its minimum, target and weight with 0, so padding never counts in
    the loss).

``extract_patches(volumes, starts, patch)``
    Gathers patches at given start corners from several aligned volumes.
``random_flip(tensors, generator, axes)``
    Flips each sample of a batch along each spatial axis with probability 1/2, the
    same flips for all tensors of the batch (image, target, weight).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from ._checks import as_volume, check_float, check_int, check_patch, check_same_shape

__all__ = ["PatchSampler", "extract_patches", "pad_to_patch", "random_flip"]


def pad_to_patch(
    volumes: Sequence[torch.Tensor], fills: Sequence[torch.Tensor | float], patch: Sequence[int]
) -> tuple[list[torch.Tensor], tuple[int, int, int]]:
    """Pad aligned ``(D, H, W)`` volumes to at least ``patch`` along every axis.

    Args:
        volumes: tensors of one shape ``(D, H, W)``.
        fills: one fill value per volume (a number or a 0-d tensor, no host sync).
        patch: ``(pd, ph, pw)``.

    Returns:
        The padded volumes (the inputs themselves when no padding is needed) and the
        offset ``(od, oh, ow)`` of the original voxel ``(0, 0, 0)`` in them. Padding is
        split evenly before and after.
    """
    shape = tuple(volumes[0].shape)
    new_shape = tuple(max(s, p) for s, p in zip(shape, patch))
    offset = tuple((n - s) // 2 for n, s in zip(new_shape, shape))
    if new_shape == shape:
        return list(volumes), offset  # type: ignore[return-value]
    region = tuple(slice(o, o + s) for o, s in zip(offset, shape))
    out = []
    for vol, fill in zip(volumes, fills):
        fill_t = torch.as_tensor(fill, dtype=vol.dtype, device=vol.device)
        padded = fill_t.expand(new_shape).clone()
        padded[region] = vol
        out.append(padded)
    return out, offset  # type: ignore[return-value]


def extract_patches(volumes: Sequence[torch.Tensor], starts: torch.Tensor, patch: Sequence[int]) -> list[torch.Tensor]:
    """Gather ``n`` patches from each of several aligned volumes.

    Args:
        volumes: tensors ``(D, H, W)``, all the same shape and device.
        starts: ``(n, 3)`` int64 start corners on that device, with
            ``0 <= starts[:, k] <= shape[k] - patch[k]``.
        patch: ``(pd, ph, pw)``.

    Returns:
        One ``(n, pd, ph, pw)`` tensor per volume (advanced indexing, no host sync).
    """
    device = starts.device
    idx = [starts[:, k, None] + torch.arange(patch[k], device=device) for k in range(3)]
    d, h, w = idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]
    return [vol[d, h, w] for vol in volumes]


def random_flip(
    tensors: Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
    axes: Sequence[int] = (0, 1, 2),
) -> list[torch.Tensor]:
    """Random per-sample flips of batches ``(n, C, D, H, W)``; same flips for all.

    Args:
        tensors: batches sharing ``n`` and the spatial shape.
        generator: ``torch.Generator`` on the tensors' device (``None``: global RNG).
        axes: spatial axes (0 = D, 1 = H, 2 = W) that may be flipped, each with
            probability 1/2 per sample.

    Returns:
        New tensors; the draws happen on the device (no host synchronisation).
    """
    out = list(tensors)
    if not out or not axes:
        return out
    n, device = out[0].shape[0], out[0].device
    draws = torch.rand((len(axes), n), generator=generator, device=device) < 0.5
    for row, axis in enumerate(axes):
        mask = draws[row].view(n, 1, 1, 1, 1)
        dim = 2 + int(axis)
        out = [torch.where(mask, t.flip(dim), t) for t in out]
    return out


def _cdf(mass: torch.Tensor) -> torch.Tensor:
    """Normalised float64 cumulative distribution of a non-negative mass volume."""
    cdf = torch.cumsum(mass.reshape(-1).double(), 0)
    return cdf / cdf[-1:].clamp_min(1e-300)


class PatchSampler:
    """Draws training patches from one case (see the module docstring).

    Args:
        image: ``(D, H, W)`` normalised image on the model's device.
        target: ``(D, H, W)`` soft target in ``[0, 1]``.
        weight: ``(D, H, W)`` loss weights ``>= 0``.
        patch: ``(pd, ph, pw)``.
        residual: optional ``(D, H, W)`` residual ``|Q - P|`` (>= 0) guiding the
            background/residual draws.
        fg_fraction: probability that a patch is centred on target foreground.
        floor: share of the residual draws spread uniformly, in ``(0, 1]``.
        generator: ``torch.Generator`` on the case's device (``None``: global RNG).

    Neither construction nor ``sample`` synchronises with the host.
    """

    def __init__(
        self,
        image,
        target,
        weight,
        patch: Sequence[int],
        residual=None,
        fg_fraction: float = 0.5,
        floor: float = 0.25,
        generator: torch.Generator | None = None,
    ) -> None:
        self.patch = check_patch(patch)
        self.fg_fraction = check_float("fg_fraction", fg_fraction, 0.0, 1.0)
        self.floor = check_float("floor", floor, 0.0, 1.0)
        if self.floor == 0.0:
            raise InputError("floor must be > 0 so that every voxel can be drawn")
        image = as_volume(image, "image")
        target = as_volume(target, "target", device=image.device)
        weight = as_volume(weight, "weight", device=image.device)
        check_same_shape(image, "image", target=target, weight=weight)
        self.shape = tuple(image.shape)
        self.device = image.device
        self.generator = generator
        vols = [image, target, weight]
        if residual is not None:
            residual = as_volume(residual, "residual", device=image.device)
            check_same_shape(image, "image", residual=residual)
            vols.append(residual.clamp_min(0.0))
        padded, self.offset = pad_to_patch(vols, [image.min(), 0.0, 0.0, 0.0], self.patch)
        self.image, self.target, self.weight = padded[:3]
        self.padded_shape = tuple(self.image.shape)
        self._limit = torch.tensor([n - p for n, p in zip(self.padded_shape, self.patch)], device=self.device)
        self._half = torch.tensor([p // 2 for p in self.patch], device=self.device)
        n_vox = self.image.numel()
        uniform = torch.full(self.padded_shape, self.floor / n_vox, device=self.device)
        if residual is not None:
            r = padded[3]
            mass = (1.0 - self.floor) * r / r.sum().clamp_min(1e-12) + uniform
        else:
            mass = uniform
        self._cdf_res = _cdf(mass)
        fg = self.target > 0.5
        self._any_fg = fg.any()  # stays on the device: no host read at construction
        self._cdf_fg = _cdf(torch.where(self._any_fg, fg.float(), mass))  # no foreground: the residual draws

    @property
    def has_foreground(self) -> bool:
        """Whether the target holds foreground (one read back)."""
        return bool(self._any_fg)

    def _draw(self, cdf: torch.Tensor, n: int) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        return torch.searchsorted(cdf, u, right=True).clamp_max(cdf.numel() - 1)

    def sample_starts(self, n: int) -> torch.Tensor:
        """``(n, 3)`` int64 patch start corners (in the padded volume), no host sync."""
        n = check_int("n", n, 1)
        use_fg = torch.rand(n, generator=self.generator, device=self.device) < self.fg_fraction
        flat = torch.where(use_fg, self._draw(self._cdf_fg, n), self._draw(self._cdf_res, n))
        _, h, w = self.padded_shape
        centre = torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=1)
        starts = centre - self._half
        return torch.minimum(starts.clamp_min(0), self._limit)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` patches ``(image, target, weight)``, each ``(n, 1, pd, ph, pw)`` float32."""
        starts = self.sample_starts(n)
        img, tgt, wgt = extract_patches([self.image, self.target, self.weight], starts, self.patch)
        return img[:, None], tgt[:, None], wgt[:, None]
