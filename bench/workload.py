"""The plan's workload, one copy for the upgrade bench (bench/upgrade_under_load.py: a
million runs, timed) and its test (tests/test_upgrade_under_load.py: a few hundred,
checked): rows loaded into the plan's schema, one run's life in the plan's SQL as an
application written for the plan would write it, and what must hold of the rows once
the schema is upgraded under those writers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from .common import one

TABLES = ("pipeline_executions", "stage_executions", "job_executions")
STAGES, JOBS = 5, 4

# Set-based: one INSERT ... SELECT generate_series a table. Loaded rows have ids made
# from their row number under one prefix a table, so children name their parent
# without a join and the loaded rows can be told apart from the writers' (random ids)
# afterwards. Every 50th row has no status (the plan allows it: the backfill's work);
# 1 run in 17 failed.
LOADS: dict[str, LiteralString] = {
    "pipeline_executions": """
        INSERT INTO pipeline_executions
            (id, pipeline_name, commit_hash, status, start_time, completion_time)
        SELECT
            ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
            'pipeline-' || lpad((i %% %(pipelines)s)::text, 3, '0'),
            md5(i::text),
            CASE WHEN i %% 50 = 7 THEN NULL WHEN i %% 17 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
            timestamp '2025-01-01' + i * interval '30 seconds',
            timestamp '2025-01-01' + i * interval '30 seconds' + interval '10 minutes'
        FROM generate_series(0, %(runs)s - 1) AS i
        """,
    "stage_executions": """
        INSERT INTO stage_executions
            (id, pipeline_execution_id, stage_name, execution_order, status,
             start_time, completion_time)
        SELECT
            ('00000001-0000-4000-8000-' || lpad(to_hex(s), 12, '0'))::uuid,
            ('00000000-0000-4000-8000-' || lpad(to_hex(s / 5), 12, '0'))::uuid,
            'stage-' || (s %% 5 + 1),
            s %% 5 + 1,
            CASE WHEN s %% 50 = 7 THEN NULL ELSE 'SUCCESS' END,
            timestamp '2025-01-01' + (s / 5) * interval '30 seconds'
                + (s %% 5) * interval '2 minutes',
            timestamp '2025-01-01' + (s / 5) * interval '30 seconds'
                + (s %% 5) * interval '2 minutes' + interval '110 seconds'
        FROM generate_series(0, %(stages)s - 1) AS s
        """,
    "job_executions": """
        INSERT INTO job_executions
            (id, stage_execution_id, job_name, status, allows_failure,
             start_time, completion_time)
        SELECT
            ('00000002-0000-4000-8000-' || lpad(to_hex(j), 12, '0'))::uuid,
            ('00000001-0000-4000-8000-' || lpad(to_hex(j / 4), 12, '0'))::uuid,
            'job-' || (j %% 4 + 1),
            CASE WHEN j %% 50 = 7 THEN NULL ELSE 'SUCCESS' END,
            j %% 4 = 3,
            timestamp '2025-01-01' + (j / 20) * interval '30 seconds'
                + (j / 4 %% 5) * interval '2 minutes',
            timestamp '2025-01-01' + (j / 20) * interval '30 seconds'
                + (j / 4 %% 5) * interval '2 minutes' + interval '100 seconds'
        FROM generate_series(0, %(jobs)s - 1) AS j
        """,
}


def load(
    conn: psycopg.Connection[Any],
    runs: int,
    pipelines: int,
    loaded: Callable[[str], None] = lambda table: None,
) -> None:
    """Write `runs` runs over `pipelines` pipelines, STAGES stages of JOBS jobs each, into
    the plan's empty tables; `loaded(table)` after each table. Writes."""
    # Products computed here: psycopg sends a small int as a smallint, and the server
    # would multiply within that type.
    counts = {"runs": runs, "pipelines": pipelines, "stages": runs * STAGES}
    counts["jobs"] = counts["stages"] * JOBS
    for table, query in LOADS.items():
        conn.execute(query, counts)
        loaded(table)


# Runs one statement; returns its first row, None when it returns no rows.
Execute = Callable[[LiteralString, list[Any]], tuple[Any, ...] | None]


def executor(conn: psycopg.Connection[Any]) -> Execute:
    def execute(statement: LiteralString, params: list[Any]) -> tuple[Any, ...] | None:
        cursor = conn.execute(statement, params)
        return cursor.fetchone() if cursor.description else None

    return execute


def run_life(execute: Execute, pipeline: str, written: dict[str, list[Any]]) -> None:
    """One run of `pipeline`, whole life, in the plan's SQL: one statement at a time (one
    transaction each on an autocommit connection). The id of each row inserted goes to
    `written[table]` as soon as its INSERT returns; an error ends the life there."""
    run_id = _inserted(
        execute,
        written,
        "pipeline_executions",
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status) "
        "VALUES (%s, %s, 'PENDING') RETURNING id",
        [pipeline, uuid.uuid4().hex[:12]],
    )
    execute(
        "UPDATE pipeline_executions SET status = 'RUNNING', start_time = CURRENT_TIMESTAMP "
        "WHERE id = %s",
        [run_id],
    )
    for order in range(1, STAGES + 1):
        stage_id = _inserted(
            execute,
            written,
            "stage_executions",
            "INSERT INTO stage_executions (pipeline_execution_id, stage_name, "
            "execution_order, status) VALUES (%s, %s, %s, 'PENDING') RETURNING id",
            [run_id, f"stage-{order}", order],
        )
        execute(
            "UPDATE stage_executions SET status = 'RUNNING', "
            "start_time = CURRENT_TIMESTAMP WHERE id = %s",
            [stage_id],
        )
        for job in range(1, JOBS + 1):
            # No status: the plan's column is nullable with no default, so an old
            # application may well leave it out (NULL before 0003, PENDING after).
            job_id = _inserted(
                execute,
                written,
                "job_executions",
                "INSERT INTO job_executions (stage_execution_id, job_name, allows_failure)"
                " VALUES (%s, %s, %s) RETURNING id",
                [stage_id, f"job-{job}", job == JOBS],
            )
            execute(
                "UPDATE job_executions SET status = 'SUCCESS', "
                "completion_time = CURRENT_TIMESTAMP WHERE id = %s",
                [job_id],
            )
        execute(
            "UPDATE stage_executions SET status = 'SUCCESS', "
            "completion_time = CURRENT_TIMESTAMP WHERE id = %s",
            [stage_id],
        )
    # Read the run's times back (a dashboard, a duration): the statement that a
    # prepared plan breaks when the column type changes.
    execute(
        "SELECT status, start_time, completion_time FROM pipeline_executions WHERE id = %s",
        [run_id],
    )
    execute(
        "UPDATE pipeline_executions SET status = 'SUCCESS', "
        "completion_time = CURRENT_TIMESTAMP WHERE id = %s",
        [run_id],
    )


def _inserted(
    execute: Execute,
    written: dict[str, list[Any]],
    table: str,
    statement: LiteralString,
    params: list[Any],
) -> Any:
    row = execute(statement, params)
    assert row is not None, statement
    written.setdefault(table, []).append(row[0])
    return row[0]


# -- what must hold -------------------------------------------------------------------

# Each loaded row as text, times as epochs (which a TIMESTAMP in UTC and its TIMESTAMPTZ
# share) and a NULL status as the PENDING the upgrade makes of it.
_ROW_TEXT = {
    "pipeline_executions": "id, pipeline_name, run_number, commit_hash",
    "stage_executions": "id, pipeline_execution_id, stage_name, execution_order",
    "job_executions": "id, stage_execution_id, job_name, allows_failure",
}
_TIMES = (
    "coalesce(status, 'PENDING'), extract(epoch FROM start_time), "
    "extract(epoch FROM completion_time)"
)

Fingerprint = dict[str, tuple[int, int]]


def fingerprint(conn: psycopg.Connection[Any]) -> Fingerprint:
    """Count and sum of row hashes of the loaded rows of each table. Reads."""
    out = {}
    for table in TABLES:
        low, high = _loaded_ids(table)
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(hashtextextended(ROW({}, {})::text, 0)), 0) "
                "FROM {} WHERE id >= %s::uuid AND id < %s::uuid"
            ).format(sql.SQL(_ROW_TEXT[table]), sql.SQL(_TIMES), sql.Identifier(table)),
            [low, high],
        ).fetchone()
        assert row is not None
        out[table] = (int(row[0]), int(row[1]))
    return out


def checks(
    conn: psycopg.Connection[Any], before: Fingerprint, written: dict[str, list[Any]]
) -> list[tuple[str, bool]]:
    """What must hold after the upgrade, each as (what, whether it held): every loaded row
    kept as it was, every written row there and no other, no NULL status, run numbers
    unique per pipeline. `before` is the fingerprint taken before. Reads."""
    after = fingerprint(conn)
    out = []
    for table in TABLES:
        ids = written.get(table, [])
        total = one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        found = one(
            conn,
            sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s::uuid[])").format(
                sql.Identifier(table)
            ),
            [ids],
        )
        nulls = one(
            conn,
            sql.SQL("SELECT count(*) FROM {} WHERE status IS NULL").format(sql.Identifier(table)),
        )
        out += [
            (f"{table}: every loaded row kept, same hash", before[table] == after[table]),
            (
                f"{table}: {total:,} rows = loaded {before[table][0]:,} + written {len(ids):,}",
                total == before[table][0] + len(ids),
            ),
            (f"{table}: every written row there ({found:,})", found == len(ids)),
            (f"{table}: no status is NULL ({nulls})", nulls == 0),
        ]
    duplicates = one(
        conn,
        "SELECT count(*) FROM (SELECT 1 FROM pipeline_executions "
        "GROUP BY pipeline_name, run_number HAVING count(*) > 1) d",
    )
    out.append((f"run numbers unique per pipeline ({duplicates} duplicates)", duplicates == 0))
    return out


def _loaded_ids(table: str) -> tuple[str, str]:
    """The range of ids the loader gives `table`'s rows: [low, high)."""
    number = TABLES.index(table)
    return (
        f"{number:08x}-0000-0000-0000-000000000000",
        f"{number + 1:08x}-0000-0000-0000-000000000000",
    )
