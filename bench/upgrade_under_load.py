"""Upgrade under load: the plan's schema, hardened by `migrate up` while writers write.

`python -m bench.upgrade_under_load --runs 20000`; `make bench` runs it as its case
`upgrade`, on every PostgreSQL major of the machine (measure() below).

A figure, not a test (the test is tests/test_upgrade_under_load.py). Steps:

1. An embedded server (the wheel's PostgreSQL 18, or --bin-dir, e.g. Debian's
   /usr/lib/postgresql/15/bin) under .cicd-db/upgrade-bench-<major>/.
2. A template database with the plan's schema (0001, as `psql -f` would make it,
   owned by ci_user) and --runs runs over --pipelines pipelines, 5 stages x 4 jobs
   each, loaded with set-based SQL (INSERT ... SELECT generate_series); a share of
   the rows without a status, as the plan allows (bench/workload.py). Built once per
   --runs and kept.
3. A copy of it, `migrate baseline --version 1`.
4. --writers writer processes using the plan's own SQL (bench/workload.py) in short
   autocommit transactions (about --rate statements a second in all): insert a run
   without a run number, its stages and jobs, then status and time updates, and a read
   of the run's times. They write --before seconds, then `python -m cicd_db migrate up`
   runs, then they write --after seconds more.
5. While it runs, pg_locks is sampled every --sample-ms from another connection:
   which locks the runner's session held or waited for, on which table, how long.

Printed: each file's duration, retries and locks; the writers' p50 / p99 / longest
single-statement wait and errors before, during and after; and checks (every loaded
row kept, with its status, times and run number; every row a writer inserted is
there; run numbers unique per pipeline; NOT NULL status everywhere).

Lock retries: the runner retries a file that fails with lock_not_available,
deadlock_detected or serialization_failure by itself; its retry lines on stderr
are counted per file.

The writers are bench/upgrade_writers.py, the runner's process and the lock sampling
bench/upgrade_locks.py; this module prepares the database, runs the three phases, and
prints the report and its checks.

Writers and prepared statements: a type change (TIMESTAMP -> TIMESTAMPTZ) makes
every server-side prepared statement that returns the column fail with "cached
plan must not change result type" until it is prepared again. The writers here run
as the application must during the upgrade: without server-side prepared statements
(psycopg `prepare_threshold=None`). --prepare-threshold 5 (psycopg's default) shows
what happens otherwise; --on-stale-plan deallocate then shows the other remedy
(DEALLOCATE ALL and run the statement again), counted apart from the errors.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cicd_db import migrations
from cicd_db.settings import APP, ConnectionSettings

from . import workload
from .common import (
    MIGRATIONS,
    PYTHON,
    ROOT,
    Table,
    create_database,
    database_exists,
    drop_database,
    one,
    say,
    server_version,
    start_server,
)
from .upgrade_locks import FileRun, LockSampler, lock_spans, run_upgrade
from .upgrade_writers import PHASES, WriterReport, gather, summary, writer
from .workload import JOBS, STAGES, TABLES

PLAN_SCHEMA = MIGRATIONS / "0001_plan_schema.sql"


# -- the bench's case ----------------------------------------------------------------


def measure(runs: int, extra: list[str]) -> tuple[Table, list[str]]:
    """This program on each PostgreSQL major here; the verdicts, and its reports verbatim."""
    majors: list[tuple[str, list[str]]] = [("18 (embedded wheel)", [])]
    for initdb in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        majors.append((f"{initdb.parent.parent.name} (Debian)", ["--bin-dir", str(initdb.parent)]))
    table = Table(
        f"Upgrade under load: the plan's schema at {runs:,} runs to the newest",
        ["PostgreSQL", "targets"],
    )
    reports: list[str] = []
    for label, bin_dir in majors:
        say(f"bench: upgrade under load on PostgreSQL {label}")
        done = subprocess.run(
            [PYTHON, "-m", __name__, "--runs", str(runs), *bin_dir, *extra],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        output = done.stdout.strip()
        say(output)
        reports += [f"PostgreSQL {label}:", output, ""]
        failed = [line.strip() for line in output.splitlines() if "[FAIL]" in line]
        if done.returncode == 0 and not failed:
            verdict = "all met"
        else:
            verdict = "; ".join(failed) or done.stderr.strip()[-200:]
        table.rows.append([label, verdict])
    table.notes.append("The full report of each run is in the last section.")
    return table, reports


# -- data ----------------------------------------------------------------------------


def build_template(
    admin: ConnectionSettings, user: ConnectionSettings, name: str, runs: int, pipelines: int
) -> None:
    """The plan's schema by its own SQL (as ci_user), then the rows, set-based."""
    create_database(admin, name, sql.SQL("OWNER"), sql.Identifier(user.user))
    with psycopg.connect(replace(user, database=name).conninfo(), autocommit=True) as conn:
        conn.execute(PLAN_SCHEMA.read_bytes())
    started = time.perf_counter()
    with psycopg.connect(replace(admin, database=name).conninfo(), autocommit=True) as conn:
        # Rows consistent by construction: skip the per-row foreign-key triggers.
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '1GB'")
        workload.load(
            conn,
            runs,
            pipelines,
            lambda table: say(f"  {table} loaded ({time.perf_counter() - started:.0f} s)"),
        )
        conn.execute("SET session_replication_role = DEFAULT")
        for table in TABLES:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
        conn.execute("CHECKPOINT")
        say(f"  vacuumed and analysed ({time.perf_counter() - started:.0f} s)")


def copy_database(admin: ConnectionSettings, template: str, name: str, owner: str) -> None:
    # FILE_COPY: a file copy, not the whole template through the WAL.
    create_database(
        admin,
        name,
        *(sql.SQL("TEMPLATE"), sql.Identifier(template)),
        *(sql.SQL("OWNER"), sql.Identifier(owner)),
        sql.SQL("STRATEGY FILE_COPY"),
    )


# -- main ----------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to load (default 1M)")
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--writers", type=int, default=8, help="writer processes")
    parser.add_argument("--rate", type=float, default=600, help="statements a second, all writers")
    parser.add_argument("--before", type=float, default=5, help="seconds of writing before")
    parser.add_argument("--after", type=float, default=5, help="seconds of writing after")
    parser.add_argument("--bin-dir", type=Path, help="PostgreSQL binaries (default: the wheel's)")
    parser.add_argument("--home", type=Path, help="server state folder")
    parser.add_argument("--sample-ms", type=float, default=20, help="pg_locks sampling period")
    parser.add_argument(
        "--prepare-threshold",
        type=int,
        default=None,
        help="writers' psycopg prepare_threshold (default: none, no server-side prepares)",
    )
    parser.add_argument(
        "--on-stale-plan",
        choices=["fail", "deallocate"],
        default="fail",
        help="what a writer does on 'cached plan must not change result type'",
    )
    parser.add_argument("--rebuild", action="store_true", help="load the template again")
    parser.add_argument("--keep", action="store_true", help="keep the upgraded copy")
    return parser.parse_args()


@dataclass
class Prepared:
    """The database to upgrade, made ready: how to reach it (as the owner, the
    superuser, the writer role), the server's version, and the loaded rows' fingerprint."""

    admin: ConnectionSettings
    target: ConnectionSettings
    super_target: ConnectionSettings
    writer_target: ConnectionSettings
    version: str
    before: Any


def prepare(args: argparse.Namespace) -> Prepared | None:
    """The server started, the template loaded (once per --runs), a copy of it baselined
    at version 1 and opened to the writer role; None if the baseline failed."""
    major = "18"
    if args.bin_dir:
        found = re.search(r"postgresql/(\d+)/", str(args.bin_dir))
        major = found[1] if found else args.bin_dir.parent.name
    home = args.home or ROOT / ".cicd-db" / f"upgrade-bench-{major}"
    say(f"bench: server under {home}")
    # The bench's tuning, for loading 26 million rows; the server is left running.
    server, admin, _ = start_server(home, args.bin_dir)
    user = server.settings()
    version = server_version(admin)
    say(f"bench: PostgreSQL {version}, {os.cpu_count()} cores")

    template = f"plan_{args.runs}_{args.pipelines}"
    if args.rebuild or not database_exists(admin, template):
        say(f"bench: loading {args.runs:,} runs into {template} (kept for later runs)")
        build_template(admin, user, template, args.runs, args.pipelines)
    started = time.perf_counter()
    copy_database(admin, template, "upgrade_under_load", user.user)
    say(f"bench: copied the template ({time.perf_counter() - started:.0f} s)")
    target = replace(user, database="upgrade_under_load")
    super_target = replace(admin, database="upgrade_under_load")
    baseline = subprocess.run(
        [
            *(sys.executable, "-m", "cicd_db", "migrate", "baseline", "--version", "1"),
            *("--database-url", target.url(), "--migrations-dir", str(MIGRATIONS)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    say(f"bench: {baseline.stdout.strip() or baseline.stderr.strip()}")
    if baseline.returncode != 0:
        return None
    writer_target = replace(user.for_role(APP), database="upgrade_under_load")
    _grant_writers(super_target, user.user, writer_target.user)

    with psycopg.connect(super_target.conninfo(), autocommit=True) as conn:
        before = workload.fingerprint(conn)
        nulls_before = {
            t: one(
                conn,
                sql.SQL("SELECT count(*) FROM {} WHERE status IS NULL").format(sql.Identifier(t)),
            )
            for t in TABLES
        }
    say(
        f"bench: loaded rows {before and {t: v[0] for t, v in before.items()}}, "
        f"without status {nulls_before}"
    )
    return Prepared(admin, target, super_target, writer_target, version, before)


def _grant_writers(super_target: ConnectionSettings, owner: str, writer_role: str) -> None:
    """After baseline, which compares grants too. The writers are the CI system: they
    connect as the writer role (docs/security.md). Before migration 0029 grants it, the
    operator grants it what the plan's single role wrote (tables and the SERIAL's
    sequence), and the tables the upgrade makes (0016's run counters) by default; 0029
    takes the counters back (its trigger runs as their owner)."""
    with psycopg.connect(super_target.conninfo(), autocommit=True) as conn:
        role = sql.Identifier(writer_role)
        conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(role)
        )
        # The plan's run_number is a SERIAL: its sequence, until 0024 drops it.
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
        conn.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
            ).format(sql.Identifier(owner), role)
        )


@dataclass
class Upgraded:
    """What the three phases gave: each file's timeline, the runner's retries and
    stderr, when the upgrade ran, the writers' reports and the lock samples."""

    timeline: list[FileRun]
    retries: int
    err: str
    started: float
    ended: float
    reports: dict[int, WriterReport]
    sampler: LockSampler

    @property
    def finished(self) -> bool:
        return all(entry.ended for entry in self.timeline)


def upgrade_while_writing(args: argparse.Namespace, prepared: Prepared) -> Upgraded:
    """The writers write --before seconds, `migrate up` runs, they write --after more."""
    files = [m.filename for m in migrations.discover(MIGRATIONS) if m.version > 1]
    context = mp.get_context("fork")
    phase = context.Value("i", 0)
    stop = context.Value("i", 0)
    results: Any = context.Queue()
    writers = [
        context.Process(
            target=writer,
            args=(
                n,
                prepared.writer_target.conninfo(),
                args.rate / args.writers,
                phase,
                stop,
                results,
                args.pipelines,
                args.prepare_threshold,
                args.on_stale_plan,
            ),
        )
        for n in range(args.writers)
    ]
    for process in writers:
        process.start()
    sampler = LockSampler(prepared.super_target.conninfo(), args.sample_ms / 1000)
    sampler.start()
    say(
        f"bench: {args.writers} writers at ~{args.rate:.0f} statements/s; upgrade in "
        f"{args.before:.0f} s"
    )
    time.sleep(args.before)
    phase.value = 1
    started = time.monotonic()
    timeline, retries, err = run_upgrade(prepared.target.url(), files)
    ended = time.monotonic()
    phase.value = 2
    time.sleep(args.after)
    stop.value = 1
    reports = gather(results, writers)
    sampler.done.set()
    sampler.join()
    return Upgraded(timeline, retries, err, started, ended, reports, sampler)


def report(args: argparse.Namespace, version: str, run: Upgraded) -> int:
    """Prints each file's time and locks and the writers' waits and errors by phase;
    returns the writers' errors in all."""
    say("")
    say(
        f"Upgrade under load: PostgreSQL {version}, {args.runs:,} runs x {STAGES} stages x "
        f"{JOBS} jobs, {args.writers} writers at ~{args.rate:.0f} statements/s"
    )
    say(
        f"migrate up: {'finished' if run.finished else 'DID NOT FINISH'} in "
        f"{run.ended - run.started:.1f} s, the runner's retries after lock errors: "
        f"{run.retries}"
    )
    if not run.finished:
        say(f"  last error: {run.err.strip()[-600:]}")
    say("")
    say(
        "file                                        wall ms  runner ms  retries  runner locks on "
        f"tables (sampled every {args.sample_ms:.0f} ms)"
    )
    for entry in run.timeline:
        spans = (
            lock_spans(
                run.sampler.samples,
                entry.started,
                entry.ended or run.ended,
                args.sample_ms / 1000,
            )
            if entry.started
            else []
        )
        wall = (entry.ended - entry.started) * 1000 if entry.ended else 0
        shown = "; ".join(spans) or "none seen (held for less than a sample)"
        say(f"{entry.name:<44} {wall:7.0f}  {entry.runner_ms:9.0f}  {entry.retries:>7}  {shown}")
    say("")
    say("writers: single-statement wait")
    writer_errors = 0
    for name in PHASES:
        waits = [w for r in run.reports.values() for w in r.waits[name]]
        errors = sum((r.errors[name] for r in run.reports.values()), Counter())
        writer_errors += sum(errors.values())
        recovered = sum(r.recovered[name] for r in run.reports.values())
        say(
            f"  {name:<7} {summary(waits)}  errors {sum(errors.values())}"
            + (f"  recovered stale plans {recovered}" if recovered else "")
        )
        for message, count in errors.most_common(5):
            say(f"          {count} x {message}")
    slowest = sorted((s for r in run.reports.values() for s in r.slowest), reverse=True)[:5]
    for ms, at, statement in slowest:
        running = next(
            (e.name for e in run.timeline if e.started and e.started <= at <= (e.ended or at)),
            "before/after the upgrade",
        )
        say(f"  slow: {ms:7.1f} ms  {statement.strip()}  during {running}")
    waiting_peak = max((n for _, n in run.sampler.writers_waiting), default=0)
    say(f"  most writer lock waits seen in one sample: {waiting_peak}")
    return writer_errors


def check(prepared: Prepared, run: Upgraded, writer_errors: int) -> bool:
    """Prints the checks (every row kept, every written row there, the history at the
    newest version, no writer error, no wait over 500 ms); whether all hold."""
    say("")
    written = {t: [i for r in run.reports.values() for i in r.written[t]] for t in TABLES}
    with psycopg.connect(prepared.super_target.conninfo(), autocommit=True) as conn:
        checks = workload.checks(conn, prepared.before, written)
        history = one(conn, "SELECT max(version) FROM cicd_db.cicd_db_schema_history")
        newest = max(m.version for m in migrations.discover(MIGRATIONS))
        checks.append((f"history at version {history} of {newest}", history == newest))
    longest = max((w for r in run.reports.values() for p in PHASES for w in r.waits[p]), default=0)
    checks.append((f"zero writer errors ({writer_errors})", writer_errors == 0))
    checks.append((f"longest single writer wait <= 500 ms ({longest:.0f} ms)", longest <= 500))
    checks.append(("upgrade finished without a manual step", run.finished))
    for what, ok in checks:
        say(f"  [{'ok' if ok else 'FAIL'}] {what}")
    return all(ok for _, ok in checks)


def main() -> int:
    args = _arguments()
    prepared = prepare(args)
    if prepared is None:
        return 1
    run = upgrade_while_writing(args, prepared)
    writer_errors = report(args, prepared.version, run)
    ok = check(prepared, run, writer_errors)
    if not args.keep:
        drop_database(prepared.admin, "upgrade_under_load")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
