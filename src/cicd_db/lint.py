"""The SQL lint gate: sqlfluff for style, squawk for what is unsafe on a live database.

The gate carries its own settings, the same wherever the files are (a folder
outside the repository, a cwd anywhere, cicd-db installed from a wheel):
`SQLFLUFF_CONFIG` and `SQUAWK_CONFIG` are written to a temporary folder and
passed to the tools explicitly, with the PostgreSQL dialect named on the command
line too. The repository's `.sqlfluff` and `.squawk.toml` (what editors and
plain `sqlfluff` calls read) hold the same text, which
tests/test_lint.py checks. No other sqlfluff settings are read (a `.sqlfluff` beside
the files or above them, pyproject.toml, the home folder's): any of them could let
through what the gate refuses.

squawk reads a file marked `-- cicd-db: no-transaction` as running outside a
transaction (where CONCURRENTLY belongs) and every other file as running inside
one, as the runner runs them. The tools come with the `lint` extra (`pip install
'cicd-db[lint]'`); they are found beside the running Python, then on PATH.

Reads files only (and writes the two settings files to a temporary folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from cicd_db.errors import ConfigError, OperationalError
from cicd_db.migrations import Migration

SQLFLUFF_CONFIG = """\
# sqlfluff: style of db/migrations. Each choice says why; `make lint` runs it.
[sqlfluff]
dialect = postgres
# Migrations are plain SQL, run as written: nothing to template.
templater = raw
# Same width as the Python code; 0001's lines reach 94 characters.
max_line_length = 100
# Every rule (the gate reads no other settings file: cicd_db.lint).
rules = all
exclude_rules = None
# sqlfluff skips a larger file with a warning and exits 0, so the gate chooses what to
# style-check itself (cicd_db.lint.STYLE_LIMIT) and names what it leaves.
large_file_skip_byte_limit = 0

[sqlfluff:indentation]
tab_space_size = 4

[sqlfluff:rules:capitalisation.keywords]
# Upper-case keywords, as 0001 (the first schema) writes them, so later files read alike.
capitalisation_policy = upper

[sqlfluff:rules:capitalisation.types]
# Upper-case types for the same reason (UUID, TEXT, TIMESTAMPTZ).
extended_capitalisation_policy = upper

[sqlfluff:rules:capitalisation.functions]
# Functions in lower case (gen_random_uuid(), now()); CURRENT_TIMESTAMP is the SQL
# standard's keyword-like value function, written upper case as in 0001.
extended_capitalisation_policy = lower
ignore_words = CURRENT_TIMESTAMP

[sqlfluff:rules:capitalisation.literals]
# TRUE, FALSE and NULL in upper case, as 0001 writes them.
capitalisation_policy = upper
"""
SQUAWK_CONFIG = """\
# squawk: is each migration safe on a live, busy database (locks, concurrent
# indexes, timeouts)? `make lint` runs it on db/migrations.

# The oldest PostgreSQL major we support and test (CI runs 15 and 18).
pg_version = "15.0"

# The runner wraps each file in a transaction, so rules judge a file as one.
# Files whose first line is `-- cicd-db: no-transaction` run outside one; `make
# lint` checks those with --no-assume-in-transaction, which overrides this.
assume_in_transaction = true
"""


# The largest file sqlfluff style-checks, in bytes (its own default): it reads about
# 10 kB a second, so a data load or a dump of megabytes would hold the gate for hours.
# A larger file is named as not style-checked; squawk still checks every file.
STYLE_LIMIT = 20_000


@dataclass(frozen=True)
class Report:
    """One tool's verdict on some files, with what it printed, and the files it left
    unchecked (over STYLE_LIMIT, for sqlfluff)."""

    tool: str
    files: tuple[str, ...]
    passed: bool
    output: str
    skipped: tuple[str, ...] = ()


def lint(migrations: list[Migration], root: Path) -> list[Report]:
    """Run the gate over `migrations`; a report per tool and kind of file.

    sqlfluff runs in `root` (the repository, or the cwd), given the files by absolute
    path, so a relative --migrations-dir works from anywhere; squawk runs in the
    files' folder (see below).
    """
    if not migrations:
        return []
    with tempfile.TemporaryDirectory(prefix="cicd-db-lint-") as folder:
        sqlfluff_config = Path(folder) / ".sqlfluff"
        sqlfluff_config.write_text(SQLFLUFF_CONFIG)
        squawk_config = Path(folder) / ".squawk.toml"
        squawk_config.write_text(SQUAWK_CONFIG)
        # A .sqlfluffignore beside the files does not take them out of the gate, and no
        # settings but the gate's are read: a .sqlfluff beside the files, in a folder
        # above, pyproject.toml or the home folder could set `warnings` or `ignore`, or a
        # rule's `ignore_words`, and pass what the gate refuses.
        arguments = ["lint", "--dialect", "postgres", "--config", str(sqlfluff_config)]
        arguments += ["--disregard-sqlfluffignores", "--ignore-local-config"]
        styled = [m for m in migrations if len(m.data) <= STYLE_LIMIT]
        skipped = tuple(m.filename for m in migrations if len(m.data) > STYLE_LIMIT)
        # A file with settings of its own is a finding, and is not given to sqlfluff,
        # which would obey them (or fail on them: `-- sqlfluff:dialect:nosuch`).
        own = {m.filename: _own_settings(m) for m in styled}
        plain = [m for m in styled if not own[m.filename]]
        if plain:
            report = _run("sqlfluff", arguments, _paths(plain), root, plain)
        else:
            report = Report("sqlfluff", (), True, "")
        if found := [line for lines in own.values() for line in lines]:
            report = Report(
                "sqlfluff",
                tuple(m.filename for m in styled),
                False,
                "\n".join(filter(None, [report.output, *found])),
            )
        reports = [replace(report, skipped=skipped)]
        for kind, flags, chosen in (
            ("in a transaction", [], [m for m in migrations if m.transactional]),
            (
                "no transaction",
                ["--no-assume-in-transaction"],
                [m for m in migrations if not m.transactional],
            ),
        ):
            if chosen:
                # squawk takes each path for a glob pattern: a folder named `m[1]` would
                # match m1's files. So it runs in the files' folder, given their names,
                # which hold no such character (files._parse_name).
                arguments = ["--config", str(squawk_config), "--reporter", "gcc", *flags]
                home = chosen[0].path.parent
                names = [m.path.name for m in chosen]
                report = _run("squawk", arguments, names, home, chosen)
                reports.append(
                    Report(f"squawk ({kind})", report.files, report.passed, report.output)
                )
    return reports


def inline_settings(text: str) -> list[int]:
    """The lines (1-based) of `text` that sqlfluff takes for settings of the file's own
    (`-- sqlfluff:rules:LT12`): found as sqlfluff finds them, a line (str.splitlines)
    that starts `-- sqlfluff` or `--sqlfluff` and, after its dashes, `sqlfluff:` (others
    it passes over with a warning: `-- sqlfluff complains here` is prose)."""
    return [
        number
        for number, line in enumerate(text.splitlines(), 1)
        if line.startswith(("-- sqlfluff", "--sqlfluff"))
        and line[2:].strip().startswith("sqlfluff:")
    ]


def _own_settings(migration: Migration) -> list[str]:
    """A finding for each line of `migration` that would set sqlfluff's rules for it
    alone: the gate's settings are the project's, and one comment could switch a rule
    off or change its policy for the file."""
    text = migration.data.decode("utf-8", "replace")
    return [
        f"{migration.path}:{number}: a `-- sqlfluff:` line sets sqlfluff's rules for this "
        "file alone; the gate's settings are the project's: remove it"
        for number in inline_settings(text)
    ]


def _paths(migrations: list[Migration]) -> list[str]:
    return [str(m.path.absolute()) for m in migrations]


def _run(
    tool: str, arguments: list[str], paths: list[str], root: Path, migrations: list[Migration]
) -> Report:
    """`tool ARGUMENTS PATHS` in `root`, in as many runs as the paths need (_batches)."""
    beside = Path(sys.executable).parent / tool
    executable = str(beside) if beside.exists() else shutil.which(tool)
    if executable is None:
        raise ConfigError(
            f"the lint gate needs {tool}, not found beside {sys.executable} or on PATH; "
            "install it with `pip install 'cicd-db[lint]'` (make install does), or pass --no-lint"
        )
    outputs, passed = [], True
    for files in _batches(paths):
        try:
            completed = subprocess.run(
                [executable, *arguments, *files], cwd=root, capture_output=True, text=True,
                check=False,
            )  # fmt: skip
        except OSError as error:  # not a program, not executable, a folder
            raise ConfigError(
                f"the lint gate could not start {executable}: {error.strerror or error}; "
                "reinstall it with `pip install 'cicd-db[lint]'`, or pass --no-lint"
            ) from None
        said = (completed.stdout + completed.stderr).strip()
        if completed.returncode not in (0, 1) or "Traceback (most recent call last)" in said:
            # Not a verdict on the files: the tool itself failed (sqlfluff's 2, a panic's
            # 101, a crash), which no change to the files would fix.
            last = said.splitlines()[-1] if said else "no output"
            raise OperationalError(
                f"the lint gate's {tool} failed (exit {completed.returncode}): {last}; "
                "reinstall it with `pip install 'cicd-db[lint]'`, or pass --no-lint"
            )
        outputs.append(said)
        passed = passed and completed.returncode == 0
    output = "\n".join(text for text in outputs if text)
    return Report(tool, tuple(m.filename for m in migrations), passed, output)


# The file names given to one run of a tool, in bytes: a system's limit on a command
# line can be 64 kB (a stack limit of 256 kB), and a folder of thousands of files
# passed at once failed with "Argument list too long".
BATCH_BYTES = 32 * 1024


def _batches(paths: list[str]) -> list[list[str]]:
    """`paths` in runs of at most BATCH_BYTES (one longer path alone), in order."""
    batches: list[list[str]] = [[]]
    size = 0
    for path in paths:
        length = len(os.fsencode(path)) + 1
        if batches[-1] and size + length > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += length
    return batches
