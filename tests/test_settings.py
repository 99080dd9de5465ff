"""The connection contract and the resolver: pure functions, tables of cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from cicd_db import settings as contract
from cicd_db.errors import ConfigError, UsageError
from cicd_db.settings import ConnectionSettings, from_url, redact
from cicd_db.targets import resolve


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://ci:pw@db.example.com:6543/cicd_main?sslmode=require",
            ConnectionSettings("db.example.com", 6543, "cicd_main", "ci", "pw", "require"),
        ),
        (
            "postgres://ci:p%40ss%2Fw@localhost/ci_local",
            ConnectionSettings("localhost", 5432, "ci_local", "ci", "p@ss/w", "prefer"),
        ),
        (
            "postgresql://localhost/db",
            ConnectionSettings("localhost", 5432, "db", "", "", "prefer"),
        ),
    ],
)
def test_from_url(url: str, expected: ConnectionSettings) -> None:
    parsed = from_url(url)
    assert parsed == expected
    assert parsed.password == expected.password


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://ci:pw@h/db", "must start with postgresql:// or postgres://"),
        ("postgresql://ci:pw@h:99999/db", "has port '99999'; use a number from 1 to 65535"),
        ("postgresql://ci:pw@/db", "names no host"),
        ("postgresql://ci:pw@h/", "names no database"),
        ("postgresql://ci:pw@h/db?nonsense=1", "is malformed"),
    ],
)
def test_from_url_bad(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        from_url(url)
    assert "pw@" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://ci:hunter2@h:5432/db", "postgresql://ci:***@h:5432/db"),
        ("postgres://ci:p@ss@h/db", "postgres://ci:***@h/db"),
        ("postgresql://ci@h/db", "postgresql://ci@h/db"),
        ("host=h password=hunter2 user=ci", "host=h password=*** user=ci"),
        ("host=h password='two words' user=ci", "host=h password=*** user=ci"),
        ("postgresql://h/db?user=ci&password=hunter2", "postgresql://h/db?user=ci&password=***"),
        (
            "failed: 'postgresql://a:b@h/db' then 'postgresql://c:d@h/db'",
            "failed: 'postgresql://a:***@h/db' then 'postgresql://c:***@h/db'",
        ),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_known_secrets() -> None:
    assert redact("the password is hunter2, really", secrets=["hunter2"]) == (
        "the password is ***, really"
    )


def test_url_round_trips_and_redacts() -> None:
    settings = ConnectionSettings(
        "db.example.com", 5432, "cicd main", "ci user", "p@ss:w/rd", "verify-full"
    )
    assert from_url(settings.url()) == settings
    assert settings.redacted_url() == (
        "postgresql://ci%20user:***@db.example.com:5432/cicd%20main?sslmode=verify-full"
    )
    assert "p@ss" not in repr(settings)


def test_outputs_are_the_contract() -> None:
    settings = ConnectionSettings("h", 5432, "db", "u", "pw", "require")
    assert tuple(settings.outputs()) == contract.OUTPUT_NAMES
    assert {"password", "database_url", "migration_database_url"} == contract.SECRET_OUTPUT_NAMES
    with_direct = ConnectionSettings(
        "h",
        6543,
        "db",
        "u",
        "pw",
        "require",
        migration_url="postgresql://u:pw@direct/db?sslmode=require",
    )
    assert tuple(with_direct.outputs()) == (*contract.OUTPUT_NAMES, "migration_database_url")
    assert with_direct.for_migrations().host == "direct"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        (tmp_path / name).write_text("")
    return tmp_path


URL = "postgresql://u:pw@flag/db"
ENV_URL = "postgresql://u:pw@env/db"


@pytest.mark.parametrize(
    ("flags", "environ", "kind", "name"),
    [
        ({"database_url": URL}, {"DATABASE_URL": ENV_URL}, "url", "--database-url"),
        ({"stack": "dev"}, {"DATABASE_URL": ENV_URL}, "stack", "dev"),
        ({"stack": "embedded"}, {}, "stack", "embedded"),
        ({"local": True}, {"DATABASE_URL": ENV_URL}, "stack", "dev"),
        ({"local": True}, {"CICD_DB_LOCAL": "embedded"}, "stack", "embedded"),
        ({}, {"DATABASE_URL": ENV_URL}, "url", "DATABASE_URL"),
        ({}, {}, "stack", "prod"),
    ],
    ids=[
        "url-wins",
        "stack-over-env",
        "embedded",
        "local-is-dev",
        "local-embedded",
        "env",
        "default-prod",
    ],
)
def test_resolve(root: Path, flags: dict, environ: dict, kind: str, name: str) -> None:
    target = resolve(**flags, environ=environ, root=root)
    assert (target.kind, target.name) == (kind, name)
    assert target.remote is (name == "prod")
    if kind == "url":
        assert target.settings.host == ("flag" if name == "--database-url" else "env")


@pytest.mark.parametrize(
    ("flags", "error", "message"),
    [
        ({"stack": "qa"}, ConfigError, "unknown stack 'qa'; choose one of dev, embedded, prod"),
        ({"stack": "dev", "local": True}, UsageError, "--stack and --local both name a database"),
        ({"database_url": "nope"}, ConfigError, "must start with postgresql://"),
    ],
)
def test_resolve_bad(root: Path, flags: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve(**flags, environ={}, root=root)
