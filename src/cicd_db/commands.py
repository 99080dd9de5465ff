"""The commands of `cicd-db` as a Python API: each a typed function that calls the
library, prints what it did and returns the exit code.

    from cicd_db import commands
    code = commands.up(commands.Context(database_url=url), dry_run=True)

A Context holds what every command shares (the database it names, the migrations
folder, how it prints, the secrets to keep out of what it prints); each function's
own keyword arguments are its options, with their defaults. cli.py parses the
command line into one Context and those arguments, and declares the flags and the
help; console.py shapes what these print.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from cicd_db import console, migrations, outputs, targets
from cicd_db.errors import (
    EXIT_DISAGREES,
    EXIT_DRIFT,
    EXIT_LINT,
    EXIT_PENDING,
    CicdDbError,
    ConfigError,
    Interrupted,
    UsageError,
    interrupt_exit_code,
    plural,
)
from cicd_db.redaction import password_candidates
from cicd_db.retention import DEFAULT_BATCH_SIZE
from cicd_db.settings import APP_USER, LOCAL_DATABASE, LOCAL_USER, ConnectionSettings, from_url

WAIT_TIMEOUT = 30.0  # seconds `migrate wait` waits by default


class Context:
    """What every command shares. `Context()` is what the CLI uses when no flag is given:
    the target from DATABASE_URL or the prod stack, the repository's db/migrations.

    A plain class, not a dataclass: the CLI builds its classes at every start, and a
    dataclass takes a millisecond to make. Its fields are its keyword arguments.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        stack: str | None = None,
        local: bool = False,
        migrations_dir: Path | None = None,
        lock_timeout: float = migrations.DEFAULT_LOCK_TIMEOUT,
        json: bool = False,
        quiet: bool = False,
        verbose: bool = False,
    ):
        self.database_url = database_url
        self.stack = stack
        self.local = local
        self.migrations_dir = migrations_dir
        self.lock_timeout = lock_timeout
        self.json = json
        self.quiet = quiet
        self.verbose = verbose
        # Grows as the command reads settings; whoever prints an error redacts with it.
        # Even a URL too broken to parse must not show its password in an error.
        self.secrets = [
            *password_candidates(database_url),
            *password_candidates(os.environ.get("DATABASE_URL")),
            os.environ.get("PGPASSWORD", ""),  # libpq's, for a URL without a password
        ]

    def __repr__(self) -> str:
        given = (
            f"{name}={getattr(self, name)!r}"
            for name, default in FIELDS.items()
            if getattr(self, name) != default
        )
        return f"Context({', '.join(given)})"

    def target(self) -> targets.Target:
        """The target the context names; its settings are read on first use."""
        return targets.resolve(database_url=self.database_url, stack=self.stack, local=self.local)

    def named_target(self) -> targets.Target | None:
        """The target, only when one is named: an argument, or DATABASE_URL."""
        named = (
            self.database_url
            or self.stack
            or self.local
            or os.environ.get("DATABASE_URL", "").strip()
        )
        return self.target() if named else None

    def remember(self, target: targets.Target) -> targets.Target:
        """Read the target's settings, and keep their secrets out of every message."""
        self.secrets += target.settings.secrets() + target.settings.for_migrations().secrets()
        return target

    def folder(self) -> Path:
        return self.migrations_dir or targets.repository_root() / targets.MIGRATIONS_FOLDER

    @contextmanager
    def runner(
        self,
        target: targets.Target,
        *,
        writes: bool,
        yes: bool = False,
        action: str = "apply migrations to it",
        retries: int = migrations.DEFAULT_RETRIES,
        retry_budget: float = migrations.DEFAULT_RETRY_BUDGET,
    ) -> Iterator[migrations.Runner]:
        with migrations.open_runner(
            target,
            folder=self.folder(),
            writes=writes,
            yes=yes,
            action=action,
            lock_timeout=self.lock_timeout,
            retries=retries,
            retry_budget=retry_budget,
        ) as runner:
            self.remember(target)
            yield runner

    def say(self, *lines: str) -> None:
        if lines and not self.quiet:
            console.print_lines(*lines)

    def show(
        self, value: console.JSON, lines: Callable[[], list[str]], *, answer: bool = False
    ) -> None:
        """Print `value` as JSON with `json`, else the lines: `quiet` silences them
        unless they are the `answer` the command was asked for (a path, a URL)."""
        if self.json:
            print(json.dumps(value, indent=2, default=str))
        elif answer or not self.quiet:
            console.print_lines(*lines())


def keyword_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """`func`'s keyword-only arguments and their defaults, from its signature (which a
    wrapper that sets __signature__, as mutation testing's do, keeps)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(func).parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY and parameter.default is not parameter.empty
    }


# Each field of a Context and its default.
FIELDS: dict[str, Any] = keyword_defaults(Context.__init__)


def up(
    ctx: Context,
    *,
    dry_run: bool = False,
    sql: bool = False,
    target: int | None = None,
    yes: bool = False,
    retries: int = migrations.DEFAULT_RETRIES,
    retry_budget: float = migrations.DEFAULT_RETRY_BUDGET,
    rehearse: bool = False,
    dump_schema: Path | None = None,
) -> int:
    """`migrate up`, and `migrate` alone: apply the pending files up to `target`, or
    list them (`dry_run`, with their text: `sql`), or rehearse them; `yes` confirms
    writing to a remote stack; `dump_schema` writes the schema afterwards."""
    where = ctx.target()
    if dump_schema is not None and str(dump_schema) == "-":
        # Elsewhere `-o -` is standard output; here it would have made a file named `-`.
        raise UsageError(
            "{dump_schema} - would mix the schema with the run's lines on standard output; "
            "give a path, or run `cicd-db schema dump` after the run",
            arguments=["dump_schema"],
        )
    if dump_schema and (dry_run or rehearse):
        raise UsageError(
            "{dump_schema} writes the schema once files are applied, and {given} applies "
            "none; leave one of them out",
            arguments=["dump_schema", "rehearse" if rehearse else "dry_run"],
            values={"given": "--rehearse" if rehearse else "--dry-run"},
        )
    if sql and (rehearse or not dry_run):
        raise UsageError(
            "{sql} prints what {dry_run} would apply; add {dry_run}"
            + (", without {rehearse}" if rehearse else ""),
            arguments=["sql", "dry_run", "rehearse"],
        )
    action = "apply migrations to it"
    if rehearse:
        action = "rehearse on it (a rehearsal takes the locks the files take)"
    with ctx.runner(
        where,
        # A rehearsal takes the files' locks on the real tables: a write, even dry.
        writes=rehearse or not dry_run,
        yes=yes,
        action=action,
        retries=retries,
        retry_budget=retry_budget,
    ) as runner:
        # What a run up to `target` leaves pending above it: said, never "up to date".
        # Read before it runs: after, an interrupt there would hide what was applied.
        beyond = 0
        if target is not None:
            beyond = sum(row.state == "pending" and row.version > target for row in runner.status())
        if rehearse:
            rehearsals = runner.rehearse(target=target)
            ctx.show(
                console.rehearsal_json(where.description, rehearsals, beyond=beyond),
                lambda: console.rehearsal_lines(
                    where.description, rehearsals, target=target, beyond=beyond
                ),
            )
            failed = [r for r in rehearsals if r.failed]
            if failed and ctx.quiet and not ctx.json:  # the FAILED lines above were silenced
                console.print_lines(console.rehearsal_failure(failed), file=sys.stderr)
            return 1 if failed else 0

        def server_said(diag: psycopg.errors.Diagnostic) -> None:
            line = console.server_line(
                diag.severity_nonlocalized, diag.message_primary, ctx.verbose
            )
            if line is not None:
                console.print_lines(line, file=sys.stderr)

        runner.conn.add_notice_handler(server_said)
        ticker = console.Ticker(enabled=sys.stderr.isatty() and not ctx.quiet and not ctx.json)
        started = time.perf_counter()

        so_far: list[migrations.Result] = []

        def applied(result: migrations.Result) -> None:
            so_far.append(result)
            ticker.stop()
            ctx.say(*([] if ctx.json else console.applied_lines(result, sql=sql)))

        notes: list[str] = []

        def noted(note: str) -> None:
            notes.append(note)
            ctx.say(*([] if ctx.json else [f"  {note}"]))

        try:
            results = runner.apply(
                target=target,
                dry_run=dry_run,
                on_start=ticker.start,
                on_applied=applied,
                on_retry=ticker.retrying,
                on_note=noted,
            )
        except KeyboardInterrupt as interrupt:
            # Not during a file (that is the runner's own Interrupted): before the first,
            # or between two, where the last file named may not be the last applied (its
            # commit comes before its line): `migrate status` is what says.
            if dry_run:
                said = "interrupted; a dry run applies nothing"
            elif so_far:
                said = (
                    f"interrupted between files, after {so_far[-1].migration.filename}; "
                    "`migrate status` shows what was applied"
                )
            else:
                said = "interrupted before any file ran"
            raise Interrupted(
                said,
                exit_code=interrupt_exit_code(interrupt),
            ) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        if dump_schema and not dry_run:
            from cicd_db import schema

            # A failure or an interrupt now leaves the files applied: say so first.
            done = f"applied {plural(len(results), 'migration')}, but the schema was not written"
            to_path = f" to {dump_schema}"  # _write's own error names it
            try:
                text = schema.dump(where.settings.for_migrations())
                to_path = ""
                _write(dump_schema, text)
            except CicdDbError as error:  # a file changed the login's password, say
                raise error.after(done + to_path) from None
            except KeyboardInterrupt as interrupt:
                raise Interrupted(
                    f"{done}: interrupted", exit_code=interrupt_exit_code(interrupt)
                ) from None
    summary = [
        console.up_summary(
            where.description, dry_run, len(results), elapsed_ms, target=target, beyond=beyond
        )
    ]
    if dump_schema and not dry_run:  # not with --json: stdout stays one JSON document
        summary.append(f"schema written to {dump_schema}")
    ctx.show(console.applied_json(where.description, dry_run, results, notes), lambda: summary)
    return 0


def status(ctx: Context, *, exit_code: bool = False) -> int:
    """`migrate status`: every file and its state. With `exit_code`, a verdict:
    EXIT_DISAGREES when a file and the history disagree, else EXIT_PENDING when a
    file is pending, else 0."""
    target = ctx.target()
    with ctx.runner(target, writes=False) as runner:
        rows = runner.status()
        # What libpq used: the host it reached, its port, whatever PGHOST or a service gave.
        url = target.settings.for_migrations().in_use(runner.conn.info).redacted_url()
    ctx.show(
        console.status_json(target.description, url, rows),
        lambda: console.status_lines(target.description, rows),
    )
    if not exit_code:
        return 0
    if any(row.disagrees for row in rows):
        return EXIT_DISAGREES
    return EXIT_PENDING if any(row.state == "pending" for row in rows) else 0


def wait(ctx: Context, *, timeout: float = WAIT_TIMEOUT) -> int:
    """`migrate wait`: until the target accepts connections, at most `timeout` seconds."""
    target = ctx.remember(ctx.target())
    used = targets.wait(target.settings, timeout)
    ctx.say(f"ready: {used.redacted_url()}")
    return 0


def baseline(ctx: Context, *, version: int, yes: bool = False) -> int:
    """`migrate baseline`: record files up to `version` as applied, once the schema matches."""
    target = ctx.target()
    with ctx.runner(target, writes=True, yes=yes, action="baseline it") as runner:
        recorded = runner.baseline(version)
    ctx.say(console.baseline_line(target.description, version, len(recorded)))
    return 0


def new(ctx: Context, name: str, *, transactional: bool = True) -> int:
    """`migrate new`: write the next file and print its path."""
    path = migrations.new_migration(ctx.folder(), name, transactional=transactional)
    ctx.show({"path": str(path)}, lambda: [str(path)], answer=True)
    return 0


def check(ctx: Context, *, lint: bool = True) -> int:
    """`migrate check`: the files, their lint (unless not `lint`), and a named target's history."""
    from cicd_db import lint as linter

    files = migrations.discover(ctx.folder())
    reports = linter.lint(files, targets.repository_root()) if lint else []
    target, rows = ctx.named_target(), []
    if target is not None:
        with ctx.runner(target, writes=False) as runner:
            rows = [row for row in runner.status() if row.disagrees]
    shown = (len(files), reports, target.description if target else None, rows)
    ctx.show(console.check_json(*shown), lambda: console.check_lines(*shown))
    return EXIT_DISAGREES if rows else EXIT_LINT if any(not r.passed for r in reports) else 0


def schema_dump(ctx: Context, *, output: Path | None = None) -> int:
    """`schema dump`: the target's schema, or (no target) the one the files make."""
    from cicd_db import schema

    target = ctx.named_target()
    if target is None:
        text = migrations.scratch_dump(migrations.discover(ctx.folder()))
    else:
        text = schema.dump(ctx.remember(target).settings.for_migrations())
    if not output or str(output) == "-":  # `-o -`: the standard output, as most tools take it
        outputs.print_document(text)
        return 0
    _write(output, text)
    ctx.say(f"schema written to {output}")
    return 0


def schema_diff(ctx: Context, *, against: str | None = None) -> int:
    """`schema diff`: drift against the applied files, or against another database."""
    from cicd_db import schema

    if against is not None and not against.strip():
        raise UsageError(
            "{against} is empty; name a stack or a postgresql:// URL, or leave it out to "
            "compare with the files",
            arguments=["against"],
        )
    stack_name = against is not None and re.fullmatch(r"[A-Za-z0-9_.-]+", against)
    if stack_name and against not in (known := targets.known_stacks(targets.repository_root())):
        # No stack of this checkout: perhaps a URL typed without its scheme, so a
        # password; never echoed (a stack's own name is, in the messages below).
        raise UsageError(
            "{against} names no stack here and is no URL (its value is not shown: it may "
            f"hold a password); give one of {', '.join(known)}, or a postgresql:// URL",
            arguments=["against"],
        )
    if against and not stack_name:  # a URL: what may be its password is never shown
        ctx.secrets += password_candidates(against)
    target = ctx.target()
    if against:
        ctx.remember(target)
        if not stack_name:  # not a stack's name: a URL
            # (a malformed one too: it is refused as a URL, its password masked)
            root = targets.repository_root()
            other = targets.Target("url", "--against", root, targets.state_home(root), against)
        else:
            other = targets.resolve(stack=against)
        other = ctx.remember(other)
        with targets.connect(target.settings) as one, targets.connect(other.settings) as two:
            ours = schema.current_schema(one)
            expected = schema.signature(two, schema.current_schema(two), as_schema=ours)
            actual = schema.signature(one, ours)
            found = schema.compare(expected, actual)
        against = other.description
    else:
        with ctx.runner(target, writes=False) as runner:
            newest, found = runner.drift()
        against = f"migrations up to version {newest}"
    ctx.show(
        console.diff_json(target.description, against, found),
        lambda: console.diff_lines(target.description, against, found),
    )
    return EXIT_DRIFT if found else 0


def embedded_start(ctx: Context) -> int:
    """`embedded start`: the embedded server, created on first use, running."""
    settings = _embedded_settings(ctx)
    ctx.say(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
    return 0


def embedded_status(ctx: Context) -> int:
    """`embedded status`: is it running, where, on which port."""
    state = targets.resolve(stack=targets.EMBEDDED).embedded_server().status()
    ctx.show(console.embedded_json(state), lambda: [console.embedded_line(state)])
    return 0


def embedded_url(ctx: Context, *, show_password: bool = False) -> int:
    """`embedded url`: the URL of ci_local (started if need be), its password hidden
    unless `show_password`."""
    settings = _embedded_settings(ctx)
    print(settings.url() if show_password else settings.redacted_url())
    return 0


def embedded_stop(ctx: Context) -> int:
    """`embedded stop`: the server stopped; its data stays."""
    server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
    ctx.say("stopped" if server.stop() else "not running")
    return 0


def show_report(
    ctx: Context,
    *,
    pipeline: str,
    run: int | None = None,
    stage: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    before: int | None = None,
    format: str = "table",
) -> int:
    """`report`: recorded runs, stages and jobs, as a table, JSON or YAML."""
    from cicd_db import report, store  # on use: `migrate` starts faster without the store

    target = ctx.remember(ctx.target())
    # Reads only: as the reader where the target has one (docs/security.md).
    with targets.connect(target.role_settings(targets.READER)) as conn:
        view = report.fetch(
            store.Store.on(conn),
            pipeline,
            run=run,
            stage=stage,
            job=job,
            limit=limit,
            before=before,
        )
    shown = "json" if ctx.json else format
    _print_answer(report.render(view, shown), shown)
    return 0


def show_insights(
    ctx: Context,
    *,
    pipeline: str | None = None,
    days: int | None = None,
    runs: int | None = None,
    format: str = "table",
    output: Path | None = None,
) -> int:
    """`insights`: one pipeline's health over a window, or one line per pipeline."""
    from cicd_db import insights

    target = ctx.remember(ctx.target())
    # Reads only: as the reader where the target has one (docs/security.md).
    with targets.connect(target.role_settings(targets.READER)) as conn:
        found = insights.insights(conn, pipeline, days=days, runs=runs)
    shown = "json" if ctx.json else format
    text = insights.render(found, shown)
    if output is None or str(output) == "-":  # `-o -`: the standard output
        _print_answer(text, shown)
        return 0
    _write(output, text)
    ctx.say(f"insights written to {output}")
    return 0


def retention(
    ctx: Context,
    *,
    keep_days: int,
    pipeline: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    yes: bool = False,
) -> int:
    """`retention`: finished runs older than `keep_days` deleted, a batch at a time."""
    from cicd_db.retention import prune

    target = ctx.target()
    if target.remote and not dry_run and not yes:
        raise UsageError(
            "{target} is a remote database; add {yes} to delete runs from it "
            "(or {dry_run} to count them first)",
            arguments=["yes", "dry_run"],
            values={"target": target.description},
        )
    ctx.remember(target)
    progress = console.Progress(enabled=sys.stderr.isatty() and not ctx.quiet and not ctx.json)
    # As the writer where the target has one: it may delete executions, nothing more.
    with targets.connect(target.role_settings(targets.APP)) as conn:
        try:
            pruned = prune(
                conn,
                keep_days=keep_days,
                pipeline=pipeline,
                dry_run=dry_run,
                batch_size=batch_size,
                on_batch=lambda done, found: progress.show(done.runs, found, "runs"),
            )
        finally:
            progress.stop()
    ctx.show(
        console.pruned_json(target.description, pruned), lambda: [f"{target.description}: {pruned}"]
    )
    return 0


def init_local(
    ctx: Context,
    *,
    admin_url: str,
    password: str | None = None,
    show_password: bool = False,
    app_password: str | None = None,
    reader_password: str | None = None,
    user: str = LOCAL_USER,
    database: str = LOCAL_DATABASE,
) -> int:
    """`init-local`: `user` and `database` (ci_user, ci_local), the writer ci_app and the
    reader ci_reader on a server you installed, through `admin_url`; each password given,
    else one is generated for a new role."""
    from cicd_db import local

    ctx.secrets += [
        *password_candidates(admin_url),
        password or "",
        app_password or "",
        reader_password or "",
    ]
    admin = from_url(admin_url, what="--admin-url")
    ctx.secrets += admin.secrets()
    with targets.connect(admin) as conn:
        # The URL printed names the host (a socket's folder too) and port libpq used,
        # also when they came from PGHOST, PGPORT or a service file.
        server = admin.in_use(conn.info)
        prepared = local.init(
            conn,
            server,
            password,
            user=user,
            database=database,
            app_password=app_password,
            reader_password=reader_password,
        )
    ctx.secrets += [role.password for role in (prepared.app, prepared.reader) if role]
    url = prepared.settings.url() if show_password else prepared.settings.redacted_url()
    shown = console.local_json(prepared, url, show_password=show_password)
    ctx.show(shown, lambda: [console.local_line(prepared)])
    if not ctx.json:
        print(url)
    if (prepared.created_role or prepared.password_reset) and not password and not show_password:
        print(
            f"note: {prepared.settings.user} got a generated password, not shown; run again "
            "with --password to set one you know",
            file=sys.stderr,
        )
    for role in () if show_password else prepared.generated:
        flag = "--app-password" if role == APP_USER else "--reader-password"
        print(
            f"note: {role} got a generated password, not shown; run again with {flag} to set "
            "one you know",
            file=sys.stderr,
        )
    return 0


def _embedded_settings(ctx: Context) -> ConnectionSettings:
    """The running embedded server's settings (started if need be), its secrets remembered."""
    settings = targets.resolve(stack=targets.EMBEDDED).embedded_server().settings()
    ctx.secrets += settings.secrets()
    return settings


def _print_answer(text: str, shown: str) -> None:
    """A table for the terminal, in its encoding (cli.standard_output escapes what it
    lacks); any other format is a document, as UTF-8 (outputs.print_document)."""
    if shown == "table":
        sys.stdout.write(text)
    else:
        outputs.print_document(text)


def _write(path: Path, text: str) -> None:
    """`text` into the file `path`, whole or not at all (outputs.write_file)."""
    try:
        outputs.write_file(path, text)
    except BrokenPipeError:  # `-o /dev/stdout | head`: told as `-o -` is (cli.main)
        raise
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; pick another path") from None
