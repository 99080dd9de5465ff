"""The connection contract: what every target yields, and how it is printed safely.

Every Pulumi stack exports exactly the outputs named here, the embedded server
yields the same fields, and a `postgresql://` URL is parsed into them. `infra/`
imports these names to export them; nothing here imports Pulumi.

Reads nothing and writes nothing: pure functions over strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

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

OUTPUT_NAMES = (HOST, PORT, DATABASE, USER, PASSWORD, SSLMODE, DATABASE_URL)
OPTIONAL_OUTPUT_NAMES = (MIGRATION_DATABASE_URL,)
SECRET_OUTPUT_NAMES = frozenset({PASSWORD, DATABASE_URL, MIGRATION_DATABASE_URL})

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
    # Every other libpq keyword the URL named, in its order: sslrootcert, options, ...
    parameters: tuple[tuple[str, str], ...] = field(default=(), repr=False)

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
            **dict(self.parameters),
        }
        params.update(overrides)
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def url(self) -> str:
        """The `postgresql://` URL, password included: for exporting as a secret only."""
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        at = credentials + "@" if credentials else ""
        query = urlencode([("sslmode", self.sslmode), *self.parameters], quote_via=quote)
        return (
            f"postgresql://{at}{_url_host(self.host)}:{self.port}/{quote(self.database, safe='')}"
            f"?{query}"
        )

    def redacted_url(self) -> str:
        return redact(self.url(), secrets=self.secrets())

    def secrets(self) -> list[str]:
        """Every secret value these settings hold, for `redact`."""
        return [self.password] + [v for k, v in self.parameters if k in SECRET_KEYWORDS]

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


URL_FORM = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"


def from_url(url: str, *, what: str = "database URL") -> ConnectionSettings:
    """Parse a `postgres://` or `postgresql://` URL into settings, every libpq keyword kept.

    Raises ConfigError naming `what` and the fix. A message shows the URL only with
    its credentials masked, and not at all when it may be nothing but a password.
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
    unknown = [name for name in _query_names(url) if name not in libpq_keywords()]
    if unknown:
        raise ConfigError(
            f"the {what} {shown!r} has parameter {unknown[0]!r}, which libpq does not know; "
            "remove it, or fix its spelling (sslmode, sslrootcert, options, application_name, ...)"
        )
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise ConfigError(
            f"the {what} {shown!r} is malformed; check its form: {URL_FORM} "
            "(percent-encode special characters in the password: @ as %40, space as %20)"
        ) from None
    return from_mapping(params, what=what, source=shown or "")


def from_mapping(params: Mapping[str, Any], *, what: str, source: str = "") -> ConnectionSettings:
    """Settings from libpq keywords (`dbname`) or contract names (`database`)."""
    host = str(params.get("host") or "")
    database = str(params.get("dbname") or params.get(DATABASE) or "")
    where = f" {source!r}" if source else ""
    if not host:
        raise ConfigError(f"the {what}{where} names no host; add one, as in @HOST:5432")
    if "@" in host or " " in host.strip():
        raise ConfigError(
            f"the {what}{where} has a host with '@' or a space in it: most likely a password "
            "holding such a character; percent-encode it (@ as %40, space as %20)"
        )
    if not database:
        raise ConfigError(f"the {what}{where} names no database; add /DATABASE after the host")
    raw_port = str(params.get("port") or 5432)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ConfigError(f"the {what}{where} has port {raw_port!r}; use a number from 1 to 65535")
    sslmode = str(params.get("sslmode") or "prefer")
    if sslmode not in SSLMODES:
        raise ConfigError(
            f"the {what}{where} has sslmode={sslmode!r}; use one of {', '.join(SSLMODES)}"
        )
    return ConnectionSettings(
        host=host,
        port=int(raw_port),
        database=database,
        user=str(params.get("user") or ""),
        password=str(params.get("password") or ""),
        sslmode=sslmode,
        migration_url=params.get(MIGRATION_DATABASE_URL) or None,
        parameters=tuple(
            (key, str(value))
            for key, value in params.items()
            if key in libpq_keywords() and key not in OWN_KEYWORDS and value not in (None, "")
        ),
    )


@cache
def libpq_keywords() -> frozenset[str]:
    """Every connection keyword the installed libpq knows: libpq decides, not a list of ours."""
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def _query_names(url: str) -> list[str]:
    query = url.partition("?")[2].partition("#")[0]
    return [part.partition("=")[0] for part in query.split("&") if part]


def mask_credentials(text: str) -> str | None:
    """`text` with whatever stands where a URL's password would be masked.

    Works on text that is not a well-formed URL too (no scheme, one slash, a raw
    `@` or space in the password): everything between the user name and the last
    `@` is hidden. Text without `@` and without a scheme may be a password by
    itself: then None, and the caller must not show it.
    """
    at = text.rfind("@")
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/+", text)
    if at < 0:
        return text if scheme and "://" in text else None
    start = scheme.end() if scheme and scheme.end() <= at else 0
    user, colon, _ = text[start:at].partition(":")
    return text[:start] + user + (":***" if colon else "") + text[at:]


def password_candidates(text: str | None) -> list[str]:
    """What in `text` may be a password, for `redact`, even when `text` is no valid URL."""
    if not text:
        return []
    text = text.strip()
    at = text.rfind("@")
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/+", text)
    if at < 0:
        return [] if scheme and "://" in text else [text]
    start = scheme.end() if scheme and scheme.end() <= at else 0
    secret = text[start:at].partition(":")[2]
    return [secret, *secret.split("@")] if secret else []


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
    settings = from_mapping(outputs, what=f"stack {stack!r} outputs")
    # The URL output carries the parameters the fields cannot (sslrootcert, options, ...).
    url = from_url(str(outputs[DATABASE_URL]), what=f"stack {stack!r} output {DATABASE_URL}")
    return replace(settings, parameters=url.parameters)


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
