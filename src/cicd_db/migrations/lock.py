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

from cicd_db.errors import LockTimeout, OperationalError
from cicd_db.libpq import params_in_use
from cicd_db.migrations.failures import first_line
from cicd_db.migrations.session import LOCK_KEY, WORK_KEY, Session

DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a runner waits for another to finish
POLL_SECONDS = 0.05
# The lock's own session sits idle while files run: a database's or role's
# idle_session_timeout must not end it (and the lock with it).
LOCK_SESSION_OPTIONS = "-c idle_session_timeout=0"
# The work mark, taken and given back by a work session (WORK_KEY).
_MARK = "SELECT pg_catalog.pg_advisory_lock_shared(%s)"
_UNMARK = "SELECT pg_catalog.pg_advisory_unlock_shared(%s)"
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
        raise OperationalError(
            "cannot open the runner's second connection, which holds the migration lock: "
            f"{first_line(error)}; the runner needs two connections to the database (the "
            "database's CONNECTION LIMIT, which a migration may have set, the role's, or the "
            "server's max_connections may be too low)"
        ) from None
    try:
        deadline = time.monotonic() + timeout
        for key in (LOCK_KEY, WORK_KEY):
            while not _try_lock(holder, key):
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"another migration runner held the lock for {timeout:g} "
                        "s; wait for it to finish, or raise {lock_timeout}",
                        arguments=["lock_timeout"],
                    )
                time.sleep(POLL_SECONDS)
        # A key no other session takes: while the lock session holds it, the lock
        # session is alive, and so holds the runner's lock (integrity.lock_check).
        run_key = RUN_KEYS.randrange(1, 2**63)
        holder.execute(
            "SELECT pg_catalog.pg_advisory_unlock(%s), pg_catalog.pg_advisory_lock(%s)",
            [WORK_KEY, run_key],
        )
        session.conn.execute(_MARK, [WORK_KEY])
        session.lock_key = run_key
        try:
            yield
        finally:
            session.lock_key = None
            if session.end_transaction():
                with contextlib.suppress(psycopg.OperationalError):
                    session.conn.execute(_UNMARK, [WORK_KEY])
            if not holder.broken:
                with contextlib.suppress(psycopg.OperationalError):
                    holder.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", [LOCK_KEY])
    finally:
        holder.close()  # ends its session, and the lock with it


def renew(session: Session) -> None:
    """A new work session in place of `session`'s, as psql starts one for each file: a
    file changed a database's or a role's settings (ALTER DATABASE/ROLE ... SET), which
    a session takes only as it begins (RESET ALL brings back what it began with), and
    the files after it must start as they would in any later run. Under the lock (the
    caller holds it): the work mark moves to the new session. The connection the runner
    was given stays open, for its owner to close; `restore` goes back to it."""
    try:
        new = psycopg.connect(conninfo_in_use(session.conn), autocommit=True)
    except psycopg.OperationalError as error:
        raise OperationalError(
            "cannot open a new session for the files after one that changed a database's "
            f"or a role's settings (which only new sessions take): {first_line(error)}; "
            "what was applied is recorded; run again"
        ) from None
    new.prepare_threshold = None
    try:
        new.execute(_MARK, [WORK_KEY])
    except BaseException:  # a setting the file left may cut it (a 1 ms statement_timeout)
        new.close()
        raise
    old = session.conn
    if session.given is None:
        session.given = old
        with contextlib.suppress(psycopg.OperationalError):
            old.execute(_UNMARK, [WORK_KEY])
    else:
        old.close()  # the runner's own, from an earlier renewal
    session.conn = new


def restore(session: Session) -> None:
    """Back to the connection the runner was given, after `renew`, with the work mark."""
    given = session.given
    if given is None:
        return
    session.conn.close()
    session.given, session.conn = None, given
    with contextlib.suppress(psycopg.OperationalError):
        given.execute(_MARK, [WORK_KEY])


def _try_lock(holder: psycopg.Connection[Any], key: int) -> bool:
    try:
        row = holder.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", [key]).fetchone()
    except psycopg.OperationalError as error:
        raise OperationalError(
            f"lost the connection that takes the migration lock: {first_line(error)}; "
            "check that the server is up, and run again"
        ) from None
    return bool(row and row[0])


def conninfo_in_use(conn: psycopg.Connection[Any], *, lock: bool = False) -> str:
    """`conn`'s parameters as libpq used them, to open another connection like it
    (libpq.params_in_use); with `lock`, the lock session's own options added."""
    params = params_in_use(conn)
    if lock:
        params["options"] = " ".join(filter(None, [params.get("options"), LOCK_SESSION_OPTIONS]))
    return make_conninfo(**params)
