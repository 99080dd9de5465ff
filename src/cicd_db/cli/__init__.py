"""`cicd-db`: parses the arguments, runs one command (the commands package), prints its errors.

    cicd-db migrate [up|status|wait|baseline|new|check]   migrations (also scripts/migrate.py)
    cicd-db schema [dump|diff]                            the schema as SQL; drift
    cicd-db embedded [start|status|url|stop]              the embedded PostgreSQL server
    cicd-db report --pipeline P [--run N [--stage S [--job J]]]
    cicd-db insights [--pipeline P] [--days N | --runs N] health, durations, flaky jobs
    cicd-db retention --keep-days N [--pipeline P]        delete old finished runs
    cicd-db init-local --admin-url URL                    ci_local and ci_user on your server

Each command is declared in declared.py with its flags and its help, next to one
another; parsing.py builds the parsers from those declarations.
A flag's `dest` is the name of the command function's keyword argument (or of a
Context field, for the options every command shares), and its default is that
argument's default: the parsers set only what the command line gives (argparse's
`argument_default=SUPPRESS`), so an option may stand before or after the command's
name (`migrate --dry-run up`) and the function's signature fills in the rest.

Exit codes: 0 done; 1 operational failure; 2 usage or configuration error;
3 `migrate status --exit-code` with migrations pending, or `schema diff` with
differences; 4 files and history disagree (`status --exit-code`, `check`);
5 `migrate check` lint findings; 130 Ctrl-C; 143 SIGTERM and 129 SIGHUP (entry.py turns
them into an interrupt for the console commands). Errors are printed here, once, redacted, and
a library error's arguments named as this command line's flags.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Sequence

import psycopg

from cicd_db import outputs
from cicd_db.cli import declared  # noqa: F401 - registers the commands parsing builds
from cicd_db.cli.parsing import COMMANDS, Call, Option, build, flag, parse
from cicd_db.commands import Context
from cicd_db.errors import (
    STATEMENT_POOLING,
    CicdDbError,
    Interrupted,
    NotFound,
    interrupt_exit_code,
    one_line,
    setting_named,
    statement_pooling,
    told_with_setting,
)
from cicd_db.redaction import redact
from cicd_db.signals import held_signals

__all__ = [
    "COMMANDS",
    "Call",
    "Option",
    "build",
    "flag",
    "main",
    "migrate_main",
    "parse",
    "phrased",
]


def phrased(error: CicdDbError) -> str:
    """The error's message, its arguments named as flags; for what was not found, the
    `cicd-db report` that lists what is there."""
    message = error.phrased(flag)
    if isinstance(error, NotFound) and error.within:
        listing = " ".join(_option(flag(k), str(v)) for k, v in error.within.items())
        message += f"; see `cicd-db report {listing}`"
    return message


def _option(name: str, value: str) -> str:
    """`--name VALUE` for a command in a message; `--name=VALUE` for a value that begins
    with '-', which argparse would take for a flag of its own."""
    return f"{name}={_word(value)}" if value.startswith("-") else f"{name} {_word(value)}"


def _word(text: str) -> str:
    """A stored name as one shell word on one line, for a command in a message.

    Names come from whoever records a run: one with a character that is not printable
    (an escape sequence, BEL, a line break, a bidi override) or that standard error
    cannot write (an emoji on an ASCII terminal, which Python writes as `\\U0001f680`)
    is written in bash's $'...' with each such character escaped, so it can neither act
    on the terminal nor break the message's one line, and the command still works when
    pasted into a shell whose locale holds the characters (bash leaves `\\U...` as it
    is where it does not). Elsewhere in messages names are repr()s, which escape the
    same characters.
    """
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"

    def plain(ch: str) -> bool:
        try:
            return ch.isprintable() and bool(ch.encode(encoding))
        except (UnicodeEncodeError, LookupError):
            return False

    if all(map(plain, text)):
        return shlex.quote(text)
    escaped = []
    for ch in text:
        if ch in "'\\":
            escaped.append("\\" + ch)
        elif plain(ch):
            escaped.append(ch)
        elif ord(ch) < 0x80:
            escaped.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(f"\\U{ord(ch):08x}")
    return "$'" + "".join(escaped) + "'"


# -- main ----------------------------------------------------------------------------------


# What to do when text and the database's encoding disagree (cicd-db talks UTF-8).
ENCODING_FIXES = {
    "22P05": (
        "the database's encoding cannot hold a character of that text: use characters it "
        "holds, or keep the data in a database created with ENCODING 'UTF8'"
    ),
    "22021": (
        "the database holds text that is not UTF-8, which cicd-db reads it as (a SQL_ASCII "
        "database takes any bytes): correct that row"
    ),
}


def main(
    argv: Sequence[str] | None = None, *, prog: str = "cicd-db", only_migrate: bool = False
) -> int:
    """Entry point of `cicd-db`; returns the exit code. Signals: see entry.py."""
    context: Context | None = None
    debug = False
    try:
        standard_output()
        call = parse(sys.argv[1:] if argv is None else argv, prog=prog, only_migrate=only_migrate)
        context = call.context
        if not (debug := call.debug):
            # psycopg logs some failures besides raising them; the error line is enough.
            for name in ("psycopg", "psycopg.pool"):
                logger = logging.getLogger(name)
                logger.handlers = logger.handlers or [logging.NullHandler()]
                logger.propagate = False
        outputs.take_lost_output()  # a command before this one in the process (tests)
        code = call()
        if (lost := outputs.take_lost_output()) and not isinstance(lost, BrokenPipeError):
            # A reader that left (`| head`) had what it wanted; anything else is told.
            _print_error(
                f"cannot write the output: {lost.strerror or lost}; the command ran to its "
                "end, and what it printed from there on is lost; check where it goes",
                context,
            )
            return code or 1
        return code
    except (Exception, KeyboardInterrupt) as error:
        # The command is over; only its line is left to say. A Ctrl-C, SIGTERM or SIGHUP
        # from here on would cut that line short, or put a traceback in its place: held
        # and dropped (the process ends with the line). One that lands before the hold
        # takes is told the same way: the line, once.
        while True:
            try:
                with held_signals(deliver=False):
                    return _told(error, context, debug)
            except KeyboardInterrupt:
                continue


def _told(error: BaseException, context: Context | None, debug: bool) -> int:
    """Say in one line how the command ended with `error`; its exit code."""
    if isinstance(error, KeyboardInterrupt) and (told := _interrupted_in_flight(error)) is not None:
        # A second Ctrl-C landed while the first one's account (what it stopped, what
        # was rolled back) was on its way out, and took its place: that account is still
        # the truth, and the line.
        error = told
    if isinstance(error, CicdDbError):
        _print_error(phrased(error), context)
        return error.exit_code
    if isinstance(error, psycopg.Error):  # the server went away or refused something
        first = _first_line(error)
        if isinstance(error, psycopg.DataError) and error.sqlstate is None:
            # Read from the server, but no Python value holds it: running again cannot help.
            _print_error(
                f"a value stored in the database cannot be read: {first}; a time outside the "
                "years 1 to 9999 in the session's time zone, or 'infinity', written by hand? "
                "correct that row, and run again",
                context,
                debug,
            )
        elif named := setting_named(error.sqlstate, str(error.diag.message_primary or first)):
            # A timeout or read-only default a migration or a person left: running again
            # fails the same way, so say where to look.
            setting, suspected = named
            _print_error(told_with_setting(first, setting, suspected=suspected), context, debug)
        elif STATEMENT_POOLING in first:
            refused = statement_pooling()
            _print_error(phrased(refused), context)
            return refused.exit_code
        elif error.sqlstate in ENCODING_FIXES:
            # Text the database's encoding cannot hold, or bytes stored that are no text in
            # it: running again fails the same way.
            _print_error(f"database error: {first}; {ENCODING_FIXES[error.sqlstate]}", context, debug)  # fmt: skip
        else:
            _print_error(f"database error: {first}; run again, with --debug for details", context, debug)  # fmt: skip
        return 1
    if isinstance(error, KeyboardInterrupt):
        _print_error("interrupted", context)
        return interrupt_exit_code(error)
    if isinstance(error, BrokenPipeError):  # `init-local ... | head`: output it may not lose
        # Python would report the failed flush of what is left at exit: nowhere to go.
        outputs.discard_standard_output()
        return 1
    if isinstance(error, OSError):  # writing the output failed: a full disk, a closed terminal
        _print_error(
            f"cannot write the output: {error.strerror or error}; check where it goes", context
        )
        return 1
    if (within := _interrupt_within(error)) is not None:
        # Python turns a Ctrl-C that lands while it builds a class (a module loaded on
        # use: `__set_name__` of a cached_property, an Enum's members) into a RuntimeError
        # caused by it; it is still the Ctrl-C.
        _print_error("interrupted", context)
        return interrupt_exit_code(within)
    # Last resort: one line, not a traceback.
    _print_error(
        f"unexpected {type(error).__name__}: {error}; run with --debug and report it",
        context,
        debug,
    )
    return 1


def _interrupted_in_flight(interrupt: KeyboardInterrupt) -> Interrupted | None:
    """The account of a first interrupt (Interrupted) that `interrupt` replaced on its way
    out: Python keeps the exception a new one interrupted as its context."""
    seen: set[int] = set()
    error = interrupt.__context__
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def _interrupt_within(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (or SIGTERM's, SIGHUP's: errors.Terminated) Python wrapped
    in `error`, a RuntimeError it raised *from* it; None otherwise. Only that cause: an
    error raised while a Ctrl-C was handled (in an `except KeyboardInterrupt` or a
    `finally`) merely has it as its context, and is a fault to tell as one."""
    if isinstance(error, RuntimeError) and isinstance(error.__cause__, KeyboardInterrupt):
        return error.__cause__
    return None


def standard_output() -> None:
    """Standard output as every command writes to it. Closed at the start (`>&-`),
    Python leaves None there: writing to it then fails as writing to a closed
    descriptor does. A character the terminal's encoding lacks (a pipeline named with
    an emoji, in an ASCII or Latin-1 locale) is written as `\U0001f680`, as Python
    writes it to stderr, instead of failing the command half-way through a table.
    (Documents go out as UTF-8 bytes: outputs.print_document.)

    Standard error closed at the start (`2>&-`) is a place where lines go unseen: the
    command runs (it stopped on `None.isatty()`, with its error line on stdout, which
    print() falls back to, in the middle of a --json document). A descriptor left
    non-blocking by whoever made it (some CI runners' pipes) is made blocking: a write
    the pipe could not take at once was lost, with exit 0 (a report cut at 64 kB)."""
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()
    elif isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if sys.stderr is None:
        sys.stderr = io.StringIO()  # nowhere: what is written there is dropped with it
    # A descriptor 0, 1 or 2 closed at the start would be the next file opened, a
    # connection's socket perhaps, which libpq's warnings on stderr (a password file
    # others may read) then wrote into, in the middle of the protocol: /dev/null holds it.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDWR)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # closed, or no file of ours to change
            os.set_blocking(fd, True)


class _ClosedOutput(io.TextIOBase):
    """A standard output that was closed: writing to it fails as writing to a closed
    descriptor does, and is told as such (`cannot write the output: ...`); a command
    that prints nothing (`--quiet`) still runs."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def _first_line(error: psycopg.Error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _print_error(message: str, context: Context | None, trace: bool = False) -> None:
    # One line, whatever it quotes (an argument, a path): what a terminal would act on
    # (an escape sequence, a newline that forges a second line) is written as repr writes it.
    shown = one_line(redact(message, context.secrets if context else []))
    try:
        print(f"error: {shown}", file=sys.stderr)
        if trace:
            traceback.print_exc()
    except OSError:  # the terminal is gone (SIGHUP): the line has nowhere to go
        pass


def migrate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/migrate.py: `cicd-db migrate` under another name."""
    return main(argv, prog="migrate.py", only_migrate=True)
