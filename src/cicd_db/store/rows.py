"""The rows the store reads and writes: a run, a stage, a job, their statuses and the
moves between them; and the checks of what a caller passes (a whole number, a name in
a message). Pure: nothing here talks to a database."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from psycopg import sql

from cicd_db.errors import NotFound, UsageError

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
        """completion_time - start_time, as the server subtracts them: between instants.
        The times come in the session's time zone, one tzinfo for both, and Python
        subtracts two datetimes of one tzinfo by their clocks (across a change to or
        from summer time, by an hour too many or too few); in UTC they are instants."""
        if self.start_time is None or self.completion_time is None:
            return None
        return self.completion_time.astimezone(UTC) - self.start_time.astimezone(UTC)


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


def columns_of(kind: type) -> sql.Composed:
    """The SELECT list of a row type: its dataclass fields, so the two never disagree."""
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(kind))


_new = object.__new__
_set = object.__setattr__


def moved(row: Row, status: str, start_time: Any, completion_time: Any) -> Row:
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


def pending_job(job_id: UUID, stage_id: UUID, job_name: str, allows_failure: bool) -> JobRun:
    """JobRun(PENDING, None, None, ...), made as moved makes rows: add_jobs makes many."""
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


RUN_COLUMNS, STAGE_COLUMNS, JOB_COLUMNS = (columns_of(k) for k in (PipelineRun, StageRun, JobRun))
TABLES: dict[type, tuple[sql.Identifier, sql.Composed, str]] = {
    # row type: (table, columns, what the user calls it)
    PipelineRun: (sql.Identifier("pipeline_executions"), RUN_COLUMNS, "run"),
    StageRun: (sql.Identifier("stage_executions"), STAGE_COLUMNS, "stage"),
    JobRun: (sql.Identifier("job_executions"), JOB_COLUMNS, "job"),
}

# The ranges of PostgreSQL's integer and bigint, checked before a value is sent.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1


def whole(value: object) -> bool:
    """An int that is not a bool (True is an int to Python, never a count or a number here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def id_of(row: PipelineRun | StageRun | JobRun | UUID) -> UUID:
    return row if isinstance(row, UUID) else row.id


def check_row(argument: str, row: object, *kinds: type, by_id: bool = False) -> None:
    """UsageError unless `row` is one of `kinds` (or, `by_id`, its UUID): a stage given
    where a run is asked for would otherwise be finished or cancelled as what it is, and
    None or a name would fail deep inside as a KeyError."""
    # The class itself, not a subclass: the store's statements are chosen by a row's
    # exact class (a subclass of JobRun failed as a KeyError deep inside).
    if type(row) in kinds or (by_id and isinstance(row, UUID)):
        return
    wanted = " or ".join(kind.__name__ for kind in (*kinds, *([UUID] if by_id else [])))
    raise UsageError(
        f"{{{argument}}} must be a {wanted}, not a {type(row).__name__}", arguments=[argument]
    )


def check_status(status: object) -> None:
    """UsageError unless `status` is text: None, a number or a list is no status (a list
    failed as "unhashable"). Text that names no status to move to ("DONE", "running")
    is IllegalTransition, as a move the state machine forbids is."""
    if type(status) is not str:
        raise UsageError(
            f"{{status}} {status!r} is no status; use one of {', '.join(STATUSES)}",
            arguments=["status"],
        )


def no_runs(pipeline_name: str) -> NotFound:
    """The error for a pipeline without runs: most often a misspelt name."""
    return NotFound(
        f"pipeline {pipeline_name!r} has no runs; check the name (names are case-sensitive)"
    )


def illegal(current: PipelineRun | StageRun | JobRun, status: str) -> str:
    return (
        f"{TABLES[type(current)][2]} {name_of(current)} is {current.status} and cannot move to "
        f"{status}; allowed: PENDING -> RUNNING -> SUCCESS | FAILED | CANCELED, "
        "PENDING -> CANCELED"
    )


def at_time(at: datetime | None) -> str:
    """When a move was asked for, for messages: `at` in UTC (the zone a message's other
    times are given in), or "now" (the server's clock) where none was given."""
    return "now" if at is None else f"at {at.astimezone(UTC)}"


def name_of(row: PipelineRun | StageRun | JobRun) -> str:
    if isinstance(row, PipelineRun):
        return f"{row.run_number} of {row.pipeline_name!r}"
    if isinstance(row, StageRun):
        return repr(row.stage_name)
    return repr(row.job_name)
