"""A generated stream of MR-like phantom cases (never stored data).

Every case is computed from its seed alone, so the stream is the embedded default
for users without real data and a fixture for tests.

The object family (one bright, smooth "chamber" with tubular "veins")
-------------------------------------------------------------------
* a main body: an ellipsoid whose long semi-axis lies along the annotation axis;
* two to four veins: thin elongated ellipsoids that start inside the body and
  leave it obliquely, roughly within the plane of the slices;
* the union is deformed by a smooth random displacement field (a coarse 3-vector
  noise grid, trilinearly upsampled, amplitude a few voxels).

Size, position, orientation of the veins and the deformation change with the seed;
the body-plus-veins shape stays recognisable, so a model can learn it. The object
fills about 5–20 % of the volume and spans about 60–85 % of the slices along the
annotation axis (the generator rescales the object until it does).

Appearance (MR-like)
--------------------
Background tissue at a smoothly varying level; the object brighter (contrast
1.0–1.6 above background); two or three *distractors* next to the object (blobs
at 50–80 % of the object's contrast, often touching it) that a model must learn
to ignore, and a one-voxel darker wall around the object; partial-volume blur; a smooth
multiplicative bias field (about ±20 %); Rician noise (the magnitude of a complex
signal with Gaussian noise in both channels); finally a z-score over the volume.

Arrays are float32 ``image`` and uint8 ``label`` of shape ``shape`` with the
annotation axis at ``axis`` (default 0, so the default shape ``(40, 72, 64)`` has
40 slices); spacing 1.25 mm like the shared left-atrium data.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Union

import numpy as np

from ..errors import InputError
from .dataset import Case

__all__ = ["phantom_case", "phantom_stream", "phantom_in_volume", "PHANTOM_SPACING"]

#: Voxel size of phantom cases (mm), as in the shared left-atrium data.
PHANTOM_SPACING = 1.25

_EXTENT_RANGE = (0.62, 0.82)  # target fraction of slices holding the object
_FILL_RANGE = (0.06, 0.18)  # target fraction of voxels inside the object

SeedLike = Union[int, Sequence[int]]


def _linear_weights(n: int, coarse: int) -> np.ndarray:
    """``(n, coarse)`` float32 weights of linear interpolation from ``coarse`` grid
    points to ``n`` samples, both spanning the same interval (end points aligned)."""
    pos = np.linspace(0.0, coarse - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(np.int64), coarse - 2)
    frac = pos - lo
    w = np.zeros((n, coarse), dtype=np.float64)
    w[np.arange(n), lo] = 1.0 - frac
    w[np.arange(n), lo + 1] = frac
    return w.astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, channels: int = 1) -> np.ndarray:
    """Smooth noise: a ``coarse``^3 normal grid trilinearly upsampled to ``shape``.

    Returns ``(channels, *shape)`` float32 with roughly unit amplitude. The
    upsampling is separable: three small matrix products, one per axis.
    """
    grid = rng.standard_normal((channels, coarse, coarse, coarse)).astype(np.float32)
    wd, wh, ww = (_linear_weights(n, coarse) for n in shape)
    t = grid @ ww.T  # (C, c, c, W)
    t = np.einsum("hj,cijw->cihw", wh, t)  # (C, c, H, W)
    return np.einsum("di,cihw->cdhw", wd, t)  # (C, D, H, W)


def _check_args(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) < 16 for s in shape):
        raise InputError(f"phantom shape must be 3 sizes of at least 16, got {tuple(shape)}")
    if axis not in (0, 1, 2):
        raise InputError(f"phantom axis must be 0, 1 or 2, got {axis!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])


class _Geometry:
    """The random object of one case in a ``(D, H, W)`` frame (annotation axis first).

    Ellipsoids are stored as centres ``(k, 3)`` and inverse linear maps ``(k, 3, 3)``;
    a point ``p`` is inside ellipsoid ``i`` when ``|A_i (p - c_i)| < 1``.
    """

    def __init__(self, rng: np.random.Generator, dims: tuple[int, int, int]) -> None:
        d, h, w = dims
        self.dims = dims
        self.center = np.array([d, h, w], dtype=np.float64) / 2 + rng.uniform(-1, 1, 3) * [0.04 * d, 0.08 * h, 0.08 * w]
        # body semi-axes along (D, H, W), in voxels
        self.body = np.array([rng.uniform(0.31, 0.41) * d, rng.uniform(0.2, 0.3) * h, rng.uniform(0.2, 0.3) * w])
        self.body_tilt = rng.uniform(-0.25, 0.25, 3)
        n_veins = int(rng.integers(2, 5))
        self.veins = []
        for _ in range(n_veins):
            azim = rng.uniform(0, 2 * np.pi)
            elev = rng.uniform(-0.5, 0.5)
            vec = np.array([np.sin(elev), np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim)])
            length = rng.uniform(0.9, 1.4)  # relative to the body's in-plane size
            radius = rng.uniform(0.09, 0.14) * min(h, w) / 2
            self.veins.append((vec, length, radius, rng.uniform(-0.3, 0.3)))
        self.scale = np.ones(3)  # corrections applied by the generator

    def ellipsoids(self) -> tuple[np.ndarray, np.ndarray]:
        centers, inverses = [], []
        semi = self.body * self.scale
        rot = _rotation(self.body_tilt)
        centers.append(self.center)
        inverses.append(np.diag(1 / semi) @ rot.T)
        inplane = float(np.mean(semi[1:]))
        for vec, length, radius, offset in self.veins:
            v = vec * np.array([semi[0] / inplane, 1.0, 1.0])
            v = v / np.linalg.norm(v)
            half = 0.5 * length * inplane
            start = self.center + v * offset * inplane * 0.5
            centers.append(start + v * (0.55 * inplane + half * 0.5))
            frame = _frame(v)
            inverses.append(np.diag(1 / np.array([half, radius, radius])) @ frame.T)
        return np.array(centers), np.array(inverses)


def _rotation(angles: np.ndarray) -> np.ndarray:
    ca, cb, cc = np.cos(angles)
    sa, sb, sc = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _frame(v: np.ndarray) -> np.ndarray:
    """An orthonormal 3x3 matrix whose first column is ``v``."""
    helper = np.array([1.0, 0, 0]) if abs(v[0]) < 0.9 else np.array([0, 1.0, 0])
    a = np.cross(v, helper)
    a /= np.linalg.norm(a)
    b = np.cross(v, a)
    return np.stack([v, a, b], axis=1)


def _inside(points: np.ndarray, centers: np.ndarray, inverses: np.ndarray) -> np.ndarray:
    """Min over ellipsoids of the squared normalised radius; ``< 1`` means inside.

    ``points``: ``(3, D, H, W)`` float32 -> ``(D, H, W)`` float32.
    """
    best = None
    for c, a in zip(centers, inverses):
        rel = [points[j] - np.float32(c[j]) for j in range(3)]
        r2 = None
        for i in range(3):  # q_i = sum_j A_ij (p_j - c_j); r2 = sum_i q_i^2
            q = np.float32(a[i, 0]) * rel[0] + np.float32(a[i, 1]) * rel[1] + np.float32(a[i, 2]) * rel[2]
            r2 = q * q if r2 is None else r2 + q * q
        best = r2 if best is None else np.minimum(best, r2)
    return best


def _object_mask(geom: _Geometry, points: np.ndarray) -> np.ndarray:
    centers, inverses = geom.ellipsoids()
    return _inside(points, centers, inverses) < 1.0


def _fit_object(geom: _Geometry, points: np.ndarray) -> np.ndarray:
    """Rescale the object until its slice extent and fill fraction are in range."""
    d = geom.dims[0]
    mask = _object_mask(geom, points)
    for _ in range(6):
        slices = np.count_nonzero(mask.any(axis=(1, 2)))
        extent, fill = slices / d, mask.mean()
        ok_e = _EXTENT_RANGE[0] <= extent <= _EXTENT_RANGE[1]
        ok_f = _FILL_RANGE[0] <= fill <= _FILL_RANGE[1]
        if ok_e and ok_f:
            break
        if not ok_e:
            target = float(np.clip(extent, *_EXTENT_RANGE))
            geom.scale[0] *= target / max(extent, 1.0 / d)
        if not ok_f:
            target = float(np.clip(fill, *_FILL_RANGE))
            geom.scale[1:] *= np.sqrt(target / max(fill, 1e-4))
        mask = _object_mask(geom, points)
    return mask


def _distractors(rng: np.random.Generator, geom: _Geometry, points: np.ndarray) -> np.ndarray:
    """Blobs next to the object, ``(D, H, W)`` float32 in [0, 1] (relative contrast)."""
    semi = geom.body * geom.scale
    out = np.zeros(points.shape[1:], dtype=np.float32)
    for _ in range(int(rng.integers(2, 4))):
        azim = rng.uniform(0, 2 * np.pi)
        off = np.array(
            [
                rng.uniform(-0.6, 0.6) * semi[0],
                np.cos(azim) * semi[1] * rng.uniform(1.0, 1.4),
                np.sin(azim) * semi[2] * rng.uniform(1.0, 1.4),
            ]
        )
        size = np.array(
            [semi[0] * rng.uniform(0.4, 0.8), semi[1] * rng.uniform(0.3, 0.55), semi[2] * rng.uniform(0.3, 0.55)]
        )
        inv = np.diag(1 / size) @ _rotation(rng.uniform(-0.5, 0.5, 3)).T
        blob = _inside(points, (geom.center + off)[None], inv[None]) < 1.0
        out = np.maximum(out, blob * np.float32(rng.uniform(0.5, 0.8)))
    return out


def _appearance(
    rng: np.random.Generator, obj: np.ndarray, distract: np.ndarray, dims: tuple[int, int, int]
) -> np.ndarray:
    from scipy import ndimage

    background = 1.0 + 0.12 * _smooth_field(rng, dims, 5)[0] + 0.06 * _smooth_field(rng, dims, 12)[0]
    contrast = np.float32(rng.uniform(1.0, 1.6))
    wall = ndimage.binary_dilation(obj) & ~obj
    clean = background + contrast * distract
    clean = np.where(wall, background * np.float32(rng.uniform(0.6, 0.85)), clean)
    clean = np.where(obj, background + contrast * (1.0 + 0.08 * _smooth_field(rng, dims, 7)[0]), clean)
    clean = ndimage.gaussian_filter(clean.astype(np.float32), sigma=0.8)
    bias = np.exp(0.2 * _smooth_field(rng, dims, 3)[0])
    signal = clean * bias
    sigma = np.float32(rng.uniform(0.08, 0.16))
    noisy = np.hypot(
        signal + sigma * rng.standard_normal(dims, dtype=np.float32),
        sigma * rng.standard_normal(dims, dtype=np.float32),
    )
    return ((noisy - noisy.mean()) / max(float(noisy.std()), 1e-6)).astype(np.float32)


def _seed_key(seed: SeedLike) -> list[int]:
    items = [seed] if isinstance(seed, (int, np.integer)) else seed
    try:
        key = list(items)
    except TypeError:
        key = None
    if not key or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0 for k in key):
        raise InputError(f"phantom seed must be an int >= 0 or a sequence of them, got {seed!r}")
    return [int(k) for k in key]


def phantom_case(seed: SeedLike, shape: Sequence[int] = (40, 72, 64), axis: int = 0) -> Case:
    """One phantom case, a deterministic function of ``seed`` (and ``shape``/``axis``).

    Args:
        seed: an int, or a sequence of ints (e.g. ``(stream_seed, index)``).
        shape: the volume shape ``(n0, n1, n2)``, each at least 16.
        axis: the annotation axis; the object's long axis lies along it.

    Returns a :class:`~engine.io.dataset.Case` with ``image`` float32 (z-scored),
    ``label`` uint8, spacing 1.25 mm per axis and ``axis`` set.
    """
    dims_in = _check_args(shape, axis)
    key = _seed_key(seed)
    rng = np.random.default_rng(np.random.SeedSequence([0x5EED, *key]))
    order = [axis] + [a for a in range(3) if a != axis]
    dims = tuple(dims_in[a] for a in order)
    base = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in dims), indexing="ij"))
    amplitude = np.float32(rng.uniform(1.5, 3.0))
    points = base + amplitude * _smooth_field(rng, dims, 4, channels=3)
    geom = _Geometry(rng, dims)
    obj = _fit_object(geom, points)
    distract = _distractors(rng, geom, points)
    image = _appearance(rng, obj, distract, dims)
    back = np.argsort(order)
    name = "phantom_" + "_".join(str(k) for k in key)
    return Case(
        name,
        np.ascontiguousarray(image.transpose(back)),
        np.ascontiguousarray(obj.transpose(back).astype(np.uint8)),
        (PHANTOM_SPACING,) * 3,
        axis,
    )


def phantom_stream(n: int, seed: int = 0, shape: Sequence[int] = (40, 72, 64), axis: int = 0) -> Iterator[Case]:
    """``n`` phantom cases; case ``i`` is ``phantom_case((seed, i), shape, axis)``.

    Streams with different seeds share no case; a held-out split is another seed.
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative int, got {n!r}")
    for i in range(int(n)):
        yield phantom_case((seed, i), shape, axis)


def phantom_in_volume(
    seed: SeedLike,
    shape: Sequence[int] = (240, 240, 155),
    inner: Sequence[int] = (96, 96, 64),
    axis: int = 2,
    spacing: float = 1.0,
) -> Case:
    """A large volume with a *small* object: a phantom case of shape ``inner`` placed at
    a seeded position inside ``shape`` (brain-MRI size by default: 240x240x155 at 1 mm,
    the object about 1 % of the voxels), the rest smooth MR-like background with the
    inner case's noise. For the cost of a round to be measured where the object is much
    smaller than the volume (a tumour in a brain scan)."""
    outer = _check_args(shape, axis)
    inner_dims = tuple(int(v) for v in inner)
    if len(inner_dims) != 3 or any(i > o for i, o in zip(inner_dims, outer)):
        raise InputError(f"inner {tuple(inner)} must fit in shape {tuple(shape)}")
    key = _seed_key(seed)
    case = phantom_case(key, inner_dims, axis)
    rng = np.random.default_rng(np.random.SeedSequence([0xB1A5, *key]))
    lab = case.label.astype(bool)
    bg = case.image[~lab]
    mean, std = float(bg.mean()), float(bg.std())
    coarse = tuple(max(4, n // 24) for n in outer)
    field = sum(_smooth_field(rng, outer, c)[0] for c in set(coarse)) / len(set(coarse))
    image = (mean + 0.5 * std * field + 0.5 * std * rng.standard_normal(outer, dtype=np.float32)).astype(np.float32)
    label = np.zeros(outer, np.uint8)
    start = [int(rng.integers(0, o - i + 1)) for o, i in zip(outer, inner_dims)]
    box = tuple(slice(s, s + i) for s, i in zip(start, inner_dims))
    image[box] = case.image
    label[box] = case.label
    return Case(f"big_{case.name}", image, label, (float(spacing),) * 3, axis)
