"""Case `report`: p50/p99 of each report view through the store API at 1,000,000 runs
(100 pipelines, 5 stages x 4 jobs), with the server's plans of every statement."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from cicd_db import migrations, store
from cicd_db.settings import ConnectionSettings

from .common import (
    MIGRATIONS,
    Databases,
    Table,
    create_database,
    database_exists,
    one,
    percentile,
    recording,
    say,
)

PIPELINES = 100
STAGES_PER_RUN, JOBS_PER_STAGE = 5, 4
T0 = datetime(2025, 1, 1, tzinfo=UTC)
Pick = tuple[str, int, str, str]  # pipeline, run number, stage, job


def run_id(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012x}"


def stage_id(index: int) -> str:
    return f"00000001-0000-4000-8000-{index:012x}"


def job_id(index: int) -> str:
    return f"00000002-0000-4000-8000-{index:012x}"


def rows(total_runs: int, kind: str, chunk: int = 20000) -> Iterator[str]:
    """COPY text for `kind` (runs, stages, jobs), in chunks of `chunk` runs."""
    for first in range(0, total_runs, chunk):
        out = []
        for i in range(first, min(first + chunk, total_runs)):
            start = T0 + timedelta(seconds=30 * i)
            status = "FAILED" if i % 17 == 0 else "SUCCESS"
            if kind == "runs":
                out.append(
                    f"{run_id(i)}\tpipeline-{i % PIPELINES:03d}\t{i // PIPELINES + 1}\t"
                    f"{i:040x}\t{status}\t{start.isoformat()}\t"
                    f"{(start + timedelta(seconds=600)).isoformat()}\n"
                )
                continue
            for k in range(STAGES_PER_RUN):
                s = i * STAGES_PER_RUN + k
                stage_start = start + timedelta(seconds=120 * k)
                stage_end = (stage_start + timedelta(seconds=110)).isoformat()
                if kind == "stages":
                    out.append(
                        f"{stage_id(s)}\t{run_id(i)}\tstage-{k + 1}\t{k + 1}\tSUCCESS\t"
                        f"{stage_start.isoformat()}\t{stage_end}\n"
                    )
                    continue
                for j in range(JOBS_PER_STAGE):
                    out.append(
                        f"{job_id(s * JOBS_PER_STAGE + j)}\t{stage_id(s)}\tjob-{j + 1}\t"
                        f"SUCCESS\t{'t' if j == 3 else 'f'}\t{stage_start.isoformat()}\t"
                        f"{stage_end}\n"
                    )
        yield "".join(out)


COPIES = {
    "runs": "COPY pipeline_executions (id, pipeline_name, run_number, commit_hash, status, "
    "start_time, completion_time) FROM STDIN",
    "stages": "COPY stage_executions (id, pipeline_execution_id, stage_name, execution_order, "
    "status, start_time, completion_time) FROM STDIN",
    "jobs": "COPY job_executions (id, stage_execution_id, job_name, status, allows_failure, "
    "start_time, completion_time) FROM STDIN",
}


def scale_database(dbs: Databases, total_runs: int) -> ConnectionSettings:
    """The migrated database with `total_runs` runs, loaded once and kept between benches."""
    name = f"bench_scale_{total_runs}"
    db = replace(dbs.admin, database=name)
    if database_exists(dbs.admin, name):
        with psycopg.connect(db.conninfo(), autocommit=True) as conn:
            loaded = one(conn, "SELECT count(*) FROM pipeline_executions")
            if loaded == total_runs:
                say(f"  reusing {name} ({total_runs:,} runs already loaded)")
                # Migrations added since it was loaded, as on a live database (the
                # insights rollup's backfill, 0035, takes minutes at 1M runs, once).
                started = time.perf_counter()
                if migrations.Runner(conn, migrations.discover(MIGRATIONS)).apply():
                    conn.execute("VACUUM (ANALYZE) run_rollups")
                    say(f"  applied the newer migrations in {time.perf_counter() - started:.0f} s")
                return db
    create_database(dbs.admin, name)
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        migrations.Runner(conn, migrations.discover(MIGRATIONS)).apply()
        # Rows are consistent by construction: skip the per-row foreign-key and
        # run-number triggers while loading, then seed the run counters.
        conn.execute("SET session_replication_role = replica")
        for kind, copy_sql in COPIES.items():
            started = time.perf_counter()
            with conn.cursor() as cursor, cursor.copy(copy_sql.encode()) as copy:
                for block in rows(total_runs, kind):
                    copy.write(block)
            say(f"  loaded {kind} in {time.perf_counter() - started:.0f} s")
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute(
            "INSERT INTO pipeline_run_counters SELECT pipeline_name, max(run_number) "
            "FROM pipeline_executions GROUP BY 1"
        )
        started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) pipeline_executions")
        conn.execute("VACUUM (ANALYZE) stage_executions")
        conn.execute("VACUUM (ANALYZE) job_executions")
        say(f"  vacuumed and analysed in {time.perf_counter() - started:.0f} s")
        # The insights rollup (0032), which the triggers skipped: filled as on a database
        # migrated with its history already there (after ANALYZE: its batches' plans
        # need the tables' statistics).
        started = time.perf_counter()
        conn.execute("CALL cicd_db_backfill_run_rollups()")
        conn.execute("VACUUM (ANALYZE) run_rollups")
        say(f"  rolled up in {time.perf_counter() - started:.0f} s")
    return db


def measure(
    dbs: Databases, total_runs: int, samples: int
) -> tuple[Table, dict[str, float], list[str]]:
    """The table, each view's p99 (ms), and the plans."""
    db = scale_database(dbs, total_runs)
    per_pipeline = total_runs // PIPELINES
    chooser = random.Random(7)
    picks: list[Pick] = [
        (
            f"pipeline-{chooser.randrange(PIPELINES):03d}",
            chooser.randint(1, per_pipeline),
            f"stage-{chooser.randint(1, STAGES_PER_RUN)}",
            f"job-{chooser.randint(1, 4)}",
        )
        for _ in range(samples)
    ]
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        executions = store.Store.on(conn)

        def newest(p: Pick) -> None:
            executions.runs(p[0], limit=20)

        def page(p: Pick) -> None:
            executions.runs(p[0], limit=20, before=p[1])

        def run_view(p: Pick) -> None:
            run = executions.run(p[0], p[1])
            executions.stages(run)

        def stage_view(p: Pick) -> None:
            run = executions.run(p[0], p[1])
            executions.jobs(executions.stage(run, p[2]))

        def job_view(p: Pick) -> None:
            run = executions.run(p[0], p[1])
            executions.job(run, executions.stage(run, p[2]), p[3])

        views: dict[str, Callable[[Pick], None]] = {
            "runs, newest page": newest,
            "runs, a page deep (--before)": page,
            "one run and its stages": run_view,
            "one stage and its jobs": stage_view,
            "one job": job_view,
        }
        timings: dict[str, list[float]] = {name: [] for name in views}
        # Every view over every pick once before timing: steady state, with the pages in
        # memory and the statements prepared, not a first read from disk.
        for view in views.values():
            for pick in picks:
                view(pick)
        for pick in picks:
            for name, view in views.items():
                started = time.perf_counter()
                view(pick)
                timings[name].append((time.perf_counter() - started) * 1000)
        plans = explain(conn, views, picks[0])
    table = Table(
        f"Report views through the store API at {total_runs:,} runs "
        f"({PIPELINES} pipelines, {total_runs * STAGES_PER_RUN:,} stages, "
        f"{total_runs * STAGES_PER_RUN * JOBS_PER_STAGE:,} jobs), ms",
        ["view", "p50", "p99", "max"],
    )
    results = {}
    for name, values in timings.items():
        results[name] = percentile(values, 0.99)
        table.rows.append(
            [
                name,
                f"{percentile(values, 0.5):.3f}",
                f"{percentile(values, 0.99):.3f}",
                f"{max(values):.3f}",
            ]
        )
    table.notes.append(
        f"{samples} samples of each view at random pipelines, runs and stages, after one "
        "untimed pass over the same samples; one connection, each view as the CLI issues it "
        "(one to three queries)."
    )
    return table, results, plans


def explain(
    conn: psycopg.Connection[Any], views: dict[str, Callable[[Pick], None]], pick: Pick
) -> list[str]:
    """Server-side: every statement the store sends for each view, under EXPLAIN (ANALYZE, BUFFERS)."""
    out = []
    for name, view in views.items():
        with recording() as sent:
            view(pick)
        for query, params in sent:
            text = query.as_bytes(conn) if isinstance(query, sql.Composable) else query
            text = text.encode() if isinstance(text, str) else bytes(text)
            plan = [row[0] for row in conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + text, params)]
            out += [f"-- {name}: {text.decode()}", *plan, ""]
    return out
