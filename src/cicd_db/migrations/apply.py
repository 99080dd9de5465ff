"""Applying files: the loop, one file and its history row at a time.

A file and its history row commit in one transaction. The history row goes to the
history table by its schema-qualified name, whatever `search_path` the file set,
and only while the runner's own transaction is still the one open, the runner's
lock is still held, and the history is as the runner left it. A no-transaction
file runs outside any transaction, and its row is written after it. A file that
fails because of other sessions is rolled back and retried with backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult

from cicd_db.errors import (
    Interrupted,
    MigrationFailed,
    interrupt_exit_code,
)
from cicd_db.migrations import diagnose, history, history_table, integrity, lock, reconcile
from cicd_db.migrations.failures import RAN_ELSEWHERE, Transient
from cicd_db.migrations.files import Migration, index_target
from cicd_db.migrations.indexes import drop_invalid_index
from cicd_db.migrations.retry import Retry, RetryPolicy
from cicd_db.migrations.session import (
    AFTER_COMMIT,
    RESET_BEFORE_COMMIT,
    RESET_SESSION,
    Session,
)
from cicd_db.migrations.steps import lead_end, split_at
from cicd_db.migrations.verdicts import Verdicts

# Read as a file's transaction starts, before the file's first statement (or after
# its leading SET TRANSACTION statements, which must come first): the transaction's
# id, which no statement of a file can change (the history row is written only while
# it is the same: the transaction the runner began), and the history as the
# transaction finds it (integrity.STATE).
MARK = b"SELECT pg_catalog.pg_current_xact_id(), " + integrity.STATE + b";"
BEGIN_MARKED = b"BEGIN;" + MARK
# First in a file's closing batch: its deferred triggers and constraints run as its
# COMMIT would run them under psql, in the session the file left (its settings, role,
# search_path and temporary tables), before the runner resets it. After the history
# row's INSERT, again: what a deferred trigger or constraint on the history would do
# at COMMIT (delete the row, refuse it) happens there, before the checks read the
# history, and a refusal is told as the row's, with what was added to the table.
FIRE_DEFERRED = b"SET CONSTRAINTS ALL IMMEDIATE"
# Statements before the checks in a file's closing batch: the reset, then PINNED's.
_RESET_IN_TRANSACTION = 1 + RESET_BEFORE_COMMIT.count(b"; ") + 1 + history_table.PINNED_STATEMENTS


@dataclass(frozen=True)
class Result:
    """What apply() did with one migration."""

    migration: Migration
    duration_ms: float
    dry_run: bool
    notes: tuple[str, ...] = ()
    # What the run sends before the file (a dry run's: would send), as SQL.
    before: tuple[str, ...] = ()


def run(
    session: Session,
    files: list[Migration],
    target: int | None,
    *,
    lock_timeout: float,
    policy: RetryPolicy,
    on_applied: Callable[[Result], None] | None = None,
    on_retry: Callable[[Retry], None] | None = None,
    on_start: Callable[[Migration], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[Result]:
    """Apply the pending files up to `target` under the runner's lock. Writes."""
    with lock.held(session, lock_timeout):
        moved = history.create(session.conn)
        if moved and on_note:
            on_note(moved)
        # Read again under the lock: another runner may have applied some meanwhile.
        # create() has just found or made it in place: no second catalog search.
        applied = history.read(session.conn, placed=True)
        applier = Applier(
            session, integrity.Recorded([(row.version, row.name, row.checksum) for row in applied])
        )
        results = []
        pending = reconcile.pending(files, applied, target)
        if pending:
            session.begin_files()
        history.refuse_as_the_files_schema(session.conn)
        try:
            for number, migration in enumerate(pending, 1):
                if on_start:
                    on_start(migration)
                result = applier.apply_with_retries(migration, policy, on_retry)
                session.ran(migration)
                results.append(result)
                if on_applied:
                    on_applied(result)
                if number < len(pending) and (
                    migration.needs_new_session or session.login_triggers or session.dblink
                ):
                    lock.renew(session, _why_renewed(session, migration))
                    session.notice()
        finally:
            session.run_over()
            lock.restore(session)
        return results


# Whether the file left a WITH HOLD cursor open, asked just before COMMIT: PostgreSQL runs
# its query at the commit, after the runner's checks (Verdicts._after_a_held_cursor). Its
# result is found by its column's name.
HELD = b"cicd_db_held_cursors"
HELD_CURSORS = b"SELECT EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) AS " + HELD


class Applier(Verdicts):
    """Applies one file at a time on `session`, knowing the history's rows so far; what
    a failure left is told by the methods of `Verdicts` (verdicts.py)."""

    def __init__(self, session: Session, recorded: integrity.Recorded):
        self.session = session
        # The history's rows as the runner wrote them: a file may not change them
        # (TRUNCATE, DELETE, UPDATE, a table in their place).
        self.recorded = recorded

    def apply_with_retries(
        self, migration: Migration, policy: RetryPolicy, on_retry: Callable[[Retry], None] | None
    ) -> Result:
        attempt = 0
        try:
            while True:
                try:
                    result = self.apply(migration)
                    self.recorded.add(migration)
                    return result
                except Transient as failure:
                    attempt += 1
                    delay = policy.delay(attempt)
                    spent = policy.give_up(attempt, delay)
                    if spent:
                        if not (attempt > 1 or policy.retries):
                            raise MigrationFailed(str(failure)) from None
                        raise MigrationFailed(
                            "{failure}; {spent} (raise {retries} or {retry_budget})",
                            arguments=["retries", "retry_budget"],
                            values={"failure": failure, "spent": spent},
                        ) from None
                    policy.waited += delay
                    if on_retry:
                        on_retry(Retry(migration, failure.reason, attempt, policy.retries, delay))
                    time.sleep(delay)
        except KeyboardInterrupt as interrupt:
            raise Interrupted(
                self._interrupted(migration),
                exit_code=interrupt_exit_code(interrupt),
            ) from None
        except psycopg.OperationalError as error:
            # The connection dropped with no word from the server (a crash, an immediate
            # shutdown, the network): said of the file, as an interruption is.
            if not (self.conn.closed or self.conn.broken):
                raise
            raise MigrationFailed(self._lost(migration, error)) from None

    def apply(self, migration: Migration) -> Result:
        """Apply `migration` once, with its history row. Raises `Transient` for a
        failure caused by other sessions."""
        started = time.perf_counter()
        try:
            if migration.transactional:
                notes: tuple[str, ...] = ()
                self._in_transaction(migration)
            else:
                notes = self._outside_transaction(migration)
        except BaseException:
            self.session.reset()
            raise
        elapsed = (time.perf_counter() - started) * 1000
        return Result(migration, elapsed, dry_run=False, notes=notes)

    def _in_transaction(self, migration: Migration) -> None:
        """The file and its history row in one transaction, which must stay the runner's own.

        Two round trips: the transaction's start (its id, the history's state) travels with the
        file's first statements; the file's deferred triggers, the session reset, the
        runner's own settings (history_table.PINNED), the checks, the history row and COMMIT
        travel together. A check that fails stops everything after it, COMMIT included:
        the file ended the runner's transaction (its id is another), or the runner's lock
        was lost, or the history is not as the runner left it plus the file's row. The
        file's deferred triggers run first, in the session it left, as its COMMIT would
        run them under psql; then the reset, so that the checks run as the login role,
        with PINNED's settings.
        """
        begun = self._begin(migration)
        if self.conn.info.transaction_status != TransactionStatus.INTRANS:
            raise MigrationFailed(self._why(migration, integrity.CHECK_MARK, committed="may be"))
        finish = b"; ".join(
            [
                FIRE_DEFERRED,
                RESET_BEFORE_COMMIT,
                history_table.PINNED,
                integrity.transaction_check(begun),
                integrity.lock_check(self.session.lock_key, self.session.server_pid),
                history.insert_row(self.conn, migration, duration_ms=None),
                FIRE_DEFERRED,
                integrity.recorded_check(
                    self.conn,
                    self.recorded,
                    migration,
                    tuple(begun.get_value(0, column) for column in range(1, begun.nfields)),
                ),
                HELD_CURSORS,
                b"COMMIT",
                AFTER_COMMIT,
            ]
        )
        results = self.session.simple(finish)
        self._finish(migration, results, committed="may be", insert_at=_RESET_IN_TRANSACTION + 2)
        held = next(r for r in results if r.nfields == 1 and r.fname(0) == HELD)
        if held.get_value(0, 0) == b"t":
            self._after_a_held_cursor(migration)

    def _begin(self, migration: Migration) -> PGresult:
        """BEGIN, the file's statements, and the transaction's id read among them.

        The id is read with the file's first statements, or after its leading statements
        that take no snapshot when one of them is a `SET TRANSACTION ...`, which must come
        before any query, or when the transaction is repeatable read or serializable by
        default, whose snapshot psql takes at the file's first query (after a LOCK's
        wait): as psql runs them, BEGIN, then the file. Returns the id's result.
        """
        session = self.session
        # As the server reads strings: on a server with standard_conforming_strings off,
        # planned again, where the leading SET TRANSACTION statements are found too.
        steps = session.steps_for(migration)
        lead = lead_end(steps, session.standard_strings(), isolated=session.isolated)
        if lead is None:
            return session.run_steps(migration, prefix=BEGIN_MARKED)[1]
        # The leading settings (in one batch or several) first, then the id with the rest.
        head, tail = split_at(migration.data, steps, lead)
        session.run_steps(replace(migration, planned=head), prefix=b"BEGIN;")
        planned = replace(migration, planned=tail)
        return session.run_steps(planned, prefix=MARK, after=head[-1].end)[0]

    def _outside_transaction(self, migration: Migration) -> tuple[str, ...]:
        # The file commits as it goes and its row comes after it: were the lock lost
        # before it starts (its session ended during the file before, or while the history
        # was made), it would commit outside the lock, beside another runner perhaps, and
        # never be recorded; every later run would fail on what it made. So the lock is
        # asked first, and the file not started without it.
        checked = self.session.simple(
            integrity.lock_check(self.session.lock_key, self.session.server_pid)
        )
        if checked and checked[-1].status == ExecStatus.FATAL_ERROR:
            state = self.session.error(checked[-1]).diag.sqlstate
            what = (
                integrity.LOCK_LOST
                if state == integrity.CHECK_LOCK
                else f"the file would run {RAN_ELSEWHERE}"
            )
            raise MigrationFailed(
                f"stopped before migration {migration.filename}: {what}; nothing of it ran, "
                "and another runner could be at work; check what ended that session, and "
                "run again"
            )
        started = time.perf_counter()
        notes: tuple[str, ...] = ()
        after = 0
        steps = self.session.steps_for(migration)
        target = index_target(migration, steps)
        if target is not None:
            # The file's SET and RESET statements before its build run first: the table
            # is found, and an invalid index left on it dropped, in the session they
            # leave (its search_path, role and lock_timeout), where the build runs.
            if target.step:
                self.session.run_steps(replace(migration, planned=steps[: target.step]))
            try:
                notes = drop_invalid_index(self.conn, migration, target)
            except psycopg.Error as error:  # the lookup, cut (a statement_timeout of the file's)
                if self.conn.closed or self.conn.broken:
                    raise
                build = target.batch
                text = migration.data[build.start : build.end].decode("utf-8", "replace")
                raise diagnose.file_failure(
                    self.session, migration, build.line, error, text
                ) from None
            if target.step:  # the build is sent as psql sends it after the statement before
                after = steps[target.step - 1].end
            steps = steps[target.step :]
        self.session.run_steps(replace(migration, planned=steps), after=after)
        duration_ms = (time.perf_counter() - started) * 1000
        self.session.end_transaction()
        # The reset in a query of its own: a query's statements share one transaction,
        # whose access mode is fixed when it starts, so a default the file left
        # (default_transaction_read_only = on) would still hold for the history's row.
        self.session.simple(RESET_BEFORE_COMMIT)
        finish = b"; ".join(
            [
                history_table.PINNED,
                integrity.lock_check(self.session.lock_key, self.session.server_pid),
                history.insert_row(self.conn, migration, duration_ms=duration_ms),
                FIRE_DEFERRED,
                integrity.recorded_check(
                    self.conn, self.recorded, migration, duration_ms=duration_ms
                ),
                RESET_SESSION,  # what the row's triggers or defaults set, as AFTER_COMMIT
            ]
        )
        self._finish(
            migration,
            self.session.simple(finish),
            committed="is",
            insert_at=history_table.PINNED_STATEMENTS + 1,
        )
        return notes


def _why_renewed(session: Session, migration: Migration) -> str:
    """Why a new session follows `migration`, for the error when it cannot be opened."""
    if session.login_triggers:
        return "for the next file (each file gets one on a database with a login event trigger)"
    if session.dblink:
        return "for the next file (each file gets one on a database with dblink)"
    return (
        f"for the files after {migration.filename}, which names what only a new session is "
        "rid of or takes (a database's or a role's settings, LOAD, setseed, dblink, ...)"
    )
