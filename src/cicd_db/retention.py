"""Retention: finished runs older than a cutoff deleted with their stages and jobs, in
short transactions that never stop the CI system's writers.

- Only finished runs go (SUCCESS, FAILED, CANCELED) whose `completion_time` is
  before the cutoff; a PENDING or RUNNING run stays, whatever its age. The cutoff
  is read once, from the server's clock, when the call starts: `keep_days` days of 24
  hours before it, whatever the session's time zone.
- A batch is one transaction: up to `batch_size` runs, locked FOR UPDATE SKIP
  LOCKED (a run a writer holds is left for the next call), then their jobs, their
  stages and the runs deleted. A run goes with all its children or not at all;
  an interrupted or failed call leaves whole runs behind, never part of one, and
  the next call goes on where it stopped. What it says it deleted is what was
  committed: a call interrupted while a batch commits asks the server whether the
  batch's runs are gone, and says so when it cannot tell.
- Locks are taken parent before child, as the store takes them, so a writer and
  retention never wait on each other in a cycle. Each batch runs under a short
  `lock_timeout`. A batch that meets one with its runs locked (a writer holds a stage
  or job of one, locked or being added to) is tried again at once, its stages and jobs
  locked first, skipping what a writer holds: a run with a held child is left for the
  next call (`held`) and the others go, so one held row costs one lock timeout, never
  the call. Locking every child of every batch took 2.5 times as long at 1M runs
  (docs/scale.md), so only such a batch pays for it. A batch that meets a lock timeout
  there too (a table a migration locks) or a deadlock is tried again after a pause, a
  bounded number of times.
- `dry_run` counts what would go and changes nothing.
- Bounds are refused before anything is read: `keep_days` 1 to 36,600, `batch_size`
  1 to 100,000 (MAX_KEEP_DAYS, MAX_BATCH_SIZE say why), an empty `pipeline`; so is,
  dry run or not, a `pipeline` that has never recorded a run (a misspelt name).

The role needs SELECT, UPDATE (the row locks) and DELETE on the three tables (the owner
and ci_app have them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

from cicd_db import cursors
from cicd_db.errors import (
    STATEMENT_POOLING,
    ConfigError,
    Interrupted,
    NotFound,
    OperationalError,
    check_name,
    check_range,
    check_seconds,
    clock_text,
    interrupt_exit_code,
    no_schema,
    older_schema,
    plural,
    setting_named,
    setting_suspected,
    standby,
    statement_pooling,
    where_set,
)

DEFAULT_BATCH_SIZE = 500
# The bounds of keep_days and batch_size, refused beyond, before anything is read.
# 36600 days is a century: more is no retention policy, and far more is past what
# PostgreSQL's timestamps and make_interval(days => int) can hold (a cutoff before 4713
# BC, or not a 32-bit integer), which made a database error of a typo. A batch is one
# transaction holding its runs' row locks and their ids in one array: 100,000 runs (2
# to 5 million rows with their stages and jobs) is already a long transaction, against
# this module's promise of short ones; beyond it LIMIT overflowed its bigint.
MAX_KEEP_DAYS = 36_600
MAX_BATCH_SIZE = 100_000
DEFAULT_LOCK_TIMEOUT = 0.5  # seconds a batch waits for a row or table lock
# PostgreSQL's most (lock_timeout is a 32-bit number of milliseconds); 0 would be none.
MAX_LOCK_TIMEOUT = 2_147_483.0
# A batch that met a lock timeout or a deadlock is tried again this many times,
# after a pause that doubles from RETRY_DELAY.
RETRIES = 5
RETRY_DELAY = 0.2
RETRIED = (errors.LockNotAvailable, errors.DeadlockDetected, errors.SerializationFailure)


@dataclass(frozen=True)
class Pruned:
    """What a retention call deleted (or, in a dry run, would delete)."""

    cutoff: datetime  # runs that finished before this went
    runs: int = 0
    stages: int = 0
    jobs: int = 0
    batches: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    held: int = 0  # runs a writer held past the lock timeout, left for the next call

    def __str__(self) -> str:
        counted = f"{plural(self.runs, 'run')}, {plural(self.stages, 'stage')}, "
        counted += plural(self.jobs, "job")
        # In UTC, as every other time cicd-db prints (it comes in the session's zone).
        before = f"{clock_text(self.cutoff.astimezone(UTC))} UTC"
        if self.dry_run:
            return f"would delete {counted} that finished before {before}"
        held = (
            f"; left {plural(self.held, 'run')} a writer held, for the next call"
            if self.held
            else ""
        )
        return f"deleted {counted} that finished before {before} in {self.seconds:.1f} s{held}"

    def added(self, counts: tuple[int, int, int], started: float) -> Pruned:
        """These totals with one more committed batch of `counts` (runs, stages, jobs)."""
        return replace(
            self,
            runs=self.runs + counts[0],
            stages=self.stages + counts[1],
            jobs=self.jobs + counts[2],
            batches=self.batches + (1 if counts[0] else 0),  # one that deleted something
            seconds=time.monotonic() - started,
        )


def _candidates(pipeline: str | None) -> sql.Composed:
    """The runs retention may delete: finished before %(cutoff)s, of one pipeline or all.
    The statuses are written out, as in the partial index of migration 0028, so that
    every plan, generic ones included, can use it."""
    query = sql.SQL(
        "SELECT id FROM pipeline_executions WHERE status IN ('SUCCESS', 'FAILED', 'CANCELED') "
        "AND completion_time < %(cutoff)s"
    )
    if pipeline is not None:
        return query + sql.SQL(" AND pipeline_name = %(pipeline)s")
    return query + sql.SQL("")


# The cutoff, and whether `completion_time` is migration 0005's timestamptz.
CUTOFF = (
    "SELECT pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(hours => %s), (SELECT a.atttypid = 'pg_catalog.timestamptz'::pg_catalog.regtype "
    "FROM pg_catalog.pg_attribute a WHERE a.attrelid = 'pipeline_executions'::pg_catalog.regclass "
    "AND a.attname = 'completion_time'), "
    "(SELECT source FROM pg_catalog.pg_settings WHERE name = 'session_replication_role' "
    "AND setting = 'replica'), pg_catalog.pg_is_in_recovery()"
)
COUNT_RUNS = sql.SQL("SELECT count(*), 0, 0 FROM ({candidates}) runs")
COUNT = sql.SQL(
    "WITH runs AS ({candidates}), stages AS (SELECT s.id FROM stage_executions s "
    "JOIN runs r ON s.pipeline_execution_id = r.id) "
    "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM stages), "
    "(SELECT count(*) FROM job_executions j JOIN stages s ON j.stage_execution_id = s.id)"
)
# One batch: the runs locked first (parent before child, as the store locks), then
# their children and they deleted, counted by what each DELETE returned.
LOCK_BATCH = sql.SQL(
    "{candidates} AND id <> ALL(%(held)s) ORDER BY completion_time LIMIT %(batch)s "
    "FOR UPDATE SKIP LOCKED"
)
# The batch's stages and jobs locked in turn, skipping rows a writer holds (a job it
# locked, a stage a job is being added to: the new row's foreign key holds it): the
# runs that have such a child, left for the next call. The others' children are then
# all held by this transaction, so their DELETE waits on no writer.
HELD_CHILDREN = sql.SQL(
    "WITH stages AS MATERIALIZED (SELECT id, pipeline_execution_id AS run "
    "FROM stage_executions WHERE pipeline_execution_id = ANY(%(ids)s) FOR UPDATE SKIP LOCKED), "
    "jobs AS MATERIALIZED (SELECT j.id, s.pipeline_execution_id AS run FROM job_executions j "
    "JOIN stage_executions s ON s.id = j.stage_execution_id "
    "WHERE s.pipeline_execution_id = ANY(%(ids)s) FOR UPDATE OF j SKIP LOCKED) "
    "SELECT s.pipeline_execution_id FROM stage_executions s "
    "WHERE s.pipeline_execution_id = ANY(%(ids)s) AND s.id NOT IN (SELECT id FROM stages) "
    "UNION SELECT s.pipeline_execution_id FROM job_executions j "
    "JOIN stage_executions s ON s.id = j.stage_execution_id "
    "WHERE s.pipeline_execution_id = ANY(%(ids)s) AND j.id NOT IN (SELECT id FROM jobs)"
)
DELETE_BATCH = sql.SQL(
    "WITH jobs AS (DELETE FROM job_executions j USING stage_executions s "
    "WHERE j.stage_execution_id = s.id AND s.pipeline_execution_id = ANY(%(ids)s) RETURNING 1), "
    "stages AS (DELETE FROM stage_executions WHERE pipeline_execution_id = ANY(%(ids)s) "
    "RETURNING 1), runs AS (DELETE FROM pipeline_executions WHERE id = ANY(%(ids)s) RETURNING 1) "
    "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM stages), "
    "(SELECT count(*) FROM jobs)"
)


def prune(
    conn: psycopg.Connection[Any],
    *,
    keep_days: int,
    pipeline: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    on_batch: Callable[[Pruned, int], None] | None = None,
) -> Pruned:
    """Delete finished runs that completed more than `keep_days` days ago, with their
    stages and jobs; of `pipeline` only, if given. Writes unless `dry_run`.

    `on_batch` hears the running totals after each batch, and the number of runs
    found to delete when the call started (for a progress bar). Ctrl-C or SIGTERM
    becomes `Interrupted`, once the batch in progress is rolled back. UsageError,
    before anything is read, for `keep_days` or `batch_size` outside 1 to
    MAX_KEEP_DAYS or MAX_BATCH_SIZE and for an empty `pipeline`; NotFound for a
    `pipeline` that has never recorded a run; ConfigError on a database without the
    execution tables.
    """
    cursors.ready(conn, "retention", alone=not dry_run)  # a dry run commits nothing
    check_range("keep_days", keep_days, MAX_KEEP_DAYS)
    check_range("batch_size", batch_size, MAX_BATCH_SIZE)
    check_name("pipeline", pipeline, optional=True)  # "" is never "every pipeline"
    lock_timeout = check_seconds("lock_timeout", lock_timeout, MAX_LOCK_TIMEOUT)
    started = time.monotonic()
    try:
        from cicd_db.store import check_search_path  # on use, as below

        check_search_path(conn)
        if pipeline is not None and not _ever_ran(conn, pipeline):
            # As report and insights name a pipeline without runs: a misspelt name in a
            # nightly job would otherwise delete nothing, successfully, forever. The dry
            # run too: it is how such a job is tried before it is scheduled. A pipeline
            # whose runs were all deleted already did run (its run counter stays): 0, exit 0.
            raise NotFound(
                "pipeline {name} has never recorded a run; check the name (names are "
                "case-sensitive), or leave {pipeline} out for every pipeline",
                arguments=["pipeline"],
                values={"name": repr(pipeline)},
            )
        # Days of 24 hours: a calendar day is the session time zone's, which would move
        # the cutoff by an hour across a daylight-saving change, by who asks. Compared
        # with a `completion_time` of another type than migration 0005's timestamptz
        # (an older schema), the cutoff would be read in the session's time zone.
        # In binary: a time in text is read by the session's DateStyle, which psycopg
        # parses only in its ISO forms (a caller's connection may have 'SQL, DMY').
        row = cursors.execute(conn, CUTOFF, [keep_days * 24], binary=True).fetchone()
        assert row is not None  # noqa: S101 - a SELECT of one value returns one row
        if not row[1]:
            raise older_schema("completion_time is not a timestamp with time zone")
        if row[3] and not dry_run:
            raise standby("nothing was deleted")
        if row[2] is not None and not dry_run:
            raise _fires_no_cascade(conn, str(row[2]))
        params: dict[str, Any] = {"cutoff": row[0], "pipeline": pipeline}
        candidates = _candidates(pipeline)
        # A dry run counts everything; a real one only the runs, for the progress bar.
        counting = COUNT if dry_run else COUNT_RUNS
        counts = cursors.execute(conn, counting.format(candidates=candidates), params).fetchone()
        assert counts is not None  # noqa: S101
    except errors.UndefinedTable:
        from cicd_db.store import tables_placement  # on use: the CLI imports this module

        raise no_schema(tables_placement(conn)) from None
    except errors.InsufficientPrivilege as denied:
        raise _denied(conn, denied, None) from None
    except KeyboardInterrupt as interrupt:  # counting, or waiting for a table's lock
        raise Interrupted(
            f"interrupted; {_so_far(None)}; run again", exit_code=interrupt_exit_code(interrupt)
        ) from None
    except (errors.QueryCanceled, errors.LockNotAvailable) as cut:  # the session's settings
        raise _cancelled(
            cut,
            "nothing was counted" if dry_run else _so_far(None),
            dry_run,
            timed_out=cursors.could_have_timed_out(conn),
        ) from None
    found = int(counts[0])
    if dry_run:
        runs, stages, jobs = (int(n) for n in counts)
        return Pruned(row[0], runs, stages, jobs, 0, time.monotonic() - started, dry_run=True)
    done = Pruned(row[0])
    lock = LOCK_BATCH.format(candidates=candidates)
    held: list[int] = []  # runs with a child a writer held: not asked for again in this call
    # The batch whose DELETE ran last: the totals it started from, its runs and counts.
    # Until `done` moves past those totals, the batch is not counted (its COMMIT may
    # not have run, or not to its end).
    flight: list[tuple[Pruned, list[int], tuple[int, int, int]]] = []
    try:
        while True:
            batch = {**params, "batch": batch_size, "held": held}
            outcome = _batch(conn, lock, batch, lock_timeout, done, flight)
            if outcome is None:
                break
            counts, newly_held = outcome
            held += newly_held
            done = replace(done.added(counts, started), held=len(held))
            if on_batch:
                on_batch(done, found)
    except KeyboardInterrupt as interrupt:
        done, batch_was = _settled(conn, done, flight, started)
        raise Interrupted(
            f"interrupted; {_stopped(done, batch_was)}; run again to go on",
            exit_code=interrupt_exit_code(interrupt),
        ) from None
    except errors.InsufficientPrivilege as denied:
        raise _denied(conn, denied, done) from None
    except errors.QueryCanceled as cut:
        done, batch_was = _settled(conn, done, flight, started)
        raise _cancelled(
            cut, _stopped(done, batch_was), timed_out=cursors.could_have_timed_out(conn)
        ) from None
    except errors.ForeignKeyViolation as kept:
        # A table added beside the schema refers to a run without ON DELETE CASCADE:
        # every call would meet it again, so running again is no fix.
        done, batch_was = _settled(conn, done, flight, started)
        said = str(kept.diag.message_primary or kept).strip().splitlines()[0]
        raise ConfigError(
            f"retention cannot delete a run that rows of another table refer to ({said}); "
            f"{_stopped(done, batch_was)}; delete those rows first, or give that foreign "
            "key ON DELETE CASCADE (or SET NULL), then run again"
        ) from None
    except psycopg.OperationalError as lost:
        done, batch_was = _settled(conn, done, flight, started)
        if STATEMENT_POOLING in str(lost):
            raise statement_pooling(_stopped(done, batch_was)) from None
        raise OperationalError(
            f"retention lost its connection ({str(lost).strip().splitlines()[0]}); "
            f"{_stopped(done, batch_was)}; run again to go on"
        ) from None
    return replace(done, seconds=time.monotonic() - started)


def _fires_no_cascade(conn: psycopg.Connection[Any], source: str) -> ConfigError:
    """Under session_replication_role = replica (a logical replication subscriber's, or a
    restore's) PostgreSQL fires no trigger, and so no foreign key's ON DELETE CASCADE:
    the deleted runs' rollups, and any row of a table added beside the schema that
    refers to them, would stay behind referring to nothing."""
    where = cursors.setting_where(conn, "session_replication_role", "replica", source)
    return ConfigError(
        "retention deletes no run under session_replication_role = replica: PostgreSQL "
        "then fires no trigger and no ON DELETE CASCADE, so rows that refer to the runs "
        "deleted would stay behind; nothing was deleted; "
        f"{where or 'set it to origin for this session'}"
    )


def _cancelled(
    cut: psycopg.Error, stopped: str, dry_run: bool = False, *, timed_out: bool = False
) -> OperationalError:
    """A statement cut by a statement_timeout or lock_timeout (a role's, database's or
    PGOPTIONS's setting) or pg_cancel_backend: the connection is fine, and running again
    meets the same setting, which is named where it is known; a cancel "due to user
    request" where the session's statement_timeout could have fired (`timed_out`:
    cursors.could_have_timed_out) is that timeout, suspected."""
    said = str(cut.diag.message_primary or cut).strip().splitlines()[0]
    setting, suspected = setting_named(cut.sqlstate, said) or (None, False)
    if setting is None and timed_out and setting_suspected(cut.sqlstate, said):
        setting, suspected = "statement_timeout", True
    # Counting runs before retention sets a lock_timeout of its own, so one there is the
    # session's. Not in errors.SETTING_BEHIND: the runner, which reads that table too,
    # retries what a lock timeout cuts (migrations/failures.py), most often one its files
    # set themselves (`migrate new` writes `SET lock_timeout`), which is not the session's.
    if isinstance(cut, errors.LockNotAvailable):
        setting = "lock_timeout"
    # A dry run counts in one statement, whatever the batch size.
    smaller = "" if dry_run else ", or give a smaller {batch_size}"
    fix = (
        where_set(setting, suspected=suspected).replace("{", "{{").replace("}", "}}")
        + f": raise it there{smaller}, and run again"
        if setting
        else "run again"
        if dry_run
        else "run again to go on"
    )
    return OperationalError(
        f"retention's statement was cancelled ({{said}}); {stopped}; {fix}",
        arguments=["batch_size"],
        values={"said": said},
    )


def _denied(
    conn: psycopg.Connection[Any], denied: psycopg.Error, done: Pruned | None
) -> ConfigError:
    """A role without a right retention needs (the reader, or one granted less); a role
    that may delete runs but not read the run counters has grants older than this
    cicd-db (migration 0036 lets the writer read them)."""
    if _grants_before_0036(conn):
        error = older_schema(f"role {_current_role(conn)}: {denied.diag.message_primary}")
        return ConfigError(f"{error}; {_so_far(done)}")
    return ConfigError(
        f"role {_current_role(conn)} lacks a right retention needs (SELECT, UPDATE and DELETE "
        f"on the execution tables): {denied.diag.message_primary}; {_so_far(done)}; run "
        "retention as the writer (ci_app, which `--local` and `--stack` use) or the tables' owner"
    )


def _grants_before_0036(conn: psycopg.Connection[Any]) -> bool:
    """Whether the session's role may delete runs but not read the run counters' names,
    which migration 0036 grants the writer (False when it cannot be asked)."""
    try:
        row = cursors.execute(
            conn,
            "SELECT pg_catalog.has_table_privilege('pipeline_executions', 'DELETE') "
            "AND NOT pg_catalog.has_column_privilege('pipeline_run_counters', "
            "'pipeline_name', 'SELECT')",
        ).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])


def _current_role(conn: psycopg.Connection[Any]) -> str:
    """The role the session acts as (SET ROLE's, not only the login's), for messages."""
    try:
        row = cursors.execute(conn, "SELECT current_user").fetchone()
    except psycopg.Error:
        return conn.info.user
    return str(row[0]) if row else conn.info.user


def _settled(
    conn: psycopg.Connection[Any],
    done: Pruned,
    flight: list[tuple[Pruned, list[int], tuple[int, int, int]]],
    started: float,
) -> tuple[Pruned, str]:
    """The totals after a call stopped, and what became of the batch in progress: one
    whose DELETE ran and was not yet counted may have committed (a Ctrl-C or a lost
    connection during its COMMIT), so the server is asked whether its runs are gone."""
    if not flight or flight[-1][0] is not done:
        return done, "the batch in progress was rolled back"
    _, ids, counts = flight[-1]
    committed = _committed(conn, ids)
    if committed:
        # Its runs are gone: its COMMIT's work, unless another retention call took them in
        # the moment between its rollback and this look (then they went all the same).
        return done.added(counts, started), "the last batch had committed"
    if committed is False:
        return done, "the batch in progress was rolled back"
    return done, (
        f"the batch in progress ({plural(counts[0], 'run')}) was committed or rolled back "
        "whole, which the connection could not tell"
    )


def _committed(conn: psycopg.Connection[Any], ids: list[int]) -> bool | None:
    """Whether the batch of runs `ids` committed (its runs gone); None if not known."""
    status = conn.info.transaction_status
    if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        return False  # still open: it ends with the session, rolled back
    if status != TransactionStatus.IDLE:
        return None
    try:
        row = cursors.execute(
            conn, "SELECT count(*) FROM pipeline_executions WHERE id = ANY(%s)", [ids]
        ).fetchone()
    except (psycopg.Error, KeyboardInterrupt):
        return None
    left = int(row[0]) if row else -1
    if left == 0:
        return True
    return False if left == len(ids) else None


def _ever_ran(conn: psycopg.Connection[Any], pipeline: str) -> bool:
    """Whether `pipeline` ever recorded a run: migration 0016's counter of its run
    numbers is made with its first run and outlives every run retention deletes."""
    row = cursors.execute(
        conn,
        "SELECT EXISTS (SELECT FROM pipeline_run_counters WHERE pipeline_name = %s)",
        [pipeline],
    ).fetchone()
    return bool(row and row[0])


def _stopped(done: Pruned, batch_was: str) -> str:
    """What a stopped call had done, and that nothing was left half-done, for messages."""
    return f"{_so_far(done)}; {batch_was}, and no run was left half-deleted"


def _so_far(done: Pruned | None) -> str:
    if done is None or not done.runs:
        return "nothing was deleted"
    counted = f"{plural(done.runs, 'run')} ({plural(done.stages, 'stage')}, "
    return f"{counted}{plural(done.jobs, 'job')}) had been deleted"


def _batch(
    conn: psycopg.Connection[Any],
    lock: sql.Composed,
    params: dict[str, Any],
    lock_timeout: float,
    done: Pruned,
    flight: list[tuple[Pruned, list[int], tuple[int, int, int]]],
) -> tuple[tuple[int, int, int], list[int]] | None:
    """One batch, in one transaction: the runs, stages and jobs it deleted, and the runs
    it left because a writer held one of their children; None when no run was left to
    delete (or every one left is held by a writer). Before its COMMIT the batch is noted
    in `flight`, with `done`, the totals it started from. After a lock timeout with its
    runs locked, the next try is careful, and made at once."""
    careful = False  # the children locked first, skipping what a writer holds
    for attempt in range(RETRIES + 1):
        ids: list[int] = []
        try:
            with conn.transaction():
                cursors.execute(
                    conn,
                    # Rounded up: a wait below 1 ms written "0ms" would be no timeout.
                    "SELECT set_config('lock_timeout', %s, true)",
                    [f"{math.ceil(lock_timeout * 1000)}ms"],
                )
                ids = [row[0] for row in cursors.execute(conn, lock, params).fetchall()]
                if not ids:
                    return None
                held: set[int] = set()
                if careful:
                    held = {
                        row[0]
                        for row in cursors.execute(conn, HELD_CHILDREN, {"ids": ids}).fetchall()
                    }
                going = [run for run in ids if run not in held]
                if not going:
                    return (0, 0, 0), sorted(held)  # every run held: nothing to commit
                row = cursors.execute(conn, DELETE_BATCH, {"ids": going}).fetchone()
                assert row is not None  # noqa: S101
                counts = (int(row[0]), int(row[1]), int(row[2]))
                flight[:] = [(done, going, counts)]
            return counts, sorted(held)
        except RETRIED as busy:
            if isinstance(busy, errors.LockNotAvailable) and ids and not careful:
                careful = True  # a writer holds a row of these runs: find which, at once
                continue
            if attempt == RETRIES:
                raise OperationalError(
                    f"retention met busy tables {RETRIES + 1} times in a row "
                    f"({busy.diag.message_primary}); run again when they are less busy"
                ) from None
            time.sleep(RETRY_DELAY * 2**attempt)
    return None  # not reached: the loop returns or raises
