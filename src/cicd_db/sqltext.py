"""Splitting a migration file into statements, the way psql does.

A single regular-expression scan that knows what can hide a semicolon in
PostgreSQL: '...' and E'...' strings, "quoted identifiers", $tag$ dollar quotes,
-- line comments and nested /* block comments */. It is about a hundred times
faster than sqlparse, which took two thirds of the runner's time on a hundred
small files (docs/benchmarks.md). Not handled: a SQL-standard function body
(`BEGIN ATOMIC ... END`) holding several statements; write such bodies as $$...$$.

Reads strings only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
      (?P<line>--[^\n]*)
    | (?P<block>/\*)
    | (?P<escaped>(?<![A-Za-z0-9_$])[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<string>'(?:[^']|'')*')
    | (?P<ident>"(?:[^"]|"")*")
    | (?P<dollar>\$(?:[^\W\d]\w*)?\$)
    | (?P<semicolon>;)
    """,
    re.VERBOSE | re.DOTALL,
)
_BLOCK_EDGE = re.compile(r"/\*|\*/")
_NOT_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first character
    text: str  # from its first character to its semicolon, comments inside kept

    @property
    def keyword(self) -> str:
        """The first word, upper-cased: SET, CREATE, ..."""
        return self.text.split(None, 1)[0].upper().rstrip(";") if self.text else ""


def statements(text: str) -> Iterator[Statement]:
    """The statements of `text` in order; comments and blank space between them are dropped."""
    position = 0
    start: int | None = None  # where the current statement's first code character is
    while True:
        match = _TOKEN.search(text, position)
        gap_end = match.start() if match else len(text)
        if start is None:
            code = _NOT_SPACE.search(text, position, gap_end)
            if code:
                start = code.start()
        if match is None:
            break
        kind = match.lastgroup
        if kind == "line":
            position = match.end()
            continue
        if kind == "block":
            position = _end_of_block(text, match.end())
            continue
        if start is None:
            start = match.start()  # a string, identifier, dollar quote or bare semicolon
        if kind == "dollar":
            close = text.find(match.group(), match.end())
            position = len(text) if close < 0 else close + len(match.group())
        elif kind == "semicolon":
            if text[start : match.end()].strip() != ";":
                yield Statement(text.count("\n", 0, start) + 1, text[start : match.end()])
            start = None
            position = match.end()
        else:
            position = match.end()
    if start is not None:
        yield Statement(text.count("\n", 0, start) + 1, text[start:].rstrip())


def _end_of_block(text: str, position: int) -> int:
    """Past the */ that closes a block comment opened just before `position` (they nest)."""
    depth = 1
    for edge in _BLOCK_EDGE.finditer(text, position):
        depth += 1 if edge.group() == "/*" else -1
        if depth == 0:
            return edge.end()
    return len(text)
