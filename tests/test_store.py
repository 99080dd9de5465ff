"""The execution store on a real server: run numbers, the state machine, derived statuses."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from threading import Barrier
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import assume as hypothesis_assume
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import ConnectionPool

from cicd_db import errors, insights, migrations, report, retention, store
from cicd_db.errors import MAX_NAME_BYTES, AlreadyExists, IllegalTransition, NotFound, UsageError
from cicd_db.store import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCESS,
    JobRun,
    PipelineRun,
    StageRun,
    Store,
    statements,
)
from cicd_db.store.rows import INT8_MAX, INT8_MIN

from .fix_db import Database, Databases
from .utils import MANY_JOBS, examples, scans

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def schema(migrated: Database) -> Database:
    return migrated


@pytest.fixture
def executions(schema: Database) -> Iterator[Store]:
    with schema.connect() as conn:
        yield Store.on(conn)


def snapshot(database: Database) -> list[tuple[object, ...]]:
    """Every execution row, to prove a refused call wrote nothing."""
    return database.query(
        "SELECT 'run', id, status, start_time, completion_time FROM pipeline_executions UNION ALL "
        "SELECT 'stage', id, status, start_time, completion_time FROM stage_executions UNION ALL "
        "SELECT 'job', id, status, start_time, completion_time FROM job_executions ORDER BY 1, 2"
    )


# A database's default isolation (ALTER DATABASE ... SET default_transaction_isolation),
# which the store's writes run under: stricter ones make the server refuse a write that
# met another (40001), which the store runs again, so every outcome is READ COMMITTED's.
ISOLATIONS = ["read committed", "repeatable read", "serializable"]


def isolated(database: Database, isolation: str) -> None:
    database.execute(
        sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = {}").format(
            sql.Identifier(database.name), sql.Literal(isolation)
        )
    )


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_concurrent_writers_get_every_number_once(schema: Database, isolation: str) -> None:
    isolated(schema, isolation)
    with ConnectionPool(
        schema.settings.conninfo(), min_size=8, max_size=32, open=True, kwargs={"autocommit": True}
    ) as pool:
        shared = Store.pooled(pool)
        with ThreadPoolExecutor(max_workers=32) as workers:
            started = list(
                workers.map(
                    lambda i: shared.start_run("build" if i % 2 else "deploy", f"c{i}"), range(64)
                )
            )
    for pipeline in ("build", "deploy"):
        numbers = sorted(run.run_number for run in started if run.pipeline_name == pipeline)
        assert numbers == list(range(1, 33))
    assert schema.query(
        "SELECT pipeline_name, count(*), max(run_number) FROM pipeline_executions "
        "GROUP BY 1 ORDER BY 1"
    ) == [("build", 32, 32), ("deploy", 32, 32)]


def test_a_run_through_its_life(executions: Store) -> None:
    run = executions.start_run("build", "abc")
    assert (run.run_number, run.status, run.completion_time) == (1, PENDING, None)
    run = executions.set_status(run, RUNNING, at=T0)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING, at=T0)
    unit, lint = executions.add_jobs(stage, [("unit", False), ("lint", True)])
    assert (unit.allows_failure, lint.allows_failure) == (False, True)
    executions.set_status(
        executions.set_status(unit, RUNNING, at=T0), SUCCESS, at=T0 + timedelta(seconds=30)
    )
    executions.set_status(
        executions.set_status(lint, RUNNING, at=T0), FAILED, at=T0 + timedelta(seconds=5)
    )
    stage = executions.finish_stage(stage, at=T0 + timedelta(seconds=31))
    run = executions.finish_run(run, at=T0 + timedelta(minutes=1))
    assert (stage.status, stage.duration) == (SUCCESS, timedelta(seconds=31))
    assert (run.status, run.start_time, run.duration) == (SUCCESS, T0, timedelta(minutes=1))
    assert executions.run("build", 1) == run
    assert [job.job_name for job in executions.jobs(stage)] == ["lint", "unit"]


STEPS_TO = {  # how to bring a fresh row to each status
    PENDING: [],
    RUNNING: [RUNNING],
    SUCCESS: [RUNNING, SUCCESS],
    FAILED: [RUNNING, FAILED],
    CANCELED: [CANCELED],
}
LEGAL = {
    (PENDING, RUNNING),
    (PENDING, CANCELED),
    (RUNNING, SUCCESS),
    (RUNNING, FAILED),
    (RUNNING, CANCELED),
}
ILLEGAL = [(a, b) for a in store.STATUSES for b in store.STATUSES if (a, b) not in LEGAL]


@pytest.fixture(scope="module")
def transitions(databases: Databases, migrated_template: str) -> Iterator[Database]:
    """One database for every case of test_illegal_transitions_change_nothing, not one
    each: a case works on rows of its own, and the whole database must stay as it was."""
    made = databases.create(migrated_template)
    yield made
    databases.drop(made)


@pytest.mark.parametrize("kind", ["run", "stage", "job"])
@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transitions_change_nothing(
    transitions: Database, kind: str, current: str, target: str
) -> None:
    with transitions.connect() as conn:
        changes_nothing(transitions, Store.on(conn), kind, current, target)


def changes_nothing(schema: Database, executions: Store, kind: str, current: str, target: str) -> None:  # fmt: skip
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
    # A fresh row of the kind, PENDING, inside parents that are running.
    fresh = {
        "run": lambda: executions.start_run("build", "def"),
        "stage": lambda: executions.add_stage(run, "package", 2),
        "job": lambda: executions.add_job(stage, "unit"),
    }
    row = fresh[kind]()
    assert row.status == PENDING
    for step in STEPS_TO[current]:
        row = executions.set_status(row, step)
    before = snapshot(schema)
    with pytest.raises(IllegalTransition):
        executions.set_status(row, target)
    assert snapshot(schema) == before


def test_a_stale_row_cannot_move_twice(executions: Store) -> None:
    run = executions.start_run("build", "abc")
    executions.set_status(run, CANCELED)
    with pytest.raises(
        IllegalTransition, match="run 1 of 'build' is CANCELED and cannot move to RUNNING"
    ):
        executions.set_status(run, RUNNING)


def test_children_cannot_join_a_finished_parent(schema: Database, executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
    executions.finish_stage(stage)
    executions.finish_run(run)
    before = snapshot(schema)
    with pytest.raises(IllegalTransition, match="stages can be added only before it finishes"):
        executions.add_stage(run, "late", 2)
    with pytest.raises(IllegalTransition, match="jobs can be added only before it finishes"):
        executions.add_jobs(stage, [("late", False), ("later", False)])
    assert snapshot(schema) == before


def test_finishing_waits_for_children(schema: Database, executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
    executions.add_jobs(stage, [("unit", False), ("lint", False)])
    before = snapshot(schema)
    with pytest.raises(
        IllegalTransition,
        match=r"stage 'test' cannot finish while 2 jobs "
        r"\(lint, unit\) have not",
    ):
        executions.finish_stage(stage)
    with pytest.raises(IllegalTransition, match=r"cannot finish while 1 stage \(test\) has not"):
        executions.finish_run(run)
    assert snapshot(schema) == before


J = "job"


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], SUCCESS),
        ([(SUCCESS, False), (SUCCESS, False)], SUCCESS),
        ([(SUCCESS, False), (FAILED, True)], SUCCESS),
        ([(FAILED, True), (FAILED, True)], SUCCESS),
        ([(SUCCESS, False), (FAILED, False)], FAILED),
        ([(CANCELED, False), (SUCCESS, False)], CANCELED),
        ([(CANCELED, False), (FAILED, False)], FAILED),
        ([(CANCELED, True), (FAILED, True)], CANCELED),
    ],
    ids=[
        "no-jobs",
        "all-pass",
        "allowed-failure",
        "only-allowed-failures",
        "failure",
        "cancelled",
        "failure-beats-cancel",
        "cancel-beats-allowed-failure",
    ],
)
def test_derived_stage_and_run_status(executions: Store, jobs, expected) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
    added = executions.add_jobs(
        stage, [(f"job{i}", allowed) for i, (_, allowed) in enumerate(jobs)]
    )
    for job, (outcome, _) in zip(added, jobs, strict=True):
        if outcome != CANCELED:
            job = executions.set_status(job, RUNNING)
        executions.set_status(job, outcome)
    # The slow way, taken when the one statement leaves the row alone (here: a time
    # before the stage started), derives the same status: its refusal names it.
    early = T0 - timedelta(days=1)
    with pytest.raises(IllegalTransition, match=f"^stage cannot become {expected} at "):
        executions.finish_stage(stage, at=early)
    assert executions.finish_stage(stage).status == expected
    # The run derives from its stages the same way.
    with pytest.raises(IllegalTransition, match=f"^run cannot become {expected} at "):
        executions.finish_run(run, at=early)
    assert executions.finish_run(run).status == expected


def test_cancel_run_cancels_what_has_not_finished(executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    done = executions.set_status(executions.add_stage(run, "build", 1), RUNNING)
    executions.set_status(
        executions.set_status(executions.add_job(done, "compile"), RUNNING), SUCCESS
    )
    executions.finish_stage(done)
    busy = executions.set_status(executions.add_stage(run, "test", 2), RUNNING)
    executions.set_status(executions.add_job(busy, "unit"), RUNNING)
    executions.add_job(busy, "lint")
    executions.add_stage(run, "deploy", 3)

    run = executions.cancel_run(run)
    assert run.status == CANCELED
    assert [(s.stage_name, s.status) for s in executions.stages(run)] == [
        ("build", SUCCESS),
        ("test", CANCELED),
        ("deploy", CANCELED),
    ]
    assert [(j.job_name, j.status) for j in executions.jobs(busy)] == [
        ("lint", CANCELED),
        ("unit", CANCELED),
    ]
    with pytest.raises(IllegalTransition, match="only PENDING or RUNNING runs can be cancelled"):
        executions.cancel_run(run)


def test_set_status_never_finishes_a_parent_past_its_children(
    schema: Database, executions: Store
) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
    unit = executions.set_status(executions.add_job(stage, "unit"), RUNNING)
    executions.add_job(stage, "lint")
    before = snapshot(schema)
    for parent, status in [(run, SUCCESS), (run, FAILED), (stage, SUCCESS), (stage, FAILED)]:
        with pytest.raises(IllegalTransition, match=r"cannot finish while (1 stage|2 jobs) "):
            executions.set_status(parent, status)
    with pytest.raises(IllegalTransition, match="stage 'test' is RUNNING and cannot move to"):
        executions.set_status(stage, RUNNING)
    assert snapshot(schema) == before

    # Cancelling a stage cancels its unfinished jobs; the finished one stays.
    executions.set_status(unit, SUCCESS)
    assert executions.set_status(stage, CANCELED).status == CANCELED
    assert [(j.job_name, j.status) for j in executions.jobs(stage)] == [
        ("lint", CANCELED),
        ("unit", SUCCESS),
    ]
    # A run with a pending stage: cancelling it through set_status is cancel_run.
    executions.add_stage(run, "deploy", 2)
    assert executions.set_status(run, CANCELED).status == CANCELED
    assert [s.status for s in executions.stages(run)] == [CANCELED, CANCELED]
    with pytest.raises(IllegalTransition, match="only PENDING or RUNNING stages can be cancelled"):
        executions.set_status(stage, CANCELED)


def test_duplicates_and_impossible_times_are_refused(schema: Database, executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=T0)
    stage = executions.add_stage(run, "test", 1)
    job = executions.set_status(executions.add_job(stage, "unit"), RUNNING, at=T0)
    empty = executions.set_status(executions.start_run("deploy", "abc"), RUNNING, at=T0)
    stage = executions.set_status(stage, RUNNING, at=T0)
    before = snapshot(schema)
    with pytest.raises(AlreadyExists, match="the run already has a stage 'test'"):
        executions.add_stage(run, "test", 2)
    with pytest.raises(AlreadyExists, match="the run already has a stage at execution order 1"):
        executions.add_stage(run, "lint", 1)
    with pytest.raises(AlreadyExists, match="the stage already has a job of that name"):
        executions.add_jobs(stage, [("lint", False), ("unit", False)])
    with pytest.raises(
        IllegalTransition,
        match="run cannot become SUCCESS at 2026-03-01 08:00:00\\+00:00: that is before it started",
    ):
        executions.set_status(empty, SUCCESS, at=T0 - timedelta(hours=1))
    with pytest.raises(IllegalTransition, match="run cannot become CANCELED at 2026-03-01 08:00"):
        executions.cancel_run(empty, at=T0 - timedelta(hours=1))
    with pytest.raises(
        IllegalTransition,
        match=r"run 1 of 'build' cannot be cancelled at .*: a stage of it started",
    ):
        executions.cancel_run(run, at=T0 - timedelta(hours=1))
    with pytest.raises(
        IllegalTransition, match=r"stage 'test' cannot be cancelled at .*: a job of it started"
    ):
        executions.set_status(stage, CANCELED, at=T0 - timedelta(hours=1))
    with pytest.raises(IllegalTransition, match="job cannot become FAILED at 2026-03-01 08:00"):
        executions.set_status(job, FAILED, at=T0 - timedelta(hours=1))
    assert snapshot(schema) == before


def test_reads_name_what_is_missing(executions: Store) -> None:
    with pytest.raises(NotFound, match="pipeline 'build' has no runs"):
        executions.run("build", 1)
    run = executions.start_run("build", "abc")
    with pytest.raises(NotFound, match="pipeline 'build' has no run 5; its one run is 1"):
        executions.run("build", 5)
    with pytest.raises(NotFound, match="run 1 of pipeline 'build' has no stage 'test'") as raised:
        executions.stage(run, "test")
    # What does exist, as data: the CLI turns it into the `cicd-db report` that lists it.
    assert str(raised.value) == "run 1 of pipeline 'build' has no stage 'test'"
    assert raised.value.within == {"pipeline": "build", "run": 1}
    stage = executions.add_stage(run, "test", 1)
    with pytest.raises(NotFound, match="stage 'test' of run 1 of pipeline 'build' has no job 'x'") as raised:  # fmt: skip
        executions.job(run, stage, "x")
    assert raised.value.within == {"pipeline": "build", "run": 1, "stage": "test"}
    # Retention deletes the oldest: "up to 3" sent one looking below the first kept.
    executions.cancel_run(run)
    for _ in range(2):
        executions.start_run("build", "abc")
    with executions._connection() as conn:
        conn.execute("DELETE FROM pipeline_executions WHERE run_number = 1")
    with pytest.raises(NotFound, match=r"pipeline 'build' has no run 1; its runs go from 2 to 3$"):
        executions.run("build", 1)


def test_paging_returns_each_run_exactly_once(schema: Database, executions: Store) -> None:
    schema.query(
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
        "SELECT 'build', md5(i::text) FROM generate_series(1, 1000) i RETURNING 1"
    )
    schema.query(
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
        "SELECT 'other', md5(i::text) FROM generate_series(1, 50) i RETURNING 1"
    )
    seen: list[int] = []
    before = None
    while True:
        page = executions.runs("build", limit=37, before=before)
        if not page:
            break
        assert [run.run_number for run in page] == sorted(
            (r.run_number for r in page), reverse=True
        )
        seen += [run.run_number for run in page]
        before = page[-1].run_number
    assert sorted(seen) == list(range(1, 1001))
    assert len(seen) == len(set(seen)) == 1000


# -- races -------------------------------------------------------------------------------
#
# Each trial sets up a run, then two writers, each on its own connection, go at once from
# behind a barrier. Whichever wins, no finished run or stage may keep an unfinished
# child, and a writer that is refused must have written nothing.

TRIALS = 40


@dataclass(frozen=True)
class Trial:
    run: store.PipelineRun
    stage: store.StageRun


def _running(executions: Store, done: str) -> Trial:
    """A RUNNING run with a RUNNING stage `build` and its PENDING job `compile`;
    `done` = "job" finishes the job, "stage" the job and the stage."""
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "build", 1), RUNNING)
    job = executions.add_job(stage, "compile")
    if done in ("job", "stage"):
        executions.set_status(executions.set_status(job, RUNNING), SUCCESS)
    if done == "stage":
        stage = executions.finish_stage(stage)
    return Trial(run, stage)


Move = Callable[[Store, Trial], object]


@dataclass(frozen=True)
class Race:
    done: str  # what _running finishes before the race
    first: Move  # cancels or finishes the parent
    second: Move  # adds children to it
    added: int  # how many rows the second adds when it is let through
    first_always_wins: bool  # cancelling cannot be refused; finishing can


RACES = {
    "cancel_run-add_stage": Race(
        "nothing",
        lambda s, t: s.cancel_run(t.run),
        lambda s, t: s.add_stage(t.run, "late", 2),
        1,
        True,
    ),
    "cancel_run-add_jobs": Race(
        "nothing",
        lambda s, t: s.cancel_run(t.run),
        lambda s, t: s.add_jobs(t.stage, [("late", False), ("later", True)]),
        2,
        True,
    ),
    "finish_run-add_stage": Race(
        "stage",
        lambda s, t: s.finish_run(t.run),
        lambda s, t: s.add_stage(t.run, "late", 2),
        1,
        False,
    ),
    "finish_stage-add_jobs": Race(
        "job",
        lambda s, t: s.finish_stage(t.stage),
        lambda s, t: s.add_jobs(t.stage, [("late", False), ("later", True)]),
        2,
        False,
    ),
    "cancel_stage-add_jobs": Race(
        "nothing",
        lambda s, t: s.set_status(t.stage, CANCELED),
        lambda s, t: s.add_jobs(t.stage, [("late", False), ("later", True)]),
        2,
        True,
    ),
    "fail_stage-add_jobs": Race(
        "job",
        lambda s, t: s.set_status(t.stage, FAILED),
        lambda s, t: s.add_jobs(t.stage, [("late", False), ("later", True)]),
        2,
        False,
    ),
}


def orphans(database: Database, run: store.PipelineRun) -> list[tuple[object, ...]]:
    """The run's unfinished stages if it finished, its stages' unfinished jobs if they did."""
    return database.query(
        "SELECT 'stage', s.stage_name, s.status, p.status FROM stage_executions s "
        "JOIN pipeline_executions p ON p.id = s.pipeline_execution_id "
        "WHERE p.id = %s AND p.status IN ('SUCCESS', 'FAILED', 'CANCELED') "
        "AND s.status IN ('PENDING', 'RUNNING') UNION ALL "
        "SELECT 'job', j.job_name, j.status, s.status FROM job_executions j "
        "JOIN stage_executions s ON s.id = j.stage_execution_id "
        "WHERE s.pipeline_execution_id = %s AND s.status IN ('SUCCESS', 'FAILED', 'CANCELED') "
        "AND j.status IN ('PENDING', 'RUNNING')",
        run.id,
        run.id,
    )


def late_rows(database: Database, trial: Trial) -> int:
    """The rows the adder of `trial` wrote."""
    [(count,)] = database.query(
        "SELECT (SELECT count(*) FROM stage_executions WHERE stage_name = 'late' "
        "AND pipeline_execution_id = %s) + (SELECT count(*) FROM job_executions "
        "WHERE job_name IN ('late', 'later') AND stage_execution_id = %s)",
        trial.run.id,
        trial.stage.id,
    )
    return int(str(count))


def race(database: Database, spec: Race) -> list[tuple[Trial, object, object]]:
    """`TRIALS` trials of `spec`: its two writers on their own threads and connections,
    released together. Returns each trial with what each writer returned or raised."""
    results = []
    with ExitStack() as stack:
        own = Store.on(stack.enter_context(database.connect()))
        stores = [Store.on(stack.enter_context(database.connect())) for _ in range(2)]
        with ThreadPoolExecutor(max_workers=2) as workers:
            for _ in range(TRIALS):
                trial = _running(own, spec.done)
                gate = Barrier(2)

                def go(i: int, trial: Trial = trial, gate: Barrier = gate) -> object:
                    gate.wait(timeout=30)
                    try:
                        return (spec.first, spec.second)[i](stores[i], trial)
                    except IllegalTransition as refused:
                        return refused

                first, second = (workers.submit(go, i) for i in range(2))
                # .result re-raises anything but IllegalTransition, a deadlock among them
                results.append((trial, first.result(timeout=60), second.result(timeout=60)))
    return results


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("name", list(RACES))
def test_racing_writers_leave_no_orphans(schema: Database, name: str, isolation: str) -> None:
    isolated(schema, isolation)
    spec = RACES[name]
    broken = []
    for trial, first, second in race(schema, spec):
        refused = [isinstance(outcome, IllegalTransition) for outcome in (first, second)]
        if spec.first_always_wins:
            assert not refused[0], first
        else:  # one of them finished or added first, so the other must be refused
            assert refused.count(True) == 1, (first, second)
        # A refused adder wrote nothing, an admitted one all it was asked to.
        assert late_rows(schema, trial) == (0 if refused[1] else spec.added), (first, second)
        if left := orphans(schema, trial.run):
            broken.append(left)
    assert not broken, f"{len(broken)} of {TRIALS} trials left orphans, e.g. {broken[0]}"


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
def test_a_write_refused_for_serialization_inside_the_callers_transaction_is_the_callers(
    schema: Database, isolation: str
) -> None:
    """Another writer moved the job after the caller's transaction took its snapshot:
    the server refuses the move (40001) and the transaction is over, so the store passes
    the error on rather than run the move again; alone, the same move is refused as
    READ COMMITTED refuses it (the races above run the store's own retries)."""
    isolated(schema, isolation)
    with schema.connect() as mine, schema.connect() as theirs:
        job = Store.on(mine).add_job(_running(Store.on(mine), "nothing").stage, "unit")
        with pytest.raises(psycopg.errors.SerializationFailure), mine.transaction():
            mine.execute("SELECT count(*) FROM job_executions")  # the snapshot
            Store.on(theirs).set_status(job, RUNNING)
            Store.on(mine).set_status(job, RUNNING)
        assert mine.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(IllegalTransition, match="is RUNNING and cannot move to RUNNING"):
            Store.on(mine).set_status(job, RUNNING)


def _waiting_on_a_lock(database: Database, pid: int) -> bool:
    [(waiting,)] = database.query("SELECT cardinality(pg_blocking_pids(%s)) > 0", pid)
    return bool(waiting)


@pytest.mark.parametrize("added", ["pending", "cancelled"])
@pytest.mark.parametrize("kind", ["stage", "run"])
def test_a_finisher_that_waited_for_an_adder_sees_what_it_added(
    schema: Database, kind: str, added: str
) -> None:
    """The exact interleaving the fast finish must survive: its statement has read the
    children when an adder, not yet committed, holds the parent; the adder commits while
    the finisher waits. The child it added is not in the finisher's snapshot, so the
    finisher must notice the parent changed and look again: it refuses while the child
    has not finished (`pending`), and finishes the parent from its children as they are
    now when the adder cancelled it before committing (`cancelled`): CANCELED."""
    with ExitStack() as stack:
        own = Store.on(stack.enter_context(schema.connect()))
        trial = _running(own, "stage" if kind == "run" else "job")
        adder_conn = stack.enter_context(schema.connect())
        finisher_conn = stack.enter_context(schema.connect())
        finisher = Store.on(finisher_conn)
        adder_conn.execute("BEGIN")  # the adder's statement, its commit held back
        adder = Store.on(adder_conn)
        late: store.StageRun | store.JobRun
        if kind == "run":
            late = adder.add_stage(trial.run, "late", 2)
        else:
            late = adder.add_job(trial.stage, "late")
        if added == "cancelled":
            late = adder.set_status(late, CANCELED)

        def finish() -> store.PipelineRun | store.StageRun:
            if kind == "run":
                return finisher.finish_run(trial.run)
            return finisher.finish_stage(trial.stage)

        with ThreadPoolExecutor(max_workers=1) as workers:
            outcome = workers.submit(finish)
            pid = finisher_conn.info.backend_pid
            deadline = datetime.now(UTC) + timedelta(seconds=30)
            while not _waiting_on_a_lock(schema, pid):
                assert not outcome.done(), outcome.result()  # it must wait for the adder
                assert datetime.now(UTC) < deadline, "the finisher never waited"
            adder_conn.execute("COMMIT")
            if added == "pending":
                with pytest.raises(IllegalTransition, match=r"cannot finish while 1 .* has not"):
                    outcome.result(timeout=30)
            else:
                finished = outcome.result(timeout=30)
                assert finished.status == CANCELED
                assert finished.completion_time and late.completion_time
                assert finished.completion_time >= late.completion_time
    assert orphans(schema, trial.run) == []


def test_a_finisher_that_waited_for_a_change_that_added_nothing_still_finishes(
    schema: Database,
) -> None:
    """The parent's version changed while the finisher waited, but no child came with it
    (an `add_jobs` of no jobs): the finisher goes the slow way, under the lock, and
    finishes the row as asked, with the status and the time it was given."""
    with ExitStack() as stack:
        own = Store.on(stack.enter_context(schema.connect()))
        trial = _running(own, "job")
        toucher_conn = stack.enter_context(schema.connect())
        finisher_conn = stack.enter_context(schema.connect())
        finisher = Store.on(finisher_conn)
        toucher_conn.execute("BEGIN")
        assert Store.on(toucher_conn).add_jobs(trial.stage, []) == []
        at = datetime.now(UTC) + timedelta(minutes=5)
        with ThreadPoolExecutor(max_workers=1) as workers:
            outcome = workers.submit(finisher.set_status, trial.stage, FAILED, at=at)
            deadline = datetime.now(UTC) + timedelta(seconds=30)
            while not _waiting_on_a_lock(schema, finisher_conn.info.backend_pid):
                assert not outcome.done(), outcome.result()
                assert datetime.now(UTC) < deadline, "the finisher never waited"
            toucher_conn.execute("COMMIT")
            finished = outcome.result(timeout=30)
        assert (finished.status, finished.completion_time) == (FAILED, at)
        assert own.stage(trial.run, "build") == finished


@pytest.mark.parametrize(
    ("jobs", "derived"),
    [
        ([("a", False, SUCCESS), ("b", False, FAILED)], FAILED),
        ([("a", False, SUCCESS), ("b", True, FAILED)], SUCCESS),
        ([("a", True, FAILED), ("b", False, CANCELED)], CANCELED),
    ],
)
def test_finishing_a_stage_that_never_started_names_the_status_its_jobs_give(
    executions: Store, jobs: list[tuple[str, bool, str]], derived: str
) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.add_stage(run, "test", 1)
    for job, (_, _, status) in zip(
        executions.add_jobs(stage, [(name, allowed) for name, allowed, _ in jobs]),
        jobs,
        strict=True,
    ):
        if status != CANCELED:
            job = executions.set_status(job, RUNNING)
        executions.set_status(job, status)
    with pytest.raises(IllegalTransition) as refused:
        executions.finish_stage(stage)
    assert str(refused.value).startswith(
        f"stage 'test' is PENDING and cannot move to {derived};"
    ), refused.value


def test_a_finish_at_a_time_before_the_start_names_the_status_asked(executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=T0)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING, at=T0)
    executions.set_status(
        executions.set_status(executions.add_job(stage, "unit"), RUNNING), SUCCESS
    )
    with pytest.raises(IllegalTransition, match=r"^stage cannot become FAILED at 2026-03-01 08:00"):
        executions.set_status(stage, FAILED, at=T0 - timedelta(hours=1))


# Every statement that reaches a run's jobs, by name.
RUN_JOB_STATEMENTS = {
    "FINISH": statements.FINISH[PipelineRun].decode(),
    "STAMP": statements.STAMP[PipelineRun],
    "LOCK_CHILDREN": statements.LOCK_CHILDREN[PipelineRun][1],
    "CANCEL_CHILDREN": statements.CANCEL_CHILDREN[PipelineRun][1][1],
}


@pytest.mark.parametrize("statement", list(RUN_JOB_STATEMENTS))
def test_finishing_or_cancelling_a_run_reads_its_own_jobs_not_every_job(
    schema: Database, executions: Store, statement: str
) -> None:
    """Finishing or cancelling a run reads (or locks, or cancels) its jobs through the
    jobs' index, stage by stage, never a scan of every job of every run (a join the
    planner turned into a hash join over the whole table on fresh statistics: 3.7 ms
    at 300 runs, seconds at 20 million jobs)."""
    schema.execute(MANY_JOBS)
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    [(plan,)] = schema.query(
        "EXPLAIN (FORMAT JSON) "
        + RUN_JOB_STATEMENTS[statement]
        .replace("%(parent)s", f"'{run.id}'::uuid")
        .replace("%(status)s", "NULL::text")
        .replace("%(at)s", "NULL::timestamptz")
    )

    assert ("Seq Scan", "job_executions") not in scans(plan[0]["Plan"])  # type: ignore[index]


def test_reads_find_what_exists(executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.add_stage(run, "test", 1)
    executions.add_stage(run, "deploy", 2)
    job = executions.add_job(stage, "unit", allows_failure=True)
    assert executions.stage(run, "test") == stage
    assert executions.job(run, stage, "unit") == job
    assert job.allows_failure is True
    assert [s.stage_name for s in executions.stages(run.id)] == ["test", "deploy"]
    assert executions.jobs(stage.id) == [job]


def test_runs_default_to_the_newest_twenty(schema: Database, executions: Store) -> None:
    schema.query(
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
        "SELECT 'build', md5(i::text) FROM generate_series(1, 25) i RETURNING 1"
    )
    assert [run.run_number for run in executions.runs("build")] == list(range(25, 5, -1))
    assert [run.run_number for run in executions.runs("build", before=3)] == [2, 1]


def test_cancel_run_stamps_every_row_with_its_time(executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=T0)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING, at=T0)
    executions.set_status(executions.add_job(stage, "unit"), RUNNING, at=T0)
    at = T0 + timedelta(minutes=3)
    run = executions.cancel_run(run, at=at)
    assert (run.status, run.completion_time) == (CANCELED, at)
    assert [(s.status, s.completion_time) for s in executions.stages(run)] == [(CANCELED, at)]
    assert [(j.status, j.completion_time) for j in executions.jobs(stage)] == [(CANCELED, at)]


def test_moves_stamp_the_right_time(executions: Store) -> None:
    for kind in ("run", "stage", "job"):
        run = executions.set_status(executions.start_run(kind, "abc"), RUNNING, at=T0)
        if kind == "run":  # a run with an unfinished stage cannot finish
            row = run
        else:
            stage = executions.set_status(executions.add_stage(run, "s", 1), RUNNING, at=T0)
            row = stage if kind == "stage" else executions.add_job(stage, "j")
        if kind == "job":
            row = executions.set_status(row, RUNNING, at=T0)
        assert (row.start_time, row.completion_time) == (T0, None)
        done = executions.set_status(row, SUCCESS, at=T0 + timedelta(seconds=9))
        assert (done.start_time, done.completion_time) == (T0, T0 + timedelta(seconds=9))


def test_one_connection_is_enough(schema: Database) -> None:
    """Finishing and cancelling run in one transaction, on the connection they borrowed."""
    with ConnectionPool(
        schema.settings.conninfo(), min_size=1, max_size=1, timeout=3, kwargs={"autocommit": True}
    ) as pool:
        single = Store.pooled(pool)
        run = single.set_status(single.start_run("build", "abc"), RUNNING)
        stage = single.set_status(single.add_stage(run, "test", 1), RUNNING)
        assert single.finish_stage(stage).status == SUCCESS
        single.add_stage(run, "deploy", 2)
        assert single.cancel_run(run).status == CANCELED
        other = single.set_status(single.start_run("build", "def"), RUNNING)
        assert single.finish_run(other).status == SUCCESS
        # The slow way of finishing (here for a time before the run started) moves the
        # row on the connection that locked it: a second one would never come.
        late = single.set_status(single.start_run("build", "ghi"), RUNNING)
        with pytest.raises(IllegalTransition, match="that is before it started"):
            single.finish_run(late, at=T0)


def test_a_move_without_a_time_is_said_to_be_now_when_refused(executions: Store) -> None:
    """A move at the server's clock (no `at`) that would end before its row started (one
    started in the future) is refused saying "now", not "at None" (helper-100), each way
    a job or a batch of jobs. (A finish or a cancel without a time takes the latest of its
    row's and its children's times: never before either.)"""
    later = datetime.now(UTC) + timedelta(days=3)
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=later)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING, at=later)
    job = executions.set_status(executions.add_job(stage, "unit"), RUNNING, at=later)
    refusals = [
        (lambda: executions.set_status(job, SUCCESS), "job cannot become SUCCESS now: "),
        (lambda: executions.set_statuses([job], SUCCESS), "jobs cannot become SUCCESS now: "),
    ]
    for move, said in refusals:
        with pytest.raises(IllegalTransition) as refused:
            move()
        assert said in str(refused.value) and " now" in str(refused.value), str(refused.value)
        assert "None" not in str(refused.value), str(refused.value)


def test_refusals_say_exactly_what_is_wrong(executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
    job = executions.add_job(stage, "unit")
    assert job.allows_failure is False
    with pytest.raises(AlreadyExists) as duplicate:
        executions.add_job(stage, "unit")
    assert str(duplicate.value) == "the stage already has a job of that name"
    with pytest.raises(IllegalTransition) as not_a_status:
        executions.set_status(run, "DONE")
    assert str(not_a_status.value) == (
        "'DONE' is not a status to move to; use one of RUNNING, SUCCESS, FAILED, CANCELED"
    )
    with pytest.raises(IllegalTransition) as stale:
        executions.set_status(job, SUCCESS)
    assert str(stale.value) == (
        "job 'unit' is PENDING and cannot move to SUCCESS; allowed: PENDING -> RUNNING -> "
        "SUCCESS | FAILED | CANCELED, PENDING -> CANCELED"
    )
    with pytest.raises(IllegalTransition) as unstarted:  # a stage finishes another way
        executions.set_status(executions.add_stage(run, "deploy", 2), FAILED)
    assert str(unstarted.value) == (
        "stage 'deploy' is PENDING and cannot move to FAILED; allowed: PENDING -> RUNNING -> "
        "SUCCESS | FAILED | CANCELED, PENDING -> CANCELED"
    )
    with pytest.raises(IllegalTransition) as one_left:
        executions.finish_stage(stage)
    assert str(one_left.value) == (
        "stage 'test' cannot finish while 1 job (unit) has not; finish or cancel it first"
    )
    executions.add_jobs(stage, [(name, False) for name in "fedcba"])
    with pytest.raises(IllegalTransition) as many_left:
        executions.finish_stage(stage)
    assert str(many_left.value) == (
        "stage 'test' cannot finish while 7 jobs (a, b, c, d, e) have not; "
        "finish or cancel them first"
    )


def test_a_row_that_is_gone_is_not_found(executions: Store) -> None:
    run = executions.start_run("build", "abc")
    ghost = replace(run, id=uuid4())
    for move in (
        lambda: executions.set_status(ghost, RUNNING),
        lambda: executions.cancel_run(ghost),
        lambda: executions.finish_run(ghost),
    ):
        with pytest.raises(NotFound) as raised:
            move()
        assert str(raised.value) == f"no run with id {ghost.id}"


def test_the_store_says_why_it_needs_autocommit(schema: Database) -> None:
    with psycopg.connect(schema.settings.conninfo()) as conn, pytest.raises(ValueError) as raised:
        Store.on(conn)
    assert str(raised.value) == "the store needs an autocommit connection"


def test_a_connection_changed_after_it_was_handed_over_is_refused_before_anything_is_written(
    schema: Database,
) -> None:
    """Autocommit turned off after Store.on: start_run and cancel_run said they had
    written, and nothing was, once the connection closed (psycopg's own transaction,
    never committed) (helper-114). Asked at every call, refused as a UsageError before
    anything is written; as it was, it works again."""
    with psycopg.connect(schema.settings.conninfo(), autocommit=True) as conn:
        executions = Store.on(conn)
        run = executions.start_run("changed", "abc")
        conn.autocommit = False
        for call in (
            lambda: executions.start_run("changed", "def"),
            lambda: executions.cancel_run(run),
        ):
            with pytest.raises(UsageError, match=r"^the store needs an autocommit connection$"):
                call()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.autocommit = True
        assert executions.cancel_run(run).status == "CANCELED"
    assert schema.query("SELECT run_number, status FROM pipeline_executions") == [(1, "CANCELED")]


def test_a_closed_connection_or_a_failed_transaction_is_refused_naming_it(
    schema: Database, tmp_path: Path
) -> None:
    """A closed connection was taken by Store.on and failed at the first call with
    psycopg's "the connection is closed"; a caller's failed transaction gave raw
    InFailedSqlTransaction from the store, report, insights, prune and the runner
    (helper-130). Each is a UsageError that says what to do."""
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    with psycopg.connect(schema.settings.conninfo(), autocommit=True) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        for call in (
            lambda: Store.on(conn).runs("p"),
            lambda: insights.insights(conn, "p", days=7),
            lambda: retention.prune(conn, keep_days=1, dry_run=True),
            lambda: migrations.Runner(conn, migrations.discover(tmp_path)).status(),
        ):
            with pytest.raises(UsageError, match="cannot work in a failed transaction"):
                call()
        conn.execute("ROLLBACK")
        assert Store.on(conn).runs("p") == []
    with pytest.raises(UsageError, match="needs an open connection; this one is closed"):
        Store.on(conn)


def test_the_store_in_a_callers_transaction_commits_with_it(schema: Database) -> None:
    """On an autocommit connection inside the caller's own transaction, the store's
    writes are the caller's to commit or roll back, as any statement there is."""
    with psycopg.connect(schema.settings.conninfo(), autocommit=True) as conn:
        executions = Store.on(conn)
        with pytest.raises(RuntimeError), conn.transaction():
            executions.start_run("held", "abc")
            raise RuntimeError
        with conn.transaction():
            executions.start_run("held", "def")
    assert schema.query("SELECT commit_hash FROM pipeline_executions") == [("def",)]


def test_a_move_inside_a_callers_transaction_is_stamped_when_it_happens(schema: Database) -> None:
    """A move with no `at` is stamped with the server's clock at the move: inside the
    caller's own transaction, now() is when that began, and a job started and finished
    in it took no time though it ran 0.3 s (one moved alone and one of a batch alike)."""
    with psycopg.connect(schema.settings.conninfo(), autocommit=True) as conn, conn.transaction():
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run("held", "abc"), RUNNING)
        stage = executions.set_status(executions.add_stage(run, "build", 1), RUNNING)
        alone, batched = executions.add_jobs(stage, [("alone", False), ("batched", False)])
        alone = executions.set_status(alone, RUNNING)
        (batched,) = executions.set_statuses([batched], RUNNING)
        time.sleep(0.3)
        alone = executions.set_status(alone, SUCCESS)
        (batched,) = executions.set_statuses([batched], SUCCESS)
    for job in (alone, batched):
        assert job.start_time is not None and job.completion_time is not None
        assert job.completion_time - job.start_time >= timedelta(seconds=0.3), job


# -- cancel against starters -------------------------------------------------------------


@pytest.mark.slow
def test_cancel_run_succeeds_while_its_stages_and_jobs_start(schema: Database) -> None:
    """Five writers start stages and jobs while a sixth cancels the run: the cancel always
    succeeds, and no completion (the run's, a stage's, a job's) precedes a start below it.

    The cancel's time cannot be the time its transaction began: a stage that starts after
    that and commits before the cancel locks it would then start after the run ended."""
    starters = 5
    failed = []
    with ExitStack() as stack:
        own = Store.on(stack.enter_context(schema.connect()))
        stores = [Store.on(stack.enter_context(schema.connect())) for _ in range(starters + 1)]
        with ThreadPoolExecutor(max_workers=starters + 1) as workers:
            for _ in range(TRIALS):
                run = own.set_status(own.start_run("build", "abc"), RUNNING)
                stages = [own.add_stage(run, f"s{i}", i) for i in range(starters)]
                jobs = [own.add_jobs(stage, [("a", False), ("b", False)]) for stage in stages]
                gate = Barrier(starters + 1)

                def start(
                    i: int,
                    gate: Barrier = gate,
                    stages: list[store.StageRun] = stages,
                    jobs: list[list[store.JobRun]] = jobs,
                ) -> None:
                    gate.wait(timeout=30)
                    try:
                        stores[i].set_status(stages[i], RUNNING)
                        for job in jobs[i]:
                            stores[i].set_status(job, RUNNING)
                    except IllegalTransition:
                        pass  # the cancel got there first: this is how a starter loses

                def cancel(gate: Barrier = gate, run: store.PipelineRun = run) -> object:
                    gate.wait(timeout=30)
                    try:
                        return stores[starters].cancel_run(run)
                    except IllegalTransition as refused:
                        return refused

                started = [workers.submit(start, i) for i in range(starters)]
                outcome = workers.submit(cancel).result(timeout=60)
                for future in started:
                    future.result(timeout=60)
                if isinstance(outcome, IllegalTransition):
                    failed.append(str(outcome))
                    continue
                late = schema.query(
                    "SELECT s.stage_name, j.job_name FROM pipeline_executions p "
                    "JOIN stage_executions s ON s.pipeline_execution_id = p.id "
                    "LEFT JOIN job_executions j ON j.stage_execution_id = s.id "
                    "WHERE p.id = %s AND (p.status <> 'CANCELED' OR s.start_time > p.completion_time "
                    "OR j.start_time > p.completion_time OR j.start_time > s.completion_time "
                    "OR s.status NOT IN ('CANCELED') OR j.status NOT IN ('CANCELED'))",
                    run.id,
                )
                assert not late, late
    assert not failed, f"{len(failed)} of {TRIALS} cancels failed, e.g. {failed[0]}"


# -- many jobs at once ------------------------------------------------------------------------


def _stage_of(executions: Store, jobs: int) -> list[store.JobRun]:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=T0)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING, at=T0)
    return executions.add_jobs(stage, [(f"job{n}", False) for n in range(jobs)])


def test_a_batch_of_jobs_moves_at_once_and_comes_back_as_stored(
    schema: Database, executions: Store
) -> None:
    jobs = _stage_of(executions, 5)
    running = executions.set_statuses(jobs, RUNNING, at=T0 + timedelta(seconds=1))
    done = executions.set_statuses(running, SUCCESS)
    assert [job.job_name for job in done] == [job.job_name for job in jobs]
    stored = {job.job_name: job for job in executions.jobs(jobs[0].stage_execution_id)}
    assert done == [stored[job.job_name] for job in jobs]
    assert {job.start_time for job in done} == {T0 + timedelta(seconds=1)}
    assert executions.set_statuses([], SUCCESS) == []


def test_a_batch_moves_all_or_none_and_names_the_job_that_may_not(
    schema: Database, executions: Store
) -> None:
    jobs = _stage_of(executions, 4)
    executions.set_status(jobs[2], RUNNING)
    before = snapshot(schema)
    with pytest.raises(IllegalTransition) as refused:
        executions.set_statuses(jobs, RUNNING)
    assert str(refused.value) == (
        "job 'job2' is RUNNING and cannot move to RUNNING; allowed: PENDING -> RUNNING -> "
        "SUCCESS | FAILED | CANCELED, PENDING -> CANCELED; no job of the batch moved"
    )
    assert snapshot(schema) == before
    with pytest.raises(IllegalTransition, match="job 'job1' is in the batch twice; list it once"):
        executions.set_statuses([jobs[0], jobs[1], jobs[1]], RUNNING)
    with pytest.raises(IllegalTransition) as not_a_status:
        executions.set_statuses(jobs, "DONE")
    assert str(not_a_status.value) == (
        "'DONE' is not a status to move to; use one of RUNNING, SUCCESS, FAILED, CANCELED"
    )
    with pytest.raises(IllegalTransition) as too_early:
        executions.set_statuses([jobs[2]], SUCCESS, at=T0 - timedelta(hours=1))
    assert str(too_early.value) == (
        "jobs cannot become SUCCESS at 2026-03-01 08:00:00+00:00: "
        "that is before one of them started"
    )
    assert snapshot(schema) == before


def test_a_refused_batch_reads_why_in_one_statement(
    schema: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long the batch, the job that may not move is found with one read, not one
    a job; and a job that does not exist is named as such."""
    sent: list[object] = []
    original = psycopg.Cursor.execute

    def counting(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return original(self, query, *args, **kwargs)

    # The store's cursors are psycopg's own class, whatever the connection's factory.
    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    with schema.connect() as conn:
        executions = Store.on(conn)
        jobs = _stage_of(executions, 300)
        executions.set_status(jobs[-1], RUNNING)
        sent.clear()
        with pytest.raises(IllegalTransition, match=r"^job 'job299' is RUNNING"):
            executions.set_statuses(jobs, RUNNING)
        assert len(sent) == 2  # the batch, and the one read of why
        gone = replace(jobs[0], id=uuid4())
        with pytest.raises(NotFound, match=f"^no job with id {gone.id}$"):
            executions.set_statuses([gone, *jobs[1:3]], RUNNING)


def test_jobs_given_as_a_generator_are_added_or_refused_like_a_list(executions: Store) -> None:
    jobs = _stage_of(executions, 1)
    stage = jobs[0].stage_execution_id
    added = executions.add_jobs(stage, ((f"gen{n}", n == 0) for n in range(3)))
    assert [(job.job_name, job.allows_failure) for job in added] == [
        ("gen0", True),
        ("gen1", False),
        ("gen2", False),
    ]
    with pytest.raises(UsageError, match="allows_failure of job 'bad' in"):
        executions.add_jobs(stage, ((name, "yes") for name in ["bad"]))  # type: ignore[misc]


def test_racing_batches_move_each_job_once(schema: Database, executions: Store) -> None:
    """Eight agents report the same jobs at once: one batch moves them all; the others,
    whichever jobs they reach first, move none."""
    jobs = _stage_of(executions, 50)
    barrier = Barrier(8)
    with ConnectionPool(
        schema.settings.conninfo(), min_size=8, max_size=8, open=True, kwargs={"autocommit": True}
    ) as pool:
        shared = Store.pooled(pool)

        def report(agent: int) -> str:
            order = jobs[agent:] + jobs[:agent]  # each agent lists them in another order
            barrier.wait()
            try:
                shared.set_statuses(order, RUNNING)
            except IllegalTransition:
                return "refused"
            return "moved"

        with ThreadPoolExecutor(max_workers=8) as agents:
            outcomes = sorted(agents.map(report, range(8)))
    assert outcomes == ["moved"] + ["refused"] * 7
    assert schema.query("SELECT DISTINCT status FROM job_executions") == [(RUNNING,)]


# -- arguments no table can hold: refused before anything is written -------------------

# Each writing call, with one argument of it given `bad`.
WRITES: dict[str, Callable[[Store, Trial, object], object]] = {
    "pipeline_name": lambda s, t, bad: s.start_run(bad, "abc"),  # type: ignore[arg-type]
    "commit_hash": lambda s, t, bad: s.start_run("p", bad),  # type: ignore[arg-type]
    "stage_name": lambda s, t, bad: s.add_stage(t.run, bad, 2),  # type: ignore[arg-type]
    "job_name": lambda s, t, bad: s.add_jobs(t.stage, [("ok", False), (bad, False)]),  # type: ignore[list-item]
}
# And each reading call that takes a name.
READS: dict[str, Callable[[Store, Trial, object], object]] = {
    "pipeline_name": lambda s, t, bad: s.runs(bad),  # type: ignore[arg-type]
    "stage_name": lambda s, t, bad: s.stage(t.run, bad),  # type: ignore[arg-type]
    "job_name": lambda s, t, bad: s.job(t.run, t.stage, bad),  # type: ignore[arg-type]
}
# Names no table can hold, by class: each is refused naming the argument and what is wrong.
BAD_NAMES = {
    "empty": ("", "is empty"),
    "nul": ("a\x00b", "holds a NUL byte (at character 2)"),
    "surrogate": ("a\udc80", "is not valid Unicode"),
    "too-long": ("é" * 501, "is 1,002 bytes as UTF-8; at most 1,000 are taken"),
    "not-text": (7, "must be text, not int"),
    "none": (None, "must be text, not NoneType"),
}


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("argument", [*WRITES, *(f"read {a}" for a in READS)])
def test_a_name_no_table_can_hold_is_refused_naming_the_argument(
    schema: Database, executions: Store, argument: str, bad: str
) -> None:
    """Refused as a UsageError (a ValueError too) that names the argument and what is
    wrong with it, never echoing the name, before anything is sent: no row written."""
    trial = _running(executions, "none")
    before = snapshot(schema)
    value, said = BAD_NAMES[bad]
    name = argument.removeprefix("read ")
    call = READS[name] if argument.startswith("read ") else WRITES[name]
    with pytest.raises(UsageError) as refused:
        call(executions, trial, value)
    assert isinstance(refused.value, ValueError)
    assert str(refused.value).startswith(f"`{name}` {said}"), str(refused.value)
    assert snapshot(schema) == before


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.text(max_size=400))
def test_any_text_is_stored_and_read_back_exactly_or_refused_whole(
    schema: Database, executions: Store, name: str
) -> None:
    """Any Unicode text as a pipeline, stage and job name (hypothesis): it comes back
    exactly, or the call is refused as a UsageError and writes nothing."""
    before = snapshot(schema)
    try:
        run = executions.start_run(name, "abc")
        stage = executions.add_stage(run, name, 1)
        (job,) = executions.add_jobs(stage, [(name, False)])
    except UsageError:
        assert snapshot(schema) == before
        return
    found = executions.run(name, run.run_number)
    assert found.pipeline_name == name
    assert executions.stage(found, name).stage_name == name
    assert executions.job(found, stage, name) == job


def test_the_longest_name_taken_fits_every_unique_index(executions: Store) -> None:
    """MAX_NAME_BYTES of text that does not compress, as pipeline, stage and job name:
    every unique index takes it (PostgreSQL's limit is about 2,700 bytes an entry)."""
    name = "".join(chr(0x4E00 + (n * 7919) % 20000) for n in range(MAX_NAME_BYTES // 3))
    assert len(name.encode()) <= MAX_NAME_BYTES
    run = executions.start_run(name, "abc")
    stage = executions.add_stage(run, name, 1)
    assert [job.job_name for job in executions.add_jobs(stage, [(name, False)])] == [name]


class _Raising(tzinfo):
    """A time zone whose code fails: the caller's bug, told as a bad `at`."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset")


class _DayOff(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=25)  # Python refuses offsets of a day or more


# Times the store can write but not read back, or would shift: each is refused, and the
# row keeps its status.
BAD_TIMES = {
    "naive": (datetime(2026, 1, 1, 9, 0), "has no time zone"),
    "after-9999-in-utc": (
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),
        "is out of range",
    ),
    "before-year-1-in-utc": (
        datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
        "is out of range",
    ),
    # Year 10000 in a session east of UTC (Tokyo): the last day of 9999 is refused.
    "late-on-9999-12-31-in-utc": (datetime(9999, 12, 31, 9, tzinfo=UTC), "is out of range"),
    "early-on-0001-01-01-in-utc": (datetime(1, 1, 1, 15, tzinfo=UTC), "is out of range"),
    "a-date": (date(2026, 1, 1), "must be a datetime, not date"),
    "tzinfo-that-raises": (datetime(2026, 1, 1, tzinfo=_Raising()), "gives no valid UTC offset"),
    "tzinfo-a-day-off": (datetime(2026, 1, 1, tzinfo=_DayOff()), "gives no valid UTC offset"),
}
MOVES_AT: dict[str, Callable[[Store, Trial, object], object]] = {
    "set_status": lambda s, t, at: s.set_status(t.run, CANCELED, at=at),  # type: ignore[arg-type]
    "set_statuses": lambda s, t, at: s.set_statuses(s.jobs(t.stage), RUNNING, at=at),  # type: ignore[arg-type]
    "finish_stage": lambda s, t, at: s.finish_stage(t.stage, at=at),  # type: ignore[arg-type]
    "cancel_run": lambda s, t, at: s.cancel_run(t.run, at=at),  # type: ignore[arg-type]
    "job to RUNNING": lambda s, t, at: s.set_status(s.jobs(t.stage)[0], RUNNING, at=at),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("bad", BAD_TIMES)
@pytest.mark.parametrize("move", MOVES_AT)
def test_a_time_that_could_not_be_read_back_or_would_shift_is_refused(
    schema: Database, executions: Store, move: str, bad: str
) -> None:
    """A time outside years 1 to 9999 once in UTC was written, then failed to read back,
    and every later report of the pipeline failed; a naive one was read in the session's
    time zone. Both are refused before anything is written."""
    trial = _running(executions, "job" if move == "finish_stage" else "none")
    before = snapshot(schema)
    at, said = BAD_TIMES[bad]
    with pytest.raises(UsageError) as refused:
        MOVES_AT[move](executions, trial, at)
    assert str(refused.value).startswith("`at` ") and said in str(refused.value)
    assert snapshot(schema) == before


@pytest.mark.parametrize(
    "zone", ["+15:59", "-15:59", "Asia/Tokyo", "Etc/GMT+12", "<+167>-167", "<-167>+167"]
)
@pytest.mark.parametrize("edge", ["earliest", "latest"])
def test_the_times_at_the_edges_the_store_takes_read_back_in_any_time_zone(
    schema: Database, zone: str, edge: str
) -> None:
    """The first and last instants `at=` takes are written, and read back by a session
    of any TimeZone (a POSIX zone PostgreSQL takes is up to 167 hours off UTC), through the store and
    the report."""
    at = errors.EARLIEST if edge == "earliest" else errors.LATEST
    time_zone = f"INTERVAL '{zone}' HOUR TO MINUTE" if zone[0] in "+-" else f"'{zone}'"
    with schema.connect() as conn:
        conn.execute(f"SET TIME ZONE {time_zone}")
        executions = Store.on(conn)
        run = executions.start_run("edges", "abc")
        executions.set_status(run, RUNNING, at=at)
        (found,) = executions.runs("edges")
        assert found.start_time == at
        view = report.fetch(executions, "edges", run=run.run_number)
        assert report.data(view)["run"]["start_time"] is not None
        assert "run status      RUNNING" in report.render(view, "table")
        # Four digits for the year 1 too: strftime wrote "1-01-08".
        shown = at.strftime("-%m-%d %H:%M:%S")
        assert f"run started     {at.year:04d}{shown}" in report.render(view, "table")


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda s, t: s.add_stage(t.run, "test", 2**31), "`execution_order` 2147483648 is out"),
        (lambda s, t: s.add_stage(t.run, "test", True), "`execution_order` must be a whole"),
        (lambda s, t: s.add_stage(t.run, "test", None), "`execution_order` must be a whole"),
        (
            lambda s, t: s.add_stage(t.run, "test", -(2**31) - 1),
            "`execution_order` -2147483649 is out",
        ),
        (
            lambda s, t: s.add_jobs(t.stage, [("j", None)]),
            "allows_failure of job 'j' in `jobs` must be",
        ),
        (lambda s, t: s.runs("build", limit=-1), "`limit` -1 is no count"),
        (lambda s, t: s.runs("build", limit=True), "`limit` True is no count"),
        (lambda s, t: s.runs("build", limit=2**63), "`limit` 9223372036854775808 is no count"),
        (lambda s, t: s.runs("build", before="5"), "`before` '5' is no run number"),
        (lambda s, t: s.run("build", True), "`run_number` True is no run number"),
        (lambda s, t: s.run("build", "1"), "`run_number` '1' is no run number"),
        (lambda s, t: s.run("build", 1.0), "`run_number` 1.0 is no run number"),
        (lambda s, t: s.run("build", 2**63), "`run_number` 9223372036854775808 is no run"),
        (lambda s, t: s.run("build", -(2**63) - 1), "`run_number` -9223372036854775809 is no"),
        (lambda s, t: s.runs("build", before=False), "`before` False is no run number"),
        (lambda s, t: s.runs("build", before=2**63), "`before` 9223372036854775808 is no run"),
        (
            lambda s, t: s.add_jobs(t.stage, [("a", False), ("a", True)]),
            "job 'a' is in `jobs` twice",
        ),
        (
            lambda s, t: s.add_jobs(t.stage, [("{jobs}", False), ("{jobs}", True)]),
            "job '{jobs}' is in `jobs` twice",
        ),
    ],
    ids=[
        "order-out-of-range",
        "order-bool",
        "order-none",
        "order-below-range",
        "allows-none",
        "limit",
        "limit-bool",
        "limit-past-bigint",
        "before-text",
        "run-bool",
        "run-text",
        "run-float",
        "run-past-bigint",
        "run-below-bigint",
        "before-bool",
        "before-past-bigint",
        "twice",
        "twice-a-name-with-braces",
    ],
)
def test_values_no_column_can_hold_are_refused_before_anything_is_written(
    schema: Database, executions: Store, call: Callable[[Store, Trial], object], said: str
) -> None:
    trial = _running(executions, "none")
    before = snapshot(schema)
    with pytest.raises(UsageError) as refused:
        call(executions, trial)
    assert str(refused.value).startswith(said), str(refused.value)
    assert snapshot(schema) == before


def test_adding_no_jobs_still_says_when_the_stage_is_missing_or_finished(
    executions: Store,
) -> None:
    trial = _running(executions, "stage")
    with pytest.raises(NotFound):
        executions.add_jobs(uuid4(), [])
    with pytest.raises(IllegalTransition, match="is SUCCESS; jobs can be added only before"):
        executions.add_jobs(trial.stage, [])
    open_stage = executions.add_stage(trial.run, "later", 2)
    assert executions.add_jobs(open_stage, []) == []


@pytest.mark.parametrize("entry", ["report", "insights", "retention"])
def test_the_library_entry_points_refuse_a_name_no_table_can_hold(
    schema: Database, entry: str
) -> None:
    with schema.connect() as conn, pytest.raises(UsageError, match="holds a NUL byte"):
        if entry == "report":
            report.fetch(Store.on(conn), "p\x00")
        elif entry == "insights":
            insights.insights(conn, "p\x00")
        else:
            retention.prune(conn, keep_days=1, pipeline="p\x00")


def test_kept_cursors_follow_the_sessions_encoding_and_time_zone(schema: Database) -> None:
    """Over one connection the store keeps a cursor per statement, whose dumpers and
    loaders hold the session's encoding and time zone: after a `SET` by another user
    of the connection, a name is still stored as given (not UTF-8 read as LATIN1) and
    a moved row reads as the row read back."""
    with schema.connect() as conn:
        executions = Store.on(conn)
        run = executions.start_run("warm", "c")
        stage = executions.add_stage(run, "s", 1)
        first, second = executions.add_jobs(stage, [("a", False), ("b", False)])
        executions.set_status(first, RUNNING)
        conn.execute("SET client_encoding TO 'LATIN1'")
        executions.start_run("José", "c")
        conn.execute("SET client_encoding TO 'UTF8'")
        conn.execute("SET TimeZone TO 'Asia/Tokyo'")
        moved = executions.set_status(second, RUNNING)
        assert repr(moved) == repr(executions.job(run, stage, "b"))
    assert schema.query(
        "SELECT count(*) FROM pipeline_executions WHERE pipeline_name = 'José'"
    ) == [(1,)]


# -- argument checks: the words and the ends of the ranges (mutation-found gaps) --


def test_runs_takes_limit_and_before_at_the_ends_of_their_ranges(migrated: Database) -> None:
    """limit 0 and 2**63-1, before -2**63 and 2**63-1 are in range: taken, not refused."""
    with migrated.connect() as conn:
        executions = Store.on(conn)
        run = executions.start_run("edges", "abc")
        assert executions.runs("edges", limit=0) == []
        assert [r.id for r in executions.runs("edges", limit=INT8_MAX)] == [run.id]
        assert [r.id for r in executions.runs("edges", before=INT8_MAX)] == [run.id]
        assert executions.runs("edges", before=INT8_MIN) == []


def test_runs_before_out_of_range_says_how_to_fix_it(migrated: Database) -> None:
    with migrated.connect() as conn, pytest.raises(UsageError) as refused:
        Store.on(conn).runs("edges", before=2**63)
    assert str(refused.value) == (
        "`before` 9223372036854775808 is no run number; give a whole number within "
        "bigint's range, or leave it out"
    )


def add_jobs_refusal(migrated: Database, jobs: list[tuple[str, object]]) -> str:
    """What add_jobs says refusing `jobs` for a new stage of a new run."""
    with migrated.connect() as conn:
        executions = Store.on(conn)
        stage = executions.add_stage(executions.start_run("p", "abc"), "s", 1)
        with pytest.raises(UsageError) as refused:
            executions.add_jobs(stage, jobs)  # type: ignore[arg-type]
    return str(refused.value)


def test_add_jobs_names_the_type_of_a_bad_allows_failure(migrated: Database) -> None:
    assert add_jobs_refusal(migrated, [("j", 1)]) == (
        "allows_failure of job 'j' in `jobs` must be True or False, not int"
    )


def test_add_jobs_names_the_job_listed_twice_not_the_first(migrated: Database) -> None:
    """The duplicate named is the one listed twice, not the first job."""
    assert add_jobs_refusal(migrated, [("a", False), ("b", False), ("b", True)]) == (
        "job 'b' is in `jobs` twice; list it once"
    )


def test_a_finish_at_a_time_before_what_ran_below_it_is_refused(
    schema: Database, executions: Store
) -> None:
    """The helper's case: a job ran 00:10-00:20; its stage finished at 00:05, its run at
    00:02, were accepted, and the stage's and run's durations came out wrong. Refused,
    writing nothing, whether the time is before the child's start or its completion;
    at or after the latest time below, accepted."""
    at = T0
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=at)
    stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING, at=at)
    (job,) = executions.add_jobs(stage, [("unit", False)])
    job = executions.set_status(job, RUNNING, at=at + timedelta(minutes=10))
    executions.set_status(job, SUCCESS, at=at + timedelta(minutes=20))
    before = snapshot(schema)
    for minutes in (5, 15):  # before the job's start; before its completion
        with pytest.raises(
            IllegalTransition,
            match=r"stage 'test' cannot become SUCCESS at .*: a job of it started or finished "
            r"later, at 2026-03-01 09:20:00\+00:00",
        ):
            executions.finish_stage(stage, at=at + timedelta(minutes=minutes))
    assert snapshot(schema) == before
    stage = executions.finish_stage(stage, at=at + timedelta(minutes=20))
    with pytest.raises(IllegalTransition, match=r"cannot become SUCCESS at .*: a stage of it"):
        executions.finish_run(run, at=at + timedelta(minutes=2))
    assert executions.finish_run(run, at=at + timedelta(minutes=30)).status == SUCCESS


# Each call of the store that takes a row, the argument that names it, and what it takes.
ROW_ARGUMENTS: dict[str, tuple[str, tuple[type, ...], Callable[[Store, Any, Any], object]]] = {
    "add_stage": ("run", (PipelineRun, UUID), lambda s, v, r: s.add_stage(v, "s", 9)),
    "add_jobs": ("stage", (StageRun, UUID), lambda s, v, r: s.add_jobs(v, [("j", False)])),
    "add_jobs pairs": ("jobs", (list,), lambda s, v, r: s.add_jobs(r["stage"], v)),
    "set_statuses": ("jobs", (JobRun,), lambda s, v, r: s.set_statuses([v], RUNNING)),
    "set_status": (
        "row",
        (PipelineRun, StageRun, JobRun),
        lambda s, v, r: s.set_status(v, RUNNING),
    ),
    "finish_stage": ("stage", (StageRun,), lambda s, v, r: s.finish_stage(v)),
    "finish_run": ("run", (PipelineRun,), lambda s, v, r: s.finish_run(v)),
    "cancel_run": ("run", (PipelineRun,), lambda s, v, r: s.cancel_run(v)),
    "stages": ("run", (PipelineRun, UUID), lambda s, v, r: s.stages(v)),
    "stage": ("run", (PipelineRun,), lambda s, v, r: s.stage(v, "s")),
    "jobs": ("stage", (StageRun, UUID), lambda s, v, r: s.jobs(v)),
    "job run": ("run", (PipelineRun,), lambda s, v, r: s.job(v, r["stage"], "j")),
    "job stage": ("stage", (StageRun,), lambda s, v, r: s.job(r["run"], v, "j")),
}


@pytest.mark.property
@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    call=st.sampled_from(sorted(ROW_ARGUMENTS)),
    value=st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.text(max_size=3),
        st.binary(max_size=2),
        st.sampled_from(["run", "stage", "job", "pair", "pairs of three"]),
    ),
)
def test_a_row_of_another_kind_or_no_row_is_refused_naming_its_argument(
    schema: Database, executions: Store, call: str, value: object
) -> None:
    """Every call that takes a run, stage or job, given anything else (None, a number, a
    name, a row of another kind: a stage where a run is asked for would be finished as
    the stage it is): UsageError naming the argument and what it takes, nothing written."""
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "s", 1), RUNNING)
    job = executions.add_job(stage, "j")
    rows: dict[str, object] = {"run": run, "stage": stage, "job": job}
    given_value = (
        {**rows, "pair": [("k", False)], "pairs of three": [("k", False, 1)]}.get(
            value,
            value,  # type: ignore[call-overload]
        )
        if isinstance(value, str)
        else value
    )
    argument, takes, method = ROW_ARGUMENTS[call]
    hypothesis_assume(not isinstance(given_value, takes))
    hypothesis_assume(given_value not in ("", b""))  # no pairs at all: nothing to add
    before = snapshot(schema)
    with pytest.raises(UsageError) as refused:
        method(executions, given_value, rows)
    assert str(refused.value).startswith(f"`{argument}` must be "), str(refused.value)
    assert snapshot(schema) == before


def test_jobs_given_as_a_generator_or_pairs_that_are_no_pairs(executions: Store) -> None:
    """A generator of jobs is read once, for its check and its move (the check used it up,
    and nothing moved: review); pairs of another length are refused naming `jobs`."""
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "s", 1), RUNNING)
    jobs = executions.add_jobs(stage, (pair for pair in [("a", False), ("b", False)]))
    moved = executions.set_statuses((job for job in jobs), RUNNING)
    assert [job.status for job in moved] == [RUNNING, RUNNING]
    assert [job.status for job in executions.jobs(stage)] == [RUNNING, RUNNING]
    for pairs in ([("k", False, 1)], [("k",)], "ab", None, [["k", False], "x"]):
        with pytest.raises(UsageError, match=r"^`jobs` must be \(name, allows_failure\) pairs"):
            executions.add_jobs(stage, pairs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "made",
    [
        {"row_factory": psycopg.rows.dict_row},
        {"row_factory": psycopg.rows.namedtuple_row},
        {"cursor_factory": psycopg.ClientCursor},
        {"cursor_factory": psycopg.RawCursor},
        # Dates written otherwise, which psycopg cannot read as text (helper-130).
        {"options": "-c DateStyle=SQL,DMY"},
        {"options": "-c DateStyle=German"},
    ],
    ids=["dict_row", "namedtuple_row", "ClientCursor", "RawCursor", "SQL-DMY", "German"],
)
def test_a_connection_that_makes_other_rows_or_cursors_serves_every_call(
    schema: Database, made: dict[str, Any]
) -> None:
    """A caller's connection with its own row_factory (dict_row) or cursor_factory
    (ClientCursor, as pgbouncer users choose; RawCursor) broke set_statuses (after it
    had written), cancel_run, a finish's slow path, insights and prune: they read rows
    by position through the connection's own cursors (helper-114). Every call works
    through such a connection, the connection keeps its factories, and the rows are
    what the same calls make through a plain one."""
    with psycopg.connect(schema.settings.conninfo(), autocommit=True, **made) as conn:
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run("factories", "abc"), RUNNING)
        stage = executions.set_status(executions.add_stage(run, "test", 1), RUNNING)
        unit, lint = executions.set_statuses(
            executions.add_jobs(stage, [("unit", False), ("lint", True)]), RUNNING
        )
        executions.set_status(unit, SUCCESS)
        executions.set_status(lint, FAILED)
        with schema.connect() as other:  # another writer touches the stage: the slow path
            other.execute(
                "UPDATE stage_executions SET stage_name = stage_name WHERE id = %s", [stage.id]
            )
        assert executions.finish_stage(stage).status == SUCCESS
        assert executions.finish_run(run).status == SUCCESS
        second = executions.start_run("factories", "def")
        assert executions.cancel_run(second).status == "CANCELED"
        assert [r.run_number for r in executions.runs("factories")] == [2, 1]
        assert [j.job_name for j in executions.jobs(executions.stages(run)[0])] == ["lint", "unit"]
        assert insights.insights(conn, "factories", days=7).runs == 2
        assert retention.prune(conn, keep_days=1, dry_run=True).runs == 0
        assert report.fetch(executions, "factories").runs[0].run_number == 2
        assert conn.row_factory is made.get("row_factory", psycopg.rows.tuple_row)
        assert conn.cursor_factory is made.get("cursor_factory", psycopg.Cursor)


def test_a_status_a_list_a_connection_or_a_row_that_is_not_one_is_refused_naming_it(
    schema: Database, executions: Store
) -> None:
    """What a Python caller passes by mistake failed deep inside (helper-114): a list as a
    status ("unhashable"), None or one job where jobs are asked for ("not iterable"),
    None or a pool as a connection (AttributeError), a subclass of JobRun (KeyError:
    the statements are chosen by a row's exact class). Each is a UsageError naming the
    argument, before anything is written; text that names no status to move to
    (PENDING, "running") stays IllegalTransition."""
    run = executions.set_status(executions.start_run("typed", "abc"), RUNNING)
    stage = executions.set_status(executions.add_stage(run, "s", 1), RUNNING)
    job = executions.add_job(stage, "j")

    class MyJob(JobRun):
        pass

    mine = MyJob(**{f.name: getattr(job, f.name) for f in dataclasses.fields(job)})
    pool = ConnectionPool(schema.settings.conninfo(), open=False)
    with schema.connect() as conn:
        calls: list[tuple[Callable[[], object], str]] = [
            *((lambda s=s: executions.set_status(job, s), "`status` ") for s in (None, ["RUNNING"], 1)),  # type: ignore[misc]
            (lambda: executions.set_statuses([job], None), "`status` None is no status"),  # type: ignore[arg-type]
            (lambda: executions.set_statuses(None, RUNNING), "`jobs` must be a list of JobRun, not a NoneType"),  # type: ignore[arg-type]
            (lambda: executions.set_statuses(job, RUNNING), "`jobs` must be a list of JobRun, not a JobRun"),  # type: ignore[arg-type]
            (lambda: executions.set_status(mine, RUNNING), "`row` must be a PipelineRun or StageRun or JobRun, not a MyJob"),
            (lambda: Store.on(None), "`conn` must be a psycopg.Connection, not a NoneType"),  # type: ignore[arg-type]
            (lambda: Store.on(pool), "`conn` must be a psycopg.Connection, not a ConnectionPool; for a pool, Store.pooled(pool)"),  # type: ignore[arg-type]
            (lambda: Store.pooled(None), "`pool` must be a psycopg_pool.ConnectionPool, not a NoneType"),
            (lambda: Store.pooled(conn), "`pool` must be a psycopg_pool.ConnectionPool, not a Connection; for one connection, Store.on(conn)"),
        ]  # fmt: skip
        before = snapshot(schema)
        for call, said in calls:
            with pytest.raises(UsageError) as refused:
                call()
            assert str(refused.value).startswith(said), (said, str(refused.value))
        assert snapshot(schema) == before
    with pytest.raises(IllegalTransition, match="'PENDING' is not a status to move to"):
        executions.set_statuses([job], "PENDING")


def test_a_finish_before_a_childs_time_is_refused_across_a_change_of_summer_time(
    migrated: Database,
) -> None:
    """The session in Berlin's time zone, the time given in the same zone on the night its
    clocks go back: 02:15 after the change (01:15 UTC) is before the job's finish at 02:20
    (01:20 UTC), though its clock reads earlier than the stage's start at 02:45 before the
    change (00:45 UTC). Python compares datetimes of one tzinfo by their clocks, so the
    stage's finish was taken for one before its own start, the check of its jobs' times
    skipped, and the finish written before its job's."""
    berlin = ZoneInfo("Europe/Berlin")
    utc = lambda h, m: datetime(2026, 10, 25, h, m, tzinfo=UTC)  # noqa: E731
    settings = replace(migrated.settings, parameters=(("options", "-c timezone=Europe/Berlin"),))
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run("clocks", "c"), RUNNING, at=utc(0, 30))
        stage = executions.set_status(executions.add_stage(run, "s", 1), RUNNING, at=utc(0, 45))
        job = executions.set_status(executions.add_job(stage, "j"), RUNNING, at=utc(0, 50))
        executions.set_status(job, SUCCESS, at=utc(1, 20))
        assert stage.start_time is not None and stage.start_time.tzinfo is berlin
        at = datetime(2026, 10, 25, 2, 15, fold=1, tzinfo=berlin)
        assert at.astimezone(UTC) == utc(1, 15)
        assert at.replace(tzinfo=None) < stage.start_time.replace(tzinfo=None)
        with pytest.raises(IllegalTransition, match="started or finished later") as refused:
            executions.finish_stage(stage, at=at)
        # Both times in one zone, UTC: the one asked for was in Berlin's, the job's in the
        # session's (helper-150: "at 12:00:25+00:00 ... later, at 02:00:30+14:00").
        assert str(refused.value).endswith(
            "cannot become SUCCESS at 2026-10-25 01:15:00+00:00: a job of it started or "
            "finished later, at 2026-10-25 01:20:00+00:00"
        ), str(refused.value)
        assert executions.finish_stage(stage, at=utc(1, 25)).status == SUCCESS


@pytest.mark.parametrize("over", ["connection", "pool"])
def test_a_migration_that_changes_a_returned_columns_type_does_not_stop_the_writers(
    schema: Database, over: str
) -> None:
    """psycopg prepares a statement sent often enough; a migration that then changes the
    type of a column it returns (run_number to bigint, say) made the server refuse that
    plan at every use, and psycopg kept it: every later call on the connection failed,
    for good, until the CI system reconnected (helper-137: 24,691 errors in 7 s). The
    plans are forgotten and the call run again."""
    with ExitStack() as stack:
        if over == "pool":
            pool = stack.enter_context(
                ConnectionPool(
                    schema.settings.conninfo(), min_size=1, max_size=1, open=True,
                    kwargs={"autocommit": True},
                )
            )  # fmt: skip
            store = Store.pooled(pool)
        else:
            store = Store.on(stack.enter_context(schema.connect()))
        for _ in range(8):  # past psycopg's prepare_threshold (5)
            store.start_run("build", "abc")
        schema.execute("ALTER TABLE pipeline_executions ALTER COLUMN run_number TYPE bigint")
        after = [store.start_run("build", "abc").run_number for _ in range(3)]
    assert after == [9, 10, 11]


def test_a_call_a_deadlock_ended_is_run_again(schema: Database) -> None:
    """A deadlock ends the call's transaction as a serialization failure does, with
    nothing of it kept (a live migration's ALTER TABLE and a writer lock the tables in
    turn: helper-137 met one). The call is run again: here the server's deadlock, raised
    on the first try by a trigger, gives one run, numbered once."""
    # The tries counted on a sequence, which the failed try's rollback does not undo.
    schema.execute(
        "CREATE SEQUENCE tried; CREATE FUNCTION deadlock_once() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN IF nextval('tried') = 1 THEN RAISE EXCEPTION "
        "'deadlock detected' USING ERRCODE = '40P01'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER deadlock_once BEFORE INSERT ON pipeline_executions "
        "FOR EACH ROW EXECUTE FUNCTION deadlock_once()"
    )
    with schema.connect() as conn:
        run = Store.on(conn).start_run("build", "abc")
    assert run.run_number == 1
    assert schema.query("SELECT count(*), max(run_number) FROM pipeline_executions") == [(1, 1)]
    assert schema.query("SELECT last_value FROM tried") == [(2,)]


def test_a_stages_jobs_come_in_the_order_of_their_names_bytes_whatever_the_collation(
    schema: Database,
) -> None:
    """`jobs()` (and the report, which lists them) read them ORDER BY job_name, in the
    database's collation: an ICU or a language's put `Job2` between `job10` and `job9`,
    so one run's report differed from server to server (helper-134). In the order of
    the names' bytes now, as Python sorts them and insights lists them."""
    try:  # the system's German locale (.ci/run makes it), as libc orders it
        schema.execute("CREATE COLLATION german (provider = libc, locale = 'de_DE.UTF-8')")
    except psycopg.errors.InvalidParameterValue:
        pytest.skip("no de_DE.UTF-8 locale here: localedef -i de_DE -f UTF-8 de_DE.UTF-8")
    schema.execute("ALTER TABLE job_executions ALTER COLUMN job_name TYPE text COLLATE german")
    names = ["job10", "job9", "Job2", "ab", "\u00e4b", "zeta"]
    with schema.connect() as conn:
        executions = Store.on(conn)
        stage = executions.add_stage(executions.start_run("build", "abc"), "test", 1)
        for name in names:
            executions.add_job(stage, name)
        assert [job.job_name for job in executions.jobs(stage)] == sorted(names, key=str.encode)


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        (
            "default_transaction_read_only",
            "on",
            "the store may not write: default_transaction_read_only is on in the "
            "connection's options (the URL's, the service's or PGOPTIONS): change it there",
        ),
        (
            "session_replication_role",
            "replica",
            "the store's triggers (run numbers, roll-ups) do not fire under "
            "session_replication_role = replica; nothing was written; session_replication_role "
            "is replica in the connection's options",
        ),
    ],
    ids=["read-only", "replica"],
)
def test_a_setting_that_stops_the_stores_writes_is_named_with_where_it_is_set(
    schema: Database, setting: str, value: str, said: str
) -> None:
    """Set for the session by a role, the database or PGOPTIONS: a write came back as the
    server's bare error (a null run_number under replica, where no trigger numbers the
    run), where a standby's refusal and a missing grant are named (helper-142)."""
    conninfo = schema.settings.conninfo(options=f"-c {setting}={value}")
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        pytest.raises(errors.ConfigError) as refused,
    ):
        Store.on(conn).start_run("build", "c1")
    assert str(refused.value).startswith(said), refused.value
    assert snapshot(schema) == []


def test_no_write_goes_in_under_replica_where_the_stores_triggers_do_not_fire(
    schema: Database, executions: Store
) -> None:
    """A run started elsewhere, moved and finished by a store whose session is a
    subscriber's (session_replication_role = replica): every call succeeded, and the
    finished run had no roll-up, silently (helper-145). Each write is refused, pooled
    too, before anything is written; reads go on."""
    run = executions.start_run("build", "c1")
    stage = executions.add_stage(run, "test", 1)
    [job] = executions.add_jobs(stage, [("unit", False)])
    before = snapshot(schema)
    conninfo = schema.settings.conninfo(options="-c session_replication_role=replica")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        replica = Store.on(conn)
        for write in (
            lambda: replica.set_status(job, RUNNING),
            lambda: replica.add_stage(run, "deploy", 2),
            lambda: replica.cancel_run(run),
        ):
            with pytest.raises(
                errors.ConfigError, match="do not fire under session_replication_role"
            ):
                write()
        assert replica.run("build", run.run_number).id == run.id
    with (
        ConnectionPool(conninfo, kwargs={"autocommit": True}, min_size=1, open=True) as pool,
        pytest.raises(errors.ConfigError, match="do not fire under session_replication_role"),
    ):
        Store.pooled(pool).cancel_run(run)
    assert snapshot(schema) == before


def test_no_write_goes_in_where_the_search_path_puts_an_operator_before_pg_catalogs(
    schema: Database, executions: Store
) -> None:
    """An `=` for uuid in a schema the caller's search_path puts before pg_catalog calls
    every two ids equal: add_jobs inserted three times the rows, and one job's move moved
    every job of the database, another pipeline's too (helper-146). The store asks the
    search_path before its first read or write, as report, insights and retention do."""
    run = executions.start_run("other", "c0")
    stage = executions.add_stage(run, "build", 1)
    executions.add_jobs(stage, [("j", False)])
    before = snapshot(schema)
    schema.execute(
        "CREATE SCHEMA evil; CREATE FUNCTION evil.ueq(uuid, uuid) RETURNS bool LANGUAGE sql "
        "AS 'SELECT true'; CREATE OPERATOR evil.= (leftarg = uuid, rightarg = uuid, "
        "function = evil.ueq)"
    )
    with schema.connect() as conn:
        conn.execute("SET search_path = evil, public, pg_catalog")
        with pytest.raises(errors.ConfigError, match=r"^this session's search_path"):
            Store.on(conn).jobs(stage)  # a Python caller's read: every job of the database
        with pytest.raises(errors.ConfigError) as refused:
            Store.on(conn).add_jobs(stage, [("j1", False), ("j2", False)])
    assert str(refused.value).startswith(
        "this session's search_path (evil, public, pg_catalog) searches evil before "
        "pg_catalog, with functions or operators named as PostgreSQL's (evil.=(uuid,uuid)"
    ), refused.value
    assert snapshot(schema) == before


def test_a_schema_in_the_way_is_named_as_sql_writes_it(schema: Database) -> None:
    """Its name unquoted (`searches Odd, "Name" before`) read as two schemas (helper-146)."""
    schema.execute(
        'CREATE SCHEMA "Odd, ""Name"""; CREATE FUNCTION "Odd, ""Name""".now() RETURNS '
        "timestamptz LANGUAGE sql AS 'SELECT pg_catalog.now()'"
    )
    with schema.connect() as conn:
        conn.execute('SET search_path = "Odd, ""Name""", public, pg_catalog')
        with pytest.raises(errors.ConfigError) as refused:
            store.check_search_path(conn)
    assert 'searches "Odd, ""Name""" before pg_catalog' in str(refused.value), refused.value


def test_a_replication_role_set_to_its_default_keeps_the_store_writing(schema: Database) -> None:
    """Only `replica` stops the store's triggers: `origin` named in the options (as a
    subscriber's role set back) is where the store writes as ever."""
    conninfo = schema.settings.conninfo(options="-c session_replication_role=origin")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        run = Store.on(conn).start_run("build", "c1")
    assert run.run_number == 1
    assert len(snapshot(schema)) == 1


def test_a_function_of_the_sessions_temporary_schema_is_no_reason_to_refuse(
    schema: Database,
) -> None:
    """current_schemas lists the session's temporary schema first once it has one, but
    PostgreSQL never looks a function or an operator up there: a `pg_temp.now()` changes
    no statement of cicd-db's."""
    with schema.connect() as conn:
        conn.execute(
            "CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql "
            "AS 'SELECT pg_catalog.now()'"
        )
        store.check_search_path(conn)


def test_a_search_path_refused_is_named_with_its_value_and_where_it_is_set(
    schema: Database,
) -> None:
    """Every schema searched before pg_catalog with something named as PostgreSQL's, what
    it holds, the search_path's value and where it is set: one refusal says all."""
    schema.execute(
        "CREATE SCHEMA clock; CREATE FUNCTION clock.now() RETURNS timestamptz LANGUAGE sql "
        "AS 'SELECT pg_catalog.now()'; CREATE SCHEMA text_ops; CREATE FUNCTION "
        "text_ops.upper(text) RETURNS text LANGUAGE sql AS 'SELECT $1'"
    )
    conninfo = schema.settings.conninfo(options="-c search_path=clock,text_ops,public,pg_catalog")
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        pytest.raises(errors.ConfigError) as refused,
    ):
        store.check_search_path(conn)
    assert str(refused.value) == (
        "this session's search_path (clock,text_ops,public,pg_catalog) searches clock, "
        "text_ops before pg_catalog, with functions or operators named as PostgreSQL's "
        "(clock.now(), text_ops.upper(text)): those would be the ones cicd-db's statements "
        "call; search_path is clock,text_ops,public,pg_catalog in the connection's options "
        "(the URL's, the service's or PGOPTIONS): change it there"
    )
