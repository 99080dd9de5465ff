"""A failing file told in one line: its line, what PostgreSQL said, what to do (the line
and the setting behind it are found by diagnose.py, the words are failures.py's)."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cicd_db import errors
from cicd_db.settings import ConnectionSettings

from ..fix_cli import migrate
from ..fix_db import Database
from ..utils import write_migrations
from .shared import without_escape_warnings

# A trigger that fails as PostgreSQL fails for want of a privilege, so that the advice
# names the role without a second role; deferred, it fails at COMMIT.
REFUSING_TRIGGER = (
    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN RAISE EXCEPTION 'no rows here' USING ERRCODE = '{code}'; END$$;\n"
)


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


def test_permission_denied_names_the_privilege(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "INSERT INTO locked VALUES (1);\n"})
    with database.new_role() as limited:
        role = limited.user
        database.execute(
            sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(database.settings.database)
            )
        )
        code, _, err = migrate(limited, folder)
        assert code == 2  # a right to give: running again would meet it again
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
            # One line still: the server's newline is written as repr writes it.
            "0001_two_lines.sql failed at line 1: first\\nsecond [P0001]; it was rolled back; "
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
@pytest.mark.parametrize("first", [True, False], ids=["first", "after-a-file"])
def test_failure_names_the_line_and_the_fix(
    database: Database, tmp_path: Path, files: dict[str, str], message: str, first: bool
) -> None:
    """Told the same run first or after another file (whose session is reset between)."""
    if not first:
        files = {"0001_before.sql": "CREATE TABLE before_it (id int);\n"} | {
            name.replace("0001_", "0002_"): text for name, text in files.items()
        }
        message = message.replace("0001_", "0002_")
    code, out, err = migrate(database, write_migrations(tmp_path, files))
    assert code == 1
    assert ("0001_before.sql" in out) != first, out
    assert without_escape_warnings(err) == (
        f"error: migration {message.format(user=database.settings.user)}\n"
    )
    assert database.history() == ([] if first else [1])


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


class _Cuttable:
    """A TCP relay to the test server whose connections can all be dropped at once, with
    no word from the server: as a crash or an immediate shutdown ends them."""

    def __init__(self, server: ConnectionSettings):
        self.target = (server.host, server.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ends: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                self.ends += [client, upstream]
                for one, other in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._carry, args=(one, other), daemon=True).start()

    @staticmethod
    def _carry(one: socket.socket, other: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := one.recv(65536):
                other.sendall(data)

    def cut(self) -> None:
        """End every connection both ways at once (no server's goodbye), and take no more."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for end in self.ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


@pytest.mark.parametrize("transactional", [True, False], ids=["in-a-transaction", "no-transaction"])
def test_a_connection_lost_without_a_word_names_the_file_and_what_is_known(
    database: Database, tmp_path: Path, transactional: bool
) -> None:
    """Found in review (`pg_ctl restart -m immediate`): a connection that drops with no
    message from the server gave "database error: consuming input failed: ...", naming
    no file and not what became of it."""
    head = "" if transactional else "-- cicd-db: no-transaction\n"
    folder = write_migrations(
        tmp_path,
        {"0001_first.sql": "CREATE TABLE t (id int);\n", "0002_slow.sql": head + "SELECT pg_sleep(30);\n"},
    )  # fmt: skip
    relay = _Cuttable(database.settings)

    def cut() -> None:
        database.wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
            "AND application_name = 'cicd-db' AND datname = current_database()",
            "the runner never reached its pg_sleep",
        )
        relay.cut()

    cutter = threading.Thread(target=cut)
    cutter.start()
    code, out, err = migrate(replace(database.settings, host="127.0.0.1", port=relay.port), folder)
    cutter.join()
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the connection was lost during 0002_slow.sql"
    ), err
    assert ("a no-transaction file" in err) != transactional
    assert "nothing after it ran; run again once the server is back" in err
    assert "applied 0001_first.sql" in out
    database.wait_for(
        "SELECT 1 WHERE NOT EXISTS (SELECT FROM pg_stat_activity WHERE "
        "application_name = 'cicd-db' AND datname = current_database())",
        "the runner's sessions outlived their connections",
    )
    assert database.history() == [1]


@pytest.mark.parametrize(
    ("source", "undo"),
    [
        ("database", 'ALTER DATABASE "my db" RESET statement_timeout'),
        ("user", 'ALTER ROLE "Mé" RESET statement_timeout'),
        ("database user", 'ALTER ROLE "Mé" IN DATABASE "my db" RESET statement_timeout'),
        ("global", "ALTER ROLE ALL RESET statement_timeout"),
        ("configuration file", "postgresql.conf or ALTER SYSTEM"),
        ("command line", "the server's command line"),
        ("client", "the URL's, the service's or PGOPTIONS"),
        ("default", None),
        ("session", "ALTER EVENT TRIGGER ... DISABLE"),  # not the file's: a login trigger's
    ],
)
def test_a_setting_is_told_by_where_pg_settings_says_it_was_set(
    source: str, undo: str | None
) -> None:
    """Each source pg_settings reports: where it was set and what undoes it, with the
    names as SQL writes them; a default is nobody's to undo."""
    advice = errors.setting_advice(
        "statement_timeout", "300ms", source, database='"my db"', role='"Mé"'
    )
    if undo is None:
        assert advice is None
        return
    assert advice is not None and advice.startswith("statement_timeout is 300ms ")
    assert undo in advice, advice


def test_a_comment_never_closed_at_the_files_end_names_its_line(
    database: Database, tmp_path: Path
) -> None:
    """psql sends what follows the last semicolon at the file's end, and PostgreSQL
    refuses a comment that is never closed; the runner sends it too, and names its line."""
    folder = write_migrations(
        tmp_path,
        {"0001_tail.sql": "CREATE TABLE ok (id int);\n\n/* the rest is\nnever closed\n"},
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith(
        "error: migration 0001_tail.sql failed at line 3: unterminated /* comment"
    ), err
    assert database.tables() == set()
    assert database.history() == []


@pytest.mark.parametrize(
    "statement",
    ["SET transaction_read_only = on", "SET TRANSACTION READ ONLY"],
    ids=["set", "set-transaction"],
)
def test_a_file_that_makes_its_transaction_read_only_is_told_why_it_cannot_be_recorded(
    database: Database, tmp_path: Path, statement: str
) -> None:
    """psql applies it (its commit writes nothing); the runner's history row, written in
    the file's transaction, cannot be: refused, with the cause, not 'fix the file' alone."""
    folder = write_migrations(
        tmp_path, {"0001_ro.sql": f"CREATE TABLE t (a int);\nSELECT 1;\n{statement};\n"}
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err == (
        "error: migration 0001_ro.sql failed at its commit: cannot execute INSERT in a "
        "read-only transaction [25006]; it was rolled back; the file made its transaction "
        "read-only (SET TRANSACTION READ ONLY, SET transaction_read_only), and cicd-db "
        "records a file in the file's own transaction: remove that from the file\n"
    )
    assert (database.tables(), database.history()) == (set(), [])


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1;\n",
        "SELECT pg_catalog.current_setting('transaction_read_only');\n",
        "SHOW default_transaction_read_only;\n",
    ],
    ids=["names-nothing", "reads-it", "shows-it"],
)
def test_a_read_only_default_outside_the_file_is_named_whatever_the_file_reads(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Read-only from the connection's options, not the file: named so, also when the
    file reads the setting's value (it was blamed on the file, which only named it)."""
    folder = write_migrations(tmp_path, {"0001_first.sql": "CREATE TABLE t (a int);\n"})
    assert migrate(database, folder).code == 0  # the history is there: the file's commit fails
    write_migrations(folder, {"0002_ro.sql": text})
    monkeypatch.setenv("PGOPTIONS", "-c default_transaction_read_only=on")
    code, _, err = migrate(database, folder)
    assert code == 1
    assert "the file made its transaction read-only" not in err, err
    assert "default_transaction_read_only is on in the connection's options" in err, err
    monkeypatch.delenv("PGOPTIONS")
    assert migrate(database, folder).code == 0


def test_a_file_whose_objects_would_go_to_pg_catalog_is_told_the_search_path_not_a_grant(
    database: Database, tmp_path: Path
) -> None:
    """Under a hardened `search_path = pg_catalog, public`, a file's unplaced CREATE TABLE
    goes to pg_catalog and is refused: the advice was to grant CREATE on pg_catalog
    (helper-119); it names the search_path and the file's fix."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET search_path = pg_catalog, public").format(
            sql.Identifier(database.name)
        )
    )
    folder = write_migrations(tmp_path, {"0001_t.sql": "CREATE TABLE t (x int);\n"})
    code, out, err = migrate(database, folder)
    assert (code, out) == (1, "")
    assert err.startswith("error: migration 0001_t.sql failed at line 1: permission denied "), err
    assert err.endswith(
        "; objects a file does not name a schema for are made in the first schema the "
        "search_path names, here pg_catalog, where no role may make them: name their "
        "schema in the file (public.t), or set a search_path that names it first\n"
    ), err
    placed = write_migrations(
        tmp_path / "placed", {"0001_t.sql": "CREATE TABLE public.t (x int);\n"}
    )
    assert migrate(database, placed).code == 0


def test_a_history_dropped_where_the_role_may_not_make_it_again_says_so_and_the_right(
    database: Database, tmp_path: Path
) -> None:
    """A no-transaction file dropped the history, and the role may no longer create its
    schema: the runner cannot put it back. It says so with the cause and the right to
    give (the refusal, exit 2 of its own since this session, had fallen into the branch
    for a history renamed in place, and its cause was lost)."""
    name = sql.Identifier(database.settings.database)
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "SELECT 1;\n",
            "0002_drop.sql": "-- cicd-db: no-transaction\nDROP SCHEMA cicd_db CASCADE;\n",
        },
    )
    with database.new_role() as limited:
        role = limited.user
        database.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(name, sql.Identifier(role))
        )
        assert migrate(limited, folder, "up", "--target", "1").code == 0
        database.execute(
            sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}, PUBLIC").format(
                name, sql.Identifier(role)
            )
        )
        code, _, err = migrate(limited, folder)
        assert code == 1, err
        assert (
            "and the runner could not make it again (cannot create the migration history "
            "cicd_db.cicd_db_schema_history: permission denied for database"
        ) in err, err
        assert "once the right is given" in err


# Failures whose cause the runner tells by PostgreSQL's words as well as by its SQLSTATE:
# (what the database is left with, the files, what the advice must say).
TOLD_IN_ANY_LANGUAGE = {
    "statement-timeout": (
        "ALTER DATABASE {db} SET statement_timeout = '300ms'",
        {"0001_slow.sql": "CREATE TABLE t (id int);\nSELECT pg_sleep(0.6);\n"},
        "statement_timeout is 300ms for database ",
    ),
    "search-path-empty": (
        "ALTER DATABASE {db} SET search_path = ''",
        {"0001_t.sql": "CREATE TABLE t (id int);\n"},
        'search_path is "" for database ',
    ),
    "search-path-missing": (
        "ALTER DATABASE {db} SET search_path = no_such_schema",
        {"0001_t.sql": "CREATE TABLE t (id int);\n"},
        "search_path is no_such_schema for database ",
    ),
    "pg-catalog-first": (
        "ALTER DATABASE {db} SET search_path = pg_catalog, public",
        {"0001_t.sql": "CREATE TABLE t (id int);\n"},
        "here pg_catalog, where no role may make them",
    ),
    "plpgsql-dropped": (
        "SELECT 1",
        {"0001_drop.sql": "-- cicd-db: no-transaction\nDROP EXTENSION plpgsql;\n"},
        "the runner's checks of the history are written in PL/pgSQL",
    ),
    "copy-data-line": (
        "SELECT 1",
        {"0001_copy.sql": "CREATE TABLE t (id int);\nCOPY t FROM STDIN;\n1\nx\n\\.\n"},
        "0001_copy.sql failed at line 4: ",
    ),
}


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize("case", list(TOLD_IN_ANY_LANGUAGE))
def test_a_cause_told_by_the_servers_words_is_told_in_any_language(
    database: Database, tmp_path: Path, case: str, language: str
) -> None:
    """Under a translated lc_messages (a server made in a German locale), these causes
    were told as "fix the file" (a database's setting), or a COPY's data line as its
    first line: the runner read PostgreSQL's English words. The same advice now, in
    English and in German (on a server with translations: Debian's, in CI)."""
    setup, files, advice = TOLD_IN_ANY_LANGUAGE[case]
    if language == "de":
        database.in_german()
    database.execute(
        sql.SQL(setup.replace("{db}", "{}")).format(sql.Identifier(database.name))
        if "{db}" in setup
        else setup
    )
    code, _, err = migrate(database, write_migrations(tmp_path, files))
    assert code == 1, err
    assert advice in err, err
    assert "division" not in err and "Traceback" not in err


@pytest.mark.parametrize("language", ["en", "de"])
def test_a_schema_a_file_names_that_does_not_exist_is_the_files_whatever_the_search_path(
    database: Database, tmp_path: Path, language: str
) -> None:
    """Under `search_path = ''` (a hardened database), a file that names a schema there is
    not (`app.t`) gets the same SQLSTATE as one with no schema to create in; the first is
    the file's to fix, and was blamed on the search path in German (the review)."""
    if language == "de":
        database.in_german()
    database.execute(
        sql.SQL("ALTER DATABASE {} SET search_path = ''").format(sql.Identifier(database.name))
    )
    folder = write_migrations(tmp_path, {"0001_t.sql": "CREATE TABLE app.t (id int);\n"})
    code, _, err = migrate(database, folder)
    assert code == 1, err
    assert err.endswith("it was rolled back; fix the file and run again\n"), err


@pytest.mark.parametrize("name", ['"a,b"', '"a, 7b"', "plain"])
def test_a_copys_bad_data_line_is_named_whatever_the_tables_name(
    database: Database, tmp_path: Path, name: str
) -> None:
    """PostgreSQL names the table unquoted in a COPY's context (`COPY a, 7b, line 4`): a
    name holding a comma and a number was read for the line (line 9 of a 5-line file)."""
    text = f"CREATE TABLE {name} (id int);\nCOPY {name} FROM STDIN;\n1\nx\n\\.\n"
    folder = write_migrations(tmp_path, {"0001_copy.sql": text})
    code, _, err = migrate(database, folder)
    assert code == 1, err
    assert "0001_copy.sql failed at line 4: " in err, err
