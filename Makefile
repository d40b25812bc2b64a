# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
# TORCH selects the torch build; the default is the CPU build this project's
# machines carry. GPU users: `make TORCH="torch" demo` (or install a CUDA torch
# into .venv first) and add the `gpu` extra: `.venv/bin/pip install -e '.[gpu]'`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthface-installed

.PHONY: install test lint format demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)"
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	# setuptools leaves a build-time copy of the metadata in the repo root; run from the
	# root it would shadow the installed entry points once pyproject.toml changes.
	rm -rf synthface.egg-info
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python -m synthface.flows.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
