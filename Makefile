# Neblina: the two commands are `make demo` and `make test`; each installs what it needs.
PY := .venv/bin/python
PORT ?= 4566
.DEFAULT_GOAL := help

# mypy --strict covers what ships and what operators run: the routes, the Lambda code, the
# admin package and the client.
TYPED := app.py chalicelib neblina_admin client/neblina_client
TIERS := unit contract stack deploy
# The tiers run on two processes (pytest-xdist): each test module runs whole on one of them, the
# long ones first (tests/conftest.py). PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 2
PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: help venv demo test test-after-check check up down status lint typecheck bench bench-vs-lomas clean \
	package checkov $(addprefix test-,$(TIERS))

help:
	@echo "make demo       start the local stack, run a researcher's session, stop the stack"
	@echo "make test       run the whole test suite (starts and stops its own stack)"
	@echo "make check      fast: ruff, ruff format --check, mypy and the unit tier (no stack)"
	@echo "make test-after-check  every tier but unit (CI runs it after make check)"
	@echo "make test-unit  one tier: test-unit, test-contract, test-stack, test-deploy (tests/<tier>/)"
	@echo "make up / down  keep the local stack running for notebooks (.neblina/local.env)"
	@echo "                a second stack: NEBLINA_STATE_DIR=DIR make up PORT=4600 (docs/local-stack.md)"
	@echo "make lint       ruff check + format check;  make typecheck: mypy --strict ($(TYPED))"
	@echo "make bench      latency benchmark, results in BENCHMARKS.md"
	@echo "make bench-vs-lomas  Lomas 0.4.1 then Neblina, same cases and data (~6 min idle; bench/vs_lomas.py)"
	@echo "make package    build the Lambda zips (build/lambda/); make checkov: scan infra/terraform"

venv:
	@scripts/bootstrap

demo: venv
	$(PY) localstack/stack.py demo

# Every tier; pytest's exit 5 (it collected nothing) fails the target like any other error.
test: venv
	$(PY) -m pytest -q $(PARALLEL) tests

check: lint typecheck
	$(PY) -m pytest -q $(PARALLEL) tests/unit

# CI's second step (.ci/run): every tier but the unit tier, which `make check` has just run.
# `make check` + `make test-after-check` run exactly the tests of `make test`, each once.
test-after-check: venv
	$(PY) -m pytest -q $(PARALLEL) tests --ignore=tests/unit

$(addprefix test-,$(TIERS)): test-%: venv
	$(PY) -m pytest -q $(PARALLEL) tests/$*

up: venv
	$(PY) localstack/stack.py up --emulator-port $(PORT)

down:
	@if [ -x $(PY) ]; then $(PY) localstack/stack.py down; else echo "stack: nothing to stop"; fi

status: venv
	$(PY) localstack/stack.py status

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy $(TYPED)

bench: venv
	$(PY) bench/latency.py

bench-vs-lomas: venv
	$(PY) bench/vs_lomas.py --n 20 --warmup 2

package: venv
	$(PY) scripts/package_lambda.py

checkov:
	infra/checkov/run

clean:
	rm -rf .venv .neblina .pytest_cache .mypy_cache .ruff_cache
