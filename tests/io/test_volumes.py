"""Round trips, geometry and failure modes of engine.io.volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DataError, DTypeError, InputError, ShapeError
from engine.io.volumes import (
    Volume,
    atomic_write,
    read_arrays,
    read_volume,
    split_name,
    volume_format,
    write_volume,
)

# itk's SWIG bindings warn about their own types on import
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".npz", ".h5"]
CONTAINERS = {".npz", ".h5"}
TH = 0.3
ROT3 = np.array([[np.cos(TH), -np.sin(TH), 0.0], [np.sin(TH), np.cos(TH), 0.0], [0.0, 0.0, 1.0]])
FLIP2 = np.array([[0.0, 1.0], [1.0, 0.0]])
SPACING = (0.5, 1.25, 2.0)
ORIGIN = (-10.5, 3.25, 7.0)


def _geometry_tol(suffix: str) -> float:
    return 1e-6 if suffix.startswith(".nii") else 0.0  # NIfTI stores its affine in float32


def _assert_geometry(vol: Volume, spacing, origin, direction, suffix: str) -> None:
    tol = _geometry_tol(suffix)
    np.testing.assert_allclose(vol.spacing, spacing, rtol=0, atol=tol)
    np.testing.assert_allclose(vol.origin, origin, rtol=0, atol=tol)
    np.testing.assert_allclose(vol.direction, direction, rtol=0, atol=max(tol, 1e-12))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.float64])
def test_round_trip_3d(tmp_path: Path, suffix: str, dtype) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(5, 6, 7)) * 50).astype(dtype)
    path = tmp_path / f"vol{suffix}"
    write_volume(path, arr, spacing=SPACING, origin=ORIGIN, direction=ROT3)
    vol = read_volume(path)
    assert vol.array.dtype == arr.dtype and vol.array.shape == arr.shape
    np.testing.assert_array_equal(vol.array, arr)
    _assert_geometry(vol, SPACING, ORIGIN, ROT3, suffix)
    assert vol.format == volume_format(path) and vol.path == str(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_2d_and_bool(tmp_path: Path, suffix: str) -> None:
    arr2 = np.arange(35, dtype=np.int16).reshape(5, 7) - 10
    write_volume(tmp_path / f"a{suffix}", arr2, spacing=(0.7, 0.9), origin=(1.0, -2.0), direction=FLIP2)
    vol = read_volume(tmp_path / f"a{suffix}")
    np.testing.assert_array_equal(vol.array, arr2)
    assert vol.array.dtype == np.int16
    _assert_geometry(vol, (0.7, 0.9), (1.0, -2.0), FLIP2, suffix)

    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1:3, 2:4, 1:5] = True
    write_volume(tmp_path / f"m{suffix}", mask)
    back = read_volume(tmp_path / f"m{suffix}").array
    expected = np.bool_ if suffix in CONTAINERS else np.uint8  # bool is stored as uint8
    assert back.dtype == expected
    np.testing.assert_array_equal(back.astype(bool), mask)


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    arr = np.ones((3, 4, 5), np.float32)
    for suffix in SUFFIXES:
        write_volume(tmp_path / f"v{suffix}", arr)
        write_volume(tmp_path / f"v{suffix}", arr * 2)  # overwrite in place
        np.testing.assert_array_equal(read_volume(tmp_path / f"v{suffix}").array, arr * 2)
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.startswith(".")], names
    assert "v.zraw" in names  # the .mhd data file


def test_new_files_are_not_private(tmp_path: Path) -> None:
    """mkstemp makes 0o600 files; a written volume gets the usual umask mode instead."""
    old = os.umask(0o022)
    try:
        write_volume(tmp_path / "m.nrrd", np.zeros((2, 3, 4), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "m.nrrd").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".npz"])
def test_non_native_byte_order(tmp_path: Path, suffix: str) -> None:
    arr = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    write_volume(tmp_path / f"b{suffix}", arr)
    back = read_volume(tmp_path / f"b{suffix}").array
    np.testing.assert_array_equal(back, arr)
    assert back.dtype.newbyteorder("=") == np.dtype("int16")


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.npz"
    write_volume(target, np.zeros((2, 3, 4), np.uint8))
    before = target.read_bytes()

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.npz"]


def test_like_copies_geometry_across_formats(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    write_volume(tmp_path / "src.nrrd", arr, spacing=SPACING, origin=ORIGIN, direction=ROT3)
    src = read_volume(tmp_path / "src.nrrd")
    for suffix in (".mha", ".npz", ".nii.gz"):
        write_volume(tmp_path / f"dst{suffix}", src.array, like=src)
        dst = read_volume(tmp_path / f"dst{suffix}")
        _assert_geometry(dst, SPACING, ORIGIN, ROT3, suffix)
    write_volume(tmp_path / "over.npz", arr, like=src, spacing=(1.0, 1.0, 3.0))
    assert read_volume(tmp_path / "over.npz").spacing == (1.0, 1.0, 3.0)
    with pytest.raises(ShapeError):
        write_volume(tmp_path / "bad.npz", arr[0], like=src)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_geometry_agrees_with_itk(tmp_path: Path, suffix: str) -> None:
    """ITK reads NIfTI/NRRD in LPS with reversed axes: our geometry must match it."""
    itk = pytest.importorskip("itk")
    arr = np.random.default_rng(3).normal(size=(4, 5, 6)).astype(np.float32)
    path = tmp_path / f"g{suffix}"
    write_volume(path, arr, spacing=SPACING, origin=ORIGIN, direction=ROT3)
    img = itk.imread(str(path))
    np.testing.assert_array_equal(itk.array_from_image(img), arr.transpose(2, 1, 0))
    np.testing.assert_allclose(img.GetOrigin(), ORIGIN, atol=1e-6)
    np.testing.assert_allclose(img.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(itk.array_from_matrix(img.GetDirection()), ROT3, atol=1e-6)


def test_meta_axis_order_is_reversed_itk_order(tmp_path: Path) -> None:
    itk = pytest.importorskip("itk")
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    write_volume(tmp_path / "m.mha", arr, spacing=(3.0, 2.0, 1.0))
    img = itk.imread(str(tmp_path / "m.mha"))
    assert tuple(img.GetLargestPossibleRegion().GetSize()) == (5, 4, 3)
    assert tuple(img.GetSpacing()) == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    "space,signs",
    [
        ("right-anterior-superior", (-1.0, -1.0, 1.0)),
        ("left-anterior-superior", (1.0, -1.0, 1.0)),
        ("left-posterior-superior", (1.0, 1.0, 1.0)),
    ],
)
def test_nrrd_spaces_are_converted_to_lps(tmp_path: Path, space: str, signs) -> None:
    nrrd = pytest.importorskip("nrrd")
    arr = np.zeros((3, 4, 5), np.int16)
    header = {"space": space, "space origin": np.array([1.0, 2.0, 3.0]), "space directions": np.diag([0.5, 0.5, 2.0])}
    nrrd.write(str(tmp_path / "s.nrrd"), arr, header)
    vol = read_volume(tmp_path / "s.nrrd")
    assert vol.origin == tuple(np.multiply(signs, (1.0, 2.0, 3.0)))
    assert vol.spacing == (0.5, 0.5, 2.0)
    np.testing.assert_array_equal(vol.direction, np.diag(signs))


def test_containers_keys_extra_and_single_array(tmp_path: Path) -> None:
    img = np.random.default_rng(4).normal(size=(3, 4, 5)).astype(np.float32)
    lab = (img > 0).astype(np.uint8)
    for suffix in (".npz", ".h5"):
        path = tmp_path / f"case{suffix}"
        write_volume(path, img, spacing=SPACING, extra={"label": lab})
        both = read_arrays(path)
        np.testing.assert_array_equal(both["image"].array, img)
        np.testing.assert_array_equal(both["label"].array, lab)
        assert both["label"].spacing == SPACING
        np.testing.assert_array_equal(read_volume(path, key="label").array, lab)
        with pytest.raises(DataError, match="no array 'nope'"):
            read_volume(path, key="nope")
    np.savez(tmp_path / "single.npz", scan=img)  # no spacing: defaults
    vol = read_volume(tmp_path / "single.npz")
    np.testing.assert_array_equal(vol.array, img)
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.origin == (0.0, 0.0, 0.0)
    np.savez(tmp_path / "two.npz", a=img, b=img)
    with pytest.raises(DataError, match="no 'image' array"):
        read_volume(tmp_path / "two.npz")
    with pytest.raises(InputError):
        write_volume(tmp_path / "x.nrrd", img, extra={"label": lab})
    with pytest.raises(ShapeError):
        write_volume(tmp_path / "x.npz", img, extra={"label": lab[0]})


def test_la_npz_layout_reads(la_dir: Path) -> None:
    vol = read_volume(la_dir / "la_000.npz")
    assert vol.array.dtype == np.float32 and vol.array.ndim == 3
    assert vol.spacing == (1.25, 1.25, 1.25)
    lab = read_volume(la_dir / "la_000.npz", key="label")
    assert lab.array.dtype == np.uint8 and lab.array.shape == vol.array.shape


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_and_garbage_files_raise_data_error(tmp_path: Path, suffix: str) -> None:
    arr = np.random.default_rng(5).normal(size=(8, 9, 10)).astype(np.float32)
    path = tmp_path / f"t{suffix}"
    write_volume(path, arr)
    data_file = tmp_path / "t.zraw" if suffix == ".mhd" else path
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=str(path.name)):
        read_volume(path)
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"\x00\x01not a volume" * 7)
    with pytest.raises(DataError, match="junk"):
        read_volume(junk)


def test_missing_unknown_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="not a regular file"):
        (tmp_path / "dir.nrrd").mkdir()
        read_volume(tmp_path / "dir.nrrd")
    arr = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(DataError, match="does not exist"):
        write_volume(tmp_path / "no" / "such.npz", arr)
    with pytest.raises(InputError):
        write_volume(tmp_path / "a.npz", arr, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputError):
        write_volume(tmp_path / "a.npz", arr, direction=np.eye(3) * 2)
    with pytest.raises(InputError):
        write_volume(tmp_path / "a.npz", arr, origin=(0.0, 0.0))
    with pytest.raises(InputError):
        write_volume(tmp_path / "a.npz", arr, spacing=("a", 1, 1))
    with pytest.raises(ShapeError):
        write_volume(tmp_path / "a.npz", np.zeros((2, 2, 2, 2)))
    with pytest.raises(DTypeError):
        write_volume(tmp_path / "a.mha", arr.astype(np.int8))
    with pytest.raises(DTypeError):
        write_volume(tmp_path / "a.mha", arr.astype(np.uint64))
    for suffix in (".nii.gz", ".nrrd"):
        with pytest.raises(DTypeError):
            write_volume(tmp_path / f"a{suffix}", arr.astype(np.float16))
    with pytest.raises(DTypeError):
        write_volume(tmp_path / "a.npz", arr.astype(np.complex64))
    write_volume(tmp_path / "k.nrrd", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InputError, match="key= applies"):
        read_volume(tmp_path / "k.nrrd", key="image")


def test_split_name() -> None:
    assert split_name("a/b/case_1.nii.gz") == ("case_1", ".nii.gz")
    assert split_name("X.NRRD") == ("X", ".nrrd")
    assert split_name("readme.md") == ("readme.md", "")
    assert split_name(".nii") == (".nii", "")
