"""Cursors of psycopg's own class, with rows as tuples, whatever the connection a caller
hands the library would make; and whether that connection is in a state the library's
calls can work in (`ready`).

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
from psycopg.pq import TransactionStatus
from psycopg.rows import RowFactory, tuple_row

from cicd_db.errors import UsageError, setting_advice


def usable(conn: psycopg.Connection[Any], who: str) -> psycopg.Connection[Any]:
    """`conn`, once `who` can send it anything: open, outside pipeline mode (every
    statement until the next sync is one implicit transaction: a call's write said done
    would be undone by a later call's refusal), and not in a failed transaction.
    UsageError (a ValueError) otherwise, which says what to do."""
    if conn.closed:
        raise UsageError(f"{who} needs an open connection; this one is closed")
    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        raise UsageError(
            f"{who} needs a connection outside pipeline mode (each of its calls commits on "
            "its own, which a pipeline's shared transaction would undo); call it outside "
            "`with conn.pipeline()`"
        )
    if conn.info.transaction_status == TransactionStatus.INERROR:
        raise UsageError(
            f"{who} cannot work in a failed transaction (an earlier statement of it failed); "
            "roll it back first"
        )
    return conn


def ready(
    conn: psycopg.Connection[Any], who: str, *, alone: bool = True
) -> psycopg.Connection[Any]:
    """`conn`, once it is in a state where `who`'s calls work as promised: autocommit
    (else psycopg opens a transaction nothing commits, and the writes are lost when the
    connection closes); with `alone`, outside any transaction too (retention says what
    it committed, batch by batch: a caller's BEGIN would roll it back after it was told).
    Asked at every call: a caller may change the connection after handing it over.
    UsageError (a ValueError) otherwise. (The isolation level is not asked here: reads
    work at any, and the one that matters to a move is the transaction's, which the
    server's defaults set as much as the connection.)"""
    usable(conn, who)
    if not conn.autocommit:
        raise UsageError(f"{who} needs an autocommit connection")
    if alone and (state := conn.info.transaction_status) != TransactionStatus.IDLE:
        raise UsageError(
            f"{who} needs a connection outside any transaction (it is {state.name.lower()}): "
            "each of its calls commits on its own; call it after COMMIT or ROLLBACK, or give "
            "it a connection of its own"
        )
    return conn


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


def setting_where(conn: psycopg.Connection[Any], name: str, value: str, source: str) -> str | None:
    """Where a caller's session got setting `name` (pg_settings' `source`) and what undoes
    it (errors.setting_advice), naming the login role and the database as the client
    gave them: not the role a `SET ROLE` made current, nor names read back through the
    database's encoding."""
    info = conn.info
    return setting_advice(
        name,
        value,
        source,
        database=sql.Identifier(info.dbname).as_string(conn),
        role=sql.Identifier(info.user).as_string(conn),
        set_here=True,
    )
