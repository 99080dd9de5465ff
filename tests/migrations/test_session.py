"""The work session: text sent as psql sends it, COPY, batches, and nothing crossing files."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from cicd_db import migrations
from cicd_db.errors import MigrationFailed, UsageError
from cicd_db.migrations.session import Session
from cicd_db.store import Store

from ..fix_cli import Run, migrate, run_cli
from ..fix_db import Database
from ..utils import unscanned, write_migrations
from .shared import THREE, old_strings_by_default, rehearse, without_escape_warnings

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


def test_the_runner_needs_an_autocommit_connection(database: Database) -> None:
    """It opens its own transactions, and a no-transaction file must run outside any."""
    with (
        psycopg.connect(database.settings.conninfo()) as conn,
        pytest.raises(ValueError) as refused,
    ):
        migrations.Runner(conn, [])
    assert str(refused.value) == "the runner needs an autocommit connection"


# -- a connection the caller gives the runner -------------------------------------------


def test_a_callers_open_transaction_is_refused_before_anything_is_touched(
    database: Database, tmp_path: Path
) -> None:
    """The runner opens and commits its own transactions: inside a caller's it would end
    it (the caller's uncommitted rows were rolled back without a word, and the error
    blamed the first file). Refused as the store and retention refuse one, the caller's
    transaction left as it was; a read of the history may still run inside it."""
    folder = write_migrations(tmp_path, THREE)
    database.execute("CREATE TABLE mine (x int)")
    with database.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO mine VALUES (1)")
        runner = migrations.Runner(conn, migrations.discover(folder))
        for call in (runner.apply, runner.rehearse, lambda: runner.baseline(1), runner.drift):
            with pytest.raises(UsageError, match="needs a connection outside any transaction"):
                call()
        assert [m.version for m in runner.pending()] == [1, 2, 3]
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (1,)
        conn.execute("COMMIT")
    assert database.query("SELECT x FROM mine") == [(1,)] and database.history() == []


def test_pipeline_mode_is_refused_by_the_runner_and_the_store(
    database: Database, tmp_path: Path
) -> None:
    """In pipeline mode the calls' statements share one implicit transaction until the
    next sync: a write returned as done was undone by a later refusal."""
    folder = write_migrations(tmp_path, THREE)
    with database.connect() as conn, conn.pipeline():
        runner = migrations.Runner(conn, migrations.discover(folder))
        for call in (runner.apply, runner.status, lambda: runner.apply(dry_run=True)):
            with pytest.raises(UsageError, match="outside pipeline mode"):
                call()
        with pytest.raises(UsageError, match="outside pipeline mode"):
            Store.on(conn)
    assert database.history() == []


def test_the_callers_connection_is_given_back_as_it_was_handed_over(
    database: Database, tmp_path: Path
) -> None:
    """Its row factory (dict_row: the runner read rows by position, KeyError), its
    prepare_threshold (left None for good) and psycopg's record of its prepared
    statements (the runner's reset deallocates them on the server: the caller's next
    prepared query failed, `prepared statement "_pg3_0" does not exist`)."""
    folder = write_migrations(tmp_path, THREE)
    with psycopg.connect(
        database.settings.conninfo(), autocommit=True, prepare_threshold=0, row_factory=dict_row
    ) as conn:
        assert conn.execute("SELECT %s::int AS n", [1]).fetchone() == {"n": 1}  # prepared
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert [result.migration.version for result in runner.apply()] == [1, 2, 3]
        assert runner.rehearse() == [] and runner.drift()[1] == []
        assert (conn.prepare_threshold, conn.row_factory) == (0, dict_row)
        assert conn.execute("SELECT %s::int AS n", [2]).fetchone() == {"n": 2}
    assert database.history() == [1, 2, 3]


def test_each_file_starts_as_psql_starts_it_whatever_the_caller_set(
    database: Database, tmp_path: Path
) -> None:
    """A `SET` the caller made on its connection reached the first file alone (one run
    put its tables in two schemas): every file starts in the session the connection
    began with, as psql's file does, settings from the connection's options included."""
    database.execute("CREATE SCHEMA other")
    folder = write_migrations(
        tmp_path,
        {
            "0001_t1.sql": "DO $$BEGIN IF current_schema() <> 'public' THEN RAISE EXCEPTION "
            "'in %', current_schema(); END IF; END$$;\n"
            "CREATE TABLE t1 AS SELECT current_setting('statement_timeout') AS x;\n",
            "0002_t2.sql": "CREATE TABLE t2 (x int);\n",
            "0003_t3.sql": "CREATE TABLE t3 (x int);\n",
        },
    )
    settings = replace(database.settings, parameters=(("options", "-c statement_timeout=4321"),))
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("SET search_path = other, public")
        conn.execute("SET statement_timeout = '1h'")
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert [r.error for r in runner.rehearse()] == [None, None, None]  # as apply runs them
        conn.execute("SET search_path = other, public")
        runner.apply()
    placed = database.query(
        "SELECT relname, relnamespace::regnamespace::text FROM pg_class "
        "WHERE relname IN ('t1', 't2', 't3') ORDER BY 1"
    )
    assert placed == [("t1", "public"), ("t2", "public"), ("t3", "public")]
    assert database.query("SELECT x FROM t1") == [("4321ms",)]


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


@pytest.mark.slow
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


def test_a_session_authorization_ends_with_its_file(database: Database, tmp_path: Path) -> None:
    """SET SESSION AUTHORIZATION outlives RESET ROLE and RESET ALL: the next file still runs
    as the login role (here its table is the login role's)."""
    role = f"file_owner_{uuid.uuid4().hex[:8]}"
    folder = write_migrations(
        tmp_path,
        {
            "0001_become.sql": f"CREATE ROLE {role};\nGRANT CREATE ON SCHEMA public TO {role};\n"
            f"SET SESSION AUTHORIZATION {role};\nCREATE TABLE public.by_role (id int);\n",
            "0002_after.sql": "CREATE TABLE after (id int);\n",
        },
    )
    try:
        assert migrate(database, folder)[:1] == (0,)
        assert database.query(
            "SELECT relname, pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relname IN ('by_role', 'after') ORDER BY 1"
        ) == [("after", database.settings.user), ("by_role", role)]
    finally:
        database.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


def test_session_objects_do_not_cross_files(database: Database, tmp_path: Path) -> None:
    """Prepared statements and held cursors end with their file, as with one psql per file."""
    twice = "PREPARE p AS SELECT 1;\nDECLARE c CURSOR WITH HOLD FOR SELECT 1;\n"
    folder = write_migrations(tmp_path, {"0001_a.sql": twice, "0002_b.sql": twice})
    assert migrate(database, folder)[:1] == (0,)
    assert database.history() == [1, 2]


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


CHECK, NEEDS = migrations.session.CHECK_INTERVAL, migrations.SESSION_OPTIONS


@pytest.mark.parametrize(
    ("given", "environ", "options"),
    [
        (None, {}, f"{CHECK} {NEEDS}"),
        (None, {"PGOPTIONS": "  "}, f"{CHECK} {NEEDS}"),
        (None, {"PGOPTIONS": " -c a.b=1 "}, f"{CHECK} -c a.b=1 {NEEDS}"),
        (
            "-c statement_timeout=5s",
            {"PGOPTIONS": "-c a.b=1"},
            f"{CHECK} -c statement_timeout=5s {NEEDS}",
        ),
        ("endpoint=ep-x", {}, f"{CHECK} endpoint=ep-x {NEEDS}"),
    ],
    ids=["unset", "blank", "pgoptions", "the-urls-over-pgoptions", "neon"],
)
def test_session_options_put_the_users_between_the_runners(
    given: str | None, environ: dict, options: str
) -> None:
    """libpq reads PGOPTIONS only without an `options` keyword; the user's come after the
    check interval, which they may change, and before what the runner depends on."""
    assert migrations.session_options(given, environ) == options


@pytest.mark.parametrize(
    "options",
    [
        "-c exit_on_error=on",
        "-c idle_in_transaction_session_timeout=1",
        "-c idle_session_timeout=1",
        "-c exit_on_error=on -c idle_in_transaction_session_timeout=1 -c idle_session_timeout=1",
    ],
)
@pytest.mark.parametrize("where", ["PGOPTIONS", "url"])
def test_the_users_options_cannot_take_what_the_runner_depends_on(
    database: Database, tmp_path: Path, options: str, where: str
) -> None:
    """exit_on_error=on (the first read of a new database expects an error), and timeouts
    that would end the runner's session between its round trips: from the user's options
    too, the runner keeps its own. Files apply once, and a failing file names its line."""
    settings = database.settings
    env = {"PGOPTIONS": options}
    if where == "url":
        settings = replace(settings, parameters=(("options", options),))
        env = {}
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\nSELECT pg_sleep(0.01);\n",
            "0002_b.sql": "-- cicd-db: no-transaction\nSELECT pg_sleep(0.01);\n",
        },
    )
    call = ("migrate", "--database-url", settings.url(), "--migrations-dir", str(folder))
    assert run_cli(*call, env=env) == Run(0, ANY, "")
    assert run_cli(*call, env=env) == Run(0, ANY, "")
    write_migrations(folder, {"0003_bad.sql": "CREATE TABLE c (i int);\nSELECT 1/0;\n"})
    failed = run_cli(*call, env=env)
    assert failed.code == 1
    assert failed.err.startswith("error: migration 0003_bad.sql failed at line 2"), failed
    assert database.history() == [1, 2]


def test_a_server_reading_strings_the_old_way_is_read_its_way(
    database: Database, tmp_path: Path
) -> None:
    """A database whose default is standard_conforming_strings = off: the file is planned again
    as that server reads it, and an error still names its line."""
    old_strings_by_default(database)
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


# A DO block's effect on how strings are read is known only once it ran: the runner asks
# the server, and plans the rest of the file again from there, as the server now reads it.
DECIDES = "DO $$BEGIN PERFORM set_config('standard_conforming_strings', '{}', false); END$$;\n"


@pytest.mark.parametrize(
    ("default", "then", "string"),
    [("on", "off", "'a\\'b'"), ("off", "on", "'a\\'")],
    ids=["on-then-off", "off-then-on"],
)
def test_the_rest_of_a_file_is_read_as_a_statement_in_it_left_the_server(
    database: Database, tmp_path: Path, default: str, then: str, string: str
) -> None:
    """Only the rest is sent again from there (the CREATE TABLE runs once), and an error
    after it names its own line."""
    if default == "off":
        old_strings_by_default(database)
    folder = write_migrations(
        tmp_path,
        {
            "0001_decides.sql": "CREATE TABLE t (s text);\n"
            + DECIDES.format(then)
            + f"INSERT INTO t VALUES ({string});\nSELECT 1/0;\n"
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, without_escape_warnings(err)) == (
        1,
        "error: migration 0001_decides.sql failed at line 4: division by zero [22012]; it was "
        "rolled back; fix the file and run again\n",
    )


def test_a_commit_only_the_servers_reading_shows_is_refused_before_the_file_runs(
    database: Database, tmp_path: Path
) -> None:
    """Read with standard strings (as `check` reads it) the COMMIT is inside a string; read
    as this server reads strings it is a statement, which a file may not hold."""
    old_strings_by_default(database)
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\n",
            "0002_hidden.sql": "SELECT 'x\\' AS a, '; COMMIT; SELECT ' AS b, 'q\\' AS c;\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert code == 2
    assert out.startswith("applied 0001_a.sql"), out
    assert err.startswith("error: migration file 0002_hidden.sql, line 1: COMMIT "), err
    assert database.history() == [1]


@pytest.mark.parametrize(
    "lead",
    [
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n",
        "SET lock_timeout = '1s';\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE;\n",
        "SET LOCAL transaction_isolation = 'serializable';\n",
        "SET lock_timeout = '1s';\nSET \"Transaction_Isolation\" = 'serializable';\n",
    ],
    ids=["first", "after-a-set", "as-a-setting", "quoted"],
)
@pytest.mark.parametrize("strings", ["standard", "old"])
def test_set_transaction_first_applies_as_psql_applies_it(
    database: Database, tmp_path: Path, lead: str, strings: str
) -> None:
    """SET TRANSACTION must come before any query; the runner reads its transaction's id
    after it. On a server that reads strings the old way too (standard_conforming_strings
    off by default), where the file is planned again: there, the runner's own query once
    went first ("must be called before any query")."""
    if strings == "old":
        old_strings_by_default(database)
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


GUARD = (
    "CREATE TABLE t (a int);\nINSERT INTO t VALUES (1), (2);\n"
    "CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN\n"
    "  IF NOT starts_with(CURRENT_QUERY(), '/**/') THEN RAISE 'no marker'; END IF;\n"
    "  RETURN NULL;\nEND$$;\n"
    "CREATE TRIGGER guard BEFORE DELETE ON t EXECUTE FUNCTION guard();\n"
)


def test_a_function_that_reads_the_query_text_gets_it_as_psql_sends_it(
    database: Database, tmp_path: Path
) -> None:
    """A trigger made by an earlier run reads current_query(); a later file that never
    names it is sent a statement a query, its block comment first, as psql sends it: in
    a batch, the text would begin with the runner's BEGIN (and the guard refuse it).
    The same in a rehearsal and in the drift check's replay."""
    folder = write_migrations(tmp_path, {"0001_guard.sql": GUARD})
    assert migrate(database, folder)[0] == 0
    (folder / "0002_delete.sql").write_text(
        "SELECT 1;\n-- a line comment, which psql drops\n/**/ DELETE FROM t WHERE a = 1;\n"
    )
    assert rehearse(database, folder)[0] == 0
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.query("SELECT a FROM t") == [(2,)]
    with database.connect() as conn:
        assert migrations.Runner(conn, migrations.discover(folder)).drift() == (2, [])


@pytest.mark.parametrize(
    ("function", "reads"),
    [
        ("", False),  # the server's own functions do not count (current_query() itself)
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", False),
        ("CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN "
         "Current_Query(); END$$", True),
        ("CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT current_query(); "
         "END", True),
        ("CREATE TABLE audit (q text DEFAULT current_query())", True),
        ("CREATE TABLE t (a int); CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS "
         "$$BEGIN RETURN NULL; END$$; CREATE TRIGGER g BEFORE DELETE ON t FOR EACH ROW "
         "WHEN (current_query() LIKE '/**/%') EXECUTE FUNCTION f()", True),
    ],
    ids=["none", "another", "plpgsql", "sql-standard-body", "column-default", "trigger-when"],
)  # fmt: skip
def test_which_functions_read_the_query_text(
    database: Database, function: str, reads: bool
) -> None:
    if function:
        database.execute(function)
    with database.connect() as conn:
        session = Session(conn)
        session.notice()
        assert session.query_text_read is reads


SETS_DEFAULTS = {
    "0001_defaults.sql": "CREATE SCHEMA app;\nCREATE TABLE public.n (a text);\n"
    "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET standard_conforming_strings = off', "
    "current_database()); EXECUTE format('alter  database %I set search_path = app, public', "
    "current_database()); END$$;\n",
    "0002_after.sql": "INSERT INTO n VALUES ('a\\\\b');\nCREATE TABLE t (a int);\n",
    "0003_last.sql": "CREATE TABLE u (a int);\n",
}


@pytest.mark.parametrize("runs", [1, 2], ids=["one-run", "a-run-each"])
def test_files_after_one_that_changes_the_databases_settings_start_as_psql_starts_them(
    database: Database, tmp_path: Path, runs: int
) -> None:
    """A file that sets the database's settings (here through EXECUTE): psql starts a
    session for each file, which takes them; so does the runner for the files after it,
    and they apply the same whether they come in its run or a later one. The connection
    the runner was given is its own again after the run, and no other stays open."""
    folder = write_migrations(tmp_path, SETS_DEFAULTS)
    if runs == 2:  # as two `migrate up`, each with its connection
        with database.connect() as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply(target=1)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply()
        assert [row.state for row in runner.status()] == ["applied"] * 3
        # A closed connection's server process ends a moment after the close: wait for it.
        database.wait_for(
            "SELECT WHERE NOT EXISTS (SELECT FROM pg_stat_activity WHERE datname = "
            f"current_database() AND pid NOT IN (pg_backend_pid(), {conn.info.backend_pid}))",
            "no connection but the one the runner was given stays open",
            timeout=10,
        )
    assert database.query("SELECT a FROM public.n") == [("a\\b",)]
    assert database.query(
        "SELECT relnamespace::regnamespace::text, relname FROM pg_class "
        "WHERE relname IN ('t', 'u') ORDER BY relname"
    ) == [("app", "t"), ("app", "u")]


def test_under_a_repeatable_read_default_the_snapshot_is_the_files_first_querys(
    database: Database, tmp_path: Path
) -> None:
    """A database whose transactions are repeatable read by default: psql's snapshot is
    taken by the file's first query, after its LOCK waited for a writer to commit, so it
    reads what that writer wrote; the runner's own first query goes after the LOCK too
    (before, it took the snapshot itself, and the file read the value before the write)."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'").format(
            sql.Identifier(database.settings.database)
        )
    )
    database.execute("CREATE TABLE acct (v int); INSERT INTO acct VALUES (1)")
    database.execute("CREATE TABLE log (v int)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_read.sql": "LOCK TABLE acct IN EXCLUSIVE MODE;\nINSERT INTO log SELECT v FROM acct;\n"
        },
    )
    runs: list[Run] = []
    with database.connect() as writer:
        writer.execute("BEGIN")
        writer.execute("UPDATE acct SET v = 2")
        runner = threading.Thread(target=lambda: runs.append(migrate(database, folder)))
        runner.start()
        database.wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%LOCK TABLE acct%'",
            "the file waits for the writer's lock",
        )
        writer.execute("COMMIT")
        runner.join(60)
    assert [run.code for run in runs] == [0]
    assert database.query("SELECT v FROM log") == [(2,)]


def test_a_role_setting_that_makes_sessions_another_role_leaves_the_runner_its_own(
    database: Database, tmp_path: Path
) -> None:
    """`ALTER ROLE ... SET role`: each new session (psql's for each file, the runner's
    after the file) runs as that role, and so do the files after it; the runner's own
    statements on its history run as the login role, which owns them."""
    me = database.query("SELECT current_user")[0][0]
    other = f"other_{uuid.uuid4().hex[:8]}"
    database.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(other)))
    database.execute(
        sql.SQL("GRANT CREATE ON SCHEMA public TO {}; GRANT {} TO {}").format(
            sql.Identifier(other), sql.Identifier(other), sql.Identifier(str(me))
        )
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_as_other.sql": "DO $$BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET "
            f"role = {other}', current_user, current_database()); END$$;\n",
            "0002_after.sql": "CREATE TABLE t (a int);\n",
        },
    )
    try:
        code, _, err = migrate(database, folder)
        assert (code, err) == (0, "")
        assert database.query("SELECT tableowner FROM pg_tables WHERE tablename = 't'") == [
            (other,)
        ]
    finally:
        database.execute(  # (this session, too, began as the other role)
            sql.SQL("SET ROLE NONE; ALTER ROLE {} IN DATABASE {} RESET role").format(
                sql.Identifier(str(me)), sql.Identifier(database.settings.database)
            )
        )
        database.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(other)))
        database.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))


# What a file's text names that makes the runner start a new session after it, as psql
# starts one for each file; and what does not (a new session costs a connection and a
# login: pg_dump's own header, which every dumped file starts with, must not cost one).
AFTER_IT = {
    "pg_dump's header": ("SELECT pg_catalog.set_config('search_path', '', false);\n", False),
    "a setting of PostgreSQL's": ("SET statement_timeout = 0;\n", False),
    "a user's setting by set_config": ("SELECT set_config('app.tenant', 'a', false);\n", True),
    "a user's setting by SET": ("SET app.tenant = 'a';\n", True),
    "a name computed": (
        "DO $$BEGIN PERFORM set_config(lower('APP.X'), 'a', false); END$$;\n",
        True,
    ),
    "a name joined": ("SELECT set_config('app' || '.x', 'a', false);\n", True),
    "a comment on recursion": ("-- prevent trigger recursion\nSELECT 1;\n", False),
    "the database's settings": (
        "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET work_mem = ''8MB''', "
        "current_database()); END$$;\n",
        True,
    ),
    "a library loaded": ("LOAD 'plpgsql';\n", True),
    "the random seed": ("SELECT setseed(0.5);\n", True),
    # What only a session's end gives back (not run: the words are enough).
    **{
        f"a call of {name}": (
            f"DO $$BEGIN IF false THEN PERFORM {name}('x'); END IF; END$$;\n",
            True,
        )
        for name in (
            "dblink_connect",
            "pg_create_physical_replication_slot",
            "pg_replication_origin_session_setup",
            "pg_backup_start",
            "pg_start_backup",
        )
    },
    "an event trigger changed": (
        "CREATE FUNCTION noop() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$f$BEGIN END$f$;\nCREATE EVENT TRIGGER noop ON ddl_command_end EXECUTE FUNCTION noop();\n"
        "ALTER EVENT TRIGGER noop DISABLE;\n",
        True,
    ),
}


@pytest.mark.parametrize("name", list(AFTER_IT))
def test_which_files_a_new_session_follows(database: Database, tmp_path: Path, name: str) -> None:
    """Each file writes the server process it runs in: a new one after a file whose
    text names what only a new session is rid of, the same one otherwise."""
    text, renewed = AFTER_IT[name]
    database.execute("CREATE TABLE ran_in (v int PRIMARY KEY, pid int)")
    record = "INSERT INTO public.ran_in VALUES ({v}, pg_catalog.pg_backend_pid());\n"
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": record.format(v=1),
            "0002_named.sql": text + record.format(v=2),
            "0003_after.sql": record.format(v=3),
        },
    )
    with database.connect() as conn:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    pids = [pid for _, pid in database.query("SELECT v, pid FROM ran_in ORDER BY v")]
    assert pids[0] == pids[1], pids  # the file itself runs where the one before did
    assert (pids[2] != pids[1]) is renewed, pids
