# ntkit: make setup | make test | make demo | make results | make bench
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip

.PHONY: setup test demo results bench peer clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU build on disk, so pip never pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n 2 tests

demo: setup
	$(VENV)/bin/ntkit demo --out ntkit-report

# every experiment in its full configuration into results/NAME (hours; see README "Results")
results: setup
	$(VENV)/bin/ntkit reproduce --out results

bench: setup
	$(PY) benchmarks/fc_kernel.py

# neural-tangents, the anchor, in its own virtualenv (benchmarks and optional cross-checks)
peer:
	$(PYTHON) -m venv .peer-venv
	.peer-venv/bin/pip install -q -r ../shared/peer/requirements-neural-tangents.txt

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
