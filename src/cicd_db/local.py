"""The plan's local database on a server you installed: `ci_local`, owned by `ci_user`.

What the plan's phase 1 does by hand in psql (Homebrew, apt, the Windows
installer), done once and safely again: a login role that is not a superuser,
with the plan's role settings (`client_encoding`, `default_transaction_isolation`,
`timezone`), and a database it owns. Writes to the server it is given.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError
from cicd_db.settings import LOCAL_DATABASE, LOCAL_ROLE_SETTINGS, LOCAL_USER, ConnectionSettings


@dataclass(frozen=True)
class Prepared:
    """What init() left: the settings to connect with, and what it had to do."""

    settings: ConnectionSettings  # the password is empty when an existing role kept its own
    created_role: bool
    created_database: bool
    password_set: bool


def init(
    admin: psycopg.Connection[Any],
    server: ConnectionSettings,
    password: str | None,
    *,
    user: str = LOCAL_USER,
    database: str = LOCAL_DATABASE,
) -> Prepared:
    """Create or complete `user` and `database` (ci_user, ci_local) through `admin`, a
    connection with the rights, on the server `server` describes.

    A new role gets `password`, or a generated one; an existing role keeps its
    own unless `password` is given. Refuses, before changing anything, when the
    admin role may not create roles and databases.
    """
    row = admin.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, current_user FROM pg_roles "
        "WHERE rolname = current_user"
    ).fetchone()
    if row is None or not (row[0] or (row[1] and row[2])):
        who = row[3] if row else "the admin role"
        raise ConfigError(
            f"role {who} of the admin URL may not create roles and databases; use a superuser "
            "(the installer's postgres) or a role with CREATEROLE and CREATEDB"
        )
    role = sql.Identifier(user)
    created_role = (
        admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]).fetchone() is None
    )
    if created_role:
        password = password or secrets.token_urlsafe(24)
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD {}").format(
                role, sql.Literal(password)
            )
        )
    elif password:
        admin.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password))
        )
    for name, value in LOCAL_ROLE_SETTINGS:
        admin.execute(
            sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                role, sql.Identifier(name), sql.Literal(value)
            )
        )
    owner = admin.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [database]
    ).fetchone()
    if owner is None:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), role))
    elif owner[0] != user:
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), role)
        )
    settings = replace(
        server,
        database=database,
        user=user,
        password=password or "",
        migration_url=None,
    )
    return Prepared(settings, created_role, owner is None, bool(password))
