"""The connection contract and the resolver: pure functions, tables of cases."""

from __future__ import annotations

from pathlib import Path

import psycopg.conninfo
import pytest

from cicd_db import settings as contract
from cicd_db.errors import ConfigError, UsageError
from cicd_db.settings import ConnectionSettings, from_url, password_candidates, redact
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
    ],
)
def test_from_url_bad(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        from_url(url)
    assert "pw@" not in str(raised.value)


def test_every_libpq_parameter_reaches_the_connection() -> None:
    url = (
        "postgresql://ci:pw@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ca%20dir/ca.pem"
        "&options=endpoint%3Dep-cool-42&application_name=deploy&target_session_attrs=read-write"
        "&connect_timeout=3&sslpassword=keypass"
    )
    settings = from_url(url)
    assert settings.sslmode == "verify-full"
    assert dict(settings.parameters) == {
        "sslrootcert": "/etc/ca dir/ca.pem",
        "options": "endpoint=ep-cool-42",
        "application_name": "deploy",
        "target_session_attrs": "read-write",
        "connect_timeout": "3",
        "sslpassword": "keypass",
    }
    conninfo = psycopg.conninfo.conninfo_to_dict(settings.conninfo())
    assert {key: conninfo[key] for key in ("sslrootcert", "options", "connect_timeout")} == {
        "sslrootcert": "/etc/ca dir/ca.pem",
        "options": "endpoint=ep-cool-42",
        "connect_timeout": "3",  # the URL's, not the default
    }
    assert from_url(settings.url()) == settings
    assert "keypass" not in settings.redacted_url()
    assert "pw" not in settings.redacted_url().replace("password", "")


SECRET = "Sup3rS3cret"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"postgresql://ci:{SECRET}@h/db?foo=bar",
            "the database URL 'postgresql://ci:***@h/db?foo=bar' has parameter 'foo', which "
            "libpq does not know; remove it, or fix its spelling",
        ),
        (
            f"postgresql://ci:{SECRET}@h/db?sslmode=bogus",
            "the database URL 'postgresql://ci:***@h/db?sslmode=bogus' has sslmode='bogus'; "
            "use one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            f"app:{SECRET}@host/db",
            "the database URL must start with postgresql:// or postgres://, got 'app:***@host/db'",
        ),
        (
            f"postgresql:/app:{SECRET}@host/db",
            "the database URL must start with postgresql:// or postgres://, got "
            "'postgresql:/app:***@host/db'",
        ),
        (
            f"postgresql://ci:ss@{SECRET}@127.0.0.1/db",
            "the database URL 'postgresql://ci:***@127.0.0.1/db' has a host with '@' or a space",
        ),
        (
            f"postgresql://ci:pass {SECRET}@127.0.0.1/db",
            "the database URL 'postgresql://ci:***@127.0.0.1/db' is malformed",
        ),
        (
            SECRET,
            "the database URL must start with postgresql:// or postgres:// (its value is not "
            "shown: it may hold a password)",
        ),
    ],
    ids=[
        "unknown-parameter",
        "bad-sslmode",
        "no-scheme",
        "one-slash",
        "raw-at-in-password",
        "space-in-password",
        "only-a-password",
    ],
)
def test_from_url_never_shows_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_url(url)
    assert str(raised.value).startswith(message), str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET in password_candidates(url) or any(
        SECRET in candidate for candidate in password_candidates(url)
    )


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
        ({"environ": {"CI": "true"}}, ConfigError, "DATABASE_URL is not set in this CI job"),
        (
            {"environ": {"CI": "true", "DATABASE_URL": ""}},
            ConfigError,
            r"DATABASE_URL is empty in this CI job; pass the secret to the step",
        ),
    ],
)
def test_resolve_bad(root: Path, flags: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve(**{"environ": {}, **flags}, root=root)


def test_ci_reads_a_stack_only_when_named(root: Path) -> None:
    target = resolve(stack="prod", environ={"CI": "true", "DATABASE_URL": ""}, root=root)
    assert (target.kind, target.name) == ("stack", "prod")
