"""The lint gate carries its own settings: the same verdict wherever the files are.

`migrate check --migrations-dir DIR` on a folder outside the repository, run from
a cwd outside it, lints with the PostgreSQL dialect and the project's rules (it
used to stop at sqlfluff's "No dialect was specified", exit 5).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cicd_db import lint
from cicd_db.errors import ConfigError, OperationalError
from cicd_db.migrations.files import discover

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


# Both findings of STYLE_FAULT made warnings: sqlfluff then passes it.
WARNINGS_ONLY = "[sqlfluff]\nwarnings = CP01,CP05\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("m/.sqlfluff", "[sqlfluff]\nrules = RF01\n"),
        ("m/.sqlfluff", "[sqlfluff]\nexclude_rules = CP01,LT01\n"),
        ("m/.sqlfluff", "[sqlfluff]\nlarge_file_skip_byte_limit = 1\n"),
        ("m/.sqlfluffignore", "*.sql\n"),
        ("m/.sqlfluff", WARNINGS_ONLY),
        (
            "m/.sqlfluff",
            "[sqlfluff:rules:capitalisation.keywords]\nignore_words_regex = .*\n[sqlfluff:rules:capitalisation.types]\nignore_words_regex = .*\n",
        ),
        ("m/pyproject.toml", '[tool.sqlfluff.core]\nwarnings = "CP01,CP05"\n'),
        (".sqlfluff", WARNINGS_ONLY),
        ("home/.sqlfluff", WARNINGS_ONLY),
    ],
    ids=[
        "rules",
        "exclude-rules",
        "skip-limit",
        "ignore-file",
        "warnings",
        "ignore-words",
        "pyproject",
        "folder-above",
        "home-folder",
    ],
)
def test_settings_beside_the_files_cannot_switch_the_style_check_off(
    tmp_path: Path, name: str, text: str
) -> None:
    """No settings but the gate's own are read, beside the files, above them or in the
    home folder: each of these made a failing file pass, counted as checked (some by
    taking rules away, some by making their findings warnings or their words ignored)."""
    folder, home = tmp_path / "m", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    (folder / "0001_t.sql").write_text(STYLE_FAULT)
    (tmp_path / name).write_text(text)
    # From the folder above the files, where sqlfluff looks for settings on its way to them.
    completed = run_cli(
        "migrate", "check", "--migrations-dir", "m",
        env={"HOME": str(home)}, process=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    output = completed.out + completed.err
    assert completed.code == 5 and "CP01" in output, output


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
    passed the safe sibling's files for the unsafe ones."""
    unsafe, safe = tmp_path / "m[1]", tmp_path / "m1"
    for folder, text in ((unsafe, "CREATE TABLE t (id INT PRIMARY KEY);\n"), (safe, CLEAN)):
        folder.mkdir()
        (folder / "0001_t.sql").write_text(text)
    code, output = _check(unsafe)
    assert code == 5 and "prefer-bigint-over-int" in output, output


def _lint(folder: Path) -> list[lint.Report]:
    return lint.lint(discover(folder), folder)


def _padded(text: str, size: int) -> str:
    """`text` after comment lines, `size` bytes in all."""
    lines = ""
    while len(lines) + len(text) + 80 <= size:
        lines += f"-- {'x' * 76}\n"
    left = size - len(lines) - len(text)
    return lines + ("-- " + "x" * (left - 4) + "\n" if left else "") + text


def test_a_file_of_exactly_the_style_limit_is_style_checked_and_one_byte_more_is_not(
    tmp_path: Path,
) -> None:
    """STYLE_LIMIT is the largest file sqlfluff is given, as its own default is."""
    (tmp_path / "0001_at.sql").write_text(_padded(CLEAN, lint.STYLE_LIMIT))
    (tmp_path / "0002_over.sql").write_text(_padded(CLEAN, lint.STYLE_LIMIT + 1))
    assert [len(p.read_bytes()) for p in sorted(tmp_path.iterdir())] == [
        lint.STYLE_LIMIT, lint.STYLE_LIMIT + 1,
    ]  # fmt: skip
    style = _lint(tmp_path)[0]
    assert (style.files, style.skipped) == (("0001_at.sql",), ("0002_over.sql",))


def test_a_folder_of_files_all_too_large_to_style_check_names_them_all(tmp_path: Path) -> None:
    """With nothing for sqlfluff, it is not run: its report checks no file, passes, and
    names every file as not style-checked; squawk still checks them."""
    (tmp_path / "0001_large.sql").write_text(_padded(CLEAN, lint.STYLE_LIMIT + 1))
    style, safety = _lint(tmp_path)
    assert style == lint.Report("sqlfluff", (), True, "", ("0001_large.sql",))
    assert (safety.tool, safety.files, safety.passed) == (
        "squawk (in a transaction)", ("0001_large.sql",), True,
    )  # fmt: skip


def test_a_no_transaction_file_is_judged_as_running_outside_one(tmp_path: Path) -> None:
    """CREATE INDEX CONCURRENTLY belongs in a file marked no-transaction: squawk judges
    that file apart, as running outside a transaction, and passes it."""
    (tmp_path / "0001_t.sql").write_text(CLEAN)
    (tmp_path / "0002_index.sql").write_text(
        "-- cicd-db: no-transaction\nSET lock_timeout = '1s';\nSET statement_timeout = '60s';\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS u_id ON u (id);\n"
    )
    reports = {report.tool: report for report in _lint(tmp_path)}
    assert list(reports) == ["sqlfluff", "squawk (in a transaction)", "squawk (no transaction)"]
    assert reports["squawk (in a transaction)"].files == ("0001_t.sql",)
    assert reports["squawk (no transaction)"].files == ("0002_index.sql",)
    assert all(report.passed for report in reports.values()), reports


def test_squawks_findings_are_lines_that_name_the_file_and_line(tmp_path: Path) -> None:
    """squawk reports as gcc does (`FILE:LINE:COLUMN: ...`), which editors and CI jump to."""
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (id INT PRIMARY KEY);\n")
    safety = _lint(tmp_path)[1]
    assert not safety.passed
    assert re.match(r"0001_t\.sql:\d+:\d+: warning: prefer-bigint-over-int ", safety.output), (
        safety.output
    )
    assert "prefer-bigint-over-int" in safety.output, safety.output


def test_the_tools_are_found_on_path_when_not_beside_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside the running Python first (a venv's bin, not on PATH), then on PATH; where
    neither has it, one line that says how to install it."""
    (tmp_path / "0001_t.sql").write_text(CLEAN)
    tools = Path(sys.executable).parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(sys, "executable", str(elsewhere / "python"))
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    assert [report.passed for report in _lint(tmp_path)] == [True, True]
    monkeypatch.setenv("PATH", str(elsewhere))
    with pytest.raises(ConfigError) as refused:
        _lint(tmp_path)
    assert str(refused.value) == (
        f"the lint gate needs sqlfluff, not found beside {elsewhere / 'python'} or on PATH; "
        "install it with `pip install 'cicd-db[lint]'` (make install does), or pass --no-lint"
    )


@pytest.mark.slow
def test_a_folder_of_more_files_than_a_command_line_holds_is_linted_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tools get the files in runs that fit a command line (a folder of thousands
    failed with "Argument list too long", told as "cannot write the output"): here runs
    of about two names, and the fault in the last file is still found."""
    monkeypatch.setattr(lint, "BATCH_BYTES", 2 * len(str(tmp_path / "0001_t1.sql")) + 4)
    for number in range(1, 6):
        (tmp_path / f"000{number}_t{number}.sql").write_text(CLEAN.replace(" u ", f" u{number} "))
    code, output = _check(tmp_path)
    assert code == 0 and "sqlfluff: passed (5 files)" in output, output
    assert "squawk (in a transaction): passed (5 files)" in output, output
    (tmp_path / "0006_t6.sql").write_text(STYLE_FAULT)
    code, output = _check(tmp_path)
    assert code == 5 and "0006_t6.sql" in output and "CP01" in output, output


@pytest.mark.parametrize("broken", ["not executable", "a folder"])
def test_a_lint_tool_that_cannot_start_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """A `sqlfluff` beside Python that is no program was told "cannot write the output:
    Permission denied", exit 1: it is the tool, exit 2, with its fix."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "0001_t.sql").write_text(CLEAN)
    tool = tmp_path / "bin" / "sqlfluff"
    if broken == "a folder":
        tool.mkdir(parents=True)
    else:
        tool.parent.mkdir()
        tool.write_text("not a program\n")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    code, output = _check(tmp_path / "m")
    assert code == 2 and output.count("\n") == 1, output
    assert output.startswith(f"error: the lint gate could not start {tool}: "), output
    assert "pip install 'cicd-db[lint]'" in output


@pytest.mark.parametrize(
    "setting",
    [
        "-- sqlfluff:rules:LT12",
        "--sqlfluff:rules:capitalisation.keywords:capitalisation_policy:lower",
        "-- sqlfluff:exclude_rules:CP01",
        "-- sqlfluff:dialect:nosuchdialect",  # which made sqlfluff itself fail
    ],
)
def test_a_files_own_sqlfluff_settings_are_refused_not_obeyed(tmp_path: Path, setting: str) -> None:
    """sqlfluff reads a `-- sqlfluff:` line as settings of that file alone: one comment
    took every rule but one away, or turned the keyword policy round, and a file of
    lower-case keywords passed (helper-131). The line is a finding of the gate's, named."""
    (tmp_path / "0001_t.sql").write_text(f"{setting}\n{STYLE_FAULT}")
    code, output = _check(tmp_path)
    assert code == 5, output
    assert (
        f"{tmp_path / '0001_t.sql'}:1: a `-- sqlfluff:` line sets sqlfluff's rules for this "
        "file alone; the gate's settings are the project's: remove it"
    ) in output, output


@given(
    st.lists(
        st.sampled_from(
            [
                "-- sqlfluff",
                "--sqlfluff",
                " -- sqlfluff",
                "-- sqlfluff:rules:LT12",
                "--",
                "x",
                "\n",
                "\r",
                "\r\n",
                "\x0b",
                "\x0c",
                "\x1c",
                "\x85",
                "\u2028",
                " ",
                "-",
            ]
        ),
        max_size=12,
    )
)
def test_the_lines_taken_for_a_files_own_settings_are_those_sqlfluff_takes(
    pieces: list[str],
) -> None:
    """sqlfluff itself is the oracle: the lines it would read as settings of the file's
    own (process_raw_file_for_config) are the gate's, whatever ends the lines."""
    from sqlfluff.core import FluffConfig

    text = "".join(pieces)
    taken: list[str] = []
    config = FluffConfig(overrides={"dialect": "postgres"})
    config.process_inline_config = lambda line, fname: taken.append(line)  # type: ignore[method-assign]
    config.process_raw_file_for_config(text, "f.sql")
    # Of the lines it reads, those process_inline_config applies (it passes over the
    # others with a warning): after the dashes, `sqlfluff:`.
    applied = [line for line in taken if line[2:].strip().startswith("sqlfluff:")]
    lines = text.splitlines()
    assert [lines[n - 1] for n in lint.inline_settings(text)] == applied


def test_a_lint_tool_that_fails_itself_is_not_taken_for_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool that crashes (a traceback, sqlfluff's exit 2, a panic's 101) was told as
    the files' findings, exit 5: it is the gate's failure, exit 1, which no change to
    the files would fix."""
    (tmp_path / "0001_t.sql").write_text(CLEAN)
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in {"crashes": "echo boom >&2; exit 2", "traces": "echo 'Traceback (most recent call last):' >&2; echo Oops >&2; exit 1"}.items():  # fmt: skip
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    for name, last in (("crashes", "boom"), ("traces", "Oops")):
        with pytest.raises(OperationalError) as failed:
            lint._run(name, [], ["0001_t.sql"], tmp_path, [])
        assert str(failed.value) == (
            f"the lint gate's {name} failed (exit {2 if name == 'crashes' else 1}): {last}; "
            "reinstall it with `pip install 'cicd-db[lint]'`, or pass --no-lint"
        )


def test_prose_that_begins_with_sqlfluff_is_no_setting(tmp_path: Path) -> None:
    """`-- sqlfluff complains about this line`: sqlfluff passes it over, so the gate
    does too."""
    (tmp_path / "0001_t.sql").write_text(f"-- sqlfluff complains about long lines here\n{CLEAN}")
    code, output = _check(tmp_path)
    assert code == 0 and "sets sqlfluff's rules" not in output, output
