# Efficient AI Lab — the two commands a newcomer needs:
#   make lab    set up the environment, build the model cache, launch JupyterLab
#   make test   set up the environment, build the model cache, run every test (lint, unit, notebooks)
# Needs Python 3.11, 3.12 or 3.13 with pip; everything else is installed into .venv from the package index.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Jupyter refuses to run as root unless told to (containers and CI machines run as root).
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)
JOBS   ?= 2

.PHONY: lab test install prepare lint fmt unit notebooks doctor workbooks clean-cache help browser-test bench \
	test-portable test-avx2 test-py313 test-all

help:
	@echo "make lab    - set up, build the model cache, launch JupyterLab on notebooks/"
	@echo "make test   - set up, build the model cache, run lint + unit tests + notebooks"
	@echo "make doctor | prepare | lint | fmt | unit | notebooks | workbooks | clean-cache"
	@echo "make browser-test - notebook widgets in JupyterLab + headless Chromium (docs/browser-test.md)"
	@echo "make bench  - run the whole course from a cold cache; regenerate the README figures table"
	@echo "make test-portable - every test under generic CPU kernels (its own cache in data/kernels-default)"
	@echo "make test-avx2     - the floating-point unit tests under AVX2 kernels (where the CPU has them)"
	@echo "make test-py313    - make test with Python 3.13 (its own .venv-py3.13 and data/python3.13)"
	@echo "make test-all      - all four: what CI runs"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

prepare: $(STAMP)
	$(PY) -m labkit prepare

doctor: $(STAMP)
	$(PY) -m labkit doctor

workbooks: $(STAMP)
	$(PY) -c "from labkit.grading import build_self_study; build_self_study('notebooks', '.')"

lab: prepare workbooks
	$(PY) -m labkit doctor || true
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(ROOT_FLAG) notebooks/00_efficiency_basics.ipynb

lint: $(STAMP)
	$(PY) -m ruff check labkit tests notebooks
	$(PY) -m ruff format --check labkit tests notebooks

fmt: $(STAMP)
	$(PY) -m ruff format labkit tests notebooks
	$(PY) -m ruff check --fix labkit tests notebooks
	$(VENV)/bin/nbstripout --keep-id --extra-keys metadata.widgets notebooks/[0-9]*.ipynb

unit: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests

notebooks: prepare
	$(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax notebooks

test: prepare lint
	$(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax tests notebooks

# The widgets in a real browser: JupyterLab on loopback driven in Debian's chromium by playwright
# (never a browser download). `make test` runs the same test too, but skips it without chromium;
# here (and in CI) LABKIT_BROWSER_TEST=1 turns a missing browser into a failure.
CHROMIUM ?= /usr/bin/chromium

browser-test: prepare
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "$(CHROMIUM) is missing; install it with:  sudo apt-get install -y chromium"; \
	    echo "(or point CHROMIUM=/path/to/chromium at another Chromium build)"; exit 1; \
	  fi; \
	fi
	LABKIT_BROWSER_TEST=1 LABKIT_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -p no:xdist -m browser tests/test_browser.py

# The same course on other CPUs. Results move with the kernels torch, oneDNN and MKL pick for the CPU;
# these variables make this machine use a lesser CPU's kernels (labkit/kernels.py holds the same sets;
# tests/test_kernels.py checks they agree). Each kernel set and Python trains its own cache.
KERNELS_avx2    := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
KERNELS_default := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2
# Unit tests whose results depend on floating-point kernels (run again under AVX2).
FLOAT_TESTS := tests/test_attention.py tests/test_condense.py tests/test_distill.py \
	tests/test_dynamic.py tests/test_lowbit.py tests/test_measure.py tests/test_models.py \
	tests/test_prune.py tests/test_prune_structured.py tests/test_prune_transformer.py \
	tests/test_quant.py tests/test_quant_int8.py tests/test_sparse.py tests/test_train.py
# Python 3.13: on PATH, or from pyenv.
PY313 ?= $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13; do \
	"$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)

test-portable: lint
	$(KERNELS_default) LABKIT_DATA=$(CURDIR)/data/kernels-default $(PY) -m labkit prepare
	$(KERNELS_default) LABKIT_DATA=$(CURDIR)/data/kernels-default \
	  $(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax -m "not browser" tests notebooks

test-avx2: prepare
	@if $(KERNELS_avx2) $(PY) -c "from labkit import kernels; raise SystemExit(not kernels.available('avx2'))"; \
	then $(KERNELS_avx2) $(PY) -m pytest -n $(JOBS) --dist loadfile $(FLOAT_TESTS); \
	else echo "this CPU has no AVX2 kernels: test-avx2 skipped"; fi

test-py313:
	@if [ -z "$(PY313)" ]; then echo "python3.13 not found: set PY313=/path/to/python3.13"; exit 1; fi
	LABKIT_DATA=$(CURDIR)/data/python3.13 $(MAKE) test PYTHON=$(PY313) VENV=.venv-py3.13

test-all: test test-avx2 test-portable test-py313

# The course figures: labkit prepare on an empty data folder, then every notebook headless, timed;
# writes docs/bench.json and the README table. Run it on an otherwise idle machine. Each kernel set
# (labkit/kernels.py) trains and runs the whole course again; ones this CPU lacks are skipped.
BENCH_KERNELS ?= native,avx2,default
bench: $(STAMP)
	$(PY) -m labkit bench --cold --kernels $(BENCH_KERNELS)

clean-cache:
	rm -rf data/cache
