"""Reading a migration file the way psql reads it: where statements end, what is not SQL.

The runner does not decide what a statement means; PostgreSQL's parser does,
since a transactional file is sent to the server whole (docs/design.md). This
scanner only finds what the server cannot be sent or what the runner must
know, following the rules of psql's own lexer:

- where each statement ends: a `;` outside quotes, comments and parentheses,
  and outside a SQL-standard function body (`CREATE FUNCTION ... BEGIN ATOMIC
  ... END`, with `CASE ... END` inside it);
- `COPY ... FROM STDIN` and the data lines after it, up to a line `\\.`;
- psql meta-commands (a backslash outside quotes), which are not SQL;
- psql variables (`:name`, `:'name'`, `:"name"`, `:{?name}` outside quotes and
  comments) that psql would substitute, or that cannot be SQL where they stand.

Lexical rules, as psql has them: an unquoted identifier may hold `$`
(`do$llar$s` is one word, not a dollar quote); `'...'` strings take backslash
escapes only when `standard_conforming_strings` is off, `E'...'` always;
`"quoted identifiers"`; `$tag$` dollar quotes; `--` and nested `/* */` comments;
`B'...'`, `X'...'` and `U&'...'` are read as standard strings whatever the setting.

It reads bytes, so a 50 MB file costs one pass and no copy, and keeps line
numbers as it goes. Reads its input only; never talks to a server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator, Mapping
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
# psql reads bit, hex and Unicode-escape strings as standard strings whatever
# standard_conforming_strings says (the server refuses U&'...' when it is off).
_ALWAYS_STANDARD = _NOT_AFTER_IDENT + rb"(?:[bBxX]|[uU]&)" + _STANDARD
# psql's variable syntax (psqlscan.l): `:name`, `:'name'`, `:"name"`, `:{?name}`,
# a name of letters, digits, `_` and any non-ASCII byte; `::` is a cast, never one.
_VARIABLE_CHAR = rb"[A-Za-z\x80-\xff_0-9]"
_VARIABLE = (
    rb"(?P<typecast>::)"
    rb"|(?P<variable>:(?:" + _VARIABLE_CHAR + rb"+|'" + _VARIABLE_CHAR + rb"+'"
    rb'|"' + _VARIABLE_CHAR + rb'+"|\{\?' + _VARIABLE_CHAR + rb"+\}))"
)
# The variables psql 15 and 18 define themselves (`\set` after a query and an error,
# plus SERVICE): psql replaces `:DBNAME` with its value before the server sees it.
PSQL_VARIABLES = frozenset(
    [
        "AUTOCOMMIT",
        "COMP_KEYWORD_CASE",
        "DBNAME",
        "ECHO",
        "ECHO_HIDDEN",
        "ENCODING",
        "ERROR",
        "FETCH_COUNT",
        "HIDE_TABLEAM",
        "HIDE_TOAST_COMPRESSION",
        "HISTCONTROL",
        "HISTSIZE",
        "HOST",
        "IGNOREEOF",
        "LAST_ERROR_MESSAGE",
        "LAST_ERROR_SQLSTATE",
        "ON_ERROR_ROLLBACK",
        "ON_ERROR_STOP",
        "PIPELINE_COMMAND_COUNT",
        "PIPELINE_RESULT_COUNT",
        "PIPELINE_SYNC_COUNT",
        "PORT",
        "PROMPT1",
        "PROMPT2",
        "PROMPT3",
        "QUIET",
        "ROW_COUNT",
        "SERVER_VERSION_NAME",
        "SERVER_VERSION_NUM",
        "SERVICE",
        "SHOW_ALL_RESULTS",
        "SHOW_CONTEXT",
        "SINGLELINE",
        "SINGLESTEP",
        "SQLSTATE",
        "USER",
        "VERBOSITY",
        "VERSION",
        "VERSION_NAME",
        "VERSION_NUM",
        "WATCH_INTERVAL",
    ]
)


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
        + _ALWAYS_STANDARD
        + rb"|"
        + string
        + rb'|"[^"]*(?:""[^"]*)*")'
        rb"|(?P<unterminated>['\"])"
        rb"|(?P<dollar>" + _NOT_AFTER_IDENT + _DOLLAR + rb")"
        rb"|(?P<semicolon>;)"
        rb"|(?P<backslash>\\)"
        rb"|" + _VARIABLE
    )
    if words:
        pattern += (
            rb"|(?P<open>\()|(?P<close>\))|(?P<bracket>\[)|(?P<unbracket>\])"
            rb"|(?P<word>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)"
        )
    return re.compile(pattern, re.DOTALL)


class _Patterns(dict[tuple[bool, bool], re.Pattern[bytes]]):
    """The token patterns by (standard strings, words), each compiled when first needed:
    a run usually reads strings one way only, and every process start pays for a compile."""

    def __missing__(self, key: tuple[bool, bool]) -> re.Pattern[bytes]:
        self[key] = pattern = _tokens(*key)
        return pattern


_PATTERNS = _Patterns()
_PARENTHESES = re.compile(rb"[()]")
_BRACKETS = re.compile(rb"[\[\]]")
# Up to four words at a statement's start, when only spaces come between them;
# a word right before a quote may be a string's prefix (E'...'), so it stops there.
_WORD = rb"((?>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)(?!'))"
_LEADING_WORDS = re.compile(
    rb"\s*" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb")?)?)?"
)
_BLOCK_EDGE = re.compile(rb"/\*|\*/")
# What makes the server go on with a string after its closing quote: spaces (and
# `--` comments) holding a line's end, then a quote (its lexer's quotecontinue).
_CONTINUATION = re.compile(
    rb"(?:[ \t\f\v]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*+[\n\r])*+'"
)
_STANDARD_STRING = re.compile(_STANDARD, re.DOTALL)
_ESCAPED_STRING = re.compile(_ESCAPED, re.DOTALL)
_NOT_SPACE = re.compile(rb"\S")
# The server reads FROM STDOUT as FROM STDIN.
_COPY_FROM_STDIN = re.compile(rb"\bFROM\s+STD(?:IN|OUT)\b", re.IGNORECASE)
# Only standard_conforming_strings changes where psql and the server end a string
# (backslash_quote only makes the server refuse `\\'`, as an error).
_LEXING_SETTINGS = re.compile(rb"standard_conforming_strings", re.IGNORECASE)
_FUNCTION_WORDS = frozenset({"FUNCTION", "PROCEDURE"})
WORDS_KEPT = 4


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
        continuation = _CONTINUATION.match(data, end)
        if continuation is None:
            return None
        quote = continuation.end() - 1
        psql_standard = psql_standard or b"\n" in data[end:quote]
        server = _ESCAPED_STRING.match(data, quote)
        psql = (_STANDARD_STRING if psql_standard else _ESCAPED_STRING).match(data, quote)
        if server is None and psql is None:
            return None  # never closed either way: both send it so, and the server refuses it
        if server is None or psql is None or server.end() != psql.end():
            return quote
        end = server.end()


def _copies_from_stdin(data: bytes, start: int, end: int, standard_strings: bool) -> bool:
    """The COPY statement `data[start:end]` reads FROM STDIN, as the server reads it: a
    comment may stand between the two words."""
    if _COPY_FROM_STDIN.search(data, start, end) is not None:
        return True
    text = data[start:end]
    if b"/*" not in text and b"--" not in text:
        return False
    return (
        _COPY_FROM_STDIN.search(without_comments(text, standard_strings=standard_strings))
        is not None
    )


def _walk_parentheses(data: bytes, start: int, end: int, depth: int, pair: bytes = b"()") -> int:
    """The depth after `data[start:end]`, where "(" opens and ")" closes down to 0, never below
    (or "[" and "]", with `pair`)."""
    opening, closing = pair[:1], pair[1:]
    closes = data.count(closing, start, end)
    if closes <= depth:  # it cannot reach 0 early, whatever the order: count
        return depth + data.count(opening, start, end) - closes
    edges = _PARENTHESES if pair == b"()" else _BRACKETS
    for edge in edges.finditer(data, start, end):
        depth = depth + 1 if edge.group() == opening else max(depth - 1, 0)
    return depth


def _bracket_depth(data: bytes, start: int, end: int, depth: int, standard_strings: bool) -> int:
    """The depth of square brackets after `data[start:end]`, outside quotes and comments."""
    pattern, position = _PATTERNS[standard_strings, False], start
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
    """Past the */ that closes a block comment opened just before `position` (they nest),
    or -1 when none does."""
    depth = 1
    for edge in _BLOCK_EDGE.finditer(data, position):
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
    pattern, kept, position = _PATTERNS[(standard_strings, False)], [], 0
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
# whether the lexer refuses \' in a string (`SET NAMES` sets the encoding too).
_RECEIPT_SETTING = re.compile(rb"client_encoding|backslash_quote|\bNAMES\b", re.IGNORECASE)


def found_lowered(
    data: bytes,
    wanted: Mapping[str, bytes | re.Pattern[bytes]],
    overlap: int = 64,
    slice_bytes: int = 1 << 20,
) -> set[str]:
    """Which of `wanted` (by name: a lower-case text, or a pattern for lower-case text)
    occur somewhere in `data` lower-cased, read a slice at a time (no copy of a large
    file, and a case-sensitive search: many times faster than IGNORECASE), the slices
    overlapping by `overlap` bytes, more than a match spans. A pattern should begin with
    a literal, which the search then looks for first."""
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
    if _LEXING_SETTINGS.search(data, statement.start, statement.end) is None:
        return False
    text = without_comments(
        data[statement.start : statement.end], standard_strings=standard_strings
    )
    if _LEXING_SETTINGS.search(text) is None:
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
