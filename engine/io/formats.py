"""Per-format readers and writers behind :mod:`engine.io.volumes` (private).

Readers return ``(array, spacing, origin, direction)`` (containers: one such tuple
per requested key); writers take ``(path, array, spacing, origin, direction)`` and
fill ``path``, a temporary file that :func:`engine.io.volumes.write_volume` then
moves into place atomically. Geometry conventions: :mod:`engine.io.volumes`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .._files import commit_file, fsync_dir
from ..errors import DataError, InputError, ShapeError

__all__ = [
    "READERS",
    "WRITERS",
    "CONTAINER_READERS",
    "CONTAINER_WRITERS",
    "GEOMETRY_KEYS",
    "default_geometry",
    "container_payload",
    "write_mhd",
]

GEOMETRY_KEYS = ("spacing", "origin", "direction")
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
Geometry = tuple[tuple[float, ...], tuple[float, ...], np.ndarray]


def default_geometry(ndim: int) -> Geometry:
    return (1.0,) * ndim, (0.0,) * ndim, np.eye(ndim)


def _squeeze_trailing(arr: np.ndarray, path: str) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D or 3D volume, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: str):
    import nibabel as nib

    img = nib.load(path, mmap=False)  # a plain array, not a view of the file
    arr = _squeeze_trailing(np.asarray(img.dataobj), path)
    nd = arr.ndim
    zooms = np.asarray(img.header.get_zooms()[:nd], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise DataError(f"{path}: voxel sizes (pixdim) {zooms.tolist()} are not positive")
    lin = _LPS_FROM_RAS @ np.asarray(img.affine[:3, :3], dtype=np.float64)
    origin = _LPS_FROM_RAS @ np.asarray(img.affine[:3, 3], dtype=np.float64)
    direction = lin[:nd, :nd] / zooms[None, :]
    return arr, tuple(zooms.tolist()), tuple(origin[:nd].tolist()), direction


def _write_nifti(path: str, arr: np.ndarray, sp, og, dr) -> None:
    import nibabel as nib

    nd = arr.ndim
    lin = np.eye(3)
    lin[:nd, :nd] = dr * np.asarray(sp)[None, :]
    pos = np.zeros(3)
    pos[:nd] = og
    affine = np.eye(4)
    affine[:3, :3] = _LPS_FROM_RAS @ lin
    affine[:3, 3] = _LPS_FROM_RAS @ pos
    img = nib.Nifti1Image(arr, affine, dtype=arr.dtype)
    img.header.set_zooms(tuple(sp))
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


# --------------------------------------------------------------------------- NRRD

#: NRRD anatomical space -> sign of each physical axis relative to LPS.
_NRRD_SPACE_SIGNS = {
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
}


def _read_nrrd(path: str):
    import nrrd

    arr, header = nrrd.read(path)  # index_order="F": NRRD axis order, fastest first
    arr = _squeeze_trailing(arr, path)
    nd = arr.ndim
    sp, og, dr = default_geometry(nd)
    if "space directions" in header:
        vecs = np.asarray(header["space directions"], dtype=np.float64)[:nd]
        if vecs.ndim != 2 or vecs.shape[1] < nd or not np.all(np.isfinite(vecs[:, :nd])):
            raise DataError(f"{path}: cannot use 'space directions' {header['space directions']}")
        lin = vecs.T  # column a = vector of axis a
        og = np.asarray(header.get("space origin", np.zeros(lin.shape[0])), dtype=np.float64)
        space = str(header.get("space", "")).lower()
        if space in _NRRD_SPACE_SIGNS:  # other spaces (scanner-xyz, ...) are kept as they are
            flip = np.diag(_NRRD_SPACE_SIGNS[space])
            lin, og = flip @ lin, flip @ og
        lin = lin[:nd, :nd]
        norms = np.linalg.norm(lin, axis=0)
        if np.any(norms == 0):
            raise DataError(f"{path}: 'space directions' has a zero vector")
        sp, og, dr = tuple(norms.tolist()), tuple(og[:nd].tolist()), lin / norms[None, :]
    elif "spacings" in header:
        sp = tuple(float(v) for v in np.asarray(header["spacings"], dtype=np.float64)[:nd])
    return arr, sp, og, dr


def _write_nrrd(path: str, arr: np.ndarray, sp, og, dr) -> None:
    import nrrd

    header: dict[str, Any] = {
        "encoding": "gzip",
        "space directions": (dr * np.asarray(sp)[None, :]).T,
        "space origin": np.asarray(og, dtype=np.float64),
    }
    if arr.ndim == 3:
        header["space"] = "left-posterior-superior"
    else:
        header["space dimension"] = arr.ndim
    nrrd.write(path, arr, header, compression_level=1)  # index_order="F"


# --------------------------------------------------------------------------- MetaImage (itk)


def _read_meta(path: str):
    import itk

    img = itk.imread(path)
    arr = np.array(itk.array_view_from_image(img), copy=True)  # (z, y, x)
    if arr.ndim not in (2, 3) or img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a scalar 2D/3D image, got shape {arr.shape}")
    sp = tuple(float(v) for v in img.GetSpacing())[::-1]
    og = tuple(float(v) for v in img.GetOrigin())
    d_itk = np.asarray(itk.array_from_matrix(img.GetDirection()), dtype=np.float64)
    return arr, sp, og, d_itk[:, ::-1].copy()


def _write_meta(path: str, arr: np.ndarray, sp, og, dr) -> None:
    import itk

    img = itk.image_from_array(np.ascontiguousarray(arr))
    img.SetSpacing([float(v) for v in sp[::-1]])
    img.SetOrigin([float(v) for v in og])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(dr[:, ::-1])))
    itk.imwrite(img, path, compression=True)


def write_mhd(dest: Path, arr: np.ndarray, sp, og, dr) -> Path:
    """A .mhd header plus its .zraw data file: write both into a temporary folder
    next to ``dest``, then move the data file and then the header into place."""
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise DataError(f"{dest}: folder {folder} does not exist")
    tmpdir = Path(tempfile.mkdtemp(dir=folder, prefix=f".{dest.name}."))
    try:
        _write_meta(str(tmpdir / dest.name), arr, sp, og, dr)
        header = tmpdir / dest.name
        for part in sorted(tmpdir.iterdir(), key=lambda p: p == header):  # header last
            commit_file(part, folder / part.name, sync_dir=False)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmpdir)
    fsync_dir(folder)
    return dest


# --------------------------------------------------------------------------- containers


def _pick_key(path: str, keys: Sequence[str], key: Optional[str]) -> str:
    if key is not None:
        if key not in keys:
            raise DataError(f"{path}: no array {key!r} (has {sorted(keys)})")
        return key
    if "image" in keys:
        return "image"
    data = [k for k in keys if k not in GEOMETRY_KEYS]
    if len(data) == 1:
        return data[0]
    raise DataError(f"{path}: no 'image' array and not a single array (has {sorted(keys)})")


def _container_geometry(path: str, nd: int, get: Callable[[str], Optional[np.ndarray]]):
    sp, og, dr = default_geometry(nd)
    raw = {k: get(k) for k in GEOMETRY_KEYS}
    try:
        if raw["spacing"] is not None:
            sp = tuple(float(v) for v in np.asarray(raw["spacing"], dtype=np.float64).reshape(-1))
        if raw["origin"] is not None:
            og = tuple(float(v) for v in np.asarray(raw["origin"], dtype=np.float64).reshape(-1))
        if raw["direction"] is not None:
            dr = np.asarray(raw["direction"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: unusable geometry arrays: {exc}") from exc
    if len(sp) != nd or len(og) != nd or dr.shape != (nd, nd):
        raise DataError(
            f"{path}: geometry does not fit a {nd}D array (spacing {sp}, origin {og}, direction shape {dr.shape})"
        )
    return sp, og, dr


def _read_npz_arrays(path: str, keys: Sequence[Optional[str]]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    with np.load(path, allow_pickle=False) as z:
        names = list(z.files)

        def get(k: str) -> Optional[np.ndarray]:
            return z[k] if k in names else None

        for key in keys:
            name = _pick_key(path, names, key)
            arr = _squeeze_trailing(np.asarray(z[name]), path)
            sp, og, dr = _container_geometry(path, arr.ndim, get)
            out[name if key is None else key] = (arr, sp, og, dr)
    return out


def _read_h5_arrays(path: str, keys: Sequence[Optional[str]]) -> dict[str, tuple]:
    import h5py

    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:
        names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]

        def get(k: str) -> Optional[np.ndarray]:
            return np.asarray(f[k][()]) if k in names else None

        for key in keys:
            name = _pick_key(path, names, key)
            arr = _squeeze_trailing(np.asarray(f[name][()]), path)
            sp, og, dr = _container_geometry(path, arr.ndim, get)
            out[name if key is None else key] = (arr, sp, og, dr)
    return out


def container_payload(
    arr: np.ndarray, key: str, extra: Optional[Mapping[str, Any]], sp, og, dr
) -> dict[str, np.ndarray]:
    payload: dict[str, np.ndarray] = {key: arr}
    for name, value in (extra or {}).items():
        if name in payload or name in GEOMETRY_KEYS:
            raise InputError(f"extra array name {name!r} collides with {key!r} or geometry")
        other = np.asarray(value)
        if other.shape != arr.shape:
            raise ShapeError(f"extra array {name!r} has shape {other.shape}, need {arr.shape}")
        payload[name] = other
    payload["spacing"] = np.asarray(sp, dtype=np.float64)
    if any(og):
        payload["origin"] = np.asarray(og, dtype=np.float64)
    if not np.array_equal(dr, np.eye(arr.ndim)):
        payload["direction"] = np.asarray(dr, dtype=np.float64)
    return payload


def _write_npz(path: str, payload: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **payload)


def _write_h5(path: str, payload: Mapping[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, value in payload.items():
            if name in GEOMETRY_KEYS:
                f.create_dataset(name, data=value)
            else:
                f.create_dataset(name, data=value, compression="gzip", compression_opts=4)


READERS: dict[str, Callable[[str], tuple]] = {"nifti": _read_nifti, "nrrd": _read_nrrd, "meta": _read_meta}
WRITERS: dict[str, Callable[..., None]] = {"nifti": _write_nifti, "nrrd": _write_nrrd, "meta": _write_meta}
CONTAINER_READERS = {"npz": _read_npz_arrays, "h5": _read_h5_arrays}
CONTAINER_WRITERS = {"npz": _write_npz, "h5": _write_h5}
