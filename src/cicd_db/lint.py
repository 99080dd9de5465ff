"""The SQL lint gate: sqlfluff for style, squawk for what is unsafe on a live database.

Both run with the repository's own settings (`.sqlfluff`, `.squawk.toml`, found in
the repository root), and squawk reads a file marked `-- cicd-db: no-transaction`
as running outside a transaction (where CONCURRENTLY belongs) and every other file
as running inside one, as the runner runs them. The tools come with the `lint`
extra (`pip install 'cicd-db[lint]'`); they are found beside the running Python,
then on PATH.

Reads files only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cicd_db.errors import ConfigError
from cicd_db.migrations import Migration


@dataclass(frozen=True)
class Report:
    """One tool's verdict on some files, with what it printed."""

    tool: str
    files: tuple[str, ...]
    passed: bool
    output: str


def lint(migrations: list[Migration], root: Path) -> list[Report]:
    """Run the gate over `migrations`; a report per tool and kind of file."""
    if not migrations:
        return []
    reports = [_run("sqlfluff", ["lint", *(str(m.path) for m in migrations)], root, migrations)]
    for kind, flags, chosen in (
        ("in a transaction", [], [m for m in migrations if m.transactional]),
        (
            "no transaction",
            ["--no-assume-in-transaction"],
            [m for m in migrations if not m.transactional],
        ),
    ):
        if chosen:
            arguments = ["--config", str(root / ".squawk.toml"), "--reporter", "gcc", *flags]
            report = _run("squawk", [*arguments, *(str(m.path) for m in chosen)], root, chosen)
            reports.append(Report(f"squawk ({kind})", report.files, report.passed, report.output))
    return reports


def _run(tool: str, arguments: list[str], root: Path, migrations: list[Migration]) -> Report:
    beside = Path(sys.executable).parent / tool
    executable = str(beside) if beside.exists() else shutil.which(tool)
    if executable is None:
        raise ConfigError(
            f"the lint gate needs {tool}, not found beside {sys.executable} or on PATH; "
            "install it with `pip install 'cicd-db[lint]'` (make install does), or pass --no-lint"
        )
    completed = subprocess.run(
        [executable, *arguments], cwd=root, capture_output=True, text=True, check=False
    )
    output = (completed.stdout + completed.stderr).strip()
    return Report(tool, tuple(m.filename for m in migrations), completed.returncode == 0, output)
