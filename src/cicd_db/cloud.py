"""What cicd-db knows of cloud PostgreSQL endpoints: which pool connections by
transaction (session state such as the runner's advisory lock does not survive them),
and the URL the prod stack may export (a user, a password, a host, a database, and an
sslmode that encrypts). Pure: reads the environment it is given."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

import psycopg.conninfo

from cicd_db.errors import ConfigError
from cicd_db.redaction import mask_credentials
from cicd_db.settings import (
    DEFAULT_PORT,
    ENCRYPTING_SSLMODES,
    SSLMODES,
    ConnectionSettings,
    from_url,
)

# Transaction poolers: session state (advisory locks, SET) does not survive them.
SUPABASE_POOLER_PORT = 6543


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
    default, prefer, would fall back to no encryption), or verify-full beside
    sslrootcert=system, which libpq refuses with any other. Other query parameters
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
    # sslrootcert=system asks for verify-full: libpq refuses it beside any other sslmode.
    system = settings.parameter("sslrootcert") == "system"
    mode = effective or ("verify-full" if system else "require")
    if system and mode != "verify-full":
        source = "the URL's sslmode" if settings.sslmode else "PGSSLMODE"
        raise ConfigError(
            f"the {what} gives sslrootcert=system with {source}, {mode}, which libpq refuses "
            "beside it; use sslmode=verify-full"
        )
    if settings.sslmode:
        return url
    # What the exported URL must mean: the URL given, as libpq reads it, with the sslmode.
    meant = {**psycopg.conninfo.conninfo_to_dict(url), "sslmode": mode}
    # The URL as given with the sslmode added (libpq has no #fragment: a `#` is text).
    # Where that reads otherwise (a raw `?` in the password, which libpq takes there, or
    # a bare `?` at the end), the URL is written again from what libpq read of it, every
    # part percent-encoded; and where that too reads otherwise, refused.
    edited = url + ("&" if "?" in url else "?") + f"sslmode={mode}"
    for candidate in (edited, replace(settings, sslmode=mode).url()):
        if _reads_as(candidate, meant):
            from_url(candidate, what=what)  # and cicd-db's reader takes it
            return candidate
    raise ConfigError(
        f"the {what} {shown!r} cannot be exported with sslmode={mode} so that it reads as "
        f"given; percent-encode the password's special characters (? as %3F, # as %23, "
        f"& as %26) and add ?sslmode={mode} yourself"
    )


def _reads_as(url: str, meant: Mapping[str, object]) -> bool:
    """True when libpq reads `url` as the keywords `meant`."""
    try:
        return psycopg.conninfo.conninfo_to_dict(url) == meant
    except psycopg.Error:
        return False
