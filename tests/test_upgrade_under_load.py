"""The upgrade from the plan's schema to the newest, while writers use the plan's SQL.

Small scale and no timing: bench/upgrade_under_load.py measures waits at 1,000,000
runs with the same workload (bench/workload.py: the rows, the writers' SQL and the
checks). This checks what must hold at any scale: no writer statement fails, every
row (loaded or written meanwhile) is kept with its status, times and run number, run
numbers stay unique per pipeline, and `migrate up` ends with exit 0.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
import pytest
from bench import workload

from .fix_cli import run_cli
from .fix_db import Database
from .utils import MIGRATIONS, PLAN_SCHEMA

NEWEST = max(int(path.name.split("_", 1)[0]) for path in MIGRATIONS.glob("*.sql"))
RUNS, PIPELINES = 400, 7


class Writer(threading.Thread):
    """Run lives with the plan's SQL, one autocommit statement each, until stopped.

    Without server-side prepared statements, as db/README.md asks of an application
    during the upgrade (the type change would break them).
    """

    def __init__(self, database: Database, number: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.database = database
        self.number = number
        self.stop = stop
        self.errors: Counter[str] = Counter()
        self.written: dict[str, list[Any]] = {table: [] for table in workload.TABLES}

    def run(self) -> None:
        with psycopg.connect(
            self.database.settings.conninfo(), autocommit=True, prepare_threshold=None
        ) as conn:
            execute = workload.executor(conn)
            life = 0
            while not self.stop.is_set():
                life += 1
                # Two pipelines more than were loaded: new ones get their first run numbers too.
                pipeline = f"pipeline-{(self.number + life) % (PIPELINES + 2):03d}"
                try:
                    workload.run_life(execute, pipeline, self.written)
                except psycopg.Error as error:
                    self.errors[f"{error.sqlstate}: {str(error).splitlines()[0]}"] += 1


@pytest.mark.slow
def test_upgrade_while_writers_write_keeps_every_row(database: Database) -> None:
    with database.connect() as conn:
        conn.execute(PLAN_SCHEMA.read_bytes())
        workload.load(conn, RUNS, PIPELINES)
    baseline = run_cli("migrate", "--database-url", database.url, "baseline", "--version", "1")
    assert baseline.code == 0, baseline.err
    with database.connect() as conn:
        loaded = workload.fingerprint(conn)
    assert database.query("SELECT count(*) FROM job_executions WHERE status IS NULL") != [(0,)]

    stop = threading.Event()
    writers = [Writer(database, number, stop) for number in range(4)]
    for thread in writers:
        thread.start()
    # Writing has begun before the upgrade does.
    database.wait_for(
        f"SELECT 1 FROM pipeline_executions HAVING count(*) > {RUNS + 8}",
        "the writers never wrote",
    )
    try:
        # One run: a file that meets a busy table is retried by the runner itself.
        up = run_cli("migrate", "--database-url", database.url, "up", timeout=300)
        # And goes on after it: a few whole runs on the new schema.
        database.wait_for(
            "SELECT 1 FROM pipeline_executions WHERE status = 'SUCCESS' "
            "AND completion_time > (SELECT max(applied_at) FROM cicd_db.cicd_db_schema_history) "
            "HAVING count(*) >= 8",
            "the writers stopped writing after the upgrade",
        )
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=30)

    assert up.code == 0, up.err
    assert database.history() == list(range(1, NEWEST + 1))
    assert sum((w.errors for w in writers), Counter()) == Counter()
    written = {t: [row_id for w in writers for row_id in w.written[t]] for t in workload.TABLES}
    with database.connect() as conn:
        failed = [what for what, held in workload.checks(conn, loaded, written) if not held]
    assert failed == []
