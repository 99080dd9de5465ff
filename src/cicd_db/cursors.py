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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import RowFactory, tuple_row

from cicd_db.errors import (
    OperationalError,
    UsageError,
    setting_advice,
    setting_named,
    setting_suspected,
    told_with_setting,
)


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


# Whether the session's statement_timeout is set and the session as old as it: only a
# statement that ran that long can have timed out (a 1h timeout cannot have cut anything
# 3 s into a session, and such a cancel is a person's).
_AS_OLD_AS_ITS_TIMEOUT = (
    "SELECT s.setting::pg_catalog.int8 > 0 AND s.setting::pg_catalog.int8 <= "
    "pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) "
    "a.backend_start) OPERATOR(pg_catalog.*) 1000 FROM pg_catalog.pg_settings s, "
    "pg_catalog.pg_stat_activity a WHERE s.name = 'statement_timeout' "
    "AND a.pid = pg_catalog.pg_backend_pid()"
)


def could_have_timed_out(conn: psycopg.Connection[Any]) -> bool:
    """Whether a statement of `conn`'s session can have been cut by the session's
    statement_timeout: PostgreSQL tells one that fires as a statement ends as a cancel
    "due to user request" of the next statement. A timeout so short that it cuts this
    question did; a session that cannot be asked is not said to have one."""
    try:
        row = execute(conn, _AS_OLD_AS_ITS_TIMEOUT).fetchone()
    except psycopg.errors.QueryCanceled:
        return True
    except psycopg.Error:
        return False
    return bool(row and row[0])


@contextmanager
def cancels_named(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Around a caller's reads on `conn`: a statement the session's statement_timeout
    cut is told with where that timeout is set and what undoes it (running again meets
    it again), as the session, still open, says; so is a cancel "due to user request"
    where that timeout could have fired (could_have_timed_out), as suspected: PostgreSQL
    tells a timeout that fires as a statement ends so. Where the session cannot say, the
    CLI tells the timeout by its words."""
    try:
        yield
    except psycopg.errors.QueryCanceled as cut:
        message = str(cut.diag.message_primary or "")
        named = setting_named(cut.sqlstate, message)
        if (
            named is None
            and setting_suspected(cut.sqlstate, message)
            and could_have_timed_out(conn)
        ):
            named = ("statement_timeout", True)
        if named is None:
            raise
        setting, suspected = named
        first = str(cut).strip().splitlines()[0]
        if where := where_set(conn, setting):
            cause = "if no one cancelled it, the statement timeout did: " if suspected else ""
            raise OperationalError(
                f"database error: {first}; {cause}{where}, and run again"
            ) from cut
        if suspected:
            raise OperationalError(told_with_setting(first, setting, suspected=True)) from cut
        raise


def where_set(conn: psycopg.Connection[Any], name: str, only: str | None = None) -> str | None:
    """Where the session's setting `name` comes from and what undoes it (setting_where);
    None when the session cannot say (a timeout so short that it cuts the question), or
    when the setting is not `only`."""
    try:
        row = execute(
            conn,
            "SELECT pg_catalog.current_setting(name), source FROM pg_catalog.pg_settings "
            "WHERE name = %s",
            [name],
        ).fetchone()
    except psycopg.Error:
        return None
    if row is None or (only is not None and row[0] != only):
        return None
    return setting_where(conn, name, str(row[0]), str(row[1]))
