# dilseg: `make demo` and `make test` set everything up from a fresh clone.
#   make demo    create .venv, install, run the main job on the embedded default
#   make test    create .venv, install, run the test suite (what CI runs)
#   make build   rebuild the native modules in place (after editing csrc/ or bindings/)
#   make bench   CPU benchmarks (pytest-benchmark)
#   make serve   the HTTP server on 127.0.0.1:8000 with state in runs/serve-state
#   make web     the annotation page: npm ci from clients/web/package-lock.json, esbuild into clients/web/dist
#   make serve-web  `make serve` with the page at http://127.0.0.1:8000/web/
#   make test-napari  the napari plugin's tests in their own .venv-napari (make test runs them)
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
# the napari plugin (clients/napari) is tested in an environment of its own, so that napari,
# Qt and their ~100 packages stay out of the main one; its lock is clients/napari/requirements-test.txt
NVENV  := .venv-napari
NPY    := $(NVENV)/bin/python
NAPARI_REQ   := clients/napari/requirements-test.txt
NAPARI_STAMP := $(NVENV)/.dilseg-napari-installed

# the web page (clients/web): node packages from the lock file only, bundled into dist/ (git-ignored)
WEB      := clients/web
WEBNPM   := $(WEB)/node_modules/.dilseg-npm-ci
WEBBUILD := $(WEB)/dist/.built
WEBSRC   := $(shell find $(WEB)/src -type f 2>/dev/null) $(WEB)/build.mjs
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint test-napari napari-system build bench venv clean serve serve-web web browser

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

# the engine goes in editable without a native build of its own (ENGINE_NO_EXTENSION=1 at
# install time only): it loads the engine._C that $(STAMP) built in the source tree
$(NAPARI_STAMP): $(NAPARI_REQ) clients/napari/pyproject.toml clients/python/pyproject.toml setup.py
	test -x $(NPY) || $(PYTHON) -m venv $(NVENV)
	$(NPY) -m pip install -q --upgrade pip
	$(NPY) -m pip install -q -r $(NAPARI_REQ)
	mkdir -p build
	ENGINE_NO_EXTENSION=1 flock build/.lock $(NPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(NPY) -m pip install -q --no-deps --no-build-isolation -e clients/python -e clients/napari
	touch $@

# Xvfb, Mesa GL and Qt's xcb libraries from Debian, only those missing
napari-system:
	sh clients/napari/system-deps.sh

venv: $(STAMP)

$(WEBNPM): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEBBUILD): $(WEBNPM) $(WEBSRC)
	cd $(WEB) && node build.mjs
	touch $@

web: $(WEBBUILD)

# Debian's Chromium for tests/web (Playwright drives /usr/bin/chromium; it never downloads a browser)
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "make: installing Debian's chromium for tests/web"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

build: $(VENV)/.deps
	mkdir -p build
	flock build/.lock $(PY) setup.py -q build_ext --inplace
	touch $(STAMP)

test: $(STAMP) $(TESTSTAMP) $(WEBBUILD) browser lint
	DILSEG_WEB_TESTS=required $(PY) -m pytest -q tests
	$(MAKE) test-napari

lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-napari: $(STAMP) $(NAPARI_STAMP) napari-system
	cd clients/napari && ../../$(NPY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m engine.cli run --preset demo

serve: $(STAMP)
	$(PY) -m engine.cli serve --state runs/serve-state

serve-web: $(STAMP) $(WEBBUILD)
	$(PY) -m engine.cli serve --state runs/serve-state --web

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf build engine/_C*.so *.egg-info $(WEB)/dist
