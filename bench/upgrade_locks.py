"""The runner's side of the upgrade-under-load case: `migrate up` run as a process and
followed file by file from its output, and the locks its session held or waited for,
sampled from pg_locks by another connection."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

from .common import MIGRATIONS, ROOT
from .upgrade_writers import WRITER_APP

RUNNER_APP = "upgrade-bench-migrate"


class LockSampler(threading.Thread):
    """Samples the runner's locks on the tables every `period` seconds."""

    def __init__(self, conninfo: str, period: float):
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.period = period
        self.samples: list[tuple[float, list[tuple[str, str, bool]]]] = []
        self.writers_waiting: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self.done.is_set():
                at = time.monotonic()
                rows = conn.execute(
                    """
                    SELECT a.application_name, c.relname, l.mode, l.granted
                    FROM pg_locks l
                    JOIN pg_class c ON c.oid = l.relation
                    JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE l.locktype = 'relation' AND l.database = (
                        SELECT oid FROM pg_database WHERE datname = current_database())
                      AND a.application_name IN (%s, %s)
                      AND c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
                    """,
                    [RUNNER_APP, WRITER_APP],
                ).fetchall()
                mine = [(r[1], r[2], r[3]) for r in rows if r[0] == RUNNER_APP]
                self.samples.append((at, mine))
                self.writers_waiting.append(
                    (at, sum(1 for r in rows if r[0] == WRITER_APP and not r[3]))
                )
                time.sleep(max(0.0, self.period - (time.monotonic() - at)))


@dataclass
class FileRun:
    """One file of the upgrade: when it started and ended as seen from its output, the
    time the runner reported, and the retries it printed."""

    name: str
    started: float = 0.0
    ended: float = 0.0
    runner_ms: float = 0.0
    retries: int = 0
    failures: list[str] = field(default_factory=list)


def run_upgrade(url: str, files: list[str]) -> tuple[list[FileRun], int, str]:
    """One `migrate up`; returns each file's timeline, the runner's retries and its stderr."""
    timeline = {name: FileRun(name) for name in files}
    order = list(files)
    env = {**os.environ, "PGAPPNAME": RUNNER_APP}
    if order:
        timeline[order[0]].started = time.monotonic()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "cicd_db", "migrate", "up"),
            *("--database-url", url, "--migrations-dir", str(MIGRATIONS)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert process.stdout is not None
    for line in process.stdout:
        found = re.match(r"applied (\S+) \((\d+) ms\)", line.strip())
        if found and found[1] in timeline:
            now = time.monotonic()
            entry = timeline[found[1]]
            entry.ended = now
            entry.runner_ms = float(found[2])
            position = order.index(found[1]) + 1
            if position < len(order):
                timeline[order[position]].started = now
    err = process.stderr.read() if process.stderr else ""
    process.wait()
    retries = 0
    for line in err.splitlines():
        retried = re.match(r"(\S+\.sql): (.*), retry \d+/\d+ in ", line)
        if retried and retried[1] in timeline:
            timeline[retried[1]].retries += 1
            timeline[retried[1]].failures.append(retried[2])
            retries += 1
    return list(timeline.values()), retries, err


def lock_spans(
    samples: list[tuple[float, list[tuple[str, str, bool]]]],
    start: float,
    end: float,
    period: float,
) -> list[str]:
    """For one file: each (table, mode, held or waited) and how long it was seen."""
    seen: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    for at, locks in samples:
        if start <= at <= end:
            for lock in set(locks):
                seen[lock].append(at)
    out = []
    for (table, mode, granted), times in sorted(seen.items()):
        longest = current = period
        for before, after in itertools.pairwise(times):
            current = current + (after - before) if after - before < 3 * period else period
            longest = max(longest, current)
        short_mode = mode.replace("Lock", "")
        verb = "held" if granted else "WAITED"
        out.append(f"{short_mode} {table} {verb} ~{longest * 1000:.0f} ms")
    return out
