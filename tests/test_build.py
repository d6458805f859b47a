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
    r = _run_py(
        "import sys, engine, engine.ops; "
        "print(sorted(m for m in sys.modules if m.startswith('engine._C') or m == 'engine.kernels'))"
    )
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
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ENGINE_NO_EXTENSION": "1"},
        timeout=120,
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


# (engine/kernels/<module>, its LazyJit attribute): pointer dtypes other than fp32, constexprs
TRITON_KERNELS = {
    ("warp2d", "_fwd"): ({}, {"BILINEAR": True, "BORDER": False, "ROUND_BF16": False, "BLOCK": 512}),
    ("warp2d", "_bwd"): ({}, {"BILINEAR": True, "BORDER": True, "HAS_GS": True, "HAS_GU": True, "BLOCK": 512}),
    ("demons_step", "_kernel"): ({}, {"BLOCK": 128}),
    ("regularize_field", "_kernel"): ({}, {"K": 5, "R": 2, "COUPLE": True, "BLOCK": 128}),
    ("propagate_chain", "_kernel"): (
        {"ann_ptr": "*u8", "db_ptr": "*i32", "da_ptr": "*i32"},
        {"FUSE": 2, "BLOCK": 1024, "BLOCK_D": 64},
    ),
    ("confidence_map", "_kernel"): (
        {"ad_ptr": "*u8", "ah_ptr": "*u8", "aw_ptr": "*u8"},
        {"HAS_D": True, "HAS_H": True, "HAS_W": True, "BLOCK_H": 16, "BLOCK_W": 128, "BLOCK_J": 32},
    ),
    ("select_slices", "_kernel"): (
        {"a_ptr": "*u8", "v_ptr": "*u8", "out_ptr": "*i64"},
        {"HAS_A": True, "HAS_V": True, "BLOCK": 128, "FILL": 16},
    ),
    ("slice_residuals", "_kernel"): ({}, {"W_MODE": 1, "BLOCK_Y": 32, "BLOCK_X": 128}),
}


def test_triton_kernels_compile_for_sm90(monkeypatch):
    """Every Triton kernel, with the shared helpers of engine/kernels/_helpers.py bound
    in compiled mode, compiles to a cubin for sm_90 (the H100/H200); no GPU needed. The
    interpreter tests run the same sources, but not Triton's compiler: this catches
    what only the compiler rejects (types that change in a loop, non-constexpr
    branches...). Scalars as i32 and fp32, as Triton specialises small ints."""
    triton = pytest.importorskip("triton")
    import importlib
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # the default of Triton 3.9, without its warning
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    floats = {"inv_k", "wc", "wn", "min_mass"}
    for (module, attr), (ptrs, consts) in TRITON_KERNELS.items():
        jitted = getattr(importlib.import_module(f"engine.kernels.{module}"), attr).jitted(False)
        params = list(inspect.signature(jitted.fn).parameters)
        sig = {
            p: "constexpr"
            if p in consts
            else ptrs.get(p, "*fp32")
            if p.endswith("_ptr")
            else "fp32"
            if p in floats
            else "i32"
            for p in params
        }
        src = ASTSource(fn=jitted, signature=sig, constexprs={(params.index(c),): v for c, v in consts.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm, (module, attr)
    # every kernel module is covered
    mods = {p.stem for p in (ROOT / "engine" / "kernels").glob("*.py") if not p.stem.startswith("_")}
    assert mods == {m for m, _ in TRITON_KERNELS}
