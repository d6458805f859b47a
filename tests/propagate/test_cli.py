"""``dilseg propagate`` round trips on temporary files and its error handling."""

import argparse

import numpy as np
import pytest

from engine.io.volumes import read_volume, write_volume
from engine.propagate import cli

from ._util import dice, moving_disc_volume


def _run(argv):
    ap = argparse.ArgumentParser(prog="dilseg")
    sub = ap.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    args = ap.parse_args(["propagate", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def case():
    img, lab = moving_disc_volume(D=10)
    # annotation axis 2 like the shared LA data
    return np.ascontiguousarray(np.moveaxis(img, 0, 2)), np.ascontiguousarray(np.moveaxis(lab, 0, 2))


def _drawn(lab, slices):
    d = np.zeros_like(lab)
    d[..., slices] = lab[..., slices]
    return d


@pytest.mark.parametrize("suffix", [".npz", ".nii.gz"])
def test_round_trip(tmp_path, case, suffix, capsys):
    img, lab = case
    ip, dp = tmp_path / f"img{suffix}", tmp_path / f"drawn{suffix}"
    write_volume(ip, img, spacing=(1.25, 1.25, 2.5), origin=(3.0, -2.0, 1.0))
    write_volume(dp, _drawn(lab, [0, 5, 9]), spacing=(1.25, 1.25, 2.5), origin=(3.0, -2.0, 1.0))
    out, conf = tmp_path / f"proxy{suffix}", tmp_path / f"conf{suffix}"
    rc = _run([str(ip), str(dp), "-o", str(out), "--confidence", str(conf), "--fusion", "nearest"])
    assert rc == 0
    assert "3 drawn slices" in capsys.readouterr().out
    q, c = read_volume(out), read_volume(conf)
    assert q.array.dtype == np.float32 and q.array.shape == img.shape
    assert q.array.min() >= 0 and q.array.max() <= 1
    np.testing.assert_allclose(q.spacing, (1.25, 1.25, 2.5), rtol=1e-6)
    np.testing.assert_allclose(q.origin, (3.0, -2.0, 1.0), rtol=1e-6)
    assert dice(q.array, lab) > 0.93
    np.testing.assert_allclose(c.array[0, 0, [0, 1, 2, 5]], [1, 0.5, 1 / 3, 1])


def test_npz_label_key_slices_extent_and_axis(tmp_path, case):
    img, lab = case
    p = tmp_path / "case.npz"
    write_volume(p, img, extra={"label": _drawn(lab, [2, 7])})
    out = tmp_path / "proxy.mha"
    # slice 4 declared drawn but empty, extent 2..7, explicit axis
    rc = _run([str(p), str(p), "-o", str(out), "--slices", "2,4,7", "--extent", "2,7", "--axis", "2", "-q"])
    assert rc == 0
    q = read_volume(out).array
    assert q[..., 4].max() == 0 and q[..., :2].max() == 0 and q[..., 8:].max() == 0
    assert q[..., 3].max() >= 0.5  # halfway between a drawn mask and a drawn empty slice


def test_detect_axis():
    lab = np.zeros((6, 7, 8), np.uint8)
    lab[1:5, 2:6, 3] = 1
    lab[1:5, 2:6, 6] = 1
    assert cli.detect_axis(lab) == 2
    assert cli.detect_axis(lab, [3, 6]) == 2


def _err(capsys):
    return capsys.readouterr().err


def test_errors(tmp_path, case, capsys):
    img, lab = case
    ip, dp = tmp_path / "img.nii.gz", tmp_path / "drawn.nii.gz"
    write_volume(ip, img)
    write_volume(dp, _drawn(lab, [0, 9]))
    out = str(tmp_path / "p.nii.gz")
    # shape mismatch
    write_volume(tmp_path / "small.nii.gz", _drawn(lab, [0, 9])[:-1])
    assert _run([str(ip), str(tmp_path / "small.nii.gz"), "-o", out]) == 2
    assert "shape" in _err(capsys)
    # non-binary labels
    write_volume(tmp_path / "multi.nii.gz", _drawn(lab, [0, 9]) * 2)
    assert _run([str(ip), str(tmp_path / "multi.nii.gz"), "-o", out]) == 2
    assert "binary" in _err(capsys)
    # slice out of range
    assert _run([str(ip), str(dp), "-o", out, "--slices", "0,9,10", "--axis", "2"]) == 2
    assert "out of range" in _err(capsys)
    # foreground on a slice --slices does not list
    assert _run([str(ip), str(dp), "-o", out, "--slices", "0", "--axis", "2"]) == 2
    assert "does not list" in _err(capsys)
    # unreadable and missing files
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file")
    assert _run([str(tmp_path / "junk.nii.gz"), str(dp), "-o", out]) == 2
    assert "junk.nii.gz" in _err(capsys)
    assert _run([str(tmp_path / "missing.nrrd"), str(dp), "-o", out]) == 2
    assert "missing.nrrd" in _err(capsys)
    # no foreground and no --slices
    write_volume(tmp_path / "empty.nii.gz", np.zeros_like(lab))
    assert _run([str(ip), str(tmp_path / "empty.nii.gz"), "-o", out]) == 2
    assert "no foreground" in _err(capsys)
    # bad axis
    assert _run([str(ip), str(dp), "-o", out, "--axis", "5"]) == 2
    assert "axis" in _err(capsys)
    # output folder missing
    assert _run([str(ip), str(dp), "-o", str(tmp_path / "nope" / "p.nii.gz")]) == 2
    _err(capsys)
    # nothing was written on failure
    assert not (tmp_path / "p.nii.gz").exists()


def test_cli_proxy_equals_session_proxy_on_real_la_cases(tmp_path):
    """One proxy assembly: ``dilseg propagate ... --extent A,B`` and
    ``Session.propagate()`` after ``set_extent(A, B)`` give the same volume."""
    from engine.io import default_data_dir, la_folder

    if default_data_dir() is None:
        pytest.skip("the shared left-atrium data is not here")
    import engine
    from engine.guide import even_slices

    folder = la_folder()
    eng = engine.Engine(engine.Config(device="cpu"))
    for name in ("la_003", "la_042"):
        c = folder[name]
        zs = np.nonzero(c.label.any((0, 1)))[0]
        lo, hi = int(zs[0]), int(zs[-1])
        picks = even_slices(lo, hi, 4)
        ip, dp, out = tmp_path / f"{name}.npz", tmp_path / f"{name}_drawn.npz", tmp_path / f"{name}_proxy.npz"
        write_volume(ip, c.image, spacing=c.spacing)
        write_volume(dp, _drawn(c.label, picks))
        assert _run([str(ip), str(dp), "-o", str(out), "--axis", "2", "--extent", f"{lo},{hi}", "-q"]) == 0
        cli_q = read_volume(out).array
        s = eng.open(c.image, spacing=c.spacing, axis=2)
        s.set_extent(lo, hi)
        for z in picks:
            s.annotate(z, c.label[:, :, z])
        q, _ = s.propagate()
        s.close()
        assert np.abs(cli_q - q).max() <= 1e-6
        assert dice(q, c.label) > 0.8
    eng.close()
