"""Paths and small helpers the tests share (psycopg's tests keep theirs in utils.py too)."""

from __future__ import annotations

from pathlib import Path

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
        transactional=True,
        steps=(migrations.Batch(0, len(data), 1, standard_strings=True),),
    )
