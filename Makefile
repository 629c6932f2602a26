# Two commands: `make run` (set up + start a local 3-node cluster) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUILT  := $(VENV)/.compiled
# The request path's modules, compiled with mypyc by setup.py (pyproject.toml [tool.kvstore]).
COMPILED := $(shell $(PYTHON) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['kvstore']['compiled']))")

.PHONY: run test setup lint typecheck unit bench clean

# The install compiles those modules in place (pure Python where there is no C compiler, or
# with KVSTORE_PURE=1); an edit of one of them recompiles it, so nothing runs stale code.
$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(BUILT): $(STAMP) $(COMPILED)
	$(BIN)/python setup.py --quiet build_ext --inplace
	@touch $(BUILT)

setup: $(BUILT)

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
	rm -rf $(VENV) kvdata .pytest_cache .mypy_cache .ruff_cache build
	find kvstore storage -name "*.so" -delete; rm -f kvstore_compiled__mypyc.*.so
