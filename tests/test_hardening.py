"""From the plan's schema, made by hand, to the hardened one: baseline, then up.

The upgrade path must keep every row and number, and end with exactly the schema
an empty database gets from `migrate up` (compared in the catalogs).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from cicd_db import migrations, schema

from .fix_cli import MIGRATE_PY, migrate, run_cli, start_cli
from .fix_db import Database
from .utils import MIGRATIONS, PLAN_SCHEMA, ROOT

STARTED = datetime(2026, 1, 2, 3, 4, 5)
NEWEST = max(int(path.name.split("_", 1)[0]) for path in MIGRATIONS.glob("*.sql"))


def create_by_hand(database: Database) -> None:
    """What a team that followed the plan did: `psql -f` of its schema, then some runs."""
    with database.connect() as conn:
        conn.execute(PLAN_SCHEMA.read_bytes())
        for pipeline in ("build", "deploy", "build", "deploy"):
            run = conn.execute(
                "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status, start_time, "
                "completion_time) VALUES (%s, 'abc123', 'SUCCESS', %s, %s) RETURNING id",
                [pipeline, STARTED, STARTED.replace(minute=30)],
            ).fetchone()[0]
            for order, stage in enumerate(("compile", "test"), start=1):
                stage_id = conn.execute(
                    "INSERT INTO stage_executions (pipeline_execution_id, stage_name, "
                    "execution_order, status, start_time) VALUES (%s, %s, %s, 'SUCCESS', %s) "
                    "RETURNING id",
                    [run, stage, order, STARTED],
                ).fetchone()[0]
                # The plan allows a job without a status; it must become PENDING.
                conn.execute(
                    "INSERT INTO job_executions (stage_execution_id, job_name, status, start_time) "
                    "VALUES (%s, 'unit', NULL, %s), (%s, 'lint', 'FAILED', %s)",
                    [stage_id, STARTED, stage_id, STARTED],
                )


def runs(database: Database) -> list[tuple[object, ...]]:
    return database.query(
        "SELECT pipeline_name, run_number, start_time FROM pipeline_executions "
        "ORDER BY pipeline_name, run_number"
    )


def filenodes(database: Database) -> list[tuple[object, ...]]:
    return database.query(
        "SELECT relname, pg_relation_filenode(oid) FROM pg_class WHERE relname IN "
        "('pipeline_executions', 'stage_executions', 'job_executions') ORDER BY relname"
    )


def test_upgrade_path_keeps_every_row_and_hardens_the_schema(database: Database) -> None:
    create_by_hand(database)
    files_before = filenodes(database)

    baseline = migrate(database, MIGRATIONS, "baseline", "--version", "1")
    assert baseline.code == 0, baseline.err
    assert baseline.out == (
        "baseline: the schema matches migrations up to version 1; recorded "
        "1 migration as applied on --database-url\n"
    )
    up = migrate(database, MIGRATIONS, "up")
    assert up.code == 0, up.err
    assert database.history() == list(range(1, NEWEST + 1))

    # Every run is still there with its number and instant, now as timestamptz in UTC.
    utc = STARTED.replace(tzinfo=UTC)
    assert runs(database) == [
        ("build", 1, utc),
        ("build", 3, utc),
        ("deploy", 2, utc),
        ("deploy", 4, utc),
    ]
    assert database.query("SELECT count(*) FROM stage_executions") == [(8,)]
    assert database.query(
        "SELECT count(*), count(*) FILTER (WHERE status = 'PENDING') FROM job_executions"
    ) == [(16, 8)]
    assert set(
        database.query(
            "SELECT data_type FROM information_schema.columns "
            "WHERE column_name IN ('start_time', 'completion_time')"
        )
    ) == {("timestamp with time zone",)}
    # No table was rewritten: timestamptz in UTC, NOT NULL and checks without a table copy.
    assert filenodes(database) == files_before

    with database.connect() as conn:
        build = conn.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
            "VALUES ('build', 'def') RETURNING run_number, status"
        ).fetchone()
        deploy = conn.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
            "VALUES ('deploy', 'def') RETURNING run_number"
        ).fetchone()
        first = conn.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
            "VALUES ('release', 'def') RETURNING run_number"
        ).fetchone()
    assert build == (4, "PENDING")
    assert deploy == (5,)
    assert first == (1,)

    assert_constraints_hold(database)


def test_times_written_in_another_zone_are_refused_until_the_zone_is_named(
    database: Database,
) -> None:
    """The writers' sessions ran in Paris time: reading the values as UTC would shift them."""
    create_by_hand(database)
    with database.connect() as conn:
        conn.execute(
            f'ALTER DATABASE "{database.settings.database}" SET timezone = '
            "'Europe/Paris'".encode()
        )
    assert migrate(database, MIGRATIONS, "baseline", "--version", "1").code == 0
    refused = migrate(database, MIGRATIONS, "up")
    assert refused.code == 1
    assert "0003_job_times_and_status_default.sql failed" in refused.err
    assert (
        "refusing to convert TIMESTAMP to TIMESTAMPTZ: the stored times may not be in UTC "
        f"(roles that write them, and their time zone: {database.settings.user}: Europe/Paris)"
    ) in refused.err
    assert "PGOPTIONS='-c cicd_db.legacy_time_zone=ZONE'" in refused.err
    assert database.history() == [1, 2]
    assert runs(database)[0][2] == STARTED  # still TIMESTAMP, untouched

    files_before = filenodes(database)
    named = run_cli(
        "migrate",
        "--database-url",
        database.url,
        "up",
        env={"PGOPTIONS": "-c cicd_db.legacy_time_zone=Europe/Paris"},
    )
    assert named.code == 0, named.err
    # 03:04:05 in Paris in January is 02:04:05 UTC; the price: each table was rewritten.
    assert {row[2] for row in runs(database)} == {datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)}
    assert all(
        before[1] != after[1]
        for before, after in zip(files_before, filenodes(database), strict=True)
    )


@pytest.mark.parametrize(
    ("writers", "migrator", "refused"),
    [
        # PostgreSQL 18 read `AT TIME ZONE 'UTC'` as the session zone's own abbreviation:
        # under the POSIX zone 'UTC+5' (five hours west) that is UTC-5, so these writers
        # passed as UTC and every stored time moved by five hours.
        ("UTC+5", None, True),
        ("<+14>-14", None, True),
        # And the other way round: writers in UTC refused where the migrator's own
        # session is in a zone that names itself UTC.
        ("Etc/UTC", "UTC+5", False),
        ("UTC", "UTC+5", False),
    ],
    ids=["posix-west", "posix-named", "migrator-posix", "migrator-posix-utc"],
)
def test_a_writers_zone_is_judged_as_its_sessions_read_it(
    database: Database, writers: str, migrator: str | None, refused: bool
) -> None:
    """The guard of 0002 reads each writer's zone as its sessions read it, whatever zone
    the migrating session is in and whatever the zone's abbreviations are called."""
    create_by_hand(database)
    with database.connect() as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = {}").format(
                sql.Identifier(database.settings.database), sql.Literal(writers)
            )
        )
    assert migrate(database, MIGRATIONS, "baseline", "--version", "1").code == 0
    done = run_cli(
        "migrate", "--database-url", database.url, "up",
        env={"PGOPTIONS": f"-c TimeZone={migrator}"} if migrator else {},
    )  # fmt: skip
    if refused:
        assert done.code == 1
        assert f"their time zone: {database.settings.user}: {writers})" in done.err, done.err
        assert database.history() == [1, 2]
        assert runs(database)[0][2] == STARTED  # still TIMESTAMP, untouched
    else:
        assert done.code == 0, done.err
        assert {row[2] for row in runs(database)} == {STARTED.replace(tzinfo=UTC)}


def assert_constraints_hold(database: Database) -> None:
    with database.connect() as conn:
        run, stage = conn.execute(
            "SELECT s.pipeline_execution_id, s.id FROM stage_executions s "
            "WHERE s.stage_name = 'compile' LIMIT 1"
        ).fetchone()
        violations = [
            (
                "INSERT INTO stage_executions (pipeline_execution_id, stage_name, execution_order) "
                "VALUES (%s, 'compile', 9)",
                [run],
                errors.UniqueViolation,
            ),
            (
                "INSERT INTO stage_executions (pipeline_execution_id, stage_name, execution_order) "
                "VALUES (%s, 'package', 1)",
                [run],
                errors.UniqueViolation,
            ),
            (
                "INSERT INTO job_executions (stage_execution_id, job_name) VALUES (%s, 'unit')",
                [stage],
                errors.UniqueViolation,
            ),
            (
                "UPDATE job_executions SET completion_time = start_time - interval '1 second' "
                "WHERE stage_execution_id = %s",
                [stage],
                errors.CheckViolation,
            ),
            (
                "UPDATE pipeline_executions SET status = NULL WHERE id = %s",
                [run],
                errors.NotNullViolation,
            ),
            (
                "UPDATE stage_executions SET status = 'DONE' WHERE id = %s",
                [stage],
                errors.CheckViolation,
            ),
            (
                "UPDATE pipeline_executions SET run_number = 3 WHERE id = %s AND pipeline_name = "
                "'build' AND run_number = 1",
                [run],
                errors.UniqueViolation,
            ),
        ]
        for statement, params, violation in violations:
            with pytest.raises(violation):
                conn.execute(statement.encode(), params)


def test_fresh_path_ends_with_the_same_schema(server, database: Database, tmp_path) -> None:
    create_by_hand(database)
    assert migrate(database, MIGRATIONS, "baseline", "--version", "1").code == 0
    assert migrate(database, MIGRATIONS, "up").code == 0

    fresh = Database(
        database.settings.__class__(
            **{**database.settings.__dict__, "database": database.settings.database + "_f"}
        )
    )
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{fresh.settings.database}"'.encode())
    try:
        assert migrate(fresh, MIGRATIONS, "up").code == 0
        with database.connect() as upgraded, fresh.connect() as new:
            upgraded_schema = schema.signature(upgraded, "public")
            fresh_schema = schema.signature(new, "public")
        assert schema.compare(fresh_schema, upgraded_schema) == []
        assert {name for kind, _, name in fresh_schema if kind == "index"} == {
            "pipeline_executions_pkey",
            "stage_executions_pkey",
            "job_executions_pkey",
            "pipeline_run_counters_pkey",
            "pipeline_executions_pipeline_run_key",
            "stage_executions_run_stage_name_key",
            "stage_executions_run_order_key",
            "job_executions_stage_job_name_key",
            "pipeline_executions_active",
            "pipeline_executions_finished",
            "pipeline_executions_pipeline_time",
            "pipeline_executions_time",
            "run_rollups_pkey",
        }
        # Run numbers (0016) and the insights rollup's (0032-0034).
        assert {table for kind, table, _ in fresh_schema if kind == "trigger"} == {
            "pipeline_executions",
            "stage_executions",
            "job_executions",
        }
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{fresh.settings.database}" WITH (FORCE)'.encode())


def test_baseline_refuses_a_schema_that_differs(database: Database) -> None:
    create_by_hand(database)
    with database.connect() as conn:
        conn.execute("DROP INDEX idx_job_executions")
        conn.execute("ALTER TABLE stage_executions ADD COLUMN note TEXT")
    result = migrate(database, MIGRATIONS, "baseline", "--version", "1")
    assert result.code == 2
    assert result.err == (
        "error: the live schema does not match migrations up to version 1: "
        "missing index job_executions.idx_job_executions: CREATE INDEX idx_job_executions "
        "ON job_executions USING btree (stage_execution_id, job_name); "
        "unexpected column stage_executions.note: text; "
        "fix the schema by hand, or baseline at the version it matches\n"
    )
    assert database.history() == []
    assert not [t for t in database.tables() if t.startswith("cicd_db_baseline")]


def test_baseline_refuses_a_database_with_history(database: Database) -> None:
    assert migrate(database, MIGRATIONS, "up", "--target", "1").code == 0
    result = migrate(database, MIGRATIONS, "baseline", "--version", "1")
    assert (result.code, result.err) == (
        2,
        "error: this database already has migration history; "
        "baseline is only for a database without it (run "
        "`migrate up` instead)\n",
    )


def test_interrupted_transactional_migration_reruns(database: Database) -> None:
    """0016 waits for a lock a busy client holds: it gives up (lock_timeout) and leaves nothing."""
    create_by_hand(database)
    assert migrate(database, MIGRATIONS, "baseline", "--version", "1").code == 0
    assert migrate(database, MIGRATIONS, "up", "--target", "15").code == 0
    with database.connect() as busy:
        busy.execute("BEGIN")
        busy.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash) VALUES ('build', 'busy')"
        )
        started = time.monotonic()
        failed = migrate(database, MIGRATIONS, "up", "--target", "16", "--retries", "0")
        assert time.monotonic() - started < 30
        busy.execute("ROLLBACK")
    assert failed.code == 1
    assert failed.err == (
        "error: migration 0016_per_pipeline_run_numbers.sql failed at line 39: canceling "
        "statement due to lock timeout [55P03]; it was rolled back; run again when the tables "
        "are less busy (the file itself is fine)\n"
    )
    assert database.history() == list(range(1, 16))
    assert "pipeline_run_counters" not in database.tables()

    again = migrate(database, MIGRATIONS, "up")
    assert again.code == 0, again.err
    assert database.history() == list(range(1, NEWEST + 1))


def test_interrupted_concurrent_index_reruns(database: Database) -> None:
    """A cancelled CREATE INDEX CONCURRENTLY leaves an invalid index; the rerun replaces it."""
    assert migrate(database, MIGRATIONS, "up", "--target", "16").code == 0
    with database.connect() as busy:
        busy.execute("BEGIN")
        busy.execute(
            "INSERT INTO pipeline_executions (pipeline_name, commit_hash) VALUES ('build', 'busy')"
        )
        runner = start_cli(
            "--database-url", database.url, "--migrations-dir", str(MIGRATIONS), "--target", "17",
            script=MIGRATE_PY,
        )  # fmt: skip
        waiting = database.wait_for(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%' "
            "AND wait_event_type = 'Lock' AND datname = current_database()",
            "the index build never started waiting",
        )
        database.query("SELECT pg_cancel_backend(%s)", waiting[0][0])
        _, err = runner.communicate(timeout=30)
        busy.execute("ROLLBACK")
    assert runner.returncode == 1
    assert (
        "0017_pipeline_run_number_index.sql failed at line 9: canceling statement due to "
        "user request" in err
    )
    assert database.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = "
        "'pipeline_executions_pipeline_run_key'::regclass"
    ) == [(False,)]

    again = migrate(database, MIGRATIONS, "up")
    assert again.code == 0, again.err
    assert again.out.splitlines()[0] == (
        "  dropped invalid index public.pipeline_executions_pipeline_run_key left by an "
        "interrupted run"
    )
    assert database.history() == list(range(1, NEWEST + 1))
    assert database.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = "
        "'pipeline_executions_pipeline_run_key'::regclass"
    ) == [(True,)]


@pytest.mark.slow
def test_the_make_targets_lint_gate_fails_unsafe_migrations() -> None:
    """`make lint-sql MIGRATIONS=...` gates the folder it is given. (That the repository's
    own files pass is `make lint`'s first step, and tests/test_commands.py's
    test_check_passes_the_repository: linted a third time here, it cost 5 s of CPU.)"""
    bad = subprocess.run(
        ["make", "-s", "lint-sql", f"MIGRATIONS={Path('tests/fixtures/unsafe_migrations')}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert "0002_plain_index.sql:4:0: warning: require-concurrent-index-creation" in bad.stdout
    assert "0003_required_column.sql:4:17: warning: adding-required-field" in bad.stdout
    assert "0001_create_runs.sql" not in bad.stdout.split("\n", 2)[-1]


def _statements_only(text: bytes) -> list[str]:
    """The lines of `text` but blank ones and whole-line `--` comments: two texts equal so
    differ in comments alone. (A changed block comment or end-of-line comment counts as
    a change of SQL here, which asks for less, never for more.)"""
    lines = text.decode("utf-8-sig").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("--")]


def test_every_earlier_text_of_a_migration_that_differs_in_comments_only_is_known_as_applied() -> (
    None
):
    """A database that applied any text a file of db/migrations has had in this
    repository's history (the Git log: every commit, so every text a `make run` could
    have applied) whose statements are today's, the comments aside, knows today's file
    as applied: an edit of a comment alone must name the earlier text's checksum, or
    every such database is refused with "edited after it was applied" (0029 and 0037 had
    comment edits that did not, found by a helper running older commits). A text whose
    statements differ was a step of work and is refused, as an edit is."""
    log = subprocess.run(
        ["git", "log", "--format=%H", "--", "db/migrations"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert log, "no Git history of db/migrations: run the tests in a clone"
    unknown = []
    for migration in migrations.discover(MIGRATIONS):
        path = migration.path.relative_to(ROOT).as_posix()
        for commit in subprocess.run(
            ["git", "log", "--format=%H", "--", path],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split():  # fmt: skip
            earlier = subprocess.run(
                ["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, check=True
            ).stdout
            if _statements_only(earlier) != _statements_only(migration.data):
                continue
            texts = [earlier]
            if migration.matches(_sha256(migration.data.replace(b"\n", b"\r\n"))):
                # Where line ends change nothing the file makes, its text as a Windows
                # checkout has it too (where they do, that text made something else).
                texts.append(earlier.replace(b"\n", b"\r\n"))
            for text in texts:
                if not migration.matches(_sha256(text)):
                    unknown.append(f"{migration.filename} at {commit[:7]}")
    assert not unknown, f"comment-only edits not named by an earlier-checksum line: {unknown}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
