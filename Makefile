# Two commands on a fresh machine: `make run` (controller + built-in simulator)
# and `make test`. Both create .venv and install what they need first
# (.ci/venv: one line per step, and a .venv built by another Python or left
# behind by a failed install is rebuilt).
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# The Node client test's packages (jayson), installed from tests/node's lockfile.
NODE_DIR := .cache/rpc-node

.PHONY: install run test lint dist system-deps node-deps
install:
	@VENV='$(VENV)' PYTHON='$(PYTHON)' bash .ci/venv

# Programs the tests talk to for real (node, curl, mosquitto): installed with apt when missing.
system-deps:
	@bash .ci/system-deps

# npm packages the tests use, installed here so that no test downloads anything.
node-deps: system-deps $(NODE_DIR)/.installed
$(NODE_DIR)/.installed: tests/node/package.json tests/node/package-lock.json
	@echo "installing the Node test client's packages (npm ci into $(NODE_DIR)) ..."
	@rm -f $@ && mkdir -p $(NODE_DIR)
	@cp tests/node/package.json tests/node/package-lock.json $(NODE_DIR)/
	@cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error >/dev/null
	@touch $@

run: install
	$(BIN)/surplus run $(ARGS)

lint: install
	$(BIN)/ruff check surplus plugins tests bench
	$(BIN)/ruff format --check surplus plugins tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install node-deps
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 $(ARGS)

# Wheel and sdist into dist/, built offline with the venv's setuptools.
dist: install
	@bash .ci/dist $(BIN)/python
