"""Build driver: setuptools hands the native part to CMake (CMakeLists.txt owns
every compiler flag).

Environment:
  ENGINE_NO_EXTENSION=1   install the pure-torch package, build nothing native
  ENGINE_CUDA=auto|0|1    build engine._C_cuda: when nvcc is found | never | always
  ENGINE_CUDA_ARCHS       CUDA architectures (default "80;90")
  ENGINE_BUILD_JOBS       parallel compile jobs (default: number of CPUs)
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build all native modules with one CMake run."""

    def run(self) -> None:
        if not self.extensions:
            return
        ext = self.extensions[0]
        outdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        outdir.mkdir(parents=True, exist_ok=True)
        # a persistent folder keeps rebuilds incremental (editable installs use a
        # fresh temp dir each time); ENGINE_BUILD_DIR overrides it
        build_temp = Path(os.environ.get("ENGINE_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_temp.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("ENGINE_CUDA", "auto").strip() or "auto"
        archs = os.environ.get("ENGINE_CUDA_ARCHS", "80;90")
        jobs = os.environ.get("ENGINE_BUILD_JOBS", str(os.cpu_count() or 2))
        cfg = [
            "cmake",
            str(ROOT),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={outdir}",
            f"-DENGINE_CUDA={cuda}",
            f"-DENGINE_CUDA_ARCHS={archs}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        try:
            import ninja  # noqa: F401

            cfg.append("-GNinja")
        except ImportError:
            pass
        print(f"dilseg build: ENGINE_CUDA={cuda} archs={archs} -> {outdir}", flush=True)
        subprocess.run(cfg, cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)
        built = sorted(p.name for p in outdir.glob("_C*.so"))
        print(f"dilseg build: built {built}", flush=True)


no_ext = _truthy("ENGINE_NO_EXTENSION")
if no_ext:
    print("dilseg build: ENGINE_NO_EXTENSION=1, installing the pure-torch package", flush=True)

packages = find_packages(include=["engine", "engine.*"])  # the package tree is the source tree

setup(
    name="dilseg",
    version="0.1.0",
    description="Dynamic interactive learning engine for 3D medical image segmentation",
    python_requires=">=3.10",
    packages=packages,
    install_requires=["torch>=2.8", "numpy>=1.24"],
    extras_require={
        "io": ["nibabel", "pynrrd", "h5py", "itk-elastix"],
        "eval": ["itk-morphologicalcontourinterpolation", "matplotlib", "tqdm", "numba", "scipy"],
        "gpu": ["triton"],
        # `dilseg serve` (engine/server); the core stays torch + numpy
        "server": ["fastapi>=0.115", "uvicorn>=0.30", "python-multipart>=0.0.31"],
    },
    ext_modules=[] if no_ext else [CMakeExtension("engine._C")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["dilseg=engine.cli:main"]},
    zip_safe=False,
)
