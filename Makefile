# Set-up is part of every target: the first run creates .venv and installs
# taskctl with its test tools from the package index.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml function_src/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/taskctl demo

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check taskctl function_src tests bench
	$(BIN)/ruff check taskctl function_src tests bench
	$(BIN)/mypy taskctl

format: $(STAMP)
	$(BIN)/ruff format taskctl function_src tests bench
	$(BIN)/ruff check --fix taskctl function_src tests bench

bench: $(STAMP)
	for script in bench/bench_*.py; do $(BIN)/python "$$script" || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
