"""Cursors and the caller's connection: how a cancel on it is told."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from cicd_db import cursors
from cicd_db.errors import OperationalError

from .fix_db import Database


def _cancelled_while_sleeping(database: Database, timeout: str, age: float) -> BaseException:
    """What `cancels_named` makes of a real pg_cancel_backend of a session `age` seconds old
    whose statement_timeout is `timeout`, in a statement younger than that timeout: the
    words PostgreSQL gives a timeout that fires as a statement ends (that race cannot be
    arranged)."""
    with database.connect() as conn:
        conn.execute(f"SET statement_timeout = '{timeout}'")
        time.sleep(age)  # the session grows old; no statement runs that long
        pid = conn.info.backend_pid

        def cancel() -> None:
            database.wait_for(
                f"SELECT FROM pg_stat_activity WHERE pid = {pid} AND query LIKE '%pg_sleep(5)%'",
                "the statement never started",
            )
            database.query("SELECT pg_cancel_backend(%s)", pid)

        canceller = threading.Thread(target=cancel)
        canceller.start()
        try:
            with (
                pytest.raises((OperationalError, psycopg.errors.QueryCanceled)) as cut,
                cursors.cancels_named(conn),
            ):
                conn.execute("SELECT pg_sleep(5)")
        finally:
            canceller.join()
        return cut.value


@pytest.mark.parametrize(
    ("timeout", "suspected"),
    [("2s", True), ("0", False), ("1h", False)],
    ids=["one-it-has-lived-through", "none", "one-it-cannot-have-met"],
)
def test_a_cancel_by_user_request_is_told_as_the_timeout_only_where_one_could_have_fired(
    database: Database, timeout: str, suspected: bool
) -> None:
    """A statement timeout that fires as a statement ends is told by PostgreSQL as the next
    statement's cancel "due to user request": report and insights said "run again", which
    meets it again (a 1 ms timeout left on the database, seen in the suite). Where the
    session's timeout could have fired, it is named as suspected, with where to look; a
    person's cancel with no timeout, or one the session is too young to have met, is told
    as it is."""
    cut = _cancelled_while_sleeping(database, timeout, age=2.2)
    if suspected:
        assert isinstance(cut, OperationalError)
        assert str(cut).startswith(
            "database error: canceling statement due to user request; if no one cancelled "
            "it, statement_timeout stopped it, set for this session by the role, the database"
        ), cut
    else:
        assert isinstance(cut, psycopg.errors.QueryCanceled), cut
