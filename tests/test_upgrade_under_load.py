"""The upgrade from the plan's schema to the newest, while writers use the plan's SQL.

Small scale and no timing: bench/upgrade_under_load.py measures waits at 1,000,000
runs. This checks what must hold at any scale: no writer statement fails, every row
(loaded or written meanwhile) is kept with its status, times and run number, run
numbers stay unique per pipeline, and `migrate up` ends with exit 0.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import psycopg

from .conftest import MIGRATIONS, ROOT, Database, run_cli

PLAN_SCHEMA = (ROOT / "tests" / "fixtures" / "plan_schema.sql").read_bytes()
NEWEST = max(int(path.name.split("_", 1)[0]) for path in MIGRATIONS.glob("*.sql"))
RUNS, PIPELINES, STAGES, JOBS = 400, 7, 5, 4


def load_plan_database(database: Database) -> None:
    """The plan's schema by its own SQL, and runs loaded set-based, some without a status."""
    with database.connect() as conn:
        conn.execute(PLAN_SCHEMA)
        conn.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status, start_time, "
            "completion_time) SELECT 'pipeline-' || i %% %s, md5(i::text), "
            "CASE WHEN i %% 9 = 0 THEN NULL ELSE 'SUCCESS' END, "
            "timestamp '2025-01-01' + i * interval '1 minute', "
            "timestamp '2025-01-01' + i * interval '1 minute' + interval '30 seconds' "
            "FROM generate_series(1, %s) AS i",
            [PIPELINES, RUNS],
        )
        conn.execute(
            "INSERT INTO stage_executions (pipeline_execution_id, stage_name, execution_order, "
            "status, start_time) SELECT r.id, 'stage-' || n, n, "
            "CASE WHEN n = 2 THEN NULL ELSE 'SUCCESS' END, r.start_time "
            "FROM pipeline_executions r CROSS JOIN generate_series(1, %s) AS n",
            [STAGES],
        )
        conn.execute(
            "INSERT INTO job_executions (stage_execution_id, job_name, status, start_time) "
            "SELECT s.id, 'job-' || n, CASE WHEN n = 3 THEN NULL ELSE 'SUCCESS' END, s.start_time "
            "FROM stage_executions s CROSS JOIN generate_series(1, %s) AS n",
            [JOBS],
        )


def snapshot(database: Database) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of the three tables, a NULL status read as the PENDING it becomes."""
    times = "extract(epoch FROM start_time), extract(epoch FROM completion_time)"
    return {
        "runs": set(
            database.query(
                f"SELECT id, pipeline_name, run_number, coalesce(status, 'PENDING'), {times} "
                "FROM pipeline_executions"
            )
        ),
        "stages": set(
            database.query(
                "SELECT id, pipeline_execution_id, stage_name, execution_order, "
                f"coalesce(status, 'PENDING'), {times} FROM stage_executions"
            )
        ),
        "jobs": set(
            database.query(
                "SELECT id, stage_execution_id, job_name, coalesce(status, 'PENDING'), "
                f"{times} FROM job_executions"
            )
        ),
    }


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
        self.written: dict[str, list[Any]] = {"runs": [], "stages": [], "jobs": []}

    def run(self) -> None:
        with psycopg.connect(
            self.database.settings.conninfo(), autocommit=True, prepare_threshold=None
        ) as conn:
            life = 0
            while not self.stop.is_set():
                life += 1
                try:
                    self.one_run(conn, f"pipeline-{(self.number + life) % (PIPELINES + 2)}")
                except psycopg.Error as error:
                    self.errors[f"{error.sqlstate}: {str(error).splitlines()[0]}"] += 1

    def one_run(self, conn: psycopg.Connection[Any], pipeline: str) -> None:
        run = conn.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status) "
            "VALUES (%s, %s, 'PENDING') RETURNING id",
            [pipeline, uuid.uuid4().hex[:8]],
        ).fetchone()[0]  # type: ignore[index]
        self.written["runs"].append(run)
        conn.execute(
            "UPDATE pipeline_executions SET status = 'RUNNING', start_time = CURRENT_TIMESTAMP "
            "WHERE id = %s",
            [run],
        )
        for order in range(1, STAGES + 1):
            stage = conn.execute(
                "INSERT INTO stage_executions (pipeline_execution_id, stage_name, "
                "execution_order, status) VALUES (%s, %s, %s, 'PENDING') RETURNING id",
                [run, f"stage-{order}", order],
            ).fetchone()[0]  # type: ignore[index]
            self.written["stages"].append(stage)
            for number in range(1, JOBS + 1):
                # No status, as the plan allows: NULL before the default exists, PENDING after.
                job = conn.execute(
                    "INSERT INTO job_executions (stage_execution_id, job_name) "
                    "VALUES (%s, %s) RETURNING id",
                    [stage, f"job-{number}"],
                ).fetchone()[0]  # type: ignore[index]
                self.written["jobs"].append(job)
                conn.execute(
                    "UPDATE job_executions SET status = 'SUCCESS', "
                    "completion_time = CURRENT_TIMESTAMP WHERE id = %s",
                    [job],
                )
            conn.execute(
                "UPDATE stage_executions SET status = 'SUCCESS', "
                "completion_time = CURRENT_TIMESTAMP WHERE id = %s",
                [stage],
            )
        conn.execute(
            "SELECT status, start_time, completion_time FROM pipeline_executions WHERE id = %s",
            [run],
        ).fetchone()
        conn.execute(
            "UPDATE pipeline_executions SET status = 'SUCCESS', "
            "completion_time = CURRENT_TIMESTAMP WHERE id = %s",
            [run],
        )


def test_upgrade_while_writers_write_keeps_every_row(database: Database) -> None:
    load_plan_database(database)
    baseline = run_cli("migrate", "--database-url", database.url, "baseline", "--version", "1")
    assert baseline.code == 0, baseline.err
    loaded = snapshot(database)

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

    after = snapshot(database)
    for kind in ("runs", "stages", "jobs"):
        assert loaded[kind] <= after[kind], f"{kind}: loaded rows changed or went missing"
        written = {row_id for w in writers for row_id in w.written[kind]}
        assert {row[0] for row in after[kind]} == {row[0] for row in loaded[kind]} | written
    assert database.query("SELECT count(*) FROM pipeline_executions WHERE status IS NULL") == [(0,)]
    assert database.query("SELECT count(*) FROM job_executions WHERE status IS NULL") == [(0,)]
    assert (
        database.query(
            "SELECT pipeline_name, run_number FROM pipeline_executions "
            "GROUP BY pipeline_name, run_number HAVING count(*) > 1"
        )
        == []
    )
