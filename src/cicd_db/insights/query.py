"""The insights as PostgreSQL computes them, one statement each: the window's bounds, a
pipeline's runs, days, stages and jobs (from the rollup of a finished run where it has
one), or every pipeline's line; read back into the figures' dataclasses."""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any, LiteralString

import psycopg
from psycopg import errors, sql

from cicd_db import cursors
from cicd_db.errors import (
    EARLIEST,
    NotFound,
    OperationalError,
    UsageError,
    check_name,
    check_range,
    check_time,
    no_schema,
    plural,
)
from cicd_db.insights.figures import (
    DEFAULT_DAYS,
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

# -- the queries -------------------------------------------------------------------------

# Days are UTC days, written `AT TIME ZONE interval '0'`: a zone's name is read first as
# an abbreviation, and PostgreSQL 18 reads the session zone's own abbreviations before
# its table, so under the POSIX zone 'UTC+5' (five hours behind) 'UTC' meant UTC-5.

# The clock and the first midnight of the window (NULL for a window of runs).
_BOUNDS: LiteralString = (
    "bounds AS (SELECT clock.until, CASE WHEN %(days)s::integer IS NOT NULL THEN "
    "(date_trunc('day', clock.until AT TIME ZONE interval '0') "
    "- (%(days)s::integer - 1) * interval '1 day') AT TIME ZONE interval '0' END AS since "
    "FROM (SELECT coalesce(%(now)s::pg_catalog.timestamptz, pg_catalog.now()) AS until) AS clock)"
)
# Columns of a run as the figures need them: its time (start, or cancellation of a run
# that never started), and its duration when it finished SUCCESS or FAILED.
_RUN: LiteralString = (
    "r.id, r.pipeline_name, r.run_number, r.status, r.commit_hash, r.completion_time AS done, "
    "coalesce(r.start_time, r.completion_time) AS t, "
    "CASE WHEN r.status IN ('SUCCESS', 'FAILED') "
    "THEN extract(epoch FROM r.completion_time - r.start_time)::pg_catalog.float8 END AS seconds"
)
# The window's runs, by days or by a number of runs; {pipeline} narrows to one.
_BY_DAYS: LiteralString = (
    "SELECT {run} FROM pipeline_executions AS r, bounds WHERE {pipeline} "
    "coalesce(r.start_time, r.completion_time) >= bounds.since "
    "AND coalesce(r.start_time, r.completion_time) <= bounds.until"
)
# The clock written out rather than read from `bounds`: the planner then sees that
# nearly every run is before it, and walks the run-number index backwards to the
# first `runs` of them instead of fetching all of the pipeline's runs to sort them.
_BY_RUNS_ONE: LiteralString = (
    "SELECT {run} FROM pipeline_executions AS r WHERE {pipeline} "
    "coalesce(r.start_time, r.completion_time) <= coalesce(%(now)s::pg_catalog.timestamptz, pg_catalog.now()) "
    "ORDER BY r.run_number DESC LIMIT %(runs)s"
)
_BY_RUNS_EACH: LiteralString = (
    "SELECT * FROM (SELECT {run}, row_number() OVER (PARTITION BY r.pipeline_name "
    "ORDER BY r.run_number DESC) AS nth FROM pipeline_executions AS r, bounds "
    "WHERE coalesce(r.start_time, r.completion_time) <= bounds.until) AS numbered "
    "WHERE nth <= %(runs)s"
)
# Counts and duration percentiles of a set of rows with `status` and `seconds`.
_FIGURES: LiteralString = (
    "count(*) AS runs, count(*) FILTER (WHERE status = 'SUCCESS') AS success, "
    "count(*) FILTER (WHERE status = 'FAILED') AS failed, "
    "count(*) FILTER (WHERE status = 'CANCELED') AS cancelled, "
    "count(*) FILTER (WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELED')) AS running, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS duration_p50_seconds, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS duration_p95_seconds"
)
# The same for a day: a day without runs joins no run, and counts 0.
_DAY_FIGURES: LiteralString = (
    "count(w.status) AS runs, count(*) FILTER (WHERE w.status = 'SUCCESS') AS success, "
    "count(*) FILTER (WHERE w.status = 'FAILED') AS failed, "
    "count(*) FILTER (WHERE w.status = 'CANCELED') AS cancelled, "
    "count(*) FILTER (WHERE w.status NOT IN ('SUCCESS', 'FAILED', 'CANCELED')) AS running, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY w.seconds) AS duration_p50_seconds, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY w.seconds) AS duration_p95_seconds"
)

# The days of a span (`spans`: its first and last time), as a series `d`; for _DAY_SPAN
# and _EACH alike.
_SERIES: LiteralString = (
    "generate_series("
    "coalesce(bounds.since AT TIME ZONE interval '0', greatest(spans.first AT TIME ZONE interval '0', "
    "spans.last AT TIME ZONE interval '0' - %(span)s * interval '1 day'))::pg_catalog.date::timestamp, "
    "CASE WHEN bounds.since IS NOT NULL THEN (bounds.until AT TIME ZONE interval '0')::pg_catalog.date "
    "ELSE (spans.last AT TIME ZONE interval '0')::pg_catalog.date END::timestamp, interval '1 day') AS d"
)

# The days of the window: by days, the `days` days up to the clock's; by runs, from the
# first run's day to the last one's, at most MAX_DAYS of them (`span` days before the
# last): a run further back (an agent's clock at 1970) counts in the figures, and is
# not worth 20,000 empty days in the list (or 3.6 million, for a time in the year 1).
# Only times from the year 1's second day bound the series (a window of runs already
# leaves out times after its clock, 'infinity' among them): one written by hand as
# '-infinity' made a series that never ends, which filled the disk with temporary files,
# and one before the year 1 a day Python cannot read. Such a run counts in the figures,
# on no day. `spans` as in _EACH, for one pipeline.
_DAY_SPAN: LiteralString = (
    "SELECT d::pg_catalog.date AS day FROM bounds, (SELECT min(t) AS first, max(t) AS last FROM w "  # noqa: S608 - constants
    "WHERE t >= '0001-01-02 00:00+00') AS spans, " + _SERIES
)

_ONE: LiteralString = (
    "WITH {bounds}, w AS MATERIALIZED ({window}), "
    "span AS ({day_span}), "
    "days AS (SELECT span.day, {day_figures} FROM span LEFT JOIN w "
    "ON (w.t AT TIME ZONE interval '0')::pg_catalog.date = span.day GROUP BY span.day), "
    # Failure streaks: finished runs (SUCCESS, FAILED) in run-number order, split
    # into islands of one status (gaps and islands); a FAILED island followed by
    # another island (necessarily SUCCESS) is a streak that ended.
    "decided AS (SELECT run_number, status, done, sum(flip) OVER (ORDER BY run_number) AS island "
    "FROM (SELECT run_number, status, done, CASE WHEN status IS DISTINCT FROM "
    "lag(status) OVER (ORDER BY run_number) THEN 1 ELSE 0 END AS flip FROM w "
    "WHERE status IN ('SUCCESS', 'FAILED')) AS flips), "
    "islands AS (SELECT island, min(status) AS status, count(*) AS length, "
    "(array_agg(done ORDER BY run_number))[1] AS first_done FROM decided GROUP BY island), "
    "streaks AS (SELECT red.length, extract(epoch FROM green.first_done - red.first_done) "
    "AS recovery FROM islands AS red LEFT JOIN islands AS green "
    "ON green.island = red.island + 1 WHERE red.status = 'FAILED'), "
    # Stages and jobs: a finished run's from its rollup row (migration 0032: the same
    # names, statuses and seconds, one row a run instead of 25), any other run's
    # (unfinished, or finished without a row yet) from the tables.
    "rolled AS MATERIALIZED (SELECT w.id, w.commit_hash, u.stage_names, u.stage_statuses, "
    "u.stage_seconds, u.job_stages, u.job_names, u.job_statuses, u.job_allows_failure, "
    "u.job_seconds FROM w JOIN run_rollups AS u ON u.run_id = w.id "
    "WHERE w.status IN ('SUCCESS', 'FAILED', 'CANCELED')), "
    "raw_stages AS MATERIALIZED (SELECT s.id, s.stage_name, s.status, w.commit_hash, "
    "CASE WHEN s.status IN ('SUCCESS', 'FAILED') "
    "THEN extract(epoch FROM s.completion_time - s.start_time)::pg_catalog.float8 END AS seconds "
    "FROM w JOIN stage_executions AS s ON s.pipeline_execution_id = w.id "
    "WHERE NOT EXISTS (SELECT FROM rolled WHERE rolled.id = w.id)), "
    "stage_rows AS (SELECT stage_name, status, seconds FROM raw_stages UNION ALL "
    "SELECT u.stage_name, u.status, u.seconds FROM rolled, "
    "unnest(rolled.stage_names, rolled.stage_statuses, rolled.stage_seconds) "
    "AS u (stage_name, status, seconds)), "
    'stages AS (SELECT stage_name COLLATE pg_catalog."C" AS stage, count(*) AS runs, '
    "count(*) FILTER (WHERE status = 'SUCCESS') AS success, "
    "count(*) FILTER (WHERE status = 'FAILED') AS failed, "
    "count(*) FILTER (WHERE status = 'CANCELED') AS cancelled, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS duration_p50_seconds, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS duration_p95_seconds "
    "FROM stage_rows GROUP BY 1), "
    "job_rows AS MATERIALIZED (SELECT s.stage_name, j.job_name, j.status, j.allows_failure, "
    "s.commit_hash, CASE WHEN j.status IN ('SUCCESS', 'FAILED') "
    "THEN extract(epoch FROM j.completion_time - j.start_time)::pg_catalog.float8 END AS seconds "
    "FROM raw_stages AS s JOIN job_executions AS j ON j.stage_execution_id = s.id "
    "UNION ALL SELECT u.stage_name, u.job_name, u.status, u.allows_failure, "
    "rolled.commit_hash, u.seconds FROM rolled, unnest(rolled.job_stages, rolled.job_names, "
    "rolled.job_statuses, rolled.job_allows_failure, rolled.job_seconds) "
    "AS u (stage_name, job_name, status, allows_failure, seconds)), "
    # A flaky commit: the job both failed (a failure that counts) and succeeded on it.
    "flaky AS (SELECT stage_name, job_name, count(*) AS commits FROM ("
    "SELECT stage_name, job_name, commit_hash FROM job_rows "
    "WHERE status = 'FAILED' AND NOT allows_failure INTERSECT "
    "SELECT stage_name, job_name, commit_hash FROM job_rows WHERE status = 'SUCCESS'"
    ") AS both_ways GROUP BY stage_name, job_name), "
    # Grouped byte by byte (COLLATE pg_catalog."C": the same groups as any deterministic
    # collation, without its costly comparisons over every job row), and the flaky
    # commits joined to the groups, not to every row.
    'job_groups AS (SELECT stage_name COLLATE pg_catalog."C" AS stage, job_name COLLATE pg_catalog."C" AS job, '
    "count(*) AS runs, "
    "count(*) FILTER (WHERE status = 'SUCCESS') AS success, "
    "count(*) FILTER (WHERE status = 'FAILED' AND NOT allows_failure) AS failed, "
    "count(*) FILTER (WHERE status = 'FAILED' AND allows_failure) AS allowed_failures, "
    "count(*) FILTER (WHERE status = 'CANCELED') AS cancelled, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS duration_p50_seconds, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS duration_p95_seconds "
    "FROM job_rows GROUP BY 1, 2), "
    "jobs AS (SELECT g.stage, g.job, g.runs, g.success, g.failed, g.allowed_failures, "
    "g.cancelled, coalesce(flaky.commits, 0) AS flaky_commits, g.duration_p50_seconds, "
    "g.duration_p95_seconds FROM job_groups AS g LEFT JOIN flaky "
    "ON flaky.stage_name = g.stage AND flaky.job_name = g.job) "
    "SELECT EXISTS (SELECT 1 FROM pipeline_executions WHERE pipeline_name = %(pipeline)s), "
    "(SELECT since FROM bounds), (SELECT until FROM bounds), "
    "(SELECT row_to_json(totals) FROM (SELECT {figures} FROM w) AS totals), "
    # The mean in numeric (exact microseconds), then float8.
    "(SELECT avg(recovery)::pg_catalog.float8 FROM streaks WHERE recovery IS NOT NULL), "
    "(SELECT count(recovery) FROM streaks), (SELECT coalesce(max(length), 0) FROM streaks), "
    "(SELECT json_agg(days ORDER BY day) FROM days), "
    # Worst first: the highest failure rate, then the slowest (p95); a stage or job
    # that never finished SUCCESS or FAILED last; names break ties, byte by byte (the
    # same order on every server, whatever its collation).
    "(SELECT json_agg(stages ORDER BY failed::pg_catalog.float8 / nullif(success + failed, 0) "
    'DESC NULLS LAST, duration_p95_seconds DESC NULLS LAST, stage COLLATE pg_catalog."C") FROM stages), '
    "(SELECT json_agg(jobs ORDER BY failed::pg_catalog.float8 / nullif(success + failed, 0) "
    "DESC NULLS LAST, flaky_commits DESC, duration_p95_seconds DESC NULLS LAST, "
    'stage COLLATE pg_catalog."C", job COLLATE pg_catalog."C") '
    "FROM jobs)"
)

_EACH: LiteralString = (
    "WITH {bounds}, w AS MATERIALIZED ({window}), "  # noqa: S608 - constants
    "spans AS (SELECT pipeline_name, min(t) AS first, max(t) AS last FROM w "
    "WHERE t >= '0001-01-02 00:00+00' GROUP BY pipeline_name), "
    "span AS (SELECT spans.pipeline_name, d::pg_catalog.date AS day FROM bounds, spans, "
    + _SERIES
    + "), "
    "days AS (SELECT span.pipeline_name, span.day, {day_figures} FROM span LEFT JOIN w "
    "ON w.pipeline_name = span.pipeline_name AND (w.t AT TIME ZONE interval '0')::pg_catalog.date = span.day "
    "GROUP BY span.pipeline_name, span.day), "
    # Each pipeline's days gathered once, by a GROUP BY: a subquery per pipeline would
    # read the whole window again for each (a second at 100 pipelines and 1M runs).
    "daily AS (SELECT pipeline_name, json_agg(days ORDER BY day) AS days FROM days "
    "GROUP BY pipeline_name), "
    "lines AS (SELECT pipeline_name AS pipeline, {figures} FROM w GROUP BY pipeline_name) "
    "SELECT (SELECT since FROM bounds), (SELECT until FROM bounds), "
    "(SELECT json_agg(json_build_object('line', lines, 'days', daily.days) "
    'ORDER BY lines.runs DESC, lines.pipeline COLLATE pg_catalog."C") FROM lines '
    "LEFT JOIN daily ON daily.pipeline_name = lines.pipeline)"
)


def _parameters(
    pipeline: str | None, days: int | None, runs: int | None, now: datetime | None
) -> dict[str, Any]:
    """The values _query's statement takes (`span`: the days a window of runs lists
    before its last day, at most)."""
    return {"pipeline": pipeline, "days": days, "runs": runs, "now": now, "span": MAX_DAYS - 1}


def _query(pipeline: str | None, runs: int | None) -> sql.Composed:
    """The statement for one pipeline or for all, over days or runs: the templates above,
    their {placeholders} filled with the fragments (all constants)."""
    if pipeline is None:
        template, window, narrow = _EACH, _BY_DAYS if runs is None else _BY_RUNS_EACH, ""
    else:
        template, window = _ONE, _BY_DAYS if runs is None else _BY_RUNS_ONE
        narrow = "r.pipeline_name = %(pipeline)s AND"
    return sql.SQL(template).format(
        bounds=sql.SQL(_BOUNDS),
        window=sql.SQL(window).format(run=sql.SQL(_RUN), pipeline=sql.SQL(narrow)),
        day_span=sql.SQL(_DAY_SPAN),
        day_figures=sql.SQL(_DAY_FIGURES),
        figures=sql.SQL(_FIGURES),
    )


# -- reading -------------------------------------------------------------------------------


def check_window(pipeline: str | None, days: int | None, runs: int | None) -> int | None:
    """UsageError unless the arguments choose one window of a pipeline the tables can
    hold (checked before anything connects, too: a mistake told as an outage when the
    server is down was the wrong fix); the window's days, DEFAULT_DAYS when neither is
    given."""
    if days is not None and runs is not None:
        raise UsageError(
            "{days} and {runs} both choose the window; give one of them",
            arguments=["days", "runs"],
        )
    if days is None and runs is None:
        days = DEFAULT_DAYS
    if days is not None:
        check_range("days", days, MAX_DAYS)
    if runs is not None:
        check_range("runs", runs, MAX_RUNS)
    check_name("pipeline", pipeline, optional=True)
    return days


def insights(
    conn: psycopg.Connection[Any],
    pipeline: str | None = None,
    *,
    days: int | None = None,
    runs: int | None = None,
    now: datetime | None = None,
) -> Insights:
    """One pipeline's insights, or (no `pipeline`) the summary of every pipeline. Reads.

    The window: the last `days` UTC days up to `now` (30 when neither is given), or
    the last `runs` runs; `now` defaults to the server's clock. UsageError for
    arguments that do not fit, NotFound for a pipeline that has never run.
    """
    days = check_window(pipeline, days, runs)
    utc = None if now is None else check_time("now", now)
    # The window's first midnight (as _BOUNDS finds it) must be a time cicd-db takes too.
    if utc is not None and days is not None:
        first = utc.date().toordinal() - (days - 1)  # as a day's number: it may be no date
        if first < EARLIEST.toordinal():
            begins = f"at {date.fromordinal(first).isoformat()}" if first > 0 else "in the year 0"
            raise UsageError(
                f"{{now}} {utc.isoformat()} is too early for a window of "
                f"{plural(days, 'day')}: it would begin {begins}, before the earliest time "
                "cicd-db takes, 0001-01-08",
                arguments=["now"],
            )
    params = _parameters(pipeline, days, runs, now)
    from cicd_db.store import check_search_path  # on use: the CLI imports this module

    cursors.usable(conn, "insights")
    check_search_path(conn)
    try:
        # Figures come back in JSON, which the server writes floats into as text: as it
        # writes them by default, whatever extra_float_digits a role, the database or a
        # migration left. It only reads, so it is rolled back: the setting never outlives it.
        with conn.transaction(force_rollback=True):
            cursors.execute(conn, "SET LOCAL extra_float_digits = 1")
            row = cursors.execute(conn, _query(pipeline, runs), params, binary=True).fetchone()
    except errors.UndefinedTable:
        from cicd_db.store import tables_placement  # on use: the CLI imports this module

        raise no_schema(tables_placement(conn)) from None
    except errors.DatetimeFieldOverflow:  # before PostgreSQL 17, infinity - a time fails
        raise _not_finite() from None
    if row is None:  # an aggregate query always returns its row
        raise RuntimeError("the database returned no row for the insights query")
    if pipeline is None:
        since, until, lines = row
        return Summary(
            Window(days, runs, since, until),
            [_line(entry["line"], entry["days"]) for entry in lines or []],
        )
    exists, since, until, totals, mttr, recoveries, longest, day_rows, stages, jobs = row
    if not exists:
        raise NotFound(
            "pipeline {name} has no runs; check the name (names are case-sensitive), "
            "or leave {pipeline} out to list every pipeline",
            arguments=["pipeline"],
            values={"name": repr(pipeline)},
        )
    return PipelineInsights(
        pipeline=pipeline,
        window=Window(days, runs, since, until),
        **_counts(totals),
        mttr_seconds=_finite(mttr),
        recoveries=recoveries,
        longest_red_streak=longest,
        days=[_day(day) for day in day_rows or []],
        stages=[StageFigures(**_floats(stage)) for stage in stages or []],
        jobs=[JobFigures(**_floats(job)) for job in jobs or []],
    )


def _floats(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with its durations as floats: JSON from the server writes 420.0 as 420."""
    return {
        key: _finite(value) if key.endswith("_seconds") else value for key, value in row.items()
    }


def _finite(value: Any) -> float | None:
    """A duration as a float. One that is not finite comes from a time PostgreSQL holds
    and no clock reads ('infinity', written by hand: the store writes none): refused,
    naming it, rather than shown as a figure or written as JSON that is not JSON."""
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds):
        raise _not_finite()
    return seconds


def _not_finite() -> OperationalError:
    return OperationalError(
        "a duration in the execution tables is not finite: a start or completion time "
        "of 'infinity' or '-infinity', written by hand? find it (WHERE NOT "
        "isfinite(start_time) OR NOT isfinite(completion_time)), correct that row, and "
        "run again"
    )


def _counts(figures: dict[str, Any]) -> dict[str, Any]:
    figures = _floats(figures)
    return {
        key: figures[key]
        for key in (
            "runs",
            "success",
            "failed",
            "cancelled",
            "running",
            "duration_p50_seconds",
            "duration_p95_seconds",
        )
    }


def _day(row: dict[str, Any]) -> Day:
    return Day(date=date.fromisoformat(row["day"]), **_counts(row))


def _line(line: dict[str, Any], days: list[dict[str, Any]] | None) -> PipelineLine:
    return PipelineLine(
        pipeline=line["pipeline"], **_counts(line), days=[_day(d) for d in days or []]
    )


# -- JSON and YAML -----------------------------------------------------------------------
