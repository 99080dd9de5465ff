"""`migrate up`, `status`, `wait`, `baseline`, `new` and `check`: the runner's commands."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg

from cicd_db import console, migrations, outputs, targets
from cicd_db.commands.context import Context, write_answer
from cicd_db.errors import (
    EXIT_DISAGREES,
    EXIT_LINT,
    EXIT_PENDING,
    CicdDbError,
    ConfigError,
    Interrupted,
    UsageError,
    interrupt_exit_code,
    plural,
)

WAIT_TIMEOUT = 30.0  # seconds `migrate wait` waits by default


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
    _check_up_options(dry_run=dry_run, sql=sql, rehearse=rehearse, dump_schema=dump_schema)
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
        beyond, applied_above = 0, None
        if target is not None:
            rows = runner.status()
            beyond = sum(row.state == "pending" and row.version > target for row in rows)
            applied_above = max(
                (row.version for row in rows if row.applied_at and row.version > target),
                default=None,
            )
        if rehearse:
            return _rehearse(ctx, runner, where, target=target, beyond=beyond)
        started = time.perf_counter()
        results: list[migrations.Result] = []
        notes: list[str] = []
        try:
            _apply(ctx, runner, results, notes, target=target, dry_run=dry_run, sql=sql)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if dump_schema and not dry_run:
                _dump_schema_after(where, dump_schema, applied=len(results))
        except BaseException:  # whatever stops it: a failure, a signal, the output
            # A deploy job that reads --json learns what reached the database before
            # the error (on stderr), as the lines say it without --json; also when the
            # schema could not be written after the files.
            if ctx.json and not dry_run:
                ctx.show(
                    console.applied_json(
                        where.description, dry_run, results, notes, completed=False
                    ),
                    list,
                )
            raise
    summary = [
        console.up_summary(
            where.description,
            dry_run,
            len(results),
            elapsed_ms,
            target=target,
            beyond=beyond,
            applied_above=applied_above,
        )
    ]
    if dump_schema and not dry_run:  # not with --json: stdout stays one JSON document
        summary.append(f"schema written to {dump_schema}")
    ctx.show(console.applied_json(where.description, dry_run, results, notes), lambda: summary)
    return 0


def _check_up_options(
    *, dry_run: bool, sql: bool, rehearse: bool, dump_schema: Path | None
) -> None:
    """Refuse the options of `migrate up` that do not go together, before connecting."""
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
    if dump_schema is not None and not dry_run and not rehearse:
        # Checked before any file runs: refused after them, the schema was lost and the
        # files applied, to be dumped again by hand.
        try:
            outputs.check_writable(dump_schema)
        except OSError as error:
            raise ConfigError(
                f"cannot write {dump_schema}: {error.strerror}; pick another path "
                "(nothing was applied)"
            ) from None
    if sql and (rehearse or not dry_run):
        raise UsageError(
            "{sql} prints what {dry_run} would apply; add {dry_run}"
            + (", without {rehearse}" if rehearse else ""),
            arguments=["sql", "dry_run", "rehearse"],
        )


def _rehearse(
    ctx: Context,
    runner: migrations.Runner,
    where: targets.Target,
    *,
    target: int | None,
    beyond: int,
) -> int:
    """`migrate up --rehearse`: each pending file run and rolled back; 1 if one failed."""
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


def _apply(
    ctx: Context,
    runner: migrations.Runner,
    so_far: list[migrations.Result],
    notes: list[str],
    *,
    target: int | None,
    dry_run: bool,
    sql: bool,
) -> None:
    """Apply (or list) the pending files, a line for each as it is applied, the server's
    notices on standard error and a ticker on a terminal; each result and each of the
    runner's notes is added to `so_far` and `notes` as it comes. An interrupt between
    files is said with what was applied."""

    def server_said(diag: psycopg.errors.Diagnostic) -> None:
        line = console.server_line(diag.severity_nonlocalized, diag.message_primary, ctx.verbose)
        if line is not None:
            console.print_lines(line, file=sys.stderr)

    runner.add_notice_handler(server_said)
    ticker = console.Ticker(enabled=console.redraws() and not ctx.quiet and not ctx.json)

    def applied(result: migrations.Result) -> None:
        so_far.append(result)
        ticker.stop()
        ctx.say(*([] if ctx.json else console.applied_lines(result, sql=sql)))

    def noted(note: str) -> None:
        notes.append(note)
        ctx.say(*([] if ctx.json else [f"  {note}"]))

    try:
        runner.apply(
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
        raise Interrupted(said, exit_code=interrupt_exit_code(interrupt)) from None


def _dump_schema_after(where: targets.Target, path: Path, *, applied: int) -> None:
    """`--dump-schema PATH`: the schema written once the files are applied. A failure or
    an interrupt now leaves the files applied, which its message says first."""
    from cicd_db import schema

    done = f"applied {plural(applied, 'migration')}, but the schema was not written"
    to_path = f" to {path}"  # write_answer's own error names it
    try:
        text = schema.dump(where.settings.for_migrations())
        to_path = ""
        write_answer(path, text)
    except CicdDbError as error:  # a file changed the login's password, say
        raise error.after(done + to_path) from None
    except KeyboardInterrupt as interrupt:
        raise Interrupted(
            f"{done}: interrupted", exit_code=interrupt_exit_code(interrupt)
        ) from None


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
    url = used.redacted_url()
    ctx.show({"target": target.description, "ready": True, "url": url}, lambda: [f"ready: {url}"])
    return 0


def baseline(ctx: Context, *, version: int, yes: bool = False) -> int:
    """`migrate baseline`: record files up to `version` as applied, once the schema matches."""
    target = ctx.target()
    with ctx.runner(target, writes=True, yes=yes, action="baseline it") as runner:
        recorded = runner.baseline(version)
    ctx.show(
        {"target": target.description, "version": version, "recorded": len(recorded)},
        lambda: [console.baseline_line(target.description, version, len(recorded))],
    )
    return 0


def new(ctx: Context, name: str, *, transactional: bool = True) -> int:
    """`migrate new`: write the next file and print its path."""
    path = migrations.new_migration(ctx.folder(), name, transactional=transactional)
    # As a person would name it from here (`db/migrations/0039_x.sql` from the checkout);
    # the folder left out is the repository's, which is absolute.
    here = Path.cwd()
    shown = path.relative_to(here) if path.is_absolute() and path.is_relative_to(here) else path
    ctx.show({"path": str(path)}, lambda: [str(shown)], answer=True)
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
