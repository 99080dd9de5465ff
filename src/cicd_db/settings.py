"""The connection contract: what every target yields, and how it is printed safely.

Every Pulumi stack exports exactly the outputs named here, the embedded server
yields the same fields, and a `postgresql://` URL is parsed into them. `infra/`
imports these names to export them; nothing here imports Pulumi.

Reads nothing and writes nothing: pure functions over strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg.conninfo

from cicd_db.errors import ConfigError as ConfigError  # re-exported: the contract raises it

# Output names of every stack (DESIGN.md, "The connection contract").
HOST = "host"
PORT = "port"
DATABASE = "database"
USER = "user"
PASSWORD = "password"  # noqa: S105 - the name of an output, not a password
SSLMODE = "sslmode"
DATABASE_URL = "database_url"
MIGRATION_DATABASE_URL = "migration_database_url"

OUTPUT_NAMES = (HOST, PORT, DATABASE, USER, PASSWORD, SSLMODE, DATABASE_URL)
OPTIONAL_OUTPUT_NAMES = (MIGRATION_DATABASE_URL,)
SECRET_OUTPUT_NAMES = frozenset({PASSWORD, DATABASE_URL, MIGRATION_DATABASE_URL})

URL_SCHEMES = ("postgres", "postgresql")
# sslmode values that actually encrypt; the prod stack requires one of them.
ENCRYPTING_SSLMODES = ("require", "verify-ca", "verify-full")

# Seconds libpq waits for a TCP connection, so an unreachable host fails fast.
CONNECT_TIMEOUT = 5

# The local database of the plan's phase 1, step 2: the embedded server and the
# Docker container of the dev stack both create exactly this.
LOCAL_DATABASE = "ci_local"
LOCAL_USER = "ci_user"
LOCAL_ROLE_SETTINGS = (
    ("client_encoding", "utf8"),
    ("default_transaction_isolation", "read committed"),
    ("timezone", "UTC"),
)

# Transaction poolers: session state (advisory locks, SET) does not survive them.
SUPABASE_POOLER_PORT = 6543


@dataclass(frozen=True)
class ConnectionSettings:
    """Where a database is and how to log in. `password` never appears in repr."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(default="", repr=False)
    sslmode: str = "prefer"
    # A direct (non-pooled) endpoint for the migration runner, when the
    # application's endpoint is a transaction pooler.
    migration_url: str | None = field(default=None, repr=False)

    def conninfo(self, **overrides: Any) -> str:
        """A libpq connection string; `overrides` replace or add keywords."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user or None,
            "password": self.password or None,
            "sslmode": self.sslmode,
            "connect_timeout": CONNECT_TIMEOUT,
        }
        params.update(overrides)
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def url(self) -> str:
        """The `postgresql://` URL, password included: for exporting as a secret only."""
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        at = credentials + "@" if credentials else ""
        return (
            f"postgresql://{at}{_url_host(self.host)}:{self.port}/{quote(self.database, safe='')}"
            f"?sslmode={self.sslmode}"
        )

    def redacted_url(self) -> str:
        return redact(self.url(), secrets=[self.password])

    def for_migrations(self) -> ConnectionSettings:
        """The settings the migration runner uses: the direct endpoint when there is one."""
        if self.migration_url is None:
            return self
        return from_url(self.migration_url, what="migration_database_url")

    def outputs(self) -> dict[str, Any]:
        """The contract's outputs, keyed by their names."""
        values: dict[str, Any] = {
            HOST: self.host,
            PORT: self.port,
            DATABASE: self.database,
            USER: self.user,
            PASSWORD: self.password,
            SSLMODE: self.sslmode,
            DATABASE_URL: self.url(),
        }
        if self.migration_url is not None:
            values[MIGRATION_DATABASE_URL] = self.migration_url
        return values


def _url_host(host: str) -> str:
    if host.startswith("/"):
        return ""  # a socket directory travels as ?host=, which we never build
    return f"[{host}]" if ":" in host else host


def from_url(url: str, *, what: str = "database URL") -> ConnectionSettings:
    """Parse a `postgres://` or `postgresql://` URL into settings.

    Raises ConfigError naming `what` and the fix; the message never holds the password.
    """
    url = url.strip()
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in URL_SCHEMES:
        raise ConfigError(
            f"the {what} must start with postgresql:// or postgres://, "
            f"got {redact(url)!r}; pass one like postgresql://USER:PASSWORD@HOST:5432/DATABASE"
        )
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise ConfigError(
            f"the {what} {redact(url)!r} is malformed; "
            "check its form: postgresql://USER:PASSWORD@HOST:5432/DATABASE "
            "(percent-encode special characters in the password)"
        ) from None
    return from_mapping(params, what=what, source=redact(url))


def from_mapping(params: Mapping[str, Any], *, what: str, source: str = "") -> ConnectionSettings:
    """Settings from libpq keywords (`dbname`) or contract names (`database`)."""
    host = str(params.get("host") or "")
    database = str(params.get("dbname") or params.get(DATABASE) or "")
    where = f" {source!r}" if source else ""
    if not host:
        raise ConfigError(f"the {what}{where} names no host; add one, as in @HOST:5432")
    if not database:
        raise ConfigError(f"the {what}{where} names no database; add /DATABASE after the host")
    raw_port = str(params.get("port") or 5432)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ConfigError(f"the {what}{where} has port {raw_port!r}; use a number from 1 to 65535")
    return ConnectionSettings(
        host=host,
        port=int(raw_port),
        database=database,
        user=str(params.get("user") or ""),
        password=str(params.get("password") or ""),
        sslmode=str(params.get("sslmode") or "prefer"),
        migration_url=params.get(MIGRATION_DATABASE_URL) or None,
    )


def is_transaction_pooler(settings: ConnectionSettings) -> bool:
    """True for endpoints known to pool by transaction: Supabase's port 6543, Neon's -pooler hosts."""
    first_label = settings.host.split(".", 1)[0]
    return settings.port == SUPABASE_POOLER_PORT or first_label.endswith("-pooler")


def check_cloud_url(url: str, *, what: str, allow_insecure: bool = False) -> str:
    """Validate a cloud database URL for the prod stack; returns it with `sslmode`.

    It must be postgres:// or postgresql:// with host, database, user and password.
    A missing sslmode becomes `require`; a weaker one is refused unless
    `allow_insecure`. Other query parameters (Neon's `options`, ...) are kept.
    Reads nothing; raises ConfigError with the fix.
    """
    settings = from_url(url, what=what)
    if not settings.user or not settings.password:
        raise ConfigError(
            f"the {what} {redact(url)!r} needs a user and a password, as in "
            "postgresql://USER:PASSWORD@HOST/DATABASE"
        )
    sslmode_given = "sslmode=" in url.partition("?")[2]
    if not sslmode_given:
        url += ("&" if "?" in url else "?") + "sslmode=require"
    elif settings.sslmode not in ENCRYPTING_SSLMODES and not allow_insecure:
        raise ConfigError(
            f"the {what} has sslmode={settings.sslmode}, which does not encrypt; use "
            f"sslmode=require (or verify-ca, verify-full), or set cicd-db:allowInsecure true"
        )
    return url


def from_outputs(outputs: Mapping[str, Any], *, stack: str) -> ConnectionSettings:
    """Settings from a stack's outputs; ConfigError names the outputs that are missing."""
    missing = [name for name in OUTPUT_NAMES if outputs.get(name) in (None, "")]
    if missing:
        raise ConfigError(
            f"stack {stack!r} has no output {', '.join(missing)}; "
            f"run `pulumi up -s {stack}` so it exports the connection contract"
        )
    return from_mapping(outputs, what=f"stack {stack!r} outputs")


# Greedy up to the last "@" of the token: a password with a raw "@" is still hidden whole.
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>\S*)(?P<tail>@)", re.I
)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&]+)(?P<tail>)", re.I
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide every password in `text`: in URLs, in `password=` keywords, and any of `secrets`.

    The one function every URL or message passes through before it is printed.
    """
    for pattern in (_URL_PASSWORD, _KEYWORD_PASSWORD):
        text = pattern.sub(r"\g<head>***\g<tail>", text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text
