"""Reading and recording through a real PgBouncer (the runner's side is in
tests/migrations/test_poolers.py): one that refuses cicd-db's start-up options is named
with its fix, and one that drops them reads as the server itself (helper-117)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from cicd_db.store import RUNNING, SUCCESS, Store

from .fix_cli import Run, run_cli
from .fix_db import Database
from .fix_pooler import pgbouncer

COMMANDS = [
    ("report", "--pipeline", "build", "--format", "json"),
    ("report", "--pipeline", "build", "--run", "1"),
    ("insights", "--pipeline", "build", "--format", "json"),
    ("retention", "--keep-days", "30", "--dry-run"),
]


def recorded(database: Database) -> None:
    """A run that took 1 day, 2 hours and 3 seconds: intervals and times to read."""
    with database.connect() as conn:
        store = Store.on(conn)
        start = datetime.now(UTC) - timedelta(days=3)
        run = store.set_status(store.start_run("build", "c1"), RUNNING, at=start)
        stage = store.set_status(store.add_stage(run, "test", 1), RUNNING, at=start)
        [job] = store.add_jobs(stage, [("unit", False)])
        job = store.set_status(job, RUNNING, at=start)
        end = start + timedelta(days=1, hours=2, seconds=3)
        store.set_status(job, SUCCESS, at=end)
        store.finish_stage(stage, at=end)
        store.finish_run(run, at=end)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: "-".join(args[:2]))
def test_a_pooler_that_refuses_the_start_up_options_is_named_with_its_fix(
    migrated: Database, args: tuple[str, ...]
) -> None:
    with pgbouncer(migrated, "transaction", ignore_options=False) as pooled:
        code, out, err = run_cli(*args, "--database-url", pooled.url)
    assert (code, out) == (2, "")
    assert err == (
        f"error: {pooled.settings.where}: unsupported startup parameter: options; a "
        "connection pooler (PgBouncer) passes on only the start-up parameters it is told "
        "to, and cicd-db sends its session's settings in options: connect to PostgreSQL "
        "itself, or add options to the pooler's ignore_startup_parameters (cicd-db then "
        "sets again what its reports need)\n"
    )


def same(run: Run, where: str) -> Run:
    """A run's output with its target and the clock's times masked."""

    def masked(text: str) -> str:
        return re.sub(r"\d\d:\d\d:\d\d(\.\d+)?", "TIME", text.replace(where, "TARGET"))

    return Run(run.code, masked(run.out), masked(run.err))


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_through_a_pooler_that_drops_the_options_reads_are_the_servers(
    migrated: Database, mode: str
) -> None:
    """The options set the styles cicd-db reads dates and intervals in; a pooler that
    drops them leaves the database's own (here the most unlike ISO): DateStyle is set
    again (PgBouncer keeps it per client), IntervalStyle need not be (a SET of it would
    stay on a pooled session for other clients: PgBouncer before 1.20 does not keep it). A pooler in statement mode runs no transaction: what needs one is refused
    in one line, with the fix."""
    recorded(migrated)
    migrated.execute(
        sql.SQL(
            "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; "
            "ALTER DATABASE {} SET IntervalStyle = 'sql_standard'"
        ).format(sql.Identifier(migrated.name), sql.Identifier(migrated.name))
    )
    direct = [same(run_cli(*args, "--database-url", migrated.url), migrated.settings.where) for args in COMMANDS]  # fmt: skip
    assert [run.code for run in direct] == [0] * len(COMMANDS), direct
    with pgbouncer(migrated, mode) as pooled:
        through = [same(run_cli(*args, "--database-url", pooled.url), pooled.settings.where) for args in COMMANDS]  # fmt: skip
    if mode != "statement":
        assert through == direct
        return
    assert through[:2] == direct[:2]  # a report reads in single statements
    told = (
        "error: transaction blocks not allowed in statement pooling mode: the target is a "
        "connection pooler in statement mode (PgBouncer's pool_mode = statement), which runs "
        "no transaction of more than one statement, and cicd-db needs them{done}; connect to "
        "PostgreSQL itself, or to the pooler's session or transaction mode\n"
    )
    assert through[2] == Run(2, "", told.format(done=""))
    assert through[3] == direct[3]  # a dry run counts in single statements
    with pgbouncer(migrated, mode) as pooled:
        code, out, err = run_cli("retention", "--keep-days", "1", "--database-url", pooled.url)
    assert (code, out) == (2, ""), err
    assert err == told.format(
        done="; nothing was deleted; the batch in progress was rolled back, and no run was "
        "left half-deleted"
    )
    assert migrated.query("SELECT count(*) FROM pipeline_executions") == [(1,)]
