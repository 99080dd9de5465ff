"""The local database on a server you installed: `ci_local`, owned by `ci_user`.

What one would otherwise do by hand in psql on a server from Homebrew, apt or the
Windows installer, done once and safely again: a login role that is not a
superuser, with its role settings (`client_encoding`, `default_transaction_isolation`,
`timezone`: settings.LOCAL_ROLE_SETTINGS), and a database it owns, as the embedded
server and the dev stack's container have them. Writes to the server it is given.

A role that init() gives a password it made (ci_user created, ci_app and ci_reader
created or made to log in) carries a comment (UNFINISHED) until the command has shown
what it made (`shown()`): a run that could not finish (killed, its connection lost, its
output not written) leaves a role whose password nobody saw, and the comment lets the
next run know it, and reset the password so that the URL it prints logs in, instead of
keeping one that no one knows.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError, UsageError
from cicd_db.local import roles
from cicd_db.settings import (
    APP_USER,
    LOCAL_DATABASE,
    LOCAL_USER,
    READER_USER,
    ConnectionSettings,
)

INIT_LOCK_KEY = 0x6369_6364_2D69_6E  # "cicd-in": one init-local at a time


@dataclass(frozen=True)
class Prepared:
    """What init() left: the settings to connect with, and what it had to do."""

    settings: ConnectionSettings  # the password is empty when an existing role kept its own
    created_role: bool
    created_database: bool
    password_set: bool
    # An earlier run made the role and stopped before it finished: its password,
    # never shown, was replaced.
    password_reset: bool = False
    # The writer and the reader (docs/security.md), on the same database; a password
    # is empty when an existing login role kept its own.
    app: ConnectionSettings | None = None
    reader: ConnectionSettings | None = None
    # Which of them got a password nobody gave (a new role, or one 0029 made NOLOGIN).
    generated: tuple[str, ...] = ()


# What the new roles' URLs keep of the admin URL's parameters: where the server is and
# how it is reached and trusted. Not the admin's identity or session (sslcert, sslkey,
# sslpassword, passfile, options, application_name, a service naming its user): the
# URLs init-local prints are other roles' logins, and --show-password prints them whole.
SERVER_KEYWORDS = frozenset(
    {
        *("host", "hostaddr", "port", "connect_timeout", "target_session_attrs"),
        *("load_balance_hosts", "keepalives", "keepalives_idle", "keepalives_interval"),
        *("keepalives_count", "tcp_user_timeout", "sslrootcert", "sslcrl", "sslcrldir"),
        *("sslnegotiation", "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version"),
        *("requirepeer", "channel_binding", "gssencmode", "krbsrvname", "gsslib"),
    }
)


def _server_parameters(server: ConnectionSettings) -> tuple[tuple[str, str], ...]:
    """The admin URL's SERVER_KEYWORDS, and its service's (a service names them for
    the admin's URL, and the printed URLs name no service): host and port are the
    fields, as libpq used them."""
    given = {k: v for k, v in server.parameters if k in SERVER_KEYWORDS}
    found = server.from_service()
    from_service = {
        k: v
        for k, v in found.items()
        if k in SERVER_KEYWORDS and k not in ("host", "hostaddr", "port") and k not in given
    }
    return tuple({**from_service, **given}.items())


def init(
    admin: psycopg.Connection[Any],
    server: ConnectionSettings,
    password: str | None,
    *,
    user: str = LOCAL_USER,
    database: str = LOCAL_DATABASE,
    app_password: str | None = None,
    reader_password: str | None = None,
    show: Callable[[Prepared], object] | None = None,
) -> Prepared:
    """Create or complete `user` and `database` (ci_user, ci_local) through `admin`, a
    connection with the rights, on the server `server` describes.

    An existing `database` must be `user`'s already (one an earlier run made): one
    another role owns, and PostgreSQL's own (postgres, template0, template1), are
    refused before anything changes, as `createdb` refuses an existing name; init-local
    never hands a database to a new owner. So is a `user` that is not a role of its own
    to manage: the writer or the reader (below), the admin's own role, a name
    PostgreSQL reserves or SQL misreads (RESERVED_ROLES, pg_*).

    A new role gets `password`, or a generated one; an existing role keeps its
    own unless `password` is given. Refuses, before changing anything, when the
    admin role may not create roles and databases, and when an existing role could
    not log in with the URL printed (a superuser, NOLOGIN, CONNECTION LIMIT 0, an
    expired VALID UNTIL): those are someone's choices, named with the fix, never
    changed behind their back. A role this call created is dropped again when a
    later step fails, so a rerun starts clean and no password is lost unseen.

    Then the writer `ci_app` and the reader `ci_reader` (docs/security.md), in one
    transaction: each new one, or one that may not log in (migration 0029 makes them
    NOLOGIN where they were missing), gets LOGIN and its password, given or
    generated; an existing login role is left as it is unless a password is given. Their
    privileges are the migrations' grants, made by `cicd-db migrate`.

    One init-local at a time (an advisory lock on the admin connection): two at once
    would each take the role the other is still making for one a stopped run left, and
    set its password again under it. An advisory lock is its database's: two runs whose
    admin URLs name different databases of one server are not kept apart (name the same
    one, `postgres`, as the README does).
    """
    roles.check_names(user, database)
    with _one_at_a_time(admin):
        superuser, who = _admin_rights(admin, user)
        # The writer and the reader checked before anything changes (made below).
        found = {}
        for login in (APP_USER, READER_USER):
            with roles.privileges(who, login):
                found[login] = roles.check_login_role(admin, login)
        existing = admin.execute(
            "SELECT rolsuper, rolcanlogin, rolconnlimit, rolvaliduntil <= now(), "
            "shobj_description(oid, 'pg_authid') IS NOT DISTINCT FROM %s FROM pg_roles "
            "WHERE rolname = %s",
            [roles.UNFINISHED, user],
        ).fetchone()
        if existing is not None:
            roles.refuse_unusable(user, *existing[:4])
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
        if owner is not None and owner[0] != user:
            roles.refuse_foreign(database, str(owner[0]), user, role_exists=existing is not None)
        created_role = existing is None
        # Ours, from a run that stopped before it finished: its password was never shown.
        unfinished = existing is not None and bool(existing[4])
        password = _make_owner(
            admin,
            user,
            database,
            password,
            who=who,
            superuser=superuser,
            create_role=created_role,
            unfinished=unfinished,
            create_database=owner is None,
        )
        settings = replace(
            server,
            database=database,
            user=user,
            password=password or "",
            migration_url=None,
            parameters=_server_parameters(server),
        )
        with roles.privileges(who, APP_USER), admin.transaction():
            app, app_generated = roles.login_role(admin, APP_USER, app_password, found[APP_USER])
            reader, reader_generated = roles.login_role(
                admin, READER_USER, reader_password, found[READER_USER]
            )
        prepared = Prepared(
            settings,
            created_role,
            owner is None,
            bool(password),
            unfinished,
            app=replace(settings, user=APP_USER, password=app),
            reader=replace(settings, user=READER_USER, password=reader),
            generated=tuple(
                name
                for name, made in ((APP_USER, app_generated), (READER_USER, reader_generated))
                if made
            ),
        )
        if show is not None:
            show(prepared)  # under the lock: no other run resets what it shows meanwhile
        roles.shown(admin, (prepared.settings.user, APP_USER, READER_USER))
        return prepared


def _admin_rights(admin: psycopg.Connection[Any], user: str) -> tuple[bool, str]:
    """Whether the admin role is a superuser, and its name; refused when it may not
    create roles and databases, or when it is `user` itself."""
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
    if user == row[3]:
        raise UsageError(
            "{user} {name} is the admin URL's own role; init-local would set its password "
            "and settings: pass another {user}, or leave it out (ci_user)",
            arguments=["user"],
            values={"name": repr(user)},
        )
    return bool(row[0]), str(row[3])


def _make_owner(
    admin: psycopg.Connection[Any],
    user: str,
    database: str,
    password: str | None,
    *,
    who: str,
    superuser: bool,
    create_role: bool,
    unfinished: bool,
    create_database: bool,
) -> str | None:
    """The owner role `user` (made, or given a password where asked or left unfinished)
    and its `database` (made where missing), as `init` says; the password it logs in
    with, None when an existing role keeps its own."""
    role = sql.Identifier(user)
    made = False  # this run's CREATE ROLE committed: only then is the role ours to drop
    given = password is not None  # one the caller knows: no mark needed until shown
    try:
        with roles.privileges(who, user):
            if create_role:
                password = password or secrets.token_urlsafe(24)
                with admin.transaction():  # never a role without the comment
                    admin.execute(
                        sql.SQL(
                            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD {}"
                        ).format(role, sql.Literal(password))
                    )
                    admin.execute(
                        sql.SQL("COMMENT ON ROLE {} IS {}").format(
                            role, sql.Literal(roles.UNFINISHED)
                        )
                    )
                made = True
            elif unfinished or password:
                password = password or secrets.token_urlsafe(24)
                roles.log_in(admin, role, password)
            roles.settle(admin, role)
            if create_database:
                roles.as_member(
                    admin,
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), role),
                    role,
                    superuser,
                )
            if (
                unfinished
                and admin.execute(
                    "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                    "JOIN pg_roles a ON a.oid = m.member WHERE r.rolname = %s "
                    "AND a.rolname = current_user AND m.grantor = m.member",
                    [user],
                ).fetchone()
            ):
                # The membership roles.as_member grants for one statement, left by the run
                # cut off in it: the admin is not meant to keep ci_user's rights.
                admin.execute(sql.SQL("REVOKE {} FROM CURRENT_USER").format(role))
            if (create_role or unfinished) and given:
                admin.execute(sql.SQL("COMMENT ON ROLE {} IS NULL").format(role))
    except BaseException as error:
        if made:
            # Its password was never shown: a rerun must not find a role nobody can use.
            with contextlib.suppress(psycopg.Error):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        if isinstance(
            error,
            psycopg.errors.DuplicateObject
            | psycopg.errors.DuplicateDatabase
            | psycopg.errors.UniqueViolation,
        ):
            # Someone made the role or database between our look and our CREATE.
            raise ConfigError(
                f"another init-local created role {user!r} or database {database!r} at the "
                "same time; run again once it has finished"
            ) from None
        raise
    return password


@contextlib.contextmanager
def _one_at_a_time(admin: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold init-local's advisory lock on `admin` (a session lock: it outlives the
    transactions in between)."""
    admin.execute("SELECT pg_catalog.pg_advisory_lock(%s)", [INIT_LOCK_KEY])
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            admin.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", [INIT_LOCK_KEY])
