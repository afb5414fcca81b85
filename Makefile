# Efficient AI Lab — the two commands a newcomer needs:
#   make lab    set up the environment, build the model cache, launch JupyterLab
#   make test   set up the environment, build the model cache, run every test (lint, unit, notebooks)
# Needs Python 3.11 (3.10+) with pip; everything else is installed into .venv from the package index.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Jupyter refuses to run as root unless told to (containers and CI machines run as root).
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)
JOBS   ?= 2

.PHONY: lab test install prepare lint fmt unit notebooks doctor workbooks clean-cache help browser-test bench

help:
	@echo "make lab    - set up, build the model cache, launch JupyterLab on notebooks/"
	@echo "make test   - set up, build the model cache, run lint + unit tests + notebooks"
	@echo "make doctor | prepare | lint | fmt | unit | notebooks | workbooks | clean-cache"
	@echo "make browser-test - notebook widgets in JupyterLab + headless Chromium (docs/browser-test.md)"
	@echo "make bench  - run the whole course from a cold cache; regenerate the README figures table"

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
	$(VENV)/bin/nbstripout --extra-keys metadata.widgets notebooks/[0-9]*.ipynb

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

# The course figures: labkit prepare on an empty data folder, then every notebook headless, timed;
# writes docs/bench.json and the README table. Run it on an otherwise idle machine.
bench: $(STAMP)
	$(PY) -m labkit bench --cold

clean-cache:
	rm -rf data/cache
