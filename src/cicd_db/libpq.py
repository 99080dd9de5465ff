"""What libpq reads besides what cicd-db names: its keywords and their definitions, a
service file, its environment variables; and how a connection's parameters are told
apart by where libpq took them from.

libpq decides, not a list of ours: the keywords are the installed libpq's, a service is
read by libpq itself. Reads the environment and the service file; writes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import psycopg.conninfo
from psycopg import pq

from cicd_db.errors import ConfigError

if TYPE_CHECKING:
    from cicd_db.settings import ConnectionSettings

# libpq keywords whose values are secrets, like the password.
SECRET_KEYWORDS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)


@cache
def _definition(keyword: str) -> pq.ConninfoOption | None:
    """libpq's definition of a keyword: its environment variable and compiled default."""
    return next((d for d in pq.Conninfo.get_defaults() if d.keyword.decode() == keyword), None)


@cache
def libpq_keywords() -> frozenset[str]:
    """Every connection keyword the installed libpq knows: libpq decides, not a list of ours."""
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def misspelt_keyword(name: str) -> str | None:
    """The libpq keyword `name` misspells, when it is that close to one."""
    from difflib import get_close_matches  # only for messages about a bad URL

    lowered = name.lower()
    if not re.fullmatch(r"[a-z_]{1,40}", lowered) or lowered.startswith(tuple(SECRET_KEYWORDS)):
        return None  # `passwordSekr3t`: a password written after the keyword
    close = get_close_matches(lowered, sorted(libpq_keywords()), n=1, cutoff=0.8)
    # At most one character longer than the keyword: a slip, not something appended.
    return close[0] if close and len(name) <= len(close[0]) + 1 else None


def is_port(text: str) -> bool:
    """A port as the URL check takes one: 1 to 65535, at most five digits. What the check
    refuses, the masking hides (`ci:00000000001#...`, a password missing its '@')."""
    return text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536


# An integer as libpq reads one (parse_int_param): white space around it, a sign, decimal
# digits, a C int. psql refuses anything else ("invalid integer value"); psycopg reads a
# connect_timeout itself, as a float (1.5, 1e3, an Arabic-Indic 5, 99999999999).
_LIBPQ_INTEGER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*", re.ASCII)


def libpq_integer_refused(keyword: str, value: str) -> str | None:
    """libpq's own refusal of `value` as the integer `keyword` takes, or None if it
    takes it."""
    found = _LIBPQ_INTEGER.fullmatch(value)
    if found is not None and -(2**31) <= int(found.group(1)) < 2**31:
        return None
    return f'invalid integer value "{value}" for connection option "{keyword}"'


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def params_in_use(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """`conn`'s parameters as libpq used them (the URL's, a service's, the environment's
    and libpq's defaults, resolved), to open another connection like it: the host and
    port the ones it reached, so that a second connection of a multi-host target lands
    on the same server. Parameters left empty are left out."""
    params = {
        option.keyword.decode(): option.val.decode()
        for option in conn.pgconn.info
        if option.val is not None
    }
    info = conn.info
    params.update(host=info.host, port=str(info.port), hostaddr=info.hostaddr or "")
    return {keyword: value for keyword, value in params.items() if value != ""}


# Two values libpq's checks refuse once every parameter is read (the service's, the
# environment's), so that a probe stops before any name lookup or packet. A value the
# probe names hides the service's for that keyword: each probe reads the keyword the
# other names.
_STOPS = ({"target_session_attrs": "cicd-db-probe"}, {"load_balance_hosts": "cicd-db-probe"})


def _libpq_reads(service: str | None) -> dict[str, str]:
    """Every parameter libpq would connect with for `service` (None: none named) and
    nothing else named: the service file's, the environment's and its own defaults.
    Asked of libpq itself: a connection started with a value it refuses reads them all,
    then stops (libpq has no call that reads a service file alone; setting PGSERVICE to
    ask its defaults would change the environment other threads connect with). A
    service it cannot read gives nothing."""
    named = {"service": service} if service else {}
    found: dict[str, str] = {}
    for stop, other in (_STOPS, _STOPS[::-1]):
        conn = pq.PGconn.connect_start(psycopg.conninfo.make_conninfo(**named, **stop).encode())
        try:
            read = {
                option.keyword.decode(): option.val.decode(errors="replace")
                for option in conn.info
                if option.val is not None
            }
        except psycopg.Error:
            return {}
        finally:
            conn.finish()
        found |= {k: v for k, v in read.items() if k not in stop and (k in other or k not in found)}
    return found


# Parameters whose default libpq computes when it connects (the login's name, a file in
# its home, the database named after the login, what its TLS library allows): no
# variable or compiled default tells them from a service's.
_COMPUTED_DEFAULTS = ("user", "passfile", "dbname", "sslcertmode")


def service_values(service: str) -> dict[str, str]:
    """The parameters the service file names for `service`, where they differ from what
    libpq would take without it: its host, port, connect_timeout, sslmode, ... psycopg
    reads some parameters itself before libpq does (the host it resolves, the connect
    timeout it keeps, load balancing) and knows no service file, so these are passed as
    given.

    Without PGSERVICE, what libpq takes without the service is asked of libpq too, its
    derived defaults included (PGREQUIRESSL's sslmode). With PGSERVICE set, libpq would
    read that service instead, so it is worked out: the variable, else the compiled
    default, sslmode as PGREQUIRESSL or sslrootcert=system make it, and the computed
    defaults left out (a service's dbname is then not told from libpq's)."""
    found = _libpq_reads(service)
    if not os.environ.get("PGSERVICE"):
        without = _libpq_reads(None)
        return {k: v for k, v in found.items() if k != "service" and without.get(k) != v}
    values = {}
    for default in pq.Conninfo.get_defaults():
        keyword = default.keyword.decode()
        if keyword not in found or keyword in ("service", *_COMPUTED_DEFAULTS):
            continue
        variable = default.envvar.decode() if default.envvar else ""
        if variable and variable in os.environ:
            otherwise: str | None = os.environ[variable]
        else:
            otherwise = default.compiled.decode() if default.compiled is not None else None
        if keyword == "sslmode" and "PGSSLMODE" not in os.environ:  # libpq: set, even empty
            if os.environ.get("PGREQUIRESSL", "").startswith("1"):
                otherwise = "require"
            elif os.environ.get("PGSSLROOTCERT") == "system":
                otherwise = "verify-full"
        if found[keyword] != otherwise:
            values[keyword] = found[keyword]
    return values


def service_options(service: str) -> str | None:
    """The `options` libpq reads for `service` (from the service file, else PGOPTIONS),
    or None for none; a service libpq cannot read gives none here, and connecting then
    says why."""
    return _libpq_reads(service).get("options") or None


def options_with(
    ours: str, given: str | None, *, ours_win: bool, environ: Mapping[str, str] = os.environ
) -> str:
    """Session options of cicd-db's own joined with the user's: the URL's `options`, or
    else PGOPTIONS. libpq reads PGOPTIONS only when a connection names no `options`, and
    cicd-db names its own, so the user's still arrive this way (a statement_timeout,
    Neon's `endpoint=...`). The later of two settings of one name wins: the user's,
    after ours; or ours, after the user's, when `ours_win`."""
    user = (given if given is not None else environ.get("PGOPTIONS", "")).strip()
    return " ".join(filter(None, [user, ours] if ours_win else [ours, user]))


def not_utf8(text: str) -> str | None:
    """Where `text` (from the command line or the environment, which Python decodes
    with surrogateescape) holds a byte that is not UTF-8, said without the text
    itself (it may be a password); None when it is UTF-8 text."""
    for index, character in enumerate(text):
        if "\udc80" <= character <= "\udcff":
            return f"byte 0x{ord(character) - 0xDC00:02x} at character {index + 1}"
    return None


# The environment variables cicd-db itself reads as text (paths such as PGSSLROOTCERT,
# PGPASSFILE or CICD_DB_HOME may hold any bytes, and libpq reads the rest itself).
# cicd-db's own, and those libpq reads that are no connection parameter of their own.
_TEXT_VARIABLES = frozenset(
    {
        *("DATABASE_URL", "CICD_DB_LOCAL", "CICD_DB_EMBEDDED_PORT", "CICD_DB_HOME"),
        *("PULUMI_BACKEND_URL", "PGSERVICEFILE", "PGSYSCONFDIR", "PGREQUIRESSL"),
        *("PGDATESTYLE", "PGTZ", "PGGEQO", "PGLOCALEDIR"),
    }
)


@cache
def _text_variables() -> frozenset[str]:
    """Every variable cicd-db reads, or libpq does for it (each connection parameter's,
    as libpq itself lists them: PGPASSFILE, PGSSLROOTCERT, ... too)."""
    return _TEXT_VARIABLES | {
        option.envvar.decode() for option in pq.Conninfo.get_defaults() if option.envvar
    }


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse, naming it, a variable of those cicd-db reads that is not UTF-8 text (Python
    would fail to pass it on, deep in a connection or a message: a PGPASSFILE path that
    psql takes as bytes failed after the connection, as psycopg read back what libpq
    used). Reads only."""
    for name in sorted(environ):
        if name in _text_variables() and (where := not_utf8(environ[name])):
            raise ConfigError(f"{name} is not UTF-8 text ({where}); set it as UTF-8")


def where(settings: ConnectionSettings) -> str:
    """Where these settings point, for messages before a connection: what was given,
    else what libpq takes from its environment (PGHOST, PGPORT, PGSERVICE); no
    default is invented. Several hosts are paired with their ports, as libpq
    pairs them (one port serves every host). After connecting, `in_use` says
    where libpq went."""
    # A keyword given empty (`?host=`, `?port=`) is libpq's default, not its
    # variable's; a service's value comes before its variable's.
    service = settings.service()
    found = settings.from_service()

    def unnamed(keyword: str, variable: str) -> str:
        return found.get(keyword, os.environ.get(variable, ""))

    given_host = settings.host or settings.parameter("host")
    hosts = (given_host if given_host is not None else unnamed("host", "PGHOST")).split(",")
    if hosts == [""] and service:
        return f"service {service}"
    hosts = [url_host(host) for host in hosts]
    # libpq connects to a host's address where one is given (hostaddr, else
    # PGHOSTADDR, which an empty hostaddr= overrides too), and psql names the host
    # beside it: `h (10.0.0.2)`; an IPv6 address in brackets, before a port.
    given = settings.parameter("hostaddr")
    addresses = [
        f"[{address}]" if ":" in address else address
        for address in (unnamed("hostaddr", "PGHOSTADDR") if given is None else given).split(",")
    ]
    if addresses != [""]:
        if hosts == [""]:
            hosts = addresses
        elif len(addresses) == len(hosts):
            hosts = [
                host if address in ("", host) else f"{host} ({address})"
                for host, address in zip(hosts, addresses, strict=True)
            ]
    given_port = settings.port or settings.parameter("port")
    ports = str(given_port if given_port is not None else unnamed("port", "PGPORT")).split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    hosts = [host or "the default socket" for host in hosts]
    return ", ".join(
        f"{host}:{port}" if port else host
        for host, port in zip(hosts, ports + [""] * len(hosts), strict=False)
    )


def origin(settings: ConnectionSettings, keyword: str) -> str:
    """`keyword=value` and where libpq takes it from, for a message that asks to fix
    it: the URL (or stack), its environment variable, or libpq's default."""
    given = settings.sslmode if keyword == "sslmode" else settings.parameter(keyword)
    if given:
        return f"{keyword}={given} (from the URL)"
    from_service = settings.from_service().get(keyword)
    if from_service is not None:
        return f"{keyword}={from_service} (from service {settings.service()})"
    variable = settings.variable(keyword)
    if variable:
        return f"{keyword}={os.environ[variable]} (from {variable})"
    if keyword == "sslmode" and os.environ.get("PGREQUIRESSL", "").startswith("1"):
        # libpq still reads the old variable where PGSSLMODE is unset, as "1..." only.
        return "sslmode=require (from PGREQUIRESSL)"
    if (
        keyword == "sslmode"
        and (settings.parameter("sslrootcert") or os.environ.get("PGSSLROOTCERT")) == "system"
    ):
        # libpq verifies the host name when asked to trust the system's authorities.
        return "sslmode=verify-full (libpq's default with sslrootcert=system)"
    definition = _definition(keyword)
    default = definition.compiled.decode() if definition and definition.compiled else ""
    return f"{keyword}={default} (libpq's default)" if default else f"no {keyword}"


def variable(settings: ConnectionSettings, keyword: str) -> str | None:
    """The environment variable libpq takes `keyword` from (PGSSLMODE, PGCONNECT_TIMEOUT,
    ...), when these settings name no value and the variable is set (empty too: libpq
    takes an empty value as given, and refuses it where it must be a number)."""
    named = {
        "host": settings.host,
        "port": settings.port,
        "dbname": settings.database,
        "user": settings.user,
        "sslmode": settings.sslmode,
    }
    if named.get(keyword) or settings.parameter(keyword):
        return None
    if keyword in settings.from_service():  # libpq takes the service's
        return None
    definition = _definition(keyword)
    variable = definition.envvar.decode() if definition and definition.envvar else ""
    return variable if variable and variable in os.environ else None  # set, even empty
