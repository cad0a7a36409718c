# GradeFlow: train, track, register, approve, export, serve, monitor, detect drift, retrain.
# `make help` lists the targets. Everything installs itself: uv from PyPI if missing, then the
# locked workspace into .venv.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
PY := $(CURDIR)/.venv/bin/python
PYTEST_ARGS ?=
export COMPOSE_BAKE := false

.PHONY: help install up start down train test test-unit test-integration lint format bench demo \
        compose-up compose-down compose-test demo-features uci-benchmark loop-benchmark drift-quality fuzz clean

help: ## Show this help
	@echo "GradeFlow - make targets:"
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo ""
	@echo "Quick start:  make up    (the platform as local processes, UI links printed)"
	@echo "              make test  (all tests)"

$(CURDIR)/.tools/bin/uv:
	@echo "uv not found: installing it from PyPI into .tools/"
	python3 -m venv .tools && .tools/bin/pip install --quiet --disable-pip-version-check uv

.venv/.synced: uv.lock pyproject.toml shared/pyproject.toml services/*/pyproject.toml testkit/pyproject.toml | $(UV)
	@echo "installing the locked workspace into .venv (bytecode compiled once here: every service starts faster,"
	@echo "also where PYTHONDONTWRITEBYTECODE is set; about a minute the first time)"
	$(UV) sync --all-packages --frozen --compile-bytecode
	$(PY) -m compileall -q shared/src services/*/src
	@touch $@

install: .venv/.synced ## Install uv (if missing) and the locked workspace into .venv

up: install ## Run all four services locally (SQLite, ./data); Ctrl-C stops them
	$(PY) scripts/up.py up

start: install ## Like `make up` but in the background (`make down` stops it)
	$(PY) scripts/up.py start

down: install ## Stop a platform started with `make start`
	$(PY) scripts/up.py down

train: install ## Train once on DATASET (default: synthetic) and exit (needs the MLflow server: make start)
	$(PY) -m gradeflow_trainer train

test: install ## Run every test (unit, integration with real processes, end-to-end)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Run the fast tests only (no real processes)
	$(PY) -m pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-integration: install ## Run only the tests that start real processes (integration and end to end)
	$(PY) -m pytest -m "integration or e2e" $(PYTEST_ARGS)

fuzz: install ## Schemathesis (--checks all, fixed seed) against inference, trainer and monitor run as processes
	$(PY) -m scripts.fuzz $(FUZZ_ARGS)

lint: install ## ruff (lint + format check), mypy, and the GitHub workflow check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared/src services/*/src testkit/src
	UV=$(UV) bash scripts/lint_workflows.sh

format: install ## Format the code with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

uci-benchmark: install ## Our default pipeline vs a 300-tree random forest and naive on the UCI files
	$(PY) scripts/uci_benchmark.py

loop-benchmark: install ## Retrain on natural shifts of the UCI files (and the Kaggle ones with LOOP_BENCHMARK_ARGS="--data-root DIR") vs the old model and RF-300s -> results/loop_benchmark.md
	$(PY) scripts/loop_benchmark.py $(LOOP_BENCHMARK_ARGS)

compose-up: ## Build and start the platform as containers; returns once a model is served (needs ADMIN_TOKEN in .env)
	docker compose up -d --build --wait --wait-timeout 900

compose-down: ## Stop the containers (volumes kept; `docker compose down -v` deletes them)
	docker compose down

compose-test: install ## Container test: build, up --wait, smoke, inference restart, closed loop, store switch, rollout, always down -v
	$(PY) scripts/compose_test.py $(COMPOSE_TEST_ARGS)

demo: install ## The closed loop told live: drift, retrain, promotion, reload, time to heal (starts the platform if needed; DATASET=uci-por make demo)
	$(PY) scripts/demo.py

demo-features: install ## A student's term streamed into the feature store, their by-id prediction changing week by week (starts the platform if needed)
	$(PY) -m scripts.demo_features

bench: install ## Inference speed vs `mlflow models serve` and a bare FastAPI endpoint, and predict by student id vs full records (tables of ratios)
	$(PY) bench/run.py

drift-quality: install ## Drift detection quality: false alarms and detection, ours vs Evidently defaults
	$(PY) -m gradeflow_testkit.drift_quality --out results/drift_quality.md

clean: ## Remove caches (keeps ./data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
