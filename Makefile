# dilseg: `make demo` and `make test` set everything up from a fresh clone.
#   make demo    create .venv, install, run the main job on the embedded default
#   make test    create .venv, install, run the test suite (what CI runs)
#   make build   rebuild the native modules in place (after editing csrc/ or bindings/)
#   make bench   CPU benchmarks (pytest-benchmark)
#   make serve   the HTTP server on 127.0.0.1:8000 with state in runs/serve-state
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dilseg-installed
TESTSTAMP := $(VENV)/.dilseg-test-extras
NATIVE := $(shell find csrc bindings -type f 2>/dev/null) CMakeLists.txt setup.py
ENGINE_CUDA ?= auto
export ENGINE_CUDA
# the monailabel client the server tests replay the 3D Slicer plugin's calls with:
# test-only, installed without its (huge) dependency set, never a runtime dependency
MONAILABEL := monailabel==0.8.5

.PHONY: demo test build bench venv clean serve

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(STAMP): $(VENV)/.deps $(NATIVE)
	mkdir -p build
	flock build/.lock $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(TESTSTAMP): $(VENV)/.deps clients/python/pyproject.toml
	$(PY) -m pip install -q --no-deps $(MONAILABEL)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e clients/python
	touch $@

venv: $(STAMP)

build: $(VENV)/.deps
	mkdir -p build
	flock build/.lock $(PY) setup.py -q build_ext --inplace
	touch $(STAMP)

test: $(STAMP) $(TESTSTAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m engine.cli run --preset demo

serve: $(STAMP)
	$(PY) -m engine.cli serve --state runs/serve-state

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf build engine/_C*.so *.egg-info
