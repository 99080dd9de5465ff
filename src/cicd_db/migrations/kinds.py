"""What kind of statement a statement is, read from its first words and its text:
one that ends or starts a transaction, a setting, one that takes no snapshot, one
PostgreSQL runs only outside a transaction block, a concurrent index build and its
name. Pure, as planning is: reads bytes, knows no server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from cicd_db.errors import ConfigError
from cicd_db.sqltext import Statement, without_comments
from cicd_db.sqltext.tokens import Token, number, tokens

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
# An identifier as written in SQL: quoted (with "" inside), or plain.
IDENTIFIER = rb'"(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*'
# `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON`: an interrupted
# build leaves `name` behind, invalid.
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
    return pattern.match(_uncommented(data, statement, standard_strings)) is not None


def _uncommented(data: bytes, statement: Statement | Batch, standard_strings: bool) -> bytes:
    return without_comments(
        data[statement.start : statement.end], standard_strings=standard_strings
    )


# Statements PostgreSQL refuses inside a transaction block (25001), by their first words:
# known before anything runs, so a transactional file that holds one is refused up front,
# not after the files before it were applied. Where what follows decides (REINDEX,
# CLUSTER, ALTER DATABASE, ALTER TABLE ... DETACH, CREATE SCHEMA's elements, CREATE
# SUBSCRIPTION), the statement is read further, token by token (_FURTHER).
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


def outside_transactions_only(
    data: bytes, statement: Statement, standard_strings: bool
) -> str | None:
    """What `statement` is, if PostgreSQL runs it only outside a transaction block; else
    None. Only what its text decides: where the catalog decides (REINDEX or CLUSTER of a
    partitioned table, ALTER or DROP SUBSCRIPTION), the server refuses it when the file
    runs, and the file is rolled back."""
    words = statement.words
    if not words or words[0] not in _FIRST_WORDS:  # INSERT, UPDATE, SET, ...: one look-up
        return None
    for length in (1, 2, 3, 4):
        found = _OUTSIDE_ONLY.get(words[:length])
        if found:
            return found
    further = _FURTHER.get(words[:1]) or _FURTHER.get(words[:2])
    if further is None or (
        words[:2] == ("ALTER", "TABLE") and not _DETACH.search(data, statement.start, statement.end)
    ):
        return None
    read = _tokens(data, statement, standard_strings)
    while read and read[-1] == (OTHER, ";"):
        read.pop()
    return further(read)


def _tokens(data: bytes, statement: Statement, standard_strings: bool) -> list[Token]:
    """`statement`'s tokens, read without its comments."""
    return tokens(
        _uncommented(data, statement, standard_strings), standard_strings=standard_strings
    )


OTHER, WORD = "other", "word"
_DETACH = re.compile(rb"\bDETACH\b", re.IGNORECASE)


def _options(read: list[Token]) -> tuple[dict[str, list[Token]], list[Token]]:
    """The parenthesized options that open `read`, each by its name as PostgreSQL reads
    it (a word lower-cased, a quoted name as written; the last of a name wins) with its
    value's tokens (parentheses in a value kept whole); and the tokens after them. No
    parenthesis there: no options."""
    if read[:1] != [(OTHER, "(")]:
        return {}, read
    options: dict[str, list[Token]] = {}
    option: list[Token] = []
    depth = 0
    for at, token in enumerate(read[1:], 1):
        if depth or token not in ((OTHER, ","), (OTHER, ")")):
            depth += {(OTHER, "("): 1, (OTHER, ")"): -1}.get(token, 0)
            option.append(token)
            continue
        if option:
            kind, name = option[0]
            options[name.lower() if kind == WORD else name] = option[1:]
        option = []
        if token == (OTHER, ")"):
            return options, read[at + 1 :]
    return options, []  # never closed, which PostgreSQL refuses


def _on(options: dict[str, list[Token]], name: str, default: bool) -> bool:
    """A boolean option as PostgreSQL reads it (defGetBoolean): `default` when not given,
    true when named alone; a number true unless 0 (-0 too); a word, name or string true
    unless false or off (a name with a type's modifiers after it, `"off"(1)`, is the
    name)."""
    if name not in options:
        return default
    value = [token for token in options[name] if token not in _BEFORE_A_VALUE]
    if not value:
        return True
    kind, text = value[0]
    if kind == "number":
        return number(text) != 0
    return text.lower() not in ("false", "off")


# What may stand between an option's name and its value: `=` (CREATE SUBSCRIPTION's
# options), a sign.
_BEFORE_A_VALUE = frozenset({(OTHER, "="), (OTHER, "-"), (OTHER, "+")})


def _reindex(read: list[Token]) -> str | None:
    """`REINDEX [(options)] {INDEX | TABLE | SCHEMA | DATABASE | SYSTEM} [CONCURRENTLY] ...`"""
    options, rest = _options(read[1:])
    kind = rest[0] if rest else (OTHER, "")
    if kind in ((WORD, "SCHEMA"), (WORD, "SYSTEM"), (WORD, "DATABASE")):
        return f"REINDEX {kind[1]}"
    if rest[1:2] == [(WORD, "CONCURRENTLY")] or _on(options, "concurrently", False):
        return "REINDEX ... CONCURRENTLY"
    return None


def _cluster(read: list[Token]) -> str | None:
    """`CLUSTER [(options)] [VERBOSE] [table [USING index]]`: without a table, every table
    clustered before, each in a transaction of its own."""
    _, rest = _options(read[1:])
    if rest[:1] == [(WORD, "VERBOSE")]:
        rest = rest[1:]
    return None if rest else "CLUSTER without a table"


def _alter_database(read: list[Token]) -> str | None:
    """`ALTER DATABASE name SET TABLESPACE new`, or `ALTER DATABASE name [WITH] TABLESPACE
    [=] new` among its options (`"tablespace"` too); not a setting named tablespace.x. The
    first SET after the name (which may itself be `set`)."""
    rest = read[3:]  # after the name (U&"name" UESCAPE '!' is one token)
    if rest[:1] == [(WORD, "SET")]:
        moves = rest[1:2] == [(WORD, "TABLESPACE")] and rest[2:3] != [(OTHER, ".")]
        return "ALTER DATABASE ... SET TABLESPACE" if moves else None
    if rest[:1] in ([(WORD, "RESET")], [(WORD, "RENAME")], [(WORD, "OWNER")], [(WORD, "REFRESH")]):
        return None
    if (WORD, "TABLESPACE") in rest or ("name", "tablespace") in rest:
        return "ALTER DATABASE ... TABLESPACE"
    return None


def _detach(read: list[Token]) -> str | None:
    """`ALTER TABLE [IF EXISTS] [ONLY] name [*] DETACH PARTITION partition CONCURRENTLY`
    (the table may be named detach; CONCURRENTLY is no name unless quoted)."""
    at = 4 if read[2:4] == [(WORD, "IF"), (WORD, "EXISTS")] else 2
    if read[at : at + 1] == [(WORD, "ONLY")]:
        at += 1
    at += 1  # the table's name
    while read[at : at + 1] == [(OTHER, ".")]:  # schema.table
        at += 2
    if read[at : at + 1] == [(OTHER, "*")]:
        at += 1
    detach = read[at : at + 2] == [(WORD, "DETACH"), (WORD, "PARTITION")]
    if detach and read[-1:] == [(WORD, "CONCURRENTLY")]:
        return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"
    return None


def _create_schema(read: list[Token]) -> str | None:
    """`CREATE SCHEMA ... CREATE [UNIQUE] INDEX CONCURRENTLY ...` among its elements."""
    for at in range(2, len(read) - 2):
        if read[at] == (WORD, "CREATE"):
            index = (
                read[at + 2 : at + 4] if read[at + 1] == (WORD, "UNIQUE") else read[at + 1 : at + 3]
            )
            if index == [(WORD, "INDEX"), (WORD, "CONCURRENTLY")]:
                return "CREATE INDEX CONCURRENTLY"
    return None


def _create_subscription(read: list[Token]) -> str | None:
    """`CREATE SUBSCRIPTION ... [WITH (options)]`: it makes its replication slot (it
    connects, and create_slot is not false), which PostgreSQL does outside a transaction."""
    at = next((at for at, token in enumerate(read) if token == (WORD, "WITH")), len(read))
    options, _ = _options(read[at + 1 :])
    connect = _on(options, "connect", True)
    if _on(options, "create_slot", connect):
        return "CREATE SUBSCRIPTION ... WITH (create_slot = true)"
    return None


_FURTHER: dict[tuple[str, ...], Callable[[list[Token]], str | None]] = {
    ("REINDEX",): _reindex,
    ("CLUSTER",): _cluster,
    ("ALTER", "DATABASE"): _alter_database,
    ("ALTER", "TABLE"): _detach,
    ("CREATE", "SCHEMA"): _create_schema,
    ("CREATE", "SUBSCRIPTION"): _create_subscription,
}
_FIRST_WORDS = frozenset(words[0] for words in (*_OUTSIDE_ONLY, *_FURTHER))


def controls_transaction(data: bytes, statement: Statement, standard_strings: bool) -> bool:
    """`statement` ends or starts a transaction (ROLLBACK TO, SAVEPOINT and RELEASE stay
    inside one; PREPARE TRANSACTION 'id' ends it, a statement named transaction does not)."""
    words = statement.words
    if not words or words[0] not in TRANSACTION_CONTROL:
        return False
    if words[0] == "ROLLBACK":  # ROLLBACK [WORK | TRANSACTION] TO ... stays inside it
        rest = words[2:3] if words[1:2] in (("WORK",), ("TRANSACTION",)) else words[1:2]
        return rest != ("TO",)
    if words[0] == "PREPARE":
        if words[1:2] != ("TRANSACTION",):
            return False
        after = _tokens(data, statement, standard_strings)[2:3]
        return not after or after[0][0] == "string"  # the transaction's id, in any form
    if words[0] == "START":
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
