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


def outside_transactions_only(words: tuple[str, ...]) -> str | None:
    """What the statement starting with `words` is, if PostgreSQL runs it only outside a
    transaction block (`REINDEX ... CONCURRENTLY` too); else None."""
    for length in (1, 2, 3, 4):
        found = _OUTSIDE_ONLY.get(words[:length])
        if found:
            return found
    if words[:1] == ("REINDEX",) and "CONCURRENTLY" in words[1:3]:
        return "REINDEX ... CONCURRENTLY"
    return None


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
