"""The one way the tests run `cicd-db` (a pytest plugin, loaded by tests/conftest.py).

`run_cli(ARGS)` runs it to the end and returns its exit code and output: in this process
through `cli.main` by default (fast, and visible to mutmut's coverage), or as a real
process (`process=True`) where the process is the point: signals, a terminal, the
entry points' start-up, the environment, a working directory. `start_cli(ARGS)` starts
the same real process and hands it over unfinished, for tests that act while it runs.
`script=MIGRATE_PY` runs scripts/migrate.py instead, `cicd-db migrate` under another name.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple
from unittest import mock

from cicd_db.settings import ConnectionSettings

from .fix_db import Database
from .utils import ROOT

MIGRATE_PY = ROOT / "scripts" / "migrate.py"


class Run(NamedTuple):
    """What a finished run gave: its exit code, stdout and stderr."""

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
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.Popen[Any]:
    """`cicd-db ARGS` started as a real process with `env` added; the caller waits for it."""
    return subprocess.Popen(
        cli_command(*args, script=script),
        stdout=stdout,
        stderr=stderr,
        text=text,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    process: bool = False,
    cwd: Path = ROOT,
    script: Path | None = None,
) -> Run:
    """`cicd-db ARGS` (`scripts/migrate.py ARGS` with `script=MIGRATE_PY`) with `env` added,
    to the end: in this process through `cli.main`, or, where a real process matters
    (`process=True`), as `python -m cicd_db` from `cwd`."""
    assert script in (None, MIGRATE_PY), script
    assert process or cwd == ROOT, "another working directory needs process=True"
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
            code = (cli.migrate_main if script else cli.main)(list(args))
        except SystemExit as done:  # --help and --version
            code = done.code if isinstance(done.code, int) else 0
    return Run(code, out.getvalue(), err.getvalue())


def migrate(database: Database | ConnectionSettings, folder: Path, *args: str) -> Run:
    """`cicd-db migrate ARGS` on `database` with the files of `folder`, in this process;
    no password of the database ever in what it prints."""
    settings = database.settings if isinstance(database, Database) else database
    result = run_cli(
        "migrate", "--database-url", settings.url(), "--migrations-dir", str(folder), *args
    )
    assert not settings.password or settings.password not in result.out + result.err
    return result
