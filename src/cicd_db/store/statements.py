"""The store's SQL, built once at import: the compare-and-set move of each row type to
each status, finishing and cancelling a run or stage, and the times they stamp. The
module docstring of `cicd_db.store` says why each statement locks what it locks."""

from __future__ import annotations

from functools import cache
from typing import LiteralString

from psycopg import sql

from cicd_db.store.rows import (
    ALLOWED_FROM,
    JOB_COLUMNS,
    RUN_COLUMNS,
    RUNNING,
    STAGE_COLUMNS,
    TABLES,
    PipelineRun,
    StageRun,
)


@cache
def q(template: LiteralString) -> bytes:
    """A query with {run}, {stage} and {job} replaced by those SELECT lists, built once."""
    return (
        sql.SQL(template)
        .format(run=RUN_COLUMNS, stage=STAGE_COLUMNS, job=JOB_COLUMNS)
        .as_bytes(None)
    )


# The time a move stamps when none is given: the clock at the move (clock_timestamp(),
# not now(), which inside a caller's transaction is when that began: a job moved to
# RUNNING and finished in one took no time). A finish that would then come before the
# row's start (one started at a time ahead of the server's clock) is refused, saying
# "now" (moves.py), not moved to the start as a run's or stage's finish is (STAMP).
_CLOCK = sql.SQL("pg_catalog.clock_timestamp()")


def _moves() -> dict[tuple[type, str, bool], bytes]:
    """The compare-and-set UPDATE of each row type to each status, stamped at a time
    given (True: parameters `at`, `id`) or at the clock (False: `id` alone: _CLOCK),
    built once. Two statements rather than coalesce(at, ...): the common move sends one
    parameter fewer, and it is the statement a CI system sends most."""
    moves = {}
    for kind, (table, _, _) in TABLES.items():
        for status, allowed in ALLOWED_FROM.items():
            for timed in (True, False):
                moves[kind, status, timed] = (
                    sql.SQL(
                        "UPDATE {table} SET status = {status}, {stamp} = {at} "
                        "WHERE id = %s AND status IN ({allowed}) "
                        "RETURNING start_time, completion_time"
                    )
                    .format(
                        table=table,
                        status=sql.Literal(status),
                        stamp=sql.Identifier(
                            "start_time" if status == RUNNING else "completion_time"
                        ),
                        at=sql.SQL("%s") if timed else _CLOCK,
                        allowed=sql.SQL(", ").join(map(sql.Literal, allowed)),
                    )
                    .as_bytes(None)
                )
    return moves


MOVES = _moves()

# What finishing a run or stage reads: (what a child is called, each child's status,
# whether it may fail, and name).
CHILDREN: dict[type, tuple[str, LiteralString]] = {
    PipelineRun: (
        "stage",
        "SELECT status, false, stage_name FROM stage_executions WHERE pipeline_execution_id = %s",
    ),
    StageRun: (
        "job",
        "SELECT status, allows_failure, job_name FROM job_executions WHERE stage_execution_id = %s",
    ),
}
# A run's jobs are reached through an array of its stages' ids, which probes the jobs'
# index stage by stage whatever the statistics say (a join could be planned as a scan
# of every job of every run).
# What cancelling a run or stage runs first, in this order (parents before children),
# each with what the rows it cancels are called.
CANCEL_CHILDREN: dict[type, tuple[tuple[str, LiteralString], ...]] = {
    PipelineRun: (
        (
            "stage",
            "UPDATE stage_executions SET status = 'CANCELED', "
            "completion_time = coalesce(%(at)s, pg_catalog.now()) "
            "WHERE pipeline_execution_id = %(parent)s AND status IN ('PENDING', 'RUNNING')",
        ),
        (
            "job",
            "UPDATE job_executions SET status = 'CANCELED', "
            "completion_time = coalesce(%(at)s, pg_catalog.now()) "
            "WHERE stage_execution_id = "
            "ANY(ARRAY(SELECT id FROM stage_executions WHERE pipeline_execution_id = %(parent)s)) "
            "AND status IN ('PENDING', 'RUNNING')",
        ),
    ),
    StageRun: (
        (
            "job",
            "UPDATE job_executions SET status = 'CANCELED', "
            "completion_time = coalesce(%(at)s, pg_catalog.now()) "
            "WHERE stage_execution_id = %(parent)s AND status IN ('PENDING', 'RUNNING')",
        ),
    ),
}


# What cancelling a run or stage locks after the row itself, parent before child, so
# that no child below it can start or be added until it commits.
LOCK_CHILDREN: dict[type, tuple[LiteralString, ...]] = {
    PipelineRun: (
        "SELECT 1 FROM stage_executions WHERE pipeline_execution_id = %(parent)s FOR NO KEY UPDATE",
        "SELECT 1 FROM job_executions WHERE stage_execution_id = "
        "ANY(ARRAY(SELECT id FROM stage_executions WHERE pipeline_execution_id = %(parent)s)) "
        "FOR NO KEY UPDATE",
    ),
    StageRun: (
        "SELECT 1 FROM job_executions WHERE stage_execution_id = %(parent)s FOR NO KEY UPDATE",
    ),
}
# The time finishing or cancelling a run or stage stamps when no `at` is given: the clock
# now (not the transaction's start), or the latest time of the row or a row below it,
# whichever is later (a clock stepped back must not break the order either).
STAMP: dict[type, LiteralString] = {
    PipelineRun: (
        "SELECT greatest(clock_timestamp(), max(greatest(started, finished))) FROM ("
        "SELECT start_time, completion_time FROM pipeline_executions WHERE id = %(parent)s "
        "UNION ALL SELECT start_time, completion_time FROM stage_executions "
        "WHERE pipeline_execution_id = %(parent)s "
        "UNION ALL SELECT j.latest, NULL FROM stage_executions s "
        "CROSS JOIN LATERAL (SELECT max(greatest(start_time, completion_time)) AS latest "
        "FROM job_executions WHERE stage_execution_id = s.id) AS j "
        "WHERE s.pipeline_execution_id = %(parent)s) AS below (started, finished)"
    ),
    StageRun: (
        "SELECT greatest(clock_timestamp(), max(greatest(started, finished))) FROM ("
        "SELECT start_time, completion_time FROM stage_executions WHERE id = %(parent)s "
        "UNION ALL SELECT start_time, completion_time FROM job_executions "
        "WHERE stage_execution_id = %(parent)s) AS below (started, finished)"
    ),
}


# Finishing a run or stage in one statement, its own transaction: the status its
# children give it (or the one asked for), stamped as STAMP stamps, only if it is
# RUNNING, every child has finished, and the row is still the version the statement
# read its children with (`xmin`, the transaction that wrote that version). An adder
# writes a new version of the parent in the statement that adds the children, so if
# one commits while this statement waits for the row, PostgreSQL re-checks the WHERE
# against the new version (READ COMMITTED's update recheck), the version differs, and
# the row is left alone: children this statement's snapshot could not see never go
# unnoticed. A row it leaves alone is looked at again the slow way, under a lock taken
# first, which finishes it if it now may or says exactly why not.
_VERDICT: LiteralString = (
    "SELECT count(*) FILTER (WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELED')) "
    "AS unfinished, CASE WHEN bool_or(status = 'FAILED' AND NOT {allowed}) THEN 'FAILED' "
    "WHEN bool_or(status = 'CANCELED') THEN 'CANCELED' ELSE 'SUCCESS' END AS derived, "
    "greatest(max(greatest(start_time, completion_time)), max(below.latest)) AS latest "
    "FROM {children} {below} WHERE {parent} = %(parent)s"
)
# The latest time of the rows further below (a run's jobs), read in the same pass as
# the children, stage by stage through the jobs' index (a join the planner could turn
# into a scan of every job): STAMP's time, with the row's own start added in FINISH.
_BELOW: dict[type, LiteralString] = {
    PipelineRun: (
        "LEFT JOIN LATERAL (SELECT max(greatest(j.start_time, j.completion_time)) AS latest "
        "FROM job_executions j WHERE j.stage_execution_id = stage_executions.id) AS below ON true"
    ),
    StageRun: "CROSS JOIN (SELECT NULL::pg_catalog.timestamptz AS latest) AS below",
}
VERDICTS: dict[type, sql.Composed] = {
    kind: sql.SQL(_VERDICT).format(
        allowed=allowed,
        below=sql.SQL(_BELOW[kind]),
        children=sql.Identifier(children),
        parent=sql.Identifier(parent),
    )
    for kind, children, parent, allowed in (
        (PipelineRun, "stage_executions", "pipeline_execution_id", sql.SQL("false")),
        (StageRun, "job_executions", "stage_execution_id", sql.Identifier("allows_failure")),
    )
}
# An explicit `at` before a time below the row (a child's or a job's start or
# completion) leaves the row alone too: no completion precedes a time below it. (One
# before the row's own start goes on, to the CHECK that refuses it as such.)
FINISH: dict[type, bytes] = {
    kind: sql.SQL(
        "UPDATE {table} SET status = coalesce(%(status)s, verdict.derived), "
        "completion_time = coalesce(%(at)s, "
        "greatest(clock_timestamp(), {table}.start_time, verdict.latest)) "
        "FROM ({verdict}) AS verdict "
        "WHERE id = %(parent)s AND status = 'RUNNING' AND verdict.unfinished = 0 "
        "AND (%(at)s::pg_catalog.timestamptz IS NULL OR verdict.latest IS NULL "
        "OR %(at)s::pg_catalog.timestamptz >= verdict.latest OR %(at)s::pg_catalog.timestamptz < {table}.start_time) "
        "AND xmin = (SELECT xmin FROM {table} WHERE id = %(parent)s) "
        "RETURNING status, start_time, completion_time"
    )
    .format(table=TABLES[kind][0], verdict=verdict)
    .as_bytes(None)
    for kind, verdict in VERDICTS.items()
}
# The latest time below a run or stage, for the message of an `at` before it.
LATEST_BELOW: dict[type, bytes] = {
    kind: sql.SQL("SELECT verdict.latest FROM ({verdict}) AS verdict")
    .format(verdict=verdict)
    .as_bytes(None)
    for kind, verdict in VERDICTS.items()
}
# Many jobs moved at once, all or none: the jobs locked and counted first (a job
# another writer moved meanwhile is read again once its lock is granted, and left
# out), then moved only if every one of them may move.
BATCH_MOVES: dict[str, bytes] = {
    status: sql.SQL(
        "WITH movable AS (SELECT id FROM job_executions WHERE id = ANY(%(ids)s) "
        "AND status IN ({allowed}) FOR NO KEY UPDATE) "
        "UPDATE job_executions SET status = {status}, {stamp} = coalesce(%(at)s, {clock}) "
        "WHERE id IN (SELECT id FROM movable) "
        "AND (SELECT count(*) FROM movable) = %(count)s "
        "RETURNING id, start_time, completion_time"
    )
    .format(
        allowed=sql.SQL(", ").join(map(sql.Literal, allowed)),
        status=sql.Literal(status),
        stamp=sql.Identifier("start_time" if status == RUNNING else "completion_time"),
        clock=_CLOCK,
    )
    .as_bytes(None)
    for status, allowed in ALLOWED_FROM.items()
}
