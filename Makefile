PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help demo test lint format bench docs clean

help: ## Show the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP) ## Deploy the example, switch and roll back under load, print a report
	$(BIN)/rollwise demo

test: $(STAMP) ## Lint, check formatting, type-check and run every test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n 4 --dist loadgroup --durations=15

lint: $(STAMP) ## ruff (lint and format) and mypy (strict on src, tests too)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP) ## Run every benchmark; JSON in bench/results/
	mkdir -p bench/results
	$(BIN)/python bench/switch.py --out bench/results/switch.json
	$(BIN)/python bench/detection.py --out bench/results/detection.json
	$(BIN)/python bench/data.py --out bench/results/data.json
	$(BIN)/python bench/audit.py --out bench/results/audit.json
	$(BIN)/python bench/fleet.py --out bench/results/fleet.json
	$(BIN)/python bench/containers.py --out bench/results/containers.json
	$(BIN)/python bench/drill.py --out bench/results/drill.json
	$(BIN)/python bench/server.py --out bench/results/server.json
	$(BIN)/python bench/dashboard.py --out bench/results/server.json

format: $(STAMP) ## Format the code (ruff format)
	$(BIN)/ruff format src tests bench

docs: $(STAMP) ## Regenerate docs/config.md from the schema
	$(BIN)/rollwise config docs > docs/config.md

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
