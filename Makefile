# The two commands of the README's quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit fault fault-quick bench timeline clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check doeff_flow_core flowd flowctl tests bench examples faults
	$(VENV)/bin/ruff format --check doeff_flow_core flowd flowctl tests bench examples faults

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest

fault: $(STAMP)
	$(PY) faults/run.py

fault-quick: $(STAMP)
	$(PY) faults/run.py --quick

test: lint typecheck unit fault-quick

bench: $(STAMP)
	$(PY) bench/run_all.py

# docs/timeline.svg, drawn by `flowctl export` from a fresh run of examples/timeline.py.
timeline: $(STAMP)
	rm -rf .doeff-flow/wf-timeline
	$(PY) examples/timeline.py --trace-dir .doeff-flow
	$(PY) -m flowctl --trace-dir .doeff-flow export wf-timeline -o docs/timeline.svg

clean:
	rm -rf $(VENV) .doeff-flow .pytest_cache .mypy_cache .ruff_cache
