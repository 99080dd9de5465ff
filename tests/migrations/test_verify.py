"""Baseline and drift: the live schema against what the files make."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from cicd_db import embedded, migrations, schema
from cicd_db.errors import MigrationFailed, MigrationRefused

from ..fix_db import Database
from ..utils import write_migrations

BASELINED = {
    "0001_people.sql": "CREATE TABLE people (id int PRIMARY KEY);\n",
    # Lower case, and a statement after it: the scratch run drops CONCURRENTLY however it
    # is written, and plans the file again without it.
    "0002_index.sql": "-- cicd-db: no-transaction\n"
    "create index concurrently people_id on people (id);\nRESET lock_timeout;\n",
    "0003_pets.sql": "CREATE TABLE pets (id int);\n",
    "0004_toys.sql": "CREATE TABLE toys (id int);\n",
}


SCRATCH_SCHEMAS = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cicd_db_baseline%'"


def test_baseline_records_the_files_a_matching_schema_holds(
    database: Database, tmp_path: Path
) -> None:
    database.execute(
        "CREATE TABLE people (id int PRIMARY KEY); CREATE INDEX people_id ON people (id); "
        "CREATE TABLE pets (id int)"
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(write_migrations(tmp_path, BASELINED)))
        assert [m.version for m in runner.baseline(3)] == [1, 2, 3]
        assert [(row.version, row.state) for row in runner.status()] == [
            (1, "applied"),
            (2, "applied"),
            (3, "applied"),
            (4, "pending"),
        ]
        with pytest.raises(MigrationRefused) as again:
            runner.baseline(3)
    assert str(again.value) == (
        "this database already has migration history; baseline is only for a database "
        "without it (run `migrate up` instead)"
    )
    # Not measured: the files never ran here.
    assert database.query(
        "SELECT version, duration_ms, applied_by FROM cicd_db.cicd_db_schema_history ORDER BY version"
    ) == [(version, 0, database.settings.user) for version in (1, 2, 3)]
    assert database.query(SCRATCH_SCHEMAS) == []


@pytest.mark.parametrize("version", [0, 5], ids=["below", "above"])
def test_baseline_needs_a_version_a_file_has(
    database: Database, tmp_path: Path, version: int
) -> None:
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(write_migrations(tmp_path, BASELINED)))
        with pytest.raises(MigrationRefused) as refused:
            runner.baseline(version)
    assert str(refused.value) == (
        f"no migration file has version {version}; see `migrate status` for the versions"
    )
    assert database.tables() == set()


@pytest.mark.parametrize(
    ("columns", "more"), [(12, ""), (13, "; and 1 more")], ids=["twelve", "thirteen"]
)
def test_baseline_shows_twelve_differences_and_counts_the_rest(
    database: Database, tmp_path: Path, columns: int, more: str
) -> None:
    names = [f"c{i:02d}" for i in range(columns)]
    folder = write_migrations(
        tmp_path,
        {"0001_wide.sql": f"CREATE TABLE wide ({', '.join(f'{n} int' for n in names)});\n"},
    )
    database.execute("CREATE TABLE wide ()")
    with database.connect() as conn, pytest.raises(MigrationRefused) as refused:
        migrations.Runner(conn, migrations.discover(folder)).baseline(1)
    shown = "; ".join(f"missing column wide.{n}: integer" for n in names[:12])
    assert str(refused.value) == (
        f"the live schema does not match migrations up to version 1: {shown}{more}; "
        "fix the schema by hand, or baseline at the version it matches"
    )
    assert database.tables() == {"wide"}
    assert database.query(SCRATCH_SCHEMAS) == []


def test_drift_compares_the_live_schema_with_the_applied_files(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, BASELINED)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert runner.drift() == (0, [])  # nothing applied: nothing expected
        runner.apply(target=3)
        assert runner.drift() == (3, [])
        conn.execute("ALTER TABLE pets ADD COLUMN extra int")
        assert runner.drift() == (
            3,
            [schema.Difference("pets", "column", "extra", "unexpected", "integer")],
        )
        (folder / "0001_people.sql").write_text("-- edited\n")
        edited = migrations.Runner(conn, migrations.discover(folder))
        with pytest.raises(MigrationRefused, match=r"0001_people\.sql was edited"):
            edited.drift()
    assert database.query(SCRATCH_SCHEMAS) == []


def test_scratch_dump_is_the_schema_the_files_make(
    tmp_path: Path, temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server of its own, stopped and removed after; the runner's session options
    reach the files."""
    folder = write_migrations(
        tmp_path / "migrations",
        {
            **BASELINED,
            "0005_options.sql": "DO $$BEGIN EXECUTE format('COMMENT ON TABLE toys IS %L', "
            "current_setting('client_connection_check_interval')); END$$;\n",
        },
    )
    ports: list[int] = []
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    free_port = embedded.free_port
    monkeypatch.setattr(embedded, "free_port", lambda: ports.append(free_port()) or ports[-1])
    dumped = migrations.scratch_dump(migrations.discover(folder))
    assert "CREATE TABLE public.people (" in dumped
    assert "CREATE INDEX people_id ON public.people USING btree (id);" in dumped
    assert "COMMENT ON TABLE public.toys IS '1s';" in dumped
    assert "cicd_db_schema_history" not in dumped
    assert list(temporary.iterdir()) == [] and len(ports) == 1
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(host=embedded.HOST, port=ports[0], connect_timeout=5)


def test_drift_names_files_it_cannot_replay_in_one_transaction(
    database: Database, tmp_path: Path
) -> None:
    """A value an earlier file added to an enum, used by a later one: a run applies them
    (each commits), the comparison's one transaction cannot; it says so, and what to do,
    rather than telling a file that applies to fix itself."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_mood.sql": "CREATE TYPE mood AS ENUM ('ok');\nALTER TYPE mood ADD VALUE 'sad';\n",
            "0002_feeling.sql": "CREATE TABLE feeling (m mood DEFAULT 'sad');\n",
        },
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply()
        with pytest.raises(MigrationFailed) as failed:
            runner.drift()
    assert str(failed.value).startswith(
        'migration 0002_feeling.sql failed at line 1: unsafe use of new value "sad" of enum '
        "type mood [55P04]; it was rolled back; PostgreSQL allows that only once what the "
        "files before it did is committed"
    )
    assert str(failed.value).endswith("with this database's `schema dump`")
    assert database.query(SCRATCH_SCHEMAS) == []
