# Two entry points that work on a fresh clone: `make demo` and `make test`.
# Each creates .venv when missing (or when pyproject.toml changed) and installs the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?=            # a Kaggle folder; empty = synthesize one
DEMO   ?= demo

.PHONY: setup demo seed test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	DATA="$(DATA)" DEMO="$(DEMO)" BIN="$(BIN)" bash scripts/demo.sh

# The seed solution on real data (a GPU machine): make seed DATA=/path/to/hms [SEED=seed]
seed: setup
	DATA="$(DATA)" BIN="$(BIN)" bash scripts/seed.sh

# Two pytest workers (pytest-xdist), one per core of the CI machine: about half the serial time.
test: setup
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15

bench: setup
	$(BIN)/python benchmarks/build_throughput.py

clean:
	rm -rf $(DEMO) .pytest_cache
