"""The commands of `cicd-db`: each calls one library function and prints its result.

cli.py parses the arguments into a Run and calls one of these; console.py shapes
what they print. A command's docstring is its help: the first line in the command
list, the rest as its description.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from cicd_db import console, migrations, targets
from cicd_db.errors import (
    EXIT_DISAGREES,
    EXIT_DRIFT,
    EXIT_LINT,
    EXIT_PENDING,
    ConfigError,
    UsageError,
)
from cicd_db.settings import APP_USER, from_url, password_candidates


class Run:
    """One command run: its arguments, and the secrets to keep out of what it prints."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Even a URL too broken to parse must not show its password in an error.
        self.secrets = [
            *password_candidates(args.database_url),
            *password_candidates(os.environ.get("DATABASE_URL")),
            *password_candidates(getattr(args, "admin_url", None)),
            *password_candidates(getattr(args, "against", None)),
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

    def show(
        self, value: console.JSON, lines: Callable[[], list[str]], *, answer: bool = False
    ) -> None:
        """Print `value` as JSON with --json, else the lines: --quiet silences them
        unless they are the `answer` the command was asked for (a path, a URL)."""
        if self.args.json:
            print(json.dumps(value, indent=2, default=str))
        elif answer or not self.args.quiet:
            print(*lines(), sep="\n", flush=True)


def up(run: Run) -> int:
    """`migrate up`, and `migrate` alone: apply the pending files, or rehearse them."""
    a, target = run.args, run.target()
    if a.sql and (a.rehearse or not a.dry_run):
        raise UsageError(
            "--sql prints what --dry-run would apply; add --dry-run"
            + (", without --rehearse" if a.rehearse else "")
        )
    action = "apply migrations to it"
    if a.rehearse:
        action = "rehearse on it (a rehearsal takes the locks the files take)"
    # A rehearsal takes the files' locks on the real tables: a write, even with --dry-run.
    with run.runner(target, writes=a.rehearse or not a.dry_run, action=action) as runner:
        if a.rehearse:
            rehearsals = runner.rehearse(target=a.target)
            run.show(
                console.rehearsal_json(target.description, rehearsals),
                lambda: console.rehearsal_lines(target.description, rehearsals),
            )
            failed = [r for r in rehearsals if r.failed]
            if failed and a.quiet and not a.json:  # the FAILED lines above were silenced
                print(console.rehearsal_failure(failed), file=sys.stderr)
            return 1 if failed else 0

        def server_said(diag: psycopg.errors.Diagnostic) -> None:
            line = console.server_line(diag.severity_nonlocalized, diag.message_primary, a.verbose)
            if line is not None:
                print(line, file=sys.stderr, flush=True)

        runner.conn.add_notice_handler(server_said)
        ticker = console.Ticker(enabled=sys.stderr.isatty() and not a.quiet and not a.json)
        started = time.perf_counter()

        def applied(result: migrations.Result) -> None:
            ticker.stop()
            run.say(*([] if a.json else console.applied_lines(result, sql=a.sql)))

        notes: list[str] = []

        def noted(note: str) -> None:
            notes.append(note)
            run.say(*([] if a.json else [f"  {note}"]))

        results = runner.apply(
            target=a.target,
            dry_run=a.dry_run,
            on_start=ticker.start,
            on_applied=applied,
            on_retry=ticker.retrying,
            on_note=noted,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if a.dump_schema and not a.dry_run:
            from cicd_db import schema

            _write(a.dump_schema, schema.dump(target.settings.for_migrations()))
    summary = console.up_summary(target.description, a.dry_run, len(results), elapsed_ms)
    if a.dump_schema and not a.dry_run:  # not with --json: stdout stays one JSON document
        summary += f"\nschema written to {a.dump_schema}"
    run.show(console.applied_json(target.description, a.dry_run, results, notes), lambda: [summary])
    return 0


def status(run: Run) -> int:
    """`migrate status`: every file and its state; with --exit-code, a verdict."""
    target = run.target()
    with run.runner(target, writes=False) as runner:
        rows = runner.status()
        # What libpq used: the host it reached, its port, whatever PGHOST or a service gave.
        url = target.settings.for_migrations().in_use(runner.conn.info).redacted_url()
    run.show(
        console.status_json(target.description, url, rows),
        lambda: console.status_lines(target.description, rows),
    )
    if not run.args.exit_code:
        return 0
    pending = console.pending(rows)
    return EXIT_DISAGREES if console.disagreements(rows) else EXIT_PENDING if pending else 0


def wait(run: Run) -> int:
    """`migrate wait`: until the target accepts connections."""
    target = run.remember(run.target())
    used = targets.wait(target.settings, run.args.timeout)
    run.say(f"ready: {used.redacted_url()}")
    return 0


def baseline(run: Run) -> int:
    """`migrate baseline`: record files up to --version as applied, once the schema matches."""
    target = run.target()
    with run.runner(target, writes=True, action="baseline it") as runner:
        recorded = runner.baseline(run.args.version)
    run.say(console.baseline_line(target.description, run.args.version, len(recorded)))
    return 0


def new(run: Run) -> int:
    """`migrate new`: write the next file and print its path."""
    path = migrations.new_migration(
        _folder(run), run.args.name, transactional=not run.args.no_transaction
    )
    run.show({"path": str(path)}, lambda: [str(path)], answer=True)
    return 0


def check(run: Run) -> int:
    """`migrate check`: the files, their lint, and a named target's history."""
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
    """`schema dump`: the target's schema, or (no target) the one the files make."""
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
    """`schema diff`: drift against the applied files, or against another database."""
    from cicd_db import schema

    target, against = run.target(), run.args.against
    if against:
        run.remember(target)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", against):  # not a stack's name: a URL
            # (a malformed one too: it is refused as a URL, its password masked)
            root = targets.repository_root()
            other = targets.Target("url", "--against", root, targets.state_home(root), against)
        else:
            other = targets.resolve(stack=against)
        other = run.remember(other)
        with targets.connect(target.settings) as one, targets.connect(other.settings) as two:
            expected, actual = (schema.signature(c, schema.current_schema(c)) for c in (two, one))
            found = schema.compare(expected, actual)
        against = other.description
    else:
        with run.runner(target, writes=False) as runner:
            newest, found = runner.drift()
        against = f"migrations up to version {newest}"
    run.show(
        console.diff_json(target.description, against, found),
        lambda: console.diff_lines(target.description, against, found),
    )
    return EXIT_DRIFT if found else 0


def embedded_server(run: Run) -> int:
    """`embedded start|status|url|stop`: the embedded server."""
    server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
    command = run.args.command
    if command == "stop":
        run.say("stopped" if server.stop() else "not running")
    elif command == "status":
        state = server.status()
        run.show(console.embedded_json(state), lambda: [console.embedded_line(state)])
    else:
        settings = server.settings()
        run.secrets += settings.secrets()
        if command == "url":
            print(settings.url() if run.args.show_password else settings.redacted_url())
        else:
            run.say(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
    return 0


def show_report(run: Run) -> int:
    """`report`: recorded runs, stages and jobs, as a table, JSON or YAML."""
    from cicd_db import report, store  # on use: `migrate` starts faster without the store

    a, target = run.args, run.remember(run.target())
    # Reads only: as the reader where the target has one (docs/security.md).
    with targets.connect(target.role_settings(targets.READER)) as conn:
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


def retention(run: Run) -> int:
    """`retention`: finished runs older than --keep-days deleted, a batch at a time."""
    from cicd_db import retention

    a, target = run.args, run.target()
    if target.remote and not a.dry_run and not a.yes:
        raise UsageError(
            f"{target.description} is a remote database; add --yes to delete runs from it "
            "(or --dry-run to count them first)"
        )
    run.remember(target)
    progress = console.Progress(enabled=sys.stderr.isatty() and not a.quiet and not a.json)
    # As the writer where the target has one: it may delete executions, nothing more.
    with targets.connect(target.role_settings(targets.APP)) as conn:
        try:
            pruned = retention.prune(
                conn,
                keep_days=a.keep_days,
                pipeline=a.pipeline,
                dry_run=a.dry_run,
                batch_size=a.batch_size,
                on_batch=lambda done, found: progress.show(done.runs, found, "runs"),
            )
        finally:
            progress.stop()
    run.show(
        console.pruned_json(target.description, pruned), lambda: [f"{target.description}: {pruned}"]
    )
    return 0


def init_local(run: Run) -> int:
    """`init-local`: ci_user and ci_local on a server you installed."""
    from cicd_db import local

    a, admin = run.args, from_url(run.args.admin_url, what="--admin-url")
    run.secrets += [
        *admin.secrets(),
        a.password or "",
        a.app_password or "",
        a.reader_password or "",
    ]
    with targets.connect(admin) as conn:
        # The URL printed names the host (a socket's folder too) and port libpq used,
        # also when they came from PGHOST, PGPORT or a service file.
        server = admin.in_use(conn.info)
        prepared = local.init(
            conn,
            server,
            a.password,
            user=a.user,
            database=a.database,
            app_password=a.app_password,
            reader_password=a.reader_password,
        )
    run.secrets += [role.password for role in (prepared.app, prepared.reader) if role]
    url = prepared.settings.url() if a.show_password else prepared.settings.redacted_url()
    shown = console.local_json(prepared, url, show_password=a.show_password)
    run.show(shown, lambda: [console.local_line(prepared)])
    if not a.json:
        print(url)
    if (
        (prepared.created_role or prepared.password_reset)
        and not a.password
        and not a.show_password
    ):
        user = prepared.settings.user
        print(
            f"note: {user} got a generated password, not shown; run again with --password to set one you know",
            file=sys.stderr,
        )
    for role in () if a.show_password else prepared.generated:
        flag = "--app-password" if role == APP_USER else "--reader-password"
        print(
            f"note: {role} got a generated password, not shown; run again with {flag} to set one you know",
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
