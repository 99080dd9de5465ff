"""The command line: every command explains itself (`--help` says what it does), options
parse where they stand, and what is refused is told on one line."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cicd_db import cli, commands, errors, migrations
from cicd_db.cli import parsing
from cicd_db.errors import NotFound, UsageError
from cicd_db.store import RUNNING, Store

from .fix_cli import MIGRATE_PY, Run, run_cli
from .fix_db import Database
from .passwords import assert_nothing_of
from .utils import ROOT, examples, write_migrations


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def every_command() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [()]
    for group, parser in subcommands(cli.build()).items():
        found.append((group,))
        found.extend((group, name) for name in subcommands(parser))
    return found


def listed(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """The subcommands a parser lists in its help, with their one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert set(action.choices) == {choice.dest for choice in action._choices_actions}
            return {choice.dest: choice.help for choice in action._choices_actions}
    return {}


def test_every_command_is_listed_with_help_text() -> None:
    root = cli.build()
    groups = listed(root)
    assert set(groups) == {
        "migrate",
        "schema",
        "embedded",
        "report",
        "insights",
        "retention",
        "init-local",
    }
    assert all(groups.values()), groups
    for parser in subcommands(root).values():
        commands = listed(parser)
        assert all(commands.values()), commands


@pytest.mark.parametrize("command", every_command(), ids=lambda c: " ".join(c) or "cicd-db")
def test_help(command: tuple[str, ...]) -> None:
    code, out, _ = run_cli(*command, "--help")
    assert code == 0
    assert out.startswith("usage: cicd-db")
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 3, out
    # The description declared for it, not argparse's first list of arguments.
    name = " ".join(command)
    declared = (
        parsing.GROUPS[name][1]
        if name in parsing.GROUPS
        else cli.COMMANDS[name].description
        if name
        else "The database layer of a CI/CD system."
    )
    assert " ".join(description.split()) == declared, out


@pytest.mark.parametrize("script", [None, MIGRATE_PY], ids=["cicd-db", "migrate.py"])
def test_version(script: Path | None) -> None:
    code, out, _ = run_cli("--version", script=script)
    assert code == 0
    assert out.split()[1] == "0.1.0"
    assert out == f"{'migrate.py' if script else 'cicd-db'} 0.1.0\n"


# A signal whose handler Python runs inside code whose exceptions it reports and drops:
# a weak reference's callback (the import machinery runs some), as a finalizer would.
_IN_A_CALLBACK = """
import signal, sys, weakref
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal gives it, even under nohup
from cicd_db import entry
{install}
class Thing:
    pass
def callback(ref):
    signal.raise_signal({signum})
    for _ in range(100_000):  # the handler runs among these steps
        pass
thing = Thing()
ref = weakref.ref(thing, callback)
try:
    del thing
    for _ in range(100_000):
        pass
    print("went on")
except KeyboardInterrupt as interrupt:
    from cicd_db.errors import interrupt_exit_code
    print("stopped", interrupt_exit_code(interrupt))
"""


def _signal_in_a_callback(
    install: str, signum: int, *, stderr_closed: bool = False
) -> subprocess.CompletedProcess[str]:
    script = _IN_A_CALLBACK.format(install=install, signum=signum)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=(lambda: os.close(2)) if stderr_closed else None,  # `2>&-`
    )


@pytest.mark.parametrize(("signal_number", "code"), [(2, 130), (15, 143), (1, 129)])
@pytest.mark.parametrize("where", ["plain", "callback"])
def test_a_signal_while_starting_is_one_line_and_the_end(
    signal_number: int, code: int, where: str
) -> None:
    """Ctrl-C, SIGTERM or SIGHUP while psycopg is still loading: one line, not a
    traceback, and the end of the process. Raised inside a callback of the import
    machinery (CI, a Ctrl-C 0.3 s into `schema dump`), the exit was dropped: the line
    said nothing ran, a traceback followed, and the command ran to its end, exit 0."""
    install = f"signal.signal({signal_number}, entry._while_starting)"
    if where == "plain":
        install += f"\nsignal.raise_signal({signal_number})"
    done = _signal_in_a_callback(install, signal_number)
    assert (done.returncode, done.stdout) == (code, ""), done
    assert done.stderr == "error: interrupted while starting; nothing ran\n"
    # With stderr closed, Python leaves None there: writing the line raised, and in a
    # callback that error was dropped and the run went on.
    done = _signal_in_a_callback(install, signal_number, stderr_closed=True)
    assert (done.returncode, done.stdout) == (code, ""), done


@pytest.mark.parametrize(("signal_number", "code"), [(2, 130), (15, 143), (1, 129)])
def test_an_interrupt_python_drops_in_a_callback_still_stops_the_run(
    signal_number: int, code: int
) -> None:
    """Once loaded, Ctrl-C, SIGTERM and SIGHUP raise, and the run cleans up as it ends;
    one raised inside a finalizer or a callback was reported as "Exception ignored",
    with a traceback, and the run went on as if nothing had come."""
    done = _signal_in_a_callback("entry._load()", signal_number)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"stopped {code}\n", ""), done


@pytest.mark.parametrize(("signal_number", "code"), [(2, 130), (15, 143), (1, 129)])
def test_a_signal_while_python_builds_a_class_is_the_signal(
    signal_number: int, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands while Python builds a class (a module loaded on use: `uuid`
    loads `platform`, whose `uname_result` has a cached_property) is raised inside
    `__set_name__`, and Python 3.11 turns it into a RuntimeError caused by it: the line
    was "unexpected RuntimeError ... report it", exit 1 (helper-138, once in about 30
    Ctrl-Cs of retention). Made to land there: it is the signal, and its exit code."""
    from cicd_db.errors import Terminated

    stop = KeyboardInterrupt() if signal_number == signal.SIGINT else Terminated(code)

    class Lands:
        def __set_name__(self, owner: type, name: str) -> None:
            raise stop

    def loading(*args: object, **kwargs: object) -> None:
        type("Loaded", (), {"field": Lands()})  # as a class statement builds it

    monkeypatch.setattr(migrations, "discover", loading)
    done = run_cli("migrate", "check")  # its first step reads the files
    assert (done.code, done.out, done.err) == (code, "", "error: interrupted\n"), done


def test_a_fault_while_a_ctrl_c_is_handled_is_told_as_a_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error raised while a Ctrl-C is being handled has the interrupt only as its
    context: it is a fault of the handler, told as unexpected (with its traceback under
    --debug), not hidden behind "interrupted" (the review)."""

    def handling(*args: object, **kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            {}["settled"]

    monkeypatch.setattr(migrations, "discover", handling)
    done = run_cli("migrate", "check")
    assert done.code == 1, done
    assert done.err.startswith("error: unexpected KeyError: 'settled'"), done


ACCOUNT = "interrupted during 0001_t.sql; it was rolled back; nothing after it ran"


@pytest.mark.parametrize(
    ("second", "code"), [(KeyboardInterrupt(), 130), (errors.Terminated(143), 130)]
)
def test_a_second_interrupt_on_the_way_out_leaves_the_first_ones_account(
    monkeypatch: pytest.MonkeyPatch, second: KeyboardInterrupt, code: int
) -> None:
    """A second Ctrl-C (or a SIGTERM) that lands in a clean-up while the first one's
    account (what it stopped, what was rolled back) is on its way out takes its place in
    Python: the line said a bare "interrupted" (seen under load with `schema dump`, two
    Ctrl-Cs 0.25 s apart). The first account is still the truth, and is the line."""

    def interrupted_then_again(*args: object, **kwargs: object) -> None:
        try:
            raise errors.Interrupted(ACCOUNT)
        finally:
            raise second  # in a clean-up on the way out (a `finally`, an `__exit__`)

    monkeypatch.setattr(migrations, "discover", interrupted_then_again)
    done = run_cli("migrate", "check")
    assert (done.code, done.out, done.err) == (code, "", f"error: {ACCOUNT}\n"), done


def test_a_ctrl_c_while_the_last_line_is_said_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the command is over, only its line is left to say: a Ctrl-C then cut the line
    short and ended the process with a traceback (exit -2, seen under load). Dropped."""

    def failing(*args: object, **kwargs: object) -> None:
        raise errors.ConfigError("the folder is not there; pass --migrations-dir")

    said = []
    real_phrased = cli.phrased

    def phrased_under_a_ctrl_c(error: errors.CicdDbError) -> str:
        signal.raise_signal(signal.SIGINT)  # as the line is being made
        said.append(error)
        return real_phrased(error)

    monkeypatch.setattr(migrations, "discover", failing)
    monkeypatch.setattr(cli, "phrased", phrased_under_a_ctrl_c)
    try:
        done = run_cli("migrate", "check")
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped the command: a traceback, and an exit by the signal")
    assert len(said) == 1, said
    assert (done.code, done.err) == (2, "error: the folder is not there; pass --migrations-dir\n")


@pytest.mark.parametrize(("signal_number", "code"), [(2, 130), (15, 143), (1, 129)])
def test_a_signal_pending_as_the_handlers_change_is_one_line(
    signal_number: int,
    code: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal that came late in the loading is run by the handler that replaces the
    starting one, as signal.signal installs it: that raised out of the entry point as a
    traceback (CI, a Ctrl-C 0.3 s into `schema dump`). Simulated: the new handler runs at
    once, as Python runs a pending signal's."""
    from cicd_db import entry

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *entry.STOPPING)}
    real = signal.signal

    def installing(signum: int, handler: Any) -> Any:
        previous = real(signum, handler)
        if signum == signal_number and handler not in (entry._while_starting, signal.SIG_IGN):
            handler(signum, None)  # the pending signal, by its new handler
        return previous

    monkeypatch.setattr(entry.signal, "signal", installing)
    try:
        with pytest.raises(SystemExit) as done:
            entry._load()
    finally:
        monkeypatch.undo()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert done.value.code == code
    assert capsys.readouterr().err == "error: interrupted while starting; nothing ran\n"


# The signal sent as Python looks for `module`, as a Ctrl-C on a loaded machine lands
# while that module loads; then the CLI started as `cicd-db` starts it.
_WHILE_LOADING = """
import signal, sys
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            signal.raise_signal({signum})
            for _ in range(100_000):  # the handler runs among these steps
                pass
        return None
sys.meta_path.insert(0, Finder())
from cicd_db.entry import main
sys.exit(main())
"""


@pytest.mark.parametrize(("signal_number", "code"), [(2, 130), (15, 143), (1, 129)])
@pytest.mark.parametrize("module", ["cicd_db.errors", "typing", "cicd_db.cli"])
def test_a_signal_while_the_entry_point_itself_loads_is_one_line_and_its_code(
    module: str, signal_number: int, code: int
) -> None:
    """The entry point imported cicd_db.errors (typing, re, datetime) before its
    handlers: a Ctrl-C then was a traceback and exit -2, SIGTERM and SIGHUP a silent
    end by the signal (seen in a full test run on a loaded machine)."""
    done = subprocess.run(
        [sys.executable, "-c", _WHILE_LOADING.format(module=module, signum=signal_number)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # as a terminal
    )
    assert (done.returncode, done.stderr) == (
        code,
        "error: interrupted while starting; nothing ran\n",
    )


def test_the_entry_points_exit_codes_are_the_errors_ones() -> None:
    """entry writes them itself, since it may import nothing of cicd_db first."""
    from cicd_db import entry, errors

    assert entry.EXIT_INTERRUPTED == errors.EXIT_INTERRUPTED
    assert entry.STOPPING == {
        signal.SIGTERM: errors.EXIT_TERMINATED,
        signal.SIGHUP: errors.EXIT_HANGUP,
    }


def test_a_finished_commands_exit_code_is_kept_whatever_arrives_after() -> None:
    """Python puts the signals back to their defaults as it shuts down: a Ctrl-C then
    ended a finished command by the signal (exit -2). Once done, they are ignored."""
    from cicd_db import entry

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *entry.STOPPING)}
    try:
        assert entry._done(4) == 4
        assert {signal.getsignal(signum) for signum in handlers} == {signal.SIG_IGN}
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("only_migrate", [False, True], ids=["cicd-db", "migrate.py"])
def test_options_stand_before_or_after_the_command(only_migrate: bool) -> None:
    """Also each command's own options given before its name (`migrate --dry-run up`);
    what the command line leaves out is the command function's default."""
    group = [] if only_migrate else ["migrate"]
    given = ["--database-url", "X", "--dry-run", "--target", "2", "--retries", "0", "--yes"]
    for argv in ([*group, *given, "up"], [*group, "up", *given], [*group, *given]):
        call = cli.parse(argv, only_migrate=only_migrate)
        assert call.command.func is commands.up, argv
        context = {name: getattr(call.context, name) for name in commands.FIELDS}
        assert context == {**commands.FIELDS, "database_url": "X"}, argv
        assert call.context.lock_timeout == migrations.DEFAULT_LOCK_TIMEOUT
        assert call.arguments == {"dry_run": True, "target": 2, "retries": 0, "yes": True}, argv
    for argv in (
        [*group, "--yes", "baseline", "--version", "3"],
        [*group, "baseline", "--yes", "--version", "3"],
    ):
        assert cli.parse(argv, only_migrate=only_migrate).arguments == {"yes": True, "version": 3}


def _parsed_as(argv: list[str], only_migrate: bool, whole: bool) -> tuple[object, ...]:
    """What a command line comes to: the command and every value it is called with, the
    refusal's words, or what help or the version printed."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            if whole:
                call = parsing._parsed(argv, "cicd-db", only_migrate, None)
            else:
                call = cli.parse(argv, only_migrate=only_migrate)
    except UsageError as refused:
        return ("refused", str(refused))
    except SystemExit as ended:
        return ("printed", ended.code, printed.getvalue())
    context = {name: getattr(call.context, name) for name in commands.FIELDS}
    return (call.command.name, context, call.arguments, call.debug)


# Words a command line is drawn from: every command's and group's, every flag of every
# command (also as --flag=value), values that are command names, and ones that are not.
_WORDS = sorted(
    {word for name in [*cli.COMMANDS, *parsing.GROUPS] for word in name.split()}
    | {flag for c in cli.COMMANDS.values() for o in c.every_option for flag in o.flags}
    | {f"{flag}=up" for c in cli.COMMANDS.values() for o in c.every_option for flag in o.flags}
    | {"1", "2", "dev", "x", "./up", "-1", "", "--", "-qv", "-vq", "upp", "migrat"}
)


@given(
    argv=st.lists(st.sampled_from(_WORDS), max_size=8),
    only_migrate=st.booleans(),
)
@settings(max_examples=examples(300), deadline=None)
def test_a_command_line_is_parsed_as_the_whole_tree_parses_it(
    argv: list[str], only_migrate: bool
) -> None:
    """A start builds only the part of the command tree the words of its command line
    name (the whole costs most of a no-op's own time): whatever the words, in any order,
    the command, its values, and every refusal's words are the whole tree's."""
    assert _parsed_as(argv, only_migrate, whole=False) == _parsed_as(argv, only_migrate, whole=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--pipeline", "p", "--limit=--"],
        ["migrate", "up", "--lock-timeout=--"],
        ["migrate", "status", "--migrations-dir=--"],
        ["insights", "--format=--"],
    ],
    ids=["limit", "lock-timeout", "migrations-dir", "format"],
)
def test_a_typed_flag_given_two_dashes_as_its_value_is_refused(argv: list[str]) -> None:
    """argparse drops the `--` of `--limit=--` and sets an empty list without calling the
    option's type or checking its choices: `--limit` was ignored, exit 0, and
    `--migrations-dir` an unexpected TypeError, exit 1 (helper-146); `--format=--` must
    not pass as the text `--` either."""
    flag = argv[-1].removesuffix("=--")
    with pytest.raises(UsageError) as refused:
        cli.parse(argv)
    assert str(refused.value) == f"{flag}=-- gives {flag} no value; give it one"


@pytest.mark.parametrize(
    ("argv", "dest"),
    [
        (["report", "--pipeline=--", "--run", "1"], "pipeline"),
        (["schema", "dump", "--database-url=--"], "database_url"),
    ],
)
def test_a_text_given_two_dashes_with_an_equals_sign_is_that_text(
    argv: list[str], dest: str
) -> None:
    """`--pipeline=--` names the pipeline `--`, which the store takes, and which the hint
    of a report that does not find it writes so (helper-152): it was refused as no value.
    (A URL `--` is then refused as a URL; an option of a type of its own, a folder or a
    number, is still refused as given no value.)"""
    call = cli.parse(argv)
    assert {**vars(call.context), **call.arguments}[dest] in ("--", Path("--")), call


def test_a_flag_of_the_command_given_before_its_name_is_told_where_it_goes() -> None:
    """`cicd-db embedded --json status`: the suggestion was the flag itself, `--json (did
    you mean --json?)` (helper-152)."""
    for argv, name in (
        (["embedded", "--json", "status"], "embedded status"),
        (["schema", "--quiet", "diff"], "schema diff"),
    ):
        with pytest.raises(UsageError) as refused:
            cli.parse(argv)
        said = str(refused.value)
        assert f"({argv[1]} is `{name}`'s: give it after `{name}`)" in said, said
        assert "did you mean" not in said, said


def test_scripts_migrate_py_parses_its_command_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The part of the tree its command line names parses it: not the whole tree again."""
    parsed = parsing._parsed
    calls: list[frozenset[str] | None] = []

    def counted(argv: Any, prog: str, only_migrate: bool, only: frozenset[str] | None) -> Any:
        calls.append(only)
        return parsed(argv, prog, only_migrate, only)

    monkeypatch.setattr(parsing, "_parsed", counted)
    cli.parse(["--database-url", "postgresql://h/db", "up"], prog="migrate.py", only_migrate=True)
    assert calls == [{"migrate", "migrate up"}]


def test_a_start_builds_only_the_commands_its_command_line_names() -> None:
    """Help and the version print the tree (and argparse takes `--he` for `--help`)."""
    assert parsing._named_in(["migrate", "--stack", "dev", "up"], False) == {
        "migrate",
        "migrate up",
    }
    assert parsing._named_in(["migrate", "up"], False) == {"migrate", "migrate up"}
    assert parsing._named_in(["--stack", "dev"], True) == {"migrate"}
    # scripts/migrate.py: `migrate`'s command line without the word (helper-147: it named
    # no command there, and every start parsed twice, the part and then the whole tree).
    assert parsing._named_in(["--stack", "dev", "up"], True) == {"migrate", "migrate up"}
    assert parsing._named_in(["report", "--pipeline", "status"], False) == {"report"}
    for asks in (["-h"], ["migrate", "-qh"], ["--he"], ["--vers"], ["up", "--help=x"]):
        assert parsing._named_in(asks, False) is None, asks
    assert parsing._named_in(["-v", "--verbose"], False) == frozenset()


def test_a_start_builds_the_tree_of_the_commands_named_and_migrate() -> None:
    """`build(only=...)` keeps the groups and commands named, and `migrate` (whose own
    parser takes `up`'s options); a start passes it what its command line names."""
    root = cli.build(only=frozenset({"report", "schema", "schema dump"}))
    assert set(subcommands(root)) == {"migrate", "report", "schema"}
    assert set(subcommands(subcommands(root)["schema"])) == {"dump"}
    assert set(subcommands(subcommands(root)["migrate"])) == set()
    whole = cli.build()
    assert set(subcommands(subcommands(whole)["migrate"])) == {
        name.split()[1] for name in cli.COMMANDS if name.startswith("migrate ")
    }
    assert whole.prog == "cicd-db"


def test_a_start_parses_with_the_tree_its_command_line_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = parsing._built
    asked: list[frozenset[str] | None] = []

    def recorded(prog: str, *, only_migrate: bool, only: frozenset[str] | None) -> Any:
        asked.append(only)
        return built(prog, only_migrate=only_migrate, only=only)

    monkeypatch.setattr(parsing, "_built", recorded)
    assert cli.parse(["report", "--pipeline", "p"]).command.name == "report"
    assert asked == [frozenset({"report"})]


@pytest.mark.parametrize("group", ["", *sorted(set(parsing.GROUPS) - {"migrate"})])
def test_a_group_without_its_command_is_refused_in_one_line(group: str) -> None:
    """`cicd-db schema` alone names no command: refused (only `migrate` alone is `up`)."""
    help = f"cicd-db {group} --help" if group else "cicd-db --help"
    assert run_cli(*group.split()) == Run(
        2, "", f"error: the following arguments are required: COMMAND; see `{help}`\n"
    )


@pytest.mark.parametrize("only_migrate", [False, True], ids=["cicd-db", "migrate.py"])
def test_debug_is_the_runs_own_and_no_argument_of_the_command(only_migrate: bool) -> None:
    """--debug (a traceback on an unexpected error) is on only when given."""
    group = [] if only_migrate else ["migrate"]
    for words in ([*group, "status"], [*group, "--debug", "status"], [*group, "status", "--debug"]):
        call = cli.parse(words, only_migrate=only_migrate)
        assert (call.debug, call.arguments) == ("--debug" in words, {}), words
        assert call.debug is ("--debug" in words), words


def test_scripts_migrate_py_is_cicd_db_migrate_under_its_own_name() -> None:
    """`migrate.py up --locl`: the help named is `migrate.py up`, not `migrate.py migrate
    up`; its help is `cicd-db migrate`'s, under its own name."""
    result = run_cli("up", "--locl", script=MIGRATE_PY)
    assert result == Run(
        2,
        "",
        "error: unrecognized arguments: --locl (did you mean --local?); "
        "see `migrate.py up --help`\n",
    )
    assert run_cli("--help", script=MIGRATE_PY).out.startswith("usage: migrate.py [-h]")
    for described in (
        run_cli("--help", script=MIGRATE_PY).out.split("\n\n"),
        run_cli("migrate", "--help").out.split("\n\n"),
    ):
        assert " ".join(described[1].split()) == parsing.GROUPS["migrate"][1]
        assert described[-1] == "Options may stand before or after the command.\n"


@pytest.mark.parametrize(
    ("argv", "argument", "written"),
    [
        (["report", "--pipeline", "-x"], "--pipeline", "--pipeline"),
        (["insights", "-o", "-x"], "--output/-o", "--output"),
        (["migrate", "status", "--stack", "-x"], "--stack", "--stack"),
    ],
    ids=["pipeline", "short-flag", "stack"],
)
def test_a_value_that_begins_with_a_dash_is_told_how_to_give_it(
    argv: list[str], argument: str, written: str
) -> None:
    """`--pipeline -x`: argparse takes `-x` for a flag and says a value is missing; the
    refusal also says how to give one that begins with '-'."""
    with pytest.raises(UsageError) as refused:
        cli.parse(argv)
    assert str(refused.value) == (
        f"argument {argument}: expected one argument (give one; one that begins with '-' is "
        f"written {written}=VALUE); see `cicd-db {' '.join(argv[:-2])} --help`"
    )


def test_a_slip_is_named_beside_a_missing_argument_only() -> None:
    """A value refused is told alone, though a slip stands in the command line too."""
    argv = ["report", "--pipeline", "p", "--pipline", "x", "--limit", "0"]
    with pytest.raises(UsageError) as refused:
        cli.parse(argv)
    assert str(refused.value) == (
        "argument --limit: '0' is not a whole number above 0; see `cicd-db report --help`"
    )


@pytest.mark.parametrize("only_migrate", [False, True], ids=["cicd-db", "migrate.py"])
def test_an_option_of_up_before_another_command_is_refused(only_migrate: bool) -> None:
    """`migrate --dry-run status`: status has no --dry-run; said, not silently dropped."""
    group = [] if only_migrate else ["migrate"]
    script = MIGRATE_PY if only_migrate else None
    code, _, err = run_cli(*group, "--dry-run", "--rehearse", "status", script=script)
    assert code == 2
    command = "status" if only_migrate else "migrate status"
    prog = "migrate.py" if only_migrate else "cicd-db"
    assert err == (
        f"error: `{command}` takes no --dry-run, --rehearse; see `{prog} {command} --help`\n"
    )


def test_every_flag_is_a_keyword_of_its_command() -> None:
    """Each flag's dest is an argument of its command's function or a Context field, and
    a `{default}` in its help is that argument's default, so defaults live in one place."""
    context = {*commands.FIELDS, "debug"}
    for name, declared in cli.COMMANDS.items():
        parameters = inspect.signature(declared.func).parameters
        for option in declared.every_option:
            assert option.dest in context or option.dest in parameters, (name, option.flags)
    up = " ".join(subcommands(subcommands(cli.build())["migrate"])["up"].format_help().split())
    assert f"lock timeout or deadlock ({migrations.DEFAULT_RETRIES})" in up
    assert f"wait for another runner ({migrations.DEFAULT_LOCK_TIMEOUT:g})" in up


def _two_values(option: cli.Option) -> tuple[str, str]:
    """Two values the flag takes, different ones."""
    choices = option.spec.get("choices")
    return (choices[0], choices[1]) if choices else ("1", "2")


@pytest.mark.parametrize(
    ("name", "option"),
    [
        (name, option)
        for name, declared in cli.COMMANDS.items()
        for option in declared.every_option
        if option.spec.get("action") not in ("store_true", "store_false")
        and option.flags[0].startswith("-")
    ],
    ids=lambda each: each if isinstance(each, str) else each.flags[0],
)
def test_a_flag_given_twice_with_two_values_is_refused(name: str, option: cli.Option) -> None:
    """Which of two values was meant is a guess (`--stack dev ... --stack prod` as a
    wrapper script appends it must not quietly mean prod): every flag that takes a value,
    of every command, refuses a second value, and takes the same one twice."""
    flag = option.flags[-1]
    first, second = _two_values(option)
    words = name.split()
    for other in cli.COMMANDS[name].every_option:  # what the command needs besides
        if other is not option and other.spec.get("required"):
            words += [other.flags[-1], _two_values(other)[0]]
        elif not other.flags[0].startswith("-"):
            words.append("x")
    with pytest.raises(UsageError) as raised:
        cli.parse([*words, flag, first, flag, second])
    assert str(raised.value) == (
        f"{cli.flag(option.dest)} is given twice, with different values; give it once"
    )
    assert cli.parse([*words, flag, first, flag, first]).command.name == name


@pytest.mark.parametrize("name", ["status", "up", "check", "new"])
def test_a_command_after_dump_schema_is_not_taken_for_its_path(name: str) -> None:
    """--dump-schema's PATH may be left out, so `migrate --dump-schema status` read
    `status` as the path, ran `up` and wrote the schema to ./status."""
    with pytest.raises(UsageError) as refused:
        cli.parse(["migrate", "--dump-schema", name])
    assert str(refused.value) == (
        f"argument --dump-schema: {name!r} is a command, not a path: name the command "
        f"before --dump-schema (`migrate {name} ...`), or write the path as ./{name}; see "
        "`cicd-db migrate --help`"
    )
    assert cli.parse(["migrate", "--dump-schema", f"./{name}"]).arguments == {
        "dump_schema": Path(f"./{name}")
    }
    assert cli.parse(["migrate", "up", "--dump-schema"]).arguments == {
        "dump_schema": Path("db/schema.sql")
    }


def test_a_target_given_before_and_after_up_is_refused_and_says_no_url() -> None:
    """`migrate`'s options before `up` are the same flags as after it."""
    with pytest.raises(UsageError, match=r"^--stack is given twice"):
        cli.parse(["migrate", "--stack", "dev", "status", "--stack", "prod"])
    secret = "postgresql://u:s3cret@h/db"
    result = run_cli(
        "migrate", "--database-url", secret, "up", "--database-url", "postgresql://h/x"
    )
    assert (result.code, result.err) == (
        2,
        "error: --database-url is given twice, with different values; give it once\n",
    )


@settings(max_examples=examples(40), deadline=None)
@given(
    command=st.sampled_from(
        [
            ("report", "--pipeline", "p"),
            ("insights",),
            ("retention", "--keep-days", "9"),
            ("migrate", "up"),
        ]
    ),
    stray=st.text(min_size=1).filter(lambda text: not text.startswith("-")),
)
def test_a_stray_argument_is_told_on_one_line_that_no_terminal_acts_on(
    command: tuple[str, ...], stray: str
) -> None:
    """Whatever an unexpected argument holds (an escape sequence, a newline that would
    forge a second `error:` line, a bidi override), the refusal is one line, exit 2,
    and every character of it printable."""
    result = run_cli(*command, "--database-url", "postgresql://u@127.0.0.1:1/db", stray)
    assert result.code == 2, result
    assert "unrecognized arguments" in result.err, result.err
    assert result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    assert result.err[:-1].isprintable(), result.err


def test_a_closed_standard_output_is_told_in_one_line(tmp_path: Path, temporary: Path) -> None:
    """`cicd-db schema dump >&-`: Python leaves sys.stdout None, and the line was
    "unexpected AttributeError: 'NoneType' object has no attribute 'write'; ... report it"."""
    folder = write_migrations(tmp_path / "migrations", {"0001_t.sql": "CREATE TABLE t (id int);\n"})
    done = subprocess.run(
        [sys.executable, "-m", "cicd_db", "schema", "dump", "--migrations-dir", str(folder)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temporary)},
        preexec_fn=lambda: os.close(1),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (
        1,
        "error: cannot write the output: standard output is closed; the command ran to its "
        "end, and what it printed from there on is lost; check where it goes\n",
    )
    assert list(temporary.iterdir()) == []


def _handlers_kept() -> dict[int, Any]:
    from cicd_db import entry

    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *entry.STOPPING)}


def test_under_nohup_a_hangup_stays_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nohup cicd-db migrate` is asked to outlive the terminal: a SIGHUP that comes
    ignored stays ignored, while SIGTERM still stops the run cleanly."""
    from cicd_db import entry

    handlers = _handlers_kept()
    monkeypatch.setattr(entry, "STOPPING", dict(entry.STOPPING))
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        entry._load()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is entry._terminate
        assert signal.SIGHUP not in entry.STOPPING
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("loads", [1, 2], ids=["loaded-once", "loaded-twice"])
def test_what_python_drops_other_than_an_interrupt_is_reported_as_before(
    monkeypatch: pytest.MonkeyPatch, loads: int
) -> None:
    """The run's hook takes the place of the one that was there, and hands it every
    dropped exception that is not an interrupt, once; a program that calls the entry
    point twice does not make the hook take itself for the one before (it would hand
    itself each report, endlessly)."""
    from cicd_db import entry

    reported: list[BaseException | None] = []
    handlers = _handlers_kept()
    monkeypatch.setattr(sys, "unraisablehook", lambda report: reported.append(report.exc_value))
    monkeypatch.setattr(entry, "_REPORTED_BEFORE", [None])

    class Dropping:
        def __del__(self) -> None:
            raise ValueError("in a finalizer")

    try:
        for _ in range(loads):
            entry._load()
        assert sys.unraisablehook is entry._unraisable
        Dropping()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert [type(error) for error in reported] == [ValueError]


def test_a_ctrl_c_as_the_command_ends_keeps_its_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal pending as the handlers are set to ignore raises there once: the
    command's code is still what the process ends with, and everything is ignored."""
    from cicd_db import entry

    handlers = _handlers_kept()
    real = signal.signal
    pending = [True]

    def installing(signum: int, handler: Any) -> Any:
        previous = real(signum, handler)
        if pending and signum == signal.SIGINT:
            pending.clear()
            raise KeyboardInterrupt  # the pending Ctrl-C, by the handler being replaced
        return previous

    monkeypatch.setattr(entry.signal, "signal", installing)
    try:
        assert entry._done(4) == 4
        assert {signal.getsignal(signum) for signum in handlers} == {signal.SIG_IGN}
    finally:
        monkeypatch.undo()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("entry_point", ["main", "migrate_main"])
def test_an_entry_point_runs_its_command_and_then_ignores_what_arrives(
    entry_point: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cicd-db migrate new` and `scripts/migrate.py new` run their command, and once it
    is done the signals are ignored (entry._done): a Ctrl-C as Python shuts down ended
    a finished command by the signal."""
    from cicd_db import entry

    handlers = _handlers_kept()
    command = ["migrate"] if entry_point == "main" else []
    monkeypatch.setattr(sys, "argv", [entry_point, *command, "new", "add_jobs",
                                      "--migrations-dir", str(tmp_path)])  # fmt: skip
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(entry, "STOPPING", dict(entry.STOPPING))
    try:
        assert getattr(entry, entry_point)() == 0
        assert {signal.getsignal(signum) for signum in handlers} == {signal.SIG_IGN}
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert [p.name for p in tmp_path.iterdir()] == ["0001_add_jobs.sql"]


# -- any command line: one line, a documented code, no secret -------------------------------

PASSWORD = "Sekr3tPW"
REFUSED_URL = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"
# Commands left out: `embedded start` and `embedded url` make a server (seconds a run, and
# one left running each); `migrate wait` waits its --timeout. Each has tests of its own.
FUZZED = sorted(set(cli.parsing.COMMANDS) - {"embedded start", "embedded url", "migrate wait"})
_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "-0", "1e400", "nan", "inf", "0x10", "\u0663", "1_000", " 5", "5 "]),
    st.text(max_size=8),
)
_TYPED = {"count": _NUMBERS, "positive": _NUMBERS, "parse": _NUMBERS, "seconds": _NUMBERS}


def _paths(folder: Path) -> st.SearchStrategy[str]:
    """Paths under `folder` only (commands write there: a new file, a schema, a page)."""
    return st.sampled_from(
        ["missing", "file.sql", "folder", "folder/new", "nul\x01l", "-", " ", "é/ü"]
    ).map(lambda name: str(folder / name))


def _urls() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(REFUSED_URL),
        st.sampled_from(
            [
                f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?sslmode=bogus",
                f"postgres://u:{PASSWORD}@[::1:1/db",
                f"mysql://u:{PASSWORD}@127.0.0.1:1/db",
                f"postgresql://u:{PASSWORD}@127.0.0.1:99999/db",
                f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?options=-c%20x",
                f"u:{PASSWORD}@127.0.0.1/db",
                "",
            ]
        ),
        st.text(max_size=20),
    )


def assert_answered_in_one_line(argv: list[str], result: Run) -> None:
    """A documented exit code; never the last-resort error (a bug: "... report it"); at
    most one `error:` line, and a refusal (exit 2) that line alone."""
    assert result.code in (0, 1, 2, 3, 4, 5), (argv, result)
    assert "report it" not in result.err, (argv, result.err)
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, (argv, result.err)
    if result.code == 2:
        assert result.err.count("\n") == 1 and errors, (argv, result.err)


@st.composite
def command_lines(draw: st.DrawFn, folder: Path) -> list[str]:
    """A command and any of its options, each with any value of its kind or none."""
    name = draw(st.sampled_from(FUZZED))
    argv = name.split()
    for option in cli.parsing.COMMANDS[name].every_option:
        if not draw(st.booleans()) and not option.spec.get("required"):
            continue
        flag = option.flags[0]
        if option.spec.get("action") in ("store_true", "store_false") or flag == "--local":
            if flag != "--local":  # --local starts the dev stack's pulumi: a test of its own
                argv.append(flag)
            continue
        kind = getattr(option.spec.get("type"), "__name__", "")
        if (
            kind == "Path"
            or kind == "schema_path"
            or option.spec.get("metavar") in ("DIR", "PATH", "FILE")
        ):
            value = draw(_paths(folder))
        elif kind in _TYPED:
            value = draw(_TYPED[kind])
        elif "URL" in str(option.spec.get("metavar", "")):
            value = draw(_urls())
        elif "choices" in option.spec:
            value = draw(st.one_of(st.sampled_from(option.spec["choices"]), st.text(max_size=5)))
        else:
            value = draw(st.one_of(st.text(max_size=12), st.sampled_from(["dev", "prod", "-x"])))
        if flag.startswith("-"):
            argv += [flag, value] if draw(st.booleans()) else [f"{flag}={value}"]
        else:
            argv.append(value)  # a positional argument (`migrate new NAME`)
    if "--migrations-dir" not in argv and any(
        "--migrations-dir" in o.flags for o in cli.parsing.COMMANDS[name].every_option
    ):
        argv += ["--migrations-dir", str(folder / "folder")]
    return argv


@pytest.mark.slow
@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_command_line_is_answered_in_one_line_with_a_documented_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    """Whatever command, options and values are given (numbers out of range or not
    numbers, paths that are files, folders or missing, malformed URLs with a password),
    `cicd-db` answers with a documented exit code; a refusal is one `error:` line; no
    error is one the CLI did not expect ("unexpected ... report it"); and no run of the
    password in a URL is printed. No database is reached: every URL is refused or
    malformed, there is no DATABASE_URL, and no pulumi on the PATH."""
    for variable in ("DATABASE_URL", "CICD_DB_LOCAL", "PGHOST", "PGPORT", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    here = Path(tempfile.mkdtemp(dir=tmp_path))  # each example's own: `new` writes files
    (here / "folder").mkdir()
    (here / "file.sql").write_text("CREATE TABLE t (id int);\n")
    argv = data.draw(command_lines(here))
    result = run_cli(
        *argv, env={"CICD_DB_HOME": str(here / "home"), "PATH": "/nonexistent", "CI": "true"}
    )
    assert_answered_in_one_line(argv, result)
    assert_nothing_of((PASSWORD,), result.out + result.err)
    assert not (here / "home" / "embedded").exists(), argv  # no server was made


# Whole numbers, most of them past what a column or a date can hold.
_WHOLE = st.one_of(
    st.integers(0, 2**80).map(str),
    st.sampled_from(
        ["1", "2147483647", "2147483648", "9223372036854775807", "9223372036854775808"]
    ),
)
# Commands that read (or, retention, delete) what a database holds, with any value of
# their options, against a real one: numbers out of any column's range, names of any text.
ON_A_DATABASE = ["report", "insights", "migrate status", "retention", "migrate up"]


@pytest.fixture
def holding_runs(migrated: Database) -> Database:
    with migrated.connect() as conn:
        executions = Store.on(conn)
        for pipeline in ("build", "d\u00e9ploy \U0001f680"):
            run = executions.start_run(pipeline, "c0ffee")
            stage = executions.add_stage(run, "test", 1)
            (job,) = executions.add_jobs(stage, [("unit", False)])
            executions.set_status(job, RUNNING)
    return migrated


@st.composite
def reading_lines(draw: st.DrawFn, url: str, folder: Path) -> list[str]:
    name = draw(st.sampled_from(ON_A_DATABASE))
    argv = [*name.split(), "--database-url", url]
    if name.startswith("migrate"):
        argv += ["--migrations-dir", str(ROOT / "db" / "migrations")]
    for option in cli.parsing.COMMANDS[name].every_option:
        flag, kind = option.flags[0], getattr(option.spec.get("type"), "__name__", "")
        if flag in ("--database-url", "--migrations-dir", "--stack", "--local"):
            continue
        if not draw(st.booleans()) and not option.spec.get("required"):
            continue
        if option.spec.get("action") in ("store_true", "store_false"):
            argv.append(flag)
        elif kind in _TYPED:
            argv += [flag, draw(_WHOLE)]
        elif kind == "Path" or option.spec.get("metavar") in ("PATH", "FILE"):
            argv += [flag, draw(_paths(folder))]
        elif "choices" in option.spec:
            argv += [flag, draw(st.sampled_from(option.spec["choices"]))]
        else:
            argv += [
                flag,
                draw(st.one_of(st.text(max_size=12), st.sampled_from(["build", "test", "unit"]))),
            ]
    return argv


@pytest.mark.slow
@settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_values_on_a_real_database_are_answered_in_one_line_with_a_documented_code(
    holding_runs: Database, tmp_path: Path, data: st.DataObject
) -> None:
    """The same, where the command reaches the database: a number past any column's
    range or a name of any text is refused in one line, or answered."""
    here = Path(tempfile.mkdtemp(dir=tmp_path))
    argv = data.draw(reading_lines(holding_runs.url, here))
    result = run_cli(*argv, env={"CICD_DB_HOME": str(here / "home"), "CI": "true"})
    assert_answered_in_one_line(argv, result)
    assert "database error" not in result.err, (argv, result.err)


# -- a command in a message --------------------------------------------------------------


@settings(max_examples=examples(100), deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), min_size=1),
    encoding=st.sampled_from(["utf-8", "ascii", "latin-1"]),
)
@example(name="--", encoding="utf-8")  # found by chance once (helper-152): drawn every run
def test_the_report_a_not_found_hint_names_is_that_name_when_pasted(
    name: str, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a run's name (an escape, a line break, an emoji, a leading '-'), the
    `cicd-db report ...` a "not found" line offers, as a terminal of any encoding shows
    it (Python writes what it cannot encode as `\\U...`), pasted into bash in a UTF-8
    locale, is read by cicd-db as that name: bash and cicd-db's own parser are the
    oracle. (A shell whose locale lacks a character keeps `\\U...` as text.)"""
    shown = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
    monkeypatch.setattr(sys, "stderr", shown)
    cli._print_error(cli.phrased(NotFound("no run 2", within={"pipeline": name, "run": 1})), None)
    shown.flush()
    line = shown.buffer.getvalue().decode(encoding)  # type: ignore[attr-defined]
    assert line.count("\n") == 1 and line[:-1].isprintable(), line
    pasted = line.split("see `cicd-db ", 1)[1].rstrip("`\n")
    argv = (
        subprocess.run(
            ["bash", "-c", 'printf "%s\\0" ' + pasted],
            capture_output=True,
            check=True,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        .stdout.decode("utf-8", "surrogateescape")
        .split("\0")[:-1]
    )
    call = cli.parse(argv)
    assert (call.arguments["pipeline"], call.arguments["run"]) == (name, 1), (pasted, argv)


@pytest.mark.parametrize(
    "command", [["migrate", "new", "x"], ["migrate", "check"], ["schema", "dump"]]
)
def test_an_empty_migrations_folder_is_named_not_taken_for_the_folder_here(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--migrations-dir "$UNSET"` was Path('.'): `migrate new` wrote its file in the
    current folder, `check` checked it (helper-131). Refused before anything runs."""
    monkeypatch.chdir(tmp_path)
    result = run_cli(*command, "--migrations-dir", "", process=True, cwd=tmp_path)
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith("error: argument --migrations-dir: '' is no folder"), result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["schema", "dump"], ["insights"]])
def test_an_empty_output_file_is_named_not_taken_for_the_folder_here(command: list[str]) -> None:
    """`-o "$UNSET"`: told as no file name, before anything runs (it was Path('.'), and
    the command failed at the end with "cannot write .: Is a directory")."""
    result = run_cli(*command, "-o", "")
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith("error: argument --output/-o: '' is no file name"), result.err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_a_slip_in_a_flag_is_told_with_the_commands_help_and_the_flag_meant(name: str) -> None:
    """`migrate up --locl` said "see `cicd-db --help`", the program's help, where the flag
    is the command's (found by helper-111): each long flag of each command, a letter
    dropped, is refused with that command's help and, where one is near, the flag meant."""
    command = cli.COMMANDS[name]
    flags = sorted({f for o in command.every_option for f in o.flags if f.startswith("--")})
    # What each command needs besides (a slip in it is told as missing, which it is).
    needed = {
        "init-local": ["--admin-url", "postgresql://u@127.0.0.1:1/d"],
        "migrate baseline": ["--version", "1"],
        "migrate new": ["x"],
        "report": ["--pipeline", "p"],
        "retention": ["--keep-days", "9"],
    }.get(name, [])
    for meant in (f for f in flags if len(f) > 6 and f not in needed):
        slip = meant[:4] + meant[5:]
        result = run_cli(*name.split(), *needed, slip, "x")
        assert result.code == 2 and result.out == "", result
        assert result.err.endswith(f"; see `cicd-db {name} --help`\n"), result.err
        suggested = re.search(r"\(did you mean (--[\w-]+)\?\)", result.err)
        assert suggested is not None and suggested[1] in flags, (slip, result.err)
    # A slip in a flag the command needs: argparse says it is missing, and the slip is
    # named beside that (helper-113).
    for meant in (f for f in needed if f.startswith("--")):
        slip = meant[:4] + meant[5:]
        result = run_cli(*name.split(), slip, "x")
        assert result.code == 2 and result.out == "", result
        assert result.err == (
            f"error: the following arguments are required: {meant} ({slip}: did you mean "
            f"{meant}?); see `cicd-db {name} --help`\n"
        ), result.err


@pytest.mark.parametrize(
    ("argv", "told"),
    [
        # A slip after a flag written right: the slip is named, not the flag before it.
        (
            ["report", "--limit", "5", "--pipline", "x"],
            "the following arguments are required: --pipeline (--pipline: did you mean "
            "--pipeline?); see `cicd-db report --help`",
        ),
        # A slip written with its value: the flag alone is named.
        (
            ["report", "--pipline=p"],
            "the following arguments are required: --pipeline (--pipline: did you mean "
            "--pipeline?); see `cicd-db report --help`",
        ),
        (
            ["migrate", "up", "--locl=dev"],
            "unrecognized arguments: --locl=dev (did you mean --local?); "
            "see `cicd-db migrate up --help`",
        ),
        # Nothing near: no guess (`--url` is not `--sql`, `--locks` not `--local`).
        (
            ["report", "--zzzzzz", "x"],
            "the following arguments are required: --pipeline; see `cicd-db report --help`",
        ),
        (
            ["migrate", "up", "--url", "x"],
            "unrecognized arguments: --url x; see `cicd-db migrate up --help`",
        ),
        (
            ["migrate", "up", "--locks"],
            "unrecognized arguments: --locks; see `cicd-db migrate up --help`",
        ),
        (["migrate", "up", "zz"], "unrecognized arguments: zz; see `cicd-db migrate up --help`"),
    ],
    ids=[
        "after-a-flag",
        "required-with-value",
        "with-value",
        "required-far",
        "far",
        "near-not-enough",
        "no-flag",
    ],
)
def test_a_slip_names_the_flag_meant_only_when_one_is_near(argv: list[str], told: str) -> None:
    with pytest.raises(UsageError) as refused:
        cli.parse(argv)
    assert str(refused.value) == told


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("0", 0.0), ("0.5", 0.5), ("1e3", 1000.0)],
    ids=["zero", "half", "exponent"],
)
def test_seconds_are_any_finite_number_0_or_more(given: str, seconds: float) -> None:
    """`--lock-timeout 0` (do not wait) and a fraction are taken, as the help says."""
    assert cli.parse(["migrate", "status", "--lock-timeout", given]).context.lock_timeout == seconds
    assert cli.parse(["migrate", "wait", "--timeout", given]).arguments == {"timeout": seconds}


def test_seconds_that_are_no_number_are_told_as_such() -> None:
    with pytest.raises(UsageError) as refused:
        cli.parse(["migrate", "status", "--lock-timeout", "soon"])
    assert str(refused.value) == (
        "argument --lock-timeout: 'soon' is not a number of seconds; see `cicd-db migrate status --help`"
    )


@pytest.mark.parametrize(
    ("given", "told"),
    [
        ("0", "'0' is not a whole number above 0"),
        ("\u0663", "'\u0663' is not a whole number above 0"),  # ARABIC-INDIC DIGIT THREE
        (
            "9" * 4301,
            "'99999999999999999999'... is 4301 characters long; no option takes one that long",
        ),
    ],
    ids=["zero", "not-ascii", "too-long"],
)
def test_a_whole_number_is_refused_below_its_least_in_other_digits_or_past_what_int_reads(
    given: str, told: str
) -> None:
    """Python's int() reads `\u0663` as 3, and refuses more than 4,300 digits with a
    ValueError that would be an unexpected error."""
    with pytest.raises(UsageError) as refused:
        cli.parse(["report", "--pipeline", "p", "--run", given])
    assert str(refused.value) == f"argument --run: {told}; see `cicd-db report --help`"


# What each command needs besides the flag under test.
_NEEDS = {"report": ["--pipeline", "p"], "retention": ["--keep-days", "9"], "insights": []}


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("report", "--run"),
        ("report", "--limit"),
        ("report", "--before"),
        ("insights", "--days"),
        ("insights", "--runs"),
        ("retention", "--keep-days"),
        ("retention", "--batch-size"),
    ],
)
def test_a_count_of_runs_or_days_is_refused_at_0_before_anything_runs(name: str, flag: str) -> None:
    """No run 0, no page of 0 runs, no window of 0 days: refused as the command line is read."""
    needs = [word for word in _NEEDS[name] if flag != "--keep-days"]
    with pytest.raises(UsageError) as refused:
        cli.parse([name, *needs, flag, "0"])
    assert str(refused.value) == (
        f"argument {flag}: '0' is not a whole number above 0; see `cicd-db {name} --help`"
    )


@pytest.mark.parametrize(
    ("name", "formats"),
    [("report", "'table', 'json', 'yaml'"), ("insights", "'table', 'json', 'yaml', 'html'")],
    ids=["report", "insights"],
)
def test_a_format_the_command_does_not_print_is_refused_as_the_line_is_read(
    name: str, formats: str
) -> None:
    with pytest.raises(UsageError) as refused:
        cli.parse([name, *_NEEDS[name], "--format", "xml"])
    assert str(refused.value) == (
        f"argument --format: invalid choice: 'xml' (choose from {formats}); "
        f"see `cicd-db {name} --help`"
    )


def test_a_migration_version_may_be_0_as_a_file_0000_name_sql_is() -> None:
    """`migrate check` takes 0000_init.sql: `baseline --version 0` and `--target 0` name it."""
    assert cli.parse(["migrate", "baseline", "--version", "0"]).arguments == {"version": 0}
    assert cli.parse(["migrate", "up", "--target", "0"]).arguments == {"target": 0}


def test_a_whole_number_of_as_many_digits_as_int_reads_is_taken() -> None:
    assert cli.parse(["migrate", "--target", "9" * 4300]).arguments == {"target": int("9" * 4300)}


_SET_UP_AFTER_CLOSING = """
import os, sys
from cicd_db import cli
fd, report = int(sys.argv[1]), sys.argv[2]
os.close(fd)
cli.standard_output()
null, now = os.stat(os.devnull), os.fstat(fd)
with open(report, "w") as out:
    out.write(str((now.st_dev, now.st_ino) == (null.st_dev, null.st_ino)))
"""


@pytest.mark.parametrize("fd", [0, 1, 2], ids=["stdin", "stdout", "stderr"])
def test_a_standard_descriptor_closed_at_the_start_is_held_by_dev_null(
    tmp_path: Path, fd: int
) -> None:
    """Each of descriptors 0, 1 and 2 closed at the start is /dev/null once the CLI has
    set up its output, before any file or connection could take its number."""
    assert _reported_by_a_child(_SET_UP_AFTER_CLOSING, fd, tmp_path) == "True"


_SET_UP_AFTER_NON_BLOCKING = """
import os, sys
from cicd_db import cli
fd, report = int(sys.argv[1]), sys.argv[2]
os.set_blocking(fd, False)
cli.standard_output()
with open(report, "w") as out:
    out.write(str(os.get_blocking(fd)))
"""


@pytest.mark.parametrize("fd", [1, 2], ids=["stdout", "stderr"])
def test_a_standard_output_left_non_blocking_is_made_blocking(tmp_path: Path, fd: int) -> None:
    """Standard error as well as standard output: a line the pipe could not take at once
    was lost."""
    assert _reported_by_a_child(_SET_UP_AFTER_NON_BLOCKING, fd, tmp_path) == "True"


def _reported_by_a_child(script: str, fd: int, tmp_path: Path) -> str:
    """What `script`, run in a process of its own with `fd` and a report file as its
    arguments, wrote to that file (its standard descriptors are its own to change)."""
    report = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-c", script, str(fd), str(report)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done
    return report.read_text()
