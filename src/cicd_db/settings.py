"""The connection contract: what every target yields, and how it is printed safely.

Every Pulumi stack exports exactly the outputs named here, the embedded server
yields the same fields, and a `postgresql://` URL is parsed into them. `infra/`
imports these names to export them; nothing here imports Pulumi.

Reads nothing and writes nothing: pure functions over strings.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from itertools import groupby
from operator import itemgetter
from typing import Any
from urllib.parse import quote, unquote, urlencode

import psycopg.conninfo
from psycopg import pq

from cicd_db.errors import ConfigError as ConfigError  # re-exported: the contract raises it

# Output names of every stack (docs/design.md, "The connection contract").
HOST = "host"
PORT = "port"
DATABASE = "database"
USER = "user"
PASSWORD = "password"  # noqa: S105 - the name of an output, not a password
SSLMODE = "sslmode"
DATABASE_URL = "database_url"
MIGRATION_DATABASE_URL = "migration_database_url"
# The writer's and the reader's URLs (docs/security.md): optional in the contract, so
# a stack deployed before them still reads; the Pulumi program always exports both.
APP_DATABASE_URL = "app_database_url"
READER_DATABASE_URL = "reader_database_url"

OUTPUT_NAMES = (HOST, PORT, DATABASE, USER, PASSWORD, SSLMODE, DATABASE_URL)
OPTIONAL_OUTPUT_NAMES = (MIGRATION_DATABASE_URL, APP_DATABASE_URL, READER_DATABASE_URL)
SECRET_OUTPUT_NAMES = frozenset(
    {PASSWORD, DATABASE_URL, MIGRATION_DATABASE_URL, APP_DATABASE_URL, READER_DATABASE_URL}
)

# The roles a part of the system connects as (docs/security.md): the owner runs the
# migrations, the app (writer) records executions, the reader reads them.
OWNER, APP, READER = "owner", "app", "reader"
ROLES = (OWNER, APP, READER)

URL_SCHEMES = ("postgres", "postgresql")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# sslmode values that actually encrypt; the prod stack requires one of them.
ENCRYPTING_SSLMODES = ("require", "verify-ca", "verify-full")
# libpq keywords the settings hold in their own fields; every other keyword a URL
# names (sslrootcert, options, application_name, ...) travels in `parameters`.
OWN_KEYWORDS = frozenset({"host", "port", "dbname", "user", "password", "sslmode"})
# libpq keywords whose values are secrets, like the password.
SECRET_KEYWORDS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)

# Seconds libpq waits for a TCP connection, so an unreachable host fails fast; only
# when neither the URL nor PGCONNECT_TIMEOUT says otherwise.
CONNECT_TIMEOUT = 5
# libpq's default port and sslmode, for what a stack exports when its URL names none.
DEFAULT_PORT = 5432
DEFAULT_SSLMODE = "prefer"

# The local database and its owner role, with the role's settings: the embedded
# server, the Docker container of the dev stack and init-local (by default) create this.
LOCAL_DATABASE = "ci_local"
LOCAL_USER = "ci_user"
# The writer (the CI system, the store) and the reader (reports): migration 0029
# grants to these names, docs/security.md says what each may do.
APP_USER = "ci_app"
READER_USER = "ci_reader"
LOCAL_ROLE_SETTINGS = (
    ("client_encoding", "utf8"),
    ("default_transaction_isolation", "read committed"),
    ("timezone", "UTC"),
)

# Transaction poolers: session state (advisory locks, SET) does not survive them.
SUPABASE_POOLER_PORT = 6543


# Parameters psycopg reads itself, from the URL or their variables but never from a
# service file: the host it resolves to an address, the timeout it waits for, the
# order it tries hosts in and whether it looks for a standby first.
_READ_BY_PSYCOPG = (
    *("host", "hostaddr", "port", "connect_timeout", "load_balance_hosts"),
    "target_session_attrs",
)


@dataclass(frozen=True)
class ConnectionSettings:
    """Where a database is and how to log in. `password` never appears in repr.

    Only what was given is set: an empty host, an empty database or user, a port
    or sslmode of None leave the choice to libpq (PGHOST, PGPORT, PGSSLMODE,
    PGDATABASE, PGUSER, a service file, its own defaults), exactly as psql would.
    `host` may name several hosts, comma-separated; their ports then travel in
    `parameters`.
    """

    host: str
    port: int | None
    database: str
    user: str
    password: str = field(default="", repr=False)
    sslmode: str | None = None
    # A direct (non-pooled) endpoint for the migration runner, when the
    # application's endpoint is a transaction pooler.
    migration_url: str | None = field(default=None, repr=False)
    # The writer's and the reader's URLs, where the target has them (docs/security.md).
    app_url: str | None = field(default=None, repr=False)
    reader_url: str | None = field(default=None, repr=False)
    # Every other libpq keyword the URL named, in its order: sslrootcert, options, ...
    parameters: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def conninfo(self, **overrides: Any) -> str:
        """A libpq connection string of what was given; `overrides` replace or add keywords.

        Nothing libpq would otherwise read from its environment is set here, but a
        connect timeout where nothing else can name one: neither the URL, nor
        PGCONNECT_TIMEOUT, nor a service file (a `service`, or PGSERVICE); and what a
        service names of the parameters psycopg reads itself (_READ_BY_PSYCOPG), which
        would otherwise take PGHOST over the service's host and wait with no timeout.
        """
        params: dict[str, Any] = {
            "host": self.host or None,
            "port": self.port,
            "dbname": self.database or None,
            "user": self.user or None,
            "password": self.password or None,
            "sslmode": self.sslmode,
            **dict(self.parameters),
        }
        # What psycopg reads before libpq (the host it resolves, its connect timeout)
        # from the service file, as libpq ranks it: below the URL, above PGHOST.
        found = self.from_service()
        for keyword in _READ_BY_PSYCOPG:
            if params.get(keyword) is None and keyword in found:
                params[keyword] = found[keyword]
        if params.get("connect_timeout") is None and not os.environ.get("PGCONNECT_TIMEOUT"):
            params["connect_timeout"] = CONNECT_TIMEOUT
        params.update(overrides)
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def parameter(self, keyword: str) -> str | None:
        """A libpq keyword the URL named besides the fields (`options`, `sslrootcert`, ...)."""
        return dict(self.parameters).get(keyword)

    def first_port(self) -> int | None:
        """The port named: the one, or the first host's of several; None if none is."""
        first = (self.parameter("port") or "").split(",")[0]
        return self.port or (int(first) if first else None)

    def user_options(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The `options` libpq would send were cicd-db to name none of its own: the URL's,
        else its service's (the URL's `service`, or PGSERVICE); None for neither, and
        then PGOPTIONS holds them (options_with reads it). cicd-db names options of its
        own, and libpq then reads neither the service's nor PGOPTIONS."""
        given = self.parameter("options")
        if given is not None:
            return given
        service = self.service(environ)
        return service_options(service) if service else None

    def service(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The service libpq reads: the URL's `service`, else PGSERVICE; None for none."""
        return self.parameter("service") or environ.get("PGSERVICE") or None

    def from_service(self) -> dict[str, str]:
        """What the service libpq reads (if any) names itself: service_values."""
        service = self.service()
        return service_values(service) if service else {}

    @property
    def where(self) -> str:
        """Where these settings point, for messages before a connection: what was given,
        else what libpq takes from its environment (PGHOST, PGPORT, PGSERVICE); no
        default is invented. Several hosts are paired with their ports, as libpq
        pairs them (one port serves every host). After connecting, `in_use` says
        where libpq went."""
        # A keyword given empty (`?host=`, `?port=`) is libpq's default, not its
        # variable's; a service's value comes before its variable's.
        service = self.service()
        found = self.from_service()

        def unnamed(keyword: str, variable: str) -> str:
            return found.get(keyword, os.environ.get(variable, ""))

        given_host = self.host or self.parameter("host")
        hosts = (given_host if given_host is not None else unnamed("host", "PGHOST")).split(",")
        if hosts == [""] and service:
            return f"service {service}"
        hosts = [_url_host(host) for host in hosts]
        # libpq connects to a host's address where one is given (hostaddr, else
        # PGHOSTADDR, which an empty hostaddr= overrides too), and psql names the host
        # beside it: `h (10.0.0.2)`; an IPv6 address in brackets, before a port.
        given = self.parameter("hostaddr")
        addresses = [
            f"[{address}]" if ":" in address else address
            for address in (unnamed("hostaddr", "PGHOSTADDR") if given is None else given).split(
                ","
            )
        ]
        if addresses != [""]:
            if hosts == [""]:
                hosts = addresses
            elif len(addresses) == len(hosts):
                hosts = [
                    host if address in ("", host) else f"{host} ({address})"
                    for host, address in zip(hosts, addresses, strict=True)
                ]
        given_port = self.port or self.parameter("port")
        ports = str(given_port if given_port is not None else unnamed("port", "PGPORT")).split(",")
        if len(ports) == 1:
            ports *= len(hosts)
        hosts = [host or "the default socket" for host in hosts]
        return ", ".join(
            f"{host}:{port}" if port else host
            for host, port in zip(hosts, ports + [""] * len(hosts), strict=False)
        )

    def origin(self, keyword: str) -> str:
        """`keyword=value` and where libpq takes it from, for a message that asks to fix
        it: the URL (or stack), its environment variable, or libpq's default."""
        given = self.sslmode if keyword == SSLMODE else self.parameter(keyword)
        if given:
            return f"{keyword}={given} (from the URL)"
        from_service = self.from_service().get(keyword)
        if from_service is not None:
            return f"{keyword}={from_service} (from service {self.service()})"
        variable = self.variable(keyword)
        if variable:
            return f"{keyword}={os.environ[variable]} (from {variable})"
        if keyword == SSLMODE and os.environ.get("PGREQUIRESSL", "").startswith("1"):
            # libpq still reads the old variable where PGSSLMODE is unset, as "1..." only.
            return "sslmode=require (from PGREQUIRESSL)"
        if (
            keyword == SSLMODE
            and (self.parameter("sslrootcert") or os.environ.get("PGSSLROOTCERT")) == "system"
        ):
            # libpq verifies the host name when asked to trust the system's authorities.
            return "sslmode=verify-full (libpq's default with sslrootcert=system)"
        definition = _definition(keyword)
        default = definition.compiled.decode() if definition and definition.compiled else ""
        return f"{keyword}={default} (libpq's default)" if default else f"no {keyword}"

    def variable(self, keyword: str) -> str | None:
        """The environment variable libpq takes `keyword` from (PGSSLMODE, PGCONNECT_TIMEOUT,
        ...), when these settings name no value and the variable is set."""
        named = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            SSLMODE: self.sslmode,
        }
        if named.get(keyword) or self.parameter(keyword):
            return None
        if keyword in self.from_service():  # libpq takes the service's
            return None
        definition = _definition(keyword)
        variable = definition.envvar.decode() if definition and definition.envvar else ""
        return variable if variable and os.environ.get(variable) else None

    def in_use(self, info: Any) -> ConnectionSettings:
        """These settings as libpq used them on a connection (`conn.info`): the one host,
        port, database, user and sslmode it chose, from the URL or its environment
        (PGHOST, PGPORT, a service file, ...); for what is printed after connecting."""
        used = info.get_parameters()
        given = dict(self.parameters)
        parameters = [(k, v) for k, v in self.parameters if k not in ("port", "hostaddr")]
        if "hostaddr" in given:  # of the host reached, not every host's
            parameters.append(("hostaddr", str(info.hostaddr)))
        return replace(
            self,
            host=str(info.host),
            port=int(info.port),
            database=str(info.dbname),
            user=str(info.user),
            sslmode=used.get("sslmode", "prefer"),
            parameters=tuple(parameters),
        )

    def url(self) -> str:
        """The `postgresql://` URL, password included: for exporting as a secret only.

        It names what was given and no more: no host, port or sslmode libpq would
        choose by itself.
        """
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        at = credentials + "@" if credentials else ""
        query_items = [("sslmode", self.sslmode)] if self.sslmode else []
        parameters = [(k, v) for k, v in self.parameters if k != "port"]
        hosts = self.host.split(",") if self.host else []
        ports = (str(self.port) if self.port else dict(self.parameters).get("port", "")).split(",")
        if any(host.startswith("/") for host in hosts):
            # Socket directories travel as ?host=, with the ports as ?port=.
            query_items += [("host", self.host)]
            if any(ports):
                query_items += [("port", ",".join(ports))]
            netloc = ""
        else:
            ports += [""] * (len(hosts) - len(ports))
            netloc = ",".join(
                _url_host(host) + (f":{port}" if port else "")
                for host, port in zip(hosts, ports, strict=False)
            )
        query = urlencode([*query_items, *parameters], quote_via=quote)
        return f"postgresql://{at}{netloc}/{quote(self.database, safe='')}" + (
            f"?{query}" if query else ""
        )

    def redacted_url(self) -> str:
        return redact(self.url(), secrets=self.secrets())

    def secrets(self) -> list[str]:
        """Every secret value these settings hold, the other roles' URLs' too, for `redact`."""
        others = [self.migration_url, self.app_url, self.reader_url]
        return (
            [self.password]
            + [v for k, v in self.parameters if k in SECRET_KEYWORDS]
            # The user name libpq takes: the given one, else PGUSER (`u:pw` there too).
            + user_name_secrets(self.user or os.environ.get("PGUSER", ""))
            + [secret for url in others for secret in password_candidates(url)]
        )

    def for_role(self, role: str) -> ConnectionSettings:
        """The settings `role` (OWNER, APP or READER) connects with.

        The owner's are these, or the direct endpoint for migrations. The app's and
        the reader's are their own URLs where the target has them; a target without
        them (one URL, DATABASE_URL) is one role, and every part uses it.
        """
        if role == OWNER:
            return self.for_migrations()
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        url, output = (
            (self.app_url, APP_DATABASE_URL)
            if role == APP
            else (self.reader_url, READER_DATABASE_URL)
        )
        return self if url is None else from_url(url, what=output)

    def for_migrations(self) -> ConnectionSettings:
        """The settings the migration runner uses: the direct endpoint when there is one."""
        if self.migration_url is None:
            return self
        return from_url(self.migration_url, what="migration_database_url")

    def outputs(self) -> dict[str, Any]:
        """The contract's outputs, keyed by their names."""
        values: dict[str, Any] = {
            HOST: self.host,
            # The contract's port is one number: libpq's default if none is named.
            PORT: self.first_port() or DEFAULT_PORT,
            DATABASE: self.database,
            USER: self.user,
            PASSWORD: self.password,
            SSLMODE: self.sslmode or DEFAULT_SSLMODE,
            DATABASE_URL: self.url(),
        }
        for name, url in (
            (MIGRATION_DATABASE_URL, self.migration_url),
            (APP_DATABASE_URL, self.app_url),
            (READER_DATABASE_URL, self.reader_url),
        ):
            if url is not None:
                values[name] = url
        return values


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


URL_FORM = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"


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
        if keyword == SSLMODE and "PGSSLMODE" not in os.environ:  # libpq: set, even empty
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
_TEXT_VARIABLES = frozenset(
    {
        *("DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"),
        *("PGOPTIONS", "PGSSLMODE", "PGSERVICE", "PGCONNECT_TIMEOUT", "PGAPPNAME"),
        *("CICD_DB_LOCAL", "CICD_DB_EMBEDDED_PORT", "PULUMI_BACKEND_URL"),
    }
)


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse, naming it, a variable of those cicd-db reads that is not UTF-8 text (Python
    would fail to pass it on, deep in a connection or a message). Reads only."""
    for name in sorted(environ):
        if name in _TEXT_VARIABLES and (where := not_utf8(environ[name])):
            raise ConfigError(f"{name} is not UTF-8 text ({where}); set it as UTF-8")


def from_url(url: str, *, what: str = "database URL") -> ConnectionSettings:
    """Parse a `postgres://` or `postgresql://` URL into settings, every libpq keyword kept.

    Raises ConfigError naming `what` and the fix. A message shows the URL only with
    its secrets masked (and not at all when it may be nothing but a password), and
    never a value parsed out of it: in a URL whose password holds an unencoded `/`,
    `?` or `#`, libpq reads part of the password as the host, port or database.
    """
    url = url.strip()
    shown = mask_credentials(url)
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in URL_SCHEMES:
        got = (
            f", got {shown!r}"
            if shown is not None
            else " (its value is not shown: it may hold a password)"
        )
        raise ConfigError(
            f"the {what} must start with postgresql:// or postgres://{got}; pass one like {URL_FORM}"
        )
    where = f" {shown!r}" if shown is not None else ""
    if _password_spills(url):
        raise ConfigError(
            f"the {what}{where} has an '@' where libpq reads the host, port or database: most "
            "likely a password (or user name) holding a raw '@' or '/'; percent-encode them "
            "there (@ as %40, / as %2F)"
        )
    # Names read from the masked text: a password with a raw `?` is no query.
    names = _query_names(shown or "")
    unknown = [(n, name) for n, name in enumerate(names, 1) if name not in libpq_keywords()]
    if unknown:
        # Not the URL: an unknown parameter may be a password put where a name goes
        # (`?pwd=...`, `?password:...`); its name only if it is a misspelt keyword.
        number, name = unknown[0]
        raise ConfigError(
            f"the {what} has a parameter libpq does not know (parameter {number} of "
            f"{len(names)}, {_unknown_name(name)}); remove it, or fix its spelling (sslmode, "
            "sslrootcert, options, application_name, ...; a password goes in "
            "postgresql://USER:PASSWORD@HOST/DATABASE)"
        )
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except UnicodeDecodeError:
        # A percent-escape that decodes to no UTF-8 (%80): libpq takes the bytes, psycopg not.
        raise ConfigError(
            f"the {what}{where} has a percent-escape that is not UTF-8 text; encode the "
            "password's or name's characters as UTF-8 before percent-encoding them"
        ) from None
    except psycopg.Error:
        raise ConfigError(
            f"the {what}{where} is malformed; check its form: {URL_FORM} "
            "(percent-encode special characters in the password: @ as %40, / as %2F, "
            "? as %3F, # as %23, % as %25, space as %20)"
        ) from None
    settings = from_mapping(params, what=what, source=shown or "")
    # Given but empty is given, for libpq (`?host=` is the default socket, not PGHOST;
    # `?options=` is no options, not PGOPTIONS): kept, to be passed on as it was.
    given_empty = [
        (key, "")
        for key, value in params.items()
        if value == "" and key in libpq_keywords() and key not in ("sslmode", "password")
    ]
    return replace(settings, parameters=(*settings.parameters, *given_empty))


def _password_spills(url: str) -> bool:
    """True when libpq would read part of what precedes the URL's last '@' as its host,
    port or database: an '@' stands after libpq's user part, before the query.

    libpq ends the user part at the first '@', unless a '/' comes first; so in
    `u:a/b@h/db` and `u:@a#b/@h/db` pieces of the password become the host, port
    or database, and connection messages would print them. Such a URL names its
    database with an '@' only in theory (percent-encoded, %40, it still can).
    """
    rest = url.partition("://")[2]
    end = re.search(r"[@/]", rest)
    if end is not None and end.group() == "@":
        rest = rest[end.end() :]
    return "@" in rest.partition("?")[0]


def _unknown_name(name: str) -> str:
    """An unknown parameter's name for a message: shown with the keyword it misspells,
    when it is that close to one; else not shown (it may hold a password)."""
    keyword = _misspelt_keyword(name)
    if keyword:
        return f"{name!r}: did you mean {keyword}?"
    return "its name is not shown: it may hold a password"


def from_mapping(params: Mapping[str, Any], *, what: str, source: str = "") -> ConnectionSettings:
    """Settings from libpq keywords (`dbname`) or contract names (`database`).

    What is missing stays missing: libpq then takes it from its environment
    (PGHOST, PGPORT, PGSSLMODE, a service file) or its defaults, as psql does.
    """
    host = str(params.get("host") or "")
    database = str(params.get("dbname") or params.get(DATABASE) or "")
    where = f" {source!r}" if source else ""
    if "@" in host or " " in host.strip():
        raise ConfigError(
            f"the {what}{where} has a host with '@' or a space in it: most likely a password "
            "holding such a character; percent-encode it (@ as %40, space as %20)"
        )
    raw_port = str(params.get("port") or "")
    ports = raw_port.split(",") if raw_port else []
    if not all(_is_port(p) for p in ports if p) or (
        len(ports) > 1 and len(ports) != len(host.split(","))
    ):
        raise ConfigError(
            f"the {what}{where} has a port that is not a number from 1 to 65535 (one per "
            "host); fix it, or percent-encode a '/', '?' or '#' in the password (%2F, %3F, %23)"
        )
    # Given but empty is libpq's error too (psql refuses `?sslmode=`), not "not given".
    sslmode = None if params.get("sslmode") is None else str(params["sslmode"])
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(
            f"the {what}{where} has an sslmode libpq does not know; use one of {', '.join(SSLMODES)}"
        )
    single_port = int(ports[0]) if len(ports) == 1 and ports[0] else None
    parameters = [
        (key, str(value))
        for key, value in params.items()
        if key in libpq_keywords() and key not in OWN_KEYWORDS and value not in (None, "")
    ]
    if len(ports) > 1:
        parameters.append(("port", raw_port))  # several hosts: their ports, in order
    return ConnectionSettings(
        host=host,
        port=single_port,
        database=database,
        user=str(params.get("user") or ""),
        password=str(params.get("password") or ""),
        sslmode=sslmode,
        migration_url=params.get(MIGRATION_DATABASE_URL) or None,
        app_url=params.get(APP_DATABASE_URL) or None,
        reader_url=params.get(READER_DATABASE_URL) or None,
        parameters=tuple(parameters),
    )


@cache
def _definition(keyword: str) -> pq.ConninfoOption | None:
    """libpq's definition of a keyword: its environment variable and compiled default."""
    return next((d for d in pq.Conninfo.get_defaults() if d.keyword.decode() == keyword), None)


@cache
def libpq_keywords() -> frozenset[str]:
    """Every connection keyword the installed libpq knows: libpq decides, not a list of ours."""
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def _query_names(url: str) -> list[str]:
    """The query's keys, percent-decoded as libpq decodes them (`%70assword` is `password`)."""
    query = url.partition("?")[2].partition("#")[0]
    return [unquote(part.partition("=")[0]) for part in query.split("&") if part]


_QUERY_KEY = re.compile(r"[?&](?P<key>[^=&?#]*)=")


def _secret_values(text: str) -> list[int]:
    """Where a secret starts in `text`'s query (keys decoded): the value of each secret
    keyword, and what follows a separator in a `user=` value (`?user=u:pw`)."""
    starts = []
    for match in _QUERY_KEY.finditer(text):
        key = unquote(match["key"]).lower()
        if key in SECRET_KEYWORDS:
            starts.append(match.end())
        elif key == "user":
            value = re.match(r"[^&#]*", text[match.end() :])
            shown, secret = _split_userinfo(value.group() if value else "")
            if secret:
                starts.append(match.end() + len(shown))
    return sorted(starts)


# A secret's value is hidden to the end of the text: one holding a raw `&` or `#`
# would otherwise show its rest as another parameter or a fragment.

# A query's parameter, wherever `?` or `&` starts one (a password may hold either:
# then more is hidden, never less).
_QUERY_PART = re.compile(r"[?&](?P<key>[^=&?#]*)(?P<value>=[^&#]*)?")


def _query_secrets(text: str) -> list[tuple[int, int]]:
    """The spans of `text` that are hidden in its query parameters: a secret keyword's
    value (and a `user=` value's part after a separator) to the end of the text; an
    unknown parameter whole (`?pwd=...`, `?password:...` may be a password), or its
    value alone when its name misspells a keyword. libpq's own, non-secret ones show."""
    spans = [(start, len(text)) for start in _secret_values(text)]
    for match in _QUERY_PART.finditer(text):
        key = unquote(match["key"], errors="replace")
        if key in libpq_keywords() or key.lower() in SECRET_KEYWORDS | {"user"}:
            continue  # shown, or hidden from where _secret_values says
        if not _misspelt_keyword(key):
            spans.append((match.start() + 1, match.end()))  # name and value
        elif match["value"]:
            spans.append((match.start("value") + 1, match.end()))  # the value alone
    return spans


def _misspelt_keyword(name: str) -> str | None:
    """The libpq keyword `name` misspells, when it is that close to one."""
    from difflib import get_close_matches  # only for messages about a bad URL

    lowered = name.lower()
    if not re.fullmatch(r"[a-z_]{1,40}", lowered) or lowered.startswith(tuple(SECRET_KEYWORDS)):
        return None  # `passwordSekr3t`: a password written after the keyword
    close = get_close_matches(lowered, sorted(libpq_keywords()), n=1, cutoff=0.8)
    # At most one character longer than the keyword: a slip, not something appended.
    return close[0] if close and len(name) <= len(close[0]) + 1 else None


# A scheme: `anything://`, or postgres(ql) with one slash too (a slash forgotten); not
# `user:/...`, where the slash may be a password's.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://+|postgres(?:ql)?:/+", re.I)


def _only_ports(rest: str) -> bool:
    """Whether what follows the first ':' of a URL without an '@' may be shown: ports
    (1 to 65535, one per host, comma-separated) up to the end of the host part. Anything
    else there may be a password that lost its '@' (`postgresql://ci:Sekr3t127.0.0.1/db`,
    `ci:00000,000000...`), and is hidden; so are the hosts after the first of a
    multi-host URL with ports and no user (`h1:5432,h2:5433`)."""
    # libpq ends the host part at a '/' or '?' only: a '#' is no fragment to it.
    authority = re.match(r"[^/?]*", rest)
    pieces = authority.group().split(",") if authority else []
    # `ci:/...`: no port at all after the ':' is what a password starting with '/' makes.
    return any(pieces) and all(piece == "" or _is_port(piece) for piece in pieces)


def _is_port(text: str) -> bool:
    """A port as the URL check takes one: 1 to 65535, at most five digits. What the check
    refuses, the masking hides (`ci:00000000001#...`, a password missing its '@')."""
    return text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536


def mask_credentials(text: str) -> str | None:
    """`text` with whatever stands where a URL's password would be masked.

    Works on text that is not a well-formed URL too (one slash, a raw `@` or space
    in the password): everything between the user name and the last `@` is hidden;
    without any `@`, whatever follows a `:` in the part after the scheme, unless it
    is a port (digits); and the query's secret and unknown parameters
    (`_query_secrets`). Where a password's `?` or `&` makes two readings possible,
    what either hides is hidden. Text without a scheme may be a password by itself,
    or one holding an `@`: then None, and the caller must not show it.
    """
    spans = _credential_spans(text)
    if spans is None:
        return None
    hidden = [False] * len(text)
    for begin, end in spans:
        _mark(hidden, begin, end)
    return _shown_with(text, hidden)


def _credential_spans(text: str) -> list[tuple[int, int]] | None:
    """The spans `mask_credentials` hides in `text`; None where it shows nothing."""
    scheme = _SCHEME.match(text)
    if scheme is None:
        return None  # no scheme: it may be a password alone, or one with an @ in it
    spans = _query_secrets(text)
    at = text.rfind("@")
    if at < 0:
        if "://" not in text:
            return None
        colon = text.find(":", scheme.end())
        # Ports (digits, one per host) that end the authority: anything else after a
        # colon may be a password missing its @, as password_candidates reads it.
        if colon >= 0 and not _only_ports(text[colon + 1 :]):
            spans.append((colon + 1, len(text)))
    else:
        start = scheme.end() if scheme.end() <= at else 0
        user, secret = _split_userinfo(text[start:at])
        if secret:
            spans.append((start + len(user), at))
    return spans


def _shown_with(text: str, hidden: list[bool]) -> str:
    """`text` with each run of its hidden characters as one "***"."""
    return "".join(
        "***" if hide else "".join(character for character, _ in run)
        for hide, run in groupby(zip(text, hidden, strict=True), key=itemgetter(1))
    )


# What ends a user name where a password may follow: the ':' of the URL's form, and
# what a slip of the finger puts there instead (`u?pw@h`, `u/pw@h`, `u;pw@h`, ...).
# Not '@': user names such as `me@server` (Azure's) are shown, up to their ':'.
_USER_SEPARATORS = frozenset(":/?#[];,!=&|\\")


def _ends_user(character: str) -> bool:
    """A character after which the rest of a user name may be a password: a separator,
    or a character that stands for one in another width (a full-width colon or at sign,
    as a keyboard in full-width mode types them). Nothing else: a role may be named
    `ci user`, `José` (decomposed or not), `O\u2019Brien` (a typographic apostrophe),
    `Col·lectiu` or `ジョン・スミス`,
    and its pieces would be hidden from every message that names it."""
    if character.isascii():
        return character in _USER_SEPARATORS
    return unicodedata.normalize("NFKC", character) in _USER_SEPARATORS | {"@"}


def _split_userinfo(userinfo: str) -> tuple[str, str]:
    """A URL's text before its last '@' as (what may be shown, what may be a password).

    The user name shows up to the first character that may separate it from a
    password, that character included; the rest may be one: with a '?' typed for
    the ':' (`prof?Sekr3t@h`) libpq reads no password, but the user meant one. A
    percent-escape of such a character counts too (`u%3Apw`: libpq decodes it into
    the user name, and prints that). Escapes of bytes that are not ASCII are read
    together, as the UTF-8 character they make (`J%C3%BCrgen` is a name, `u%EF%BC%9Apw`
    a full-width colon); bytes that make no character may be a password.
    """
    for escapes in _ESCAPED_OR_CHARACTER.finditer(userinfo):
        if escapes.group("character") is not None:
            if _ends_user(escapes.group("character")):
                return userinfo[: escapes.end()], userinfo[escapes.end() :]
            continue
        raw = bytes.fromhex(escapes.group().replace("%", ""))
        try:
            decoded = raw.decode()
        except UnicodeDecodeError:
            return userinfo[: escapes.end()], userinfo[escapes.end() :]
        # Where the first character that ends the user name ends, among the escapes.
        length = 0
        for character in decoded:
            length += len(character.encode())
            if _ends_user(character):
                end = escapes.start() + 3 * length
                return userinfo[:end], userinfo[end:]
    return userinfo, ""


# A run of percent-escapes, or one character that is not one.
_ESCAPED_OR_CHARACTER = re.compile(r"(?:%[0-9A-Fa-f]{2})+|(?P<character>.)", re.S)


def _user_name_secret(user: str) -> str:
    """What follows a separator in a user name as libpq decoded it (`u:pw` from
    `u%3Apw`): a password typed into the user name, which libpq prints in its messages."""
    for index, character in enumerate(user):
        if _ends_user(character):
            return user[index + 1 :]
    return ""


def user_name_secrets(user: str) -> list[str]:
    """What of a user name may be a password typed into it (`u:pw`), for `redact`."""
    return _pieces(_user_name_secret(user))


def _pieces(secret: str) -> list[str]:
    """A secret, decoded as libpq would print it, and its pieces between the characters
    that end a URL's parts (a password with a raw `/` or `?` is read as host or port)."""
    if not secret:
        return []
    decoded = unquote(secret, errors="replace")
    pieces = [secret, decoded]
    for text in dict.fromkeys([secret, decoded]):
        pieces += re.split(r"[@/?#:&=,\[\]\s]+", text)
    return [piece for piece in dict.fromkeys(pieces) if piece]


def password_candidates(text: str | None) -> list[str]:
    """What in `text` may be a password, for `redact`, even when `text` is no valid URL:
    the whole, and its pieces between the characters that end a URL's parts (a
    password with a raw `/` or `?` is read by libpq as host, port or database)."""
    if not text:
        return []
    text = text.strip()
    # What the query hides (a secret keyword's value, an unknown parameter), as found in
    # the text as given: a URL cut at a space, or at an '@' of its query, is no longer
    # read as having that query where the text is printed.
    secrets = [text[begin:end] for begin, end in _query_secrets(text) if begin < end]
    at = text.rfind("@")
    scheme = _SCHEME.match(text)
    if at < 0:
        if not (scheme and "://" in text):
            return [text, *secrets]
        # As mask_credentials: after a ':', a port (digits) is no password.
        secret = text[scheme.end() :].partition(":")[2]
        if _only_ports(secret):
            secret = ""
    else:
        start = scheme.end() if scheme and scheme.end() <= at else 0
        secret = _split_userinfo(text[start:at])[1]
    secrets += _pieces(secret)
    return [value for value in secrets if value]


def is_transaction_pooler(
    settings: ConnectionSettings, environ: Mapping[str, str] = os.environ
) -> bool:
    """True for endpoints known to pool by transaction: Supabase's port 6543, Neon's -pooler
    hosts; any of several hosts, and the port libpq would take from PGPORT."""
    hosts = (settings.host or environ.get("PGHOST", "")).split(",")
    ports = str(
        settings.port or settings.parameter("port") or environ.get("PGPORT") or DEFAULT_PORT
    ).split(",")
    return str(SUPABASE_POOLER_PORT) in ports or any(
        host.split(".", 1)[0].endswith("-pooler") for host in hosts
    )


def check_cloud_url(
    url: str, *, what: str, allow_insecure: bool = False, environ: Mapping[str, str] = os.environ
) -> str:
    """Validate a cloud database URL for the prod stack; returns it with `sslmode`.

    It must be postgres:// or postgresql:// with host, database, user and password:
    whoever reads the stack has no PGHOST, PGPASSWORD or service file of the
    operator's. The sslmode judged is the one libpq would use here: the URL's,
    else PGSSLMODE, else libpq's default. An explicit one (URL or PGSSLMODE) that
    does not encrypt is refused unless `allow_insecure`. The exported URL names
    the sslmode, so that whoever reads the stack connects as judged here, whatever
    their own PGSSLMODE: the URL's, else PGSSLMODE's, else require (libpq's
    default, prefer, would fall back to no encryption). Other query parameters
    (Neon's `options`, ...) are kept. Reads nothing; raises ConfigError with the fix.
    """
    url = url.strip()
    settings = from_url(url, what=what)
    shown = mask_credentials(url) or ""
    if not settings.user or not settings.password:
        raise ConfigError(
            f"the {what} {shown!r} needs a user and a password, as in "
            "postgresql://USER:PASSWORD@HOST/DATABASE"
        )
    if not settings.host or not settings.database:
        raise ConfigError(
            f"the {what} {shown!r} needs a host and a database: whoever reads the stack "
            "has no PGHOST or service file of yours; as in postgresql://USER:PASSWORD@HOST/DATABASE"
        )
    from_environment = environ.get("PGSSLMODE", "")
    if not settings.sslmode and from_environment not in ("", *SSLMODES):
        raise ConfigError(
            f"PGSSLMODE={from_environment!r} is not an sslmode; use one of {', '.join(SSLMODES)}"
        )
    effective = settings.sslmode or from_environment
    if effective and effective not in ENCRYPTING_SSLMODES and not allow_insecure:
        source = "the URL's sslmode" if settings.sslmode else "PGSSLMODE"
        raise ConfigError(
            f"the {what} would connect with {source}, {effective}, which does not encrypt; use "
            f"sslmode=require (or verify-ca, verify-full), or set cicd-db:allowInsecure true"
        )
    if not settings.sslmode:
        # Before a #fragment, which libpq would otherwise read into the database name.
        url, hash_, fragment = url.partition("#")
        url += ("&" if "?" in url else "?") + f"sslmode={effective or 'require'}" + hash_ + fragment
    return url


def _host_key(host: str) -> str:
    """A host as compared: DNS names in any case are one (a socket folder's path is not)."""
    return host if host.startswith("/") else host.lower()


def from_outputs(outputs: Mapping[str, Any], *, stack: str) -> ConnectionSettings:
    """Settings from a stack's outputs; ConfigError names the outputs that are missing."""
    missing = [name for name in OUTPUT_NAMES if outputs.get(name) in (None, "")]
    if missing:
        raise ConfigError(
            f"stack {stack!r} has no output {', '.join(missing)}; "
            f"run `pulumi up -s {stack}` so it exports the connection contract"
        )
    # Each field of its JSON type, before any is read: a 0, false, [] or {} would read as
    # "not given", and libpq would take PGHOST, PGPORT or PGPASSWORD in its place.
    for name in OUTPUT_NAMES:
        value = outputs[name]
        if name == PORT:  # a number, or its digits (a value read from Pulumi config is text)
            if not (type(value) is int and 0 < value < 65536) and not (
                isinstance(value, str) and _is_port(value)
            ):
                kind = "out of range" if type(value) is int else _json_kind(value)
                raise ConfigError(
                    f"stack {stack!r} output {PORT} is {kind}, not a port number "
                    f"from 1 to 65535; export the port as a number and run `pulumi up -s {stack}`"
                )
        elif not isinstance(value, str):
            raise ConfigError(
                f"stack {stack!r} output {name} is {_json_kind(value)}, not text; export it as "
                f"a string and run `pulumi up -s {stack}`"
            )
    settings = from_mapping(outputs, what=f"stack {stack!r} outputs")
    # The URL output carries the parameters the fields cannot (sslrootcert, options, ...).
    url = from_url(outputs[DATABASE_URL], what=f"stack {stack!r} output {DATABASE_URL}")
    for name in OPTIONAL_OUTPUT_NAMES:
        if outputs.get(name):
            if not isinstance(outputs[name], str):
                raise ConfigError(
                    f"stack {stack!r} output {name} is a {type(outputs[name]).__name__}, not a "
                    f"URL; export it as the role's postgresql:// URL and run `pulumi up -s {stack}`"
                )
            from_url(outputs[name], what=f"stack {stack!r} output {name}")  # fails now
    # The fields and the URL spell one endpoint twice. Where both name a part and differ,
    # which database a command reaches would depend on which spelling it read: refused.
    # A port or sslmode the URL leaves out is libpq's default, as the outputs write it
    # (ConnectionSettings.outputs); a host name is a DNS name, whatever its case.
    for name, given, in_url, shown in (
        (HOST, _host_key(settings.host), _host_key(url.host), (settings.host, url.host)),
        (PORT, settings.port, url.first_port() or DEFAULT_PORT, None),
        (DATABASE, settings.database, url.database, None),
        (USER, settings.user, url.user, None),
        (PASSWORD, settings.password, url.password, ()),
        (SSLMODE, settings.sslmode, url.sslmode or DEFAULT_SSLMODE, None),
    ):
        if given and in_url and given != in_url:
            pair = (given, in_url) if shown is None else shown
            # A field may hold the password (two outputs swapped): masked, as everywhere.
            values = redact(
                " ({!r} and {!r})".format(*pair) if pair else "",
                [*settings.secrets(), *url.secrets()],
            )
            raise ConfigError(
                f"stack {stack!r} outputs {name} and {DATABASE_URL} name different "
                f"{name}s{values}; export both from the same values and run "
                f"`pulumi up -s {stack}`"
            )
    return replace(settings, parameters=url.parameters)


def _json_kind(value: object) -> str:
    """What a JSON value is, in words, and never the value: it may be a password."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number" if isinstance(value, int) else "a fraction"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


# A URL in a message, to the next white space: masked as mask_credentials masks it (the
# password up to the token's last '@', so one with a raw '@' is hidden whole; a
# separator of another width; a password that lost its '@'; the query's secrets).
# Compiled when first used (re keeps them): a command that prints no URL and no error
# does not pay for them at start-up.
_URL_TOKEN = rf"(?ia)(?:{_SCHEME.pattern})\S*"  # ASCII space ends it
_KEYWORD_PASSWORD = (
    r"(?i)(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&]+)"  # noqa: S105
    # A quoted value after the word, as a tool's message or JSON quotes it: `password
    # "x"`, `"password": "x"`, `password: 'x'` (the word alone, as in "password
    # authentication failed", is left).
    r"|(?P<head2>\bpassword\b\"?\s*[:=]?\s*)(?P<quote>[\"'])(?:(?!(?P=quote))[^\\]|\\.)*(?P=quote)"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide every password in `text`: in URLs, in `password=` keywords, and any of `secrets`.

    The one function every URL or message passes through before it is printed. Each
    way of finding a password marks what it finds in the text as given, and all that
    any of them marks is hidden: one never cuts what another would have found. The
    URLs and keywords are read twice, in the text as given and with the known secrets
    taken out (a secret's space or `@` can break a URL's shape either way).
    """
    hidden = [False] * len(text)
    # Each known secret, also as a message may quote it (repr escapes backslashes and
    # controls), wherever it occurs, overlapping ones included.
    for secret in {s for s in secrets if s and len(s) >= 3}:
        for shown in dict.fromkeys([secret, repr(secret)[1:-1], secret.replace("\\", "\\\\")]):
            start = text.find(shown)
            while start >= 0:
                _mark(hidden, start, start + len(shown))
                start = text.find(shown, start + 1)
    # The text with the secrets taken out, and where each of its characters came from.
    reading, origin = [], []
    for hide, run in groupby(enumerate(hidden), key=itemgetter(1)):
        places = [index for index, _ in run]
        if hide:
            reading.append("***")
            origin += [(places[0], places[-1] + 1)] * 3
        else:
            reading.append(text[places[0] : places[-1] + 1])
            origin += [(index, index + 1) for index in places]
    for begin, end in _password_spans(text):
        _mark(hidden, begin, end)
    for begin, end in _password_spans("".join(reading)):
        for first, last in origin[begin:end]:
            _mark(hidden, first, last)
    return _shown_with(text, hidden)


def _mark(hidden: list[bool], begin: int, end: int) -> None:
    """Mark `begin` to `end` of a text hidden (`hidden` has a flag for each character)."""
    hidden[begin:end] = [True] * (end - begin)


def _password_spans(text: str) -> Iterator[tuple[int, int]]:
    """What `redact` hides in `text` of its own reading: URLs' passwords and `password=`."""
    for url in re.finditer(_URL_TOKEN, text):
        spans = _credential_spans(url.group())
        for begin, end in [(0, len(url.group()))] if spans is None else spans:
            yield url.start() + begin, url.start() + end
    for found in re.finditer(_KEYWORD_PASSWORD, text):
        if found["head"] is not None:
            yield found.span("secret")
        else:
            yield found.end("quote"), found.end() - 1  # inside the quotes
