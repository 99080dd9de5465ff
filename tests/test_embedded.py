"""The embedded target: created on first use, the plan's database and role, left running."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cicd_db.embedded import EmbeddedServer

from .conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A server of its own, so stopping it disturbs no other test."""
    path = ROOT / ".cicd-db" / f"tests-lifecycle-{uuid.uuid4().hex[:8]}"
    yield path
    EmbeddedServer(path).stop()
    shutil.rmtree(path, ignore_errors=True)


def test_lifecycle_through_the_cli(home: Path) -> None:
    # Relative, as a user would type it: the CLI runs from the repository root.
    env = {"CICD_DB_HOME": str(home.relative_to(ROOT))}
    before = run_cli("embedded", "status", env=env)
    assert (before.code, before.out) == (
        0,
        f"stopped, data {home}/embedded/data (not created yet)\n",
    )

    migrated = run_cli("migrate", "--stack", "embedded", env=env)
    assert migrated.code == 0, migrated.err
    assert migrated.out.startswith("applied 0001_plan_schema.sql (")

    status = json.loads(run_cli("embedded", "status", "--json", env=env).out)
    assert status["running"] is True
    assert status["initialized"] is True
    url = run_cli("embedded", "url", env=env).out.strip()
    assert url == f"postgresql://ci_user:***@127.0.0.1:{status['port']}/ci_local?sslmode=disable"
    real_url = run_cli("embedded", "url", "--show-password", env=env).out.strip()
    state = json.loads((home / "embedded" / "server.json").read_text())
    assert state["password"] in real_url
    assert oct((home / "embedded" / "server.json").stat().st_mode & 0o777) == "0o600"

    with psycopg.connect(real_url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), r.rolsuper, r.rolcreaterole, "
            "pg_get_userbyid(d.datdba), current_setting('TimeZone'), "
            "current_setting('default_transaction_isolation'), current_setting('client_encoding') "
            "FROM pg_roles r, pg_database d "
            "WHERE r.rolname = current_user AND d.datname = current_database()"
        ).fetchone()
    assert row == ("ci_user", "ci_local", False, False, "ci_user", "UTC", "read committed", "UTF8")

    again = run_cli("migrate", "--stack", "embedded", env=env)
    assert (again.code, again.out) == (0, "nothing to apply: stack embedded is up to date\n")

    stopped = run_cli("embedded", "stop", env=env)
    assert (stopped.code, stopped.out) == (0, "stopped\n")
    assert json.loads(run_cli("embedded", "status", "--json", env=env).out)["running"] is False
    assert run_cli("embedded", "stop", env=env).out == "not running\n"

    # Started again on demand, with the same data and credentials.
    restarted = run_cli("migrate", "status", "--local", env={**env, "CICD_DB_LOCAL": "embedded"})
    assert restarted.code == 0, restarted.err
    assert restarted.out.splitlines()[1].split()[:3] == ["1", "plan_schema", "applied"]
