"""What every case shares: the bench's server and its tuning, fresh databases, timing,
percentiles and the tables the bench prints and writes."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from cicd_db.embedded import EmbeddedServer
from cicd_db.report import grid
from cicd_db.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".cicd-db" / "bench"
MIGRATIONS = ROOT / "db" / "migrations"
PYTHON = sys.executable
SERVER_SETTINGS = {
    # The bench server's own tuning, for loading 26 million rows in minutes.
    "shared_buffers": "2GB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
}


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Table:
    """A result: printed as the CLI prints its tables, written to docs as Markdown."""

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
        out = [self.title, "-" * len(self.title), *grid(self.headers, self.rows)]
        return "\n".join(out + self.notes) + "\n"


# -- the server -------------------------------------------------------------------------


def start_server(
    home: Path, bin_dir: Path | None = None
) -> tuple[EmbeddedServer, ConnectionSettings, bool]:
    """The server under `home`, tuned; its admin; whether it was running before."""
    server = EmbeddedServer(home, bin_dir=bin_dir)
    was_running = server.status().running
    return server, tuned(server), was_running


def tuned(server: EmbeddedServer) -> ConnectionSettings:
    """Start `server` with SERVER_SETTINGS (restarting it once if they need it); its admin."""
    admin = server.admin_settings()
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        current: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [list(SERVER_SETTINGS)],
            ).fetchall()
        )
        for name, value in SERVER_SETTINGS.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        # A server left running keeps its settings until it reads the file again: the
        # ones a reload takes (synchronous_commit, ...) apply now, the rest at the restart.
        conn.execute("SELECT pg_reload_conf()")
        shown = one(conn, "SHOW shared_buffers")
    if shown != SERVER_SETTINGS["shared_buffers"] or set(SERVER_SETTINGS) - set(current):
        server.stop()
        admin = server.admin_settings()
    return admin


def one(
    conn: psycopg.Connection[Any], query: LiteralString | sql.Composed, params: Any = None
) -> Any:
    """The single value `query` returns (a count, a setting)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def server_version(settings: ConnectionSettings) -> str:
    with psycopg.connect(settings.conninfo()) as conn:
        return str(one(conn, "SHOW server_version"))


# -- databases ---------------------------------------------------------------------------


def database_exists(admin: ConnectionSettings, name: str) -> bool:
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def create_database(admin: ConnectionSettings, name: str, *options: sql.Composable) -> None:
    """CREATE DATABASE `name`, after dropping any database of that name."""
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL(" ").join([sql.SQL("CREATE DATABASE"), sql.Identifier(name), *options])
        )


def drop_database(admin: ConnectionSettings, name: str) -> None:
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@dataclass
class Databases:
    """Fresh databases on the bench server, dropped when the bench ends."""

    admin: ConnectionSettings
    made: list[str] = field(default_factory=list)

    def fresh(self, prefix: str) -> ConnectionSettings:
        name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
        create_database(self.admin, name)
        self.made.append(name)
        return replace(self.admin, database=name)

    def drop(self, settings: ConnectionSettings) -> None:
        drop_database(self.admin, settings.database)
        self.made.remove(settings.database)

    def drop_all(self) -> None:
        for name in list(self.made):
            self.drop(replace(self.admin, database=name))


# -- figures -----------------------------------------------------------------------------


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


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median of each round's own ratio, round i of `ours` over round i of `theirs`:
    a round's measurements follow one another, so the machine's drift over a case (a
    neighbour's load, a table growing) moves both sides of a ratio alike, which a ratio
    of two medians over the whole case does not promise."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def machine_speed(settings: ConnectionSettings) -> dict[str, float]:
    """Three fixed workloads, medians, so that two reports' figures can be compared: this
    machine's speed moves by 2x from one hour to the next (another tenant's load), and
    every figure with it. A pure-Python loop (ms), a count the server computes (ms), and
    one round trip of `SELECT 1` (us)."""
    loops, counts = [], []
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        for _ in range(5):
            started = time.perf_counter()
            total = 0
            for number in range(2_000_000):
                total += number
            loops.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM generate_series(1, 3000000)").fetchone()
            counts.append((time.perf_counter() - started) * 1000)
        trip = round_trip_us(conn, 500)
    return {
        "python": statistics.median(loops),
        "server": statistics.median(counts),
        "round trip": trip,
    }


def round_trip_us(conn: psycopg.Connection[Any], times: int) -> float:
    """The median of `times` round trips of `SELECT 1` on `conn`, in microseconds."""
    trips = []
    for _ in range(times):
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        trips.append((time.perf_counter() - started) * 1_000_000)
    return statistics.median(trips)


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile (0.99 for p99), as the standard library computes it."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


@contextmanager
def recording() -> Iterator[list[tuple[Any, Any]]]:
    """What every cursor is asked to run meanwhile (query, params): the store's own
    statements, to count them or to show their plans. The library's cursors are
    psycopg's own class whatever a connection's cursor_factory (cicd_db.cursors), so it
    is that class's execute that is watched."""
    sent: list[tuple[Any, Any]] = []
    original = psycopg.Cursor.execute

    def execute(self: psycopg.Cursor[Any], query: Any, params: Any = None, **options: Any) -> Any:
        sent.append((query, params))
        return original(self, query, params, **options)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]
