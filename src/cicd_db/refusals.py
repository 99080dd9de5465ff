"""A connection that failed, told in one line with the fix: what the server answered and
refused (a login, a database, a setting of the options, a limit), what libpq or
psycopg refused before trying (a parameter, a certificate, a service file), and which
URL, stack output or environment variable the value came from. Passwords redacted.

psycopg gives no SQLSTATE for a connection that failed, so the class is read from the
message's two sources, as the comments below say."""

from __future__ import annotations

import os
import re

import psycopg

from cicd_db.errors import (
    AuthenticationFailed,
    CicdDbError,
    ConfigError,
    ConnectionFailed,
)
from cicd_db.libpq import options_with
from cicd_db.redaction import redact, user_name_secrets
from cicd_db.settings import ConnectionSettings

# Where a target's connection parameters come from, for messages with `{database_url}`.
TARGET_PARAMETERS = "({database_url}, DATABASE_URL or the stack's outputs)"

# How a failed connection is told. psycopg gives no SQLSTATE for a connection that
# failed (the server's error stays inside libpq: `error.sqlstate` is None), so the
# class is read from the message, by its two sources:
# - the server answered, and refused: libpq writes its error as "SEVERITY:  message"
#   (two spaces; FATAL in English), and the message is PostgreSQL's own text;
# - libpq (or psycopg) refused, or had no answer: its own text, with no severity.
# Configuration errors (exit 2) are what the user's settings can fix; a server that
# did not answer, or is not accepting connections now, is exit 1, and `migrate wait`
# keeps trying it (ConnectionFailed). Patterns, not compiled ones: read only when a
# connection fails, they are compiled then (re keeps them), not at every start.
SERVER_ANSWERED = r"[^\s:]+(?: [^\s:]+)?:  "
STARTUP_OPTIONS = (
    # 22023, 42704, 42601: a setting or switch of the options the server cannot read;
    # 42501: one the role may not set; 55P02: one only a restart can change.
    r"(invalid value for parameter|unrecognized configuration parameter|invalid "
    r"command-line argument|(-c |--)\S+ requires a value|permission denied to set (parameter|role|"
    r"session authorization)|parameter \"[^\"]*\" (cannot be (changed|set)|requires a )|"
    # 22023: a number or size out of the setting's range ("-5 ms is outside ...").
    r".* is outside the valid range for parameter \")"
)
SERVER_BUSY = (
    # 53300: the server's, the role's or the database's connection limit is reached.
    r"(too many connections for (role|database)|sorry, too many clients|remaining connection "
    r"slots are reserved)"
)
# 57P03: starting up, shutting down, in recovery, not yet accepting connections.
SERVER_NOT_READY = r"the database system is "
# libpq's words for a server that answered in a role target_session_attrs does not want.
NOT_THE_SESSION_ASKED = r"(session is (not )?read-only|server is (not )?in hot standby mode)"
LIBPQ_PARAMETER = (
    # libpq refused a connection parameter before trying the server.
    r"(invalid \S+ value|invalid integer value|invalid port number|bad value for|"
    r"could not parse network address|weak sslmode|invalid connection option|missing \"=\" "
    r"after|unterminated quoted string|invalid URI|unexpected spaces found|"
    r"(root )?certificate file|private key file|could not (read|load|open) (root "
    r"certificate|certificate|private key|SSL)|definition of service|service file|syntax "
    r"error in service file|root certificate file|certificate present, but not private key|"
    r"could not match \d+ (port numbers to \d+ hosts|host names (with|to) \d+ hostaddr "
    r"values)|authentication method requirement|channel binding required)"
)
# The keywords a libpq or psycopg refusal names, in the forms they write them: the
# pattern's group, or the keyword given beside it.
NAMED_KEYWORD: tuple[tuple[str, str | None], ...] = (
    (r'connection option "(\w+)"', None),  # invalid integer value "abc" for ...
    (r'invalid "?(\w+)"? value', None),  # invalid sslmode value: "bogus"; "ssl_min_..."
    (r"bad value for (\w+)", None),  # psycopg: bad value for connect_timeout: 'abc'
    # weak sslmode "prefer" may not be used with sslnegotiation=direct: either may be wrong
    (r"weak (sslmode)", None),
    (r"(sslnegotiation)=direct", None),
    (r"could not parse network address", "hostaddr"),
    (r"root certificate file", "sslrootcert"),  # "/x" does not exist
    (r"private key file|certificate present, but not private key", "sslkey"),
    (r"authentication method requirement", "require_auth"),  # "md5" failed: ...
    (r"channel binding required", "channel_binding"),
)


def connection_error(
    settings: ConnectionSettings, error: psycopg.Error, named_by: str = "database_url"
) -> CicdDbError:
    """A failed connection told in one line: what refused it, and what to fix where (the
    target, or the argument `named_by` that gave `settings`: `admin_url`). Nothing of it
    shows a secret of `settings` (ConnectionSettings.secrets: the URL's, and a password
    typed into PGHOST, PGUSER or a service file's host or user)."""
    secrets = settings.secrets()
    told = _named_by(_connection_error(settings, error, secrets), named_by)
    return told.hiding(lambda text: redact(text, secrets))


def host_name_refused(
    settings: ConnectionSettings, named_by: str = "database_url"
) -> CicdDbError | None:
    """A host that is no host name to look up: psycopg resolves names itself, and
    Python's IDNA encoding refuses an empty part between dots, one over 63 characters
    or a character names may not hold (`a..b`, `.example`) with a UnicodeError, where
    psql says it cannot translate it. None when no host is such (another UnicodeError)."""
    conninfo = psycopg.conninfo.conninfo_to_dict(settings.conninfo())
    hosts = str(conninfo.get("host") or os.environ.get("PGHOST") or "").split(",")
    bad = next((host for host in hosts if not _idna(host)), None)
    if bad is None:
        return None
    told = ConfigError(
        "cannot connect: host {bad} is no host name (a part between its dots is empty or "
        "over 63 characters, or holds a character names may not); fix the host of the "
        "target " + TARGET_PARAMETERS + ", PGHOST or the service file",
        arguments=["database_url"],
        values={"bad": repr(bad)},
    )
    secrets = settings.secrets()
    return _named_by(told, named_by).hiding(lambda text: redact(text, secrets))


def _idna(host: str) -> bool:
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def _named_by(error: CicdDbError, argument: str) -> CicdDbError:
    """`error`, its fix naming `argument` where it names the target's URL."""
    if argument == "database_url" or "database_url" not in error.arguments:
        return error
    error.template = error.template.replace(TARGET_PARAMETERS, f"({{{argument}}})")
    error.template = error.template.replace("{database_url} or DATABASE_URL", f"{{{argument}}}")
    return error.renamed("database_url", argument)


def _connection_error(
    settings: ConnectionSettings, error: psycopg.Error, secrets: list[str]
) -> CicdDbError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    detail = redact(first_line, secrets)
    detail = re.sub(
        r"^(connection (failed|is bad): )?(connection to server (at|on) .*?(, port \d+)? failed: )?",
        "",
        detail,
    )
    answered = re.match(SERVER_ANSWERED, detail)
    if answered:
        login = getattr(error.pgconn, "user", None)  # the user libpq logged in as
        user = settings.user or (login.decode(errors="replace") if login else "")
        # libpq's login may come from PGUSER or a service file: `u:pw` is masked there too.
        user = redact(user, [*secrets, *user_name_secrets(user)])
        return _server_refused(settings, detail[answered.end() :].strip(), user)
    return _libpq_refused(settings, detail.strip())


def _authentication_failed(
    settings: ConnectionSettings, user: str, detail: str, fix: str
) -> CicdDbError:
    who = f"user {user!r}" if user else "the login"
    return AuthenticationFailed(
        "{where} refused {who}: {detail}; " + fix,
        arguments=["database_url"],
        values={"where": settings.where, "who": who, "detail": detail},
    )


CHECK_LOGIN = (
    "check the user and password of the target " + TARGET_PARAMETERS + ", or PGUSER, "
    "PGPASSWORD and .pgpass"
)


def _server_refused(settings: ConnectionSettings, detail: str, user: str) -> CicdDbError:
    """The server answered, and refused the connection with `detail`."""
    where = settings.where
    role = re.fullmatch(r'role "(.*)" does not exist', detail)
    if re.search(r"authentication failed for user", detail) or (
        role and (not user or role.group(1) == user)
    ):  # 28P01, 28000: the login itself
        if settings.remade_by:  # cicd-db made the role, with the password it logs in with
            return _authentication_failed(
                settings,
                user,
                detail,
                f"the role was dropped or its password changed (by a migration?); run "
                f"`{settings.remade_by}`, which gives the roles it made their passwords again",
            )
        return _authentication_failed(settings, user, detail, CHECK_LOGIN)
    if re.match(r"(no pg_hba\.conf entry|pg_hba\.conf rejects)", detail):  # 28000
        return _authentication_failed(
            settings,
            user,
            detail,
            "the server's pg_hba.conf lets no such connection in: add a line for it there "
            "(and reload the server), or connect as a user, to a database or with an "
            "sslmode a line names",
        )
    if re.match(r'role ".*" is not permitted to log in', detail):  # 28000
        return _authentication_failed(
            settings,
            user,
            detail,
            f"run `{settings.remade_by}`, which gives the roles it made LOGIN again"
            if settings.remade_by
            else "give it LOGIN (ALTER ROLE ... LOGIN), or connect as another user",
        )
    if re.match(r'database ".*" does not exist', detail):  # 3D000
        if settings.remade_by:
            return ConfigError(
                f"{where}: {detail} (dropped?); run `{settings.remade_by}`, which makes it "
                "again, empty"
            )
        return ConfigError(f"{where}: {detail}; create it, or fix the database name in the URL")
    if re.match(r"permission denied for database", detail):  # 42501
        return ConfigError(
            f"{where}: {detail}; grant it (GRANT CONNECT ON DATABASE ... TO ...), or connect "
            "as a user who has it"
        )
    if re.match(r'database ".*" is not currently accepting connections', detail):  # 55000
        return ConfigError(
            f"{where}: {detail}; allow them (ALTER DATABASE ... ALLOW_CONNECTIONS true), or "
            "connect to another database"
        )
    if role or re.match(STARTUP_OPTIONS, detail):
        # A setting the connection sent at start-up: `options`, from the URL or PGOPTIONS
        # (`-c role=nobody` names a role that is not the login), or a variable of libpq's
        # that it sends as a setting.
        variable = _setting_variable(settings, detail)
        if variable:
            return ConfigError(
                f"{where}: {detail}; fix or unset {variable}, which libpq sends as that "
                "setting when it connects"
            )
        given = settings.parameter("options") is not None
        if not given and "options" in settings.from_service():
            return ConfigError(
                f"{where}: {detail}; fix the options of service {settings.service()}"
            )
        return ConfigError(
            f"{where}: {detail}; fix the options parameter of the URL (?options=-c ...) "
            "or PGOPTIONS"
        )
    if re.match(r"unsupported startup parameter", detail):  # PgBouncer's
        return ConfigError(
            f"{where}: {detail}; a connection pooler (PgBouncer) passes on only the start-up "
            "parameters it is told to, and cicd-db sends its session's settings in options: "
            "connect to PostgreSQL itself, or add options to the pooler's "
            "ignore_startup_parameters (cicd-db then sets again what its reports need)"
        )
    if re.match(SERVER_BUSY, detail):
        return ConnectionFailed(
            f"{where} refused the connection: {detail}; it is at a connection limit: wait for "
            "connections to close, or raise the limit (the role's or database's CONNECTION "
            "LIMIT, the server's max_connections)"
        )
    if re.match(SERVER_NOT_READY, detail):
        return ConnectionFailed(
            f"cannot connect to {where}: {detail}; check that the server is up "
            "(`cicd-db migrate wait` waits until it accepts connections)"
        )
    # A refusal of another kind: said as the server said it, and tried again by `wait`.
    return ConnectionFailed(f"{where} refused the connection: {detail}")


# The environment variables libpq sends as settings in its start-up packet, by the
# setting's name in lower case (as a refusal names it: "TimeZone", "DateStyle").
SETTING_VARIABLES = {"timezone": "PGTZ", "datestyle": "PGDATESTYLE", "geqo": "PGGEQO"}


def _setting_variable(settings: ConnectionSettings, detail: str) -> str | None:
    """The variable that set the setting the server refused at start-up, when it is set
    (libpq sends it empty too, and leaves it out only when it says "default") and the
    user's options (the URL's, a service's or PGOPTIONS, as libpq picks them) do not
    name that setting too."""
    named = re.search(r'parameter "([^"]+)"', detail)
    name = named[1].lower() if named else ""
    variable = SETTING_VARIABLES.get(name)
    value = os.environ.get(variable) if variable else None
    if variable is None or value is None or value.lower() == "default":
        return None
    options = options_with("", settings.user_options(), ours_win=False)
    given = {option.lower() for option in re.findall(r"(?:-c\s*|--)([\w.]+)=", options)}
    return None if name in given else variable


def _libpq_refused(settings: ConnectionSettings, detail: str) -> CicdDbError:
    """libpq or psycopg refused the connection, or the server did not answer."""
    where = settings.where
    if "no password supplied" in detail:  # the server asked for one
        return _authentication_failed(settings, settings.user, detail, CHECK_LOGIN)
    # The server answered, and libpq refused what it saw: a configuration error, with
    # the parameters to fix and where libpq took them from (the URL or PGSSL*).
    sslmode = settings.origin("sslmode")
    if "does not match host name" in detail or "could not get server's host name" in detail:
        return ConfigError(
            f"{where}: {detail}; connect by a host name the certificate names, or change "
            f"{sslmode} (verify-full checks the host name)"
        )
    if "certificate verify failed" in detail:
        return ConfigError(
            f"{where}: {detail}; point {settings.origin('sslrootcert')} at the authority that "
            f"signed the server's certificate (PGSSLROOTCERT or ?sslrootcert=), or change {sslmode}"
        )
    if "does not support SSL" in detail:
        instead = (
            "connect with sslmode=prefer and without sslrootcert=system"
            if "sslrootcert=system" in sslmode
            else "connect with sslmode=prefer"
        )
        return ConfigError(
            f"{where}: {detail}; {sslmode} needs a server with TLS: turn ssl on in the server, "
            f"or {instead}"
        )
    if re.match(LIBPQ_PARAMETER, detail):
        return _parameter_refused(settings, f"{where}: {detail}")
    if re.match(NOT_THE_SESSION_ASKED, detail):
        # The server is up, in a role the target does not ask for: a failover may change
        # that, so it is exit 1 and `wait` keeps trying.
        return ConnectionFailed(
            f"{where} answered, but not as {settings.origin('target_session_attrs')} asks: "
            f"{detail}; connect to a server that is so (`cicd-db migrate wait` waits for a "
            "failover to make one so; a server read-only by its default_transaction_read_only "
            "stays so), or change target_session_attrs"
        )
    if detail.startswith("GSSAPI encryption required"):
        return ConfigError(
            f"{where}: {detail}; {settings.origin('gssencmode')} needs a Kerberos credential "
            "and a server that offers GSSAPI encryption: get a ticket (kinit), or connect "
            "with gssencmode=prefer or disable"
        )
    resolving = re.match(r"failed to resolve host (None|'.*'): (.*)", detail)
    if resolving and not settings.host and os.environ.get("PGHOST"):
        # psycopg resolves the host itself, and names it None when it came from PGHOST.
        if "://" in os.environ["PGHOST"]:
            return ConfigError(
                "PGHOST holds a URL (not shown), where libpq reads host names: put the URL in "
                "{database_url} or DATABASE_URL, and unset PGHOST",
                arguments=["database_url"],
            )
        detail = f"failed to resolve host {os.environ['PGHOST']!r} (from PGHOST): {resolving[2]}"
    return ConnectionFailed(
        f"cannot connect to {where}: {detail or 'no answer'}; check that the server is up "
        "(`cicd-db migrate wait`) and that host and port are right"
    )


def parameter_refused(
    settings: ConnectionSettings, detail: str, named_by: str = "database_url"
) -> CicdDbError:
    """A connection parameter libpq or psycopg refused: fixed where it came from, an
    environment variable (PGCONNECT_TIMEOUT, PGSSLMODE, ...) or the target (or
    `named_by`); nothing of it shows a secret of `settings`, as connection_error."""
    secrets = settings.secrets()
    told = _named_by(_parameter_refused(settings, detail), named_by)
    return told.hiding(lambda text: redact(text, secrets))


def _parameter_refused(settings: ConnectionSettings, detail: str) -> ConfigError:
    keywords = [
        given or found.group(1)
        for pattern, given in NAMED_KEYWORD
        if (found := re.search(pattern, detail))
    ]
    # The first named that a variable set (of two, the one the user can have meant).
    variable, keyword = next(
        ((v, k) for k in keywords if (v := settings.variable(k))),
        (None, keywords[0] if keywords else ""),
    )
    if variable:
        return ConfigError(
            "{detail}; fix " + variable + " (libpq reads " + keyword + " from it where the "
            "target " + TARGET_PARAMETERS + " names none)",
            arguments=["database_url"],
            values={"detail": detail},
        )
    if keyword and settings.parameter(keyword) is None and keyword in settings.from_service():
        return ConfigError(
            "{detail}; fix "
            + keyword
            + " in service "
            + str(settings.service())
            + " (libpq reads it from "
            "the service file where the target names none)",
            arguments=["database_url"],
            values={"detail": detail},
        )
    return ConfigError(
        "{detail}; fix that parameter of the target "
        + TARGET_PARAMETERS
        + " or of libpq's environment (PGHOST, PGPORT, PGSSLMODE, PGSERVICE, ...)",
        arguments=["database_url"],
        values={"detail": detail},
    )
