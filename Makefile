# A fresh clone needs only Python 3.11+: every target below builds .venv first
# (again when pyproject.toml is newer than the last install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-db lint bench clean-state help

help:
	@echo "make run     start the embedded PostgreSQL, apply db/migrations, show the status"
	@echo "make test    lint, then the whole test suite on a real PostgreSQL"
	@echo "make lint    ruff and mypy"
	@echo "make install only build .venv"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: cicd-db needs Python 3.11 or newer; run make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@$(BIN)/cicd-db migrate --stack embedded up
	@$(BIN)/cicd-db migrate --stack embedded status
	@echo "connect with: $$($(BIN)/cicd-db embedded url)  (cicd-db embedded url --show-password prints the password)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# Only the database tests, against another server: TEST_PG_BIN_DIR=/usr/lib/postgresql/15/bin
test-db: $(STAMP)
	$(BIN)/pytest -m db

clean-state:
	-$(BIN)/cicd-db embedded stop
	rm -rf .cicd-db
