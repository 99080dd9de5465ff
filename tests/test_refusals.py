"""A connection that failed, told in one line with the fix (refusals.py): what the server
answered and refused, what libpq or psycopg refused before trying, and which URL, stack
output or environment variable gave the value."""

from __future__ import annotations

from pathlib import Path

import psycopg.conninfo
import pytest

from cicd_db import cli, refusals
from cicd_db.errors import AuthenticationFailed, CicdDbError, ConfigError, ConnectionFailed
from cicd_db.settings import ConnectionSettings, from_url

from .utils import use_service_file

SECRET = "Sup3rS3cret"


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
    result = refusals.connection_error(HOST, psycopg.OperationalError(message))
    assert type(result) is error
    assert cli.phrased(result).startswith(expected), cli.phrased(result)


def test_a_brace_in_the_server_text_is_not_a_field() -> None:
    """The server's text goes into the message as a value: `{x}` in it stays `{x}`."""
    message = 'FATAL:  password authentication failed for user "a{b}{}"'
    result = refusals.connection_error(HOST, psycopg.OperationalError(message))
    assert 'for user "a{b}{}"; check' in str(result)
    assert 'for user "a{b}{}"; check' in cli.phrased(result)


# -- refusals told whole, and blamed on what set them (mutation survivors) ----------


def test_a_parameter_a_variable_set_is_told_whole(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("PGSSLMODE", "bogus")
    for variable in ("PGSERVICE", "PGSERVICEFILE"):
        monkeypatch.delenv(variable, raising=False)
    refused = refusals.parameter_refused(
        from_url("postgresql://u@h/d"), 'h: invalid sslmode value: "bogus"'
    )
    assert str(refused) == (
        'h: invalid sslmode value: "bogus"; fix PGSSLMODE (libpq reads sslmode from it where '
        "the target (`database_url`, DATABASE_URL or the stack's outputs) names none)"
    )


def test_a_parameter_the_url_names_is_the_urls_to_fix_not_its_services(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    use_service_file(monkeypatch, tmp_path, "[s]\nconnect_timeout=9\n")
    settings = from_url("postgresql://u@h/d?service=s&connect_timeout=abc")
    detail = 'h: invalid integer value "abc" for connection option "connect_timeout"'
    refused = str(refusals.parameter_refused(settings, detail))
    assert refused.startswith(f"{detail}; fix that parameter of the target"), refused
    # The service's own value is the service's to fix.
    settings = from_url("postgresql://u@h/d?service=s")
    refused = str(refusals.parameter_refused(settings, detail))
    assert refused == (
        f"{detail}; fix connect_timeout in service s (libpq reads it from the service file "
        "where the target names none)"
    )


def test_a_variable_set_to_default_in_any_case_is_not_blamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq sends PGTZ unless it says "default" (any case): such a PGTZ sent nothing."""

    for variable in ("PGOPTIONS", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    settings = from_url("postgresql://u@h/d")
    detail = 'invalid value for parameter "TimeZone": "Not/AZone"'
    monkeypatch.setenv("PGTZ", "Default")
    assert refusals._setting_variable(settings, detail) is None
    monkeypatch.setenv("PGTZ", "Not/AZone")
    assert refusals._setting_variable(settings, detail) == "PGTZ"


def test_a_parameter_of_the_target_is_told_whole(monkeypatch: pytest.MonkeyPatch) -> None:

    for variable in ("PGSERVICE", "PGSSLMODE"):
        monkeypatch.delenv(variable, raising=False)
    detail = 'h: invalid sslnegotiation value: "bogus"'
    refused = refusals.parameter_refused(
        from_url("postgresql://u@h/d?sslnegotiation=bogus"), detail
    )
    assert str(refused) == (
        f"{detail}; fix that parameter of the target (`database_url`, DATABASE_URL or the "
        "stack's outputs) or of libpq's environment (PGHOST, PGPORT, PGSSLMODE, PGSERVICE, ...)"
    )


# -- gaps the mutation run of refusals.py found (2026-12-07) --------------------------


def refused(settings: ConnectionSettings, detail: str) -> CicdDbError:
    """What a connection to `settings` is told when libpq says `detail`, as it words it."""
    message = f'connection to server at "10.0.0.1", port 5433 failed: {detail}'
    return refusals.connection_error(settings, psycopg.OperationalError(message))


def test_a_login_refused_with_no_user_named_is_the_logins() -> None:
    """No user in the target (libpq would take PGUSER or the account's): the refusal names
    "the login", not a user '' (a mutant printed user '' or user None)."""
    nobody = ConnectionSettings("db.example.com", 5433, "app", "", "")
    result = refused(nobody, "fe_sendauth: no password supplied")
    assert type(result) is AuthenticationFailed
    assert str(result).startswith(
        "db.example.com:5433 refused the login: fe_sendauth: no password supplied; check"
    ), str(result)


def test_a_certificate_without_a_host_name_is_the_targets_to_fix() -> None:
    """libpq found no host name in the server's certificate to check: a configuration
    error with the host name's fix (exit 2), not a server that is down (exit 1)."""
    verifying = from_url("postgresql://ci@db.example.com:5433/app?sslmode=verify-full")
    result = refused(verifying, "could not get server's host name from server certificate")
    assert type(result) is ConfigError
    assert str(result).endswith(
        "; connect by a host name the certificate names, or change sslmode=verify-full "
        "(from the URL) (verify-full checks the host name)"
    ), str(result)


def test_a_certificate_not_verified_names_where_sslrootcert_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    verifying = from_url(
        "postgresql://ci@db.example.com:5433/app?sslmode=verify-ca&sslrootcert=/etc/ca.pem"
    )
    result = refused(verifying, "certificate verify failed")
    assert type(result) is ConfigError
    assert "; point sslrootcert=/etc/ca.pem (from the URL) at the authority that signed" in str(
        result
    ), str(result)


def test_a_bad_setting_the_url_names_is_the_urls_even_where_its_service_has_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The service file sets `options` too, but the URL's own `?options=` is what libpq
    sent: the fix is the URL's options parameter, not the service's (mutants blamed the
    service)."""
    use_service_file(monkeypatch, tmp_path, "[zoned]\noptions=-c TimeZone=UTC\n")
    settings = from_url(
        "postgresql://ci@db.example.com:5433/app?service=zoned&options=-c%20TimeZone%3DBogus"
    )
    result = refused(settings, 'FATAL:  invalid value for parameter "TimeZone": "Bogus"')
    assert type(result) is ConfigError
    assert str(result).endswith(
        "; fix the options parameter of the URL (?options=-c ...) or PGOPTIONS"
    ), str(result)


@pytest.mark.parametrize(
    ("detail", "fix"),
    [
        (
            'no pg_hba.conf entry for host "10.0.0.9", user "ci", database "app", no encryption',
            "the server's pg_hba.conf lets no such connection in: add a line for it there "
            "(and reload the server), or connect as a user, to a database or with an "
            "sslmode a line names",
        ),
        (
            'permission denied for database "app"',
            "grant it (GRANT CONNECT ON DATABASE ... TO ...), or connect as a user who has it",
        ),
        (
            'database "app" is not currently accepting connections',
            "allow them (ALTER DATABASE ... ALLOW_CONNECTIONS true), or connect to another "
            "database",
        ),
    ],
    ids=["pg_hba", "connect-right", "not-accepting"],
)
def test_a_server_refusal_is_told_with_its_whole_fix(detail: str, fix: str) -> None:
    """The fix to its last word (tests read only its start, and mutants cut the end)."""
    result = refused(HOST, f"FATAL:  {detail}")
    assert str(result).endswith(f"{detail}; {fix}"), str(result)


def test_a_setting_a_variable_sent_is_told_with_the_whole_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("PGOPTIONS", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PGTZ", "Bogus/Zone")
    result = refused(HOST, 'FATAL:  invalid value for parameter "TimeZone": "Bogus/Zone"')
    assert str(result).endswith(
        "; fix or unset PGTZ, which libpq sends as that setting when it connects"
    ), str(result)
