# Two commands: `make run` (set up + start a local 3-node cluster) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test setup lint typecheck unit bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/kv cluster up --nodes 3 --port 7000 --data-dir ./kvdata --http-port 8000

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy kvstore storage cli

test: setup lint typecheck
	$(BIN)/python -m pytest -q -n 3 --dist loadgroup

bench: setup
	$(BIN)/python benchmarks/bench_transport.py

clean:
	rm -rf $(VENV) kvdata .pytest_cache .mypy_cache .ruff_cache
