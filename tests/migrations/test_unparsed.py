"""Which statement of a query the server could not parse, when it named no position:
found without running any of the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..fix_cli import migrate
from ..fix_db import Database
from ..utils import write_migrations


@pytest.mark.parametrize(
    ("text", "line", "said"),
    [
        # Bytes an escape makes that are not UTF-8: refused while the server parses the
        # whole query, before anything runs, with no position.
        (
            "CREATE TABLE t (a int);\nSELECT 1;\n\nSELECT E'\\xff';\nSELECT 2;\n",
            4,
            'invalid byte sequence for encoding "UTF8": 0xff [22021]',
        ),
        (
            "CREATE TABLE t (a int);\nSELECT 1;\nSELECT 2;\nSELECT 3;\nSELECT 4;\n"
            "SELECT 'ok', E'\\377';\n",
            6,
            'invalid byte sequence for encoding "UTF8": 0xff [22021]',
        ),
        # Every statement parses: the first one failed running, and it is named.
        ("SELECT 1/0;\nSELECT E'\\x41';\n", 1, "division by zero [22012]"),
    ],
    ids=["middle", "last-of-six", "first-runs-and-fails"],
)
def test_a_statement_the_server_cannot_parse_is_named_when_it_gives_no_position(
    database: Database, tmp_path: Path, text: str, line: int, said: str
) -> None:
    """The server parses a query whole before it runs any of it: an error there with no
    position is found by sending the statements again in halves inside the aborted
    transaction, where none of them runs (as psql, which sends them one by one, names
    that statement's line)."""
    folder = write_migrations(tmp_path, {"0001_bytes.sql": text})
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith(f"error: migration 0001_bytes.sql failed at line {line}: {said}"), err
    assert (database.tables(), database.history()) == (set(), [])


def test_finding_the_statement_that_does_not_parse_runs_none_of_them(
    database: Database, tmp_path: Path
) -> None:
    """A ROLLBACK TO SAVEPOINT of the file's (made in an earlier batch, which ran) is a
    statement an aborted transaction takes, and what follows it would run: the search
    runs nothing of the file. A sequence, which no rollback moves back, would show it."""
    database.execute("CREATE SEQUENCE seq")
    folder = write_migrations(
        tmp_path,
        {
            "0001_savepoint.sql": "SAVEPOINT s;\n"
            # Ends the batch (it changes how strings read): the savepoint exists.
            "SET standard_conforming_strings = off;\n"
            "ROLLBACK TO SAVEPOINT s;\nSELECT nextval('seq');\nSELECT 1;\nSELECT E'\\xff';\n"
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err.split(": invalid byte")[0]) == (
        1,
        "error: migration 0001_savepoint.sql failed at line 6",
    )
    assert database.query("SELECT is_called FROM seq") == [(False,)]


def test_the_statement_is_found_as_strings_read_where_it_failed(
    database: Database, tmp_path: Path
) -> None:
    """The failed transaction took the file's SET with it: the halves are read as the
    failed query was, or 'a\\'b' hides the statement after it."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_old.sql": "SET standard_conforming_strings = off;\nSELECT 'a\\'b';\n"
            "SELECT E'\\xff';\n"
        },
    )
    code, _, err = migrate(database, folder)
    # The server's warning of the \\' comes once, from the query that failed.
    warning, error = err.splitlines()
    assert "nonstandard use of" in warning
    assert (code, error.split(": invalid byte")[0]) == (
        1,
        "error: migration 0001_old.sql failed at line 3",
    )
