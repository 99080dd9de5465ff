"""Cursors of psycopg's own class, with rows as tuples, whatever the connection a caller
hands the library would make.

A caller's connection may carry a `row_factory` of its own (`dict_row`) or a
`cursor_factory` (`ClientCursor`, as pgbouncer users choose, or `RawCursor`, which
takes `$1` for `%s`): the library reads rows by position and writes its parameters as
psycopg's default cursor does, so its statements never go through either. Reads or
writes only what the statement does.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.rows import RowFactory, tuple_row


def cursor(
    conn: psycopg.Connection[Any],
    *,
    binary: bool = False,
    row_factory: RowFactory[Any] = tuple_row,
) -> psycopg.Cursor[Any]:
    """A cursor on `conn` of psycopg's own class: tuples (or `row_factory`'s rows),
    results in binary where `binary`."""
    made = psycopg.Cursor(conn, row_factory=row_factory)
    if binary:
        made.format = pq.Format.BINARY
    return made


def execute(
    conn: psycopg.Connection[Any],
    query: str | bytes | sql.SQL | sql.Composed,
    params: Any = None,
    *,
    binary: bool = False,
) -> psycopg.Cursor[tuple[Any, ...]]:
    """`conn.execute(query, params)`, its rows tuples whatever `conn` makes."""
    return cursor(conn, binary=binary).execute(query, params)
