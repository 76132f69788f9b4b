# Two commands on a fresh machine: `make run` (controller + built-in simulator)
# and `make test`. Both create .venv and install what they need first.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: install run test lint
install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/surplus run $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check surplus plugins tests bench
	$(BIN)/ruff format --check surplus plugins tests bench
	$(BIN)/mypy

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(ARGS)
