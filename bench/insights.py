"""Case `insights`: p50/p95 of `cicd-db insights` at the report case's scale (1,000,000
runs by default): one pipeline over 30 days and over its last 1,000 runs, and the
all-pipelines summary over 30 days, with the server's plan of each statement."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cicd_db import insights
from cicd_db.insights import query as insights_query

from .common import Databases, Table, one, percentile
from .report import PIPELINES, scale_database

VIEWS = (
    "one pipeline, 30 days",
    "one pipeline, last 1,000 runs",
    "all pipelines, 30 days",
)
BOUNDS_MS = {VIEWS[0]: 50.0, VIEWS[1]: 50.0, VIEWS[2]: 500.0}  # p95


def measure(
    dbs: Databases, total_runs: int, samples: int
) -> tuple[Table, dict[str, float], list[str]]:
    """The table, each view's p95 (ms), and the plans."""
    db = scale_database(dbs, total_runs)
    chooser = random.Random(11)
    picks = [f"pipeline-{chooser.randrange(PIPELINES):03d}" for _ in range(samples)]
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        # The loaded history ends in the past: its last start, plus a minute, is "now".
        now: datetime = one(conn, "SELECT max(start_time) FROM pipeline_executions")
        now += timedelta(minutes=1)
        calls: dict[str, Callable[[str], Any]] = {
            VIEWS[0]: lambda p: insights.insights(conn, p, days=30, now=now),
            VIEWS[1]: lambda p: insights.insights(conn, p, runs=1000, now=now),
            VIEWS[2]: lambda p: insights.insights(conn, None, days=30, now=now),
        }
        timings: dict[str, list[float]] = {name: [] for name in VIEWS}
        summary_samples = max(3, samples // 10)  # the summary is 100 pipelines' worth
        for name, call in calls.items():
            todo = picks if name != VIEWS[2] else picks[:summary_samples]
            # Warm, as the report case is: one untimed pass over the same samples, so
            # the figure is the statement's, not the disk's (this machine's page cache
            # is reclaimed while it idles, and a first read from disk took 60-90 ms).
            for pick in dict.fromkeys(todo):
                call(pick)
            for pick in todo:
                started = time.perf_counter()
                call(pick)
                timings[name].append((time.perf_counter() - started) * 1000)
        plans = explain(conn, picks[0], now)
    table = Table(
        f"Insights at {total_runs:,} runs ({PIPELINES} pipelines), ms",
        ["view", "p50", "p95", "max", "bound (p95)"],
    )
    p95s = {}
    for name, values in timings.items():
        p95s[name] = percentile(values, 0.95)
        table.rows.append(
            [
                name,
                f"{percentile(values, 0.5):.1f}",
                f"{p95s[name]:.1f}",
                f"{max(values):.1f}",
                f"<= {BOUNDS_MS[name]:.0f}",
            ]
        )
    table.notes.append(
        f"{samples} samples of each pipeline view at random pipelines "
        f"({summary_samples} of the summary), after one untimed pass over the same samples; "
        "one statement each."
    )
    return table, p95s, plans


def explain(conn: psycopg.Connection[Any], pipeline: str, now: datetime) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the one statement each view sends."""
    out = []
    for name, chosen, days, runs in (
        (VIEWS[0], pipeline, 30, None),
        (VIEWS[1], pipeline, None, 1000),
        (VIEWS[2], None, 30, None),
    ):
        params = insights_query._parameters(chosen, days, runs, now)
        query = insights_query._query(chosen, runs).as_bytes(conn)
        plan = [row[0] for row in conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + query, params)]
        out += [f"-- insights, {name}", *plan, ""]
    return out
