"""Case `bigfile`: one 50 MB file of INSERTs (as `pg_dump --inserts` writes data), its
time and peak memory beside `psql -1 -f`."""

from __future__ import annotations

import random
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

from cicd_db.settings import ConnectionSettings

from .common import HOME, PYTHON, ROOT, Databases, Table


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


def measure(
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
    if psql := tools["psql"]:
        commands["psql -1 -f"] = lambda db: [
            *(str(psql), "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1"),
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
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name in commands:
        table.rows.append(
            [
                name,
                f"{medians[name] / 1000:.1f}",
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
    medians["cicd-db memory / file"] = max(memory["cicd-db"]) / file_mb
    return table, medians
