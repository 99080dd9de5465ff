"""`Runner`, the one object a caller needs: the files, the database, and what to do.

It holds no logic of its own: reading and reconciling the history is `history`'s,
applying `apply`'s, rehearsing `rehearse`'s, baseline and drift `verify`'s; the
lock is `lock`'s and the work session `session`'s. `open_runner` opens one on a
target with the guards every entry point needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from cicd_db import cursors, targets
from cicd_db.cloud import is_transaction_pooler
from cicd_db.errors import (
    ConfigError,
    MigrationFailed,
    MigrationRefused,
    OperationalError,
    UsageError,
    check_seconds,
)
from cicd_db.migrations import history, history_table, lock, reconcile
from cicd_db.migrations.failures import DEFAULT_RETRIES, DEFAULT_RETRY_BUDGET
from cicd_db.migrations.files import Migration, discover
from cicd_db.migrations.history import Applied
from cicd_db.migrations.reconcile import StatusRow
from cicd_db.migrations.session import CLIENT_ENCODING, Session, session_options

# Imported where they are used: `migrate up` never rehearses, baselines, checks drift or
# dumps a schema, and each of its runs would pay about 3 ms to load these modules; a
# run with nothing pending applies nothing (docs/benchmarks.md, "Where the time goes").
if TYPE_CHECKING:
    from cicd_db import schema
    from cicd_db.migrations.apply import Result
    from cicd_db.migrations.rehearse import Rehearsal
    from cicd_db.migrations.retry import Retry


class Runner:
    """Applies `migrations` to the database behind `conn`.

    `conn` must be in autocommit mode: the runner opens its own transactions, and
    a no-transaction file must run outside any. `applied()`, `pending()`,
    `status()` and `drift()` only read the database; `apply()` and `baseline()`
    write; `rehearse()` writes nothing a rollback keeps.

    What it does to the connection you give it: `apply()`, `rehearse()`, `baseline()`
    and `drift()` refuse it inside a transaction or a pipeline (UsageError, nothing
    touched); `apply()` starts each file, the first too, in the session as it began
    (its options, the role's and the database's settings), as psql starts each file:
    settings you SET on it, its temporary tables, prepared statements, LISTEN and
    advisory locks are reset, so put session settings in the connection's options
    (the URL's `options=-c ...`, PGOPTIONS). The reads run inside your transaction
    too and leave it as it was. Your `row_factory`, `cursor_factory` and
    `prepare_threshold` are yours again after each call. Server notices of every
    file reach `add_notice_handler`'s handlers, in the sessions a run opens too.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        migrations: list[Migration],
        *,
        lock_timeout: float = lock.DEFAULT_LOCK_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ):
        # Waited for on this machine's clock: a NaN or an infinity would wait forever.
        lock_timeout = check_seconds("lock_timeout", lock_timeout, math.inf, zero=True)
        retry_budget = check_seconds("retry_budget", retry_budget, math.inf, zero=True)
        self.session = Session(conn)
        self.migrations = migrations
        self.lock_timeout = lock_timeout
        self.retries = retries
        self.retry_budget = retry_budget

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The session's connection: the one given, or a new one after a file that
        needed one (lock.renew)."""
        return self.session.conn

    def add_notice_handler(self, handler: Callable[[psycopg.errors.Diagnostic], None]) -> None:
        """Call `handler` with every notice the server sends, in the sessions a renewal
        opens too."""
        self.session.notice_handlers.append(handler)
        self.session.conn.add_notice_handler(handler)
        if self.session.given is not None:  # the caller's, which `restore` goes back to
            self.session.given.add_notice_handler(handler)

    @property
    def history_table(self) -> sql.Identifier:
        """The history table by its schema-qualified name."""
        return history_table.QUALIFIED

    def applied(self) -> list[Applied]:
        """The history, oldest first. Reads only (in a caller's transaction too, which it
        leaves as it was)."""
        with self.session.borrowed():
            return history.read(self.conn)

    def status(self) -> list[StatusRow]:
        """Every version known to the files or the history, with its state. Reads only."""
        return reconcile.status(self.migrations, self.applied())

    def pending(self, *, target: int | None = None) -> list[Migration]:
        """The files apply() would run, in order; refuses as apply() would. Reads only."""
        return reconcile.pending(self.migrations, self.applied(), target)

    def apply(
        self,
        *,
        target: int | None = None,
        dry_run: bool = False,
        on_applied: Callable[[Result], None] | None = None,
        on_retry: Callable[[Retry], None] | None = None,
        on_start: Callable[[Migration], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> list[Result]:
        """Apply pending migrations up to `target` (inclusive). Writes unless `dry_run`.

        Holds the advisory lock throughout, so concurrent runners apply each file
        once. A failing file rolls back alone: those before it stay applied.
        Ctrl-C or SIGTERM (`errors.Terminated`) becomes `Interrupted`, once the
        running file is rolled back and the lock released. `on_note` hears what
        the run did besides applying files (an older history moved into place),
        as it happens.
        """
        with self.session.borrowed():
            if not dry_run:
                self._alone()
            pending = self.pending(target=target)
            if not pending:
                return []  # nothing to do: no lock needed to find that out
            if dry_run:
                return self._dry_run(pending, on_applied)
            from cicd_db.migrations import apply as applying  # on use: see the imports
            from cicd_db.migrations.retry import RetryPolicy

            return applying.run(
                self.session,
                self.migrations,
                target,
                lock_timeout=self.lock_timeout,
                policy=RetryPolicy(self.retries, self.retry_budget),
                on_applied=on_applied,
                on_retry=on_retry,
                on_start=on_start,
                on_note=on_note,
            )

    def _dry_run(
        self, pending: list[Migration], on_applied: Callable[[Result], None] | None
    ) -> list[Result]:
        """What apply() would do with `pending`, each file as a Result of a dry run, with
        what the run would send before it (an invalid index a build left, dropped)."""
        from cicd_db.migrations import apply as applying  # on use: see the imports
        from cicd_db.migrations import indexes

        results = []
        for number, m in enumerate(pending):  # as the run would: an invalid index first
            notes: tuple[str, ...] = ()
            before: tuple[str, ...] = ()
            try:
                index = indexes.invalid_index_ahead(self.session, m)
            except MigrationFailed as failed:  # its leading statements: a plan lists it
                # Before the files above it have run, they may fail for want of them
                # (a role an earlier file makes): said as a failure only of the first.
                notes = (
                    (f"a run now: {failed}",)
                    if number == 0
                    else ("an invalid index its build may have left is looked for as it runs",)
                )
            except MigrationRefused as refused:
                notes = (f"a run now: {refused}",)
            else:
                if index is not None:
                    notes = (f"would drop invalid index {index} left by an interrupted run",)
                    before = (indexes.drop_statement(index),)
            results.append(applying.Result(m, 0.0, dry_run=True, notes=notes, before=before))
        for result in results:
            if on_applied:
                on_applied(result)
        return results

    def _alone(self) -> None:
        """UsageError unless the connection is outside any transaction (and pipeline):
        the runner opens and commits its own, which would end a caller's; and unless it
        reads text as UTF-8, as the files are sent (the runner's own connections ask for
        it: a caller's to a LATIN1 database is LATIN1, and the server read each file's
        bytes as LATIN1 and stored other text than the file's, without an error)."""
        cursors.ready(self.conn, "the runner", alone=True)
        info = self.conn.info
        encoding = info.parameter_status("client_encoding")
        # SQL_ASCII on SQL_ASCII: the bytes are stored as they come, the file's too.
        as_they_come = encoding == "SQL_ASCII" == info.parameter_status("server_encoding")
        if encoding != CLIENT_ENCODING and not as_they_come:
            raise UsageError(
                f"the runner sends the files as they are, in UTF-8, and this connection's "
                f"client_encoding is {encoding}: connect with client_encoding=UTF8 (the "
                "server converts to the database's encoding itself)"
            )

    def rehearse(self, *, target: int | None = None) -> list[Rehearsal]:
        """Run the pending files in one transaction that is always rolled back
        (`rehearse.rehearse`), under the runner's lock."""
        with self.session.borrowed():
            self._alone()
            pending = self.pending(target=target)
            if not pending:
                return []
            from cicd_db.migrations import rehearse  # on use: see the imports

            with lock.held(self.session, self.lock_timeout):
                # Again under the lock, as a run reads it: another runner may have applied
                # files (these, or its own of the same versions) while this one waited.
                pending = self.pending(target=target)
                if not pending:
                    return []
                try:
                    return rehearse.rehearse(self.session, pending)
                finally:
                    self.session.run_over()

    def baseline(self, version: int) -> list[Migration]:
        """Record migrations up to `version` as applied, without running them, once the
        live schema is found to match them (`verify.baseline`). Writes."""
        from cicd_db.migrations import verify  # on use: see the imports

        with self.session.borrowed():
            self._alone()
            return verify.baseline(self.session, self.migrations, version, self.lock_timeout)

    def drift(self) -> tuple[int, list[schema.Difference]]:
        """The live schema against what the applied files make (`verify.drift`). Reads only."""
        from cicd_db.migrations import verify  # on use: see the imports

        with self.session.borrowed():
            self._alone()
            return verify.drift(self.session, self.migrations)


@contextmanager
def open_runner(
    target: targets.Target,
    *,
    folder: Path | None = None,
    writes: bool,
    yes: bool = False,
    action: str = "apply migrations to it",
    **options: Any,
) -> Iterator[Runner]:
    """A runner on `target`'s database, with the files of `folder` (db/migrations).

    The guards every entry point needs, here so that a Python caller gets them
    too: writing to a remote stack needs `yes`; writing
    through a transaction pooler is refused, since the session lock would not
    hold; the runner uses the stack's direct endpoint when it has one.
    `options` go to Runner (lock_timeout, retries, retry_budget).
    """
    # Planned when about to run (reconcile.pending): an applied file is known by its checksum.
    files = discover(folder or target.root / targets.MIGRATIONS_FOLDER, planned=False)
    if writes and target.remote and not yes:
        raise UsageError(
            "{target} is a remote database; add {yes} to {action} "
            "(or use {local} for the local one)",
            arguments=["yes", "local"],
            values={"target": target.description, "action": action},
        )
    settings = target.settings.for_migrations()
    if writes and is_transaction_pooler(settings):
        raise ConfigError(
            f"{settings.where} is a transaction pooler, where the migration lock "
            "does not hold; migrate through the direct endpoint (Supabase: port 5432, Neon: the "
            "host without -pooler), or export migration_database_url from the stack"
        )
    with (
        targets.connect(
            settings,
            options=session_options(settings.user_options()),
            client_encoding=CLIENT_ENCODING,
        ) as conn,
        _owning(Runner(conn, files, **options)) as runner,
    ):
        try:
            yield runner
        except psycopg.Error as error:
            # A role's or database's setting (left by a migration?) can cut the runner's
            # own statements too: say which, and where it is set.
            from cicd_db.migrations.diagnose import own_failure  # on failure only

            told = own_failure(Session(runner.session.conn), error)
            if told is None:
                raise
            raise OperationalError(told) from None


@contextmanager
def _owning(runner: Runner) -> Iterator[Runner]:
    """`runner` on a connection cicd-db opened itself: a renewal closes the old session
    (Session.owned), as psql's ends with its file, and the last is closed at the end (the
    connection's `with` closes only the first)."""
    runner.session.owned = True
    try:
        yield runner
    finally:
        runner.session.conn.close()


def scratch_dump(files: list[Migration]) -> str:
    """The schema `files` make, dumped from a server made for it and removed after
    (cicd_db.throwaway): what a file does beyond its database (a role made, a setting
    put on the role that runs it) stays on no server anyone uses, nor for the next dump."""
    from cicd_db import schema, throwaway  # on use: see the imports

    with throwaway.server() as server:
        with (
            targets.connect(
                server.admin,
                options=session_options(server.admin.user_options()),
                client_encoding=CLIENT_ENCODING,
            ) as conn,
            _owning(Runner(conn, files)) as runner,
        ):
            runner.apply()
        return schema.dump(server.dumper)
