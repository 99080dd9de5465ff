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


def test_every_command_is_listed_with_help_text() -> None:
    for group, (build, _) in cli.GROUPS.items():
        parser = build(f"cicd-db {group}")
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert subparsers, group
        listed = {choice.dest: choice.help for choice in subparsers[0]._choices_actions}
        assert set(listed) == set(subparsers[0].choices)
        assert all(listed.values()), listed


@pytest.mark.parametrize("command", commands(), ids=lambda c: " ".join(c) or "cicd-db")
def test_help(command: tuple[str, ...]) -> None:
    result = run_cli(*command, "--help")
    assert result.code == 0
    assert result.out.startswith("usage: cicd-db")
    description = result.out.split("\n\n")[1]
    assert len(description.split()) >= 3, result.out
