"""The figures of docs/scale.md: how the report views, recording and retention grow with
the history, and what a monthly partitioning would change, on the bench's server.

    .venv/bin/python -m bench.scale --runs 100000 --runs 300000 --runs 1000000

Each size is the report case's database (bench/report.py's `scale_database`, loaded
once and kept); whatever writes works on a FILE_COPY of it. Printed as Markdown.

- report: the report case's views (p50, p99), --rounds times.
- record: on a copy, the store API on one connection (runs a second over --record-runs
  runs) and on 8 writer processes (bench/record.py), --rounds times.
- retention: the bench's case (bench/retention.py), --rounds rounds.
- partition (at the largest size): a copy rebuilt by hand as monthly partitions (keyed
  by the run's creation time, carried down to stages and jobs), then the cost of
  removing a month by DETACH ... CONCURRENTLY and DROP, by DROP alone, and by
  `retention.prune` (DELETE) on a plain copy; and the report's lookups on both layouts.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from cicd_db import retention, store
from cicd_db.settings import ConnectionSettings

from . import record, report
from . import retention as retention_case
from .common import HOME, Databases, Table, drop_database, one, percentile, say, start_server
from .upgrade_under_load import copy_database
from .workload import TABLES

VIEWS = ["runs, newest page", "one run and its stages", "one stage and its jobs", "one job"]


def spread(values: list[float], shape: str = "{:.2f}") -> str:
    """The median, and the range of the rounds."""
    median = shape.format(statistics.median(values))
    return f"{median} ({shape.format(min(values))}-{shape.format(max(values))})"


def database_sizes(settings: ConnectionSettings) -> list[str]:
    with psycopg.connect(settings.conninfo()) as conn:
        whole = one(conn, "SELECT pg_database_size(current_database())")
        jobs = one(conn, "SELECT pg_total_relation_size('job_executions')")
        rows = sum(
            one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))) for t in TABLES
        )
    return [f"{rows:,}", f"{whole / 2**30:.2f}", f"{jobs / 2**30:.2f}"]


def reports(dbs: Databases, runs: int, rounds: int, samples: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        table, _, _ = report.measure(dbs, runs, samples)
        for row in table.rows:
            out.setdefault(f"{row[0]} p50", []).append(float(row[1]))
            out.setdefault(f"{row[0]} p99", []).append(float(row[2]))
    return out


def recording(
    dbs: Databases, runs: int, rounds: int, record_runs: int, seconds: float
) -> dict[str, list[float]]:
    template = report.scale_database(dbs, runs).database
    name = "bench_scale_record"
    copy_database(dbs.admin, template, name, dbs.admin.user)
    target = replace(dbs.admin, database=name)
    out: dict[str, list[float]] = {"one connection": [], "8 writers": [], "8 writers errors": []}
    try:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            executions = store.Store.on(conn)
            record.record_with_store(executions, "warm-up")
            for number in range(rounds):
                started = time.perf_counter()
                for i in range(record_runs):
                    record.record_with_store(executions, f"r{number}-{i}")
                out["one connection"].append(record_runs / (time.perf_counter() - started))
                rate, failed = record.concurrent(target.conninfo(), seconds)
                out["8 writers"].append(rate)
                out["8 writers errors"].append(failed)
        out["statements a run"] = [record.statements_per_run(target.conninfo())]
    finally:
        drop_database(dbs.admin, name)
    return out


# -- monthly partitions, by hand -----------------------------------------------------------

# The run's creation time is the key: fixed when the run is inserted (start_time is NULL
# while a run is PENDING, completion_time until it finishes), carried down to its stages
# and jobs so that a run and all its children fall in one month and the foreign keys,
# which must include the key, can hold. The loaded rows take their start_time as it.
PARTITIONED: list[LiteralString] = [
    "CREATE TABLE runs_p (LIKE pipeline_executions INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
    "created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY RANGE (created_at)",
    "CREATE TABLE stages_p (LIKE stage_executions INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
    "run_created_at timestamptz NOT NULL) PARTITION BY RANGE (run_created_at)",
    "CREATE TABLE jobs_p (LIKE job_executions INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
    "run_created_at timestamptz NOT NULL) PARTITION BY RANGE (run_created_at)",
]
FILL: list[LiteralString] = [
    "INSERT INTO runs_p SELECT r.*, r.start_time FROM pipeline_executions r",
    "INSERT INTO stages_p SELECT s.*, r.start_time FROM stage_executions s "
    "JOIN pipeline_executions r ON r.id = s.pipeline_execution_id",
    "INSERT INTO jobs_p SELECT j.*, s.run_created_at FROM job_executions j "
    "JOIN stages_p s ON s.id = j.stage_execution_id",
]
# Every key must include the partition key: the primary keys, the per-pipeline run
# number, the per-run stage names and orders, the per-stage job names.
KEYS: list[LiteralString] = [
    "ALTER TABLE runs_p ADD PRIMARY KEY (id, created_at)",
    "ALTER TABLE runs_p ADD UNIQUE (pipeline_name, run_number, created_at)",
    "CREATE INDEX ON runs_p (completion_time) WHERE status IN ('SUCCESS', 'FAILED', 'CANCELED')",
    "ALTER TABLE stages_p ADD PRIMARY KEY (id, run_created_at)",
    "ALTER TABLE stages_p ADD UNIQUE (pipeline_execution_id, run_created_at, stage_name)",
    "ALTER TABLE stages_p ADD UNIQUE (pipeline_execution_id, run_created_at, execution_order)",
    "ALTER TABLE jobs_p ADD PRIMARY KEY (id, run_created_at)",
    "ALTER TABLE jobs_p ADD UNIQUE (stage_execution_id, run_created_at, job_name)",
    "ALTER TABLE stages_p ADD FOREIGN KEY (pipeline_execution_id, run_created_at) "
    "REFERENCES runs_p (id, created_at) ON DELETE CASCADE",
    "ALTER TABLE jobs_p ADD FOREIGN KEY (stage_execution_id, run_created_at) "
    "REFERENCES stages_p (id, run_created_at) ON DELETE CASCADE",
]
LAYOUT = [("jobs_p", "jobs"), ("stages_p", "stages"), ("runs_p", "runs")]  # children first


def months(conn: psycopg.Connection[Any]) -> list[datetime]:
    """The first day of every month the runs started in, and of the month after."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT generate_series(date_trunc('month', min(start_time)), "
            "date_trunc('month', max(start_time)) + interval '1 month', interval '1 month') "
            "FROM pipeline_executions"
        )
    ]


def build_partitioned(conn: psycopg.Connection[Any]) -> list[datetime]:
    """The three partitioned tables beside the plain ones, one partition a month. Writes."""
    bounds = months(conn)
    for statement in PARTITIONED:
        conn.execute(statement)
    for table, _ in LAYOUT:
        for low, high in itertools.pairwise(bounds):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(f"{table}_{low:%Y_%m}"),
                    sql.Identifier(table),
                    sql.Literal(low),
                    sql.Literal(high),
                )
            )
    for statement in [*FILL, *KEYS]:
        started = time.perf_counter()
        conn.execute(statement)
        say(f"    {statement[:70]}: {time.perf_counter() - started:.0f} s")
    for table, _ in LAYOUT:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    return bounds


def month_rows(conn: psycopg.Connection[Any], month: datetime) -> list[int]:
    return [
        int(
            one(
                conn,
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"{table}_{month:%Y_%m}")),
            )
        )
        for table, _ in LAYOUT
    ]


def remove_month(conn: psycopg.Connection[Any], month: datetime, detach: bool) -> list[float]:
    """Each table's month gone, children first; the seconds each took."""
    out = []
    for table, _ in LAYOUT:
        part = sql.Identifier(f"{table}_{month:%Y_%m}")
        started = time.perf_counter()
        if detach:
            # Two transactions; writers of the other months are never blocked.
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                    sql.Identifier(table), part
                )
            )
        conn.execute(sql.SQL("DROP TABLE {}").format(part))
        out.append(time.perf_counter() - started)
    return out


def lookups(conn: psycopg.Connection[Any], samples: int) -> dict[str, dict[str, float]]:
    """p50 and p99 (ms) of the report's reads on the plain and the partitioned tables."""
    chooser = random.Random(11)
    pipelines = conn.execute("SELECT pipeline_name, last_run_number FROM pipeline_run_counters")
    counters = pipelines.fetchall()
    picks = []
    for _ in range(samples):
        pipeline, last = chooser.choice(counters)
        row = conn.execute(
            "SELECT id, start_time, run_number FROM pipeline_executions "
            "WHERE pipeline_name = %s AND run_number = %s",
            [pipeline, chooser.randint(1, last)],
        ).fetchone()
        assert row is not None
        picks.append((pipeline, *row))
    reads: dict[str, tuple[LiteralString, Callable[[tuple[Any, ...]], list[Any]]]] = {
        "newest page, plain": (
            "SELECT * FROM pipeline_executions WHERE pipeline_name = %s "
            "ORDER BY run_number DESC LIMIT 20",
            lambda p: [p[0]],
        ),
        "newest page, partitioned": (
            "SELECT * FROM runs_p WHERE pipeline_name = %s ORDER BY run_number DESC LIMIT 20",
            lambda p: [p[0]],
        ),
        "one run by number, plain": (
            "SELECT * FROM pipeline_executions WHERE pipeline_name = %s AND run_number = %s",
            lambda p: [p[0], p[3]],
        ),
        "one run by number, partitioned": (
            "SELECT * FROM runs_p WHERE pipeline_name = %s AND run_number = %s",
            lambda p: [p[0], p[3]],
        ),
        "a run's stages, plain": (
            "SELECT * FROM stage_executions WHERE pipeline_execution_id = %s "
            "ORDER BY execution_order",
            lambda p: [p[1]],
        ),
        "a run's stages, partitioned, by id only": (
            "SELECT * FROM stages_p WHERE pipeline_execution_id = %s ORDER BY execution_order",
            lambda p: [p[1]],
        ),
        "a run's stages, partitioned, with the key": (
            "SELECT * FROM stages_p WHERE pipeline_execution_id = %s AND run_created_at = %s "
            "ORDER BY execution_order",
            lambda p: [p[1], p[2]],
        ),
    }
    out = {}
    for name, (query, params) in reads.items():
        for pick in picks:  # warm: the pages in memory, the statement prepared
            conn.execute(query, params(pick)).fetchall()
        timings = []
        for pick in picks:
            started = time.perf_counter()
            conn.execute(query, params(pick)).fetchall()
            timings.append((time.perf_counter() - started) * 1000)
        out[name] = {"p50": percentile(timings, 0.5), "p99": percentile(timings, 0.99)}
    return out


def partition(dbs: Databases, runs: int, rounds: int, samples: int) -> list[Table]:
    template = report.scale_database(dbs, runs).database
    tables = []
    name = "bench_partitioned"
    copy_database(dbs.admin, template, name, dbs.admin.user)
    target = replace(dbs.admin, database=name)
    try:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '1GB'")
            started = time.perf_counter()
            bounds = build_partitioned(conn)
            say(f"  partitioned copy built in {time.perf_counter() - started:.0f} s")
            read = lookups(conn, samples)
            removed: dict[str, list[list[float]]] = {"detach": [], "drop": []}
            counted: dict[str, list[list[int]]] = {"detach": [], "drop": []}
            refused: list[str] = []
            # A month for each way and round, the oldest first.
            rounds = min(rounds, (len(bounds) - 1) // 2)
            for number in range(rounds):
                for way in ("detach", "drop"):
                    month = bounds[2 * number + (way == "drop")]
                    rows_then = month_rows(conn, month)
                    try:
                        removed[way].append(remove_month(conn, month, way == "detach"))
                        counted[way].append(rows_then)
                    except psycopg.Error as error:
                        first_line = str(error).splitlines()[0]
                        say(f"  {way} of {month:%Y-%m}: {error.sqlstate} {first_line}")
                        refused.append(f"{way} of {month:%Y-%m}: {error.sqlstate} {first_line}")
    finally:
        drop_database(dbs.admin, name)
    # The same months by retention's DELETE, on a plain copy, oldest first.
    name = "bench_delete_months"
    copy_database(dbs.admin, template, name, dbs.admin.user)
    target = replace(dbs.admin, database=name)
    deleted: list[retention.Pruned] = []
    try:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            for month in bounds[1 : 1 + rounds]:
                days = one(
                    conn,
                    "SELECT floor(extract(epoch FROM now() - %s::timestamptz) / 86400)",
                    [month],
                )
                deleted.append(retention.prune(conn, keep_days=int(days)))
    finally:
        drop_database(dbs.admin, name)

    month_table = Table(
        f"A month removed at {runs:,} runs: DETACH/DROP of partitions beside DELETE",
        ["way", "rows a month (runs / stages / jobs)", "seconds (median, range)", "rows a second"],
    )
    for way, label in (
        ("detach", "DETACH PARTITION ... CONCURRENTLY, then DROP TABLE (jobs, stages, runs)"),
        ("drop", "DROP TABLE of each partition (jobs, stages, runs)"),
    ):
        if not removed[way]:
            month_table.rows.append([label, "-", "refused (see the notes)", "-"])
            continue
        seconds = [sum(r) for r in removed[way]]
        sizes = [f"{statistics.median(c[i] for c in counted[way]):,.0f}" for i in (2, 1, 0)]
        rates = [sum(c) / s for c, s in zip(counted[way], seconds, strict=True)]
        month_table.rows.append(
            [
                label,
                " / ".join(sizes),
                spread(seconds, "{:.2f}"),
                f"{statistics.median(rates):,.0f}",
            ]
        )
        for index, (_table, kind) in enumerate(LAYOUT):
            month_table.notes.append(
                f"{way}: {kind} {spread([r[index] for r in removed[way]], '{:.3f}')} s"
            )
    month_table.notes += refused
    seconds = [p.seconds for p in deleted]
    rows = [p.runs + p.stages + p.jobs for p in deleted]
    month_table.rows.append(
        [
            f"retention.prune (DELETE in batches of {retention.DEFAULT_BATCH_SIZE} runs)",
            f"{statistics.median(p.runs for p in deleted):,.0f} / "
            f"{statistics.median(p.stages for p in deleted):,.0f} / "
            f"{statistics.median(p.jobs for p in deleted):,.0f}",
            spread(seconds, "{:.1f}"),
            f"{statistics.median(r / s for r, s in zip(rows, seconds, strict=True)):,.0f}",
        ]
    )
    tables.append(month_table)
    read_table = Table(
        f"Report reads at {runs:,} runs, plain tables beside monthly partitions, ms",
        ["read", "p50", "p99"],
    )
    for what, figures in read.items():
        read_table.rows.append([what, f"{figures['p50']:.3f}", f"{figures['p99']:.3f}"])
    read_table.notes.append(
        f"{samples} samples each, after one untimed pass; {len(bounds) - 1} monthly partitions."
    )
    tables.append(read_table)
    return tables


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--runs", type=int, action="append", help="a size (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000, help="samples per read")
    parser.add_argument("--record-runs", type=int, default=20)
    parser.add_argument("--writer-seconds", type=float, default=10)
    parser.add_argument(
        "--only",
        choices=["report", "record", "retention", "partition"],
        action="append",
        help="only these parts (repeatable)",
    )
    args = parser.parse_args()
    sizes = sorted(args.runs or [100_000, 300_000, 1_000_000])
    parts = set(args.only or ["report", "record", "retention", "partition"])
    _, admin, _ = start_server(HOME)
    dbs = Databases(admin)
    say(f"# bench.scale, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {_load()}")
    growth = Table(
        "Growth: sizes and times, median (range) of the rounds",
        ["figure", *(f"{n:,} runs" for n in sizes)],
    )
    columns: list[dict[str, str]] = []
    results: list[Table] = []
    for runs in sizes:
        say(f"## {runs:,} runs")
        column: dict[str, str] = {}
        db = report.scale_database(dbs, runs)
        (
            column["rows in the three tables"],
            column["database, GiB"],
            column["job_executions, GiB"],
        ) = database_sizes(db)
        if "report" in parts:
            for view, values in reports(dbs, runs, args.rounds, args.samples).items():
                if any(view.startswith(v) for v in VIEWS):
                    column[f"report {view}, ms"] = spread(values, "{:.3f}")
            say(f"  report done; load {_load()}")
        if "record" in parts:
            rates = recording(dbs, runs, args.rounds, args.record_runs, args.writer_seconds)
            per_run = rates["statements a run"][0]
            column["record, one connection, runs/s"] = spread(rates["one connection"], "{:.1f}")
            column["record, 8 writers, runs/s"] = spread(rates["8 writers"], "{:.1f}")
            column["record, 8 writers, statements/s"] = spread(
                [r * per_run for r in rates["8 writers"]], "{:,.0f}"
            )
            column["record, 8 writers, errors"] = f"{sum(rates['8 writers errors']):.0f}"
            say(f"  record done; load {_load()}")
        if "retention" in parts:
            found, _figures = retention_case.measure(dbs, runs, args.rounds)
            for row in found[0].rows:
                column[f"retention: {row[0]}"] = f"{row[1]} ({row[2]}-{row[3]})"
            results += found
            say(f"  retention done; load {_load()}")
        columns.append(column)
        for key, value in column.items():
            say(f"  {key}: {value}")
    keys = list(dict.fromkeys(k for c in columns for k in c))
    growth.rows = [[key, *(c.get(key, "-") for c in columns)] for key in keys]
    say(growth.markdown())
    for table in results:
        say(table.markdown())
    if "partition" in parts:
        say(f"## partitions at {sizes[-1]:,} runs")
        for table in partition(dbs, sizes[-1], args.rounds, args.samples):
            say(table.markdown())
    say(f"# done {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {_load()}")
    return 0


def _load() -> str:
    with open("/proc/loadavg") as averages:
        return " ".join(averages.read().split()[:3])


if __name__ == "__main__":
    raise SystemExit(main())
