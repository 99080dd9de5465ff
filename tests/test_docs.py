"""The documentation points at what exists: every relative link in the Markdown of the
repository resolves, and every test module a page names by file name is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .fix_db import Database
from .utils import MIGRATIONS, ROOT

PAGES = sorted([*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *(ROOT / "db").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
TEST_MODULE = re.compile(r"\btest_[a-z0-9_]+\.py\b")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [
        target
        for target in LINK.findall(page.read_text(encoding="utf-8"))
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
        if not (page.parent / target.split("#")[0]).exists()
    ]
    assert broken == [], f"{page.relative_to(ROOT)} links to what is not there"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_test_module_named_exists(page: Path) -> None:
    modules = {path.name for path in (ROOT / "tests").rglob("test_*.py")}
    named = set(TEST_MODULE.findall(page.read_text(encoding="utf-8")))
    assert named - modules == set(), f"{page.relative_to(ROOT)} names tests that are not there"


TEST_NAME = re.compile(r"\b(test_[a-z0-9_]+)\b(?!\.py)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_test_named_exists(page: Path) -> None:
    """A guarantee that cites its test by name cites one that is there (a renamed test
    left docs/reports.md citing a name no test had)."""
    tests = list((ROOT / "tests").rglob("*.py"))
    defined = {path.stem for path in tests} | {  # a module named without .py too
        name
        for path in tests
        for name in re.findall(r"^\s*def (test_[a-z0-9_]+)", path.read_text(), re.MULTILINE)
    }
    named = set(TEST_NAME.findall(page.read_text(encoding="utf-8")))
    assert named - defined == set(), f"{page.relative_to(ROOT)} names tests that are not there"


def test_the_samples_count_the_repositorys_migrations() -> None:
    """The `make run` and everyday-commands samples say what this repository's files
    give (they said 27 and 28 files when there were 36)."""
    from cicd_db import migrations

    files = migrations.discover(MIGRATIONS)
    transactional = sum(1 for migration in files if migration.transactional)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"applied {len(files)} migrations to stack embedded" in readme
    assert f"\n{files[-1].version}       {files[-1].name}" in readme
    guide = (ROOT / "docs" / "migrations.md").read_text(encoding="utf-8")
    new = len(files) + 1  # `migrate new` in the sample adds one, in a transaction
    assert f"db/migrations/{new:04d}_add_run_index.sql" in guide
    assert f"sqlfluff: passed ({new} files)" in guide
    assert f"squawk (in a transaction): passed ({transactional + 1} files)" in guide
    assert f"squawk (no transaction): passed ({len(files) - transactional} files)" in guide


@pytest.mark.db
def test_the_readmes_recording_example_runs_as_written(migrated: Database) -> None:
    """Pasted, the example raised IllegalTransition at finish_stage (its jobs were left
    to a `...`) and left a RUNNING run behind (found by helper-111): it runs whole,
    on a migrated database named in place of the local target, and records what it says."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Recording executions.*?```python\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    code = block[1].replace(
        "targets.resolve(local=True)", f"targets.resolve(database_url={migrated.url!r})"
    )
    assert code != block[1]
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the repository's own example
    assert migrated.query(
        "SELECT p.status, s.status, string_agg(j.job_name || ' ' || j.status, ', ' ORDER BY j.job_name) "
        "FROM pipeline_executions p JOIN stage_executions s ON s.pipeline_execution_id = p.id "
        "JOIN job_executions j ON j.stage_execution_id = s.id GROUP BY p.status, s.status"
    ) == [("SUCCESS", "SUCCESS", "lint FAILED, unit SUCCESS")]
