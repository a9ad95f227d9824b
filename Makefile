# The two commands that do all the set-up: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_CONFIG := dev/pillarbox.toml

.PHONY: serve test lint fuzz bench bench-imap bench-pg clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# tests/plugin_pkg: a third-party module package the tests use, installed for
# real (not editable), as an operator would install a plugin.
PLUGIN_PKG := tests/plugin_pkg

$(STAMP): pyproject.toml $(PLUGIN_PKG)/pyproject.toml $(PLUGIN_PKG)/*.py | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --force-reinstall --no-deps ./$(PLUGIN_PKG)
	rm -rf $(PLUGIN_PKG)/build $(PLUGIN_PKG)/*.egg-info  # setuptools' leftovers
	touch $(STAMP)

$(DEV_CONFIG): | $(STAMP)
	$(BIN)/pillarbox init --dir dev --domain example.test --hostname mx.example.test

serve: $(STAMP) $(DEV_CONFIG)
	@echo
	@echo "pillarbox dev server: SMTP 127.0.0.1:2525, submission 127.0.0.1:5870, submissions 127.0.0.1:4650,"
	@echo "                      IMAP 127.0.0.1:1430 (STARTTLS), IMAPS 127.0.0.1:9930"
	@echo "  add a user:    $(BIN)/pillarbox -c $(DEV_CONFIG) user add alice@example.test"
	@echo "  send a test:   swaks --server 127.0.0.1:2525 --to alice@example.test"
	@echo "  read it:       ls dev/var/mail/example.test/alice/new/"
	@echo
	$(BIN)/pillarbox -c $(DEV_CONFIG) serve

test: $(STAMP)
	scripts/ensure-system-packages
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# The fuzz targets in tests/fuzz, each for FUZZ_SECONDS (default 10 minutes) of fresh
# random examples; `make test` runs them briefly. Keep every crash as an @example.
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) \
		$(BIN)/python -m pytest -n 2 -q -s -o timeout=0 tests/fuzz

bench: $(STAMP)
	$(BIN)/python bench/compare_postfix.py --write-docs
	$(BIN)/python bench/trust_checks.py --write-docs

# IMAP logins, FETCH, APPEND and 1,000 IDLE connections (issue 5); py-spy profiles the
# server meanwhile (installed into .venv here, not a dependency of pillarbox).
bench-imap: $(STAMP)
	$(BIN)/pip install --quiet py-spy==0.4.3
	$(BIN)/python bench/imap_load.py --profile --write-docs

# One SQLite node, one PostgreSQL node and two PostgreSQL nodes on the same SMTP load
# (issue 19); PostgreSQL from Debian's package (scripts/ensure-system-packages).
bench-pg: $(STAMP)
	$(BIN)/python bench/pg_nodes.py --write-docs

clean:
	rm -rf $(VENV) dev build src/*.egg-info $(PLUGIN_PKG)/build $(PLUGIN_PKG)/*.egg-info
