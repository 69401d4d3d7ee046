# Setup is part of every target: a fresh clone needs only `make demo` or `make test`.
# GPU users: `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`
# or any torch spec; the default is the CPU build.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Pinned torch first, so the package's torch range is already satisfied and no CUDA wheels are pulled.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) autoseg_work
