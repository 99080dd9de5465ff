"""Connections by libpq's rules: what the user gave, and libpq's environment for the rest.

psql is the oracle: for each way of naming a server (PGHOST, PGPORT, a service
file, several hosts, PGSSLMODE), `cicd-db` connects exactly when psql connects.
The URL's `options` reach the migrations' sessions beside the runner's own.
Parameters libpq or psycopg refuse are configuration errors, naming the parameter
and where it came from; a server that answers and refuses is told by what it refused.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest import mock
from urllib.parse import quote, urlencode

import hypothesis
import psycopg.conninfo
import pytest
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import cloud, errors, targets
from cicd_db import settings as contract
from cicd_db.errors import ConfigError
from cicd_db.pgprocess import wheel_bin_dir
from cicd_db.settings import ConnectionSettings

from .fix_cli import Run, run_cli
from .fix_db import Database
from .passwords import PASSWORD_CHARACTERS, RUN, assert_nothing_of, hostile_urls
from .utils import examples, socket_folder, write_migrations

pytestmark = pytest.mark.db


def psql_bin() -> Path:
    """The psql of the server under test: TEST_PG_BIN_DIR's, else the wheel's."""
    bin_dir = os.environ.get("TEST_PG_BIN_DIR")
    return Path(bin_dir) / "psql" if bin_dir else wheel_bin_dir() / "psql"


def psql(
    target: str, env: dict[str, str], query: str = "SELECT current_database()"
) -> subprocess.CompletedProcess[str]:
    """`psql TARGET -c QUERY`: the oracle of whether libpq connects, and how."""
    return subprocess.run(
        [str(psql_bin()), "-X", "-A", "-t", "-w", "-c", query, target],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def status(url: str, env: dict[str, str]) -> Run:
    result = run_cli("migrate", "--database-url", url, "status", "--json", env=env)
    return result


def credentials(database: Database) -> dict[str, str]:
    """The login as libpq's environment: PGUSER and PGPASSWORD."""
    return {"PGUSER": database.settings.user, "PGPASSWORD": database.settings.password}


def test_a_url_without_host_and_port_takes_pghost_and_pgport(database: Database) -> None:
    settings = database.settings
    env = {**credentials(database), "PGHOST": settings.host, "PGPORT": str(settings.port)}
    url = f"postgresql:///{settings.database}"
    oracle = psql(url, env)
    assert (oracle.returncode, oracle.stdout.strip()) == (0, settings.database), oracle.stderr
    result = status(url, env)
    assert result.code == 0, result.err
    assert result.err == ""


def test_pgport_is_honoured_when_the_url_names_no_port(database: Database) -> None:
    settings = database.settings
    env = {"PGPORT": str(settings.port), "PGPASSWORD": settings.password}
    url = f"postgresql://{settings.user}@{settings.host}/{settings.database}"
    assert psql(url, env).returncode == 0
    result = status(url, env)
    assert result.code == 0, result.err


def test_pgpassfile_is_honoured(database: Database, tmp_path: Path) -> None:
    settings = database.settings
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{settings.host}:{settings.port}:*:{settings.user}:{settings.password}\n")
    passfile.chmod(0o600)
    env = {"PGPASSFILE": str(passfile), "PGPORT": str(settings.port)}
    url = f"postgresql://{settings.user}@{settings.host}/{settings.database}"
    assert psql(url, env).returncode == 0
    result = status(url, env)
    assert result.code == 0, result.err


@pytest.mark.parametrize(
    ("url", "env"),
    [
        ("postgresql://?service=cicd_test", {}),
        ("postgresql:///", {"PGSERVICE": "cicd_test"}),
        # The URL's own fields come first, the service fills in the rest.
        ("postgresql:///{database}?service=cicd_test", {}),
        # The service's host and port come before PGHOST's and PGPORT's, as psql takes
        # them; psycopg, which resolves a host itself, read an unresolvable PGHOST.
        ("postgresql://?service=cicd_test", {"PGHOST": "db.example.invalid", "PGPORT": "6000"}),
        ("postgresql:///", {"PGSERVICE": "cicd_test", "PGHOST": "db.example.invalid"}),
    ],
    ids=[
        "url-service", "pgservice", "url-database-and-service", "service-over-pghost",
        "pgservice-over-pghost",
    ],
)  # fmt: skip
def test_a_service_file_is_honoured(
    database: Database, tmp_path: Path, url: str, env: dict[str, str]
) -> None:
    settings = database.settings
    services = tmp_path / "pg_service.conf"
    services.write_text(
        "[cicd_test]\n"
        f"host={settings.host}\nport={settings.port}\n"
        f"dbname={settings.database}\nuser={settings.user}\n"
    )
    env = {**env, "PGSERVICEFILE": str(services), "PGPASSWORD": settings.password}
    url = url.format(database=settings.database)
    oracle = psql(url, env)
    assert (oracle.returncode, oracle.stdout.strip()) == (0, settings.database), oracle.stderr
    result = status(url, env)
    assert result.code == 0, result.err


def test_a_multi_host_url_whose_first_host_is_down(database: Database) -> None:
    settings = database.settings
    url = (
        f"postgresql://{settings.user}:{quote(settings.password, safe='')}@"
        f"127.0.0.1:1,{settings.host}:{settings.port}/{settings.database}"
    )
    assert psql(url, {}).returncode == 0
    result = status(url, {})
    assert result.code == 0, result.err


def test_a_multi_host_url_that_reaches_no_host_names_them_all() -> None:
    result = status("postgresql://u:Sekr3tPW@127.0.0.1:1,127.0.0.1:2/db", {})
    assert result.code == 1
    assert result.err.startswith("error: cannot connect to 127.0.0.1:1, 127.0.0.1:2: ")
    assert len(result.err.splitlines()) == 1
    assert "Sekr3tPW" not in result.err


def test_pgsslmode_is_not_overridden(database: Database) -> None:
    """The test server has no TLS: PGSSLMODE=require must fail as psql fails, not fall
    back to an unencrypted connection."""
    settings = database.settings
    env = {**credentials(database), "PGSSLMODE": "require"}
    url = f"postgresql://{settings.host}:{settings.port}/{settings.database}"
    assert psql(url, env).returncode != 0
    result = status(url, env)
    assert (result.code, result.out) == (2, "")
    assert "does not support SSL" in result.err
    assert "sslmode=require (from PGSSLMODE)" in result.err
    assert len(result.err.splitlines()) == 1


# -- the URL's options -------------------------------------------------------------------


SETTINGS_SEEN = (
    "CREATE TABLE seen AS SELECT current_setting('statement_timeout') AS statement_timeout, "
    "current_setting('client_connection_check_interval') AS check_interval;\n"
)


@pytest.mark.parametrize(
    ("options", "env", "seen"),
    [
        ("-c statement_timeout=1234", {}, ("1234ms", "1s")),
        # A setting the runner sets too: the user's, named explicitly, wins.
        ("-c client_connection_check_interval=2500", {}, ("0", "2500ms")),
        (None, {"PGOPTIONS": "-c statement_timeout=4321"}, ("4321ms", "1s")),
        # libpq reads PGOPTIONS only when the connection names no options: the URL's win.
        ("-c statement_timeout=1234", {"PGOPTIONS": "-c statement_timeout=9"}, ("1234ms", "1s")),
    ],
    ids=["url", "url-overrides-ours", "pgoptions", "url-over-pgoptions"],
)
def test_the_urls_options_reach_the_migrations(
    database: Database, tmp_path: Path, options: str | None, env: dict[str, str], seen: tuple
) -> None:
    folder = write_migrations(tmp_path, {"0001_seen.sql": SETTINGS_SEEN})
    url = database.url + (f"&options={quote(options, safe='')}" if options else "")
    result = run_cli("migrate", "--database-url", url, "--migrations-dir", str(folder), env=env)
    assert result.code == 0, result.err
    assert database.query("SELECT statement_timeout, check_interval FROM seen") == [seen]


@pytest.mark.parametrize("named", ["url", "PGSERVICE"])
@pytest.mark.parametrize(
    ("url_options", "pgoptions"),
    [(None, None), (None, "-c statement_timeout=9"), ("-c statement_timeout=1234", "-c x.y=1")],
    ids=["service-only", "service-over-pgoptions", "url-over-service"],
)
def test_a_services_options_reach_every_session_as_psql_sends_them(
    database: Database,
    tmp_path: Path,
    named: str,
    url_options: str | None,
    pgoptions: str | None,
) -> None:
    """libpq takes `options` from the URL, else the service, else PGOPTIONS; cicd-db
    sends options of its own, so it must find the user's where libpq would: psql, given
    the same URL and environment, is the oracle, for the runner's session and a reading
    one (report, insights, retention)."""
    settings = database.settings
    services = tmp_path / "pg_service.conf"
    services.write_text(
        "[cicd_opts]\n"
        f"host={settings.host}\nport={settings.port}\ndbname={settings.database}\n"
        "options=-c statement_timeout=4321 -c lock_timeout=777\n"
    )
    env = {**credentials(database), "PGSERVICEFILE": str(services)}
    if pgoptions:
        env["PGOPTIONS"] = pgoptions
    query = {"service": "cicd_opts"} if named == "url" else {}
    if named == "PGSERVICE":
        env["PGSERVICE"] = "cicd_opts"
    if url_options:
        query["options"] = url_options
    url = "postgresql://" + (f"?{urlencode(query, quote_via=quote)}" if query else "")
    oracle = psql(url, env, "SHOW statement_timeout")
    assert oracle.returncode == 0, oracle.stderr
    shown = oracle.stdout.strip()
    assert shown == ("1234ms" if url_options else "4321ms")  # the oracle is as documented
    folder = write_migrations(tmp_path / "m", {"0001_seen.sql": SETTINGS_SEEN})
    result = run_cli("migrate", "--database-url", url, "--migrations-dir", str(folder), env=env)
    assert result.code == 0, result.err
    assert database.query("SELECT statement_timeout FROM seen") == [(shown,)]
    with (
        mock.patch.dict(os.environ, env),
        targets.connect(targets.resolve(database_url=url).settings) as conn,
    ):
        reading = conn.execute("SHOW statement_timeout").fetchone()
    assert reading == (shown,)


def test_a_statement_timeout_in_the_url_stops_a_long_migration(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, {"0001_slow.sql": "SELECT pg_sleep(30);\n"})
    url = database.url + "&options=" + quote("-c statement_timeout=200", safe="")
    result = run_cli("migrate", "--database-url", url, "--migrations-dir", str(folder))
    assert result.code == 1
    assert "canceling statement due to statement timeout" in result.err
    assert database.history() == []


# -- parameters libpq or psycopg refuse: configuration errors ----------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("connect_timeout=abc", "connect_timeout"),
        ("target_session_attrs=bogus", "target_session_attrs"),
        ("sslmode=bogus", "sslmode"),
    ],
)
def test_a_parameter_libpq_refuses_is_a_configuration_error(query: str, parameter: str) -> None:
    result = status(f"postgresql://u:Sekr3tPW@127.0.0.1:1/db?{query}", {})
    assert (result.code, result.out) == (2, ""), result.err
    assert len(result.err.splitlines()) == 1
    assert parameter in result.err
    assert "check that the server is up" not in result.err
    assert "Sekr3tPW" not in result.err


# -- passwords never printed: a property over random and malformed URLs ------------------


@pytest.mark.slow
@hypothesis.settings(max_examples=examples(300))
@hypothesis.given(case=hostile_urls(), mode=st.sampled_from(["", "--json", "--verbose", "--debug"]))
# The leaks of issue 17, and what an earlier run of this test found.
@hypothesis.example(case=("postgresql://u:Sek/r3tPW@h:1/db", "Sek/r3tPW", "----"), mode="")
@hypothesis.example(case=("postgresql://u:Sek?r3tPW@h/db", "Sek?r3tPW", "----"), mode="--debug")
@hypothesis.example(
    case=("postgresql://u@h/db?sslpassword=Ssl5ecret&bogus=1", "----", "Ssl5ecret"), mode="--json"
)
@hypothesis.example(case=("postgresql://u:%8000@127.0.0.1:1/db", "%8000", "----"), mode="")
@hypothesis.example(case=("postgresql://u?Sekr3tPW@127.0.0.1:1/db", "Sekr3tPW", "----"), mode="")
@hypothesis.example(case=("postgresql://u%3ASekr3tPW@127.0.0.1:1/db", "Sekr3tPW", "----"), mode="")
@hypothesis.example(
    case=("postgresql://u\uff1aSekr3tPW@127.0.0.1:1/db", "Sekr3tPW", "----"), mode=""
)
@hypothesis.example(
    case=("postgresql://u@127.0.0.1:1/db?pwd=Ssl5ecret", "----", "Ssl5ecret"), mode=""
)
@hypothesis.example(
    case=("postgresql://u@127.0.0.1:1/db?passwordSsl5ecret", "----", "Ssl5ecret"), mode=""
)
@hypothesis.example(
    case=("postgresql://127.0.0.1:1/db?user=u:Ssl5ecret", "----", "Ssl5ecret"), mode=""
)
@hypothesis.example(case=("postgresql://u/Sekr3tPW@h/db", "Sekr3tPW", "----"), mode="--json")
def test_no_part_of_a_password_is_ever_printed(
    server: ConnectionSettings, case: tuple[str, str, str], mode: str
) -> None:
    """`migrate status`, `schema diff --against` and the prod stack's URL check never
    print a run of 4 characters of the password or the sslpassword, however malformed
    the URL; a URL libpq cannot parse is refused with exit 2, in one line."""
    url, password, sslpassword = case
    try:
        psycopg.conninfo.conninfo_to_dict(url)
        malformed = False
    except (psycopg.Error, UnicodeDecodeError):  # psycopg decodes %80 as UTF-8
        malformed = True
    flags = [mode] if mode else []
    for args in (
        ["migrate", "--database-url", url, "status", *flags],
        ["schema", "diff", "--database-url", server.url(), "--against", url, *flags],
    ):
        result = run_cli(*args)
        assert_nothing_of((password, sslpassword), result.out + result.err)
        assert result.code in (1, 2), result.err
        assert len(result.err.splitlines()) == 1, result.err
        if malformed:
            assert result.code == 2, result.err
    try:
        cloud.check_cloud_url(url, what="cicd-db:databaseUrl", environ={})
    except ConfigError as error:
        assert_nothing_of((password, sslpassword), str(error))
        assert len(str(error).splitlines()) == 1
    else:
        assert not malformed


def test_what_is_printed_after_connecting_is_what_libpq_used(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host-less URL: the host and port come from PGHOST and PGPORT, and the settings
    in use name them, as `conn.info` reports them."""
    settings = database.settings
    for name, value in {
        **credentials(database),
        "PGHOST": settings.host,
        "PGPORT": str(settings.port),
        "PGSSLMODE": "disable",
    }.items():
        monkeypatch.setenv(name, value)
    given = contract.from_url(f"postgresql:///{settings.database}?application_name=probe")
    used = targets.wait(given, timeout=5)
    assert (used.host, used.port, used.database, used.user, used.sslmode) == (
        settings.host,
        settings.port,
        settings.database,
        settings.user,
        "disable",
    )
    assert used.redacted_url() == (
        f"postgresql://{settings.user}@{settings.host}:{settings.port}/{settings.database}"
        "?sslmode=disable&application_name=probe"
    )


def test_of_several_hosts_the_one_reached_is_in_use(database: Database) -> None:
    settings = database.settings
    given = contract.from_url(
        f"postgresql://{settings.user}:{quote(settings.password, safe='')}@"
        f"127.0.0.1:1,{settings.host}:{settings.port}/{settings.database}?sslmode=disable"
    )
    assert given.where == f"127.0.0.1:1, {settings.host}:{settings.port}"
    used = targets.wait(given, timeout=5)
    assert (used.host, used.port) == (settings.host, settings.port)
    assert "127.0.0.1:1" not in used.url()


# -- a second oracle: the same URL with the password's letters and digits shifted -------

# Printable ASCII but the characters a run of 4 could share with the rest of the message
# by chance is no concern: a random password of 12+ characters drawn from these.
DIFFERENTIAL_CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " é€"
DIFFERENTIAL_FORMS = [
    "postgresql://ci:{pw}@127.0.0.1:1/db",  # well-formed, the server refuses
    "postgresql://ci:{pw}@127.0.0.1:notaport/db",
    "postgresql://ci:{pw}@/db",
    "postgresql://ci:{pw}@127.0.0.1:1/db?bogus=1",
    "postgresql://ci:{pw}@127.0.0.1:1/db?sslmode=wrong",
    "postgresql://ci:{pw}127.0.0.1:1/db",  # the @ forgotten
    "postgresql:/ci:{pw}@127.0.0.1:1/db",
    "postgres://ci:{pw}@127.0.0.1:1",
    "ci:{pw}@127.0.0.1:1/db",
    "postgresql://ci@127.0.0.1:1/db?sslpassword={pw}&bogus=1",
    "postgresql://ci@127.0.0.1:1/db?password={pw}",
    # Keys are percent-decoded, by libpq and by the masking alike.
    "postgresql://ci@127.0.0.1:1/db?sslmode=disable&%70assword={pw}",
    "postgresql://ci@127.0.0.1:1/db?passwor%64={pw}&bogus=1",
    "postgresql://ci@127.0.0.1:1/db?ssl%70assword={pw}&nosuch=1",
    "postgresql://ci:{pw}@127.0.0.1:1/db?connect_timeout=abc",
    "postgresql://ci:{pw}@127.0.0.1:1/db?target_session_attrs=bogus",
    "postgresql://ci:{pw}@[::1:1/db",
    "  postgresql://ci:{pw}@127.0.0.1:1/db#frag  ",
    "{pw}",
]


def _runs_of_four(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(len(text) - 3)]


def _shifted(password: str) -> str:
    """`password` with every letter and digit moved one on: the same URL shape, other text."""
    table = str.maketrans(
        string.ascii_lowercase + string.ascii_uppercase + string.digits,
        string.ascii_lowercase[1:]
        + "a"
        + string.ascii_uppercase[1:]
        + "A"
        + string.digits[1:]
        + "0",
    )
    return password.translate(table)


def _printed(url: str) -> str:
    """Everything the commands and the stack check print about `url`."""
    shown: list[str] = []
    for args in (
        ["migrate", "--database-url", url, "status"],
        ["schema", "diff", "--database-url", "postgresql://ci@127.0.0.1:1/db", "--against", url],
    ):
        result = run_cli(*args)
        assert result.code in (1, 2), result
        assert len(result.err.splitlines()) == 1, result.err
        shown.append(result.out + result.err)
    try:
        cloud.check_cloud_url(url, what="cicd-db:databaseUrl")
    except contract.ConfigError as refused:
        shown.append(str(refused))
    return "\n".join(shown)


@pytest.mark.slow
@hypothesis.settings(max_examples=examples(150))
@hypothesis.given(
    password=st.text(alphabet=DIFFERENTIAL_CHARACTERS, min_size=12, max_size=24),
    form=st.sampled_from(DIFFERENTIAL_FORMS),
)
# Found by this test: without its '@', the password read as a list of ports ("00000"
# among them, or 11 digits, or none before a '/'), which the stack check quoted unmasked.
@hypothesis.example(password="00000,000000", form="postgresql://ci:{pw}127.0.0.1:1/db")
@hypothesis.example(password="00000000000/", form="postgresql://ci:{pw}127.0.0.1:1/db")
@hypothesis.example(password="/00000000000", form="postgresql://ci:{pw}127.0.0.1:1/db")
# Or as a port and a '/': libpq read the rest, the host with it, as the database name.
@hypothesis.example(password="00001/000000", form="postgresql://ci:{pw}127.0.0.1:1/db")
@hypothesis.example(password="00001/00000 ", form="postgresql://ci:{pw}127.0.0.1:1/db")
# And a value of --against that names no stack was quoted as a stack's name.
@hypothesis.example(password="000000000000", form="{pw}")
def test_a_password_printed_is_a_password_changed(password: str, form: str) -> None:
    """A run counts as leaked when it is printed for this password and not for the same
    password with its letters and digits moved on (so "erro" of "error:" is no leak)."""
    # Without its @, a URL whose password holds an @ is a well-formed URL of another host
    # and password: nothing can tell which part was meant as the password.
    hypothesis.assume(not ("{pw}127" in form and "@" in password))
    text = _printed(form.replace("{pw}", password))
    other = _printed(form.replace("{pw}", _shifted(password)))
    leaked = [run for run in _runs_of_four(password) if run in text and run not in other]
    assert not leaked, (leaked, text)


def test_a_password_in_the_user_name_pguser_gives_is_masked(database: Database) -> None:
    """libpq prints the user name it took from PGUSER in its messages; a password typed
    into it (`u:pw`) is hidden as it is in the URL's user name."""
    settings = database.settings
    url = f"postgresql://:{quote(settings.password)}@{settings.host}:{settings.port}/db"
    result = status(url, {"PGUSER": f"{settings.user}:Leak3dSecret"})
    assert result.code == 2, result.err
    assert "authentication failed" in result.err and f"{settings.user}:***" in result.err
    assert_nothing_of(("Leak3dSecret", "----"), result.out + result.err)


# Where a password typed into a user name or host reaches libpq, and how it is written
# there: the URL's query (`?user=u:pw&...`), libpq's variables, or a service file.
TYPED_IN = ("?user", "?host", "PGUSER", "PGHOST", "PGHOSTADDR", "service user", "service host")


@pytest.mark.slow
@hypothesis.settings(max_examples=examples(150), deadline=None)
@hypothesis.given(
    source=st.sampled_from(TYPED_IN),
    password=st.text(
        st.sampled_from([c for c in PASSWORD_CHARACTERS if c not in "\n#"]),
        min_size=RUN,
        max_size=12,
    )
    .map(str.strip)
    .filter(lambda p: len(p) >= RUN),
    separator=st.sampled_from([":", ":", "/", "?", ";", "\uff1a"]),
    reachable=st.booleans(),
    after=st.sampled_from(["", "&sslmode=disable", "&connect_timeout=2", "&application_name=x"]),
)
# What found the class: a user name with a password, another parameter after it, and a
# server that asks for a password; a host with one, from PGHOST or a service file.
@hypothesis.example(
    source="?user", password="s3cretQU", separator=":", reachable=True, after="&sslmode=disable"
)
@hypothesis.example(source="PGHOST", password="s3cretPG", separator=":", reachable=False, after="")
@hypothesis.example(
    source="service host", password="s3cretSV", separator=":", reachable=False, after=""
)
@hypothesis.example(
    source="service user", password="s3cretSU", separator=":", reachable=True, after=""
)
def test_a_password_typed_into_any_parameter_libpq_reads_is_never_printed(
    server: ConnectionSettings,
    source: str,
    password: str,
    separator: str,
    reachable: bool,
    after: str,
) -> None:
    """A password typed into a user name (`u:pw`) or a host (`u:pw@host`), wherever libpq
    reads it (the URL, PGUSER, PGHOST, PGHOSTADDR, a service file), is never printed,
    whether the server refuses the login (its message quotes the user name) or the host
    cannot be found (libpq's quotes the host): one line, exit 1 or 2."""
    user = f"{server.user}{separator}{password}"
    host, port = (server.host, str(server.port)) if reachable else ("127.0.0.1", "1")
    typed_host = f"{user}@{host}"
    env = {"PGPASSWORD": "", "PGSERVICE": "", "PGSERVICEFILE": ""}
    url = f"postgresql://{quote(host)}:{port}/{server.database}?sslmode=disable"
    if source == "?user":
        url = f"postgresql://{quote(host)}:{port}/{server.database}?user={quote(user)}{after}"
    elif source == "?host":
        url = f"postgresql:///{server.database}?host={quote(typed_host)}&port={port}{after}"
    elif source in ("PGUSER", "PGHOST", "PGHOSTADDR"):
        value = user if source == "PGUSER" else typed_host
        env[source] = value
        if source != "PGUSER":
            url = f"postgresql://u@/{server.database}?port={port}{after}"
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as services:
            key, value = ("user", user) if source == "service user" else ("host", typed_host)
            services.write(f"[typed]\nhost={host}\nport={port}\n{key}={value}\n")
        env["PGSERVICEFILE"] = services.name
        url = f"postgresql:///{server.database}?service=typed{after}"
    try:
        result = status(url, env)
    finally:
        if env.get("PGSERVICEFILE"):
            os.unlink(env["PGSERVICEFILE"])
    assert result.code in (1, 2), result
    assert len(result.err.splitlines()) == 1, result.err
    assert_nothing_of((password,), result.out + result.err)


@pytest.mark.parametrize("name", ["with space", "with@at", "a b@c"])
@pytest.mark.parametrize("written", ["query", "authority"])
def test_a_socket_folder_with_a_space_or_an_at_sign_is_reached_as_psql_reaches_it(
    database: Database, name: str, written: str
) -> None:
    """A host that starts with '/' is a socket folder to libpq, spaces and '@' in its name
    included: psql connects there, and so does cicd-db (the check that takes a space or
    '@' in a host for a password that lost its percent-encoding is for host names), and
    nothing of the folder's name is hidden as if it were a password."""
    with socket_folder(database.settings, name) as folder:
        where = quote(str(folder), safe="")
        url = (
            f"postgresql:///{database.name}?host={where}&port=5432"
            if written == "query"
            else f"postgresql://{where}:5432/{database.name}"
        )
        result = status(url, credentials(database))
        psql = subprocess.run(  # the oracle: psql reaches the folder by this URL
            [str(psql_bin()), url, "-XAtc", "SELECT 1"],
            env={**os.environ, **credentials(database)},
            capture_output=True,
            text=True,
            check=False,
        )
    assert (psql.returncode, psql.stdout) == (0, "1\n"), psql.stderr
    assert result.code == 0, result.err
    shown = json.loads(result.out)["url"]  # the URL libpq used, the folder named whole
    assert f"host={where}&" in shown and "***" not in shown, shown


@pytest.mark.parametrize(
    ("url", "where"),
    [
        # Given empty, a keyword is libpq's default: PGHOST or PGPORT is not read.
        ("postgresql://u@127.0.0.1/db?port=", "127.0.0.1"),
        ("postgresql://u@/db?host=&port=1", "the default socket:1"),
        ("postgresql://u@/db", "10.9.9.9:7777"),
        ("postgresql://u@127.0.0.1/db", "127.0.0.1:7777"),
        # An IPv6 address in brackets before its port, as in a URL.
        ("postgresql://u@[::1]:5/db", "[::1]:5"),
        ("postgresql://u@[::1]:5,h2:6/db", "[::1]:5, h2:6"),
        ("postgresql://u@h/db?hostaddr=::1", "h ([::1]):7777"),
    ],
)
def test_where_a_target_points_is_where_libpq_would_go(
    url: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGHOST", "10.9.9.9")
    monkeypatch.setenv("PGPORT", "7777")
    assert contract.from_url(url, what="x").where == where


def test_status_and_wait_print_where_libpq_connected(database: Database, tmp_path: Path) -> None:
    """The URL names no host or port; what is printed is where the connection went."""
    s = database.settings
    env = {"PGHOST": s.host, "PGPORT": str(s.port), "PGPASSWORD": s.password}
    url = f"postgresql://{s.user}@/{s.database}"
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    status = run_cli(
        "migrate", "--database-url", url, "--migrations-dir", str(folder), "status", "--json",
        env=env,
    )  # fmt: skip
    assert status.code == 0, status.err
    assert f"@{s.host}:{s.port}/{s.database}" in json.loads(status.out)["url"]
    waited = run_cli("migrate", "--database-url", url, "wait", env=env)
    assert waited.code == 0, waited.err
    assert waited.out.startswith(f"ready: postgresql://{s.user}@{s.host}:{s.port}/{s.database}")
    assert s.password not in status.out + waited.out


@pytest.mark.parametrize("given_by", ["PGHOSTADDR", "service"])
def test_the_ready_url_reaches_the_address_pghostaddr_gave(
    database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given_by: str
) -> None:
    """PGHOST (or a service) names a host no resolver knows and PGHOSTADDR (or the
    service's hostaddr) the server's address: libpq goes to the address. The printed URL
    is for a process without this environment (a later CI step), so it carries the
    address too, and reaches the same server."""
    s = database.settings
    env = {"PGHOST": "db.invalid", "PGHOSTADDR": s.host, "PGPORT": str(s.port)}
    if given_by == "service":
        services = tmp_path / "services"
        services.write_text(f"[ci]\nhost=db.invalid\nhostaddr={s.host}\nport={s.port}\n")
        env = {"PGSERVICEFILE": str(services), "PGSERVICE": "ci"}
    env["PGPASSWORD"] = s.password
    waited = run_cli(
        "migrate", "--database-url", f"postgresql://{s.user}@/{s.database}", "wait", "--json",
        env=env,
    )  # fmt: skip
    assert waited.code == 0, waited.err
    printed = json.loads(waited.out)["url"]
    assert "db.invalid" in printed and f"hostaddr={s.host}" in printed
    for name in [name for name in os.environ if name.startswith("PG")]:
        monkeypatch.delenv(name)
    secret = printed.replace("@", f":{quote(s.password, safe='')}@", 1)
    with psycopg.connect(secret, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (s.database,)


@pytest.mark.parametrize(
    "query", ["sslmode=disable&%70assword=Plainpw123", "passwor%64=Plainpw123&bogus=1"]
)
def test_a_percent_encoded_secret_key_is_masked_and_read_as_libpq_reads_it(query: str) -> None:
    result = run_cli(
        "migrate", "--database-url", f"postgresql://u@127.0.0.1:1/db?{query}", "status"
    )
    assert result.code in (1, 2)
    assert "Plainpw" not in result.out + result.err
    assert "does not know" not in result.err  # %70assword is libpq's password


def test_a_setting_the_server_refuses_at_start_up_is_a_configuration_error(
    database: Database,
) -> None:
    """The server answers, and refuses a setting of the URL's options: exit 2 at once (wait
    does not retry it), naming options, not "check that the server is up"."""
    url = replace(database.settings, parameters=(("options", "-c statement_timeout=abc"),)).url()
    for args in (["status"], ["wait", "--timeout", "30"]):
        result = run_cli("migrate", "--database-url", url, *args)
        assert result.code == 2, result
        assert 'invalid value for parameter "statement_timeout"' in result.err
        assert result.err.rstrip().endswith(
            "fix the options parameter of the URL (?options=-c ...) or PGOPTIONS"
        )


# -- a connection refused: who can fix it, and whether waiting helps ----------------------
#
# Each class is produced on the real server (psycopg gives no SQLSTATE for a failed
# connection; the server's words are what tell them apart): a configuration error (exit
# 2, the fix named; `migrate wait` gives up at once) or a server at its connection limit
# (exit 1; `wait` keeps trying). None is told "check that the server is up".

OPTIONS_FIX = "fix the options parameter of the URL (?options=-c ...) or PGOPTIONS"
LIBPQ_FIX = "fix that parameter of the target (--database-url, DATABASE_URL or the stack's outputs)"


@pytest.fixture
def login(database: Database) -> Iterator[ConnectionSettings]:
    """The settings of a role of `database` that is no superuser (a superuser passes every
    limit), with a password; the role is gone after the test."""
    role = f"login_{database.name[-12:]}"
    password = "Login-" + role
    query = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
    database.execute(query.format(sql.Identifier(role), sql.Literal(password)))
    yield replace(database.settings, user=role, password=password)
    # From another database: the test may have closed this one to connections.
    elsewhere = Database(replace(database.settings, database="postgres"))
    elsewhere.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# case: (what the superuser does first, the URL's options, libpq's environment), then
# (exit code, what the server or libpq said, the fix named); {database} and {role} are
# the test's.
REFUSALS: dict[str, tuple[tuple[str | None, str | None, dict[str, str]], tuple[int, str, str]]] = {
    "no-connect-privilege": (
        ("REVOKE CONNECT ON DATABASE {database} FROM PUBLIC", None, {}),
        (
            2,
            'permission denied for database "{database}"',
            "(GRANT CONNECT ON DATABASE ... TO ...)",
        ),
    ),
    "database-not-accepting-connections": (
        ("ALTER DATABASE {database} ALLOW_CONNECTIONS false", None, {}),
        (
            2,
            "is not currently accepting connections",
            "(ALTER DATABASE ... ALLOW_CONNECTIONS true)",
        ),
    ),
    "role-without-login": (
        ("ALTER ROLE {role} NOLOGIN", None, {}),
        (2, 'role "{role}" is not permitted to log in', "give it LOGIN (ALTER ROLE ... LOGIN)"),
    ),
    "role-connection-limit": (
        ("ALTER ROLE {role} CONNECTION LIMIT 0", None, {}),
        (1, 'too many connections for role "{role}"', "the role's or database's CONNECTION LIMIT"),
    ),
    "database-connection-limit": (
        ("ALTER DATABASE {database} CONNECTION LIMIT 0", None, {}),
        (1, 'too many connections for database "{database}"', "the server's max_connections"),
    ),
    "pgoptions-garbage": (
        (None, None, {"PGOPTIONS": "garbage"}),
        (2, "invalid command-line argument for server process: garbage", OPTIONS_FIX),
    ),
    "option-without-value": (
        (None, "-c lock_timeout", {}),
        (2, "-c lock_timeout requires a value", OPTIONS_FIX),
    ),
    "option-the-role-may-not-set": (
        (None, "-c log_statement=all", {}),
        (2, 'permission denied to set parameter "log_statement"', OPTIONS_FIX),
    ),
    "option-only-a-restart-sets": (
        (None, "-c shared_buffers=1MB", {}),
        (2, 'parameter "shared_buffers" cannot be changed without restarting', OPTIONS_FIX),
    ),
    "option-names-a-missing-role": (
        (None, None, {"PGOPTIONS": "-c role=nobody_here"}),
        (2, 'role "nobody_here" does not exist', OPTIONS_FIX),
    ),
    "option-out-of-range": (
        (None, "-c statement_timeout=-5", {}),
        (2, 'is outside the valid range for parameter "statement_timeout"', OPTIONS_FIX),
    ),
    "option-not-a-boolean": (
        (None, None, {"PGOPTIONS": "-c geqo=maybe"}),
        (2, 'parameter "geqo" requires a Boolean value', OPTIONS_FIX),
    ),
    # Variables libpq sends as settings: named themselves, not options nor PGOPTIONS.
    "pgtz-not-a-zone": (
        (None, None, {"PGTZ": "Not/AZone"}),
        (2, 'invalid value for parameter "TimeZone": "Not/AZone"', "fix or unset PGTZ, which "),
    ),
    "pgdatestyle-garbage": (
        (None, None, {"PGDATESTYLE": "garbage"}),
        (2, 'invalid value for parameter "DateStyle"', "fix or unset PGDATESTYLE, which "),
    ),
    "pggeqo-not-a-boolean": (
        (None, None, {"PGGEQO": "maybe"}),
        (2, 'parameter "geqo" requires a Boolean value', "fix or unset PGGEQO, which "),
    ),
    "pgtz-empty": (  # sent empty too, as libpq sends it
        (None, None, {"PGTZ": ""}),
        (2, 'invalid value for parameter "TimeZone": ""', "fix or unset PGTZ, which "),
    ),
    "pggeqo-beside-an-option-whose-name-holds-it": (
        (None, "-c geqo_threshold=20", {"PGGEQO": "maybe"}),
        (2, 'parameter "geqo" requires a Boolean value', "fix or unset PGGEQO, which "),
    ),
    "pgtz-and-options-both": (  # the options name it too: both places are told
        (None, "-c TimeZone=Not/AZone", {"PGTZ": "UTC"}),
        (2, 'invalid value for parameter "TimeZone"', OPTIONS_FIX),
    ),
    "hostaddr-not-an-address": (
        (None, None, {"PGHOSTADDR": "bogus"}),
        (2, 'could not parse network address "bogus"', "fix PGHOSTADDR (libpq reads hostaddr"),
    ),
    "one-host-two-hostaddrs": (
        (None, None, {"PGHOSTADDR": "127.0.0.1,127.0.0.1"}),
        (2, "could not match 1 host names with 2 hostaddr values", LIBPQ_FIX),
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_connection_says_who_can_fix_it(
    database: Database, login: ConnectionSettings, case: str
) -> None:
    (first, options, env), (code, said, fix) = REFUSALS[case]
    names = {"database": login.database, "role": login.user}
    if first:  # from another database: one cannot disallow connections to its own
        Database(replace(database.settings, database="postgres")).execute(
            sql.SQL(first).format(**{k: sql.Identifier(v) for k, v in names.items()})
        )
    settings = replace(login, parameters=(("options", options),)) if options else login
    result = run_cli("migrate", "--database-url", settings.url(), "status", env=env)
    assert (result.code, result.out) == (code, ""), result.err
    assert len(result.err.splitlines()) == 1, result.err
    assert said.format(**names) in result.err
    assert fix in result.err
    assert "check that the server is up" not in result.err
    assert "refused user" not in result.err or case == "role-without-login"
    assert login.password not in result.err
    # A configuration error stops `migrate wait` at once; a full server it waits for.
    timeout = 1 if code == 1 else 30
    started = time.monotonic()
    waited = run_cli(
        "migrate", "--database-url", settings.url(), "wait", "--timeout", str(timeout), env=env
    )
    elapsed = time.monotonic() - started
    assert waited.code == code, waited.err
    assert elapsed >= 1 if code == 1 else elapsed < 15


@pytest.mark.parametrize(
    ("query", "env", "code", "said"),
    [
        ("target_session_attrs=read-only", {}, 1, "session is not read-only"),
        ("target_session_attrs=standby", {}, 1, "server is not in hot standby mode"),
        ("", {"PGTARGETSESSIONATTRS": "standby"}, 1, "server is not in hot standby mode"),
        ("gssencmode=require", {}, 2, "GSSAPI encryption required"),
    ],
    ids=["read-only", "standby", "standby-from-the-environment", "gssencmode-require"],
)
def test_a_server_that_answers_as_the_target_does_not_ask_is_not_told_to_be_started(
    database: Database, query: str, env: dict[str, str], code: int, said: str
) -> None:
    """The server is up, and libpq turned it down: a primary where target_session_attrs
    asks for a standby or a read-only session (exit 1: a failover may make one, and
    `wait` waits for it), or GSSAPI encryption required without a credential (exit 2).
    Each names the parameter and where it came from, never "check that the server is up"."""
    url = database.settings.url() + (f"&{query}" if query else "")
    result = run_cli("migrate", "--database-url", url, "status", env=env)
    assert (result.code, result.out) == (code, ""), result.err
    assert len(result.err.splitlines()) == 1 and said in result.err, result.err
    assert "check that the server is up" not in result.err, result.err
    keyword = "gssencmode" if code == 2 else "target_session_attrs"
    origin = "(from PGTARGETSESSIONATTRS)" if env else "(from the URL)"
    assert f"{keyword}=" in result.err and origin in result.err, result.err
    # What it asks for, a primary, connects.
    asked = run_cli(
        "migrate", "--database-url", database.settings.url() + "&target_session_attrs=primary",
        "status",
    )  # fmt: skip
    assert asked.code == 0, asked.err


def test_a_service_file_libpq_cannot_read_is_a_configuration_error(tmp_path: Path) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text("[broken]\nhost\n")
    result = status(
        "postgresql://u:Sekr3tPW@127.0.0.1:1/db?service=broken", {"PGSERVICEFILE": str(services)}
    )
    assert (result.code, result.out) == (2, ""), result.err
    assert f'syntax error in service file "{services}", line 2' in result.err
    assert LIBPQ_FIX in result.err
    assert len(result.err.splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "said", "fix"),
    [
        (
            {"PGCONNECT_TIMEOUT": "abc"},
            'invalid integer value "abc" for connection option "connect_timeout"',
            "fix PGCONNECT_TIMEOUT (libpq reads connect_timeout from it",
        ),
        # Set but empty: a value libpq and psql refuse, not cicd-db's default (helper-101).
        (
            {"PGCONNECT_TIMEOUT": ""},
            'invalid integer value "" for connection option "connect_timeout"',
            "fix PGCONNECT_TIMEOUT (libpq reads connect_timeout from it",
        ),
        (
            {"PGSSLMODE": "bogus"},
            'invalid sslmode value: "bogus"',
            "fix PGSSLMODE (libpq reads sslmode from it",
        ),
        # Found in review: libpq quotes this keyword, and the pattern took no quotes.
        (
            {"PGSSLMINPROTOCOLVERSION": "TLSv9"},
            'invalid "ssl_min_protocol_version" value: "TLSv9"',
            "fix PGSSLMINPROTOCOLVERSION (libpq reads ssl_min_protocol_version from it",
        ),
        # Two keywords in one refusal: the one a variable set is the one to fix.
        (
            {"PGSSLNEGOTIATION": "direct"},
            'weak sslmode "prefer" may not be used with sslnegotiation=direct',
            "fix PGSSLNEGOTIATION (libpq reads sslnegotiation from it",
        ),
        (
            {"PGREQUIREAUTH": "md5x"},
            'invalid require_auth value: "md5x"',
            "fix PGREQUIREAUTH (libpq reads require_auth from it",
        ),
    ],
    ids=[
        "pgconnect-timeout",
        "pgconnect-timeout-empty",
        "pgsslmode",
        "quoted-keyword",
        "sslnegotiation",
        "require-auth",
    ],
)
def test_a_value_libpq_refuses_is_blamed_on_its_variable(
    env: dict[str, str], said: str, fix: str
) -> None:
    result = status("postgresql://u:Sekr3tPW@127.0.0.1:1/db", env)
    assert (result.code, result.out) == (2, ""), result.err
    assert said in result.err
    assert fix in result.err
    assert "fix that parameter of the target" not in result.err


@pytest.mark.parametrize(
    ("env", "said", "fix"),
    [
        (
            {"PGREQUIREAUTH": "md5"},
            'authentication method requirement "md5" failed',
            "fix PGREQUIREAUTH (libpq reads require_auth from it",
        ),
        (
            {"PGCHANNELBINDING": "require"},
            "channel binding required",
            "fix PGCHANNELBINDING (libpq reads channel_binding from it",
        ),
    ],
    ids=["require-auth", "channel-binding"],
)
def test_a_requirement_the_server_fails_is_blamed_on_its_variable(
    database: Database, env: dict[str, str], said: str, fix: str
) -> None:
    """Refusals libpq makes once it has the server's answer name the variable that asked
    for them (they said "fix that parameter ... or of libpq's environment")."""
    settings = replace(database.settings, sslmode=None)
    result = status(settings.url(), env)
    assert (result.code, result.out) == (2, ""), result.err
    assert said in result.err and fix in result.err, result.err
    assert len(result.err.splitlines()) == 1


def test_pgrequiressl_is_named_as_the_sslmode_libpq_took(database: Database) -> None:
    """libpq still reads PGREQUIRESSL=1 as sslmode=require where PGSSLMODE is unset; the
    message blamed libpq's default, prefer, which was not in effect."""
    settings = replace(database.settings, sslmode=None)
    result = status(settings.url(), {"PGREQUIRESSL": "1"})
    assert (result.code, result.out) == (2, ""), result.err
    assert "server does not support SSL" in result.err
    assert "sslmode=require (from PGREQUIRESSL)" in result.err, result.err
    assert "prefer (libpq's default)" not in result.err


def test_a_url_in_pghost_is_named_without_its_password() -> None:
    """libpq reads PGHOST as a host name; psycopg, resolving it, names it None."""
    result = status("postgresql:///db", {"PGHOST": "postgresql://u:Sekr3tPW@db.example/db"})
    assert (result.code, result.out) == (2, ""), result.err
    assert result.err == (
        "error: PGHOST holds a URL (not shown), where libpq reads host names: put the URL in "
        "--database-url or DATABASE_URL, and unset PGHOST\n"
    )


def test_sslrootcert_system_is_told_with_the_sslmode_libpq_gives_it(database: Database) -> None:
    """With sslrootcert=system libpq's default sslmode is verify-full, not prefer."""
    settings = replace(database.settings, sslmode=None, parameters=(("sslrootcert", "system"),))
    result = status(settings.url(), {})
    assert (result.code, result.out) == (2, ""), result.err
    assert "server does not support SSL" in result.err
    assert "sslmode=verify-full (libpq's default with sslrootcert=system)" in result.err
    assert "prefer (libpq's default)" not in result.err
    assert len(result.err.splitlines()) == 1


# -- text that is not UTF-8, on the command line or in the environment -----------------

# Bytes a shell can pass that are not UTF-8 (Python hands them on as surrogates); not
# starting with a dash, which argparse would take for an option.
NOT_UTF8 = (
    st.binary(min_size=1, max_size=24)
    .filter(lambda raw: b"\x00" not in raw and not raw.startswith(b"-"))
    .filter(lambda raw: not _decodes(raw))
)


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _first_bad(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape")
    index = next(i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff")
    return f"byte 0x{ord(text[index]) - 0xDC00:02x} at character {index + 1}"


# A command line for each place a text argument goes: a URL, a stack, names.
WITH_TEXT = {
    "--database-url": ("migrate", "status", "--database-url"),
    "--stack": ("migrate", "status", "--stack"),
    "--pipeline": ("report", "--database-url", "postgresql://u@h/d", "--pipeline"),
    "--stage": (
        "report",
        "--database-url",
        "postgresql://u@h/d",
        "--pipeline",
        "p",
        "--run",
        "1",
        "--stage",
    ),
}


@hypothesis.settings(max_examples=examples(150), deadline=None)
@hypothesis.given(raw=NOT_UTF8, flag=st.sampled_from(list(WITH_TEXT)))
def test_an_argument_that_is_not_utf8_is_refused_naming_its_flag(raw: bytes, flag: str) -> None:
    """One line, exit 2, the flag and the first bad byte; never the value itself."""
    text = raw.decode("utf-8", "surrogateescape")
    result = run_cli(*WITH_TEXT[flag], text)
    assert (result.code, result.out) == (2, ""), result
    assert result.err == (
        f"error: {flag} is not UTF-8 text ({_first_bad(raw)}); pass it as UTF-8\n"
    ), result


@hypothesis.settings(max_examples=examples(150), deadline=None)
@hypothesis.given(
    raw=NOT_UTF8,
    # Every variable libpq lists for its parameters (asked of libpq itself), the ones it
    # reads besides, and ours: a PGPASSFILE, PGSSLROOTCERT or CICD_DB_HOME not in UTF-8
    # failed as "unexpected UnicodeDecodeError" (helper-115).
    variable=st.sampled_from(
        sorted(
            {o.envvar.decode() for o in psycopg.pq.Conninfo.get_defaults() if o.envvar}
            | {"PGSERVICEFILE", "PGSYSCONFDIR", "PGTZ", "PGDATESTYLE", "PGREQUIRESSL"}
            | {"DATABASE_URL", "CICD_DB_LOCAL", "CICD_DB_HOME", "CICD_DB_EMBEDDED_PORT"}
            | {"PULUMI_BACKEND_URL"}
        )
    ),
)
def test_an_environment_variable_that_is_not_utf8_is_refused_naming_it(
    raw: bytes, variable: str
) -> None:
    """libpq's variables and ours: one line, exit 2, the variable and the first bad byte,
    never its value (PGPASSWORD, a URL's password)."""
    text = raw.decode("utf-8", "surrogateescape")
    result = run_cli(
        "migrate", "status", env={"DATABASE_URL": "postgresql://u@h/d", variable: text}
    )
    assert (result.code, result.out) == (2, ""), result
    assert result.err == (
        f"error: {variable} is not UTF-8 text ({_first_bad(raw)}); set it as UTF-8\n"
    ), result


def test_finding_a_services_options_leaves_the_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked of libpq without touching PGSERVICE: another thread of a library user
    connects with the environment it set, whenever cicd-db opens a connection."""
    services = tmp_path / "pg_service.conf"
    services.write_text("[opts]\noptions=-c statement_timeout=4321\n[none]\nhost=h\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.delenv("PGSERVICE", raising=False)
    monkeypatch.delenv("PGOPTIONS", raising=False)
    written: list[str] = []

    class Watched(type(os.environ)):  # type: ignore[misc]
        def __setitem__(self, key: str, value: str) -> None:
            written.append(key)
            super().__setitem__(key, value)

        def __delitem__(self, key: str) -> None:
            written.append(key)
            super().__delitem__(key)

    watched = Watched(
        os.environ._data,
        os.environ.encodekey,
        os.environ.decodekey,  # type: ignore[attr-defined]
        os.environ.encodevalue,
        os.environ.decodevalue,  # type: ignore[attr-defined]
    )
    monkeypatch.setattr(os, "environ", watched)
    assert contract.service_options("opts") == "-c statement_timeout=4321"
    assert contract.service_options("none") is None
    assert contract.service_options("no such service") is None
    assert written == []


@pytest.mark.parametrize(
    ("keyword", "variable", "query"),
    [
        ("options", "PGOPTIONS", "SHOW statement_timeout"),
        ("application_name", "PGAPPNAME", "SHOW application_name"),
        ("dbname", "PGDATABASE", "SELECT current_database()"),
        ("user", "PGUSER", "SELECT current_user"),
        ("host", "PGHOST", "SELECT 1"),
    ],
)
def test_a_url_parameter_given_empty_is_given_as_psql_takes_it(
    database: Database, keyword: str, variable: str, query: str
) -> None:
    """`?options=` is no options for libpq, not PGOPTIONS's; `?host=` the default socket,
    not PGHOST: cicd-db's session is the one psql makes, or fails where psql fails."""
    settings = database.settings
    values = {
        "PGOPTIONS": "-c statement_timeout=4321",
        "PGAPPNAME": "from-the-environment",
        "PGDATABASE": settings.database,
        "PGUSER": settings.user,
        "PGHOST": settings.host,
    }
    env = {**credentials(database), variable: values[variable], "PGPORT": str(settings.port)}
    fields = {"host": settings.host, "dbname": settings.database, "user": settings.user}
    fields[keyword] = ""
    url = "postgresql:///?" + urlencode(fields, quote_via=quote)
    oracle = psql(url, env, query)
    with mock.patch.dict(os.environ, env):
        try:
            with targets.connect(targets.resolve(database_url=url).settings) as conn:
                row = conn.execute(query.encode()).fetchone()  # type: ignore[call-overload]
            ours = (0, str(row[0]) if row else "")
        except (ConfigError, errors.OperationalError):
            ours = (1, "")
    theirs = (0, oracle.stdout.strip()) if oracle.returncode == 0 else (1, "")
    assert ours == theirs, (oracle.stderr, ours)


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_a_reading_session_is_iso_under_pgdatestyle_and_left_idle(
    database: Database, autocommit: bool
) -> None:
    """PGDATESTYLE reaches the server after the options and wins over them: a reading
    session sets ISO again, and one that is not autocommit is handed over idle, with
    ISO kept past a rollback (the setting was committed, not left in a transaction)."""
    with mock.patch.dict(os.environ, {"PGDATESTYLE": "SQL, DMY"}):
        conn = targets.connect(database.settings, autocommit=autocommit)
    with conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert str(conn.execute("SHOW DateStyle").fetchone()[0]).startswith("ISO")  # type: ignore[index]
        conn.rollback()
        assert str(conn.execute("SHOW DateStyle").fetchone()[0]).startswith("ISO")  # type: ignore[index]


def test_a_setting_a_services_options_name_wrongly_is_told_as_the_services(
    database: Database, tmp_path: Path
) -> None:
    """`options` from the service file, not the URL or PGOPTIONS: fix the service (it said
    "fix the options parameter of the URL ... or PGOPTIONS")."""
    services = tmp_path / "pg_service.conf"
    services.write_text("[zoned]\noptions=-c TimeZone=Bogus/Zone\n")
    settings = database.settings
    url = replace(settings, parameters=(("service", "zoned"),)).url()
    result = status(url, {"PGSERVICEFILE": str(services)})
    assert (result.code, result.out) == (2, ""), result.err
    assert result.err.rstrip().endswith("; fix the options of service zoned"), result.err
    assert "Bogus/Zone" in result.err


def test_a_value_a_service_names_wrongly_is_the_services_to_fix(tmp_path: Path) -> None:
    """A bad sslmode from the service file, with PGSSLMODE set too (libpq took the
    service's): "fix that parameter ... or of libpq's environment" (review)."""
    services = tmp_path / "pg_service.conf"
    services.write_text("[bad]\nsslmode=bogus\n")
    result = status(
        "postgresql://u:Sekr3tPW@127.0.0.1:1/db?service=bad",
        {"PGSERVICEFILE": str(services), "PGSSLMODE": "require"},
    )
    assert (result.code, result.out) == (2, ""), result.err
    assert 'invalid sslmode value: "bogus"; fix sslmode in service bad' in result.err, result.err


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("timeout", float("nan"), "^`timeout` nan is out of range; "),
        ("timeout", float("inf"), "^`timeout` inf is out of range; "),
        ("timeout", -1, "^`timeout` -1 is out of range; "),
        ("poll", 0, "^`poll` 0 is out of range; "),
        ("poll", "1", "^`poll` takes a number of seconds, not a str$"),
    ],
)
def test_a_wait_that_is_no_number_of_seconds_is_refused_before_connecting(
    keyword: str, value: object, message: str
) -> None:
    """`targets.wait` polled forever with a NaN timeout (review): the CLI's --timeout is
    read as seconds, and the library checks the same, before the first try."""
    given = contract.from_url("postgresql://u@127.0.0.1:1/db", what="test")
    arguments: dict[str, object] = {"timeout": 1.0, keyword: value}
    with pytest.raises(errors.UsageError, match=message):
        targets.wait(given, **arguments)  # type: ignore[arg-type]


# Parts of a host name: letters, digits, '-', what IDNA maps or refuses (a full-width
# dot, a zero-width space, a space), and lengths past the 63 a part may have.
HOST_PARTS = st.text(st.sampled_from("ab0-_\u00fc\u3002\u200b "), max_size=70)


@hypothesis.settings(max_examples=examples(150), deadline=None)
@hypothesis.given(
    parts=st.lists(HOST_PARTS, min_size=1, max_size=4),
    where=st.sampled_from(["url", "query", "PGHOST"]),
)
@hypothesis.example(
    parts=["a", "", "b"], where="url"
)  # the helper's `a..b`: "unexpected UnicodeError"
@hypothesis.example(parts=["", "example"], where="PGHOST")
@hypothesis.example(parts=["a" * 64], where="query")
def test_any_host_name_is_answered_in_one_line_with_a_documented_code(
    parts: list[str], where: str
) -> None:
    """psycopg looks host names up itself, and Python's IDNA encoding refused an empty or
    over-long part (`a..b`, `.example`, 64 letters) with a UnicodeError the CLI did not
    expect (exit 1, "run with --debug and report it"). Any host, in the URL, its query or
    PGHOST: one line, exit 1 (not found) or 2 (no host name), nothing unexpected."""
    host = ".".join(parts)
    hypothesis.assume(host.strip())
    environ = {}
    if where == "url":
        url = f"postgresql://u@{quote(host, safe='.')}:1/db?connect_timeout=2"
    elif where == "query":
        url = f"postgresql://u@/db?{urlencode({'host': host, 'port': '1', 'connect_timeout': '2'})}"
    else:
        url, environ = "postgresql://u@/db?port=1&connect_timeout=2", {"PGHOST": host}
    result = run_cli("migrate", "status", "--database-url", url, env=environ)
    assert result.code in (1, 2) and result.out == "", result
    assert len(result.err.splitlines()) == 1 and "unexpected" not in result.err, result


# What may stand where libpq reads an integer: digits of any script, signs, white space,
# a point, an exponent, values past a C int.
_TIMEOUT_TEXT = st.text(
    st.sampled_from(list("0123456789+-. \t\ne\u0665")), max_size=6
) | st.sampled_from(
    ["1.5", "1e3", "\u0665", "99999999999", "2147483647", "2147483648", "-2147483648", " 7 ", ""]
)


@hypothesis.settings(max_examples=examples(40))
@hypothesis.given(value=_TIMEOUT_TEXT, by_url=st.booleans(), waiting=st.booleans())
def test_a_connect_timeout_is_refused_exactly_where_psql_refuses_it(
    value: str, by_url: bool, waiting: bool
) -> None:
    """psql the oracle: a connect_timeout, in the URL or PGCONNECT_TIMEOUT, that libpq does
    not read as an integer (1.5, 1e3, an Arabic-Indic 5, 99999999999) is refused as psql
    refuses it, in one line, exit 2, naming where it came from; one psql takes is not,
    by `migrate wait` too. psycopg reads the timeout itself, as a float, and took all of
    them."""
    url = "postgresql://u:pw-secret@127.0.0.1:1/db"
    env = {} if by_url else {"PGCONNECT_TIMEOUT": value}
    if by_url:
        url += "?connect_timeout=" + quote(value, safe="")
    said = psql(url, env).stderr
    psql_refuses = "invalid integer value" in said
    # `migrate wait` bounds each attempt's timeout by the time left: the value given is
    # judged first, as every other command judges it.
    told = (
        run_cli("migrate", "--database-url", url, "wait", "--timeout", "0", env=env)
        if waiting
        else status(url, env)
    )
    refused = "invalid integer value" in told.err
    assert refused == psql_refuses, (value, said, told)
    if refused:
        assert told.code == 2 and len(told.err.splitlines()) == 1, told
        assert ("PGCONNECT_TIMEOUT" in told.err) != by_url, told
