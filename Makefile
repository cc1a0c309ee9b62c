# The README's commands. Each target installs what it needs first (fresh machine: two commands).
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCES := edge worker shared botsim callsim devstack bench faultsuite

.PHONY: setup run test check lint format typecheck protos bench bench-smoke faults faults-smoke clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
	@bash scripts/ensure_redis.sh

## run: the local stack (private Redis, botsim, edge on :8080, two workers) until Ctrl-C
run: setup
	$(PY) -m devstack

## test: the whole test suite against real processes
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

## check: format check, lint, strict typing, then the tests (what CI runs)
check: lint typecheck test

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check $(SOURCES) tests

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format $(SOURCES) tests

typecheck: setup
	$(PY) -m mypy $(SOURCES)

## protos: regenerate shared/pb from protos/ (a test fails when they are stale)
protos: setup
	PYTHON=$(PY) bash scripts/gen_protos.sh

## bench: every benchmark figure of design.md §7, side by side (JSON + table)
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

bench-smoke: setup
	$(PY) -m bench --smoke

## faults: calls under kill -9 / Redis and edge restarts / bot errors; lost = duplicated = 0
faults: setup
	$(PY) -m faultsuite $(FAULT_ARGS)

faults-smoke: setup
	$(PY) -m faultsuite --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-results fault-results
