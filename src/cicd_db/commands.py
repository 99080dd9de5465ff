"""The commands of `cicd-db`: each calls one library function and prints its result.

cli.py parses the arguments into a Run and calls one of these; console.py shapes
what they print. A command's docstring is its help: the first line in the command
list, the rest as its description.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cicd_db import console, migrations, targets
from cicd_db.errors import ConfigError, UsageError
from cicd_db.settings import from_url, password_candidates

EXIT_PENDING = EXIT_DRIFT = 3
EXIT_DISAGREES = 4
EXIT_LINT = 5


class Run:
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
        a = self.args
        return targets.resolve(database_url=a.database_url, stack=a.stack, local=a.local)

    def named_target(self) -> targets.Target | None:
        """The target, only when one is named: a flag, or DATABASE_URL."""
        a = self.args
        named = a.database_url or a.stack or a.local or os.environ.get("DATABASE_URL", "").strip()
        return self.target() if named else None

    def remember(self, target: targets.Target) -> targets.Target:
        """Read the target's settings, and keep their secrets out of every message."""
        self.secrets += target.settings.secrets() + target.settings.for_migrations().secrets()
        return target

    @contextmanager
    def runner(
        self, target: targets.Target, *, writes: bool, action: str = "apply migrations to it"
    ) -> Iterator[migrations.Runner]:
        a = self.args
        with migrations.open_runner(
            target,
            folder=a.migrations_dir,
            writes=writes,
            confirmed=a.yes,
            action=action,
            lock_timeout=a.lock_timeout,
            retries=a.retries,
            retry_budget=a.retry_budget,
        ) as runner:
            self.remember(target)
            yield runner

    def say(self, *lines: str) -> None:
        if lines and not self.args.quiet:
            print(*lines, sep="\n", flush=True)

    def show(self, value: Any, lines: Callable[[], list[str]] = list) -> None:
        """Print `value` as JSON with --json (even with --quiet), else the lines."""
        if self.args.json:
            print(json.dumps(value, indent=2, default=str))
        else:
            self.say(*lines())


def up(run: Run) -> int:
    """apply pending migrations (the default)
    Apply pending migrations in version order."""
    a, target = run.args, run.target()
    if a.sql and not a.dry_run:
        raise UsageError("--sql prints what --dry-run would apply; add --dry-run")
    action = "apply migrations to it"
    if a.rehearse:
        action = "rehearse on it (a rehearsal takes the locks the files take)"
    with run.runner(target, writes=not a.dry_run, action=action) as runner:
        if a.rehearse:
            rehearsals = runner.rehearse(target=a.target)
            run.show(
                console.rehearsal_json(target.description, rehearsals),
                lambda: console.rehearsal_lines(target.description, rehearsals),
            )
            return 1 if any(r.failed for r in rehearsals) else 0
        if a.verbose:
            runner.conn.add_notice_handler(
                lambda d: print(f"  NOTICE: {d.message_primary}", file=sys.stderr)
            )
        ticker = console.Ticker(enabled=sys.stderr.isatty() and not a.quiet and not a.json)
        started = time.perf_counter()

        def applied(result: migrations.Result) -> None:
            ticker.stop()
            run.say(*([] if a.json else console.applied_lines(result, sql=a.sql)))

        results = runner.apply(
            target=a.target,
            dry_run=a.dry_run,
            on_start=ticker.start,
            on_applied=applied,
            on_retry=ticker.retrying,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if a.dump_schema and not a.dry_run:
            from cicd_db import schema

            _write(a.dump_schema, schema.dump(target.settings.for_migrations()))
    summary = console.up_summary(target.description, a.dry_run, len(results), elapsed_ms)
    run.show(console.applied_json(target.description, a.dry_run, results), lambda: [summary])
    run.say(*([f"schema written to {a.dump_schema}"] if a.dump_schema and not a.dry_run else []))
    return 0


def status(run: Run) -> int:
    """show applied and pending migrations (read-only)
    Show every migration and its state. Reads only."""
    target = run.target()
    with run.runner(target, writes=False) as runner:
        rows = runner.status()
    url = target.settings.for_migrations().redacted_url()
    run.show(
        console.status_json(target.description, url, rows),
        lambda: console.status_lines(target.description, rows),
    )
    if not run.args.exit_code:
        return 0
    pending = any(row.state == "pending" for row in rows)
    return EXIT_DISAGREES if console.disagreements(rows) else EXIT_PENDING if pending else 0


def wait(run: Run) -> int:
    """wait until the database accepts connections
    Poll the target until it accepts connections."""
    target = run.remember(run.target())
    targets.wait(target.settings, run.args.timeout)
    run.say(f"ready: {target.settings.redacted_url()}")
    return 0


def baseline(run: Run) -> int:
    """record migrations up to VERSION as applied, after checking the schema
    For a database created by hand: record migrations up to --version as applied, once
    the live schema is checked against them."""
    target = run.target()
    with run.runner(target, writes=True, action="baseline it") as runner:
        recorded = runner.baseline(run.args.version)
    run.say(console.baseline_line(target.description, run.args.version, len(recorded)))
    return 0


def new(run: Run) -> int:
    """write the next NNNN_name.sql
    Write the next migration file, with a header that sets short timeouts, and print
    its path."""
    path = migrations.new_migration(
        _folder(run), run.args.name, transactional=not run.args.no_transaction
    )
    print(json.dumps({"path": str(path)}, indent=2) if run.args.json else path)
    return 0


def check(run: Run) -> int:
    """the CI gate: files, lint, and the history when a target is named
    Check the migration files (names, versions, what they may hold), lint them
    (sqlfluff, squawk), and compare them with a target's history when one is named."""
    from cicd_db import lint

    files = migrations.discover(_folder(run))
    reports = [] if run.args.no_lint else lint.lint(files, targets.repository_root())
    target, rows = run.named_target(), []
    if target is not None:
        with run.runner(target, writes=False) as runner:
            rows = console.disagreements(runner.status())
    shown = (len(files), reports, target.description if target else None, rows)
    run.show(console.check_json(*shown), lambda: console.check_lines(*shown))
    return EXIT_DISAGREES if rows else EXIT_LINT if any(not r.passed for r in reports) else 0


def schema_dump(run: Run) -> int:
    """write the schema as SQL
    The schema as pg_dump --schema-only writes it, in a stable form. Without a target,
    the schema the migrations make (in a scratch database on the embedded server)."""
    from cicd_db import schema

    target = run.named_target()
    if target is None:
        server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
        text = migrations.scratch_dump(migrations.discover(_folder(run)), server.admin_settings())
    else:
        text = schema.dump(run.remember(target).settings.for_migrations())
    if not run.args.output:
        sys.stdout.write(text)
        return 0
    _write(run.args.output, text)
    run.say(f"schema written to {run.args.output}")
    return 0


def schema_diff(run: Run) -> int:
    """list drift, table by table (exit 3 on drift)
    Compare the target's live schema with what its applied migrations make, or with
    another database (--against)."""
    from cicd_db import schema

    target, against = run.target(), run.args.against
    if against:
        run.remember(target)
        other = run.remember(
            targets.resolve(**{"database_url" if "://" in against else "stack": against})
        )
        with targets.connect(target.settings) as one, targets.connect(other.settings) as two:
            expected, actual = (schema.signature(c, schema.current_schema(c)) for c in (two, one))
            found = schema.compare(expected, actual)
        against = other.description
    else:
        with run.runner(target, writes=False) as runner:
            newest, found = runner.drift()
        against = f"migrations up to version {newest}"
    value = {
        "target": target.description,
        "against": against,
        "differences": [vars(d) for d in found],
    }
    run.show(value, lambda: console.diff_lines(target.description, against, found))
    return EXIT_DRIFT if found else 0


def embedded_server(run: Run) -> int:
    server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
    command = run.args.command
    if command == "stop":
        run.say("stopped" if server.stop() else "not running")
    elif command == "status":
        state = server.status()
        run.show(
            vars(state) | {"data_dir": str(state.data_dir)}, lambda: [console.embedded_line(state)]
        )
    else:
        settings = server.settings()
        run.secrets += settings.secrets()
        if command == "url":
            print(settings.url() if run.args.show_password else settings.redacted_url())
        else:
            run.say(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
    return 0


def show_report(run: Run) -> int:
    """show recorded pipeline, stage and job executions
    Show recorded executions: a pipeline's runs, one run with its stages, one stage with
    its jobs, or one job. Reads only."""
    from cicd_db import report, store  # on use: `migrate` starts faster without them

    a, target = run.args, run.remember(run.target())
    with targets.connect(target.settings) as conn:
        view = report.fetch(
            store.Store.on(conn),
            a.pipeline,
            run=a.run,
            stage=a.stage,
            job=a.job,
            limit=a.limit,
            before=a.before,
        )
    sys.stdout.write(report.render(view, a.format))
    return 0


def init_local(run: Run) -> int:
    """create ci_local and ci_user on a server you installed
    On a PostgreSQL you installed: create the role ci_user (not a superuser) with the
    plan's settings and the database ci_local it owns. Safe to repeat."""
    from cicd_db import local

    a, admin = run.args, from_url(run.args.admin_url, what="--admin-url")
    run.secrets += [*admin.secrets(), a.password or ""]
    with targets.connect(admin) as conn:
        prepared = local.init(conn, admin, a.password, user=a.user, database=a.database)
    url = prepared.settings.url() if a.show_password else prepared.settings.redacted_url()
    if a.json:
        run.show({"url": url} | {k: v for k, v in vars(prepared).items() if k != "settings"})
        return 0
    run.say(console.local_line(prepared))
    print(url)
    if prepared.created_role and not a.password and not a.show_password:
        user = prepared.settings.user
        print(
            f"note: {user} got a generated password, not shown; run again with --password to set one you know",
            file=sys.stderr,
        )
    return 0


def _folder(run: Run) -> Path:
    return run.args.migrations_dir or targets.repository_root() / "db" / "migrations"


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; pick another path") from None
