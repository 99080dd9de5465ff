"""The migration runner on a real server: what `migrate up` leaves in the database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from cicd_db import migrations, schema
from cicd_db.errors import ConfigError, Interrupted, MigrationFailed, MigrationRefused, Terminated
from cicd_db.settings import ConnectionSettings

from .conftest import MIGRATIONS, ROOT, Database, run_cli, write_migrations

THREE = {
    "0001_people.sql": "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL);\n",
    "0002_pets.sql": "CREATE TABLE pets (id int PRIMARY KEY,\n  owner int REFERENCES people);\n",
    "0003_seed.sql": "INSERT INTO people VALUES (1, 'ada');\nINSERT INTO pets VALUES (1, 1);\n",
}


CLI = [sys.executable, "-m", "cicd_db", "migrate"]
# The runner of this test's database, in its pg_sleep: other tests share the server.
RUNNER_SLEEPING = (
    "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
    "AND application_name = 'cicd-db' AND datname = current_database()"
)


def migrate(database: Database, folder: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder), *args
    )
    assert "Traceback" not in result.err
    assert database.settings.password not in result.out + result.err
    return result.code, result.out, result.err


def test_up_applies_in_order_and_records_history(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    code, out, _ = migrate(database, folder)
    assert code == 0
    assert [line.split(" (")[0] for line in out.splitlines()[:3]] == [
        "applied 0001_people.sql",
        "applied 0002_pets.sql",
        "applied 0003_seed.sql",
    ]
    assert out.splitlines()[3].startswith("applied 3 migrations to --database-url in ")
    assert database.history() == [1, 2, 3]
    assert database.query("SELECT name FROM people") == [("ada",)]
    rows = database.query(
        "SELECT name, checksum, applied_by, duration_ms >= 0 "
        "FROM cicd_db.cicd_db_schema_history ORDER BY version"
    )
    assert [row[0] for row in rows] == ["people", "pets", "seed"]
    assert all(
        len(str(row[1])) == 64 and row[2] == database.settings.user and row[3] for row in rows
    )


def test_second_run_applies_nothing(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    assert migrate(database, folder)[0] == 0
    code, out, _ = migrate(database, folder, "up")
    assert (code, out) == (0, "nothing to apply: --database-url is up to date\n")
    assert database.query("SELECT count(*) FROM people") == [(1,)]


def test_dry_run_changes_nothing(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    code, out, _ = migrate(database, folder, "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "would apply 0001_people.sql",
        "would apply 0002_pets.sql",
        "would apply 0003_seed.sql",
        "dry run: 3 migrations pending on --database-url; nothing was changed",
    ]
    assert database.tables() == set()


def test_a_target_below_every_pending_file_writes_nothing(
    database: Database, tmp_path: Path
) -> None:
    """Nothing to do is found out before the lock is taken or the history made."""
    folder = write_migrations(tmp_path, THREE)
    with database.connect() as conn:
        assert migrations.Runner(conn, migrations.discover(folder)).apply(target=0) == []
    assert database.tables() == set()


def test_target_stops_at_that_version(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    assert migrate(database, folder, "up", "--target", "2")[0] == 0
    assert database.history() == [1, 2]
    assert database.tables() == {"people", "pets"}
    assert migrate(database, folder)[0] == 0
    assert database.history() == [1, 2, 3]


def test_options_work_before_and_after_the_command(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    before = run_cli(
        "migrate",
        "--database-url",
        database.url,
        "--migrations-dir",
        str(folder),
        "status",
        "--json",
    )
    after = run_cli(
        "migrate",
        "status",
        "--json",
        "--database-url",
        database.url,
        "--migrations-dir",
        str(folder),
    )
    assert before.code == after.code == 0
    assert before.out == after.out
    assert '"pending": 3' in before.out


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda folder: (folder / "0002_pets.sql").write_text("-- edited\n"), 4),
        (lambda folder: (folder / "0002_pets.sql").unlink(), 4),
        (lambda folder: (folder / "0000_early.sql").write_text("SELECT 1;\n"), 4),
        (lambda folder: (folder / "0004_later.sql").write_text("SELECT 1;\n"), 3),
        (lambda folder: (folder / "0002_pets.sql").rename(folder / "0002_animals.sql"), 4),
    ],
    ids=["edited", "missing", "out-of-order", "pending", "renamed"],
)
def test_status_exit_code_says_what_needs_attention(
    database: Database, tmp_path: Path, change, code: int
) -> None:
    """The CI gates (`status --exit-code`, `check --database-url`) agree with `up`: a
    disagreement (4) is exactly what `up` refuses (2)."""
    folder = write_migrations(tmp_path, THREE)
    assert migrate(database, folder)[0] == 0
    change(folder)
    assert migrate(database, folder, "status", "--exit-code")[0] == code
    assert migrate(database, folder, "status")[0] == 0
    assert migrate(database, folder, "check", "--no-lint")[0] == (4 if code == 4 else 0)
    assert migrate(database, folder, "up", "--dry-run")[0] == (2 if code == 4 else 0)


def test_status_exit_code_reports_pending(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    assert migrate(database, folder, "status", "--exit-code")[0] == 3
    assert migrate(database, folder, "status")[0] == 0
    migrate(database, folder)
    code, out, _ = migrate(database, folder, "status", "--exit-code")
    assert code == 0
    assert out.splitlines()[0].split() == ["VERSION", "NAME", "STATE", "APPLIED", "AT"]
    assert [line.split()[:3] for line in out.splitlines()[1:4]] == [
        ["1", "people", "applied"],
        ["2", "pets", "applied"],
        ["3", "seed", "applied"],
    ]
    assert out.splitlines()[-1] == "--database-url: up to date"


def test_failing_migration_rolls_back_only_itself(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            **THREE,
            "0004_broken.sql": "CREATE TABLE toys (id int);\n\nINSERT INTO toys VALUES ('x');\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert code == 1
    assert "applied 0003_seed.sql" in out
    assert err.startswith(
        "error: migration 0004_broken.sql failed at line 3: "
        'invalid input syntax for type integer: "x" [22P02]'
    )
    assert len(err.splitlines()) == 1
    assert database.history() == [1, 2, 3]
    assert "toys" not in database.tables()


def test_syntax_error_names_its_line(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_typo.sql": "-- first a comment\nCREATE TABLE ok (id int);\nCREATE TABEL bad (id int);\n"
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith(
        'error: migration 0001_typo.sql failed at line 3: syntax error at or near "TABEL"'
    )
    assert database.tables() == set()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda folder: (folder / "0002_pets.sql").write_text(
                "CREATE TABLE pets (id bigint);\n"
            ),
            "error: migration 0002_pets.sql was edited after it was applied; restore the applied "
            "version from version control and put the change in a new migration\n",
        ),
        (
            lambda folder: (folder / "0002_pets.sql").unlink(),
            "error: migration 2 (pets) was applied but no file has that version; restore it from "
            "version control (applied migrations are never deleted)\n",
        ),
        (
            lambda folder: (folder / "0001_early.sql").write_text("CREATE TABLE early (id int);\n"),
            None,
        ),
        (
            lambda folder: (folder / "0002_pets.sql").rename(folder / "0002_animals.sql"),
            "error: migration 2 was applied as 'pets', but the file with that version is now "
            "0002_animals.sql: the files were renumbered or replaced since; restore the applied "
            "files, or rebuild the history (db/README.md, 'When the files were rewritten')\n",
        ),
    ],
    ids=["edited", "missing", "out-of-order", "renamed"],
)
def test_history_disagreements_are_refused(
    database: Database, tmp_path: Path, change, message
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0002_pets.sql": "CREATE TABLE pets (id int);\n",
            "0003_toys.sql": "CREATE TABLE toys (id int);\n",
        },
    )
    assert migrate(database, folder)[0] == 0
    change(folder)
    tables_before = database.tables()
    code, out, err = migrate(database, folder)
    assert code == 2
    assert out == ""
    expected = message or (
        "error: migration 0001_early.sql is pending but version 3 is already "
        "applied; renumber it above 3\n"
    )
    assert err == expected
    assert database.history() == [2, 3]
    assert database.tables() == tables_before


def test_no_transaction_file_builds_index_concurrently(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_table.sql": "CREATE TABLE runs (id int, name text);\n",
            "0002_index.sql": "-- cicd-db: no-transaction\n"
            "CREATE INDEX CONCURRENTLY runs_name ON runs (name);\n",
        },
    )
    code, out, _ = migrate(database, folder)
    assert code == 0, out
    assert database.history() == [1, 2]
    assert database.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'runs_name'::regclass"
    ) == [(True,)]


def test_no_transaction_file_must_hold_one_statement(tmp_path: Path) -> None:
    write_migrations(
        tmp_path, {"0001_two.sql": "-- cicd-db: no-transaction\nSELECT 1;\nSELECT 2;\n"}
    )
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        "migration file 0001_two.sql is marked no-transaction but holds 2 statements besides "
        "SET and RESET; it must hold exactly one: split it into one file per statement"
    )


def test_eight_runners_at_once_apply_each_migration_once(
    database: Database, tmp_path: Path
) -> None:
    files = {"0001_log.sql": "CREATE TABLE log (version int);\n"}
    for version in range(2, 11):
        files[f"{version:04d}_step.sql"] = (
            f"INSERT INTO log VALUES ({version});\nSELECT pg_sleep(0.02);\n"
        )
    folder = write_migrations(tmp_path, files)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "migrate.py"),
        "--database-url",
        database.url,
        "--migrations-dir",
        str(folder),
    ]
    runners = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outcomes = [(runner.communicate(timeout=60)[1], runner.returncode) for runner in runners]
    assert outcomes == [("", 0)] * 8
    assert database.history() == list(range(1, 11))
    assert database.query(
        "SELECT version, count(*) FROM log GROUP BY version ORDER BY version"
    ) == [(version, 1) for version in range(2, 11)]


def test_runner_killed_mid_migration_leaves_nothing_and_next_run_completes(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_slow.sql": "CREATE TABLE slow (id int);\nINSERT INTO slow VALUES (1);\n"
            "SELECT pg_sleep(60);\n",
        },
    )
    runner = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "migrate.py"),
            "--database-url",
            database.url,
            "--migrations-dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database.wait_for(
        RUNNER_SLEEPING,
        "the slow migration never started",
    )
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert database.history() == [1]
    assert "slow" not in database.tables()
    (folder / "0002_slow.sql").write_text(
        "CREATE TABLE slow (id int);\nINSERT INTO slow VALUES (1);\n"
    )
    # The edited file was never applied, so editing it is allowed.
    code, _, err = migrate(database, folder, "--lock-timeout", "20")
    assert (code, err) == (0, "")
    assert database.history() == [1, 2]
    assert database.query("SELECT id FROM slow") == [(1,)]


def test_lock_held_elsewhere_times_out(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    with database.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [migrations.LOCK_KEY])
        started = time.monotonic()
        code, _, err = migrate(database, folder, "--lock-timeout", "0.5")
        assert time.monotonic() - started < 10
    assert code == 1
    assert err == (
        "error: another migration runner held the lock for 0.5 s; wait for it to "
        "finish, or raise --lock-timeout\n"
    )
    assert database.history() == []


def test_repository_migrations_apply_to_an_empty_database(database: Database) -> None:
    code, _, _ = migrate(database, MIGRATIONS)
    assert code == 0
    assert {"pipeline_executions", "stage_executions", "job_executions"} <= database.tables()


@pytest.mark.parametrize(
    ("signal_number", "code", "inherited"),
    [
        (signal.SIGINT, 130, signal.SIG_DFL),
        (signal.SIGTERM, 143, signal.SIG_DFL),
        # A shell starting a job in the background hands it SIGINT ignored.
        (signal.SIGINT, 130, signal.SIG_IGN),
    ],
    ids=["ctrl-c", "term", "ctrl-c-when-started-ignoring-it"],
)
def test_interrupt_rolls_back_releases_the_lock_and_says_so(
    database: Database, tmp_path: Path, signal_number: int, code: int, inherited: object
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_slow.sql": "CREATE TABLE slow (id int);\nSELECT pg_sleep(60);\n",
            "0003_after.sql": "CREATE TABLE after (id int);\n",
        },
    )
    runner = subprocess.Popen(
        [*CLI, "--database-url", database.url, "--migrations-dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
    )
    database.wait_for(
        RUNNER_SLEEPING,
        "the slow migration never started",
    )
    runner.send_signal(signal_number)
    out, err = runner.communicate(timeout=30)
    assert runner.returncode == code
    assert out.startswith("applied 0001_first.sql")
    assert err == (
        "error: interrupted during 0002_slow.sql; it was rolled back; nothing after it ran\n"
    )
    assert database.history() == [1]
    assert database.tables() == {"first"}
    # The query was cancelled and the lock released: nothing of the runner is left.
    assert database.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " UNION ALL SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        " AND datname = current_database()"
    ) == [(0,), (0,)]


def test_an_interrupt_after_the_commit_is_not_called_a_rollback(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands once file 2's transaction committed, before the runner moves on."""
    in_transaction = migrations.apply.Applier._in_transaction

    def then_interrupted(
        applier: migrations.apply.Applier, migration: migrations.Migration
    ) -> None:
        in_transaction(applier, migration)
        if migration.version == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(migrations.apply.Applier, "_in_transaction", then_interrupted)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(write_migrations(tmp_path, THREE)))
        with pytest.raises(Interrupted) as interrupted:
            runner.apply()
    assert str(interrupted.value) == (
        "interrupted after 0002_pets.sql was applied; nothing after it ran"
    )
    assert database.history() == [1, 2]


def test_lock_timeouts_are_retried_until_the_file_applies(
    database: Database, tmp_path: Path
) -> None:
    database.execute("CREATE TABLE busy (id int)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_alter.sql": "SET lock_timeout = '100ms';\n\n"
            "ALTER TABLE busy ADD COLUMN note text;\n"
        },
    )
    with database.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        runner = subprocess.Popen(
            [
                *CLI,
                "--database-url",
                database.url,
                "--retries",
                "20",
                "--migrations-dir",
                f"{folder}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        # Let it fail and retry twice, then let go of the table.
        assert runner.stderr is not None
        first_two = [runner.stderr.readline().rstrip("\n") for _ in range(2)]
        holder.execute("ROLLBACK")
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    lines = first_two + err.splitlines()
    for attempt, line in enumerate(lines, start=1):
        assert re.fullmatch(
            rf"0001_alter\.sql: lock not available at line 3 \(ALTER TABLE busy ADD COLUMN note "
            rf"text;\), retry {attempt}/20 in \d+\.\d s",
            line,
        ), line
    assert database.history() == [1]
    assert database.query(
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'"
    ) == [(1,)]


def test_lock_retries_give_up_within_their_bounds(database: Database, tmp_path: Path) -> None:
    database.execute("CREATE TABLE busy (id int)")
    folder = write_migrations(
        tmp_path,
        {"0001_alter.sql": "SET lock_timeout = '50ms';\nALTER TABLE busy ADD COLUMN note text;\n"},
    )
    with database.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        code, _, err = migrate(database, folder, "--retries", "2")
    assert code == 1
    lines = err.splitlines()
    assert [line.split(", retry ")[1].split(" in ")[0] for line in lines[:2]] == ["1/2", "2/2"]
    assert lines[2] == (
        "error: migration 0001_alter.sql failed at line 2: canceling statement due to lock "
        "timeout [55P03]; it was rolled back; run again when the tables are less busy (the file "
        "itself is fine); gave up after 2 retries (raise --retries or --retry-budget)"
    )
    assert len(lines) == 3
    assert database.history() == []


# -- rehearse, baseline, drift, scratch_dump and interruptions, through the Runner itself --------


def test_rehearsal_times_each_lock_and_undoes_only_what_failed(
    database: Database, tmp_path: Path
) -> None:
    """Each file after a savepoint: a failed one is undone, a good one stays for the next;
    a lock counts from the statement that took it; a no-transaction file is listed as
    skipped; nothing of it all is left afterwards."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_base.sql": "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n"
            "CREATE TABLE busy (id int);\nCREATE SEQUENCE used;\nCREATE SEQUENCE moved;\n"
            "SELECT nextval('used');\n",
            # The backslash ends the string only where strings are standard: read otherwise,
            # the statements after it would travel with it, before the sleep.
            "0002_locks.sql": "LOCK TABLE b IN SHARE MODE;\n"
            "SELECT pg_sleep(0.3), 'C:\\' AS path;\n"
            "ALTER TABLE a ADD COLUMN note text;\nSELECT nextval('moved');\n",
            "0003_index.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY a_id ON a (id);\n",
            # COPY data splits it in steps: the statements after it start on line 5.
            "0004_fails.sql": "ALTER TABLE a ADD COLUMN other int;\nCOPY a (id) FROM STDIN;\n7\n"
            "\\.\nSELECT 1;\nSELECT 1/0;\n",
            "0005_busy.sql": "SET lock_timeout = '50ms';\nALTER TABLE busy ADD COLUMN x int;\n",
            "0006_builds.sql": "ALTER TABLE a ADD COLUMN other text;\n"
            "INSERT INTO a (note, other) VALUES ('n', 'o');\n",
            "0007_later.sql": "CREATE TABLE later (id int);\n",
        },
    )
    with database.connect() as conn, database.connect() as holder:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply(target=1)
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        started = time.perf_counter()
        rehearsed = runner.rehearse(target=6)
        elapsed_ms = (time.perf_counter() - started) * 1000
        holder.execute("ROLLBACK")
    assert [r.migration.filename for r in rehearsed] == [
        "0002_locks.sql",
        "0003_index.sql",
        "0004_fails.sql",
        "0005_busy.sql",
        "0006_builds.sql",
    ]
    locks, index, fails, busy, builds = rehearsed

    assert (locks.error, locks.skipped, locks.unrehearsed_before) == (None, None, ())
    assert [(lock.mode, lock.table) for lock in locks.locks] == [
        ("ShareLock", "b"),
        ("AccessExclusiveLock", "a"),
    ]
    b_held, a_held = (lock.held_ms for lock in locks.locks)
    assert a_held >= 0 and b_held - a_held >= 300  # b was taken before the sleep, a after it
    assert locks.duration_ms is not None and b_held <= locks.duration_ms < elapsed_ms
    assert locks.sequences == ("public.moved",)
    assert not locks.failed

    assert index.skipped == (
        "a no-transaction file cannot run inside the rehearsal's transaction "
        "(CREATE INDEX CONCURRENTLY, COMMIT in a procedure)"
    )
    assert (index.duration_ms, index.locks, index.error) == (None, (), None)

    assert fails.error == (
        "failed at line 6: division by zero [22012]; it was rolled back; fix the file and run again"
    )
    assert fails.unrehearsed_before == ("0003_index.sql",)
    assert fails.failed  # it may only need the file the rehearsal could not run: still unseen
    assert busy.error == (
        "failed at line 2: canceling statement due to lock timeout [55P03]; it was rolled back; "
        "run again when the tables are less busy (the file itself is fine)"
    )

    # It builds on 0002's column, and 0004's column of the same name was undone; the
    # table lock 0002 took is not seen again.
    assert (builds.error, builds.sequences) == (None, ())
    assert [(lock.mode, lock.table) for lock in builds.locks] == [("RowExclusiveLock", "a")]

    assert database.history() == [1]
    assert database.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
    ) == [("id",)]
    assert database.query("SELECT count(*) FROM pg_indexes WHERE indexname = 'a_id'") == [(0,)]


BASELINED = {
    "0001_people.sql": "CREATE TABLE people (id int PRIMARY KEY);\n",
    # Lower case, and a statement after it: the scratch run drops CONCURRENTLY however it
    # is written, and plans the file again without it.
    "0002_index.sql": "-- cicd-db: no-transaction\n"
    "create index concurrently people_id on people (id);\nRESET lock_timeout;\n",
    "0003_pets.sql": "CREATE TABLE pets (id int);\n",
    "0004_toys.sql": "CREATE TABLE toys (id int);\n",
}
SCRATCH_SCHEMAS = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cicd_db_baseline%'"


def test_baseline_records_the_files_a_matching_schema_holds(
    database: Database, tmp_path: Path
) -> None:
    database.execute(
        "CREATE TABLE people (id int PRIMARY KEY); CREATE INDEX people_id ON people (id); "
        "CREATE TABLE pets (id int)"
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(write_migrations(tmp_path, BASELINED)))
        assert [m.version for m in runner.baseline(3)] == [1, 2, 3]
        assert [(row.version, row.state) for row in runner.status()] == [
            (1, "applied"),
            (2, "applied"),
            (3, "applied"),
            (4, "pending"),
        ]
        with pytest.raises(MigrationRefused) as again:
            runner.baseline(3)
    assert str(again.value) == (
        "this database already has migration history; baseline is only for a database "
        "without it (run `migrate up` instead)"
    )
    # Not measured: the files never ran here.
    assert database.query(
        "SELECT version, duration_ms, applied_by FROM cicd_db.cicd_db_schema_history ORDER BY version"
    ) == [(version, 0, database.settings.user) for version in (1, 2, 3)]
    assert database.query(SCRATCH_SCHEMAS) == []


@pytest.mark.parametrize("version", [0, 5], ids=["below", "above"])
def test_baseline_needs_a_version_a_file_has(
    database: Database, tmp_path: Path, version: int
) -> None:
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(write_migrations(tmp_path, BASELINED)))
        with pytest.raises(MigrationRefused) as refused:
            runner.baseline(version)
    assert str(refused.value) == (
        f"no migration file has version {version}; see `migrate status` for the versions"
    )
    assert database.tables() == set()


@pytest.mark.parametrize(
    ("columns", "more"), [(12, ""), (13, "; and 1 more")], ids=["twelve", "thirteen"]
)
def test_baseline_shows_twelve_differences_and_counts_the_rest(
    database: Database, tmp_path: Path, columns: int, more: str
) -> None:
    names = [f"c{i:02d}" for i in range(columns)]
    folder = write_migrations(
        tmp_path,
        {"0001_wide.sql": f"CREATE TABLE wide ({', '.join(f'{n} int' for n in names)});\n"},
    )
    database.execute("CREATE TABLE wide ()")
    with database.connect() as conn, pytest.raises(MigrationRefused) as refused:
        migrations.Runner(conn, migrations.discover(folder)).baseline(1)
    shown = "; ".join(f"missing column wide.{n}: integer" for n in names[:12])
    assert str(refused.value) == (
        f"the live schema does not match migrations up to version 1: {shown}{more}; "
        "fix the schema by hand, or baseline at the version it matches"
    )
    assert database.tables() == {"wide"}
    assert database.query(SCRATCH_SCHEMAS) == []


def test_drift_compares_the_live_schema_with_the_applied_files(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, BASELINED)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert runner.drift() == (0, [])  # nothing applied: nothing expected
        runner.apply(target=3)
        assert runner.drift() == (3, [])
        conn.execute("ALTER TABLE pets ADD COLUMN extra int")
        assert runner.drift() == (
            3,
            [schema.Difference("pets", "column", "extra", "unexpected", "integer")],
        )
        (folder / "0001_people.sql").write_text("-- edited\n")
        edited = migrations.Runner(conn, migrations.discover(folder))
        with pytest.raises(MigrationRefused, match=r"0001_people\.sql was edited"):
            edited.drift()
    assert database.query(SCRATCH_SCHEMAS) == []


def test_scratch_dump_is_the_schema_the_files_make(
    server: ConnectionSettings, tmp_path: Path
) -> None:
    """In a database of its own, dropped again; the runner's session options reach the files."""
    folder = write_migrations(
        tmp_path,
        {
            **BASELINED,
            "0005_options.sql": "DO $$BEGIN EXECUTE format('COMMENT ON TABLE toys IS %L', "
            "current_setting('client_connection_check_interval')); END$$;\n",
        },
    )
    dumped = migrations.scratch_dump(migrations.discover(folder), server)
    assert "CREATE TABLE public.people (" in dumped
    assert "CREATE INDEX people_id ON public.people USING btree (id);" in dumped
    assert "COMMENT ON TABLE public.toys IS '1s';" in dumped
    assert "cicd_db_schema_history" not in dumped
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            [f"cicd_db_scratch_{os.getpid()}_%"],
        ).fetchall()
        # The admin database itself is never migrated.
        history = conn.execute("SELECT to_regclass('cicd_db_schema_history')").fetchone()
    assert (left, history) == ([], (None,))


def _interrupt_when_sleeping(
    database: Database, interruption: type[BaseException], *, lose_the_connection: bool
) -> threading.Thread:
    """Once the runner's file sleeps, interrupt this (main) thread as Ctrl-C or SIGTERM would;
    `lose_the_connection` ends the runner's server session first."""
    main = threading.main_thread().ident
    assert main is not None
    sleeping = (
        "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database() AND pid <> pg_backend_pid()"
    )

    def interrupt(signum: int, frame: object) -> None:
        if lose_the_connection:
            database.query(f"SELECT pg_terminate_backend(pid) FROM ({sleeping}) s")
        raise interruption

    signal.signal(signal.SIGUSR1, interrupt)
    watcher = threading.Thread(
        target=lambda: (
            database.wait_for(sleeping, "the slow migration never started"),
            signal.pthread_kill(main, signal.SIGUSR1),
        ),
        daemon=True,
    )
    watcher.start()
    return watcher


@pytest.mark.parametrize(
    ("marker", "interruption", "lose_the_connection", "code", "message"),
    [
        (
            "",
            KeyboardInterrupt,
            False,
            130,
            "interrupted during 0002_slow.sql; it was rolled back; nothing after it ran",
        ),
        (
            "",
            Terminated,
            False,
            143,
            "interrupted during 0002_slow.sql; it was rolled back; nothing after it ran",
        ),
        (
            "-- cicd-db: no-transaction\n",
            KeyboardInterrupt,
            False,
            130,
            "interrupted during 0002_slow.sql, a no-transaction file: what PostgreSQL finished "
            "of it stays, and it is not recorded (the next run drops an index it left invalid "
            "and runs it again); nothing after it ran",
        ),
        (
            "",
            KeyboardInterrupt,
            True,
            130,
            "interrupted during 0002_slow.sql, and the connection with it: whether it committed "
            "is not known; nothing after it ran; see `migrate status`",
        ),
    ],
    ids=["ctrl_c", "sigterm", "no_transaction", "connection_lost"],
)
def test_an_interrupted_runner_says_what_it_left(
    database: Database,
    tmp_path: Path,
    marker: str,
    interruption: type[BaseException],
    lose_the_connection: bool,
    code: int,
    message: str,
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_slow.sql": f"{marker}SELECT pg_sleep(60);\n",
            "0003_after.sql": "CREATE TABLE after (id int);\n",
        },
    )
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        with database.connect() as conn:
            runner = migrations.Runner(conn, migrations.discover(folder))
            watcher = _interrupt_when_sleeping(
                database, interruption, lose_the_connection=lose_the_connection
            )
            with pytest.raises(Interrupted) as interrupted:
                runner.apply()
            watcher.join(timeout=30)
            assert conn.closed == lose_the_connection
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (str(interrupted.value), interrupted.value.exit_code) == (message, code)
    assert database.history() == [1]
    assert database.tables() == {"first"}


def test_status_names_each_state_and_when_it_was_applied(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, {**THREE, "0004_later.sql": "SELECT 1;\n"})
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        (folder / "0000_early.sql").write_text("SELECT 1;\n")
        assert [(row.version, row.state) for row in runner.status()] == [
            (1, "pending"),
            (2, "pending"),
            (3, "pending"),
            (4, "pending"),
        ]
        assert [m.version for m in runner.pending(target=2)] == [1, 2]
        runner.apply(target=3)
        (folder / "0002_pets.sql").write_text("-- edited\n")
        (folder / "0003_seed.sql").unlink()
        changed = migrations.Runner(conn, migrations.discover(folder))
        rows = changed.status()
    applied_at = dict(
        database.query("SELECT version, applied_at FROM cicd_db.cicd_db_schema_history")
    )
    assert [(row.version, row.name, row.state, row.applied_at) for row in rows] == [
        (0, "early", "out-of-order", None),
        (1, "people", "applied", applied_at[1]),
        (2, "pets", "edited", applied_at[2]),
        (3, "seed", "missing", applied_at[3]),
        (4, "later", "pending", None),
    ]


def test_status_on_a_new_database_calls_version_0_pending(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, {"0000_zero.sql": "SELECT 1;\n"})
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert [(row.version, row.state) for row in runner.status()] == [(0, "pending")]
        assert [m.version for m in runner.pending()] == [0]


def test_a_table_of_the_history_name_elsewhere_is_someone_elses(
    database: Database, tmp_path: Path
) -> None:
    """Only a table with the history's columns is a history; the runner's goes to its schema."""
    database.execute(
        'CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema".cicd_db_schema_history (id int)'
    )
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    with database.connect() as conn:
        conn.execute('SET search_path TO "Odd Schema"')
        migrations.Runner(conn, migrations.discover(folder)).apply()
    assert database.history() == [1]
    assert database.query('SELECT count(*) FROM "Odd Schema".cicd_db_schema_history') == [(0,)]


def test_a_table_of_another_shape_in_the_history_place_is_refused(
    database: Database, tmp_path: Path
) -> None:
    database.execute("CREATE SCHEMA cicd_db; CREATE TABLE cicd_db.cicd_db_schema_history (id int)")
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    with database.connect() as conn, pytest.raises(ConfigError) as refused:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    assert str(refused.value) == (
        "cicd_db.cicd_db_schema_history exists but is not cicd-db's migration history: it "
        "must be a table with the columns version, name, checksum, applied_at, applied_by, "
        "duration_ms; rename or drop it if it is not needed"
    )


def test_a_no_transaction_file_records_how_long_it_ran(database: Database, tmp_path: Path) -> None:
    """Measured by the runner around the file: the server's own clock restarts with each
    statement outside a transaction."""
    folder = write_migrations(
        tmp_path, {"0001_slow.sql": "-- cicd-db: no-transaction\nSELECT pg_sleep(0.3);\n"}
    )
    with database.connect() as conn:
        started = time.perf_counter()
        migrations.Runner(conn, migrations.discover(folder)).apply()
        elapsed_ms = (time.perf_counter() - started) * 1000
    [(duration_ms,)] = database.query("SELECT duration_ms FROM cicd_db.cicd_db_schema_history")
    assert isinstance(duration_ms, int) and 300 <= duration_ms <= elapsed_ms


@pytest.mark.parametrize(
    ("second", "done"),
    [
        ("CREATE INDEX t_id ON t (id);\n", "it was rolled back"),
        (
            "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n",
            "what it did is committed",
        ),
    ],
    ids=["transactional", "no_transaction"],
)
def test_a_history_row_a_trigger_swallowed_is_not_called_applied(
    database: Database, tmp_path: Path, second: str, done: str
) -> None:
    folder = write_migrations(
        tmp_path, {"0001_table.sql": "CREATE TABLE t (id int);\n", "0002_index.sql": second}
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply(target=1)
        database.execute(
            "CREATE FUNCTION swallow() RETURNS trigger LANGUAGE plpgsql "
            "AS $$BEGIN RETURN NULL; END$$; "
            "CREATE TRIGGER swallow BEFORE INSERT ON cicd_db.cicd_db_schema_history "
            "FOR EACH ROW EXECUTE FUNCTION swallow()"
        )
        with pytest.raises(MigrationFailed) as failed:
            runner.apply()
    assert str(failed.value) == (
        f"migration 0002_index.sql left no history row (a trigger on the history table?); "
        f"{done}, and it is not recorded; remove that from the file, check the database, "
        "and run again"
    )
    assert database.history() == [1]


def test_two_invalid_indexes_of_one_name_are_left_alone(database: Database, tmp_path: Path) -> None:
    """Which one the interrupted run left is not known: the runner drops neither."""
    for schema_name in ("one", "two"):
        database.execute(
            f"CREATE SCHEMA {schema_name}; CREATE TABLE {schema_name}.t (c int); "
            f"INSERT INTO {schema_name}.t VALUES (1), (1)"
        )
        with database.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY t_c ON {schema_name}.t (c)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nSET search_path = one;\n"
            "CREATE UNIQUE INDEX CONCURRENTLY t_c ON t (c);\n"
        },
    )
    with database.connect() as conn, pytest.raises(MigrationRefused) as refused:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    assert str(refused.value) == (
        "migration 0001_index.sql builds index t_c, and 2 invalid indexes have that name "
        "(one.t_c, two.t_c); drop the one the interrupted run left (DROP INDEX CONCURRENTLY) "
        "and run again"
    )
    assert database.query("SELECT count(*) FROM pg_class WHERE relname = 't_c'") == [(2,)]


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("LOCK TABLE busy;", "LOCK TABLE busy;"),
        (
            "ALTER TABLE busy ADD COLUMN abcdefghijklmno int;",
            "ALTER TABLE busy ADD COLUMN abcdefghijklmno int;",
        ),
        (
            "ALTER TABLE busy ADD COLUMN abcdefghijklmnop int;",
            "ALTER TABLE busy ADD COLUMN abcdefghijklmnop ...",
        ),
        (
            "ALTER   TABLE\n  busy ADD COLUMN abcdefghijklmnopqrstuvwxyz int;",
            "ALTER TABLE busy ADD COLUMN abcdefghijklmnopq...",
        ),
    ],
    ids=["short", "at_the_width", "one_over", "spread_over_lines"],
)
def test_a_retry_names_the_statement_that_waited(
    database: Database, tmp_path: Path, statement: str, shown: str
) -> None:
    """In one line of at most 48 characters."""
    database.execute("CREATE TABLE busy (id int)")
    folder = write_migrations(
        tmp_path, {"0001_alter.sql": f"SET lock_timeout = '20ms';\n{statement}\n"}
    )
    retries: list[migrations.Retry] = []
    with database.connect() as holder, database.connect() as conn:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        runner = migrations.Runner(conn, migrations.discover(folder), retries=1)
        with pytest.raises(MigrationFailed) as failed:
            runner.apply(on_retry=retries.append)
    [retry] = retries
    assert (retry.reason, retry.attempt, retry.retries) == (
        f"lock not available at line 2 ({shown})",
        1,
        1,
    )
    assert str(failed.value).endswith(
        "[55P03]; it was rolled back; run again when the tables are less busy (the file itself "
        "is fine); gave up after 1 retry (raise --retries or --retry-budget)"
    )


def test_a_commit_that_failed_for_other_sessions_is_retried(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_deferred.sql": "CREATE TABLE t (id int);\n"
            "CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'another session won' USING ERRCODE = '40001'; END$$;\n"
            "CREATE CONSTRAINT TRIGGER conflict AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION conflict();\nINSERT INTO t VALUES (1);\n"
        },
    )
    retries: list[migrations.Retry] = []
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder), retries=1)
        with pytest.raises(MigrationFailed) as failed:
            runner.apply(on_retry=retries.append)
    assert [retry.reason for retry in retries] == ["serialization failure at its commit"]
    assert str(failed.value) == (
        "migration 0001_deferred.sql failed at its commit: another session "
        "won [40001]; it was rolled back; run again when the tables are less busy (the file "
        "itself is fine); gave up after 1 retry (raise --retries or --retry-budget)"
    )
    assert database.history() == []


CONFLICT_AT_COMMIT = (
    "CREATE TABLE t (id int); "
    "CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN RAISE EXCEPTION 'another session won' USING ERRCODE = '40001'; END$$; "
    "CREATE CONSTRAINT TRIGGER conflict AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION conflict()"
)


@pytest.mark.parametrize(
    ("retries", "budget", "delays", "spent"),
    [
        # 0.225 s, then 0.45 s: 0.675 s waited; the third, 0.9 s, would pass 1.5 s.
        (3, 1.5, [0.225, 0.45], "; the retry budget of 1.5 s is spent"),
        (10, 0.1, [], "; the retry budget of 0.1 s is spent"),
        # A budget used up exactly still allows that retry.
        (3, 0.225, [0.225], "; the retry budget of 0.225 s is spent"),
        (2, 120.0, [0.225, 0.45], "; gave up after 2 retries"),
        (0, 120.0, [], None),
    ],
    ids=[
        "budget_spent",
        "budget_below_the_first_delay",
        "budget_used_up_exactly",
        "retries_spent",
        "no_retries",
    ],
)
def test_retry_delays_double_and_stop_at_the_first_bound(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retries: int,
    budget: float,
    delays: list[float],
    spent: str | None,
) -> None:
    """A jitter fixed at 1.125 (of 0.75 to 1.25) makes the delays exact: 0.2 s, doubled."""
    monkeypatch.setattr(
        migrations.apply.random, "uniform", lambda low, high: low + (high - low) * 0.75
    )
    database.execute(CONFLICT_AT_COMMIT)
    folder = write_migrations(tmp_path, {"0001_insert.sql": "INSERT INTO t VALUES (1);\n"})
    seen: list[migrations.Retry] = []
    with database.connect() as conn:
        runner = migrations.Runner(
            conn, migrations.discover(folder), retries=retries, retry_budget=budget
        )
        with pytest.raises(MigrationFailed) as failed:
            runner.apply(on_retry=seen.append)
    assert [retry.delay for retry in seen] == pytest.approx(delays)
    assert [retry.attempt for retry in seen] == list(range(1, len(delays) + 1))
    message = (
        "migration 0001_insert.sql failed at its commit: another session "
        "won [40001]; it was rolled back; run again when the tables are less busy (the file "
        "itself is fine)"
    )
    if spent:
        message += f"{spent} (raise --retries or --retry-budget)"
    assert str(failed.value) == message
    assert database.history() == []


def test_a_runner_of_its_own_defaults_retries_until_the_file_applies(
    database: Database, tmp_path: Path
) -> None:
    database.execute(CONFLICT_AT_COMMIT)
    folder = write_migrations(tmp_path, {"0001_insert.sql": "INSERT INTO t VALUES (1);\n"})
    seen: list[migrations.Retry] = []

    def other_session_done(retry: migrations.Retry) -> None:
        seen.append(retry)
        database.execute("DROP TRIGGER conflict ON t")

    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert (runner.lock_timeout, runner.retries, runner.retry_budget) == (60.0, 10, 120.0)
        [result] = runner.apply(on_retry=other_session_done)
    assert [(retry.attempt, retry.retries) for retry in seen] == [(1, migrations.DEFAULT_RETRIES)]
    assert str(seen[0]).startswith(
        "0001_insert.sql: serialization failure at its commit, retry 1/10 in 0."
    )
    assert (result.migration.version, result.dry_run, result.notes) == (1, False, ())
    assert database.history() == [1]


def test_results_say_how_long_each_file_took(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_inside.sql": "SELECT pg_sleep(0.2);\n",
            "0002_outside.sql": "-- cicd-db: no-transaction\nSELECT pg_sleep(0.3);\n",
            "0003_later.sql": "SELECT 1;\n",
        },
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        would: list[migrations.Result] = []
        planned = runner.apply(dry_run=True, target=2, on_applied=would.append)
        assert would == planned
        assert [(r.migration.version, r.duration_ms, r.dry_run) for r in planned] == [
            (1, 0.0, True),
            (2, 0.0, True),
        ]
        starting: list[migrations.Migration] = []
        applied: list[migrations.Result] = []
        started = time.perf_counter()
        results = runner.apply(target=2, on_start=starting.append, on_applied=applied.append)
        elapsed_ms = (time.perf_counter() - started) * 1000
    assert [r.migration.version for r in results] == [1, 2]
    assert [m.version for m in starting] == [1, 2] and applied == results
    inside, outside = (r.duration_ms for r in results)
    assert 200 <= inside < elapsed_ms - 300 and 300 <= outside < elapsed_ms - 200
    assert database.history() == [1, 2]


def test_applied_inside_a_transaction_leaves_it_usable(database: Database, tmp_path: Path) -> None:
    """Asked inside the caller's transaction, a missing history must not abort it."""
    folder = write_migrations(tmp_path, THREE)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        with conn.transaction():
            assert runner.applied() == []
            assert conn.execute("SELECT 1").fetchone() == (1,)
        runner.apply(target=1)
        with conn.transaction():
            assert [row.version for row in runner.applied()] == [1]
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_rehearsal_names_the_line_of_a_syntax_error(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path, {"0001_typo.sql": "CREATE TABLE a (id int);\nALTER TABLE a\nADD;\n"}
    )
    with database.connect() as conn:
        [rehearsal] = migrations.Runner(conn, migrations.discover(folder)).rehearse()
    assert rehearsal.error == (
        'failed at line 3: syntax error at or near ";" [42601]; it was rolled back; fix the '
        "file and run again"
    )
    assert rehearsal.failed


def test_discover_skips_hidden_files_other_files_and_folders(tmp_path: Path) -> None:
    write_migrations(
        tmp_path,
        {
            "0001_a.sql": "SELECT 1;\n",
            ".0002_editor_backup.sql": "SELECT 2;\n",
            "README.md": "notes\n",
        },
    )
    (tmp_path / "0003_folder.sql").mkdir()
    assert [m.filename for m in migrations.discover(tmp_path)] == ["0001_a.sql"]


def test_rehearsal_reads_strings_as_the_file_set_them(database: Database, tmp_path: Path) -> None:
    """After SET standard_conforming_strings = off, 'a\\'' is one string: the LOCK after it is
    a statement of its own, taken after the sleep."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_table.sql": "CREATE TABLE b (id int);\n",
            "0002_old_strings.sql": "SET standard_conforming_strings = off;\n"
            "SELECT 'a\\'', pg_sleep(0.3);\nLOCK TABLE b IN SHARE MODE;\n",
        },
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply(target=1)
        [rehearsal] = runner.rehearse()
    assert rehearsal.error is None
    [lock] = rehearsal.locks
    assert (lock.mode, lock.table) == ("ShareLock", "b")
    assert rehearsal.duration_ms is not None and lock.held_ms < rehearsal.duration_ms - 250


def test_the_runner_needs_an_autocommit_connection(database: Database) -> None:
    """It opens its own transactions, and a no-transaction file must run outside any."""
    with (
        psycopg.connect(database.settings.conninfo()) as conn,
        pytest.raises(ValueError) as refused,
    ):
        migrations.Runner(conn, [])
    assert str(refused.value) == "the runner needs an autocommit connection"
