"""Planning a file's text into the queries that apply it as psql would, and refusing
what may not run. Pure: reads bytes, knows no server and no file system.

PostgreSQL decides what a statement is: a transactional file goes to the server
in as few simple-protocol queries as psql's own stopping points allow (COPY data,
pg_dump's `\\restrict` lines, a statement that changes how strings read, and
slices of about BATCH_BYTES); a no-transaction file goes one statement at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cicd_db.errors import ConfigError
from cicd_db.migrations.directives import NO_TRANSACTION_MARKER, earlier_checksums
from cicd_db.migrations.steps import Batch, Copy, Step
from cicd_db.sqltext import (
    CopyData,
    CopyFromStdin,
    MetaCommand,
    Scanner,
    Statement,
    found_lowered,
    may_change_lexing,
    names_a_receipt_setting,
    standard_strings_after,
    without_comments,
)

# A large file goes to the server in slices of whole statements of about this
# size, so that neither side holds the parse trees of 50 MB of SQL at once.
BATCH_BYTES = 1 << 20
# Statements that end or start a transaction: not allowed in a transactional file.
TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ABORT", "ROLLBACK", "START", "PREPARE"})
SESSION_SETTINGS = frozenset({"SET", "RESET"})
# Statements that take no snapshot (PostgreSQL's PlannedStmtRequiresSnapshot): run first
# in a transaction, they leave its isolation level to be set, and its snapshot (repeatable
# read, serializable) to be taken by the first statement after them, a LOCK's wait done.
# (SAVEPOINT, RELEASE and ROLLBACK TO are the transaction control a file may hold.)
TAKE_NO_SNAPSHOT = frozenset(
    {"SET", "RESET", "SHOW", "LOCK", "LISTEN", "UNLISTEN", "NOTIFY", "CHECKPOINT"}
    | {"SAVEPOINT", "RELEASE", "ROLLBACK"}
)
# pg_dump (17.6, 18 and later) brackets its output with these psql commands; they
# only switch psql's own meta-commands off and on, so the runner, which runs
# none, may skip them.
IGNORED_META_COMMANDS = frozenset({"restrict", "unrestrict"})
# `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON`: an interrupted
# build leaves `name` behind, invalid.
# An identifier as written in SQL: quoted (with "" inside), or plain.
IDENTIFIER = rb'"(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*'
CONCURRENT_INDEX = re.compile(
    rb"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rb"(?P<name>" + IDENTIFIER + rb")",
    re.IGNORECASE,
)
# What follows the index's name: `ON [ONLY] [schema.]table`.
INDEXED_TABLE = re.compile(
    rb"\s+ON\s+(?:ONLY\s+)?(?P<first>"
    + IDENTIFIER
    + rb")(?:\s*\.\s*(?P<second>"
    + IDENTIFIER
    + rb"))?",
    re.IGNORECASE,
)


# What the runner must know a file names anywhere, found in one pass over its text
# lower-cased (names_in): the setting that changes how strings read; one the server
# applies to a query's whole text as it receives it (client_encoding, SET NAMES,
# backslash_quote); current_query(); a change of a database's or a role's settings,
# which only sessions opened after it take. Each begins with a literal, which is fast.
RECEIPT_NAMES = ("client_encoding", "backslash_quote", "names")
NAMED: dict[str, bytes | re.Pattern[bytes]] = {
    "lexing": b"standard_conforming_strings",
    **{name: name.encode() for name in RECEIPT_NAMES},
    "query": b"current_query",
    # Comments may stand between the two words; a statement computed from pieces
    # (format('ALTER %s ...', 'DATABASE')) is not seen.
    "defaults": re.compile(
        rb"alter(?:\s|/\*.*?\*/|--[^\n]*\n)+(?:database|role|user)\b", re.DOTALL
    ),
    # A setting of a name of the user's (`app.tenant`): set once, by SET or set_config(),
    # it stays defined in the session (RESET ALL empties it, nothing removes it), where
    # psql's next file, in a session of its own, would not find it. set_config() of a
    # name with no dot (pg_dump's `set_config('search_path', '', false)`) is not one.
    "custom": re.compile(
        rb"set_config\s*\(\s*(?:e?'[^']*(?:\.|'\s*\|\|)|[^'\s])|\bset(?:\s|/\*.*?\*/|--[^\n]*\n)+"
        rb"(?:(?:session|local)\s+)?\"?[a-z_][a-z0-9_$]*\"?\s*\.",
        re.DOTALL,
    ),
    # An event trigger made or changed: a login one sets up each new session (PostgreSQL
    # 17), which the files after it must start in.
    "event trigger": re.compile(rb"\bevent(?:\s|/\*.*?\*/|--[^\n]*\n)+trigger\b", re.DOTALL),
    # A library loaded (its hooks, its settings) and the random seed stay with a session.
    "load": re.compile(rb"\bload(?:\s|/\*.*?\*/|--[^\n]*\n)+e?'", re.DOTALL),
    "setseed": b"setseed",
}


def names_in(data: bytes) -> set[str]:
    """Which of NAMED `data` names, in any case."""
    return found_lowered(data, NAMED)


def plan(
    filename: str,
    data: bytes,
    *,
    transactional: bool,
    standard_strings: bool = True,
    start: int = 0,
    line: int = 1,
    names: set[str] | None = None,
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
    refused before anything runs. `names`: names_in(data), when already known.
    """
    if start == 0:  # the opening comments' directives, checked (their checksums unused)
        earlier_checksums(filename, data, transactional=transactional)
    steps: list[Step] = []
    found = names_in(data) if names is None else names
    named = "lexing" in found
    receipt = not found.isdisjoint(RECEIPT_NAMES)
    # The other readings still to check, and those checked: (offset, standard strings,
    # statements counted so far in a no-transaction file, capped at 2).
    forks: list[tuple[int, int, bool, int, str]] = []
    checked: set[tuple[int, bool, int]] = set()
    _plan_pass(
        filename, data, transactional, standard_strings, start, line, 0, "", steps, named,
        forks, checked, count=start == 0, receipt=receipt,
    )  # fmt: skip
    while forks:
        at, at_line, reading, counted, note = forks.pop()
        _plan_pass(
            filename, data, transactional, reading, at, at_line, counted, note, None, named,
            forks, checked, count=start == 0, receipt=receipt,
        )  # fmt: skip
    return tuple(steps)


_RESTRICT_KEY = re.compile(rb"[^\s'\"`:\\]+")


def _follow_restrict(
    data: bytes, piece: MetaCommand, restricted: bytes | None, refuse: Callable[..., Exception]
) -> bytes | None:
    """psql's restricted mode after `piece` (its key, or None), or a refusal where psql
    refuses the line: what the runner skips must be what psql runs."""
    words = data[piece.start : piece.end].split(None, 2)[1:2]
    key = words[0] if words and _RESTRICT_KEY.fullmatch(words[0]) else None
    if words and key is None:
        why = "its key is not a plain word, as pg_dump writes it"
    elif key is None:
        why = "it has no key, which psql refuses"
    elif piece.name == "restrict" and restricted is not None:
        why = "psql is already in restricted mode, where it refuses it"
    elif piece.name == "unrestrict" and restricted is None:
        why = "psql is not in restricted mode, and refuses it"
    elif piece.name == "unrestrict" and key != restricted:
        why = "its key is not the one of the \\restrict before it, and psql refuses it"
    else:
        return key if piece.name == "restrict" else None
    raise refuse(
        piece.line,
        f"\\{piece.name} is run by psql as a meta-command, and {why}",
        "write the \\restrict KEY and \\unrestrict KEY lines as pg_dump writes them, or remove them",
    )


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
    receipt: bool = False,
) -> None:
    """Check `data` from `start` under one reading of its strings, and plan it into `steps`
    (None: only check). `note` says which reading, for a refusal in a fork. `receipt`:
    the file names a setting the server applies to a query's whole text (a statement
    that may change one ends its batch)."""
    batch: list[Statement] = []
    scanner = Scanner(data, standard_strings=standard_strings, start=start, line=line)
    default = standard_strings if start == 0 else True  # what RESET brings back

    # While the file holds only statements that take no snapshot so far: where the last
    # ends, in whichever batch, and whether one sets the transaction's characteristics
    # (Batch.quiet_end, put on the first batch once the pass is done).
    leading = steps is not None and start == 0
    quiet_end: int | None = None
    sets_transaction = False

    def flush(**lexing: Any) -> None:
        if batch and steps is not None:
            steps.append(
                Batch(
                    batch[0].start, batch[-1].end, batch[0].line, scanner.standard_strings,
                    **lexing,
                )
            )  # fmt: skip
        batch.clear()

    def refuse(at: int, what: str, fix: str) -> ConfigError:
        return ConfigError(f"migration file {filename}, line {at}{note}: {what}; {fix}")

    copy: CopyFromStdin | None = None
    # psql 18 refuses a `\restrict` without a key or inside restricted mode, and an
    # `\unrestrict` outside it or with another key: followed from the file's start only
    # (a pass from further on does not know the mode, and checks nothing of it).
    restricted: bytes | None = None
    for piece in scanner:
        if isinstance(piece, MetaCommand):
            if piece.name in IGNORED_META_COMMANDS and not piece.inside_statement:
                if start == 0:
                    restricted = _follow_restrict(data, piece, restricted, refuse)
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
        if piece.continued is not None:
            raise refuse(
                piece.line + data.count(b"\n", piece.start, piece.continued),
                "an E'...' string goes on in the '...' on this line, which psql reads as a "
                "new string and PostgreSQL as the same one (backslash escapes): they end it "
                "in different places",
                "write the string as one E'...' on one line, or join the parts with ||",
            )
        if transactional and _controls_transaction(piece.words):
            raise refuse(
                piece.line,
                f"{' '.join(piece.words[:2])} ends or starts a transaction, and the runner "
                "already runs this file in one",
                f"remove it, or make the first line `{NO_TRANSACTION_MARKER.decode()}` "
                "to run the file outside a transaction",
            )
        outside = _outside_transactions_only(piece.words) if transactional else None
        if outside:
            raise refuse(
                piece.line,
                f"{outside} cannot run inside a transaction, and the runner runs this file in one",
                f"make the first line `{NO_TRANSACTION_MARKER.decode()}`, with this statement "
                "alone in the file",
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
            if (
                not piece.words
                and not without_comments(
                    data[piece.start : piece.end], standard_strings=scanner.standard_strings
                ).strip()
            ):
                # Only a comment never closed makes a statement of comments alone.
                raise refuse(
                    piece.line,
                    "a /* comment is never closed, which PostgreSQL refuses",
                    "close it with */",
                )
            if piece.keyword not in SESSION_SETTINGS:
                changes += 1
                text = data[piece.start : piece.end]
                _check_concurrent_index(filename, piece, text, scanner.standard_strings)
        elif isinstance(piece, CopyFromStdin):
            leading = False
            flush()
            copy = piece
            continue
        if leading:
            if piece.keyword not in TAKE_NO_SNAPSHOT or (
                piece.keyword == "SET" and sets_a_role(data, piece, scanner.standard_strings)
            ):
                leading = False
            else:
                quiet_end = piece.end
                sets_transaction = sets_transaction or (
                    piece.keyword in SESSION_SETTINGS
                    and sets_the_transaction(data, piece, scanner.standard_strings)
                )
        lexing = may_change_lexing(data, piece, scanner.standard_strings, named=named)
        if lexing and transactional:
            # It starts a query of its own: the check after the query before it then sees
            # a change no statement named (a function that sets the setting), which the
            # change it makes would hide if both ended one query.
            flush()
        batch.append(piece)
        if lexing:
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
        elif (
            not transactional
            or batch[-1].end - batch[0].start >= BATCH_BYTES
            or (receipt and names_a_receipt_setting(data, piece))
        ):
            flush()
    flush()
    if quiet_end is not None and steps and isinstance(steps[0], Batch):
        steps[0] = replace(steps[0], quiet_end=quiet_end, sets_transaction=sets_transaction)
    if not transactional and count and changes != 1:
        raise ConfigError(
            f"migration file {filename}{note} is marked no-transaction but holds {changes} "
            "statements besides SET and RESET; it must hold exactly one: split it into one "
            "file per statement"
        )


_COPY_TO_STDOUT = re.compile(rb"\bTO\s+STDOUT\b", re.IGNORECASE)
# `SET [LOCAL | SESSION] TRANSACTION ...`, or a setting whose name begins so
# (transaction_isolation, "transaction_deferrable", U&"transaction_read_only"), set or
# reset: PostgreSQL accepts it only before the transaction's first query. A name
# quoted, or in any case, is the same setting.
_TRANSACTION_SETTING = re.compile(
    rb'\s*(?:SET|RESET)\s+(?:(?:LOCAL|SESSION)\s+)?(?:U&)?"?TRANSACTION', re.IGNORECASE
)


# `SET [LOCAL | SESSION] ROLE ...` or `SET SESSION AUTHORIZATION ...`: the runner's first
# query, which reads the history's state, must run before it, as the login role.
ROLE_SETTING = re.compile(
    rb'\s*SET\s+(?:(?:LOCAL|SESSION)\s+)?(?:"?role"?(?![A-Za-z0-9_$])|SESSION\s+AUTHORIZATION\b)',
    re.IGNORECASE,
)


def sets_a_role(data: bytes, statement: Statement | Batch, standard_strings: bool) -> bool:
    """`statement` (a SET) makes the session act as another role."""
    return _reads_as(ROLE_SETTING, data, statement, standard_strings)


def sets_the_transaction(data: bytes, statement: Statement | Batch, standard_strings: bool) -> bool:
    """`statement` (a SET or RESET) sets one of the transaction's own characteristics."""
    return _reads_as(_TRANSACTION_SETTING, data, statement, standard_strings)


def _reads_as(
    pattern: re.Pattern[bytes], data: bytes, statement: Statement | Batch, standard_strings: bool
) -> bool:
    """`statement` begins as `pattern` says, read without its comments."""
    text = without_comments(
        data[statement.start : statement.end], standard_strings=standard_strings
    )
    return pattern.match(text) is not None


# Statements PostgreSQL refuses inside a transaction block (25001), by their first words:
# known before anything runs, so a transactional file that holds one is refused up front,
# not after the files before it were applied.
_OUTSIDE_ONLY = {
    ("VACUUM",): "VACUUM",
    ("CREATE", "DATABASE"): "CREATE DATABASE",
    ("DROP", "DATABASE"): "DROP DATABASE",
    ("CREATE", "TABLESPACE"): "CREATE TABLESPACE",
    ("DROP", "TABLESPACE"): "DROP TABLESPACE",
    ("ALTER", "SYSTEM"): "ALTER SYSTEM",
    ("CREATE", "INDEX", "CONCURRENTLY"): "CREATE INDEX CONCURRENTLY",
    ("CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"): "CREATE INDEX CONCURRENTLY",
    ("DROP", "INDEX", "CONCURRENTLY"): "DROP INDEX CONCURRENTLY",
    ("REINDEX", "DATABASE"): "REINDEX DATABASE",
    ("REINDEX", "SYSTEM"): "REINDEX SYSTEM",
}


def _outside_transactions_only(words: tuple[str, ...]) -> str | None:
    """What the statement starting with `words` is, if PostgreSQL runs it only outside a
    transaction block (`REINDEX ... CONCURRENTLY` too); else None."""
    for length in (1, 2, 3, 4):
        found = _OUTSIDE_ONLY.get(words[:length])
        if found:
            return found
    if words[:1] == ("REINDEX",) and "CONCURRENTLY" in words[1:3]:
        return "REINDEX ... CONCURRENTLY"
    return None


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
