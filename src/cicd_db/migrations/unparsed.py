"""Which statement of a query the server could not parse, when it named no position.

The server parses a simple query whole before it runs any of it: an error there (bytes
an `E'\\xff'` escape makes that are not UTF-8) fails the whole query, and may come with
no position. Sent again in halves inside the aborted transaction, behind a statement
that transaction refuses, each half is parsed and nothing of it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.pq import ExecStatus, TransactionStatus

from cicd_db.migrations.steps import spaced_between
from cicd_db.sqltext import Scanner, Statement

if TYPE_CHECKING:
    from cicd_db.migrations.files import Migration
    from cicd_db.migrations.session import Session
    from cicd_db.migrations.steps import Batch


def first_unparsed(session: Session, migration: Migration, batch: Batch) -> Statement | None:
    """The statement of `batch` the server cannot parse, when it failed as a whole
    with no position named: sent again in ranges (halving) inside the aborted
    transaction, where nothing runs. None when the batch holds one statement, the
    transaction is not in error, or every statement parses (then the first one failed
    running). The search runs in a transaction begun and failed on purpose, which the
    caller's rollback ends."""
    scanner = Scanner(
        migration.data[: batch.end],
        standard_strings=batch.standard_strings,
        start=batch.start,
        line=batch.line,
    )
    pieces = [piece for piece in scanner if isinstance(piece, Statement)]
    if len(pieces) < 2:
        return None
    # The error ended the transaction, and the settings made in it with it (a SET of the
    # file's before the batch): strings are read again as the batch was read, by a SET
    # that outlasts the failed transaction begun after it (the caller's reset ends it).
    reading = b"on" if batch.standard_strings else b"off"
    state = session.conn.info.transaction_status
    if session.savepoint is not None and state == TransactionStatus.INERROR:
        session.simple(
            b"ROLLBACK TO SAVEPOINT " + session.savepoint
            + b"; " + _READ_AS + reading
            + b"; SAVEPOINT cicd_db_parse; " + _ABORT
        )  # fmt: skip
    elif session.savepoint is None and state in _ENDED:
        # Each alone: in one query, the SET would be in the transaction BEGIN goes on with.
        if state == TransactionStatus.INERROR:
            session.simple(b"ROLLBACK")
        session.simple(_READ_AS + reading)
        session.simple(b"BEGIN; " + _ABORT)
    if session.conn.info.transaction_status != TransactionStatus.INERROR:
        return None
    data = migration.data

    converts = session.converts_text()

    def parses(first: int, last: int) -> bool:
        start, end = pieces[first].start, pieces[last - 1].end
        if not converts:
            return _parses(session, data[start:end])
        # What lies between the statements as the run sent it (steps.as_psql_sends): a
        # character the database's encoding lacks there would fail every span.
        return _parses(session, spaced_between(data, pieces[first:last], start, end))

    if parses(0, len(pieces)):
        return None
    low, high = 0, len(pieces)  # the first that does not parse is in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if parses(low, middle):
            low = middle
        else:
            high = middle
    return pieces[low]


_ENDED = (TransactionStatus.IDLE, TransactionStatus.INERROR)
# The parses say again what the failed query's said (a warning of \\' in a string, say):
# only errors are heard.
_READ_AS = b"SET client_min_messages = error; SET standard_conforming_strings = "
_ABORT = b"DO $cicd_db$BEGIN RAISE 'cicd-db: only parsing from here'; END$cicd_db$"


def _parses(session: Session, text: bytes) -> bool:
    """In an aborted transaction: whether the server parses `text`. Nothing in it runs:
    the server parses a query whole first, then refuses the statement put before it
    for the aborted transaction (25P02: "it parses"), and runs nothing after an error
    (not even a ROLLBACK in `text`, which an aborted transaction would take)."""
    results = session.simple(b"SELECT 1; " + text)
    failed = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
    return failed is not None and session.error(failed).diag.sqlstate == "25P02"
