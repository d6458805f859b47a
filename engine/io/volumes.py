"""Read and write 2D/3D medical volumes: NIfTI, NRRD, MetaImage, npz and HDF5.

:func:`read_volume` returns a :class:`Volume`; :func:`write_volume` writes one
atomically (a temporary file in the destination folder, ``fsync``, then an
atomic rename: :mod:`engine._files`), so a reader never sees a half-written file.

Geometry, the same for every format
-----------------------------------
``Volume.array`` keeps the axis order in which the format's library returns the
voxels (see the table). The geometry is expressed per *array axis* ``a``:

* ``spacing[a]``   the voxel size along array axis ``a`` (mm),
* ``direction[:, a]`` the unit vector (physical coordinates) of array axis ``a``,
* ``origin``       the physical position of voxel ``array[0, 0, 0]``,

so a voxel index ``idx`` (in array order) lies at
``origin + direction @ (spacing * idx)``. Physical coordinates are LPS (the
ITK/DICOM convention) for every format: NIfTI's RAS affine and NRRD files in an
RAS or LAS space are converted on read (NIfTI is written back as RAS, NRRD as
LPS), so geometry survives a conversion between formats.

Formats and axis order of ``array``
-----------------------------------
=============  ===========================  ===========================================
format         library                      ``array`` axes
=============  ===========================  ===========================================
``nifti``      nibabel (.nii, .nii.gz)      ``(i, j, k)``: voxel index order of the
                                            header, first axis fastest on disk
``nrrd``       pynrrd (.nrrd)               ``(x, y, z)``: NRRD axis order, fastest
                                            axis first (pynrrd ``index_order="F"``)
``meta``       itk (.mha, .mhd)             ``(z, y, x)``: reversed ITK index order,
                                            as ``itk.array_from_image`` returns it
``npz``        numpy (.npz)                 as stored
``h5``         h5py (.h5, .hdf5)            as stored
=============  ===========================  ===========================================

So the same scan read from NIfTI and from MetaImage has its axes in opposite
orders; the geometry (spacing, direction) follows the axes, so nothing is lost,
but the annotation axis index differs (a NIfTI ``k`` axis is MetaImage axis 0).

Containers (npz, h5) hold named arrays: ``image`` and optionally ``label``, plus
optional geometry arrays ``spacing``, ``origin`` and ``direction`` (float64;
``spacing`` may be float32 as in the shared left-atrium files). Missing geometry
means spacing 1, origin 0 and identity direction. A container holding a single
array (any name) is read as that array.

Round trips and caveats
-----------------------
Writing then reading gives the same array, dtype and shape in every format, and the
same spacing, origin and direction with these limits:

* NIfTI stores its affine as float32: geometry comes back rounded to float32.
  Many tools cannot read NIfTI int64/uint64, but nibabel writes them.
* bool arrays are written as uint8 by every format but npz/h5.
* NIfTI and NRRD store (u)int8/16/32/64, float32 and float64; MetaImage (the itk
  wheels' wrapping) uint8, uint16, int16, uint32, int32, float32 and float64.
  Other dtypes (e.g. float16) raise :class:`~engine.errors.DTypeError`.
* A ``.mhd`` header comes with a separate ``.zraw`` data file; both are replaced
  atomically, the data file first.
* NRRD and MetaImage store geometry as 17-digit text: exact float64.
* npz and h5 keep every numpy dtype and exact float64 geometry.

Every failure to read (missing file, unknown extension, truncated or corrupt data,
missing key) raises :class:`~engine.errors.DataError` naming the path and reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .. import _files
from ..errors import DataError, DTypeError, InputError, ShapeError
from . import formats as F

__all__ = [
    "Volume",
    "read_volume",
    "read_arrays",
    "write_volume",
    "atomic_write",
    "volume_format",
    "split_name",
    "SUPPORTED_SUFFIXES",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File suffix (lower case) -> format name.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".mha": "meta",
    ".mhd": "meta",
    ".npz": "npz",
    ".h5": "h5",
    ".hdf5": "h5",
}

#: dtypes each file format can store (npz/h5 store every bool/int/float dtype).
_FILE_DTYPES = {
    "nifti": ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"),
    "nrrd": ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"),
    "meta": ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"),
}


@dataclass(eq=False)  # holds arrays: compare fields explicitly
class Volume:
    """A voxel array with its geometry.

    Attributes:
        array: the voxels, shape ``(n0, n1[, n2])`` in the format's array order
            (module docstring), dtype as stored in the file.
        spacing: voxel size per array axis, ``len == array.ndim`` (mm).
        origin: physical (LPS) position of the first voxel, ``len == array.ndim``.
        direction: ``(ndim, ndim)`` float64; column ``a`` is the unit direction of
            array axis ``a`` in LPS coordinates.
        format: ``"nifti" | "nrrd" | "meta" | "npz" | "h5"``.
        path: the file it came from, or None.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    format: str
    path: Optional[str] = field(default=None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def ndim(self) -> int:
        return int(self.array.ndim)


# --------------------------------------------------------------------------- names


def split_name(path: PathLike) -> tuple[str, str]:
    """Split a file name into ``(stem, suffix)`` with a supported suffix.

    ``"case_1.nii.gz" -> ("case_1", ".nii.gz")``. The suffix is lower-cased;
    an unsupported suffix gives ``(name, "")``.
    """
    name = Path(path).name
    low = name.lower()
    for suffix in SUPPORTED_SUFFIXES:  # ".nii.gz" is tested before ".nii"
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def volume_format(path: PathLike) -> str:
    """The format name for ``path`` from its suffix; DataError when unsupported."""
    _, suffix = split_name(path)
    if not suffix:
        known = ", ".join(SUPPORTED_SUFFIXES)
        raise DataError(f"{path}: unsupported file type (known suffixes: {known})")
    return SUPPORTED_SUFFIXES[suffix]


# --------------------------------------------------------------------------- geometry


def _check_array(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ShapeError(f"volumes must be 2D or 3D, got shape {arr.shape}")
    if arr.size == 0:
        raise ShapeError(f"volume is empty, shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DTypeError(f"unsupported volume dtype {arr.dtype} (need bool, int or float)")
    return arr


def _check_geometry(
    ndim: int, spacing: Any, origin: Any, direction: Any
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    try:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
        og = np.asarray(origin, dtype=np.float64).reshape(-1)
        dr = np.asarray(direction, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"spacing, origin and direction must be numbers: {exc}") from exc
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing must be {ndim} positive finite numbers, got {spacing!r}")
    if og.shape != (ndim,) or not np.all(np.isfinite(og)):
        raise InputError(f"origin must be {ndim} finite numbers, got {origin!r}")
    if dr.shape != (ndim, ndim) or not np.all(np.isfinite(dr)):
        raise InputError(f"direction must be a finite {ndim}x{ndim} matrix, got {direction!r}")
    norms = np.linalg.norm(dr, axis=0)
    if np.any(np.abs(norms - 1.0) > 1e-4) or abs(np.linalg.det(dr)) < 1e-6:
        raise InputError(f"direction must have unit-length, independent columns (column norms {norms})")
    return tuple(float(v) for v in sp), tuple(float(v) for v in og), dr.copy()


def _resolve_geometry(
    arr: np.ndarray, like: Optional[Volume], spacing: Any, origin: Any, direction: Any
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    sp, og, dr = F.default_geometry(arr.ndim)
    if like is not None:
        if not isinstance(like, Volume):
            raise InputError(f"like= must be a Volume, got {type(like).__name__}")
        if like.ndim != arr.ndim:
            raise ShapeError(f"like= is {like.ndim}D but the array is {arr.ndim}D")
        sp, og, dr = like.spacing, like.origin, like.direction
    sp = sp if spacing is None else spacing
    og = og if origin is None else origin
    dr = dr if direction is None else direction
    return _check_geometry(arr.ndim, sp, og, dr)


def _as_written(arr: np.ndarray, fmt: str) -> np.ndarray:
    """The array as the format stores it: outside containers bool becomes uint8 and
    a non-native byte order becomes native (the value is the same)."""
    if fmt in ("npz", "h5"):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


# --------------------------------------------------------------------------- atomic write


def atomic_write(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` fills a temporary file in the
    same folder (its name ends with the same suffix), which is fsynced and then
    renamed over ``path`` (:func:`engine._files.atomic_write`). On any error the
    temporary file is removed and ``path`` is untouched. Returns ``path`` as a Path.
    """
    return _files.atomic_write(path, writer, suffix=split_name(path)[1] or None)


# --------------------------------------------------------------------------- public API


def _reason(exc: BaseException) -> str:
    """A library exception as one short line (itk's messages run to pages)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _checked_path(path: PathLike) -> tuple[str, str]:
    p = Path(path)
    fmt = volume_format(p)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    return str(p), fmt


def read_arrays(path: PathLike, keys: Sequence[str] = ("image", "label")) -> dict[str, Volume]:
    """Read several named arrays from one npz/h5 container in a single open.

    Returns ``{key: Volume}`` in the order of ``keys``; every key must exist
    (DataError otherwise). The geometry arrays of the container apply to all.
    """
    spath, fmt = _checked_path(path)
    if fmt not in ("npz", "h5"):
        raise DataError(f"{spath}: read_arrays needs an npz or h5 container, not {fmt}")
    try:
        raw = F.CONTAINER_READERS[fmt](spath, list(keys))
    except DataError:
        raise
    except Exception as exc:  # any library failure means an unreadable file
        raise DataError(f"{spath}: cannot read {fmt} file: {_reason(exc)}") from exc
    return {k: Volume(arr, sp, og, dr, fmt, spath) for k, (arr, sp, og, dr) in raw.items()}


def read_volume(path: PathLike, key: Optional[str] = None) -> Volume:
    """Read one volume; see the module docstring for each format's axis order.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``, ``.npz``,
            ``.h5`` or ``.hdf5`` file.
        key: for npz/h5 containers, the array to read; default ``"image"``, or
            the only array in the file. Other formats take no key (InputError).

    Raises:
        DataError: the file is missing, of an unknown type, truncated or corrupt,
            or has no such key.
    """
    spath, fmt = _checked_path(path)
    if fmt in ("npz", "h5"):
        return next(iter(read_arrays(spath, [key] if key is not None else [None]).values()))
    if key is not None:
        raise InputError(f"{spath}: key= applies to npz/h5 containers only, not {fmt}")
    try:
        arr, sp, og, dr = F.READERS[fmt](spath)
    except DataError:
        raise
    except Exception as exc:  # any library failure means an unreadable file
        raise DataError(f"{spath}: cannot read {fmt} file: {_reason(exc)}") from exc
    return Volume(arr, sp, og, dr, fmt, spath)


def write_volume(
    path: PathLike,
    array: Any,
    like: Optional[Volume] = None,
    *,
    spacing: Optional[Sequence[float]] = None,
    origin: Optional[Sequence[float]] = None,
    direction: Optional[Any] = None,
    key: str = "image",
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``array`` (2D or 3D) atomically; the format follows the suffix.

    Args:
        path: destination; its folder must exist.
        array: numpy array (or anything ``numpy.asarray`` accepts, e.g. a CPU
            tensor), in the format's array order (module docstring).
        like: take spacing/origin/direction from this Volume (same ndim).
        spacing, origin, direction: override the geometry (per array axis;
            ``direction`` is ``(ndim, ndim)`` with unit columns). Defaults:
            ``like``'s, else spacing 1, origin 0, identity.
        key: array name in npz/h5 containers.
        extra: more arrays of the same shape for npz/h5 containers, e.g.
            ``{"label": mask}``; InputError for other formats.

    Returns the path written. Raises InputError/ShapeError/DTypeError for bad
    arguments and DataError when the destination folder is missing.
    """
    dest = Path(path)
    fmt = volume_format(dest)
    arr = _check_array(array)
    sp, og, dr = _resolve_geometry(arr, like, spacing, origin, direction)
    if extra and fmt not in ("npz", "h5"):
        raise InputError(f"{dest}: extra arrays need an npz or h5 container, not {fmt}")
    arr = _as_written(arr, fmt)
    if fmt in _FILE_DTYPES and arr.dtype.name not in _FILE_DTYPES[fmt]:
        names = ", ".join(_FILE_DTYPES[fmt])
        raise DTypeError(f"{dest}: {fmt} files cannot store {arr.dtype} (use one of {names})")
    if fmt == "meta" and dest.name.lower().endswith(".mhd"):
        return F.write_mhd(dest, arr, sp, og, dr)
    if fmt in ("npz", "h5"):
        payload = F.container_payload(arr, key, extra, sp, og, dr)
        return atomic_write(dest, lambda tmp: F.CONTAINER_WRITERS[fmt](tmp, payload))
    return atomic_write(dest, lambda tmp: F.WRITERS[fmt](tmp, arr, sp, og, dr))
