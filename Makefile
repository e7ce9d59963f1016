# The two commands of the README's quick start: `make demo` and `make test`.
# PYTHON makes the venv, VENV names it (its stamp follows):
# `make VENV=.venv-x PYTHON=python3.13 unit`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-newest lint typecheck unit fault fault-quick bench timeline clean

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

# The unit suite and the tracer bench's quick mode on Python 3.12+, where the exact tracer
# (sys.monitoring) runs; .ci/run does this with the newest it finds. In its own venv,
# .venv-3.N: `make test-newest PYTHON=python3.13`.
test-newest:
	@v=$$($(PYTHON) -c 'import sys; v = sys.version_info; print("%d.%d" % v[:2]) if v >= (3, 12) else sys.exit(1)') || \
	  { echo "make test-newest: PYTHON=$(PYTHON) is not a working Python 3.12+ (the exact tracer needs sys.monitoring); pass one, e.g. PYTHON=/path/to/python3.13" >&2; exit 1; }; \
	echo "test-newest: $(PYTHON) (Python $$v), venv .venv-$$v"; \
	$(MAKE) --no-print-directory VENV=.venv-$$v PYTHON=$(PYTHON) unit && \
	echo ".venv-$$v/bin/python bench/bench_tracer.py --quick" && \
	.venv-$$v/bin/python bench/bench_tracer.py --quick

bench: $(STAMP)
	$(PY) bench/run_all.py

# docs/timeline.svg and docs/report-fail.svg, drawn by `flowctl export` from fresh runs of
# examples/timeline.py and examples/report.py --fail. Only the exact tracer (Python 3.12+)
# records the calls' arguments the pictures show: a 3.12+ venv made by `make test-newest`
# (.venv-3.N) or named .venv3N is used when there is one, else $(VENV). report.py --fail
# fails on purpose: its traceback is not shown.
TIMELINE_PY = $(or $(lastword $(sort $(wildcard .venv-3.1[2-9]/bin/python .venv31[2-9]/bin/python))),$(PY))
timeline: $(STAMP)
	rm -rf .doeff-flow/wf-timeline .doeff-flow/report-fail
	$(TIMELINE_PY) examples/timeline.py --trace-dir .doeff-flow
	$(TIMELINE_PY) -m flowctl --trace-dir .doeff-flow export wf-timeline -o docs/timeline.svg
	$(TIMELINE_PY) examples/report.py --fail --trace-dir .doeff-flow 2>/dev/null
	$(TIMELINE_PY) -m flowctl --trace-dir .doeff-flow export report-fail -o docs/report-fail.svg

clean:
	rm -rf $(VENV) .venv-3.* .doeff-flow .pytest_cache .mypy_cache .ruff_cache
