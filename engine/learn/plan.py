"""Self-configuration of the segmenter from the data (DESIGN §5a), as nnU-Net plans
offline, but online: from what the engine has seen when it first has to learn.

A :class:`Fingerprint` is kept up to date from every opened image (voxel spacing,
shape, intensity statistics of a subsample) and every drawn or labelled object (its
size in mm along the annotation axis and in-plane, the intensities inside it).
:func:`make_plan` turns it into a :class:`Plan`: a concrete
:class:`~engine.learn.LearnConfig` and the reasons for each choice. Every field the
caller set in ``LearnConfig`` wins; ``None`` / ``"auto"`` fields are planned:

* **target spacing**: the thick axis (spacing >= 3x the finest one, nnU-Net's
  anisotropy threshold) is never resampled; the other axes keep their native spacing
  unless the object spans more voxels than a patch is wide in-plane (48 on the CPU,
  96 on CUDA), then they are coarsened by a power of 2 (the one nearest to
  ``extent_mm / (patch_width * spacing)``, at least 2; nnU-Net's low-resolution
  stage, online): a patch that sees the whole object learns it in far fewer steps. On
  the LA demo stream (objects of ~100 mm) 2.5 mm instead of the native 1.25 mm took
  ours@cells' held-out Dice after 16 cases from 0.53-0.70 to 0.82; the resolution costs
  little (resampling a label to 2.5 mm and back keeps Dice 0.978).
* **patch**: a voxel budget (:data:`PATCH_VOXELS`, more on CUDA) spent first on
  in-plane context (:data:`INPLANE_PATCH` voxels, the image's size if smaller), then on
  slices; when the volume has fewer slices than that leaves room for, the whole slice
  axis and wider in-plane context.
* **pooling and kernels** per level (nnU-Net's rule): an axis is pooled (stride 2)
  and convolved with 3 taps only while its current spacing is at most twice the finest
  current spacing and its feature map still has >= :data:`MIN_POOL_SIZE` voxels; otherwise stride 1 and
  kernel 1 along it. Thick slices thus get ``1x3x3`` levels until in-plane pooling has
  made the spacings comparable; very thick slices (>= 8x the pixels) give a 2D-like
  net (no 3-tap kernel across slices at any level).
* **normalisation** by modality: CT-like intensities (integer-valued, below -200 and
  above 300: Hounsfield units) are clipped to the 0.5-99.5 percentiles of the drawn
  objects and z-scored with the objects' mean and standard deviation (fixed at plan
  time, the same for every case); anything else is MR-like: a per-image robust z-score.
* **batch size** for the device: 2 on the CPU, more on a GPU as its memory allows.

The plan is fixed once the model exists (its shape depends on it); later cases are
resampled to the planned spacing. It is printed by ``dilseg run``, returned by
:attr:`engine.Engine.plan` and saved with the engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .config import LearnConfig
from .device import resolve_execution

__all__ = ["Fingerprint", "Plan", "make_plan", "grid_size", "PATCH_VOXELS", "INPLANE_PATCH"]

#: Voxels per training patch on the CPU (32 x 48 x 48 at isotropic spacing); x4 on CUDA.
PATCH_VOXELS = 32 * 48 * 48
#: In-plane patch size (voxels) on the CPU; x2 on CUDA.
INPLANE_PATCH = 48
#: Anisotropy threshold (nnU-Net): an axis this many times coarser than the finest is "thick".
THICK_RATIO = 3.0
#: Slices this many times thicker than the pixels: a 2D-like net (nothing across slices).
VERY_THICK_RATIO = 8.0
#: An axis is pooled only while its feature map has at least this many voxels (>= 3 after).
MIN_POOL_SIZE = 6
#: Resample an axis only when its spacing changes by at least this factor.
RESAMPLE_MIN = 1.5
_SAMPLE = 1 << 16  # voxels of the intensity subsample per image
_FG_SAMPLE = 4096  # foreground intensities kept per case


def _median(rows: Sequence[Sequence[float]]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.median(np.asarray(rows, dtype=np.float64), axis=0))


@dataclass
class Fingerprint:
    """What the engine has seen (annotation axis first): per image its spacing, shape
    and intensity statistics; per object its size in mm and its intensities."""

    spacings: list = field(default_factory=list)
    shapes: list = field(default_factory=list)
    intensity: list = field(default_factory=list)  # per image: mean, std, p0.5, p99.5, min, max, integer
    objects_mm: list = field(default_factory=list)  # per object: (d, h, w) extent in mm
    foreground: list = field(default_factory=list)  # pooled object intensities (capped)

    @property
    def images(self) -> int:
        return len(self.spacings)

    def observe_image(self, image: torch.Tensor, spacing: Sequence[float]) -> None:
        """An opened image ``(D, H, W)`` (annotation axis first) and its spacing."""
        flat = image.reshape(-1)
        step = max(1, flat.numel() // _SAMPLE)
        x = flat[::step].double().cpu().numpy()
        lo, hi = np.percentile(x, [0.5, 99.5])
        self.spacings.append([float(s) for s in spacing])
        self.shapes.append([int(s) for s in image.shape])
        self.intensity.append(
            [
                float(x.mean()),
                float(x.std()),
                float(lo),
                float(hi),
                float(x.min()),
                float(x.max()),
                bool(np.all(x == np.round(x))),
            ]
        )

    def observe_object(
        self,
        image: torch.Tensor,
        masks: Mapping[int, torch.Tensor],
        spacing: Sequence[float],
        extent: Optional[tuple[int, int]] = None,
    ) -> None:
        """A drawn or labelled object: ``masks`` ``{slice: 2D mask}`` on the annotation
        axis of ``image`` ``(D, H, W)`` (the drawn slices, or every slice of a label);
        ``extent``: its first/last slice when known (else the span of non-empty masks)."""
        drawn = {int(z): m > 0.5 for z, m in masks.items()}
        full = [z for z, m in drawn.items() if bool(m.any())]
        if not full:
            return
        union = torch.stack([drawn[z] for z in full]).any(0)
        ys = torch.nonzero(union.any(1)).reshape(-1)
        xs = torch.nonzero(union.any(0)).reshape(-1)
        lo, hi = (min(full), max(full)) if extent is None else extent
        n = [hi - lo + 1, int(ys[-1] - ys[0]) + 1, int(xs[-1] - xs[0]) + 1]
        self.objects_mm.append([float(k * s) for k, s in zip(n, spacing)])
        vals = torch.cat([image[z][drawn[z]] for z in full]).double()
        step = max(1, vals.numel() // _FG_SAMPLE)
        self.foreground = (self.foreground + vals[::step].cpu().tolist())[-16 * _FG_SAMPLE :]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": self.images, "objects": len(self.objects_mm)}
        if self.spacings:
            out["median_spacing_mm"] = _median(self.spacings)
            out["median_shape"] = tuple(int(v) for v in _median(self.shapes))
        if self.objects_mm:
            out["median_object_mm"] = _median(self.objects_mm)
        return out

    def ct_like(self) -> bool:
        """Hounsfield units: integer-valued intensities reaching below -200 and above 300."""
        if not self.intensity:
            return False
        return (
            all(row[6] for row in self.intensity)
            and min(r[4] for r in self.intensity) < -200
            and max(r[5] for r in self.intensity) > 300
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fingerprint":
        return cls(**{k: list(v) for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Plan:
    """The planned configuration: ``learn`` is a concrete :class:`LearnConfig` (no
    ``None`` / ``"auto"`` left), ``reasons`` one line per choice."""

    learn: LearnConfig
    reasons: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    def describe(self) -> str:
        lc = self.learn
        head = (
            f"segmenter plan: target spacing {_fmt(lc.target_spacing)} mm, patch {_fmt(lc.patch)} voxels, "
            f"batch {lc.batch_size}, strides {_fmt_levels(lc.strides)}, kernels {_fmt_levels(lc.kernels)}, "
            f"normalisation {lc.normalize}, precision {lc.precision}"
        )
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON containers (what :meth:`engine.Engine.save` writes)."""
        d = {"learn": self.learn.to_dict(), "reasons": list(self.reasons), "fingerprint": dict(self.fingerprint)}
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(LearnConfig.from_dict(d["learn"]), list(d.get("reasons", [])), dict(d.get("fingerprint", {})))


def _fmt(t) -> str:
    return "x".join(f"{v:g}" for v in t) if t is not None else "native"


def _fmt_levels(levels) -> str:
    return "[" + ", ".join("".join(str(v) for v in t) for t in levels) + "]"


def grid_size(shape: Sequence[int], spacing: Sequence[float], target: Optional[Sequence[float]]) -> tuple[int, ...]:
    """The voxel size of a volume of ``shape`` at ``spacing`` resampled to ``target``
    (an axis whose spacing changes by less than :data:`RESAMPLE_MIN` keeps its size)."""
    if target is None:
        return tuple(int(n) for n in shape)
    out = []
    for n, s, t in zip(shape, spacing, target):
        r = float(t) / float(s)
        out.append(int(n) if 1.0 / RESAMPLE_MIN < r < RESAMPLE_MIN else max(1, int(round(n * s / t))))
    return tuple(out)


def _levels(spacing: Sequence[float], patch: Sequence[int], depth: int) -> tuple[list, list, list]:
    """nnU-Net's pooling rule: per level, pool / convolve along an axis while its
    spacing is within 2x of the finest and its map has >= MIN_POOL_SIZE voxels; an
    axis :data:`VERY_THICK_RATIO` times coarser than the finest is never pooled or
    convolved across (a 2D-like net)."""
    sp = [float(s) if float(s) < VERY_THICK_RATIO * min(spacing) else math.inf for s in spacing]
    size = [int(p) for p in patch]
    strides, kernels, notes = [], [], []
    for _ in range(depth):
        finest = min(sp)
        comparable = [s <= 2.0 * finest + 1e-9 for s in sp]
        kernels.append(tuple(3 if c else 1 for c in comparable))
        pool = tuple(2 if (c and n >= MIN_POOL_SIZE) else 1 for c, n in zip(comparable, size))
        strides.append(pool)
        sp = [s * p for s, p in zip(sp, pool)]
        size = [max(1, math.ceil(n / p)) for n, p in zip(size, pool)]
    finest = min(sp)
    kernels.append(tuple(3 if s <= 2.0 * finest + 1e-9 else 1 for s in sp))
    return strides, kernels, notes


def _mult(n: int, m: int) -> int:
    return max(m, (n // m) * m) if n >= m else n


def make_plan(fp: Fingerprint, learn: LearnConfig, device: torch.device) -> Plan:
    """The :class:`Plan` for the data ``fp`` has seen (module docstring); fields set
    in ``learn`` are kept as given."""
    cuda = device.type == "cuda"
    reasons: list[str] = []
    summ = fp.summary()
    native = summ.get("median_spacing_mm", (1.0, 1.0, 1.0))
    shape = summ.get("median_shape", (64, 128, 128))
    obj = summ.get("median_object_mm")
    finest = min(native)
    thick = [s >= THICK_RATIO * finest for s in native]

    inplane = INPLANE_PATCH * (2 if cuda else 1)
    if learn.patch is not None:  # a given patch is the width the object should fit in
        inplane = min(int(v) for v in learn.patch[1:])

    # --- target spacing
    if learn.target_spacing is not None:
        target = tuple(float(v) for v in learn.target_spacing)
        reasons.append(f"target spacing {_fmt(target)} mm: set in LearnConfig")
    else:
        target = list(native)
        if obj is not None:
            iso = [a for a in range(3) if not thick[a]]
            span = max(obj[a] for a in iso)
            factor = span / (inplane * max(native[a] for a in iso))
            if factor >= RESAMPLE_MIN:
                k = 2 ** max(1, int(round(math.log2(factor))))  # powers of 2: exact block averages
                for a in iso:
                    target[a] = native[a] * k
                reasons.append(
                    f"target spacing {_fmt(target)} mm: the object spans {span:.0f} mm, "
                    f"{span / max(native[a] for a in iso):.0f} voxels at the native {_fmt(native)} mm; "
                    f"{k}x coarser lets a {inplane}-voxel patch see most of it"
                )
            else:
                reasons.append(
                    f"target spacing {_fmt(target)} mm: native; the object ({_fmt(obj)} mm) spans at "
                    f"most {span / max(native[a] for a in iso):.0f} voxels, about a patch's width "
                    f"({inplane})"
                )
        else:
            reasons.append(f"target spacing {_fmt(target)} mm: native (no object seen yet)")
        if any(thick):
            reasons.append(
                f"axis {[a for a in range(3) if thick[a]]} is thick ({_fmt(native)} mm: >= "
                f"{THICK_RATIO:g}x the finest): never resampled"
            )
        target = tuple(float(v) for v in target)
    grid = grid_size(shape, native, target)

    # --- patch
    budget = learn.patch_voxels or (PATCH_VOXELS * (4 if cuda else 1))
    if learn.patch is not None:
        patch = tuple(int(v) for v in learn.patch)
        reasons.append(f"patch {_fmt(patch)}: set in LearnConfig")
    else:
        ph, pw = (_mult(min(inplane, n), 8) for n in grid[1:])
        pd = max(1, min(grid[0], budget // (ph * pw)))
        if pd == grid[0] and pd * ph * pw < budget:  # few slices: spend the rest on in-plane context
            side = int(math.sqrt(budget / pd))
            ph, pw = (_mult(min(side, n), 8) for n in grid[1:])
        elif pd >= 8:
            pd = _mult(pd, 8)
        patch = (pd, ph, pw)
        reasons.append(
            f"patch {_fmt(patch)} voxels = {_fmt([p * t for p, t in zip(patch, target)])} mm "
            f"(budget {budget} voxels; the image is {_fmt(grid)} voxels at the target spacing)"
        )

    # --- pooling and kernels
    strides, kernels, _ = _levels(target, patch, learn.depth)
    if learn.strides is not None:
        strides = [tuple(t) for t in learn.strides]
        reasons.append("strides: set in LearnConfig")
    if learn.kernels is not None:
        kernels = [tuple(t) for t in learn.kernels]
        reasons.append("kernels: set in LearnConfig")
    if learn.strides is None or learn.kernels is None:
        if all(k[0] == 1 for k in kernels):
            reasons.append("2D-like net: the slices are too thick for a 3-tap kernel across them at any level")
        elif any(k[0] == 1 for k in kernels):
            reasons.append(
                f"anisotropic net: no pooling and 1-tap kernels across slices at the levels where the "
                f"slice spacing is > 2x the in-plane one (strides {_fmt_levels(strides)})"
            )
        else:
            reasons.append(f"isotropic net: strides {_fmt_levels(strides)}")

    # --- normalisation
    normalize, window = learn.normalize, learn.ct_window
    if normalize == "auto":
        if fp.ct_like() and len(fp.foreground) >= 16:
            fgv = np.asarray(fp.foreground, dtype=np.float64)
            lo, hi = np.percentile(fgv, [0.5, 99.5])
            clipped = np.clip(fgv, lo, hi)
            normalize, window = "ct", (float(lo), float(hi), float(clipped.mean()), float(max(clipped.std(), 1e-6)))
            reasons.append(
                f"normalisation ct: integer intensities from {min(r[4] for r in fp.intensity):g} to "
                f"{max(r[5] for r in fp.intensity):g} look like Hounsfield units; clip to the objects' "
                f"0.5-99.5 percentiles [{lo:.0f}, {hi:.0f}] and z-score with their mean "
                f"{window[2]:.1f} / std {window[3]:.1f}"
            )
        else:
            normalize = "robust_zscore"
            reasons.append(
                "normalisation robust_zscore: MR-like intensities (not Hounsfield units): per-image "
                "z-score after clipping to the image's 0.5-99.5 percentiles"
            )
    else:
        reasons.append(f"normalisation {normalize}: set in LearnConfig")

    # --- batch
    batch, sw_batch = learn.batch_size, learn.sw_batch
    if batch is None:
        batch = 2
        if cuda:
            free, _ = torch.cuda.mem_get_info(device)
            per_sample = math.prod(patch) * learn.base_width * 400  # activations + grads, bytes (rough, bf16/fp32)
            batch = int(max(2, min(8, (0.25 * free) // max(per_sample, 1))))
        reasons.append(f"batch {batch} patches per step ({'GPU memory' if cuda else 'CPU'})")
    if sw_batch is None:
        sw_batch = 8 if cuda else 4
    resolved = replace(
        learn,
        target_spacing=target,
        patch=patch,
        strides=tuple(strides),
        kernels=tuple(kernels),
        normalize=normalize,
        ct_window=window,
        batch_size=batch,
        sw_batch=sw_batch,
        patch_voxels=budget,
    )
    resolved, why = resolve_execution(resolved, device)
    reasons.append(why)
    resolved.validate()
    return Plan(resolved, reasons, summ)
