# CareCast. `make help` lists the targets. Every target sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 1

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements/dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install the locked dependencies

.PHONY: run
run: $(STAMP) ## Start the API on 127.0.0.1:8000 with a synthetic hospital streaming live (./var)
	$(BIN)/carecast run

.PHONY: test
test: lint typecheck chromium ## Lint, type-check, then run the tests (SQLite and PostgreSQL)
	$(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: chromium
chromium: ## Debian's Chromium for the browser tests (installed once when missing; Playwright never downloads one)
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

.PHONY: screenshots
screenshots: $(STAMP) chromium ## Run the browser tests and write the user guide's screenshots to docs/images
	CARECAST_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e

.PHONY: verify
verify: $(STAMP) chromium ## Reliability and security proofs: fault, load, attack, long fuzzing (issue 8; ~45 min)
	CARECAST_VERIFY=1 $(BIN)/python -m pytest -q -p no:cacheprovider -s tests/verify

.PHONY: lint
lint: $(STAMP) ## ruff and the import-layer contract
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache

.PHONY: scan
scan: $(STAMP) ## Static analysis of src/: bandit, and semgrep with lint/semgrep.yml (offline); also run by make test
	$(BIN)/bandit -q -r src --severity-level high
	$(BIN)/semgrep --metrics=off --disable-version-check --config lint/semgrep.yml --error -q src

.PHONY: typecheck
typecheck: $(STAMP) ## mypy over src/
	$(BIN)/mypy

.PHONY: bench
bench: $(STAMP) ## Benchmarks: print rates and ratios against a reference measured in the same run
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/audit.py

.PHONY: bench-training
bench-training: $(STAMP) ## Training time at ~100,000 predictions, end to end (several minutes)
	$(BIN)/python benchmarks/training.py

.PHONY: bench-serving
bench-serving: $(STAMP) wrk ## Serving req/s, p50/p99: ceiling, predict, latest-risk GET, MLflow reference (~2 min)
	$(BIN)/python benchmarks/serving.py

.PHONY: wrk
wrk: # the HTTP load generator of bench-serving (Debian's, installed once when missing)
	@command -v wrk >/dev/null 2>&1 || (apt-get update && apt-get install -y wrk)

.PHONY: bench-realtime
bench-realtime: $(STAMP) ## New reading to pushed risk p50/p99 at 200 readings/s: SQLite embedded, PostgreSQL+Redis (~3 min)
	$(BIN)/python benchmarks/realtime.py

.PHONY: container
container: ## Build the image with podman (BASE_IMAGE=python:3.11-slim where a registry is reachable)
	deploy/container/build.sh

.PHONY: container-test
container-test: $(STAMP) ## Build the image, run it: /readyz answers and a prediction is served (~3 min)
	CARECAST_CONTAINER_TEST=1 $(BIN)/python -m pytest -q -p no:cacheprovider -s tests/integration/test_container.py

.PHONY: docs
docs: $(STAMP) ## Rewrite the API reference in docs/serving.md from the OpenAPI document
	$(BIN)/python -m carecast.serving.apidoc docs/serving.md

.PHONY: lock
lock: ## Re-resolve requirements/*.lock from pyproject.toml (needs the registry)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes --extra dev --extra support2 pyproject.toml -o requirements/dev.lock
	$(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes pyproject.toml -o requirements/main.lock
	$(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes --extra gcp pyproject.toml -o requirements/gcp.lock

.PHONY: clean
clean: ## Remove the virtual environment and caches (keeps ./var)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
