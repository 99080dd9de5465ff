"""The documentation points at what exists: every relative link in the Markdown of the
repository resolves, and every test module a page names by file name is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .utils import ROOT

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
