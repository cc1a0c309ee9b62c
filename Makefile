# The README's commands. Each target installs what it needs first (fresh machine: two commands).
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCES := edge worker shared botsim callsim devstack bench faultsuite

# Installs come from the hash-pinned locks (requirements/dev.lock here and in CI,
# requirements/runtime.lock in the Docker image); `make lock` recompiles them from pyproject.toml.
DEV_LOCK := requirements/dev.lock
RUNTIME_LOCK := requirements/runtime.lock
# One target for both locks: Linux x86_64, CPython 3.11 (the image's and CI's platform).
UV_COMPILE := $(VENV)/bin/uv pip compile --quiet --generate-hashes --no-header \
	--python-version 3.11 --python-platform x86_64-unknown-linux-gnu

.PHONY: setup lock run test check lint format typecheck protos bench bench-smoke faults faults-smoke clean

$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed
	@bash scripts/ensure_redis.sh

## lock: recompile requirements/{dev,runtime}.lock from pyproject.toml (hash-pinned; a test fails
##       when they are stale). Keeps current pins that still fit; LOCK_ARGS=--upgrade takes the newest
lock: $(VENV)/bin/uv
	$(UV_COMPILE) $(LOCK_ARGS) --extra dev -o $(DEV_LOCK) pyproject.toml
	$(UV_COMPILE) -c $(DEV_LOCK) -o $(RUNTIME_LOCK) pyproject.toml
	$(PY) -m tests.test_lock --stamp

# make lock needs uv (dev.lock has it), not an up-to-date venv: no reinstall before recompiling.
$(VENV)/bin/uv:
	$(MAKE) $(VENV)/.installed

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

## bench: every benchmark figure of docs/architecture.md "How fast, and how we know" (JSON + table)
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
