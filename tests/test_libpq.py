"""What libpq reads besides what cicd-db names: service files, PGOPTIONS, its variables,
and where each parameter of a connection was taken from."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg.conninfo
import pytest

from cicd_db import libpq
from cicd_db.settings import from_url

from .fix_db import Database
from .utils import socket_folder, use_service_file


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
        # An empty address in the list: libpq connects to that host by its name.
        pytest.param(
            "postgresql://h1,h2/db?hostaddr=,10.0.0.2", {}, "h1, h2 (10.0.0.2)", id="emptyaddress"
        ),
        # Fewer ports than hosts (libpq refuses it): the host without one is named bare.
        pytest.param(
            "postgresql:///db",
            {"PGHOST": "h1,h2,h3", "PGPORT": "5433,5434"},
            "h1:5433, h2:5434, h3",
            id="fewerports",
        ),
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
    assert libpq.service_values("plain") == {"host": "10.1.2.3", "port": "6001"}
    assert libpq.service_values("ro") == {"target_session_attrs": "read-only"}
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
    assert libpq.service_values(service) == expected


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
    assert libpq.service_values("tls") == {"sslmode": "verify-full", "sslrootcert": "system"}
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
        assert libpq.service_values("probe") == {"host": "127.0.0.1", "port": str(port)}
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_a_service_value_that_is_not_utf8_is_read_with_a_replacement(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A LATIN1 byte in the service file: one replacement character, no error."""
    use_service_file(monkeypatch, tmp_path, KINDS_OF_SERVICE)
    assert libpq.service_values("latin") == {"application_name": "caf\ufffd"}


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


# -- gaps the mutation run of libpq.py found (2026-12-07) ------------------------------


@pytest.mark.parametrize(
    ("keyword", "variable", "value", "url"),
    [
        ("host", "PGHOST", "other.example", "postgresql://u@db.example/app"),
        ("port", "PGPORT", "7000", "postgresql://u@db.example:6543/app"),
        ("dbname", "PGDATABASE", "other", "postgresql://u@db.example/app"),
        ("user", "PGUSER", "other", "postgresql://u@db.example/app"),
        ("sslmode", "PGSSLMODE", "disable", "postgresql://u@db.example/app?sslmode=require"),
        # A keyword of no field of the settings, named as a URL parameter.
        (
            "connect_timeout",
            "PGCONNECT_TIMEOUT",
            "7",
            "postgresql://u@db.example/app?connect_timeout=5",
        ),
    ],
)
def test_a_parameter_the_url_names_is_not_blamed_on_its_variable(
    monkeypatch: pytest.MonkeyPatch, keyword: str, variable: str, value: str, url: str
) -> None:
    """libpq takes the URL's value over its variable's, so a refusal of it is the URL's to
    fix: `variable` says no variable (a mutant that misspelt the key blamed PGPORT for a
    port the URL names). Without the URL's, the variable is named."""
    for name in ("PGSERVICE", "PGSERVICEFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert libpq.variable(from_url(url), keyword) is None
    assert libpq.variable(from_url("postgresql://"), keyword) == variable


def test_the_parameters_in_use_name_the_host_the_connection_reached(database: Database) -> None:
    """A second connection made from them reaches the same server by its host (the name a
    verify-full checks, the socket folder of a local server), not only by its address."""
    with database.connect() as conn:
        used = libpq.params_in_use(conn)
        assert used["host"] == conn.info.host
        assert used["port"] == str(conn.info.port)


# -- what a second connection reaches: a service's address, the parameters in use -----------


@pytest.mark.parametrize("pghostaddr", ["", "10.9.9.9"], ids=["unset", "set"])
def test_where_names_a_services_hostaddr_beside_its_host(
    pghostaddr: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """libpq connects to the address the service names (over PGHOSTADDR, as a service's
    host ranks over PGHOST), so `where` names it beside the host, as psql does."""
    use_service_file(monkeypatch, tmp_path, "[addr]\nhost=h\nhostaddr=10.0.0.2\nport=6001\n")
    monkeypatch.delenv("PGHOSTADDR", raising=False)
    if pghostaddr:
        monkeypatch.setenv("PGHOSTADDR", pghostaddr)
    assert libpq.service_values("addr")["hostaddr"] == "10.0.0.2"  # libpq's own reading
    assert from_url("postgresql://u@/d?service=addr").where == "h (10.0.0.2):6001"


def test_the_parameters_in_use_pin_the_address_reached_and_leave_out_empty_ones(
    database: Database,
) -> None:
    """The address the connection reached is passed on (a second connection lands on the
    same server, not on another address of its host name), and no keyword is passed
    empty (an older libpq, pg_dump's, refuses a keyword it does not know, even empty)."""
    with database.connect() as conn:
        used = libpq.params_in_use(conn)
        assert used["hostaddr"] == conn.info.hostaddr
        assert "" not in used.values() and None not in used.values()


WHICH_SERVER = "SELECT current_database(), inet_server_port()"


def test_the_parameters_in_use_of_a_socket_connection_reach_the_same_server(
    database: Database,
) -> None:
    """A connection through a socket folder has no address: none is passed on, and a
    second connection made from the parameters reaches the same server."""
    with socket_folder(database.settings) as folder:
        settings = database.settings
        conninfo = psycopg.conninfo.make_conninfo(
            host=str(folder), port=5432, dbname=settings.database, user=settings.user,
            password=settings.password, sslmode="disable",
        )  # fmt: skip
        with psycopg.connect(conninfo) as conn:
            used = libpq.params_in_use(conn)
            first = conn.execute(WHICH_SERVER).fetchone()
        assert "hostaddr" not in used and used["host"] == str(folder)
        with psycopg.connect(psycopg.conninfo.make_conninfo(**used)) as again:
            assert again.execute(WHICH_SERVER).fetchone() == first
