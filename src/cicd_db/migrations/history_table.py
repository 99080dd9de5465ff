"""The history table's fixed place and shape, the runner's own statements on it pinned
against whatever a role, database or file set (PINNED), and names shown as SQL takes
them. What history.py, finding.py and the checks around each file share."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

SCHEMA = "cicd_db"
TABLE = "cicd_db_schema_history"
COLUMNS = ("version", "name", "checksum", "applied_at", "applied_by", "duration_ms")
# Their types as create() makes them.
OWN_COLUMNS = {
    "version": "bigint",
    "name": "text",
    "checksum": "text",
    "applied_at": "timestamp with time zone",
    "applied_by": "text",
    "duration_ms": "integer",
}
# The history table by its schema-qualified name: always the same, whatever
# search_path a session, role, database or file sets.
QUALIFIED = sql.Identifier(SCHEMA, TABLE)


# Sent, in a transaction, before the runner's own statements on the history: whatever
# search_path the role, database or file set, no function or operator of another schema
# stands in for PostgreSQL's own (a public.now() before pg_catalog); and with
# row_security off, a row-level security policy on the history is an error, never a
# filter that hides applied files (PostgreSQL raises it only where a policy would apply);
# and as the login role itself, where a role setting (ALTER ROLE ... SET role) makes
# every session, and RESET ROLE, another; and with names quoted only where they must
# be, as the history's own are compared (quote_all_identifiers on, set on the database,
# made its text columns read as "text", three changes that were none).
PINNED = (
    b"SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL row_security = off; "
    b"SET LOCAL ROLE NONE; SET LOCAL quote_all_identifiers = off"
)
PINNED_STATEMENTS = PINNED.count(b";") + 1  # results it gives, to step over


def pinned_rows(
    conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed, row_factory: Any = None
) -> list[Any]:
    """The rows of the runner's own `query` (values as literals), run after PINNED.

    On an idle autocommit session, in one round trip and one implicit transaction
    (simple protocol), which PINNED's settings end with; in a transaction (the runner's,
    or a caller's where a read of the history runs in one), inside a savepoint rolled
    back after the read, which takes them back: a caller's transaction goes on with its
    own search_path and role.
    """
    with conn.cursor(row_factory=row_factory) if row_factory else conn.cursor() as cursor:
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            cursor.execute(PINNED + b"; " + query.as_bytes(conn))
            for _ in range(PINNED_STATEMENTS):
                cursor.nextset()
            return cursor.fetchall()
        cursor.execute(b"SAVEPOINT cicd_db_pinned; " + PINNED)
        try:
            cursor.execute(query)
            return cursor.fetchall()
        finally:
            if conn.info.transaction_status in (
                TransactionStatus.INTRANS,
                TransactionStatus.INERROR,
            ):
                cursor.execute(
                    b"ROLLBACK TO SAVEPOINT cicd_db_pinned; RELEASE SAVEPOINT cicd_db_pinned"
                )


def shown(conn: psycopg.Connection[Any], *names: str) -> str:
    """A (qualified) name as SQL would take it, quoted only where it must be: where it is
    not lower-case letters, digits and underscores, or is a keyword PostgreSQL reserves
    in any way (`user`, `all`, `current_user`, `select`), so that a statement a message
    prints runs as written and names what it says."""
    reserved = _reserved(conn)
    return ".".join(
        name
        if re.fullmatch(r"[a-z_][a-z0-9_$]*", name)
        and reserved is not None
        and name not in reserved
        else sql.Identifier(name).as_string(conn)
        for name in names
    )


_RESERVED: frozenset[str] | None = None


def _reserved(conn: psycopg.Connection[Any]) -> frozenset[str] | None:
    """The keywords the server does not take as a bare name (pg_get_keywords, asked once
    a process), or None when it cannot be asked now: then every name is quoted."""
    global _RESERVED
    if _RESERVED is None:
        status = conn.info.transaction_status
        idle = status == TransactionStatus.IDLE
        if (
            conn.closed
            or conn.broken
            or not ((conn.autocommit and idle) or status == TransactionStatus.INTRANS)
        ):
            return None  # asking would fail, or open a transaction of the caller's
        query = "SELECT word FROM pg_catalog.pg_get_keywords() WHERE catcode <> 'U'"
        try:
            if idle:
                rows = conn.execute(query).fetchall()
            else:  # in a savepoint: a failure leaves the transaction (a rehearsal's) as it was
                with conn.transaction():
                    rows = conn.execute(query).fetchall()
        except psycopg.Error:
            return None
        _RESERVED = frozenset(str(row[0]) for row in rows)
    return _RESERVED


def row_security_refused(
    conn: psycopg.Connection[Any], error: psycopg.Error
) -> tuple[str, str] | None:
    """What to say (the cause, the fix) when `error` is row-level security on the history
    (under PINNED's row_security off), or None for any other error."""
    message = error.diag.message_primary or ""
    if error.diag.sqlstate != "42501" or "row-level security" not in message:
        return None
    if TABLE not in message:
        return None
    name, user = shown(conn, SCHEMA, TABLE), shown(conn, conn.info.user)
    return (
        f"the migration history {name} has row-level security that applies to role {user} "
        "(ENABLE or FORCE ROW LEVEL SECURITY, perhaps by a migration): a policy could hide "
        "applied files, which would then run again",
        f"as its owner, ALTER TABLE {name} DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL "
        "SECURITY, and run again",
    )
