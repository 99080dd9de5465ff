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

# What can hide a semicolon or end a statement, a quoted thing matched whole (one
# step for a string). Words are matched only while they matter (the first four of
# a statement, and inside a function definition); elsewhere parentheses between
# the tokens are counted rather than matched one by one.
_ESCAPED = rb"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'"  # backslash escapes: E'...', or '...' with them on
_STANDARD = rb"'[^']*(?:''[^']*)*'"
_DOLLAR = rb"\$(?:[" + _IDENT_START + rb"][" + _IDENT_START + rb"0-9]*)?\$"


def _tokens(standard_strings: bool, words: bool) -> re.Pattern[bytes]:
    string = _STANDARD if standard_strings else _ESCAPED
    pattern = (
        rb"(?P<line>--[^\n\r]*)"  # psql and the server end a comment at \r as at \n
        rb"|(?P<block>/\*)"
        rb"|(?P<quoted>"
        + _NOT_AFTER_IDENT
        + rb"[eE]"
        + _ESCAPED
        + rb"|"
        + string
        + rb'|"[^"]*(?:""[^"]*)*")'
        rb"|(?P<unterminated>['\"])"
        rb"|(?P<dollar>" + _NOT_AFTER_IDENT + _DOLLAR + rb")"
        rb"|(?P<semicolon>;)"
        rb"|(?P<backslash>\\)"
    )
    if words:
        pattern += (
            rb"|(?P<open>\()|(?P<close>\))"
            rb"|(?P<word>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)"
        )
    return re.compile(pattern, re.DOTALL)


_PATTERNS = {(standard, words): _tokens(standard, words) for standard in (True, False) for words in (True, False)}  # fmt: skip
_PARENTHESES = re.compile(rb"[()]")
# Up to four words at a statement's start, when only spaces come between them;
# a word right before a quote may be a string's prefix (E'...'), so it stops there.
_WORD = rb"((?>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)(?!'))"
_LEADING_WORDS = re.compile(
    rb"\s*" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb")?)?)?"
)
_BLOCK_EDGE = re.compile(rb"/\*|\*/")
_NOT_SPACE = re.compile(rb"\S")
_COPY_FROM_STDIN = re.compile(rb"\bFROM\s+STDIN\b", re.IGNORECASE)
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
            fast = len(words) >= WORDS_KEPT and not in_function
            match = _PATTERNS[self.standard_strings, not fast].search(data, position)
            gap_end = match.start() if match else size
            if fast:
                paren_depth = _walk_parentheses(data, position, gap_end, paren_depth)
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
            elif kind == "quoted":
                position = match.end()
            else:  # a quote that is never closed: the rest is in it, as psql reads it
                position = size
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
        end, after = _end_of_copy(data, start)
        yield CopyData(start, end, line_at(start), trailing)
        return after


def _walk_parentheses(data: bytes, start: int, end: int, depth: int) -> int:
    """The depth after `data[start:end]`, where "(" opens and ")" closes down to 0, never below."""
    closes = data.count(b")", start, end)
    if closes <= depth:  # it cannot reach 0 early, whatever the order: count
        return depth + data.count(b"(", start, end) - closes
    for edge in _PARENTHESES.finditer(data, start, end):
        depth = depth + 1 if edge.group() == b"(" else max(depth - 1, 0)
    return depth


def _end_of_copy(data: bytes, start: int) -> tuple[int, int]:
    """Where COPY data from `start` ends (at a line that is `\\.`), and where the text
    goes on after that line; both the end of `data` when no such line comes."""

    def next_candidate(after: int) -> int:
        found = data.find(b"\n\\.", after)
        return found + 1 if found >= 0 else -1

    candidate = start if data.startswith(b"\\.", start) else next_candidate(start)
    while candidate >= 0:
        newline = data.find(b"\n", candidate)
        line_end = len(data) if newline < 0 else newline
        if data[candidate:line_end] in (b"\\.", b"\\.\r"):
            return candidate, len(data) if newline < 0 else newline + 1
        candidate = next_candidate(candidate)
    return len(data), len(data)


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


def without_comments(text: bytes, *, standard_strings: bool = True) -> bytes:
    """`text` with each comment replaced by a space, as the server reads it: quoted
    strings, identifiers and dollar quotes are kept whole, `--` inside them too."""
    pattern, kept, position = _PATTERNS[(standard_strings, False)], [], 0
    while (match := pattern.search(text, position)) is not None:
        kind, start = match.lastgroup, match.start()
        if kind in ("line", "block"):
            kept += [text[position:start], b" "]
            position = match.end() if kind == "line" else _end_of_block(text, match.end())
            continue
        if kind == "dollar":
            close = text.find(match.group(), match.end())
            end = len(text) if close < 0 else close + len(match.group())
        else:  # quoted text, `;` or `\\` as they are; an unclosed quote runs to the end
            end = len(text) if kind == "unterminated" else match.end()
        kept.append(text[position:end])
        position = end
    return b"".join([*kept, text[position:]])


def mentions_lexing_settings(data: bytes, slice_bytes: int = 1 << 20) -> bool:
    """Whether any statement of `data` may change how the text after it is read.

    Lower-cased a slice at a time (a case-insensitive regex over 50 MB is 16 times
    slower), the slices overlapping by a name's length.
    """
    names = (b"standard_conforming_strings", b"backslash_quote")
    overlap = max(map(len, names))
    for start in range(0, len(data), slice_bytes):
        chunk = data[max(start - overlap, 0) : start + slice_bytes].lower()
        if any(name in chunk for name in names):
            return True
    return False


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
