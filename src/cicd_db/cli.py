"""`cicd-db`: parses the arguments, runs one command (the commands package), prints its errors.

    cicd-db migrate [up|status|wait|baseline|new|check]   migrations (also scripts/migrate.py)
    cicd-db schema [dump|diff]                            the schema as SQL; drift
    cicd-db embedded [start|status|url|stop]              the embedded PostgreSQL server
    cicd-db report --pipeline P [--run N [--stage S [--job J]]]
    cicd-db insights [--pipeline P] [--days N | --runs N] health, durations, flaky jobs
    cicd-db retention --keep-days N [--pipeline P]        delete old finished runs
    cicd-db init-local --admin-url URL                    ci_local and ci_user on your server

Each command is declared below with its flags and its help, next to one another.
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

import argparse
import errno
import io
import logging
import math
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from cicd_db import commands
from cicd_db.commands import Context
from cicd_db.errors import (
    EXIT_DISAGREES,
    EXIT_PENDING,
    CicdDbError,
    NotFound,
    UsageError,
    interrupt_exit_code,
    one_line,
    setting_behind,
    where_set,
)
from cicd_db.libpq import not_utf8
from cicd_db.redaction import redact
from cicd_db.retention import MAX_BATCH_SIZE, MAX_KEEP_DAYS
from cicd_db.targets import MIGRATIONS_FOLDER


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, like every other error, and
    an option left out is not set at all (the command's signature has its default)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["argument_default"] = argparse.SUPPRESS
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # A command's own parser too (argparse gives a subparser a namespace of its own).
        return super().parse_known_args(args, _Given() if namespace is None else namespace)


class _Given(argparse.Namespace):
    """What the command line gave. A flag given twice with two values is refused: which
    was meant is a guess (`--stack dev ... --stack prod`, as a wrapper script appends it,
    must not quietly mean prod), also across `migrate`'s options before and after `up`."""

    def __setattr__(self, name: str, value: Any) -> None:
        given = vars(self)
        # `command` is no flag: a command's parser sets it over its group's (`migrate`'s).
        if name in given and name != "command" and given[name] != value:
            raise UsageError(  # values unsaid: one may be a URL with its password
                f"{_flag(name)} is given twice, with different values; give it once"
            )
        super().__setattr__(name, value)


class _Version(argparse.Action):
    """--version, read from the installed package only when asked for: looking it up
    (importlib.metadata) on every run would cost each command's start-up."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_: Any
    ) -> None:
        super().__init__(
            option_strings,
            dest=dest,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from importlib import metadata

        print(f"{parser.prog} {metadata.version('cicd-db')}")
        parser.exit()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds, 0 or more")
    return value


def _schema_path(text: str) -> Path:
    """--dump-schema's PATH, which may be left out: then a command's name after it
    (`migrate --dump-schema status`) would be taken for the path, and `up` would run."""
    if f"migrate {text}" in COMMANDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is a command, not a path: name the command before --dump-schema "
            f"(`migrate {text} ...`), or write the path as ./{text}"
        )
    return Path(text)


# Python's int() refuses longer strings of digits (sys.get_int_max_str_digits).
_DIGITS = 4300


def _whole(least: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of `least` or more, written in ASCII digits."""

    def parse(text: str) -> int:
        if len(text) > _DIGITS:  # int() refuses it; no option takes such a number
            raise argparse.ArgumentTypeError(
                f"{text[:20]!r}... is {len(text)} characters long; no option takes one that long"
            )
        if not (text.isascii() and text.isdigit()) or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return int(text)

    return parse


_count = _whole(0, "a whole number, 0 or more")
_positive = _whole(1, "a whole number above 0")
_version = _whole(0, "a migration version (a whole number)")


# -- declaring commands ------------------------------------------------------------------


# Plain classes, not dataclasses or NamedTuples: the CLI makes its classes at every
# start, and those take up to a millisecond each to make.


class Option:
    """One flag as argparse.add_argument takes it. `{default}` in its help is the
    default of the argument it fills, read from the command's signature."""

    __slots__ = ("flags", "spec")

    def __init__(self, flags: tuple[str, ...], spec: dict[str, Any]):
        self.flags, self.spec = flags, spec

    @property
    def dest(self) -> str:
        if "dest" in self.spec:
            return str(self.spec["dest"])
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
        spec = dict(self.spec)
        if "{default}" in spec.get("help", ""):
            spec["help"] = spec["help"].replace("{default}", _shown(defaults[self.dest]))
        parser.add_argument(*self.flags, **spec)


def option(*flags: str, **spec: Any) -> Option:
    return Option(flags, spec)


class Command:
    """A command: its name ("migrate up"), its function, its line in the list of
    commands, its description, and its options: each one of its own, or a tuple of
    options many commands share (TARGET, ...)."""

    __slots__ = ("description", "func", "help", "name", "options")

    def __init__(
        self,
        name: str,
        func: Callable[..., int],
        help: str,
        description: str,
        options: tuple[Option | tuple[Option, ...], ...],
    ):
        self.name, self.func, self.help, self.description = name, func, help, description
        self.options = options

    @property
    def every_option(self) -> list[Option]:
        return [o for item in self.options for o in ([item] if isinstance(item, Option) else item)]

    def defaults(self) -> dict[str, Any]:
        """What each argument is when its flag is left out: the function's defaults
        (its options are keyword-only), and the Context's for the shared options."""
        return {**commands.FIELDS, **commands.keyword_defaults(self.func)}


COMMANDS: dict[str, Command] = {}
GROUPS: dict[str, tuple[str, str]] = {}  # name: (help, description)


def group(name: str, help: str, description: str) -> None:
    GROUPS[name] = (help, description)


def command(
    name: str,
    func: Callable[..., int],
    help: str,
    description: str,
    *options: Option | tuple[Option, ...],
) -> None:
    COMMANDS[name] = Command(name, func, help, description, options)


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# The options many commands share, given to a command as a tuple: dests are fields of
# commands.Context (but --debug, which is this module's), and so are their defaults.
TARGET = (
    option("--database-url", metavar="URL", help="a postgresql:// URL"),
    option("--stack", metavar="NAME", help="a Pulumi stack (dev, prod) or embedded"),
    option("--local", action="store_true", help="the local database: dev, or embedded"),
)
OUTPUT = (
    option("--json", action="store_true", help="print JSON"),
    option("--quiet", "-q", action="store_true", help="print only errors"),
    option("--verbose", "-v", action="store_true", help="also print server notices"),
    option("--debug", action="store_true", help="print a traceback on unexpected errors"),
)
FILES = (
    option("--migrations-dir", metavar="DIR", type=Path, help=f"default: {MIGRATIONS_FOLDER}"),
    option("--lock-timeout", metavar="SECONDS", type=_seconds, help="wait for another runner ({default})"),
)  # fmt: skip
MIGRATE = (*TARGET, *OUTPUT, *FILES)
YES = option("--yes", action="store_true", help="confirm writing to a remote stack (prod)")


# -- the commands, each with its options and help -----------------------------------------

# `migrate` alone is `migrate up`, and takes its options.
group("migrate", "apply and check SQL migrations", "Apply the SQL migrations of db/migrations to the target database, and check them.")  # fmt: skip

command(
    "migrate up", commands.up, "apply pending migrations (the default)",
    "Apply pending migrations in version order.",
    MIGRATE,
    (  # a tuple: `migrate` alone takes these too, from the same parent parser
    option("--dry-run", action="store_true", help="list what would be applied; change nothing"),
    option("--sql", action="store_true", help="with --dry-run: print each file's SQL"),
    option("--target", metavar="VERSION", type=_version, help="stop after this version"),
    YES,
    option("--retries", metavar="N", type=_count, help="reruns of a file that met a lock timeout or deadlock ({default})"),
    option("--retry-budget", metavar="SECONDS", type=_seconds, help="most time spent waiting between retries ({default})"),
    option("--rehearse", action="store_true", help="run pending files in a transaction that is rolled back; report each one's locks"),
    option("--dump-schema", metavar="PATH", nargs="?", const=Path("db/schema.sql"), type=_schema_path, help="afterwards write the schema to PATH (db/schema.sql)"),
    ),
)  # fmt: skip

command(
    "migrate status", commands.status, "show applied and pending migrations (read-only)",
    "Show every migration and its state. Reads only.",
    MIGRATE,
    option("--exit-code", action="store_true", help=f"exit {EXIT_DISAGREES} when a file disagrees with the history, else {EXIT_PENDING} when one is pending"),
)  # fmt: skip

command(
    "migrate wait", commands.wait, "wait until the database accepts connections",
    "Poll the target until it accepts connections.",
    MIGRATE,
    option("--timeout", metavar="SECONDS", type=_seconds, help="give up after this long ({default})"),
)  # fmt: skip

command(
    "migrate baseline", commands.baseline, "record migrations up to VERSION as applied, after checking the schema",
    "For a database created by hand: record migrations up to --version as applied, once the live schema is checked against them.",
    MIGRATE,
    YES,
    option("--version", metavar="VERSION", type=_version, required=True, help="the newest migration the database already has"),
)  # fmt: skip

command(
    "migrate new", commands.new, "write the next NNNN_name.sql",
    "Write the next migration file, with a header that sets short timeouts, and print its path.",
    MIGRATE,
    option("name", help="what it does, as letters, digits, _ . -"),
    option("--no-transaction", dest="transactional", action="store_false", help="for CREATE INDEX CONCURRENTLY"),
)  # fmt: skip

command(
    "migrate check", commands.check, "the CI gate: files, lint, and the history when a target is named",
    "Check the migration files (names, versions, what they may hold), lint them (sqlfluff, squawk), and compare them with a target's history when one is named.",
    MIGRATE,
    option("--no-lint", dest="lint", action="store_false", help="skip sqlfluff and squawk"),
)  # fmt: skip

group("schema", "the schema as SQL, and drift between databases", "Dump a schema for review, or compare schemas.")  # fmt: skip

command(
    "schema dump", commands.schema_dump, "write the schema as SQL",
    "The schema as pg_dump --schema-only writes it, in a stable form. Without a target, the schema the migrations make (on a server of its own, removed after).",
    MIGRATE,
    option("--output", "-o", metavar="PATH", type=Path, help="write here (default: print)"),
)  # fmt: skip

command(
    "schema diff", commands.schema_diff, "list drift, table by table (exit 3 on drift)",
    "Compare the target's live schema with what its applied migrations make, or with another database (--against).",
    MIGRATE,
    option("--against", metavar="STACK_OR_URL", help="a stack name or a URL to compare with"),
)  # fmt: skip

group("embedded", "manage the embedded PostgreSQL server", "The embedded PostgreSQL server (stack embedded).")  # fmt: skip

command("embedded start", commands.embedded_start, "start the server (created on first use)", "The embedded server: start the server (created on first use).", OUTPUT)  # fmt: skip
command("embedded status", commands.embedded_status, "is it running, where, on which port", "The embedded server: is it running, where, on which port.", OUTPUT)  # fmt: skip
command(
    "embedded url", commands.embedded_url, "print the URL of ci_local (password hidden)",
    "The embedded server: print the URL of ci_local (password hidden).",
    OUTPUT,
    option("--show-password", action="store_true", help="print the real password"),
)  # fmt: skip
command("embedded stop", commands.embedded_stop, "stop the server; data stays", "The embedded server: stop the server; data stays.", OUTPUT)  # fmt: skip

command(
    "report", commands.show_report, "show recorded pipeline, stage and job executions",
    "Show recorded executions: a pipeline's runs, one run with its stages, one stage with its jobs, or one job. Reads only.",
    TARGET, OUTPUT,
    option("--pipeline", required=True, help="the pipeline's name"),
    option("--run", type=_positive, metavar="N", help="one run, with its stages"),
    option("--stage", metavar="NAME", help="one stage of --run, with its jobs"),
    option("--job", metavar="NAME", help="one job of --stage"),
    option("--limit", type=_positive, metavar="N", help="runs per page (20, at most 1000)"),
    option("--before", type=_positive, metavar="RUN", help="runs below RUN: the next page"),
    option("--format", choices=("table", "json", "yaml"), help="table, json or yaml"),
)  # fmt: skip

command(
    "insights", commands.show_insights, "how healthy pipelines are: success rate, p50/p95, time to green, flaky jobs",
    "What CI history is kept for: one pipeline's success rate, p50 and p95 durations, time back to green, days, stages and the worst jobs over a window, or one line per pipeline. Reads only.",
    TARGET, OUTPUT,
    option("--pipeline", metavar="NAME", help="one pipeline in detail (default: one line per pipeline)"),
    option("--days", type=_positive, metavar="N", help="the last N UTC days, today included (30)"),
    option("--runs", type=_positive, metavar="N", help="the last N runs instead of --days"),
    option("--format", choices=("table", "json", "yaml", "html"), help="table, json, yaml or html (a self-contained page)"),
    option("--output", "-o", metavar="FILE", type=Path, help="write here (default: print)"),
)  # fmt: skip

command(
    "retention", commands.retention, "delete finished runs older than --keep-days, in short batches",
    "Delete finished runs (never PENDING or RUNNING) that completed more than --keep-days days ago, with their stages and jobs: a batch of runs per short transaction, so writers are never stopped. Interrupted, it leaves whole runs; run it again to go on.",
    TARGET, OUTPUT,
    option("--keep-days", required=True, type=_positive, metavar="N", help=f"keep runs that finished in the last N days (1 to {MAX_KEEP_DAYS})"),
    option("--pipeline", metavar="NAME", help="only this pipeline's runs"),
    option("--dry-run", action="store_true", help="count what would be deleted; change nothing"),
    option("--batch-size", type=_positive, metavar="N", help=f"runs per transaction ({{default}}, at most {MAX_BATCH_SIZE})"),
    YES,
)  # fmt: skip

command(
    "init-local", commands.init_local, "create ci_local, ci_user, ci_app and ci_reader on a server you installed",
    "On a PostgreSQL you installed: create the role ci_user (not a superuser, with its client_encoding, default_transaction_isolation and timezone set) and the database ci_local it owns, and the writer ci_app and the reader ci_reader (docs/security.md). Safe to repeat.",
    OUTPUT,
    option("--admin-url", required=True, metavar="URL", help="a superuser URL (or CREATEROLE and CREATEDB)"),
    option("--password", help="ci_user's password (default: generated for a new role; kept for an existing one)"),
    option("--show-password", action="store_true", help="print the URLs with their passwords"),
    option("--app-password", help="ci_app's password, the writer's (default: generated for a new role; kept for an existing one)"),
    option("--reader-password", help="ci_reader's password, the reader's (default: generated for a new role; kept for an existing one)"),
    option("--user", help="the role to create ({default})"),
    option("--database", help="the database to create ({default})"),
)  # fmt: skip


# -- parsing -----------------------------------------------------------------------------


class _Tree:
    """Parsers for one build(): a tuple of options becomes one parent parser, its flags
    added once and handed to every parser that takes them (argparse adds a flag
    slowly, and the commands share most of theirs). A `{default}` in a shared tuple
    is read from the first command given it: the tuples many commands share hold
    only Context fields, whose defaults are the same for all."""

    def __init__(self) -> None:
        self.parents: dict[int, _Parser] = {}

    def parents_of(self, chosen: Command) -> list[_Parser]:
        found = []
        for item in chosen.options:
            if not isinstance(item, Option):  # a tuple of them
                if id(item) not in self.parents:
                    parent = _Parser(add_help=False)
                    shows = any("{default}" in each.spec.get("help", "") for each in item)
                    defaults = chosen.defaults() if shows else {}
                    for each in item:
                        each.add_to(parent, defaults)
                    self.parents[id(item)] = parent
                found.append(self.parents[id(item)])
        return found

    @staticmethod
    def finish(parser: argparse.ArgumentParser, chosen: Command) -> None:
        own = [item for item in chosen.options if isinstance(item, Option)]
        shows = any("{default}" in each.spec.get("help", "") for each in own)
        defaults = chosen.defaults() if shows else {}
        for each in own:
            each.add_to(parser, defaults)
        parser.set_defaults(command=chosen)


def build(prog: str = "cicd-db", *, only_migrate: bool = False) -> argparse.ArgumentParser:
    """The whole command tree; `only_migrate` for scripts/migrate.py (`cicd-db migrate`)."""
    epilog = "Options may stand before or after the command."
    tree, up = _Tree(), COMMANDS["migrate up"]
    top = None
    if only_migrate:
        root = _Parser(
            prog=prog,
            description=GROUPS["migrate"][1],
            epilog=epilog,
            parents=tree.parents_of(up),
        )
        parsers: dict[str, argparse.ArgumentParser] = {"migrate": root}
    else:
        root = _Parser(prog=prog, description="The database layer of a CI/CD system.")
        top = root.add_subparsers(metavar="COMMAND", parser_class=_Parser, required=True)
        parsers = {}
        for name, (text, about) in GROUPS.items():
            parsers[name] = (
                top.add_parser(
                    name, help=text, description=about, epilog=epilog, parents=tree.parents_of(up)
                )
                if name == "migrate"
                else top.add_parser(name, help=text, description=about)
            )
    tree.finish(parsers["migrate"], up)
    root.add_argument("--version", action=_Version)
    subs = {
        name: parser.add_subparsers(
            metavar="COMMAND", parser_class=_Parser, required=name != "migrate"
        )
        for name, parser in parsers.items()
    }
    for name, declared in COMMANDS.items():
        group_name, _, own = name.rpartition(" ")
        where = subs.get(group_name) if group_name else top
        if where is None:  # scripts/migrate.py has only the migrate commands
            continue
        parser = where.add_parser(
            own,
            help=declared.help,
            description=declared.description,
            parents=tree.parents_of(declared),
        )
        tree.finish(parser, declared)
    return root


class Call:
    """A parsed command line: the command, and what its function is called with."""

    __slots__ = ("arguments", "command", "context", "debug")

    def __init__(self, command: Command, context: Context, arguments: dict[str, Any], debug: bool):
        self.command, self.context, self.arguments, self.debug = command, context, arguments, debug

    def __call__(self) -> int:
        return self.command.func(self.context, **self.arguments)


def parse(argv: Sequence[str], *, prog: str = "cicd-db", only_migrate: bool = False) -> Call:
    """`argv` parsed into the command and its arguments; what it leaves out, the
    command's defaults fill in."""
    given = vars(build(prog, only_migrate=only_migrate).parse_args(list(argv)))
    chosen: Command = given.pop("command")
    debug = bool(given.pop("debug", False))
    # An option of `migrate` (`up`'s) before another command's name: not that command's.
    taken = {each.dest for each in chosen.every_option}
    if stray := sorted(set(given) - taken):
        flags = ", ".join(_flag(name) for name in stray)
        name = chosen.name.removeprefix("migrate ") if only_migrate else chosen.name
        raise UsageError(f"`{name}` takes no {flags}; see `{prog} {name} --help`")
    for name, value in given.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and (where := not_utf8(text)):
                raise UsageError(f"{_flag(name)} is not UTF-8 text ({where}); pass it as UTF-8")
    context = Context(**{name: value for name, value in given.items() if name in commands.FIELDS})
    arguments = {name: value for name, value in given.items() if name not in commands.FIELDS}
    return Call(chosen, context, arguments, debug)


# -- errors, in this command line's words --------------------------------------------------


def _flag(argument: str) -> str:
    return "--" + argument.replace("_", "-")


def phrased(error: CicdDbError) -> str:
    """The error's message, its arguments named as flags; for what was not found, the
    `cicd-db report` that lists what is there."""
    message = error.phrased(_flag)
    if isinstance(error, NotFound) and error.within:
        listing = " ".join(f"{_flag(k)} {_word(str(v))}" for k, v in error.within.items())
        message += f"; see `cicd-db report {listing}`"
    return message


def _word(text: str) -> str:
    """A stored name as one shell word on one line, for a command in a message.

    Names come from whoever records a run: one with a character that is not printable
    (an escape sequence, BEL, a line break, a bidi override) is written in bash's
    $'...' with each such character escaped, so it can neither act on the terminal
    nor break the message's one line, and the command still works when pasted.
    Elsewhere in messages names are repr()s, which escape the same characters.
    """
    if text.isprintable():
        return shlex.quote(text)
    escaped = []
    for ch in text:
        if ch in "'\\":
            escaped.append("\\" + ch)
        elif ch.isprintable():
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
    standard_output()
    try:
        call = parse(sys.argv[1:] if argv is None else argv, prog=prog, only_migrate=only_migrate)
        context = call.context
        if not (debug := call.debug):
            # psycopg logs some failures besides raising them; the error line is enough.
            for name in ("psycopg", "psycopg.pool"):
                logger = logging.getLogger(name)
                logger.handlers = logger.handlers or [logging.NullHandler()]
                logger.propagate = False
        return call()
    except CicdDbError as error:
        _print_error(phrased(error), context)
        return error.exit_code
    except psycopg.Error as error:  # the server went away or refused something mid-command
        first = _first_line(error)
        if isinstance(error, psycopg.DataError) and error.sqlstate is None:
            # Read from the server, but no Python value holds it: running again cannot help.
            _print_error(
                f"a value stored in the database cannot be read: {first}; a time past the year "
                "9999 or 'infinity', written by hand? correct that row, and run again",
                context,
                debug,
            )
        elif setting := setting_behind(error.sqlstate, str(error.diag.message_primary or first)):
            # A timeout or read-only default a migration or a person left: running again
            # fails the same way, so say where to look.
            _print_error(
                f"database error: {first}; {where_set(setting)}: reset it there, and run again",
                context,
                debug,
            )
        elif error.sqlstate in ENCODING_FIXES:
            # Text the database's encoding cannot hold, or bytes stored that are no text in
            # it: running again fails the same way.
            _print_error(f"database error: {first}; {ENCODING_FIXES[error.sqlstate]}", context, debug)  # fmt: skip
        else:
            _print_error(f"database error: {first}; run again, with --debug for details", context, debug)  # fmt: skip
        return 1
    except KeyboardInterrupt as interrupt:
        _print_error("interrupted", context)
        return interrupt_exit_code(interrupt)
    except BrokenPipeError:  # `cicd-db report ... | head`: the reader has what it wanted
        # Python would report the failed flush of what is left at exit: nowhere to go.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # writing the output failed: a full disk, a closed terminal
        _print_error(
            f"cannot write the output: {error.strerror or error}; check where it goes", context
        )
        return 1
    except Exception as error:  # last resort: one line, not a traceback
        _print_error(
            f"unexpected {type(error).__name__}: {error}; run with --debug and report it",
            context,
            debug,
        )
        return 1


def standard_output() -> None:
    """Standard output as every command writes to it. Closed at the start (`>&-`),
    Python leaves None there: writing to it then fails as writing to a closed
    descriptor does. A character the terminal's encoding lacks (a pipeline named with
    an emoji, in an ASCII or Latin-1 locale) is written as `\U0001f680`, as Python
    writes it to stderr, instead of failing the command half-way through a table.
    (Documents go out as UTF-8 bytes: outputs.print_document.)"""
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()
    elif isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


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
