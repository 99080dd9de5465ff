"""Rehearsal: the pending files run in one transaction that is always rolled back,
to see what they would lock, for how long, and whether they fail.

Writes nothing that a rollback keeps, but takes the files' locks on the real
tables (meant for a staging or dev copy with production-like data), and cannot
undo what lies outside the transaction: sequences it advanced (read before and
after each file) and the calls `OUTSIDE_THE_TRANSACTION` names.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import ExecStatus

from cicd_db.errors import (
    Interrupted,
    MigrationFailed,
    interrupt_exit_code,
)
from cicd_db.migrations import diagnose, history, history_table, integrity
from cicd_db.migrations.failures import (
    RAN_ELSEWHERE,
    READ_ONLY_BY_THE_FILE,
    THROUGH_A_SESSION,
    Transient,
    first_line,
)
from cicd_db.migrations.files import Migration
from cicd_db.migrations.kinds import sets_the_transaction
from cicd_db.migrations.session import RESET_SESSION, Session
from cicd_db.migrations.steps import Batch, Copy, lead_end, one_by_one
from cicd_db.sqltext import without_comments

# rollback cannot undo: (what the rehearsal says, how the file calls it). Read in
# the file's text, strings included (EXECUTE runs strings), comments and COPY data
# out: a hint for the reader, never a proof that nothing else happened.
OUTSIDE_THE_TRANSACTION = (
    ("dblink (its statements commit in another session)", rb"\bdblink\w*\s*\("),
    (
        "COPY ... TO a server file or program",
        # A string, a program, or format()'s placeholder for one (`TO %L`, `%1$s`; not
        # RAISE's bare `%`).
        rb"\bCOPY\b(?:\"[^\"]*\"|[^;])*?\bTO\s+(?:E'|U&'|'|%(?:\d+\$)?[sLI]|\$[A-Za-z_0-9]*\$|PROGRAM\b)",
    ),
    ("COPY ... FROM PROGRAM (runs a program)", rb"\bFROM\s+PROGRAM\b"),
    ("lo_export (writes a server file)", rb"\blo_export\s*\("),
    ("a server file function (pg_file_write and the like)", rb"\bpg_file_\w+\s*\("),
    (
        "pg_terminate_backend or pg_cancel_backend (other sessions)",
        rb"\bpg_(?:terminate|cancel)_backend\s*\(",
    ),
    ("pg_reload_conf (the server's configuration)", rb"\bpg_reload_conf\s*\("),
    ("pg_logical_emit_message (a logical decoding message)", rb"\bpg_logical_emit_message\s*\("),
    ("a replication slot function", rb"\bpg_\w*replication_slot\s*\("),
)


UNCOMMITTED_BEFORE = "apply the files before it, then rehearse this one"


def outside_the_transaction(migration: Migration) -> tuple[str, ...]:
    """What a file calls that a rollback does not undo, as far as its text shows."""
    data = bytearray(migration.data)
    for step in migration.steps:
        if isinstance(step, Copy):  # data lines are not SQL: an apostrophe there is no quote
            data[step.data.start : step.data.end] = b" " * (step.data.end - step.data.start)
    text = without_comments(bytes(data))
    return tuple(
        what
        for what, pattern in OUTSIDE_THE_TRANSACTION
        if re.search(pattern, text, re.IGNORECASE | re.DOTALL)
    )


@dataclass(frozen=True)
class LockHeld:
    """A table lock a rehearsed file took: its mode, and how long the file held it."""

    mode: str  # AccessExclusiveLock, ShareUpdateExclusiveLock, ...
    table: str
    held_ms: float


@dataclass(frozen=True)
class Rehearsal:
    """What rehearse() saw of one pending file."""

    migration: Migration
    duration_ms: float | None = None
    locks: tuple[LockHeld, ...] = ()
    sequences: tuple[str, ...] = ()  # advanced by the file; a rollback keeps that
    skipped: str | None = None  # why it was not rehearsed
    error: str | None = None  # how it failed in the rehearsal
    # No-transaction files before it that the rehearsal could not run: an error may
    # only mean the file needs one of them (it still counts as a failure: the
    # rehearsal claims only what it saw succeed).
    unrehearsed_before: tuple[str, ...] = ()
    # What the file calls whose effect lies outside the transaction: not undone.
    not_undone: tuple[str, ...] = ()
    # Statements of the file the rehearsal did not run, with why.
    unrehearsed: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.error is not None


def rehearse(session: Session, pending: list[Migration]) -> list[Rehearsal]:
    """Rehearse `pending`, in order, in one transaction that is rolled back; under
    the runner's lock (the caller holds it).

    For each transactional file: how long it took and every table lock it took,
    with how long it held it (from the statement that took it to the end of the
    file, as a real run would hold it until the file commits). The files build on
    each other as in a real run, all in the one transaction, so a lock an earlier
    file already holds is not seen again. Each file runs after a savepoint, so one
    that fails is undone and the ones after it still run; the session is reset
    between files, as in a real run. A no-transaction file cannot run inside the
    rehearsal's transaction: it is listed with the reason.
    """
    session.begin_files()  # as a run starts its first file
    history.refuse_as_the_files_schema(session.conn)
    results: list[Rehearsal] = []
    session.conn.execute("BEGIN")
    migration = pending[0]
    try:
        # The run makes the history, or moves an older release's into place, before its
        # first file: so does the rehearsal, in its transaction, so that a role that may
        # not is refused here as `up` would refuse it, and the files see the history
        # where the run's will.
        history.create(session.conn)
        session.savepoint = b"cicd_db_rehearsal"
        skipped: list[str] = []
        for migration in pending:
            if not migration.transactional:
                skipped.append(migration.filename)
                results.append(
                    Rehearsal(
                        migration,
                        skipped="a no-transaction file cannot run inside the rehearsal's "
                        "transaction (CREATE INDEX CONCURRENTLY, COMMIT in a procedure)",
                    )
                )
                continue
            results.append(_rehearse_one(session, migration, skipped))
            if not results[-1].failed:
                session.uncommitted_before = UNCOMMITTED_BEFORE
    except KeyboardInterrupt as interrupt:
        session.end_transaction()
        raise Interrupted(
            f"interrupted during the rehearsal of {migration.filename}; the rehearsal "
            "was rolled back, and nothing was applied",
            exit_code=interrupt_exit_code(interrupt),
        ) from None
    finally:
        session.savepoint = None
        session.run_over()
        session.end_transaction()
    return results


def _rehearse_one(session: Session, migration: Migration, skipped: list[str]) -> Rehearsal:
    conn = session.conn
    conn.execute("SAVEPOINT cicd_db_rehearsal")
    read_only_before = _read_only(conn)
    sequences = _sequences(conn)
    indexes = _indexes(conn)
    held_before = set(_table_locks(conn, indexes))
    first_seen: dict[tuple[str, str], float] = {}
    started = time.perf_counter()
    error: str | None = None
    # The rehearsal's transaction began before the file: SET TRANSACTION cannot run.
    # As the server reads strings (planned again where standard_conforming_strings is off).
    steps = session.steps_for(migration)
    lead = lead_end(steps, session.standard_strings())
    unrehearsed: tuple[str, ...] = ()
    not_run: list[bytes] = []  # the leading statements that set the transaction
    if lead:
        line = steps[0].line if isinstance(steps[0], Batch) else 1
        unrehearsed = (
            f"its SET TRANSACTION statements (from line {line}): the rehearsal's "
            "transaction began before the file",
        )
    lead = lead or 0
    left = list(steps)
    after = 0  # where the step before ended
    try:
        while left:
            step = left.pop(0)
            for one in one_by_one(migration.data, step, after):
                if (
                    isinstance(one, Batch)
                    and one.end <= lead
                    and sets_the_transaction(migration.data, one, one.standard_strings)
                ):
                    not_run.append(migration.data[one.start : one.end])
                    continue
                at = time.perf_counter()
                if isinstance(one, Copy):
                    session.copy(migration, one)
                else:
                    results = session.simple(migration.data[one.start : one.end])
                    diagnose.raise_on_error(session, migration, one, results)
                for lock in set(_table_locks(conn, indexes)) - held_before:
                    first_seen.setdefault(lock, at)
            after = step.end if isinstance(step, Batch) else step.data.end
            # The rest as the server now reads strings, as apply sends it.
            rest = session.rest_after(migration, step) if isinstance(step, Batch) else None
            if rest is not None:
                left = rest
    except (MigrationFailed, Transient) as failure:
        error = str(failure).removeprefix(f"migration {migration.filename} ")
    except psycopg.OperationalError as lost:
        error = first_line(lost)
    if session.lost:
        raise MigrationFailed(
            f"the rehearsal lost its connection in {migration.filename} ({error}); "
            "the server rolled the rehearsal back, and nothing after that file was "
            "rehearsed; if the file ends its own connection (pg_terminate_backend), it "
            "cannot be rehearsed"
        )
    ended = time.perf_counter()
    if error is None:
        error = _deferred_failure(session, migration)
    if error is None and not read_only_before and (_read_only(conn) or _leaves_read_only(not_run)):
        # A run writes the file's history row in the file's transaction, and fails there.
        error = (
            "failed at its commit: its transaction is read-only, where cicd-db writes its "
            "history row [25006]; it was rolled back; " + READ_ONLY_BY_THE_FILE
        )
    # A failed file is undone; a good one stays, for the files after it to build on.
    # Sequences are not transactional: read after a rollback, they still show a move.
    try:
        conn.execute(
            "ROLLBACK TO SAVEPOINT cicd_db_rehearsal" if error else "RELEASE cicd_db_rehearsal"
        )
    except psycopg.Error as ended_it:
        raise MigrationFailed(
            f"{migration.filename} ended the rehearsal's savepoint (RELEASE or ROLLBACK "
            f"TO cicd_db_rehearsal): {ended_it.diag.message_primary or ended_it}; the "
            "rehearsal was rolled back, and nothing after that file was rehearsed"
        ) from None
    # The next file starts with the session as the first did, as in a real run; and
    # the rehearsal goes on only while the runner's lock is still held.
    reset = session.simple(
        RESET_SESSION + b"; " + integrity.lock_check(session.lock_key, session.server_pid)
    )
    failed = next((r for r in reset if r.status == ExecStatus.FATAL_ERROR), None)
    cause = None if failed is None else session.error(failed).diag
    if cause is not None and cause.sqlstate == integrity.CHECK_MOVED:
        raise MigrationFailed(
            f"the rehearsal ran {migration.filename} {RAN_ELSEWHERE}; the rehearsal was "
            f"rolled back, and nothing after that file was rehearsed; {THROUGH_A_SESSION}"
        )
    if cause is not None and cause.sqlstate != integrity.CHECK_LOCK and not session.lost:
        # Not the lock: what the file left that a real run's COMMIT would have ended
        # first (a temporary table with deferred checks still pending), which the
        # rehearsal, never committing, cannot end.
        raise MigrationFailed(
            f"the rehearsal cannot reset the session after {migration.filename}, as a real "
            f"run does between files: {cause.message_primary} [{cause.sqlstate}] (a real "
            "run's commit ends that first); the rehearsal was rolled back, and nothing "
            "after that file was rehearsed: rehearse the files after it once it is applied"
        )
    if failed is not None:
        raise MigrationFailed(
            f"the rehearsal lost the runner's lock during {migration.filename} (the session "
            "that holds it ended: pg_terminate_backend, a lost connection, or a connection "
            "pooler's timeout for idle transactions); the rehearsal was rolled back, and "
            "nothing after that file was rehearsed"
        )
    # A sequence the file made goes with the rollback: only one that was there before
    # and moved is kept moved.
    advanced = tuple(
        name
        for name, value in _sequences(conn).items()
        if name in sequences and sequences[name] != value
    )
    locks = tuple(
        LockHeld(mode, table, (ended - at) * 1000)
        for (mode, table), at in sorted(first_seen.items(), key=lambda item: item[1])
    )
    return Rehearsal(
        migration,
        (ended - started) * 1000,
        locks,
        advanced,
        error=error,
        unrehearsed_before=tuple(skipped),
        not_undone=outside_the_transaction(migration),
        unrehearsed=unrehearsed,
    )


def _deferred_failure(session: Session, migration: Migration) -> str | None:
    """How the file would fail at its commit: deferred constraints checked now, inside
    a savepoint that is then rolled back (so the checks leave nothing behind)."""
    results = session.simple(b"SAVEPOINT cicd_db_commit; SET CONSTRAINTS ALL IMMEDIATE")
    failed = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
    session.simple(b"ROLLBACK TO SAVEPOINT cicd_db_commit; RELEASE cicd_db_commit")
    if failed is None:
        return None
    return diagnose.failure(session, migration, None, session.error(failed)).removeprefix(
        f"migration {migration.filename} "
    )


# The leading statements the rehearsal does not run (its transaction began before the
# file) that set the transaction's access mode, as PostgreSQL reads them.
_SET_TRANSACTION = re.compile(rb"set\s+(local\s+)?transaction\s", re.I)
_ACCESS_MODE = re.compile(rb"read\s+(only|write)\b", re.I)
_SET_READ_ONLY = re.compile(
    rb'(?P<verb>set|reset)\s+((session|local)\s+)?"?transaction_read_only"?\s*'
    rb"((=|to)\s*(?P<value>.*?))?\s*;?\s*$",
    re.I | re.S,
)


def _leaves_read_only(statements: list[bytes]) -> bool:
    """Whether `statements` (the leading ones not run, in order) leave the transaction
    read-only, the last that sets it winning: SET TRANSACTION ... READ ONLY | READ
    WRITE, SET or RESET of transaction_read_only (quoted too), with any spelling of a
    boolean PostgreSQL takes. SET SESSION CHARACTERISTICS sets the next transactions',
    not this one's."""
    read_only = False
    for statement in statements:
        code = without_comments(statement).strip()
        if _SET_TRANSACTION.match(code):
            modes = _ACCESS_MODE.findall(code)
            if modes:
                read_only = modes[-1].lower() == b"only"
        elif setting := _SET_READ_ONLY.match(code):
            value = setting["value"]
            if setting["verb"].lower() == b"reset" or value is None:
                read_only = False
            elif (
                meant := _boolean(value.strip().strip(b"'").decode("ascii", "replace"))
            ) is not None:
                read_only = meant
    return read_only


def _boolean(text: str) -> bool | None:
    """`text` as a boolean: a unique prefix of true, yes, false, no; on and off (one
    letter is not on); 1, 0. None for anything else."""
    value = text.strip().lower()
    if not value:
        return None
    if any(word.startswith(value) for word in ("true", "yes", "1")) or (
        len(value) > 1 and "on".startswith(value)
    ):
        return True
    if any(word.startswith(value) for word in ("false", "no", "off", "0")):
        return False
    return None


def _read_only(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_catalog.current_setting('transaction_read_only')").fetchone()
    return bool(row and row[0] == "on")


def _table_locks(conn: psycopg.Connection[Any], indexes: list[int]) -> list[tuple[str, str]]:
    """The session's locks on what others read or write: tables, views, materialized
    views and foreign tables; and, where the lock stops others' reads or writes (not
    what any query or write of them takes), sequences (nextval waits behind ALTER
    SEQUENCE) and the `indexes` that were there before the file (a new one no one else
    sees yet)."""
    rows = conn.execute(
        "SELECT l.mode, c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_locks l "
        "JOIN pg_catalog.pg_class c ON c.oid = l.relation "
        "WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' AND l.granted "
        "AND (c.relkind IN ('r', 'p', 'm', 'v', 'f') OR (c.relkind = 'S' OR c.oid = ANY(%s::pg_catalog.oid[])) "
        "AND l.mode NOT IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock')) "
        "AND c.relnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'pg_toast'::pg_catalog.regnamespace) "
        "AND c.relname <> %s",
        [indexes, history_table.TABLE],
    ).fetchall()
    return [(str(mode), str(table)) for mode, table in rows]


def _indexes(conn: psycopg.Connection[Any]) -> list[int]:
    rows = conn.execute(
        "SELECT oid::pg_catalog.int8 FROM pg_catalog.pg_class WHERE relkind IN ('i', 'I') "
        "AND relnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'pg_toast'::pg_catalog.regnamespace)"
    ).fetchall()
    return [int(oid) for (oid,) in rows]


def _sequences(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT pg_catalog.format('%I.%I', schemaname, sequencename), last_value FROM pg_catalog.pg_sequences"
    ).fetchall()
    return dict(rows)
