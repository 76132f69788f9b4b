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

.PHONY: install run test lint system-deps
install: $(BIN)/.installed

# Programs the tests talk to for real (node, curl, mosquitto): installed with apt when missing.
system-deps:
	bash .ci/system-deps

run: $(BIN)/.installed
	$(BIN)/surplus run $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check surplus plugins tests bench
	$(BIN)/ruff format --check surplus plugins tests bench
	$(BIN)/mypy

test: $(BIN)/.installed system-deps
	$(BIN)/python -m pytest -q $(ARGS)
