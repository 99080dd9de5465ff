"""The connection contract and the resolver: pure functions, tables of cases."""

from __future__ import annotations

import re
import socket
import time
import unicodedata
from pathlib import Path
from urllib.parse import quote

import psycopg.conninfo
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from cicd_db import cli, targets
from cicd_db import settings as contract
from cicd_db.errors import AuthenticationFailed, ConfigError, ConnectionFailed, UsageError
from cicd_db.settings import (
    ConnectionSettings,
    from_url,
    mask_credentials,
    password_candidates,
    redact,
)
from cicd_db.targets import resolve

from .fix_db import Database
from .passwords import PASSWORD_CHARACTERS, assert_nothing_of
from .utils import examples, use_service_file


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://ci:pw@db.example.com:6543/cicd_main?sslmode=require",
            ConnectionSettings("db.example.com", 6543, "cicd_main", "ci", "pw", "require"),
        ),
        (
            "postgres://ci:p%40ss%2Fw@localhost/ci_local",
            ConnectionSettings("localhost", None, "ci_local", "ci", "p@ss/w", None),
        ),
        (
            "postgresql://localhost/db",
            ConnectionSettings("localhost", None, "db", "", "", None),
        ),
        # What is not given is libpq's to choose (PGHOST, PGPORT, a service file, ...).
        ("postgresql:///db", ConnectionSettings("", None, "db", "", "", None)),
        (
            "postgresql://?service=prod",
            ConnectionSettings("", None, "", "", "", None, parameters=(("service", "prod"),)),
        ),
        (
            "postgresql://u@h1:5433,h2:5434/db",
            ConnectionSettings(
                "h1,h2", None, "db", "u", "", None, parameters=(("port", "5433,5434"),)
            ),
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
        ("postgresql://ci:pw@h:99999/db", "has a port that is not a number from 1 to 65535"),
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
            f"postgresql://ci:{SECRET}@h/db?sslmode=require&foo=bar",
            "the database URL has a parameter libpq does not know (parameter 2 of 2, its name "
            "is not shown: it may hold a password); remove it, or fix its spelling",
        ),
        (
            f"postgresql://ci:{SECRET}@h/db?sslmode=bogus",
            "the database URL 'postgresql://ci:***@h/db?sslmode=bogus' has an sslmode libpq does "
            "not know; use one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            f"app:{SECRET}@host/db",
            "the database URL must start with postgresql:// or postgres:// (its value is not "
            "shown: it may hold a password)",
        ),
        (
            f"postgresql:/app:{SECRET}@host/db",
            "the database URL must start with postgresql:// or postgres://, got "
            "'postgresql:/app:***@host/db'",
        ),
        (
            f"postgresql://ci:ss@{SECRET}@127.0.0.1/db",
            "the database URL 'postgresql://ci:***@127.0.0.1/db' has an '@' where libpq reads "
            "the host, port or database: most likely a password (or user name) holding a raw '@' "
            "or '/'; percent-encode them there (@ as %40, / as %2F)",
        ),
        # Issue 17: libpq reads `Sek` (before the '/') as the port, the rest up to
        # `@h:1` as the database: neither is named.
        (
            f"postgresql://u:Sek/{SECRET}@h:1/db",
            "the database URL 'postgresql://u:***@h:1/db' has an '@' where libpq reads",
        ),
        (
            f"postgresql://u:12/{SECRET}@h:1/db",
            "the database URL 'postgresql://u:***@h:1/db' has an '@' where libpq reads",
        ),
        (
            f"postgresql://u@h/db?sslpassword={SECRET}&bogus=1",
            # A secret's value is masked to the end: a raw & in it would show the rest.
            "the database URL 'postgresql://u@h/db?sslpassword=***' is malformed",
        ),
        (
            f"postgresql://u@h/db?sslpassword={SECRET}&sslmode=bogus",
            "the database URL 'postgresql://u@h/db?sslpassword=***' has an sslmode libpq does "
            "not know",
        ),
        (
            f"postgresql://u:{SECRET}%80@h/db",
            "the database URL 'postgresql://u:***@h/db' has a percent-escape that is not UTF-8",
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
        "raw-slash-in-password",
        "digits-then-raw-slash",
        "sslpassword-and-unknown",
        "sslpassword-and-bad-sslmode",
        "not-utf-8",
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
    assert {
        "password",
        "database_url",
        "migration_database_url",
        "app_database_url",
        "reader_database_url",
    } == contract.SECRET_OUTPUT_NAMES
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
        ({"stack": "dev", "local": True}, UsageError, "`stack` and `local` both name a database"),
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


def test_resolve_names_arguments_the_cli_phrases_as_flags(root: Path) -> None:
    """The library names its arguments as data; the CLI writes them as its flags."""
    with pytest.raises(UsageError) as raised:
        resolve(database_url="postgresql://h/d", local=True, environ={}, root=root)
    assert raised.value.arguments == ("database_url", "local")
    assert str(raised.value).startswith("`database_url` and `local` both name a database")
    with pytest.raises(ConfigError) as raised:
        resolve(environ={"CI": "true"}, root=root)
    assert str(raised.value).endswith("or read prod from Pulumi explicitly with `stack` prod")


def test_ci_reads_a_stack_only_when_named(root: Path) -> None:
    target = resolve(stack="prod", environ={"CI": "true", "DATABASE_URL": ""}, root=root)
    assert (target.kind, target.name) == ("stack", "prod")


@pytest.mark.parametrize(
    ("host", "port", "pooled"),
    [
        ("db.supabase.co", 6543, True),
        ("db.supabase.co", 6542, False),
        ("db.supabase.co", 5432, False),
        ("ep-cool-42-pooler.us-east-2.aws.neon.tech", 5432, True),
        ("ep-cool-42.us-east-2.aws.neon.tech", 5432, False),
        ("ep-cool-42.db-pooler.example", 5432, False),  # only the first label counts
        ("pooler-ep.neon.tech", 5432, False),
        ("localhost-pooler", 5432, True),  # a host of one label
    ],
)
def test_is_transaction_pooler(host: str, port: int, pooled: bool) -> None:
    assert contract.is_transaction_pooler(ConnectionSettings(host, port, "db", "u")) is pooled


@pytest.mark.parametrize(
    ("url", "allow_insecure", "expected"),
    [
        ("postgresql://u:pw@h/db", False, "postgresql://u:pw@h/db?sslmode=require"),
        (
            "postgresql://u:pw@h/db?options=endpoint%3Dep",
            False,
            "postgresql://u:pw@h/db?options=endpoint%3Dep&sslmode=require",
        ),
        (
            "postgresql://u:pw@h/db?sslmode=verify-ca",
            False,
            "postgresql://u:pw@h/db?sslmode=verify-ca",
        ),
        ("postgresql://u:pw@h/db?sslmode=disable", True, "postgresql://u:pw@h/db?sslmode=disable"),
    ],
)
def test_check_cloud_url(url: str, allow_insecure: bool, expected: str) -> None:
    assert contract.check_cloud_url(url, what="databaseUrl", allow_insecure=allow_insecure) == (
        expected
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://u@h/db",
            "the databaseUrl 'postgresql://u@h/db' needs a user and a password, as in "
            "postgresql://USER:PASSWORD@HOST/DATABASE",
        ),
        (
            "postgresql://:hunter2@h/db",
            "the databaseUrl 'postgresql://:***@h/db' needs a user and a password, as in "
            "postgresql://USER:PASSWORD@HOST/DATABASE",
        ),
        (
            "postgresql://u:pw@h/db?sslmode=prefer",
            "the databaseUrl would connect with the URL's sslmode, prefer, which does not "
            "encrypt; use sslmode=require (or verify-ca, verify-full), or set "
            "cicd-db:allowInsecure true",
        ),
        (
            "https://u:pw@h/db",
            "the databaseUrl must start with postgresql:// or postgres://",
        ),
    ],
)
def test_check_cloud_url_bad(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        contract.check_cloud_url(url, what="databaseUrl")
    assert str(raised.value).startswith(message), str(raised.value)


OUTPUTS = {
    "host": "db.example.com",
    "port": 6543,
    "database": "app",
    "user": "ci",
    "password": "pw",
    "sslmode": "require",
    "database_url": "postgresql://ci:pw@db.example.com:6543/app?sslmode=require&options=-c%20x%3D1",
}


def test_from_outputs_takes_the_parameters_from_the_url() -> None:
    settings = contract.from_outputs(OUTPUTS, stack="prod")
    assert settings == ConnectionSettings(
        "db.example.com", 6543, "app", "ci", "pw", "require", parameters=(("options", "-c x=1"),)
    )


def test_from_outputs_names_every_missing_output() -> None:
    outputs = {**OUTPUTS, "password": "", "host": None}
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs(outputs, stack="prod")
    assert str(raised.value) == (
        "stack 'prod' has no output host, password; "
        "run `pulumi up -s prod` so it exports the connection contract"
    )


def test_from_outputs_names_the_stack_in_a_bad_url() -> None:
    with pytest.raises(ConfigError, match=r"^the stack 'qa' output database_url must start"):
        contract.from_outputs({**OUTPUTS, "database_url": "mysql://h/db"}, stack="qa")


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("host", "db2.example.com", "('db2.example.com' and 'db.example.com')"),
        ("port", 5432, "(5432 and 6543)"),
        ("database", "other", "('other' and 'app')"),
        ("user", "admin", "('admin' and 'ci')"),
        ("sslmode", "disable", "('disable' and 'require')"),
    ],
)
def test_from_outputs_refuses_fields_that_disagree_with_the_url(
    name: str, value: object, shown: str
) -> None:
    """A command must not reach one database by the URL and name another by the fields."""
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, name: value}, stack="prod")
    assert str(raised.value) == (
        f"stack 'prod' outputs {name} and database_url name different {name}s {shown}; "
        "export both from the same values and run `pulumi up -s prod`"
    )


def test_from_outputs_takes_a_host_in_another_case_and_libpqs_defaults_as_agreeing() -> None:
    url = "postgresql://ci:pw@db.example.com/app"
    outputs = {**OUTPUTS, "host": "DB.Example.com", "port": 5432, "sslmode": "prefer"}
    read = contract.from_outputs({**outputs, "database_url": url}, stack="prod")
    assert (read.host, read.port, read.sslmode) == ("DB.Example.com", 5432, "prefer")
    with pytest.raises(ConfigError, match=r"^stack 'prod' outputs port and database_url"):
        contract.from_outputs({**outputs, "port": 6543, "database_url": url}, stack="prod")


_JSON_OF_ANOTHER_TYPE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=examples(200))
@given(
    name=st.sampled_from(contract.OUTPUT_NAMES),
    value=_JSON_OF_ANOTHER_TYPE.filter(lambda v: v not in (None, "")),
)
# Found in review: 0, false, [] and {} read as "not given", and libpq then took
# PGHOST, PGPORT or PGPASSWORD: a stack connected to neither endpoint it named.
@example(name="host", value=0)
@example(name="port", value=0)
@example(name="password", value=False)
@example(name="database", value=[])
def test_an_output_of_another_json_type_is_refused_not_read_as_missing(
    name: str, value: object
) -> None:
    """Every field of the contract is text but the port, a number from 1 to 65535. A value
    of another type is refused, naming the output and its type, never the value."""
    valid = (
        isinstance(value, str)
        if name != "port"
        else (
            type(value) is int and 0 < value < 65536  # type: ignore[operator]
        )
        or (
            isinstance(value, str)
            and value.isascii()
            and value.isdigit()
            and len(value) <= 5
            and 0 < int(value) < 65536
        )
    )
    assume(not valid)
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, name: value}, stack="prod")
    kinds = "null|true or false|a number|a fraction|text|a list|an object|out of range"
    wanted = "a port number from 1 to 65535" if name == "port" else "text"
    assert re.fullmatch(
        rf"stack 'prod' output {name} is ({kinds}), not {wanted}; export .* `pulumi up -s prod`",
        str(raised.value),
    ), raised.value


@pytest.mark.parametrize("field", ["user", "database", "host"])
def test_a_field_holding_the_password_is_masked_in_the_mismatch(field: str) -> None:
    """Two outputs swapped (the password exported as the user): the message that names
    the two values hides the password, found in review."""
    secret = "Sekr3t-PW.x"
    outputs = {
        **OUTPUTS,
        "password": secret,
        "database_url": f"postgresql://ci:{secret}@db.example.com:6543/app?sslmode=require",
        field: secret,
    }
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs(outputs, stack="dev")
    message = str(raised.value)
    assert f"outputs {field} and database_url name different" in message
    assert_nothing_of((secret, "----"), message)


def test_from_outputs_refuses_a_password_that_disagrees_and_shows_neither() -> None:
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, "password": "other-secret"}, stack="prod")
    message = str(raised.value)
    assert message.startswith("stack 'prod' outputs password and database_url name different")
    assert "other-secret" not in message and ":pw@" not in message and "'pw'" not in message


def test_repository_root_is_this_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # wherever the command runs
    root = targets.repository_root()
    assert root == Path(targets.__file__).resolve().parents[2]
    assert (root / "Pulumi.yaml").is_file()
    assert resolve(stack="dev", environ={}).root == root


def test_repository_root_of_an_installed_package_is_the_cwds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets, "__file__", str(tmp_path / "site" / "pkg" / "cicd_db" / "x.py"))
    (tmp_path / "repo" / "sub" / "dir").mkdir(parents=True)
    (tmp_path / "repo" / "Pulumi.yaml").write_text("")
    monkeypatch.chdir(tmp_path / "repo" / "sub" / "dir")
    assert targets.repository_root() == tmp_path / "repo"
    (tmp_path / "repo" / "Pulumi.yaml").unlink()
    assert targets.repository_root() == tmp_path / "repo" / "sub" / "dir"


def test_state_home(tmp_path: Path) -> None:
    assert targets.state_home(tmp_path, {}) == tmp_path / ".cicd-db"
    assert targets.state_home(tmp_path, {"CICD_DB_HOME": ""}) == tmp_path / ".cicd-db"
    assert targets.state_home(tmp_path, {"CICD_DB_HOME": "/var/x"}) == Path("/var/x")
    target = resolve(stack="embedded", environ={"CICD_DB_HOME": "/var/x"}, root=tmp_path)
    assert target.home == Path("/var/x")


def test_known_stacks(tmp_path: Path) -> None:
    assert targets.known_stacks(tmp_path) == ["embedded"]
    for name in ("Pulumi.yaml", "Pulumi.qa.yaml", "Pulumi.a.b.yaml", "Pulumi.dev.yml"):
        (tmp_path / name).write_text("")
    assert targets.known_stacks(tmp_path) == ["a.b", "embedded", "qa"]


HOST = ConnectionSettings("db.example.com", 5433, "app", "ci", SECRET)


@pytest.mark.parametrize(
    ("message", "error", "expected"),
    [
        (
            'connection failed: connection to server at "10.0.0.1", port 5433 failed: FATAL:  '
            'password authentication failed for user "ci"\nmore',
            AuthenticationFailed,
            "db.example.com:5433 refused user 'ci': password authentication failed for user "
            '"ci"; check the user and password of the target (--database-url, DATABASE_URL or '
            "the stack's outputs)",
        ),
        (
            "fe_sendauth: no password supplied",
            AuthenticationFailed,
            "db.example.com:5433 refused user 'ci': fe_sendauth: no password supplied; check",
        ),
        (
            'FATAL:  role "ci" does not exist',
            AuthenticationFailed,
            "db.example.com:5433 refused user 'ci': role \"ci\" does not exist; check",
        ),
        (
            'connection to server at "10.0.0.1", port 5433 failed: FATAL:  database "app" does '
            "not exist",
            ConfigError,
            'db.example.com:5433: database "app" does not exist; create it, or fix the database '
            "name in the URL",
        ),
        (
            'FATAL:  role "ci" is not permitted to log in',
            AuthenticationFailed,
            "db.example.com:5433 refused user 'ci': role \"ci\" is not permitted to log in; give "
            "it LOGIN (ALTER ROLE ... LOGIN), or connect as another user",
        ),
        # What the test server cannot be made to say: its pg_hba.conf, its start-up and
        # shut-down, its max_connections (tests/test_targets.py produces the rest).
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "ci", database "app", '
            "no encryption",
            AuthenticationFailed,
            "db.example.com:5433 refused user 'ci': no pg_hba.conf entry for host \"10.0.0.9\", "
            'user "ci", database "app", no encryption; the server\'s pg_hba.conf lets no such '
            "connection in: add a line for it there",
        ),
        (
            'FATAL:  pg_hba.conf rejects connection for host "10.0.0.9", user "ci", database '
            '"app", no encryption',
            AuthenticationFailed,
            "db.example.com:5433 refused user 'ci': pg_hba.conf rejects connection",
        ),
        (
            "FATAL:  the database system is starting up",
            ConnectionFailed,
            "cannot connect to db.example.com:5433: the database system is starting up; check "
            "that the server is up (`cicd-db migrate wait` waits until it accepts connections)",
        ),
        (
            "FATAL:  sorry, too many clients already",
            ConnectionFailed,
            "db.example.com:5433 refused the connection: sorry, too many clients already; it is "
            "at a connection limit: wait for connections to close, or raise the limit",
        ),
        (
            "FATAL:  a refusal of a kind not known here",
            ConnectionFailed,
            "db.example.com:5433 refused the connection: a refusal of a kind not known here",
        ),
        (
            'invalid sslmode value: "bogus"',
            ConfigError,
            'db.example.com:5433: invalid sslmode value: "bogus"; fix that parameter of the '
            "target (--database-url, DATABASE_URL or the stack's outputs)",
        ),
        (
            'connection to server at "10.0.0.1", port 5433 failed: root certificate file '
            '"/nope/ca.pem" does not exist',
            ConfigError,
            'db.example.com:5433: root certificate file "/nope/ca.pem" does not exist; fix',
        ),
        (
            'could not load SSL engine "x"',
            ConfigError,
            'db.example.com:5433: could not load SSL engine "x"; fix',
        ),
        (
            'could not open certificate file "/c.pem": No such file or directory',
            ConfigError,
            'db.example.com:5433: could not open certificate file "/c.pem"',
        ),
        (
            'connection to server at "10.0.0.1", port 5433 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?",
            ConnectionFailed,
            "cannot connect to db.example.com:5433: Connection refused; check that the server "
            "is up (`cicd-db migrate wait`) and that host and port are right",
        ),
        (
            "  ",
            ConnectionFailed,
            "cannot connect to db.example.com:5433: no answer; check that the server is up",
        ),
        (
            f"server said {SECRET} twice: {SECRET}",
            ConnectionFailed,
            "cannot connect to db.example.com:5433: server said *** twice: ***; check",
        ),
    ],
    ids=[
        "password",
        "no-password",
        "no-role",
        "no-database",
        "role-not-permitted",
        "pg-hba-no-entry",
        "pg-hba-rejects",
        "starting-up",
        "too-many-clients",
        "another-refusal",
        "libpq-parameter",
        "root-certificate",
        "ssl",
        "certificate",
        "refused",
        "empty",
        "secret",
    ],
)
def test_connection_errors_say_what_to_fix(message: str, error: type, expected: str) -> None:
    """As the CLI prints them: the target's URL named as its flag."""
    result = targets._connection_error(HOST, psycopg.OperationalError(message))
    assert type(result) is error
    assert cli.phrased(result).startswith(expected), cli.phrased(result)


def test_a_brace_in_the_server_text_is_not_a_field() -> None:
    """The server's text goes into the message as a value: `{x}` in it stays `{x}`."""
    message = 'FATAL:  password authentication failed for user "a{b}{}"'
    result = targets._connection_error(HOST, psycopg.OperationalError(message))
    assert 'for user "a{b}{}"; check' in str(result)
    assert 'for user "a{b}{}"; check' in cli.phrased(result)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connect_turns_failures_into_our_errors() -> None:
    settings = ConnectionSettings("127.0.0.1", closed_port(), "db", "ci", SECRET)
    with pytest.raises(
        ConnectionFailed, match=r"^cannot connect to 127\.0\.0\.1:\d+: Connection refused;"
    ):
        targets.connect(settings)


def test_connect_applies_autocommit_and_overrides(database: Database) -> None:
    with targets.connect(database.settings, application_name="probe") as conn:
        assert conn.autocommit is True
        assert conn.execute("SHOW application_name").fetchone() == ("probe",)
    with targets.connect(database.settings, autocommit=False) as conn:
        assert conn.autocommit is False


def test_wait(database: Database) -> None:
    started = time.monotonic()
    targets.wait(database.settings, timeout=5)
    assert time.monotonic() - started < 2
    settings = ConnectionSettings("127.0.0.1", closed_port(), "db", "ci", SECRET)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        targets.wait(settings, timeout=0.4, poll=0.1)
    assert 0.4 <= time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        targets.wait(settings, timeout=0.3)  # polls every 0.2 s by default
    assert 0.3 <= time.monotonic() - started < 1.1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # the first unknown name, even after a known one and with "=" in its value, named
        # when it misspells a keyword
        (
            "postgresql://u@h/db?sslmode=require&aplication_name=a=b&foo=1",
            r"has a parameter libpq does not know \(parameter 2 of 3, 'aplication_name': did "
            r"you mean application_name\?\)",
        ),
        # else not: a password put where a name goes (`?pwd=`, `?password:...`)
        (
            "postgresql://u@h/db?sslmode=require&pwd=Sekr3tPW",
            r"does not know \(parameter 2 of 2, its name is not shown: it may hold a password\)",
        ),
        # a fragment is no parameter: libpq refuses the URL, we do not name "y"
        ("postgresql://u@h/db?sslmode=require#x&y", "is malformed; check its form: "),
    ],
)
def test_query_names(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_url(url)


def test_from_url_keeps_scheme_like_text_in_values() -> None:
    settings = from_url("postgresql://u@h/db?application_name=a://b&options=")
    # Given empty is given, as libpq takes it (no options, not PGOPTIONS's).
    assert settings.parameters == (("application_name", "a://b"), ("options", ""))


def test_malformed_url_message_is_whole() -> None:
    with pytest.raises(ConfigError) as raised:
        from_url("postgresql://u:a b@h/db")
    assert str(raised.value) == (
        "the database URL 'postgresql://u:***@h/db' is malformed; check its form: "
        "postgresql://USER:PASSWORD@HOST:5432/DATABASE (percent-encode special characters "
        "in the password: @ as %40, / as %2F, ? as %3F, # as %23, % as %25, space as %20)"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"host": "a b", "dbname": "d"},
            "the x has a host with '@' or a space in it: most likely a password holding such "
            "a character; percent-encode it (@ as %40, space as %20)",
        ),
        ({"host": "h", "dbname": "d", "port": "0"}, "the x has a port that is not a number from"),
        ({"host": "h", "dbname": "d", "port": 65536}, "the x has a port that is not a number"),
        ({"host": "h", "dbname": "d", "port": "-1"}, "the x has a port that is not a number"),
        (
            {"host": "h", "dbname": "d", "port": "\uff15\uff14\uff13\uff12"},
            "the x has a port that is not a number",
        ),
    ],
)
def test_from_mapping_bad(params: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        contract.from_mapping(params, what="x")
    assert str(raised.value) == message or str(raised.value).startswith(message)


def test_from_mapping_takes_contract_names_and_edge_ports() -> None:
    direct = "postgresql://u:pw@direct/db"
    for port in (1, "65535"):
        settings = contract.from_mapping(
            {"host": "h", "database": "d", "port": port, "migration_database_url": direct},
            what="x",
        )
        assert (settings.port, settings.database, settings.migration_url) == (
            int(port),
            "d",
            direct,
        )
    empty = contract.from_mapping(
        {"host": "h", "dbname": "d", "migration_database_url": "", "application_name": ""},
        what="x",
    )
    assert (empty.migration_url, empty.parameters) == (None, ())


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("HTTP://u:pw@h", "HTTP://u:***@h"),
        ("postgresql://u:p:w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        # A typo for the ':' hides the password all the same; the typo shows.
        (
            "postgresql://prof?Sekr3t@h:1/db?sslmode=disable",
            "postgresql://prof?***?sslmode=disable",
        ),
        ("postgresql://u/Sekr3t@h/db", "postgresql://u/***@h/db"),
        ("postgresql://u;Sekr3t@h/db", "postgresql://u;***@h/db"),
        ("postgresql://u%3ASekr3t@h/db", "postgresql://u%3A***@h/db"),
        ("postgresql://u\uff1aSekr3t@h/db", "postgresql://u\uff1a***@h/db"),
        ("postgresql://ci%20user:pw@h/db", "postgresql://ci%20user:***@h/db"),
        ("postgresql://h/db?user=u:Sekr3t&sslmode=disable", "postgresql://h/db?user=u:***"),
        ("postgresql://me@server:pw@h/db", "postgresql://me@server:***@h/db"),
        ("postgresql://jürgen:pw@h", "postgresql://jürgen:***@h"),
        ("postgresql://@h/db", "postgresql://@h/db"),
        # Without a scheme, nothing is shown: it may be a password holding an @.
        (":pw@h", None),
        ("@h", None),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql:/h/db", None),  # one slash: may be a password
        ("my pass://x", None),
        ("hunter2", None),
    ],
)
def test_mask_credentials(text: str, masked: str | None) -> None:
    assert contract.mask_credentials(text) == masked


@pytest.mark.parametrize(
    ("text", "candidates"),
    [
        (None, []),
        ("", []),
        ("postgresql://u:pw@h", ["pw"]),
        ("HTTP://u:pw@h", ["pw"]),
        ("postgresql://u:p:w@h/db", ["p:w", "p", "w"]),
        # libpq reads a password with a raw / or ? as host, port or database: its pieces too
        # (and what its '?' starts is an unknown parameter, as the query reads it).
        ("postgresql://u:Sek/r3t?PW@h:1/db", ["PW@h:1/db", "Sek/r3t?PW", "Sek", "r3t", "PW"]),
        # A secret's value is taken to the end: a raw & or # in it is no separator (and
        # `x=1`, an unknown parameter, is hidden as the query's masking hides it).
        ("postgresql://u@h/db?sslpassword=keypass&x=1", ["keypass&x=1", "x=1"]),
        ("postgresql://u:a@b@h/db", ["a@b", "a", "b"]),
        ("postgresql://u@h/db", []),
        ("postgresql://@h/db", []),
        (":pw@h", ["pw"]),
        ("@h", []),
        ("postgresql://h/db", []),
        ("  postgresql:/h/db ", ["postgresql:/h/db"]),
        ("hunter2", ["hunter2"]),
    ],
)
def test_password_candidates(text: str | None, candidates: list[str]) -> None:
    assert password_candidates(text) == candidates


# What may be in a role's name without ending it where a password could follow: letters
# and digits of any script, spaces, signs that are no separator, and punctuation and
# symbols beyond ASCII that stand for none (a typographic apostrophe, a middle dot).
_NAME_CHARACTERS = (
    st.characters(categories=("L", "M", "N", "Zs"))
    | st.sampled_from("_-.+~@$' ")
    | st.characters(categories=("P", "S"), min_codepoint=0x80).filter(
        lambda c: unicodedata.normalize("NFKC", c) not in set(":/?#[];,!=&|\\@")
    )
)


@settings(max_examples=examples(200), deadline=None)
@given(name=st.text(_NAME_CHARACTERS, min_size=1, max_size=24), password=st.none() | st.text())
def test_no_piece_of_a_role_name_is_taken_for_a_password(name: str, password: str | None) -> None:
    """A role named in any script, percent-escaped in a URL as ConnectionSettings.url()
    writes it, shows whole: nothing of it is hidden from messages (a printed fix that
    names the role must name the role that exists)."""
    url = ConnectionSettings("h", 5432, "db", name, password).url()
    # Only the password, or pieces of it, as it is or percent-escaped.
    given = f"{password or ''} {quote(password or '', safe='')}"
    assert all(candidate in given for candidate in password_candidates(url)), url
    assert redact(f"role {name}", ConnectionSettings("h", 5432, "db", name).secrets()) == (
        f"role {name}"
    )


@settings(max_examples=examples(200), deadline=None)
@given(
    name=st.text(_NAME_CHARACTERS, min_size=1, max_size=12),
    separator=st.sampled_from([":", "?", "/", "\uff1a", "\uff20", "\ufe55", "\uff1f"]),
    secret=st.text(st.characters(categories=("L", "N")), min_size=4, max_size=12),
)
def test_a_password_typed_after_any_separator_is_hidden_escaped_or_not(
    name: str, separator: str, secret: str
) -> None:
    """`u:pw`, `u?pw`, `u\uff1apw` (a full-width colon) as the user name, raw or
    percent-escaped: what follows the separator may be a password, and is hidden."""
    escaped = (quote(name + separator, safe=""), quote(secret, safe=""))
    raw = (quote(name, safe="") + separator, secret)
    for shown, hidden in (escaped, raw):
        url = f"postgresql://{shown}{hidden}@h/db"
        assert any(secret in candidate for candidate in password_candidates(url)), url
        masked = contract.mask_credentials(url) or ""
        assert masked.startswith(f"postgresql://{shown}***"), (url, masked)


_HOSTS = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z") | st.sampled_from(
    ["::1", "127.0.0.1", "/run/postgresql", "h1,h2"]
)


@settings(max_examples=examples(100), deadline=None)
@given(
    host=_HOSTS,
    port=st.none() | st.integers(1, 65535),
    database=st.text(_NAME_CHARACTERS, min_size=1, max_size=12),
    user=st.text(_NAME_CHARACTERS, min_size=1, max_size=12),
    password=st.text(min_size=1, max_size=12).filter(lambda p: "\x00" not in p),
    sslmode=st.none() | st.sampled_from(contract.SSLMODES),
    changed=st.sampled_from(["host", "port", "database", "user", "password", "sslmode"]),
)
def test_outputs_read_back_whole_and_one_changed_field_is_refused(
    host: str,
    port: int | None,
    database: str,
    user: str,
    password: str,
    sslmode: str | None,
    changed: str,
) -> None:
    """What a stack exports (ConnectionSettings.outputs, as infra/ writes it) reads back as
    the same endpoint; any one field changed after is refused, naming the field and never
    the password, also a port or sslmode the URL leaves to libpq's default."""
    given = ConnectionSettings(host, port, database, user, password, sslmode)
    outputs = given.outputs()
    read = contract.from_outputs(outputs, stack="s")
    assert (read.host, read.database, read.user, read.password) == (
        host,
        database,
        user,
        password,
    )
    assert read.port == (port or 5432)  # the contract's port is one number, libpq's default if none
    assert read.sslmode == (sslmode or "prefer")
    other = {
        "host": host + "x" if "," not in host else "h3",
        "port": (port or 5432) % 65535 + 1,
        "database": database + "x",
        "user": user + "x",
        "password": password + "x",
        "sslmode": "verify-full" if sslmode != "verify-full" else "disable",
    }[changed]
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs({**outputs, changed: other}, stack="s")
    message = str(raised.value)
    assert message.startswith(f"stack 's' outputs {changed} and database_url name different")
    if changed == "password":
        assert message == (
            "stack 's' outputs password and database_url name different passwords; "
            "export both from the same values and run `pulumi up -s s`"
        )


def test_redact_skips_short_and_empty_secrets() -> None:
    assert redact("ab abc abcd", secrets=["", "ab"]) == "ab abc abcd"
    assert redact("x abc y", secrets=["abc"]) == "x *** y"


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        (ConnectionSettings("h", 5432, "d", ""), "postgresql://h:5432/d"),
        (
            ConnectionSettings("h", None, "d", "", sslmode="require"),
            "postgresql://h/d?sslmode=require",
        ),
        (
            ConnectionSettings("h", 5432, "a/b", "u/v", "p/q"),
            "postgresql://u%2Fv:p%2Fq@h:5432/a%2Fb",
        ),
        (ConnectionSettings("::1", 5432, "d", "u"), "postgresql://u@[::1]:5432/d"),
        (
            ConnectionSettings("/run/pg", 5432, "d", "u"),
            "postgresql://u@/d?host=%2Frun%2Fpg&port=5432",
        ),
        (ConnectionSettings("", None, "d", "u"), "postgresql://u@/d"),
        (
            ConnectionSettings("h1,h2", None, "d", "u", parameters=(("port", "5433,5434"),)),
            "postgresql://u@h1:5433,h2:5434/d",
        ),
    ],
)
def test_url(settings: ConnectionSettings, url: str) -> None:
    assert settings.url() == url


def test_migration_url_is_an_output_and_is_checked() -> None:
    direct = "postgresql://u:pw@direct/db?sslmode=require"
    settings = ConnectionSettings("h", 6543, "db", "u", "pw", migration_url=direct)
    assert settings.outputs()["migration_database_url"] == direct
    broken = ConnectionSettings("h", 6543, "db", "u", "pw", migration_url="direct/db")
    with pytest.raises(ConfigError, match=r"^the migration_database_url must start with"):
        broken.for_migrations()


@pytest.mark.parametrize("flags", [{"stack": "dev"}, {"database_url": URL}, {}])
def test_resolve_keeps_root_and_home(root: Path, flags: dict) -> None:
    target = resolve(**flags, environ={"DATABASE_URL": ENV_URL}, root=root)
    assert (target.root, target.home) == (root, root / ".cicd-db")
    assert target.embedded_server().root == root / ".cicd-db" / "embedded"


def test_resolve_names_both_flags(root: Path) -> None:
    with pytest.raises(UsageError) as raised:
        resolve(database_url=URL, stack="dev", local=True, environ={}, root=root)
    assert cli.phrased(raised.value) == (
        "--database-url and --stack and --local both name a database; give only one of them"
    )


@pytest.mark.parametrize("ci", ["true", "True", "1", "yes", "YES"])
def test_ci_without_database_url_is_an_error(root: Path, ci: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve(environ={"CI": ci}, root=root)
    assert cli.phrased(raised.value) == (
        "DATABASE_URL is not set in this CI job; pass the secret to the step (GitHub: env: "
        "DATABASE_URL: ${{ secrets.DATABASE_URL }}), or read prod from Pulumi explicitly with "
        "--stack prod"
    )


@pytest.mark.parametrize("ci", ["false", "0", "", "no"])
def test_not_ci_reads_prod(root: Path, ci: str) -> None:
    assert resolve(environ={"CI": ci}, root=root).name == "prod"


def test_check_cloud_url_reads_sslmode_from_the_whole_query() -> None:
    url = "postgresql://u:pw@h/db?sslmode=disable&application_name=a?b"
    with pytest.raises(ConfigError, match="the URL's sslmode, disable, which does not encrypt"):
        contract.check_cloud_url(url, what="databaseUrl")


def test_from_outputs_names_the_stack_in_a_bad_output() -> None:
    with pytest.raises(ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, "port": "x"}, stack="prod")
    assert str(raised.value).startswith(
        "stack 'prod' output port is text, not a port number from 1 to 65535"
    )
    # Its digits as text are a port (a value read from Pulumi config is text).
    assert contract.from_outputs({**OUTPUTS, "port": "6543"}, stack="prod").port == 6543


# -- libpq's environment: nothing injected, everything judged as libpq would ------------


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("postgresql://u@h/db", {}, {"host": "h", "dbname": "db", "user": "u"}),
        ("postgresql:///db", {"PGHOST": "x"}, {"dbname": "db"}),
        (
            "postgresql://h1:5433,h2:5434/db",
            {},
            {"host": "h1,h2", "port": "5433,5434", "dbname": "db"},
        ),
        ("postgresql://?service=s", {}, {"service": "s"}),
    ],
)
def test_conninfo_names_only_what_was_given(
    url: str, environ: dict, expected: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sslmode, port, host or database libpq would take from PGSSLMODE, PGPORT,
    PGHOST or a service file."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    given = psycopg.conninfo.conninfo_to_dict(from_url(url).conninfo())
    given.pop("connect_timeout", None)
    assert given == expected


@pytest.mark.parametrize(
    ("url", "environ", "timeout"),
    [
        ("postgresql://h/db", {}, str(contract.CONNECT_TIMEOUT)),
        ("postgresql://h/db?connect_timeout=9", {}, "9"),
        ("postgresql://h/db", {"PGCONNECT_TIMEOUT": "7"}, None),
        # A service's connect_timeout is libpq's, above PGCONNECT_TIMEOUT; psycopg, which
        # keeps the timeout itself, reads no service file, so it is passed as given.
        ("postgresql://h/db?service=timed", {}, "11"),
        ("postgresql://h/db", {"PGSERVICE": "timed", "PGCONNECT_TIMEOUT": "7"}, "11"),
        # A service that names none leaves the default (before: no timeout at all, and a
        # server that accepts and never answers kept the command waiting for ever).
        ("postgresql://h/db?service=untimed", {}, str(contract.CONNECT_TIMEOUT)),
        ("postgresql://h/db", {"PGSERVICE": "untimed"}, str(contract.CONNECT_TIMEOUT)),
        ("postgresql://h/db?service=nosuch", {}, str(contract.CONNECT_TIMEOUT)),
        ("postgresql://h/db?service=timed&connect_timeout=9", {}, "9"),
    ],
    ids=[
        "default", "url", "pgconnect-timeout", "service", "pgservice", "service-naming-none",
        "pgservice-naming-none", "unknown-service", "url-over-service",
    ],
)  # fmt: skip
def test_connect_timeout_only_where_nothing_else_names_one(
    url: str, environ: dict, timeout: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text("[timed]\nconnect_timeout=11\n\n[untimed]\ndbname=other\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    for name in ("PGCONNECT_TIMEOUT", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    given = psycopg.conninfo.conninfo_to_dict(from_url(url).conninfo())
    assert given.get("connect_timeout") == timeout


@pytest.mark.parametrize(
    ("url", "expected", "where"),
    [
        # The service's host and port, not PGHOST's and PGPORT's: libpq ranks a service
        # above its environment, and psycopg resolves the host it is given.
        ("postgresql://?service=there", {"host": "10.1.2.3", "port": "6001"}, "10.1.2.3:6001"),
        ("postgresql://h2/?service=there", {"host": "h2", "port": "6001"}, "h2:6001"),
        ("postgresql://:6002/?service=there", {"host": "10.1.2.3", "port": "6002"}, "10.1.2.3:6002"),
        # A service that names no host leaves PGHOST's, as libpq does.
        ("postgresql://?service=nameless", {}, "db.example.invalid:6000"),
    ],
)  # fmt: skip
def test_a_services_host_and_port_come_before_pghost_and_pgport(
    url: str, expected: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    services = tmp_path / "pg_service.conf"
    services.write_text("[there]\nhost=10.1.2.3\nport=6001\n\n[nameless]\ndbname=d\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGHOST", "db.example.invalid")
    monkeypatch.setenv("PGPORT", "6000")
    settings = from_url(url)
    given = psycopg.conninfo.conninfo_to_dict(settings.conninfo())
    assert {key: given[key] for key in ("host", "port") if key in given} == expected
    assert settings.where == where


@pytest.mark.parametrize(
    ("url", "environ", "where"),
    [
        ("postgresql://h/db", {}, "h"),
        ("postgresql://h:5433/db", {}, "h:5433"),
        ("postgresql://h/db", {"PGPORT": "6000"}, "h:6000"),
        ("postgresql:///db", {"PGHOST": "e", "PGPORT": "6000"}, "e:6000"),
        ("postgresql:///db", {}, "the default socket"),
        ("postgresql://?service=s", {}, "service s"),
        ("postgresql:///db", {"PGSERVICE": "t"}, "service t"),
        ("postgresql://h1:5433,h2:5434/db", {}, "h1:5433, h2:5434"),
        ("postgresql://h1,h2:5434/db", {}, "h1, h2:5434"),
        ("postgresql://h1,h2/db?port=5435", {}, "h1:5435, h2:5435"),
        # libpq connects to the address, and psql names it beside the host.
        ("postgresql://h:5433/db?hostaddr=10.0.0.2", {}, "h (10.0.0.2):5433"),
        ("postgresql:///db?host=h", {"PGHOSTADDR": "10.0.0.2"}, "h (10.0.0.2)"),
        ("postgresql:///db", {"PGHOSTADDR": "10.0.0.2", "PGPORT": "6000"}, "10.0.0.2:6000"),
        ("postgresql://h1,h2/db?hostaddr=10.0.0.1,10.0.0.2", {}, "h1 (10.0.0.1), h2 (10.0.0.2)"),
        ("postgresql://10.0.0.2/db?hostaddr=10.0.0.2", {}, "10.0.0.2"),
        (
            "postgresql://h/db?hostaddr=",
            {"PGHOSTADDR": "10.0.0.2"},
            "h",
        ),  # libpq reads the empty one
        ("postgresql:///db?service=s", {"PGHOSTADDR": "10.0.0.2"}, "service s"),
        ("postgresql:///db?hostaddr=::1&port=5433", {}, "[::1]:5433"),
        ("postgresql://h:5433/db?hostaddr=::1", {}, "h ([::1]):5433"),
        ("postgresql:///db?hostaddr=10.0.0.1,", {}, "10.0.0.1, the default socket"),
    ],
)
def test_where_says_what_was_given_and_invents_nothing(
    url: str, environ: dict, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert from_url(url).where == where


@pytest.mark.parametrize(
    ("url", "environ", "origin"),
    [
        (
            "postgresql://h/db?sslmode=verify-ca",
            {"PGSSLMODE": "disable"},
            "sslmode=verify-ca (from the URL)",
        ),
        ("postgresql://h/db", {"PGSSLMODE": "verify-full"}, "sslmode=verify-full (from PGSSLMODE)"),
        ("postgresql://h/db", {}, "sslmode=prefer (libpq's default)"),
        (
            "postgresql://h/db?sslrootcert=system",
            {},
            "sslmode=verify-full (libpq's default with sslrootcert=system)",
        ),
    ],
)
def test_origin_names_where_libpq_takes_a_parameter_from(
    url: str, environ: dict, origin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert from_url(url).origin("sslmode") == origin


@pytest.mark.parametrize(
    ("url", "environ", "pooled"),
    [
        ("postgresql://u@h1:5432,h2:6543/db", {}, True),
        ("postgresql://u@h1,ep-x-pooler.neon.tech/db", {}, True),
        ("postgresql://u@h1:5432,h2:5433/db", {}, False),
        ("postgresql:///db", {"PGHOST": "ep-x-pooler.neon.tech"}, True),
        ("postgresql:///db", {"PGHOST": "h", "PGPORT": "6543"}, True),
        ("postgresql://u@h/db", {"PGPORT": "6543"}, True),
        ("postgresql:///db", {"PGHOST": "h"}, False),
    ],
)
def test_is_transaction_pooler_with_several_hosts_and_none(
    url: str, environ: dict, pooled: bool
) -> None:
    assert contract.is_transaction_pooler(from_url(url), environ) is pooled


@pytest.mark.parametrize(
    ("url", "environ", "allow_insecure", "expected"),
    [
        # The stack's readers have not the operator's environment: the URL names the sslmode.
        ("postgresql://u:pw@h/db", {"PGSSLMODE": "verify-full"}, False, "sslmode=verify-full"),
        ("postgresql://u:pw@h/db", {}, False, "sslmode=require"),
        ("postgresql://u:pw@h/db", {"PGSSLMODE": "disable"}, True, "sslmode=disable"),
        # The URL's sslmode is what libpq uses: PGSSLMODE does not count.
        (
            "postgresql://u:pw@h/db?sslmode=require",
            {"PGSSLMODE": "disable"},
            False,
            "sslmode=require",
        ),
    ],
)
def test_check_cloud_url_judges_the_effective_sslmode(
    url: str, environ: dict, allow_insecure: bool, expected: str
) -> None:
    checked = contract.check_cloud_url(
        url, what="databaseUrl", allow_insecure=allow_insecure, environ=environ
    )
    assert checked.endswith(expected) and checked.count("sslmode=") == 1


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"PGSSLMODE": "disable"},
            "the databaseUrl would connect with PGSSLMODE, disable, which does not encrypt",
        ),
        ({"PGSSLMODE": "prefer"}, "the databaseUrl would connect with PGSSLMODE, prefer"),
        ({"PGSSLMODE": "bogus"}, "PGSSLMODE='bogus' is not an sslmode; use one of"),
    ],
)
def test_check_cloud_url_refuses_pgsslmode_that_does_not_encrypt(
    environ: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        contract.check_cloud_url("postgresql://u:pw@h/db", what="databaseUrl", environ=environ)
    assert str(raised.value).startswith(message), str(raised.value)


def test_a_port_is_no_password_candidate() -> None:
    """A URL without user part: the port after the ':' is no secret to hide."""
    assert password_candidates("postgresql://127.0.0.1:5432/mydb") == []


def test_outputs_of_several_hosts_name_the_first_port() -> None:
    settings = from_url("postgresql://u:pw@h1:5433,h2:5434/db?sslmode=require")
    outputs = settings.outputs()
    assert (outputs["host"], outputs["port"]) == ("h1,h2", 5433)
    assert from_url(outputs["database_url"]) == settings
    assert contract.from_outputs(outputs, stack="prod").conninfo() == settings.conninfo()


@pytest.mark.parametrize("password", ["a", "ab", "abc", "a/", "@", ":", "%41"])
def test_a_short_password_is_masked_where_it_stands(password: str) -> None:
    """A password under 4 characters may occur in a message by chance (a letter, a
    digit): what is promised is that its place in the URL is always masked, and that
    no value libpq parsed out of it is printed."""
    url = f"postgresql://ci:{password}@h:x/db"
    with pytest.raises(ConfigError) as raised:
        from_url(url)
    assert "'postgresql://ci:***@h:x/db'" in str(raised.value)


def test_a_user_name_with_a_raw_at_is_refused() -> None:
    """libpq would read `corp.com:pw@h` as the host: the user name is shown, not the password."""
    with pytest.raises(ConfigError) as raised:
        from_url("postgresql://me@corp.com:pw@h/db")
    assert "'postgresql://me@corp.com:***@h/db'" in str(raised.value)
    assert "percent-encode them there (@ as %40" in str(raised.value)
    # Percent-encoded, the same user name is fine.
    assert from_url("postgresql://me%40corp.com:pw@h/db").user == "me@corp.com"


def test_an_empty_sslmode_is_refused_as_psql_refuses_it() -> None:
    with pytest.raises(ConfigError, match="has an sslmode libpq does not know"):
        from_url("postgresql://h/db?sslmode=")


def test_check_cloud_url_writes_sslmode_before_a_fragment() -> None:
    url = contract.check_cloud_url("postgresql://u:pw@h/db#note", what="x", environ={})
    assert url == "postgresql://u:pw@h/db?sslmode=require#note"
    assert psycopg.conninfo.conninfo_to_dict(url)["dbname"] == "db"


def test_each_role_resolves_its_own_url_and_one_url_is_one_role() -> None:
    """docs/security.md: a stack's app and reader URLs for the store and reports; one URL
    (DATABASE_URL) gives every part the same role; their passwords are redacted too."""
    from cicd_db.settings import APP, OWNER, READER, from_outputs

    owner = ConnectionSettings("db.example.com", 5432, "ci", "ci_user", "owner-Pass", "require")
    outputs = {
        **owner.outputs(),
        "app_database_url": "postgresql://ci_app:app-Pass@db.example.com/ci?sslmode=require",
        "reader_database_url": "postgresql://ci_reader:reader-Pass@db.example.com/ci",
    }
    resolved = from_outputs(outputs, stack="prod")
    assert [resolved.for_role(role).user for role in (OWNER, APP, READER)] == [
        "ci_user",
        "ci_app",
        "ci_reader",
    ]
    assert {"app-Pass", "reader-Pass"} <= set(resolved.secrets())
    one = from_url("postgresql://u:one-Pass@h/db")
    assert one.for_role(OWNER) == one.for_role(APP) == one.for_role(READER) == one


@pytest.mark.parametrize(
    "name", ["O\u2019Brien", "Col\u00b7lectiu", "ジョン・スミス", "Zoë\u2013Smith"]
)
def test_a_role_named_with_punctuation_beyond_ascii_shows_whole(name: str) -> None:
    """Typographic apostrophes, middle dots and dashes are in people's names: none is
    taken for a separator that a password could follow."""
    url = ConnectionSettings("h", 5432, "db", name, "Sekr3t").url()
    assert password_candidates(url) == ["Sekr3t"], url
    assert redact(
        f"role {name} cannot log in", ConnectionSettings("h", 5432, "db", name).secrets()
    ) == (f"role {name} cannot log in")


_DIGITS = st.text(st.sampled_from("0123456789"), min_size=1, max_size=5)
# After `ci:` in a URL with no '@': free text, or what reads as a multi-host list of
# ports (`5432,h2:5433/db`), which is also what a password with a comma and digits
# makes when its '@' is lost (`00000,000000` + `127.0.0.1:1/db`).
_AFTER_THE_COLON = st.text(st.sampled_from("0123456789,.:/?#abc%"), max_size=30) | st.builds(
    lambda first, others, tail: first + "".join(f",{h}:{p}" for h, p in others) + tail,
    _DIGITS,
    st.lists(st.tuples(st.text(st.sampled_from("0123456789.abc"), max_size=12), _DIGITS)),
    st.sampled_from(["", "/db", "?sslmode=require"]),
)


@settings(max_examples=examples(300), deadline=None)
@given(rest=_AFTER_THE_COLON)
def test_masking_hides_whatever_redaction_takes_for_a_password_in_a_url_without_an_at(
    rest: str,
) -> None:
    """`postgresql://ci:REST` with no '@': what mask_credentials shows and what the
    redaction of messages hides (password_candidates) agree, so no path that prints a
    masked URL (the stack check) shows what another path hides."""
    url = f"postgresql://ci:{rest}"
    shown = mask_credentials(url) or ""
    for candidate in password_candidates(url):
        if len(candidate) >= 4:
            assert candidate not in shown, (url, shown, candidate)


@settings(max_examples=examples(300), deadline=None)
@given(
    user=st.text(_NAME_CHARACTERS, min_size=1, max_size=12).filter(lambda u: " " not in u),
    separator=st.sampled_from([":", "?", "/", "\uff1a", "\uff20", "\ufe55", ";"]),
    secret=st.text(st.characters(categories=("L", "N", "P")), min_size=4, max_size=16).filter(
        lambda s: not any(c.isspace() for c in s)
    ),
)
def test_a_url_quoted_in_any_message_is_masked_as_mask_credentials_masks_it(
    user: str, separator: str, secret: str
) -> None:
    """redact() (every printed line) and mask_credentials (every URL cicd-db quotes)
    read a URL the same way: a password after a separator of another width, which one
    of them once left in a message, is hidden by both."""
    url = f"postgresql://{user}{separator}{secret}@h/db"
    masked = mask_credentials(url)
    assert masked is not None
    assert redact(f"error: cannot use {url} now") == f"error: cannot use {masked} now"
    assert secret not in masked or secret in f"{user}{separator}" + "@h/db"


@pytest.mark.parametrize(
    "text",
    [
        "written to C:/Users/me/schema.sql",
        "see file:///tmp/schema.sql",
        "connection to server at ::1, port 5432 failed",
        "time 12:30:05+00",
    ],
)
def test_text_that_only_looks_like_part_of_a_url_is_left_as_it_is(text: str) -> None:
    assert redact(text) == text


# Found by the mutation run of 2026-12-05, night (docs/testing.md): each case names the
# mutant it kills (mutmut 3 names, `mutmut show NAME`).

# -- _only_ports: what follows the ':' of a URL without an '@' ---------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # Not a port: a password that lost its '@' (x__only_ports 12, 16, 19).
        ("postgresql://ci:Sekr3t127.0.0.1/db", "postgresql://ci:***"),
        # No port at all: a password starting with '/' (x__only_ports 12).
        ("postgresql://ci:/Sekr3t", "postgresql://ci:***"),
        # Ports are split at commas, and an empty piece is no password (x__only_ports 10,
        # 11, 17).
        ("postgresql://h:5432,5433/db", "postgresql://h:5432,5433/db"),
        ("postgresql://h:5432,/db", "postgresql://h:5432,/db"),
        # Ports are 1 to 65535, both ends included (x__only_ports 20); 0 and 65536 are
        # no port, and may be a password (x__only_ports 21; 23, 24).
        ("postgresql://h:1/db", "postgresql://h:1/db"),
        ("postgresql://h:65535/db", "postgresql://h:65535/db"),
        ("postgresql://ci:00000/db", "postgresql://ci:***"),
        ("postgresql://ci:65536/db", "postgresql://ci:***"),
        # More than five digits is no port to the URL check either: a password of digits
        # that lost its '@' (hypothesis found `00000000001#`, shown whole as port 1).
        ("postgresql://ci:00000000001#127.0.0.1:1/db", "postgresql://ci:***"),
        ("postgresql://ci:000001/db", "postgresql://ci:***"),
        # libpq reads no fragment: a '#' is part of the port, which is then no port.
        ("postgresql://ci:00001#000000127.0.0.1:1/db", "postgresql://ci:***"),
    ],
)
def test_only_ports_are_shown_after_the_colon_of_a_url_without_an_at(url: str, masked: str) -> None:
    assert mask_credentials(url) == masked
    # redact hides the same, in a message; password_candidates agrees.
    assert redact(f"cannot reach {url} now") == f"cannot reach {masked} now"
    hidden = masked != url
    assert bool(password_candidates(url)) == hidden


# -- _misspelt_keyword: an unknown parameter's name shows only when it misspells one -----


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        # Not letters and '_' alone: hidden whole (x__misspelt_keyword 3).
        ("sslmode1", "?***"),
        ("aplication-name", "?***"),
        # A secret keyword with more after it: hidden whole (x__misspelt_keyword 3).
        ("passwordq", "?***"),
        # Less alike than the cutoff (0.8): hidden whole (x__misspelt_keyword 21).
        ("appname", "?***"),
        # One character more than the keyword: a slip, the name shows
        # (x__misspelt_keyword 29, 30); two more: hidden whole (x__misspelt_keyword 31).
        ("sslmodee", "?sslmodee=***"),
        ("sslmodeee", "?***"),
    ],
)
def test_an_unknown_parameter_shows_its_name_only_when_it_misspells_a_keyword(
    name: str, masked: str
) -> None:
    assert mask_credentials(f"postgresql://u@h/db?{name}=x") == f"postgresql://u@h/db{masked}"


# -- redact: the longest secret first -------------------------------------------------


def test_redact_hides_a_whole_password_before_its_pieces() -> None:
    """A password with a raw '/' and '?' comes with its pieces (password_candidates):
    hidden whole, longest first, no piece replaced first leaves the rest of it behind
    (x_redact 18: sorted by the text, not the length; x_redact 26: shortest first)."""
    url = "postgresql://u:Sek/r3t?PW@h:1/db"
    secrets = password_candidates(url)
    assert redact("password authentication failed: Sek/r3t?PW", secrets) == (
        "password authentication failed: ***"
    )
    assert redact("pw Sekr3t-long here", ["long", "Sekr3t-long"]) == "pw *** here"


def test_redact_hides_a_secret_as_repr_quotes_it() -> None:
    """A message may quote a secret with repr (a control character escaped): that form
    is hidden whole, and nothing else is (x_redact 31: one character of it shown)."""
    secret = "Sek\tr3t"
    assert redact(f"bad password {secret!r}", [secret]) == "bad password '***'"
    assert redact("Sekr3t and Sekr3x", ["Sekr3t"]) == "*** and Sekr3x"


@pytest.mark.parametrize(
    ("text", "secrets", "shown"),
    [
        # A query's '@' makes the longest candidate run from the password to the query's
        # `pwd=`: hiding it first left `@000`, the unknown parameter's value, with nothing
        # to say it was one (hypothesis found it).
        (
            "postgresql://u:0000@127.0.0.1:1/db?pwd=@000",
            None,
            "postgresql://u:***",
        ),
        # A secret with a space cuts the URL at it: read with the secret taken out, the
        # URL goes on to its query's unknown parameter.
        (
            "x postgresql://u:a b@host:5432/db?pwd=zzzz y",
            ["a b"],
            "x postgresql://u:***@host:5432/db?*** y",
        ),
        # The same with a space before the password: the URL as printed ends at the
        # space, so the query's unknown parameter is known from the URL as given.
        ("postgresql://u: 0000@127.0.0.1:1/db?pwd=@000", None, "postgresql://u:***"),
        # Two known secrets that overlap: both hidden, whichever is found first.
        ("key abcdef here", ["abcd", "cdef"], "key *** here"),
    ],
)
def test_redact_hides_what_any_reading_finds_in_the_text_as_given(
    text: str, secrets: list[str] | None, shown: str
) -> None:
    """Each way of finding a password marks the text as given and all of it is hidden:
    hiding one secret first never takes away what shows another is one (x_redact: the
    secrets replaced first, then the URLs read in what was left)."""
    assert redact(text, password_candidates(text) if secrets is None else secrets) == shown


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ('password "S3cr3tPass" was refused', 'password "***" was refused'),
        ('{"user": "u", "password": "hunter2"}', '{"user": "u", "password": "***"}'),
        ("password: 'se cret'", "password: '***'"),
        (
            'password authentication failed for user "bob"',
            'password authentication failed for user "bob"',
        ),
    ],
)
def test_redact_hides_a_password_a_message_quotes_after_the_word(said: str, shown: str) -> None:
    """A tool's message (Pulumi's stderr) or JSON quoting a password after the word; the
    word alone, as PostgreSQL's "password authentication failed", is left."""
    assert redact(said) == shown


@settings(max_examples=examples(300))
@given(
    data=st.data(),
    quote_mark=st.sampled_from(['"', "'"]),
    form=st.sampled_from(["password {q}{p}{q}", '"password": {q}{p}{q}', "Password: {q}{p}{q}"]),
    around=st.sampled_from(["error: {} was refused", "{}", '{{"user": "u", {}}}']),
)
def test_any_password_a_message_quotes_after_the_word_is_hidden(
    data: st.DataObject, quote_mark: str, form: str, around: str
) -> None:
    """The class beside the examples above: a password of any character but its own
    quote mark and a backslash, quoted after the word as a tool's message or JSON
    writes it, in any text around it: no run of 4 characters of it is left."""
    characters = [c for c in PASSWORD_CHARACTERS if c not in (quote_mark, "\\")]
    password = data.draw(st.text(st.sampled_from(characters), min_size=4, max_size=20))
    said = around.format(form.format(q=quote_mark, p=password))
    assert_nothing_of((password,), redact(said))


SERVICES = (
    "[plain]\nhost=10.1.2.3\nport=6001\n\n[ro]\ntarget_session_attrs=read-only\n\n"
    "[lb]\nhost=10.0.0.1,10.0.0.2\nload_balance_hosts=random\n"
    "target_session_attrs=prefer-standby\n"
)


@pytest.mark.parametrize("pgservice", [False, True], ids=["url-service", "pgservice"])
def test_a_services_values_are_its_own_not_what_libpq_derives(
    pgservice: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found by review: the probe hid a service's target_session_attrs (it named one to
    stop libpq), and an sslmode libpq derived from PGREQUIRESSL, or a dbname from the
    login, was called the service's."""
    services = tmp_path / "pg_service.conf"
    services.write_text(SERVICES)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGREQUIRESSL", "1")
    for variable in ("PGSSLMODE", "PGSERVICE", "PGTARGETSESSIONATTRS"):
        monkeypatch.delenv(variable, raising=False)
    if pgservice:
        monkeypatch.setenv("PGSERVICE", "plain")
    assert contract.service_values("plain") == {"host": "10.1.2.3", "port": "6001"}
    assert contract.service_values("ro") == {"target_session_attrs": "read-only"}
    url = "postgresql://u@/d" if pgservice else "postgresql://u@/d?service=plain"
    assert from_url(url).origin("sslmode") == "sslmode=require (from PGREQUIRESSL)"
    ro = from_url("postgresql://u@/d?service=ro")
    assert ro.origin("target_session_attrs") == "target_session_attrs=read-only (from service ro)"


def test_what_psycopg_reads_itself_is_passed_on_from_a_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """psycopg orders the hosts (load_balance_hosts) and looks for a standby first
    (prefer-standby) itself, reading neither from a service file (review)."""
    services = tmp_path / "pg_service.conf"
    services.write_text(SERVICES)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    for variable in ("PGSERVICE", "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS", "PGHOST"):
        monkeypatch.delenv(variable, raising=False)
    given = psycopg.conninfo.conninfo_to_dict(from_url("postgresql://u@/d?service=lb").conninfo())
    assert {k: given.get(k) for k in ("host", "load_balance_hosts", "target_session_attrs")} == {
        "host": "10.0.0.1,10.0.0.2",
        "load_balance_hosts": "random",
        "target_session_attrs": "prefer-standby",
    }


# -- what services, stack outputs and origin say, value by value (mutation survivors) --

KINDS_OF_SERVICE = (
    "[plain]\nhost=10.1.2.3\nport=6001\n\n"
    "[kept]\nkeepalives=0\nsslmode=require\n\n"
    "[tls]\nsslrootcert=system\n\n"
    "[latin]\napplication_name=caf\xe9\n"
)


@pytest.mark.parametrize("pgservice", [False, True], ids=["asked", "worked"])
@pytest.mark.parametrize(
    ("service", "environ", "expected"),
    [
        # A variable the service does not name is the environment's, not the service's.
        ("plain", {"PGCONNECT_TIMEOUT": "7"}, {"host": "10.1.2.3", "port": "6001"}),
        # A keyword no variable sets (keepalives); a service's sslmode over PGSSLMODE,
        # which PGREQUIRESSL does not override.
        (
            "kept",
            {"PGSSLMODE": "disable", "PGREQUIRESSL": "1"},
            {"keepalives": "0", "sslmode": "require"},
        ),
        # PGSSLROOTCERT=system makes libpq's sslmode verify-full with or without the service.
        ("plain", {"PGSSLROOTCERT": "system"}, {"host": "10.1.2.3", "port": "6001"}),
        # PGSSLMODE set empty is set for libpq (its getenv), so no derived verify-full.
        ("tls", {"PGSSLMODE": "", "PGSSLROOTCERT": "system"}, {}),
    ],
    ids=["variable", "novariable", "systemroots", "emptysslmode"],
)
def test_a_services_values_are_the_same_asked_of_libpq_or_worked_out(
    service: str, environ: dict[str, str], expected: dict[str, str], pgservice: bool,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    """service_values asks libpq what it takes without the service, unless PGSERVICE is
    set, when it works that out: both ways give the same answer."""
    use_service_file(monkeypatch, tmp_path, KINDS_OF_SERVICE)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if pgservice:
        monkeypatch.setenv("PGSERVICE", "plain" if service != "plain" else "kept")
    assert contract.service_values(service) == expected


@pytest.mark.parametrize("pgservice", [False, True], ids=["asked", "worked"])
def test_a_services_sslrootcert_system_makes_its_sslmode_verify_full(
    pgservice: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """libpq connects with sslmode=verify-full where the service names sslrootcert=system;
    origin must not call it libpq's default prefer. (With PGSERVICE set, the service's own sslrootcert was taken for the
    environment's, and sslmode called libpq's default: a mutation run.)"""
    use_service_file(monkeypatch, tmp_path, KINDS_OF_SERVICE)
    if pgservice:
        monkeypatch.setenv("PGSERVICE", "plain")
    assert contract.service_values("tls") == {"sslmode": "verify-full", "sslrootcert": "system"}
    origin = from_url("postgresql://u@/d?service=tls").origin("sslmode")
    assert origin == "sslmode=verify-full (from service tls)"


def test_reading_a_service_sends_nothing_to_its_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The probe stops before any name lookup or packet (_STOPS): no connection reaches
    the service's host."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        use_service_file(monkeypatch, tmp_path, f"[probe]\nhost=127.0.0.1\nport={port}\n")
        assert contract.service_values("probe") == {"host": "127.0.0.1", "port": str(port)}
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_a_service_value_that_is_not_utf8_is_read_with_a_replacement(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A LATIN1 byte in the service file: one replacement character, no error."""
    use_service_file(monkeypatch, tmp_path, KINDS_OF_SERVICE)
    assert contract.service_values("latin") == {"application_name": "caf\ufffd"}


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("port", 0, "out of range"),
        ("port", 65536, "out of range"),
        ("port", True, "true or false"),
        ("port", 6543.0, "a fraction"),
        ("port", [6543], "a list"),
        ("port", {"n": 6543}, "an object"),
        ("host", 0, "a number"),
        ("host", 1.5, "a fraction"),
        ("password", False, "true or false"),
        ("database", [], "a list"),
        ("sslmode", {}, "an object"),
    ],
    ids=[
        "port0", "port65536", "porttrue", "portfloat", "portlist", "portobject",
        "hostint", "hostfloat", "passwordfalse", "databaselist", "sslmodeobject",
    ],
)  # fmt: skip
def test_an_output_of_another_type_is_named_by_its_kind(
    name: str, value: object, kind: str
) -> None:
    """Which kind the refusal names, value by value (the property test accepts any kind).
    null never reaches it: an output that is null is missing."""
    wanted = "a port number from 1 to 65535" if name == "port" else "text"
    with pytest.raises(contract.ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, name: value}, stack="prod")
    message = str(raised.value)
    assert message.startswith(f"stack 'prod' output {name} is {kind}, not {wanted}; "), message


def test_a_bad_field_or_optional_url_is_named_with_the_stack() -> None:
    with pytest.raises(contract.ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, "host": "pw@db.example.com"}, stack="prod")
    assert str(raised.value).startswith("the stack 'prod' outputs has a host with '@'"), (
        raised.value
    )
    with pytest.raises(contract.ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, "app_database_url": "mysql://x"}, stack="prod")
    assert "stack 'prod' output app_database_url" in str(raised.value), raised.value


def test_a_password_that_disagrees_is_named_without_values() -> None:
    with pytest.raises(contract.ConfigError) as raised:
        contract.from_outputs({**OUTPUTS, "password": "other-secret"}, stack="prod")
    assert str(raised.value) == (
        "stack 'prod' outputs password and database_url name different passwords; export both "
        "from the same values and run `pulumi up -s prod`"
    )


def test_origin_names_pgsslrootcert_system_as_what_makes_sslmode_verify_full(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_service_file(monkeypatch, tmp_path, KINDS_OF_SERVICE)
    monkeypatch.setenv("PGSSLROOTCERT", "system")
    origin = from_url("postgresql://u@h/d").origin("sslmode")
    assert origin == "sslmode=verify-full (libpq's default with sslrootcert=system)"


def test_origin_of_a_keyword_nothing_names_and_libpq_has_no_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_service_file(monkeypatch, tmp_path, KINDS_OF_SERVICE)
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    assert from_url("postgresql://u@h/d").origin("sslrootcert") == "no sslrootcert"
