"""Every command explains itself: `--help` works and says what the command does."""

from __future__ import annotations

import argparse

import pytest

from cicd_db import cli

from .conftest import run_cli


def commands() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [()]
    for group, (build, _) in cli.GROUPS.items():
        found.append((group,))
        parser = build(f"cicd-db {group}")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.extend((group, name) for name in action.choices)
    return found


def listed(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """The subcommands a parser lists in its help, with their one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert set(action.choices) == {choice.dest for choice in action._choices_actions}
            return {choice.dest: choice.help for choice in action._choices_actions}
    return {}


def test_every_command_is_listed_with_help_text() -> None:
    groups = listed(cli.main_parser())
    assert set(groups) == set(cli.GROUPS)
    assert all(groups.values()), groups
    for group, (build, _) in cli.GROUPS.items():
        commands = listed(build(f"cicd-db {group}"))
        assert all(commands.values()), commands


@pytest.mark.parametrize("command", commands(), ids=lambda c: " ".join(c) or "cicd-db")
def test_help(command: tuple[str, ...]) -> None:
    result = run_cli(*command, "--help")
    assert result.code == 0
    assert result.out.startswith("usage: cicd-db")
    description = result.out.split("\n\n")[1]
    assert len(description.split()) >= 3, result.out
