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

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from uuid import UUID

from psycopg import errors

from cicd_db import cursors
from cicd_db.errors import (
    AlreadyExists,
    IllegalTransition,
    NotFound,
    UsageError,
    check_name,
    check_time,
)
from cicd_db.store.connected import retried
from cicd_db.store.moves import Moves
from cicd_db.store.reads import Reads, tables_placement
from cicd_db.store.rows import (
    ALLOWED_FROM,
    CANCELED,
    FAILED,
    FINISHED,
    INT4_MAX,
    INT4_MIN,
    PENDING,
    RUNNING,
    STATUSES,
    SUCCESS,
    JobRun,
    PipelineRun,
    Row,
    StageRun,
    at_time,
    check_row,
    check_status,
    id_of,
    illegal,
    moved,
    no_runs,
    pending_job,
    whole,
)
from cicd_db.store.search_path import check_search_path
from cicd_db.store.statements import BATCH_MOVES, q

__all__ = [
    "CANCELED",
    "FAILED",
    "FINISHED",
    "PENDING",
    "RUNNING",
    "STATUSES",
    "SUCCESS",
    "JobRun",
    "PipelineRun",
    "StageRun",
    "Store",
    "check_search_path",
    "no_runs",
    "tables_placement",
]


class Store(Moves, Reads):
    """Reads and writes executions through one connection or a connection pool.

    Connections must be in autocommit mode: every write opens its own
    transaction (inside one of the caller's, `conn.transaction()`, it commits or rolls
    back with it). Each call asks again (cursors.ready): a connection changed after it
    was handed over is refused before anything is written. Rows come back as tuples
    whatever the connection's row_factory or cursor_factory. The writes are here; the moves they make (`moves`), the reads (`reads`) and the
    connection (`connected`) are the classes it builds on.
    """

    @retried
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

    @retried
    def add_stage(self, run: PipelineRun | UUID, stage_name: str, execution_order: int) -> StageRun:
        """Add a PENDING stage to an unfinished run. Writes.

        AlreadyExists when the run has a stage of that name or execution order.
        """
        check_row("run", run, PipelineRun, by_id=True)
        check_name("stage_name", stage_name)
        if not whole(execution_order):
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
        run_id = id_of(run)
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

    @retried
    def add_jobs(self, stage: StageRun | UUID, jobs: Sequence[tuple[str, bool]]) -> list[JobRun]:
        """Add PENDING jobs, (name, allows_failure) each, to an unfinished stage. Writes."""
        check_row("stage", stage, StageRun, by_id=True)
        jobs = _pairs(jobs)  # read once: a generator given would be empty when checked
        stage_id = id_of(stage)
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
                    b"FROM parent, unnest(%s::pg_catalog.text[], %s::boolean[]) AS job (name, allows_failure) "
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
            pending_job(ids[name], stage_id, name, allows_failure) for name, allows_failure in jobs
        ]

    def add_job(
        self, stage: StageRun | UUID, job_name: str, allows_failure: bool = False
    ) -> JobRun:
        """Add one PENDING job to an unfinished stage. Writes."""
        return self.add_jobs(stage, [(job_name, allows_failure)])[0]

    @retried
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
        check_status(status)
        if status not in ALLOWED_FROM:
            raise IllegalTransition(
                f"{status!r} is not a status to move to; use one of {', '.join(ALLOWED_FROM)}"
            )
        if at is not None:
            check_time("at", at)
        given: object = jobs  # as a caller may give it, whatever the annotation says
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            # None, or one job where a list of them is asked for: "not iterable" before.
            raise UsageError(
                f"{{jobs}} must be a list of JobRun, not a {type(jobs).__name__}",
                arguments=["jobs"],
            )
        jobs = list(jobs)  # read once: a generator given would be empty when moved
        for job in jobs:
            check_row("jobs", job, JobRun)
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids):
            twice = next(job for n, job in enumerate(jobs) if job.id in ids[:n])
            raise IllegalTransition(f"job {twice.job_name!r} is in the batch twice; list it once")
        if not ids:
            return []
        try:
            with self._connection() as conn:
                times = dict(
                    (row[0], row[1:])
                    for row in cursors.execute(
                        conn,
                        BATCH_MOVES[status],
                        {"ids": ids, "count": len(ids), "at": at},
                        binary=True,  # times read whatever the session's DateStyle
                    ).fetchall()
                )
        except errors.CheckViolation:
            raise IllegalTransition(
                f"jobs cannot become {status} {at_time(at)}: that is before one of them started"
            ) from None
        if len(times) != len(ids):
            # Why, read in one statement (a refused batch of 50,000 read job by job
            # was 50,000 round trips).
            found = {
                row.id: row
                for row in self._all(
                    JobRun, q("SELECT {job} FROM job_executions WHERE id = ANY(%s)"), [ids]
                )
            }
            for job in jobs:
                current = found.get(job.id)
                if current is None:
                    raise NotFound(f"no job with id {job.id}")
                if current.status not in ALLOWED_FROM[status]:
                    raise IllegalTransition(
                        illegal(current, status) + "; no job of the batch moved"
                    )
            raise IllegalTransition(  # they moved back meanwhile: tell, do not guess
                f"jobs changed while they were moved to {status}; no job of the batch moved; "
                "read them again and retry"
            )
        return [moved(job, status, *times[job.id]) for job in jobs]

    @retried
    def set_status(self, row: Row, status: str, *, at: datetime | None = None) -> Row:
        """Move a run, stage or job to `status` at `at`, by default the database's clock at the
        move (inside a transaction of the caller's too, not when that began). Writes.

        Raises IllegalTransition, and changes nothing, for a move the state machine
        forbids or when the row moved since it was read. A run or stage finishes only
        when its children have (IllegalTransition otherwise); CANCELED cancels the
        children that have not finished, as `cancel_run` does.
        """
        check_row("row", row, PipelineRun, StageRun, JobRun)
        check_status(status)
        if isinstance(row, JobRun) or status not in FINISHED:
            return self._move(row, status, at)
        if status == CANCELED:
            return self._cancel(row, at)
        return self._finish(row, at, status)

    @retried
    def finish_stage(self, stage: StageRun, *, at: datetime | None = None) -> StageRun:
        """Finish a RUNNING stage with the status its jobs give it. Writes."""
        check_row("stage", stage, StageRun)
        return self._finish(stage, at)

    @retried
    def finish_run(self, run: PipelineRun, *, at: datetime | None = None) -> PipelineRun:
        """Finish a RUNNING run with the status its stages give it. Writes."""
        check_row("run", run, PipelineRun)
        return self._finish(run, at)

    @retried
    def cancel_run(self, run: PipelineRun, *, at: datetime | None = None) -> PipelineRun:
        """Cancel a run and every stage and job of it that has not finished. Writes."""
        check_row("run", run, PipelineRun)
        return self._cancel(run, at)


def _pairs(jobs: Iterable[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """`jobs` read once, as (name, allows_failure) pairs; UsageError for anything else (a
    string, None, a name without its flag)."""
    try:
        pairs = list(jobs)
    except TypeError:
        pairs = [jobs]  # type: ignore[list-item]  # no pairs at all: refused below
    if not all(isinstance(pair, tuple | list) and len(pair) == 2 for pair in pairs):
        raise UsageError(
            "{jobs} must be (name, allows_failure) pairs, as [('unit', False)]",
            arguments=["jobs"],
        )
    return pairs


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
