"""Splitting migration files into statements: what may hide a semicolon."""

from __future__ import annotations

import pytest

from cicd_db.sqltext import Statement, statements


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1; SELECT 2;", [(1, "SELECT 1;"), (1, "SELECT 2;")]),
        ("-- head\n\nCREATE TABLE a (b int);\n", [(3, "CREATE TABLE a (b int);")]),
        ("SELECT ';' AS x;\nSELECT 2", [(1, "SELECT ';' AS x;"), (2, "SELECT 2")]),
        ("SELECT 'it''s; fine';", [(1, "SELECT 'it''s; fine';")]),
        ("SELECT E'a\\'; b';", [(1, "SELECT E'a\\'; b';")]),
        ("SELECT type='a\\'; SELECT 2;", [(1, "SELECT type='a\\';"), (1, "SELECT 2;")]),
        ('SELECT 1 AS "a;b";', [(1, 'SELECT 1 AS "a;b";')]),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nSELECT f();",
            [
                (1, "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;"),
                (2, "SELECT f();"),
            ],
        ),
        ("DO $body$ BEGIN PERFORM 1; END $body$;", [(1, "DO $body$ BEGIN PERFORM 1; END $body$;")]),
        ("SELECT $1::int;", [(1, "SELECT $1::int;")]),
        ("/* a; /* nested; */ still; */ SELECT 1;", [(1, "SELECT 1;")]),
        ("SELECT 1 -- trailing; comment\n;", [(1, "SELECT 1 -- trailing; comment\n;")]),
        ("-- only a comment; really\n/* and; this */\n", []),
        (";;\n;", []),
        (
            "SET lock_timeout = '5s';\n\nLOCK TABLE t;",
            [(1, "SET lock_timeout = '5s';"), (3, "LOCK TABLE t;")],
        ),
    ],
    ids=[
        "two",
        "leading-comment",
        "string",
        "doubled-quote",
        "escape-string",
        "not-an-escape-string",
        "identifier",
        "dollar-quote",
        "tagged-dollar-quote",
        "parameter",
        "nested-block-comment",
        "line-comment-inside",
        "comments-only",
        "empty-statements",
        "settings",
    ],
)
def test_statements(text: str, expected: list[tuple[int, str]]) -> None:
    assert [(s.line, s.text) for s in statements(text)] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 'unterminated; SELECT 2;", [(1, "SELECT 'unterminated;"), (1, "SELECT 2;")]),
        ("SELECT $$ never closed; SELECT 2;", [(1, "SELECT $$ never closed; SELECT 2;")]),
        ("/* never closed; SELECT 1;", []),
    ],
    ids=["unterminated-string", "unterminated-dollar", "unterminated-comment"],
)
def test_statements_bad(text: str, expected: list[tuple[int, str]]) -> None:
    """Broken text still splits somewhere sensible; PostgreSQL then reports the error."""
    assert [(s.line, s.text) for s in statements(text)] == expected


def test_keyword() -> None:
    assert Statement(1, "set lock_timeout = 1;").keyword == "SET"
    assert Statement(1, "RESET;").keyword == "RESET"
