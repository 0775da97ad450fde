# Thin aliases. Every target sets itself up: `make install` is idempotent and cheap when done.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: install test test-fast tune train lint format bench clean submit resume status logs

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

# A subset that runs in about 16 minutes on 2 cores and rewrites its tables in
# benchmarks/results/: loss terms, a whole trial against a plain PyTorch process (11 min), the
# teacher bank, and the GPU script (which says so and measures nothing without a GPU).
# The sweep-sized ones (sweep, throughput, search, students, data, diagnose) run one by one:
# see the README's Benchmarks section.
bench: install
	$(BIN)/python -m benchmarks.losses
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.bank
	$(BIN)/python -m benchmarks.gpu

# A sweep on a Ray cluster's job server (RAY_ADDRESS, default http://127.0.0.1:8265), see
# cluster/README.md. Submitting the same NAME again resumes it.
#   make submit NAME=sk1 ARGS="--space sinkhorn --storage s3://bucket/sweeps --gpus-per-worker 1"
#   make status NAME=sk1;  make logs NAME=sk1;  make resume NAME=sk1
# DRIVER_RESOURCE=cmkd_driver keeps the sweep driver on the nodes of cluster/*.yaml that have it.
SUBMIT := $(BIN)/python cluster/submit.py
DRIVER := $(if $(DRIVER_RESOURCE),--driver-resource '$(DRIVER_RESOURCE)')

submit: install
	$(SUBMIT) submit $(DRIVER) -- $(if $(NAME),--name '$(NAME)') $(ARGS)

resume: install
	@test -n "$(NAME)" || { echo "usage: make resume NAME=<sweep name>"; exit 2; }
	$(SUBMIT) resume $(DRIVER) '$(NAME)'

status: install
	@test -n "$(NAME)" || { echo "usage: make status NAME=<sweep name>"; exit 2; }
	$(SUBMIT) status '$(NAME)'

logs: install
	@test -n "$(NAME)" || { echo "usage: make logs NAME=<sweep name>"; exit 2; }
	$(SUBMIT) logs --follow '$(NAME)'

clean:
	rm -rf $(VENV) .pytest_cache
