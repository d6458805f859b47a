"""The torch-free proxy of ``dilseg propagate`` (engine.propagate.lite) is pinned to
ProxyBuilder (torch), and the command runs without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.propagate import ProxyBuilder, lite

from ._util import dice, moving_disc_volume

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not lite.available(), reason="engine._C is not built")


def _both(image, label, slices, axis, extent, spacing):
    pb = ProxyBuilder(image, axis=axis, extent=extent, spacing=spacing)
    res = pb.propagate(label, slices)
    img = np.ascontiguousarray(np.moveaxis(image, axis, 0), dtype=np.float32)
    lab = np.moveaxis(label, axis, 0)
    others = [a for a in range(3) if a != axis]
    sp = None if spacing is None else (spacing[axis], spacing[others[0]], spacing[others[1]])
    q, c = lite.proxy(img, {z: lab[z].astype(np.float32) for z in slices}, extent=extent, spacing=sp)
    return (np.moveaxis(res.proxy.numpy(), axis, 0), np.moveaxis(res.confidence.numpy(), axis, 0)), (q, c)


@pytest.mark.parametrize("extent", [None, (1, 10)])
def test_lite_equals_proxybuilder_on_a_moving_disc(extent):
    img, lab = moving_disc_volume(D=12)
    slices = [1, 5, 10]
    drawn = np.zeros_like(lab)
    drawn[slices] = lab[slices]
    (q, c), (lq, lc) = _both(img, drawn, slices, 0, extent, (1.25, 1.25, 1.25))
    assert np.abs(q - lq).max() <= 1e-6 and np.array_equal(c, lc)


def test_lite_equals_proxybuilder_on_real_la_cases():
    from engine.io import CaseFolder, default_data_dir, la_folder

    if default_data_dir() is None:
        pytest.skip("the shared left-atrium data is not here")
    from engine.guide import even_slices

    cases = [la_folder()[7]]
    full = default_data_dir().parent / "la_lgemri_2018_full"
    if full.is_dir():
        cases.append(CaseFolder(full, axis=2)[0])  # 0.625 mm: registered on the 1.25 mm grid
    for case in cases:
        zs = np.nonzero(case.label.any((0, 1)))[0]
        extent = (int(zs[0]), int(zs[-1]))
        slices = even_slices(*extent, 5)
        drawn = np.zeros_like(case.label)
        drawn[..., slices] = case.label[..., slices]
        (q, c), (lq, lc) = _both(case.image, drawn, slices, 2, extent, case.spacing)
        assert np.abs(q - lq).max() <= 1e-6, case.name
        truth = np.moveaxis(case.label, 2, 0)
        assert round(dice(q, truth), 3) == round(dice(lq, truth), 3)


def test_dilseg_propagate_never_imports_torch(tmp_path):
    from engine.io.volumes import write_volume

    img, lab = moving_disc_volume(D=8)
    drawn = np.zeros_like(lab)
    drawn[[0, 7]] = lab[[0, 7]]
    write_volume(tmp_path / "img.nii.gz", img, spacing=(1.25, 1.25, 1.25))
    write_volume(tmp_path / "lab.nii.gz", drawn, spacing=(1.25, 1.25, 1.25))
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # importing torch fails\n")
    env = dict(os.environ, PYTHONPATH=f"{block}{os.pathsep}{ROOT}")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "propagate",
            str(tmp_path / "img.nii.gz"),
            str(tmp_path / "lab.nii.gz"),
            "-o",
            str(tmp_path / "q.nii.gz"),
            "--axis",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "NumPy + C++ kernels" in out.stdout and (tmp_path / "q.nii.gz").exists()
