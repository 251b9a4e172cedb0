# Each target creates (or reuses) the virtual environment .venv and installs the package into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: bench test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# reinstall when the dependencies change
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[test]"
	touch $@

bench: $(VENV)/.installed
	$(BIN)/visionssm bench --out bench-out/models

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests tools

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
