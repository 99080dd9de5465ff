"""Baseline and drift: the live schema against what the files make."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cicd_db import migrations, pgprocess, schema
from cicd_db.errors import MigrationFailed, MigrationRefused, OperationalError
from cicd_db.migrations import verify

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
    free_port = pgprocess.free_port
    monkeypatch.setattr(pgprocess, "free_port", lambda: ports.append(free_port()) or ports[-1])
    dumped = migrations.scratch_dump(migrations.discover(folder))
    assert "CREATE TABLE public.people (" in dumped
    assert "CREATE INDEX people_id ON public.people USING btree (id);" in dumped
    assert "COMMENT ON TABLE public.toys IS '1s';" in dumped
    assert "cicd_db_schema_history" not in dumped
    assert list(temporary.iterdir()) == [] and len(ports) == 1
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(host=pgprocess.HOST, port=ports[0], connect_timeout=5)


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


# A file as applied for real, and what its replay in the scratch schema would reach of
# the live database: each a way a file acts outside the schema it runs in.
OUTSIDE = {
    "qualified name": (["CREATE TABLE public.a (id int);"], 'relation "a" already exists'),
    "search_path set": (["SET search_path = public;\nCREATE TABLE a (id int);"], "already"),
    "schema made": (["CREATE SCHEMA shared;\nCREATE TABLE shared.t (id int);"], "already"),
    "dump-style": (
        [
            "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);",
            "DROP TABLE IF EXISTS public.b;\nCREATE TABLE public.b (id int);",
        ],
        "it changes public.",
    ),
    "write": (
        ["CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);", "UPDATE public.a SET id = 2;"],
        "it changes public.a)",
    ),
    "column added to a live table": (
        ["CREATE TABLE a (id int);", "ALTER TABLE public.a ADD COLUMN z int;"],
        'column "z" of relation "a" already exists [42701]',
    ),
    "default set on a live table": (
        ["CREATE TABLE a (id int);", "ALTER TABLE public.a ALTER COLUMN id SET DEFAULT 1;"],
        "it changes public.a)",
    ),
    "nextval": (
        ["CREATE SEQUENCE s;", "SELECT nextval('public.s');"],
        "it changes public.s): it names a schema, makes one or an object of the whole "
        "database (a role, an extension), or sets a search_path, so its replay acts on what "
        "is live; stopped there, and all it did was rolled back but the sequences it "
        "advanced (public.s); ",
    ),
}


@pytest.mark.parametrize("case", OUTSIDE)
def test_drift_and_baseline_refuse_a_file_that_acts_outside_the_scratch_schema(
    database: Database, tmp_path: Path, case: str
) -> None:
    """The replay runs each file with the scratch schema in the live one's place; a file
    that names a schema, makes one or sets a search_path reaches the live objects. It
    was told to fix itself (an object "already exists"), or wrote to live tables under
    a read-only command and reported drift that is not there. Now: refused, naming the
    file and what it reached, with the comparison that can replay it; the live rows are
    as they were."""
    texts, said = OUTSIDE[case]
    files = {f"{n:04d}_f.sql": text + "\n" for n, text in enumerate(texts, 1)}
    folder = write_migrations(tmp_path / "m", files)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply()
        before = database.query("SELECT to_regclass('public.a')")
        rows = database.query("SELECT * FROM public.a") if before != [(None,)] else []
        with pytest.raises(MigrationRefused) as refused:
            runner.drift()
    message = str(refused.value)
    last = f"{len(texts):04d}_f.sql"
    assert message.startswith(f"{last} acts outside the scratch schema"), message
    assert said in message and message.endswith("with this database's `schema dump`"), message
    if rows:
        assert database.query("SELECT * FROM public.a") == rows
    assert database.query(SCRATCH_SCHEMAS) == []
    # baseline replays the same way: a database made by hand from these files.
    with database.connect() as conn:
        conn.execute("DROP SCHEMA cicd_db CASCADE")
        with pytest.raises(MigrationRefused, match=f"^{last} acts outside the scratch schema"):
            migrations.Runner(conn, migrations.discover(folder)).baseline(len(texts))
    assert database.history() == []


def test_drift_replays_a_file_that_reads_or_references_another_schema(
    database: Database, tmp_path: Path
) -> None:
    """Reading a table of another schema, a foreign key to it made and dropped (which
    locks that table as DDL does), a temporary table, ANALYZE of every table: nothing
    live is changed, the comparison runs, and finds no drift."""
    database.execute("CREATE SCHEMA shared; CREATE TABLE shared.lookup (id int PRIMARY KEY)")
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE a (id int CONSTRAINT a_fk REFERENCES shared.lookup);\n",
            "0002_b.sql": "CREATE TABLE b AS SELECT id FROM shared.lookup;\n",
            "0003_c.sql": "CREATE TABLE c (id int REFERENCES shared.lookup);\nDROP TABLE c;\n",
            "0004_a.sql": "ALTER TABLE a DROP CONSTRAINT a_fk;\n",
            "0005_temp.sql": "CREATE TEMP TABLE t (x text);\nINSERT INTO t VALUES ('x');\n",
            "0006_analyze.sql": "ANALYZE;\n",
        },
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply()
        assert runner.drift() == (6, [])


def test_baseline_tells_two_files_that_make_one_table_as_the_server_does(
    database: Database, tmp_path: Path
) -> None:
    """A duplicate inside the scratch schema is the files' own mistake, not a file acting
    outside it: the server's words, and the file to fix."""
    folder = write_migrations(
        tmp_path / "m",
        {"0001_a.sql": "CREATE TABLE a (id int);\n", "0002_a.sql": "CREATE TABLE a (id int);\n"},
    )
    with database.connect() as conn, pytest.raises(MigrationFailed) as failed:
        migrations.Runner(conn, migrations.discover(folder)).baseline(2)
    assert str(failed.value).startswith(
        'migration 0002_a.sql failed at line 1: relation "a" already exists [42P07]'
    ), failed.value


def test_baseline_records_nothing_once_the_lock_is_lost(database: Database, tmp_path: Path) -> None:
    """Baseline replays the files before it writes the rows; a file (or the server) that
    ends the lock's session meanwhile let the rows commit outside the lock, and baseline
    said it recorded them. Nothing is recorded, and it says why."""
    database.execute("CREATE TABLE w (id int)")
    ends_the_lock = (
        "CREATE TABLE w (id int);\n"
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = "
        "current_database() AND pid <> pg_backend_pid() AND state = 'idle in transaction';\n"
    )
    folder = write_migrations(tmp_path, {"0001_w.sql": ends_the_lock})
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        with pytest.raises(MigrationFailed, match=r"^baseline stopped before recording anything"):
            runner.baseline(1)
    assert database.query("SELECT to_regclass('cicd_db.cicd_db_schema_history')") == [(None,)]


@pytest.mark.parametrize("runs_meanwhile", [1, 3])
def test_drift_compared_while_a_run_applies_a_file_is_not_drift(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs_meanwhile: int
) -> None:
    """`schema diff` takes no lock (a reader compares, through any pooler, while a deploy
    runs): a run that committed 0002 while it compared made 0002's table look like drift
    from 0001, exit 3 (helper-137). It compares again up to the history the run made; a
    history that changes under every comparison is said, not taken for drift."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\n",
            "0002_b.sql": "CREATE TABLE b (i int);\n",
            "0003_c.sql": "CREATE TABLE c (i int);\n",
            "0004_d.sql": "CREATE TABLE d (i int);\n",
        },
    )
    files = migrations.discover(folder)
    with database.connect() as conn:
        migrations.Runner(conn, files).apply(target=1)
    compare = verify.compare
    left = iter(range(2, 2 + runs_meanwhile))

    def while_a_run_applies(session: Any, chosen: list[migrations.Migration]) -> Any:
        found = compare(session, chosen)
        if (version := next(left, None)) is not None:
            with database.connect() as other:
                migrations.Runner(other, files).apply(target=version)
        return found

    monkeypatch.setattr(verify, "compare", while_a_run_applies)
    with database.connect() as conn:
        runner = migrations.Runner(conn, files)
        if runs_meanwhile < verify.DRIFT_TRIES:
            assert runner.drift() == (2, [])
        else:
            with pytest.raises(OperationalError, match="changed during each of 3 comparisons"):
                runner.drift()
