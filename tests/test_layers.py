"""Imports flow one way (docs/design.md, "Layout and imports"): read from the source,
every import of a cicd_db module points down the layers below, never up or sideways,
and inside the runner down its list of modules. Imports under TYPE_CHECKING are for
the type checker only and run nothing, so they are left out."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cicd_db"

# The modules and packages of cicd_db from the top down; one may import only from the
# layers after its own. docs/design.md draws the same picture.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "__main__",
        "entry",
        "cli",
        "commands",
        "console",
        "lint insights local",
        "migrations report retention",
        "schema throwaway store sqltext",
        "targets outputs",
        "embedded stacks refusals cloud",
        "pgprocess settings",
        "redaction",
        "libpq cursors",
        "errors signals",
    )
)
# The runner's modules from the top down (docs/design.md, "The runner").
RUNNER = [
    "runner",
    "apply",
    "verdicts",
    "indexes",
    "retry",
    "rehearse",
    "verify",
    "lock",
    "session",
    "diagnose",
    "unparsed",
    "integrity",
    "reconcile",
    "history",
    "finding",
    "history_table",
    "failures",
    "files",
    "statements",
    "kinds",
    "steps",
    "directives",
]


@cache
def _tree(path: Path) -> ast.Module:
    """`path` parsed, once for all the tests that read it."""
    return ast.parse(path.read_text())


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """The cicd_db modules `path` imports when it runs, with their lines: `import` and
    `from ... import` anywhere (a function's own included), not under TYPE_CHECKING."""
    tree = _tree(path)
    # The body of `if TYPE_CHECKING:` itself; not its else, nor any other test.
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and ast.unparse(branch.test) == "TYPE_CHECKING"
        for statement in branch.body
        for node in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "relative"))  # refused: the layers read absolute names
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cicd_db" or node.module.startswith("cicd_db."):
                # `from cicd_db.migrations import history`: the module history, else a name
                # of the module (or package) imported from.
                found += [
                    (node.lineno, f"{node.module}.{alias.name}")
                    if _is_module(f"{node.module}.{alias.name}")
                    else (node.lineno, node.module)
                    for alias in node.names
                ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cicd_db.")]
    return found


def _is_module(name: str) -> bool:
    """Whether `name` (cicd_db.x.y) is a module or package of the source, not a name in one."""
    where = SOURCE.joinpath(*name.split(".")[1:])
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _module_of(path: Path) -> list[str]:
    return list(path.relative_to(SOURCE).with_suffix("").parts)


def _layer(unit: str) -> int:
    return next(number for number, layer in enumerate(LAYERS) if unit in layer)


SOURCES = sorted(SOURCE.rglob("*.py"))
# Every module but the top package's own __init__, which names no layer.
LIBRARY = [path for path in SOURCES if path != SOURCE / "__init__.py"]
# The runner's modules; its __init__ gathers the names of them all.
RUNNER_MODULES = sorted(
    set((SOURCE / "migrations").glob("*.py")) - {SOURCE / "migrations" / "__init__.py"}
)


def test_every_module_and_package_has_a_layer() -> None:
    units = {_module_of(path)[0] for path in SOURCES} - {"__init__"}
    assert units == set().union(*LAYERS)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: "/".join(_module_of(path)))
def test_imports_point_down_the_layers(path: Path) -> None:
    unit = _module_of(path)[0]
    imports = _runtime_imports(path)
    assert [line for line, name in imports if name == "relative"] == [], "a relative import"
    upward = [
        f"line {line}: {name}"
        for line, name in imports
        if (target := name.split(".")[1]) != unit and _layer(target) <= _layer(unit)
    ]
    assert upward == [], f"{path.name} imports from its own layer or above it"


@pytest.mark.parametrize("path", RUNNER_MODULES, ids=lambda path: path.stem)
def test_the_runners_modules_import_only_those_below_them(path: Path) -> None:
    position = RUNNER.index(path.stem)
    # The package itself (`from cicd_db import migrations`) loads runner, the top.
    upward = [
        f"line {line}: {name}"
        for line, name in _runtime_imports(path)
        if name == "cicd_db.migrations"
        or (name.startswith("cicd_db.migrations.") and RUNNER.index(name.split(".")[2]) <= position)
    ]
    assert upward == [], f"migrations/{path.name} imports a module at or above its own"


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: "/".join(_module_of(path)))
def test_nothing_in_the_library_imports_pulumi(path: Path) -> None:
    """The library reads a stack through the `pulumi` CLI (stacks.py); importing the SDK
    would put gRPC on every command's start-up. Only infra/ imports Pulumi."""
    tree = _tree(path)
    named = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    ]
    assert [name for name in named if name.split(".")[0].startswith("pulumi")] == []
