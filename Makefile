# Two entry points that work on a fresh clone: `make demo` and `make test`.
# Each creates .venv from the lock (uv.lock: every package at an exact version with its hashes) when it is
# missing or older than pyproject.toml / uv.lock, then checks that every compiled part loads (hms-prep doctor).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?=            # a Kaggle folder; empty = synthesize one
DEMO   ?= demo
# uv itself, pinned with its hashes in scripts/uv-requirements.txt, lives in its own small venv.
UV_ENV := .uv
UV     := $(UV_ENV)/bin/uv
# uv uses this machine's Python (never one it downloads) and installs into $(VENV).
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# A GPU machine whose driver needs another CUDA build of the locked torch: TORCH_INDEX=cu126 (docs/install.md).
TORCH_INDEX ?=

.PHONY: setup demo seed test bench lock clean

$(UV): scripts/uv-requirements.txt
	$(PYTHON) -m venv $(UV_ENV)
	$(UV_ENV)/bin/pip install -q --require-hashes --no-deps -r scripts/uv-requirements.txt
	touch $@

$(VENV)/.installed: pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --extra dev --python $(PYTHON)
	TORCH_INDEX="$(TORCH_INDEX)" UV="$(UV)" BIN="$(BIN)" bash scripts/torch_index.sh
	$(BIN)/hms-prep doctor
	touch $@

setup: $(VENV)/.installed

demo: setup
	DATA="$(DATA)" DEMO="$(DEMO)" BIN="$(BIN)" bash scripts/demo.sh

# The seed solution on real data (a GPU machine): make seed DATA=/path/to/hms [SEED=seed]
seed: setup
	DATA="$(DATA)" BIN="$(BIN)" bash scripts/seed.sh

# The lock must still match pyproject.toml (uv lock --check), then two pytest workers (pytest-xdist), one
# per core of the CI machine: about half the serial time.
test: setup
	$(UV) lock --check --python $(PYTHON)
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

bench: setup
	$(BIN)/python benchmarks/build_throughput.py

# The only way the lock changes: after editing pyproject.toml (the rest stays pinned), or UPGRADE=1 for the
# newest releases pyproject.toml allows. Then the whole suite runs on the new set.
lock: $(UV)
	$(UV) lock --python $(PYTHON) $(if $(UPGRADE),--upgrade)
	$(MAKE) test

clean:
	rm -rf $(DEMO) .pytest_cache
