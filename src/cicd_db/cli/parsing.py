"""Parsing a command line: argparse, with one-line usage errors and options that set only
what the command line gives; how a command and its options are declared (Option,
Command, `command()`, the option tuples many commands share); the parser tree built
from the declarations (declared.py); and a parsed command line, a Call."""

from __future__ import annotations

import argparse
import functools
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cicd_db import commands
from cicd_db.commands import Context
from cicd_db.errors import UsageError
from cicd_db.libpq import not_utf8
from cicd_db.targets import MIGRATIONS_FOLDER


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, like every other error, and
    an option left out is not set at all (the command's signature has its default)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["argument_default"] = argparse.SUPPRESS
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        flag = re.fullmatch(r"argument (-[^\s:/]+)(?:/\S+)?: expected one argument", message)
        if flag:  # `--pipeline -x`: argparse takes -x for a flag, not for the value
            message += f" (give one; one that begins with '-' is written {flag[1]}=VALUE)"
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
                f"{flag(name)} is given twice, with different values; give it once"
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


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds, 0 or more")
    return value


def schema_path(text: str) -> Path:
    """--dump-schema's PATH, which may be left out: then a command's name after it
    (`migrate --dump-schema status`) would be taken for the path, and `up` would run."""
    if f"migrate {text}" in COMMANDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is a command, not a path: name the command before --dump-schema "
            f"(`migrate {text} ...`), or write the path as ./{text}"
        )
    return Path(text)


def output_file(text: str) -> Path:
    """-o's FILE: an empty one (`-o "$UNSET"`) would be Path('.'), told as a folder."""
    if not text:
        raise argparse.ArgumentTypeError("'' is no file name: name one, or leave -o out to print")
    return Path(text)


def folder(text: str) -> Path:
    """--migrations-dir's DIR: an empty one (`--migrations-dir "$UNSET"`) would be
    Path('.'), the current folder, where `migrate new` then wrote its file."""
    if not text:
        raise argparse.ArgumentTypeError(
            "'' is no folder: name one (`.` for the current one), or leave it out for "
            f"{MIGRATIONS_FOLDER}"
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


count = _whole(0, "a whole number, 0 or more")
positive = _whole(1, "a whole number above 0")
version_number = _whole(0, "a migration version (a whole number)")


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
    option("--migrations-dir", metavar="DIR", type=folder, help=f"default: {MIGRATIONS_FOLDER}"),
    option("--lock-timeout", metavar="SECONDS", type=seconds, help="wait for another runner ({default})"),
)  # fmt: skip
MIGRATE = (*TARGET, *OUTPUT, *FILES)


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


def build(
    prog: str = "cicd-db",
    *,
    only_migrate: bool = False,
    only: frozenset[str] | None = None,
) -> argparse.ArgumentParser:
    """The whole command tree; `only_migrate` for scripts/migrate.py (`cicd-db migrate`).
    `only` keeps the commands and groups of those names (see `_named_in`)."""
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
            if only is not None and name not in only and name != "migrate":
                continue
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
        if only is not None and name not in only:
            continue
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


# One tree a process for each name: a parser keeps nothing of what it parsed, and building
# it costs ~4 ms (argparse looks up its translations for every parser it makes), paid by
# every call after the first of a process that runs several (the tests, a Python caller).
_built = functools.cache(build)


class Call:
    """A parsed command line: the command, and what its function is called with."""

    __slots__ = ("arguments", "command", "context", "debug")

    def __init__(self, command: Command, context: Context, arguments: dict[str, Any], debug: bool):
        self.command, self.context, self.arguments, self.debug = command, context, arguments, debug

    def __call__(self) -> int:
        return self.command.func(self.context, **self.arguments)


def _named_in(argv: Sequence[str], only_migrate: bool) -> frozenset[str] | None:
    """The commands and groups whose every word stands in `argv`: the part of the tree
    a command line can reach, for a start that builds only that (building the whole
    tree is most of a no-op's own time after connecting: argparse looks up its
    translations for each of its ~25 parsers). None, for the whole tree, when argv
    asks for help or the version: those print the tree (and `--he` means `--help`)."""
    words = set(argv)
    for word in words:
        if word.startswith("--"):
            given = word.partition("=")[0]
            if "--help".startswith(given) or "--version".startswith(given):
                return None
        elif word.startswith("-") and "h" in word:  # -h, or one of a cluster (-qh)
            return None
    if only_migrate:  # scripts/migrate.py: its command line is `migrate`'s, without the word
        words.add("migrate")
    named = {name for name in COMMANDS if set(name.split()) <= words}
    return frozenset(named | {name for name in GROUPS if name in words})


def parse(argv: Sequence[str], *, prog: str = "cicd-db", only_migrate: bool = False) -> Call:
    """`argv` parsed into the command and its arguments; what it leaves out, the
    command's defaults fill in.

    Parsed first by the part of the tree `argv` names (`_named_in`): where that parses
    it, the whole tree parses it alike, since the parsers on the way are the same and
    each word taken for a command is one of both; where it does not, the whole tree
    parses it again, so that every refusal and its list of commands are the whole's."""
    only = _named_in(argv, only_migrate)
    if only is not None:
        try:
            return _parsed(argv, prog, only_migrate, only)
        except UsageError:
            pass
    return _parsed(argv, prog, only_migrate, None)


def _parsed(
    argv: Sequence[str], prog: str, only_migrate: bool, only: frozenset[str] | None
) -> Call:
    try:
        parser = _built(prog, only_migrate=only_migrate, only=only)
        parsed, unknown = parser.parse_known_args(list(argv))
    except UsageError as refused:
        # argparse asks for what is missing before it looks at what it does not know: a
        # slip in a required flag (`--pipline`) is named beside it.
        if str(refused).startswith("the following arguments are required") and (
            meant := _slip(argv)
        ):
            said, see, rest = str(refused).partition("; see `")
            raise UsageError(f"{said} ({meant}){see}{rest}") from None
        raise
    given = vars(parsed)
    chosen: Command = given.pop("command")
    if unknown:
        raise _unrecognized(unknown, chosen, prog, only_migrate)
    debug = bool(given.pop("debug", False))
    # An option of `migrate` (`up`'s) before another command's name: not that command's.
    declared = {each.dest: each for each in chosen.every_option}
    if stray := sorted(set(given) - declared.keys()):
        flags = ", ".join(flag(name) for name in stray)
        name = _named(chosen, only_migrate)
        raise UsageError(f"`{name}` takes no {flags}; see `{prog} {name} --help`")
    for name, value in list(given.items()):
        if isinstance(value, list):  # `--limit=--`: argparse drops the `--`, leaving []
            spec = declared[name].spec if name in declared else {"type": None}
            if spec.keys() & {"type", "action", "nargs", "choices"}:  # argparse checks none
                raise UsageError(f"{flag(name)}=-- gives {flag(name)} no value; give it one")
            # A name is any text, `--` too (the store takes it, and the hint of a report
            # that names it writes `--pipeline=--`): given with `=`, it is the value.
            given[name] = value = "--"
        if isinstance(value, str) and (where := not_utf8(value)):
            raise UsageError(f"{flag(name)} is not UTF-8 text ({where}); pass it as UTF-8")
    context = Context(**{name: value for name, value in given.items() if name in commands.FIELDS})
    arguments = {name: value for name, value in given.items() if name not in commands.FIELDS}
    return Call(chosen, context, arguments, debug)


# -- errors, in this command line's words --------------------------------------------------


def _nearest(slip: str, flags: Sequence[str]) -> str | None:
    """The flag of `flags` a slip (`--locl`) most likely meant, if one is near."""
    import difflib  # on a slip only: half a millisecond every start would pay

    near = difflib.get_close_matches(slip, sorted(flags), n=1, cutoff=0.75)
    return near[0] if near else None


def _named(chosen: Command, only_migrate: bool) -> str:
    """The command as its help names it (`up`, not `migrate up`, for scripts/migrate.py)."""
    return chosen.name.removeprefix("migrate ") if only_migrate else chosen.name


def _slip(argv: Sequence[str]) -> str | None:
    """`--pipline: did you mean --pipeline?` for the first flag of `argv` that no command
    takes and one it does is near; None if there is none."""
    known = {f for c in COMMANDS.values() for o in c.every_option for f in o.flags}
    for word in argv:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            meant = _nearest(flag, list(known))
            return f"{flag}: did you mean {meant}?" if meant else None
    return None


def _unrecognized(unknown: list[str], chosen: Command, prog: str, only_migrate: bool) -> UsageError:
    """What the command does not take, with the help of that command (argparse named the
    program's) and the flag of its own nearest to a slip (`--locl`: `--local`)."""
    flags = [f for o in chosen.every_option for f in o.flags if f.startswith("--")]
    slip = next((u.split("=", 1)[0] for u in unknown if u.startswith("--")), None)
    name = _named(chosen, only_migrate)
    if slip in flags:  # the command's own, given before its name (`embedded --json status`)
        said = f" ({slip} is `{name}`'s: give it after `{name}`)"
    else:
        meant = _nearest(slip, flags) if slip else None
        said = f" (did you mean {meant}?)" if meant else ""
    return UsageError(
        f"unrecognized arguments: {' '.join(unknown)}{said}; see `{prog} {name} --help`"
    )


def flag(argument: str) -> str:
    return "--" + argument.replace("_", "-")
