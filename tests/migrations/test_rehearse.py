"""`migrate up --rehearse`: pending files in a transaction that is rolled back; it
claims only what it saw.

Exit 0 only when every rehearsed statement succeeded; files are reset between each
other as in a real run; what a rollback cannot undo is named; a file that ends the
rehearsal's savepoint or connection is named in the message.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from psycopg import sql

from cicd_db import migrations

from ..fix_cli import migrate, run_cli, start_cli
from ..fix_db import Database
from ..utils import unscanned, write_migrations
from .shared import MENTIONS, old_strings_by_default, rehearse


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


def test_a_rehearsal_runs_every_statement_after_a_mention(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_notes.sql": "CREATE TABLE notes (note text);\n",
            "0002_fails_late.sql": MENTIONS["string"] + "CREATE TABLE t (id int);\nSELECT 1/0;\n",
        },
    )
    result = run_cli(
        "migrate", "up", "--rehearse", "--database-url", database.url,
        "--migrations-dir", str(folder),
    )  # fmt: skip
    assert result.code != 0, result.out
    assert "division by zero" in result.out + result.err
    assert database.tables() == set()


@pytest.mark.parametrize(
    "statement",
    # What fails only when it runs (the statements PostgreSQL never runs in a transaction
    # are refused before anything runs where their text tells: tests/migrations/
    # test_kinds.py; a REINDEX of a partitioned table only the server knows to be one).
    [
        "SELECT * FROM a;",
        "INSERT INTO a VALUES (1);",
        "CREATE TABLE p (i int) PARTITION BY RANGE (i); REINDEX TABLE p;",
    ],
)
def test_a_failure_after_an_unrehearsed_file_is_still_a_failure(
    database: Database, tmp_path: Path, statement: str
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nCREATE TABLE a (i int);\n",
            "0002_outside.sql": statement + "\n",
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 1
    assert "0002_outside.sql: " in out and ", FAILED: failed at line 1: " in out
    assert "  (it may need 0001_index.sql, which the rehearsal could not run)" in out.splitlines()


def test_files_are_reset_between_each_other_as_in_a_real_run(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_moves.sql": "CREATE SCHEMA other;\nSET search_path = other;\n"
            "SET ROLE pg_read_all_data;\nLISTEN jobs;\n",
            "0002_public.sql": "CREATE TABLE t (i int);\nINSERT INTO public.t VALUES (1);\n"
            "DO $$BEGIN IF current_user <> session_user THEN RAISE 'role crossed'; END IF; "
            "IF EXISTS (SELECT FROM pg_listening_channels()) THEN RAISE 'listening'; END IF; "
            "END$$;\n",
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 0, out
    assert "FAILED" not in out
    assert database.history() == []
    assert database.tables() == set()
    assert (
        run_cli("migrate", "--database-url", database.url, "--migrations-dir", str(folder)).code
        == 0
    )


def test_what_a_rollback_cannot_undo_is_named(database: Database, tmp_path: Path) -> None:
    # The server writes there as its own OS user: a folder anyone may enter and write.
    shared = Path(tempfile.mkdtemp(prefix="cicd-db-export-"))
    shared.chmod(0o777)
    folder = write_migrations(
        tmp_path, {"0001_export.sql": f"COPY (SELECT 1) TO '{shared / 'exported.csv'}';\n"}
    )
    try:
        code, out, _ = rehearse(database, folder)
        assert code == 0, out
        assert (shared / "exported.csv").read_text() == "1\n"  # what the rehearsal did stays
    finally:
        shutil.rmtree(shared)
    lines = out.splitlines()
    assert "  calls COPY ... TO a server file or program: the rollback does not undo that" in lines
    assert lines[-1] == (
        "rehearsal on --database-url: rolled back, except what is marked above as not undone"
    )
    assert "nothing else changed" not in out


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("SELECT dblink_exec('dbname=x', 'DELETE FROM t');", ["dblink"]),
        ("SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(i int);", ["dblink"]),
        ("COPY t TO '/tmp/t.csv';", ["COPY ... TO a server file or program"]),
        ("copy t to program 'gzip > /tmp/t.gz';", ["COPY ... TO a server file or program"]),
        ("COPY t TO STDOUT;", []),
        ("COPY t FROM '/tmp/t.csv';", []),
        ("SELECT lo_export(1, '/tmp/x');", ["lo_export"]),
        ("SELECT pg_terminate_backend(1);", ["pg_terminate_backend or pg_cancel_backend"]),
        ("-- SELECT dblink_exec('dbname=x', 'x');\nSELECT 1;", []),
        # Strings count: EXECUTE runs them (naming too much is the safe side).
        ("SELECT 'dblink_exec(' AS text;", ["dblink"]),
        (
            "DO $$BEGIN EXECUTE 'COPY t TO ''/tmp/x'''; END$$;",
            ["COPY ... TO a server file or program"],
        ),
        ("COPY t TO $$/tmp/t$$;", ["COPY ... TO a server file or program"]),
        (
            "DO $$BEGIN EXECUTE format('COPY t TO %L', '/tmp/t'); END$$;",
            ["COPY ... TO a server file or program"],
        ),
        ("DO $$BEGIN RAISE NOTICE 'copy of % to %', 1, 2; END$$;", []),
        ("COPY t TO U&'/tmp/t';", ["COPY ... TO a server file or program"]),
        ("COPY (SELECT 1 AS \"a;b\") TO '/tmp/t';", ["COPY ... TO a server file or program"]),
        ("COPY t FROM PROGRAM 'echo 1';", ["COPY ... FROM PROGRAM"]),
        ("SELECT dblink_send_query('c', 'DELETE FROM t');", ["dblink"]),
        ("SELECT pg_logical_emit_message(false, 'p', 'm');", ["pg_logical_emit_message"]),
        ("SELECT pg_reload_conf();", ["pg_reload_conf"]),
    ],
)
def test_outside_the_transaction_reads_the_statements_not_the_comments(
    text: str, named: list[str]
) -> None:
    found = migrations.outside_the_transaction(unscanned("a", text.encode()))
    assert [what.split(" (")[0] for what in found] == named


def test_a_file_that_ends_the_rehearsal_savepoint_is_named(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_release.sql": "CREATE TABLE a (i int);\nRELEASE cicd_db_rehearsal;\n",
            "0002_after.sql": "CREATE TABLE b (i int);\n",
        },
    )
    code, out, err = rehearse(database, folder)
    assert (code, out) == (1, "")
    assert err == (
        "error: 0001_release.sql ended the rehearsal's savepoint (RELEASE or ROLLBACK TO "
        'cicd_db_rehearsal): savepoint "cicd_db_rehearsal" does not exist; the rehearsal was '
        "rolled back, and nothing after that file was rehearsed\n"
    )
    assert database.tables() == set()


def test_a_file_that_ends_its_connection_is_named(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path, {"0001_kill.sql": "SELECT pg_terminate_backend(pg_backend_pid());\n"}
    )
    code, out, err = rehearse(database, folder)
    assert (code, out) == (1, "")
    assert err.startswith("error: the rehearsal lost its connection in 0001_kill.sql (")
    assert err.endswith(
        "the server rolled the rehearsal back, and nothing after that file was rehearsed; if "
        "the file ends its own connection (pg_terminate_backend), it cannot be rehearsed\n"
    )
    assert "\n" not in err[:-1]


def test_nothing_pending_says_so(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    assert (
        run_cli("migrate", "--database-url", database.url, "--migrations-dir", str(folder)).code
        == 0
    )
    assert rehearse(database, folder)[:2] == (
        0,
        "nothing to rehearse: --database-url is up to date\n",
    )


def test_a_file_the_operating_system_refuses_is_not_called_a_missing_grant(
    database: Database, tmp_path: Path
) -> None:
    tmp_path.chmod(0o700)
    folder = write_migrations(
        tmp_path, {"0001_export.sql": f"COPY (SELECT 1) TO '{tmp_path / 'x' / 'no.csv'}';\n"}
    )
    result = run_cli("migrate", "--database-url", database.url, "--migrations-dir", str(folder))
    assert result.code == 1
    assert result.err.startswith("error: migration 0001_export.sql failed at line 1: could not ")
    assert result.err.endswith(
        "[42501]; it was rolled back; the server's operating system refused that file (the "
        "server runs as its own OS user, on its own machine): fix the path or its permissions\n"
    )


def test_a_file_that_would_fail_at_its_commit_fails_the_rehearsal(
    database: Database, tmp_path: Path
) -> None:
    database.execute(
        "CREATE TABLE p (id int PRIMARY KEY); "
        "CREATE TABLE c (pid int REFERENCES p DEFERRABLE INITIALLY DEFERRED)"
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_orphan.sql": "INSERT INTO c VALUES (42);\n",
            "0002_fine.sql": "INSERT INTO p VALUES (1);\nINSERT INTO c VALUES (1);\n",
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("0001_orphan.sql: ")
    assert ', FAILED: failed at its commit: insert or update on table "c" violates' in lines[0]
    fine = next(line for line in lines if line.startswith("0002_fine.sql: "))
    assert "FAILED" not in fine
    assert database.query("SELECT count(*) FROM c") == [(0,)]


@pytest.mark.parametrize(
    "read_only",
    [
        "SET TRANSACTION READ ONLY;",
        "SET transaction_read_only = on;",
        "SET LOCAL transaction_read_only TO on;",
        "SELECT set_config('transaction_read_only', 'on', true);",
        "-- not read only: a comment\nSET TRANSACTION READ WRITE;\nSET TRANSACTION READ ONLY;",
        'SET "transaction_read_only" = on;',
        "SET transaction_read_only = t;",
        "SET LOCAL transaction_read_only TO 'Ye';",
    ],
    ids=[
        "set-transaction",
        "set",
        "set-local",
        "set-config",
        "after-a-comment",
        "quoted-name",
        "t",
        "ye",
    ],
)
def test_a_file_that_makes_its_transaction_read_only_fails_the_rehearsal_as_the_run(
    database: Database, tmp_path: Path, read_only: str
) -> None:
    """A run fails such a file at its commit (its history row cannot be written); the
    rehearsal said it would apply. Both now fail it, with the same advice."""
    folder = write_migrations(
        tmp_path,
        {"0001_a.sql": "CREATE TABLE a (id int);\n", "0002_ro.sql": f"{read_only}\nSELECT 1;\n"},
    )
    code, out, _ = rehearse(database, folder)
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("0002_ro.sql: "))
    advice = "the file made its transaction read-only (SET TRANSACTION READ ONLY, SET "
    assert ", FAILED: failed at its commit: " in line and advice in line, line
    ran = migrate(database, folder)
    assert ran.code == 1 and advice in ran.err, ran
    assert database.history() == [1]


def test_a_rehearsal_that_loses_the_lock_stops(database: Database, tmp_path: Path) -> None:
    """The file waits for the lock's session to be gone (pg_terminate_backend's timeout):
    a signal alone may still be on its way when the file ends, and the loss then found
    a file later, which under load made this test name 0002."""
    end_lock_session = (
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid <> pg_backend_pid() AND granted AND mode = 'ExclusiveLock' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database());\n"
    )
    folder = write_migrations(
        tmp_path, {"0001_kill.sql": end_lock_session, "0002_after.sql": "SELECT 1;\n"}
    )
    code, out, err = rehearse(database, folder)
    assert (code, out) == (1, "")
    assert err == (
        "error: the rehearsal lost the runner's lock during 0001_kill.sql (the session that "
        "holds it ended: pg_terminate_backend, a lost connection, or a connection pooler's "
        "timeout for idle transactions); the rehearsal was rolled back, and nothing after "
        "that file was rehearsed\n"
    )


def test_a_quiet_failed_rehearsal_still_says_why(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_fails.sql": "SELECT 1/0;\n"})
    code, out, err = rehearse(database, folder, "--quiet")
    assert (code, out) == (1, "")
    assert err == (
        "error: the rehearsal saw 1 file fail; first 0001_fails.sql: failed at line 1: division "
        "by zero [22012]; it was rolled back; fix the file and run again\n"
    )


def test_sql_goes_with_a_dry_run_not_a_rehearsal(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    code, out, err = rehearse(database, folder, "--dry-run", "--sql")
    assert (code, out) == (2, "")
    assert err == (
        "error: --sql prints what --dry-run would apply; add --dry-run, without --rehearse\n"
    )


def test_a_rehearsal_reads_the_rest_of_a_file_as_a_statement_in_it_left_the_server(
    database: Database, tmp_path: Path
) -> None:
    """After a DO block that turns standard_conforming_strings off, `'a\\'; SELECT '''` is
    one string: the rehearsal, which sends a statement at a time, must split the rest as
    the server now reads it, as `migrate up` does (it sent `INSERT ... 'a\\';` alone)."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_decides.sql": "CREATE TABLE t (s text);\n"
            "DO $$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); "
            "END$$;\nINSERT INTO t SELECT 'a\\'; SELECT ''';\n"
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 0, out
    assert "FAILED" not in out, out
    code, _, err = migrate(database, folder)
    assert code == 0, err
    assert database.query("SELECT s FROM t") == [("a'; SELECT '",)]


@pytest.mark.parametrize(
    "lead",
    [
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n",
        'SET TRANSACTION READ WRITE;\nSET "transaction_deferrable" = on;\n',
    ],
    ids=["plain", "quoted"],
)
@pytest.mark.parametrize("strings", ["standard", "old"])
def test_set_transaction_in_a_rehearsed_file_is_named_not_run(
    database: Database, tmp_path: Path, strings: str, lead: str
) -> None:
    """Also on a server that reads strings the old way, where the file is planned again,
    and for a setting of the same written with its name quoted."""
    if strings == "old":
        old_strings_by_default(database)
    folder = write_migrations(tmp_path, {"0001_serial.sql": lead + "SELECT 1;\n"})
    code, out, _ = rehearse(database, folder)
    assert code == 0, out
    assert (
        "  not rehearsed: its SET TRANSACTION statements (from line 1): the rehearsal's "
        "transaction began before the file"
    ) in out.splitlines()


@pytest.mark.parametrize(
    ("first", "second", "said"),
    [
        (
            "CREATE TYPE mood AS ENUM ('ok');\nALTER TYPE mood ADD VALUE 'sad';\n",
            "CREATE TABLE feeling (m mood DEFAULT 'sad');\n",
            'unsafe use of new value "sad" of enum type mood [55P04]',
        ),
        (
            "CREATE TABLE p (id int PRIMARY KEY);\nCREATE TABLE c (pid int REFERENCES p "
            "DEFERRABLE INITIALLY DEFERRED);\nINSERT INTO p VALUES (1);\n"
            "INSERT INTO c VALUES (1);\n",
            "ALTER TABLE c ADD COLUMN note text;\n",
            'cannot ALTER TABLE "c" because it has pending trigger events [55006]',
        ),
    ],
    ids=["enum-value", "pending-trigger-events"],
)
def test_a_failure_only_a_commit_of_the_files_before_would_avoid_says_so(
    database: Database, tmp_path: Path, first: str, second: str, said: str
) -> None:
    """Both files apply, each in its own transaction; in the rehearsal's one transaction
    PostgreSQL refuses the second. It still counts as a failure (the rehearsal claims
    only what it saw), named as the rehearsal's own, with what to do."""
    folder = write_migrations(tmp_path, {"0001_first.sql": first, "0002_second.sql": second})
    code, out, _ = rehearse(database, folder)
    assert code == 1
    second_line = next(line for line in out.splitlines() if line.startswith("0002_second.sql"))
    assert f"FAILED: failed at line 1: {said}; it was rolled back; PostgreSQL allows that " in (
        second_line
    )
    assert second_line.endswith(
        "here they share one transaction: apply the files before it, then rehearse this one"
    )
    assert migrate(database, folder)[0] == 0  # a real run applies both
    assert database.history() == [1, 2]


def test_the_first_file_of_a_rehearsal_is_told_to_fix_itself(
    database: Database, tmp_path: Path
) -> None:
    """No file before it: a new enum value used in the file that adds it fails in a real
    run too, and the file is the one to fix."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_both.sql": "CREATE TYPE mood AS ENUM ('ok');\nALTER TYPE mood ADD VALUE 'sad';\n"
            "CREATE TABLE feeling (m mood DEFAULT 'sad');\n"
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 1
    assert out.splitlines()[0].endswith("it was rolled back; fix the file and run again")


def test_a_file_whose_state_only_a_commit_ends_stops_the_rehearsal_naming_it(
    database: Database, tmp_path: Path
) -> None:
    """Temporary tables with deferred checks pending: a real run's commit runs them and
    the reset drops the tables; the rehearsal cannot, and says so (it said the runner's
    lock was lost)."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_temp.sql": "CREATE TEMP TABLE tp (id int PRIMARY KEY);\n"
            "CREATE TEMP TABLE tc (a int REFERENCES tp DEFERRABLE INITIALLY DEFERRED);\n"
            "INSERT INTO tc VALUES (1);\nINSERT INTO tp VALUES (1);\n",
            "0002_next.sql": "CREATE TABLE later (id int);\n",
        },
    )
    code, _, err = rehearse(database, folder)
    assert code == 1
    assert err.startswith(
        "error: the rehearsal cannot reset the session after 0001_temp.sql, as a real run "
        'does between files: cannot DROP TABLE "tc" because it has pending trigger events '
        "[55006]"
    ), err
    assert migrate(database, folder)[0] == 0
    assert database.history() == [1, 2]


def test_what_follows_a_skipped_set_transaction_is_rehearsed_and_named_by_its_line(
    database: Database, tmp_path: Path
) -> None:
    """The SET TRANSACTION is skipped (named from its own line), a LOCK beside it and
    every statement after it in the same query are rehearsed; a statement that fails
    after a DO block that changed how strings read is told at its line."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_lead.sql": "-- one\n-- two\n-- three\nCREATE TABLE a (x int);\n",
            "0002_serial.sql": "-- the transaction first\n\nSET TRANSACTION ISOLATION LEVEL "
            "SERIALIZABLE;\nLOCK TABLE a IN SHARE MODE;\nSELECT 1;\nSELECT 1/0;\n",
            "0003_flip.sql": "-- a comment\nDO $$BEGIN PERFORM set_config("
            "'standard_conforming_strings', 'off', false); END$$;\nSELECT 'a\\'b';\n"
            "SELECT 1/0;\n",
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 1
    lines = out.splitlines()
    serial = next(line for line in lines if line.startswith("0002_serial.sql"))
    assert "FAILED: failed at line 6: division by zero" in serial, out
    assert (
        "  not rehearsed: its SET TRANSACTION statements (from line 3): the rehearsal's "
        "transaction began before the file"
    ) in lines
    assert "ShareLock on a" in out or "ShareLock" in out, out
    flip = next(line for line in lines if line.startswith("0003_flip.sql"))
    assert "FAILED: failed at line 4: division by zero" in flip, out


@pytest.mark.parametrize(
    "lead",
    [
        "-- SET TRANSACTION READ ONLY would fail it\nSET TRANSACTION READ WRITE;\n"
        "SET transaction_read_only = off;",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\nSET application_name = 'read only check';",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;\n"
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE;",
        "SET TRANSACTION READ ONLY;\nSET TRANSACTION READ WRITE;",
    ],
    ids=["comment-and-off", "named-in-a-string", "session-characteristics", "last-wins"],
)
def test_a_file_that_keeps_its_transaction_writable_passes_the_rehearsal(
    database: Database, tmp_path: Path, lead: str
) -> None:
    """Read only named in a comment or a string, set for the session's next
    transactions, or undone by a later statement: nothing read-only, nothing failed,
    in the rehearsal and in the run."""
    folder = write_migrations(tmp_path, {"0001_rw.sql": f"{lead}\nCREATE TABLE a (id int);\n"})
    code, out, _ = rehearse(database, folder)
    assert code == 0 and "FAILED" not in out, out
    ran = migrate(database, folder)
    assert ran.code == 0, ran


def test_a_rehearsal_up_to_a_target_says_what_it_leaves_pending_above(
    database: Database, tmp_path: Path
) -> None:
    """Never "up to date" while files are pending above the target, as `up` says it."""
    folder = write_migrations(
        tmp_path, {f"000{v}_f{v}.sql": f"CREATE TABLE f{v} (i int);\n" for v in (1, 5, 7)}
    )
    assert migrate(database, folder, "up", "--target", "1").code == 0
    assert rehearse(database, folder, "--target", "3")[:2] == (
        0,
        "nothing to rehearse up to version 3 on --database-url; 2 migrations pending above "
        "version 3\n",
    )
    code, out, _ = rehearse(database, folder, "--target", "5")
    assert code == 0 and out.splitlines()[-1] == (
        "rehearsal on --database-url: rolled back; it saw nothing a rollback cannot undo; "
        "1 migration pending above version 5"
    ), out


def test_a_rehearsal_names_the_locks_others_wait_behind_on_any_kind_of_relation(
    database: Database, tmp_path: Path
) -> None:
    """Views, sequences and existing indexes too, where the lock stops others (a view's
    readers, nextval, a write through the index); not what every write takes on a
    table's indexes and sequences, nor a new index no one else sees."""
    database.execute(
        "CREATE TABLE t (id serial PRIMARY KEY, name text); CREATE VIEW v AS SELECT id FROM t; "
        "CREATE SEQUENCE sq; CREATE INDEX ti ON t (name)"
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_view.sql": "CREATE OR REPLACE VIEW v AS SELECT id, name FROM t;\n",
            "0002_sequence.sql": "ALTER SEQUENCE sq INCREMENT BY 2;\n",
            "0003_index.sql": "ALTER INDEX ti SET (fillfactor = 70);\n",
            "0004_write.sql": "INSERT INTO t (name) VALUES ('a');\nCREATE INDEX tn ON t (id);\n",
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 0, out
    locks: dict[str, list[str]] = {}
    name = ""
    for line in out.splitlines():
        if line.startswith("000"):
            name = line.split(":")[0]
        elif " on " in line and "held" in line:
            locks.setdefault(name, []).append(line.strip().split(",")[0])
    assert "AccessExclusiveLock on v" in locks["0001_view.sql"], out
    assert locks["0002_sequence.sql"] == ["ShareRowExclusiveLock on sq"], out
    assert "ShareUpdateExclusiveLock on ti" in locks["0003_index.sql"], out
    assert sorted(locks["0004_write.sql"]) == ["RowExclusiveLock on t", "ShareLock on t"], out


def test_a_sequence_a_file_makes_goes_with_the_rollback_and_is_not_said_kept(
    database: Database, tmp_path: Path
) -> None:
    database.execute("CREATE SEQUENCE old_seq")
    folder = write_migrations(
        tmp_path,
        {
            "0001_new.sql": "CREATE TABLE b (id serial, n int GENERATED ALWAYS AS IDENTITY);\n"
            "INSERT INTO b DEFAULT VALUES;\n",
            "0002_old.sql": "SELECT nextval('old_seq');\n",
        },
    )
    code, out, _ = rehearse(database, folder)
    assert code == 0, out
    kept = [line.strip() for line in out.splitlines() if "advanced sequence" in line]
    assert kept == ["advanced sequence public.old_seq (the rollback keeps that)"], out


@pytest.mark.parametrize("flag", ["--rehearse", "--dry-run"])
def test_dump_schema_with_nothing_applied_is_refused(
    database: Database, tmp_path: Path, flag: str
) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    code, out, err = migrate(database, folder, "up", flag, "--dump-schema", str(tmp_path / "s"))
    assert (code, out) == (2, "")
    assert err == (
        f"error: --dump-schema writes the schema once files are applied, and {flag} applies "
        "none; leave one of them out\n"
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("history", ["made", "moved"])
def test_a_rehearsal_is_refused_where_the_run_may_not_make_or_move_the_history(
    database: Database, tmp_path: Path, history: str
) -> None:
    """The run makes the history (or moves an older release's from public into place)
    before its first file; a role that may not do that was refused by `up` after a
    rehearsal that passed. The rehearsal does it too, in its transaction: the same line
    and exit code as `up`, and nothing left behind."""
    folder = write_migrations(
        tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_b.sql": "SELECT 1;\n"}
    )
    name = database.settings.database
    with database.new_role() as limited:
        role = limited.user
        if history == "moved":  # an older release's, in public, not the role's to move
            assert migrate(database, folder, "up", "--target", "1").code == 0
            database.execute(
                sql.SQL(
                    "ALTER TABLE cicd_db.cicd_db_schema_history SET SCHEMA public; "
                    "DROP SCHEMA cicd_db; GRANT CREATE ON DATABASE {} TO {}; "
                    "GRANT SELECT, INSERT ON public.cicd_db_schema_history TO {}"
                ).format(sql.Identifier(name), sql.Identifier(role), sql.Identifier(role))
            )
        else:
            database.execute(
                sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )
        rehearsed = migrate(limited, folder, "up", "--rehearse")
        before = database.query("SELECT to_regclass('public.cicd_db_schema_history')::text")
        assert database.query("SELECT to_regnamespace('cicd_db')::text") == [(None,)]
        applied = migrate(limited, folder, "up")
        assert applied.code == 2 and "the migration history" in applied.err, applied
        if history == "moved":  # the fix is the table's owner's, not the database's
            assert applied.err.endswith(
                f"or let its owner or a superuser run ALTER TABLE public.cicd_db_schema_history "
                f"OWNER TO {role}\n"
            ), applied.err
        assert (rehearsed.code, rehearsed.err) == (applied.code, applied.err)
        assert before == [("cicd_db_schema_history" if history == "moved" else None,)]


@pytest.mark.parametrize("folder_of_the_other", ["same", "another"])
def test_a_rehearsal_that_waited_for_a_run_rehearses_what_a_run_would_then_run(
    database: Database, tmp_path: Path, folder_of_the_other: str
) -> None:
    """A rehearsal reads what is pending again once it holds the lock, as a run does:
    it read it before, and rehearsed files another runner applied meanwhile (blamed as
    "already exists", exit 1) or, from another branch's folder, passed a 0002 that `up`
    then refuses as applied under another name (exit 2)."""
    common = {"0001_a.sql": "CREATE TABLE a (i int);\n"}
    mine = write_migrations(
        tmp_path / "mine", {**common, "0002_b.sql": "CREATE TABLE b (i int);\n"}
    )
    theirs = write_migrations(
        tmp_path / "theirs",
        {**common, "0002_c.sql": "CREATE TABLE c (i int);\nSELECT pg_sleep(1);\n"},
    )
    if folder_of_the_other == "same":
        theirs = write_migrations(
            tmp_path / "same",
            {**common, "0002_b.sql": "CREATE TABLE b (i int);\nSELECT pg_sleep(1);\n"},
        )
        mine = theirs
    assert migrate(database, mine, "up", "--target", "1").code == 0
    other = start_cli(
        "migrate", "--database-url", database.url, "--migrations-dir", str(theirs), "up"
    )
    database.wait_for(
        "SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()",
        "the other run never started its file",
    )
    rehearsed = migrate(database, mine, "up", "--rehearse")
    _, said = other.communicate(timeout=30)
    assert other.returncode == 0, said
    applied = migrate(database, mine, "up")
    if folder_of_the_other == "same":
        assert (rehearsed.code, applied.code) == (0, 0), (rehearsed, applied)
        assert "FAILED" not in rehearsed.out, rehearsed
    else:
        assert applied.code == 2, applied
        assert (rehearsed.code, rehearsed.err) == (applied.code, applied.err)
