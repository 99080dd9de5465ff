"""What the runner's tests share: files, queries, and one way to run `migrate`."""

from __future__ import annotations

from pathlib import Path

from cicd_db.settings import ConnectionSettings

from ..fix_cli import run_cli
from ..fix_db import Database

THREE = {
    "0001_people.sql": "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL);\n",
    "0002_pets.sql": "CREATE TABLE pets (id int PRIMARY KEY,\n  owner int REFERENCES people);\n",
    "0003_seed.sql": "INSERT INTO people VALUES (1, 'ada');\nINSERT INTO pets VALUES (1, 1);\n",
}

# The runner of this test's database, in its pg_sleep: other tests share the server.
RUNNER_SLEEPING = (
    "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
    "AND application_name = 'cicd-db' AND datname = current_database()"
)


def without_escape_warnings(err: str) -> str:
    """stderr without the WARNING PostgreSQL 17 and older send for a backslash in a string
    while standard strings are off (escape_string_warning); the runner passes it on."""
    warning = "  WARNING: nonstandard use of "
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith(warning))


MEBIBYTE = 1 << 20

MENTIONS = {
    "string": "INSERT INTO notes VALUES ('see standard_conforming_strings');\n",
    "comment": "-- standard_conforming_strings stays on\nCREATE TABLE other (id int);\n",
    "identifier": 'CREATE TABLE "standard_conforming_strings" (id int);\n',
    "dollar": "CREATE FUNCTION f() RETURNS text AS $$ SELECT 'standard_conforming_strings' $$ "
    "LANGUAGE sql;\n",
}


def migrate(
    database: Database | ConnectionSettings, folder: Path, *args: str
) -> tuple[int, str, str]:
    """`cicd-db migrate ARGS` on `database` with the files of `folder`, in this process
    (tests/conftest.py's run_cli); no password of the database ever in what it prints."""
    settings = database.settings if isinstance(database, Database) else database
    result = run_cli(
        "migrate", "--database-url", settings.url(), "--migrations-dir", str(folder), *args
    )
    assert not settings.password or settings.password not in result.out + result.err
    return result.code, result.out, result.err


def rehearse(database: Database, folder: Path, *args: str) -> tuple[int, str, str]:
    return migrate(database, folder, "up", "--rehearse", *args)
