"""The exceptions cicd-db raises, and the exit code each one maps to.

    CicdDbError                 every error we raise; message says how to fix it
    ├── UsageError              exit 2: bad flags or arguments (a ValueError too)
    ├── ConfigError             exit 2: a target, URL, stack or folder that cannot be used
    │   ├── StackError          reading a Pulumi stack's outputs failed
    │   ├── AuthenticationFailed the server refused the user or password
    │   └── MigrationRefused    the history and the files disagree (edited, missing, out of order)
    └── OperationalError        exit 1: the database or the server failed while we worked
        ├── ConnectionFailed    could not connect, or the connection dropped
        ├── MigrationFailed     a migration's SQL raised an error; carries file and line
        ├── LockTimeout         another runner held the migration lock too long
        ├── EmbeddedServerError the embedded PostgreSQL could not be set up or started
        ├── IllegalTransition   a status change the execution state machine forbids
        ├── AlreadyExists       a stage or job name (or stage order) already taken
        └── NotFound            a pipeline, run, stage or job that does not exist
    Interrupted                 exit 130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP): stopped, and what it left

Exit codes that are verdicts, not errors: EXIT_PENDING (3, `migrate status
--exit-code` with files pending), EXIT_DRIFT (3, `schema diff` found differences),
EXIT_DISAGREES (4, files and history disagree), EXIT_LINT (5, `migrate check`
findings); EXIT_INTERRUPTED 130, EXIT_TERMINATED 143 and EXIT_HANGUP 129, as shells
report a signal (128 + its number).

`Terminated` is not an error but the interrupt entry.py raises on SIGTERM, and on SIGHUP
(the terminal closed, an SSH session dropped). It is a
KeyboardInterrupt so that psycopg cancels the running query for it as it does for
Ctrl-C, and the runner rolls back and releases its lock the same way.

Messages are written for the person at the terminal: what is wrong, then what to
do about it. They must never contain a password; URLs pass through
`redaction.redact` before they reach a message.

The library names its caller's arguments as data, not as one front end's flags: a
message says `{job} needs {stage}` and lists `arguments=("job", "stage")`. `str()`
writes them as Python parameters (`job`); `phrased()` lets a front end write them
its own way (the CLI: `--job needs --stage`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

EXIT_PENDING = EXIT_DRIFT = 3
EXIT_DISAGREES = 4
EXIT_LINT = 5
EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED = 129, 130, 143  # 128 + the signal


class CicdDbError(Exception):
    """Base of every error cicd-db raises on purpose.

    `message` may name the caller's arguments as `{name}` fields, each one listed in
    `arguments` (see the module docstring); text from elsewhere (a server's message, a
    host name) then goes in `values`, as fields too, so that a brace in it is never
    read as one. Without `arguments` the message is taken as it is.
    """

    exit_code = 1

    def __init__(
        self,
        message: str = "",
        *,
        arguments: Sequence[str] = (),
        values: Mapping[str, object] | None = None,
    ):
        self.template = message
        self.arguments = tuple(arguments)
        self.values = dict(values or {})
        super().__init__(self.phrased(lambda name: f"`{name}`"))

    def after(self, done: str) -> CicdDbError:
        """This error, led by `done`: what had already happened when it was raised ("2
        migrations applied, but the schema was not written"), so that no one takes the
        whole command for failed. Same kind, same exit code."""
        self.template = (
            done.replace("{", "{{").replace("}", "}}") if self.arguments or self.values else done
        ) + (": " + self.template)
        self.args = (self.phrased(lambda name: f"`{name}`"),)
        return self

    def renamed(self, argument: str, to: str) -> CicdDbError:
        """This error naming its `argument` as `to`: for a caller that took the value by
        another name (report.fetch's `run` is the store's `run_number`; a URL given as
        `--admin-url` is the target's `database_url`)."""
        if argument in self.arguments:
            self.template = self.template.replace(f"{{{argument}}}", f"{{{to}}}")
            self.arguments = tuple(to if a == argument else a for a in self.arguments)
            self.args = (self.phrased(lambda name: f"`{name}`"),)
        return self

    def hiding(self, hide: Callable[[str], str]) -> CicdDbError:
        """This error with `hide` (a redaction) applied to its text, all of it but the
        fields of its arguments: for an error that quotes what it was given (a
        connection's settings, libpq's message), so that its text, printed by the CLI or
        by a program that calls the library, never shows a password. Text from elsewhere
        goes in `values`: in the template's own text a secret is read between its fields
        (and `{{`, `}}`), so one holding a brace would be read in pieces."""
        if self.arguments or self.values:
            parts = re.split(r"(\{\{|\}\}|\{\w+\})", self.template)
            self.template = "".join(hide(p) if i % 2 == 0 else p for i, p in enumerate(parts))
        else:
            self.template = hide(self.template)
        self.values = {name: hide(str(value)) for name, value in self.values.items()}
        self.args = (self.phrased(lambda name: f"`{name}`"),)
        return self

    def phrased(self, name: Callable[[str], str]) -> str:
        """The message with each argument written as `name(argument)` puts it, and each
        of `values` in its field (a message with values and no argument had its fields
        shown as written: `cannot list migrations folder {folder}`)."""
        if not self.arguments and not self.values:
            return self.template
        return self.template.format_map(
            {**self.values, **{argument: name(argument) for argument in self.arguments}}
        )


class UsageError(CicdDbError, ValueError):
    """A bad argument: to the CLI, a flag; to the library, a parameter (so a ValueError
    too, as Python's own functions raise for a value they cannot take)."""

    exit_code = 2


class ConfigError(CicdDbError):
    exit_code = 2


class RightMissing(ConfigError):
    """The role lacks a right cicd-db needs for its own tables (the history): the setup's
    to give, so exit 2 as any configuration problem; its own class, so that a caller
    can tell it from a refusal of what it found (a second history, say)."""


class StackError(ConfigError):
    pass


class AuthenticationFailed(ConfigError):
    pass


class MigrationRefused(ConfigError):
    pass


class OperationalError(CicdDbError):
    exit_code = 1


class ConnectionFailed(OperationalError):
    pass


class MigrationFailed(OperationalError):
    # The server's code and words for the file's statement that failed, where one did.
    sqlstate: str | None = None
    said: str | None = None


class LockTimeout(OperationalError):
    pass


class EmbeddedServerError(OperationalError):
    pass


class IllegalTransition(OperationalError):
    pass


class AlreadyExists(OperationalError):
    pass


class NotFound(OperationalError):
    """`within` names, as arguments, the nearest thing that does exist (`pipeline`,
    `run`, `stage`), so a front end can say how to list it."""

    def __init__(
        self,
        message: str,
        *,
        within: Mapping[str, str | int] | None = None,
        arguments: Sequence[str] = (),
        values: Mapping[str, object] | None = None,
    ):
        super().__init__(message, arguments=arguments, values=values)
        self.within = dict(within or {})


class Interrupted(CicdDbError):
    """Ctrl-C, SIGTERM or SIGHUP stopped the work; the message says what that left."""

    def __init__(self, message: str, *, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, delivered like Ctrl-C (see the module docstring)."""

    def __init__(self, exit_code: int = EXIT_TERMINATED):
        super().__init__()
        self.exit_code = exit_code


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit code of a run that `interrupt` stopped: 130 for Ctrl-C, else the signal's."""
    return interrupt.exit_code if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def one_line(text: str) -> str:
    """`text` for one line of a message or a table: each character that is not
    printable (a newline, an escape sequence) written as repr() writes it, `\\x1b`."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def plural(count: int, noun: str) -> str:
    """`1 file`, `2 files`: for messages."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_range(argument: str, value: int, most: int) -> None:
    """UsageError unless `value` is a whole number (an int, not a bool) and 1 <= `value`
    <= `most`: every count an option takes is told alike, the value and the range to give
    (`argument`: the keyword, phrased as its flag). A value of another type is named by
    its type alone (from Python, 1.5 or "30" went on to a database error)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(
            f"{{{argument}}} takes a whole number from 1 to {most}, not a {type(value).__name__}",
            arguments=[argument],
        )
    if not 1 <= value <= most:
        raise UsageError(
            f"{{{argument}}} {value} is out of range; give 1 to {most}", arguments=[argument]
        )


def check_seconds(argument: str, value: object, most: float, *, zero: bool = False) -> float:
    """`value`, or UsageError unless it is a number of seconds (an int or a float, not a
    bool), finite, above 0 (or 0 too, with `zero`) and at most `most`: a NaN or an
    infinity would otherwise wait forever, and a negative or huge one reach the server
    as its own error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(
            f"{{{argument}}} takes a number of seconds, not a {type(value).__name__}",
            arguments=[argument],
        )
    if not (math.isfinite(value) and (value >= 0 if zero else value > 0) and value <= most):
        bounds = ("from 0" if zero else "above 0") + (
            f", at most {most:g}" if most < math.inf else ""
        )
        raise UsageError(
            f"{{{argument}}} {value!r} is out of range; give a finite number of seconds {bounds}",
            arguments=[argument],
        )
    return float(value)


# The times cicd-db takes, in UTC: a week inside the years 1 to 9999 that Python's
# datetime holds, so that the time reads back in a session of any TimeZone
# (9999-12-31T20:00Z is already the year 10000 in Tokyo; a POSIX zone such as
# '<+167>-167', which PostgreSQL takes, is 167 hours off UTC).
EARLIEST = datetime(1, 1, 8, tzinfo=UTC)
LATEST = datetime(9999, 12, 24, 23, 59, 59, 999999, tzinfo=UTC)


def check_time(argument: str, value: object) -> datetime:
    """`value` in UTC, or UsageError unless it is a time cicd-db can write and read
    back: a datetime with a time zone (a naive one would be read in the session's,
    shifting the instant silently) that gives its offset, from EARLIEST to LATEST."""
    if not isinstance(value, datetime):
        raise UsageError(
            f"{{{argument}}} must be a datetime, not {type(value).__name__}", arguments=[argument]
        )
    try:
        offset = value.utcoffset()  # the tzinfo's own code: it may raise anything
        utc = value.astimezone(UTC) if offset is not None else None
    except OverflowError:
        raise _out_of_range(argument, value) from None
    except Exception as error:
        raise UsageError(
            f"{{{argument}}} has a time zone, {type(value.tzinfo).__name__}, that gives no "
            f"valid UTC offset ({type(error).__name__}); give an aware datetime "
            "(datetime.now(UTC))",
            arguments=[argument],
        ) from None
    if utc is None:
        raise UsageError(
            f"{{{argument}}} {value.isoformat()} has no time zone; give an aware datetime "
            "(datetime.now(UTC)): a naive one would be read in the session's time zone",
            arguments=[argument],
        )
    if not EARLIEST <= utc <= LATEST:
        raise _out_of_range(argument, value)
    return utc


def clock_text(moment: datetime) -> str:
    """`moment` as the tables print a time, `2026-12-06 18:02:49`, in its own zone: the
    year by hand, since strftime's %Y writes the year 1 as "1" on glibc, not "0001"."""
    return f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}"


def _out_of_range(argument: str, value: datetime) -> UsageError:
    return UsageError(
        f"{{{argument}}} {value.isoformat()} is out of range: cicd-db takes times from "
        "0001-01-08 to 9999-12-24 in UTC, which read back in any time zone",
        arguments=[argument],
    )


# The longest name (a pipeline's, a stage's, a job's) cicd-db takes, in bytes as UTF-8:
# each is part of a unique B-tree index's key, whose entries PostgreSQL caps at about
# 2,700 bytes (a longer one is refused only once written, "index row size exceeds").
MAX_NAME_BYTES = 1000


NUL = "NUL"
SURROGATE = "lone surrogate"


def not_whole_text(text: str) -> tuple[str, int] | None:
    """What in `text` neither PostgreSQL nor libpq can take whole, and where: a NUL (C
    text ends there: libpq would read a connection string only up to it, PostgreSQL
    refuses it in text) or a lone surrogate (no UTF-8 at all); None if nothing."""
    # str's own methods, not the text's: a subclass of str may override them.
    if str.__contains__(text, "\0"):
        return NUL, str.index(text, "\0")
    try:
        str.encode(text)
    except UnicodeEncodeError as error:
        return SURROGATE, error.start
    return None


def check_name(argument: str, name: object, *, optional: bool = False) -> None:
    """UsageError unless `name` is a name PostgreSQL can store and index: text, not
    empty (`--stage ""`, an unset shell variable: not a name left out, and never read
    as the wider view), no NUL byte, no lone surrogate, at most MAX_NAME_BYTES as
    UTF-8. `optional`: None is a name left out. The name itself is never echoed: it
    may be huge, or hold what a terminal would act on."""
    if name is None and optional:
        return
    if not isinstance(name, str):
        raise UsageError(
            f"{{{argument}}} must be text, not {type(name).__name__}", arguments=[argument]
        )
    # str's own methods, not the name's: a subclass of str may override them.
    if str.__len__(name) == 0:
        leave = f", or leave {{{argument}}} out" if optional else ""
        raise UsageError(f"{{{argument}}} is empty; give a name{leave}", arguments=[argument])
    if (found := not_whole_text(name)) is not None:
        what, at = found
        if what == NUL:
            said = f"holds a NUL byte (at character {at + 1}), which PostgreSQL text cannot hold; remove it"  # fmt: skip
        else:
            said = f"is not valid Unicode (a lone surrogate at character {at + 1}); give it as text"  # fmt: skip
        raise UsageError(f"{{{argument}}} {said}", arguments=[argument])
    size = len(str.encode(name))
    if size > MAX_NAME_BYTES:
        raise UsageError(
            f"{{{argument}}} is {size:,} bytes as UTF-8; at most {MAX_NAME_BYTES:,} are taken",
            arguments=[argument],
        )


class Placement(NamedTuple):
    """Where the execution tables are (store.tables_placement): their schema, the
    session's search_path, and whether that path reaches them."""

    schema: str
    search_path: str
    visible: bool
    # Where the search_path was set and what undoes it, when pg_settings says (None: the
    # server's default, or not known).
    set_where: str | None = None


def no_schema(placed: Placement | None = None) -> ConfigError:
    """What report, insights and retention raise on a database without the execution
    tables (the server's undefined_table), instead of the server's own words; with
    `placed` (store.tables_placement), the setting that hides them, not migrations to
    apply; and with the tables in reach, a schema older than this cicd-db, which has
    not yet the table that was asked for."""
    if placed is not None and placed.visible:
        return older_schema()
    if placed is not None:
        schema, path, _, where = placed
        if where is None:
            where = (
                "one a migration or a person left on the database or the role? (pg_settings' "
                "source for search_path tells where it is set); reset it there (ALTER "
                "DATABASE ... RESET search_path)"
            )
        return ConfigError(
            f"the execution tables are in schema {schema}, which this session's search_path "
            f"({path}) does not reach: {where}; or add {schema} to the target's options "
            "(`?options=-c search_path=...`)"
        )
    return ConfigError(
        "no cicd-db schema here (no execution tables): apply the migrations "
        "(`cicd-db migrate up` with the same target), then record runs"
    )


def older_schema(what: str = "") -> ConfigError:
    """The schema here is older than this cicd-db's code (a table, a column's type or a
    grant a later migration makes): `what` it lacks, where it is known."""
    lacks = f" ({what})" if what else ""
    return ConfigError(
        f"the cicd-db schema here is older than this cicd-db{lacks}: apply the pending "
        "migrations (`cicd-db migrate up` with the same target)"
    )


# Failures a session setting causes, whoever set it: the file, or a role's, database's
# or server's setting a migration (or a person) left. The SQLSTATE names the setting;
# for the two that share theirs with other causes, the message too.
SETTING_BEHIND = {
    "57014": ("statement_timeout", "statement timeout"),
    "25006": ("default_transaction_read_only", ""),
    "25P03": ("idle_in_transaction_session_timeout", ""),
    "25P04": ("transaction_timeout", ""),
    "57P05": ("idle_session_timeout", ""),
    "3F000": ("search_path", "no schema has been selected"),
}


def setting_advice(
    name: str, value: str, source: str, *, database: str, role: str, set_here: bool = False
) -> str | None:
    """Where setting `name` (now `value`) was set, by pg_settings' `source`, and what
    undoes it; `database` and `role` as SQL names. None for a source no one can undo
    here (the default)."""
    now = f"{name} is {value or repr('')}"
    return {
        "database": f"{now} for database {database}, set by ALTER DATABASE (perhaps by a "
        f"migration): undo it with ALTER DATABASE {database} RESET {name}",
        "user": f"{now} for role {role}, set by ALTER ROLE (perhaps by a migration): "
        f"undo it with ALTER ROLE {role} RESET {name}",
        "database user": f"{now} for role {role} in database {database}, set by ALTER ROLE "
        f"(perhaps by a migration): undo it with ALTER ROLE {role} IN DATABASE {database} "
        f"RESET {name}",
        "global": f"{now} for every role, set by ALTER ROLE ALL (perhaps by a migration): "
        f"undo it with ALTER ROLE ALL RESET {name}",
        "configuration file": f"{now} in the server's configuration (postgresql.conf or "
        "ALTER SYSTEM): change it there",
        "command line": f"{now} on the server's command line: change it there",
        "client": f"{now} in the connection's options (the URL's, the service's or "
        "PGOPTIONS): change it there",
        # Not the file's (setting_source looked): set as the session began, after its
        # options and the role's and database's settings, which only a login event
        # trigger does (PostgreSQL 17+).
        # Outside a run (`set_here`), a SET on the caller's connection: theirs, or, through a
        # pooler that lends sessions, another client's left on the session.
        "session": f"{now} for this session, set on the connection (a SET; through a pooler, "
        f"perhaps another client's), or as it began by a login event trigger: SET {name} back "
        "(RESET, or SET ... = its default) before calling, or connect anew"
        if set_here
        else f"{now} for this session, set as it began, not by the file: by a login event "
        "trigger (perhaps made by a migration; pg_event_trigger lists those with evtevent "
        "'login'): disable it with ALTER EVENT TRIGGER ... DISABLE, or make it leave "
        f"{name} alone",
    }.get(source)


# A server in recovery (a hot standby) takes no writes: its read-only transactions are
# none of a setting's doing, nor a file's.
def standby(done: str = "nothing was run") -> ConfigError:
    """A write refused because the server is in recovery; `done`: what became of it."""
    return ConfigError(
        f"the server is a standby (in recovery), where nothing can be written; {done}; "
        "connect to its primary (with several hosts in the URL, add "
        "target_session_attrs=read-write)"
    )


# What PgBouncer says of a transaction in its statement mode, and what that means here.
STATEMENT_POOLING = "transaction blocks not allowed in statement pooling mode"


def statement_pooling(done: str = "") -> ConfigError:
    """A transaction refused by a pooler in statement mode; `done`: what became of the work."""
    return ConfigError(
        f"{STATEMENT_POOLING}: the target is a connection pooler in statement mode "
        "(PgBouncer's pool_mode = statement), which runs no transaction of more than one "
        f"statement, and cicd-db needs them{'; ' + done if done else ''}; connect to "
        "PostgreSQL itself, or to the pooler's session or transaction mode"
    )


def where_set(setting: str, *, suspected: bool = False) -> str:
    """Where to look for a session setting that stopped a statement, for messages;
    `suspected`: the setting may have (setting_suspected)."""
    return (
        ("if no one cancelled it, " if suspected else "")
        + f"{setting} stopped it, set for this session by the role, the database, the server "
        f"or the connection's options (pg_settings' source for {setting} tells which; "
        "perhaps a migration left it)"
    )


def told_with_setting(first: str, setting: str, *, suspected: bool = False) -> str:
    """A server's error `first` that a session `setting` caused (or may have:
    `suspected`), and where to undo it: running again meets it again."""
    return f"database error: {first}; {where_set(setting, suspected=suspected)}: reset it there, and run again"


# How PostgreSQL's English messages of these SQLSTATEs begin: one that begins otherwise is
# in the language lc_messages names (a server made in a German locale speaks German),
# whose words the checks that read them cannot read.
_ENGLISH_STEMS = {
    "57014": ("canceling ",),
    "3F000": ("schema ", "no schema "),
    "42501": ("permission denied", "must be ", "new row violates", "query would be", "could not"),
}


def translated(sqlstate: str | None, message: str) -> bool:
    """Whether `message`, of `sqlstate`, is in another language than English (for the
    SQLSTATEs whose words are read: SETTING_BEHIND's, and a right refused)."""
    stems = _ENGLISH_STEMS.get(sqlstate or "")
    return stems is not None and not message.startswith(stems)


def setting_behind(sqlstate: str | None, message: str) -> str | None:
    """The session setting that caused a failure of `sqlstate` and `message`, or None."""
    name, says = SETTING_BEHIND.get(sqlstate or "", (None, ""))
    return name if name and says in message else None


# A statement timeout that fires as a statement ends is told by PostgreSQL as a cancel
# "due to user request" of the session's next statement: the timer's signal outlives the
# statement, whose end clears the mark that says why (seen with a 1 ms timeout a
# migration left). Such a cancel may be a person's too, so a timeout set is only suspected.
SUSPECTED = "if no one cancelled it, the statement timeout did (PostgreSQL tells one that fires as a statement ends as a cancel by a user)"


def setting_named(sqlstate: str | None, message: str) -> tuple[str, bool] | None:
    """The session setting behind a failure, for a caller that cannot ask the session
    (where_set): named by its words, or, for a cancel told in another language, whose
    words cannot be read, suspected (True). None when none is."""
    if name := setting_behind(sqlstate, message):
        return name, False
    if translated(sqlstate, message) and (name := setting_suspected(sqlstate, message)):
        return name, True
    return None


def setting_suspected(sqlstate: str | None, message: str) -> str | None:
    """The session setting that may have caused a failure no setting is named by."""
    cancel = "user request" in message or translated(sqlstate, message)
    return "statement_timeout" if sqlstate == "57014" and cancel else None
