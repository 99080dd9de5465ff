"""What kind of statement a statement is (src/cicd_db/migrations/kinds.py), with
PostgreSQL as the oracle."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cicd_db.migrations import kinds
from cicd_db.sqltext import Scanner, Statement

from ..fix_db import Database
from ..utils import examples


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    scope=st.sampled_from(["", "LOCAL ", "SESSION ", "local ", "/* c */ "]),
    name=st.sampled_from(
        [
            "transaction_isolation",
            '"transaction_isolation"',
            '"Transaction_Isolation"',
            'U&"transaction_isolation"',
            "TRANSACTION_ISOLATION",
            "default_transaction_isolation",
            '"default_transaction_isolation"',
            "search_path",
        ]
    ),
    separator=st.sampled_from([" = ", " TO ", "=", " /* x */ = "]),
)
def test_what_must_come_before_any_query_is_what_postgresql_refuses_after_one(
    database: Database, scope: str, name: str, separator: str
) -> None:
    """PostgreSQL is the oracle: a SET refused after the transaction's first query
    ("must be called before any query") is one sets_the_transaction() finds, and no
    other, however the name is quoted, cased or commented."""
    value = "'public'" if "search_path" in name else "'serializable'"
    text = f"SET {scope}{name}{separator}{value};".encode()
    piece = next(iter(Scanner(text)))
    assert isinstance(piece, Statement)
    with database.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        try:
            conn.execute(text)
            refused = False
        except psycopg.errors.ActiveSqlTransaction:
            refused = True
        conn.rollback()
    assert kinds.sets_the_transaction(text, piece, True) is refused, text
