"""Migration files: naming, discovery, reading and checking, and writing a new one.

A file is `<version>_<name>.sql`; versions are integers (bigint), applied in
numeric order, and no two files share one. Everything that can be known without
a server is refused here, before anything runs. Reads (and, for `new_migration`,
writes) files only.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cicd_db.errors import ConfigError

# Planning (statements, and the scanner under it) is loaded when a file is planned: a
# run with nothing pending plans nothing, and loading it costs every start.
if TYPE_CHECKING:
    from cicd_db.migrations.steps import Batch, Step

BOM = b"\xef\xbb\xbf"
# UTF-16's byte order marks, little- and big-endian.
UTF16 = (b"\xff\xfe", b"\xfe\xff")
MAX_VERSION = 2**63 - 1  # the history's version column is a bigint
# Versions are ASCII digits: Python's \d and int() also take full-width and
# Arabic-Indic digits, which PostgreSQL, sort order and people read differently.
FILE_NAME = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql")


@dataclass(frozen=True)
class Migration:
    """One migration file, read from disk and checked: what the runner will send."""

    version: int
    name: str
    path: Path
    data: bytes  # the file's bytes, without a UTF-8 byte order mark
    checksum: str  # of the file's bytes as they are on disk
    # The queries that send it (statements.plan); None until `steps` is first read.
    planned: tuple[Step, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The file planned into queries, on first use; ConfigError for a statement it
        may not hold. `discover` plans every file unless told not to; the runner plans
        only the files it is about to run (`reconcile.pending`): an applied file is
        known by its checksum, and a run with nothing pending plans nothing."""
        if self.planned is None:
            from cicd_db.migrations.statements import plan

            steps = plan(
                self.path.name, self.data, transactional=self.transactional, names=self.named
            )
            object.__setattr__(self, "planned", steps)  # a cache of what `data` says
            return steps
        return self.planned

    @cached_property
    def transactional(self) -> bool:
        """False for a file whose first line is the no-transaction marker (read once:
        the runner asks for each file several times)."""
        from cicd_db.migrations.directives import NO_TRANSACTION_MARKER

        # From the file's head only: partition() of a 50 MB file would copy the rest. The
        # line ends at a CR too, as PostgreSQL and psql end a `--` comment there.
        head = self.data[: len(NO_TRANSACTION_MARKER) + 256]
        return head.partition(b"\n")[0].partition(b"\r")[0].rstrip() != NO_TRANSACTION_MARKER

    @cached_property
    def named(self) -> set[str]:
        """What the runner must know the text names (statements.NAMED), read once."""
        from cicd_db.migrations.statements import names_in

        return names_in(self.data)

    @property
    def mentions_current_query(self) -> bool:
        """The text names current_query() anywhere (a comment too): the file may call it,
        or make a function that does (Session.sends_alone)."""
        return "query" in self.named

    @property
    def needs_new_session(self) -> bool:
        """The text names ALTER DATABASE, ALTER ROLE or ALTER USER, a setting of a
        user's name (`SET app.tenant`, set_config), an event trigger, LOAD, setseed,
        dblink, a replication slot or origin or a backup's start, anywhere (a string run
        by EXECUTE too): it may leave what only a new session is rid of or takes, as
        psql, starting one for each file, would (lock.renew)."""
        from cicd_db.migrations.statements import NEW_SESSION_AFTER

        return not self.named.isdisjoint(NEW_SESSION_AFTER)

    @cached_property
    def earlier_checksums(self) -> frozenset[str]:
        """The checksums of earlier texts of the file that its opening comments name
        (directives.EARLIER_CHECKSUM): read only when the file's own does not match."""
        from cicd_db.migrations.directives import earlier_checksums

        return earlier_checksums(self.path.name, self.data, transactional=self.transactional)

    def matches(self, checksum: str) -> bool:
        """The file is the one a history row recorded with `checksum`: the same bytes, or
        an earlier text its opening comments name, or the same with its line endings
        converted (Git on Windows checks files out with CRLF, and back in with LF) where
        that changes no statement: not where a line end is inside a string, a quoted name,
        a dollar-quoted body (a function's text) or COPY data, which keep their bytes."""
        if checksum == self.checksum or checksum in self.earlier_checksums:
            return True
        if checksum == _checksum(self.data, bom=self.checksum == _checksum(self.data)):
            return True  # a byte order mark added or removed: the server gets the same text
        recorded = self._recorded_as(checksum)
        return recorded is not None and _line_ends_change_nothing(self, recorded)

    def converted_from(self, checksum: str) -> bool:
        """The file is the one recorded with `checksum` but for its line ends (CRLF or LF)."""
        return self._recorded_as(checksum) is not None

    def _recorded_as(self, checksum: str) -> bytes | None:
        """The text recorded with `checksum`, if it is this file's with all its line ends
        LF or all CRLF (the conversions Git makes), its byte order mark aside."""
        unix = self.data.replace(b"\r\n", b"\n")
        for text in (unix, unix.replace(b"\n", b"\r\n")):
            # The checksum is of the bytes on disk: with the byte order mark `data` lacks.
            if checksum in (_checksum(text), _checksum(text, bom=True)):
                return text
        return None

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def _checksum(text: bytes, *, bom: bool = False) -> str:
    return hashlib.sha256(BOM + text if bom else text).hexdigest()


def _line_ends_change_nothing(migration: Migration, recorded: bytes) -> bool:
    """Whether `migration`'s statements read the same as `recorded`'s, the same text with
    other line ends: the same tokens (whitespace and comments aside), read with standard
    strings on and off, and the same COPY data, byte for byte. Only the line ends that
    differ count: a line end changed outside a string, beside one inside it that is not,
    changes nothing. A file that cannot be planned is not taken as unchanged."""
    from cicd_db.migrations.statements import plan
    from cicd_db.migrations.steps import Copy
    from cicd_db.sqltext.scanner import without_comments
    from cicd_db.sqltext.tokens import tokens

    def split(data: bytes, steps: tuple[Step, ...]) -> tuple[bytes, list[bytes]]:
        """The text without its COPY data (a line end between what is left), and the data."""
        statements, rows, at = [], [], 0
        for step in steps:
            if isinstance(step, Copy):
                statements.append(data[at : step.data.start])
                rows.append(data[step.data.start : step.data.end])
                at = step.data.end
        return b"\n".join([*statements, data[at:]]), rows

    try:
        ours, our_rows = split(migration.data, migration.steps)
        theirs, their_rows = ours, our_rows
        if our_rows:
            planned = plan(
                migration.path.name,
                recorded,
                transactional=migration.transactional,
                names=migration.named,
            )
            theirs, their_rows = split(recorded, planned)
        else:
            theirs = recorded
        if their_rows != our_rows:
            return False
    except ConfigError:
        return False
    # COPY data is no SQL: an apostrophe in a row (`it's`) read as a string's start moved
    # where the strings after it begin and end, and a line end changed inside one of them
    # counted as whitespace.
    return all(
        tokens(without_comments(ours, standard_strings=standard), standard_strings=standard)
        == tokens(without_comments(theirs, standard_strings=standard), standard_strings=standard)
        for standard in (True, False)
    )


def not_a_folder(folder: Path) -> str | None:
    """Why `folder` is no folder that can be listed, in words for a message; None when it
    is one. A link that leads nowhere and a loop of links were told "does not exist"."""
    try:
        found = os.stat(folder)
    except OSError as error:
        if error.errno == errno.ENOENT and os.path.islink(folder):
            return f"is a symbolic link to {os.readlink(folder)}, which does not exist"
        if error.errno == errno.ENOENT:
            return "does not exist"
        if error.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if error.errno == errno.ENOTDIR:
            return "has a file, not a folder, on its path"
        return f"cannot be reached: {error.strerror or error}"
    return None if stat.S_ISDIR(found.st_mode) else "is a file, not a folder"


def discover(folder: Path, *, planned: bool = True) -> list[Migration]:
    """Read and check the migration files of `folder`, sorted by version. Reads files only.

    Everything that can be known without a server is refused here, before
    anything runs: bad names, shared versions, text that is not UTF-8, and (unless
    not `planned`: then on first use of `Migration.steps`) the statements a file
    may not hold.
    """
    if why := not_a_folder(folder):
        raise ConfigError(
            "migrations folder {folder} {why}; pass {migrations_dir} DIR or run from the "
            "repository root",
            arguments=["migrations_dir"],
            values={"folder": folder, "why": why},
        )
    try:
        paths = sorted(folder.iterdir())
    except OSError as error:
        raise ConfigError(
            "cannot list migrations folder {folder}: {why}; let the user running cicd-db read it",
            values={"folder": folder, "why": error.strerror or error},
        ) from None
    migrations: dict[int, Migration] = {}
    for path in paths:
        if path.name.startswith("."):
            continue
        if path.suffix.lower() != ".sql":
            # `0002_x.sql `, with a newline, a dot or a zero-width space after it: what
            # follows .sql reads as another extension, and the file was never applied,
            # listed or warned about. So too with such characters inside `.sql` (`.s`, a
            # zero-width space, `ql`) or a terminal's colour codes after it.
            stripped = _AFTER_SQL.sub("", path.name)
            if stripped != path.name and stripped.lower().endswith(".sql"):
                _parse_name(stripped)  # a name wrong otherwise too is told all at once
                raise ConfigError(
                    f"migration file {path.name!r} ends in white space, dots or characters "
                    f"drawn as nothing after .sql; rename it to {stripped}"
                )
            seen = _AFTER_SQL.sub("", _drawn_as_nothing(path.name))
            if seen != path.name and seen.lower().endswith(".sql"):
                _parse_name(seen)
                raise ConfigError(
                    f"migration file {path.name!r} holds characters drawn as nothing (control "
                    f"or format characters) in its extension; rename it to {seen}"
                )
            continue
        try:
            regular = path.is_file()
        except OSError as error:  # a folder on its link's way it may not enter; EIO
            raise ConfigError(_unreadable(path, error)) from None
        if not regular:  # never skipped: a file not there is a file not applied
            raise ConfigError(_not_a_file(path))
        version, name = _parse_name(path.name)
        if version in migrations:
            raise ConfigError(
                f"migration files {migrations[version].filename} and {path.name} share "
                f"version {version}; renumber one of them"
            )
        migrations[version] = read(path, version, name, planned=planned)
    if not migrations:
        raise ConfigError(
            "migrations folder {folder} holds no <version>_<name>.sql file; "
            "add one, or pass the right folder with {migrations_dir}",
            arguments=["migrations_dir"],
            values={"folder": folder},
        )
    return [migrations[version] for version in sorted(migrations)]


# What may follow `.sql` unseen, or nearly: white space, dots, format characters (a
# zero-width space, a soft hyphen, a byte order mark).
_AFTER_SQL = re.compile(r"[\s.\u00ad\u200b-\u200f\u2060-\u2064\ufeff]+\Z")
# A terminal's escape sequences (colours), drawn as nothing.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Unicode's default-ignorable characters that are neither control nor format characters
# (a combining grapheme joiner, Hangul fillers, Mongolian and other variation
# selectors): drawn as nothing too.
_IGNORABLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


def _drawn_as_nothing(filename: str) -> str:
    """`filename` without what a terminal or a file manager draws as nothing: escape
    sequences, control and format characters (zero-width ones, a soft hyphen, direction
    marks, a byte order mark, tags), and the rest of Unicode's default-ignorables."""
    import unicodedata  # on a name that is no plain .sql only

    return "".join(
        ch
        for ch in _ESCAPES.sub("", filename)
        if unicodedata.category(ch) not in ("Cc", "Cf") and ch not in _IGNORABLE
    )


def _shown_as_sql(filename: str) -> bool:
    """Whether discover takes `filename` for a migration, to run or to refuse: a `.sql`
    name, also with what is drawn as nothing inside or after its extension."""
    if filename.lower().endswith(".sql"):
        return True
    return _AFTER_SQL.sub("", _drawn_as_nothing(filename)).lower().endswith(".sql")


def _shown(filename: str) -> str:
    """A file name for a message: as it is when plain, else quoted (escapes shown)."""
    return filename if re.fullmatch(r"[A-Za-z0-9_.-]+", filename) else repr(filename)


def _unreadable(path: Path, error: OSError) -> str:
    """The input's failure, never told as the output's (cli.main's OSError)."""
    return (
        f"cannot read migration file {_shown(path.name)}: {error.strerror or error}; let the "
        "user running cicd-db read it (and enter the folders on its way), or remove it from "
        "the folder"
    )


def _not_a_file(path: Path) -> str:
    shown = _shown(path.name)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:  # (exists() is False for a loop too)
            return (
                f"migration file {shown} is a loop of symbolic links; point it at the file, "
                "or remove the link"
            )
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):
            return _unreadable(path, error)
    try:
        if path.is_symlink() and not path.exists():
            return (
                f"migration file {shown} is a link to {os.readlink(path)!r}, which does not "
                "exist (a file that was not checked out?); restore what it points to, or "
                "remove the link"
            )
        if not os.path.lexists(path):
            return _vanished(path)
        what = "a folder" if path.is_dir() else "not a regular file"
    except OSError as error:
        return _unreadable(path, error)
    return f"{shown} in the migrations folder is {what}; rename it to end otherwise than .sql, or remove it"


def _vanished(path: Path) -> str:
    return (
        f"migration file {_shown(path.name)} was removed or replaced while it was read (a "
        "checkout or an editor's save at the same time?); run again"
    )


def _read_regular(path: Path) -> bytes:
    """The bytes of `path`, a regular file when discover looked at it: opened without
    waiting (a FIFO put in its place since would block the run forever) and read only
    if what was opened is still a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise ConfigError(_vanished(path)) from None
        raise ConfigError(_unreadable(path, error)) from None
    with open(fd, "rb") as file:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(_not_a_file(path))
            return file.read()
        except OSError as error:
            raise ConfigError(_unreadable(path, error)) from None


def _parse_name(filename: str) -> tuple[int, str]:
    """`filename`'s version and name, or ConfigError naming the first thing wrong with
    it and a name that has nothing wrong (`_renamed`), where one can be made."""
    match = FILE_NAME.fullmatch(filename)
    if match is not None and int(match["version"]) <= MAX_VERSION:
        return int(match["version"]), match["name"]
    shown = _shown(filename)
    stem = filename[:-4] if filename.lower().endswith(".sql") else filename
    digits = re.match(r"\d+", stem)  # digits of any script: they are told apart below
    if digits is None:
        name = _safe_name(stem) or "add_index"
        raise ConfigError(
            f"migration file {shown} has no version; "
            f"rename it to <version>_<name>.sql, for example 0002_{name}.sql"
        )
    version = int(digits.group())  # int() reads every script's decimal digits
    if version > MAX_VERSION:
        raise ConfigError(
            f"migration file {shown}: version {version} is above {MAX_VERSION}, the largest "
            "the history can hold; renumber it (0001_, 0002_, ... or a timestamp like "
            "20260101120000_)"
        )
    renamed = _renamed(filename)
    if not filename.endswith(".sql"):
        raise ConfigError(
            f"migration file {shown}: the extension must be lower-case .sql; rename it to {renamed}"
        )
    if not digits.group().isascii():
        raise ConfigError(
            f"migration file {filename!r}: its version {digits.group()!r} is not written in "
            f"ASCII digits 0-9; rename it, for example to {renamed}"
        )
    if not stem[digits.end() :].strip("_"):
        raise ConfigError(
            f"migration file {shown} has a version but no name; rename it to {renamed}"
        )
    raise ConfigError(
        f"migration file {filename!r}: a name may hold only ASCII letters, digits, '_', '.' "
        f"and '-' after the version's '_', and must start with a letter or digit; rename "
        f"it, for example to {renamed}"
    )


def _safe_name(text: str) -> str:
    """`text` as a name FILE_NAME takes: runs of other characters become one '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")


def _renamed(filename: str) -> str:
    """The name to suggest for a file whose name starts with a version (of any digits)
    the history can hold: ASCII digits, as many, then '_', a name, and `.sql`."""
    stem = filename[:-4] if filename.lower().endswith(".sql") else filename
    digits = re.match(r"\d+", stem)
    assert digits is not None  # noqa: S101 - _parse_name checked it
    number = str(int(digits.group())).zfill(len(digits.group()))
    return f"{number}_{_safe_name(stem[digits.end() :]) or 'what_it_does'}.sql"


def read(path: Path, version: int, name: str, *, planned: bool = True) -> Migration:
    """One migration file, checked and (unless not `planned`) planned. Reads the file only."""
    raw = _read_regular(path)
    if raw.startswith(UTF16):
        raise ConfigError(
            f"migration file {_shown(path.name)} is UTF-16 (as Windows PowerShell 5 writes with `>`); "
            "save it as UTF-8"
        )
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
    migration = Migration(
        version=version, name=name, path=path, data=data, checksum=hashlib.sha256(raw).hexdigest()
    )
    if planned:
        migration.steps  # noqa: B018 - planned now: a bad statement is refused here
    return migration


# The name is the file's own: in the header it made a line over the lint gate's 100
# characters once it was longer than 35.
NEW_FILE_HEADER = """\
-- What this changes, and why it is safe on a live database.
SET lock_timeout = '1s';
SET statement_timeout = '60s';
"""


def new_migration(folder: Path, name: str, *, transactional: bool = True) -> Path:
    """Write the next `NNNN_name.sql` of `folder` with a header that sets short timeouts. Writes.

    The number is one above the highest version there, in the width the folder
    uses (four digits for a new folder). Two branches that both take the next
    number collide when merged: `migrate check` refuses two files of one version.
    """
    from cicd_db.migrations.directives import NO_TRANSACTION_MARKER

    # `migrate new add_index.sql` means add_index: the extension is the runner's to add.
    while name.lower().endswith(".sql"):
        name = name[:-4]
    if not FILE_NAME.fullmatch(f"1_{name}.sql"):
        raise ConfigError(
            f"migration name {name!r} may hold only ASCII letters, digits, '_', '.' and '-', and "
            "must start with a letter or digit; for example add_run_index"
        )
    if why := not_a_folder(folder):
        fix = (
            "create it, or pass {migrations_dir}"
            if why == "does not exist"
            else "pass {migrations_dir}"
        )
        raise ConfigError(
            "migrations folder {folder} {why}; " + fix,
            arguments=["migrations_dir"],
            values={"folder": folder, "why": why},
        )
    # Numbered and made under a lock of the folder: two `new` at once (two terminals, a
    # script) took the same number, and each said it had made its file.
    with _locked(folder):
        # Every file discover takes for a migration counts, also one it refuses for its
        # name (`0002_x.SQL`, a version in other digits): renamed as told, it would take
        # the number given next.
        versions = [
            (int(digits[0]), len(digits[0]))
            for path in folder.iterdir()
            if not path.name.startswith(".")
            and _shown_as_sql(path.name)
            and (digits := re.match(r"\d{1,30}(?!\d)", path.name))
        ]
        newest, width = max(versions, default=(0, 4))
        if newest >= MAX_VERSION:
            raise ConfigError(
                f"cannot number a new migration in {folder}: its newest version, {newest}, leaves "
                f"none above it that the history can hold (at most {MAX_VERSION}, a bigint); "
                "renumber that file lower if it is not applied yet"
            )
        path = folder / f"{newest + 1:0{width}d}_{name}.sql"
        header = NEW_FILE_HEADER
        if not transactional:
            header = NO_TRANSACTION_MARKER.decode() + "\n" + header
        try:
            out = path.open("x", encoding="utf-8")
        except FileExistsError:
            raise ConfigError(f"{path} exists already; pick another name") from None
        except OSError as error:
            raise ConfigError(f"cannot write {path}: {error.strerror}; check the folder") from None
        try:
            with out:
                out.write(header)
        except BaseException as error:
            # Not left empty or cut short (a full disk, Ctrl-C): the next `up` would apply it.
            path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise ConfigError(
                    f"cannot write {path}: {error.strerror}; check the folder"
                ) from None
            raise
    return path


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock of `folder` itself (flock on its descriptor: no file is made in it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise ConfigError(f"cannot open {folder}: {error.strerror}; check the folder") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # and the lock with it


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


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def index_name(migration: Migration) -> str | None:
    """The index a no-transaction file builds concurrently, as PostgreSQL names it."""
    target = index_target(migration)
    return target.name if target else None


class IndexTarget(NamedTuple):
    """What a no-transaction file's CREATE INDEX CONCURRENTLY builds: the index and the
    table it indexes, as PostgreSQL names them, and where the statement stands."""

    name: str
    schema: str | None  # the table's schema, where the file names it
    table: str
    step: int  # where the statement stands among the file's steps
    batch: Batch  # that step: the statement's text and line


def index_target(migration: Migration, steps: tuple[Step, ...] | None = None) -> IndexTarget | None:
    """The index a no-transaction file builds concurrently, and the table it indexes, as
    PostgreSQL names them, among `steps` (the file's plan by default)."""
    from cicd_db.migrations.kinds import CONCURRENT_INDEX, INDEXED_TABLE
    from cicd_db.migrations.steps import Copy
    from cicd_db.sqltext import without_comments

    for position, step in enumerate(migration.steps if steps is None else steps):
        if isinstance(step, Copy):
            continue
        text = migration.data[step.start : step.end]
        statement = without_comments(text, standard_strings=step.standard_strings)
        match = CONCURRENT_INDEX.search(statement)
        if match is None:
            continue
        on = INDEXED_TABLE.match(statement, match.end())
        if on is None:
            return None  # not a statement PostgreSQL would take: it says so when it runs
        name, first = _folded(match["name"]), _folded(on["first"])
        if on["second"] is None:
            return IndexTarget(name, None, first, position, step)
        return IndexTarget(name, first, _folded(on["second"]), position, step)
    return None


def _folded(raw: bytes) -> str:
    """An identifier as PostgreSQL names it: quoted as written, unquoted folded to lower
    case in ASCII only."""
    name = raw.decode("utf-8")
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.translate(_ASCII_LOWER)


# Calls whose effect lies outside the caller's transaction, which a rehearsal's
