"""What a file that failed left, told in one line: the runner's closing statements'
failures (its checks, the history refused or changed since cicd-db made it, row
security), history rows a no-transaction file removed written again, and what an
interruption or a lost connection left. The base of the Applier."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGresult

from cicd_db.errors import CicdDbError, ConfigError, MigrationFailed, RightMissing, plural
from cicd_db.migrations import diagnose, history, history_table, integrity
from cicd_db.migrations.failures import (
    RAN_ELSEWHERE,
    RETRIED_SQLSTATES,
    THROUGH_A_SESSION,
    Transient,
    first_line,
)
from cicd_db.migrations.files import Migration
from cicd_db.migrations.integrity import CHECK_LOCK, CHECK_MARK
from cicd_db.migrations.session import Session

CHECK_HISTORY_GONE = "history gone"  # not raised: read from the INSERT's undefined_table
# The history's primary key, as CREATE TABLE names it (history.create).
_HISTORY_KEY = f"{history_table.TABLE}_pkey"


class Verdicts:
    """Failures of one file on `session`, told; `recorded` the history's rows so far."""

    session: Session
    recorded: integrity.Recorded

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The session's connection (a new one after lock.renew)."""
        return self.session.conn

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

    def _finish(
        self, migration: Migration, results: list[PGresult], *, committed: str, insert_at: int
    ) -> None:
        """Raise, naming the file, when the runner's closing statements failed
        (`insert_at`: where the history row's INSERT is among them)."""
        at = next((i for i, r in enumerate(results) if r.status == ExecStatus.FATAL_ERROR), None)
        if at is None:
            return
        failed = results[at]
        error = self.session.error(failed)
        state = error.diag.sqlstate or ""
        if any(_committed(result) for result in results[:at]):
            # The file and its row are committed (the reset after it failed, or the session
            # ended there): applied, whatever the error says; never retried.
            raise MigrationFailed(
                f"migration {migration.filename} is applied (it committed with its history "
                "row), but the runner's statements after its commit failed: "
                f"{error.diag.message_primary or first_line(error)} [{state}]; nothing after "
                "it ran; run again to apply the rest"
            )
        if state in (CHECK_MARK, CHECK_LOCK, integrity.CHECK_MOVED, integrity.CHECK_SECOND):
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
        if state == "42P01" and history_table.TABLE in (error.diag.message_primary or ""):
            if not migration.transactional:
                raise MigrationFailed(self._history_put_back(migration, committed))
            raise MigrationFailed(self._why(migration, CHECK_HISTORY_GONE, committed=committed))
        done = self._done(migration, committed)
        # The language's name, in any language's quotes ("plpgsql", »plpgsql«).
        if state == "42704" and re.search(r"\bplpgsql\b", error.diag.message_primary or ""):
            # Its checks are DO blocks: without the language, no file could be recorded.
            raise MigrationFailed(
                f"migration {migration.filename} cannot be recorded: the runner's checks of "
                "the history are written in PL/pgSQL, and the database has none (DROP "
                f"EXTENSION plpgsql, by this file or an earlier one?); {done}, and it is not "
                "recorded; run CREATE EXTENSION plpgsql, and run again"
            )
        refused = history_table.row_security_refused(self.conn, error)
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
        if past_insert == 0 and state == "23505" and error.diag.constraint_name == _HISTORY_KEY:
            raise MigrationFailed(self._version_taken(migration, committed))
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

    def _version_taken(self, migration: Migration, committed: str) -> str:
        """The file's history row refused as a duplicate: its version is in the history,
        though it was not when the run began. Written by the file itself (rolled back
        with it, so gone now), or meanwhile outside the runner's transaction (a
        no-transaction file's INSERT, which commits at once; another session, such as
        dblink; a person: the runner's lock keeps other runners out), which no check of
        the file's transaction could see."""
        done = self._done(migration, committed)
        try:
            there = self.session.end_transaction() and migration.version in {
                row.version for row in history.read(self.conn)
            }
        except (psycopg.Error, CicdDbError):
            there = True  # cannot be read: told as the row that is there
        if not there:
            return (
                f"migration {migration.filename} cannot be recorded: it writes the history "
                f"row of its own version ({migration.version}) itself, which is the runner's "
                f"to write; {done}, and it is not recorded; remove that from the file"
            )
        return (
            f"migration {migration.filename} cannot be recorded: version {migration.version} "
            "is in the migration history already, written while this run ran by something "
            "other than the runner (a no-transaction file's INSERT, another session such as "
            f"dblink, a person); {done}, and it is not recorded; find who wrote that row, "
            "delete it if the file never ran, remove what wrote it, and run again"
        )

    def _rows_put_back(self, migration: Migration, message: str) -> str:
        """`message`, and for a no-transaction file, whose work is committed though its
        row is not, what became of history rows it removed, added or changed: the history
        made again what the runner wrote (under the runner's lock, which holds), or, where
        that fails, that it must be; otherwise the next run would apply files a second
        time, or skip files whose rows the file wrote."""
        if migration.transactional or not self.session.end_transaction():
            return message
        try:
            missing, extra = history.unlike(self.conn, self.recorded.rows)
        except psycopg.Error as error:
            self.session.end_transaction()
            return (
                f"{message}; whether it changed history rows cannot be read "
                f"({first_line(error)}): if it did, have the history's owner make them what the "
                "runner wrote before the next run, which would apply files twice or skip them"
            )
        if not (missing or extra):
            return message
        told = _told(missing, extra)
        try:
            history.restore(self.conn, missing, [row[0] for row in extra])
        except psycopg.Error as error:
            self.session.end_transaction()
            return (
                f"{message}; the history rows it {_changes(missing, extra)} could not be put "
                f"back ({first_line(error)}): have the history's owner make them what the "
                "runner wrote (their version, name and checksum are the files') before the "
                "next run, which would apply files twice or skip them"
            )
        return f"{message}; {told}, so the next run {_so(missing, extra)}"

    def _history_put_back(self, migration: Migration, committed: str) -> str:
        """A no-transaction file dropped the history, or moved it to another schema: what
        it did is committed, and the next run would find no history, make an empty one
        and apply every file again. So it is made again with the rows the runner wrote
        (or moved back into place, and its rows made those), under the runner's lock; one
        renamed in its own schema is left for the next run, which refuses naming it."""
        name = history_table.shown(self.conn, history_table.SCHEMA, history_table.TABLE)
        said = (
            f"migration {migration.filename} dropped or moved the migration history ({name}); "
            f"{self._done(migration, committed)}, and it is not recorded"
        )
        if not self.session.end_transaction():
            return self._why(migration, CHECK_HISTORY_GONE, committed=committed)
        try:
            moved = history.create(self.conn)
        except RightMissing as error:  # told below, with its fix
            self.session.end_transaction()
            return (
                f"{said}, and the runner could not make it again ({_cause(error)}); the next "
                "run would find none and apply every file again: move it back if it was "
                "moved, or record what is applied with `cicd-db migrate baseline --version "
                f"{migration.version}` once the right is given, and remove that from the file"
            )
        except ConfigError:
            # Renamed in its schema (or a second history made): the next run refuses,
            # naming it and the statement that moves it back.
            self.session.end_transaction()
            return self._why(migration, CHECK_HISTORY_GONE, committed=committed)
        except (psycopg.Error, CicdDbError) as error:
            self.session.end_transaction()
            return (
                f"{said}, and the runner could not make it again ({_cause(error)}); the next "
                "run would find none and apply every file again: move it back if it was "
                "moved, or record what is applied with `cicd-db migrate baseline --version "
                f"{migration.version}`, and remove that from the file"
            )
        try:
            missing, extra = history.unlike(self.conn, self.recorded.rows)
            history.restore(self.conn, missing, [row[0] for row in extra])
        except psycopg.Error as error:
            self.session.end_transaction()
            where = "moved it back" if moved else "made it again, empty"
            return (
                f"{said}; the runner {where}, but could not write its rows ({_cause(error)}): "
                "record what is applied with `cicd-db migrate baseline --version "
                f"{migration.version}` before the next run, which would apply files twice, "
                "and remove that from the file"
            )
        how = (
            "moved it back"
            if moved
            else f"made it again with the {plural(len(self.recorded.rows), 'row')} it had "
            "written (each applied_at now and duration 0, as `baseline` writes them; grants "
            "on the old table are not made again)"
        )
        return (
            f"{said}; the runner {how}, so the next run applies no file twice; remove that "
            "from the file and run again"
        )

    def _after_a_held_cursor(self, migration: Migration) -> None:
        """`migration` left a WITH HOLD cursor open: PostgreSQL ran its query at the
        commit, after the runner's checks, where a function it calls could have emptied
        the history or written a later file's row. The history is read again, whole,
        against what the runner wrote (this file's row with it); a difference is put
        back, read again, and told, and the run stops."""
        expected = sorted(
            {*self.recorded.rows, (migration.version, migration.name, migration.checksum)}
        )
        said = (
            f"migration {migration.filename} is applied, but the query of a WITH HOLD cursor "
            "it left open, which PostgreSQL runs at the commit, after the runner's checks, "
            "changed the migration history"
        )
        fix = (
            "have the history's owner make it the files' rows again before the next run, "
            "which would apply files twice or skip them"
        )
        try:
            missing, extra = history.unlike(self.conn, expected)
            if not (missing or extra):
                return
            what = ", ".join(
                f"{label} {_versions(versions)}"
                for label, versions in (
                    ("the rows of version", [row[0] for row in missing]),
                    ("rows it had not written, of version", [row[1] for row in extra]),
                )
                if versions
            )
            said += f" ({what}: changed, removed or added)"
            history.restore(self.conn, missing, [row[0] for row in extra])
            again = history.unlike(self.conn, expected)
        except psycopg.Error as error:
            self.session.end_transaction()
            raise MigrationFailed(
                f"{said}, and it could not be read or put back ({first_line(error)}); {fix}"
            ) from None
        if again != ([], []):
            raise MigrationFailed(f"{said}, and it changed again as it was put back; {fix}")
        raise MigrationFailed(
            f"{said}; the runner put the history back as it wrote it, and ran nothing after "
            "that file; drop or change what that query calls before the next run, which goes "
            "on from the next file"
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
        name = history_table.shown(self.conn, history_table.SCHEMA, history_table.TABLE)
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
            "pg_terminate_backend, a lost connection, or a connection pooler's timeout for "
            "idle transactions, such as PgBouncer's idle_transaction_timeout, as the lock "
            "session waits in one for the whole run), so another runner could have run at "
            "the same time",
            integrity.CHECK_MOVED: f"ran {RAN_ELSEWHERE}",
            integrity.CHECK_RECORDED: "left no history row (a trigger on the history table?)",
            integrity.CHECK_HISTORY: "changed the migration history (TRUNCATE, DELETE, UPDATE, "
            "an ALTER TABLE that rewrites it or makes it UNLOGGED, or another table in its "
            "place)",
            integrity.CHECK_SECOND: "made a second table like the migration history (of "
            f"its name and columns, outside schema {history_table.SCHEMA}), which every later run "
            "would refuse as a second history",
            CHECK_HISTORY_GONE: "dropped or moved the migration history "
            f"({history_table.shown(self.conn, history_table.SCHEMA, history_table.TABLE)})",
        }[check]
        done = self._done(migration, committed, ended=check == CHECK_MARK)
        if check == CHECK_LOCK:
            fix = (
                "check what ended that session (a statement in the file, the server, or a "
                "pooler's idle transaction timeout, which must outlast the run), and run again"
            )
        elif check == integrity.CHECK_MOVED:
            fix = THROUGH_A_SESSION
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


def _committed(result: PGresult) -> bool:
    """`result` is a COMMIT's that committed: a COMMIT of a failed transaction rolls it
    back, and PostgreSQL tags that result ROLLBACK."""
    return result.status == ExecStatus.COMMAND_OK and result.command_status == b"COMMIT"


def _versions(versions: Sequence[int | None]) -> str:
    return ", ".join("NULL" if v is None else str(v) for v in versions)


def _fates(
    missing: list[tuple[int, str, str]],
    extra: list[tuple[str, int | None, str | None, str | None]],
) -> list[tuple[str, list[int | None], str]]:
    """What a no-transaction file did to history rows, by version, and what putting the
    history back does to them: removed (written again), changed (a version missing as
    written and there otherwise: put back), added (deleted). Only the kinds it did."""
    gone: set[int | None] = {row[0] for row in missing}
    there = {row[1] for row in extra}
    return [
        (verb, sorted(versions, key=lambda v: (v is None, v or 0)), done)
        for verb, versions, done in (
            ("removed", gone - there, "are written again"),
            ("changed", gone & there, "are put back as the runner wrote them"),
            ("added", there - gone, "are deleted"),
        )
        if versions
    ]


def _changes(
    missing: list[tuple[int, str, str]],
    extra: list[tuple[str, int | None, str | None, str | None]],
) -> str:
    """Which history rows a no-transaction file removed, changed or added, for a message."""
    return " and ".join(
        f"{verb} (version {_versions(versions)})" for verb, versions, _ in _fates(missing, extra)
    )


def _told(
    missing: list[tuple[int, str, str]],
    extra: list[tuple[str, int | None, str | None, str | None]],
) -> str:
    """What became of the history rows a no-transaction file removed, changed or added."""
    return "; ".join(
        f"the history rows it {verb} (version {_versions(versions)}) {done}"
        for verb, versions, done in _fates(missing, extra)
    )


def _so(
    missing: list[tuple[int, str, str]],
    extra: list[tuple[str, int | None, str | None, str | None]],
) -> str:
    """What putting them back spares the next run."""
    verbs = {verb for verb, _, _ in _fates(missing, extra)}
    if verbs == {"added"}:
        return "skips no file it has not applied"
    if verbs == {"removed"}:
        return "does not apply those files twice"
    return "applies no file twice and skips none"


def _cause(error: BaseException) -> str:
    return first_line(error) if isinstance(error, psycopg.Error) else str(error)
