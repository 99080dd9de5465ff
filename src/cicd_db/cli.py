"""`cicd-db`: parses the arguments, runs one command (commands.py), prints its errors.

    cicd-db migrate [up|status|wait|baseline|new|check]   migrations (also scripts/migrate.py)
    cicd-db schema [dump|diff]                            the schema as SQL; drift
    cicd-db embedded [start|status|url|stop]              the embedded PostgreSQL server
    cicd-db report --pipeline P [--run N [--stage S [--job J]]]
    cicd-db retention --keep-days N [--pipeline P]        delete old finished runs
    cicd-db init-local --admin-url URL                    ci_local and ci_user on your server

Exit codes: 0 done; 1 operational failure; 2 usage or configuration error;
3 `migrate status --exit-code` with migrations pending, or `schema diff` with
differences; 4 files and history disagree (`status --exit-code`, `check`);
5 `migrate check` lint findings; 130 Ctrl-C; 143 SIGTERM (entry.py turns it into an
interrupt for the console commands). Errors are printed here, once, redacted.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from cicd_db import commands, migrations
from cicd_db.commands import Run
from cicd_db.errors import (
    EXIT_DISAGREES,
    EXIT_INTERRUPTED,
    EXIT_PENDING,
    EXIT_TERMINATED,
    CicdDbError,
    Terminated,
    UsageError,
)
from cicd_db.settings import redact


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds, 0 or more")
    return value


def _whole(least: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of `least` or more, written in ASCII digits."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return int(text)

    return parse


_count = _whole(0, "a whole number, 0 or more")
_positive = _whole(1, "a whole number above 0")
_version = _whole(0, "a migration version (a whole number)")


def _arg(*flags: str, **spec: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, spec


def _options(*specs: tuple[tuple[str, ...], dict[str, Any]]) -> _Parser:
    """A parent parser whose options may stand before or after the command: an option
    left out is not set at all (SUPPRESS), so it cannot hide the same option given on
    the other side; main() starts the namespace from DEFAULTS for what no one gave."""
    parent = _Parser(add_help=False)
    for flags, spec in specs:
        parent.add_argument(*flags, default=argparse.SUPPRESS, **spec)
    return parent


# One row per option: help texts stay whole on their line, to be read and grepped.
TARGET = _options(
    _arg("--database-url", metavar="URL", help="a postgresql:// URL"),
    _arg("--stack", metavar="NAME", help="a Pulumi stack (dev, prod) or embedded"),
    _arg("--local", action="store_true", help="the local database: dev, or embedded"),
)
OUTPUT = _options(
    _arg("--json", action="store_true", help="print JSON"),
    _arg("--quiet", "-q", action="store_true", help="print only errors"),
    _arg("--verbose", "-v", action="store_true", help="also print server notices"),
    _arg("--debug", action="store_true", help="print a traceback on unexpected errors"),
)
FILES = _options(
    _arg("--migrations-dir", metavar="DIR", type=Path, help="default: db/migrations"),
    _arg("--lock-timeout", metavar="SECONDS", type=_seconds, help="wait for another runner (60)"),
)
YES = _arg("--yes", action="store_true", help="confirm writing to a remote stack (prod)")
UP = _options(
    _arg("--dry-run", action="store_true", help="list what would be applied; change nothing"),
    _arg("--sql", action="store_true", help="with --dry-run: print each file's SQL"),
    _arg("--target", metavar="VERSION", type=_version, help="stop after this version"),
    YES,
    _arg("--retries", metavar="N", type=_count, help=f"reruns of a file that met a lock timeout or deadlock ({migrations.DEFAULT_RETRIES})"),
    _arg("--retry-budget", metavar="SECONDS", type=_seconds, help=f"most time spent waiting between retries ({migrations.DEFAULT_RETRY_BUDGET:g})"),
    _arg("--rehearse", action="store_true", help="run pending files in a transaction that is rolled back; report each one's locks"),
    _arg("--dump-schema", metavar="PATH", nargs="?", const=Path("db/schema.sql"), type=Path, help="afterwards write the schema to PATH (db/schema.sql)"),
)  # fmt: skip
DEFAULTS = {
    "database_url": None, "stack": None, "local": False, "json": False, "quiet": False,
    "verbose": False, "debug": False, "migrations_dir": None, "lock_timeout": 60.0,
    "dry_run": False, "sql": False, "target": None, "yes": False, "rehearse": False,
    "dump_schema": None, "retries": migrations.DEFAULT_RETRIES,
    "retry_budget": migrations.DEFAULT_RETRY_BUDGET,
}  # fmt: skip
GROUPS = {  # `migrate` alone is `migrate up`
    "migrate": ("apply and check SQL migrations", "Apply the SQL migrations of db/migrations to the target database, and check them."),
    "schema": ("the schema as SQL, and drift between databases", "Dump a schema for review, or compare schemas."),
    "embedded": ("manage the embedded PostgreSQL server", "The embedded PostgreSQL server (stack embedded)."),
}  # fmt: skip
SHARED = (TARGET, OUTPUT, FILES)
Spec = tuple[tuple[str, ...], dict[str, Any]]
# name, option parents, command, help (its line in the list), description, own options
COMMANDS: list[tuple[str, tuple[_Parser, ...], Callable[[Run], int], str, str, tuple[Spec, ...]]] = [
    ("migrate up", (*SHARED, UP), commands.up, "apply pending migrations (the default)",
     "Apply pending migrations in version order.", ()),
    ("migrate status", SHARED, commands.status, "show applied and pending migrations (read-only)",
     "Show every migration and its state. Reads only.", (
        _arg("--exit-code", action="store_true", help=f"exit {EXIT_DISAGREES} when a file disagrees with the history, else {EXIT_PENDING} when one is pending"),
    )),
    ("migrate wait", SHARED, commands.wait, "wait until the database accepts connections",
     "Poll the target until it accepts connections.", (
        _arg("--timeout", metavar="SECONDS", type=_seconds, default=30.0, help="give up after this long (30)"),
    )),
    ("migrate baseline", (*SHARED, _options(YES)), commands.baseline, "record migrations up to VERSION as applied, after checking the schema",
     "For a database created by hand: record migrations up to --version as applied, once the live schema is checked against them.", (
        _arg("--version", metavar="VERSION", type=_version, required=True, help="the newest migration the database already has"),
    )),
    ("migrate new", SHARED, commands.new, "write the next NNNN_name.sql",
     "Write the next migration file, with a header that sets short timeouts, and print its path.", (
        _arg("name", help="what it does, as letters, digits, _ . -"),
        _arg("--no-transaction", action="store_true", help="for CREATE INDEX CONCURRENTLY"),
    )),
    ("migrate check", SHARED, commands.check, "the CI gate: files, lint, and the history when a target is named",
     "Check the migration files (names, versions, what they may hold), lint them (sqlfluff, squawk), and compare them with a target's history when one is named.", (
        _arg("--no-lint", action="store_true", help="skip sqlfluff and squawk"),
    )),
    ("schema dump", SHARED, commands.schema_dump, "write the schema as SQL",
     "The schema as pg_dump --schema-only writes it, in a stable form. Without a target, the schema the migrations make (in a scratch database on the embedded server).", (
        _arg("--output", "-o", metavar="PATH", type=Path, help="write here (default: print)"),
    )),
    ("schema diff", SHARED, commands.schema_diff, "list drift, table by table (exit 3 on drift)",
     "Compare the target's live schema with what its applied migrations make, or with another database (--against).", (
        _arg("--against", metavar="STACK_OR_URL", help="a stack name or a URL to compare with"),
    )),
    ("embedded start", (OUTPUT,), commands.embedded_server, "start the server (created on first use)", "", ()),
    ("embedded status", (OUTPUT,), commands.embedded_server, "is it running, where, on which port", "", ()),
    ("embedded url", (OUTPUT,), commands.embedded_server, "print the URL of ci_local (password hidden)", "", (
        _arg("--show-password", action="store_true", help="print the real password"),
    )),
    ("embedded stop", (OUTPUT,), commands.embedded_server, "stop the server; data stays", "", ()),
    ("report", (TARGET, OUTPUT), commands.show_report, "show recorded pipeline, stage and job executions",
     "Show recorded executions: a pipeline's runs, one run with its stages, one stage with its jobs, or one job. Reads only.", (
        _arg("--pipeline", required=True, help="the pipeline's name"),
        _arg("--run", type=_positive, metavar="N", help="one run, with its stages"),
        _arg("--stage", metavar="NAME", help="one stage of --run, with its jobs"),
        _arg("--job", metavar="NAME", help="one job of --stage"),
        _arg("--limit", type=_positive, metavar="N", help="runs per page (20, at most 1000)"),
        _arg("--before", type=_positive, metavar="RUN", help="runs below RUN: the next page"),
        _arg("--format", choices=("table", "json", "yaml"), default="table", help="table, json or yaml"),
    )),
    ("retention", (TARGET, OUTPUT), commands.retention, "delete finished runs older than --keep-days, in short batches",
     "Delete finished runs (never PENDING or RUNNING) that completed more than --keep-days days ago, with their stages and jobs: a batch of runs per short transaction, so writers are never stopped. Interrupted, it leaves whole runs; run it again to go on.", (
        _arg("--keep-days", required=True, type=_positive, metavar="N", help="keep runs that finished in the last N days"),
        _arg("--pipeline", metavar="NAME", help="only this pipeline's runs"),
        _arg("--dry-run", action="store_true", help="count what would be deleted; change nothing"),
        _arg("--batch-size", type=_positive, metavar="N", default=500, help="runs per transaction (500)"),
        YES,
    )),
    ("init-local", (OUTPUT,), commands.init_local, "create ci_local and ci_user on a server you installed",
     "On a PostgreSQL you installed: create the role ci_user (not a superuser) with the plan's settings and the database ci_local it owns. Safe to repeat.", (
        _arg("--admin-url", required=True, metavar="URL", help="a superuser URL (or CREATEROLE and CREATEDB)"),
        _arg("--password", help="ci_user's password (default: generated for a new role; kept for an existing one)"),
        _arg("--show-password", action="store_true", help="print the URL with its password"),
        _arg("--app-password", help="ci_app's password, the writer's (default: generated for a new role; kept for an existing one)"),
        _arg("--reader-password", help="ci_reader's password, the reader's (default: generated for a new role; kept for an existing one)"),
        _arg("--user", default="ci_user", help="the role to create (ci_user)"),
        _arg("--database", default="ci_local", help="the database to create (ci_local)"),
    )),
]  # fmt: skip


def build(prog: str = "cicd-db", *, only_migrate: bool = False) -> argparse.ArgumentParser:
    """The whole command tree; `only_migrate` for scripts/migrate.py (`cicd-db migrate`)."""
    up: dict[str, Any] = {"parents": [*SHARED, UP], "epilog": "Options may stand before or after the command."}  # fmt: skip
    top = None
    if only_migrate:
        root = _Parser(prog=prog, description=GROUPS["migrate"][1], **up)
        parsers: dict[str, argparse.ArgumentParser] = {"migrate": root}
    else:
        root = _Parser(prog=prog, description="The database layer of a CI/CD system.")
        top = root.add_subparsers(dest="group", metavar="COMMAND", parser_class=_Parser, required=True)  # fmt: skip
        parsers = {}
        for name, (text, about) in GROUPS.items():
            parsers[name] = top.add_parser(name, help=text, description=about, **(up if name == "migrate" else {}))  # fmt: skip
    root.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('cicd-db')}")  # fmt: skip
    parsers["migrate"].set_defaults(func=commands.up)
    subs = {name: parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=name != "migrate") for name, parser in parsers.items()}  # fmt: skip
    for name, parents, func, text, about, args in COMMANDS:
        group, _, command = name.rpartition(" ")
        where = subs.get(group) if group else top
        if where is None:  # scripts/migrate.py has only the migrate commands
            continue
        about = about or f"The embedded server: {text}."
        parser = where.add_parser(command, parents=list(parents), help=text, description=about)
        for flags, spec in args:
            parser.add_argument(*flags, **spec)
        parser.set_defaults(func=func)
    return root


def parse(
    argv: Sequence[str], *, prog: str = "cicd-db", only_migrate: bool = False
) -> argparse.Namespace:
    """`argv` parsed; every option the command line leaves out at its default."""
    # DEFAULTS start the namespace: set on a parser, they would also change the
    # shared parents' SUPPRESS defaults, for every parser built after it.
    parser = build(prog, only_migrate=only_migrate)
    return parser.parse_args(list(argv), argparse.Namespace(**DEFAULTS))


# -- main ----------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None, *, prog: str = "cicd-db", only_migrate: bool = False
) -> int:
    """Entry point of `cicd-db`; returns the exit code. Signals: see entry.py."""
    run: Run | None = None
    debug = False
    try:
        args = parse(sys.argv[1:] if argv is None else argv, prog=prog, only_migrate=only_migrate)
        if not (debug := args.debug):
            # psycopg logs some failures besides raising them; the error line is enough.
            for name in ("psycopg", "psycopg.pool"):
                logger = logging.getLogger(name)
                logger.handlers = logger.handlers or [logging.NullHandler()]
                logger.propagate = False
        run = Run(args)
        func: Callable[[Run], int] = args.func
        return func(run)
    except CicdDbError as error:
        _print_error(str(error), run)
        return error.exit_code
    except psycopg.Error as error:  # the server went away or refused something mid-command
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _print_error(f"database error: {first}; run again, with --debug for details", run, debug)
        return 1
    except KeyboardInterrupt as interrupt:
        _print_error("interrupted", run)
        return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
    except Exception as error:  # last resort: one line, not a traceback
        _print_error(
            f"unexpected {type(error).__name__}: {error}; run with --debug and report it",
            run,
            debug,
        )
        return 1


def _print_error(message: str, run: Run | None, trace: bool = False) -> None:
    print(f"error: {redact(message, run.secrets if run else [])}", file=sys.stderr)
    if trace:
        traceback.print_exc()


def migrate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/migrate.py: `cicd-db migrate` under another name."""
    return main(argv, prog="migrate.py", only_migrate=True)
