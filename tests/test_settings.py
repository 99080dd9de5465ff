"""The connection contract: URLs and mappings parsed into settings, the cloud URL check,
the roles' settings and the resolver; pure functions, tables of cases."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import hypothesis
import psycopg.conninfo
import pytest
from hypothesis import strategies as st

from cicd_db import cli, targets
from cicd_db import settings as contract
from cicd_db.errors import ConfigError, ConnectionFailed, UsageError
from cicd_db.settings import ConnectionSettings, from_url
from cicd_db.targets import resolve

from .fix_db import Database
from .utils import examples


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


def test_wait_ends_near_its_timeout_when_a_server_takes_the_connection_and_says_nothing() -> None:
    """A server that accepts and never answers (one hung, a proxy in front of a server
    still starting): each attempt waited its whole connect_timeout, 5 s by default or
    what the URL says, so `migrate wait --timeout 1` took 30 s here. An attempt now waits
    no longer than the time left (libpq's least is 2 s)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        settings = from_url(f"postgresql://ci:{SECRET}@127.0.0.1:{port}/db?connect_timeout=30")
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            targets.wait(settings, timeout=1, poll=0.1)
        assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("query", "environment", "left", "expected"),
    [
        ("?connect_timeout=30", {}, 1.0, {"connect_timeout": "1"}),
        # A shorter timeout of the URL's own is kept: a multi-host URL moves on after it.
        ("?connect_timeout=2", {}, 60.0, {"connect_timeout": "2"}),
        ("", {}, 60.0, {"connect_timeout": "5"}),  # ours
        ("", {"PGCONNECT_TIMEOUT": "7"}, 3.2, {"connect_timeout": "4"}),
        ("", {"PGCONNECT_TIMEOUT": "7"}, 60.0, {"connect_timeout": "7"}),
        ("?connect_timeout=0", {}, 4.2, {"connect_timeout": "5"}),  # 0: no limit of its own
        ("?connect_timeout=abc", {}, 4.2, {}),  # libpq's to refuse
        ("?connect_timeout=30", {}, -0.5, {"connect_timeout": "1"}),  # past: one more try
    ],
)
def test_a_waits_attempt_takes_no_longer_than_the_time_left(
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    environment: dict[str, str],
    left: float,
    expected: dict[str, str],
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = from_url(f"postgresql://ci:pw@h/db{query}")
    assert targets._connect_timeout_within(settings, left) == expected


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


# Text libpq can take (from_url and from_mapping refuse a NUL or a lone surrogate).
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
HOSTS = st.sampled_from(["h1", "db.example.com", "::1", "fe80::1%eth0", "/tmp", "10.0.0.1"])


@hypothesis.settings(max_examples=examples(150))
@hypothesis.given(
    hosts=st.lists(HOSTS, min_size=0, max_size=3),
    port=st.none() | st.integers(1, 65535),
    database=st.text(TEXT, max_size=5),
    user=st.text(TEXT, max_size=5),
)
def test_the_url_printed_means_what_the_settings_connect_to(
    hosts: list[str], port: int | None, database: str, user: str
) -> None:
    """`url()` (printed by `migrate wait`/`status`, exported by the dev stack) reads back,
    by libpq, as the endpoint `conninfo()` names: one port for several hosts serves
    every host, as libpq reads it; an IPv6 zone is percent-encoded; a port without a host
    (libpq's default host, or PGHOST's) is kept."""
    if any(h.startswith("/") for h in hosts):
        hosts = [h for h in hosts if h.startswith("/")]
    settings = ConnectionSettings(",".join(hosts), port, database, user, "pw-secret")
    want = psycopg.conninfo.conninfo_to_dict(settings.conninfo())
    got = psycopg.conninfo.conninfo_to_dict(settings.url())
    for params in (want, got):
        params.pop("connect_timeout", None)
        ports = params.pop("port", "").split(",")
        # libpq: one port serves every host; an empty one is the default
        ports = ports * max(1, len(hosts)) if len(ports) == 1 else ports
        params["ports"] = [p or "5432" for p in ports]
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
    from_url(settings.url())  # our own reader takes what we print
