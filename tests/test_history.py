"""Where the migration history lives: one fixed place, whatever search_path says.

The runner's history is `cicd_db.cicd_db_schema_history`, found by catalog and never
through search_path. A migration may change search_path for the next run (a schema
named after the login role, ALTER DATABASE or ALTER ROLE ... SET search_path), or
drop and recreate `public` as dumps do: the next run still finds every file it
applied and applies none of them again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cicd_db import migrations

from .conftest import Database, run_cli, write_migrations

# A balance that tells how often 0001 ran: 100 after once, 150 after twice.
ACCOUNT = (
    "CREATE TABLE IF NOT EXISTS account (id int PRIMARY KEY, balance int NOT NULL);\n"
    "INSERT INTO account VALUES (1, 100) ON CONFLICT (id) DO UPDATE "
    "SET balance = account.balance + 50;\n"
)

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


def migrate(database: Database, folder: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder), *args
    )
    return result.code, result.out, result.err


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
            "error: this database has two migration histories, cicd_db.cicd_db_schema_history "
            "and public.cicd_db_schema_history; keep the one that matches the schema (compare "
            "both with `SELECT * FROM` each), drop the other, and run again\n"
        )


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
