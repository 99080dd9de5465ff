"""One runner at a time per database: the runner's advisory lock, held by a second
connection of its own.

The lock is polled with `pg_try_advisory_lock` until a timeout: a blocking lock
would deadlock with `CONCURRENTLY`, which waits for every other transaction, ours
included. A file runs on the work connection, where nothing it does can touch the
lock (pg_advisory_unlock_all, DISCARD ALL): the lock is another session's.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from cicd_db.errors import CicdDbError, ConfigError, LockTimeout, OperationalError, standby
from cicd_db.libpq import params_in_use
from cicd_db.migrations.failures import POOLER_REFUSED, first_line
from cicd_db.migrations.session import LOCK_KEY, WORK_KEY, Session

DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a runner waits for another to finish
POLL_SECONDS = 0.05
# The lock's own session sits idle while files run: a database's or role's
# idle_session_timeout must not end it (and the lock with it).
LOCK_SESSION_OPTIONS = "-c idle_session_timeout=0"


def _in_pg_locks(key: int) -> str:
    """The pg_locks row of advisory lock `key` (one bigint key is there as its high and
    low halves, classid and objid, and objsubid 1), as a condition."""
    return (
        f"l.locktype = 'advisory' AND l.classid = {key >> 32}::pg_catalog.oid "
        f"AND l.objid = {key & 0xFFFF_FFFF}::pg_catalog.oid AND l.objsubid = 1"
    )


# Whether this session holds the work mark.
_MARK_HELD = (
    "SELECT FROM pg_catalog.pg_locks l WHERE l.pid = pg_catalog.pg_backend_pid() AND "
    + _in_pg_locks(WORK_KEY)
    + " AND l.mode = 'ShareLock' AND l.granted"
)
# The work mark, taken and given back by a work session (WORK_KEY); taking it says
# which server session took it.
_MARK = (
    "SELECT CASE WHEN NOT EXISTS (" + _MARK_HELD + ") "
    "THEN pg_catalog.pg_advisory_lock_shared(%s)::pg_catalog.text END, pg_catalog.pg_backend_pid()"
)
# Given back where this session holds it, and only there (not taken yet, or through a
# pooler in another server session, an unlock would be a WARNING of the server's); taken
# only where it is not held, so that once given back it is gone.
_UNMARK = "SELECT pg_catalog.pg_advisory_unlock_shared(%s) FROM (" + _MARK_HELD + ") AS held"  # noqa: S608 - constants
# The server session a statement ran in.
_WHO = "SELECT pg_catalog.pg_backend_pid()"
# ... and, first, whether that server takes writes at all.
_FIRST = "SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_is_in_recovery()"
# A statement of the lock session that takes or gives back a lock, run only in the server
# session that began it (a pooler could hand it to another client's session, which would
# keep the lock after the runner is gone): NULL anywhere else.
_IN_ITS_SESSION = "SELECT CASE WHEN pg_catalog.pg_backend_pid() = %s THEN {} END"


# Draws each run's own key (below): random, so no other session takes it by chance.
RUN_KEYS = random.SystemRandom()


@contextmanager
def held(session: Session, timeout: float) -> Iterator[None]:
    """Hold the runner's advisory lock, on a connection of its own, for `session`.

    Once it has the lock, the runner waits until no other work session holds the
    work mark (a killed runner's statement may still be running), then takes the
    mark on its own work session.
    """
    try:
        holder = psycopg.connect(conninfo_in_use(session.conn, lock=True), autocommit=True)
    except psycopg.OperationalError as error:
        if (refused := _refused(session, error)) is not None:
            raise refused.after(
                "cannot open the runner's second connection, which holds the migration lock"
            ) from None
        raise OperationalError(
            "cannot open the runner's second connection, which holds the migration lock: "
            f"{first_line(error)}; the runner needs two connections to the database (the "
            "database's CONNECTION LIMIT, which a migration may have set, the role's, or the "
            "server's max_connections may be too low)"
        ) from None
    try:
        own = own_sessions(session.conn, holder)
        holder.execute(_HOLD)
        deadline = time.monotonic() + timeout
        while not _try_lock(holder, own, LOCK_KEY) or not _work_done(holder, own):
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"another migration runner held the lock for {timeout:g} s{{holders}}; "
                    "wait for it to finish, or raise {lock_timeout}",
                    arguments=["lock_timeout"],
                    # As a value: an application's name may hold braces.
                    values={"holders": _holders(holder)},
                )
            time.sleep(POLL_SECONDS)
        # A key no other session takes: while the lock session holds it, the lock
        # session is alive, and so holds the runner's lock (integrity.lock_check).
        run_key = RUN_KEYS.randrange(1, 2**63)
        if not _try_lock(holder, own, run_key):
            raise OperationalError(f"another session holds the run's own key {run_key}; run again")
        try:  # the mark taken inside: an interrupt as it is taken still gives it back
            mark(session)
            session.lock_key = run_key
            yield
        finally:
            session.lock_key = None
            if session.end_transaction():
                with contextlib.suppress(psycopg.OperationalError):
                    session.conn.execute(_UNMARK, [WORK_KEY])
    finally:
        if not holder.broken and not holder.closed:
            with contextlib.suppress(psycopg.OperationalError):
                holder.execute("ROLLBACK")  # the locks go with its transaction, now
        holder.close()  # ends its session, and its transaction with the locks


# The lock session holds the runner's locks in a transaction of its own, open for the
# whole run: a pooler keeps one client's transaction in one server session, and a
# session whose client is gone ends its transaction, so the locks outlive neither the run
# nor the session (a session lock taken through a pooler that lends server sessions
# stayed on a pooled one, and held up every later run). READ COMMITTED whatever the
# default: a snapshot held for the run would make the runner's own CREATE INDEX
# CONCURRENTLY wait for it. No timeout of a role's or the database's may end it while it
# waits, idle, for the files (transaction_timeout: PostgreSQL 17+).
_HOLD = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; "
    "SELECT pg_catalog.set_config('idle_in_transaction_session_timeout', '0', true); "
    "SELECT pg_catalog.set_config('transaction_timeout', '0', true) "
    "WHERE pg_catalog.current_setting('transaction_timeout', true) IS NOT NULL"
)


def _work_done(holder: psycopg.Connection[Any], own: int) -> bool:
    """Whether no work session holds the work mark (a killed runner's statement may still
    be running): the mark taken alone, in a savepoint rolled back at once, which gives
    back what was taken after it."""
    holder.execute("SAVEPOINT cicd_db_work")
    try:
        return bool(_try_lock(holder, own, WORK_KEY))
    finally:  # rolled back to, then released: one savepoint a poll would nest ~9 kB each
        if not holder.broken:  # else the lost connection is told as such (_try_lock)
            holder.execute("ROLLBACK TO SAVEPOINT cicd_db_work; RELEASE SAVEPOINT cicd_db_work")


def own_sessions(work: psycopg.Connection[Any], holder: psycopg.Connection[Any]) -> int:
    """The lock session's server session (its pid), once each of the runner's two
    connections is known to be a server session of its own for as long as it lasts;
    ConfigError, before any lock is taken, for a pooler that lends server sessions a
    transaction or a statement at a time.

    A connection straight to PostgreSQL is told the id of its server session as it opens
    (BackendKeyData): the same as pg_backend_pid(). A pooler or proxy between gives an id
    of its own. Then each connection is asked again, in turn: a pooler that lends a
    server session per transaction gives the next to ask the one just given back
    (PgBouncer lends its idle sessions last in, first out), so one connection is seen
    in two sessions, or two connections in one. A pooler's session mode keeps each
    connection in its own. Other clients of the pooler can hide the lending in these
    few turns: the check in each file's transaction (integrity.lock_check) then stops the
    first file that runs in another session than the work session's.
    """
    row = work.execute(_FIRST).fetchone()
    if row is not None and row[1]:
        raise standby()
    first = (int(row[0]) if row else 0, _pid(holder))
    if first == (work.info.backend_pid, holder.info.backend_pid):
        return first[1]
    seen = [first, (_pid(work), _pid(holder)), (_pid(work), _pid(holder))]
    works, holders = {w for w, _ in seen}, {h for _, h in seen}
    if len(works) > 1 or len(holders) > 1 or works & holders:
        raise ConfigError(POOLER_REFUSED)
    return first[1]


def mark(session: Session) -> None:
    """Take the work mark on the work session, and note the server session it runs in,
    which each file's transaction must run in (integrity.lock_check)."""
    row = session.conn.execute(_MARK, [WORK_KEY]).fetchone()
    session.server_pid = int(row[1]) if row else None


def _pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(_WHO).fetchone()
    return int(row[0]) if row else 0


def _in_its_session(
    holder: psycopg.Connection[Any], own: int, statement: str, params: list[int]
) -> bool | None:
    """`statement` (a boolean expression) in the lock session's own server session:
    its value, or None where the connection was handed to another one."""
    row = _asked(holder, _IN_ITS_SESSION.format(statement), [own, *params])
    return None if row is None or row[0] is None else bool(row[0])


def _asked(holder: psycopg.Connection[Any], query: str, params: list[Any]) -> Any:
    """The first row of `query`, sent by the simple protocol (the values bound here): a
    statement sent by the extended protocol leaves its portal open until the next, and
    with it a snapshot, in the lock session's long transaction, for which every CREATE
    INDEX CONCURRENTLY of the run would wait (the runner's own too)."""
    with psycopg.ClientCursor(holder) as cursor:
        return cursor.execute(query, params).fetchone()


def _holders(holder: psycopg.Connection[Any]) -> str:
    """Who holds the runner's lock or work mark, for a lock timeout's message: the
    sessions, with what the server says of them (an idle session of a pooler kept the
    lock of a runner gone through it, and holds it until it is ended)."""
    with contextlib.suppress(psycopg.Error):
        with psycopg.ClientCursor(holder) as cursor:
            rows = cursor.execute(HOLDERS).fetchall()
        if rows:
            sessions = "; ".join(
                f"pid {pid}" + "".join(f", {part}" for part in parts if part)
                for pid, *parts in rows
            )
            pids = ", ".join(str(row[0]) for row in rows)
            end = (
                f"SELECT pg_terminate_backend({pids})"
                if len(rows) == 1
                else f"pg_terminate_backend on each of {pids}"
            )
            return f" (held by {sessions}; if no runner is at work, end it with {end})"
    return ""


# The sessions that hold the runner's lock or work mark: an advisory lock of one bigint
# key is in pg_locks as its high and low halves (classid, objid) and objsubid 1. What
# pg_stat_activity shows of another role's session (its state, its client) may be NULL.
HOLDERS = (
    "SELECT DISTINCT l.pid, 'user ' || a.usename, "  # noqa: S608 - constants
    "CASE WHEN a.application_name <> '' THEN 'application ' || a.application_name END, "
    "CASE WHEN a.client_addr IS NOT NULL THEN 'from ' || host(a.client_addr) END, "
    "CASE WHEN a.state IS NOT NULL THEN a.state || ' since ' "
    "|| to_char(a.state_change AT TIME ZONE interval '0', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' END "
    "FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.database = (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = pg_catalog.current_database()) AND "
    f"(({_in_pg_locks(LOCK_KEY)}) OR ({_in_pg_locks(WORK_KEY)})) AND l.granted "
    "AND l.pid <> pg_catalog.pg_backend_pid() ORDER BY 1"
)


def renew(session: Session, why: str) -> None:
    """A new work session in place of `session`'s, as psql starts one for each file
    (`why`: for the error when it cannot be opened): a
    file changed a database's or a role's settings (ALTER DATABASE/ROLE ... SET), which
    a session takes only as it begins (RESET ALL brings back what it began with), and
    the files after it must start as they would in any later run. Under the lock (the
    caller holds it): the work mark moves to the new session. The connection the runner
    was given stays open, for its owner to close, and `restore` goes back to it; one the
    runner opened itself (`Session.owned`) is closed, as psql's session ends with its
    file (what a file left that only a session's end gives back goes with it)."""
    try:
        new = psycopg.connect(conninfo_in_use(session.conn), autocommit=True)
    except psycopg.OperationalError as error:
        raise OperationalError(
            f"cannot open a new session {why}: {first_line(error)}; what was applied is "
            "recorded; run again (a new session is a connection more while the run lasts: "
            "a CONNECTION LIMIT must allow three)"
        ) from None
    new.prepare_threshold = None
    for handler in session.notice_handlers:
        new.add_notice_handler(handler)
    old, old_pid = session.conn, session.server_pid
    try:
        session.conn = new
        mark(session)
    except BaseException:  # a setting the file left may cut it (a 1 ms statement_timeout)
        session.conn, session.server_pid = old, old_pid
        new.close()  # and the mark with it, if it was taken
        raise
    if session.given is None and not session.owned:
        session.given = old
        with contextlib.suppress(psycopg.OperationalError):
            old.execute(_UNMARK, [WORK_KEY])
    else:
        old.close()  # the runner's own: opened by it, or by an earlier renewal


def restore(session: Session) -> None:
    """Back to the connection the runner was given, after `renew`, with the work mark."""
    given = session.given
    if given is None:
        return
    session.conn.close()
    session.given, session.conn, session.server_pid = None, given, None
    with contextlib.suppress(psycopg.OperationalError):
        mark(session)


def _try_lock(holder: psycopg.Connection[Any], own: int, key: int) -> bool:
    try:
        taken = _in_its_session(holder, own, "pg_catalog.pg_try_advisory_xact_lock(%s)", [key])
    except psycopg.OperationalError as error:
        raise OperationalError(
            f"lost the connection that takes the migration lock: {first_line(error)}; "
            "check that the server is up, and run again"
        ) from None
    if taken is None:
        raise ConfigError(POOLER_REFUSED)
    return taken


def _refused(session: Session, error: psycopg.OperationalError) -> CicdDbError | None:
    """The server's refusal of the lock's connection told as a first connection's is
    (refusals.connection_error: the right, the pg_hba.conf line or the login, and its
    fix, exit 2), where it is one the setup must fix: a CONNECT revoked since the first
    connection was made was told as a connection limit, exit 1. None for the rest (a
    limit, the server gone), which the caller tells."""
    from cicd_db.refusals import connection_error  # on use: only when one fails
    from cicd_db.settings import from_mapping

    try:
        settings = from_mapping(params_in_use(session.conn), what="the runner's connection")
    except CicdDbError:
        return None
    told = connection_error(settings, error)
    return told if told.exit_code == ConfigError.exit_code else None


def conninfo_in_use(conn: psycopg.Connection[Any], *, lock: bool = False) -> str:
    """`conn`'s parameters as libpq used them, to open another connection like it
    (libpq.params_in_use); with `lock`, the lock session's own options added."""
    params = params_in_use(conn)
    if lock:
        params["options"] = " ".join(filter(None, [params.get("options"), LOCK_SESSION_OPTIONS]))
    return make_conninfo(**params)
