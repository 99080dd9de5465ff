"""`cicd-db`: parses arguments, calls the library, prints. Errors are printed here, once.

    cicd-db migrate [up|status|wait|baseline]   the migration runner (also scripts/migrate.py)
    cicd-db embedded [start|status|url|stop]     the embedded PostgreSQL server
    cicd-db report --pipeline P [--run N [--stage S [--job J]]]   what ran, when, how it ended

Exit codes: 0 done, 1 operational failure, 2 usage or configuration error,
3 `migrate status --exit-code` with migrations pending, 4 `migrate status
--exit-code` with files that disagree with the history (edited, missing, out of
order), 130 interrupted by Ctrl-C, 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from cicd_db import migrations, targets
from cicd_db.errors import (
    CicdDbError,
    ConfigError,
    ConnectionFailed,
    NotFound,
    Terminated,
    UsageError,
)
from cicd_db.settings import (
    ConnectionSettings,
    is_transaction_pooler,
    password_candidates,
    redact,
)

EXIT_PENDING = 3
EXIT_DISAGREES = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")


class _Session:
    """What one command run knows: its arguments, and the secrets to keep out of output."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Even a URL too broken to parse must not show its password in an error.
        self.secrets: list[str] = [
            *password_candidates(getattr(args, "database_url", None)),
            *password_candidates(os.environ.get("DATABASE_URL")),
            os.environ.get("PGPASSWORD", ""),  # libpq's, for a URL without a password
        ]

    def target(self) -> targets.Target:
        return targets.resolve(
            database_url=self.args.database_url, stack=self.args.stack, local=self.args.local
        )

    def settings(self, target: targets.Target) -> ConnectionSettings:
        settings = target.settings
        self.secrets += settings.secrets()
        return settings


# -- migrate ---------------------------------------------------------------------

# Options a command leaves out get these, so every command's code reads args.NAME
# (the migrate parsers declare theirs with SUPPRESS to accept them on either side).
OPTION_DEFAULTS: dict[str, Any] = {
    "stack": None,
    "local": False,
    "database_url": None,
    "migrations_dir": None,
    "dry_run": False,
    "target": None,
    "json": False,
    "lock_timeout": 60.0,
    "retries": migrations.DEFAULT_RETRIES,
    "retry_budget": migrations.DEFAULT_RETRY_BUDGET,
    "yes": False,
    "exit_code": False,
    "timeout": 30.0,
    "version": None,
    "debug": False,
}


def _target_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--stack/--local/--database-url/--debug; `suppress` lets a subcommand inherit them."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group(
        "target (first that is given wins; default: DATABASE_URL, then the prod stack)"
    )
    group.add_argument("--database-url", metavar="URL", help="a postgresql:// URL", **default)
    group.add_argument(
        "--stack", metavar="NAME", help="a Pulumi stack (dev, prod) or embedded", **default
    )
    group.add_argument(
        "--local",
        action="store_true",
        help="the local database: stack dev, or embedded if CICD_DB_LOCAL=embedded",
        **default,
    )
    parser.add_argument(
        "--debug", action="store_true", help="print a traceback on unexpected errors", **default
    )


def _migrate_options(parser: argparse.ArgumentParser) -> None:
    suppress: dict[str, Any] = {"default": argparse.SUPPRESS}
    _target_options(parser, suppress=True)
    parser.add_argument(
        "--migrations-dir",
        metavar="DIR",
        type=Path,
        help="folder of NNNN_name.sql files (default: db/migrations)",
        **suppress,
    )
    parser.add_argument("--json", action="store_true", help="print JSON", **suppress)
    parser.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=_seconds,
        help="how long to wait for another runner (default 60)",
        **suppress,
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds, 0 or more")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more")
    return int(text)


def _version(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a migration version (a whole number)")
    return int(text)


def migrate_parser(prog: str = "cicd-db migrate") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Apply the SQL migrations of db/migrations to the target database.",
        epilog="Options may stand before or after the command.",
    )
    _migrate_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    up = commands.add_parser(
        "up",
        help="apply pending migrations (the default)",
        description="Apply pending migrations in version order.",
    )
    _migrate_options(up)
    up.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be applied; change nothing",
        default=argparse.SUPPRESS,
    )
    up.add_argument(
        "--target",
        metavar="VERSION",
        type=_version,
        help="stop after this version",
        default=argparse.SUPPRESS,
    )
    up.add_argument(
        "--yes",
        action="store_true",
        help="confirm writing to a remote stack (prod)",
        default=argparse.SUPPRESS,
    )
    up.add_argument(
        "--retries",
        metavar="N",
        type=_count,
        default=argparse.SUPPRESS,
        help="times a file that hit a lock timeout or deadlock runs again "
        f"(default {migrations.DEFAULT_RETRIES})",
    )
    up.add_argument(
        "--retry-budget",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help="most time spent waiting between retries, in all "
        f"(default {migrations.DEFAULT_RETRY_BUDGET:g})",
    )

    status = commands.add_parser(
        "status",
        help="show applied and pending migrations (read-only)",
        description="Show every migration and its state. Reads only.",
    )
    _migrate_options(status)
    status.add_argument(
        "--exit-code",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"exit {EXIT_DISAGREES} when a file disagrees with the history (edited, missing, "
        f"out of order), else {EXIT_PENDING} when a migration is pending",
    )

    wait = commands.add_parser(
        "wait",
        help="wait until the database accepts connections",
        description="Poll the target until it accepts connections.",
    )
    _migrate_options(wait)
    wait.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help="give up after this long (default 30)",
    )

    baseline = commands.add_parser(
        "baseline",
        help="record migrations up to VERSION as applied, after checking the schema",
        description="For a database created by hand: record migrations up to --version as "
        "applied, once the live schema is checked against them.",
    )
    _migrate_options(baseline)
    baseline.add_argument(
        "--version",
        metavar="VERSION",
        type=_version,
        required=True,
        help="the newest migration the database already has",
    )
    baseline.add_argument(
        "--yes",
        action="store_true",
        default=argparse.SUPPRESS,
        help="confirm writing to a remote stack (prod)",
    )

    # Options given before the command belong to it too; listed in each command's help.
    parser.add_argument(
        "--dry-run", action="store_true", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--target", type=_version, help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--yes", action="store_true", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--exit-code", action="store_true", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--timeout", type=_seconds, help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument("--retries", type=_count, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    parser.add_argument(
        "--retry-budget", type=_seconds, help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    return parser


def _migrate(session: _Session) -> int:
    args = session.args
    command = args.command or "up"
    target = session.target()
    if command == "wait":
        return _wait(session, target)
    folder = args.migrations_dir or target.root / "db" / "migrations"
    files = migrations.discover(folder)
    writes = command == "baseline" or (command == "up" and not args.dry_run)
    if writes and target.remote and not args.yes:
        raise UsageError(
            f"{target.description} is a remote database; add --yes to "
            + ("apply migrations to it" if command == "up" else "baseline it")
            + " (or use --local for the local one)"
        )
    settings = session.settings(target).for_migrations()
    session.secrets += settings.secrets()
    if writes and is_transaction_pooler(settings):
        raise ConfigError(
            f"{settings.host}:{settings.port} is a transaction pooler, where the migration lock "
            "does not hold; migrate through the direct endpoint (Supabase: port 5432, Neon: the "
            "host without -pooler), or export migration_database_url from the stack"
        )
    with targets.connect(settings, options=migrations.session_options()) as conn:
        runner = migrations.Runner(
            conn,
            files,
            lock_timeout=args.lock_timeout,
            retries=args.retries,
            retry_budget=args.retry_budget,
        )
        if command == "status":
            return _status(session, target, settings, runner)
        if command == "baseline":
            return _baseline(session, target, runner)
        return _up(session, target, runner)


def _up(session: _Session, target: targets.Target, runner: migrations.Runner) -> int:
    args = session.args
    verb = "would apply" if args.dry_run else "applied"

    def report(result: migrations.Result) -> None:
        if not args.json:
            timing = "" if result.dry_run else f" ({result.duration_ms:.0f} ms)"
            for note in result.notes:
                print(f"  {note}")
            print(f"{verb} {result.migration.filename}{timing}", flush=True)

    started = time.perf_counter()

    def retrying(retry: migrations.Retry) -> None:
        print(retry, file=sys.stderr, flush=True)

    results = runner.apply(
        target=args.target, dry_run=args.dry_run, on_applied=report, on_retry=retrying
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        _print_json(
            {
                "target": target.description,
                "dry_run": args.dry_run,
                "applied": [
                    {
                        "version": r.migration.version,
                        "name": r.migration.name,
                        "duration_ms": round(r.duration_ms, 1),
                    }
                    for r in results
                ],
            }
        )
    elif not results:
        print(f"nothing to apply: {target.description} is up to date")
    else:
        count = f"{len(results)} migration{'s' if len(results) != 1 else ''}"
        if args.dry_run:
            print(f"dry run: {count} pending on {target.description}; nothing was changed")
        else:
            print(f"applied {count} to {target.description} in {elapsed_ms:.0f} ms")
    return 0


def _status(
    session: _Session,
    target: targets.Target,
    settings: ConnectionSettings,
    runner: migrations.Runner,
) -> int:
    args = session.args
    rows = runner.status()
    pending = sum(row.state == "pending" for row in rows)
    if args.json:
        _print_json(
            {
                "target": target.description,
                "url": settings.redacted_url(),
                "pending": pending,
                "migrations": [
                    {
                        "version": row.version,
                        "name": row.name,
                        "state": row.state,
                        "applied_at": row.applied_at.isoformat() if row.applied_at else None,
                    }
                    for row in rows
                ],
            }
        )
    else:
        print(
            _table(
                ["VERSION", "NAME", "STATE", "APPLIED AT"],
                [
                    [
                        str(row.version),
                        row.name,
                        row.state,
                        row.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z") if row.applied_at else "-",
                    ]
                    for row in rows
                ],
            )
        )
        problems = [row for row in rows if row.state not in ("applied", "pending")]
        summary = f"{pending} pending" if pending else "up to date"
        if problems:
            summary += f", {len(problems)} need attention (run `migrate up` for the fix)"
        print(f"{target.description}: {summary}")
    if not args.exit_code:
        return 0
    if any(row.state not in ("applied", "pending") for row in rows):
        return EXIT_DISAGREES
    return EXIT_PENDING if pending else 0


def _baseline(session: _Session, target: targets.Target, runner: migrations.Runner) -> int:
    version = session.args.version
    recorded = runner.baseline(version)
    print(
        f"baseline: the schema matches migrations up to version {version}; recorded "
        f"{len(recorded)} migration{'s' if len(recorded) != 1 else ''} as applied on "
        f"{target.description}"
    )
    return 0


def _wait(session: _Session, target: targets.Target) -> int:
    settings = session.settings(target)
    deadline = time.monotonic() + session.args.timeout
    while True:
        try:
            with targets.connect(settings) as conn:
                conn.execute("SELECT 1")
            break
        except ConnectionFailed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    print(f"ready: {settings.redacted_url()}")
    return 0


# -- embedded --------------------------------------------------------------------


def embedded_parser(prog: str = "cicd-db embedded") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="The embedded PostgreSQL server (stack embedded).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser(
        "start",
        help="start the server (created on first use)",
        description="Start the embedded server, creating it on first use.",
    )
    status = commands.add_parser(
        "status",
        help="is it running, where, on which port",
        description="Show the embedded server's state. Reads only.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    url = commands.add_parser(
        "url",
        help="print the URL of ci_local (password hidden)",
        description="Print the URL to connect to, starting the server.",
    )
    url.add_argument(
        "--show-password",
        action="store_true",
        help="print the real password (for psql and other tools)",
    )
    commands.add_parser(
        "stop",
        help="stop the server; data stays",
        description="Stop the embedded server. Its data stays.",
    )
    for sub in commands.choices.values():
        sub.add_argument("--debug", action="store_true", help="traceback on unexpected errors")
    return parser


def _embedded(session: _Session) -> int:
    args = session.args
    target = targets.resolve(stack=targets.EMBEDDED)
    server = target.embedded_server()
    if args.command == "stop":
        print("stopped" if server.stop() else "not running")
        return 0
    if args.command == "status":
        state = server.status()
        if args.json:
            _print_json(
                {
                    "running": state.running,
                    "pid": state.pid,
                    "port": state.port,
                    "data_dir": str(state.data_dir),
                    "initialized": state.initialized,
                }
            )
        elif state.running:
            print(f"running (pid {state.pid}) on 127.0.0.1:{state.port}, data {state.data_dir}")
        else:
            print(
                f"stopped, data {state.data_dir}"
                + ("" if state.initialized else " (not created yet)")
            )
        return 0
    settings = session.settings(target)
    if args.command == "url":
        print(settings.url() if args.show_password else settings.redacted_url())
    else:
        print(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
    return 0


# -- report ----------------------------------------------------------------------


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def report_parser(prog: str = "cicd-db report") -> argparse.ArgumentParser:
    from cicd_db import report  # on use, like in _report

    parser = _Parser(
        prog=prog,
        description="Show recorded executions: a pipeline's runs, one run with its stages, "
        "one stage with its jobs, or one job. Reads only.",
        epilog="Examples: --pipeline build | --pipeline build --run 12 | "
        "--pipeline build --run 12 --stage test --job unit",
    )
    parser.add_argument("--pipeline", required=True, help="the pipeline's name")
    parser.add_argument("--run", type=_positive, metavar="N", help="one run, with its stages")
    parser.add_argument("--stage", metavar="NAME", help="one stage of --run, with its jobs")
    parser.add_argument("--job", metavar="NAME", help="one job of --stage")
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="runs per page (default 20, at most 1000)"
    )
    parser.add_argument(
        "--before", type=_positive, metavar="RUN", help="runs numbered below RUN: the next page"
    )
    parser.add_argument(
        "--format", choices=report.FORMATS, default="table", help="table (default), json or yaml"
    )
    _target_options(parser, suppress=False)
    return parser


def _report(session: _Session) -> int:
    args = session.args
    if args.job and not args.stage:
        raise UsageError("--job needs --stage (and --run): a job is named within its stage")
    if args.stage and not args.run:
        raise UsageError("--stage needs --run: a stage is named within its run")
    if args.run and (args.limit or args.before):
        raise UsageError("--limit and --before page through runs; leave them out with --run")
    limit = args.limit or 20
    if limit > 1000:
        raise UsageError(f"--limit {limit} is above 1000; page with --before instead")

    from cicd_db import report, store  # on use: `migrate` starts faster without them

    settings = session.settings(session.target())
    with targets.connect(settings) as conn:
        executions = store.Store.on(conn)
        view: report.View
        if args.run is None:
            runs = executions.runs(args.pipeline, limit=limit, before=args.before)
            if not runs and args.before is None:
                raise NotFound(
                    f"pipeline {args.pipeline!r} has no runs; check the name "
                    "(names are case-sensitive)"
                )
            more = runs[-1].run_number if len(runs) == limit and runs[-1].run_number > 1 else None
            view = report.RunsView(args.pipeline, runs, more)
        else:
            run = executions.run(args.pipeline, args.run)
            if args.stage is None:
                view = report.RunView(run, executions.stages(run))
            else:
                stage = executions.stage(run, args.stage)
                if args.job is None:
                    view = report.StageView(run, stage, executions.jobs(stage))
                else:
                    view = report.JobView(run, stage, executions.job(run, stage, args.job))
    sys.stdout.write(report.render(view, args.format))
    return 0


# -- main ------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from cicd_db import report  # on use: `migrate up` never prints a table

    return "\n".join(report.grid(headers, rows))


def main_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cicd-db",
        description="The database layer of a CI/CD system: migrations, targets, reports.",
    )
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("migrate", help="apply and inspect SQL migrations", add_help=False)
    commands.add_parser("embedded", help="manage the embedded PostgreSQL server", add_help=False)
    commands.add_parser(
        "report", help="show recorded pipeline, stage and job executions", add_help=False
    )
    return parser


GROUPS: dict[str, tuple[Callable[[str], argparse.ArgumentParser], Callable[[_Session], int]]] = {
    "migrate": (migrate_parser, _migrate),
    "embedded": (embedded_parser, _embedded),
    "report": (report_parser, _report),
}


def main(argv: Sequence[str] | None = None, *, prog: str = "cicd-db") -> int:
    """Entry point of `cicd-db`; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    session: _Session | None = None
    if not debug:
        # psycopg logs some failures (a pipeline or a cancel gone wrong) as well as
        # raising them; the error line below is the one the user needs.
        for name in ("psycopg", "psycopg.pool"):
            logging.getLogger(name).addHandler(logging.NullHandler())
            logging.getLogger(name).propagate = False
    previous = _deliver_sigterm_as_interrupt()
    try:
        if not arguments:
            raise UsageError("name a command: migrate, embedded or report; see `cicd-db --help`")
        if arguments[0] not in GROUPS:
            main_parser().parse_args(arguments)  # prints help, or raises UsageError
            return 0
        build, run = GROUPS[arguments[0]]
        sub_prog = prog if prog != "cicd-db" else f"cicd-db {arguments[0]}"
        parser = build(sub_prog)
        args = parser.parse_args(arguments[1:])
        if arguments[0] == "embedded" and args.command is None:
            raise UsageError(f"name a command: start, status, url or stop; see `{sub_prog} --help`")
        for name, value in OPTION_DEFAULTS.items():
            if not hasattr(args, name):
                setattr(args, name, value)
        session = _Session(args)
        return run(session)
    except CicdDbError as error:
        _print_error(str(error), session)
        return error.exit_code
    except psycopg.Error as error:
        # The server went away or refused something mid-command.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _print_error(f"database error: {first}; run again, with --debug for details", session)
        if debug:
            traceback.print_exc()
        return 1
    except KeyboardInterrupt as interrupt:
        _print_error("interrupted", session)
        return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
    except Exception as error:  # last resort: one line, not a traceback
        _print_error(
            f"unexpected {type(error).__name__}: {error}; run with --debug and report it", session
        )
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
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals to whoever owns it
        return None


def _print_error(message: str, session: _Session | None) -> None:
    secrets = session.secrets if session else []
    print(f"error: {redact(message, secrets)}", file=sys.stderr)


def migrate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/migrate.py: `cicd-db migrate` under another name."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return main(["migrate", *arguments], prog="migrate.py")
