"""The package's build and backend plumbing: lazy loading, backends() report, the
pure-torch install (ENGINE_NO_EXTENSION=1), and that the CUDA sources compile
where nvcc exists (there may be no GPU)."""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_py(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_import_loads_no_extension():
    r = _run_py("import sys, engine, engine.ops; print(sorted(m for m in sys.modules if m.startswith('engine._C') or m == 'engine.kernels'))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_backends_report_names_every_backend():
    import engine

    rep = engine.backends()
    assert set(rep) == {"cpu", "cuda", "triton", "reference"}
    assert rep["reference"].available
    for status in rep.values():
        assert status.detail  # always says why


def test_no_extension_path_runs_on_references():
    code = (
        "import warnings, torch, engine, engine.ops as O\n"
        "assert not engine.backends()['cpu'].available, engine.backends()['cpu']\n"
        "s = torch.rand(2, 1, 9, 7); u = torch.randn(2, 2, 9, 7)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out = O.warp2d(s, u)\n"
        "assert any('falls back' in str(x.message) for x in w)\n"
        "assert torch.allclose(out, O.warp2d_reference(s, u))\n"
        "print('ok')\n"
    )
    r = _run_py(code, ENGINE_NO_EXTENSION="1")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_extension_install_has_no_native_modules(tmp_path):
    """`ENGINE_NO_EXTENSION=1 pip install .` builds nothing native (setup.py decides)."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "ENGINE_NO_EXTENSION": "1"}, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lib = tmp_path / "lib"
    assert (lib / "engine" / "ops" / "warp2d.py").exists()
    assert (lib / "engine" / "kernels" / "__init__.py").exists()  # the package tree is the source tree
    assert (lib / "engine" / "kernels" / "_helpers.py").exists()
    assert not list(lib.rglob("_C*.so"))


def test_cpu_extension_built_with_openmp():
    if os.environ.get("ENGINE_NO_EXTENSION") == "1":
        pytest.skip("pure-torch install")
    from engine import _backends

    mod = _backends.load("cpu")
    assert mod is not None, _backends.status("cpu").detail
    info = mod.build_info()
    assert info["openmp"] > 0
    assert "-march=native" not in info["flags"]
    assert "warp2d" in mod.ops


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_cuda_sources_compile_for_sm90(tmp_path):
    """Compile-only check of every .cu for sm_90 (the H100); no GPU needed."""
    sources = sorted((ROOT / "csrc").glob("*/*.cu"))
    assert sources, "no CUDA sources found"

    def compile_one(src: Path):
        out = tmp_path / (src.stem + ".o")
        cmd = [NVCC, "-std=c++17", "-O1", "-arch=sm_90", "--expt-relaxed-constexpr", "-c", str(src), "-o", str(out)]
        return src.name, subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, sources))
    failures = {name: r.stderr[-2000:] for name, r in results if r.returncode != 0}
    assert not failures, failures
