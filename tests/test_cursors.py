"""Cursors and the caller's connection: how a cancel on it is told."""

from __future__ import annotations

import time

import psycopg
import pytest

from cicd_db import cursors
from cicd_db.errors import OperationalError

from .fix_db import Database

# Where the tests set the timeout, as the message then names it.
IN_THE_OPTIONS = (
    "in the connection's options (the URL's, the service's or PGOPTIONS): change it there, "
    "and run again"
)


def _cut(database: Database, timeout: str, *, age: float, cancel: bool) -> BaseException:
    """What `cancels_named` makes of `SELECT pg_sleep(5)` on a session `age` seconds old
    whose statement_timeout is `timeout` (set in the connection's options): cut by that
    timeout, or by a real pg_cancel_backend (`cancel`) before the timeout can cut it, the
    words PostgreSQL gives a timeout that fires as a statement ends (that race cannot be
    arranged)."""
    conninfo = database.settings.conninfo(options=f"-c statement_timeout={timeout}")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        time.sleep(age)  # the session grows old; no statement runs that long
        pid = conn.info.backend_pid

        canceller = database.canceller(
            pid, "query LIKE '%pg_sleep(5)%'", "the statement never started"
        )
        if cancel:
            canceller.start()
        try:
            with (
                pytest.raises((OperationalError, psycopg.errors.QueryCanceled)) as cut,
                cursors.cancels_named(conn),
            ):
                conn.execute("SELECT pg_sleep(5)")
        finally:
            if cancel:
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
    session's timeout could have fired, it is named as suspected, with where it is set; a
    person's cancel with no timeout, or one the session is too young to have met, is told
    as it is."""
    cut = _cut(database, timeout, age=2.2, cancel=True)
    if suspected:
        assert isinstance(cut, OperationalError)
        assert str(cut) == (
            "database error: canceling statement due to user request; if no one cancelled it, "
            f"the statement timeout did: statement_timeout is {timeout} {IN_THE_OPTIONS}"
        ), cut
    else:
        assert isinstance(cut, psycopg.errors.QueryCanceled), cut


def test_a_statement_the_timeout_cut_is_told_with_where_the_timeout_is_set(
    database: Database,
) -> None:
    """The CLI named the setting and listed every place it could be set; the session,
    still open, says which (helper-142)."""
    cut = _cut(database, "300ms", age=0, cancel=False)
    assert isinstance(cut, OperationalError), cut
    assert str(cut) == (
        "database error: canceling statement due to statement timeout; statement_timeout is "
        f"300ms {IN_THE_OPTIONS}"
    ), cut


def test_a_timeout_so_short_it_cuts_the_question_is_taken_to_have_fired(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement_timeout that cuts even could_have_timed_out's own question could have cut
    the statement before it (a 1 ms timeout left on the database)."""

    def cut(*args: object, **kwargs: object) -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    with psycopg.connect(database.url, autocommit=True) as conn:
        monkeypatch.setattr(cursors, "execute", cut)
        assert cursors.could_have_timed_out(conn)


def test_a_session_that_cannot_be_asked_is_not_said_to_have_timed_out(
    database: Database,
) -> None:
    """In a failed transaction the question itself fails: no timeout is named."""
    conninfo = database.settings.conninfo(options="-c statement_timeout=1ms")
    with psycopg.connect(conninfo) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1/0")
        assert not cursors.could_have_timed_out(conn)
