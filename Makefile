# auditq: every target works on a fresh clone with only python3 (>= 3.11) installed.
# PostgreSQL and Redis are optional: without DATABASE_URL / REDIS_URL (TEST_DATABASE_URL /
# TEST_REDIS_URL for the tests) embedded servers are started under .auditq/.

SHELL := /bin/bash
PYTHON ?= python3
# `uv` when it is on the PATH, else the copy `make install` puts in $(PYTHON)'s site-packages.
UV = $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN = $(UV) run --no-sync
PYTEST_ARGS ?=
# Options of `auditq dev` for `make run`, e.g. make run ARGS="--port 8001 --workers 2"
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help uv install install-runtime run test test-faults lint format migrate

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

uv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "auditq needs $(PYTHON) >= 3.11" >&2; exit 1; }
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
		|| PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install --quiet uv \
		|| PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install --quiet --user uv

install: uv ## Install uv if missing, then every locked dependency (tests, lint, benchmarks)
	$(UV) sync --all-extras --frozen

# What running needs (no test, lint or benchmark tools); --inexact keeps those already there.
install-runtime: uv
	$(UV) sync --all-extras --no-default-groups --inexact --frozen

run: install-runtime ## The whole stack (API, worker, simulator); options: make run ARGS="--port 8001"
	$(RUN) auditq dev $(ARGS)

test: install ## The test suite, less the fault-injection runs and the benchmarks' checks
	$(RUN) pytest -m "not slow and not bench" $(PYTEST_ARGS)

test-faults: install ## Fault-injection and multi-process tests (pytest -m slow), see docs/RELIABILITY.md
	$(RUN) pytest -m slow $(PYTEST_ARGS)

lint: install ## ruff (lint and format), mypy and deptry, as CI runs them
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	@# deptry: the shipped packages declare what they import; tests/ and bench/ may also
	@# import the dev groups, and need not use every dependency.
	$(RUN) deptry .
	$(RUN) deptry tests bench --exclude '^$$' --extend-exclude '^$$' --ignore DEP002,DEP004

format: install ## Fix what ruff can fix, then format
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

migrate: install-runtime ## alembic upgrade head (on the embedded PostgreSQL when DATABASE_URL is unset)
	$(RUN) auditq migrate

.PHONY: bench
bench: install ## Benchmarks against baselines and a peer, into bench/RESULTS.md (< 10 min)
	@# BENCH_DATABASE_URL / BENCH_REDIS_URL, else 127.0.0.1's PostgreSQL and Redis, else embedded
	$(RUN) python -m bench

.PHONY: bench-check
bench-check: install ## Each benchmark once with --quick (pytest -m bench): `make bench` still works
	$(RUN) pytest -m bench $(PYTEST_ARGS)
