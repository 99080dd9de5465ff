"""Every command explains itself: `--help` works and says what the command does."""

from __future__ import annotations

import argparse

import pytest

from cicd_db import cli


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands() -> list[tuple[str, ...]]:
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
    assert set(groups) == {"migrate", "schema", "embedded", "report", "retention", "init-local"}
    assert all(groups.values()), groups
    for parser in subcommands(root).values():
        commands = listed(parser)
        assert all(commands.values()), commands


@pytest.mark.parametrize("command", commands(), ids=lambda c: " ".join(c) or "cicd-db")
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cicd-db")
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 3, out


@pytest.mark.parametrize(
    ("entry", "argv"), [(cli.main, ["--version"]), (cli.migrate_main, ["--version"])]
)
def test_version(entry, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        entry(argv)
    assert done.value.code == 0
    assert capsys.readouterr().out.split()[1] == "0.1.0"


@pytest.mark.parametrize(("signal_number", "code"), [(2, 130), (15, 143)])
def test_a_signal_while_starting_is_one_line(
    signal_number: int, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C or SIGTERM while psycopg is still loading: one line, not a traceback."""
    from cicd_db import entry

    with pytest.raises(SystemExit) as done:
        entry._while_starting(signal_number, None)
    assert done.value.code == code
    assert capsys.readouterr().err == "error: interrupted while starting; nothing ran\n"


@pytest.mark.parametrize("only_migrate", [False, True], ids=["cicd-db", "migrate.py"])
def test_options_stand_before_or_after_the_command(only_migrate: bool) -> None:
    """Also each command's own options given before its name (`migrate --dry-run up`),
    whichever parser was built before: the shared option parents are built once."""
    cli.build(only_migrate=not only_migrate)
    group = [] if only_migrate else ["migrate"]
    given = ["--database-url", "X", "--dry-run", "--target", "2", "--retries", "0", "--yes"]
    for argv in ([*group, *given, "up"], [*group, "up", *given], [*group, *given]):
        args = cli.parse(argv, only_migrate=only_migrate)
        assert (args.database_url, args.dry_run, args.target, args.retries, args.yes) == (
            "X",
            True,
            2,
            0,
            True,
        ), argv
        assert args.lock_timeout == 60.0
    for argv in (
        [*group, "--yes", "baseline", "--version", "3"],
        [*group, "baseline", "--yes", "--version", "3"],
    ):
        assert cli.parse(argv, only_migrate=only_migrate).yes is True, argv
