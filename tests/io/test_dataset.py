"""Naming rules, lazy loading and errors of engine.io.dataset.CaseFolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import DataError
from engine.io.dataset import Case, CaseFolder, default_data_dir, la_folder
from engine.io.volumes import write_volume

# itk's SWIG bindings warn about their own types on import
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

SHAPE = (6, 7, 8)


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=SHAPE).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    return image, label


def _container(path: Path, seed: int) -> None:
    image, label = _pair(seed)
    np.savez_compressed(path, image=image, label=label, spacing=np.full(3, 1.25, np.float32))


def test_container_layout(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        _container(tmp_path / f"la_{i:03d}.npz", i)
    (tmp_path / "manifest.csv").write_text("file\n")
    np.savez(tmp_path / "scan_only.npz", image=np.zeros(SHAPE, np.float32))  # not a case
    folder = CaseFolder(tmp_path)
    assert len(folder) == 3 and folder.names == ["la_000", "la_001", "la_002"]
    case = folder[1]
    image, label = _pair(1)
    assert isinstance(case, Case) and case.name == "la_001"
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    assert case.spacing == (1.25, 1.25, 1.25) and case.axis is None
    assert folder[-1].name == "la_002" and folder["la_000"].name == "la_000"
    assert [c.name for c in folder] == folder.names
    with pytest.raises(IndexError):
        folder[3]
    with pytest.raises(KeyError):
        folder["nope"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".npz", ".h5"])
def test_suffix_pairs(tmp_path: Path, suffix: str) -> None:
    for i, name in enumerate(["b", "a"]):
        image, label = _pair(i)
        write_volume(tmp_path / f"{name}_image{suffix}", image, spacing=(1.0, 2.0, 3.0))
        write_volume(tmp_path / f"{name}_label{suffix}", label * 255)  # any non-zero is object
    folder = CaseFolder(tmp_path, axis=1)
    assert folder.names == ["a", "b"]
    case = folder["b"]
    np.testing.assert_array_equal(case.label, _pair(0)[1])
    assert case.spacing == (1.0, 2.0, 3.0) and case.axis == 1
    assert folder.sources[0][2].name == f"a_label{suffix}"


def test_mixed_extension_pairs_and_label_value(tmp_path: Path) -> None:
    image, label = _pair(3)
    write_volume(tmp_path / "c_image.nii.gz", image)
    write_volume(tmp_path / "c_label.nrrd", label * 2 + (image < -1))  # values 0, 1, 2
    case = CaseFolder(tmp_path, label_value=2)[0]
    np.testing.assert_array_equal(case.label, label)


def test_folder_pairs(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i, name in enumerate(["x1", "x2"]):
        image, label = _pair(i)
        write_volume(tmp_path / "images" / f"{name}.mha", image)
        write_volume(tmp_path / "labels" / f"{name}.nii", label)
    folder = CaseFolder(tmp_path)
    assert folder.names == ["x1", "x2"]
    np.testing.assert_array_equal(folder["x2"].image, _pair(1)[0])


def test_case_subfolders_ua_mt_layout(tmp_path: Path) -> None:
    for i, cid in enumerate(["CASEB", "CASEA"]):
        (tmp_path / cid).mkdir()
        image, label = _pair(i)
        write_volume(tmp_path / cid / "mri_norm2.h5", image, extra={"label": label})
    (tmp_path / "empty").mkdir()
    folder = CaseFolder(tmp_path)
    assert folder.names == ["CASEA", "CASEB"]
    np.testing.assert_array_equal(folder["CASEB"].label, _pair(0)[1])


def test_lazy_loading(tmp_path: Path) -> None:
    _container(tmp_path / "k.npz", 0)
    folder = CaseFolder(tmp_path)
    (tmp_path / "k.npz").write_bytes(b"broken after discovery")
    with pytest.raises(DataError, match="k.npz"):
        folder[0]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        CaseFolder(tmp_path / "absent")
    with pytest.raises(DataError, match="no cases found"):
        CaseFolder(tmp_path)
    image, label = _pair(0)
    write_volume(tmp_path / "p_image.npz", image)
    with pytest.raises(DataError, match="p \\(no label\\)"):
        CaseFolder(tmp_path)
    write_volume(tmp_path / "p_label.npz", label[:, :, :-1])
    folder = CaseFolder(tmp_path)
    with pytest.raises(DataError, match="does not match image shape"):
        folder[0]
    _container(tmp_path / "p.npz", 1)
    with pytest.raises(DataError, match="found twice"):
        CaseFolder(tmp_path)


def test_orphan_label_in_folder_pairs(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    write_volume(tmp_path / "labels" / "q.npz", _pair(0)[1])
    with pytest.raises(DataError, match="q \\(no image\\)"):
        CaseFolder(tmp_path)


def test_nan_image_is_reported(tmp_path: Path) -> None:
    image, label = _pair(0)
    image[0, 0, 0] = np.nan
    np.savez(tmp_path / "n.npz", image=image, label=label)
    with pytest.raises(DataError, match="NaN"):
        CaseFolder(tmp_path)[0]


def test_default_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    la = tmp_path / "la_lgemri_2018_half"
    la.mkdir()
    _container(la / "la_000.npz", 0)
    monkeypatch.setenv("DILSEG_DATA", str(la))
    assert default_data_dir() == la
    monkeypatch.setenv("DILSEG_DATA", str(tmp_path))  # the parent also works
    assert default_data_dir() == la
    folder = la_folder()
    assert folder[0].axis == 2


def test_la_folder_when_present(la_dir: Path) -> None:
    folder = la_folder(la_dir)
    assert len(folder) == 100 and folder.names[0] == "la_000" and folder.names[-1] == "la_099"
    case = folder[0]
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape and case.image.shape[2] == 44
    assert case.spacing == (1.25, 1.25, 1.25) and case.axis == 2
    assert set(np.unique(case.label)) == {0, 1}
