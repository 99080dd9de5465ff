"""What the commands print, shape by shape, without a server or argparse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cicd_db import console, migrations
from cicd_db.embedded import Status
from cicd_db.lint import Report
from cicd_db.local import Prepared
from cicd_db.schema import Difference
from cicd_db.settings import ConnectionSettings

from .utils import unscanned


def migration(version: int, name: str, text: str = "SELECT 1;\n") -> migrations.Migration:
    return unscanned(name, text.encode(), version)


def test_plural() -> None:
    assert [console.plural(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]


def test_applied_lines_and_summary() -> None:
    done = migrations.Result(migration(3, "runs"), 12.4, dry_run=False, notes=("dropped x",))
    assert console.applied_lines(done, sql=True) == ["  dropped x", "applied 0003_runs.sql (12 ms)"]
    dry = migrations.Result(migration(4, "jobs", "SELECT 2;\n\n"), 0, dry_run=True)
    assert console.applied_lines(dry, sql=False) == ["would apply 0004_jobs.sql"]
    assert console.applied_lines(dry, sql=True)[1] == "-- 0004_jobs.sql\nSELECT 2;\n"
    assert (
        console.up_summary("stack dev", False, 0, 5) == "nothing to apply: stack dev is up to date"
    )
    assert console.up_summary("stack dev", True, 1, 5) == (
        "dry run: 1 migration pending on stack dev; nothing was changed"
    )
    assert (
        console.up_summary("stack dev", False, 2, 5.4)
        == "applied 2 migrations to stack dev in 5 ms"
    )
    shape = console.applied_json("stack dev", False, [done])
    assert shape == {
        "target": "stack dev",
        "dry_run": False,
        "completed": True,
        "notes": [],
        "applied": [{"version": 3, "name": "runs", "duration_ms": 12.4}],
    }


def test_rehearsal_lines_and_json() -> None:
    lock = migrations.LockHeld("AccessExclusiveLock", "public.runs", 3.2)
    rehearsals = [
        migrations.Rehearsal(migration(1, "a"), 10.0, (lock,), ("public.runs_id_seq",)),
        migrations.Rehearsal(migration(2, "b"), skipped="a no-transaction file"),
        migrations.Rehearsal(
            migration(3, "c"), 1.0, error="boom", unrehearsed_before=("0002_b.sql",)
        ),
    ]
    assert console.rehearsal_lines("stack dev", rehearsals) == [
        "0001_a.sql: 10 ms",
        "  AccessExclusiveLock on public.runs, held 3 ms",
        "  advanced sequence public.runs_id_seq (the rollback keeps that)",
        "0002_b.sql: not rehearsed: a no-transaction file",
        "0003_c.sql: 1 ms, FAILED: boom",
        "  (it may need 0002_b.sql, which the rehearsal could not run)",
        console.REHEARSAL_CAVEAT,
        "rehearsal on stack dev: rolled back, except what is marked above as not undone",
    ]
    clean = [migrations.Rehearsal(migration(1, "a"), 10.0)]
    assert (
        console.rehearsal_lines("x", clean)[-1]
        == "rehearsal on x: rolled back; it saw nothing a rollback cannot undo"
    )
    assert console.rehearsal_lines("x", []) == ["nothing to rehearse: x is up to date"]
    outside = [migrations.Rehearsal(migration(1, "a"), 1.0, not_undone=("dblink (x)",))]
    assert console.rehearsal_lines("x", outside)[1:2] == [
        "  calls dblink (x): the rollback does not undo that"
    ]
    shape = console.rehearsal_json("stack dev", rehearsals)["rehearsed"]
    assert shape[0]["locks"] == [
        {"mode": "AccessExclusiveLock", "table": "public.runs", "held_ms": 3.2}
    ]
    assert [r["duration_ms"] for r in shape] == [10.0, None, 1.0]
    assert shape[2]["unrehearsed_before"] == ["0002_b.sql"]
    json.dumps(shape)  # plain JSON types only


def test_status_lines_name_the_rows_that_disagree() -> None:
    at = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
    rows = [
        migrations.StatusRow(1, "a", "applied", at),
        migrations.StatusRow(2, "b", "edited", at),
        migrations.StatusRow(3, "c", "pending", None),
    ]
    lines = console.status_lines("stack dev", rows)
    assert lines[0].split() == ["VERSION", "NAME", "STATE", "APPLIED", "AT"]
    assert lines[1].split()[-3:] == ["2026-11-26", "01:02:03", "UTC"]
    assert lines[3].split() == ["3", "c", "pending", "-"]
    assert lines[-1] == "stack dev: 1 pending, 1 needs attention (run `migrate up` for the fix)"
    assert console.status_lines("x", rows[:1])[-1] == "x: up to date"
    # A file and the history that disagree, nothing pending: never "up to date".
    assert console.status_lines("x", rows[:2])[-1] == (
        "x: 1 needs attention (run `migrate up` for the fix)"
    )
    assert [row for row in rows if row.disagrees] == [rows[1]]
    shape = console.status_json("stack dev", "postgresql://u:***@h/d", rows)
    assert shape["pending"] == 1
    assert shape["migrations"][0]["applied_at"] == "2026-11-26T01:02:03+00:00"


def test_check_lines() -> None:
    passed = Report(tool="sqlfluff", files=("a",), passed=True, output="")
    failed = Report(tool="squawk", files=("a", "b"), passed=False, output="finding")
    row = migrations.StatusRow(2, "b", "missing", None)
    assert console.check_lines(2, [passed, failed], "stack dev", [row]) == [
        "sqlfluff: passed (1 file)",
        "squawk: FAILED (2 files)",
        "finding",
        "2 b: missing",
        "checked 2 files and the history of stack dev",
    ]
    assert console.check_lines(1, [], None, [])[-1] == (
        "checked 1 file (no target: history not compared)"
    )
    shape = console.check_json(2, [failed], None, [row])
    assert shape["lint"] == [
        {"tool": "squawk", "passed": False, "output": "finding", "not_checked": []}
    ]
    skipped = Report(tool="sqlfluff", files=("a",), passed=True, output="", skipped=("big",))
    assert console.check_lines(2, [skipped], None, [])[:2] == [
        "sqlfluff: passed (1 file)",
        "  not style-checked (over 20,000 bytes, which sqlfluff reads at about 10 kB a "
        "second): big",
    ]
    assert console.check_json(2, [skipped], None, [])["lint"][0]["not_checked"] == ["big"]
    assert shape["disagreements"] == [{"version": 2, "name": "b", "state": "missing"}]


def test_diff_lines_name_the_object_and_what_differs() -> None:
    found = [
        Difference("jobs", "column", "x", "missing", "integer"),
        Difference("jobs", "table", "jobs", "changed", "persistence unlogged (expected logged)"),
        Difference("runs", "trigger", "t", "unexpected", ""),
    ]
    assert console.diff_lines("stack dev", "stack prod", found) == [
        "missing column jobs.x: integer",
        "changed table jobs: persistence unlogged (expected logged)",
        "unexpected trigger runs.t",
        "stack dev against stack prod: 3 differences",
    ]
    assert console.diff_lines("a", "b", found[:1])[-1] == "a against b: 1 difference"
    assert console.diff_lines("a", "b", []) == ["a against b: no drift"]
    assert console.diff_json("a", "b", found[:1]) == {
        "target": "a",
        "against": "b",
        "differences": [
            {
                "table": "jobs",
                "kind": "column",
                "name": "x",
                "change": "missing",
                "detail": "integer",
            }
        ],
    }


def test_embedded_shapes() -> None:
    running = Status(running=True, pid=7, port=5, data_dir=Path("/d"), initialized=True)
    assert console.embedded_line(running) == "running (pid 7) on 127.0.0.1:5, data /d"
    assert console.embedded_json(running) == {
        "running": True,
        "pid": 7,
        "port": 5,
        "data_dir": "/d",
        "initialized": True,
        "stray_pid": None,
    }
    stray = Status(running=False, pid=None, port=5, data_dir=Path("/d"), initialized=True, stray=9)
    assert console.embedded_line(stray) == (
        "unreachable: a server of /d runs (pid 9) without its pid file or data folder; "
        "`cicd-db embedded stop` stops it"
    )
    new = Status(running=False, pid=None, port=None, data_dir=Path("/d"), initialized=False)
    assert console.embedded_line(new) == "stopped, data /d (not created yet)"


def test_local_shapes_never_carry_the_settings() -> None:
    settings = ConnectionSettings(
        host="h", port=5432, user="ci_user", password="sekret", database="ci_local"
    )
    made = Prepared(settings, created_role=True, created_database=False, password_set=True)
    assert console.local_line(made) == "role ci_user created; database ci_local kept"
    shape = console.local_json(made, "postgresql://ci_user:***@h/ci_local")
    assert shape == {
        "url": "postgresql://ci_user:***@h/ci_local",
        "created_role": True,
        "created_database": False,
        "password_set": True,
        "password_reset": False,
    }
    assert "sekret" not in json.dumps(shape)
    kept = Prepared(settings, created_role=False, created_database=True, password_set=False)
    assert console.local_line(kept) == (
        "role ci_user kept; its password unchanged; database ci_local created"
    )
