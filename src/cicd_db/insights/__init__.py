"""Insights: how healthy a pipeline is, whether it got slower, which job is flaky, how long
it takes to get back to green; every figure computed by PostgreSQL, in one statement.

`insights(conn, "build")` answers for one pipeline, `insights(conn)` gives one line per
pipeline. The window is the last `days` UTC days (30 by default: today, as of `now`, and
the days before it) or the pipeline's last `runs` runs. docs/reports.md ("Insights")
defines every figure; in short:

- A run belongs to the window by its *time*: when it started, or, for a run cancelled
  before it started, when it was cancelled. A run that has neither (PENDING) has not
  happened yet and is in no window; nor is a run whose time is after `now`.
- Durations (p50, p95: PostgreSQL's `percentile_cont`, linear interpolation) are of
  runs, stages and jobs that finished SUCCESS or FAILED: never of cancelled or
  unfinished ones.
- Rates are over SUCCESS + FAILED (cancelled runs are neither, as CircleCI counts
  them); a job that FAILED but allows failure is counted apart (`allowed_failures`)
  and is neither a failure nor a success.
- Days are UTC days; a run counts on the day of its time (a run that crosses
  midnight counts on the day it started).

A finished run's stages and jobs are read from its row of the rollup `run_rollups`
(migrations 0032 to 0035, kept by triggers), which holds exactly the values the
figures are computed from; a run without one is read from the tables, with the same
result (tests/test_run_rollups.py).

The JSON and YAML structure (`data`) is documented in docs/reports.md; keys are only
ever added.

The package: figures.py (the dataclasses), query.py (the statements, `insights`),
text.py (`data`, `table`, `render`), page.py (the HTML page).
"""

from __future__ import annotations

from cicd_db.insights.figures import (
    DEFAULT_DAYS,
    FORMATS,
    MAX_DAYS,
    MAX_RUNS,
    Day,
    Insights,
    JobFigures,
    PipelineInsights,
    PipelineLine,
    StageFigures,
    Summary,
    Window,
)
from cicd_db.insights.query import check_window, insights
from cicd_db.insights.text import data, render, table

__all__ = [
    "DEFAULT_DAYS",
    "FORMATS",
    "MAX_DAYS",
    "MAX_RUNS",
    "Day",
    "Insights",
    "JobFigures",
    "PipelineInsights",
    "PipelineLine",
    "StageFigures",
    "Summary",
    "Window",
    "check_window",
    "data",
    "insights",
    "render",
    "table",
]
