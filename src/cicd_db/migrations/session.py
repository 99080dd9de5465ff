"""The runner's work session: sending a file's text as psql sends it, reading which
statement failed, and keeping the session as it was at connect time.

`Session` wraps the autocommit work connection. What a file does to the session
(settings, role, temporary tables, its own advisory locks) is undone by
RESET_SESSION before the next file; the runner's lock is another session's
(`lock.held`), which nothing a file does here can release.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors, generators
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult
from psycopg.rows import tuple_row

from cicd_db import cursors
from cicd_db.errors import MigrationFailed
from cicd_db.libpq import options_with
from cicd_db.migrations.files import Migration

# Planning is loaded when a file is sent (files.py says why).
if TYPE_CHECKING:
    from cicd_db.migrations.steps import Batch, Copy, Step

# One key for "the migrations of this database"; advisory locks are per database.
LOCK_KEY = 0x6369_6364_2D64_62  # "cicd-db" in ASCII
# Held, shared, by the work session of every runner while it runs files. A runner
# that takes the lock then waits until no other session holds this one: a runner
# killed outright loses its lock's session at once, but its work session may still
# be running a statement until the server notices it is gone.
WORK_KEY = LOCK_KEY + 1
# Passed at connect time, where they outrank a role's or database's settings (a
# migration may have left those: ALTER ROLE ... SET, ALTER DATABASE ... SET), and
# after the user's own options (the URL's `options`, PGOPTIONS), which they outrank too:
# the runner depends on them, and they concern only its own session, not the files.
# - idle_session_timeout, idle_in_transaction_session_timeout: the runner's session
#   waits between its own round trips (a file's transaction spans two), which psql
#   applying the file would not; such a timeout must not end it there;
# - exit_on_error: an error in a file ends the file, not the session, so the runner can
#   roll back, say which line failed and free its lock (and its first read expects an
#   error on a database that has no history yet).
# What governs the file's own statements (statement_timeout, lock_timeout,
# default_transaction_read_only, search_path, ...) is left as the role, the database
# and the user's options set it, as psql would have it; a failure it causes is told
# with its source (errors.setting_behind, diagnose.setting_source).
SESSION_OPTIONS = (
    "-c idle_session_timeout=0 -c idle_in_transaction_session_timeout=0 -c exit_on_error=off"
)
# Before the user's options, which may change it: the server notices within a second
# that a killed runner is gone, ends its transaction and frees the lock (PostgreSQL
# 14+, Linux).
CHECK_INTERVAL = "-c client_connection_check_interval=1000"
# Files are UTF-8 (files.discover checks), and are sent as UTF-8 whatever client_encoding
# the role, the database or PGCLIENTENCODING names: in another, the server would read
# their bytes as that encoding and store other text than the file's, without an error.
CLIENT_ENCODING = "UTF8"
# Before each file's history row, and again whenever a file failed: the session as
# it was at connect time, everything DISCARD ALL resets (which cannot run inside
# the file's transaction). Settings (search_path, so nothing a file set redirects
# the runner's own statements), role, temporary tables, prepared statements,
# cursors, LISTEN, the file's own advisory locks, sequences' currval: none of it
# crosses to the next file. The runner's lock is held by another session; its
# work mark is taken again at once.
# What a file leaves in its session that the next must not find, reset inside a
# transaction: settings, role, cursors, prepared statements, LISTEN, plans, sequences'
# currval, temporary tables. A run's RESET_SESSION adds the advisory locks (the file's
# released, the runner's work mark taken again); a schema comparison, which takes no
# lock, sends this alone.
_RESET_SETTINGS = (
    b"RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; DEALLOCATE ALL; "
    b"UNLISTEN *; DISCARD PLANS; DISCARD SEQUENCES"
)
_ADVISORY_LOCKS = (
    b"SELECT pg_catalog.pg_advisory_unlock_all(); "
    b"SELECT pg_catalog.pg_advisory_lock_shared(%d)" % WORK_KEY
)
# Cursors, then the temporary tables an open cursor may still read.
RESET_FILE_STATE = b"CLOSE ALL; " + _RESET_SETTINGS + b"; DISCARD TEMP"
RESET_SESSION = RESET_FILE_STATE + b"; " + _ADVISORY_LOCKS
# Inside a file's transaction, before its history row: what the runner's own
# statements there (the row, the checks) must not run under, the file's role and its
# settings (a statement_timeout, say); PINNED follows. Its cursors and temporary tables
# stay until the commit, which runs the query of each WITH HOLD cursor to keep its rows
# (and fails the file if that fails, as under psql; the history is read again after it:
# Verdicts._after_a_held_cursor), and drops the tables made ON COMMIT DROP.
RESET_BEFORE_COMMIT = b"RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL"
# After the commit, the whole reset: the file's session state, and what ran after its
# statements (code the history's row fires, a trigger or a default on it; a WITH HOLD
# cursor's query, which the commit runs), which under psql would end with the file's
# session too.
AFTER_COMMIT = RESET_SESSION


def session_options(given: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The runner's session options with the user's: the URL's `options`, or else PGOPTIONS.

    libpq reads PGOPTIONS only when a connection names no `options`, and the
    runner names its own; joined, the user's still arrive (a `statement_timeout`,
    Neon's `endpoint=...`, `PGOPTIONS='-c cicd_db.legacy_time_zone=...'` of
    db/README.md). The user's come after CHECK_INTERVAL, so they may change it, and
    before SESSION_OPTIONS, which the runner depends on and so keeps (the later of two
    settings of one name wins).
    """
    theirs = options_with(CHECK_INTERVAL, given, ours_win=False, environ=environ)
    return options_with(SESSION_OPTIONS, theirs, ours_win=True)


# Whether code the database holds calls current_query(): a function's source (not the
# server's own in pg_catalog, nor one in C, language 13, whose source is a symbol's name),
# or a parsed expression that calls it (an SQL-standard body, a column's default, a
# trigger's WHEN), found in its node tree by the function's oid. Views and rules are not
# read (their trees, the system's included, take tens of milliseconds to search).
# Operators named in pg_catalog: a search_path may put others first.
_CALLS_IT = (
    "OPERATOR(pg_catalog.~) (':funcid ' OPERATOR(pg_catalog.||) "
    "'pg_catalog.current_query()'::pg_catalog.regprocedure::pg_catalog.oid "
    "OPERATOR(pg_catalog.||) ' ')"
)
READS_QUERY_TEXT = " ".join(
    (
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace",
        "OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace",
        "AND p.prolang OPERATOR(pg_catalog.<>) 13::pg_catalog.oid",
        "AND (p.prosrc OPERATOR(pg_catalog.~*) 'current_query'",
        "OR p.prosqlbody::pg_catalog.text", _CALLS_IT, "))",
        "OR EXISTS (SELECT FROM pg_catalog.pg_attrdef d WHERE d.adbin::pg_catalog.text",
        _CALLS_IT, ")",
        "OR EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgqual::pg_catalog.text",
        _CALLS_IT, ")",
    )
)  # fmt: skip


class Session:
    """The work connection, and the key of the lock only the runner's lock session
    holds (`lock_key`, set by `lock.held` while it is held)."""

    def __init__(self, conn: psycopg.Connection[Any]):
        if not conn.autocommit:
            raise ValueError("the runner needs an autocommit connection")
        self.conn = conn
        self.lock_key: int | None = None
        # The server session the work connection runs in while the lock is held
        # (lock.mark): each file's transaction must run there (integrity.lock_check).
        self.server_pid: int | None = None
        # The savepoint a file runs after inside a transaction that must go on (a
        # rehearsal, a schema comparison): a failure is looked into after rolling back
        # to it, never by ending the transaction.
        self.savepoint: bytes | None = None
        # Files before this one ran in the same transaction and did not commit (a
        # rehearsal, a comparison): what to do about a failure only their commit would
        # have avoided. None otherwise.
        self.uncommitted_before: str | None = None
        # A function in the database reads the text of the query that runs it
        # (current_query()): files are sent a statement a query, as psql sends them, not
        # in batches, so that what it reads is what it reads under psql.
        self.query_text_read = False
        # A transaction is repeatable read or serializable by default: its snapshot is
        # taken by its first query, which must then be the file's, after a leading LOCK.
        self.isolated = False
        # The database has a login event trigger (PostgreSQL 17): what it sets up in a
        # session, the reset between files undoes, so each file gets a new session, in
        # which it runs, as under psql.
        self.login_triggers = False
        # The database has dblink: a function of any file may open a connection of its
        # that outlives the file (and a transaction, locks, on its server), which no
        # reset closes; so each file gets a new session, as under psql.
        self.dblink = False
        # The connection the runner was given, while it works on one of its own (a file
        # changed settings only a new session takes: lock.renew); None otherwise.
        self.given: psycopg.Connection[Any] | None = None
        # The runner opened the connection itself (the CLI's): a renewal closes the old
        # session, as psql's ends with its file, and with it what only an end gives back
        # (a dblink connection and what it holds, a temporary replication slot, a
        # replication origin). A caller's connection is kept for its owner.
        self.owned = False
        # Given every notice the server sends (Runner.add_notice_handler), in each session.
        self.notice_handlers: list[Callable[[psycopg.errors.Diagnostic], None]] = []
        # A call of the runner's borrows the connection (`borrowed`); whether it sent
        # anything past psycopg's cursors (a file, a reset: DEALLOCATE ALL among them).
        self._borrowing = False
        self.sent_unseen = False

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[None]:
        """The connection as the runner works with it, for one call: no statement of
        psycopg's kept prepared (the runner resets the session after each file,
        DEALLOCATE ALL included), rows as tuples from psycopg's own cursor (it reads them
        by position), whatever the caller set; given back after as the caller had it,
        and, where the call sent something past psycopg's cursors (a file, a reset) and
        the caller had psycopg prepare statements, with psycopg told that the server may
        have none left (its next prepared query failed: "prepared statement _pg3_0 does
        not exist"). Refused in pipeline mode, where the calls' statements would share a
        transaction until the next sync."""
        if self._borrowing:  # a call inside another (apply reads what is pending)
            yield
            return
        conn = self.conn
        cursors.ready(conn, "the runner", alone=False)
        kept = (conn.prepare_threshold, conn.row_factory, conn.cursor_factory)
        conn.prepare_threshold, conn.row_factory, conn.cursor_factory = (
            None,
            tuple_row,
            psycopg.Cursor,
        )
        self._borrowing, self.sent_unseen = True, False
        try:
            yield
        finally:
            self._borrowing = False
            conn.prepare_threshold, conn.row_factory, conn.cursor_factory = kept
            if (
                self.sent_unseen
                and kept[0] is not None
                and not (conn.closed or conn.broken)
                and conn.info.transaction_status == TransactionStatus.IDLE
            ):
                with contextlib.suppress(psycopg.Error):
                    conn.execute("DEALLOCATE ALL")  # through psycopg, which forgets its own

    @property
    def lost(self) -> bool:
        """The work connection is gone (a FATAL error ended the session)."""
        return self.conn.closed or self.conn.broken

    def standard_strings(self) -> bool:
        return self.conn.info.parameter_status("standard_conforming_strings") != "off"

    def end_transaction(self) -> bool:
        """Roll back whatever transaction is open; False if the connection is unusable.

        A query still running is cancelled first (_stop_query). A connection that is
        gone, or whose query will not stop, is closed: the server then ends its
        transaction and frees its locks by itself.
        """
        if self.lost:
            return False
        if self.conn.info.transaction_status == TransactionStatus.ACTIVE and not self._stop_query():
            return False
        state = self.conn.info.transaction_status
        if state in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            self.conn.rollback()
        elif state != TransactionStatus.IDLE:
            self.conn.close()
            return False
        return True

    def _stop_query(self) -> bool:
        """Cancel the query in flight and read its results, as psycopg does for a Ctrl-C
        that comes while it waits for one. One that comes after a query is sent and before
        the wait begins (`simple`: between send_query and conn.wait) is raised where
        psycopg never sees it, and the query runs on; without this, the connection was
        closed and a file the server rolled back was told as "whether it committed is not
        known". The connection is closed if the cancel or a wait for the query's end takes
        over five seconds, or another interrupt comes meanwhile. False if it was closed."""
        conn = self.conn
        try:
            conn.cancel_safe(timeout=5.0)
            self._results(timeout=5.0)
        except psycopg.Error:  # the cancel refused or late, the connection gone
            conn.close()
        except BaseException:
            conn.close()
            raise
        return not self.lost

    def reset(self) -> None:
        """End any transaction, then reset the session: the next file starts as the first did."""
        if self.end_transaction():
            self.simple(RESET_SESSION)  # results unread: nothing in it can fail here

    def run_steps(
        self, migration: Migration, *, prefix: bytes = b"", after: int = 0
    ) -> list[PGresult]:
        """Send the file's steps in order, in the current transaction or none.

        `prefix`, statements of the runner's own, travels with the first batch;
        their results are returned. `after`: where the file's steps sent before these
        ended (a statement sent alone starts at the first block comment after it, as
        psql sends it, never with the text of the steps before).
        """
        from cicd_db.migrations import diagnose
        from cicd_db.migrations.steps import Batch, Copy, as_psql_sends, each_statement

        steps = list(self.steps_for(migration))
        own: list[PGresult] = []
        alone = self.sends_alone(migration)
        if prefix and (alone or not (steps and isinstance(steps[0], Batch))):
            own = self.simple(prefix)
            diagnose.raise_on_error(self, migration, None, own)
            prefix = b""
        while steps:
            step = steps.pop(0)
            if isinstance(step, Copy):
                self.copy(migration, step)
                after = step.end
                continue
            rest: list[Step] | None = None
            for one in each_statement(migration.data, step, after) if alone else (step,):
                text = migration.data[one.start : one.end]
                if not alone and self.converts_text():
                    text = as_psql_sends(migration.data, one)
                results = self.simple(prefix + text)
                if prefix:
                    own = results[: prefix.count(b";")]
                diagnose.raise_on_error(self, migration, one, results, prefix=prefix)
                prefix, after = b"", one.end
                if one.end < step.end and self.standard_strings() != step.standard_strings:
                    # Sent alone, a statement that changed how strings read without naming
                    # it is known: the rest is read as the server now reads it, as psql would.
                    rest = self._replan_after(migration, one)
                    break
            else:
                rest = self.rest_after(migration, step)
            if rest is not None:  # an empty rest replaces the old plan's too
                steps = rest
        return own

    def _replan_after(self, migration: Migration, step: Batch) -> list[Step]:
        line = step.line + migration.data.count(b"\n", step.start, step.end)
        return list(_replan(migration, step.end, line, self.standard_strings()))

    def notice(self) -> None:
        """Look, once a run (and in each new session), at what decides how files are sent:
        whether a function the database holds reads current_query() (a trigger or event
        trigger that checks or logs the statement that fired it: then every file goes a
        statement a query, `sends_alone`; a file that makes such a function names
        current_query itself, and from there on `ran` keeps it so), and whether a
        transaction is repeatable read or serializable by default (`isolated`); and what
        makes each file start in a new session (a login event trigger, dblink)."""
        row = self.conn.execute(
            READS_QUERY_TEXT + ", pg_catalog.current_setting('default_transaction_isolation'), "  # noqa: S608 - constants
            "EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtevent = 'login' "
            "AND evtenabled IN ('O', 'A')), "
            "EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'dblink')"
        ).fetchone()
        self.query_text_read = self.query_text_read or bool(row and row[0])
        self.isolated = bool(row and row[1] in ("repeatable read", "serializable"))
        self.login_triggers = bool(row and row[2])
        self.dblink = bool(row and row[3])

    def begin_files(self) -> None:
        """Before the first file of a run or a rehearsal: `notice`, then the reset every
        later file gets, so that the first file too starts in the session as it began
        (its options, the role's and the database's settings), as psql's would, whatever
        a caller SET on the connection before handing it over. Where a login event
        trigger set the session up, the first file keeps what it set (each later one
        gets a new session)."""
        self.notice()
        if not self.login_triggers:
            self.reset()

    def run_over(self) -> None:
        """Forget what `notice`, `ran` and a rehearsal or comparison learned for one run."""
        self.query_text_read = self.isolated = self.login_triggers = self.dblink = False
        self.uncommitted_before = None

    def ran(self, migration: Migration) -> None:
        """`migration` was applied: a function it made may read current_query()."""
        if migration.mentions_current_query:
            self.query_text_read = True

    def sends_alone(self, migration: Migration) -> bool:
        """Whether `migration`'s statements go a query each, as psql sends them: when a
        function the database holds, or the file itself, reads the query's text
        (current_query()), which a batch would change."""
        return self.query_text_read or migration.mentions_current_query

    def rest_after(self, migration: Migration, step: Batch) -> list[Step] | None:
        """The file's steps after `step`, planned again, when `step` left the server
        reading strings otherwise than the plan expected (a DO block that set
        standard_conforming_strings, say); None when the plan stands."""
        actual = self.standard_strings()
        if not step.changes_lexing:
            if actual == step.standard_strings:
                return None
            self._changed_unseen(migration, step)
        elif actual == step.standard_strings_after:
            return None
        return self._replan_after(migration, step)

    def _changed_unseen(self, migration: Migration, step: Batch) -> None:
        """`step` changed how strings read, and no statement in it names the setting (a
        function that sets it, a name computed): alone in its query, the rest is read as
        the server now reads it, as psql would; among others, the ones after it were
        read the old way already, where psql would have read them the new way, and which
        one changed it cannot be told: refused (the caller rolls the file back), unless
        nothing after its first statement reads otherwise either way (no backslash, no
        U&'...' string: the only text the setting changes the reading of)."""
        from cicd_db.migrations.steps import nth_statement

        second = nth_statement(migration.data, step, 1)
        if second is None or not _READ_BY_THE_SETTING.search(
            migration.data, second.start, step.end
        ):
            return
        last = step.line + migration.data.count(b"\n", step.start, step.end)
        now = "on" if self.standard_strings() else "off"
        raise MigrationFailed(
            f"migration {migration.filename} changed standard_conforming_strings to {now} "
            f"in lines {step.line}-{last} without naming it (a function that sets it?), so "
            "the runner cannot tell which statements after it psql would read the new way; "
            "it was rolled back; name the setting where it changes (`SET "
            f"standard_conforming_strings = {now};` right after that statement) and run again"
        )

    def steps_for(self, migration: Migration) -> tuple[Step, ...]:
        """The file's steps as the server reads strings now: as planned (with
        standard_conforming_strings on), or planned again for a server with it off."""
        from cicd_db.migrations.steps import Batch

        steps = migration.steps
        standard = self.standard_strings()
        if steps and isinstance(steps[0], Batch) and steps[0].standard_strings != standard:
            return _replan(migration, 0, 1, standard)
        return steps

    def converts_text(self) -> bool:
        """Whether the server converts the text it is sent from the client's encoding to
        its own, which may lack a character the text has: a database in LATIN1, EUC_JP,
        ...; or a file's `SET client_encoding` (SQL_ASCII takes bytes as they come)."""
        info = self.conn.info
        server = info.parameter_status("server_encoding")
        return (
            server not in ("SQL_ASCII", None) and info.parameter_status("client_encoding") != server
        )

    def simple(self, query: bytes) -> list[PGresult]:
        """Send `query` with the simple protocol, as psql does: the server splits statements.

        Returns every statement's result, errors included, without raising:
        which statement failed is the number of results before the error.
        """
        conn = self.conn
        pgconn = conn.pgconn
        self.sent_unseen = True  # by psycopg's cursors: `borrowed` tells it after
        with conn.lock:
            pgconn.send_query(query)
            return self._results()

    def _results(self, timeout: float | None = None) -> list[PGresult]:
        """The results of the query sent, each statement's, a COPY the scanner did not
        see ended: COPY FROM STDIN with an error (never a hang), COPY TO STDOUT read and
        dropped. `timeout`: seconds for each wait, else psycopg's _WaitTimeout."""
        conn, pgconn = self.conn, self.conn.pgconn
        results: list[PGresult] = conn.wait(generators.execute(pgconn), timeout=timeout)
        while results and results[-1].status == ExecStatus.COPY_IN:
            pgconn.put_copy_end(b"COPY FROM STDIN data must follow its statement in the file")
            results = results[:-1] + conn.wait(generators.execute(pgconn), timeout=timeout)
        while results and results[-1].status == ExecStatus.COPY_OUT:
            results.pop()
            while isinstance(conn.wait(generators.copy_from(pgconn), timeout=timeout), memoryview):
                pass
            results += conn.wait(generators.fetch_many(pgconn), timeout=timeout)
        return results

    def error(self, result: PGresult) -> psycopg.Error:
        return errors.error_from_result(result, encoding=self.conn.info.encoding)

    def copy(self, migration: Migration, step: Copy) -> None:
        """COPY ... FROM STDIN with the data lines that follow it in the file, as psql sends them."""
        statement, data = step.statement, step.data
        try:
            with (
                self.conn.cursor() as cursor,
                cursor.copy(migration.data[statement.start : statement.end]) as copy,
            ):
                copy.write(memoryview(migration.data)[data.start : data.end])
        except psycopg.Error as error:
            line = statement.line
            # "COPY t, line 5" in English; in another language (lc_messages: "COPY t,
            # Zeile 5") the number after the first comma, a table's name holding none.
            context = error.diag.context or ""
            where = re.search(r", line (\d+)", context) or re.search(
                r"^COPY [^,\n]*, [^\d\n]*(\d+)", context, re.M
            )
            if where and data.end > data.start:
                line = data.line + int(where[1]) - 1  # the data line the server named
            from cicd_db.migrations.diagnose import file_failure

            raise file_failure(
                self, migration, line, error, statement.text(migration.data)
            ) from None


# What standard_conforming_strings changes the reading of: a backslash in a '...' string
# (an escape, or itself), and a U&'...' string (refused while it is off). Text without
# either reads the same both ways.
_READ_BY_THE_SETTING = re.compile(rb"\\|[uU]&'")


def _replan(migration: Migration, start: int, line: int, standard: bool) -> tuple[Step, ...]:
    """The rest of `migration` from `start`, planned again as the server now reads strings."""
    from cicd_db.migrations.statements import plan

    return plan(
        migration.filename,
        migration.data,
        transactional=migration.transactional,
        standard_strings=standard,
        start=start,
        line=line,
    )
