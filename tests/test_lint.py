"""The lint gate carries its own settings: the same verdict wherever the files are.

`migrate check --migrations-dir DIR` on a folder outside the repository, run from
a cwd outside it, lints with the PostgreSQL dialect and the project's rules (it
used to stop at sqlfluff's "No dialect was specified", exit 5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cicd_db import lint

from .fix_cli import run_cli
from .utils import ROOT


def test_the_gates_settings_are_the_repositorys() -> None:
    """One text: what editors and plain sqlfluff read in the repository is what the gate uses."""
    assert (ROOT / ".sqlfluff").read_text() == lint.SQLFLUFF_CONFIG
    assert (ROOT / ".squawk.toml").read_text() == lint.SQUAWK_CONFIG


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-dir", "relative-dir"])
@pytest.mark.parametrize(
    ("text", "code", "finding"),
    [
        ("CREATE TABLE t (id BIGINT PRIMARY KEY);\n", 0, None),
        ("create table t (id bigint primary key);\n", 5, "CP01"),  # the project's upper case
        ("CREATE TABLE t (id INT PRIMARY KEY);\n", 5, "prefer-bigint-over-int"),  # squawk's
    ],
    ids=["clean", "style", "safety"],
)
def test_a_folder_outside_the_repository_is_linted_by_the_projects_rules(
    tmp_path: Path, relative: bool, text: str, code: int, finding: str | None
) -> None:
    assert not tmp_path.is_relative_to(ROOT)
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_t.sql").write_text(text)
    directory = "migrations" if relative else str(folder)
    completed = run_cli(
        "migrate", "check", "--migrations-dir", directory, process=True, cwd=tmp_path, timeout=120
    )
    output = completed.out + completed.err
    assert completed.code == code, output
    assert "dialect" not in output
    if finding is not None:
        assert finding in output


STYLE_FAULT = "create table t (id bigint primary key);\n"  # lower-case keywords: CP01
CLEAN = "CREATE TABLE u (id BIGINT PRIMARY KEY);\n"


def _check(folder: Path, *flags: str) -> tuple[int, str]:
    completed = run_cli("migrate", "check", "--migrations-dir", str(folder), *flags, timeout=120)
    return completed.code, completed.out + completed.err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "text"),
    [
        (".sqlfluff", "[sqlfluff]\nrules = RF01\n"),
        (".sqlfluff", "[sqlfluff]\nexclude_rules = CP01,LT01\n"),
        (".sqlfluff", "[sqlfluff]\nlarge_file_skip_byte_limit = 1\n"),
        (".sqlfluffignore", "*.sql\n"),
    ],
    ids=["rules", "exclude-rules", "skip-limit", "ignore-file"],
)
def test_settings_beside_the_files_cannot_switch_the_style_check_off(
    tmp_path: Path, name: str, text: str
) -> None:
    """They may add settings, not take the gate's rules or files away: each of these made
    a failing file pass, counted as checked (helper-66, helper-68)."""
    (tmp_path / "0001_t.sql").write_text(STYLE_FAULT)
    (tmp_path / name).write_text(text)
    code, output = _check(tmp_path)
    assert code == 5 and "CP01" in output, output


@pytest.mark.slow
def test_a_file_too_large_to_style_check_is_named_not_passed_in_silence(tmp_path: Path) -> None:
    """sqlfluff skips a file over 20,000 bytes with a warning and exits 0: the gate said
    "sqlfluff: passed (2 files)" for a file it never read. squawk still checks it."""
    (tmp_path / "0001_small.sql").write_text(CLEAN)
    padding = "".join(f"-- {'x' * 76}\n" for _ in range(lint.STYLE_LIMIT // 80 + 1))
    (tmp_path / "0002_large.sql").write_text(padding + STYLE_FAULT)
    code, output = _check(tmp_path)
    assert code == 0, output
    assert "sqlfluff: passed (1 file)\n" in output
    assert "not style-checked (over 20,000 bytes" in output and "): 0002_large.sql\n" in output
    assert "squawk (in a transaction): passed (2 files)" in output


@pytest.mark.slow
def test_a_folder_whose_path_reads_as_a_glob_is_linted_itself(tmp_path: Path) -> None:
    """squawk takes a path for a glob pattern: `m[1]/...` matched `m1/...`, and the gate
    passed the safe sibling's files for the unsafe ones (helper-66)."""
    unsafe, safe = tmp_path / "m[1]", tmp_path / "m1"
    for folder, text in ((unsafe, "CREATE TABLE t (id INT PRIMARY KEY);\n"), (safe, CLEAN)):
        folder.mkdir()
        (folder / "0001_t.sql").write_text(text)
    code, output = _check(unsafe)
    assert code == 5 and "prefer-bigint-over-int" in output, output
