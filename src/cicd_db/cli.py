"""`cicd-db`: parses arguments, calls one library function per command, prints.

    cicd-db migrate [up|status|wait|baseline|new|check]   migrations (also scripts/migrate.py)
    cicd-db schema [dump|diff]                            the schema as SQL; drift
    cicd-db embedded [start|status|url|stop]              the embedded PostgreSQL server
    cicd-db report --pipeline P [--run N [--stage S [--job J]]]
    cicd-db init-local --admin-url URL                    ci_local and ci_user on your server

Exit codes: 0 done; 1 operational failure; 2 usage or configuration error;
3 `migrate status --exit-code` with migrations pending, or `schema diff` with
differences; 4 files and history disagree (`status --exit-code`, `check`);
5 `migrate check` lint findings; 130 Ctrl-C; 143 SIGTERM. Errors are printed
here, once, redacted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from cicd_db import migrations, targets
from cicd_db.errors import CicdDbError, ConfigError, Terminated, UsageError
from cicd_db.settings import from_url, password_candidates, redact

EXIT_PENDING = EXIT_DRIFT = 3
EXIT_DISAGREES = 4
EXIT_LINT = 5
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + the signal, as shells report it
TICK_AFTER_SECONDS = 2.0


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


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more")
    return int(text)


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def _version(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a migration version (a whole number)")
    return int(text)


def _options(*specs: tuple[tuple[str, ...], dict[str, Any]]) -> _Parser:
    """A parent parser whose options may stand before or after the command (SUPPRESS)."""
    parent = _Parser(add_help=False)
    for flags, spec in specs:
        parent.add_argument(*flags, default=argparse.SUPPRESS, **spec)
    return parent


TARGET = _options(
    (("--database-url",), {"metavar": "URL", "help": "a postgresql:// URL"}),
    (("--stack",), {"metavar": "NAME", "help": "a Pulumi stack (dev, prod) or embedded"}),
    (("--local",), {"action": "store_true", "help": "the local database: dev, or embedded"}),
)
OUTPUT = _options(
    (("--json",), {"action": "store_true", "help": "print JSON"}),
    (("--quiet", "-q"), {"action": "store_true", "help": "print only errors"}),
    (("--verbose", "-v"), {"action": "store_true", "help": "also print server notices"}),
    (("--debug",), {"action": "store_true", "help": "print a traceback on unexpected errors"}),
)
FILES = _options(
    (("--migrations-dir",), {"metavar": "DIR", "type": Path, "help": "default: db/migrations"}),
    (
        ("--lock-timeout",),
        {"metavar": "SECONDS", "type": _seconds, "help": "wait for another runner (60)"},
    ),
)
DEFAULTS: dict[str, Any] = {
    "database_url": None, "stack": None, "local": False, "json": False, "quiet": False,
    "verbose": False, "debug": False, "migrations_dir": None, "lock_timeout": 60.0,
}  # fmt: skip


def build(prog: str = "cicd-db", *, only_migrate: bool = False) -> argparse.ArgumentParser:
    """The whole command tree; `only_migrate` for scripts/migrate.py (`cicd-db migrate`)."""
    version = f"%(prog)s {metadata.version('cicd-db')}"
    if only_migrate:
        migrate = _Parser(
            prog=prog,
            parents=[TARGET, OUTPUT, FILES, UP],
            description=MIGRATE,
            epilog="Options may stand before or after the command.",
        )
        migrate.add_argument("--version", action="version", version=version)
        _migrate_commands(migrate)
        return migrate
    root = _Parser(prog=prog, description="The database layer of a CI/CD system.")
    root.add_argument("--version", action="version", version=version)
    groups = root.add_subparsers(
        dest="group", metavar="COMMAND", parser_class=_Parser, required=True
    )
    migrate = groups.add_parser("migrate", parents=[TARGET, OUTPUT, FILES, UP], help="apply and check SQL migrations", description=MIGRATE, epilog="Options may stand before or after the command.")  # fmt: skip
    _migrate_commands(migrate)
    schema = groups.add_parser("schema", help="the schema as SQL, and drift between databases", description="Dump a schema for review, or compare schemas.")  # fmt: skip
    commands = schema.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)  # fmt: skip
    dump = commands.add_parser("dump", parents=[TARGET, OUTPUT, FILES], help="write the schema as SQL", description="The schema as pg_dump --schema-only writes it, in a stable form. Without a target, the schema the migrations make (in a scratch database on the embedded server).")  # fmt: skip
    dump.add_argument(
        "--output", "-o", metavar="PATH", type=Path, help="write here (default: print)"
    )
    dump.set_defaults(func=_schema_dump)
    diff = commands.add_parser("diff", parents=[TARGET, OUTPUT, FILES], help="list drift, table by table (exit 3 on drift)", description="Compare the target's live schema with what its applied migrations make, or with another database (--against).")  # fmt: skip
    diff.add_argument("--against", metavar="STACK_OR_URL", help="a stack name or a URL to compare with")  # fmt: skip
    diff.set_defaults(func=_schema_diff)
    embedded = groups.add_parser("embedded", help="manage the embedded PostgreSQL server", description="The embedded PostgreSQL server (stack embedded).")  # fmt: skip
    commands = embedded.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)  # fmt: skip
    for name, text in (("start", "start the server (created on first use)"), ("status", "is it running, where, on which port"), ("url", "print the URL of ci_local (password hidden)"), ("stop", "stop the server; data stays")):  # fmt: skip
        command = commands.add_parser(name, parents=[OUTPUT], help=text, description=f"The embedded server: {text}.")  # fmt: skip
        command.set_defaults(func=_embedded)
        if name == "url":
            command.add_argument("--show-password", action="store_true", help="print the real password")  # fmt: skip
    report = groups.add_parser("report", parents=[TARGET, OUTPUT], help="show recorded pipeline, stage and job executions", description="Show recorded executions: a pipeline's runs, one run with its stages, one stage with its jobs, or one job. Reads only.")  # fmt: skip
    report.add_argument("--pipeline", required=True, help="the pipeline's name")
    report.add_argument("--run", type=_positive, metavar="N", help="one run, with its stages")
    report.add_argument("--stage", metavar="NAME", help="one stage of --run, with its jobs")
    report.add_argument("--job", metavar="NAME", help="one job of --stage")
    report.add_argument("--limit", type=_positive, metavar="N", help="runs per page (20, at most 1000)")  # fmt: skip
    report.add_argument("--before", type=_positive, metavar="RUN", help="runs below RUN: the next page")  # fmt: skip
    report.add_argument("--format", choices=("table", "json", "yaml"), default="table", help="table, json or yaml")  # fmt: skip
    report.set_defaults(func=_report)
    local = groups.add_parser("init-local", parents=[OUTPUT], help="create ci_local and ci_user on a server you installed", description="On a PostgreSQL you installed: create the role ci_user (not a superuser) with the plan's settings and the database ci_local it owns. Safe to repeat.")  # fmt: skip
    local.add_argument("--admin-url", required=True, metavar="URL", help="a superuser URL (or CREATEROLE and CREATEDB)")  # fmt: skip
    local.add_argument("--password", help="ci_user's password (default: generated for a new role; kept for an existing one)")  # fmt: skip
    local.add_argument("--show-password", action="store_true", help="print the URL with its password")  # fmt: skip
    local.add_argument("--user", default="ci_user", help="the role to create (ci_user)")
    local.add_argument("--database", default="ci_local", help="the database to create (ci_local)")
    local.set_defaults(func=_init_local)
    return root


MIGRATE = "Apply the SQL migrations of db/migrations to the target database, and check them."


UP = _options(
    (("--dry-run",), {"action": "store_true", "help": "list what would be applied; change nothing"}),
    (("--sql",), {"action": "store_true", "help": "with --dry-run: print each file's SQL"}),
    (("--target",), {"metavar": "VERSION", "type": _version, "help": "stop after this version"}),
    (("--yes",), {"action": "store_true", "help": "confirm writing to a remote stack (prod)"}),
    (("--retries",), {"metavar": "N", "type": _count, "help": f"reruns of a file that met a lock timeout or deadlock ({migrations.DEFAULT_RETRIES})"}),
    (("--retry-budget",), {"metavar": "SECONDS", "type": _seconds, "help": f"most time spent waiting between retries ({migrations.DEFAULT_RETRY_BUDGET:g})"}),
    (("--rehearse",), {"action": "store_true", "help": "run pending files in a transaction that is rolled back; report each one's locks"}),
    (("--dump-schema",), {"metavar": "PATH", "nargs": "?", "const": Path("db/schema.sql"), "type": Path, "help": "afterwards write the schema to PATH (db/schema.sql)"}),
)  # fmt: skip


def _migrate_commands(migrate: argparse.ArgumentParser) -> None:
    """`migrate` alone is `migrate up`, so up's options belong to both."""
    shared = [TARGET, OUTPUT, FILES]
    migrate.set_defaults(func=_up, **_UP_DEFAULTS)
    commands = migrate.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    up = commands.add_parser("up", parents=[*shared, UP], help="apply pending migrations (the default)", description="Apply pending migrations in version order.")  # fmt: skip
    up.set_defaults(func=_up)
    status = commands.add_parser("status", parents=shared, help="show applied and pending migrations (read-only)", description="Show every migration and its state. Reads only.")  # fmt: skip
    status.add_argument("--exit-code", action="store_true", help=f"exit {EXIT_DISAGREES} when a file disagrees with the history, else {EXIT_PENDING} when one is pending")  # fmt: skip
    status.set_defaults(func=_status)
    wait = commands.add_parser("wait", parents=shared, help="wait until the database accepts connections", description="Poll the target until it accepts connections.")  # fmt: skip
    wait.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=30.0, help="give up after this long (30)")  # fmt: skip
    wait.set_defaults(func=_wait)
    baseline = commands.add_parser("baseline", parents=shared, help="record migrations up to VERSION as applied, after checking the schema", description="For a database created by hand: record migrations up to --version as applied, once the live schema is checked against them.")  # fmt: skip
    baseline.add_argument("--version", metavar="VERSION", type=_version, required=True, help="the newest migration the database already has")  # fmt: skip
    baseline.add_argument("--yes", action="store_true", help="confirm writing to a remote stack (prod)")  # fmt: skip
    baseline.set_defaults(func=_baseline)
    new = commands.add_parser("new", parents=shared, help="write the next NNNN_name.sql", description="Write the next migration file, with a header that sets short timeouts, and print its path.")  # fmt: skip
    new.add_argument("name", help="what it does, as letters, digits, _ . -")
    new.add_argument("--no-transaction", action="store_true", help="for CREATE INDEX CONCURRENTLY")
    new.set_defaults(func=_new)
    check = commands.add_parser("check", parents=shared, help="the CI gate: files, lint, and the history when a target is named", description="Check the migration files (names, versions, what they may hold), lint them (sqlfluff, squawk), and compare them with a target's history when one is named.")  # fmt: skip
    check.add_argument("--no-lint", action="store_true", help="skip sqlfluff and squawk")
    check.set_defaults(func=_check)


_UP_DEFAULTS: dict[str, Any] = {
    "dry_run": False, "sql": False, "target": None, "yes": False, "rehearse": False,
    "dump_schema": None, "retries": migrations.DEFAULT_RETRIES,
    "retry_budget": migrations.DEFAULT_RETRY_BUDGET,
}  # fmt: skip


# -- the commands ------------------------------------------------------------------------


class _Run:
    """One command run: its arguments, and the secrets to keep out of what it prints."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Even a URL too broken to parse must not show its password in an error.
        self.secrets = [
            *password_candidates(args.database_url),
            *password_candidates(os.environ.get("DATABASE_URL")),
            *password_candidates(getattr(args, "admin_url", None)),
            os.environ.get("PGPASSWORD", ""),  # libpq's, for a URL without a password
        ]

    def target(self) -> targets.Target:
        """The target the flags name; its settings are read on first use."""
        args = self.args
        return targets.resolve(database_url=args.database_url, stack=args.stack, local=args.local)

    def named_target(self) -> targets.Target | None:
        """The target, only when one is named: a flag, or DATABASE_URL."""
        args = self.args
        named = args.database_url or args.stack or args.local
        return self.target() if named or os.environ.get("DATABASE_URL", "").strip() else None

    def remember(self, target: targets.Target) -> targets.Target:
        """Read the target's settings, and keep their secrets out of every message."""
        self.secrets += target.settings.secrets() + target.settings.for_migrations().secrets()
        return target

    @contextmanager
    def runner(
        self, target: targets.Target, *, writes: bool, action: str = "apply migrations to it"
    ) -> Iterator[migrations.Runner]:
        args = self.args
        with migrations.open_runner(
            target,
            folder=args.migrations_dir,
            writes=writes,
            confirmed=getattr(args, "yes", False),
            action=action,
            lock_timeout=args.lock_timeout,
            retries=getattr(args, "retries", migrations.DEFAULT_RETRIES),
            retry_budget=getattr(args, "retry_budget", migrations.DEFAULT_RETRY_BUDGET),
        ) as runner:
            self.remember(target)
            yield runner

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str))


def _up(run: _Run) -> int:
    args = run.args
    target = run.target()
    if args.sql and not args.dry_run:
        raise UsageError("--sql prints what --dry-run would apply; add --dry-run")
    action = "rehearse on it (a rehearsal takes the locks the files take)" if args.rehearse else "apply migrations to it"  # fmt: skip
    with run.runner(target, writes=not args.dry_run, action=action) as runner:
        if args.rehearse:
            return _rehearse(run, target, runner)
        if args.verbose:
            runner.conn.add_notice_handler(
                lambda diag: print(f"  NOTICE: {diag.message_primary}", file=sys.stderr)
            )
        ticker = _Ticker(enabled=sys.stderr.isatty() and not args.quiet and not args.json)
        started = time.perf_counter()
        results = runner.apply(
            target=args.target,
            dry_run=args.dry_run,
            on_start=ticker.start,
            on_applied=lambda result: _applied(run, ticker, result),
            on_retry=ticker.retrying,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if args.dump_schema and not args.dry_run:
            from cicd_db import schema

            _write(args.dump_schema, schema.dump(target.settings.for_migrations()))
    if args.json:
        run.json({"target": target.description, "dry_run": args.dry_run, "applied": [{"version": r.migration.version, "name": r.migration.name, "duration_ms": round(r.duration_ms, 1)} for r in results]})  # fmt: skip
    elif not results:
        run.say(f"nothing to apply: {target.description} is up to date")
    else:
        count = f"{len(results)} migration{'s' if len(results) != 1 else ''}"
        if args.dry_run:
            run.say(f"dry run: {count} pending on {target.description}; nothing was changed")
        else:
            run.say(f"applied {count} to {target.description} in {elapsed_ms:.0f} ms")
    if args.dump_schema and not args.dry_run:
        run.say(f"schema written to {args.dump_schema}")
    return 0


def _applied(run: _Run, ticker: _Ticker, result: migrations.Result) -> None:
    ticker.stop()
    if run.args.json:
        return
    for note in result.notes:
        run.say(f"  {note}")
    if result.dry_run:
        run.say(f"would apply {result.migration.filename}")
        if run.args.sql:
            run.say(f"-- {result.migration.filename}\n{result.migration.text.rstrip()}\n")
    else:
        run.say(f"applied {result.migration.filename} ({result.duration_ms:.0f} ms)")


def _rehearse(run: _Run, target: targets.Target, runner: migrations.Runner) -> int:
    rehearsals = runner.rehearse(target=run.args.target)
    if run.args.json:
        run.json({"target": target.description, "rehearsed": [{"version": r.migration.version, "name": r.migration.name, "duration_ms": None if r.duration_ms is None else round(r.duration_ms, 1), "locks": [{"mode": lock.mode, "table": lock.table, "held_ms": round(lock.held_ms, 1)} for lock in r.locks], "sequences_advanced": list(r.sequences), "skipped": r.skipped, "error": r.error, "unrehearsed_before": list(r.unrehearsed_before)} for r in rehearsals]})  # fmt: skip
        return 1 if any(r.failed for r in rehearsals) else 0
    for rehearsal in rehearsals:
        name = rehearsal.migration.filename
        if rehearsal.skipped:
            run.say(f"{name}: not rehearsed: {rehearsal.skipped}")
            continue
        run.say(f"{name}: {rehearsal.duration_ms:.0f} ms" + (f", FAILED: {rehearsal.error}" if rehearsal.error else ""))  # fmt: skip
        if rehearsal.error and rehearsal.unrehearsed_before:
            run.say(f"  (it may need {', '.join(rehearsal.unrehearsed_before)}, which the rehearsal could not run)")  # fmt: skip
        for lock in rehearsal.locks:
            run.say(f"  {lock.mode} on {lock.table}, held {lock.held_ms:.0f} ms")
        for sequence in rehearsal.sequences:
            run.say(f"  advanced sequence {sequence} (the rollback keeps that)")
    run.say("(a table lock an earlier file of the rehearsal already holds is not listed again)")
    run.say(f"rehearsal on {target.description}: rolled back; nothing else changed")
    return 1 if any(r.failed for r in rehearsals) else 0


def _status(run: _Run) -> int:
    target = run.target()
    with run.runner(target, writes=False) as runner:
        rows = runner.status()
    pending = sum(row.state == "pending" for row in rows)
    problems = [row for row in rows if row.state not in ("applied", "pending")]
    if run.args.json:
        run.json({"target": target.description, "url": target.settings.for_migrations().redacted_url(), "pending": pending, "migrations": [{"version": row.version, "name": row.name, "state": row.state, "applied_at": row.applied_at.isoformat() if row.applied_at else None} for row in rows]})  # fmt: skip
    else:
        from cicd_db import report

        cells = [[str(r.version), r.name, r.state, r.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z") if r.applied_at else "-"] for r in rows]  # fmt: skip
        run.say("\n".join(report.grid(["VERSION", "NAME", "STATE", "APPLIED AT"], cells)))
        summary = f"{pending} pending" if pending else "up to date"
        if problems:
            summary += f", {len(problems)} need attention (run `migrate up` for the fix)"
        run.say(f"{target.description}: {summary}")
    if not getattr(run.args, "exit_code", False):
        return 0
    return EXIT_DISAGREES if problems else EXIT_PENDING if pending else 0


def _wait(run: _Run) -> int:
    target = run.remember(run.target())
    targets.wait(target.settings, run.args.timeout)
    run.say(f"ready: {target.settings.redacted_url()}")
    return 0


def _baseline(run: _Run) -> int:
    target = run.target()
    with run.runner(target, writes=True, action="baseline it") as runner:
        recorded = runner.baseline(run.args.version)
    run.say(f"baseline: the schema matches migrations up to version {run.args.version}; recorded {len(recorded)} migration{'s' if len(recorded) != 1 else ''} as applied on {target.description}")  # fmt: skip
    return 0


def _new(run: _Run) -> int:
    folder = run.args.migrations_dir or targets.repository_root() / "db" / "migrations"
    path = migrations.new_migration(folder, run.args.name, transactional=not run.args.no_transaction)  # fmt: skip
    if run.args.json:
        run.json({"path": str(path)})
    else:
        print(path)
    return 0


def _check(run: _Run) -> int:
    from cicd_db import lint

    root = targets.repository_root()
    files = migrations.discover(run.args.migrations_dir or root / "db" / "migrations")
    reports = [] if run.args.no_lint else lint.lint(files, root)
    target = run.named_target()
    rows = []
    if target is not None:
        with run.runner(target, writes=False) as runner:
            rows = [row for row in runner.status() if row.state not in ("applied", "pending")]
    if run.args.json:
        run.json({"files": len(files), "lint": [{"tool": r.tool, "passed": r.passed, "output": r.output} for r in reports], "target": target.description if target else None, "disagreements": [{"version": row.version, "name": row.name, "state": row.state} for row in rows]})  # fmt: skip
    else:
        for report in reports:
            run.say(f"{report.tool}: {'passed' if report.passed else 'FAILED'} ({len(report.files)} files)")  # fmt: skip
            if not report.passed:
                run.say(report.output)
        for row in rows:
            run.say(f"{row.version} {row.name}: {row.state}")
        checked = f"and the history of {target.description}" if target else "(no target: history not compared)"  # fmt: skip
        run.say(f"checked {len(files)} files {checked}")
    if rows:
        return EXIT_DISAGREES
    return EXIT_LINT if any(not r.passed for r in reports) else 0


def _schema_dump(run: _Run) -> int:
    from cicd_db import schema

    target = run.named_target()
    if target is None:
        embedded = targets.resolve(stack=targets.EMBEDDED).embedded_server()
        root = targets.repository_root()
        files = migrations.discover(run.args.migrations_dir or root / "db" / "migrations")
        text = migrations.scratch_dump(files, embedded.admin_settings())
    else:
        text = schema.dump(run.remember(target).settings.for_migrations())
    if run.args.output:
        _write(run.args.output, text)
        run.say(f"schema written to {run.args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _schema_diff(run: _Run) -> int:
    from cicd_db import schema

    target = run.target()
    if run.args.against:
        run.remember(target)
        other = targets.resolve(**({"database_url": run.args.against} if "://" in run.args.against else {"stack": run.args.against}))  # fmt: skip
        run.remember(other)
        with targets.connect(target.settings) as one, targets.connect(other.settings) as two:
            found = schema.compare(schema.signature(two, schema.current_schema(two)), schema.signature(one, schema.current_schema(one)))  # fmt: skip
        against = other.description
    else:
        with run.runner(target, writes=False) as runner:
            newest, found = runner.drift()
        against = f"migrations up to version {newest}"
    if run.args.json:
        run.json({"target": target.description, "against": against, "differences": [vars(d) for d in found]})  # fmt: skip
    else:
        table = None
        for difference in found:
            if difference.table != table:
                table = difference.table
                run.say(f"{table}:")
            run.say(f"  {difference.change} {difference.kind}: {difference.detail}")
        run.say(f"{target.description} against {against}: " + (f"{len(found)} differences" if found else "no drift"))  # fmt: skip
    return EXIT_DRIFT if found else 0


def _embedded(run: _Run) -> int:
    server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
    command = run.args.command
    if command == "stop":
        run.say("stopped" if server.stop() else "not running")
    elif command == "status":
        state = server.status()
        if run.args.json:
            run.json({"running": state.running, "pid": state.pid, "port": state.port, "data_dir": str(state.data_dir), "initialized": state.initialized})  # fmt: skip
        elif state.running:
            run.say(f"running (pid {state.pid}) on 127.0.0.1:{state.port}, data {state.data_dir}")
        else:
            run.say(f"stopped, data {state.data_dir}" + ("" if state.initialized else " (not created yet)"))  # fmt: skip
    else:
        settings = server.settings()
        run.secrets += settings.secrets()
        if command == "url":
            print(settings.url() if run.args.show_password else settings.redacted_url())
        else:
            run.say(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
    return 0


def _report(run: _Run) -> int:
    from cicd_db import report, store  # on use: `migrate` starts faster without them

    args = run.args
    target = run.remember(run.target())
    with targets.connect(target.settings) as conn:
        view = report.fetch(store.Store.on(conn), args.pipeline, run=args.run, stage=args.stage, job=args.job, limit=args.limit, before=args.before)  # fmt: skip
    sys.stdout.write(report.render(view, args.format))
    return 0


def _init_local(run: _Run) -> int:
    from cicd_db import local

    admin = from_url(run.args.admin_url, what="--admin-url")
    run.secrets += [*admin.secrets(), run.args.password or ""]
    with targets.connect(admin) as conn:
        prepared = local.init(conn, admin, run.args.password, user=run.args.user, database=run.args.database)  # fmt: skip
    settings = prepared.settings
    url = settings.url() if run.args.show_password else settings.redacted_url()
    if run.args.json:
        run.json({"url": url, "created_role": prepared.created_role, "created_database": prepared.created_database, "password_set": prepared.password_set})  # fmt: skip
        return 0
    role = "created" if prepared.created_role else "kept" + ("; password set" if prepared.password_set else "; its password unchanged")  # fmt: skip
    run.say(f"role {settings.user} {role}; database {settings.database} {'created' if prepared.created_database else 'kept'}")  # fmt: skip
    print(url)
    if prepared.created_role and not run.args.password and not run.args.show_password:
        print(f"note: {settings.user} got a generated password, not shown; run again with --password to set one you know", file=sys.stderr)  # fmt: skip
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; pick another path") from None


class _Ticker:
    """On a terminal, a file running longer than TICK_AFTER_SECONDS shows its time ticking."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, migration: migrations.Migration) -> None:
        if not self.enabled:
            return
        self.stop()
        self.done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            if self.done.wait(TICK_AFTER_SECONDS):
                return
            while not self.done.wait(0.5):
                sys.stderr.write(f"\r{migration.filename}: {time.monotonic() - started:.0f} s")
                sys.stderr.flush()
            sys.stderr.write("\r\033[K")

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()

    def retrying(self, retry: migrations.Retry) -> None:
        self.stop()
        print(retry, file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.thread is not None:
            self.done.set()
            self.thread.join()
            self.thread = None


# -- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, prog: str = "cicd-db", only_migrate: bool = False) -> int:  # fmt: skip
    """Entry point of `cicd-db`; returns the exit code."""
    run: _Run | None = None
    debug = False
    previous = _deliver_sigterm_as_interrupt()
    try:
        args = build(prog, only_migrate=only_migrate).parse_args(list(sys.argv[1:] if argv is None else argv))  # fmt: skip
        for name, value in DEFAULTS.items():
            if not hasattr(args, name):
                setattr(args, name, value)
        debug = args.debug
        if not debug:
            # psycopg logs some failures besides raising them; the error line is enough.
            for name in ("psycopg", "psycopg.pool"):
                logger = logging.getLogger(name)
                if not logger.handlers:
                    logger.addHandler(logging.NullHandler())
                logger.propagate = False
        run = _Run(args)
        func: Callable[[_Run], int] = args.func
        return func(run)
    except CicdDbError as error:
        _print_error(str(error), run)
        return error.exit_code
    except psycopg.Error as error:  # the server went away or refused something mid-command
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _print_error(f"database error: {first}; run again, with --debug for details", run)
        if debug:
            traceback.print_exc()
        return 1
    except KeyboardInterrupt as interrupt:
        _print_error("interrupted", run)
        return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
    except Exception as error:  # last resort: one line, not a traceback
        _print_error(f"unexpected {type(error).__name__}: {error}; run with --debug and report it", run)  # fmt: skip
        if debug:
            traceback.print_exc()
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _deliver_sigterm_as_interrupt() -> Any:
    """SIGTERM raises Terminated, so it cleans up as Ctrl-C does; returns the old handler."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals to whoever owns it
        return None
    # A shell that starts us in the background hands SIGINT down ignored; Ctrl-C
    # and `kill -INT` must still stop the run cleanly.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return previous


def _print_error(message: str, run: _Run | None) -> None:
    print(f"error: {redact(message, run.secrets if run else [])}", file=sys.stderr)


def migrate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/migrate.py: `cicd-db migrate` under another name."""
    return main(argv, prog="migrate.py", only_migrate=True)
