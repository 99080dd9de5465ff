"""The migration runner: plain SQL files in `db/migrations/`, applied forward only.

The rules (docs/design.md, "Migrations"):

- A file is `<version>_<name>.sql`; versions are integers (bigint), applied in
  numeric order, and no two files share one.
- A file applies exactly as `psql -v ON_ERROR_STOP=1 -1 -f FILE` would apply it.
  PostgreSQL decides what a statement is: the file goes to the server in one
  simple-protocol query (in slices of about a megabyte for a large file), split
  only where psql itself would stop sending SQL: `COPY ... FROM STDIN` data,
  pg_dump's `\\restrict` lines, and after a statement that changes how the rest
  of the text is read (`standard_conforming_strings`).
- A file and its history row commit in one transaction. The history row goes to
  the history table by its schema-qualified name, whatever `search_path` the
  file set, and only if the runner's own transaction is still the one open. A
  transactional file may not end or start a transaction itself (refused before
  anything runs).
- A file whose first line is `-- cicd-db: no-transaction` runs outside a
  transaction (for `CREATE INDEX CONCURRENTLY`): one statement besides SET/RESET.
- No session state crosses from one file to the next: role, session
  authorization, settings (search_path among them) and temporary tables are
  reset after each file. `applied_by` is the runner's login role.
- One runner at a time per database: a session advisory lock, polled with
  `pg_try_advisory_lock` until a timeout (a blocking lock would deadlock with
  `CONCURRENTLY`, which waits for every other transaction, ours included).
- A file that fails because of other sessions (lock timeout, deadlock,
  serialization failure) is rolled back and retried with backoff, a bounded
  number of times within a time budget.
- Refused, with the fix in the message: an applied file that was edited, an
  applied file that is missing, a pending file below the newest applied version.

`discover()` reads files only. `Runner.applied()`, `pending()` and `status()`
only read the database. `Runner.apply()` and `baseline()` write.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors, generators, sql
from psycopg.conninfo import make_conninfo
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult
from psycopg.rows import class_row

from cicd_db import targets
from cicd_db.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigError,
    Interrupted,
    LockTimeout,
    MigrationFailed,
    MigrationRefused,
    OperationalError,
    Terminated,
    UsageError,
)
from cicd_db.settings import ConnectionSettings, is_transaction_pooler

if TYPE_CHECKING:
    from cicd_db.schema import Difference, Signature

from cicd_db.sqltext import (
    CopyData,
    CopyFromStdin,
    MetaCommand,
    Scanner,
    Statement,
    may_change_lexing,
    mentions_lexing_settings,
    standard_strings_after,
    without_comments,
)

# The history's fixed place: a schema of the runner's own, never found through search_path.
HISTORY_SCHEMA = "cicd_db"
HISTORY_TABLE = "cicd_db_schema_history"
HISTORY_COLUMNS = ("version", "name", "checksum", "applied_at", "applied_by", "duration_ms")
NO_TRANSACTION_MARKER = b"-- cicd-db: no-transaction"
BOM = b"\xef\xbb\xbf"
MAX_VERSION = 2**63 - 1  # the history's version column is a bigint
# One key for "the migrations of this database"; advisory locks are per database.
LOCK_KEY = 0x6369_6364_2D64_62  # "cicd-db" in ASCII
LOCK_POLL_SECONDS = 0.05
# Passed at connect time: the server then notices within a second that a killed
# runner is gone, ends its transaction and frees the lock (PostgreSQL 14+, Linux).
SESSION_OPTIONS = "-c client_connection_check_interval=1000"
# The lock's own session sits idle while files run: a database's or role's
# idle_session_timeout must not end it (and the lock with it).
LOCK_SESSION_OPTIONS = "-c idle_session_timeout=0"
# A large file goes to the server in slices of whole statements of about this
# size, so that neither side holds the parse trees of 50 MB of SQL at once.
BATCH_BYTES = 1 << 20
# Failures caused by other sessions, not by the file: lock_not_available
# (lock_timeout), deadlock_detected, serialization_failure. Retried.
RETRIED_SQLSTATES = {
    "55P03": "lock not available",
    "40P01": "deadlock",
    "40001": "serialization failure",
}
DEFAULT_RETRIES = 10
DEFAULT_RETRY_BUDGET = 120.0  # seconds, over all the retries of one run
FIRST_RETRY_DELAY = 0.2  # seconds; doubles with each retry of a file, up to MAX_RETRY_DELAY
MAX_RETRY_DELAY = 10.0
# Held, shared, by the work session of every runner while it runs files. A runner
# that takes the lock then waits until no other session holds this one: a runner
# killed outright loses its lock's session at once, but its work session may still
# be running a statement until the server notices it is gone.
WORK_KEY = LOCK_KEY + 1
# Before each file's history row, and again whenever a file failed: the session as
# it was at connect time, everything DISCARD ALL resets (which cannot run inside
# the file's transaction). Settings (search_path, so nothing a file set redirects
# the runner's own statements), role, temporary tables, prepared statements,
# cursors, LISTEN, the file's own advisory locks, sequences' currval: none of it
# crosses to the next file. The runner's lock is held by another session; its
# work mark is taken again at once.
RESET_SESSION = (
    b"CLOSE ALL; RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; DEALLOCATE ALL; "
    b"UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD PLANS; "
    b"DISCARD SEQUENCES; DISCARD TEMP; SELECT pg_catalog.pg_advisory_lock_shared(%d)" % WORK_KEY
)
# Returns the transaction's id, which no statement of a file can change. The
# history row is written only while the transaction has that id: the one the
# runner began. Sent after BEGIN with the file's first statements, or after the
# file's leading SET TRANSACTION statements, which must come before any query.
XACT_ID = b"SELECT pg_catalog.pg_current_xact_id();"
BEGIN_MARKED = b"BEGIN;" + XACT_ID
# The SQLSTATEs the runner's own checks raise (class CD, not PostgreSQL's).
CHECK_MARK, CHECK_LOCK, CHECK_RECORDED, CHECK_HISTORY = "CDB01", "CDB02", "CDB03", "CDB04"
CHECK_HISTORY_GONE = "history gone"  # not raised: read from the INSERT's undefined_table
# Statements that end or start a transaction: not allowed in a transactional file.
TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ABORT", "ROLLBACK", "START", "PREPARE"})
SESSION_SETTINGS = frozenset({"SET", "RESET"})
# pg_dump (17.6, 18 and later) brackets its output with these psql commands; they
# only switch psql's own meta-commands off and on, so the runner, which runs
# none, may skip them.
IGNORED_META_COMMANDS = frozenset({"restrict", "unrestrict"})
# Versions are ASCII digits: Python's \d and int() also take full-width and
# Arabic-Indic digits, which PostgreSQL, sort order and people read differently.
FILE_NAME = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql")
VERSIONED = re.compile(r"[0-9]+_")
# `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON`: an interrupted
# build leaves `name` behind, invalid.
CONCURRENT_INDEX = re.compile(
    rb"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rb'(?P<name>"(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)',
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Batch:
    """Statements sent to the server as one query: `data[start:end]`."""

    start: int
    end: int
    line: int
    standard_strings: bool  # how '...' strings were read in it
    # Its last statement may change how the rest is read; the server's answer
    # decides (the expectation is `standard_strings_after`, None if unknown).
    changes_lexing: bool = False
    standard_strings_after: bool | None = None


@dataclass(frozen=True)
class Copy:
    """A `COPY ... FROM STDIN` statement and the data lines that follow it in the file."""

    statement: Statement
    data: CopyData


Step = Batch | Copy


@dataclass(frozen=True)
class Migration:
    """One migration file, read from disk and checked: what the runner will send."""

    version: int
    name: str
    path: Path
    data: bytes  # the file's bytes, without a UTF-8 byte order mark
    checksum: str  # of the file's bytes as they are on disk
    transactional: bool
    steps: tuple[Step, ...]

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


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
    state: str  # applied | pending | edited | renamed | missing | out-of-order
    applied_at: datetime | None


@dataclass(frozen=True)
class Result:
    """What apply() did with one migration."""

    migration: Migration
    duration_ms: float
    dry_run: bool
    notes: tuple[str, ...] = ()


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


def session_options(given: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The runner's session options, then the user's: the URL's `options`, or else PGOPTIONS.

    libpq reads PGOPTIONS only when a connection names no `options`, and the
    runner names its own; joined, the user's still arrive (a `statement_timeout`,
    Neon's `endpoint=...`, `PGOPTIONS='-c cicd_db.legacy_time_zone=...'` of
    db/README.md), and come last, so a setting the user names wins over ours.
    A role's or database's setting does not (options outrank them): the runner
    needs the check to free its lock when killed; `options` can still change it.
    """
    user = given if given is not None else environ.get("PGOPTIONS", "")
    return " ".join(filter(None, [SESSION_OPTIONS, user.strip()]))


def discover(folder: Path) -> list[Migration]:
    """Read and check the migration files of `folder`, sorted by version. Reads files only.

    Everything that can be known without a server is refused here, before
    anything runs: bad names, shared versions, text that is not UTF-8, and the
    statements a file may not hold.
    """
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist; "
            "pass --migrations-dir DIR or run from the repository root"
        )
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".sql" or not path.is_file():
            continue
        version, name = _parse_name(path.name)
        if version in migrations:
            raise ConfigError(
                f"migration files {migrations[version].filename} and {path.name} share "
                f"version {version}; renumber one of them"
            )
        migrations[version] = read(path, version, name)
    if not migrations:
        raise ConfigError(
            f"migrations folder {folder} holds no <version>_<name>.sql file; "
            "add one, or pass the right folder with --migrations-dir"
        )
    return [migrations[version] for version in sorted(migrations)]


def _parse_name(filename: str) -> tuple[int, str]:
    if not filename.endswith(".sql"):
        raise ConfigError(
            f"migration file {filename}: the extension must be lower-case .sql; "
            f"rename it to {filename[:-4]}.sql"
        )
    match = FILE_NAME.fullmatch(filename)
    if match is None:
        if re.fullmatch(r"[0-9]+\.sql", filename):
            raise ConfigError(
                f"migration file {filename} has a version but no name; rename it to "
                f"{filename[:-4]}_what_it_does.sql"
            )
        digits = re.match(r"\d+", filename)
        if digits is not None and not digits.group().isascii():
            ascii_digits = str(int(digits.group()))
            raise ConfigError(
                f"migration file {filename!r}: its version {digits.group()!r} is not written in "
                f"ASCII digits 0-9; rename it, for example to "
                f"{ascii_digits.zfill(len(digits.group()))}{filename[digits.end() :]}"
            )
        if not VERSIONED.match(filename):
            raise ConfigError(
                f"migration file {filename} has no version; "
                "rename it to <version>_<name>.sql, for example 0002_add_index.sql"
            )
        number, _, rest = filename[:-4].partition("_")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", rest).strip("_.-") or "what_it_does"
        suggestion = f"{number}_{name}.sql"
        raise ConfigError(
            f"migration file {filename!r}: a name may hold only letters, digits, '_', '.' "
            f"and '-' after the version's '_'; rename it, for example to {suggestion}"
        )
    version = int(match["version"])
    if version > MAX_VERSION:
        raise ConfigError(
            f"migration file {filename}: version {version} is above {MAX_VERSION}, the largest "
            "the history can hold; renumber it (0001_, 0002_, ... or a timestamp like "
            "20260101120000_)"
        )
    return version, match["name"]


def read(path: Path, version: int, name: str) -> Migration:
    """One migration file, checked and planned. Reads the file only."""
    raw = path.read_bytes()
    data = raw[len(BOM) :] if raw.startswith(BOM) else raw
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(
            f"migration file {path.name} holds a NUL byte (line {line}), which PostgreSQL "
            "cannot take in SQL; remove it"
        )
    bad = _not_utf8_at(data)
    if bad is not None:
        line = data.count(b"\n", 0, bad) + 1
        raise ConfigError(
            f"migration file {path.name} is not UTF-8 (line {line}); save it as UTF-8"
        )
    first_line_end = data.find(b"\n")
    first_line = data[: len(data) if first_line_end < 0 else first_line_end]
    transactional = first_line.rstrip(b"\r ") != NO_TRANSACTION_MARKER
    return Migration(
        version=version,
        name=name,
        path=path,
        data=data,
        checksum=hashlib.sha256(raw).hexdigest(),
        transactional=transactional,
        steps=plan(path.name, data, transactional=transactional),
    )


NEW_FILE_HEADER = """\
-- {name}: what this changes, and why it is safe on a live database.
SET lock_timeout = '1s';
SET statement_timeout = '60s';

"""


def new_migration(folder: Path, name: str, *, transactional: bool = True) -> Path:
    """Write the next `NNNN_name.sql` of `folder` with a header that sets short timeouts. Writes.

    The number is one above the highest version there, in the width the folder
    uses (four digits for a new folder). Two branches that both take the next
    number collide when merged: `migrate check` refuses two files of one version.
    """
    # `migrate new add_index.sql` means add_index: the extension is the runner's to add.
    while name.lower().endswith(".sql"):
        name = name[:-4]
    if not FILE_NAME.fullmatch(f"1_{name}.sql"):
        raise ConfigError(
            f"migration name {name!r} may hold only letters, digits, '_', '.' and '-', and "
            "must start with a letter or digit; for example add_run_index"
        )
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist; create it, or pass --migrations-dir"
        )
    versions = [
        (int(match["version"]), len(match["version"]))
        for path in folder.iterdir()
        if (match := FILE_NAME.fullmatch(path.name))
    ]
    newest, width = max(versions, default=(0, 4))
    if newest >= MAX_VERSION:
        raise ConfigError(
            f"cannot number a new migration in {folder}: its newest version, {newest}, leaves "
            f"none above it that the history can hold (at most {MAX_VERSION}, a bigint); "
            "renumber that file lower if it is not applied yet"
        )
    path = folder / f"{newest + 1:0{width}d}_{name}.sql"
    header = NEW_FILE_HEADER.format(name=name)
    if not transactional:
        header = NO_TRANSACTION_MARKER.decode() + "\n" + header
    try:
        with path.open("x") as out:
            out.write(header)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; pick another name") from None
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; check the folder") from None
    return path


def _one_by_one(data: bytes, step: Step) -> Iterator[Step]:
    """The statements of a step one at a time, as psql sends them: a batch each."""
    if isinstance(step, Copy):
        yield step
        return
    scanner = Scanner(
        data[: step.end], standard_strings=step.standard_strings, start=step.start, line=step.line
    )
    for piece in scanner:
        if isinstance(piece, Statement):
            yield Batch(piece.start, piece.end, piece.line, step.standard_strings)


def _not_utf8_at(data: bytes, slice_bytes: int = 1 << 20) -> int | None:
    """Where `data` stops being UTF-8, or None; checked a slice at a time, never copied whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for start in range(0, len(data), slice_bytes):
        try:
            decoder.decode(
                view[start : start + slice_bytes], final=start + slice_bytes >= len(data)
            )
        except UnicodeDecodeError as error:
            return start + error.start
    return None


def plan(
    filename: str,
    data: bytes,
    *,
    transactional: bool,
    standard_strings: bool = True,
    start: int = 0,
    line: int = 1,
) -> tuple[Step, ...]:
    """The queries that apply `data` as psql would, from `start`; refuses what may not run.

    A transactional file becomes as few batches as psql's own stopping points
    allow; a no-transaction file one batch per statement, as each must run on
    its own.

    Every statement is checked, whatever comes before it. After a statement that
    changes how '...' strings read, the rest is read as it leaves them; after one
    whose effect only running it tells (`standard_strings_after` is None: a DO
    block, set_config of computed values, any other text naming the setting), the
    rest is planned as if it changed nothing (the runner plans it again if the
    server says otherwise) and checked both ways: what either reading refuses is
    refused before anything runs.
    """
    steps: list[Step] = []
    named = mentions_lexing_settings(data)
    # The other readings still to check, and those checked: (offset, standard strings,
    # statements counted so far in a no-transaction file, capped at 2).
    forks: list[tuple[int, int, bool, int, str]] = []
    checked: set[tuple[int, bool, int]] = set()
    _plan_pass(
        filename, data, transactional, standard_strings, start, line, 0, "", steps, named,
        forks, checked, count=start == 0,
    )  # fmt: skip
    while forks:
        at, at_line, reading, counted, note = forks.pop()
        _plan_pass(
            filename, data, transactional, reading, at, at_line, counted, note, None, named,
            forks, checked, count=start == 0,
        )  # fmt: skip
    return tuple(steps)


def _plan_pass(
    filename: str,
    data: bytes,
    transactional: bool,
    standard_strings: bool,
    start: int,
    line: int,
    changes: int,
    note: str,
    steps: list[Step] | None,
    named: bool,
    forks: list[tuple[int, int, bool, int, str]],
    checked: set[tuple[int, bool, int]],
    *,
    count: bool,
) -> None:
    """Check `data` from `start` under one reading of its strings, and plan it into `steps`
    (None: only check). `note` says which reading, for a refusal in a fork."""
    batch: list[Statement] = []
    scanner = Scanner(data, standard_strings=standard_strings, start=start, line=line)
    default = standard_strings if start == 0 else True  # what RESET brings back

    def flush(**lexing: Any) -> None:
        if batch and steps is not None:
            steps.append(
                Batch(
                    batch[0].start, batch[-1].end, batch[0].line, scanner.standard_strings, **lexing
                )
            )
        batch.clear()

    def refuse(at: int, what: str, fix: str) -> ConfigError:
        return ConfigError(f"migration file {filename}, line {at}{note}: {what}; {fix}")

    copy: CopyFromStdin | None = None
    for piece in scanner:
        if isinstance(piece, MetaCommand):
            if piece.name in IGNORED_META_COMMANDS and not piece.inside_statement:
                flush()
                continue
            raise refuse(
                piece.line,
                f"psql meta-command \\{piece.name} is not SQL",
                "remove it (the runner sends SQL only; pg_dump's \\restrict lines are skipped)",
            )
        if isinstance(piece, CopyData):
            if copy is None:  # the scanner yields CopyData only after CopyFromStdin
                raise TypeError("CopyData without its COPY statement")
            if piece.trailing:
                raise refuse(
                    copy.line,
                    "text follows COPY ... FROM STDIN on its line",
                    "start the data on the next line, as pg_dump writes it",
                )
            if steps is not None:
                steps.append(Copy(copy, piece))
            copy = None
            continue
        if piece.variable is not None:
            offset, variable = piece.variable
            raise refuse(
                piece.line + data.count(b"\n", piece.start, offset),
                f"{variable} is a psql variable, and the runner does not substitute psql variables",
                "write its value instead (current_database(), current_user or a setting "
                "read with current_setting() where it must be computed); if the colon is "
                "SQL, put a space after it",
            )
        if transactional and _controls_transaction(piece.words):
            raise refuse(
                piece.line,
                f"{' '.join(piece.words[:2])} ends or starts a transaction, and the runner "
                "already runs this file in one",
                f"remove it, or make the first line `{NO_TRANSACTION_MARKER.decode()}` "
                "to run the file outside a transaction",
            )
        if piece.keyword == "COPY" and _COPY_TO_STDOUT.search(data, piece.start, piece.end):
            raise refuse(
                piece.line,
                "COPY ... TO STDOUT prints data, which a migration cannot",
                "remove it, or COPY to a table instead",
            )
        if not transactional:
            if piece.copies_from_stdin:
                raise refuse(
                    piece.line,
                    "COPY ... FROM STDIN in a no-transaction file",
                    "move it to a transactional file",
                )
            if piece.keyword not in SESSION_SETTINGS:
                changes += 1
                text = data[piece.start : piece.end]
                _check_concurrent_index(filename, piece, text, scanner.standard_strings)
        elif isinstance(piece, CopyFromStdin):
            flush()
            copy = piece
            continue
        batch.append(piece)
        if may_change_lexing(data, piece, scanner.standard_strings, named=named):
            current = scanner.standard_strings
            text = without_comments(data[piece.start : piece.end], standard_strings=current)
            after = standard_strings_after(
                text, current, transactional=transactional, default=default
            )
            if after is None:
                # Only running it tells: the rest is planned as if nothing changed (the
                # runner plans it again if the server says otherwise), and checked the
                # other way too, once from each place and reading.
                after = current
                key = (piece.end, not current, min(changes, 2))
                if key not in checked:
                    checked.add(key)
                    forks.append(
                        (
                            piece.end,
                            piece.line + data.count(b"\n", piece.start, piece.end),
                            not current,
                            changes,
                            f" (read with standard_conforming_strings "
                            f"{'on' if not current else 'off'}, as line {piece.line} may "
                            "leave it)",
                        )
                    )
            flush(changes_lexing=True, standard_strings_after=after)
            scanner.standard_strings = after
        elif not transactional or batch[-1].end - batch[0].start >= BATCH_BYTES:
            flush()
    flush()
    if not transactional and count and changes != 1:
        raise ConfigError(
            f"migration file {filename}{note} is marked no-transaction but holds {changes} "
            "statements besides SET and RESET; it must hold exactly one: split it into one "
            "file per statement"
        )


_COPY_TO_STDOUT = re.compile(rb"\bTO\s+STDOUT\b", re.IGNORECASE)


def _controls_transaction(words: tuple[str, ...]) -> bool:
    if not words or words[0] not in TRANSACTION_CONTROL:
        return False
    if words[0] == "ROLLBACK":  # ROLLBACK [WORK | TRANSACTION] TO ... stays inside it
        rest = words[2:3] if words[1:2] in (("WORK",), ("TRANSACTION",)) else words[1:2]
        return rest != ("TO",)
    if words[0] in ("START", "PREPARE"):
        return words[1:2] == ("TRANSACTION",)
    return True


def _check_concurrent_index(
    filename: str, statement: Statement, text: bytes, standard_strings: bool
) -> None:
    words = statement.words
    if words[:1] != ("CREATE",) or "CONCURRENTLY" not in words:
        return
    # Comments out: one may hold other SQL, or stand between IF NOT EXISTS and the name.
    match = CONCURRENT_INDEX.search(without_comments(text, standard_strings=standard_strings))
    if match is None or match["name"].upper() == b"ON":
        raise ConfigError(
            f"migration file {filename}, line {statement.line}: CREATE INDEX CONCURRENTLY "
            "without a name; name the index (CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON ...) "
            "so that a build left invalid by an interruption can be found and dropped"
        )


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def index_name(migration: Migration) -> str | None:
    """The index a no-transaction file builds concurrently, as PostgreSQL names it."""
    for step in migration.steps:
        if isinstance(step, Copy):
            continue
        text = migration.data[step.start : step.end]
        statement = without_comments(text, standard_strings=step.standard_strings)
        match = CONCURRENT_INDEX.search(statement)
        if match is not None:
            raw = match["name"].decode("utf-8")
            # PostgreSQL folds unquoted names to lower case in ASCII only.
            return (
                raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.translate(_ASCII_LOWER)
            )
    return None


# Calls whose effect lies outside the caller's transaction, which a rehearsal's
# rollback cannot undo: (what the rehearsal says, how the file calls it). Read in
# the file's text, strings included (EXECUTE runs strings), comments and COPY data
# out: a hint for the reader, never a proof that nothing else happened.
OUTSIDE_THE_TRANSACTION = (
    ("dblink (its statements commit in another session)", rb"\bdblink\w*\s*\("),
    (
        "COPY ... TO a server file or program",
        rb"\bCOPY\b(?:\"[^\"]*\"|[^;])*?\bTO\s+(?:E'|U&'|'|\$[A-Za-z_0-9]*\$|PROGRAM\b)",
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no answer"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


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
        retries: int = DEFAULT_RETRIES,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ):
        if not conn.autocommit:
            raise ValueError("the runner needs an autocommit connection")
        self.conn = conn
        self.migrations = migrations
        self.lock_timeout = lock_timeout
        self.retries = retries
        self.retry_budget = retry_budget
        self._waited = 0.0
        self._lock_pid: int | None = None  # the session that holds the lock, while held
        # The history's rows (version, name, checksum) as the runner wrote them: a
        # file may not change them (TRUNCATE, DELETE, UPDATE, a table in their place).
        self._history_rows: list[tuple[int, str, str]] = []
        # The runner resets the session after each file, prepared statements
        # included (DEALLOCATE ALL), so psycopg must not keep any of its own.
        conn.prepare_threshold = None

    # -- reading ---------------------------------------------------------------

    @property
    def history_table(self) -> sql.Identifier:
        """The history table by its schema-qualified name: always the same, whatever
        search_path a session, role, database or file sets."""
        return sql.Identifier(HISTORY_SCHEMA, HISTORY_TABLE)

    def _histories(self) -> tuple[bool, list[str]]:
        """Where a history is: whether ours exists, and the schemas of older ones.

        Found by catalog, never through search_path. An older release kept the
        history in the first schema of the search_path; such a table (one with the
        history's columns) is read where it is and moved into place by the next
        run that writes. Two histories are refused: which one is true cannot be
        known, and applying by either could run files a second time.
        """
        rows = self.conn.execute(
            "SELECT n.nspname, c.relkind, (SELECT count(*) FROM pg_catalog.pg_attribute a "
            "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "AND a.attname = ANY(%s)) = %s FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND (c.relkind IN ('r', 'p') OR n.nspname = %s) "
            "ORDER BY n.nspname",
            [list(HISTORY_COLUMNS), len(HISTORY_COLUMNS), HISTORY_TABLE, HISTORY_SCHEMA],
        ).fetchall()
        ours = False
        older = []
        for schema, kind, complete in rows:
            if schema == HISTORY_SCHEMA:
                if kind not in ("r", "p") or not complete:
                    what = "a table" if kind in ("r", "p") else "a table (it is a view or the like)"
                    raise ConfigError(
                        f"{self._shown(HISTORY_SCHEMA, HISTORY_TABLE)} exists but is not "
                        f"cicd-db's migration history: it must be {what} with the columns "
                        f"{', '.join(HISTORY_COLUMNS)}; rename or drop it if it is not needed"
                    )
                ours = True
            elif complete and not schema.startswith("pg_temp"):
                older.append(str(schema))
        found = ([HISTORY_SCHEMA] if ours else []) + older
        if len(found) > 1:
            counted = []
            for schema in found:
                table = sql.Identifier(schema, HISTORY_TABLE)
                row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
                rows_in = int(row[0]) if row else 0
                counted.append(f"{self._shown(schema, HISTORY_TABLE)} ({plural(rows_in, 'row')})")
            raise ConfigError(
                f"this database has {len(found)} migration histories, {', '.join(counted)}; "
                "one database holds one history: keep the one that matches the schema "
                "(compare them with `SELECT * FROM` each; an empty one is most likely left by "
                "an older release of cicd-db), drop the others, and run again"
            )
        return ours, older

    def applied(self) -> list[Applied]:
        """The history, oldest first. Reads only."""
        ours, older = self._histories()
        if not ours and not older:
            return []
        schema = HISTORY_SCHEMA if ours else older[0]
        table = sql.Identifier(schema, HISTORY_TABLE)
        query = sql.SQL("SELECT {} FROM {} ORDER BY version").format(
            sql.SQL(", ").join(map(sql.Identifier, HISTORY_COLUMNS)), table
        )
        try:
            with self.conn.cursor(row_factory=class_row(Applied)) as cursor:
                return cursor.execute(query).fetchall()
        except errors.InsufficientPrivilege as error:
            user = self._shown(self.conn.info.user)
            raise OperationalError(
                f"role {user} may not read the migration history "
                f"{self._shown(schema, HISTORY_TABLE)}: "
                f"{error.diag.message_primary}; migrate as the history's owner, or GRANT USAGE "
                f"ON SCHEMA {self._shown(HISTORY_SCHEMA)} and SELECT, INSERT ON the table TO {user}"
            ) from None
        except errors.DatatypeMismatch:
            raise ConfigError(
                f"table {table.as_string(self.conn)} has the columns of cicd-db's migration "
                "history but not their types; rename or drop it if it is not needed"
            ) from None

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
                # In the order _plan refuses them: what `up` refuses, status calls a disagreement.
                state = (
                    "renamed"
                    if row.name != migration.name
                    else "edited"
                    if row.checksum != migration.checksum
                    else "applied"
                )
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
        if dry_run:
            results = [Result(m, 0.0, dry_run=True) for m in self.pending(target=target)]
            for result in results:
                if on_applied:
                    on_applied(result)
            return results
        if not self._plan(self.applied(), target):
            return []  # nothing to do: no lock needed to find that out
        self._waited = 0.0  # seconds spent waiting between retries, over the run
        with self._lock():
            moved = self._create_history()
            if moved and on_note:
                on_note(moved)
            results = []
            # Read again under the lock: another runner may have applied some meanwhile.
            applied = self.applied()
            self._history_rows = [(row.version, row.name, row.checksum) for row in applied]
            for migration in self._plan(applied, target):
                if on_start:
                    on_start(migration)
                result = self._apply_one(migration, on_retry)
                self._history_rows.append((migration.version, migration.name, migration.checksum))
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
            problems = [str(difference) for difference in self._compare_with(chosen)]
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
                    self.conn.execute(self._history_row(migration, duration_ms=0))
        return chosen

    def drift(self) -> tuple[int, list[Difference]]:
        """The live schema against what the applied files make: the newest applied
        version, and each difference. Reads only (the files run in a scratch schema,
        in a transaction that is rolled back, as for baseline)."""
        applied = self.applied()
        self._plan(applied, None)  # an edited or missing file makes the comparison moot
        newest = max((row.version for row in applied), default=0)
        return newest, self._compare_with([m for m in self.migrations if m.version <= newest])

    def _compare_with(self, chosen: list[Migration]) -> list[Difference]:
        """How the live schema differs from what `chosen` make: baseline's and drift's one test."""
        from cicd_db import schema  # catalog queries, on use

        return schema.compare(*self._signatures(chosen))

    def _signatures(self, chosen: list[Migration]) -> tuple[Signature, Signature]:
        """What `chosen` make (in a scratch schema, rolled back) and what the live schema has.

        The live schema is the session's own, where the files make their objects
        when they run for real (not necessarily where the history is kept).
        """
        from cicd_db import schema

        live = schema.current_schema(self.conn)
        scratch = f"cicd_db_baseline_{self.conn.info.backend_pid}"
        setting = self.conn.execute("SHOW search_path").fetchone()
        path = schema.scratch_path(str(setting[0]) if setting else "", live, scratch)
        with self.conn.transaction(force_rollback=True):
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
            for migration in chosen:
                self.conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))
                if not migration.transactional:
                    data = re.sub(rb"\bCONCURRENTLY\b", b"", migration.data, flags=re.IGNORECASE)
                    steps = plan(migration.filename, data, transactional=False)
                    migration = replace(migration, data=data, steps=steps)
                self._run_steps(migration)
            expected = schema.signature(self.conn, scratch)
            actual = schema.signature(self.conn, live)
        return expected, actual

    def rehearse(self, *, target: int | None = None) -> list[Rehearsal]:
        """Run the pending files in one transaction that is always rolled back.

        Writes nothing that a rollback keeps, but takes the files' locks on the real
        tables (meant for a staging or dev copy with production-like data), and
        cannot undo what lies outside the transaction: sequences it advanced (read
        before and after each file) and the calls `OUTSIDE_THE_TRANSACTION` names.

        For each transactional file: how long it took and every table lock it took,
        with how long it held it (from the statement that took it to the end of the
        file, as a real run would hold it until the file commits). The files build
        on each other as in a real run, all in the one transaction, so a lock an
        earlier file already holds is not seen again. Each file runs after a
        savepoint, so one that fails is undone and the ones after it still run; the
        session is reset between files, as in a real run. A no-transaction file
        cannot run inside the rehearsal's transaction: it is listed with the reason.
        """
        pending = self._plan(self.applied(), target)
        results: list[Rehearsal] = []
        if not pending:
            return results
        with self._lock():
            self.conn.execute("BEGIN")
            migration = pending[0]
            try:
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
                    results.append(self._rehearse_one(migration, skipped))
            except KeyboardInterrupt as interrupt:
                self._end_transaction()
                raise Interrupted(
                    f"interrupted during the rehearsal of {migration.filename}; the rehearsal "
                    "was rolled back, and nothing was applied",
                    exit_code=EXIT_TERMINATED
                    if isinstance(interrupt, Terminated)
                    else EXIT_INTERRUPTED,
                ) from None
            finally:
                self._end_transaction()
        return results

    def _rehearse_one(self, migration: Migration, skipped: list[str]) -> Rehearsal:
        self.conn.execute("SAVEPOINT cicd_db_rehearsal")
        sequences = self._sequences()
        held_before = set(self._table_locks())
        first_seen: dict[tuple[str, str], float] = {}
        started = time.perf_counter()
        error: str | None = None
        # The rehearsal's transaction began before the file: SET TRANSACTION cannot run.
        lead = self._transaction_settings_end(migration) or 0
        unrehearsed: tuple[str, ...] = ()
        if lead:
            line = migration.steps[0].line if isinstance(migration.steps[0], Batch) else 1
            unrehearsed = (
                f"its SET TRANSACTION statements (from line {line}): the rehearsal's "
                "transaction began before the file",
            )
        try:
            for step in migration.steps:
                for one in _one_by_one(migration.data, step):
                    if isinstance(one, Batch) and one.end <= lead:
                        continue
                    at = time.perf_counter()
                    if isinstance(one, Copy):
                        self._copy(migration, one)
                    else:
                        results = self._simple(migration.data[one.start : one.end])
                        self._raise_on_error(migration, one, results)
                    for lock in set(self._table_locks()) - held_before:
                        first_seen.setdefault(lock, at)
        except (MigrationFailed, _Transient) as failure:
            error = str(failure).removeprefix(f"migration {migration.filename} ")
        except psycopg.OperationalError as lost:
            error = _first_line(lost)
        if self.conn.closed or self.conn.broken:
            raise MigrationFailed(
                f"the rehearsal lost its connection in {migration.filename} ({error}); "
                "the server rolled the rehearsal back, and nothing after that file was "
                "rehearsed; if the file ends its own connection (pg_terminate_backend), it "
                "cannot be rehearsed"
            )
        ended = time.perf_counter()
        if error is None:
            error = self._deferred_failure(migration)
        # A failed file is undone; a good one stays, for the files after it to build on.
        # Sequences are not transactional: read after a rollback, they still show a move.
        try:
            self.conn.execute(
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
        reset = self._simple(RESET_SESSION + b"; " + self._still_locked())
        if any(r.status == ExecStatus.FATAL_ERROR for r in reset):
            raise MigrationFailed(
                f"the rehearsal lost the runner's lock during {migration.filename} (the session "
                "that holds it ended: pg_terminate_backend, or a lost connection); the rehearsal "
                "was rolled back, and nothing after that file was rehearsed"
            )
        advanced = tuple(
            name for name, value in self._sequences().items() if sequences.get(name) != value
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

    def _deferred_failure(self, migration: Migration) -> str | None:
        """How the file would fail at its commit: deferred constraints checked now, inside
        a savepoint that is then rolled back (so the checks leave nothing behind)."""
        results = self._simple(b"SAVEPOINT cicd_db_commit; SET CONSTRAINTS ALL IMMEDIATE")
        failed = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
        self._simple(b"ROLLBACK TO SAVEPOINT cicd_db_commit; RELEASE cicd_db_commit")
        if failed is None:
            return None
        error = errors.error_from_result(failed, encoding=self.conn.info.encoding)
        return _describe_failure(
            migration, None, error.diag, str(error), self.conn.info.user
        ).removeprefix(f"migration {migration.filename} ")

    def _table_locks(self) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT l.mode, c.oid::regclass::text FROM pg_locks l "
            "JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted "
            "AND c.relkind IN ('r', 'p', 'm') AND c.relnamespace <> 'pg_catalog'::regnamespace "
            "AND c.relname <> %s",
            [HISTORY_TABLE],
        ).fetchall()
        return [(str(mode), str(table)) for mode, table in rows]

    def _sequences(self) -> dict[str, Any]:
        rows = self.conn.execute(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences"
        ).fetchall()
        return dict(rows)

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
            if migration.name != row.name:
                raise MigrationRefused(
                    f"migration {row.version} was applied as {row.name!r}, but the file with "
                    f"that version is now {migration.filename}: the files were renumbered or "
                    "replaced since; restore the applied files, or rebuild the history "
                    "(db/README.md, 'When the files were rewritten')"
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
        """Hold the runner's advisory lock, on a connection of its own.

        A file runs on the work connection, where nothing it does can touch the
        lock (pg_advisory_unlock_all, DISCARD ALL): the lock is another session's.
        Once it has the lock, the runner waits until no other work session holds
        the work mark (a killed runner's statement may still be running), then
        takes the mark on its own work session.
        """
        try:
            holder = psycopg.connect(self._conninfo_in_use(lock=True), autocommit=True)
        except psycopg.OperationalError as error:
            raise OperationalError(
                "cannot open the runner's second connection, which holds the migration lock: "
                f"{_first_line(error)}; the runner needs two connections to the database (a "
                "role's CONNECTION LIMIT or the server's max_connections may be too low)"
            ) from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            for key in (LOCK_KEY, WORK_KEY):
                while not self._try_lock(holder, key):
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"another migration runner held the lock for {self.lock_timeout:g} "
                            "s; wait for it to finish, or raise --lock-timeout"
                        )
                    time.sleep(LOCK_POLL_SECONDS)
            holder.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", [WORK_KEY])
            self.conn.execute("SELECT pg_catalog.pg_advisory_lock_shared(%s)", [WORK_KEY])
            self._lock_pid = holder.info.backend_pid
            try:
                yield
            finally:
                self._lock_pid = None
                if self._end_transaction():
                    with contextlib.suppress(psycopg.OperationalError):
                        self.conn.execute(
                            "SELECT pg_catalog.pg_advisory_unlock_shared(%s)", [WORK_KEY]
                        )
                if not holder.broken:
                    with contextlib.suppress(psycopg.OperationalError):
                        holder.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", [LOCK_KEY])
        finally:
            holder.close()  # ends its session, and the lock with it

    @staticmethod
    def _try_lock(holder: psycopg.Connection[Any], key: int) -> bool:
        try:
            row = holder.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", [key]).fetchone()
        except psycopg.OperationalError as error:
            raise OperationalError(
                f"lost the connection that takes the migration lock: {_first_line(error)}; "
                "check that the server is up, and run again"
            ) from None
        return bool(row and row[0])

    def _conninfo_in_use(self, *, lock: bool = False) -> str:
        """The work connection's parameters as libpq used them, to open another like it.

        The host and port are the ones it reached, so a second connection of a
        multi-host target lands on the same server.
        """
        params = {
            option.keyword.decode(): option.val.decode()
            for option in self.conn.pgconn.info
            if option.val is not None
        }
        info = self.conn.info
        params.update(host=info.host, port=str(info.port), hostaddr=info.hostaddr or "")
        if lock:
            params["options"] = " ".join(
                filter(None, [params.get("options"), LOCK_SESSION_OPTIONS])
            )
        return make_conninfo(**{k: v for k, v in params.items() if v != ""})

    def _end_transaction(self) -> bool:
        """Roll back whatever transaction is open; False if the connection is unusable.

        A connection that is gone, or stuck in a query, is closed: the server
        then ends its transaction and frees its locks by itself.
        """
        if self.conn.closed or self.conn.broken:
            return False
        state = self.conn.info.transaction_status
        if state in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            self.conn.rollback()
        elif state != TransactionStatus.IDLE:
            self.conn.close()
            return False
        return True

    def _create_history(self) -> str | None:
        """Make the history's schema and table, or move an older history into place.

        Called under the lock, so IF NOT EXISTS cannot race with another runner.
        Returns what it moved, to be said once; the move is one transaction.
        """
        ours, older = self._histories()
        if ours:
            return None
        schema = sql.Identifier(HISTORY_SCHEMA)
        try:
            with self.conn.transaction():
                # Only when missing: even IF NOT EXISTS needs CREATE on the database.
                row = self.conn.execute(
                    "SELECT pg_catalog.to_regnamespace(%s) IS NULL", [HISTORY_SCHEMA]
                ).fetchone()
                if row and row[0]:
                    self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
                if older:
                    self.conn.execute(
                        sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                            sql.Identifier(older[0], HISTORY_TABLE), schema
                        )
                    )
                else:
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
                        ).format(self.history_table)
                    )
        except errors.InsufficientPrivilege as error:
            user = self._shown(self.conn.info.user)
            what = (
                f"move the migration history {self._shown(older[0], HISTORY_TABLE)} to "
                f"{self._shown(HISTORY_SCHEMA, HISTORY_TABLE)}"
                if older
                else f"create the migration history {self._shown(HISTORY_SCHEMA, HISTORY_TABLE)}"
            )
            row = self.conn.execute(
                "SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL", [HISTORY_SCHEMA]
            ).fetchone()
            shown = self._shown(HISTORY_SCHEMA)
            fix = (
                f"let its owner run GRANT USAGE, CREATE ON SCHEMA {shown} TO {user}, or ALTER "
                f"SCHEMA {shown} OWNER TO {user}"
                if row and row[0]
                else f"migrate as the database's owner, or let an owner run CREATE SCHEMA "
                f"{shown} AUTHORIZATION {user}"
            )
            raise OperationalError(
                f"cannot {what}: {error.diag.message_primary}; {fix}"
                + (" and give the old table to that role" if older else "")
            ) from None
        if older:
            return (
                f"moved the migration history from {self._shown(older[0], HISTORY_TABLE)} to "
                f"{self._shown(HISTORY_SCHEMA, HISTORY_TABLE)}, where no search_path can hide it"
            )
        return None

    def _shown(self, *names: str) -> str:
        """A (qualified) name as SQL would take it, quoted only where it must be."""
        return ".".join(
            name
            if re.fullmatch(r"[a-z_][a-z0-9_$]*", name)
            else sql.Identifier(name).as_string(self.conn)
            for name in names
        )

    def _history_row(self, migration: Migration, *, duration_ms: float | None) -> bytes:
        """The INSERT of `migration`'s history row, as SQL text: it travels with other statements.

        `duration_ms` None: measured by the server, from the transaction's start.
        The row names the runner's login role, whatever role the file switched to.
        """
        duration: sql.Composable = (
            sql.SQL("round(extract(epoch FROM clock_timestamp() - now()) * 1000)")
            if duration_ms is None
            else sql.Literal(round(duration_ms))
        )
        return (
            sql.SQL(
                "INSERT INTO {} (version, name, checksum, applied_by, duration_ms) "
                "VALUES ({}, {}, {}, {}, {})"
            )
            .format(
                self.history_table,
                migration.version,
                migration.name,
                migration.checksum,
                self.conn.info.user,
                duration,
            )
            .as_bytes(self.conn)
        )

    def _apply_one(
        self,
        migration: Migration,
        on_retry: Callable[[Retry], None] | None,
    ) -> Result:
        attempt = 0
        try:
            while True:
                started = time.perf_counter()
                try:
                    if migration.transactional:
                        notes: tuple[str, ...] = ()
                        self._apply_in_transaction(migration)
                    else:
                        notes = self._apply_outside_transaction(migration)
                    elapsed = (time.perf_counter() - started) * 1000
                    return Result(migration, elapsed, dry_run=False, notes=notes)
                except _Transient as failure:
                    attempt += 1
                    delay = min(FIRST_RETRY_DELAY * 2 ** (attempt - 1), MAX_RETRY_DELAY)
                    delay *= random.uniform(0.75, 1.25)  # noqa: S311 (spreads runners apart)
                    if attempt > self.retries or self._waited + delay > self.retry_budget:
                        spent = (
                            f"gave up after {attempt - 1} retr{'y' if attempt == 2 else 'ies'}"
                            if attempt > self.retries
                            else f"the retry budget of {self.retry_budget:g} s is spent"
                        )
                        raise MigrationFailed(
                            f"{failure}; {spent} (raise --retries or --retry-budget)"
                            if attempt > 1 or self.retries
                            else str(failure)
                        ) from None
                    self._waited += delay
                    if on_retry:
                        on_retry(Retry(migration, failure.reason, attempt, self.retries, delay))
                    time.sleep(delay)
        except KeyboardInterrupt as interrupt:
            raise Interrupted(
                self._interrupted(migration),
                exit_code=EXIT_TERMINATED
                if isinstance(interrupt, Terminated)
                else EXIT_INTERRUPTED,
            ) from None

    def _interrupted(self, migration: Migration) -> str:
        """What an interruption during `migration` left, checked after rolling back."""
        if not self._end_transaction():
            return (
                f"interrupted during {migration.filename}, and the connection with it: whether "
                "it committed is not known; nothing after it ran; see `migrate status`"
            )
        if migration.version in {row.version for row in self.applied()}:
            return f"interrupted after {migration.filename} was applied; nothing after it ran"
        if not migration.transactional:
            return (
                f"interrupted during {migration.filename}, a no-transaction file: what "
                "PostgreSQL finished of it stays, and it is not recorded (the next run drops an "
                "index it left invalid and runs it again); nothing after it ran"
            )
        return f"interrupted during {migration.filename}; it was rolled back; nothing after it ran"

    def _apply_in_transaction(self, migration: Migration) -> None:
        """The file and its history row in one transaction, which must stay the runner's own.

        Two round trips: the transaction's start (and its id) travels with the
        file's first statements; the checks, the session reset, the history row and
        COMMIT travel together. A check that fails stops everything after it,
        COMMIT included: the file ended the runner's transaction (its id is
        another), or the runner's lock was lost, or the history is not as the
        runner left it plus the file's row.
        """
        try:
            begun = self._begin(migration)
            if self.conn.info.transaction_status != TransactionStatus.INTRANS:
                raise MigrationFailed(self._why(migration, CHECK_MARK, committed="may be"))
            finish = b"; ".join(
                [
                    self._still_ours(begun),
                    self._still_locked(),
                    RESET_SESSION,
                    self._history_row(migration, duration_ms=None),
                    self._recorded(migration),
                    b"COMMIT",
                ]
            )
            self._finish(migration, self._simple(finish), committed="may be")
        except BaseException:
            self._reset_session()
            raise

    def _begin(self, migration: Migration) -> PGresult:
        """BEGIN, the file's statements, and the transaction's id read among them.

        The id is read with the file's first statements, or after its leading
        `SET TRANSACTION ...` statements, which must come before any query (as psql
        runs them: BEGIN, then the file). Returns the id's result.
        """
        lead = self._transaction_settings_end(migration)
        if lead is None:
            return self._run_steps(migration, prefix=BEGIN_MARKED)[1]
        first = migration.steps[0]
        assert isinstance(first, Batch)  # noqa: S101 - _transaction_settings_end checked it
        head = replace(first, end=lead, changes_lexing=False, standard_strings_after=None)
        begin = b"BEGIN;"
        self._raise_on_error(
            migration,
            head,
            self._simple(begin + migration.data[head.start : head.end]),
            prefix=begin,
        )
        tail = replace(
            first, start=lead, line=first.line + migration.data.count(b"\n", first.start, lead)
        )
        rest = replace(migration, steps=(tail, *migration.steps[1:]))
        return self._run_steps(rest, prefix=XACT_ID)[0]

    def _transaction_settings_end(self, migration: Migration) -> int | None:
        """Where the file's leading SET/RESET statements end, when one of them sets the
        transaction's own characteristics (isolation, read only, deferrable, snapshot);
        else None. Only for a first batch planned as the server reads strings."""
        first = migration.steps[0] if migration.steps else None
        if not isinstance(first, Batch) or first.standard_strings != self._standard_strings():
            return None
        end = None
        scanner = Scanner(
            migration.data[: first.end],
            standard_strings=first.standard_strings,
            start=first.start,
            line=first.line,
        )
        for piece in scanner:
            if not isinstance(piece, Statement) or piece.keyword not in SESSION_SETTINGS:
                break
            if any(word.startswith("TRANSACTION") for word in piece.words[1:3]):
                end = piece.end
        return end

    def _apply_outside_transaction(self, migration: Migration) -> tuple[str, ...]:
        started = time.perf_counter()
        try:
            notes = self._drop_invalid_index(migration)
            self._run_steps(migration)
            duration_ms = (time.perf_counter() - started) * 1000
            self._end_transaction()
            finish = b"; ".join(
                [
                    RESET_SESSION,
                    self._still_locked(),
                    self._history_row(migration, duration_ms=duration_ms),
                    self._recorded(migration),
                ]
            )
            self._finish(migration, self._simple(finish), committed="is")
        except BaseException:
            self._reset_session()
            raise
        return notes

    def _reset_session(self) -> None:
        """End any transaction, then reset the session: the next file starts as the first did."""
        if self._end_transaction():
            self._simple(RESET_SESSION)  # results unread: nothing in it can fail here

    def _still_ours(self, begun: PGresult) -> bytes:
        """A check that the transaction is still the one the runner began (by its id)."""
        xid = begun.get_value(0, 0) or b""
        if not xid.isdigit():
            raise OperationalError(f"the server gave no transaction id (got {xid!r})")
        return (
            b"DO $cicd_db$BEGIN IF pg_catalog.pg_current_xact_id() IS DISTINCT FROM '"
            + xid
            + b"'::pg_catalog.xid8 THEN RAISE EXCEPTION 'the runner''s transaction ended "
            b"inside the file' USING ERRCODE = '" + CHECK_MARK.encode() + b"'; END IF; END$cicd_db$"
        )

    def _still_locked(self) -> bytes:
        """A check that the runner's lock is still held by its session: a file could have
        ended that session (pg_terminate_backend), and another runner be at work."""
        return (
            b"DO $cicd_db$BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = "
            b"'advisory' AND pid = %d AND granted AND classid = %d AND objid = %d AND "
            b"objsubid = 1) THEN RAISE EXCEPTION 'the runner''s lock was lost' USING ERRCODE = "
            b"'%s'; END IF; END$cicd_db$"
            % (
                self._lock_pid or 0,
                LOCK_KEY >> 32,
                LOCK_KEY & 0xFFFFFFFF,
                CHECK_LOCK.encode(),
            )
        )

    def _recorded(self, migration: Migration) -> bytes:
        """A check that the history row is there (a trigger could have swallowed it), and
        that the history is the runner's rows plus this one: a file may not have
        emptied, edited or replaced it (TRUNCATE, DELETE, UPDATE, DROP and CREATE)."""
        rows = sorted(
            [*self._history_rows, (migration.version, migration.name, migration.checksum)]
        )
        expected = hashlib.md5(  # noqa: S324 - a fingerprint, compared with the server's md5
            "\n".join(f"{version} {name} {checksum}" for version, name, checksum in rows).encode()
        ).hexdigest()
        return (
            sql.SQL(
                "DO $cicd_db$BEGIN IF NOT EXISTS (SELECT FROM {table} WHERE version = {version}) "
                "THEN RAISE EXCEPTION 'the history row was not written' USING ERRCODE = {gone}; "
                "END IF; IF (SELECT pg_catalog.md5(pg_catalog.string_agg(version || ' ' || name "
                "|| ' ' || checksum, E'\\n' ORDER BY version)) FROM {table}) IS DISTINCT FROM "
                "{expected} THEN RAISE EXCEPTION 'the history was changed' USING ERRCODE = "
                "{changed}; END IF; END$cicd_db$"
            )
            .format(
                table=self.history_table,
                version=migration.version,
                gone=CHECK_RECORDED,
                expected=expected,
                changed=CHECK_HISTORY,
            )
            .as_bytes(self.conn)
        )

    def _finish(self, migration: Migration, results: list[PGresult], *, committed: str) -> None:
        """Raise, naming the file, when the runner's closing statements failed."""
        failed = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
        if failed is None:
            return
        error = errors.error_from_result(failed, encoding=self.conn.info.encoding)
        state = error.diag.sqlstate or ""
        if state in (CHECK_MARK, CHECK_LOCK, CHECK_RECORDED, CHECK_HISTORY):
            raise MigrationFailed(self._why(migration, state, committed=committed))
        if state == "42P01" and HISTORY_TABLE in (error.diag.message_primary or ""):
            raise MigrationFailed(self._why(migration, CHECK_HISTORY_GONE, committed=committed))
        message = _describe_failure(
            migration, None, error.diag, str(error), self.conn.info.user, lost=self._lost()
        )
        if state in RETRIED_SQLSTATES:
            raise _Transient(message, f"{RETRIED_SQLSTATES[state]} at its commit")
        raise MigrationFailed(message)

    def _why(self, migration: Migration, check: str, *, committed: str) -> str:
        what = {
            CHECK_MARK: "ended the runner's transaction itself (COMMIT, ROLLBACK or the like, "
            "which the runner could not see in it)",
            CHECK_LOCK: "ran while the runner's lock was lost (the session that holds it ended: "
            "pg_terminate_backend, or a lost connection), so another runner could have run at "
            "the same time",
            CHECK_RECORDED: "left no history row (a trigger on the history table?)",
            CHECK_HISTORY: "changed the migration history's rows (TRUNCATE, DELETE, UPDATE, "
            "or another table in its place)",
            CHECK_HISTORY_GONE: "dropped or moved the migration history "
            f"({self._shown(HISTORY_SCHEMA, HISTORY_TABLE)})",
        }[check]
        done = (
            "it was rolled back"
            if migration.transactional and check != CHECK_MARK
            else f"what it did {committed} committed"
        )
        fix = (
            "check what ended that session (a statement in the file, or the server), and run again"
            if check == CHECK_LOCK
            else "remove that from the file, check the database, and run again"
        )
        return f"migration {migration.filename} {what}; {done}, and it is not recorded; {fix}"

    def _drop_invalid_index(self, migration: Migration) -> tuple[str, ...]:
        """Drop the invalid index an interrupted CREATE INDEX CONCURRENTLY left behind.

        PostgreSQL's own advice for that case; without it, the file could never be
        run again (the name is taken) or, with IF NOT EXISTS, would keep a broken index.
        """
        name = index_name(migration)
        if name is None:
            return ()
        # Looked up by name in every schema: the file may set its own search_path.
        invalid = self.conn.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND NOT i.indisvalid",
            [name],
        ).fetchall()
        if len(invalid) > 1:
            raise MigrationRefused(
                f"migration {migration.filename} builds index {name}, and {len(invalid)} invalid "
                f"indexes have that name ({', '.join(str(row[0]) for row in invalid)}); drop the "
                "one the interrupted run left (DROP INDEX CONCURRENTLY) and run again"
            )
        if not invalid:
            return ()
        self.conn.execute(b"DROP INDEX CONCURRENTLY IF EXISTS " + str(invalid[0][0]).encode())
        return (f"dropped invalid index {name} left by an interrupted run",)

    def _run_steps(self, migration: Migration, *, prefix: bytes = b"") -> list[PGresult]:
        """Send the file's steps in order, in the current transaction or none.

        `prefix`, statements of the runner's own, travels with the first batch;
        their results are returned.
        """
        steps = list(migration.steps)
        standard = self._standard_strings()
        if steps and isinstance(steps[0], Batch) and steps[0].standard_strings != standard:
            steps = list(self._replan(migration, 0, 1, standard))  # a server with them off
        own: list[PGresult] = []
        if prefix and not (steps and isinstance(steps[0], Batch)):
            own = self._simple(prefix)
            self._raise_on_error(migration, None, own)
            prefix = b""
        while steps:
            step = steps.pop(0)
            if isinstance(step, Copy):
                self._copy(migration, step)
                continue
            query = prefix + migration.data[step.start : step.end]
            results = self._simple(query)
            if prefix:
                own = results[: prefix.count(b";")]
            self._raise_on_error(migration, step, results, prefix=prefix)
            prefix = b""
            if step.changes_lexing:
                actual = self._standard_strings()
                if actual != step.standard_strings_after:
                    line = step.line + migration.data.count(b"\n", step.start, step.end)
                    steps = list(self._replan(migration, step.end, line, actual))
        return own

    def _replan(
        self, migration: Migration, start: int, line: int, standard: bool
    ) -> tuple[Step, ...]:
        return plan(
            migration.filename,
            migration.data,
            transactional=migration.transactional,
            standard_strings=standard,
            start=start,
            line=line,
        )

    def _lost(self) -> bool:
        """The work connection is gone (a FATAL error ended the session)."""
        return self.conn.closed or self.conn.broken

    def _standard_strings(self) -> bool:
        return self.conn.info.parameter_status("standard_conforming_strings") != "off"

    def _simple(self, query: bytes) -> list[PGresult]:
        """Send `query` with the simple protocol, as psql does: the server splits statements.

        Returns every statement's result, errors included, without raising:
        which statement failed is the number of results before the error.
        """
        conn = self.conn
        pgconn = conn.pgconn
        with conn.lock:
            pgconn.send_query(query)
            results: list[PGresult] = conn.wait(generators.execute(pgconn))
            while results and results[-1].status == ExecStatus.COPY_IN:
                # A COPY the scanner did not see: end it with an error, never hang.
                pgconn.put_copy_end(b"COPY FROM STDIN data must follow its statement in the file")
                results = results[:-1] + conn.wait(generators.execute(pgconn))
            while results and results[-1].status == ExecStatus.COPY_OUT:
                results.pop()  # a COPY TO STDOUT the scanner did not see: read and drop its rows
                while isinstance(conn.wait(generators.copy_from(pgconn)), memoryview):
                    pass
                results += conn.wait(generators.fetch_many(pgconn))
        return results

    def _copy(self, migration: Migration, step: Copy) -> None:
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
            where = re.search(r"\bline (\d+)", error.diag.context or "")
            if where and data.end > data.start:
                line = data.line + int(where[1]) - 1  # the data line the server named
            raise MigrationFailed(
                _describe_failure(
                    migration, line, error.diag, str(error), self.conn.info.user, lost=self._lost()
                )
            ) from None

    def _raise_on_error(
        self,
        migration: Migration,
        batch: Batch | None,
        results: list[PGresult],
        *,
        prefix: bytes = b"",
    ) -> None:
        """Raise for the first failed statement of `results`, naming its line in the file.

        `prefix`: the runner's own statements sent before the batch (ASCII, one
        result each), which the count and the error position must step over.
        """
        failed = next(
            (i for i, result in enumerate(results) if result.status == ExecStatus.FATAL_ERROR),
            None,
        )
        if failed is None:
            return
        error = errors.error_from_result(results[failed], encoding=self.conn.info.encoding)
        if batch is None:  # the runner's own statements
            raise error
        index = max(failed - prefix.count(b";"), 0)
        statement = _nth_statement(migration.data, batch, index)
        line = statement.line if statement else batch.line
        position = error.diag.statement_position
        if position and position.isdigit() and int(position) > len(prefix):
            # Characters, not bytes, into the batch: decode the batch to count its lines.
            text = migration.data[batch.start : batch.end].decode("utf-8", "replace")
            line = batch.line + text.count("\n", 0, int(position) - len(prefix) - 1)
        message = _describe_failure(
            migration, line, error.diag, str(error), self.conn.info.user, lost=self._lost()
        )
        if error.diag.sqlstate in RETRIED_SQLSTATES:
            reason = f"{RETRIED_SQLSTATES[error.diag.sqlstate]} at line {line}"
            if statement:
                reason += f" ({_abridge(statement.text(migration.data))})"
            raise _Transient(message, reason)
        raise MigrationFailed(message)


class _Transient(Exception):
    """A file failed because of other sessions; apply() retries it."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _nth_statement(data: bytes, batch: Batch, index: int) -> Statement | None:
    """The batch's statement number `index` (0-based), as the server counted them."""
    scanner = Scanner(
        data[: batch.end],
        standard_strings=batch.standard_strings,
        start=batch.start,
        line=batch.line,
    )
    for count, piece in enumerate(scanner):
        if count == index and isinstance(piece, Statement):
            return piece
    return None


def _abridge(statement: str, width: int = 48) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _describe_failure(
    migration: Migration,
    line: int | None,
    diag: psycopg.errors.Diagnostic,
    fallback: str,
    user: str,
    *,
    lost: bool = False,
) -> str:
    """The one line for a file that failed, at `line` (None: at its commit). `lost`: the
    runner's connection is gone."""
    message = diag.message_primary or fallback.strip().splitlines()[0]
    code = f" [{diag.sqlstate}]" if diag.sqlstate else ""
    rolled_back = "it was rolled back" + (
        "" if migration.transactional else " as far as PostgreSQL allows"
    )
    if diag.sqlstate == "42501" and re.match(r"could not (open|create|write|read|stat)", message):
        # The same code as a missing grant, but the operating system said no to a file.
        advice = (
            "the server's operating system refused that file (the server runs as its own OS "
            "user, on its own machine): fix the path or its permissions"
        )
    elif diag.sqlstate == "42501":
        advice = (
            f"role {user} lacks that privilege: grant it, or migrate as a role that has it "
            "(the table's or schema's owner)"
        )
    elif diag.sqlstate in RETRIED_SQLSTATES:
        advice = "run again when the tables are less busy (the file itself is fine)"
    elif lost:
        # Whether the server stopped or a statement ended the session cannot be told
        # from here; a dblink that cannot connect (08001) is the file's, and not this.
        advice = (
            "the connection ended during the file (the server stopped or restarted, or a "
            "statement, perhaps in the file, ended the session): check the server and the "
            "file, then run again"
        )
    else:
        advice = "fix the file and run again"
    return (
        f"migration {migration.filename} failed "
        f"{'at its commit' if line is None else f'at line {line}'}: {message}{code}; "
        f"{rolled_back}; {advice}"
    )


# -- opening a runner on a target --------------------------------------------------------


@contextmanager
def open_runner(
    target: targets.Target,
    *,
    folder: Path | None = None,
    writes: bool,
    confirmed: bool = False,
    action: str = "apply migrations to it",
    **options: Any,
) -> Iterator[Runner]:
    """A runner on `target`'s database, with the files of `folder` (db/migrations).

    The guards every entry point needs, here so that a Python caller gets them
    too: writing to a remote stack needs `confirmed` (the CLI's --yes); writing
    through a transaction pooler is refused, since the session lock would not
    hold; the runner uses the stack's direct endpoint when it has one.
    `options` go to Runner (lock_timeout, retries, retry_budget).
    """
    files = discover(folder or target.root / "db" / "migrations")
    if writes and target.remote and not confirmed:
        raise UsageError(
            f"{target.description} is a remote database; add --yes to {action} "
            "(or use --local for the local one)"
        )
    settings = target.settings.for_migrations()
    if writes and is_transaction_pooler(settings):
        raise ConfigError(
            f"{settings.where} is a transaction pooler, where the migration lock "
            "does not hold; migrate through the direct endpoint (Supabase: port 5432, Neon: the "
            "host without -pooler), or export migration_database_url from the stack"
        )
    with targets.connect(settings, options=session_options(settings.parameter("options"))) as conn:
        yield Runner(conn, files, **options)


def scratch_dump(files: list[Migration], admin: ConnectionSettings) -> str:
    """The schema `files` make, dumped from a scratch database on `admin`'s server. Writes
    only that database, which is dropped again."""
    from cicd_db import schema  # pg_dump and catalog queries, on use

    name = f"cicd_db_scratch_{os.getpid()}_{random.randrange(16**6):06x}"  # noqa: S311 (a name)
    with targets.connect(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    scratch = replace(admin, database=name)
    try:
        with targets.connect(
            scratch, options=session_options(scratch.parameter("options"))
        ) as conn:
            Runner(conn, files).apply()
        return schema.dump(scratch)
    finally:
        with targets.connect(admin) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
