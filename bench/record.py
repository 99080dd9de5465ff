"""Case `record`: runs of 5 stages x 20 jobs through their whole life, the store API
(one call a move, and with each stage's jobs moved as a batch) beside the same
statements written by hand, on one connection; then the store API on 8 connections
at once, in runs and statements a second."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, LiteralString

import psycopg

from cicd_db import migrations, store

from .common import MIGRATIONS, Databases, Table, paired, recording

STAGES, JOBS = 5, 20
WRITERS = 8


def record_with_store(executions: store.Store, pipeline: str) -> None:
    run = executions.set_status(executions.start_run(pipeline, "c0ffee"), store.RUNNING)
    for order in range(1, STAGES + 1):
        stage = executions.set_status(
            executions.add_stage(run, f"stage-{order}", order), store.RUNNING
        )
        for job in executions.add_jobs(stage, [(f"job-{n}", n == 1) for n in range(JOBS)]):
            executions.set_status(executions.set_status(job, store.RUNNING), store.SUCCESS)
        executions.finish_stage(stage)
    executions.finish_run(run)


def record_with_store_batched(executions: store.Store, pipeline: str) -> None:
    """The same life, as an agent that reports a stage's jobs together would record it."""
    run = executions.set_status(executions.start_run(pipeline, "c0ffee"), store.RUNNING)
    for order in range(1, STAGES + 1):
        stage = executions.set_status(
            executions.add_stage(run, f"stage-{order}", order), store.RUNNING
        )
        jobs = executions.add_jobs(stage, [(f"job-{n}", n == 1) for n in range(JOBS)])
        executions.set_statuses(executions.set_statuses(jobs, store.RUNNING), store.SUCCESS)
        executions.finish_stage(stage)
    executions.finish_run(run)


def statements_per_run(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn, recording() as sent:
        record_with_store(store.Store.on(conn), "counted")
        return len(sent)


def _writer(conninfo: str, number: int, start: float, until: float) -> tuple[int, int]:
    """One writer process: runs recorded from when the clock reads `start` until it reads
    `until`, and errors."""
    done = failed = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        executions = store.Store.on(conn)
        time.sleep(max(0.0, start - time.time()))  # all together: the rate is per second
        while time.time() < until:
            try:
                record_with_store(executions, f"w{number}")
                done += 1
            except psycopg.Error:  # counted, not raised: the figure is the finding
                failed += 1
    return done, failed


def concurrent(conninfo: str, seconds: float) -> tuple[float, int]:
    """Runs a second over WRITERS processes (a CI system's agents are processes, each
    with its connection) recording at once for `seconds`; and their errors."""
    with ProcessPoolExecutor(max_workers=WRITERS) as pool:
        start = time.time() + 2  # every process started and connected by then
        until = start + seconds
        futures = [pool.submit(_writer, conninfo, n, start, until) for n in range(WRITERS)]
        results = [future.result() for future in futures]
    return sum(done for done, _ in results) / seconds, sum(failed for _, failed in results)


def record_by_hand(conn: psycopg.Connection[Any], pipeline: str) -> None:
    """The same life, as the statements one would write without the store."""
    run = _returned(
        conn,
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status) "
        "VALUES (%s, 'c0ffee', 'PENDING') RETURNING id",
        [pipeline],
    )
    conn.execute(
        "UPDATE pipeline_executions SET status = 'RUNNING', start_time = now() WHERE id = %s", [run]
    )
    for order in range(1, STAGES + 1):
        stage = _returned(
            conn,
            "INSERT INTO stage_executions (pipeline_execution_id, stage_name, execution_order, "
            "status) VALUES (%s, %s, %s, 'PENDING') RETURNING id",
            [run, f"stage-{order}", order],
        )
        conn.execute(
            "UPDATE stage_executions SET status = 'RUNNING', start_time = now() WHERE id = %s",
            [stage],
        )
        jobs = conn.execute(
            "INSERT INTO job_executions (stage_execution_id, job_name, allows_failure, status) "
            "SELECT %s, name, name = 'job-1', 'PENDING' FROM unnest(%s::text[]) AS name "
            "RETURNING id",
            [stage, [f"job-{n}" for n in range(JOBS)]],
        ).fetchall()
        for (job,) in jobs:
            conn.execute(
                "UPDATE job_executions SET status = 'RUNNING', start_time = now() WHERE id = %s",
                [job],
            )
            conn.execute(
                "UPDATE job_executions SET status = 'SUCCESS', completion_time = now() "
                "WHERE id = %s",
                [job],
            )
        conn.execute(
            "UPDATE stage_executions SET status = 'SUCCESS', completion_time = now() WHERE id = %s",
            [stage],
        )
    conn.execute(
        "UPDATE pipeline_executions SET status = 'SUCCESS', completion_time = now() WHERE id = %s",
        [run],
    )


def _returned(conn: psycopg.Connection[Any], query: LiteralString, params: list[Any]) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def measure(
    dbs: Databases, rounds: int, runs_per_round: int = 20
) -> tuple[Table, dict[str, float]]:
    db = dbs.fresh("record")
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        migrations.Runner(conn, migrations.discover(MIGRATIONS)).apply()
    rates: dict[str, list[float]] = {
        "store API": [],
        "store API, jobs batched": [],
        "hand-written SQL": [],
    }
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        executions = store.Store.on(conn)
        record_with_store(executions, "warm-up")
        record_with_store_batched(executions, "warm-up-3")
        record_by_hand(conn, "warm-up-2")
        for round_number in range(rounds):
            ways: list[tuple[str, Callable[[int], None]]] = [
                ("store API", lambda i: record_with_store(executions, f"s{i}")),
                (
                    "store API, jobs batched",
                    lambda i: record_with_store_batched(executions, f"b{i}"),
                ),
                ("hand-written SQL", lambda i: record_by_hand(conn, f"h{i}")),
            ]
            random.Random(round_number).shuffle(ways)
            for name, way in ways:
                started = time.perf_counter()
                for i in range(runs_per_round):
                    way(i)
                rates[name].append(runs_per_round / (time.perf_counter() - started))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name in ("store API", "store API, jobs batched"):
        medians[f"{name} / hand-written SQL, paired"] = paired(
            rates[name], rates["hand-written SQL"]
        )
    table = Table(
        f"Record: runs of {STAGES} stages x {JOBS} jobs, whole life, one connection",
        ["way", "runs/s (median)", "min", "max", "store / this"],
    )
    for name, values in rates.items():
        table.rows.append(
            [
                name,
                f"{medians[name]:.1f}",
                f"{min(values):.1f}",
                f"{max(values):.1f}",
                f"{medians['store API'] / medians[name]:.2f}x",
            ]
        )
    for name in ("store API", "store API, jobs batched"):
        ratio = medians[f"{name} / hand-written SQL, paired"]
        table.notes.append(
            f"{name} / hand-written SQL, the median of the {rounds} rounds' own ratios: "
            f"{ratio:.3f}x."
        )
    # The run's start and RUNNING; a stage's insert, RUNNING, its jobs' insert, each job's
    # two moves and its finish; the run's finish.
    statements = 2 + STAGES * (4 + 2 * JOBS) + 1
    table.notes.append(
        f"{rounds} rounds of {runs_per_round} runs each (about {statements} "
        "statements a run by hand), interleaved."
    )
    per_run = statements_per_run(db.conninfo())
    rate, failed = concurrent(db.conninfo(), seconds=min(2.0 * rounds, 20.0))
    medians["store API, 8 writers"] = rate
    table.rows.append([f"store API, {WRITERS} writers at once", f"{rate:.1f}", "-", "-", "-"])
    table.notes.append(
        f"{WRITERS} writer processes, a connection each: {rate:.1f} runs/s, "
        f"{rate * per_run:,.0f} statements/s ({per_run} statements a run through the store), "
        f"{failed} errors."
    )
    return table, medians
