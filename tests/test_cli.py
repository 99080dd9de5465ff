"""The command line: every command explains itself (`--help` says what it does), options
parse where they stand, and what is refused is told on one line."""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cicd_db import cli, commands, migrations
from cicd_db.errors import UsageError

from .fix_cli import MIGRATE_PY, run_cli
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


@pytest.mark.parametrize("script", [None, MIGRATE_PY], ids=["cicd-db", "migrate.py"])
def test_version(script: Path | None) -> None:
    code, out, _ = run_cli("--version", script=script)
    assert code == 0
    assert out.split()[1] == "0.1.0"


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
    print("stopped", entry.interrupt_exit_code(interrupt))
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
        "error: cannot write the output: standard output is closed; check where it goes\n",
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
