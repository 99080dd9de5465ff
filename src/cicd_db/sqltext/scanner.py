"""The scanner: a file's pieces in order (statements, COPY data, meta-commands), where
each ends as psql's lexer ends it, with line numbers kept as it goes; and a text's
comments, as the server drops them."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from cicd_db.sqltext.lexer import (
    BLOCK_EDGE,
    BRACKETS,
    CONTINUATION,
    COPY_FROM_STDIN,
    ESCAPED_STRING,
    FUNCTION_WORDS,
    LEADING_WORDS,
    NOT_SPACE,
    PARENTHESES,
    PATTERNS,
    PSQL_VARIABLES,
    STANDARD_STRING,
    WORDS_KEPT,
)


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: `data[start:end]`, its semicolon included when it has one."""

    start: int
    end: int
    line: int  # 1-based line of its first character
    words: tuple[str, ...]  # its first unquoted words, upper-cased, at most WORDS_KEPT
    # The first psql variable in it that the runner must refuse: (offset, as written).
    # One psql would substitute (a name psql defines itself, PSQL_VARIABLES), or any
    # name outside parentheses and brackets, where a `:` cannot be SQL. Elsewhere an
    # undefined name is sent as it is by psql too (`a[lo:hi]`, `json_object('k':v)`).
    variable: tuple[int, str] | None = None
    # Where an E'...' string goes on, past a line's end, in a '...' that psql ends
    # elsewhere than the server (offset of its quote): see _continued_apart.
    continued: int | None = None

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
        paren_depth = begin_depth = bracket_depth = 0
        # Brackets matter only for a psql variable: counted up to `brackets_to` as
        # words go by, and from there only when a variable turns up (one pass less
        # over the bulk of a large file).
        brackets_to = position
        variable: tuple[int, str] | None = None
        continued: int | None = None
        while True:
            if begin is None:
                # The common start of a statement, plain words and spaces, in one step.
                leading = LEADING_WORDS.match(data, position)
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
            match = PATTERNS[self.standard_strings, not fast].search(data, position)
            gap_end = match.start() if match else size
            if fast:
                paren_depth = _walk_parentheses(data, position, gap_end, paren_depth)
            if not content and NOT_SPACE.search(data, position, gap_end):
                content = True
                if begin is None:
                    begin = NOT_SPACE.search(data, position, gap_end).start()  # type: ignore[union-attr]
            if match is None:
                break
            kind = match.lastgroup
            if kind == "line":
                position = match.end()
                continue
            if kind == "block":
                position = _end_of_block(data, match.end())
                if position < 0:
                    # Never closed: psql sends it (with the statement before it, if any)
                    # at the file's end, and PostgreSQL refuses it; so it is a statement.
                    if begin is None:
                        begin = match.start()
                    content, position = True, size
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
                paren_depth = begin_depth = bracket_depth = 0
                variable = None
                continued = None
                position = brackets_to = end
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
                    if words[:1] == ["COPY"] and _copies_from_stdin(
                        data, begin, position, self.standard_strings
                    ):
                        yield CopyFromStdin(
                            begin, position, statement_line, tuple(words), variable, continued
                        )
                        position = yield from self._copy_data(position, line_at)
                    else:
                        yield Statement(
                            begin, position, statement_line, tuple(words), variable, continued
                        )
                begin, content, words, in_function = None, False, [], False
                paren_depth = begin_depth = bracket_depth = 0
                variable = None
                continued = None
                brackets_to = position
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
            elif kind == "bracket":
                bracket_depth += 1
                position = match.end()
            elif kind == "unbracket":
                bracket_depth = max(bracket_depth - 1, 0)
                position = match.end()
            elif kind == "variable":
                named = match.group().strip(b":'\"{?}").decode("utf-8", "replace")
                if fast:
                    bracket_depth = _bracket_depth(
                        data, brackets_to, match.start(), bracket_depth, self.standard_strings
                    )
                outside = not paren_depth and not bracket_depth
                if variable is None and (outside or named in PSQL_VARIABLES):
                    variable = (match.start(), match.group().decode("utf-8", "replace"))
                position = match.end()
            elif kind == "dollar":
                close = data.find(match.group(), match.end())
                position = size if close < 0 else close + len(match.group())
            elif kind in ("quoted", "typecast"):
                position = match.end()
                if (
                    continued is None
                    and self.standard_strings
                    and data[match.start()] in b"eE"
                    and kind == "quoted"
                ):
                    continued = _continued_apart(data, position)
            else:  # a quote that is never closed: the rest is in it, as psql reads it
                position = size
            if not fast or kind == "variable":
                brackets_to = position
        if content and begin is not None:
            yield Statement(begin, size, line_at(begin), tuple(words), variable, continued)

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


def _continued_apart(data: bytes, end: int) -> int | None:
    """Where the E'...' string that ends at `end` goes on in a part that psql and the
    server end in different places (the offset of that part's quote), or None.

    The server reads `E'a'`, a line's end, and `'b'` as one string, its parts all with
    backslash escapes. psql reads a line (to a line feed) at a time: it ends the string
    at the line's end and reads `'b'` as a new string, standard where
    standard_conforming_strings is on; within one line (parts split by a carriage return
    alone) it goes on with the string as the server does. Where a part holds `\\'`, the
    two then end it apart, and psql ends its statement where the server would not: sent
    in one query, the server would run what psql refuses.
    """
    psql_standard = False  # how psql reads the part: past a line feed, as a new string
    while True:
        continuation = CONTINUATION.match(data, end)
        if continuation is None:
            return None
        quote = continuation.end() - 1
        psql_standard = psql_standard or b"\n" in data[end:quote]
        server = ESCAPED_STRING.match(data, quote)
        psql = (STANDARD_STRING if psql_standard else ESCAPED_STRING).match(data, quote)
        if server is None and psql is None:
            return None  # never closed either way: both send it so, and the server refuses it
        if server is None or psql is None or server.end() != psql.end():
            return quote
        end = server.end()


def _copies_from_stdin(data: bytes, start: int, end: int, standard_strings: bool) -> bool:
    """The COPY statement `data[start:end]` reads FROM STDIN, as the server reads it: a
    comment may stand between the two words."""
    if COPY_FROM_STDIN.search(data, start, end) is not None:
        return True
    text = data[start:end]
    if b"/*" not in text and b"--" not in text:
        return False
    return (
        COPY_FROM_STDIN.search(without_comments(text, standard_strings=standard_strings))
        is not None
    )


def _walk_parentheses(data: bytes, start: int, end: int, depth: int, pair: bytes = b"()") -> int:
    """The depth after `data[start:end]`, where "(" opens and ")" closes down to 0, never below
    (or "[" and "]", with `pair`)."""
    opening, closing = pair[:1], pair[1:]
    closes = data.count(closing, start, end)
    if closes <= depth:  # it cannot reach 0 early, whatever the order: count
        return depth + data.count(opening, start, end) - closes
    edges = PARENTHESES if pair == b"()" else BRACKETS
    for edge in edges.finditer(data, start, end):
        depth = depth + 1 if edge.group() == opening else max(depth - 1, 0)
    return depth


def _bracket_depth(data: bytes, start: int, end: int, depth: int, standard_strings: bool) -> int:
    """The depth of square brackets after `data[start:end]`, outside quotes and comments."""
    pattern, position = PATTERNS[standard_strings, False], start
    while position < end:
        match = pattern.search(data, position, end)
        gap_end = end if match is None else match.start()
        depth = _walk_parentheses(data, position, gap_end, depth, b"[]")
        if match is None:
            break
        kind = match.lastgroup
        if kind == "block":
            position = _end_of_block(data, match.end())
            if position < 0:
                break
        elif kind == "dollar":
            close = data.find(match.group(), match.end())
            position = len(data) if close < 0 else close + len(match.group())
        else:
            position = match.end()
    return depth


def _end_of_copy(data: bytes, start: int) -> tuple[int, int]:
    """Where COPY data from `start` ends (at a line that is `\\.`, its line end included:
    psql reads `\\.` as the end only on a whole line, and sends one that ends the file
    without a line end as data, for the server to judge), and where the text goes on
    after that line; both the end of `data` when no such line comes."""

    def next_candidate(after: int) -> int:
        found = data.find(b"\n\\.", after)
        return found + 1 if found >= 0 else -1

    candidate = start if data.startswith(b"\\.", start) else next_candidate(start)
    while candidate >= 0:
        newline = data.find(b"\n", candidate)
        line_end = len(data) if newline < 0 else newline
        if newline >= 0 and data[candidate:line_end] in (b"\\.", b"\\.\r"):
            return candidate, newline + 1
        candidate = next_candidate(candidate)
    return len(data), len(data)


def _defines_function(words: list[str]) -> bool:
    """CREATE [OR REPLACE] FUNCTION|PROCEDURE: psql then tracks BEGIN ... END depth."""
    if words[:1] != ["CREATE"] or len(words) < 2:
        return False
    if words[1] in FUNCTION_WORDS:
        return True
    return words[1:3] == ["OR", "REPLACE"] and len(words) == 4 and words[3] in FUNCTION_WORDS


def _body_depth(word: str, depth: int) -> int:
    """psql's rule for SQL-standard bodies: BEGIN ... END, and CASE ... END inside one,
    hold semicolons that do not end the statement."""
    if word == "BEGIN" or (word == "CASE" and depth):
        return depth + 1
    if word == "END" and depth:
        return depth - 1
    return depth


def _end_of_block(data: bytes, position: int) -> int:
    """Past the */ that closes a block comment opened just before `position` (they nest),
    or -1 when none does."""
    depth = 1
    for edge in BLOCK_EDGE.finditer(data, position):
        depth += 1 if edge.group() == b"/*" else -1
        if depth == 0:
            return edge.end()
    return -1


_LINE_END = re.compile(rb"[\r\n]")


def leading_comments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The lines a file opens with, numbered from 1, up to its first line that is
    neither blank nor a `--` comment. A line ends at LF, CR LF or a CR alone, as a
    `--` comment ends for PostgreSQL. Line by line: a 50 MB file is not split whole."""
    start, number = 0, 0
    while start < len(data):
        found = _LINE_END.search(data, start)
        end = found.start() if found else len(data)
        line, number = data[start:end], number + 1
        start = end + (2 if data[end : end + 2] == b"\r\n" else 1)
        stripped = line.strip()
        if stripped and not stripped.startswith(b"--"):
            return
        yield number, line


def without_comments(text: bytes, *, standard_strings: bool = True) -> bytes:
    """`text` with each comment replaced by a space, as the server reads it: quoted
    strings, identifiers and dollar quotes are kept whole, `--` inside them too."""
    pattern, kept, position = PATTERNS[(standard_strings, False)], [], 0
    while (match := pattern.search(text, position)) is not None:
        kind, start = match.lastgroup, match.start()
        if kind in ("line", "block"):
            kept += [text[position:start], b" "]
            position = match.end() if kind == "line" else _end_of_block(text, match.end())
            if position < 0:  # a comment never closed runs to the end
                position = len(text)
            continue
        if kind == "dollar":
            close = text.find(match.group(), match.end())
            end = len(text) if close < 0 else close + len(match.group())
        else:  # quoted text, `;` or `\\` as they are; an unclosed quote runs to the end
            end = len(text) if kind == "unterminated" else match.end()
        kept.append(text[position:end])
        position = end
    return b"".join([*kept, text[position:]])


# Settings the server applies to a query's text as a whole, as it receives and parses
# it, before any statement in it runs: the encoding it converts the text from, and
