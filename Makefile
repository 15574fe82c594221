# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SITE ?= .domicile
# A CPU build of torch lies on this disk; a plain `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: run test install install-test lint typecheck bench-crypto bench-gateway bench-workspace clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[embeddings]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[embeddings,test,bench]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	@test -f $(SITE)/domicile.toml || $(BIN)/domicile init --dir $(SITE)
	$(BIN)/domicile serve --config $(SITE)/domicile.toml

test: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint:
	$(BIN)/ruff check src tests bench

typecheck:
	$(BIN)/mypy

bench-crypto: install-test
	$(BIN)/python bench/crypto/bench_envelope.py

bench-gateway: install-test
	bash bench/gateway/run.sh

# SQLite and PostgreSQL (DOMICILE_TEST_POSTGRES_URL, else a throwaway server); about 5 minutes.
bench-workspace: install-test
	$(BIN)/python bench/workspace/bench_workspace.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
