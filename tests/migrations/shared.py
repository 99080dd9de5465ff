"""What the runner's tests share: files, queries, and `migrate up --rehearse`."""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

from ..fix_cli import Run, migrate
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


def rehearse(database: Database, folder: Path, *args: str) -> Run:
    return migrate(database, folder, "up", "--rehearse", *args)


def old_strings_by_default(database: Database) -> None:
    """The database reads strings the old way by default (standard_conforming_strings off)."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
            sql.Identifier(database.settings.database)
        )
    )
