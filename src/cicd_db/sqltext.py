"""Reading a migration file the way psql reads it: where statements end, what is not SQL.

The runner does not decide what a statement means; PostgreSQL's parser does,
since a transactional file is sent to the server whole (docs/design.md). This
scanner only finds what the server cannot be sent or what the runner must
know, following the rules of psql's own lexer:

- where each statement ends: a `;` outside quotes, comments and parentheses,
  and outside a SQL-standard function body (`CREATE FUNCTION ... BEGIN ATOMIC
  ... END`, with `CASE ... END` inside it);
- `COPY ... FROM STDIN` and the data lines after it, up to a line `\\.`;
- psql meta-commands (a backslash outside quotes), which are not SQL.

Lexical rules, as psql has them: an unquoted identifier may hold `$`
(`do$llar$s` is one word, not a dollar quote); `'...'` strings take backslash
escapes only when `standard_conforming_strings` is off, `E'...'` always;
`"quoted identifiers"`; `$tag$` dollar quotes; `--` and nested `/* */` comments.

It reads bytes, so a 50 MB file costs one pass and no copy, and keeps line
numbers as it goes. Reads its input only; never talks to a server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

_IDENT_START = rb"A-Za-z\x80-\xff_"
_IDENT_CONT = rb"A-Za-z\x80-\xff_0-9$"
_NOT_AFTER_IDENT = rb"(?<![" + _IDENT_CONT + rb"])"

# What can hide a semicolon or end a statement. Words are matched only while
# they matter (the first four of a statement, and inside a function definition).
_COMMON = (
    rb"(?P<line>--[^\n\r]*)"  # psql and the server end a comment at \r as at \n
    rb"|(?P<block>/\*)"
    rb"|(?P<estring>" + _NOT_AFTER_IDENT + rb"[eE]')"
    rb"|(?P<string>')"
    rb"|(?P<ident>\")"
    rb"|(?P<dollar>"
    + _NOT_AFTER_IDENT
    + rb"\$(?:["
    + _IDENT_START
    + rb"]["
    + _IDENT_START
    + rb"0-9]*)?\$)"
    rb"|(?P<open>\()"
    rb"|(?P<close>\))"
    rb"|(?P<semicolon>;)"
    rb"|(?P<backslash>\\)"
)
_FAST = re.compile(_COMMON)
_WORDS = re.compile(_COMMON + rb"|(?P<word>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)")
# Up to four words at a statement's start, when only spaces come between them;
# a word right before a quote may be a string's prefix (E'...'), so it stops there.
_WORD = rb"((?>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)(?!'))"
_LEADING_WORDS = re.compile(
    rb"\s*" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb")?)?)?"
)
# Ends of quoted things, matched just past their opening quote.
_STANDARD_STRING_END = re.compile(rb"[^']*(?:''[^']*)*'")
_ESCAPE_STRING_END = re.compile(rb"[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL)
_IDENT_END = re.compile(rb'[^"]*(?:""[^"]*)*"')
_BLOCK_EDGE = re.compile(rb"/\*|\*/")
_NOT_SPACE = re.compile(rb"\S")
_COPY_FROM_STDIN = re.compile(rb"\bFROM\s+STDIN\b", re.IGNORECASE)
_COPY_END = re.compile(rb"^\\\.\r?$", re.MULTILINE)
_LEXING_SETTINGS = re.compile(rb"standard_conforming_strings|backslash_quote", re.IGNORECASE)
_FUNCTION_WORDS = frozenset({"FUNCTION", "PROCEDURE"})
WORDS_KEPT = 4


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: `data[start:end]`, its semicolon included when it has one."""

    start: int
    end: int
    line: int  # 1-based line of its first character
    words: tuple[str, ...]  # its first unquoted words, upper-cased, at most WORDS_KEPT

    @property
    def keyword(self) -> str:
        return self.words[0] if self.words else ""

    def text(self, data: bytes) -> str:
        return data[self.start : self.end].decode("utf-8", "replace")

    @property
    def copies_from_stdin(self) -> bool:
        """Set by the scanner: this is `COPY ... FROM STDIN`, and CopyData follows."""
        return False


@dataclass(frozen=True, slots=True)
class CopyFromStdin(Statement):
    """A `COPY ... FROM STDIN` statement; the scanner yields its CopyData next."""

    @property
    def copies_from_stdin(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class CopyData:
    """The data lines of a COPY FROM STDIN, without the closing `\\.` line."""

    start: int
    end: int
    line: int
    trailing: bool  # something other than a comment follows the COPY's `;` on its line


@dataclass(frozen=True, slots=True)
class MetaCommand:
    """A psql backslash command such as `\\connect` or pg_dump's `\\restrict`, to its line's end."""

    start: int
    end: int
    line: int
    name: str  # "restrict", "connect", "." ...
    inside_statement: bool  # it interrupts a statement rather than standing between two


Piece = Statement | CopyData | MetaCommand


class Scanner:
    """Iterates over the pieces of `data` from `start`, in order.

    `standard_strings` is whether '...' strings are standard (no backslash
    escapes); a caller that learns a statement changed it (the server reports
    `standard_conforming_strings` after each query) sets it before the next
    piece is read, as psql does.
    """

    def __init__(
        self, data: bytes, *, standard_strings: bool = True, start: int = 0, line: int = 1
    ):
        self.data = data
        self.standard_strings = standard_strings
        self.start = start
        self.line = line

    def __iter__(self) -> Iterator[Piece]:
        data = self.data
        size = len(data)
        position = self.start
        counted_to, line = self.start, self.line  # line number at counted_to

        def line_at(offset: int) -> int:
            nonlocal counted_to, line
            line += data.count(b"\n", counted_to, offset)
            counted_to = offset
            return line

        begin: int | None = None  # first character of the current statement
        content = False  # the statement holds something besides comments
        words: list[str] = []
        in_function = False
        paren_depth = begin_depth = 0
        while True:
            if begin is None:
                # The common start of a statement, plain words and spaces, in one step.
                leading = _LEADING_WORDS.match(data, position)
                if leading is not None:
                    begin = leading.start(1)
                    content = True
                    for found in leading.groups():
                        if found:
                            words.append(found.decode("utf-8", "replace").upper())
                            in_function = _defines_function(words)
                            if in_function:
                                begin_depth = _body_depth(words[-1], begin_depth)
                    position = leading.end()
            pattern = _WORDS if len(words) < WORDS_KEPT or in_function else _FAST
            match = pattern.search(data, position)
            gap_end = match.start() if match else size
            if not content and _NOT_SPACE.search(data, position, gap_end):
                content = True
                if begin is None:
                    begin = _NOT_SPACE.search(data, position, gap_end).start()  # type: ignore[union-attr]
            if match is None:
                break
            kind = match.lastgroup
            if kind == "line":
                position = match.end()
                continue
            if kind == "block":
                position = _end_of_block(data, match.end())
                continue
            if kind == "backslash":
                end = data.find(b"\n", match.start())
                end = size if end < 0 else end
                name = data[match.end() : end].split(None, 1)
                yield MetaCommand(
                    match.start(),
                    end,
                    line_at(match.start()),
                    name[0].decode("utf-8", "replace") if name else "",
                    inside_statement=content,
                )
                # psql runs or drops the statement so far; either way a new one starts.
                begin, content, words, in_function = None, False, [], False
                paren_depth = begin_depth = 0
                position = end
                continue
            if begin is None:
                begin = match.start()
            if kind != "semicolon":
                content = True
            if kind == "semicolon":
                position = match.end()
                if paren_depth or begin_depth:
                    continue
                if content:
                    statement_line = line_at(begin)
                    if (
                        words[:1] == ["COPY"]
                        and _COPY_FROM_STDIN.search(data, begin, position) is not None
                    ):
                        yield CopyFromStdin(begin, position, statement_line, tuple(words))
                        position = yield from self._copy_data(position, line_at)
                    else:
                        yield Statement(begin, position, statement_line, tuple(words))
                begin, content, words, in_function = None, False, [], False
                paren_depth = begin_depth = 0
            elif kind == "word":
                word = match.group().decode("utf-8", "replace").upper()
                if len(words) < WORDS_KEPT:
                    words.append(word)
                    in_function = _defines_function(words)
                if in_function and not paren_depth:
                    begin_depth = _body_depth(word, begin_depth)
                position = match.end()
            elif kind == "open":
                paren_depth += 1
                position = match.end()
            elif kind == "close":
                paren_depth = max(paren_depth - 1, 0)
                position = match.end()
            elif kind == "dollar":
                close = data.find(match.group(), match.end())
                position = size if close < 0 else close + len(match.group())
            else:
                escapes = kind == "estring" or (kind == "string" and not self.standard_strings)
                end_pattern = (
                    _IDENT_END
                    if kind == "ident"
                    else _ESCAPE_STRING_END
                    if escapes
                    else _STANDARD_STRING_END
                )
                quoted = end_pattern.match(data, match.end())
                position = size if quoted is None else quoted.end()
        if content and begin is not None:
            yield Statement(begin, size, line_at(begin), tuple(words))

    def _copy_data(
        self, position: int, line_at: Callable[[int], int]
    ) -> Generator[Piece, None, int]:
        """The data after a COPY FROM STDIN ending at `position`: from the next line to `\\.`."""
        data = self.data
        newline = data.find(b"\n", position)
        rest_of_line = data[position : len(data) if newline < 0 else newline]
        trailing = bool(rest_of_line.strip()) and not rest_of_line.strip().startswith(b"--")
        start = len(data) if newline < 0 else newline + 1
        close = _COPY_END.search(data, start)
        end = len(data) if close is None else close.start()
        after = len(data) if close is None else close.end()
        yield CopyData(start, end, line_at(start), trailing)
        return after


def _defines_function(words: list[str]) -> bool:
    """CREATE [OR REPLACE] FUNCTION|PROCEDURE: psql then tracks BEGIN ... END depth."""
    if words[:1] != ["CREATE"] or len(words) < 2:
        return False
    if words[1] in _FUNCTION_WORDS:
        return True
    return words[1:3] == ["OR", "REPLACE"] and len(words) == 4 and words[3] in _FUNCTION_WORDS


def _body_depth(word: str, depth: int) -> int:
    """psql's rule for SQL-standard bodies: BEGIN ... END, and CASE ... END inside one,
    hold semicolons that do not end the statement."""
    if word == "BEGIN" or (word == "CASE" and depth):
        return depth + 1
    if word == "END" and depth:
        return depth - 1
    return depth


def _end_of_block(data: bytes, position: int) -> int:
    """Past the */ that closes a block comment opened just before `position` (they nest)."""
    depth = 1
    for edge in _BLOCK_EDGE.finditer(data, position):
        depth += 1 if edge.group() == b"/*" else -1
        if depth == 0:
            return edge.end()
    return len(data)


def mentions_lexing_settings(data: bytes) -> bool:
    """Whether any statement of `data` may change how the text after it is read."""
    return _LEXING_SETTINGS.search(data) is not None


def changes_lexing(data: bytes, statement: Statement) -> bool:
    """Whether `statement` may change how the text after it is read (standard_conforming_strings)."""
    return _LEXING_SETTINGS.search(data, statement.start, statement.end) is not None


_SET_STANDARD_STRINGS = re.compile(
    rb"^\s*(?:SET\s+(?:SESSION\s+|LOCAL\s+)?standard_conforming_strings\s*(?:=|\bTO\b)\s*"
    rb"'?(?P<value>[A-Za-z0-9]+)'?\s*;?\s*$"
    rb"|RESET\s+(?:ALL|standard_conforming_strings)\s*;?\s*$)",
    re.IGNORECASE,
)


def standard_strings_after(statement: bytes, current: bool) -> bool | None:
    """The value a plain `SET standard_conforming_strings ...` leaves, or None if unknown.

    For reading a file without a server; with one, ask the server instead.
    """
    match = _SET_STANDARD_STRINGS.match(statement)
    if match is None:
        return None
    value = match["value"]
    if value is None or value.upper() == b"DEFAULT":
        return True  # RESET: the server default, on since PostgreSQL 9.1
    lowered = value.lower()
    if lowered in (b"on", b"true", b"yes", b"1"):
        return True
    if lowered in (b"off", b"false", b"no", b"0"):
        return False
    return None
