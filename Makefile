# The README's two commands: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test bench torchrec

setup: $(VENV)/.installed

$(VENV)/.installed: requirements-ci.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(VENV)/bin/embslim train --out runs/demo

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

test: setup $(VENV)/.test-installed
	$(PY) -m pytest

bench: setup
	$(PY) bench/train_throughput.py

torchrec: setup $(VENV)/.torchrec-installed

$(VENV)/.torchrec-installed: $(VENV)/.installed requirements-torchrec.txt
	$(PY) -m pip install -q -r requirements-torchrec.txt
	$(PY) -m pip install -q --no-deps torchrec==1.8.0
	touch $@
