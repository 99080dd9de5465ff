"""`cicd-db report`: the four views in three formats, against golden files.

Regenerate the golden files after an intended change with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_report.py`, and read the diff.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import insights, report, retention, store, targets
from cicd_db.errors import ConfigError, UsageError
from cicd_db.insights import text as insights_text
from cicd_db.settings import ConnectionSettings
from cicd_db.store import (
    CANCELED,
    FAILED,
    RUNNING,
    SUCCESS,
    JobRun,
    PipelineRun,
    StageRun,
    Store,
)

from .fix_cli import run_cli
from .fix_db import Database, Databases
from .utils import LOOK_ALIKE_TYPES, ROOT, examples

GOLDEN = ROOT / "tests" / "golden"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
COMMIT = "3f2a9c1e0b7d4a5f6e8c9d0a1b2c3d4e5f6a7b8c"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(executions: Store) -> None:
    """Three runs of `build`: a success with an allowed failure, a failure, one running."""
    run = executions.set_status(executions.start_run("build", COMMIT), RUNNING, at=at(0))
    plan = [
        ("compile", [("compile", False, SUCCESS, 40)]),
        (
            "test",
            [
                ("unit", False, SUCCESS, 95),
                ("lint", True, FAILED, 12),
                ("integration-tests-against-postgres", False, SUCCESS, 310),
            ],
        ),
        ("package", [("wheel", False, SUCCESS, 8)]),
    ]
    clock = 0.0
    for order, (stage_name, jobs) in enumerate(plan, start=1):
        stage = executions.set_status(
            executions.add_stage(run, stage_name, order), RUNNING, at=at(clock)
        )
        added = executions.add_jobs(stage, [(name, allowed) for name, allowed, _, _ in jobs])
        longest = 0
        for job, (_, _, outcome, seconds) in zip(added, jobs, strict=True):
            job = executions.set_status(job, RUNNING, at=at(clock))
            executions.set_status(job, outcome, at=at(clock + seconds))
            longest = max(longest, seconds)
        clock += longest + 1
        executions.finish_stage(stage, at=at(clock))
    executions.finish_run(run, at=at(clock + 1))

    failed = executions.set_status(
        executions.start_run("build", "9e8d7c6b5a4f"), RUNNING, at=at(3600)
    )
    stage = executions.set_status(executions.add_stage(failed, "compile", 1), RUNNING, at=at(3600))
    job = executions.set_status(executions.add_job(stage, "compile"), RUNNING, at=at(3600))
    executions.set_status(job, FAILED, at=at(3661.5))
    executions.finish_stage(stage, at=at(3662))
    never_ran = executions.add_stage(failed, "test", 2)
    executions.set_status(never_ran, CANCELED, at=at(3662))
    executions.finish_run(failed, at=at(3663))

    running = executions.set_status(
        executions.start_run("build", "0a1b2c3d4e5f"), RUNNING, at=at(7200)
    )
    stage = executions.set_status(executions.add_stage(running, "compile", 1), RUNNING, at=at(7200))
    executions.set_status(executions.add_job(stage, "compile"), RUNNING, at=at(7201))
    executions.add_job(stage, "docs", allows_failure=True)


@pytest.fixture(scope="module")
def recorded(databases: Databases, migrated_template: str) -> Iterator[Database]:
    """One database, recorded once, shared by every view and format."""
    database = databases.create(migrated_template)
    with database.connect() as conn:
        record(Store.on(conn))
    yield database
    databases.drop(database)


_MICROSECONDS = st.lists(
    st.integers(0, 10**12)  # up to 11 days
    | st.integers(0, 10**7).map(lambda k: k * 1000 + 500)  # half-way at 3 decimals
    | st.integers(0, 10**5).map(lambda k: k * 100_000 + 50_000),  # and at 1
    min_size=1,
    max_size=200,
)


@pytest.mark.db
@settings(max_examples=examples(30), deadline=None)
@given(micros=_MICROSECONDS)
def test_durations_are_rounded_as_postgresql_rounds_them(
    server: ConnectionSettings, micros: list[int]
) -> None:
    """duration_seconds (3 decimals) and the table's seconds (1) are the exact duration
    rounded as PostgreSQL's round() rounds it: half away from zero, never the float's
    binary value (1.0005 s is 1.001, as 2.0005 s is 2.001); and insights, which reads a
    run's seconds as the float its query makes, rounds them the same (a run of 1.0025 s
    was 1.003 s in report and 1.002 s in insights)."""
    durations = [timedelta(microseconds=m) for m in micros]
    with psycopg.connect(server.conninfo()) as conn:
        oracle = conn.execute(
            "SELECT array_agg(round(extract(epoch FROM d), 3) ORDER BY n), "
            "array_agg(round(extract(epoch FROM d), 1) ORDER BY n), "
            "array_agg(extract(epoch FROM d)::float8 ORDER BY n) "
            "FROM unnest(%s::interval[]) WITH ORDINALITY AS t (d, n)",
            [durations],
        ).fetchone()
    assert oracle is not None
    assert [report.rounded_seconds(d, 3) for d in durations] == [float(v) for v in oracle[0]]
    assert [report.rounded_seconds(d, 1) for d in durations] == [float(v) for v in oracle[1]]
    assert [insights_text._seconds(v) for v in oracle[2]] == [float(v) for v in oracle[0]]


# Zones with summer time and zones whose offset changed in history: psycopg gives a
# session's timestamptz in its zone, one tzinfo for both times of a row.
_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
_INSTANTS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=examples(200), deadline=None)
@given(start=_INSTANTS, end=_INSTANTS, zone=st.sampled_from(_ZONES))
def test_a_rows_duration_is_between_instants_whatever_the_sessions_zone(
    start: datetime, end: datetime, zone: str
) -> None:
    """A duration is completion_time - start_time as instants, as the server computes
    it: never by the clocks of a zone with summer time (Python's subtraction of two
    datetimes of one tzinfo)."""
    where = ZoneInfo(zone)
    row = PipelineRun(
        SUCCESS, start.astimezone(where), end.astimezone(where), uuid.uuid4(), "p", 1, "c"
    )
    assert row.duration == end - start


def test_durations_across_a_change_of_summer_time_are_the_servers(migrated: Database) -> None:
    """Recorded in UTC around the night Berlin's clocks went back, read in a session
    whose time zone is Berlin's: 30 minutes, in the table, in JSON and through the
    library, as the server's own subtraction says (it said -30 min, and 2 h across the
    spring change)."""
    utc = [datetime(2026, 10, 25, 0, 45, tzinfo=UTC), datetime(2026, 10, 25, 1, 15, tzinfo=UTC)]
    with migrated.connect() as conn:
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run("clocks", COMMIT), RUNNING, at=utc[0])
        stage = executions.set_status(executions.add_stage(run, "s", 1), RUNNING, at=utc[0])
        job = executions.set_status(executions.add_job(stage, "j"), RUNNING, at=utc[0])
        executions.set_status(job, SUCCESS, at=utc[1])
        executions.finish_stage(stage, at=utc[1])
        executions.finish_run(run, at=utc[1])
    berlin = replace(migrated.settings, parameters=(("options", "-c timezone=Europe/Berlin"),))
    with psycopg.connect(berlin.conninfo(), autocommit=True) as conn:
        served = conn.execute(
            "SELECT completion_time - start_time, start_time::text FROM pipeline_executions "
            "WHERE pipeline_name = 'clocks'"
        ).fetchone()
        assert served is not None and served[1].endswith("+02"), served  # read in Berlin
        read = Store.on(conn)
        [found] = read.runs("clocks")
        [stage_read] = read.stages(found.id)
        [job_read] = read.jobs(stage_read.id)
        assert [found.duration, stage_read.duration, job_read.duration] == [served[0]] * 3
    assert served[0] == timedelta(minutes=30)
    url = berlin.url()
    shown = run_cli(
        "report", "--database-url", url, "--pipeline", "clocks", "--run", "1", "--format", "json"
    )
    assert shown.code == 0, shown
    view = json.loads(shown.out)
    durations = [view["run"], *view["stages"]]
    assert [part["duration_seconds"] for part in durations] == [1800.0] * 2, shown.out


def test_type_names_before_pg_catalog_change_nothing_the_readers_and_writers_do(
    migrated: Database,
) -> None:
    """The database's search_path names a schema of look-alike types (a domain refusing
    every value for each of pg_catalog's type names) before pg_catalog: recording,
    `report`, `insights` and `retention` work as without it."""
    migrated.execute(
        LOOK_ALIKE_TYPES
        + sql.SQL("ALTER DATABASE {} SET search_path = public, types, pg_catalog")
        .format(sql.Identifier(migrated.name))
        .as_string()
    )
    with migrated.connect() as conn:
        record(Store.on(conn))
        assert conn.execute("SHOW search_path").fetchone() == ("public, types, pg_catalog",)
    target = ["--database-url", migrated.url]
    for command in (
        ["report", "--pipeline", "build", "--format", "json"],
        ["report", "--pipeline", "build", "--run", "1", "--stage", "test"],
        ["insights", "--pipeline", "build", "--format", "json"],
        ["retention", "--keep-days", "1", "--dry-run"],
        ["retention", "--keep-days", "1", "--yes"],
    ):
        done = run_cli(*command, *target)
        assert (done.code, done.err) == (0, ""), (command, done)


VIEWS = {
    "runs": ["--limit", "2"],
    "run": ["--run", "1"],
    "stage": ["--run", "1", "--stage", "test"],
    "job": ["--run", "1", "--stage", "test", "--job", "lint"],
}
SUFFIX = {"table": "txt", "json": "json", "yaml": "yaml"}


@pytest.mark.db
@pytest.mark.parametrize("output_format", list(SUFFIX))
@pytest.mark.parametrize("view", list(VIEWS))
def test_view_matches_golden(recorded: Database, view: str, output_format: str) -> None:
    result = run_cli(
        "report",
        "--database-url",
        recorded.url,
        "--pipeline",
        "build",
        *VIEWS[view],
        "--format",
        output_format,
    )
    assert (result.code, result.err) == (0, "")
    golden = GOLDEN / f"report_{view}.{SUFFIX[output_format]}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(result.out)
    assert result.out == golden.read_text()
    if output_format == "table":
        assert max(len(line) for line in result.out.splitlines()) <= 80
    if output_format == "json":
        assert json.loads(result.out) == yaml.safe_load(
            (GOLDEN / f"report_{view}.yaml").read_text()
        )
        # --json, every command's flag for JSON, is --format json here too.
        flag = run_cli("report", "--database-url", recorded.url, "--pipeline", "build",
                       *VIEWS[view], "--json")  # fmt: skip
        assert flag == result


def json_keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in json_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in json_keys(item)}
    return set()


def test_every_json_key_is_documented() -> None:
    readme = (ROOT / "docs" / "reports.md").read_text()
    section = readme.split("## Report formats", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    keys: set[str] = set()
    for view in VIEWS:
        keys |= json_keys(json.loads((GOLDEN / f"report_{view}.json").read_text()))
    assert keys == documented


@pytest.mark.db
def test_paging_through_1000_runs_with_before(migrated: Database) -> None:
    migrated.query(
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
        "SELECT 'build', md5(i::text) FROM generate_series(1, 1000) i RETURNING 1"
    )
    seen: list[int] = []
    page: list[str] = []
    while True:
        result = run_cli(
            "report",
            "--database-url",
            migrated.url,
            "--pipeline",
            "build",
            "--limit",
            "250",
            "--format",
            "json",
            *page,
        )
        assert result.code == 0, result.err
        listing = json.loads(result.out)
        seen += [run["run_number"] for run in listing["runs"]]
        if listing["next_before"] is None:
            break
        page = ["--before", str(listing["next_before"])]
    assert seen == list(range(1000, 0, -1))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--pipeline", "deploy"],
            1,
            "error: pipeline 'deploy' has no runs; check the name (names are case-sensitive)",
        ),
        (
            ["--pipeline", "build", "--format", "yaml", "--json"],
            2,
            "error: --json and --format yaml ask for two formats; give one of them",
        ),
        (
            ["--pipeline", "build", "--run", "9"],
            1,
            "error: pipeline 'build' has no run 9; its runs go from 1 to 3",
        ),
        (
            ["--pipeline", "build", "--run", "1", "--stage", "deploy"],
            1,
            "error: run 1 of pipeline 'build' has no stage 'deploy'; see `cicd-db report "
            "--pipeline build --run 1`",
        ),
        (
            ["--pipeline", "build", "--run", "1", "--stage", "test", "--job", "e2e"],
            1,
            "error: stage 'test' of run 1 of pipeline 'build' has no job 'e2e'; see `cicd-db "
            "report --pipeline build --run 1 --stage test`",
        ),
        (
            ["--pipeline", "build", "--job", "unit"],
            2,
            "error: --job needs --stage (and --run): a job is named within its stage",
        ),
        (
            ["--pipeline", "build", "--stage", "test"],
            2,
            "error: --stage needs --run: a stage is named within its run",
        ),
        (
            ["--pipeline", "build", "--run", "1", "--before", "3"],
            2,
            "error: --limit and --before page through runs; leave them out with --run",
        ),
        (
            ["--pipeline", "build", "--run", "0"],
            2,
            "error: argument --run: '0' is not a whole number above 0; see `cicd-db report --help`",
        ),
        (
            ["--pipeline", "build", "--run", "9223372036854775808"],
            2,
            "error: --run 9223372036854775808 is no run number; give a whole number within "
            "bigint's range",
        ),
        (
            ["--pipeline", "build", "--before", "9223372036854775808"],
            2,
            "error: --before 9223372036854775808 is no run number; give a whole number within "
            "bigint's range, or leave it out",
        ),
        (
            ["--pipeline", "build", "--format", "xml"],
            2,
            "error: argument --format: invalid choice: 'xml' (choose from 'table', 'json', 'yaml'); "
            "see `cicd-db report --help`",
        ),
        (
            ["--run", "1"],
            2,
            "error: the following arguments are required: --pipeline; see `cicd-db report --help`",
        ),
    ],
    ids=[
        "no-pipeline",
        "json-and-another-format",
        "no-run",
        "no-stage",
        "no-job",
        "job-without-stage",
        "stage-without-run",
        "paging-with-run",
        "run-zero",
        "run-past-bigint",
        "before-past-bigint",
        "bad-format",
        "no-pipeline-flag",
    ],
)
def test_report_errors(recorded: Database, args: list[str], code: int, message: str) -> None:
    result = run_cli("report", "--database-url", recorded.url, *args)
    assert (result.code, result.out, result.err) == (code, "", message + "\n")


# -- hostile names ---------------------------------------------------------------------
#
# Names come from whoever records a run. In a table they must not reach the terminal
# raw (no escape sequence, no line break) nor push a line past 80 columns; JSON and YAML
# keep them exactly.

HOSTILE = {
    "ansi": "\x1b[2J\x1b[H\x1b[31mred\x1b[0m",
    "osc-title": "\x1b]0;owned\x07build",
    "newline": "first\nsecond",
    "tab-cr": "a\tb\rc",
    "c1-csi": "\x9b31mred\x85nel",
    "nel": "x\x85y",  # a YAML line break, which SafeDumper alone writes raw
    "nul-del": "\x00\x7f",
    "separators": "line\u2028para\u2029",
    "bidi": "\u202eevil\u202c\u2066",
    "long": "stage-" + "x" * 294,
    "long-ansi": "\x1b[31m" * 60,
    "cjk": "日本語のステージ名" * 30,
    "emoji": "🎉🚀" * 100,
    "emoji-selector": "❤️" * 100,
    "combining": "e\u0301" * 150,
    "mixed": "ok-" + "漢\x1b" * 60 + "-end",
}
LONG_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def display_width(line: str) -> int:
    """Columns a terminal gives `line`: wide characters two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in line
    )


def hostile_views(
    name: str, finished: datetime = LONG_TIME, number: int = 2**63 - 1
) -> dict[str, report.View]:
    """Every view, with `name` as the pipeline, commit, stage and job name; by default
    with the longest times and the largest run number too."""
    times = {"status": "CANCELED", "start_time": T0, "completion_time": finished}
    run = PipelineRun(
        **times, id=uuid.uuid4(), pipeline_name=name, run_number=number, commit_hash=name
    )
    stages = [
        StageRun(
            **times,
            id=uuid.uuid4(),
            pipeline_execution_id=run.id,
            stage_name=name + suffix,
            execution_order=2**31 - 1 - i,
        )
        for i, suffix in enumerate(["", "-2"])
    ]
    jobs = [
        JobRun(
            **times,
            id=uuid.uuid4(),
            stage_execution_id=stages[0].id,
            job_name=name + suffix,
            allows_failure=True,
        )
        for suffix in ["", "-2"]
    ]
    return {
        "runs": report.RunsView(name, [run, run], next_before=number - 1),
        "run": report.RunView(run, stages),
        "stage": report.StageView(run, stages[0], jobs),
        "job": report.JobView(run, stages[0], jobs[0]),
    }


def assert_fits_a_terminal(text: str) -> None:
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):
        raw = [ch for ch in line if not ch.isprintable()]
        assert not raw, f"raw {raw!r} in {line!r}"
        assert display_width(line) <= 80, f"{display_width(line)} columns: {line!r}"


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "latin-1"])
@pytest.mark.parametrize("view", ["runs", "run", "stage", "job"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_tables_escape_and_fit_hostile_names(
    name: str, view: str, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a terminal of any encoding: what it cannot write, Python writes as `\\U...`
    (cli.standard_output), and the table measures that, not the name."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
    monkeypatch.setattr(sys, "stdout", stdout)
    text = report.render(hostile_views(HOSTILE[name])[view], "table")
    shown = text.encode(encoding, "backslashreplace").decode(encoding)
    assert_fits_a_terminal(shown)
    escaped = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in HOSTILE[name])
    escaped = escaped.encode(encoding, "backslashreplace").decode(encoding)
    if display_width(escaped) <= 40:  # short enough to show whole everywhere
        assert escaped in shown


@pytest.mark.parametrize("view", ["runs", "run", "stage", "job"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_json_and_yaml_keep_hostile_names_exactly(name: str, view: str) -> None:
    shown = hostile_views(HOSTILE[name])[view]
    as_json = report.render(shown, "json")
    as_yaml = report.render(shown, "yaml")
    assert json.loads(as_json) == yaml.safe_load(as_yaml) == report.data(shown)
    for text in (as_json, as_yaml):  # escaped by their formats: only line breaks are raw
        assert all(ch.isprintable() for ch in text.replace("\n", "")), text


@pytest.mark.parametrize("view", ["runs", "run", "stage", "job"])
def test_long_names_keep_their_start_and_end(view: str) -> None:
    name = "integration-tests-" + "x" * 100 + "-against-postgres"
    text = report.table(hostile_views(name, finished=at(95), number=3)[view])
    assert_fits_a_terminal(text)
    # Every long name is shortened the same way: its start, an ellipsis, its end.
    shortened = [word.rstrip(":") for word in text.split() if "…" in word]
    assert shortened
    for word in shortened:
        head, tail = word.split("…")
        assert name.startswith(head) and (name.endswith(tail) or (name + "-2").endswith(tail))
        assert len(head) >= len(tail) >= 5, word


def test_grid_escapes_and_fits_the_migration_status_table() -> None:
    lines = report.grid(
        ["VERSION", "NAME", "STATE", "APPLIED AT"],
        [
            ["1", "create_" + "t" * 200 + "\x1b[8m", "applied", "2026-03-01 09:00:00 UTC"],
            ["2", "short", "pending", "-"],
        ],
    )
    assert_fits_a_terminal("\n".join(lines) + "\n")
    assert lines[1].startswith("1        create_ttt") and lines[1].count("…") == 1
    assert "\\x1b[8m  applied" in lines[1]
    assert lines[2].split() == ["2", "short", "pending", "-"]


@pytest.mark.db
def test_hostile_names_through_the_database_and_cli(migrated: Database) -> None:
    name = HOSTILE["ansi"] + HOSTILE["newline"] + HOSTILE["cjk"]
    with migrated.connect() as conn:
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run(name, name), RUNNING)
        stage = executions.add_stage(run, name, 1)
        executions.add_jobs(stage, [(name, False), (HOSTILE["bidi"], True)])
    views = [[], ["--run", "1"], ["--run", "1", "--stage", name]]
    views.append([*views[-1], "--job", name])
    for view in views:
        result = run_cli("report", "--database-url", migrated.url, "--pipeline", name, *view)
        assert (result.code, result.err) == (0, "")
        assert_fits_a_terminal(result.out)
        shown = run_cli(
            "report", "--database-url", migrated.url, "--pipeline", name, *view, "--format", "json"
        )
        listing = json.loads(shown.out)
        assert name in {listing.get("pipeline")} | {
            value for part in listing.values() if isinstance(part, dict) for value in part.values()
        }


@pytest.mark.db
def test_not_found_hints_escape_stored_names(migrated: Database) -> None:
    """A stored name in a "not found" hint is one shell word on one line: no escape
    sequence, BEL or line break reaches stderr, and pasted into bash it is the name."""
    pipeline = "\x1b]0;owned\x07build\nx 'y' \\ \u202e"
    stage = "\x1b[2Jtest\r\n\x85" + HOSTILE["cjk"][:4]
    with migrated.connect() as conn:
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run(pipeline, "abc"), RUNNING)
        executions.add_stage(run, stage, 1)
    hints = []
    for view, requested in (
        (["--stage", "nope\x07"], "'nope\\x07'"),
        (["--stage", stage, "--job", "nope\n"], "'nope\\n'"),
    ):
        result = run_cli(
            "report", "--database-url", migrated.url, "--pipeline", pipeline, "--run", "1", *view
        )
        assert (result.code, result.out) == (1, "")
        line = result.err.removesuffix("\n")
        assert line.isprintable(), result.err
        assert requested in line
        hints.append(line.split("`")[1])
    for hint in hints:
        words = re.findall(r"--\w+ (\$'(?:[^'\\]|\\.)*'|\S+)", hint)
        echoed = (
            subprocess.run(
                ["bash", "-c", 'printf "%s\\0" ' + " ".join(words)],
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")[:-1]
        )
        assert echoed[0] == pipeline and echoed[1] == "1", hint
        assert echoed[2:] in ([], [stage]), hint


@pytest.mark.db
def test_report_on_a_database_without_the_schema(database: Database) -> None:
    result = run_cli("report", "--database-url", database.url, "--pipeline", "build")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "error: no cicd-db schema here (no execution tables): apply the migrations "
        "(`cicd-db migrate up` with the same target), then record runs\n"
    )


@pytest.mark.db
@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--pipeline", "build", "--run", "1", "--stage", ""], "--stage"),
        (["--pipeline", "build", "--run", "1", "--stage", "test", "--job", ""], "--job"),
        (["--pipeline", ""], "--pipeline"),
    ],
    ids=["stage", "job", "pipeline"],
)
def test_an_empty_name_is_refused_not_ignored(
    recorded: Database, args: list[str], flag: str
) -> None:
    result = run_cli("report", "--database-url", recorded.url, *args)
    assert (result.code, result.out, result.err) == (
        2,
        "",
        f"error: {flag} is empty; give a name, or leave {flag} out\n",
    )


@pytest.mark.parametrize(
    ("arguments", "message", "named"),
    [
        (
            {"job": "e2e"},
            "`job` needs `stage` (and `run`): a job is named within its stage",
            ("job", "stage", "run"),
        ),
        (
            {"stage": "test"},
            "`stage` needs `run`: a stage is named within its run",
            ("stage", "run"),
        ),
        (
            {"run": 1, "before": 3},
            "`limit` and `before` page through runs; leave them out with `run`",
            ("limit", "before", "run"),
        ),
        (
            {"limit": 1001},
            "`limit` 1001 is above 1000; page with `before` instead",
            ("limit", "before"),
        ),
        ({"stage": ""}, "`stage` is empty; give a name, or leave `stage` out", ("stage",)),
    ],
    ids=["job", "stage", "paging", "limit", "empty"],
)
def test_fetch_names_its_arguments_not_the_cli_flags(
    recorded: Database, arguments: dict, message: str, named: tuple[str, ...]
) -> None:
    """A Python caller reads its own arguments in the message; the names are data, which
    the CLI writes as its flags (test_report_errors)."""
    with recorded.connect() as conn, pytest.raises(UsageError) as raised:
        report.fetch(Store.on(conn), "build", **arguments)
    assert str(raised.value) == message
    assert raised.value.arguments == named


# Times PostgreSQL holds and Python cannot, set by hand (the store writes none), and what
# each reading command then says: report reads the times themselves; insights computes
# durations from them, and only an infinite one is beyond it.
BY_HAND = {
    "infinity": ("completion_time", "infinity"),
    "minus-infinity": ("start_time", "-infinity"),
    "year-10000": ("completion_time", "10000-01-01 13:00+00"),
}
CANNOT_READ = "error: a value stored in the database cannot be read: "
NOT_FINITE = "error: a duration in the execution tables is not finite: "


@pytest.mark.parametrize("written", BY_HAND)
@pytest.mark.parametrize(
    ("command", "told"),
    [
        (("report", "--pipeline", "by-hand"), {"": CANNOT_READ}),
        (("report", "--pipeline", "by-hand", "--run", "1"), {"": CANNOT_READ}),
        (
            ("insights", "--pipeline", "by-hand", "--days", "3650"),
            {"infinity": NOT_FINITE},  # a run started at -infinity is outside any window
        ),
        (("insights", "--days", "3650"), {"infinity": NOT_FINITE}),
    ],
    ids=["runs", "run", "insights", "insights-summary"],
)
def test_a_time_no_python_value_holds_is_told_as_the_rows_not_run_again(
    migrated: Database, written: str, command: tuple[str, ...], told: dict[str, str]
) -> None:
    """A time set by hand that PostgreSQL holds and Python cannot ('infinity', past the
    year 9999): the command works when it need not read it, else one line that says so
    and what to do, never "run again" or an unexpected error."""
    column, value = BY_HAND[written]
    with migrated.connect() as conn:
        executions = Store.on(conn)
        run = executions.set_status(executions.start_run("by-hand", "c1"), RUNNING)
        conn.execute(
            f"UPDATE pipeline_executions SET status = 'SUCCESS', {column} = %s WHERE id = %s",
            [value, run.id],
        )
    result = run_cli(*command, "--database-url", migrated.url)
    said = told.get(written, told.get(""))
    if said is None:
        assert (result.code, result.err) == (0, ""), result
        return
    assert (result.code, result.out) == (1, ""), result
    assert result.err.count("\n") == 1 and result.err.startswith(said), result.err
    assert "correct that row" in result.err and "--debug" not in result.err, result.err


# -- databases of another encoding --------------------------------------------------------


@pytest.fixture(params=["SQL_ASCII", "LATIN1"])
def encoded(request: pytest.FixtureRequest, databases: Databases) -> Iterator[Database]:
    """A migrated database whose encoding is not UTF8: SQL_ASCII (what `initdb --locale=C`
    makes by default, bytes stored as given) or LATIN1."""
    made = databases.create(encoding=request.param)
    try:
        assert run_cli("migrate", "up", "--quiet", "--database-url", made.url).code == 0
        yield made
    finally:
        databases.drop(made)


def test_a_database_of_another_encoding_is_read_as_utf8_and_what_it_cannot_hold_is_one_line(
    encoded: Database,
) -> None:
    """Text comes back as str whatever the database's encoding (on SQL_ASCII psycopg
    handed over bytes, and `report` died on them); a name the encoding cannot hold, or
    stored bytes that are no UTF-8, are one line that says so, not "unexpected ... report
    it" nor "run again"."""
    settings = targets.resolve(database_url=encoded.url).settings
    with targets.connect(settings) as conn:
        recorder = Store.on(conn)
        run = recorder.start_run("clean", "deadbeef")
        recorder.cancel_run(run)
        assert recorder.runs("clean")[0].pipeline_name == "clean"
    code, out, err = run_cli("report", "--database-url", encoded.url, "--pipeline", "clean")
    assert (code, err) == (0, ""), err
    assert "CANCELED" in out
    code, out, err = run_cli("report", "--database-url", encoded.url, "--format", "json", "--pipeline", "clean")  # fmt: skip
    assert code == 0 and json.loads(out), err
    if encoding(encoded) == "LATIN1":
        code, out, err = run_cli("report", "--database-url", encoded.url, "--pipeline", "界")
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "the database's encoding cannot hold a character of that text" in err, err
        return
    with psycopg.connect(encoded.settings.conninfo(), autocommit=True) as conn:
        conn.execute("SET client_encoding = 'SQL_ASCII'")
        conn.execute(b"UPDATE pipeline_executions SET pipeline_name = 'bad\xff'")
    code, out, err = run_cli("insights", "--database-url", encoded.url)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "the database holds text that is not UTF-8" in err and "unexpected" not in err, err


def encoding(database: Database) -> str:
    return str(database.query("SHOW server_encoding")[0][0])


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_commit_of_any_characters_leaves_the_runs_times_whole(name: str) -> None:
    """The runs table shows a commit's first characters in 8 columns, as 8 hex digits
    take: wide characters (16 columns) or escapes took the room of the times, and the
    date lost its day (`2026-12-0…16:23:20`)."""
    finished = T0 + timedelta(hours=1)
    text = report.render(
        hostile_views(HOSTILE[name], finished=finished, number=12)["runs"], "table"
    )
    assert_fits_a_terminal(text)
    for moment in (T0, finished):
        assert moment.strftime("%Y-%m-%d %H:%M:%S") in text, text


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
@pytest.mark.parametrize("width", [0, 1, 2, 3, 4, 7])
def test_a_cell_shortened_never_takes_more_than_its_width(
    width: int, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the terminal has no `…`, three dots stand for it, and a column narrower than
    three gets as many dots as it holds (review: a column of 1 got three)."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
    monkeypatch.setattr(sys, "stdout", stdout)
    for text in ("abcdefgh", "日本語のステージ名", "p🚀" * 5):
        assert display_width(report.fit(text, width)) <= width, (text, report.fit(text, width))


@pytest.mark.parametrize("copied", ["pipeline_executions", "job_executions"])
def test_a_table_that_hides_one_of_cicd_dbs_is_named_not_read(
    migrated: Database, copied: str
) -> None:
    """An empty table of an execution table's name in the role's own schema, which the
    default search_path ("$user", public) reads first: report, insights and retention
    read it ("pipeline 'build' has no runs" of a pipeline with one), and retention
    deleted from it (helper-118). Named, exit 2, nothing read or deleted."""
    with migrated.connect() as conn:
        Store.on(conn).cancel_run(Store.on(conn).start_run("build", "c1"))
    user = migrated.settings.user
    migrated.execute(f'CREATE SCHEMA "{user}"; CREATE TABLE "{user}".{copied} (LIKE public.{copied})')  # fmt: skip
    read = (
        f"pipeline_executions from schema {user}; stage_executions, job_executions from "
        "schema public"
        if copied == "pipeline_executions"
        else f"pipeline_executions, stage_executions from schema public; job_executions "
        f"from schema {user}"
    )
    for command in (
        ("report", "--pipeline", "build"),
        ("insights", "--pipeline", "build"),
        ("retention", "--keep-days", "1"),
    ):
        code, out, err = run_cli(*command, "--database-url", migrated.url)
        assert (code, out) == (2, ""), (command, err)
        assert err == (
            f"error: this session's search_path (\"$user\", public) reads cicd-db's tables "
            f"from more than one schema ({read}): a table of one of their names hides "
            "cicd-db's; drop or rename it, or set a search_path that reaches cicd-db's "
            "schema first\n"
        ), (command, err)
    # The library calls refuse it alike (retention's `prune` is documented for callers).
    with migrated.connect() as conn:
        for call in (
            lambda: report.fetch(Store.on(conn), "build"),
            lambda: insights.insights(conn, "build"),
            lambda: retention.prune(conn, keep_days=1),
        ):
            with pytest.raises(ConfigError, match="reads cicd-db's tables from more than one"):
                call()
    assert migrated.query("SELECT count(*) FROM public.pipeline_executions") == [(1,)]


EXECUTION_TABLES = ("pipeline_executions", "stage_executions", "job_executions")


@pytest.mark.parametrize(
    "copied",
    [subset for n in (1, 2, 3) for subset in itertools.combinations(EXECUTION_TABLES, n)],
    ids="+".join,
)
def test_any_execution_tables_a_schema_first_on_the_path_holds_are_refused_unless_all(
    migrated: Database, copied: tuple[str, ...]
) -> None:
    """Every way of shadowing the execution tables: any one or two of them in a schema the
    search_path reads first is refused, naming where each is read from; all three there
    are a whole schema of their own, read as such."""
    user = migrated.settings.user
    migrated.execute(
        f'CREATE SCHEMA "{user}"; '
        + "; ".join(f'CREATE TABLE "{user}".{t} (LIKE public.{t})' for t in copied)
    )
    with migrated.connect() as conn:
        if len(copied) == len(EXECUTION_TABLES):
            store.check_search_path(conn)  # no refusal
            return
        with pytest.raises(ConfigError) as refused:
            store.check_search_path(conn)
    said = str(refused.value)
    for table in EXECUTION_TABLES:
        schema = user if table in copied else "public"
        assert re.search(rf"\b{table}\b[^;)]* from schema {schema}\b", said), (table, said)


@settings(max_examples=examples(300), deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), min_size=1)
    | st.from_regex(
        r"\A[-+]?[0-9]{1,6}(\.[0-9]*)?[eE][-+]?[0-9]{1,6}\Z|\A0o[0-7]{1,4}\Z|\A0x[0-9a-f]{1,4}\Z"
    )
    | st.sampled_from(
        ["1e3", "5e12345", "0o17", "0E", ".inf", "-.Inf", ".NaN", "null", "~", "TRUE", "+1"]
    )
)
def test_the_yaml_reads_back_as_the_same_text_in_yaml_1_2(name: str) -> None:
    """The reports' YAML is read by YAML 1.2 readers (yq, Go, JavaScript); ruamel.yaml, one
    of them, is the oracle. PyYAML writes YAML 1.1 and quoted only what 1.1 reads as no
    text: a pipeline `1e3` or a short commit id `5e12345` came back as 1000.0 or inf
    (helper-154)."""
    from ruamel.yaml import YAML

    if len(name.encode()) > 1000:
        return  # no name the store takes
    for view in hostile_views(name).values():
        written = report.render(view, "yaml")
        assert YAML(typ="safe", pure=True).load(written) == report.data(view), written
        assert yaml.safe_load(written) == report.data(view), written


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--pipeline", ""],
        ["report", "--pipeline", "p" * 1001],
        ["report", "--pipeline", "p", "--stage", ""],
        ["report", "--pipeline", "p", "--job", "j"],
        ["report", "--pipeline", "p", "--limit", "5000"],
        ["report", "--pipeline", "p", "--json", "--format", "yaml"],
        ["insights", "--pipeline", ""],
        ["insights", "--days", "3", "--runs", "3"],
        ["insights", "--json", "--format", "html"],
    ],
    ids=lambda args: " ".join(a[:12] for a in args),
)
def test_a_mistake_in_the_arguments_is_told_before_connecting(args: list[str]) -> None:
    """Told as the mistake it is (exit 2), with the server down: the checks ran after the
    connection, so an empty name or a --job without --stage was "cannot connect", exit 1,
    whose fix is the wrong one (helper-154)."""
    done = run_cli(*args, "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert done.code == 2 and len(done.err.splitlines()) == 1, done
    assert "connect" not in done.err, done
