"""What a statement may change of how the next is read: standard_conforming_strings
(where strings end), client_encoding and backslash_quote (how the server receives a
query's text); and words found in a text whatever their case."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cicd_db.sqltext.lexer import LEXING_SETTINGS
from cicd_db.sqltext.scanner import Statement, without_comments

# whether the lexer refuses \' in a string (`SET NAMES` sets the encoding too).
_RECEIPT_SETTING = re.compile(rb"client_encoding|backslash_quote|\bNAMES\b", re.IGNORECASE)


def found_lowered(
    data: bytes,
    wanted: Mapping[str, bytes | re.Pattern[bytes]],
    overlap: int = 4096,
    slice_bytes: int = 1 << 20,
) -> set[str]:
    """Which of `wanted` (by name: a lower-case text, or a pattern for lower-case text)
    occur somewhere in `data` lower-cased, read a slice at a time (no copy of a large
    file, and a case-sensitive search: many times faster than IGNORECASE), the slices
    overlapping by `overlap` bytes, more than a match spans: two words of a statement
    with more than 4 kB of spaces or comments between them, across a megabyte's
    boundary, are not found. A pattern should begin with a literal, which the search
    then looks for first."""
    found: set[str] = set()
    for start in range(0, len(data), slice_bytes):
        text = data[max(start - overlap, 0) : start + slice_bytes].lower()
        found.update(
            name
            for name, what in wanted.items()
            if name not in found
            and (what in text if isinstance(what, bytes) else what.search(text) is not None)
        )
        if len(found) == len(wanted):
            break
    return found


def names_a_receipt_setting(data: bytes, statement: Statement) -> bool:
    """Whether `statement` may change a setting the server applies to a whole query as it
    receives it (_RECEIPT_SETTING): then nothing may follow it in the same query, as
    psql sends the next statement in a query of its own. A statement that may run code
    and names one, anywhere in it; or a ROLLBACK TO SAVEPOINT, which may undo one."""
    if statement.words[:2] == _ROLLBACK_TO:
        return True
    return statement.keyword in _RUNS_CODE and (
        _RECEIPT_SETTING.search(data, statement.start, statement.end) is not None
    )


_RESETS_ALL = (("RESET", "ALL"), ("DISCARD", "ALL"))
_ROLLBACK_TO = ("ROLLBACK", "TO")


# Statements that may run code, where naming the setting may change it: anywhere
# else (a string of data, an identifier, a function's body being created) it cannot.
_RUNS_CODE = frozenset({"SET", "RESET", "DO", "CALL", "SELECT", "VALUES", "WITH", "EXECUTE"})
_SET_CONFIG = re.compile(rb"\bset_config\b", re.IGNORECASE)


def may_change_lexing(
    data: bytes, statement: Statement, standard_strings: bool, *, named: bool = True
) -> bool:
    """Whether `statement` may change how the text after it is read: SET or RESET of
    standard_conforming_strings, a set_config call or a DO or CALL that names it
    outside comments; or RESET ALL or DISCARD ALL while strings are not read the
    default way. A statement that only names it in data (`INSERT ... VALUES
    ('standard_conforming_strings')`, a comment) changes nothing. A function called
    under another name that changes it cannot be seen in the text: only the server
    tells. `named`: the whole text names the setting (statements.names_in), which saves the
    search when false.
    """
    words = statement.words
    if words[:2] in _RESETS_ALL:
        return not standard_strings
    if words[:2] == _ROLLBACK_TO:  # may undo a SET of it made after the savepoint
        return named
    if not named or not words or words[0] not in _RUNS_CODE:
        return False
    if LEXING_SETTINGS.search(data, statement.start, statement.end) is None:
        return False
    text = without_comments(
        data[statement.start : statement.end], standard_strings=standard_strings
    )
    if LEXING_SETTINGS.search(text) is None:
        return False
    return words[0] in ("SET", "RESET", "DO", "CALL") or _SET_CONFIG.search(text) is not None


_VALUE = rb"(?:'(?P<{0}>[A-Za-z0-9]+)'|\"(?P<{0}q>[A-Za-z0-9]+)\"|(?P<{0}w>[A-Za-z0-9]+))"
_NAME = rb"(?:standard_conforming_strings|\"standard_conforming_strings\")"
_SET_STANDARD_STRINGS = re.compile(
    rb"\s*(?:SET\s+(?:(?P<scope>SESSION|LOCAL)\s+)?"
    + _NAME
    + rb"\s*(?:=|\bTO\b)\s*"
    + _VALUE.replace(b"{0}", b"value")
    + rb"|RESET\s+(?:ALL|"
    + _NAME
    + rb")"
    + rb"|DISCARD\s+ALL"
    + rb"|SELECT\s+(?:pg_catalog\s*\.\s*)?set_config\s*\(\s*'standard_conforming_strings'\s*,\s*"
    + rb"'(?P<setvalue>[A-Za-z0-9]+)'\s*,\s*"
    + _VALUE.replace(b"{0}", b"local")
    + rb"\s*\))\s*;?\s*",
    re.IGNORECASE,
)
_TRUE = (b"true", b"yes", b"on", b"1")
_FALSE = (b"false", b"no", b"off", b"0")


def _boolean(value: bytes) -> bool | None:
    """PostgreSQL's reading of a boolean setting: a unique prefix of a word, any case."""
    lowered = value.lower()
    found = {word in _TRUE for word in (*_TRUE, *_FALSE) if word.startswith(lowered)}
    return found.pop() if len(found) == 1 else None


def standard_strings_after(
    statement: bytes,
    current: bool,
    *,
    transactional: bool = True,
    default: bool = True,
) -> bool | None:
    """How '...' strings read after `statement`, for the forms whose effect shows in
    their text (comments out): `SET [SESSION | LOCAL] standard_conforming_strings`, its
    RESET, RESET ALL, DISCARD ALL and `SELECT set_config('standard_conforming_strings',
    'off', false)` as a whole statement; None for any other (a DO block, set_config of
    computed values: only running it tells).

    `default` is the session's own value, which RESET brings back (the server's default
    is on since PostgreSQL 9.1; a server whose default is off is planned again when the
    runner sees it). A LOCAL change outside a transaction block ends with its statement.
    For reading a file without a server; with one, ask the server instead.
    """
    match = _SET_STANDARD_STRINGS.fullmatch(statement)
    if match is None:
        return None
    value = match["value"] or match["valueq"] or match["valuew"] or match["setvalue"]
    if value is None or value.upper() == b"DEFAULT":
        return default
    local = match["scope"] is not None and match["scope"].upper() == b"LOCAL"
    if match["setvalue"] is not None:
        local_flag = _boolean(match["local"] or match["localq"] or match["localw"])
        if local_flag is None:
            return None
        local = local_flag
    after = _boolean(value)
    if after is not None and local and not transactional:
        return current
    return after
