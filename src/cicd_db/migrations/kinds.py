"""What kind of statement a statement is, read from its first words and its text:
one that ends or starts a transaction, a setting, one that takes no snapshot, one
PostgreSQL runs only outside a transaction block, a concurrent index build and its
name. Pure, as planning is: reads bytes, knows no server.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cicd_db.errors import ConfigError
from cicd_db.sqltext import Statement, without_comments

if TYPE_CHECKING:
    from cicd_db.migrations.steps import Batch

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

COPY_TO_STDOUT = re.compile(rb"\bTO\s+STDOUT\b", re.IGNORECASE)
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
# not after the files before it were applied. REINDEX, CLUSTER, ALTER DATABASE and ALTER
# TABLE ... DETACH PARTITION are read further (_read_further): their options decide.
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
    ("DISCARD", "ALL"): "DISCARD ALL",
}
# A statement's tokens once its comments are out: a word (upper-cased), a quoted name or
# string as written, or one other character.
_TOKEN = re.compile(
    rb"""\s*(?:([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)|("(?:[^"]|"")*"|'(?:[^']|'')*'|\S))"""
)
_DETACH = re.compile(rb"\bDETACH\b", re.IGNORECASE)
# The values of a boolean option that say no (PostgreSQL's defGetBoolean).
_NO = frozenset({"FALSE", "OFF", "0", "'FALSE'", "'OFF'", "'0'"})


def outside_transactions_only(
    data: bytes, statement: Statement, standard_strings: bool
) -> str | None:
    """What `statement` is, if PostgreSQL runs it only outside a transaction block; else
    None. Only what its text decides: REINDEX of a partitioned table, or a subscription
    whose slot decides, the server refuses when the file runs."""
    words = statement.words
    for length in (1, 2, 3, 4):
        found = _OUTSIDE_ONLY.get(words[:length])
        if found:
            return found
    if words[:1] in (("REINDEX",), ("CLUSTER",)) or words[:2] == ("ALTER", "DATABASE"):
        return _read_further(data, statement, standard_strings)
    if words[:2] == ("ALTER", "TABLE") and _DETACH.search(data, statement.start, statement.end):
        return _read_further(data, statement, standard_strings)
    return None


def _read_further(data: bytes, statement: Statement, standard_strings: bool) -> str | None:
    """outside_transactions_only for the statements whose options decide."""
    text = without_comments(
        data[statement.start : statement.end], standard_strings=standard_strings
    )
    tokens = [
        word.decode("utf-8", "replace").upper() if word else other.decode("utf-8", "replace")
        for word, other in _TOKEN.findall(text)
    ]
    while tokens and tokens[-1] == ";":
        tokens.pop()
    head, rest = tokens[:1], tokens[1:]
    options: list[str] = []
    if head in (["REINDEX"], ["CLUSTER"]) and rest[:1] == ["("] and ")" in rest:
        options, rest = rest[1 : rest.index(")")], rest[rest.index(")") + 1 :]
    if head == ["REINDEX"]:
        if rest[:1] in (["SCHEMA"], ["SYSTEM"], ["DATABASE"]):
            return f"REINDEX {rest[0]}"
        if rest[1:2] == ["CONCURRENTLY"] or _turned_on(options, "CONCURRENTLY"):
            return "REINDEX ... CONCURRENTLY"
    elif head == ["CLUSTER"]:
        if not rest or rest == ["VERBOSE"]:
            return "CLUSTER without a table"
    elif tokens[:2] == ["ALTER", "DATABASE"]:
        if tokens[3:5] == ["SET", "TABLESPACE"]:
            return "ALTER DATABASE ... SET TABLESPACE"
    elif tokens[-1:] == ["CONCURRENTLY"] and any(
        tokens[at : at + 2] == ["DETACH", "PARTITION"] for at in range(len(tokens))
    ):
        return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"
    return None


def _turned_on(options: list[str], name: str) -> bool:
    """Whether parenthesized options (their tokens, commas between) turn `name` on: named
    alone, or with a value that is not one of _NO."""
    option: list[str] = []
    for piece in [*options, ","]:
        if piece != ",":
            option.append(piece)
        elif option[:1] == [name]:
            return len(option) == 1 or option[1].upper() not in _NO
        else:
            option = []
    return False


def controls_transaction(words: tuple[str, ...]) -> bool:
    """The statement starting with `words` ends or starts a transaction (ROLLBACK TO,
    SAVEPOINT and RELEASE stay inside one)."""
    if not words or words[0] not in TRANSACTION_CONTROL:
        return False
    if words[0] == "ROLLBACK":  # ROLLBACK [WORK | TRANSACTION] TO ... stays inside it
        rest = words[2:3] if words[1:2] in (("WORK",), ("TRANSACTION",)) else words[1:2]
        return rest != ("TO",)
    if words[0] in ("START", "PREPARE"):
        return words[1:2] == ("TRANSACTION",)
    return True


def check_concurrent_index(
    filename: str, statement: Statement, text: bytes, standard_strings: bool
) -> None:
    """Refuse a concurrent index build without a name: one an interruption left invalid
    could not be found and dropped."""
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
