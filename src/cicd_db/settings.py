"""The connection contract: what every target yields, parsed and checked.

Every Pulumi stack exports exactly the outputs named here, the embedded server
yields the same fields, and a `postgresql://` URL is parsed into them. `infra/`
imports these names to export them; nothing here imports Pulumi. What libpq reads
besides (its keywords, a service file, its variables) is `libpq`'s; finding the
secrets in a URL or message before it is printed is `redaction`'s; a stack's outputs
are read into settings by `stacks`.

Writes nothing; reads only what libpq would read (its environment, a service file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, unquote, urlencode

import psycopg.conninfo

from cicd_db import libpq
from cicd_db.errors import NUL, not_whole_text
from cicd_db.errors import ConfigError as ConfigError  # re-exported: the contract raises it
from cicd_db.libpq import (
    SECRET_KEYWORDS,
    is_port,
    libpq_keywords,
    misspelt_keyword,
    service_options,
    service_values,
    url_host,
)
from cicd_db.redaction import (
    host_secrets,
    mask_credentials,
    password_candidates,
    redact,
    user_name_secrets,
)

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
CONTRACT_NAMES = frozenset((*OUTPUT_NAMES, *OPTIONAL_OUTPUT_NAMES))
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
    # The command that makes this target's database and roles again, where cicd-db made
    # them (`cicd-db embedded start`): the fix a missing database or a refused login
    # names, instead of the URL, which no one gave. Not part of the URL.
    remade_by: str | None = field(default=None, repr=False, compare=False)

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
        # Set but empty is a value to libpq (psql refuses it), not "not set".
        if params.get("connect_timeout") is None and "PGCONNECT_TIMEOUT" not in os.environ:
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
        else what libpq takes from its environment (libpq.where). After connecting,
        `in_use` says where libpq went."""
        return libpq.where(self)

    def origin(self, keyword: str) -> str:
        """`keyword=value` and where libpq takes it from (libpq.origin)."""
        return libpq.origin(self, keyword)

    def variable(self, keyword: str) -> str | None:
        """The environment variable libpq takes `keyword` from (libpq.variable)."""
        return libpq.variable(self, keyword)

    def in_use(self, info: Any) -> ConnectionSettings:
        """These settings as libpq used them on a connection (`conn.info`): the one host,
        port, database, user and sslmode it chose, from the URL or its environment
        (PGHOST, PGPORT, a service file, ...); for what is printed after connecting."""
        used = info.get_parameters()
        given = dict(self.parameters)
        parameters = [(k, v) for k, v in self.parameters if k not in ("port", "hostaddr")]
        # The address of the host reached, not every host's; one from PGHOSTADDR or a service too: the
        # URL is printed for a process without this one's environment, and the host's
        # name alone may lead it to another server.
        variable = self.variable("hostaddr")
        elsewhere = bool(variable and os.environ[variable]) or bool(
            self.from_service().get("hostaddr")
        )
        if "hostaddr" in given or (elsewhere and info.hostaddr):
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
            # One port serves every host, as libpq reads `host=a,b port=5433`; in a URL
            # each host names its own (`a:5433,b` is b on the default port).
            ports = ports * max(1, len(hosts)) if len(ports) == 1 else ports
            ports += [""] * (len(hosts) - len(ports))
            # Percent-encoded: an IPv6 zone's `%`, a `?`, `#` or `/` in a name.
            netloc = ",".join(
                url_host(quote(host, safe=":")) + (f":{port}" if port else "")
                for host, port in zip(hosts, ports, strict=False)
            )
            if not hosts and any(ports):  # a port without a host: `postgresql://u@:5433/db`
                netloc = f":{','.join(ports)}"
        query = urlencode([*query_items, *parameters], quote_via=quote)
        return f"postgresql://{at}{netloc}/{quote(self.database, safe='')}" + (
            f"?{query}" if query else ""
        )

    def redacted_url(self) -> str:
        return redact(self.url(), secrets=self.secrets())

    def secrets(self) -> list[str]:
        """Every secret value these settings hold, the other roles' URLs' too, for `redact`;
        and what libpq may read besides them with a password typed in: a user name (`u:pw`)
        or a host (`u:pw@host`) from these settings, PGUSER, PGHOST, PGHOSTADDR or the
        service file, whose messages print them, and the service file's own secrets."""
        others = [self.migration_url, self.app_url, self.reader_url]
        service = self.from_service()  # nothing to read without a service
        environ = os.environ
        users = (self.user, environ.get("PGUSER"), service.get("user"))
        hosts = [self.host, self.parameter("hostaddr"), environ.get("PGHOST")]
        hosts += [environ.get("PGHOSTADDR"), service.get("host"), service.get("hostaddr")]
        return (
            [self.password]
            + [v for k, v in [*self.parameters, *service.items()] if k in SECRET_KEYWORDS]
            + [secret for user in users if user for secret in user_name_secrets(user)]
            + [secret for host in hosts if host for secret in host_secrets(host)]
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
        return (
            self if url is None else replace(from_url(url, what=output), remade_by=self.remade_by)
        )

    def for_migrations(self) -> ConnectionSettings:
        """The settings the migration runner uses: the direct endpoint when there is one."""
        if self.migration_url is None:
            return self
        return replace(
            from_url(self.migration_url, what="migration_database_url"), remade_by=self.remade_by
        )

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


URL_FORM = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"


def from_url(url: str, *, what: str = "database URL") -> ConnectionSettings:
    """Parse a `postgres://` or `postgresql://` URL into settings, every libpq keyword kept.

    Raises ConfigError naming `what` and the fix. A message shows the URL only with
    its secrets masked (and not at all when it may be nothing but a password), and
    never a value parsed out of it: in a URL whose password holds an unencoded `/`,
    `?` or `#`, libpq reads part of the password as the host, port or database.
    """
    url = url.strip()
    check_whole(url, f"the {what}")
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


def check_whole(text: str, what: str) -> None:
    """Refuse text (`what` names it: "the database URL") libpq cannot take whole. It reads a connection string as C text, up to
    its first NUL: every keyword after one (sslmode, sslrootcert, connect_timeout) would be
    dropped without a word, and a connection meant to be encrypted made in the clear. A
    lone surrogate (a JSON `\\ud800`, bytes of no encoding in a command line) has no
    UTF-8 at all. Neither the text nor where in it is shown: it may be a password."""
    found = not_whole_text(text)
    if found is not None and found[0] == NUL:
        raise ConfigError(
            f"{what} holds a NUL character, where libpq would stop reading it and drop "
            "what follows (sslmode among it); remove it"
        )
    if found is not None:
        raise ConfigError(
            f"{what} holds a character that is not text (a lone surrogate, as from a "
            "JSON \\ud800 escape or bytes of no encoding); write it in UTF-8"
        )


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
    keyword = misspelt_keyword(name)
    if keyword:
        return f"{name!r}: did you mean {keyword}?"
    return "its name is not shown: it may hold a password"


def from_mapping(params: Mapping[str, Any], *, what: str, source: str = "") -> ConnectionSettings:
    """Settings from libpq keywords (`dbname`) or contract names (`database`).

    What is missing stays missing: libpq then takes it from its environment
    (PGHOST, PGPORT, PGSSLMODE, a service file) or its defaults, as psql does.
    """
    for key, value in params.items():  # what is read of them, not other outputs
        if isinstance(value, str) and (key in CONTRACT_NAMES or key in libpq_keywords()):
            check_whole(value, f"the {key} of the {what}")
    host = str(params.get("host") or "")
    database = str(params.get("dbname") or params.get(DATABASE) or "")
    where = f" {source!r}" if source else ""
    # A socket directory is a path, where '@' and spaces are the path's (psql takes them).
    if any(
        ("@" in part or " " in part.strip()) and not part.startswith("/")
        for part in host.split(",")
    ):
        raise ConfigError(
            f"the {what}{where} has a host with '@' or a space in it: most likely a password "
            "holding such a character; percent-encode it (@ as %40, space as %20)"
        )
    raw_port = str(params.get("port") or "")
    ports = raw_port.split(",") if raw_port else []
    if not all(is_port(p) for p in ports if p) or (
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


def _query_names(url: str) -> list[str]:
    """The query's keys, percent-decoded as libpq decodes them (`%70assword` is `password`)."""
    query = url.partition("?")[2].partition("#")[0]
    return [unquote(part.partition("=")[0]) for part in query.split("&") if part]
