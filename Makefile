# dilseg: `make demo` and `make test` set everything up from a fresh clone.
#   make demo    create .venv, install, run the main job on the embedded default
#   make test    create .venv, install, run the test suite (what CI runs)
#   make build   rebuild the native modules in place (after editing csrc/ or bindings/)
#   make bench   CPU benchmarks (pytest-benchmark)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dilseg-installed
NATIVE := $(shell find csrc bindings -type f 2>/dev/null) CMakeLists.txt setup.py
ENGINE_CUDA ?= auto
export ENGINE_CUDA

.PHONY: demo test build bench venv clean

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(STAMP): $(VENV)/.deps $(NATIVE)
	mkdir -p build
	flock build/.lock $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

venv: $(STAMP)

build: $(VENV)/.deps
	mkdir -p build
	flock build/.lock $(PY) setup.py -q build_ext --inplace
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m engine.cli run --preset demo

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf build engine/_C*.so *.egg-info
