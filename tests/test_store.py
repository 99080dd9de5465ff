"""The execution store on a real server: run numbers, the state machine, derived statuses."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from cicd_db import store
from cicd_db.errors import AlreadyExists, IllegalTransition, NotFound
from cicd_db.store import CANCELED, FAILED, PENDING, RUNNING, SUCCESS, Store

from .conftest import Database

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


def test_concurrent_writers_get_every_number_once(schema: Database) -> None:
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


@pytest.mark.parametrize("kind", ["run", "stage", "job"])
@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transitions_change_nothing(
    schema: Database, executions: Store, kind: str, current: str, target: str
) -> None:
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
    assert executions.finish_stage(stage).status == expected
    # The run derives from its stages the same way.
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


def test_duplicates_and_impossible_times_are_refused(schema: Database, executions: Store) -> None:
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=T0)
    stage = executions.add_stage(run, "test", 1)
    executions.add_job(stage, "unit")
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
        executions.set_status(run, SUCCESS, at=T0 - timedelta(hours=1))
    assert snapshot(schema) == before


def test_reads_name_what_is_missing(executions: Store) -> None:
    with pytest.raises(NotFound, match="pipeline 'build' has no runs"):
        executions.run("build", 1)
    run = executions.start_run("build", "abc")
    with pytest.raises(NotFound, match="pipeline 'build' has no run 5; its runs go up to 1"):
        executions.run("build", 5)
    with pytest.raises(NotFound, match="run 1 of pipeline 'build' has no stage 'test'"):
        executions.stage(run, "test")
    stage = executions.add_stage(run, "test", 1)
    with pytest.raises(NotFound, match="stage 'test' of run 1 of pipeline 'build' has no job 'x'"):
        executions.job(run, stage, "x")


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


def test_the_store_needs_autocommit(schema: Database) -> None:
    with psycopg.connect(schema.settings.conninfo()) as conn, pytest.raises(ValueError):
        Store.on(conn)
