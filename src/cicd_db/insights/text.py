"""The insights for a person or a program: `data` is the JSON and YAML structure (its keys
documented in docs/reports.md, only ever added), `table` the terminal's text with
sparklines, `render` either or the page (page.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cicd_db.errors import UsageError
from cicd_db.insights.figures import (
    Day,
    Insights,
    JobFigures,
    Summary,
    Window,
)
from cicd_db.report import WIDTH, as_written, fit, grid, rounded, structured
from cicd_db.report import seconds_text as _secs


def _seconds(value: float | None) -> float | None:
    return None if value is None else rounded(value, 3)


def _ratio(value: float | None) -> float | None:
    return None if value is None else rounded(value, 4)


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _window(window: Window) -> dict[str, Any]:
    return {
        "days": window.days,
        "runs": window.runs,
        "since": _instant(window.since),
        "until": _instant(window.until),
    }


def _day_data(day: Day) -> dict[str, Any]:
    return {
        "date": day.date.isoformat(),
        "runs": day.runs,
        "success": day.success,
        "failed": day.failed,
        "cancelled": day.cancelled,
        "running": day.running,
        "success_rate": _ratio(day.success_rate),
        "duration_p50_seconds": _seconds(day.duration_p50_seconds),
        "duration_p95_seconds": _seconds(day.duration_p95_seconds),
    }


def data(result: Insights) -> dict[str, Any]:
    """The insights as plain data: the JSON and YAML structure of docs/reports.md."""
    if isinstance(result, Summary):
        return {
            "window": _window(result.window),
            "pipelines": [
                {
                    "pipeline": line.pipeline,
                    "runs": line.runs,
                    "success": line.success,
                    "failed": line.failed,
                    "cancelled": line.cancelled,
                    "running": line.running,
                    "success_rate": _ratio(line.success_rate),
                    "duration_p50_seconds": _seconds(line.duration_p50_seconds),
                    "duration_p95_seconds": _seconds(line.duration_p95_seconds),
                    "days": [_day_data(day) for day in line.days],
                }
                for line in result.pipelines
            ],
        }
    return {
        "pipeline": result.pipeline,
        "window": _window(result.window),
        "runs": result.runs,
        "success": result.success,
        "failed": result.failed,
        "cancelled": result.cancelled,
        "running": result.running,
        "success_rate": _ratio(result.success_rate),
        "failure_rate": _ratio(result.failure_rate),
        "duration_p50_seconds": _seconds(result.duration_p50_seconds),
        "duration_p95_seconds": _seconds(result.duration_p95_seconds),
        "mttr_seconds": _seconds(result.mttr_seconds),
        "recoveries": result.recoveries,
        "longest_red_streak": result.longest_red_streak,
        "days": [_day_data(day) for day in result.days],
        "stages": [
            {
                "stage": stage.stage,
                "runs": stage.runs,
                "success": stage.success,
                "failed": stage.failed,
                "cancelled": stage.cancelled,
                "failure_rate": _ratio(stage.failure_rate),
                "duration_p50_seconds": _seconds(stage.duration_p50_seconds),
                "duration_p95_seconds": _seconds(stage.duration_p95_seconds),
            }
            for stage in result.stages
        ],
        "jobs": [
            {
                "stage": job.stage,
                "job": job.job,
                "runs": job.runs,
                "success": job.success,
                "failed": job.failed,
                "allowed_failures": job.allowed_failures,
                "cancelled": job.cancelled,
                "failure_rate": _ratio(job.failure_rate),
                "flaky_commits": job.flaky_commits,
                "duration_p50_seconds": _seconds(job.duration_p50_seconds),
                "duration_p95_seconds": _seconds(job.duration_p95_seconds),
            }
            for job in result.jobs
        ],
    }


def render(result: Insights, output_format: str) -> str:
    """The insights as text in `output_format`: table, json, yaml or html."""
    if output_format in ("json", "yaml"):
        return structured(data(result), output_format)
    if output_format == "html":
        from cicd_db.insights import page  # only the html format pays for it

        return page.page(result)
    if output_format != "table":  # a Python caller's "xml" was printed as a table
        raise UsageError(
            f"{{format}} {output_format!r} is no format; use table, json, yaml or html",
            arguments=["format"],
        )
    return table(result)


# -- table ---------------------------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"
# The same eight heights where the terminal's encoding has no block characters.
ASCII_SPARKS = "_.,:-=+#"
LABEL = 17  # the key column of the key/value lines
MAX_JOBS = 12  # job lines a table shows; JSON has them all


def sparkline(values: Sequence[float | None], width: int) -> str:
    """`values` as one line of block characters, low to high, at most `width` wide: a
    value missing (a day without a finished run) is a space. More values than `width`
    are averaged in equal runs of consecutive values first: a shape, not figures."""
    if len(values) > width > 0:
        size = math.ceil(len(values) / width)
        groups = [values[i : i + size] for i in range(0, len(values), size)]
        values = [
            (sum(present) / len(present)) if (present := [v for v in g if v is not None]) else None
            for g in groups
        ]
    present = [v for v in values if v is not None]
    if not present:
        return " " * len(values)
    low, high = min(present), max(present)
    sparks = SPARKS if as_written(SPARKS) == SPARKS else ASCII_SPARKS
    top = len(sparks) - 1
    return "".join(
        " " if v is None else sparks[top if high == low else round((v - low) / (high - low) * top)]
        for v in values
    )


def job_cells(job: JobFigures) -> list[str]:
    """A job's figures as the table and the page show them, in their column order."""
    return [
        job.stage,
        job.job,
        str(job.runs),
        percent(job.failure_rate),
        str(job.allowed_failures),
        str(job.flaky_commits),
        _secs(job.duration_p50_seconds),
        _secs(job.duration_p95_seconds),
    ]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def window_title(result: Insights) -> str:
    window = result.window
    until = window.until.astimezone(UTC)
    if window.runs is not None:
        return f"last {window.runs} runs up to {until:%Y-%m-%d %H:%M} UTC"
    since = window.since.astimezone(UTC) if window.since else until  # days have a first midnight
    return (
        f"last {window.days} day{'s' if window.days != 1 else ''}: "
        f"{since:%Y-%m-%d} to {until:%Y-%m-%d %H:%M} UTC"
    )


def _trend(label: str, values: list[float | None], low_high: str) -> list[str]:
    room = WIDTH - LABEL
    spark = sparkline(values, room)
    if not spark.strip():
        return []
    return [f"{label:<{LABEL}}{spark}".rstrip(), f"{'':<{LABEL}}{low_high}"]


def table(result: Insights) -> str:
    """The insights for a terminal: at most 80 columns, names escaped, trends as sparklines."""
    if isinstance(result, Summary):
        return _summary_table(result)
    r = result
    head = f"pipeline {fit(r.pipeline, WIDTH - 9 - 2 - len(window_title(r)))}: {window_title(r)}"
    finished = r.success + r.failed
    lines = [head, ""]
    lines.append(
        f"{'runs':<{LABEL}}{r.runs}: {r.success} success, {r.failed} failed, "
        f"{r.cancelled} cancelled, {r.running} running"
    )
    lines.append(f"{'success rate':<{LABEL}}{percent(r.success_rate)} of {finished} finished")
    lines.append(
        f"{'duration':<{LABEL}}p50 {_secs(r.duration_p50_seconds)}, "
        f"p95 {_secs(r.duration_p95_seconds)}"
    )
    lines.append(
        f"{'time to green':<{LABEL}}"
        + (
            f"{_secs(r.mttr_seconds)} mean over {r.recoveries} recover"
            f"{'ies' if r.recoveries != 1 else 'y'}"
            if r.mttr_seconds is not None
            else "- (no failure streak ended)"
        )
    )
    lines.append(
        f"{'longest red':<{LABEL}}{r.longest_red_streak} failed run"
        f"{'s' if r.longest_red_streak != 1 else ''} in a row"
    )
    lines += _day_trends(r.days)
    if r.stages:
        lines += [
            "",
            *grid(
                ["STAGE", "RUNS", "FAILED", "P50", "P95"],
                [
                    [
                        s.stage,
                        str(s.runs),
                        percent(s.failure_rate),
                        _secs(s.duration_p50_seconds),
                        _secs(s.duration_p95_seconds),
                    ]
                    for s in r.stages
                ],
            ),
        ]
    if r.jobs:
        lines += [
            "",
            *grid(
                ["STAGE", "JOB", "RUNS", "FAILED", "ALLOWED", "FLAKY", "P50", "P95"],
                [job_cells(j) for j in r.jobs[:MAX_JOBS]],
            ),
        ]
        if len(r.jobs) > MAX_JOBS:
            lines.append(f"... {len(r.jobs) - MAX_JOBS} more jobs: --format json lists them all")
    return "\n".join(lines) + "\n"


def _day_trends(days: list[Day]) -> list[str]:
    p50s = [d.duration_p50_seconds for d in days]
    rates = [d.success_rate for d in days]
    lines: list[str] = []
    timed = [v for v in p50s if v is not None]
    if timed:
        lines += _trend(
            "p50 per day",
            p50s,
            f"{_secs(min(timed))} to {_secs(max(timed))}, {days[0].date} to {days[-1].date}",
        )
    rated = [v for v in rates if v is not None]
    if rated:
        lines += _trend("success per day", rates, f"{percent(min(rated))} to {percent(max(rated))}")
    return lines


def _summary_table(summary: Summary) -> str:
    heading = window_title(summary)
    count = len(summary.pipelines)
    lines = [f"{count} pipeline{'s' if count != 1 else ''}, busiest first; {heading}"]
    if not summary.pipelines:
        return "\n".join([*lines, "", "no runs in the window"]) + "\n"
    trend = 24  # the sparkline's width: the rest of the line is the figures
    # Names are shortened here, not by grid(), which would shorten the widest column
    # (a sparkline too) first.
    room = (
        WIDTH
        - trend
        - 2 * 5
        - max(len("RUNS"), *(len(str(p.runs)) for p in summary.pipelines))
        - 3 * 7
    )
    rows = [
        [
            fit(line.pipeline, room),
            str(line.runs),
            percent(line.success_rate),
            _secs(line.duration_p50_seconds),
            _secs(line.duration_p95_seconds),
            sparkline([d.duration_p50_seconds for d in line.days], trend),
        ]
        for line in summary.pipelines
    ]
    headers = ["PIPELINE", "RUNS", "SUCCESS", "P50", "P95", "P50 TREND"]
    return "\n".join([*lines, "", *grid(headers, rows)]) + "\n"
