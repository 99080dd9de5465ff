"""Case `retention`: retention under load. A copy of the report case's database (by
default 1,000,000 runs), the oldest 30% of its runs deleted by `retention.prune` while
writer processes run the plan's SQL (bench/workload.py), each statement timed; then a
VACUUM of the three tables, the writers still writing.

Reported, per round and as medians: the writers' errors and their longest and p99
single-statement wait while retention ran; runs, stages and jobs deleted a second;
the longest batch; and each table's size (pg_total_relation_size) and its indexes'
(pg_indexes_size) before, after, and after VACUUM.

The copy is made with CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY, so the
loaded database (kept between benches) is never pruned itself."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from cicd_db import retention
from cicd_db.settings import ConnectionSettings

from . import report
from .common import Databases, Table, drop_database, one, percentile, say
from .upgrade_under_load import copy_database
from .upgrade_writers import PHASES, gather, writer
from .workload import TABLES

COPY = "bench_retention"
SHARE = 0.30  # of the finished runs, the oldest, to delete
WRITERS = 8
RATE = 600  # statements a second over all writers, as in the upgrade case
BOUND_MS = 500  # the longest single writer statement while retention runs

# The finished runs in the order retention takes them (the partial index of 0028).
AGE_AT = """
    SELECT floor(extract(epoch FROM now() - completion_time) / 86400)::int
    FROM pipeline_executions WHERE status IN ('SUCCESS', 'FAILED', 'CANCELED')
    ORDER BY completion_time OFFSET %s LIMIT 1
"""
FINISHED = (
    "SELECT count(*) FROM pipeline_executions WHERE status IN ('SUCCESS', 'FAILED', 'CANCELED')"
)

Sizes = dict[str, tuple[int, int]]  # table: (table with its indexes and TOAST, indexes), bytes


@dataclass
class Round:
    keep_days: int
    pruned: retention.Pruned
    longest_batch_ms: float
    waits: dict[str, list[float]]  # phase: every writer statement's time, ms
    errors: int
    error_kinds: list[str]
    vacuum_s: float
    sizes: dict[str, Sizes] = field(default_factory=dict)  # before, after, after VACUUM
    writer_rows_kept: bool = True
    left_behind: int = 0  # finished runs before the cutoff still there


def keep_days_for(conn: psycopg.Connection[Any], share: float) -> int:
    """The most whole days to keep that still delete at least `share` of the finished
    runs, by the rows' dates and the server's clock. Reads."""
    finished = int(one(conn, FINISHED))
    days = one(conn, AGE_AT, [max(0, round(finished * share) - 1)])
    if days is None or days < 1:
        raise SystemExit(
            "bench: the loaded runs finished less than a day ago; retention keeps at least "
            "one day, so there is nothing to delete: drop the bench_scale_* databases and "
            "load again"
        )
    return int(days)


def sizes(conn: psycopg.Connection[Any]) -> Sizes:
    out = {}
    for table in TABLES:
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass), pg_indexes_size(%s::regclass)",
            [table, table],
        ).fetchone()
        assert row is not None
        out[table] = (int(row[0]), int(row[1]))
    return out


def one_round(admin: ConnectionSettings, template: str, writers: int, before: float) -> Round:
    """Copy `template`, then prune its oldest runs under `writers` writer processes."""
    started = time.perf_counter()
    copy_database(admin, template, COPY, admin.user)
    say(f"  copied {template} ({time.perf_counter() - started:.0f} s)")
    target = replace(admin, database=COPY)
    try:
        return _prune_under_load(target, writers, before)
    finally:
        drop_database(admin, COPY)


def _prune_under_load(target: ConnectionSettings, writers: int, before: float) -> Round:
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        keep_days = keep_days_for(conn, SHARE)
        pipelines = int(one(conn, "SELECT count(*) FROM pipeline_run_counters"))
        measured = {"before": sizes(conn)}

    context = mp.get_context("fork")
    phase = context.Value("i", 0)
    stop = context.Value("i", 0)
    results: Any = context.Queue()
    processes = [
        context.Process(
            target=writer,
            args=(n, target.conninfo(), RATE / writers, phase, stop, results, pipelines, 5, "fail"),
        )
        for n in range(writers)
    ]
    for process in processes:
        process.start()
    batches: list[float] = []
    try:
        time.sleep(before)
        phase.value = 1
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            last = [0.0]

            def on_batch(done: retention.Pruned, found: int) -> None:
                batches.append((done.seconds - last[0]) * 1000)
                last[0] = done.seconds

            pruned = retention.prune(conn, keep_days=keep_days, on_batch=on_batch)
            phase.value = 2
            measured["after"] = sizes(conn)
            # Plain VACUUM, as autovacuum would run it: no lock that stops a writer.
            started = time.perf_counter()
            for table in TABLES:
                conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
            vacuum_s = time.perf_counter() - started
            measured["after VACUUM"] = sizes(conn)
        time.sleep(1)
    finally:
        stop.value = 1
        reports = gather(results, processes)

    waits = {name: [w for r in reports.values() for w in r.waits[name]] for name in PHASES}
    errors = sum(sum(sum(c.values()) for c in r.errors.values()) for r in reports.values())
    error_kinds = sorted({kind for r in reports.values() for c in r.errors.values() for kind in c})
    written = [i for r in reports.values() for i in r.written["pipeline_executions"]]
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        kept = one(
            conn, "SELECT count(*) FROM pipeline_executions WHERE id = ANY(%s::uuid[])", [written]
        )
        left = one(
            conn,
            FINISHED + " AND completion_time < %s",
            [pruned.cutoff],
        )
    if len(reports) < len(processes):
        errors += len(processes) - len(reports)
        error_kinds.append(f"{len(processes) - len(reports)} writer(s) never reported")
    return Round(
        keep_days,
        pruned,
        max(batches, default=0.0),
        waits,
        errors,
        error_kinds,
        vacuum_s,
        measured,
        writer_rows_kept=kept == len(written),
        left_behind=int(left),
    )


def measure(
    dbs: Databases, total_runs: int, rounds: int, before: float = 3.0
) -> tuple[list[Table], dict[str, float]]:
    """The tables, and for the targets: the writers' errors and longest wait over every
    round (the worst, not the median: one stall is one stalled CI system), and the p99."""
    template = report.scale_database(dbs, total_runs).database
    done: list[Round] = []
    for number in range(rounds):
        say(f"  round {number + 1} of {rounds}")
        result = one_round(dbs.admin, template, WRITERS, before)
        say(
            f"  {result.pruned}; writers: {result.errors} errors, longest wait "
            f"{_longest(result):.0f} ms, p99 {_p99(result):.1f} ms"
        )
        done.append(result)
    first = done[0].pruned
    runs_share = first.runs / total_runs
    table = Table(
        f"Retention under load at {total_runs:,} runs: the oldest {runs_share:.1%} deleted "
        f"while {WRITERS} writers write",
        ["figure", "median", "min", "max"],
    )

    def row(what: str, values: list[float], shape: str = "{:,.0f}") -> None:
        table.rows.append(
            [
                what,
                *(shape.format(v) for v in (statistics.median(values), min(values), max(values))),
            ]
        )

    row("runs deleted", [r.pruned.runs for r in done])
    row("stages deleted", [r.pruned.stages for r in done])
    row("jobs deleted", [r.pruned.jobs for r in done])
    row("seconds to delete", [r.pruned.seconds for r in done], "{:.1f}")
    for kind in ("runs", "stages", "jobs"):
        row(f"{kind} deleted a second", [getattr(r.pruned, kind) / r.pruned.seconds for r in done])
    row(
        f"longest batch ({retention.DEFAULT_BATCH_SIZE} runs), ms",
        [r.longest_batch_ms for r in done],
    )
    row("VACUUM of the three tables, s", [r.vacuum_s for r in done], "{:.1f}")
    row("writer statements while retention and VACUUM ran", [_statements(r) for r in done])
    row("writer errors", [r.errors for r in done])
    row("writer wait p50, ms", [_p50(r) for r in done], "{:.2f}")
    row("writer wait p99, ms", [_p99(r) for r in done], "{:.2f}")
    row("longest writer wait, ms", [_longest(r) for r in done], "{:.0f}")
    row(
        "longest writer wait before retention started, ms",
        [max(r.waits["before"], default=0.0) for r in done],
        "{:.0f}",
    )
    table.notes += [
        f"{len(done)} round(s), each on a fresh FILE_COPY of the loaded database. "
        f"`retention.prune(keep_days={done[0].keep_days})` (the most whole days to keep that "
        f"still delete {SHARE:.0%} of the finished runs, by the server's clock), batches of "
        f"{retention.DEFAULT_BATCH_SIZE} runs; then a plain VACUUM of the three tables.",
        f"{WRITERS} writer processes run the plan's SQL (bench/workload.py) at about {RATE} "
        "statements a second in all, one autocommit statement at a time, each timed; the "
        "waits are those of the statements that ran while retention and the VACUUM ran.",
    ]
    kinds = sorted({kind for r in done for kind in r.error_kinds})
    if kinds:
        table.notes.append("Writer errors: " + "; ".join(kinds))
    if not all(r.writer_rows_kept for r in done):
        table.notes.append("A ROW A WRITER INSERTED IS MISSING after retention.")
    if any(r.left_behind for r in done):
        table.notes.append(
            f"Runs before the cutoff left behind: {[r.left_behind for r in done]} "
            "(retention skips a run a writer holds)."
        )

    size_table = Table(
        f"Retention under load at {total_runs:,} runs: sizes, MB (table with its indexes / "
        "indexes alone)",
        ["table", "before", "after", "after VACUUM"],
    )
    for name in TABLES:
        cells = [name]
        for moment in ("before", "after", "after VACUUM"):
            total = statistics.median(r.sizes[moment][name][0] for r in done) / 2**20
            indexes = statistics.median(r.sizes[moment][name][1] for r in done) / 2**20
            cells.append(f"{total:,.0f} / {indexes:,.0f}")
        size_table.rows.append(cells)
    size_table.notes += [
        "pg_total_relation_size (heap, indexes, TOAST) / pg_indexes_size; medians of the rounds.",
        "A plain VACUUM makes the deleted rows' space reusable by new rows; it gives back to the "
        "operating system only empty pages at the end of a table, and the oldest runs lie at "
        "its start, so the files keep their size (VACUUM FULL would shrink them, under an "
        "ACCESS EXCLUSIVE lock).",
    ]
    figures = {
        "writer errors": float(sum(r.errors for r in done)),
        "longest writer wait": max(_longest(r) for r in done),
        "writer wait p99": statistics.median(_p99(r) for r in done),
        "rows kept": float(all(r.writer_rows_kept for r in done)),
    }
    return [table, size_table], figures


def _while_pruning(result: Round) -> list[float]:
    return result.waits["during"] + result.waits["after"]


def _statements(result: Round) -> float:
    return float(len(_while_pruning(result)))


def _longest(result: Round) -> float:
    return max(_while_pruning(result), default=0.0)


def _p50(result: Round) -> float:
    waits = _while_pruning(result)
    return percentile(waits, 0.5) if waits else 0.0


def _p99(result: Round) -> float:
    waits = _while_pruning(result)
    return percentile(waits, 0.99) if waits else 0.0
