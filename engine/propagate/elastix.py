"""elastix backend: itk-elastix 2D B-spline registration of adjacent slice pairs.

The accurate CPU reference the native backend is measured against. Each pair
``(I[z], I[z+1])`` is registered on its own (elastix has no batch dimension), so a
44-slice case runs 43 registrations.

Parameters (:class:`ElastixParams`; chosen for slices of ~100x70 to 256x256 pixels)
-------------------------------------------------------------------------------------
* ``Transform BSplineTransform``, final control-point grid spacing ``grid_spacing``
  pixels (default ``"auto"``: ``max(8, min(H, W) / 9)``, i.e. 8 px = 10 mm on the
  1.25 mm LA slices of ~95x71 px, and about 28 px on 256x256 slices). Anatomy between
  adjacent slices moves smoothly over centimetres; a finer grid on 70 px slices follows
  noise (and costs time), a coarser one cannot bend the atrium around its veins. The
  grid is coarser on the lower resolutions (``GridSpacingSchedule 4 2 1``).
* ``NumberOfResolutions 3`` with the smoothing pyramid (sigmas 4, 2, 1 px, no
  downsampling): the largest slice-to-slice shifts on the LA data are 3-6 px, which the
  sigma-4 level captures; more levels add nothing on 70-px slices.
* ``Metric AdvancedMeanSquares``: adjacent slices of one MR sequence have the same
  intensity mapping (both are normalised to [0, 1] by the same percentiles), so the
  sum of squared differences is the right similarity; Mattes mutual information needs
  many samples to fill its histogram on 7k-pixel slices and was noisier.
* ``Optimizer AdaptiveStochasticGradientDescent``, ``iterations`` (default 200) per
  resolution, ``NumberOfSpatialSamples 2048`` drawn anew every iteration
  (``RandomCoordinate``), fixed ``RandomSeed`` for reproducibility. 200 iterations
  reach the plateau of proxy Dice on the LA cases (100 was measurably lower).
* ``direction``: ``"invert"`` (default) registers ``I[z] -> I[z+1]`` and inverts the
  field by the same fixed-point iteration as the native backend
  (:func:`engine.propagate.native.invert_field`); ``"both"`` registers both ways
  (twice the time).

Coordinates: the slices go to ITK as 2D images with spacing 1 and origin 0, so
physical coordinates are pixel indices in ITK's ``(x, y)`` = (column, row) order. The
transform maps fixed points to moving points, ``T(p) = p + d(p)``, so ``d`` is exactly
our pull-back displacement once its components are swapped to ``(y, x)``. The field is
read with ``transformix`` (``ComputeDeformationField``) as an ``[H, W, 2]`` array.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np

from ..errors import BackendError, InputError, ShapeError

__all__ = ["ElastixParams", "parameter_object", "register_pair", "register_stack", "available"]


@dataclass(frozen=True)
class ElastixParams:
    """Parameters of the elastix B-spline backend (see the module docstring)."""

    grid_spacing: Union[float, str] = "auto"
    resolutions: int = 3
    iterations: int = 200
    samples: int = 2048
    metric: str = "AdvancedMeanSquares"
    direction: str = "invert"
    inverse_iterations: int = 10
    seed: int = 121212
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if not (self.grid_spacing == "auto" or (isinstance(self.grid_spacing, (int, float)) and self.grid_spacing > 0)):
            raise InputError(f"grid_spacing must be 'auto' or > 0, got {self.grid_spacing!r}")
        if self.resolutions < 1 or self.iterations < 1 or self.samples < 16:
            raise InputError("resolutions and iterations must be >= 1, samples >= 16")
        if self.direction not in ("invert", "both"):
            raise InputError(f"direction={self.direction!r}; expected 'invert' or 'both'")

    def grid_for(self, shape: tuple[int, int]) -> float:
        if self.grid_spacing == "auto":
            return float(max(8.0, min(shape) / 9.0))
        return float(self.grid_spacing)

    def as_dict(self) -> dict:
        return asdict(self)


def _itk():
    try:
        import itk

        itk.ParameterObject  # noqa: B018 - raises when itk-elastix is not installed
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"the elastix backend needs itk-elastix (pip install itk-elastix): {exc}") from exc
    return itk


def available() -> bool:
    """Whether itk-elastix can be imported."""
    try:
        _itk()
    except BackendError:
        return False
    return True


def parameter_object(params: ElastixParams, shape: tuple[int, int]):
    """The elastix ``ParameterObject`` for slices of ``shape`` ``(H, W)``."""
    itk = _itk()
    po = itk.ParameterObject.New()
    grid = params.grid_for(shape)
    p = po.GetDefaultParameterMap("bspline", params.resolutions, grid)
    n = params.resolutions
    p["Metric"] = [params.metric]
    p["MaximumNumberOfIterations"] = [str(params.iterations)]
    p["FinalGridSpacingInPhysicalUnits"] = [str(grid)]
    p["GridSpacingSchedule"] = [str(float(2 ** (n - 1 - i))) for i in range(n)]
    p["FixedImagePyramidSchedule"] = [str(2 ** (n - 1 - i)) for i in range(n) for _ in range(2)]
    p["MovingImagePyramidSchedule"] = p["FixedImagePyramidSchedule"]
    p["ImageSampler"] = ["RandomCoordinate"]
    p["NumberOfSpatialSamples"] = [str(params.samples)]
    p["NewSamplesEveryIteration"] = ["true"]
    p["RandomSeed"] = [str(params.seed)]
    p["WriteResultImage"] = ["false"]
    p["ResultImageFormat"] = ["mha"]
    po.AddParameterMap(p)
    return po


def _image(a: np.ndarray):
    itk = _itk()
    img = itk.image_from_array(np.ascontiguousarray(a, dtype=np.float32))
    img.SetSpacing((1.0, 1.0))
    img.SetOrigin((0.0, 0.0))
    return img


def register_pair(
    fixed: np.ndarray, moving: np.ndarray, params: Optional[ElastixParams] = None, parameters=None
) -> np.ndarray:
    """Register ``moving`` to ``fixed`` (2D ``[H, W]``); returns ``u`` ``[2, H, W]`` float32
    (channel 0 rows, 1 columns, pixels) with ``moving(p + u(p)) ~ fixed(p)``."""
    itk = _itk()
    p = params or ElastixParams()
    if fixed.ndim != 2 or fixed.shape != moving.shape:
        raise ShapeError(f"fixed {fixed.shape} and moving {moving.shape} must be equal 2D shapes")
    po = parameters if parameters is not None else parameter_object(p, fixed.shape)
    fi, mi = _image(fixed), _image(moving)
    kw = {} if p.threads is None else {"number_of_threads": int(p.threads)}
    _, tp = itk.elastix_registration_method(fi, mi, parameter_object=po, log_to_console=False, **kw)
    # transformix writes deformationField.* into its output directory (default: the
    # caller's working directory); keep that scratch file out of the user's folders
    with tempfile.TemporaryDirectory(prefix="dilseg-transformix-") as scratch:
        field = itk.array_from_image(itk.transformix_deformation_field(mi, tp, output_directory=scratch))  # [H, W, 2]
    return np.ascontiguousarray(np.stack([field[..., 1], field[..., 0]]), dtype=np.float32)


def register_stack(volume: np.ndarray, params: Optional[ElastixParams] = None) -> tuple[np.ndarray, np.ndarray]:
    """Register all adjacent pairs of ``volume`` ``[D, H, W]`` (intensities in [0, 1]).

    Returns ``(fwd, bwd)`` ``[D-1, 2, H, W]`` float32 numpy arrays in the conventions of
    :func:`engine.propagate.native.register_stack`.
    """
    p = params or ElastixParams()
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ShapeError(f"volume must be [D, H, W], got {vol.shape}")
    D, H, W = vol.shape
    fwd = np.zeros((max(D - 1, 0), 2, H, W), np.float32)
    bwd = np.zeros_like(fwd)
    if D < 2:
        return fwd, bwd
    po = parameter_object(p, (H, W))
    for z in range(D - 1):
        fwd[z] = register_pair(vol[z + 1], vol[z], p, po)
        if p.direction == "both":
            bwd[z] = register_pair(vol[z], vol[z + 1], p, po)
    if p.direction == "invert":
        import torch

        from .native import invert_field

        bwd = invert_field(torch.from_numpy(fwd), p.inverse_iterations).numpy()
    return fwd, bwd
