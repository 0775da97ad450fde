# Thin aliases. Every target sets itself up: `make install` is idempotent and cheap when done.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: install test test-fast tune train lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	# CPU build of torch first; an unpinned torch would pull the CUDA wheels.
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not ray"

tune: install
	$(BIN)/python -m cmkd.tune $(ARGS)

train: install
	$(BIN)/python -m cmkd.train $(ARGS)

lint: install
	$(BIN)/ruff check cmkd tests benchmarks
	$(BIN)/ruff format --check cmkd tests benchmarks

format: install
	$(BIN)/ruff format cmkd tests benchmarks
	$(BIN)/ruff check --fix cmkd tests benchmarks

bench: install
	$(BIN)/python -m benchmarks.losses

clean:
	rm -rf $(VENV) .pytest_cache
