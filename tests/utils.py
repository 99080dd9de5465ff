"""Paths and small helpers the tests share (psycopg's tests keep theirs in utils.py too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cicd_db import migrations

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "db" / "migrations"
# The schema a team that followed the plan made by hand: migration 0001 is it, as written.
PLAN_SCHEMA = MIGRATIONS / "0001_plan_schema.sql"


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def unscanned(name: str, data: bytes, version: int = 1) -> migrations.Migration:
    """A migration sent as one query, built by hand past discover()'s checks and scan."""
    return migrations.Migration(
        version=version,
        name=name,
        path=Path(f"{version:04d}_{name}.sql"),
        data=data,
        checksum="0" * 64,
        planned=(migrations.Batch(0, len(data), 1, standard_strings=True),),
    )


# 300 finished-looking runs of 5 stages x 20 jobs, set-based: enough rows that a plan
# scanning every job shows up as one (the statistics are the young table's).
MANY_JOBS = (
    "WITH runs AS (INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
    "SELECT 'old', md5(i::text) FROM generate_series(1, 300) i RETURNING id), "
    "stages AS (INSERT INTO stage_executions (pipeline_execution_id, stage_name, "
    "execution_order) SELECT id, 's' || o, o FROM runs, generate_series(1, 5) o "
    "RETURNING id) INSERT INTO job_executions (stage_execution_id, job_name) "
    "SELECT id, 'j' || n FROM stages, generate_series(1, 20) n"
)


def scans(node: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Every (node type, table) of an EXPLAIN (FORMAT JSON) plan node, children included."""
    found = [(node.get("Node Type"), node.get("Relation Name"))]
    for child in node.get("Plans", []):
        found += scans(child)
    return found
