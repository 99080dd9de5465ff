"""Insights against an oracle: histories recorded through the store, every figure computed
again in Python from the same rows, and compared.

The oracle reads the three tables as they are and follows docs/reports.md ("Insights")
line by line, percentiles with percentile_cont's linear interpolation; it shares no code
with cicd_db.insights but the dataclasses it fills.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cicd_db import cli, errors, insights
from cicd_db.errors import NotFound, UsageError
from cicd_db.insights import (
    Day,
    JobFigures,
    PipelineInsights,
    PipelineLine,
    StageFigures,
    Summary,
    Window,
)
from cicd_db.insights.text import SPARKS
from cicd_db.store import CANCELED, FAILED, RUNNING, SUCCESS, Store

from .fix_cli import run_cli
from .fix_db import Database
from .test_report import display_width
from .utils import ROOT, examples

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
FINISHED = (SUCCESS, FAILED)


# -- recording a history -----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    name: str
    seconds: float
    status: str = SUCCESS  # SUCCESS or FAILED
    allows_failure: bool = False


@dataclass(frozen=True)
class Planned:
    """A run: stage `build` (its jobs), then stage `test` (its jobs), back to back. `end`:
    finish (the status the jobs give), cancel (while `test` runs), running (left so), or
    pending-cancel (cancelled before it started, at `start`)."""

    start: datetime
    commit: str = "c1"
    build: tuple[Job, ...] = (Job("compile", 60),)
    test: tuple[Job, ...] = (Job("unit", 120), Job("lint", 10, allows_failure=True))
    end: str = "finish"


def record(store: Store, pipeline: str, plan: Planned) -> None:
    run = store.start_run(pipeline, plan.commit)
    if plan.end == "pending-cancel":
        store.cancel_run(run, at=plan.start)
        return
    run = store.set_status(run, RUNNING, at=plan.start)
    clock = plan.start
    for order, (name, jobs) in enumerate((("build", plan.build), ("test", plan.test)), start=1):
        stage = store.set_status(store.add_stage(run, name, order), RUNNING, at=clock)
        added = store.add_jobs(stage, [(job.name, job.allows_failure) for job in jobs])
        added = store.set_statuses(added, RUNNING, at=clock) if added else []
        if name == "test" and plan.end != "finish":
            if plan.end == "cancel":
                store.cancel_run(run, at=clock + timedelta(seconds=5))
            return
        for row, job in zip(added, jobs, strict=True):
            store.set_status(row, job.status, at=clock + timedelta(seconds=job.seconds))
        clock += timedelta(seconds=max((job.seconds for job in jobs), default=1))
        store.finish_stage(stage, at=clock)
    store.finish_run(run, at=clock + timedelta(seconds=3))


@pytest.fixture
def conn(migrated: Database) -> Iterator[psycopg.Connection[Any]]:
    with migrated.connect() as connection:
        yield connection


def history(conn: psycopg.Connection[Any], *plans: Planned, pipeline: str = "build") -> str:
    store = Store.on(conn)
    for plan in plans:
        record(store, pipeline, plan)
    return pipeline


# -- the oracle ----------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """percentile_cont: linear interpolation between the two nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def seconds(row: dict[str, Any]) -> float | None:
    if row["status"] not in FINISHED:
        return None
    return float((row["completion_time"] - row["start_time"]).total_seconds())


@dataclass
class Rows:
    runs: list[dict[str, Any]]
    stages: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)  # by run id
    jobs: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)  # by stage id


def read_rows(conn: psycopg.Connection[Any]) -> Rows:
    def rows(query: str) -> list[dict[str, Any]]:
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            return cursor.execute(query.encode()).fetchall()

    found = Rows(rows("SELECT * FROM pipeline_executions"))
    for stage in rows("SELECT * FROM stage_executions"):
        found.stages.setdefault(stage["pipeline_execution_id"], []).append(stage)
    for job in rows("SELECT * FROM job_executions"):
        found.jobs.setdefault(job["stage_execution_id"], []).append(job)
    return found


def when(run: dict[str, Any]) -> datetime | None:
    return run["start_time"] or run["completion_time"]


def window_runs(
    rows: Rows, pipeline: str, days: int | None, runs: int | None, now: datetime
) -> tuple[list[dict[str, Any]], datetime | None]:
    mine = [r for r in rows.runs if r["pipeline_name"] == pipeline and when(r) is not None]
    mine = [r for r in mine if when(r) <= now]  # type: ignore[operator]
    if runs is not None:
        return sorted(mine, key=lambda r: r["run_number"])[-runs:], None
    assert days is not None
    today = now.astimezone(UTC).date()
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), UTC)
    return [r for r in mine if when(r) >= since], since  # type: ignore[operator]


def counts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    status = [r["status"] for r in runs]
    durations = [s for r in runs if (s := seconds(r)) is not None]
    return {
        "runs": len(runs),
        "success": status.count(SUCCESS),
        "failed": status.count(FAILED),
        "cancelled": status.count(CANCELED),
        "running": len([s for s in status if s not in (SUCCESS, FAILED, CANCELED)]),
        "duration_p50_seconds": percentile(durations, 0.5),
        "duration_p95_seconds": percentile(durations, 0.95),
    }


def day_list(runs: list[dict[str, Any]], since: datetime | None, now: datetime) -> list[Day]:
    def day_of(run: dict[str, Any]) -> date:
        return when(run).astimezone(UTC).date()  # type: ignore[union-attr]

    if since is not None:
        first, last = since.date(), now.astimezone(UTC).date()
    elif runs:
        first, last = min(map(day_of, runs)), max(map(day_of, runs))
    else:
        return []
    span = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [Day(date=d, **counts([r for r in runs if day_of(r) == d])) for d in span]


def streaks(runs: list[dict[str, Any]]) -> tuple[float | None, int, int]:
    """(mean time to recovery, recoveries, longest red streak) over finished runs in
    run-number order."""
    decided = sorted((r for r in runs if r["status"] in FINISHED), key=lambda r: r["run_number"])
    recoveries: list[float] = []
    longest = length = 0
    first_failed: datetime | None = None
    for run in decided:
        if run["status"] == FAILED:
            length += 1
            longest = max(longest, length)
            if first_failed is None:
                first_failed = run["completion_time"]
        else:
            if first_failed is not None:
                recoveries.append((run["completion_time"] - first_failed).total_seconds())
            first_failed, length = None, 0
    mean = sum(recoveries) / len(recoveries) if recoveries else None
    return mean, len(recoveries), longest


def worst_first(rate: float | None, p95: float | None) -> tuple[Any, ...]:
    return (rate is None, -(rate or 0), p95 is None, -(p95 or 0))


def oracle(
    conn: psycopg.Connection[Any],
    pipeline: str,
    *,
    days: int | None = None,
    runs: int | None = None,
    now: datetime = NOW,
) -> PipelineInsights:
    rows = read_rows(conn)
    if days is None and runs is None:
        days = 30
    chosen, since = window_runs(rows, pipeline, days, runs, now)
    stages = [s for r in chosen for s in rows.stages.get(r["id"], [])]
    commit_of = {s["id"]: r["commit_hash"] for r in chosen for s in rows.stages.get(r["id"], [])}
    jobs = [(s["stage_name"], j) for s in stages for j in rows.jobs.get(s["id"], [])]
    stage_figures = []
    for name in {s["stage_name"] for s in stages}:
        mine = [s for s in stages if s["stage_name"] == name]
        c = counts(mine)
        del c["running"]
        stage_figures.append(StageFigures(stage=name, **c))
    stage_figures.sort(
        key=lambda s: (*worst_first(s.failure_rate, s.duration_p95_seconds), s.stage)
    )
    job_figures = []
    for stage, name in {(stage, j["job_name"]) for stage, j in jobs}:
        mine = [j for s, j in jobs if (s, j["job_name"]) == (stage, name)]
        counted = [j for j in mine if not (j["status"] == FAILED and j["allows_failure"])]
        durations = [d for j in mine if (d := seconds(j)) is not None]
        failed_on = {commit_of[j["stage_execution_id"]] for j in counted if j["status"] == FAILED}
        passed_on = {commit_of[j["stage_execution_id"]] for j in mine if j["status"] == SUCCESS}
        job_figures.append(
            JobFigures(
                stage=stage,
                job=name,
                runs=len(mine),
                success=len([j for j in mine if j["status"] == SUCCESS]),
                failed=len([j for j in counted if j["status"] == FAILED]),
                allowed_failures=len(mine) - len(counted),
                cancelled=len([j for j in mine if j["status"] == CANCELED]),
                flaky_commits=len(failed_on & passed_on),
                duration_p50_seconds=percentile(durations, 0.5),
                duration_p95_seconds=percentile(durations, 0.95),
            )
        )
    job_figures.sort(
        key=lambda j: (
            j.failure_rate is None,
            -(j.failure_rate or 0),
            -j.flaky_commits,
            j.duration_p95_seconds is None,
            -(j.duration_p95_seconds or 0),
            j.stage,
            j.job,
        )
    )
    mttr, recoveries, longest = streaks(chosen)
    return PipelineInsights(
        pipeline=pipeline,
        window=Window(days, runs, since, now),
        **counts(chosen),
        mttr_seconds=mttr,
        recoveries=recoveries,
        longest_red_streak=longest,
        days=day_list(chosen, since, now),
        stages=stage_figures,
        jobs=job_figures,
    )


def oracle_summary(
    conn: psycopg.Connection[Any], *, days: int | None = None, runs: int | None = None
) -> Summary:
    rows = read_rows(conn)
    if days is None and runs is None:
        days = 30
    lines, since = [], None
    for pipeline in {r["pipeline_name"] for r in rows.runs}:
        chosen, since = window_runs(rows, pipeline, days, runs, NOW)
        if chosen:
            lines.append(
                PipelineLine(pipeline=pipeline, **counts(chosen), days=day_list(chosen, since, NOW))
            )
    lines.sort(key=lambda line: (-line.runs, line.pipeline))
    if days is not None:
        since = datetime.combine(NOW.date() - timedelta(days=days - 1), datetime.min.time(), UTC)
    return Summary(Window(days, runs, since, NOW), lines)


def same(actual: Any, expected: Any) -> None:
    """Equal, floats to within a rounding error (the database sums in another order)."""
    assert type(actual) is type(expected)
    if actual == expected:  # most often exactly: the walk below is the dear part
        return
    _same(asdict(actual), asdict(expected), "")


def _same(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, float) and isinstance(actual, float):
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), (where, actual, expected)
        for n, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _same(a, e, f"{where}[{n}]")
    else:
        assert actual == expected, (where, actual, expected)


def check(conn: psycopg.Connection[Any], pipeline: str, **window: Any) -> PipelineInsights:
    """The library's figures, after checking each against the oracle's."""
    found = insights.insights(conn, pipeline, now=NOW, **window)
    assert isinstance(found, PipelineInsights)
    same(found, oracle(conn, pipeline, **window))
    return found


def at(day: int, hour: float = 9) -> datetime:
    """`day` days before NOW's day (0: that day), at `hour` UTC."""
    midnight = datetime.combine(NOW.date(), datetime.min.time(), UTC)
    return midnight - timedelta(days=day) + timedelta(hours=hour)


# -- the cases ------------------------------------------------------------------------------


def test_figures_of_a_known_history_by_hand_and_by_the_oracle(
    conn: psycopg.Connection[Any],
) -> None:
    """Figures worked out by hand, so that the oracle itself is checked once."""
    failing = (Job("unit", 120, FAILED), Job("lint", 10, allows_failure=True))
    pipeline = history(
        conn,
        Planned(at(5, 9)),  # 183 s: build 60 + test 120 + 3
        Planned(at(5, 10), test=failing),  # FAILED, completes 10:03:03
        Planned(at(4, 9), test=failing),  # FAILED
        Planned(at(4, 11)),  # SUCCESS, completes 11:03:03: recovered 25 h after 10:03:03
        Planned(at(3, 9), end="cancel"),
        Planned(at(2, 9), test=failing),  # FAILED, completes 09:03:03
        Planned(at(2, 9.5)),  # SUCCESS, completes 09:33:03: recovered after 30 min
        Planned(at(1, 9), test=failing),  # FAILED: a streak that has not ended
        Planned(at(0, 9), end="running"),
    )
    found = check(conn, pipeline, days=7)
    assert (found.runs, found.success, found.failed, found.cancelled, found.running) == (
        9,
        3,
        4,
        1,
        1,
    )
    assert found.success_rate == pytest.approx(3 / 7)
    assert found.duration_p50_seconds == 183.0
    assert found.mttr_seconds == pytest.approx((25 * 3600 + 30 * 60) / 2)
    assert (found.recoveries, found.longest_red_streak) == (2, 2)
    assert [d.runs for d in found.days] == [0, 2, 2, 1, 2, 1, 1]
    [unit] = [j for j in found.jobs if j.job == "unit"]
    assert (unit.failed, unit.success, unit.cancelled, unit.flaky_commits) == (4, 3, 1, 1)
    [lint] = [j for j in found.jobs if j.job == "lint"]
    assert (lint.failed, lint.allowed_failures, lint.failure_rate) == (0, 0, 0.0)
    assert found.jobs[0].job == "unit"  # the worst first


def test_an_empty_window_has_its_days_and_no_figures(conn: psycopg.Connection[Any]) -> None:
    pipeline = history(conn, Planned(at(40)), Planned(at(35)))
    found = check(conn, pipeline, days=7)
    assert found.runs == 0
    assert found.success_rate is found.duration_p50_seconds is found.mttr_seconds is None
    assert len(found.days) == 7 and {d.runs for d in found.days} == {0}
    assert found.stages == found.jobs == []
    assert insights.data(found)["success_rate"] is None


def test_a_single_run(conn: psycopg.Connection[Any]) -> None:
    pipeline = history(conn, Planned(at(1)))
    found = check(conn, pipeline)
    assert found.duration_p50_seconds == found.duration_p95_seconds == 183.0
    assert found.success_rate == 1.0 and found.failure_rate == 0.0
    check(conn, pipeline, runs=1)


def test_all_cancelled_has_no_rate_and_no_duration(conn: psycopg.Connection[Any]) -> None:
    pipeline = history(
        conn,
        Planned(at(3), end="cancel"),
        Planned(at(2), end="pending-cancel"),
        Planned(at(1), end="cancel"),
    )
    found = check(conn, pipeline)
    assert (found.runs, found.cancelled) == (3, 3)
    assert found.success_rate is found.failure_rate is found.duration_p50_seconds is None
    [unit] = [j for j in found.jobs if j.job == "unit"]
    assert (unit.cancelled, unit.failure_rate, unit.duration_p50_seconds) == (2, None, None)


def test_running_runs_count_but_have_no_duration(conn: psycopg.Connection[Any]) -> None:
    pipeline = history(conn, Planned(at(2)), Planned(at(1, 10), end="running"))
    found = check(conn, pipeline)
    assert (found.runs, found.running) == (2, 1)
    assert found.duration_p50_seconds == found.duration_p95_seconds == 183.0


def test_a_run_crossing_midnight_counts_on_the_day_it_started(
    conn: psycopg.Connection[Any],
) -> None:
    long_test = (Job("unit", 3600),)
    pipeline = history(conn, Planned(at(2, 23.5), test=long_test))  # 23:30 to 00:31
    # The session's zone is the client's business: days are UTC days all the same.
    for zone in ("UTC", "America/Los_Angeles", "Pacific/Kiritimati", "UTC+5", "UTC-5"):
        conn.execute(f"SET TimeZone = '{zone}'".encode())
        found = check(conn, pipeline, days=4)
        assert [(d.date, d.runs) for d in found.days if d.runs] == [(at(2).date(), 1)]


# Zones a session may be in: names of the tz database, and POSIX forms, whose own
# abbreviation PostgreSQL 18 reads before its table: under 'UTC+5' (five hours behind),
# 'UTC' itself meant five hours behind in a query that named it.
_ZONE_NAMES = (
    "UTC",
    "Etc/UTC",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "America/Los_Angeles",
    "EST5EDT",
)
SESSION_ZONES = st.one_of(
    st.sampled_from(_ZONE_NAMES),
    st.builds(
        lambda name, hours, minutes: f"{name}{hours:+d}" + (f":{minutes:02d}" if minutes else ""),
        st.sampled_from(("UTC", "GMT", "Z", "XYZ", "<+03>")),
        st.integers(-14, 14),
        st.sampled_from((0, 30, 45)),
    ),
)


@given(zone=SESSION_ZONES)
@settings(max_examples=examples(15))
def test_days_and_the_window_are_utcs_in_any_session_time_zone(
    conn: psycopg.Connection[Any], zone: str
) -> None:
    # A plan prepared under another zone would keep that zone's reading of a constant.
    conn.prepare_threshold = None
    conn.execute(b"SET TimeZone = 'UTC'")
    pipeline = f"zones-{uuid.uuid4().hex[:8]}"
    history(
        conn,
        Planned(at(0, 3)),  # 03:00 on the last day: in a one-day window
        Planned(at(1, 23.5)),  # 23:30 the day before: out of it, in a two-day one
        Planned(at(2, 0.5)),
        pipeline=pipeline,
    )
    in_utc = [insights.insights(conn, pipeline, now=NOW, days=days) for days in (1, 2, 3)]
    conn.execute(psycopg.sql.SQL("SET TimeZone = {}").format(psycopg.sql.Literal(zone)))
    for days, expected in zip((1, 2, 3), in_utc, strict=True):
        found = check(conn, pipeline, days=days)
        assert found == expected, zone
    assert [found.runs for found in in_utc] == [1, 2, 3]
    assert in_utc[0].window.since == datetime.combine(NOW.date(), datetime.min.time(), UTC)


def test_the_window_ends_at_now_and_starts_at_a_utc_midnight(
    conn: psycopg.Connection[Any],
) -> None:
    pipeline = history(
        conn,
        Planned(at(6, 0.01)),  # just after the first midnight of a 7-day window: in
        Planned(at(7, 23.99)),  # just before it: out
        Planned(NOW + timedelta(minutes=5)),  # after now: out
    )
    found = check(conn, pipeline, days=7)
    assert found.runs == 1
    assert found.window.since == datetime.combine(at(6).date(), datetime.min.time(), UTC)
    assert found.window.until == NOW


def test_flaky_commits_and_allowed_failures_apart(conn: psycopg.Connection[Any]) -> None:
    unit_fails = (Job("unit", 100, FAILED), Job("lint", 10, allows_failure=True))
    lint_fails = (Job("unit", 100), Job("lint", 10, FAILED, allows_failure=True))
    pipeline = history(
        conn,
        Planned(at(3), "a", test=unit_fails),
        Planned(at(3, 10), "a"),  # passes on re-run: a is flaky for unit
        Planned(at(2), "b", test=unit_fails),
        Planned(at(2, 10), "b", test=unit_fails),  # fails twice: b is not flaky
        Planned(at(1), "c", test=lint_fails),
        Planned(at(1, 10), "c"),  # lint allows failure: not flaky, counted apart
    )
    found = check(conn, pipeline)
    jobs = {j.job: j for j in found.jobs}
    assert (jobs["unit"].flaky_commits, jobs["unit"].failed, jobs["unit"].success) == (1, 3, 3)
    assert (jobs["lint"].flaky_commits, jobs["lint"].allowed_failures) == (0, 1)
    assert (jobs["lint"].failed, jobs["lint"].failure_rate) == (0, 0.0)
    assert [s.stage for s in found.stages] == ["test", "build"]  # test failed, build never


def test_a_window_of_runs(conn: psycopg.Connection[Any]) -> None:
    plans = [Planned(at(day), test=(Job("unit", 60 * day + 1),)) for day in range(20, 0, -1)]
    pipeline = history(conn, *plans)
    found = check(conn, pipeline, runs=5)
    assert found.runs == 5 and found.window.since is None
    assert found.days[0].date == at(5).date()
    check(conn, pipeline, runs=500)


@pytest.mark.parametrize("written", ["-infinity", "infinity", "0100-01-01 BC", "0001-01-01 00:00Z"])
def test_a_time_written_by_hand_that_no_day_holds_counts_on_no_day(
    migrated: Database, conn: psycopg.Connection[Any], written: str
) -> None:
    """A run's time set by hand to what PostgreSQL takes and no listed day can hold: a
    window of runs counts it (a time to come: leaves it out), lists the other runs' days,
    and ends (a series of days to
    '-infinity' ran until the disk was full; a day before the year 1 failed to read)."""
    plans = [Planned(at(day), test=(Job("unit", 60),)) for day in (3, 2, 1)]
    pipeline = history(conn, *plans)
    # Should it regress, it fails in seconds instead of filling the disk.
    migrated.execute(
        f"ALTER DATABASE {migrated.name} SET statement_timeout = '20s'; "
        f"ALTER DATABASE {migrated.name} SET temp_file_limit = '50MB'"
    )
    conn.execute(
        "UPDATE pipeline_executions SET start_time = %s, completion_time = NULL, "
        "status = 'RUNNING' WHERE pipeline_name = %s AND run_number = 1",
        [written, pipeline],
    )
    target = ("--database-url", migrated.url, "--format", "json")
    for command in (("--pipeline", pipeline), ()):
        shown = run_cli("insights", *target, "--runs", "5", *command)
        assert shown.code == 0, shown.err
        found = json.loads(shown.out)
        line = found if command else found["pipelines"][0]
        assert line["runs"] == (2 if written == "infinity" else 3)  # a future: out
        assert [day["date"] for day in line["days"]] == [
            at(day).date().isoformat() for day in (2, 1)
        ], line["days"]


def test_the_summary_is_each_pipeline_busiest_first(conn: psycopg.Connection[Any]) -> None:
    history(conn, Planned(at(1)), pipeline="small")
    history(conn, Planned(at(2)), Planned(at(1), end="cancel"), pipeline="big")
    history(conn, Planned(at(50)), pipeline="old")
    for window in ({"days": 30}, {"runs": 1}, {"runs": 10}):
        found = insights.insights(conn, now=NOW, **window)
        assert isinstance(found, Summary)
        same(found, oracle_summary(conn, **window))
    found = insights.insights(conn, now=NOW)
    assert isinstance(found, Summary)
    assert [line.pipeline for line in found.pipelines] == ["big", "small"]


def test_bad_windows_and_unknown_pipelines(conn: psycopg.Connection[Any]) -> None:
    history(conn, Planned(at(1)))
    with pytest.raises(UsageError, match=r"^`days` and `runs` both choose the window; give one"):
        insights.insights(conn, "build", days=3, runs=3)
    with pytest.raises(UsageError, match=r"^`days` 0 is out of range; give 1 to 3660$"):
        insights.insights(conn, "build", days=0)
    with pytest.raises(UsageError) as empty:
        insights.insights(conn, "")
    assert cli.phrased(empty.value) == "--pipeline is empty; give a name, or leave --pipeline out"
    with pytest.raises(NotFound, match="'nope' has no runs") as missing:
        insights.insights(conn, "nope")
    assert cli.phrased(missing.value).endswith("or leave --pipeline out to list every pipeline")


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), "`now` 0001-01-01T00:00:00+00:00 is out of range"),
        (
            datetime(1, 1, 20, tzinfo=UTC),
            "`now` 0001-01-20T00:00:00+00:00 is too early for a window of 30 days: it would "
            "begin in the year 0",
        ),
        (
            datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14))),
            "`now` 9999-12-31T23:59:00-14:00 is out of range",
        ),
        ("2026-12-06", "`now` must be a datetime, not str"),
    ],
    ids=["year-1", "window-before-year-1", "year-10000-in-utc", "text"],
)
def test_a_now_out_of_range_is_refused_before_anything_is_read(
    conn: psycopg.Connection[Any], now: object, message: str
) -> None:
    """As the store refuses such an `at`: the server's "timestamp too small", a TypeError
    or an AttributeError came out of the library before."""
    with pytest.raises(UsageError) as refused:
        insights.insights(conn, now=now)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message)


def test_a_window_that_begins_at_the_earliest_time_is_taken(
    conn: psycopg.Connection[Any],
) -> None:
    """The window begins at the midnight of `now` less its days but one: one that begins
    at 0001-01-08 itself is taken, one a day earlier refused, naming where it begins."""
    early = datetime(1, 1, 8, 12, tzinfo=UTC)
    assert insights.insights(conn, days=1, now=early).window.since == errors.EARLIEST
    assert insights.insights(conn, days=2, now=early + timedelta(days=1, hours=11)).pipelines == []
    with pytest.raises(UsageError) as refused:
        insights.insights(conn, days=2, now=early)
    assert str(refused.value) == (
        "`now` 0001-01-08T12:00:00+00:00 is too early for a window of 2 days: it would "
        "begin at 0001-01-07, before the earliest time cicd-db takes, 0001-01-08"
    )


@pytest.mark.parametrize("pipeline", ["build", None], ids=["one", "all"])
def test_a_run_from_a_clock_at_1970_costs_no_more_than_the_longest_window_of_days(
    conn: psycopg.Connection[Any], pipeline: str | None
) -> None:
    """By runs, the days listed ran from the first run's day to the last one's: one run
    stamped 1970 (an agent's clock) made 20,000 empty days, 5 MB of JSON and a 28 s
    page; one in the year 1, 1.7 GB. At most MAX_DAYS days now, ending with the last
    run's; the older run still counts in the figures."""
    history(conn, Planned(datetime(1970, 1, 1, tzinfo=UTC)), Planned(at(1)))
    found = insights.insights(conn, pipeline, runs=2, now=NOW)
    line = found if isinstance(found, PipelineInsights) else found.pipelines[0]
    assert len(line.days) == insights.MAX_DAYS and line.runs == 2
    assert line.days[-1].date == at(1).date() and line.days[-1].runs == 1
    assert sum(day.runs for day in line.days) == 1


# -- random histories -------------------------------------------------------------------

JOB_STATUS = st.sampled_from([SUCCESS, SUCCESS, SUCCESS, FAILED])
ENDS = st.sampled_from(["finish"] * 6 + ["cancel", "running", "pending-cancel"])


@st.composite
def plans(draw: st.DrawFn) -> Planned:
    start = NOW - timedelta(seconds=draw(st.integers(-3600, 9 * 86400)))
    return Planned(
        start=start,
        commit=draw(st.sampled_from(["a", "b", "c"])),
        build=(Job("compile", draw(st.integers(1, 600)), draw(JOB_STATUS)),),
        test=(
            Job("unit", draw(st.integers(1, 4000)), draw(JOB_STATUS)),
            Job("lint", draw(st.integers(1, 60)), draw(JOB_STATUS), allows_failure=True),
        ),
        end=draw(ENDS),
    )


@settings(max_examples=examples(25))
@given(st.lists(plans(), max_size=12), st.integers(1, 9), st.integers(1, 15))
def test_random_histories_agree_with_the_oracle(
    conn: psycopg.Connection[Any], plans: list[Planned], days: int, runs: int
) -> None:
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    history(conn, Planned(at(1)), *plans, pipeline=pipeline)
    check(conn, pipeline, days=days)
    check(conn, pipeline, runs=runs)


# -- the command and its formats ---------------------------------------------------------


def recent(conn: psycopg.Connection[Any]) -> str:
    """A history in the last few days of the real clock (the command reads the server's)."""
    today = datetime.now(UTC) - timedelta(hours=1)
    failing = (Job("unit", 130, FAILED), Job("lint", 10, allows_failure=True))
    plans = [
        Planned(today - timedelta(days=day, hours=hour), f"c{day}", test=failing if hour else ())
        for day in range(6)
        for hour in (0, 2)
    ]
    return history(conn, *plans, Planned(today, "c9", end="cancel"))


def json_keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in json_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in json_keys(item)}
    return set()


def test_the_command_in_every_text_format(
    migrated: Database, conn: psycopg.Connection[Any]
) -> None:
    pipeline = recent(conn)
    target = ("--database-url", migrated.url)
    expected = insights.insights(conn, pipeline, days=7)
    table = run_cli("insights", *target, "--pipeline", pipeline, "--days", "7")
    assert table.code == 0, table.err
    assert max(display_width(line) for line in table.out.splitlines()) <= 80
    assert "success rate     50.0% of 12 finished" in table.out
    assert any(ch in table.out for ch in SPARKS)
    assert not re.search(r"(?<![0-9.])0\.0s", table.out)
    as_json = run_cli(
        "insights", *target, "--pipeline", pipeline, "--days", "7", "--format", "json"
    )
    found = json.loads(as_json.out)
    del found["window"]["until"]
    wanted = insights.data(expected)
    del wanted["window"]["until"]
    assert found == wanted
    as_yaml = run_cli(
        "insights", *target, "--pipeline", pipeline, "--days", "7", "--format", "yaml"
    )
    assert yaml.safe_load(as_yaml.out)["jobs"] == found["jobs"]
    # `-o -` is the standard output, as most tools take it, not a file named "-".
    dashed = run_cli(
        "insights", *target, "--pipeline", pipeline, "--days", "7", "--format", "yaml", "-o", "-"
    )
    assert dashed.code == 0, dashed.err
    written, shown = yaml.safe_load(dashed.out), yaml.safe_load(as_yaml.out)
    del written["window"]["until"], shown["window"]["until"]  # now(), at each call
    assert written == shown
    assert not (ROOT / "-").exists()
    summary = run_cli("insights", *target, "--runs", "5")
    assert summary.code == 0 and pipeline in summary.out
    assert max(display_width(line) for line in summary.out.splitlines()) <= 80
    # Every key either structure has is documented.
    section = (ROOT / "docs" / "reports.md").read_text().split("## Insights", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.M))
    summary_json = run_cli("insights", *target, "--format", "json")
    assert json_keys(found) | json_keys(json.loads(summary_json.out)) <= documented


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--days", "3", "--runs", "3"], 2, "error: --days and --runs both choose the window"),
        (["--days", "0"], 2, "is not a whole number above 0"),
        (["--pipeline", "nope"], 1, "error: pipeline 'nope' has no runs"),
        (["--pipeline", ""], 2, "error: --pipeline is empty"),
        # JSON was written into the page asked for (helper-144).
        (
            ["--json", "--format", "html", "-o", "/nonexistent/page.html"],
            2,
            "error: --json and --format html ask for two formats; give one of them",
        ),
        (["--format", "yaml", "--json"], 2, "error: --json and --format yaml ask for two formats"),
    ],
)
def test_command_errors_are_one_line(
    migrated: Database, args: list[str], code: int, message: str
) -> None:
    done = run_cli("insights", "--database-url", migrated.url, *args)
    assert (done.code, done.out) == (code, "")
    assert message in done.err and len(done.err.splitlines()) == 1


def test_a_long_pipeline_name_keeps_the_summary_within_80_columns(
    conn: psycopg.Connection[Any],
) -> None:
    history(conn, Planned(at(1)), pipeline="integration-against-every-postgres-major-" * 3)
    found = insights.insights(conn, now=NOW)
    assert max(display_width(line) for line in insights.table(found).splitlines()) <= 80


# -- the page, in a real browser -----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(page: Path, tmp_path: Path) -> tuple[str, bytes]:
    """The page rendered by headless Chromium with name resolution off: its DOM, and a
    PNG screenshot."""
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: nothing may be fetched
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,1800", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr
    return dom.stdout, shot.read_bytes()


def pixels(png: bytes) -> list[tuple[int, ...]]:
    """The RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, header = 8, [], b""
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, body = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    step = 4 if color == 6 else 3
    raw, stride = zlib.decompress(b"".join(chunks)), width * step
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                near = min(
                    (abs(guess - left), 0, left),
                    (abs(guess - up), 1, up),
                    (abs(guess - corner), 2, corner),
                )
                line[i] = (line[i] + near[2]) & 0xFF
        rows.append(line)
        previous = line
    return [tuple(row[i : i + 3]) for row in rows for i in range(0, stride, step)]


def test_the_page_renders_offline_in_chromium_with_its_figures(
    migrated: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pipeline = recent(conn)
    page = tmp_path / "insights.html"
    done = run_cli(
        "insights", "--database-url", migrated.url, "--pipeline", pipeline,
        "--format", "html", "-o", str(page),
    )  # fmt: skip
    assert done.code == 0, done.err
    text = page.read_text()
    # Self-contained: no script, style sheet, image or font from elsewhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text, re.I)
    dom, png = browse(page, tmp_path)
    expected = insights.data(insights.insights(conn, pipeline))
    shown = {
        key: json.loads(html.unescape(value))
        for key, value in re.findall(r'data-figure="([a-z_0-9]+)" data-value="([^"]*)"', dom)
    }
    assert shown and shown == {key: expected[key] for key in shown}
    assert {"runs", "success_rate", "duration_p50_seconds", "mttr_seconds"} <= set(shown)
    for section in ("status-per-day", "duration-per-day", "slowest-jobs", "flakiest-jobs"):
        assert re.search(f'<section id="{section}">.*?<svg', dom, re.S), section
    # Not blank: many colours, and the bars in colour (green for success, red for failed).
    seen = pixels(png)
    colored = [p for p in seen if max(p) - min(p) > 60]
    assert len(set(seen)) > 50 and len(colored) > 2000


def test_the_demo_tells_its_story_and_never_shows_zero_seconds(
    migrated: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--database-url", migrated.url],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # where it writes its page, not the checkout
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not re.search(r"(?<![0-9.])0\.0s", done.stdout)
    shown = [line for line in done.stdout.splitlines() if not line.startswith("$ ")]
    assert max(map(display_width, shown)) <= 80  # the commands echoed aside
    api = insights.insights(conn, "demo-api", days=60)
    web = insights.insights(conn, "demo-web", days=60)
    assert isinstance(api, PipelineInsights) and isinstance(web, PipelineInsights)
    p50s = [day.duration_p50_seconds for day in api.days]
    before = [v for v in p50s[:28] if v is not None]
    after = [v for v in p50s[31:] if v is not None]
    assert min(after) > sum(before) / len(before)  # the slow regression
    assert min(d.success_rate or 1 for d in api.days[38:45]) < 0.5  # the broken week
    [e2e] = [job for job in web.jobs if job.job == "e2e"]
    assert e2e.flaky_commits >= 5 and 0.04 < (e2e.failure_rate or 0) < 0.15
    assert api.cancelled > 0
    # Each command it shows, pasted as a reader would (the URL in $URL), shows the same:
    # printed without the target, they read stack prod (found by helper-111).
    echoed = [line[2:] for line in done.stdout.splitlines() if line.startswith("$ cicd-db ")]
    assert len(echoed) == 5, done.stdout
    for command in echoed:
        pasted = subprocess.run(
            ["bash", "-c", command.replace("cicd-db", f"{sys.executable} -m cicd_db", 1)],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
            env={**os.environ, "URL": migrated.url},
        )  # fmt: skip
        assert (pasted.returncode, pasted.stderr) == (0, ""), (command, pasted)
    blocks = done.stdout.split("$ cicd-db ")[1:]
    assert blocks[-1].startswith("insights") and "wrote" in blocks[-1]
    shown_report = blocks[-2].split("\n", 1)[1].rstrip("\n")
    pasted_report = subprocess.run(
        ["bash", "-c", f'{sys.executable} -m cicd_db report --database-url "$URL" --pipeline demo-api --limit 5'],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env={**os.environ, "URL": migrated.url},
    ).stdout.rstrip("\n")  # fmt: skip
    assert pasted_report == shown_report


# What a terminal acts on, or forges a line with: escape, bell, carriage return, newline,
# a C1 control, and a bidi override.
CONTROLS = "\x1b[31m\x07\r\nerror: forged\x9b\u202e"


@pytest.mark.parametrize("scope", ["pipeline", "every pipeline"])
def test_the_page_and_the_path_it_is_written_to_carry_no_control_characters(
    migrated: Database, conn: psycopg.Connection[Any], tmp_path: Path, scope: str
) -> None:
    """Names hold whatever an agent sent: on the page (charts, tables, the title), and in
    the line that says where the page went, each such character is written as repr
    writes it, so the page printed to a terminal, or the line, cannot act on it."""
    name = f"p{CONTROLS}"
    today = datetime.now(UTC) - timedelta(hours=1)
    history(
        conn,
        Planned(today, build=(Job(f"j{CONTROLS}", 60),), test=(Job("unit", 5, FAILED),)),
        pipeline=name,
    )
    page = tmp_path / f"out{CONTROLS}.html"
    which = ("--pipeline", name) if scope == "pipeline" else ()
    done = run_cli(
        "insights", "--database-url", migrated.url, *which, "--format", "html", "-o", str(page)
    )
    assert done.code == 0, done.err
    assert done.out.count("\n") == 1 and done.out[:-1].isprintable(), done.out
    text = page.read_text()
    assert all(ch.isprintable() or ch in "\n\t" for ch in text), sorted(
        {repr(ch) for ch in text if not (ch.isprintable() or ch in "\n\t")}
    )
    assert "\\x1b[31m" in text  # the name is there, escaped


def test_a_fifo_whose_reader_leaves_is_one_line_not_a_silent_failure(
    migrated: Database, tmp_path: Path
) -> None:
    """`-o FIFO` whose reader reads 10 bytes and leaves: the page is cut short, which
    is said in one line, exit 1 (it exited 1 without a word)."""
    migrated.execute(  # a page larger than a pipe holds (64 kB)
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status, start_time, "
        "completion_time) SELECT 'pipeline-' || g, 'c', 'CANCELED', now() - interval '1 hour', "
        "now() FROM generate_series(1, 400) g"
    )
    fifo = tmp_path / "page"
    os.mkfifo(fifo)

    def read_a_little() -> None:
        with open(fifo, "rb") as reader:
            reader.read(10)

    reader = threading.Thread(target=read_a_little)
    reader.start()
    try:
        done = run_cli(
            "insights", "--database-url", migrated.url, "--format", "html", "-o", str(fifo)
        )
    finally:
        reader.join(timeout=30)
    assert (done.code, done.out) == (1, ""), done
    assert done.err == (
        f"error: cannot write {fifo}: its reader left before the end (broken pipe), so what it "
        "read is cut short; run again with a reader that reads it all\n"
    )


def test_a_names_joiners_and_direction_marks_reach_the_browser_not_the_terminal(
    migrated: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """👩‍💻 is three characters, the joiner between them a format character: the page
    wrote it as `\\u200d`. In the tables and the title it is now a character
    reference, which a browser draws as the joiner and a terminal shows as text; each
    cell is isolated (<bdi>), so a name's override reorders nothing beside it."""
    coder = "\U0001f469\u200d\U0001f4bb deploy"
    today = datetime.now(UTC) - timedelta(hours=1)
    history(conn, Planned(today, build=(Job(coder, 60),), test=(Job("unit\u202e", 5, FAILED),)))
    page = tmp_path / "page.html"
    done = run_cli(
        "insights", "--database-url", migrated.url, "--pipeline", "build", "--format", "html",
        "-o", str(page),
    )  # fmt: skip
    assert done.code == 0, done.err
    text = page.read_text()
    assert "<bdi>\U0001f469&#x200d;\U0001f4bb deploy</bdi>" in text
    assert "<bdi>unit&#x202e;</bdi>" in text
    assert all(ch.isprintable() or ch in "\n\t" for ch in text)  # as before: nothing raw


def test_a_table_written_to_a_file_keeps_what_the_terminal_cannot_write(
    migrated: Database,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`-o FILE` writes UTF-8: a name and the sparkline stay as they are there even where
    standard output is ASCII (on the terminal they are escaped, and measured so)."""
    pipeline = history(
        conn,
        *[Planned(at(day), test=(Job("unit", 60 * day),)) for day in (3, 2, 1)],
        pipeline="p🚀",
    )
    target = ("--database-url", migrated.url, "--pipeline", pipeline, "--runs", "5")
    written = tmp_path / "insights.txt"
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="backslashreplace")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["insights", *target, "-o", str(written)]) == 0
    text = written.read_text(encoding="utf-8")
    assert "p🚀" in text and "\\U0001f680" not in text, text
    assert any(ch in text for ch in SPARKS), text
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="backslashreplace")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["insights", *target]) == 0
    stdout.flush()
    shown = stdout.buffer.getvalue().decode("ascii")  # type: ignore[attr-defined]
    assert "p\\U0001f680" in shown and max(map(len, shown.splitlines())) <= 80, shown


@pytest.mark.parametrize("language", ["en", "de"])
def test_a_statement_timeout_left_on_the_database_is_named_in_any_language(
    migrated: Database, language: str
) -> None:
    """A statement_timeout a migration or a person left on the database cuts the reads:
    running again meets it again, so it is named with where to look, not "run again";
    in German (lc_messages), whose words for it cannot be read, as suspected."""
    if language == "de":
        migrated.in_german()
    migrated.execute(f"ALTER DATABASE {migrated.name} SET statement_timeout = '1ms'")
    shown = run_cli("insights", "--database-url", migrated.url)
    assert shown.code == 1, shown
    [line] = shown.err.splitlines()
    assert line.startswith("error: database error: "), line
    # Where it is set, as the session says; or, when the 1 ms timeout cuts that question
    # too, every place it could be set.
    assert (
        f'statement_timeout is 1ms for database "{migrated.name}", set by ALTER DATABASE' in line
        or "statement_timeout stopped it, set for this session by the role, the database" in line
    ), line
    # Suspected where its words cannot tell it: in German, and in English when the 1 ms
    # timer fired as a statement ended (PostgreSQL then says "due to user request").
    suspected = language == "de" or "due to user request" in line
    assert ("if no one cancelled it" in line) == suspected, line


def test_the_pages_day_labels_name_the_year_where_the_days_span_years() -> None:
    """A window of the last N runs may reach back years: its days are labelled with their
    year, or two Decembers' 12-29 read as one day (helper-150); one year's, without."""
    from cicd_db.insights import figures, page

    def insights(days: list[date]) -> figures.PipelineInsights:
        return figures.PipelineInsights(
            pipeline="build",
            window=figures.Window(
                days=None, runs=3, since=None, until=datetime(2026, 12, 31, tzinfo=UTC)
            ),
            runs=3, success=3, failed=0, cancelled=0, running=0,
            duration_p50_seconds=1.0, duration_p95_seconds=1.0, mttr_seconds=None,
            recoveries=0, longest_red_streak=0, stages=[], jobs=[],
            days=[figures.Day(day, 1, 1, 0, 0, 0, 1.0, 1.0) for day in days],
        )  # fmt: skip

    spanning = page.page(insights([date(2024, 12, 29), date(2025, 12, 29), date(2026, 12, 29)]))
    assert all(f"{year}-12-29" in spanning for year in (2024, 2025, 2026))
    one_year = page.page(insights([date(2026, 12, 28), date(2026, 12, 29)]))
    assert "12-28" in one_year and "2026-12-28" not in one_year


def test_drawing_the_page_leaves_pythons_imports_as_they_were() -> None:
    """pygal puts an import finder of its own in sys.meta_path, without find_spec: every
    later import of a missing module warned before it failed, and where warnings are
    errors (here, as in a caller's program) `try: import x / except ImportError` raised
    ImportWarning instead, so a test's outcome depended on whether the page had been drawn
    in its process before (helper-154)."""
    from cicd_db.insights import page

    page._pygal()
    assert not [f for f in sys.meta_path if type(f).__name__ == "PluginImportFixer"]
    with pytest.raises(ModuleNotFoundError):
        import cicd_db_no_such_module  # noqa: F401
