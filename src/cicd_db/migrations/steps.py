"""The pieces a file is planned into (a Batch of statements sent as one query, a Copy
with its data), taken one statement at a time as psql sends them, numbered as the
server counts them, and cut where a file's leading statements end. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from cicd_db.sqltext import CopyData, Scanner, Statement


@dataclass(frozen=True)
class Batch:
    """Statements sent to the server as one query: `data[start:end]`."""

    start: int
    end: int
    line: int
    standard_strings: bool  # how '...' strings were read in it
    # Its last statement may change how the rest is read; the server's answer
    # decides (the expectation is `standard_strings_after`, None if unknown).
    changes_lexing: bool = False
    standard_strings_after: bool | None = None
    # A file's first batch, planned from the file's start, only: where the file's leading
    # statements that take no snapshot end (in this batch or a later one), and whether one
    # of them sets the transaction's own characteristics (lead_end); None on every other.
    quiet_end: int | None = None
    sets_transaction: bool = False


@dataclass(frozen=True)
class Copy:
    """A `COPY ... FROM STDIN` statement and the data lines that follow it in the file."""

    statement: Statement
    data: CopyData

    @property
    def end(self) -> int:
        """Where it ends in its file: after its data (the `\\.` line left out)."""
        return self.data.end


Step = Batch | Copy


def one_by_one(data: bytes, step: Step, after: int | None = None) -> Iterator[Step]:
    """The statements of a step one at a time, as psql sends them: a batch each, with the
    block comments before it (psql keeps those in the statement it sends, which is what
    current_query() shows; line comments and spaces before it, it drops). `after`: where
    the step before it ended (0 for a file's first), to find the first statement's."""
    if isinstance(step, Copy):
        yield step
    else:
        yield from each_statement(data, step, after)


def each_statement(data: bytes, batch: Batch, after: int | None = None) -> Iterator[Batch]:
    """one_by_one() of a batch."""
    scanner = Scanner(
        data[: batch.end],
        standard_strings=batch.standard_strings,
        start=batch.start,
        line=batch.line,
    )
    for piece in scanner:
        if isinstance(piece, Statement):
            start = piece.start if after is None else _sent_from(data, after, piece.start)
            line = piece.line - data.count(b"\n", start, piece.start)
            yield Batch(start, piece.end, line, batch.standard_strings)
            after = piece.end
        else:
            after = None  # a meta-command line: what comes before it is not sent


_SKIPPED = re.compile(rb"(?:\s+|--[^\n\r]*)+")


def _sent_from(data: bytes, after: int, start: int) -> int:
    """Where psql's text of the statement at `start` begins, the previous one ending at
    `after`: at the first block comment between them, else at the statement itself."""
    skipped = _SKIPPED.match(data, after, start)
    at = skipped.end() if skipped else after
    return at if data.startswith(b"/*", at) and at < start else start


def as_psql_sends(data: bytes, batch: Batch) -> bytes:
    """The batch's text with each character that is not ASCII in what psql would not send
    (the spaces and line comments before each statement, up to a block comment: see
    _sent_from) made a space. The server converts the whole text of a query to its
    encoding: an em dash in a comment between two statements stopped a file on a LATIN1
    database that psql applies, since psql never sends that comment. A character for a
    character, so the server's positions and the lines stay as they were."""
    text = data[batch.start : batch.end]
    if text.isascii():
        return text
    scanner = Scanner(
        data[: batch.end],
        standard_strings=batch.standard_strings,
        start=batch.start,
        line=batch.line,
    )
    statements = [piece for piece in scanner if isinstance(piece, Statement)]
    return spaced_between(data, statements, batch.start, batch.end)


def spaced_between(data: bytes, statements: list[Statement], start: int, end: int) -> bytes:
    """`data[start:end]`, which holds `statements`, with what lies before each of them
    spaced as psql does not send it (_spaced_gap): as_psql_sends, and the spans the
    search for an unparsed statement sends (unparsed.first_unparsed)."""
    sent = bytearray()
    at = start
    for statement in statements:
        sent += _spaced_gap(data, at, statement.start) + data[statement.start : statement.end]
        at = statement.end
    return bytes(sent + data[at:end])


def _spaced_gap(data: bytes, at: int, start: int) -> bytes:
    """`data[at:start]`, what lies before a statement (at `start`) since the one before
    it ended (at `at`), with each character that is not ASCII made a space in the part
    psql does not send (_sent_from)."""
    skipped = _SKIPPED.match(data, at, start)
    unsent = skipped.end() if skipped else at
    if data[at:unsent].isascii():
        return data[at:start]
    spaced = "".join(c if c.isascii() else " " for c in data[at:unsent].decode("utf-8", "replace"))
    return spaced.encode() + data[unsent:start]


def nth_statement(data: bytes, batch: Batch, index: int) -> Statement | None:
    """The batch's statement number `index` (0-based), as the server counted them."""
    scanner = Scanner(
        data[: batch.end],
        standard_strings=batch.standard_strings,
        start=batch.start,
        line=batch.line,
    )
    for count, piece in enumerate(scanner):
        if count == index and isinstance(piece, Statement):
            return piece
    return None


def split_at(data: bytes, steps: tuple[Step, ...], offset: int) -> tuple[tuple[Step, ...], ...]:
    """The steps before `offset` and those from it; a batch that spans it is cut in two.
    `offset` is a statement's end (lead_end)."""
    head: list[Step] = []
    tail: list[Step] = []
    for step in steps:
        if isinstance(step, Batch) and step.end <= offset:
            head.append(replace(step, quiet_end=None, sets_transaction=False))
        elif isinstance(step, Batch) and step.start < offset:
            head.append(
                replace(
                    step, end=offset, changes_lexing=False, standard_strings_after=None,
                    quiet_end=None, sets_transaction=False,
                )
            )  # fmt: skip
            line = step.line + data.count(b"\n", step.start, offset)
            tail.append(
                replace(step, start=offset, line=line, quiet_end=None, sets_transaction=False)
            )
        else:
            tail.append(step)
    return tuple(head), tuple(tail)


def lead_end(
    steps: tuple[Step, ...], standard_strings: bool, *, isolated: bool = False
) -> int | None:
    """Where the runner's first query of its own goes in a file's transaction (which takes
    a snapshot): after the file's leading statements that take none, when one of them
    sets the transaction's characteristics (which must come before any query), or when
    the transaction is `isolated` (repeatable read or serializable by default: its
    snapshot must be taken where psql's is, after a leading LOCK's wait); else None,
    before the file. Only for a first batch planned as the server reads strings
    (`standard_strings`, the server's setting). Found by plan(): a lookup."""
    first = steps[0] if steps else None
    if not isinstance(first, Batch) or first.standard_strings != standard_strings:
        return None
    return first.quiet_end if first.sets_transaction or isolated else None
