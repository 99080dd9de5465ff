"""The migration runner: plain SQL files in `db/migrations/`, applied forward only.

Rules (DESIGN.md, "Migrations"):

- A file is `<version>_<name>.sql`; versions are integers, applied in numeric
  order, and no two files share one.
- A file and its history row commit in one transaction. A file whose first line
  is `-- cicd-db: no-transaction` runs outside one (for `CREATE INDEX
  CONCURRENTLY`), one statement per such file.
- The history is our own table, `cicd_db_schema_history`.
- One runner at a time per database: a session advisory lock, polled with
  `pg_try_advisory_lock` until a timeout (a blocking lock would deadlock with
  `CONCURRENTLY`, which waits for every other transaction, ours included).
- Refused, with the fix in the message: an applied file that was edited, an
  applied file that is missing, a pending file below the newest applied version.

`discover()` reads files only. `Runner.applied()`, `pending()` and `status()`
only read the database. `Runner.apply()` writes, unless `dry_run`.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, pq, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row

from cicd_db.errors import ConfigError, LockTimeout, MigrationFailed, MigrationRefused
from cicd_db.sqltext import Statement, statements

HISTORY_TABLE = "cicd_db_schema_history"
NO_TRANSACTION_MARKER = "-- cicd-db: no-transaction"
# One key for "the migrations of this database"; advisory locks are per database.
LOCK_KEY = 0x6369_6364_2D64_62  # "cicd-db" in ASCII
LOCK_POLL_SECONDS = 0.05
# Passed at connect time: the server then notices within a second that a killed
# runner is gone, ends its transaction and frees the lock (PostgreSQL 14+, Linux).
SESSION_OPTIONS = "-c client_connection_check_interval=1000"
# `CREATE INDEX CONCURRENTLY name`: an interrupted run leaves `name` behind, invalid.
CONCURRENT_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r'(?P<name>"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)',
    re.IGNORECASE,
)
# Failures caused by other sessions, not by the migration: lock_not_available
# (lock_timeout), query_canceled, deadlock_detected, serialization_failure.
TRANSIENT_SQLSTATES = frozenset({"55P03", "57014", "40P01", "40001"})
# Statements that change the session, not the database.
SETTINGS = frozenset({"SET", "RESET"})
FILE_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file, read from disk."""

    version: int
    name: str
    path: Path
    text: str
    checksum: str

    @property
    def transactional(self) -> bool:
        first_line = self.text.lstrip("\ufeff").split("\n", 1)[0].strip()
        return first_line != NO_TRANSACTION_MARKER

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Applied:
    """One row of the history table."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str
    duration_ms: int


@dataclass(frozen=True)
class StatusRow:
    version: int
    name: str
    state: str  # applied | pending | edited | missing | out-of-order
    applied_at: datetime | None


@dataclass(frozen=True)
class Result:
    """What apply() did with one migration."""

    migration: Migration
    duration_ms: float
    dry_run: bool
    notes: tuple[str, ...] = ()


def discover(folder: Path) -> list[Migration]:
    """Read the migration files of `folder`, sorted by version. Reads files only."""
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist; "
            "pass --migrations-dir DIR or run from the repository root"
        )
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql" or not path.is_file():
            continue
        match = FILE_NAME.match(path.name)
        if match is None:
            raise ConfigError(
                f"migration file {path.name} has no version; "
                "rename it to <version>_<name>.sql, for example 0002_add_index.sql"
            )
        version = int(match["version"])
        if version in migrations:
            raise ConfigError(
                f"migration files {migrations[version].filename} and {path.name} share "
                f"version {version}; renumber one of them"
            )
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"migration file {path.name} is not UTF-8; save it as UTF-8"
            ) from None
        migration = Migration(
            version=version,
            name=match["name"],
            path=path,
            text=text,
            checksum=hashlib.sha256(data).hexdigest(),
        )
        if not migration.transactional and len(_changes(text)) != 1:
            raise ConfigError(
                f"migration file {path.name} is marked no-transaction but does not hold "
                "exactly one statement besides SET; split it into one file per statement"
            )
        migrations[version] = migration
    if not migrations:
        raise ConfigError(
            f"migrations folder {folder} holds no <version>_<name>.sql file; "
            "add one, or pass the right folder with --migrations-dir"
        )
    return [migrations[version] for version in sorted(migrations)]


def _changes_settings(text: str) -> bool:
    return any(statement.keyword in SETTINGS for statement in statements(text))


def _changes(text: str) -> list[Statement]:
    """The statements of `text` that are not session settings (SET ...)."""
    return [statement for statement in statements(text) if statement.keyword not in SETTINGS]


class Runner:
    """Applies `migrations` to the database behind `conn`.

    `conn` must be in autocommit mode: the runner opens its own transactions, and
    a no-transaction file must run outside any.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        migrations: list[Migration],
        *,
        lock_timeout: float = 60.0,
    ):
        if not conn.autocommit:
            raise ValueError("the runner needs an autocommit connection")
        self.conn = conn
        self.migrations = migrations
        self.lock_timeout = lock_timeout

    # -- reading ---------------------------------------------------------------

    def history_exists(self) -> bool:
        row = self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", [HISTORY_TABLE]).fetchone()
        return bool(row and row[0])

    def applied(self) -> list[Applied]:
        """The history, oldest first. Reads only."""
        query = sql.SQL(
            "SELECT version, name, checksum, applied_at, applied_by, duration_ms "
            "FROM {} ORDER BY version"
        ).format(sql.Identifier(HISTORY_TABLE))
        if (
            self.conn.info.transaction_status != TransactionStatus.IDLE
            and not self.history_exists()
        ):
            return []
        try:
            with self.conn.cursor(row_factory=class_row(Applied)) as cursor:
                return cursor.execute(query).fetchall()
        except errors.UndefinedTable:
            # One round trip in the common case; outside a transaction the error costs nothing.
            return []

    def status(self) -> list[StatusRow]:
        """Every version known to the files or the history, with its state. Reads only."""
        applied = {row.version: row for row in self.applied()}
        newest = max(applied, default=0)
        rows = []
        for migration in self.migrations:
            row = applied.pop(migration.version, None)
            if row is None:
                state = "out-of-order" if migration.version < newest else "pending"
                rows.append(StatusRow(migration.version, migration.name, state, None))
            else:
                state = "applied" if row.checksum == migration.checksum else "edited"
                rows.append(StatusRow(migration.version, migration.name, state, row.applied_at))
        rows.extend(
            StatusRow(row.version, row.name, "missing", row.applied_at) for row in applied.values()
        )
        return sorted(rows, key=lambda row: row.version)

    def pending(self, *, target: int | None = None) -> list[Migration]:
        """The files apply() would run, in order; refuses as apply() would. Reads only."""
        return self._plan(self.applied(), target)

    # -- writing ---------------------------------------------------------------

    def apply(
        self,
        *,
        target: int | None = None,
        dry_run: bool = False,
        on_applied: Callable[[Result], None] | None = None,
    ) -> list[Result]:
        """Apply pending migrations up to `target` (inclusive). Writes unless `dry_run`.

        Holds the advisory lock throughout, so concurrent runners apply each file
        once. A failing file rolls back alone: those before it stay applied.
        """
        if dry_run:
            results = [Result(m, 0.0, dry_run=True) for m in self.pending(target=target)]
            for result in results:
                if on_applied:
                    on_applied(result)
            return results
        if not self._plan(self.applied(), target):
            return []  # nothing to do: no lock needed to find that out
        with self._lock():
            self._create_history()
            results = []
            # Read again under the lock: another runner may have applied some meanwhile.
            for migration in self._plan(self.applied(), target):
                result = self._apply_one(migration)
                results.append(result)
                if on_applied:
                    on_applied(result)
            return results

    def baseline(self, version: int) -> list[Migration]:
        """Record migrations up to `version` as applied, without running them. Writes.

        For a database made by hand (the plan's `psql -f`): first the files are run
        in a scratch schema inside a transaction that is rolled back, and the live
        schema must match what they made, table for table, column for column,
        constraint for constraint, index for index. CONCURRENTLY is dropped from
        no-transaction files there, since the scratch run is one transaction.
        """
        chosen = [m for m in self.migrations if m.version <= version]
        if not chosen or chosen[-1].version != version:
            raise MigrationRefused(
                f"no migration file has version {version}; see `migrate status` for the versions"
            )
        with self._lock():
            if self.applied():
                raise MigrationRefused(
                    "this database already has migration history; baseline is only for a "
                    "database without it (run `migrate up` instead)"
                )
            problems = self._compare_with(chosen)
            if problems:
                shown = "; ".join(problems[:12])
                more = f"; and {len(problems) - 12} more" if len(problems) > 12 else ""
                raise MigrationRefused(
                    f"the live schema does not match migrations up to version {version}: "
                    f"{shown}{more}; fix the schema by hand, or baseline at the version it matches"
                )
            with self.conn.transaction():
                self._create_history()
                for migration in chosen:
                    self._insert_history(migration, 0)
        return chosen

    def _compare_with(self, chosen: list[Migration]) -> list[str]:
        from cicd_db import schema  # only baseline needs the catalog queries

        row = self.conn.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            raise MigrationRefused("no schema is on the search_path; set search_path and retry")
        live = str(row[0])
        scratch = f"cicd_db_baseline_{os.getpid()}"
        with self.conn.transaction(force_rollback=True):
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
            self.conn.execute(
                sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(scratch))
            )
            for migration in chosen:
                text = migration.text
                if not migration.transactional:
                    text = re.sub(r"\bCONCURRENTLY\b", "", text, flags=re.IGNORECASE)
                self._run_statements(replace(migration, text=text))
            expected = schema.signature(self.conn, scratch)
            actual = schema.signature(self.conn, live)
        return schema.differences(expected, actual)

    # -- internals ---------------------------------------------------------------

    def _plan(self, applied: list[Applied], target: int | None) -> list[Migration]:
        files = {migration.version: migration for migration in self.migrations}
        for row in applied:
            migration = files.get(row.version)
            if migration is None:
                raise MigrationRefused(
                    f"migration {row.version} ({row.name}) was applied but no file has that "
                    "version; restore it from version control (applied migrations are never "
                    "deleted)"
                )
            if migration.checksum != row.checksum:
                raise MigrationRefused(
                    f"migration {migration.filename} was edited after it was applied; "
                    "restore the applied version from version control and put the change "
                    "in a new migration"
                )
        done = {row.version for row in applied}
        newest = max(done, default=0)
        pending = [m for m in self.migrations if m.version not in done]
        for migration in pending:
            if migration.version < newest:
                raise MigrationRefused(
                    f"migration {migration.filename} is pending but version {newest} is "
                    f"already applied; renumber it above {newest}"
                )
        if target is not None:
            pending = [m for m in pending if m.version <= target]
        return pending

    @contextmanager
    def _lock(self) -> Iterator[None]:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()
            if row and row[0]:
                break
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"another migration runner held the lock for {self.lock_timeout:g} s; "
                    "wait for it to finish, or raise --lock-timeout"
                )
            time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            if not self.conn.closed and not self.conn.broken:
                self.conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])

    def _create_history(self) -> None:
        """Called under the lock, so IF NOT EXISTS cannot race with another runner."""
        self.conn.execute(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {} (
                    version     bigint PRIMARY KEY,
                    name        text NOT NULL,
                    checksum    text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now(),
                    applied_by  text NOT NULL DEFAULT current_user,
                    duration_ms integer NOT NULL
                )
                """
            ).format(sql.Identifier(HISTORY_TABLE))
        )

    def _insert_history(self, migration: Migration, duration_ms: float | None) -> None:
        """`duration_ms` None: measured by the server, from the transaction's start to now."""
        duration = (
            sql.SQL("round(extract(epoch FROM clock_timestamp() - now()) * 1000)")
            if duration_ms is None
            else sql.Literal(round(duration_ms))
        )
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} (version, name, checksum, duration_ms) VALUES (%s, %s, %s, {})"
            ).format(sql.Identifier(HISTORY_TABLE), duration),
            [migration.version, migration.name, migration.checksum],
        )

    def _apply_one(self, migration: Migration) -> Result:
        started = time.perf_counter()
        notes: tuple[str, ...] = ()
        if migration.transactional:
            self._apply_in_transaction(migration)
        else:
            notes = self._drop_invalid_index(migration)
            self._run_statements(migration)
            self._insert_history(migration, (time.perf_counter() - started) * 1000)
            if _changes_settings(migration.text):
                self.conn.execute("RESET ALL")
        return Result(migration, (time.perf_counter() - started) * 1000, dry_run=False, notes=notes)

    def _apply_in_transaction(self, migration: Migration) -> None:
        """The file's statements and its history row, in one transaction and one round trip.

        Pipelined: every statement is sent at once and the results read back in
        order, so the first statement without a successful result is the one
        that failed, and the error names its line.
        """
        sent: list[tuple[Statement, psycopg.Cursor[Any]]] = []
        try:
            # BEGIN and COMMIT are sent as statements, not with conn.transaction(), so
            # that the whole file travels in the one pipeline: half the time per file.
            with self.conn.pipeline():
                self.conn.execute(b"BEGIN")
                for statement in statements(migration.text):
                    cursor = self.conn.cursor()
                    sent.append((statement, cursor))
                    cursor.execute(statement.text.encode())  # bytes: file text is not a literal
                self._insert_history(migration, None)
                if _changes_settings(migration.text):
                    # A file's SET lock_timeout and the like must not leak into the next file.
                    self.conn.execute(b"RESET ALL")
                self.conn.execute(b"COMMIT")
        except psycopg.Error as error:
            if self.conn.info.transaction_status != TransactionStatus.IDLE and not self.conn.broken:
                self.conn.execute(b"ROLLBACK")
            failed = next(
                (
                    statement
                    for statement, cursor in sent
                    if cursor.pgresult is None
                    or cursor.pgresult.status == pq.ExecStatus.FATAL_ERROR
                ),
                None,
            )
            if failed is None:
                raise
            raise MigrationFailed(
                _describe_failure(migration, failed.line, failed.text, error)
            ) from None

    def _drop_invalid_index(self, migration: Migration) -> tuple[str, ...]:
        """Drop the invalid index an interrupted CREATE INDEX CONCURRENTLY left behind.

        PostgreSQL's own advice for that case; without it, the file could never be
        run again (the name is taken) or, with IF NOT EXISTS, would keep a broken index.
        """
        match = next(
            (m for s in _changes(migration.text) if (m := CONCURRENT_INDEX.match(s.text))), None
        )
        if match is None:
            return ()
        raw = match["name"]
        name = raw[1:-1] if raw.startswith('"') else raw.lower()
        identifier = sql.Identifier(name)
        row = self.conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
            [identifier.as_string(self.conn)],
        ).fetchone()
        if row is None or row[0]:
            return ()
        self.conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(identifier))
        return (f"dropped invalid index {name} left by an interrupted run",)

    def _run_statements(self, migration: Migration) -> None:
        for statement in statements(migration.text):
            try:
                self.conn.execute(statement.text.encode())  # bytes: file text is not a literal
            except psycopg.Error as error:
                raise MigrationFailed(
                    _describe_failure(migration, statement.line, statement.text, error)
                ) from None


def _describe_failure(migration: Migration, line: int, statement: str, error: psycopg.Error) -> str:
    diag = error.diag
    position = diag.statement_position
    if position and position.isdigit():
        line += statement.count("\n", 0, int(position) - 1)
    message = diag.message_primary or str(error).strip().splitlines()[0]
    code = f" [{diag.sqlstate}]" if diag.sqlstate else ""
    rolled_back = "it was rolled back" + (
        "" if migration.transactional else " as far as PostgreSQL allows"
    )
    if diag.sqlstate in TRANSIENT_SQLSTATES:
        advice = "run again when the table is less busy (the file itself is fine)"
    else:
        advice = "fix the file and run again"
    return (
        f"migration {migration.filename} failed at line {line}: {message}{code}; "
        f"{rolled_back}; {advice}"
    )
