"""How the store talks to its database: one connection (its statements' cursors kept) or
a pool (a connection borrowed for each call), rows read into their dataclasses. The
base of `Store`; the moves and the reads build on it."""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, Self, TypeVar
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row

from cicd_db import cursors
from cicd_db.errors import ConfigError, NotFound, UsageError, standby
from cicd_db.store.rows import TABLES, Row
from cicd_db.store.search_path import check_search_path

# A database or role may make every transaction REPEATABLE READ or SERIALIZABLE
# (default_transaction_isolation); the server then refuses a write that met another
# writer's (40001, serialization_failure) where READ COMMITTED would have waited and read
# the row again. A store call is a transaction of its own, nothing of which was kept:
# it is run again from the start, as the server asks, with a growing random pause, and
# its outcome is READ COMMITTED's (a move another writer made first is then refused as
# such). Not inside the caller's own transaction, which the failure has ended: that one
# is the caller's to run again, and the error is passed on.
SERIALIZATION_RETRIES = 30
# A deadlock (40P01) ends the call's transaction as a serialization failure does, with
# nothing kept: a migration's ALTER TABLE and a writer's call lock the tables in turn
# (a writer met one during a live `migrate up`). Run again the same way.
# A plan another session's change made stale (0A000): psycopg prepares a statement sent
# `prepare_threshold` times, and once a migration changes the type of a column that
# statement returns (ALTER COLUMN ... TYPE), the server refuses that plan each time it
# is used ("cached plan must not change result type") and psycopg goes on using it: every
# later call on the connection failed until it was closed. The plans are forgotten
# (`_forget_plans`: by `retried` on the store's one connection, by `_ready_from` on a
# pool's before it goes back) and the call run again, a few times at most.
STALE_PLAN_RETRIES = 3
_PAUSES = random.Random()  # noqa: S311 - pauses, not secrets

Method = TypeVar("Method", bound=Callable[..., Any])


def retried(method: Method) -> Method:
    """`method` of a store, run again when the server refused it for serialization; a
    write a hot standby refused is told as the standby's (errors.standby)."""

    @functools.wraps(method)
    def call(self: Connected, *args: Any, **kwargs: Any) -> Any:
        if not self._triggers_checked:
            self._check_triggers_fire()
        for attempt in itertools.count(1):
            try:
                return method(self, *args, **kwargs)
            except psycopg.errors.ReadOnlySqlTransaction:
                if self._in_recovery():
                    raise standby("nothing was written") from None
                if where := self._set_for_session("default_transaction_read_only", "on"):
                    raise ConfigError(f"the store may not write: {where}") from None
                raise
            except psycopg.errors.InsufficientPrivilege as denied:
                # The reader's role (ci_reader) recording, or a role given no grants: named
                # with the roles that may, the server's refusal kept as the cause.
                raise ConfigError(
                    f"role {self._role()} may not do that: {denied.diag.message_primary}; "
                    "record executions as the writer (ci_app, which `--local` and `--stack` "
                    "use, or app_database_url) and read them as the reader (ci_reader) or the "
                    "writer; a table no grant of the migrations covers needs a GRANT to them"
                ) from denied
            except psycopg.errors.FeatureNotSupported:
                conn = self._conn
                if attempt > STALE_PLAN_RETRIES or (
                    conn is not None and conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    raise
                if conn is not None:  # a pool's connection forgot them on its way back
                    _forget_plans(conn)
            except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
                conn = self._conn
                if attempt > SERIALIZATION_RETRIES or (
                    conn is not None and conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    raise
                time.sleep(_PAUSES.uniform(0, 0.0005 * 2 ** min(attempt, 8)))
        raise AssertionError("unreachable")  # pragma: no cover

    return call  # type: ignore[return-value]


class Connected:
    """The store's connection: one in autocommit mode, or a pool's."""

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
        conn: psycopg.Connection[Any] | None = None,
    ):
        self._connection = connection
        # Over one connection, each statement sent again and again (a move above all: a
        # CI system's agents move jobs all day) has a cursor of its own, kept, not one
        # made per call. Of its own: a psycopg cursor sent a statement other than the
        # one it sent last starts over with a new Transformer, which looks up its
        # dumpers and loaders again (a job's two moves, on one cursor, each did).
        self._conn = conn
        self._cursors: dict[bytes, psycopg.Cursor[Any]] = {}
        self._session: tuple[bytes | None, bytes | None] = (None, None)
        self._triggers_checked = False
        self._path_checked = False

    @classmethod
    def on(cls, conn: psycopg.Connection[Any]) -> Self:
        """A store over one connection (not thread-safe: one caller at a time)."""
        if not isinstance(conn, psycopg.Connection):  # None, a pool, an AsyncConnection
            raise UsageError(
                f"{{conn}} must be a psycopg.Connection, not a {type(conn).__name__}"
                + ("; for a pool, Store.pooled(pool)" if hasattr(conn, "getconn") else ""),
                arguments=["conn"],
            )
        cursors.ready(conn, "the store", alone=False)
        return cls(lambda: nullcontext(cursors.ready(conn, "the store", alone=False)), conn)

    @classmethod
    def pooled(cls, pool: Any) -> Self:
        """A store over a `psycopg_pool.ConnectionPool` opened with kwargs={"autocommit": True};
        safe to share between threads."""
        if isinstance(pool, psycopg.Connection) or not callable(getattr(pool, "connection", None)):
            raise UsageError(
                f"{{pool}} must be a psycopg_pool.ConnectionPool, not a {type(pool).__name__}"
                + (
                    "; for one connection, Store.on(conn)"
                    if isinstance(pool, psycopg.Connection)
                    else ""
                ),
                arguments=["pool"],
            )
        return cls(lambda: _ready_from(pool))

    def _asked(self, query: str) -> Any:
        """The one value `query` returns, for telling a failure; None when it cannot be
        asked (the caller's transaction failed, or the connection did: the error the
        caller gets is the one that failed)."""
        try:
            with self._connection() as conn:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    return None
                row = cursors.execute(conn, query).fetchone()
        except (psycopg.Error, UsageError):
            return None
        return row[0] if row else None

    def _role(self) -> str:
        """The role the store's session acts as, for a message; `this role` when that
        cannot be asked."""
        role = self._asked("SELECT current_user")
        return "this role" if role is None else repr(str(role))

    def _check_triggers_fire(self) -> None:
        """Before this store's first write, asked once a store (a pool's connections share
        their settings), ConfigError and nothing written:

        - under session_replication_role = replica (a logical replication subscriber's,
          set for the role, the database or PGOPTIONS) no ordinary trigger fires, and the
          store's number runs and keep the roll-ups: a run got no number, and a finished
          one no roll-up, silently;
        - a search_path that would have the store's statements use what is not
          PostgreSQL's or cicd-db's (reads.check_search_path): an `=` of another schema
          searched before pg_catalog made add_jobs insert three times the rows, and a
          move move every job of the database."""
        if where := self._set_for_session("session_replication_role", "replica"):
            raise ConfigError(
                "the store's triggers (run numbers, roll-ups) do not fire under "
                f"session_replication_role = replica; nothing was written; {where}"
            )
        self._path_asked()
        self._triggers_checked = True

    def _path_asked(self) -> None:
        """Before this store's first read or write, once a store: ConfigError when its
        search_path would have its statements use what is not PostgreSQL's or cicd-db's
        (search_path.check_search_path); a Python caller's reads gave wrong answers."""
        if self._path_checked:
            return
        with self._connection() as conn:
            if conn.info.transaction_status == TransactionStatus.IDLE:
                check_search_path(conn)
        self._path_checked = True

    def _set_for_session(self, name: str, value: str) -> str | None:
        """Where this session's setting `name` was made `value` and what undoes it
        (cursors.where_set), or None when it is not that or cannot be asked."""
        try:
            with self._connection() as conn:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    return None
                return cursors.where_set(conn, name, only=value)
        except (psycopg.Error, UsageError):  # the borrowing itself
            return None

    def _in_recovery(self) -> bool:
        """Whether the server is a hot standby; False when that cannot be asked."""
        return bool(self._asked("SELECT pg_catalog.pg_is_in_recovery()"))

    def _tuple(
        self, query: bytes, params: Sequence[Any] | Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row `query` returns, as a tuple; over one connection through the cursor
        kept for it (writes are the hot path: a CI system's agents report all day). In
        binary: times and ids come back without being parsed from text."""
        if self._conn is not None:
            return self._kept(self._conn, query).execute(query, params).fetchone()
        with self._connection() as conn, cursors.cursor(conn, binary=True) as cursor:
            cursor.execute(query, params)
            return cursor.fetchone()

    def _rows(
        self, query: bytes, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row `query` returns, as tuples, as _tuple reads them: in binary, where
        arrays of names and ids cost the least to send and to read back."""
        if self._conn is not None:
            return self._kept(self._conn, query).execute(query, params).fetchall()
        with self._connection() as conn, cursors.cursor(conn, binary=True) as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()

    def _kept(self, conn: psycopg.Connection[Any], query: bytes) -> psycopg.Cursor[Any]:
        """The cursor kept for `query` over the store's one connection: binary, tuples.
        Only the store's own statements (constants, a few dozen) come here. A cursor
        keeps the encoding and time zone the session had when it was made (its dumpers
        and loaders): when either has changed since (a `SET` by the connection's other
        users), the kept cursors are dropped, and made again. The connection is asked
        first whether it is still fit (cursors.ready): its caller may have changed it."""
        cursors.ready(conn, "the store", alone=False)
        session = (
            conn.pgconn.parameter_status(b"client_encoding"),
            conn.pgconn.parameter_status(b"TimeZone"),
        )
        if session != self._session:
            self._cursors.clear()
            self._session = session
        cursor = self._cursors.get(query)
        if cursor is None:
            cursor = self._cursors[query] = cursors.cursor(conn, binary=True)
        return cursor

    def _get(self, kind: type[Row], row_id: UUID) -> Row:
        table, columns, what = TABLES[kind]
        query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(columns, table)
        found = self._maybe(kind, query, [row_id])
        if found is None:
            raise NotFound(f"no {what} with id {row_id}")
        return found

    def _maybe(self, kind: type[Row], query: bytes | sql.Composed, params: Any) -> Row | None:
        self._path_asked()
        with self._connection() as conn:
            return fetch_one(conn, kind, query, params)

    def _all(self, kind: type[Row], query: bytes | sql.Composed, params: Any) -> list[Row]:
        self._path_asked()
        with (
            self._connection() as conn,
            cursors.cursor(conn, binary=True, row_factory=class_row(kind)) as cursor,
        ):
            cursor.execute(query, params)
            return cursor.fetchall()


def fetch_one(
    conn: psycopg.Connection[Any], kind: type[Row], query: bytes | sql.Composed, params: Any
) -> Row | None:
    with cursors.cursor(conn, binary=True, row_factory=class_row(kind)) as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()


def _forget_plans(conn: psycopg.Connection[Any]) -> None:
    """`DEALLOCATE ALL` on `conn` outside a transaction, through psycopg, whose cache of
    what it prepared empties with it (see STALE_PLAN_RETRIES). A statement the caller
    prepared with SQL of its own goes as well; psycopg's it prepares again. Not inside
    the caller's transaction, which the failure ended."""
    if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
        with suppress(psycopg.Error):  # the call's own error is the one to tell
            conn.execute("DEALLOCATE ALL")


@contextmanager
def _ready_from(pool: Any) -> Iterator[psycopg.Connection[Any]]:
    """A connection borrowed from `pool` for one call, in a state the call can work in."""
    with pool.connection() as conn:
        try:
            yield cursors.ready(conn, "the store", alone=False)
        except psycopg.errors.FeatureNotSupported:
            _forget_plans(conn)  # back to the pool without the stale plans
            raise
