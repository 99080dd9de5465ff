"""The history: one fixed place whatever search_path says; reading, moving an older one,
refusals, and status.

The runner's history is `cicd_db.cicd_db_schema_history`, found by catalog and never
through search_path. A migration may change search_path for the next run (a schema
named after the login role, ALTER DATABASE or ALTER ROLE ... SET search_path), or
drop and recreate `public` as dumps do: the next run still finds every file it
applied and applies none of them again. `status` names each disagreement, and its
exit code agrees with what `up` refuses.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq, sql

from cicd_db import migrations
from cicd_db.errors import ConfigError
from cicd_db.migrations import finding, history, history_table
from cicd_db.settings import ConnectionSettings

from ..fix_cli import migrate, run_cli
from ..fix_db import Database
from ..utils import examples, write_migrations
from .shared import THREE

# Each moves where an unqualified name goes for the next run's session.
MOVES_THE_SEARCH_PATH = {
    "login-role-schema": "CREATE SCHEMA IF NOT EXISTS AUTHORIZATION CURRENT_USER;\n",
    "alter-database": (
        "CREATE SCHEMA other;\n"
        "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = other, public', "
        "current_database()); END$$;\n"
    ),
    "alter-role": (
        "CREATE SCHEMA other;\n"
        "DO $$BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = other', "
        "current_user, current_database()); END$$;\n"
    ),
    "set-in-the-file": "CREATE SCHEMA other;\nSET search_path = other;\n",
    "recreate-public": "DROP SCHEMA public CASCADE;\nCREATE SCHEMA public;\n",
}


# A balance that tells how often 0001 ran: 100 after once, 150 after twice.
ACCOUNT = (
    "CREATE TABLE IF NOT EXISTS account (id int PRIMARY KEY, balance int NOT NULL);\n"
    "INSERT INTO account VALUES (1, 100) ON CONFLICT (id) DO UPDATE "
    "SET balance = account.balance + 50;\n"
)


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


@pytest.mark.parametrize("direction", ["lf-to-crlf", "crlf-to-lf", "bom-lf-to-crlf"])
def test_an_applied_file_with_its_line_endings_converted_is_the_same_file(
    database: Database, tmp_path: Path, direction: str
) -> None:
    """A checkout on Windows turns LF into CRLF (and one elsewhere back): the history
    still knows the file, with a byte order mark too; a change besides the line
    endings is still an edit."""
    lf = "CREATE TABLE pets (id int);\nCREATE TABLE toys (\n  id int\n);\n"
    if direction.startswith("bom-"):
        lf = "\ufeff" + lf
    applied, converted = (
        (lf, lf.replace("\n", "\r\n"))
        if direction.endswith("lf-to-crlf")
        else (lf.replace("\n", "\r\n"), lf)
    )
    folder = tmp_path / "migrations"
    folder.mkdir()
    path = folder / "0001_pets.sql"
    path.write_bytes(applied.encode())
    assert migrate(database, folder).code == 0
    path.write_bytes(converted.encode())
    result = migrate(database, folder, "status", "--exit-code")
    assert (result.code, result.err) == (0, ""), result
    assert "edited" not in result.out
    assert migrate(database, folder).code == 0
    path.write_bytes(converted.replace("toys", "Toys").encode())
    result = migrate(database, folder)
    assert result.code == 2
    assert "was edited after it was applied" in result.err


def test_an_applied_file_that_names_its_earlier_checksum_is_the_same_file(
    database: Database, tmp_path: Path
) -> None:
    """An edit that changes nothing the file makes (here a comment; in the repository's
    0029 a lock): the databases that applied the earlier text have applied the file when
    its opening comments name that text's checksum, and the files after it apply. The
    line below the first statement, or naming another text, leaves it an edit."""
    earlier = "CREATE TABLE pets (id int);\n"
    folder = write_migrations(tmp_path, {"0001_pets.sql": earlier})
    assert migrate(database, folder).code == 0
    checksum = hashlib.sha256(earlier.encode()).hexdigest()
    line = f"-- cicd-db: earlier-checksum {checksum}\n"
    path = folder / "0001_pets.sql"
    for edited in (
        f"-- Mended.\n{earlier}{line}",
        f"-- Mended.\n{line.replace(checksum[:8], 'deadbeef')}{earlier}",
    ):
        path.write_text(edited)
        result = migrate(database, folder)
        assert (result.code, result.err) == (
            2,
            "error: migration 0001_pets.sql was edited after it was applied; restore the "
            "applied version from version control and put the change in a new migration\n",
        )
    path.write_text(f"-- Mended: it says why.\n{line}{earlier}")
    result = migrate(database, folder, "status", "--exit-code")
    assert (result.code, result.err) == (0, ""), result
    assert "edited" not in result.out
    (folder / "0002_toys.sql").write_text("CREATE TABLE toys (id int);\n")
    assert migrate(database, folder).code == 0
    # The history keeps what was applied: the earlier text's checksum.
    assert database.query(
        "SELECT version, checksum FROM cicd_db.cicd_db_schema_history ORDER BY version"
    ) == [(1, checksum), (2, hashlib.sha256(b"CREATE TABLE toys (id int);\n").hexdigest())]


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
    # The file of an applied version under another name: renamed (mutation testing
    # found no test naming this state).
    (folder / "0001_people.sql").rename(folder / "0001_persons.sql")
    with database.connect() as conn:
        rows = migrations.Runner(conn, migrations.discover(folder)).status()
    assert (rows[1].version, rows[1].name, rows[1].state) == (1, "persons", "renamed")


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


@pytest.mark.parametrize("move", MOVES_THE_SEARCH_PATH.values(), ids=MOVES_THE_SEARCH_PATH.keys())
def test_a_search_path_a_file_leaves_never_moves_the_history(
    database: Database, tmp_path: Path, move: str
) -> None:
    folder = write_migrations(
        tmp_path,
        {"0001_account.sql": ACCOUNT, "0002_move.sql": move, "0003_after.sql": "SELECT 1;\n"},
    )
    assert migrate(database, folder, "up", "--target", "2")[0] == 0
    for _ in range(2):
        code, out, err = migrate(database, folder)
        assert (code, err) == (0, ""), err
    assert "applied 0003_after.sql" not in out  # the second of the two runs had nothing to do
    assert database.history() == [1, 2, 3]
    if database.query("SELECT to_regclass('public.account')") != [(None,)]:
        assert database.query("SELECT balance FROM public.account") == [(100,)]
    tables = database.query(
        "SELECT count(*) FROM pg_class WHERE relname = 'cicd_db_schema_history' AND relkind = 'r'"
    )
    assert tables == [(1,)]
    code, out, _ = migrate(database, folder, "status", "--exit-code")
    assert code == 0
    assert out.count(" applied ") == 3


def test_the_balance_is_added_once(database: Database, tmp_path: Path) -> None:
    """The whole story of the report: a file that moved search_path, an UPDATE run twice."""
    folder = write_migrations(
        tmp_path,
        {"0001_account.sql": ACCOUNT, "0002_move.sql": MOVES_THE_SEARCH_PATH["login-role-schema"]},
    )
    for _ in range(3):
        assert migrate(database, folder)[0] == 0
    assert database.query("SELECT balance FROM public.account") == [(100,)]


def test_an_older_history_is_moved_into_place_once_and_said(
    database: Database, tmp_path: Path
) -> None:
    """Releases before this one kept the history in the first schema of the search_path."""
    folder = write_migrations(
        tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_b.sql": "SELECT 1;\n"}
    )
    assert migrate(database, folder, "up", "--target", "1")[0] == 0
    database.execute(
        "ALTER TABLE cicd_db.cicd_db_schema_history SET SCHEMA public; DROP SCHEMA cicd_db"
    )
    code, out, _ = migrate(database, folder, "status")  # reads it where it is, moves nothing
    assert code == 0
    assert out.splitlines()[1].split()[:3] == ["1", "a", "applied"]
    assert database.query("SELECT to_regclass('public.cicd_db_schema_history')") == [
        ("cicd_db_schema_history",)
    ]
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == [
        "  moved the migration history from public.cicd_db_schema_history to "
        "cicd_db.cicd_db_schema_history, where no search_path can hide it",
        out.splitlines()[1],
    ]
    assert out.splitlines()[1].startswith("applied 0002_b.sql")
    assert database.history() == [1, 2]
    assert database.query("SELECT to_regclass('public.cicd_db_schema_history')") == [(None,)]
    assert "moved" not in migrate(database, folder)[1]


def test_two_histories_are_refused_naming_both(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    assert migrate(database, folder)[0] == 0
    database.execute(
        "CREATE TABLE public.cicd_db_schema_history (LIKE cicd_db.cicd_db_schema_history)"
    )
    for args in [(), ("status",), ("check",)]:
        code, out, err = migrate(database, folder, *args)
        assert (code, out) == (2, "")
        assert err == (
            "error: this database has 2 migration histories, cicd_db.cicd_db_schema_history "
            "(1 row), public.cicd_db_schema_history (0 rows); one database holds one history: "
            "keep the one that matches the schema (compare them with `SELECT * FROM` each; an "
            "empty one is most likely left by an older release of cicd-db), drop the others, "
            "and run again\n"
        )


def test_two_histories_are_refused_whichever_the_catalog_lists_first(
    database: Database, tmp_path: Path
) -> None:
    """The one-query read takes the history only when it is the one table of its name:
    here ours comes first in the catalog (its schema is the older), the other after it."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    assert migrate(database, folder)[0] == 0
    database.execute(
        "CREATE SCHEMA later; "
        "CREATE TABLE later.cicd_db_schema_history (LIKE cicd_db.cicd_db_schema_history)"
    )
    for args in [("status",), ("check",)]:
        code, out, err = migrate(database, folder, *args)
        assert (code, out) == (2, ""), args
        assert err.startswith(
            "error: this database has 2 migration histories, cicd_db.cicd_db_schema_history "
            "(1 row), later.cicd_db_schema_history (0 rows); "
        ), err


def test_a_file_that_drops_the_history_is_rolled_back_and_says_so(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\n",
            "0002_drop.sql": "CREATE TABLE b (i int);\nDROP SCHEMA cicd_db CASCADE;\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert code == 1
    assert out.startswith("applied 0001_a.sql")
    assert err == (
        "error: migration 0002_drop.sql dropped or moved the migration history "
        "(cicd_db.cicd_db_schema_history); it was rolled back, and it is not recorded; remove "
        "that from the file, check the database, and run again\n"
    )
    assert database.history() == [1]
    assert database.tables() == {"a"}


def test_history_reads_inside_a_callers_transaction(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    with database.connect() as conn, conn.transaction():
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert runner.applied() == []
        assert [m.version for m in runner.pending()] == [1]


def client_queries(conn: psycopg.Connection[Any], work: Callable[[], object]) -> list[str]:
    """The protocol messages that start a query (Query, Parse) that `work` sends, as
    libpq's own trace of the connection records them."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            work()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines()]
    return [fields[3] for fields in sent if fields[0] == "F" and fields[2] in ("Query", "Parse")]


def test_a_history_in_place_is_read_in_one_query(database: Database, tmp_path: Path) -> None:
    """What every run reads first: one round trip when the history is ours, in place
    and alone; the same rows as the careful way (the catalog search, then the rows)."""
    folder = write_migrations(tmp_path, THREE)
    migrate(database, folder, "up")
    with database.connect() as conn:
        conn.autocommit = True
        rows: list[list[migrations.Applied]] = []
        sent = client_queries(conn, lambda: rows.append(history.read(conn)))
        assert len(sent) == 1, sent
        ours, older = finding.find(conn)
        assert (ours, older) == (True, [])
        assert rows[0] == history.read(conn, placed=True)
        assert [row.version for row in rows[0]] == [1, 2, 3]
        # Another table of the name, even someone else's: the careful way, which says
        # what it found (here: nothing of concern, so the same rows).
        conn.execute("CREATE TABLE public.cicd_db_schema_history (x int)")
        sent = client_queries(conn, lambda: rows.append(history.read(conn)))
        assert len(sent) == 3, sent
        assert rows[1] == rows[0]


def test_the_history_is_read_oldest_first_whatever_order_its_rows_are_stored_in(
    database: Database, tmp_path: Path
) -> None:
    """Every way of reading it sorts by version: a row updated in place (here by hand)
    is stored after the others."""
    folder = write_migrations(tmp_path, THREE)
    migrate(database, folder, "up")
    database.execute("UPDATE cicd_db.cicd_db_schema_history SET name = name WHERE version = 1")
    assert database.query("SELECT version FROM cicd_db.cicd_db_schema_history") == [
        (2,),
        (3,),
        (1,),
    ]
    with database.connect() as conn:
        conn.autocommit = True
        in_place = [row.version for row in history.read(conn)]
        placed = [row.version for row in history.read(conn, placed=True)]
        conn.execute("CREATE TABLE public.cicd_db_schema_history (x int)")
        searched = [row.version for row in history.read(conn)]
    assert in_place == placed == searched == [1, 2, 3]


def test_a_view_of_the_history_name_elsewhere_is_no_older_history(
    database: Database, tmp_path: Path
) -> None:
    """An older release kept a table; a view with the history's columns (a report's, say)
    is neither read nor moved."""
    database.execute(
        "CREATE TABLE public.runs_log (version bigint, name text, checksum text, "
        "applied_at timestamptz, applied_by text, duration_ms int); "
        "INSERT INTO public.runs_log VALUES (1, 'a', 'x', now(), 'me', 1); "
        "CREATE VIEW public.cicd_db_schema_history AS SELECT * FROM public.runs_log"
    )
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert out.startswith("applied 0001_a.sql"), out
    assert database.history() == [1]
    assert database.query(
        "SELECT c.relnamespace::regnamespace::text, c.relkind FROM pg_class c "
        "WHERE c.relname = 'cicd_db_schema_history' ORDER BY 1"
    ) == [("cicd_db", "r"), ("public", "v")]


def test_a_view_in_the_history_place_is_refused(database: Database, tmp_path: Path) -> None:
    """A view would take the rows through to some table, and the next run would find none."""
    database.execute(
        "CREATE SCHEMA cicd_db; CREATE TABLE cicd_db.real_rows (version bigint, name text, "
        "checksum text, applied_at timestamptz, applied_by text, duration_ms int); "
        "CREATE VIEW cicd_db.cicd_db_schema_history AS SELECT * FROM cicd_db.real_rows"
    )
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    # status only reads: the one-query read must refuse it as well as `up`'s create().
    for args in [(), ("status",)]:
        code, out, err = migrate(database, folder, *args)
        assert (code, out) == (2, ""), args
        assert err == (
            "error: cicd_db.cicd_db_schema_history exists but is not cicd-db's migration "
            "history: it must be a table (it is a view or the like) with the columns version, "
            "name, checksum, applied_at, applied_by, duration_ms; rename or drop it if it is "
            "not needed\n"
        )
    assert database.tables() == set()


def test_the_move_is_said_even_when_the_first_file_fails(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    assert migrate(database, folder)[0] == 0
    database.execute(
        "ALTER TABLE cicd_db.cicd_db_schema_history SET SCHEMA public; DROP SCHEMA cicd_db"
    )
    (tmp_path / "0002_fails.sql").write_text("SELECT 1/0;\n")
    code, out, err = migrate(database, folder)
    assert code == 1
    assert out.startswith("  moved the migration history from public.cicd_db_schema_history")
    assert err.startswith("error: migration 0002_fails.sql failed at line 1: division by zero")
    (tmp_path / "0002_fails.sql").write_text("SELECT 1;\n")
    database.execute(
        "ALTER TABLE cicd_db.cicd_db_schema_history SET SCHEMA public; DROP SCHEMA cicd_db"
    )
    code, out, _ = migrate(database, folder, "--json")
    assert code == 0
    assert json.loads(out)["notes"] == [
        "moved the migration history from public.cicd_db_schema_history to "
        "cicd_db.cicd_db_schema_history, where no search_path can hide it"
    ]


def test_a_role_that_may_not_use_the_history_is_told_the_grant(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    assert migrate(database, folder)[0] == 0
    with database.new_role() as limited:
        role = limited.user
        result = run_cli(
            "migrate", "--database-url", limited.url(), "--migrations-dir", str(folder), "status"
        )
        assert result.code == 2
        assert result.err == (
            f"error: role {role} may not read the migration history "
            "cicd_db.cicd_db_schema_history: permission denied for schema cicd_db; migrate as "
            "the history's owner, or GRANT USAGE ON SCHEMA cicd_db and SELECT, INSERT ON the "
            f"table TO {role}\n"
        )


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


def test_the_history_itself_is_no_history_under_another_name(
    database: Database, tmp_path: Path
) -> None:
    """A runner that found no history, while another runner made it meanwhile, looks for
    a renamed one: the history of its own name, now there, is not one (eight runners at
    once were refused "there is no migration history ..., but cicd_db.cicd_db_schema_history
    has its columns")."""
    assert migrate(database, write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})).code == 0
    with database.connect() as conn:
        finding.refuse_a_history_under_another_name(conn)  # nothing to refuse
        conn.execute("ALTER TABLE cicd_db.cicd_db_schema_history RENAME TO moved")
        with pytest.raises(ConfigError, match=r"but cicd_db\.moved has its columns \(1 row\)"):
            finding.refuse_a_history_under_another_name(conn)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.one_of(
        st.text(),
        st.text(alphabet="abcXYZ019_.-'\\\" e\u00e9\u0131\u212a\u0660", max_size=12),
    ),
    standard=st.booleans(),
)
def test_a_literal_is_what_psycopg_quotes_and_reads_back_as_the_text(
    database: Database, text: str, standard: bool
) -> None:
    """The history's values are quoted directly when they are plain ASCII: the same bytes
    psycopg's adapters give, under either standard_conforming_strings, and the server
    reads back the text (no NUL: a server's text holds none)."""
    text = text.replace("\0", "")
    with database.connect() as conn:
        conn.autocommit = True
        conn.execute(f"SET standard_conforming_strings = {'on' if standard else 'off'}")
        quoted = history.literal(conn, text)
        assert quoted == sql.Literal(text).as_bytes(conn)
        assert conn.execute(b"SELECT " + quoted).fetchone() == (text,)


def _refused_as_the_files_schema(database: Database, folder: Path, *args: str) -> str:
    code, out, err = migrate(database, folder, *args)
    assert code == 2, (out, err)
    assert "puts cicd-db's own schema cicd_db first, so every migration's objects would be " in err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", [(), ("up", "--rehearse")], ids=["up", "rehearse"])
def test_a_search_path_that_names_the_runners_schema_first_is_refused(
    database: Database, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """psql would create the files' objects in the first schema that exists; the runner's
    own schema, once made, would be it: refused before any file runs, named, with the fix."""
    folder = write_migrations(tmp_path, {"0001_t.sql": "CREATE TABLE t (x int);\n"})
    assert migrate(database, folder, "status").code == 0
    database.execute("CREATE SCHEMA IF NOT EXISTS cicd_db")
    database.execute(
        sql.SQL("ALTER DATABASE {} SET search_path = cicd_db, public").format(
            sql.Identifier(database.settings.database)
        )
    )
    err = _refused_as_the_files_schema(database, folder, *command)
    assert err == (
        "error: the session's search_path (cicd_db, public) puts cicd-db's own schema "
        "cicd_db first, so every migration's objects would be created there, beside the "
        "migration history and outside every schema dump; set a search_path that does not "
        f"name it (ALTER ROLE {database.settings.user} SET search_path = public, or where "
        "pg_settings says it is set) and run again\n"
    )
    assert database.query("SELECT count(*) FROM pg_class WHERE relname = 't'") == [(0,)]
    database.execute(
        sql.SQL("ALTER DATABASE {} RESET search_path").format(
            sql.Identifier(database.settings.database)
        )
    )
    assert migrate(database, folder).code == 0
    assert database.query(
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 't'"
    ) == [("public",)]


def test_a_login_role_named_like_the_runners_schema_is_refused(
    server: ConnectionSettings, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default search_path, "$user" names the schema of the login role's name:
    for a role named cicd_db, the runner's own, which the first run makes. Its objects
    went there, out of every schema dump."""
    password = uuid.uuid4().hex
    admin = psycopg.connect(server.conninfo(), autocommit=True)
    name = sql.Identifier(database.settings.database)
    try:
        admin.execute(
            sql.SQL("CREATE ROLE cicd_db LOGIN PASSWORD {}").format(sql.Literal(password))
        )
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO cicd_db").format(name))
        with psycopg.connect(database.settings.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER SCHEMA public OWNER TO cicd_db")
        folder = write_migrations(tmp_path, {"0001_t.sql": "CREATE TABLE t (x int);\n"})
        as_role = replace(database.settings, user="cicd_db", password=password)
        # The role's name is quoted as the server's keywords say: read afresh here, not
        # left by an earlier test.
        monkeypatch.setattr(history_table, "_RESERVED", None)
        code, out, err = migrate(as_role, folder)
        assert code == 2, (out, err)
        assert "(the login role is named after it)" in err
        assert "ALTER ROLE cicd_db SET search_path = public" in err
        assert database.query("SELECT count(*) FROM pg_class WHERE relname = 't'") == [(0,)]
    finally:
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(server.user))
        )
        with psycopg.connect(database.settings.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("REASSIGN OWNED BY cicd_db TO {}").format(sql.Identifier(server.user))
            )
            conn.execute("DROP OWNED BY cicd_db")
        admin.execute("DROP ROLE cicd_db")
        admin.close()


# Files whose line ends a checkout may convert, and a query of what the server stored.
CONVERTED = {
    "only-between-tokens": ("CREATE TABLE t (\n  s text\n);\nINSERT INTO t VALUES ('a');\n", "t"),
    "escape-not-a-line-end": ("CREATE TABLE t (s text);\nINSERT INTO t VALUES (E'a\\nb');\n", "t"),
    "comment-over-lines": ("/* a\n b */\nCREATE TABLE t (s text);\n", "t"),
    "string-over-lines": ("CREATE TABLE t (s text);\nINSERT INTO t VALUES ('a\nb');\n", "t"),
    "function-body": (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\nSELECT 1\n$$;\n"
        "CREATE TABLE t AS SELECT prosrc AS s FROM pg_proc WHERE proname = 'f';\n",
        "t",
    ),
    "quoted-name": ("CREATE TABLE t (\"a\nb\" text);\nINSERT INTO t VALUES ('x');\n", "t"),
    "copy-data": (
        'CREATE TABLE t (s text);\nCOPY t FROM STDIN (FORMAT csv);\n"a\nb"\n\\.\n',
        "t",
    ),
    # COPY data is no SQL: its apostrophe opens no string (helper-145).
    "copy-row-then-string-over-lines": (
        "CREATE TABLE t (s text);\nCOPY t FROM STDIN;\nit's\n\\.\nINSERT INTO t VALUES ('a\nb');\n",
        "t",
    ),
}


# How a checkout or an editor changes a file's line ends or its byte order mark.
CONVERSIONS = {
    "every-line": lambda text: text.replace("\n", "\r\n"),
    "first-line-only": lambda text: text.replace("\n", "\r\n", 1),
    "byte-order-mark-added": lambda text: "\ufeff" + text,
    "next-to-last-line-only": lambda text: "\r\n".join(text[:-1].rsplit("\n", 1)) + text[-1],
}


def _copy_rows(text: str) -> str:
    """The data lines of a file's COPY FROM STDIN (the tests' files have one at most)."""
    _, copy, rest = text.partition("FROM STDIN")
    return rest.split("\n", 1)[1].split("\\.", 1)[0] if copy else ""


@pytest.mark.parametrize("how", sorted(CONVERSIONS))
@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_a_converted_file_is_the_same_file_exactly_when_it_makes_the_same_database(
    database: Database, spare: Database, tmp_path: Path, name: str, how: str
) -> None:
    """The server is the oracle: the file applied with LF, and the same file converted
    applied to a fresh database; where the two databases differ (a line end inside a
    string, a quoted name, a function's body or COPY data keeps its bytes), the history
    no longer takes the converted file for the applied one and says why; where they are
    the same, it does (helper-103: it took every converted file for the same; helper-143:
    a byte order mark added, or one line end changed outside a string beside one inside
    it, was refused, with a fix that could not help)."""
    text, table = CONVERTED[name]
    converted = CONVERSIONS[how](text)
    folder, fresh = tmp_path / "applied", tmp_path / "converted"
    for where, data in ((folder, text), (fresh, converted)):
        where.mkdir()
        (where / "0001_f.sql").write_bytes(data.encode())
    assert migrate(database, folder).code == 0
    assert migrate(spare, fresh).code == 0
    stored = f"SELECT row_to_json(t)::text FROM {table} t ORDER BY 1"
    columns = "SELECT attname FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0"
    same = (database.query(stored), database.query(columns)) == (
        spare.query(stored),
        spare.query(columns),
    )
    (folder / "0001_f.sql").write_bytes(converted.encode())
    result = migrate(database, folder)
    if same and _copy_rows(converted) != _copy_rows(text):
        # COPY data whose line ends changed is refused even where the server takes the
        # rows alike: whether it does depends on the format and on every other row.
        assert result.code == 2, result
    elif same:
        assert (result.code, result.err) == (0, ""), result
    else:
        assert result.code == 2, result
        assert "was applied with other line ends (LF or CRLF)" in result.err, result.err
    if how == "every-line":  # the oracle itself: a line end inside a string is kept
        assert (
            name in ("only-between-tokens", "escape-not-a-line-end", "comment-over-lines")
        ) == same
    if how == "byte-order-mark-added":
        assert same
