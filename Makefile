# One venv in .venv; the CPU build of torch is installed first (requirements-cpu.txt) so pip never
# pulls the multi-GB CUDA build, then the package with its dev extra, constrained to that torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
# extra pip constraints, e.g. CONSTRAINTS=experiments/constraints.txt (the experiments' exact versions)
CONSTRAINTS ?=

.PHONY: setup demo test test-all docs lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q -c requirements-cpu.txt $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(VENV)/bin/policy-kd demo

# CI runs `make test`: the suite, then the docs build, so a broken page or docstring fails CI too
test: setup
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory docs

# The Sphinx site (docs/*.md + the API reference from docstrings) into docs/_build/html; -W: warnings are errors
docs: setup
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs built: docs/_build/html/index.html"

test-all: setup
	$(PY) -m pytest -q -m ""

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/bench_record.py
	$(PY) benchmarks/bench_sampler.py
	$(PY) benchmarks/bench_distill.py
	$(PY) benchmarks/bench_latency.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_teacher_threads.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache docs/_build
