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
