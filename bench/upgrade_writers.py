"""The writers of the upgrade-under-load case: processes that write the plan's run lives
(bench/workload.py) at a steady rate while `migrate up` runs, each statement timed and
its errors counted in the phase it ran in (before, during or after the upgrade).

Writers and prepared statements: a type change (TIMESTAMP -> TIMESTAMPTZ) makes every
server-side prepared statement that returns the column fail with "cached plan must not
change result type" until it is prepared again; `prepare_threshold` and `on_stale_plan`
choose how a writer meets it (bench/upgrade_under_load.py says more).
"""

from __future__ import annotations

import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg

from . import workload
from .common import percentile
from .workload import TABLES

WRITER_APP = "upgrade-bench-writer"
PHASES = ("before", "during", "after")
STALE_PLAN = "cached plan must not change result type"


@dataclass
class WriterReport:
    """What one writer saw, by phase: its statements' waits, errors, stale plans it
    recovered from; the rows it wrote (for the checks) and its slowest statements."""

    waits: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    errors: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PHASES})
    recovered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    written: dict[str, list[Any]] = field(default_factory=lambda: {t: [] for t in TABLES})
    slowest: list[tuple[float, float, str]] = field(default_factory=list)  # (ms, at, statement)


def writer(
    number: int,
    conninfo: str,
    rate: float,
    phase: Any,
    stop: Any,
    results: Any,
    pipelines: int,
    prepare_threshold: int | None,
    on_stale_plan: str,
) -> None:
    """One writer process: the plan's run lives at `rate` statements a second, each
    statement timed and its errors counted in the phase it ran in."""
    report = WriterReport()
    interval = 1.0 / rate
    next_at = time.monotonic()
    conn = psycopg.connect(conninfo, autocommit=True, application_name=WRITER_APP)
    conn.prepare_threshold = prepare_threshold

    def execute(statement: LiteralString, params: list[Any]) -> tuple[Any, ...] | None:
        nonlocal next_at, conn
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        current = PHASES[phase.value]
        started = time.monotonic()
        try:
            try:
                cursor = conn.execute(statement, params)
            except psycopg.errors.FeatureNotSupported as error:
                if on_stale_plan != "deallocate" or STALE_PLAN not in str(error):
                    raise
                # The application's remedy: forget the prepared statements, run it again.
                conn.execute("DEALLOCATE ALL")
                report.recovered[current] += 1
                cursor = conn.execute(statement, params)
            return cursor.fetchone() if cursor.description else None
        except psycopg.Error as error:
            report.errors[current][f"{error.sqlstate}: {str(error).splitlines()[0][:120]}"] += 1
            if conn.broken:
                conn = psycopg.connect(conninfo, autocommit=True, application_name=WRITER_APP)
                conn.prepare_threshold = prepare_threshold
            raise
        finally:
            elapsed = (time.monotonic() - started) * 1000
            report.waits[current].append(elapsed)
            if elapsed > 50:
                report.slowest.append((elapsed, started, statement.split("(")[0][:60]))

    life = 0
    while not stop.value:
        life += 1
        pipeline = f"pipeline-{(number * 7919 + life) % pipelines:03d}"
        try:
            workload.run_life(execute, pipeline, report.written)
        except psycopg.Error:
            continue  # counted; the next run starts afresh, as a CI system would
    conn.close()
    report.slowest = sorted(report.slowest, reverse=True)[:10]
    results.put((number, report))


def gather(results: Any, processes: list[Any]) -> dict[int, WriterReport]:
    """The writers' reports, by number, once each process has sent its own (a minute at
    most each), and the processes joined."""
    reports: dict[int, WriterReport] = {}
    while len(reports) < len(processes):
        try:
            number, report = results.get(timeout=60)
        except queue.Empty:
            break
        reports[number] = report
    for process in processes:
        process.join(timeout=10)
    return reports


def summary(values: list[float]) -> str:
    """Writers' single-statement waits in one line: how many, p50, p99, the longest."""
    if not values:
        return "no statements"
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return (
        f"{len(values):>7} stmts  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms  max {max(values):8.1f} ms"
    )
