"""Least privilege on a real server: the owner migrates, `ci_app` writes executions,
`ci_reader` reads them, and nothing else (migration 0029, docs/security.md).

The database is owned by a login role that is not a superuser, and migrated as it,
as every target does; the two roles log in with a password over TCP, as the CI
system and the report CLI do.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cicd_db import insights, migrations, retention
from cicd_db.errors import ConfigError, MigrationFailed, NotFound
from cicd_db.settings import APP_USER, READER_USER, ConnectionSettings
from cicd_db.store import RUNNING, SUCCESS, Store

from .fix_cli import run_cli
from .fix_db import SERVER_ROLES, Database, Databases
from .test_report import GOLDEN, SUFFIX, VIEWS, record
from .test_schema import pg_dump
from .utils import MIGRATIONS, write_migrations

pytestmark = [pytest.mark.db, SERVER_ROLES]


@dataclass(frozen=True)
class Roles:
    """A database and how each of the three roles logs in to it."""

    database: Database
    owner: ConnectionSettings
    app: ConnectionSettings
    reader: ConnectionSettings


def _admin(server: ConnectionSettings, statement: sql.Composable) -> None:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(statement)


def _login(server: ConnectionSettings, role: str, database: str) -> ConnectionSettings:
    """Give `role` LOGIN and a fresh password, as a target does; its settings on `database`."""
    password = secrets.token_urlsafe(16)
    _admin(
        server,
        sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        ),
    )
    return replace(server, user=role, password=password, database=database)


def _migrate(settings: ConnectionSettings, folder: Path = MIGRATIONS) -> None:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        migrations.Runner(conn, migrations.discover(folder)).apply()


@dataclass(frozen=True)
class Owner:
    """A login role that is not a superuser, as a target's owner is."""

    name: str
    password: str

    def on(self, server: ConnectionSettings, database: Database) -> ConnectionSettings:
        return replace(server, user=self.name, password=self.password, database=database.name)


@pytest.fixture(scope="module")
def owner(server: ConnectionSettings) -> Iterator[Owner]:
    made = Owner(f"test_owner_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16))
    # The targets' admin makes the two roles; this owner, like ci_user, may not.
    for role in (APP_USER, READER_USER):
        _admin(
            server,
            sql.SQL(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN "
                "CREATE ROLE {} NOLOGIN; END IF; END $$"
            ).format(sql.Literal(role), sql.Identifier(role)),
        )
    _admin(
        server,
        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD {}").format(
            sql.Identifier(made.name), sql.Literal(made.password)
        ),
    )
    yield made
    # Its default privileges name the two roles; they go with the role.
    _admin(server, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(made.name)))
    _admin(server, sql.SQL("DROP ROLE {}").format(sql.Identifier(made.name)))


@pytest.fixture
def owned(
    server: ConnectionSettings, databases: Databases, empty_template: str, owner: Owner
) -> Iterator[tuple[ConnectionSettings, Database]]:
    """A fresh database owned by `owner` (not migrated)."""
    database = databases.create(empty_template, owner=owner.name)
    yield owner.on(server, database), database
    databases.drop(database)


@pytest.fixture(scope="module")
def migrated_by_owner(
    server: ConnectionSettings, databases: Databases, empty_template: str, owner: Owner
) -> Iterator[str]:
    """A template with the repository's migrations applied by `owner`, so that its
    copies, owned by `owner` too, hold the objects as a target's owner leaves them."""
    template = databases.template(
        lambda made: _migrate(owner.on(server, made)), empty_template, owner=owner.name
    )
    yield template.name
    databases.drop(template)


def _roles(server: ConnectionSettings, owner: ConnectionSettings, database: Database) -> Roles:
    return Roles(
        database,
        owner,
        _login(server, APP_USER, database.settings.database),
        _login(server, READER_USER, database.settings.database),
    )


@pytest.fixture
def roles(
    server: ConnectionSettings, databases: Databases, owner: Owner, migrated_by_owner: str
) -> Iterator[Roles]:
    """The repository's migrations applied by the owner; the writer and reader can log in."""
    database = databases.create(migrated_by_owner, owner=owner.name)
    yield _roles(server, owner.on(server, database), database)
    databases.drop(database)


def _connect(settings: ConnectionSettings) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(settings.conninfo(), autocommit=True)


def _refused(settings: ConnectionSettings, statement: str) -> str:
    """The server's refusal of `statement` run as `settings`' role; fails if it ran."""
    with _connect(settings) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as error:
        conn.execute(statement.encode())
    return str(error.value)


def test_the_writer_records_a_whole_run_through_the_store(roles: Roles) -> None:
    with _connect(roles.app) as conn:
        executions = Store.on(conn)
        record(executions)  # the report tests' three runs: stages, jobs, every status
        first, second = (executions.run("build", n) for n in (1, 2))
        cancelled = executions.cancel_run(executions.run("build", 3))
        again = executions.set_status(executions.start_run("build", "c0ffee"), RUNNING)
        # The counter table is the trigger's: the writer numbers runs without a grant on it.
        assert (first.status, second.run_number, cancelled.status) == (SUCCESS, 2, "CANCELED")
        assert again.run_number == 4
        # Retention deletes as the writer too: the two runs that finished in 2026-03,
        # with their stages and jobs; run 3 was cancelled just now, run 4 runs.
        pruned = retention.prune(conn, keep_days=1)
    assert (pruned.runs, pruned.stages, pruned.jobs) == (2, 5, 6)
    assert roles.database.query("SELECT run_number FROM pipeline_executions ORDER BY 1") == [
        (3,),
        (4,),
    ]
    # The insights rollup (0032) was kept by recording, and lost the deleted runs' rows
    # with them: only run 3's is left (run 4 has not finished).
    assert roles.database.query(
        "SELECT r.run_number FROM run_rollups u JOIN pipeline_executions r ON r.id = u.run_id"
    ) == [(3,)]


WRITER_REFUSED = {
    "create a table in public": "CREATE TABLE public.planted (id INT)",
    "create a schema": "CREATE SCHEMA planted",
    "create a table in the history's schema": "CREATE TABLE cicd_db.planted (id INT)",
    "alter a table": "ALTER TABLE pipeline_executions ADD COLUMN planted INT",
    "drop a table": "DROP TABLE job_executions",
    "drop an index": "DROP INDEX pipeline_executions_finished",
    "truncate": "TRUNCATE job_executions",
    "replace the run-number function": (
        "CREATE OR REPLACE FUNCTION next_pipeline_run_number() RETURNS TRIGGER "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    ),
    "drop the trigger": "DROP TRIGGER pipeline_executions_run_number ON pipeline_executions",
    "write the run counters": "UPDATE pipeline_run_counters SET last_run_number = 0",
    "write a history row": (
        "INSERT INTO cicd_db.cicd_db_schema_history (version, name, checksum) "
        "VALUES (9999, 'planted', 'x')"
    ),
    "delete history rows": "DELETE FROM cicd_db.cicd_db_schema_history",
    "rewrite history rows": "UPDATE cicd_db.cicd_db_schema_history SET checksum = 'x'",
    "read the history": "SELECT * FROM cicd_db.cicd_db_schema_history",
    "grant a role": f"GRANT {APP_USER} TO {READER_USER}",
    "write the insights rollup": "DELETE FROM run_rollups",
    "roll up by hand": "SELECT cicd_db_roll_up(ARRAY[]::uuid[])",
    "drop the rollup trigger": "DROP TRIGGER pipeline_executions_roll_up ON pipeline_executions",
}


@pytest.mark.parametrize("statement", list(WRITER_REFUSED.values()), ids=list(WRITER_REFUSED))
def test_the_writer_cannot_change_the_schema_or_the_history(roles: Roles, statement: str) -> None:
    before = roles.database.query(
        "SELECT version, checksum FROM cicd_db.cicd_db_schema_history ORDER BY 1"
    )
    assert re.search(
        "permission denied|must be owner|must have admin option", _refused(roles.app, statement)
    )
    assert roles.database.history() == [int(str(v)) for v, _ in before]
    assert (
        roles.database.query(
            "SELECT version, checksum FROM cicd_db.cicd_db_schema_history ORDER BY 1"
        )
        == before
    )


def test_the_writer_cannot_grant_what_it_holds(roles: Roles) -> None:
    # Holding privileges without the grant option, GRANT warns and grants nothing.
    with _connect(roles.app) as conn:
        for statement in (
            f"GRANT INSERT, DELETE ON pipeline_executions TO {READER_USER}",
            "GRANT ALL ON job_executions TO PUBLIC",
        ):
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
    assert roles.database.query(
        "SELECT has_table_privilege(%s, 'pipeline_executions', 'INSERT'), "
        "has_table_privilege(%s, 'pipeline_executions', 'DELETE'), "
        "EXISTS (SELECT FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a "
        "WHERE c.relname = 'job_executions' AND a.grantee = 0)",
        READER_USER,
        READER_USER,
    ) == [(False, False, False)]


@pytest.mark.parametrize("view", list(VIEWS))
def test_the_reader_runs_every_report_view(roles: Roles, view: str) -> None:
    with _connect(roles.app) as conn:
        record(Store.on(conn))
    for output_format in SUFFIX:
        result = run_cli(
            "report",
            "--database-url",
            roles.reader.url(),
            "--pipeline",
            "build",
            *VIEWS[view],
            "--format",
            output_format,
        )
        assert (result.code, result.err) == (0, "")
        assert result.out == (GOLDEN / f"report_{view}.{SUFFIX[output_format]}").read_text()


READER_REFUSED = {
    "insert a run": "INSERT INTO pipeline_executions (pipeline_name, commit_hash) VALUES ('x', 'y')",
    "update runs": "UPDATE pipeline_executions SET status = 'CANCELED'",
    "delete stages": "DELETE FROM stage_executions",
    "update jobs": "UPDATE job_executions SET job_name = 'x'",
    "truncate": "TRUNCATE pipeline_executions",
    "read the run counters": "SELECT * FROM pipeline_run_counters",
    "create a table in public": "CREATE TABLE public.planted (id INT)",
    "read the history": "SELECT * FROM cicd_db.cicd_db_schema_history",
    "write the insights rollup": "DELETE FROM run_rollups",
}


@pytest.mark.parametrize("statement", list(READER_REFUSED.values()), ids=list(READER_REFUSED))
def test_the_reader_cannot_write(roles: Roles, statement: str) -> None:
    _refused(roles.reader, statement)


def test_the_reader_reads_insights_through_the_rollup(roles: Roles) -> None:
    with _connect(roles.app) as conn:
        record(Store.on(conn))
    with _connect(roles.reader) as conn:
        found = insights.insights(conn, "build", runs=10)
        assert conn.execute("SELECT count(*) FROM run_rollups").fetchone() == (2,)  # 2 finished
    assert isinstance(found, insights.PipelineInsights) and found.runs == 3


def test_the_reader_cannot_record_through_the_store(roles: Roles) -> None:
    with _connect(roles.reader) as conn, pytest.raises(ConfigError) as refused:
        Store.on(conn).start_run("build", "abc")
    assert str(refused.value).startswith(
        "role 'ci_reader' may not do that: permission denied for table pipeline_executions; "
        "record executions as the writer (ci_app"
    ), refused.value
    assert isinstance(refused.value.__cause__, psycopg.errors.InsufficientPrivilege)
    assert roles.database.query("SELECT count(*) FROM pipeline_executions") == [(0,)]


LATER = """\
SET lock_timeout = '1s';
SET statement_timeout = '10s';
CREATE TABLE run_artifacts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline_execution_id UUID NOT NULL REFERENCES pipeline_executions (id),
    path TEXT NOT NULL
);
CREATE TABLE run_labels (id SERIAL PRIMARY KEY, label TEXT NOT NULL);
"""


def test_a_table_a_later_migration_adds_is_covered_for_both(
    server: ConnectionSettings, owned: tuple[ConnectionSettings, Database], tmp_path: Path
) -> None:
    owner, database = owned
    folder = write_migrations(
        tmp_path / "migrations",
        {
            **{path.name: path.read_text() for path in MIGRATIONS.glob("*.sql")},
            "9000_run_artifacts.sql": LATER,
        },
    )
    _migrate(owner, folder)
    roles = _roles(server, owner, database)
    with _connect(roles.app) as conn:
        run = Store.on(conn).start_run("build", "abc")
        conn.execute(
            "INSERT INTO run_artifacts (pipeline_execution_id, path) VALUES (%s, 'a.whl')",
            [run.id],
        )
        conn.execute("INSERT INTO run_labels (label) VALUES ('nightly')")  # a SERIAL's sequence
        conn.execute("UPDATE run_artifacts SET path = 'b.whl'")
    with _connect(roles.reader) as conn:
        assert conn.execute("SELECT path FROM run_artifacts").fetchall() == [("b.whl",)]
        assert conn.execute("SELECT label FROM run_labels").fetchall() == [("nightly",)]
    _refused(roles.reader, "INSERT INTO run_labels (label) VALUES ('x')")
    _refused(roles.reader, "DELETE FROM run_artifacts")
    _refused(roles.app, "DROP TABLE run_artifacts")
    _refused(roles.app, "TRUNCATE run_labels")


def test_public_is_closed_even_where_the_server_left_it_open(
    server: ConnectionSettings, owned: tuple[ConnectionSettings, Database]
) -> None:
    """PostgreSQL 14 and older (and a database upgraded from one) let every role create
    in public; the migration revokes it, and the owner of public may do so on 15+."""
    owner, database = owned
    _admin(
        database.settings,
        sql.SQL("GRANT CREATE ON SCHEMA public TO PUBLIC"),
    )
    assert database.query("SELECT has_schema_privilege(%s, 'public', 'CREATE')", owner.user)[0][0]
    _migrate(owner)
    roles = _roles(server, owner, database)
    _refused(roles.app, "CREATE TABLE public.planted (id INT)")
    _refused(
        roles.reader, "CREATE FUNCTION public.planted() RETURNS INT LANGUAGE sql AS 'SELECT 1'"
    )


def test_an_owner_that_cannot_revoke_create_on_public_is_told_the_fix(
    server: ConnectionSettings, owned: tuple[ConnectionSettings, Database]
) -> None:
    """As on PostgreSQL 14 and older, where public belongs to the bootstrap superuser."""
    owner, database = owned
    _admin(database.settings, sql.SQL("ALTER SCHEMA public OWNER TO postgres"))
    _admin(database.settings, sql.SQL("GRANT CREATE ON SCHEMA public TO PUBLIC"))
    with pytest.raises(MigrationFailed) as error:
        _migrate(owner)
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in str(error.value)
    assert 29 not in database.history()


def test_each_role_holds_exactly_its_privileges(roles: Roles) -> None:
    """The roles' privileges on each table, as the catalog states them: no more."""
    rows = roles.database.query(
        "SELECT c.relname, r.rolname, string_agg(a.privilege_type, ',' ORDER BY a.privilege_type) "
        "FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a "
        "JOIN pg_roles r ON r.oid = a.grantee WHERE c.relkind = 'r' "
        "AND c.relnamespace = 'public'::regnamespace AND r.rolname IN (%s, %s) "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        APP_USER,
        READER_USER,
    )
    expected = []
    for table in ("job_executions", "pipeline_executions", "stage_executions"):
        expected += [
            (table, APP_USER, "DELETE,INSERT,SELECT,UPDATE"),
            (table, READER_USER, "SELECT"),
        ]
    # The insights rollup: written only by its triggers' functions, read by both.
    expected += [("run_rollups", APP_USER, "SELECT"), ("run_rollups", READER_USER, "SELECT")]
    assert rows == sorted(expected)
    # Of the run counters, the pipelines' names alone, for both (0036).
    columns = roles.database.query(
        "SELECT a.attname, r.rolname, string_agg(x.privilege_type, ',') "
        "FROM pg_attribute a CROSS JOIN LATERAL aclexplode(a.attacl) x "
        "JOIN pg_roles r ON r.oid = x.grantee "
        "WHERE a.attrelid = 'pipeline_run_counters'::regclass AND r.rolname IN (%s, %s) "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        APP_USER,
        READER_USER,
    )
    assert columns == [
        ("pipeline_name", APP_USER, "SELECT"),
        ("pipeline_name", READER_USER, "SELECT"),
    ]


def test_the_writer_runs_retention_for_one_pipeline(roles: Roles) -> None:
    """`retention --pipeline` connects as the writer: it tells a misspelt name from a
    pipeline whose runs were all deleted by the run counters' names, which the writer
    may read (0036), never their numbers."""
    with _connect(roles.app) as conn:
        record(Store.on(conn))
        old = retention.prune(conn, keep_days=1, pipeline="build", dry_run=True).runs
        assert old > 0 and retention.prune(conn, keep_days=1, pipeline="build").runs == old
        # Its old runs deleted: it did run, so there is nothing left to do, and no error.
        assert retention.prune(conn, keep_days=1, pipeline="build").runs == 0
        with pytest.raises(NotFound, match="pipeline 'biuld' has never recorded a run"):
            retention.prune(conn, keep_days=1, pipeline="biuld")


def test_the_reader_is_told_retention_is_the_writers(roles: Roles) -> None:
    """The reader counts what would go (it reads), and a real run is refused in one line
    that names the role to use, not a bare database error."""
    with _connect(roles.app) as conn:
        record(Store.on(conn))
    with _connect(roles.reader) as conn:
        assert retention.prune(conn, keep_days=1, pipeline="build", dry_run=True).runs > 0
        with pytest.raises(ConfigError) as refused:
            retention.prune(conn, keep_days=1)
    assert str(refused.value) == (
        f"role {READER_USER} lacks a right retention needs (SELECT, UPDATE and DELETE on the "
        "execution tables): permission denied for table pipeline_executions; nothing was "
        "deleted; run retention as the writer (ci_app, which `--local` and `--stack` use) or "
        "the tables' owner"
    )


def test_a_temporary_table_of_the_writers_cannot_stand_in_for_the_counters(roles: Roles) -> None:
    """The run-number function runs as its owner with pg_temp last in its search_path."""
    with _connect(roles.app) as conn:
        executions = Store.on(conn)
        executions.start_run("build", "a")
        conn.execute(
            "CREATE TEMP TABLE pipeline_run_counters "
            "(pipeline_name TEXT PRIMARY KEY, last_run_number BIGINT)"
        )
        conn.execute("INSERT INTO pipeline_run_counters VALUES ('build', 41)")
        assert executions.start_run("build", "b").run_number == 2
    assert roles.database.query("SELECT * FROM pipeline_run_counters") == [("build", 2)]


def test_a_run_inserted_as_0029_commits_is_numbered_not_refused(
    server: ConnectionSettings, owned: tuple[ConnectionSettings, Database]
) -> None:
    """0029 makes the numbering function SECURITY DEFINER and takes the counters from
    ci_app, which an operator switching the CI system to it during the upgrade granted
    every table. An insert that looked the function up before the commit (as its
    invoker) and reaches the counters after it (no longer granted) was refused with
    permission denied. The insert here is held between the two by a lock on the
    counters; 0029 must wait for it rather than commit under it."""
    settings, database = owned
    with _connect(settings) as conn:
        migrations.Runner(conn, migrations.discover(MIGRATIONS)).apply(target=28)
        conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(sql.Identifier(APP_USER))
        )
    app = _login(server, APP_USER, database.settings.database)
    insert = "INSERT INTO pipeline_executions (pipeline_name, commit_hash) VALUES ('build', %s)"
    outcome: dict[str, object] = {}
    with _connect(app) as writer, _connect(settings) as holder:
        writer.execute(insert, ["a"])  # the function looked up once, as a live writer has
        pid = writer.info.backend_pid
        with holder.transaction():
            holder.execute("LOCK TABLE pipeline_run_counters IN SHARE MODE")

            def write() -> None:
                try:
                    writer.execute(insert, ["b"])
                except psycopg.Error as error:
                    outcome["writer"] = error

            def migrate() -> None:
                with _connect(settings) as conn:
                    runner = migrations.Runner(conn, migrations.discover(MIGRATIONS))
                    outcome["migrate"] = runner.apply(target=29)

            threads = [threading.Thread(target=write), threading.Thread(target=migrate)]
            threads[0].start()
            database.wait_for(
                f"SELECT 1 FROM pg_locks WHERE pid = {pid} AND NOT granted",
                "the insert never waited for the counters",
            )
            threads[1].start()
            # Before the fix 0029 commits now; with it, it waits for the insert.
            deadline = time.monotonic() + 30
            while threads[1].is_alive() and not database.query(
                "SELECT 1 FROM pg_locks WHERE relation = 'pipeline_executions'::regclass "
                "AND mode = 'ShareLock' AND NOT granted"
            ):
                assert time.monotonic() < deadline, "0029 neither finished nor waited"
                time.sleep(0.02)
        for thread in threads:
            thread.join(timeout=60)
    assert "writer" not in outcome, outcome["writer"]
    assert database.history()[-1] == 29
    assert database.query("SELECT run_number FROM pipeline_executions ORDER BY run_number") == [
        (1,),
        (2,),
    ]


EARLIER_TEXTS = Path(__file__).parent / "fixtures" / "earlier"


def test_a_database_that_applied_the_earlier_0029_ends_as_one_migrated_by_the_files(
    owned: tuple[ConnectionSettings, Database], roles: Roles, tmp_path: Path
) -> None:
    """0029 was mended after it had been applied (the lock above): a database that
    applied its earlier text knows the mended file as applied, applies the files after
    it, and ends with the schema, grants and default privileges of one migrated by the
    files alone (pg_dump the oracle): the mending changed nothing the file makes."""
    settings, database = owned
    name = "0029_least_privilege_roles.sql"
    earlier = (EARLIER_TEXTS / name).read_bytes()
    mended = migrations.read(MIGRATIONS / name, 29, "least_privilege_roles")
    assert mended.checksum != hashlib.sha256(earlier).hexdigest()
    assert mended.earlier_checksums >= {
        hashlib.sha256(earlier).hexdigest(),
        hashlib.sha256(earlier.replace(b"\n", b"\r\n")).hexdigest(),
    }
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    (folder / name).write_bytes(earlier)
    with _connect(settings) as conn:
        migrations.Runner(conn, migrations.discover(folder)).apply(target=29)
        runner = migrations.Runner(conn, migrations.discover(MIGRATIONS))
        assert {row.version: row.state for row in runner.status()}[29] == "applied"
        runner.apply()
    assert database.history() == roles.database.history()
    assert pg_dump(database) == pg_dump(roles.database)
