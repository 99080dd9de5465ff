"""Applying files: the loop, one file and its history row at a time, and the retry policy.

A file and its history row commit in one transaction. The history row goes to the
history table by its schema-qualified name, whatever `search_path` the file set,
and only while the runner's own transaction is still the one open, the runner's
lock is still held, and the history is as the runner left it. A no-transaction
file runs outside any transaction, and its row is written after it. A file that
fails because of other sessions is rolled back and retried with backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult

from cicd_db.errors import (
    Interrupted,
    MigrationFailed,
    MigrationRefused,
    interrupt_exit_code,
)
from cicd_db.migrations import diagnose, history, integrity, lock, reconcile
from cicd_db.migrations.failures import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BUDGET,
    RETRIED_SQLSTATES,
    Transient,
    first_line,
)
from cicd_db.migrations.files import IndexTarget, Migration, index_target
from cicd_db.migrations.session import (
    AFTER_COMMIT,
    CHECK_LOCK,
    CHECK_MARK,
    RESET_BEFORE_COMMIT,
    RESET_SESSION,
    Session,
)
from cicd_db.migrations.statements import lead_end, split_at

FIRST_RETRY_DELAY = 0.2  # seconds; doubles with each retry of a file, up to MAX_RETRY_DELAY
MAX_RETRY_DELAY = 10.0
CHECK_HISTORY_GONE = "history gone"  # not raised: read from the INSERT's undefined_table
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
_RESET_IN_TRANSACTION = 1 + RESET_BEFORE_COMMIT.count(b"; ") + 1 + history.PINNED_STATEMENTS


@dataclass(frozen=True)
class Result:
    """What apply() did with one migration."""

    migration: Migration
    duration_ms: float
    dry_run: bool
    notes: tuple[str, ...] = ()
    # What the run sends before the file (a dry run's: would send), as SQL.
    before: tuple[str, ...] = ()


@dataclass(frozen=True)
class Retry:
    """A file that failed because of other sessions and is about to run again."""

    migration: Migration
    reason: str  # "lock not available at line 12 (ALTER TABLE job_executions ...)"
    attempt: int  # 1 for the first retry
    retries: int
    delay: float  # seconds before it runs again

    def __str__(self) -> str:
        return (
            f"{self.migration.filename}: {self.reason}, "
            f"retry {self.attempt}/{self.retries} in {self.delay:.1f} s"
        )


@dataclass
class RetryPolicy:
    """How often, and after how long, a file that met other sessions runs again: at most
    `retries` times per file, waiting at most `budget` seconds over the whole run."""

    retries: int = DEFAULT_RETRIES
    budget: float = DEFAULT_RETRY_BUDGET
    waited: float = 0.0  # seconds spent waiting so far in the run

    def delay(self, attempt: int) -> float:
        """Seconds before retry `attempt` (1 for the first): doubling, spread by +-25% so
        that runners that met each other do not meet again."""
        base: float = min(FIRST_RETRY_DELAY * 2.0 ** (attempt - 1), MAX_RETRY_DELAY)
        return base * random.uniform(0.75, 1.25)  # noqa: S311 (spreads runners apart)

    def give_up(self, attempt: int, delay: float) -> str | None:
        """Why retry `attempt` after `delay` seconds may not happen, or None if it may."""
        if attempt > self.retries:
            return f"gave up after {attempt - 1} retr{'y' if attempt == 2 else 'ies'}"
        if self.waited + delay > self.budget:
            return f"the retry budget of {self.budget:g} s is spent"
        return None


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
        history.refuse_as_the_files_schema(session.conn)
        applier = Applier(
            session, integrity.Recorded([(row.version, row.name, row.checksum) for row in applied])
        )
        results = []
        pending = reconcile.pending(files, applied, target)
        if pending:
            session.notice()
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
                    migration.needs_new_session or session.login_triggers
                ):
                    lock.renew(session)
                    session.notice()
        finally:
            session.run_over()
            lock.restore(session)
        return results


class Applier:
    """Applies one file at a time on `session`, knowing the history's rows so far."""

    def __init__(self, session: Session, recorded: integrity.Recorded):
        self.session = session
        # The history's rows as the runner wrote them: a file may not change them
        # (TRUNCATE, DELETE, UPDATE, a table in their place).
        self.recorded = recorded

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The session's connection (a new one after lock.renew)."""
        return self.session.conn

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

    def _lost(self, migration: Migration, error: psycopg.Error) -> str:
        """What a connection lost during `migration` left, as far as can be known."""
        cause = first_line(error).removeprefix("consuming input failed: ")
        if not migration.transactional:
            return (
                f"the connection was lost during {migration.filename}, a no-transaction file "
                f"({cause}): what PostgreSQL finished of it stays, and it is not recorded (the "
                "next run drops an index it left invalid and runs it again; one it finished is "
                "skipped only under IF NOT EXISTS); nothing after it ran; run again once the "
                "server is back"
            )
        return (
            f"the connection was lost during {migration.filename} ({cause}): whether it "
            "committed is not known (`migrate status` lists it as applied if it did); nothing "
            "after it ran; run again once the server is back"
        )

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

    def _interrupted(self, migration: Migration) -> str:
        """What an interruption during `migration` left, checked after rolling back."""
        if not self.session.end_transaction():
            return (
                f"interrupted during {migration.filename}, and the connection with it: whether "
                "it committed is not known; nothing after it ran; see `migrate status`"
            )
        if migration.version in {row.version for row in history.read(self.conn)}:
            return f"interrupted after {migration.filename} was applied; nothing after it ran"
        if not migration.transactional:
            return (
                f"interrupted during {migration.filename}, a no-transaction file: what "
                "PostgreSQL finished of it stays, and it is not recorded (the next run drops an "
                "index it left invalid and runs it again; one it finished is skipped only "
                "under IF NOT EXISTS); nothing after it ran"
            )
        return f"interrupted during {migration.filename}; it was rolled back; nothing after it ran"

    def _in_transaction(self, migration: Migration) -> None:
        """The file and its history row in one transaction, which must stay the runner's own.

        Two round trips: the transaction's start (its id, the history's state) travels with the
        file's first statements; the file's deferred triggers, the session reset, the
        runner's own settings (history.PINNED), the checks, the history row and COMMIT
        travel together. A check that fails stops everything after it, COMMIT included:
        the file ended the runner's transaction (its id is another), or the runner's lock
        was lost, or the history is not as the runner left it plus the file's row. The
        file's deferred triggers run first, in the session it left, as its COMMIT would
        run them under psql; then the reset, so that the checks run as the login role,
        with PINNED's settings.
        """
        begun = self._begin(migration)
        if self.conn.info.transaction_status != TransactionStatus.INTRANS:
            raise MigrationFailed(self._why(migration, CHECK_MARK, committed="may be"))
        finish = b"; ".join(
            [
                FIRE_DEFERRED,
                RESET_BEFORE_COMMIT,
                history.PINNED,
                self.session.still_ours(begun),
                self.session.still_locked(),
                history.insert_row(self.conn, migration, duration_ms=None),
                FIRE_DEFERRED,
                integrity.recorded_check(
                    self.conn,
                    self.recorded,
                    migration,
                    tuple(begun.get_value(0, column) for column in range(1, begun.nfields)),
                ),
                b"COMMIT",
                AFTER_COMMIT,
            ]
        )
        self._finish(
            migration,
            self.session.simple(finish),
            committed="may be",
            insert_at=_RESET_IN_TRANSACTION + 2,
        )

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
                history.PINNED,
                self.session.still_locked(),
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
            insert_at=history.PINNED_STATEMENTS + 1,
        )
        return notes

    def _finish(
        self, migration: Migration, results: list[PGresult], *, committed: str, insert_at: int
    ) -> None:
        """Raise, naming the file, when the runner's closing statements failed
        (`insert_at`: where the history row's INSERT is among them)."""
        failed = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
        if failed is None:
            return
        error = self.session.error(failed)
        state = error.diag.sqlstate or ""
        if state in (CHECK_MARK, CHECK_LOCK, integrity.CHECK_SECOND):
            raise MigrationFailed(self._why(migration, state, committed=committed))
        if state in (integrity.CHECK_RECORDED, integrity.CHECK_HISTORY):
            # No row, or not the history expected: a rule or an identity added to the
            # history since it was made does that too, and is named, not the file.
            changed = self._alterations()
            if changed:
                raise MigrationFailed(self._changed(migration, changed, committed, None))
            raise MigrationFailed(
                self._rows_put_back(migration, self._why(migration, state, committed=committed))
            )
        if state == "42P01" and history.TABLE in (error.diag.message_primary or ""):
            raise MigrationFailed(self._why(migration, CHECK_HISTORY_GONE, committed=committed))
        done = self._done(migration, committed)
        refused = history.row_security_refused(self.conn, error)
        if refused:
            cause, fix = refused
            raise MigrationFailed(
                f"migration {migration.filename} cannot be recorded: {cause}; {done}, and it "
                f"is not recorded; {fix}"
            )
        # The row refused for what was changed on the history since it was made (a
        # constraint, a column, a trigger, by an earlier migration or a person): named
        # with what undoes it, not blamed on this file. (A change this file made is
        # rolled back with it, and so not found: then the file is to blame.)
        # Where the failure stands from the INSERT: 0 the INSERT, 1 the history's deferred
        # triggers, 2 the check that reads the row back.
        past_insert = next(i for i, result in enumerate(results) if result is failed) - insert_at
        at_the_row = past_insert in (0, 1)
        changed = self._alterations() if at_the_row and state not in RETRIED_SQLSTATES else []
        if changed:
            raise MigrationFailed(
                self._changed(
                    migration, changed, committed, f"{error.diag.message_primary} [{state}]"
                )
            )
        message = diagnose.failure(
            self.session, migration, None, error, at_the_row=past_insert in (0, 1, 2)
        )
        if state in RETRIED_SQLSTATES:
            raise Transient(message, f"{RETRIED_SQLSTATES[state]} at its commit")
        raise MigrationFailed(self._rows_put_back(migration, message))

    def _rows_put_back(self, migration: Migration, message: str) -> str:
        """`message`, and for a no-transaction file, whose work is committed though its
        row is not, what became of history rows it removed: written again (under the
        runner's lock, which holds), or, where that fails, that they must be; without
        them the next run would apply their files a second time."""
        if migration.transactional or not self.session.end_transaction():
            return message
        try:
            lost = history.missing_versions(self.conn, self.recorded.rows)
        except psycopg.Error as error:
            self.session.end_transaction()
            return (
                f"{message}; whether it removed history rows cannot be read "
                f"({first_line(error)}): if it did, have the history's owner write them "
                "again before the next run, which would apply those files twice"
            )
        if not lost:
            return message
        versions = ", ".join(map(str, lost))
        try:
            history.put_back(self.conn, [row for row in self.recorded.rows if row[0] in lost])
        except psycopg.Error as error:
            self.session.end_transaction()
            return (
                f"{message}; the history rows of version {versions} it removed could not be "
                f"written again ({first_line(error)}): have the history's owner write them "
                "again (their version, name and checksum are the files') before the next run, "
                "which would apply those files twice"
            )
        return (
            f"{message}; the history rows it removed (version {versions}) are written again, "
            "so the next run does not apply those files twice"
        )

    def _alterations(self) -> list[tuple[str, str]]:
        """What was changed on the history since cicd-db made it, read after the failed
        transaction is rolled back; none when the session is gone."""
        return integrity.alterations(self.conn) if self.session.end_transaction() else []

    def _changed(
        self,
        migration: Migration,
        changed: list[tuple[str, str]],
        committed: str,
        refusal: str | None,
    ) -> str:
        """A file's row refused (`refusal`: the server's words), or not written, by what
        was changed on the history since cicd-db made it: named with what undoes it."""
        name = history.shown(self.conn, history.SCHEMA, history.TABLE)
        how = f"refused its row ({refusal})" if refusal else "did not keep its row as written"
        return (
            f"migration {migration.filename} cannot be recorded: the migration history "
            f"{name} {how}, and it was changed since cicd-db made it: "
            f"{', '.join(what for what, _ in changed)}; {self._done(migration, committed)}, "
            f"and it is not recorded; undo that ({'; '.join(undo for _, undo in changed)}) "
            "and run again"
        )

    def _why(self, migration: Migration, check: str, *, committed: str) -> str:
        what = {
            CHECK_MARK: "ended the runner's transaction itself (COMMIT, ROLLBACK or the like, "
            "which the runner could not see in it)",
            CHECK_LOCK: "ran while the runner's lock was lost (the session that holds it ended: "
            "pg_terminate_backend, or a lost connection), so another runner could have run at "
            "the same time",
            integrity.CHECK_RECORDED: "left no history row (a trigger on the history table?)",
            integrity.CHECK_HISTORY: "changed the migration history (TRUNCATE, DELETE, UPDATE, "
            "an ALTER TABLE that rewrites it or makes it UNLOGGED, or another table in its "
            "place)",
            integrity.CHECK_SECOND: "made a second table like the migration history (of "
            f"its name and columns, outside schema {history.SCHEMA}), which every later run "
            "would refuse as a second history",
            CHECK_HISTORY_GONE: "dropped or moved the migration history "
            f"({history.shown(self.conn, history.SCHEMA, history.TABLE)})",
        }[check]
        done = self._done(migration, committed, ended=check == CHECK_MARK)
        if check == CHECK_LOCK:
            fix = "check what ended that session (a statement in the file, or the server), and run again"
        elif check == CHECK_HISTORY_GONE and not migration.transactional:
            # Committed: a run that finds no history makes an empty one and applies every
            # file again. (A transactional file's DROP or RENAME is rolled back with it.)
            fix = (
                "remove that from the file, and put the history back before any other run, "
                "which would find none and apply every file again: move it back if it was "
                "moved (the next run names where it is), or, if it was dropped, record what "
                f"is applied with `cicd-db migrate baseline --version {migration.version}`"
            )
        elif check == integrity.CHECK_SECOND and not migration.transactional:
            fix = "remove that from the file, drop or rename that table, and run again"
        else:
            fix = "remove that from the file, check the database, and run again"
        return f"migration {migration.filename} {what}; {done}, and it is not recorded; {fix}"

    @staticmethod
    def _done(migration: Migration, committed: str, *, ended: bool = False) -> str:
        """What became of a file whose closing statements failed (`ended`: it ended the
        runner's transaction itself)."""
        if migration.transactional and not ended:
            return "it was rolled back"
        return f"what it did {committed} committed"


def drop_invalid_index(
    conn: psycopg.Connection[Any], migration: Migration, target: IndexTarget
) -> tuple[str, ...]:
    """Drop the invalid index an interrupted CREATE INDEX CONCURRENTLY left behind.

    PostgreSQL's own advice for that case; without it, the file could never be
    run again (the name is taken) or, with IF NOT EXISTS, would keep a broken index.
    Run in the session the file's leading statements left. Raises `Transient` where
    other sessions keep the drop waiting past a lock_timeout (an old snapshot, which
    the build itself would wait for): a busy table, retried as the build would be.
    """
    index = invalid_index(conn, migration, target)
    if index is None:
        return ()
    try:
        conn.execute(drop_statement(index).encode())
    except psycopg.Error as refused:
        if conn.closed or conn.broken:
            raise
        state = refused.diag.sqlstate or ""
        cause = refused.diag.message_primary or first_line(refused)
        if state in RETRIED_SQLSTATES:
            raise Transient(
                f"migration {migration.filename} builds index {target.name}, and the invalid "
                f"one a run left, {index}, could not be dropped: {cause} [{state}]; nothing "
                "of the file ran but its SET and RESET statements",
                f"{RETRIED_SQLSTATES[state]} dropping the invalid index {index}",
            ) from None
        # An event trigger on sql_drop, a missing right: the file could not run (the name
        # is taken), and nothing of it has.
        raise MigrationRefused(
            f"migration {migration.filename} builds index {target.name}, and the invalid one "
            f"an interrupted run left, {index}, could not be dropped: {cause}; drop it (DROP "
            f"INDEX CONCURRENTLY {index}) and run again"
        ) from None
    return (f"dropped invalid index {index} left by an interrupted run",)


def drop_statement(index: str) -> str:
    """What drops `index` (as format('%I.%I') wrote it) before its file runs again."""
    return f"DROP INDEX CONCURRENTLY IF EXISTS {index}"


def invalid_index(
    conn: psycopg.Connection[Any], migration: Migration, target: IndexTarget
) -> str | None:
    """The invalid index of the name `migration` builds CONCURRENTLY (schema-qualified),
    which an interrupted run left and the next drops before it runs the file; None for
    none. Only the one on the table the file's statement names, found as the statement
    will find it: in the session as it is now (its search_path), which must be the one
    the file's leading statements left. MigrationRefused where another session is
    building it now. Reads only."""
    # The table as the file's statement finds it. No operator and no function but
    # pg_catalog's, named so: the session's search_path, the file's, may hold others.
    relation = sql.Identifier(*(part for part in (target.schema, target.table) if part))
    try:
        row = conn.execute(
            sql.SQL("SELECT pg_catalog.to_regclass({})::pg_catalog.oid").format(
                sql.Literal(relation.as_string(conn))
            )
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None  # a schema the file's role may not use: its statement fails on that too
    if row is None or row[0] is None:
        return None  # no such table: the file's statement fails on that, as under psql
    # The index of that name on that table, left invalid; one another session is
    # building right now is invalid too, until it is done. (An index's schema is its
    # table's: at most one has the name.)
    invalid = history.pinned_rows(
        conn,
        sql.SQL(
            "SELECT format('%I.%I', n.nspname, c.relname), EXISTS (SELECT FROM "
            "pg_catalog.pg_stat_progress_create_index p WHERE p.index_relid = c.oid) "
            "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.indrelid = {table} AND c.relname = {name} AND NOT i.indisvalid"
        ).format(table=sql.Literal(row[0]), name=sql.Literal(target.name)),
    )
    if invalid and invalid[0][1]:
        raise MigrationRefused(
            f"migration {migration.filename} builds index {target.name}, and another session "
            f"is building {invalid[0][0]} right now; wait until it is done "
            "(pg_stat_progress_create_index shows it), then run again"
        )
    return str(invalid[0][0]) if invalid else None


def invalid_index_ahead(session: Session, migration: Migration) -> str | None:
    """invalid_index() for a dry run: the file's leading statements run, as they would
    before the lookup, in a transaction rolled back after it."""
    steps = session.steps_for(migration)
    target = index_target(migration, steps)
    if target is None:
        return None
    if not target.step:
        return invalid_index(session.conn, migration, target)
    with session.conn.transaction(force_rollback=True):
        session.run_steps(replace(migration, planned=steps[: target.step]))
        return invalid_index(session.conn, migration, target)
