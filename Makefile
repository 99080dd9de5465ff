# A fresh clone needs only Python 3.11+: every target below builds .venv first
# (again when pyproject.toml is newer than the last install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

MIGRATIONS ?= db/migrations

.PHONY: install run demo test test-db properties lint lint-sql bench mutation clean-state lock help

help:
	@echo "make run     start the embedded PostgreSQL, apply db/migrations, show the status"
	@echo "make test    lint, then the whole test suite on a real PostgreSQL"
	@echo "make demo    record a seeded 60-day history of three pipelines; print its insights, write the HTML page"
	@echo "make properties  the hypothesis properties alone, at 20 times their examples"
	@echo "make bench   speed beside dbmate, yoyo and psql (BENCH_ARGS=--help for options)"
	@echo "make mutation  mutation testing (mutmut) of settings, redaction, libpq, targets, migrations, store"
	@echo "make lint    ruff, mypy, sqlfluff and squawk on db/migrations, actionlint"
	@echo "make install only build .venv"

# Two makes at once (two `make run` on a fresh clone) must not both run pip into one
# .venv: the outer make takes a lock (fcntl, from Python: no flock(1) needed) and
# runs make again under it, which installs only if the stamp is still out of date.
INSTALL_LOCK := .cicd-db/install.lock
ifndef CICD_DB_INSTALL_LOCKED
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: cicd-db needs Python 3.11 or newer; run make PYTHON=python3.11 ...")'
	@$(PYTHON) -c 'import fcntl, os, subprocess, sys; \
	os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True); lock = open(sys.argv[1], "a"); \
	fcntl.flock(lock, fcntl.LOCK_EX); sys.exit(subprocess.call(sys.argv[2:]))' \
	    $(INSTALL_LOCK) $(MAKE) --no-print-directory CICD_DB_INSTALL_LOCKED=1 install-locked
else
.PHONY: install-locked
install-locked: $(STAMP)
	@:

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(BIN)/python -m compileall -q src
	@touch $(STAMP)
endif

install: $(STAMP)

run: $(STAMP)
	@$(BIN)/cicd-db migrate --stack embedded up
	@$(BIN)/cicd-db migrate --stack embedded status
	@echo "connect with: $$($(BIN)/cicd-db embedded url)  (cicd-db embedded url --show-password prints the password)"

# A seeded 60-day history of three pipelines on the embedded server, its insights and HTML page.
demo: $(STAMP)
	@$(BIN)/cicd-db migrate --stack embedded up >/dev/null
	@$(BIN)/python scripts/demo.py --stack embedded

lint: lint-sql
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/actionlint

# SQL style (sqlfluff) and migration safety (squawk), by the same gate CI runs:
# `cicd-db migrate check` (a file marked no-transaction is checked as running
# outside a transaction, the rest inside one).
lint-sql: $(STAMP)
	$(BIN)/cicd-db migrate check --migrations-dir $(MIGRATIONS)

# Four processes share the machine's two cores, each test module in one of them: many
# tests wait (a server, a timeout, pg_dump), and four fill those waits (docs/testing.md);
# PYTEST_WORKERS=0 runs the tests in this process, as plain pytest does.
PYTEST_WORKERS ?= 4
# pytest rewrites the asserts of each test module as it imports it: about 5 s of CPU for
# the suite, in each worker. It keeps what it made in tests/__pycache__ unless
# PYTHONDONTWRITEBYTECODE is set (some machines set it; this one does), so the tests run
# without it. On a fresh clone one collection fills that cache on the second core while
# lint runs on the first, and the workers find it made (docs/testing.md).
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile
REWRITE := PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q --co -p no:xdist -p no:cacheprovider

# (Not under `make -n`: a line that names $(MAKE) runs even then.)
DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))

test: $(STAMP)
	@$(if $(DRY_RUN),,$(REWRITE) >/dev/null 2>&1 &) rewriting=$$!; \
	  $(MAKE) --no-print-directory lint; linted=$$?; wait $$rewriting; test $$linted -eq 0
	$(PYTEST)

# The property tests alone, each drawing 20 times its examples (31 minutes here, most of
# it the rollup property's random histories):
# what 200 random inputs miss, 4,000 may find. Not part of `make test`; run it after
# changing a parser, the masking of passwords or the runner's reading of SQL.
properties: $(STAMP)
	TEST_EXAMPLES_SCALE=20 $(PYTEST) -m property -p no:cacheprovider

# Only the database tests, against another server: TEST_PG_BIN_DIR=/usr/lib/postgresql/15/bin
test-db: $(STAMP)
	$(PYTEST) -m db

# Mutation testing (docs/testing.md); not part of `make test`: tens of minutes.
# mutmut runs pytest inside mutants/, so the tests get the test server of this
# checkout (.cicd-db/tests-embedded, started once and left running) as a URL.
# MUTANTS narrows the run: make mutation MUTANTS='cicd_db.settings*'
MUTANTS ?= cicd_db.settings* cicd_db.cloud* cicd_db.redaction* cicd_db.libpq* cicd_db.targets* cicd_db.refusals* cicd_db.migrations* cicd_db.store* cicd_db.retention*
mutation: $(STAMP)
	@set -f; TEST_DATABASE_URL="$$($(BIN)/python -c 'from pathlib import Path; from cicd_db.embedded import EmbeddedServer; print(EmbeddedServer(Path(".cicd-db/tests-embedded")).admin_settings().url())')" \
	  && export TEST_DATABASE_URL && $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

# Figures, not tests: cicd-db beside dbmate, yoyo and psql; writes docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The deploy job's exact versions (requirements/deploy.txt): the package's runtime
# dependencies resolved in a fresh virtual environment. Run after changing them.
lock:
	rm -rf .cicd-db/lock-venv
	$(PYTHON) -m venv .cicd-db/lock-venv
	.cicd-db/lock-venv/bin/pip install --quiet --disable-pip-version-check .
	{ echo "# The deploy job's exact versions: cicd-db's runtime dependencies, resolved by"; \
	  echo "# \`make lock\` on Python 3.11. CI installs these, then the package with --no-deps."; \
	  .cicd-db/lock-venv/bin/pip freeze --exclude cicd-db; } > requirements/deploy.txt
	rm -rf .cicd-db/lock-venv

# The test servers' folders under .cicd-db may be links to /dev/shm (tests/utils.py): those go too.
clean-state:
	-$(BIN)/cicd-db embedded stop
	-find .cicd-db -maxdepth 1 -type l -exec sh -c 'rm -rf "$$(readlink "$$1")"' _ {} \;
	rm -rf .cicd-db
