"""Planning a file's text into the queries that apply it as psql would, and refusing
what may not run. Pure: reads bytes, knows no server and no file system.

PostgreSQL decides what a statement is: a transactional file goes to the server
in as few simple-protocol queries as psql's own stopping points allow (COPY data,
pg_dump's `\\restrict` lines, a statement that changes how strings read, and
slices of about BATCH_BYTES); a no-transaction file goes one statement at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cicd_db.errors import ConfigError
from cicd_db.migrations.directives import NO_TRANSACTION_MARKER, earlier_checksums
from cicd_db.migrations.kinds import (
    COPY_TO_STDOUT,
    SESSION_SETTINGS,
    TAKE_NO_SNAPSHOT,
    check_concurrent_index,
    controls_transaction,
    outside_transactions_only,
    sets_a_role,
    sets_the_transaction,
)
from cicd_db.migrations.steps import Batch, Copy, Step
from cicd_db.sqltext import (
    CopyData,
    CopyFromStdin,
    MetaCommand,
    Scanner,
    Statement,
    found_lowered,
    may_change_lexing,
    names_a_receipt_setting,
    standard_strings_after,
    without_comments,
)

# A large file goes to the server in slices of whole statements of about this
# size, so that neither side holds the parse trees of 50 MB of SQL at once.
BATCH_BYTES = 1 << 20
# pg_dump (17.6, 18 and later) brackets its output with these psql commands; they
# only switch psql's own meta-commands off and on, so the runner, which runs
# none, may skip them.
IGNORED_META_COMMANDS = frozenset({"restrict", "unrestrict"})


# What the runner must know a file names anywhere, found in one pass over its text
# lower-cased (names_in): the setting that changes how strings read; one the server
# applies to a query's whole text as it receives it (client_encoding, SET NAMES,
# backslash_quote); current_query(); a change of a database's or a role's settings,
# which only sessions opened after it take. Each begins with a literal, which is fast.
RECEIPT_NAMES = ("client_encoding", "backslash_quote", "names")
# What stands between two words: white space and comments, a `--` one ended at a line
# feed or a carriage return, as the server ends it (a nested /* */ is read by names_in).
_GAP = rb"(?:\s|/\*.*?\*/|--[^\n\r]*[\n\r])+"
# Functions whose work only the end of a session undoes (NAMED).
SESSION_BOUND = (
    "dblink",
    "replication_slot",
    "replication_origin_session",
    "backup_start",
    "start_backup",
)
# The patterns of NAMED whose words comments may stand between.
GAPPED = ("defaults", "custom", "event trigger", "load")
NAMED: dict[str, bytes | re.Pattern[bytes]] = {
    "lexing": b"standard_conforming_strings",
    **{name: name.encode() for name in RECEIPT_NAMES},
    "query": b"current_query",
    # Comments may stand between the two words; a statement computed from pieces
    # (format('ALTER %s ...', 'DATABASE')) is not seen.
    "defaults": re.compile(rb"alter" + _GAP + rb"(?:database|role|user)\b", re.DOTALL),
    # A setting of a name of the user's (`app.tenant`): set once, by SET or set_config(),
    # it stays defined in the session (RESET ALL empties it, nothing removes it), where
    # psql's next file, in a session of its own, would not find it. set_config() of a
    # name with no dot (pg_dump's `set_config('search_path', '', false)`) is not one.
    "custom": re.compile(
        rb"set_config\s*\(\s*(?:e?'[^']*(?:\.|'\s*\|\|)|[^'\s])|\bset"
        + _GAP
        + rb"(?:(?:session|local)\s+)?\"?[a-z_][a-z0-9_$]*\"?\s*\.",
        re.DOTALL,
    ),
    # An event trigger made or changed: a login one sets up each new session (PostgreSQL
    # 17), which the files after it must start in.
    "event trigger": re.compile(rb"\bevent" + _GAP + rb"trigger\b", re.DOTALL),
    # A library loaded (its hooks, its settings) and the random seed stay with a session.
    "load": re.compile(rb"\bload" + _GAP + rb"e?'", re.DOTALL),
    "setseed": b"setseed",
    # What a session holds that no reset gives back, only the session's end: a dblink
    # connection (and what it holds on its server: a transaction, locks), a temporary
    # replication slot, a replication origin set up for it, a backup begun in it.
    **{name: name.encode() for name in SESSION_BOUND},
}
# What NAMED finds that a new session must follow (files.Migration.needs_new_session).
NEW_SESSION_AFTER = frozenset(
    ("defaults", "custom", "event trigger", "load", "setseed", *SESSION_BOUND)
)


def names_in(data: bytes) -> set[str]:
    """Which of NAMED `data` names, in any case. Where comments the patterns do not read
    (a nested /* /* */ */) may stand between two words, `data` is read again with its
    comments taken out, as the server reads them."""
    found = found_lowered(data, NAMED)
    missed = {name: NAMED[name] for name in GAPPED if name not in found}
    if missed and b"/*" in data:
        found |= found_lowered(without_comments(data), missed)
    return found


def plan(
    filename: str,
    data: bytes,
    *,
    transactional: bool,
    standard_strings: bool = True,
    start: int = 0,
    line: int = 1,
    names: set[str] | None = None,
) -> tuple[Step, ...]:
    """The queries that apply `data` as psql would, from `start`; refuses what may not run.

    A transactional file becomes as few batches as psql's own stopping points
    allow; a no-transaction file one batch per statement, as each must run on
    its own.

    Every statement is checked, whatever comes before it. After a statement that
    changes how '...' strings read, the rest is read as it leaves them; after one
    whose effect only running it tells (`standard_strings_after` is None: a DO
    block, set_config of computed values, any other text naming the setting), the
    rest is planned as if it changed nothing (the runner plans it again if the
    server says otherwise) and checked both ways: what either reading refuses is
    refused before anything runs. `names`: names_in(data), when already known.
    """
    if start == 0:  # the opening comments' directives, checked (their checksums unused)
        earlier_checksums(filename, data, transactional=transactional)
    steps: list[Step] = []
    found = names_in(data) if names is None else names
    named = "lexing" in found
    receipt = not found.isdisjoint(RECEIPT_NAMES)
    # The other readings still to check, and those checked: (offset, standard strings,
    # statements counted so far in a no-transaction file, capped at 2).
    forks: list[tuple[int, int, bool, int, str]] = []
    checked: set[tuple[int, bool, int]] = set()
    _Pass(
        filename, data, transactional, standard_strings, start, line, 0, "", steps, named,
        forks, checked, receipt=receipt,
    ).run(count=start == 0)  # fmt: skip
    while forks:
        at, at_line, reading, counted, note = forks.pop()
        _Pass(
            filename, data, transactional, reading, at, at_line, counted, note, None, named,
            forks, checked, receipt=receipt,
        ).run(count=start == 0)  # fmt: skip
    return tuple(steps)


_RESTRICT_KEY = re.compile(rb"[^\s'\"`:\\]+")


def _follow_restrict(
    data: bytes, piece: MetaCommand, restricted: bytes | None, refuse: Callable[..., Exception]
) -> bytes | None:
    """psql's restricted mode after `piece` (its key, or None), or a refusal where psql
    refuses the line: what the runner skips must be what psql runs."""
    words = data[piece.start : piece.end].split(None, 2)[1:2]
    key = words[0] if words and _RESTRICT_KEY.fullmatch(words[0]) else None
    if words and key is None:
        why = "its key is not a plain word, as pg_dump writes it"
    elif key is None:
        why = "it has no key, which psql refuses"
    elif piece.name == "restrict" and restricted is not None:
        why = "psql is already in restricted mode, where it refuses it"
    elif piece.name == "unrestrict" and restricted is None:
        why = "psql is not in restricted mode, and refuses it"
    elif piece.name == "unrestrict" and key != restricted:
        why = "its key is not the one of the \\restrict before it, and psql refuses it"
    else:
        return key if piece.name == "restrict" else None
    raise refuse(
        piece.line,
        f"\\{piece.name} is run by psql as a meta-command, and {why}",
        "write the \\restrict KEY and \\unrestrict KEY lines as pg_dump writes them, or remove them",
    )


class _Pass:
    """One pass over a file from `start` under one reading of its strings: every
    statement checked, and planned into `steps` (None: only checked). `note` says which
    reading, for a refusal in a fork. `receipt`: the file names a setting the server
    applies to a query's whole text (a statement that may change one ends its batch).
    A statement whose effect on the reading only running it tells adds the other
    reading to `forks`, once from each place and reading (`checked`)."""

    def __init__(
        self,
        filename: str,
        data: bytes,
        transactional: bool,
        standard_strings: bool,
        start: int,
        line: int,
        changes: int,
        note: str,
        steps: list[Step] | None,
        named: bool,
        forks: list[tuple[int, int, bool, int, str]],
        checked: set[tuple[int, bool, int]],
        *,
        receipt: bool = False,
    ) -> None:
        self.filename, self.data, self.transactional = filename, data, transactional
        self.start, self.changes, self.note, self.steps = start, changes, note, steps
        self.named, self.forks, self.checked, self.receipt = named, forks, checked, receipt
        self.scanner = Scanner(data, standard_strings=standard_strings, start=start, line=line)
        self.default = standard_strings if start == 0 else True  # what RESET brings back
        self.batch: list[Statement] = []
        # While the file holds only statements that take no snapshot so far: where the last
        # ends, in whichever batch, and whether one sets the transaction's characteristics
        # (Batch.quiet_end, put on the first batch once the pass is done).
        self.leading = steps is not None and start == 0
        self.quiet_end: int | None = None
        self.sets_transaction = False
        self.copy: CopyFromStdin | None = None
        # psql 18 refuses a `\restrict` without a key or inside restricted mode, and an
        # `\unrestrict` outside it or with another key: followed from the file's start only
        # (a pass from further on does not know the mode, and checks nothing of it).
        self.restricted: bytes | None = None

    def run(self, *, count: bool) -> None:
        """The pass; `count`: refuse a no-transaction file that does not hold exactly one
        statement besides SET and RESET."""
        for piece in self.scanner:
            if isinstance(piece, MetaCommand):
                self._meta_command(piece)
            elif isinstance(piece, CopyData):
                self._copy_data(piece)
            else:
                self._statement(piece)
        self._flush()
        steps = self.steps
        if self.quiet_end is not None and steps and isinstance(steps[0], Batch):
            steps[0] = replace(
                steps[0], quiet_end=self.quiet_end, sets_transaction=self.sets_transaction
            )
        if not self.transactional and count and self.changes != 1:
            fix = (
                "add the statement it is for, or remove the marker"
                if self.changes == 0
                else "split it into one file per statement"
            )
            raise ConfigError(
                f"migration file {self.filename}{self.note} is marked no-transaction but holds "
                f"{self.changes} statements besides SET and RESET; it must hold exactly one: "
                f"{fix}"
            )

    def _flush(self, **lexing: Any) -> None:
        batch = self.batch
        if batch and self.steps is not None:
            self.steps.append(
                Batch(
                    batch[0].start, batch[-1].end, batch[0].line, self.scanner.standard_strings,
                    **lexing,
                )
            )  # fmt: skip
        batch.clear()

    def _refuse(self, at: int, what: str, fix: str) -> ConfigError:
        return ConfigError(f"migration file {self.filename}, line {at}{self.note}: {what}; {fix}")

    def _meta_command(self, piece: MetaCommand) -> None:
        if piece.name in IGNORED_META_COMMANDS and not piece.inside_statement:
            if self.start == 0:
                self.restricted = _follow_restrict(self.data, piece, self.restricted, self._refuse)
            self._flush()
            return
        raise self._refuse(
            piece.line,
            f"psql meta-command \\{piece.name} is not SQL",
            "remove it (the runner sends SQL only; pg_dump's \\restrict lines are skipped)",
        )

    def _copy_data(self, piece: CopyData) -> None:
        copy = self.copy
        if copy is None:  # the scanner yields CopyData only after CopyFromStdin
            raise TypeError("CopyData without its COPY statement")
        if piece.trailing:
            raise self._refuse(
                copy.line,
                "text follows COPY ... FROM STDIN on its line",
                "start the data on the next line, as pg_dump writes it",
            )
        if self.steps is not None:
            self.steps.append(Copy(copy, piece))
        self.copy = None

    def _statement(self, piece: Statement) -> None:
        self._check(piece)
        if not self.transactional:
            self._check_alone(piece)
        elif isinstance(piece, CopyFromStdin):
            self.leading = False
            self._flush()
            self.copy = piece
            return
        if self.leading:
            self._lead(piece)
        scanner = self.scanner
        lexing = may_change_lexing(self.data, piece, scanner.standard_strings, named=self.named)
        if lexing and self.transactional:
            # It starts a query of its own: the check after the query before it then sees
            # a change no statement named (a function that sets the setting), which the
            # change it makes would hide if both ended one query.
            self._flush()
        self.batch.append(piece)
        if lexing:
            self._changes_lexing(piece)
        elif (
            not self.transactional
            or self.batch[-1].end - self.batch[0].start >= BATCH_BYTES
            or (self.receipt and names_a_receipt_setting(self.data, piece))
        ):
            self._flush()

    def _check(self, piece: Statement) -> None:
        """Refuse what may not run in any file: psql's variables, strings psql and
        PostgreSQL end in different places, a transaction's own control inside the
        runner's, COPY ... TO STDOUT."""
        data, transactional = self.data, self.transactional
        if piece.variable is not None:
            offset, variable = piece.variable
            raise self._refuse(
                piece.line + data.count(b"\n", piece.start, offset),
                f"{variable} is a psql variable, and the runner does not substitute psql variables",
                "write its value instead (current_database(), current_user or a setting "
                "read with current_setting() where it must be computed); if the colon is "
                "SQL, put a space after it",
            )
        if piece.continued is not None:
            raise self._refuse(
                piece.line + data.count(b"\n", piece.start, piece.continued),
                "an E'...' string goes on in the '...' on this line, which psql reads as a "
                "new string and PostgreSQL as the same one (backslash escapes): they end it "
                "in different places",
                "write the string as one E'...' on one line, or join the parts with ||",
            )
        if transactional and controls_transaction(data, piece, self.scanner.standard_strings):
            raise self._refuse(
                piece.line,
                f"{' '.join(piece.words[:2])} ends or starts a transaction, and the runner "
                "already runs this file in one",
                f"remove it, or make the first line `{NO_TRANSACTION_MARKER.decode()}` "
                "to run the file outside a transaction",
            )
        outside = (
            outside_transactions_only(data, piece, self.scanner.standard_strings)
            if transactional
            else None
        )
        if outside:
            raise self._refuse(
                piece.line,
                f"{outside} cannot run inside a transaction, and the runner runs this file in one",
                f"make the first line `{NO_TRANSACTION_MARKER.decode()}`, with this statement "
                "alone in the file",
            )
        if piece.keyword == "COPY" and COPY_TO_STDOUT.search(data, piece.start, piece.end):
            raise self._refuse(
                piece.line,
                "COPY ... TO STDOUT prints data, which a migration cannot",
                "remove it, or COPY to a table instead",
            )

    def _check_alone(self, piece: Statement) -> None:
        """Refuse what may not run in a no-transaction file, and count its statements
        besides SET and RESET (a concurrent index build among them checked)."""
        if piece.copies_from_stdin:
            raise self._refuse(
                piece.line,
                "COPY ... FROM STDIN in a no-transaction file",
                "move it to a transactional file",
            )
        standard = self.scanner.standard_strings
        text = self.data[piece.start : piece.end]
        if not piece.words and not without_comments(text, standard_strings=standard).strip():
            # Only a comment never closed makes a statement of comments alone.
            raise self._refuse(
                piece.line,
                "a /* comment is never closed, which PostgreSQL refuses",
                "close it with */",
            )
        if piece.keyword not in SESSION_SETTINGS:
            self.changes += 1
            check_concurrent_index(self.filename, piece, text, standard)

    def _lead(self, piece: Statement) -> None:
        """Follow the statements that take no snapshot at the file's start."""
        data, standard = self.data, self.scanner.standard_strings
        if piece.keyword not in TAKE_NO_SNAPSHOT or (
            piece.keyword == "SET" and sets_a_role(data, piece, standard)
        ):
            self.leading = False
        else:
            self.quiet_end = piece.end
            self.sets_transaction = self.sets_transaction or (
                piece.keyword in SESSION_SETTINGS and sets_the_transaction(data, piece, standard)
            )

    def _changes_lexing(self, piece: Statement) -> None:
        """`piece` may change how strings read: the rest is read as it leaves them, or, where
        only running it tells, as if nothing changed, and the other way in a fork."""
        current = self.scanner.standard_strings
        text = without_comments(self.data[piece.start : piece.end], standard_strings=current)
        after = standard_strings_after(
            text, current, transactional=self.transactional, default=self.default
        )
        if after is None:
            # Only running it tells: the rest is planned as if nothing changed (the
            # runner plans it again if the server says otherwise), and checked the
            # other way too, once from each place and reading.
            after = current
            key = (piece.end, not current, min(self.changes, 2))
            if key not in self.checked:
                self.checked.add(key)
                self.forks.append(
                    (
                        piece.end,
                        piece.line + self.data.count(b"\n", piece.start, piece.end),
                        not current,
                        self.changes,
                        f" (read with standard_conforming_strings "
                        f"{'on' if not current else 'off'}, as line {piece.line} may "
                        "leave it)",
                    )
                )
        self._flush(changes_lexing=True, standard_strings_after=after)
        self.scanner.standard_strings = after
