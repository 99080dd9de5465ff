"""The migration history: one table at a fixed place, read, created and written
(reconcile.py compares it with the files; integrity.py checks each file's row).

The history is `cicd_db.cicd_db_schema_history`, found by catalog and written by
its schema-qualified name, never through search_path. An older release kept it in
the first schema of the search_path: such a table is read where it is and moved
into place by the next run that writes. Two histories are refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import args_row

from cicd_db.errors import ConfigError, MigrationRefused, RightMissing
from cicd_db.migrations.files import Migration
from cicd_db.migrations.finding import find
from cicd_db.migrations.history_table import (
    COLUMNS,
    PINNED,
    PINNED_STATEMENTS,
    QUALIFIED,
    SCHEMA,
    TABLE,
    pinned_rows,
    row_security_refused,
    shown,
)


@dataclass(frozen=True)
class Applied:
    """One row of the history table."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str
    duration_ms: int


# The columns as read: applied_at as seconds since 1970 (exact, numeric), which no
# DateStyle or TimeZone a role or database sets can change (psycopg parses a text date
# in the ISO style only).
SELECTED = sql.SQL(", ").join(
    sql.SQL("extract(epoch FROM applied_at)") if column == "applied_at" else sql.Identifier(column)
    for column in COLUMNS
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _applied(
    version: int, name: str, checksum: str, epoch: Decimal, by: str, duration_ms: int
) -> Applied:
    """A history row from SELECTED."""
    try:
        at = EPOCH + timedelta(microseconds=int(epoch * 1_000_000))
    except (ArithmeticError, ValueError):  # 'infinity', or past year 9999: set by hand
        raise ConfigError(
            f"the migration history says version {version} was applied at {epoch} seconds "  # noqa: S608 - a message
            f"after 1970, which is no time a date can hold; set it right (UPDATE "
            f"{SCHEMA}.{TABLE} SET applied_at = now() WHERE version = {version})"
        ) from None
    return Applied(version, name, checksum, at, by, duration_ms)


def read(conn: psycopg.Connection[Any], *, placed: bool = False) -> list[Applied]:
    """The history, oldest first. Reads only.

    `placed`: the history is known to be ours and in place (create() just ran, under
    the runner's lock), so the catalog is not searched for it again.
    """
    if placed:
        schema = SCHEMA
    else:
        rows = _read_in_place(conn)
        if rows is not None:
            return rows
        ours, older = find(conn)
        if not ours and not older:
            return []
        schema = SCHEMA if ours else older[0]
    table = sql.Identifier(schema, TABLE)
    query = sql.SQL("SELECT {} FROM ONLY {} ORDER BY version").format(SELECTED, table)
    try:
        return pinned_rows(conn, query, args_row(_applied))
    except errors.InsufficientPrivilege as error:
        refused = row_security_refused(conn, error)
        if refused:
            raise ConfigError("; ".join(refused)) from None
        # As the login role (PINNED), whatever role a `role` setting makes the session.
        role = shown(conn, conn.info.user)
        # A right the role lacks is the setup's to give (exit 2, as the store's): running
        # again changes nothing. The schema is the history's own: an older release's
        # history is still in public until a run moves it.
        raise RightMissing(
            f"role {role} may not read the migration history "
            f"{shown(conn, schema, TABLE)}: {error.diag.message_primary}; migrate as the "
            f"history's owner, or GRANT USAGE ON SCHEMA {shown(conn, schema)} and SELECT, "
            f"INSERT ON the table TO {role}"
        ) from None
    except errors.DatatypeMismatch:
        raise ConfigError(
            f"table {table.as_string(conn)} has the columns of cicd-db's migration "
            "history but not their types; rename or drop it if it is not needed"
        ) from None


# Every table of the history's name, and the rows of ours, in one simple-protocol
# query (one implicit transaction, so PINNED holds for it): what every run reads
# first. No parameters, so no extended protocol; a
# catalog lookup by the name's index, without find()'s column check (~1 ms on a new
# backend), which the SELECT of every column by name makes for the common case.
_IN_PLACE = (
    sql.SQL(
        "{pinned}; SELECT n.nspname, c.relkind, c.relpersistence FROM pg_catalog.pg_class c JOIN "
        "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = {table}; "
        "SELECT {columns} FROM ONLY {qualified} ORDER BY version"
    )
    .format(
        pinned=sql.SQL(PINNED.decode()),
        table=sql.Literal(TABLE),
        columns=SELECTED,
        qualified=QUALIFIED,
    )
    .as_string(None)
)


def _read_in_place(conn: psycopg.Connection[Any]) -> list[Applied] | None:
    """The history's rows when it is ours, in place, and the only table of its name
    (the common case, read in one round trip); None for every other case, which
    find() then tells apart and explains."""
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        return None  # a failure would end the caller's transaction
    try:
        with conn.cursor(row_factory=args_row(_applied)) as cursor:
            cursor.execute(_IN_PLACE.encode())
            for _ in range(PINNED_STATEMENTS):
                cursor.nextset()
            tables = cursor.pgresult
            cursor.nextset()
            rows = cursor.fetchall()
    except psycopg.Error:
        if conn.closed or conn.broken:
            raise  # the session ended (a FATAL error): nothing else can be asked on it
        # No such table, a column missing or of another type, no right to read it:
        # find() and the read below say which.
        return None
    if tables is None or tables.ntuples != 1 or tables.get_value(0, 1) not in (b"r", b"p"):
        return None
    if tables.get_value(0, 0) != SCHEMA.encode() or tables.get_value(0, 2) != b"p":
        return None  # elsewhere, or UNLOGGED: find() says so
    return rows


def create(conn: psycopg.Connection[Any]) -> str | None:
    """Make the history's schema and table, or move an older history into place. Writes.

    Called under the runner's lock, so IF NOT EXISTS cannot race with another
    runner. Returns what it moved, to be said once; the move is one transaction.
    """
    ours, older = find(conn)
    if ours:
        return None
    schema = sql.Identifier(SCHEMA)
    try:
        with conn.transaction():
            # Only when missing: even IF NOT EXISTS needs CREATE on the database.
            row = conn.execute("SELECT pg_catalog.to_regnamespace(%s) IS NULL", [SCHEMA]).fetchone()
            if row and row[0]:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            if older:
                conn.execute(
                    sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                        sql.Identifier(older[0], TABLE), schema
                    )
                )
            else:
                # Types by their pg_catalog names: a type or table named text (or a
                # domain) in a schema the search_path names first is none of these.
                conn.execute(
                    sql.SQL(
                        """
                        CREATE TABLE IF NOT EXISTS {} (
                            version     pg_catalog.int8 PRIMARY KEY,
                            name        pg_catalog.text NOT NULL,
                            checksum    pg_catalog.text NOT NULL,
                            applied_at  pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
                            applied_by  pg_catalog.text NOT NULL DEFAULT current_user,
                            duration_ms pg_catalog.int4 NOT NULL
                        )
                        """
                    ).format(QUALIFIED)
                )
    except errors.InsufficientPrivilege as error:
        user = shown(conn, conn.info.user)
        what = (
            f"move the migration history {shown(conn, older[0], TABLE)} to "
            f"{shown(conn, SCHEMA, TABLE)}"
            if older
            else f"create the migration history {shown(conn, SCHEMA, TABLE)}"
        )
        row = conn.execute("SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL", [SCHEMA]).fetchone()
        name = shown(conn, SCHEMA)
        if older and not _owns(conn, older[0]):  # ALTER TABLE ... SET SCHEMA needs it
            old = shown(conn, older[0], TABLE)
            fix = (
                f"migrate as the owner of {old}, or let its owner or a superuser run ALTER "
                f"TABLE {old} OWNER TO {user}"
            )
        elif row and row[0]:
            fix = (
                f"let its owner run GRANT USAGE, CREATE ON SCHEMA {name} TO {user}, or ALTER "
                f"SCHEMA {name} OWNER TO {user}"
            )
        else:
            fix = (
                f"migrate as the database's owner, or let an owner run CREATE SCHEMA "
                f"{name} AUTHORIZATION {user}"
            )
        # Exit 2: a right the setup must give; running again would only meet it again.
        raise RightMissing(f"cannot {what}: {error.diag.message_primary}; {fix}") from None
    if older:
        return (
            f"moved the migration history from {shown(conn, older[0], TABLE)} to "
            f"{shown(conn, SCHEMA, TABLE)}, where no search_path can hide it"
        )
    return None


def _owns(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether the session's user owns the history table in `schema` (or is a member of
    the role that does), as moving it to another schema needs."""
    row = conn.execute(
        "SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') "
        "FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        [schema, TABLE],
    ).fetchone()
    return bool(row and row[0])


# insert_row's statement, built once (it is sent a file); %-placeholders take the
# file's values.
# Every column written, none left to a default: a file may change a default, and the
# row must be the runner's whatever it is (the check after it compares the whole row).
_INSERT = (
    sql.SQL(
        "INSERT INTO {} (version, name, checksum, applied_at, applied_by, duration_ms) "
        "VALUES (%(version)d, %(name)s, %(checksum)s, pg_catalog.now(), %(user)s, %(duration)s)"
    )
    .format(QUALIFIED)
    .as_bytes(None)
)


def put_back(conn: psycopg.Connection[Any], rows: list[tuple[int, str, str]]) -> None:
    """Write `rows` (version, name, checksum: what the runner recorded, `unlike` says
    which) to the history again, in one transaction. For a no-transaction file that
    deleted or truncated history rows, which is committed: without them, the next run
    would apply those files again. (Their applied_at is now, their duration_ms 0, as
    `baseline` writes them.)"""
    with conn.transaction():
        for version, name, checksum in rows:
            conn.execute(
                _PUT_BACK,
                {"version": version, "name": name, "checksum": checksum, "user": conn.info.user},
            )


def rows_now(
    conn: psycopg.Connection[Any],
) -> list[tuple[str, int | None, str | None, str | None]]:
    """Every row of the history as (ctid, version, name, checksum), read whole, NULLs and
    duplicates as they are. Reads only."""
    query = sql.SQL("SELECT ctid::pg_catalog.text, version, name, checksum FROM ONLY {}").format(
        QUALIFIED
    )
    return [tuple(row) for row in pinned_rows(conn, query)]


def differences(
    expected: list[tuple[int, str, str]],
    found: list[tuple[str, int | None, str | None, str | None]],
) -> tuple[list[tuple[int, str, str]], list[tuple[str, int | None, str | None, str | None]]]:
    """The rows of `expected` (each once) the history lacks, and the rows it holds besides
    (with their ctids): a found row matches one expected row at most, so a duplicate is
    besides. Counted, not searched: a history of thousands of rows is one pass."""
    unmatched = Counter[tuple[int | None, str | None, str | None]](expected)
    extra = []
    for row in found:
        values = row[1:]
        if unmatched[values]:
            unmatched[values] -= 1
        else:
            extra.append(row)
    return [row for row in expected if unmatched[row]], extra


def unlike(
    conn: psycopg.Connection[Any], expected: list[tuple[int, str, str]]
) -> tuple[list[tuple[int, str, str]], list[tuple[str, int | None, str | None, str | None]]]:
    """How the history differs now from `expected`, the rows the runner wrote: read
    whole (rows_now), then `differences`. Reads only."""
    return differences(expected, rows_now(conn))


def restore(
    conn: psycopg.Connection[Any], missing: list[tuple[int, str, str]], extra: list[str]
) -> None:
    """Put the history back as the runner wrote it, in one transaction: the rows at
    `extra` (their ctids: a duplicate of a row goes, never the row) deleted, `missing`
    written again (as put_back writes them). What the writes fire ends before the commit
    (deferred triggers fired, cursors a trigger opened closed): nothing runs after it."""
    with conn.transaction():
        conn.execute(PINNED)  # for the writes below, until this transaction ends
        if extra:
            conn.execute(
                sql.SQL("DELETE FROM ONLY {} WHERE ctid = ANY(%s::pg_catalog.tid[])").format(
                    QUALIFIED
                ),
                [extra],
            )
        put_back(conn, missing)
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        conn.execute("CLOSE ALL")


_PUT_BACK = sql.SQL(
    "INSERT INTO {} (version, name, checksum, applied_at, applied_by, duration_ms) "
    "VALUES (%(version)s, %(name)s, %(checksum)s, pg_catalog.now(), %(user)s, 0)"
).format(QUALIFIED)


def since_begin(clock: bytes) -> bytes:
    """The milliseconds from the transaction's start to `clock` (a function of
    pg_catalog's: clock_timestamp, statement_timestamp), as the server measures them."""
    return (
        b"pg_catalog.round(pg_catalog.date_part('epoch', pg_catalog." + clock + b"() "
        b"- pg_catalog.now()) * 1000)"
    )


# The file's time, its deferred constraints and triggers included (they run in the
# closing statements, before the INSERT).
_DURATION_SINCE_BEGIN = since_begin(b"clock_timestamp")


def refuse_as_the_files_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse when the files would create their objects in the history's schema: the
    session's search_path (as a role, the database or the connection set it) names it
    first among the schemas that exist. A login role named like the schema does it
    with the default `"$user", public`. The objects would sit beside the history,
    outside every schema dump, where psql on a database without cicd-db puts them
    elsewhere."""
    row = conn.execute(
        "SELECT pg_catalog.current_schema(), pg_catalog.current_setting('search_path'), "
        "current_user"
    ).fetchone()
    if row is None or row[0] != SCHEMA:
        return
    path, role = str(row[1]), shown(conn, str(row[2]))
    raise MigrationRefused(
        f"the session's search_path ({path}) puts cicd-db's own schema {SCHEMA} first, "
        "so every migration's objects would be created there, beside the migration history "
        f"and outside every schema dump{' (the login role is named after it)' if row[2] == SCHEMA else ''}; "
        f"set a search_path that does not name it (ALTER ROLE {role} SET search_path = public, "
        "or where pg_settings says it is set) and run again"
    )


def literal(conn: psycopg.Connection[Any], text: str) -> bytes:
    """`text` as an SQL string literal. A file's name and checksum, and most role names,
    are ASCII letters, digits and `_.-` only, which a literal holds as they are whatever
    `standard_conforming_strings` says: quoted directly (psycopg's adapters cost
    microseconds a call, and the runner quotes five a file); anything else by psycopg."""
    if text.isascii() and text.replace("_", "a").replace(".", "a").replace("-", "a").isalnum():
        return b"'" + text.encode() + b"'"
    return sql.Literal(text).as_bytes(conn)


def insert_row(
    conn: psycopg.Connection[Any], migration: Migration, *, duration_ms: float | None
) -> bytes:
    """The INSERT of `migration`'s history row, as SQL text: it travels with other statements.

    `duration_ms` None: measured by the server, from the transaction's start.
    The row names the runner's login role, whatever role the file switched to.
    """
    return _INSERT % row_values(conn, migration, duration_ms=duration_ms)


def row_values(
    conn: psycopg.Connection[Any], migration: Migration, *, duration_ms: float | None
) -> dict[bytes, Any]:
    """The values of `migration`'s history row as SQL text (the time and, with
    `duration_ms` None, the duration as expressions), for its INSERT."""
    return {
        b"version": migration.version,
        b"name": literal(conn, migration.name),
        b"checksum": literal(conn, migration.checksum),
        b"user": literal(conn, conn.info.user),
        b"duration": _DURATION_SINCE_BEGIN if duration_ms is None else b"%d" % round(duration_ms),
    }
