"""The execution store: what the CI/CD system writes as pipelines run, and reads back.

A pipeline run has stages, a stage has jobs, and each of the three moves through

    PENDING -> RUNNING -> SUCCESS | FAILED | CANCELED
    PENDING -> CANCELED

and never out of a finished status. A move sets the times: RUNNING sets
`start_time` (NULL while PENDING), a finished status sets `completion_time`. Each move is one
`UPDATE ... WHERE status IN (allowed)`, so an illegal or concurrent move
changes nothing and raises IllegalTransition.

Finishing a stage (`finish_stage`) derives its status from its jobs, and
finishing a run (`finish_run`) from its stages: FAILED if any child failed (a job
that allows failure does not count), else CANCELED if any was cancelled, else
SUCCESS. Run numbers count per pipeline and are allocated by the database
(migration 0016), so concurrent writers never share or skip one.

Methods that start with `add_`, `start_`, `set_`, `finish_` or `cancel_` write,
each in one transaction; the others only read. `set_statuses` moves many jobs in
one statement, all or none.

A finished run or stage never has an unfinished child, however writers race:
- Adding a stage or jobs writes a new version of the parent row (an UPDATE that
  changes nothing, in the INSERT's own statement), which locks it FOR NO KEY
  UPDATE, and inserts only if the parent is PENDING or RUNNING. Adders of one
  parent therefore take turns; adders of different parents never meet.
- Finishing a run or stage is one statement that reads the children and updates
  the row only if it is still the version it read them with. An adder that commits
  while that statement waits for the row leaves a new version, so the statement
  leaves the row alone and the slow way runs: lock the row, then read the children
  as they are now. An adder that waits for the finisher instead sees the parent
  finished and writes nothing.
- Cancelling, and the slow way of finishing, first lock the row FOR NO KEY UPDATE
  (the lock an adder's UPDATE takes too), then read or cancel its children. So an
  adder either commits before that lock is granted, and the children it added are
  seen and cancelled (or keep the parent from finishing), or it waits, sees the
  parent finished and writes nothing. NO KEY UPDATE, not UPDATE: no key changes,
  and it lets foreign key checks (FOR KEY SHARE) through.
- Locks are taken parent before child, run, then stages, then jobs, so two writers
  never wait on each other in a cycle.

Without an explicit `at`, finishing or cancelling a run or stage stamps it (and the
children it cancels) with one time read once no row below it can move (all finished,
or locked): the later of the clock and every start and completion time below it. Not
the time its transaction began: a child that started after that, and committed before
the lock was granted, would have started after its parent finished, which the tables'
CHECKs (and common sense) forbid. With an explicit `at` earlier than that, the move
is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from functools import cache
from typing import Any, LiteralString, TypeVar
from uuid import UUID

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row, tuple_row

from cicd_db.errors import (
    AlreadyExists,
    IllegalTransition,
    NotFound,
    UsageError,
    check_name,
    check_time,
)

PENDING, RUNNING, SUCCESS, FAILED, CANCELED = "PENDING", "RUNNING", "SUCCESS", "FAILED", "CANCELED"
STATUSES = (PENDING, RUNNING, SUCCESS, FAILED, CANCELED)
FINISHED = frozenset({SUCCESS, FAILED, CANCELED})
# Which statuses may move to each status.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    RUNNING: (PENDING,),
    SUCCESS: (RUNNING,),
    FAILED: (RUNNING,),
    CANCELED: (PENDING, RUNNING),
}


@dataclass(frozen=True)
class _Timed:
    status: str
    start_time: datetime | None
    completion_time: datetime | None

    @property
    def duration(self) -> timedelta | None:
        if self.start_time is None or self.completion_time is None:
            return None
        return self.completion_time - self.start_time


@dataclass(frozen=True)
class PipelineRun(_Timed):
    id: UUID
    pipeline_name: str
    run_number: int
    commit_hash: str


@dataclass(frozen=True)
class StageRun(_Timed):
    id: UUID
    pipeline_execution_id: UUID
    stage_name: str
    execution_order: int


@dataclass(frozen=True)
class JobRun(_Timed):
    id: UUID
    stage_execution_id: UUID
    job_name: str
    allows_failure: bool


Row = TypeVar("Row", PipelineRun, StageRun, JobRun)


def _columns(kind: type) -> sql.Composed:
    """The SELECT list of a row type: its dataclass fields, so the two never disagree."""
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(kind))


_new = object.__new__
_set = object.__setattr__


def _moved(row: Row, status: str, start_time: Any, completion_time: Any) -> Row:
    """`row` with a new status and times. Only those can differ (nothing else of a row
    ever changes), so its other fields are copied as they are: a copy of its __dict__
    takes a third of the time of the frozen dataclass's __init__, which sets each field
    through object.__setattr__ (on the hot path: a CI system moves jobs all day)."""
    moved = _new(type(row))
    values = row.__dict__.copy()
    values["status"] = status
    values["start_time"] = start_time
    values["completion_time"] = completion_time
    _set(moved, "__dict__", values)
    return moved


def _pending_job(job_id: UUID, stage_id: UUID, job_name: str, allows_failure: bool) -> JobRun:
    """JobRun(PENDING, None, None, ...), made as _moved makes rows: add_jobs makes many."""
    job = _new(JobRun)
    _set(
        job,
        "__dict__",
        {
            "status": PENDING,
            "start_time": None,
            "completion_time": None,
            "id": job_id,
            "stage_execution_id": stage_id,
            "job_name": job_name,
            "allows_failure": allows_failure,
        },
    )
    return job


RUN_COLUMNS, STAGE_COLUMNS, JOB_COLUMNS = (_columns(k) for k in (PipelineRun, StageRun, JobRun))
TABLES: dict[type, tuple[sql.Identifier, sql.Composed, str]] = {
    # row type: (table, columns, what the user calls it)
    PipelineRun: (sql.Identifier("pipeline_executions"), RUN_COLUMNS, "run"),
    StageRun: (sql.Identifier("stage_executions"), STAGE_COLUMNS, "stage"),
    JobRun: (sql.Identifier("job_executions"), JOB_COLUMNS, "job"),
}


@cache
def _q(template: LiteralString) -> bytes:
    """A query with {run}, {stage} and {job} replaced by those SELECT lists, built once."""
    return (
        sql.SQL(template)
        .format(run=RUN_COLUMNS, stage=STAGE_COLUMNS, job=JOB_COLUMNS)
        .as_bytes(None)
    )


def _moves() -> dict[tuple[type, str, bool], bytes]:
    """The compare-and-set UPDATE of each row type to each status, stamped at a time
    given (True: parameters `at`, `id`) or at now() (False: `id` alone), built once.
    Two statements rather than coalesce(at, now()): the common move sends one
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
                        at=sql.SQL("%s" if timed else "now()"),
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
            "completion_time = coalesce(%(at)s, now()) "
            "WHERE pipeline_execution_id = %(parent)s AND status IN ('PENDING', 'RUNNING')",
        ),
        (
            "job",
            "UPDATE job_executions SET status = 'CANCELED', "
            "completion_time = coalesce(%(at)s, now()) "
            "WHERE stage_execution_id = "
            "ANY(ARRAY(SELECT id FROM stage_executions WHERE pipeline_execution_id = %(parent)s)) "
            "AND status IN ('PENDING', 'RUNNING')",
        ),
    ),
    StageRun: (
        (
            "job",
            "UPDATE job_executions SET status = 'CANCELED', "
            "completion_time = coalesce(%(at)s, now()) "
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
    StageRun: "CROSS JOIN (SELECT NULL::timestamptz AS latest) AS below",
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
        "AND (%(at)s::timestamptz IS NULL OR verdict.latest IS NULL "
        "OR %(at)s::timestamptz >= verdict.latest OR %(at)s::timestamptz < {table}.start_time) "
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
        "UPDATE job_executions SET status = {status}, {stamp} = coalesce(%(at)s, now()) "
        "WHERE id IN (SELECT id FROM movable) "
        "AND (SELECT count(*) FROM movable) = %(count)s "
        "RETURNING id, start_time, completion_time"
    )
    .format(
        allowed=sql.SQL(", ").join(map(sql.Literal, allowed)),
        status=sql.Literal(status),
        stamp=sql.Identifier("start_time" if status == RUNNING else "completion_time"),
    )
    .as_bytes(None)
    for status, allowed in ALLOWED_FROM.items()
}


class Store:
    """Reads and writes executions through one connection or a connection pool.

    Connections must be in autocommit mode: every write opens its own transaction.
    """

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
        conn: psycopg.Connection[Any] | None = None,
    ):
        self._connection = connection
        # Over one connection, each statement sent again and again (a move above all: a
        # CI system's agents move jobs all day) has a cursor of its own, kept, not one
        # made per call. Of its own: a psycopg cursor sent a statement other than the
        # one it sent last starts over with a new Transformer, which looks up its
        # dumpers and loaders again (a job's two moves, on one cursor, each did).
        self._conn = conn
        self._cursors: dict[bytes, psycopg.Cursor[Any]] = {}
        self._session: tuple[bytes | None, bytes | None] = (None, None)

    @classmethod
    def on(cls, conn: psycopg.Connection[Any]) -> Store:
        """A store over one connection (not thread-safe: one caller at a time)."""
        if not conn.autocommit:
            raise ValueError("the store needs an autocommit connection")
        return cls(lambda: nullcontext(conn), conn)

    @classmethod
    def pooled(cls, pool: Any) -> Store:
        """A store over a `psycopg_pool.ConnectionPool` opened with kwargs={"autocommit": True};
        safe to share between threads."""
        return cls(pool.connection)

    # -- writing ---------------------------------------------------------------

    def start_run(self, pipeline_name: str, commit_hash: str) -> PipelineRun:
        """Record a new run, PENDING, with the pipeline's next run number. Writes."""
        check_name("pipeline_name", pipeline_name)
        check_name("commit_hash", commit_hash)
        # Only what the database decides comes back (the id, the run number); the rest
        # is what was sent.
        added = self._tuple(
            b"INSERT INTO pipeline_executions (pipeline_name, commit_hash, status, start_time) "
            b"VALUES (%s, %s, 'PENDING', NULL) RETURNING id, run_number",
            (pipeline_name, commit_hash),
        )
        if added is None:  # an INSERT ... RETURNING always returns its row
            raise RuntimeError("the database returned no row for an INSERT ... RETURNING")
        return PipelineRun(PENDING, None, None, added[0], pipeline_name, added[1], commit_hash)

    def add_stage(self, run: PipelineRun | UUID, stage_name: str, execution_order: int) -> StageRun:
        """Add a PENDING stage to an unfinished run. Writes.

        AlreadyExists when the run has a stage of that name or execution order.
        """
        check_name("stage_name", stage_name)
        if not _whole(execution_order):
            raise UsageError(
                f"{{execution_order}} must be a whole number, not {type(execution_order).__name__}",
                arguments=["execution_order"],
            )
        if not INT4_MIN <= execution_order <= INT4_MAX:  # the column is an integer
            raise UsageError(
                f"{{execution_order}} {execution_order} is out of range: an integer is "
                f"from {INT4_MIN:,} to {INT4_MAX:,}",
                arguments=["execution_order"],
            )
        run_id = _id(run)
        with _refusing_duplicates(
            {
                "stage_executions_run_stage_name_key": f"the run already has a stage {stage_name!r}",
                "stage_executions_run_order_key": (
                    f"the run already has a stage at execution order {execution_order}"
                ),
            }
        ):
            added = self._tuple(
                b"WITH parent AS (UPDATE pipeline_executions SET status = status "
                b"WHERE id = %s AND status IN ('PENDING', 'RUNNING') RETURNING id) "
                b"INSERT INTO stage_executions (pipeline_execution_id, stage_name, "
                b"execution_order, status, start_time) "
                b"SELECT id, %s, %s, 'PENDING', NULL FROM parent RETURNING id",
                (run_id, stage_name, execution_order),
            )
        if added is None:
            parent = self._get(PipelineRun, run_id)
            raise IllegalTransition(
                f"run {parent.run_number} of {parent.pipeline_name!r} is "
                f"{parent.status}; stages can be added only before it finishes"
            )
        return StageRun(PENDING, None, None, added[0], run_id, stage_name, execution_order)

    def add_jobs(self, stage: StageRun | UUID, jobs: Sequence[tuple[str, bool]]) -> list[JobRun]:
        """Add PENDING jobs, (name, allows_failure) each, to an unfinished stage. Writes."""
        jobs = list(jobs)  # read once: a generator given would be empty when checked
        stage_id = _id(stage)
        names = [name for name, _ in jobs]
        allows = [allows_failure for _, allows_failure in jobs]
        for name, allows_failure in jobs:
            check_name("job_name", name)
            if not isinstance(allows_failure, bool):
                raise UsageError(
                    "allows_failure of job {name} in {jobs} must be True or False, not {kind}",
                    arguments=["jobs"],
                    values={"name": repr(name), "kind": type(allows_failure).__name__},
                )
        if len(set(names)) != len(names):
            twice = next(name for n, name in enumerate(names) if name in names[:n])
            raise UsageError(
                "job {name} is in {jobs} twice; list it once",
                arguments=["jobs"],
                values={"name": repr(twice)},
            )
        duplicate = {
            "job_executions_stage_job_name_key": "the stage already has a job of that name"
        }
        with _refusing_duplicates(duplicate):
            # The ids come back with their names (a job's name is unique in its stage),
            # not in an order SQL does not promise.
            ids = dict(
                self._rows(
                    b"WITH parent AS (UPDATE stage_executions SET status = status "
                    b"WHERE id = %s AND status IN ('PENDING', 'RUNNING') RETURNING id) "
                    b"INSERT INTO job_executions (stage_execution_id, job_name, allows_failure, "
                    b"status, start_time) SELECT parent.id, job.name, job.allows_failure, "
                    b"'PENDING', NULL "
                    b"FROM parent, unnest(%s::text[], %s::boolean[]) AS job (name, allows_failure) "
                    b"RETURNING job_name, id",
                    (stage_id, names, allows),
                )
            )
        if len(ids) != len(jobs) or not jobs:  # none added: say why, if it was refused
            parent = self._get(StageRun, stage_id)
            if not jobs and parent.status in ALLOWED_FROM[CANCELED]:
                return []
            raise IllegalTransition(
                f"stage {parent.stage_name!r} is {parent.status}; jobs can "
                "be added only before it finishes"
            )
        return [
            _pending_job(ids[name], stage_id, name, allows_failure) for name, allows_failure in jobs
        ]

    def add_job(
        self, stage: StageRun | UUID, job_name: str, allows_failure: bool = False
    ) -> JobRun:
        """Add one PENDING job to an unfinished stage. Writes."""
        return self.add_jobs(stage, [(job_name, allows_failure)])[0]

    def set_statuses(
        self, jobs: Sequence[JobRun], status: str, *, at: datetime | None = None
    ) -> list[JobRun]:
        """Move many jobs to `status` at once, all or none, in one statement. Writes.

        For an agent that reports a batch of jobs: one round trip instead of one a
        job. Each job moves by the same compare-and-set rule as `set_status`; if any
        may not (another writer moved it, or the move is not allowed), none moves and
        IllegalTransition names the first that may not. Runs and stages are finished
        from their children (`finish_stage`, `finish_run`), not here.
        """
        if status not in ALLOWED_FROM:
            raise IllegalTransition(
                f"{status!r} is not a status to move to; use one of {', '.join(ALLOWED_FROM)}"
            )
        if at is not None:
            check_time("at", at)
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids):
            twice = next(job for n, job in enumerate(jobs) if job.id in ids[:n])
            raise IllegalTransition(f"job {twice.job_name!r} is in the batch twice; list it once")
        if not ids:
            return []
        try:
            with self._connection() as conn:
                moved = dict(
                    (row[0], row[1:])
                    for row in conn.execute(
                        BATCH_MOVES[status], {"ids": ids, "count": len(ids), "at": at}
                    ).fetchall()
                )
        except errors.CheckViolation:
            raise IllegalTransition(
                f"jobs cannot become {status} at {at}: that is before one of them started"
            ) from None
        if len(moved) != len(ids):
            # Why, read in one statement (a refused batch of 50,000 read job by job
            # was 50,000 round trips).
            found = {
                row.id: row
                for row in self._all(
                    JobRun, _q("SELECT {job} FROM job_executions WHERE id = ANY(%s)"), [ids]
                )
            }
            for job in jobs:
                current = found.get(job.id)
                if current is None:
                    raise NotFound(f"no job with id {job.id}")
                if current.status not in ALLOWED_FROM[status]:
                    raise IllegalTransition(
                        _illegal(current, status) + "; no job of the batch moved"
                    )
            raise IllegalTransition(  # they moved back meanwhile: tell, do not guess
                f"jobs changed while they were moved to {status}; no job of the batch moved; "
                "read them again and retry"
            )
        return [_moved(job, status, *moved[job.id]) for job in jobs]

    def set_status(self, row: Row, status: str, *, at: datetime | None = None) -> Row:
        """Move a run, stage or job to `status`; `at` defaults to the database's now(). Writes.

        Raises IllegalTransition, and changes nothing, for a move the state machine
        forbids or when the row moved since it was read. A run or stage finishes only
        when its children have (IllegalTransition otherwise); CANCELED cancels the
        children that have not finished, as `cancel_run` does.
        """
        if isinstance(row, JobRun) or status not in FINISHED:
            return self._move(row, status, at)
        if status == CANCELED:
            return self._cancel(row, at)
        return self._finish(row, at, status)

    def finish_stage(self, stage: StageRun, *, at: datetime | None = None) -> StageRun:
        """Finish a RUNNING stage with the status its jobs give it. Writes."""
        return self._finish(stage, at)

    def finish_run(self, run: PipelineRun, *, at: datetime | None = None) -> PipelineRun:
        """Finish a RUNNING run with the status its stages give it. Writes."""
        return self._finish(run, at)

    def cancel_run(self, run: PipelineRun, *, at: datetime | None = None) -> PipelineRun:
        """Cancel a run and every stage and job of it that has not finished. Writes."""
        return self._cancel(run, at)

    # -- reading ---------------------------------------------------------------

    def tables_placement(self) -> tuple[str, str] | None:
        """Where the execution tables are when this store cannot see them (see
        tables_placement()). Reads."""
        with self._connection() as conn:
            return tables_placement(conn)

    def runs(
        self, pipeline_name: str, *, limit: int = 20, before: int | None = None
    ) -> list[PipelineRun]:
        """A pipeline's runs, newest first; `before` pages on by run number (keyset). Reads."""
        check_name("pipeline_name", pipeline_name)
        if not _whole(limit) or not 0 <= limit <= INT8_MAX:
            raise UsageError(
                "{limit} {given} is no count; give a whole number from 0 to {most:,}",
                arguments=["limit"],
                values={"given": repr(limit), "most": INT8_MAX},
            )
        if before is not None and (not _whole(before) or not INT8_MIN <= before <= INT8_MAX):
            raise UsageError(
                "{before} {given} is no run number; give a whole number within bigint's "
                "range, or leave it out",
                arguments=["before"],
                values={"given": repr(before)},
            )
        if before is None:
            return self._all(
                PipelineRun,
                _q(
                    "SELECT {run} FROM pipeline_executions WHERE pipeline_name = %s "
                    "ORDER BY run_number DESC LIMIT %s"
                ),
                [pipeline_name, limit],
            )
        return self._all(
            PipelineRun,
            _q(
                "SELECT {run} FROM pipeline_executions WHERE pipeline_name = %s "
                "AND run_number < %s ORDER BY run_number DESC LIMIT %s"
            ),
            [pipeline_name, before, limit],
        )

    def run(self, pipeline_name: str, run_number: int) -> PipelineRun:
        """One run; NotFound names the pipeline and number. Reads."""
        check_name("pipeline_name", pipeline_name)
        if not _whole(run_number):  # True and "2" reached the server, 2.0 was taken as 2
            raise UsageError(
                "{run_number} {given} is no run number; give a whole number",
                arguments=["run_number"],
                values={"given": repr(run_number)},
            )
        found = self._maybe(
            PipelineRun,
            _q(
                "SELECT {run} FROM pipeline_executions WHERE pipeline_name = %s AND run_number = %s"
            ),
            [pipeline_name, run_number],
        )
        if found is None:
            raise self._no_run(pipeline_name, run_number)
        return found

    def stages(self, run: PipelineRun | UUID) -> list[StageRun]:
        """A run's stages in execution order. Reads."""
        return self._all(
            StageRun,
            _q(
                "SELECT {stage} FROM stage_executions WHERE pipeline_execution_id = %s "
                "ORDER BY execution_order"
            ),
            [_id(run)],
        )

    def stage(self, run: PipelineRun, stage_name: str) -> StageRun:
        """One stage of a run, by name. Reads."""
        check_name("stage_name", stage_name)
        found = self._maybe(
            StageRun,
            _q(
                "SELECT {stage} FROM stage_executions "
                "WHERE pipeline_execution_id = %s AND stage_name = %s"
            ),
            [run.id, stage_name],
        )
        if found is None:
            raise NotFound(
                f"run {run.run_number} of pipeline {run.pipeline_name!r} has no stage "
                f"{stage_name!r}",
                within={"pipeline": run.pipeline_name, "run": run.run_number},
            )
        return found

    def jobs(self, stage: StageRun | UUID) -> list[JobRun]:
        """A stage's jobs, by name. Reads."""
        return self._all(
            JobRun,
            _q("SELECT {job} FROM job_executions WHERE stage_execution_id = %s ORDER BY job_name"),
            [_id(stage)],
        )

    def job(self, run: PipelineRun, stage: StageRun, job_name: str) -> JobRun:
        """One job of a stage, by name. Reads."""
        check_name("job_name", job_name)
        found = self._maybe(
            JobRun,
            _q("SELECT {job} FROM job_executions WHERE stage_execution_id = %s AND job_name = %s"),
            [stage.id, job_name],
        )
        if found is None:
            raise NotFound(
                f"stage {stage.stage_name!r} of run {run.run_number} of pipeline "
                f"{run.pipeline_name!r} has no job {job_name!r}",
                within={
                    "pipeline": run.pipeline_name,
                    "run": run.run_number,
                    "stage": stage.stage_name,
                },
            )
        return found

    # -- internals ---------------------------------------------------------------

    def _no_run(self, pipeline_name: str, run_number: int) -> NotFound:
        newest = self.runs(pipeline_name, limit=1)
        if not newest:
            return no_runs(pipeline_name)
        return NotFound(
            f"pipeline {pipeline_name!r} has no run {run_number}; its runs go up to "
            f"{newest[0].run_number}"
        )

    def _locked(self, conn: psycopg.Connection[Any], row: Row) -> Row:
        """The row as it is now, locked FOR NO KEY UPDATE until the transaction ends
        (see the module's docstring for why this mode)."""
        table, columns, what = TABLES[type(row)]
        query = sql.SQL("SELECT {} FROM {} WHERE id = %s FOR NO KEY UPDATE").format(columns, table)
        current = _fetch_one(conn, type(row), query, [row.id])
        if current is None:
            raise NotFound(f"no {what} with id {row.id}")
        return current

    def _finish(self, row: Row, at: datetime | None, status: str | None = None) -> Row:
        """Finish a run or stage whose children have all finished, with `status` or,
        without one, the status they give it.

        One statement (FINISH), one round trip. A row it leaves alone (not RUNNING, a
        child unfinished or added meanwhile, a time refused) goes the slow way,
        statement by statement, which finishes it if it now may or says exactly why not.
        """
        if at is not None:
            check_time("at", at)
        params = {"parent": row.id, "status": status, "at": at}
        try:
            finished = self._tuple(FINISH[type(row)], params)
        except errors.CheckViolation:
            return self._finish_slowly(row, at, status)
        if finished is None:
            return self._finish_slowly(row, at, status)
        return _moved(row, *finished)

    def _finish_slowly(self, row: Row, at: datetime | None, status: str | None) -> Row:
        """FINISH again, under the row's lock (no child can be added meanwhile, and the
        statement's snapshot, taken after the lock, sees every child committed before
        it); if it still leaves the row alone, why: a child unfinished, a time before
        the row started, or a row that may not move."""
        what = TABLES[type(row)][2]
        kind, children_query = CHILDREN[type(row)]
        params = {"parent": row.id, "status": status, "at": at}
        with self._connection() as conn, conn.transaction():
            current = self._locked(conn, row)
            if status is not None and current.status not in ALLOWED_FROM[status]:
                raise IllegalTransition(_illegal(current, status))
            children = conn.execute(children_query, [row.id]).fetchall()
            unfinished = [name for status, _, name in children if status not in FINISHED]
            if unfinished:
                raise IllegalTransition(
                    f"{what} {_name(row)} cannot finish while "
                    f"{len(unfinished)} {kind}{'s' if len(unfinished) != 1 else ''} "
                    f"({', '.join(sorted(unfinished)[:5])}) "
                    f"{'have' if len(unfinished) != 1 else 'has'} not; finish or cancel "
                    f"{'them' if len(unfinished) != 1 else 'it'} first"
                )
            # The move asked, for the messages: the status given, or the one the
            # children give (FINISH derives it the same way).
            counted = [
                status for status, allowed, _ in children if not (status == FAILED and allowed)
            ]
            move = status or (
                FAILED if FAILED in counted else CANCELED if CANCELED in counted else SUCCESS
            )
            # Before the row's own start: the CHECK's refusal below says that.
            if at is not None and (current.start_time is None or at >= current.start_time):
                found = conn.execute(LATEST_BELOW[type(row)], {"parent": row.id}).fetchone()
                latest = found[0] if found else None
                if latest is not None and at < latest:
                    raise IllegalTransition(
                        f"{what} {_name(row)} cannot become {move} at {at}: a {kind} of it "
                        f"started or finished later, at {latest}"
                    )
            try:
                with conn.cursor(binary=True) as cursor:
                    finished = cursor.execute(FINISH[type(row)], params).fetchone()
            except errors.CheckViolation:
                raise IllegalTransition(
                    f"{what} cannot become {move} at {at}: that is before it started"
                ) from None
            if finished is None:  # only the row's own status can have stopped it
                raise IllegalTransition(_illegal(current, move))
            return _moved(row, *finished)

    def _cancel(self, row: Row, at: datetime | None) -> Row:
        """Cancel a run or stage and, parent before child, whatever of it has not finished."""
        if at is not None:
            check_time("at", at)
        what = TABLES[type(row)][2]
        with self._connection() as conn, conn.transaction():
            # Locked first: an adder waiting on the lock then finds the row cancelled, and
            # one that got in before has committed, so the updates below see its children.
            current = self._locked(conn, row)
            if current.status not in ALLOWED_FROM[CANCELED]:
                raise IllegalTransition(
                    f"{what} {_name(current)} is {current.status}; only PENDING or RUNNING "
                    f"{what}s can be cancelled"
                )
            # Stages before jobs: add_jobs holds its stage FOR NO KEY UPDATE, so locking the
            # stages waits for it, and the jobs it added are then locked and cancelled
            # too. Once they are locked, nothing below the row can start.
            for statement in LOCK_CHILDREN[type(row)]:
                conn.execute(statement, {"parent": row.id})
            stamp = at or _stamp(conn, row)
            for child, statement in CANCEL_CHILDREN[type(row)]:
                try:
                    conn.execute(statement, {"at": stamp, "parent": row.id})
                except errors.CheckViolation:
                    raise IllegalTransition(
                        f"{what} {_name(current)} cannot be cancelled at {at}: "
                        f"a {child} of it started later"
                    ) from None
            return self._move(current, CANCELED, stamp, conn=conn)

    def _move(
        self,
        row: Row,
        status: str,
        at: datetime | None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Row:
        """`row` moved to `status` by one compare-and-set UPDATE, as it is then. Only the
        status and the two times can differ from `row` (nothing else of a row ever
        changes), so only the times come back."""
        kind = type(row)
        if status not in ALLOWED_FROM:
            raise IllegalTransition(
                f"{status!r} is not a status to move to; use one of {', '.join(ALLOWED_FROM)}"
            )
        if at is not None:
            check_time("at", at)
        query = MOVES[kind, status, at is not None]
        params = (row.id,) if at is None else (at, row.id)
        try:
            # One statement: its own transaction, no BEGIN/COMMIT round trips.
            if conn is not None:
                times = conn.execute(query, params).fetchone()
            else:
                times = self._tuple(query, params)
        except errors.CheckViolation:
            raise IllegalTransition(
                f"{TABLES[kind][2]} cannot become {status} at {at}: that is before it started"
            ) from None
        if times is None:
            raise IllegalTransition(_illegal(self._get(kind, row.id), status))
        return _moved(row, status, times[0], times[1])

    def _tuple(
        self, query: bytes, params: Sequence[Any] | Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row `query` returns, as a tuple; over one connection through the cursor
        kept for it (writes are the hot path: a CI system's agents report all day). In
        binary: times and ids come back without being parsed from text."""
        if self._conn is not None:
            return self._kept(self._conn, query).execute(query, params).fetchone()
        with self._connection() as conn, conn.cursor(row_factory=tuple_row, binary=True) as cursor:
            cursor.execute(query, params)
            return cursor.fetchone()

    def _rows(
        self, query: bytes, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row `query` returns, as tuples, as _tuple reads them: in binary, where
        arrays of names and ids cost the least to send and to read back."""
        if self._conn is not None:
            return self._kept(self._conn, query).execute(query, params).fetchall()
        with self._connection() as conn, conn.cursor(row_factory=tuple_row, binary=True) as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()

    def _kept(self, conn: psycopg.Connection[Any], query: bytes) -> psycopg.Cursor[Any]:
        """The cursor kept for `query` over the store's one connection: binary, tuples.
        Only the store's own statements (constants, a few dozen) come here. A cursor
        keeps the encoding and time zone the session had when it was made (its dumpers
        and loaders): when either has changed since (a `SET` by the connection's other
        users), the kept cursors are dropped, and made again."""
        session = (
            conn.pgconn.parameter_status(b"client_encoding"),
            conn.pgconn.parameter_status(b"TimeZone"),
        )
        if session != self._session:
            self._cursors.clear()
            self._session = session
        cursor = self._cursors.get(query)
        if cursor is None:
            cursor = self._cursors[query] = conn.cursor(row_factory=tuple_row, binary=True)
        return cursor

    def _get(self, kind: type[Row], row_id: UUID) -> Row:
        table, columns, what = TABLES[kind]
        query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(columns, table)
        found = self._maybe(kind, query, [row_id])
        if found is None:
            raise NotFound(f"no {what} with id {row_id}")
        return found

    def _maybe(self, kind: type[Row], query: bytes | sql.Composed, params: Any) -> Row | None:
        with self._connection() as conn:
            return _fetch_one(conn, kind, query, params)

    def _all(self, kind: type[Row], query: bytes | sql.Composed, params: Any) -> list[Row]:
        with self._connection() as conn, conn.cursor(row_factory=class_row(kind)) as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()


# The ranges of PostgreSQL's integer and bigint, checked before a value is sent.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1


def tables_placement(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """Where the execution tables are when the session cannot see them: (their schema,
    the session's search_path), or None when there are none to find (or the session
    cannot be asked: in a failed transaction). Read by catalog, past the search_path."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        return None
    try:
        row = conn.execute(
            "SELECT n.nspname, pg_catalog.current_setting('search_path') "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relname = 'pipeline_executions' "
            "AND c.relkind IN ('r', 'p') ORDER BY 1 LIMIT 1"
        ).fetchone()
    except psycopg.Error:
        return None
    return (str(row[0]), str(row[1])) if row else None


def _whole(value: object) -> bool:
    """An int that is not a bool (True is an int to Python, never a count or a number here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _fetch_one(
    conn: psycopg.Connection[Any], kind: type[Row], query: bytes | sql.Composed, params: Any
) -> Row | None:
    with conn.cursor(row_factory=class_row(kind)) as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()


def _stamp(conn: psycopg.Connection[Any], row: PipelineRun | StageRun | JobRun) -> datetime:
    """The time to finish or cancel `row` at, once it and the rows below it are locked."""
    found = conn.execute(STAMP[type(row)], {"parent": row.id}).fetchone()
    if found is None or not isinstance(found[0], datetime):
        raise RuntimeError("the database returned no time")
    return found[0]


@contextmanager
def _refusing_duplicates(messages: dict[str, str]) -> Iterator[None]:
    """UniqueViolation of a known constraint becomes AlreadyExists with its message."""
    try:
        yield
    except errors.UniqueViolation as error:
        message = messages.get(error.diag.constraint_name or "")
        if message is None:
            raise
        raise AlreadyExists(message) from None


def _id(row: PipelineRun | StageRun | JobRun | UUID) -> UUID:
    return row if isinstance(row, UUID) else row.id


def no_runs(pipeline_name: str) -> NotFound:
    """The error for a pipeline without runs: most often a misspelt name."""
    return NotFound(
        f"pipeline {pipeline_name!r} has no runs; check the name (names are case-sensitive)"
    )


def _illegal(current: PipelineRun | StageRun | JobRun, status: str) -> str:
    return (
        f"{TABLES[type(current)][2]} {_name(current)} is {current.status} and cannot move to "
        f"{status}; allowed: PENDING -> RUNNING -> SUCCESS | FAILED | CANCELED, "
        "PENDING -> CANCELED"
    )


def _name(row: PipelineRun | StageRun | JobRun) -> str:
    if isinstance(row, PipelineRun):
        return f"{row.run_number} of {row.pipeline_name!r}"
    if isinstance(row, StageRun):
        return repr(row.stage_name)
    return repr(row.job_name)
