"""Parameters of the native registration (torch-free, so the NumPy path of
:mod:`engine.propagate.lite` can read them without importing torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import InputError

__all__ = ["NativeParams", "grid_factors", "REGISTER_MARGIN", "REGISTER_CROP_MM", "REGISTER_CROP_SHARE"]

#: With a known extent, slices registered beyond each of its ends (the cost follows the object).
REGISTER_MARGIN = 1
#: A session registers only the drawn masks' in-plane bounding box grown by this (mm)...
REGISTER_CROP_MM = 32.0
#: ...when that box is at most this share of the plane (else the whole plane).
REGISTER_CROP_SHARE = 0.6


@dataclass(frozen=True)
class NativeParams:
    """Parameters of the native demons registration (see the module docstring), in mm.

    The registration runs on a grid of about ``pixel_mm`` per pixel: finer slices are
    averaged down by an integer factor first (their fields are interpolated back to
    the native grid), so accuracy and cost do not depend on the voxel size. The
    lengths below are mm on that finest grid and scale with each coarser pyramid level
    (the same number of pixels of the level)."""

    #: iterations per pyramid level, coarsest first; its length is the number of levels
    iterations: tuple[int, ...] = (30, 20, 5)
    #: pixel size (mm) of the finest level: slices finer than this are averaged down to it
    pixel_mm: float = 1.25
    #: Gaussian sigma (mm at the finest level) of the demons step; 0: none
    sigma_update_mm: float = 0.0
    #: Gaussian sigma (mm at the finest level) of the accumulated field
    sigma_field_mm: float = 1.25
    #: bound of one demons step (mm at the finest level)
    max_step_mm: float = 0.625
    #: direction of the demons force: "symmetric" (ESM: mean of the fixed and the warped
    #: moving gradients), "moving" (warped moving gradient) or "fixed" (Thirion's
    #: passive force: the fixed gradient, computed once per level)
    force: str = "symmetric"
    #: "both": register both ways (bwd on its own); "invert": bwd is the fixed-point
    #: inverse of fwd (about 1.7x faster, -0.003 Dice at k=3 on the LA cases)
    direction: str = "both"
    #: fixed-point iterations of the field inversion (direction="invert")
    inverse_iterations: int = 5
    #: Gaussian pre-smoothing (mm) of both images before the pyramid; 0: none
    sigma_image_mm: float = 0.0
    #: coupling of the fields of neighbouring pairs (batch entries n-1, n+1) per
    #: iteration: u[n] <- (1 - 2w) u[n] + w (u[n-1] + u[n+1]); 0 keeps pairs independent
    pair_coupling: float = 0.1
    #: stop a level early once the largest update of an iteration is below this (mm;
    #: checked every 5 iterations, one read back each); 0: the fixed iterations
    stop_mm: float = 0.0

    def __post_init__(self) -> None:
        its = tuple(int(i) for i in self.iterations)
        if not its or any(i < 0 for i in its):
            raise InputError(f"iterations must be a non-empty tuple of non-negative ints, got {self.iterations!r}")
        object.__setattr__(self, "iterations", its)
        if not self.pixel_mm > 0:
            raise InputError(f"pixel_mm must be > 0, got {self.pixel_mm}")
        if self.sigma_update_mm < 0 or self.sigma_field_mm < 0 or self.sigma_image_mm < 0 or self.stop_mm < 0:
            raise InputError("sigma_update_mm, sigma_field_mm, sigma_image_mm and stop_mm must be >= 0")
        if not self.max_step_mm > 0:
            raise InputError(f"max_step_mm must be > 0, got {self.max_step_mm}")
        if self.force not in ("symmetric", "moving", "fixed"):
            raise InputError(f"force={self.force!r}; expected 'symmetric', 'moving' or 'fixed'")
        if self.direction not in ("invert", "both"):
            raise InputError(f"direction={self.direction!r}; expected 'invert' or 'both'")
        if self.inverse_iterations < 0:
            raise InputError("inverse_iterations must be >= 0")

    def as_dict(self) -> dict:
        return asdict(self)

    def in_pixels(self, grid_mm: Optional[float] = None) -> "_Pixels":
        """The lengths in pixels of a finest grid of ``grid_mm`` (default ``pixel_mm``)."""
        g = float(grid_mm or self.pixel_mm)
        return _Pixels(
            self.iterations,
            self.sigma_update_mm / g,
            self.sigma_field_mm / g,
            self.max_step_mm / g,
            self.force,
            self.sigma_image_mm / g,
            self.pair_coupling,
            self.stop_mm / g,
        )


@dataclass(frozen=True)
class _Pixels:
    """NativeParams on one grid: every length in pixels of the finest level."""

    iterations: tuple[int, ...]
    sigma_update: float
    sigma_field: float
    max_step: float
    force: str
    sigma_image: float
    pair_coupling: float
    stop: float


def grid_factors(spacing: Optional[tuple[float, float]], params: NativeParams) -> tuple[int, int]:
    """Integer averaging factors that bring in-plane pixels of ``spacing`` (mm; None:
    ``pixel_mm``) close to ``params.pixel_mm`` without going coarser than it by more
    than rounding."""
    if spacing is None:
        return (1, 1)
    return tuple(max(1, int(round(params.pixel_mm / float(s)))) for s in spacing)  # type: ignore[return-value]
