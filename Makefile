# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
# TORCH selects the torch build; the default is the CPU build this project's
# machines carry. EXTRAS names pyproject extras; it carries exactly one of `cpu`
# (onnxruntime) and `gpu` (onnxruntime-gpu). GPU users:
#   make TORCH="torch" EXTRAS="gpu,dev" install
# Changing TORCH or EXTRAS (or PYTHON) re-runs the install: the settings are recorded in
# .venv and the stamp depends on that record, not only on pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,dev
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthface-installed
SETTINGS := $(VENV)/.synthface-settings
SETTINGS_NOW := PYTHON=$(PYTHON) TORCH=$(TORCH) EXTRAS=$(EXTRAS)
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# onnxruntime and onnxruntime-gpu install the same module: the one not chosen is removed
# before installing, and insightface's own requirement of onnxruntime is undone after a
# gpu install (the module files the two share are then reinstalled from onnxruntime-gpu).
GPU_ORT := $(findstring gpu,$(EXTRAS))

.PHONY: install test lint format demo bench clean FORCE

# Rewritten only when the settings differ from the recorded ones, so its date (and with
# it the stamp's) moves only on a change.
$(SETTINGS): FORCE
	@mkdir -p $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != '$(SETTINGS_NOW)' ]; then echo '$(SETTINGS_NOW)' > $@; fi

$(STAMP): pyproject.toml $(SETTINGS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) uninstall -y -q $(if $(GPU_ORT),onnxruntime,onnxruntime-gpu) 2>/dev/null || true
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(if $(GPU_ORT),$(PIP) uninstall -y -q onnxruntime)
	$(if $(GPU_ORT),$(PIP) install -q --force-reinstall --no-deps "onnxruntime-gpu>=1.18")
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
