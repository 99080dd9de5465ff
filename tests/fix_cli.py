"""The one way the tests run `cicd-db` (a pytest plugin, loaded by tests/conftest.py).

`run_cli(ARGS)` runs it to the end and returns its exit code and output: in this process
through `cli.main` by default (fast, and visible to mutmut's coverage), or as a real
process (`process=True`) where the process is the point: signals, a terminal, the
entry points' start-up, the environment, a working directory. `start_cli(ARGS)` starts
the same real process and hands it over unfinished, for tests that act while it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from unittest import mock

from .utils import ROOT


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def cli_command(*args: str, script: Path | None = None) -> list[str]:
    """The command line of `cicd-db ARGS`: `python -m cicd_db`, or `python SCRIPT`."""
    return [sys.executable, *([str(script)] if script else ["-m", "cicd_db"]), *args]


def start_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    text: bool = True,
    script: Path | None = None,
) -> subprocess.Popen[Any]:
    """`cicd-db ARGS` started as a real process with `env` added; the caller waits for it."""
    return subprocess.Popen(
        cli_command(*args, script=script),
        stdout=stdout,
        stderr=stderr,
        text=text,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    process: bool = False,
    cwd: Path = ROOT,
    script: Path | None = None,
) -> Run:
    """`cicd-db ARGS` with `env` added, to the end: in this process through `cli.main`, or,
    where a real process matters (`process=True`), as `python -m cicd_db` (or `python
    SCRIPT`, scripts/migrate.py say) from `cwd`."""
    assert process or (script is None and cwd == ROOT), "a script or a cwd needs process=True"
    if process:
        started = start_cli(*args, env=env, cwd=cwd, script=script)
        try:
            out, err = started.communicate(timeout=timeout)
        finally:
            if started.poll() is None:
                started.kill()
                started.communicate()
        return Run(started.returncode, out, err)
    from cicd_db import cli

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env or {}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli.main(list(args))
        except SystemExit as done:  # --help and --version
            code = done.code if isinstance(done.code, int) else 0
    return Run(code, out.getvalue(), err.getvalue())
