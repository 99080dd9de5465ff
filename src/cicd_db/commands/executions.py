"""`report`, `insights` and `retention`: the execution history read, and pruned."""

from __future__ import annotations

from pathlib import Path

from cicd_db import console, targets
from cicd_db.commands.context import Context, print_answer, write_answer
from cicd_db.cursors import cancels_named
from cicd_db.errors import UsageError
from cicd_db.retention import DEFAULT_BATCH_SIZE


def show_report(
    ctx: Context,
    *,
    pipeline: str,
    run: int | None = None,
    stage: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    before: int | None = None,
    format: str | None = None,
) -> int:
    """`report`: recorded runs, stages and jobs, as a table, JSON or YAML."""
    from cicd_db import report, store  # on use: `migrate` starts faster without the store

    # The arguments first: a mistake is told as one, even when the server is down.
    report.check_arguments(pipeline, run=run, stage=stage, job=job, limit=limit, before=before)
    shown = _format(ctx, format)
    target = ctx.remember(ctx.target())
    # Reads only: as the reader where the target has one (docs/security.md).
    with targets.connect(target.role_settings(targets.READER)) as conn, cancels_named(conn):
        view = report.fetch(
            store.Store.on(conn),
            pipeline,
            run=run,
            stage=stage,
            job=job,
            limit=limit,
            before=before,
        )
    print_answer(report.render(view, shown), shown)
    return 0


def _format(ctx: Context, format: str | None) -> str:
    """What a read is written as: `format`, or JSON under --json, or a table. --json with
    another format asks for two things (`insights --json --format html -o page.html`
    wrote JSON into the page): refused."""
    if ctx.json and format not in (None, "json"):
        raise UsageError(
            "{json} and {format} " + format + " ask for two formats; give one of them",
            arguments=["json", "format"],
        )
    return "json" if ctx.json else format or "table"


def show_insights(
    ctx: Context,
    *,
    pipeline: str | None = None,
    days: int | None = None,
    runs: int | None = None,
    format: str | None = None,
    output: Path | None = None,
) -> int:
    """`insights`: one pipeline's health over a window, or one line per pipeline."""
    from cicd_db import insights, report

    # The arguments first: a mistake is told as one, even when the server is down.
    insights.check_window(pipeline, days, runs)
    shown = _format(ctx, format)
    target = ctx.remember(ctx.target())
    # Reads only: as the reader where the target has one (docs/security.md).
    with targets.connect(target.role_settings(targets.READER)) as conn, cancels_named(conn):
        found = insights.insights(conn, pipeline, days=days, runs=runs)
    if output is None or str(output) == "-":  # `-o -`: the standard output
        print_answer(insights.render(found, shown), shown)
        return 0
    with report.written_in("utf-8"):  # a file is UTF-8, whatever the terminal writes
        text = insights.render(found, shown)
    write_answer(output, text)
    ctx.show({"output": str(output)}, lambda: [f"insights written to {output}"])
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
    progress = console.Progress(enabled=console.redraws() and not ctx.quiet and not ctx.json)
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
