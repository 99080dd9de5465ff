"""What a migration file may hold, and what the runner promises about applying it.

Refused before anything runs: transaction control in a transactional file, psql
meta-commands, an unnamed CREATE INDEX CONCURRENTLY, bad names and versions.
Promised: the history says "applied" only for what happened, no session state
crosses files, large files and COPY data apply, errors name the file's line.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cicd_db import migrations
from cicd_db.errors import ConfigError, MigrationFailed
from cicd_db.settings import ConnectionSettings

from .conftest import Database, run_cli, unscanned, write_migrations


def without_escape_warnings(err: str) -> str:
    """stderr without the WARNING PostgreSQL 17 and older send for a backslash in a string
    while standard strings are off (escape_string_warning); the runner passes it on."""
    warning = "  WARNING: nonstandard use of "
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith(warning))


def migrate(
    database: Database | ConnectionSettings, folder: Path, *args: str
) -> tuple[int, str, str]:
    settings = database.settings if isinstance(database, Database) else database
    result = run_cli(
        "migrate", "--database-url", settings.url(), "--migrations-dir", str(folder), *args
    )
    assert "Traceback" not in result.err
    assert not settings.password or settings.password not in result.out + result.err
    return result.code, result.out, result.err


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("COMMIT;", "COMMIT"),
        ("ROLLBACK;", "ROLLBACK"),
        ("end;", "END"),
        ("ABORT;", "ABORT"),
        ("BEGIN;", "BEGIN"),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE;", "START TRANSACTION"),
        ("PREPARE TRANSACTION 'x';", "PREPARE TRANSACTION"),
        ("COMMIT AND CHAIN;", "COMMIT AND"),
    ],
    ids=["commit", "rollback", "end", "abort", "begin", "start", "prepare", "commit-and-chain"],
)
def test_transaction_control_is_refused_before_anything_runs(
    database: Database, tmp_path: Path, statement: str, shown: str
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_own_transaction.sql": f"CREATE TABLE p1 (id int);\n{statement}\nSELECT 1/0;\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert err == (
        f"error: migration file 0002_own_transaction.sql, line 2: {shown} ends or starts a "
        "transaction, and the runner already runs this file in one; remove it, or make the "
        "first line `-- cicd-db: no-transaction` to run the file outside a transaction\n"
    )
    assert database.tables() == set()


def test_savepoints_stay_inside_the_transaction(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_savepoint.sql": "CREATE TABLE t (id int);\nSAVEPOINT s;\nINSERT INTO t VALUES (1);\n"
            "ROLLBACK TO SAVEPOINT s;\nINSERT INTO t VALUES (2);\nSAVEPOINT s;\n"
            "INSERT INTO t VALUES (3);\nROLLBACK WORK TO SAVEPOINT s;\nSAVEPOINT s;\n"
            "INSERT INTO t VALUES (4);\nROLLBACK TRANSACTION TO s;\nRELEASE SAVEPOINT s;\n"
        },
    )
    assert migrate(database, folder)[0] == 0
    assert database.query("SELECT id FROM t") == [(2,)]


def test_a_transaction_ended_unseen_is_never_recorded(database: Database) -> None:
    """The safety net under the refusal: the runner checks its transaction is still its own."""
    for name, data, left in [
        ("ends", b"CREATE TABLE p1 (id int); COMMIT; CREATE TABLE p2 (id int);", {"p1", "p2"}),
        ("restarts", b"CREATE TABLE p1 (id int); COMMIT; BEGIN; CREATE TABLE p2 (id int);", {"p1"}),
    ]:
        migration = unscanned(name, data)  # discover() would refuse these before they ran
        with database.connect() as conn:
            runner = migrations.Runner(conn, [migration])
            with pytest.raises(MigrationFailed) as failed:
                runner.apply()
            assert str(failed.value) == (
                f"migration 0001_{name}.sql ended the runner's transaction itself (COMMIT, "
                "ROLLBACK or the like, which the runner could not see in it); what it did may be "
                "committed, and it is not recorded; remove that from the file, check the "
                "database, and run again"
            )
            assert runner.applied() == []
        assert {"p1", "p2"} & database.tables() == left
        database.execute("DROP TABLE IF EXISTS p1, p2")


def test_no_session_state_crosses_files(database: Database, tmp_path: Path) -> None:
    role = f"migration_owner_{uuid.uuid4().hex[:8]}"
    folder = write_migrations(
        tmp_path,
        {
            "0001_switch.sql": f"CREATE ROLE {role};\nGRANT CREATE ON SCHEMA public TO {role};\n"
            "CREATE SCHEMA elsewhere;\nSET search_path TO elsewhere;\n"
            "SET statement_timeout = '150ms';\nSET TIME ZONE 'Asia/Tokyo';\n"
            f"SET ROLE {role};\nCREATE TEMPORARY TABLE scratch (id int);\n"
            "CREATE TABLE public.by_role (id int);\n",
            "0002_after.sql": "CREATE TABLE after (id int, zone text DEFAULT current_setting('TimeZone'));\n"
            "INSERT INTO after (id) SELECT 1 FROM pg_sleep(0.3);\n",
            "0003_temporary.sql": "SELECT * FROM scratch;\n",
        },
    )
    try:
        code, _, err = migrate(database, folder)
        assert code == 1
        # The temporary table did not outlive its file, as with one psql per file.
        assert err.startswith(
            'error: migration 0003_temporary.sql failed at line 1: relation "scratch" does not exist'
        )
        login = database.settings.user
        assert database.query(
            "SELECT c.relname, n.nspname, pg_get_userbyid(c.relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname IN ('by_role', 'after') ORDER BY 1"
        ) == [("after", "public", login), ("by_role", "public", role)]
        # Not cut short by the first file's statement_timeout; not in its time zone.
        assert database.query("SELECT id, zone = current_setting('TimeZone') FROM after") == [
            (1, True)
        ]
        assert database.query(
            "SELECT version, applied_by FROM cicd_db.cicd_db_schema_history ORDER BY version"
        ) == [(1, login), (2, login)]
    finally:
        database.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


def test_history_is_written_where_it_lives_whatever_the_search_path(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_dump_header.sql": "SELECT pg_catalog.set_config('search_path', '', false);\n"
            "CREATE TABLE public.a (id int);\n",
            "0002_moves.sql": "CREATE SCHEMA app;\nSET search_path TO app;\nCREATE TABLE b (id int);\n",
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1, 2]
    assert database.query("SELECT to_regclass('app.b') IS NOT NULL") == [(True,)]


def test_copy_from_stdin_applies_and_bad_data_names_its_line(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_data.sql": "CREATE TABLE t (id int, name text);\nCOPY t FROM stdin;\n"
            "1\tone\n2\ttwo\n\\.\nINSERT INTO t VALUES (3, 'three');\n",
            "0002_bad.sql": "COPY t (id, name) FROM STDIN;\n4\tfour\nfive\tfive\n\\.\n",
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith(
        'error: migration 0002_bad.sql failed at line 3: invalid input syntax for type integer: "five"'
    )
    assert database.query("SELECT id, name FROM t ORDER BY id") == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
    ]
    assert database.history() == [1]


@pytest.mark.parametrize("separator", [" ", "\n"], ids=["one-line", "one-a-line"])
def test_copy_without_data_lines_never_hangs(database: Database, separator: str) -> None:
    """A COPY the scanner could not see (built by hand here) ends with an error, not a stuck connection."""
    data = separator.join(["CREATE TABLE t (id int);", "COPY t FROM STDIN;", "SELECT 1;"]).encode()
    migration = unscanned("hidden_copy", data)
    line = 1 if separator == " " else 2
    with database.connect() as conn:
        with pytest.raises(
            MigrationFailed,
            match=f"at line {line}: COPY from stdin failed: COPY FROM STDIN data must",
        ):
            migrations.Runner(conn, [migration]).apply()
        assert conn.execute("SELECT 42").fetchone() == (42,)
    assert database.tables() == set()


def test_copy_to_stdout_the_scanner_could_not_see_is_read_and_dropped(database: Database) -> None:
    """Built by hand here (discover() refuses it): its rows are read and dropped."""
    data = b"CREATE TABLE t (id int);\nINSERT INTO t VALUES (1), (2);\nCOPY t TO STDOUT;\n"
    with database.connect() as conn:
        migrations.Runner(conn, [unscanned("hidden_copy_out", data)]).apply()
        assert conn.execute("SELECT 42").fetchone() == (42,)
    assert database.history() == [1]
    assert database.query("SELECT count(*) FROM t") == [(2,)]


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("COPY t FROM STDIN;\n1\n\\.\n", None),
        (
            "COPY t FROM STDIN;\n1\n\\.\nSELECT 1/0;\n",
            "migration 0002_copy_first.sql failed at line 4: division by zero [22012]; it was "
            "rolled back; fix the file and run again",
        ),
        ("-- nothing to do yet\n", None),
    ],
    ids=["applies", "fails-after-it", "comments-only"],
)
def test_a_file_that_starts_with_copy_data_is_one_transaction(
    database: Database, tmp_path: Path, text: str, failure: str | None
) -> None:
    """Its first step is not a batch the runner's BEGIN can travel with: it goes alone."""
    folder = write_migrations(
        tmp_path, {"0001_table.sql": "CREATE TABLE t (id int);\n", "0002_copy_first.sql": text}
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        if failure is None:
            runner.apply()
        else:
            with pytest.raises(MigrationFailed) as failed:
                runner.apply()
            assert str(failed.value) == failure
    applied = failure is None
    assert database.history() == ([1, 2] if applied else [1])
    assert database.query("SELECT count(*) FROM t") == [(1 if applied and "COPY" in text else 0,)]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"0001_meta.sql": "SELECT 1;\n\\connect other\nSELECT 2;\n"},
            "migration file 0001_meta.sql, line 2: psql meta-command \\connect is not SQL; "
            "remove it (the runner sends SQL only; pg_dump's \\restrict lines are skipped)",
        ),
        (
            {"0001_out.sql": "COPY (SELECT 1) TO STDOUT;\n"},
            "migration file 0001_out.sql, line 1: COPY ... TO STDOUT prints data, which a "
            "migration cannot; remove it, or COPY to a table instead",
        ),
        (
            {"0001_copy.sql": "CREATE TABLE t (id int);\nCOPY t FROM STDIN; 1\n\\.\n"},
            "migration file 0001_copy.sql, line 2: text follows COPY ... FROM STDIN on its line; "
            "start the data on the next line, as pg_dump writes it",
        ),
        (
            {
                "0001_index.sql": "-- cicd-db: no-transaction\nSET lock_timeout = '1s';\n"
                "CREATE INDEX CONCURRENTLY ON t (c);\n"
            },
            "migration file 0001_index.sql, line 3: CREATE INDEX CONCURRENTLY without a name; "
            "name the index (CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON ...) so that a "
            "build left invalid by an interruption can be found and dropped",
        ),
        (
            {
                "0001_index.sql": "-- cicd-db: no-transaction\n"
                "CREATE INDEX CONCURRENTLY -- CREATE INDEX CONCURRENTLY named ON t (c)\n"
                "ON t (c);\n"
            },
            "migration file 0001_index.sql, line 2: CREATE INDEX CONCURRENTLY without a name; "
            "name the index (CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON ...) so that a "
            "build left invalid by an interruption can be found and dropped",
        ),
        (
            {"0001_copy.sql": "-- cicd-db: no-transaction\nCOPY t FROM STDIN;\n1\n\\.\n"},
            "migration file 0001_copy.sql, line 2: COPY ... FROM STDIN in a no-transaction file; "
            "move it to a transactional file",
        ),
        (
            {"0001_Upper.SQL": "SELECT 1;\n"},
            "migration file 0001_Upper.SQL: the extension must be lower-case .sql; "
            "rename it to 0001_Upper.sql",
        ),
        (
            {"0002_add index.sql": "SELECT 1;\n"},
            "migration file '0002_add index.sql': a name may hold only letters, digits, '_', "
            "'.' and '-' after the version's '_'; rename it, for example to 0002_add_index.sql",
        ),
        (
            {"99999999999999999999_huge.sql": "SELECT 1;\n"},
            "migration file 99999999999999999999_huge.sql: version 99999999999999999999 is above "
            "9223372036854775807, the largest the history can hold; renumber it (0001_, 0002_, "
            "... or a timestamp like 20260101120000_)",
        ),
        (
            {"0001_latin1.sql": "SELECT 1;\nSELECT 'caf\xe9';\n"},
            "migration file 0001_latin1.sql is not UTF-8 (line 2); save it as UTF-8",
        ),
        (
            {"0001_nul.sql": "SELECT 1;\nSELECT 2; \x00\nSELECT 3;\n"},
            "migration file 0001_nul.sql holds a NUL byte (line 2), which PostgreSQL cannot take "
            "in SQL; remove it",
        ),
        (
            {"0001_.sql": "SELECT 1;\n"},
            "migration file '0001_.sql': a name may hold only letters, digits, '_', '.' and '-' "
            "after the version's '_'; rename it, for example to 0001_what_it_does.sql",
        ),
        (
            {"0002_X-ray index_of runs!.sql": "SELECT 1;\n"},
            "migration file '0002_X-ray index_of runs!.sql': a name may hold only letters, digits, "
            "'_', '.' and '-' after the version's '_'; rename it, for example to "
            "0002_X-ray_index_of_runs.sql",
        ),
        (
            {"7.sql": "SELECT 1;\n"},
            "migration file 7.sql has a version but no name; rename it to 7_what_it_does.sql",
        ),
        (
            {"add_index.sql": "SELECT 1;\n"},
            "migration file add_index.sql has no version; rename it to <version>_<name>.sql, for "
            "example 0002_add_index.sql",
        ),
        (
            {"0001.sql": "SELECT 1;\n"},
            "migration file 0001.sql has a version but no name; rename it to 0001_what_it_does.sql",
        ),
    ],
    ids=[
        "meta-command",
        "copy-to-stdout",
        "copy-data-on-its-line",
        "unnamed-concurrent-index",
        "concurrent-index-named-only-in-a-comment",
        "copy-in-a-no-transaction-file",
        "upper-case-extension",
        "space-in-name",
        "version-beyond-bigint",
        "not-utf8",
        "nul-byte",
        "empty-name",
        "spaces-and-capitals",
        "no-name-short-version",
        "no-version",
        "no-name",
    ],
)
def test_refused_at_discovery(
    database: Database, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("latin-1"))
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert err.startswith("error: " + message), err
    assert len(err.splitlines()) == 1
    assert database.tables() == set()


def test_pg_dump_restrict_lines_are_skipped(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {"0001_dump.sql": "\\restrict abc123\nCREATE TABLE t (id int);\n\\unrestrict abc123\n"},
    )
    assert migrate(database, folder)[0] == 0
    assert "t" in database.tables()


def test_runtime_error_names_the_statement_line(database: Database, tmp_path: Path) -> None:
    """No error position from the server: the line comes from counting the statements run."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_divide.sql": "CREATE TABLE t (id int);\n-- a comment; with a semicolon\n"
            "INSERT INTO t VALUES (1);\n\nSELECT\n  1/0;\nINSERT INTO t VALUES (2);\n"
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err == (
        "error: migration 0001_divide.sql failed at line 5: division by zero [22012]; it was "
        "rolled back; fix the file and run again\n"
    )


def test_large_file_in_several_batches(database: Database, tmp_path: Path) -> None:
    """Larger than one batch: every statement runs once, in one transaction."""
    rows = "".join(f"INSERT INTO t VALUES ({i}, 'row; {i}');\n" for i in range(40_000))
    folder = write_migrations(
        tmp_path, {"0001_big.sql": f"CREATE TABLE t (id int, s text);\n{rows}"}
    )
    discovered = migrations.discover(folder)
    assert len(discovered[0].steps) == 2  # the first of about a mebibyte, then the rest
    assert migrate(database, folder)[0] == 0
    assert database.query("SELECT count(*), count(DISTINCT id), max(id) FROM t") == [
        (40_000, 40_000, 39_999)
    ]


def test_history_table_of_another_shape(database: Database, tmp_path: Path) -> None:
    database.execute("CREATE SCHEMA cicd_db; CREATE TABLE cicd_db.cicd_db_schema_history (id int)")
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    for args in [(), ("status",)]:
        code, out, err = migrate(database, folder, *args)
        assert (code, out) == (2, "")
        assert err == (
            "error: cicd_db.cicd_db_schema_history exists but is not cicd-db's migration "
            "history: it must be a table with the columns version, name, checksum, applied_at, "
            "applied_by, duration_ms; rename or drop it if it is not needed\n"
        )
    assert "a" not in database.tables()


def test_permission_denied_names_the_privilege(database: Database, tmp_path: Path) -> None:
    role = f"limited_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    database.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    limited = ConnectionSettings(
        host=database.settings.host,
        port=database.settings.port,
        database=database.settings.database,
        user=role,
        password=password,
        sslmode=database.settings.sslmode,
    )
    folder = write_migrations(tmp_path, {"0001_a.sql": "INSERT INTO locked VALUES (1);\n"})
    try:
        database.execute(
            sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(database.settings.database)
            )
        )
        code, _, err = migrate(limited, folder)
        assert code == 1
        assert err == (
            "error: cannot create the migration history cicd_db.cicd_db_schema_history: "
            f"permission denied for database {database.settings.database}; migrate as the "
            f"database's owner, or let an owner run CREATE SCHEMA cicd_db AUTHORIZATION {role}\n"
        )
        database.execute(
            sql.SQL("CREATE SCHEMA cicd_db AUTHORIZATION {0}; CREATE TABLE locked (id int)").format(
                sql.Identifier(role)
            )
        )
        code, _, err = migrate(limited, folder)
        assert code == 1
        assert err == (
            "error: migration 0001_a.sql failed at line 1: permission denied for table locked "
            f"[42501]; it was rolled back; role {role} lacks that privilege: grant it, or migrate "
            "as a role that has it (the table's or schema's owner)\n"
        )
    finally:
        database.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


def test_a_failed_commit_is_never_called_applied(database: Database, tmp_path: Path) -> None:
    """A deferred constraint fails at COMMIT: the file is not applied, nothing after it runs."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_deferred.sql": "CREATE TABLE p (id int PRIMARY KEY);\n"
            "CREATE TABLE c (pid int REFERENCES p DEFERRABLE INITIALLY DEFERRED);\n"
            "INSERT INTO c VALUES (1);\n",
            "0002_after.sql": "CREATE TABLE after (i int);\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: migration 0001_deferred.sql failed at its commit: insert or "
        'update on table "c" violates foreign key constraint'
    )
    assert database.tables() == set()
    assert database.history() == []


@pytest.mark.parametrize(
    "files",
    [
        {"0001_unlock.sql": "CREATE TABLE a (i int);\nSELECT pg_advisory_unlock_all();\n"},
        {"0001_discard.sql": "-- cicd-db: no-transaction\nDISCARD ALL;\n"},
    ],
    ids=["unlock-all", "discard-all"],
)
def test_nothing_a_file_does_on_its_session_releases_the_lock(
    database: Database, tmp_path: Path, files: dict[str, str]
) -> None:
    """The lock is held by a session of its own, which the file's statements cannot reach:
    the file applies, and a second runner waits all the while (here while 0002 runs)."""
    folder = write_migrations(tmp_path, {**files, "0002_sleep.sql": "SELECT pg_sleep(1.5);\n"})

    def first_runner() -> None:
        conninfo = database.settings.conninfo(application_name="first runner")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()

    first = threading.Thread(target=first_runner)
    first.start()
    database.wait_for(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND application_name = 'first runner' AND datname = current_database()",
        "the first runner never reached its pg_sleep",
    )
    time.sleep(0.3)  # past the release, if the file could release the lock
    code, _, err = migrate(database, folder, "--lock-timeout", "0.2")
    first.join()
    assert code == 1
    assert err.startswith("error: another migration runner held the lock for 0.2 s"), err
    assert database.history() == [1, 2]


def test_a_file_that_ends_the_lock_session_is_not_recorded(
    database: Database, tmp_path: Path
) -> None:
    """Only ending the lock's session can lose it; then the file is rolled back."""
    end_lock_session = (
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid <> pg_backend_pid() AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database());\n"
    )
    folder = write_migrations(
        tmp_path, {"0001_kill.sql": "CREATE TABLE a (i int);\n" + end_lock_session}
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith(
        "error: migration 0001_kill.sql ran while the runner's lock was lost (the session that "
        "holds it ended: pg_terminate_backend, or a lost connection), so another runner could "
        "have run at the same time; it was rolled back, and it is not recorded"
    ), err
    assert database.history() == []
    assert "a" not in database.tables()


@pytest.mark.parametrize(
    ("data", "tables"),
    [
        (b"CREATE TABLE a (i int);\n-- note\rCREATE TABLE b (i int);\n", {"a", "b"}),
        (b"-- a comment\rCREATE TABLE a (i int);\rCREATE TABLE b (i int);\r", {"a", "b"}),
    ],
    ids=["cr-inside", "cr-only-file"],
)
def test_a_comment_ends_at_a_carriage_return(
    database: Database, tmp_path: Path, data: bytes, tables: set[str]
) -> None:
    (tmp_path / "0001_cr.sql").write_bytes(data)
    assert migrate(database, tmp_path)[0] == 0
    assert database.tables() == tables


def test_session_objects_do_not_cross_files(database: Database, tmp_path: Path) -> None:
    """Prepared statements and held cursors end with their file, as with one psql per file."""
    twice = "PREPARE p AS SELECT 1;\nDECLARE c CURSOR WITH HOLD FOR SELECT 1;\n"
    folder = write_migrations(tmp_path, {"0001_a.sql": twice, "0002_b.sql": twice})
    assert migrate(database, folder)[:1] == (0,)
    assert database.history() == [1, 2]


# The second file fails if anything of the first one's session is still there.
NOTHING_LEFT_OF_THE_FIRST = """DO $check$BEGIN
  IF EXISTS (SELECT FROM pg_listening_channels()) THEN RAISE 'still listening'; END IF;
  IF EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
    AND classid = 0 AND objid = 42) THEN RAISE 'still holds its advisory lock'; END IF;
  BEGIN
    PERFORM currval('counter');
    RAISE 'currval still set';
  EXCEPTION WHEN object_not_in_prerequisite_state THEN NULL;
  END;
END$check$;
"""


@pytest.mark.parametrize("marker", ["", "-- cicd-db: no-transaction\n"], ids=["in", "outside"])
def test_listen_advisory_locks_and_currval_end_with_their_file(
    database: Database, tmp_path: Path, marker: str
) -> None:
    database.execute("CREATE SEQUENCE counter")
    first = (
        "SELECT pg_advisory_lock(42), nextval('counter');\n"
        if marker
        else "LISTEN jobs;\nSELECT pg_advisory_lock(42), nextval('counter');\n"
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": marker + first,
            "0002_check.sql": NOTHING_LEFT_OF_THE_FIRST,
            "0003_listen.sql": "-- cicd-db: no-transaction\nLISTEN jobs;\n",
            "0004_check.sql": NOTHING_LEFT_OF_THE_FIRST,
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "statement",
    [
        "RESET ALL;",
        "SELECT set_config('cicd_db.runner', 'mine', true);",
        "SET LOCAL cicd_db.runner TO 'mine';",
    ],
)
def test_a_file_that_resets_settings_applies_as_psql_applies_it(
    database: Database, tmp_path: Path, statement: str
) -> None:
    """Supabase's dumps end with RESET ALL: nothing of the runner's bookkeeping is a setting."""
    folder = write_migrations(
        tmp_path,
        {"0001_a.sql": f"CREATE TABLE a (i int);\n{statement}\n", "0002_b.sql": "SELECT 1;\n"},
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1, 2]
    assert "a" in database.tables()


def test_invalid_concurrent_index_is_found_whatever_the_search_path(
    database: Database, tmp_path: Path
) -> None:
    """The file sets search_path and names the index in non-ASCII: its invalid leftover is
    still found, dropped and rebuilt."""
    database.execute(
        "CREATE SCHEMA app; CREATE TABLE app.t (c int); INSERT INTO app.t VALUES (1), (1)"
    )
    with database.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ÉTÉ_c ON app.t (c)")
    # PostgreSQL folds unquoted names in ASCII only: ÉTÉ_c is ÉtÉ_c.
    left = "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'app'::regnamespace"  # fmt: skip
    assert database.query(left) == [("ÉtÉ_c", False)]
    database.execute("DELETE FROM app.t WHERE ctid = (SELECT min(ctid) FROM app.t)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nSET search_path = app;\n"
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ÉTÉ_c ON t (c);\n"
        },
    )
    code, out, _ = migrate(database, folder)
    assert code == 0
    assert out.splitlines()[0] == "  dropped invalid index ÉtÉ_c left by an interrupted run"
    assert database.query(left) == [("ÉtÉ_c", True)]


def test_a_valid_index_of_the_same_name_elsewhere_is_never_dropped(
    database: Database, tmp_path: Path
) -> None:
    """Only an invalid index is a leftover: a valid one in another schema stays."""
    database.execute(
        "CREATE SCHEMA other; CREATE TABLE other.t (c int); CREATE INDEX runs_c ON other.t (c);"
        "CREATE TABLE t (c int)"
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY runs_c ON t (c);\n"
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert "dropped" not in out
    assert database.query(
        "SELECT n.nspname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'runs_c' ORDER BY 1"
    ) == [("other", True), ("public", True)]


@pytest.mark.parametrize(
    ("given", "environ", "options"),
    [
        (None, {}, migrations.SESSION_OPTIONS),
        (None, {"PGOPTIONS": "  "}, migrations.SESSION_OPTIONS),
        (None, {"PGOPTIONS": " -c a.b=1 "}, migrations.SESSION_OPTIONS + " -c a.b=1"),
        (
            "-c statement_timeout=5s",
            {"PGOPTIONS": "-c a.b=1"},
            migrations.SESSION_OPTIONS + " -c statement_timeout=5s",
        ),
        ("endpoint=ep-x", {}, migrations.SESSION_OPTIONS + " endpoint=ep-x"),
    ],
    ids=["unset", "blank", "pgoptions", "the-urls-over-pgoptions", "neon"],
)
def test_session_options_put_the_users_last(given: str | None, environ: dict, options: str) -> None:
    """libpq reads PGOPTIONS only without an `options` keyword; the user's come last, so
    a setting they name wins over the runner's."""
    assert migrations.session_options(given, environ) == options


def test_new_migration_numbers_in_the_folders_width(tmp_path: Path) -> None:
    first = migrations.new_migration(tmp_path, "add_runs")
    assert first.name == "0001_add_runs.sql"
    assert first.read_text() == migrations.NEW_FILE_HEADER.format(name="add_runs")
    (tmp_path / "000041_old.sql").write_text("")
    (tmp_path / "notes.txt").write_text("")
    second = migrations.new_migration(tmp_path, "idx", transactional=False)
    assert second.name == "000042_idx.sql"
    assert second.read_text().startswith("-- cicd-db: no-transaction\n-- idx: ")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("-x", "migration name '-x' may hold only letters, digits, '_', '.' and '-', and must"),
        ("a b", "migration name 'a b' may hold only letters"),
    ],
    ids=["leading-dash", "space"],
)
def test_new_migration_refuses_bad_names(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        migrations.new_migration(tmp_path, name)


def test_discover_refuses_a_folder_without_migrations(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("notes\n")
    with pytest.raises(ConfigError) as empty:
        migrations.discover(tmp_path)
    assert str(empty.value) == (
        f"migrations folder {tmp_path} holds no <version>_<name>.sql file; add one, or pass the "
        "right folder with --migrations-dir"
    )


def test_new_migration_and_discover_refuse_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        migrations.new_migration(tmp_path / "nope", "x")
    assert str(missing.value) == (
        f"migrations folder {tmp_path / 'nope'} does not exist; create it, or pass --migrations-dir"
    )
    with pytest.raises(ConfigError) as not_there:
        migrations.discover(tmp_path / "nope")
    assert str(not_there.value) == (
        f"migrations folder {tmp_path / 'nope'} does not exist; "
        "pass --migrations-dir DIR or run from the repository root"
    )


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("CREATE INDEX CONCURRENTLY Runs_Idx ON runs (id);", "runs_idx"),
        ("create unique index concurrently if not exists x1 on runs (id);", "x1"),
        ('CREATE INDEX CONCURRENTLY "My ""Idx""" ON runs (id);', 'My "Idx"'),
        ('CREATE INDEX CONCURRENTLY "Runs Idx" ON runs (id);', "Runs Idx"),
        ("SET lock_timeout = 0;\nCREATE INDEX CONCURRENTLY x2 ON runs (id);", "x2"),
        ("CREATE INDEX runs_idx ON runs (id);", None),
        (
            "CREATE INDEX runs_idx ON runs (id);\n-- was: CREATE INDEX CONCURRENTLY x3 ON runs (id);",
            None,
        ),
        (
            "CREATE INDEX CONCURRENTLY /* was: CREATE INDEX CONCURRENTLY old ON runs (id) */"
            " new_idx ON runs (id);",
            "new_idx",
        ),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS -- note\n  x4 ON runs (id);", "x4"),
        ('CREATE INDEX CONCURRENTLY /* a /* nested */ one */ "a--b" ON runs (id);', "a--b"),
    ],
    ids=[
        "folded",
        "unique-if-not-exists",
        "quoted",
        "quoted-space",
        "after-set",
        "not-concurrent",
        "only-in-a-comment-after-it",
        "another-in-a-comment-before-the-name",
        "a-comment-after-if-not-exists",
        "dashes-in-a-quoted-name-after-a-nested-comment",
    ],
)
def test_index_name_as_postgresql_names_it(tmp_path: Path, text: str, name: str | None) -> None:
    path = tmp_path / "0001_idx.sql"
    path.write_text("-- cicd-db: no-transaction\n" + text + "\n")
    assert migrations.index_name(migrations.read(path, 1, "idx")) == name


# A trigger that fails as PostgreSQL fails for want of a privilege, so that the advice
# names the role without a second role; deferred, it fails at COMMIT.
REFUSING_TRIGGER = (
    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN RAISE EXCEPTION 'no rows here' USING ERRCODE = '{code}'; END$$;\n"
)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"0001_first.sql": "SELECT 1/0;\nSELECT 2;\n"},
            "0001_first.sql failed at line 1: division by zero [22012]; it was rolled back; fix "
            "the file and run again",
        ),
        (
            {"0001_plus.sql": "SELECT 1;\nSELECT 2 +\n;\nSELECT 3;\n"},
            '0001_plus.sql failed at line 3: syntax error at or near ";" [42601]; it was rolled '
            "back; fix the file and run again",
        ),
        (
            {
                "0001_decides.sql": "CREATE TABLE t (s text);\n"
                "SELECT set_config('standard_conforming_strings', 'on', false);\n"
                "INSERT INTO t VALUES ('a\\');\nSELECT 1/0;\n"
            },
            "0001_decides.sql failed at line 4: division by zero [22012]; it was rolled back; "
            "fix the file and run again",
        ),
        (
            {
                "0001_after_copy.sql": "CREATE TABLE t (id int);\nCOPY t FROM STDIN;\n1\n\\.\n"
                "SELECT 1;\nSELECT 1/0;\n"
            },
            "0001_after_copy.sql failed at line 6: division by zero [22012]; it was rolled "
            "back; fix the file and run again",
        ),
        (
            {
                "0001_nonstandard.sql": "SET standard_conforming_strings = off;\n"
                "SELECT 'a\\'';\nSELECT 1/0;\n"
            },
            "0001_nonstandard.sql failed at line 3: division by zero [22012]; it was rolled "
            "back; fix the file and run again",
        ),
        (
            {"0001_copy_missing.sql": "SELECT 1;\nCOPY nope FROM STDIN;\n1\n\\.\n"},
            '0001_copy_missing.sql failed at line 2: relation "nope" does not exist [42P01]; it '
            "was rolled back; fix the file and run again",
        ),
        (
            {
                "0001_copy_header.sql": "CREATE TABLE t (id int);\n"
                "COPY t FROM STDIN (FORMAT csv, HEADER MATCH);\n\\.\n"
            },
            "0001_copy_header.sql failed at line 2: column name mismatch in header line field 1: "
            'got null value (""), expected "id" [22P04]; it was rolled back; fix the file and '
            "run again",
        ),
        (
            {
                "0001_copy_refused.sql": "CREATE TABLE t (id int);\n"
                + REFUSING_TRIGGER.format(code="42501")
                + "CREATE TRIGGER refuse BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION refuse();\n"
                "COPY t FROM STDIN;\n1\n\\.\n"
            },
            "0001_copy_refused.sql failed at line 5: no rows here [42501]; it was rolled back; "
            "role {user} lacks that privilege: grant it, or migrate as a role that has it (the "
            "table's or schema's owner)",
        ),
        (
            {
                "0001_commit_refused.sql": "CREATE TABLE t (id int);\n"
                + REFUSING_TRIGGER.format(code="42501")
                + "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON t DEFERRABLE INITIALLY "
                "DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();\nINSERT INTO t VALUES (1);\n"
            },
            "0001_commit_refused.sql failed at its commit: no rows here "
            "[42501]; it was rolled back; role {user} lacks that privilege: grant it, or migrate "
            "as a role that has it (the table's or schema's owner)",
        ),
        (
            {"0001_two_lines.sql": "DO $$BEGIN RAISE EXCEPTION E'first\\nsecond'; END$$;\n"},
            "0001_two_lines.sql failed at line 1: first\nsecond [P0001]; it was rolled back; "
            "fix the file and run again",
        ),
        (
            {
                "0001_outside.sql": "-- cicd-db: no-transaction\n"
                "CREATE INDEX CONCURRENTLY i ON missing (c);\n"
            },
            '0001_outside.sql failed at line 2: relation "missing" does not exist [42P01]; it '
            "was rolled back as far as PostgreSQL allows; fix the file and run again",
        ),
    ],
    ids=[
        "first-statement",
        "syntax-error-at-a-line-start",
        "server-decides-strings",
        "after-copy-data",
        "nonstandard-strings",
        "copy-into-a-missing-table",
        "copy-header-without-data",
        "copy-refused",
        "commit-refused",
        "two-line-message",
        "no-transaction",
    ],
)
def test_failure_names_the_line_and_the_fix(
    database: Database, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    code, out, err = migrate(database, write_migrations(tmp_path, files))
    assert (code, out) == (1, "")
    assert without_escape_warnings(err) == (
        f"error: migration {message.format(user=database.settings.user)}\n"
    )
    assert database.history() == []


def test_new_migration_says_why_it_cannot_write(tmp_path: Path) -> None:
    name = "x" * 300  # a valid name, too long for the file system
    with pytest.raises(ConfigError) as refused:
        migrations.new_migration(tmp_path, name)
    assert str(refused.value) == (
        f"cannot write {tmp_path / f'0001_{name}.sql'}: File name too long; check the folder"
    )


@pytest.mark.parametrize(
    ("before", "line"),
    [("", 4), ("CREATE TABLE c (id int);\nCOPY c FROM STDIN;\n1\n\\.\n", 8)],
    ids=["first-batch", "after-copy-data"],
)
def test_refused_when_the_server_tells_how_the_rest_reads(
    database: Database, tmp_path: Path, before: str, line: int
) -> None:
    """After a statement whose effect on strings only the server knows, the rest is planned
    at run time, and refused there as discover() would refuse it."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_later.sql": f"{before}CREATE TABLE t (s text);\n"
            "SELECT set_config('standard_conforming_strings', 'off', false);\n"
            "INSERT INTO t VALUES ('a\\';');\nCOMMIT;\n"
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert err == (
        f"error: migration file 0001_later.sql, line {line}: COMMIT ends or starts a transaction, and "
        "the runner already runs this file in one; remove it, or make the first line "
        "`-- cicd-db: no-transaction` to run the file outside a transaction\n"
    )
    assert database.history() == []
    assert "t" not in database.tables()


MEBIBYTE = 1 << 20


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"\xe9 SELECT 1;\n", 1),
        ("é;\n".encode(), None),
        (b"SELECT 1;\n-- \xc3", 2),
        (b"-- " + b"x" * (MEBIBYTE - 5) + b"\n\xc3", 2),
        (b"-- " + b"x" * (MEBIBYTE - 5) + "\né\n".encode() + b"SELECT 1;\n-- \xe9\n", 4),
    ],
    ids=[
        "first-byte",
        "valid-from-the-first-byte",
        "cut-short-at-the-end",
        "cut-short-at-one-mebibyte",
        "after-a-character-across-slices",
    ],
)
def test_text_that_is_not_utf8_is_found_wherever_it_is(
    tmp_path: Path, data: bytes, line: int | None
) -> None:
    """Checked a mebibyte at a time: a character may span two slices, the last may end short."""
    (tmp_path / "0001_bytes.sql").write_bytes(data)
    if line is None:
        assert migrations.discover(tmp_path)[0].data == data
        return
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        f"migration file 0001_bytes.sql is not UTF-8 (line {line}); save it as UTF-8"
    )


def test_a_server_reading_strings_the_old_way_is_read_its_way(
    database: Database, tmp_path: Path
) -> None:
    """A database whose default is standard_conforming_strings = off: the file is planned again
    as that server reads it, and an error still names its line."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
            sql.Identifier(database.settings.database)
        )
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_old.sql": "CREATE TABLE t (s text);\nINSERT INTO t VALUES ('a\\'b');\n",
            "0002_fails.sql": "INSERT INTO t VALUES ('c\\'');\nSELECT 1/0;\n",
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert without_escape_warnings(err) == (
        "error: migration 0002_fails.sql failed at line 2: division by zero [22012]; it was "
        "rolled back; fix the file and run again\n"
    )
    assert database.query("SELECT s FROM t") == [("a'b",)]
    assert database.history() == [1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00SELECT 1;\n", "holds a NUL byte (line 1)"),
        (b"\nSELECT 1;\x00\nSELECT 2;\x00\n", "holds a NUL byte (line 2)"),
        (b"\n\xe9\n", "is not UTF-8 (line 2)"),
        (b"-- cicd-db: no-transaction", "is marked no-transaction but holds 0 statements"),
    ],
    ids=["nul-first", "first-of-two-nuls", "not-utf8-after-a-newline", "only-the-marker"],
)
def test_read_refuses_what_postgresql_cannot_take(
    tmp_path: Path, data: bytes, message: str
) -> None:
    (tmp_path / "0001_bytes.sql").write_bytes(data)
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value).startswith(f"migration file 0001_bytes.sql {message}")


@pytest.mark.parametrize(
    "data",
    [
        b"-- cicd-db: no-transaction\r\nCREATE INDEX CONCURRENTLY i ON t (c);\r\n",
        b"-- cicd-db: no-transaction  \nCREATE INDEX CONCURRENTLY i ON t (c);\n",
    ],
    ids=["crlf", "trailing-spaces"],
)
def test_the_marker_line_may_end_in_spaces_or_crlf(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "0001_index.sql"
    path.write_bytes(data)
    assert not migrations.read(path, 1, "index").transactional


def test_the_largest_version_the_history_holds_is_taken(tmp_path: Path) -> None:
    write_migrations(tmp_path, {f"{migrations.MAX_VERSION}_last.sql": "SELECT 1;\n"})
    assert [m.version for m in migrations.discover(tmp_path)] == [2**63 - 1]


@pytest.mark.parametrize(
    ("data", "steps"),
    [
        (
            b"SELECT 1;\nSELECT 2;\n",
            [migrations.Batch(0, 19, 1, standard_strings=True)],
        ),
        (
            b"SET standard_conforming_strings = off;\nSELECT 'a\\'';\nSELECT 1;\n",
            [
                migrations.Batch(0, 38, 1, True, changes_lexing=True, standard_strings_after=False),
                migrations.Batch(39, 62, 2, standard_strings=False),
            ],
        ),
        (
            b"SELECT '" + b"x" * (MEBIBYTE - 10) + b"';\nSELECT 2;\n",
            [
                migrations.Batch(0, MEBIBYTE, 1, standard_strings=True),
                migrations.Batch(MEBIBYTE + 1, MEBIBYTE + 10, 2, standard_strings=True),
            ],
        ),
    ],
    ids=["one-batch", "strings-change-after-the-first", "a-mebibyte-exactly"],
)
def test_plan_stops_a_batch_only_where_it_must(data: bytes, steps: list[migrations.Batch]) -> None:
    assert list(migrations.plan("0001_x.sql", data, transactional=True)) == steps


def test_to_stdout_outside_a_copy_statement_is_not_refused(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_copy.sql": "CREATE TABLE t (id int);\n-- never COPY t TO STDOUT here\n"
            "COPY t FROM STDIN;\n1\n\\.\n-- nor TO STDOUT after it\n"
        },
    )
    assert migrate(database, folder)[0] == 0
    assert database.query("SELECT id FROM t") == [(1,)]


@pytest.mark.parametrize(
    ("deferred", "where"),
    [("", "at line 1"), (" DEFERRABLE INITIALLY DEFERRED", "at its commit")],
    ids=["at-its-statement", "at-commit"],
)
def test_errors_are_read_in_the_databases_encoding(
    server: ConnectionSettings, tmp_path: Path, deferred: str, where: str
) -> None:
    """A LATIN1 database talks LATIN1 to a runner that names no client encoding; a name
    made by a UTF8 client comes back right in the message."""
    name = f"test_latin1_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    latin1 = Database(replace(server, database=name))
    try:
        with psycopg.connect(latin1.settings.conninfo() + " client_encoding=UTF8") as conn:
            conn.execute(
                "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE t (id int, "
                f'CONSTRAINT "ref_café" FOREIGN KEY (id) REFERENCES p{deferred})'
            )
        folder = write_migrations(tmp_path, {"0001_insert.sql": "INSERT INTO t VALUES (1);\n"})
        code, _, err = migrate(latin1, folder)
        assert code == 1
        assert err.startswith(
            f'error: migration 0001_insert.sql failed {where}: insert or update on table "t" '
            'violates foreign key constraint "ref_café" [23503]'
        ), err
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_a_server_that_ends_the_session_is_not_blamed_on_the_file(
    database: Database, tmp_path: Path
) -> None:
    """`embedded stop` (a fast shutdown) ends sessions with the code pg_terminate_backend sends."""
    folder = write_migrations(tmp_path, {"0001_slow.sql": "SELECT pg_sleep(30);\n"})

    def terminate() -> None:
        database.wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
            "AND application_name = 'cicd-db' AND datname = current_database()",
            "the runner never reached its pg_sleep",
        )
        database.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
            "AND application_name = 'cicd-db' AND datname = current_database()"
        )

    stopper = threading.Thread(target=terminate)
    stopper.start()
    code, _, err = migrate(database, folder)
    stopper.join()
    assert code == 1
    assert err.startswith(
        "error: migration 0001_slow.sql failed at line 1: terminating connection due to "
        "administrator command [57P01]; it was rolled back; the connection ended during the "
        "file (the server stopped or restarted, or a statement, perhaps in the file, ended the "
        "session): check the server and the file, then run again\n"
    ), err
    assert "fix the file" not in err
    assert database.history() == []


def test_idle_session_timeout_never_ends_the_lock_session(
    database: Database, tmp_path: Path
) -> None:
    """The lock's own session sits idle while a long file runs."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET idle_session_timeout = '500ms'").format(
            sql.Identifier(database.settings.database)
        )
    )
    folder = write_migrations(
        tmp_path, {"0001_slow.sql": "SELECT pg_sleep(1.2);\nCREATE TABLE after_sleep (i int);\n"}
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1]


def test_a_role_allowed_one_connection_is_told_the_runner_needs_two(
    database: Database, tmp_path: Path
) -> None:
    role = f"one_conn_{uuid.uuid4().hex[:8]}"
    database.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'one-conn-pass' CONNECTION LIMIT 1").format(
            sql.Identifier(role)
        )
    )
    try:
        limited = replace(database.settings, user=role, password="one-conn-pass")
        folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
        code, out, err = migrate(limited, folder)
        assert (code, out) == (1, "")
        assert err.startswith(
            "error: cannot open the runner's second connection, which holds the migration lock: "
        )
        assert err.endswith(
            "the runner needs two connections to the database (a role's CONNECTION LIMIT or "
            "the server's max_connections may be too low)\n"
        )
    finally:
        database.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize(
    "lead",
    [
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n",
        "SET lock_timeout = '1s';\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE;\n",
        "SET LOCAL transaction_isolation = 'serializable';\n",
    ],
    ids=["first", "after-a-set", "as-a-setting"],
)
def test_set_transaction_first_applies_as_psql_applies_it(
    database: Database, tmp_path: Path, lead: str
) -> None:
    """SET TRANSACTION must come before any query; the runner reads its transaction's id
    after it."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_serial.sql": lead + "CREATE TABLE isolation AS "
            "SELECT current_setting('transaction_isolation') AS level;\n"
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.query("SELECT level FROM isolation") == [("serializable",)]
    assert database.history() == [1]


def test_a_killed_runners_work_session_is_waited_for(database: Database, tmp_path: Path) -> None:
    """Killed outright, a runner's lock session ends at once, but its work session may still
    run a statement until the server notices: the next runner waits for it."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    with database.connect() as still_running:
        still_running.execute("SELECT pg_advisory_lock_shared(%s)", [migrations.WORK_KEY])
        code, _, err = migrate(database, folder, "--lock-timeout", "0.3")
        assert code == 1
        assert err.startswith("error: another migration runner held the lock for 0.3 s")
    assert migrate(database, folder)[0] == 0
    assert database.history() == [1]


MENTIONS = {
    "string": "INSERT INTO notes VALUES ('see standard_conforming_strings');\n",
    "comment": "-- standard_conforming_strings stays on\nCREATE TABLE other (id int);\n",
    "identifier": 'CREATE TABLE "standard_conforming_strings" (id int);\n',
    "dollar": "CREATE FUNCTION f() RETURNS text AS $$ SELECT 'standard_conforming_strings' $$ "
    "LANGUAGE sql;\n",
}


@pytest.mark.parametrize("mention", MENTIONS.values(), ids=MENTIONS.keys())
@pytest.mark.parametrize(
    ("later", "what"),
    [
        ("COMMIT;", "COMMIT ends or starts a transaction"),
        ("\\connect other", "psql meta-command \\connect is not SQL"),
        ("SELECT :'DBNAME';", ":'DBNAME' is a psql variable"),
    ],
    ids=["commit", "connect", "variable"],
)
def test_a_mention_of_standard_conforming_strings_stops_no_check(
    database: Database, tmp_path: Path, mention: str, later: str, what: str
) -> None:
    """Only a real SET, RESET or set_config changes how the rest reads: whatever names the
    setting before it, a later statement that may not run is refused before anything runs."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE notes (note text);\n",
            "0002_mentions.sql": f"{mention}{later}\nSELECT 1;\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    line = mention.count("\n") + 1
    assert err.startswith(f"error: migration file 0002_mentions.sql, line {line}: {what}"), err
    assert database.history() == []
    assert database.tables() == set()


@pytest.mark.parametrize("mention", MENTIONS.values(), ids=MENTIONS.keys())
def test_a_no_transaction_file_is_counted_whatever_it_mentions(
    database: Database, tmp_path: Path, mention: str
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_notes.sql": "CREATE TABLE notes (note text);\n",
            "0002_several.sql": "-- cicd-db: no-transaction\n"
            f"{mention}CREATE TABLE two (id int);\nSELECT 1/0;\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert "0002_several.sql is marked no-transaction but holds" in err
    assert database.tables() == set()


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
    ("text", "line", "shown"),
    [
        ("SELECT 1;\nSELECT current_database() = :'DBNAME';\n", 2, ":'DBNAME'"),
        ("CREATE TABLE t (id int);\n\nALTER TABLE t\n  OWNER TO :USER;\n", 3 + 1, ":USER"),
        ('CREATE SCHEMA :"tenant";\n', 1, ':"tenant"'),
        ("SELECT (ARRAY[1,2])[1:VERSION_NUM];\n", 1, ":VERSION_NUM"),
        ("SELECT 1 WHERE :{?DBNAME};\n", 1, ":{?DBNAME}"),
    ],
    ids=["literal", "bare-on-a-later-line", "identifier", "psqls-own-in-a-slice", "test"],
)
def test_a_psql_variable_is_refused_naming_its_line(
    database: Database, tmp_path: Path, text: str, line: int, shown: str
) -> None:
    folder = write_migrations(tmp_path, {"0001_first.sql": "CREATE TABLE a (id int);\n"})
    (folder / "0002_vars.sql").write_text(text)
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert err == (
        f"error: migration file 0002_vars.sql, line {line}: {shown} is a psql variable, and "
        "the runner does not substitute psql variables; write its value instead "
        "(current_database(), current_user or a setting read with current_setting() where it "
        "must be computed); if the colon is SQL, put a space after it\n"
    )
    assert database.tables() == set()


def test_colons_that_are_sql_apply(database: Database, tmp_path: Path) -> None:
    """Casts, `:=`, slices, `json_object('k':v)` where the server has it, and psql's
    variable syntax inside strings, dollar quotes and comments are not refused."""
    [(version,)] = database.query("SELECT current_setting('server_version_num')::int")
    json = "json_object('k':v)" if int(str(version)) >= 160000 else "json_build_object('k', v)"
    folder = write_migrations(
        tmp_path,
        {
            "0001_colons.sql": "CREATE TABLE t AS SELECT '1'::int AS a, (ARRAY[1,2,3])[1:2] AS b,\n"
            "  make_interval(days := 1) AS c, ':DBNAME' AS d, $$:'x'$$ AS e, -- :USER\n"
            f"  (SELECT a[lo:hi] FROM (SELECT ARRAY[1,2,3], 1, 2, 3) AS s (a, lo, hi, v)) AS f,\n"
            f"  (SELECT {json} FROM (SELECT 1) AS s (v)) AS g /* :{{?DBNAME}} */;\n"
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 0, err
    assert database.query("SELECT a, b, d, e, f FROM t") == [(1, [1, 2], ":DBNAME", ":'x'", [1, 2])]


@pytest.mark.parametrize("name", ["add_index.sql", "add_index.SQL", "add_index.sql.sql"])
def test_new_migration_adds_the_extension_once(tmp_path: Path, name: str) -> None:
    assert migrations.new_migration(tmp_path, name).name == "0001_add_index.sql"


def test_new_migration_never_numbers_beyond_bigint(tmp_path: Path) -> None:
    write_migrations(tmp_path, {f"{migrations.MAX_VERSION}_last.sql": "SELECT 1;\n"})
    with pytest.raises(ConfigError) as refused:
        migrations.new_migration(tmp_path, "next")
    assert str(refused.value) == (
        f"cannot number a new migration in {tmp_path}: its newest version, "
        f"{migrations.MAX_VERSION}, leaves none above it that the history can hold (at most "
        f"{migrations.MAX_VERSION}, a bigint); renumber that file lower if it is not applied yet"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"{migrations.MAX_VERSION}_last.sql"
    ]


@pytest.mark.parametrize(
    ("filename", "suggestion"),
    [
        ("\uff10\uff10\uff10\uff11_x.sql", "0001_x.sql"),
        ("\u0660\u0660\u0660\u0662_y.sql", "0002_y.sql"),
        ("1\u0663_z.sql", "13_z.sql"),
    ],
    ids=["full-width", "arabic-indic", "mixed"],
)
def test_versions_are_ascii_digits(tmp_path: Path, filename: str, suggestion: str) -> None:
    (tmp_path / filename).write_text("SELECT 1;\n")
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value).endswith(f"0-9; rename it, for example to {suggestion}")
    # Nor does `migrate new` count it as a version.
    assert migrations.new_migration(tmp_path, "next").name == "0001_next.sql"
