"""The roles init-local makes, and what it refuses of them: names PostgreSQL reserves or
cuts, databases and roles that are someone else's, roles that could not log in with the
URL printed or may do more than their grants say; the writer and the reader made login
roles; the UNFINISHED mark a password nobody has seen yet carries (cicd_db.local)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError, UsageError
from cicd_db.settings import APP_USER, LOCAL_ROLE_SETTINGS, READER_USER

# PostgreSQL's own databases: every server has them, and other programs and roles rely
# on them as they are. init-local never makes one of them ci_user's, even on request.
SYSTEM_DATABASES = ("postgres", "template0", "template1")
# Role names PostgreSQL reserves (CREATE ROLE refuses public, none and pg_*), and the
# ones SQL reads as something else when written unquoted (GRANT ... TO current_user
# means whoever runs it): a role by such a name would be misread wherever it is written.
RESERVED_ROLES = ("public", "none", "current_user", "session_user", "current_role")
# A longer name is cut to this many bytes by PostgreSQL (NAMEDATALEN - 1), with only a
# NOTICE: the role or database made would not be the one asked for, nor found again.
NAME_BYTES = 63
# The comment on a role given a password nobody has seen yet (see cicd_db.local).
UNFINISHED = "cicd-db init-local: not finished; its password was never shown"


def check_login_role(admin: psycopg.Connection[Any], user: str) -> tuple[bool, bool] | None:
    """The existing writer or reader `user` checked before anything changes: refused if it
    may do more than its grants or could not log in for another reason than NOLOGIN (which
    init-local gives it); (whether it may log in, whether it is marked UNFINISHED), or
    None when there is no such role."""
    existing = admin.execute(
        "SELECT r.rolcanlogin, "
        "array_remove(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END, "
        "CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, "
        "CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, "
        "CASE WHEN r.rolreplication THEN 'REPLICATION' END, "
        "CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END], NULL), "
        "ARRAY(SELECT g.rolname FROM pg_catalog.pg_auth_members m "
        "JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) "
        ", r.rolconnlimit, r.rolvaliduntil <= now(), "
        "shobj_description(r.oid, 'pg_authid') IS NOT DISTINCT FROM %s "
        "FROM pg_catalog.pg_roles r WHERE r.rolname = %s",
        [UNFINISHED, user],
    ).fetchone()
    if existing is None:
        return None
    role = sql.Identifier(user)
    if existing[1] or existing[2]:
        refuse_more(role, user, attributes=existing[1], groups=existing[2])
    # NOLOGIN is made LOGIN here; what else would stop a login is not.
    refuse_unusable(user, False, True, existing[3], existing[4], named_by=None)
    return bool(existing[0]), bool(existing[5])


def login_role(
    admin: psycopg.Connection[Any],
    user: str,
    password: str | None,
    existing: tuple[bool, bool] | None,
) -> tuple[str, bool]:
    """Make `user` a login role that is not a superuser, given what `check_login_role`
    found of it; (its password, or "" when an existing one kept its own; whether the
    password was generated)."""
    role = sql.Identifier(user)
    # One an earlier run gave a password it never showed (UNFINISHED): made again.
    unfinished = existing is not None and existing[1]
    generated = not password and (existing is None or not existing[0] or unfinished)
    if existing is not None and not generated and not password:
        return "", False  # a login role of someone's: left exactly as it is
    if generated:
        password = secrets.token_urlsafe(24)
    if existing is None:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD {}").format(
                role, sql.Literal(password)
            )
        )
    elif password:
        log_in(admin, role, password)
    if generated or unfinished:  # marked until shown; a password given is known
        mark = sql.Literal(UNFINISHED) if generated else sql.SQL("NULL")
        admin.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(role, mark))
    settle(admin, role)
    return password or "", generated


def shown(admin: psycopg.Connection[Any], users: Sequence[str]) -> None:
    """What init() made has been shown (`show` returned, or the caller has it): the
    UNFINISHED marks of `users` go, and a later run keeps those passwords. Until then a
    rerun resets them."""
    marked = admin.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
        "AND shobj_description(oid, 'pg_authid') IS NOT DISTINCT FROM %s",
        [list(users), UNFINISHED],
    ).fetchall()
    for (user,) in marked:
        with privileges(admin.info.user, user):
            admin.execute(sql.SQL("COMMENT ON ROLE {} IS NULL").format(sql.Identifier(user)))


def refuse_more(
    role: sql.Identifier, user: str, *, attributes: list[str], groups: list[str]
) -> None:
    """ConfigError for an existing writer or reader that may do more than its grants say:
    an attribute beyond LOGIN, or a role it is a member of (the owner's, or one of
    PostgreSQL's own such as pg_write_all_data), with the statements that take it away."""
    name = role.as_string(None)
    what = " and ".join(
        part
        for part in (", ".join(attributes), groups and "membership in " + ", ".join(groups))
        if part
    )
    fixes = [f"ALTER ROLE {name} NO{' NO'.join(attributes)}"] if attributes else []
    if groups:
        members = ", ".join(sql.Identifier(g).as_string(None) for g in groups)
        fixes.append(f"REVOKE {members} FROM {name}")
    raise ConfigError(
        f"role {user!r} exists with {what}, so it could do more than its grants allow; run "
        f"`{'; '.join(fixes)}` as a superuser and run again"
    )


def log_in(admin: psycopg.Connection[Any], role: sql.Identifier, password: str) -> None:
    admin.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))


def settle(admin: psycopg.Connection[Any], role: sql.Identifier) -> None:
    """The local role's settings (LOCAL_ROLE_SETTINGS) on `role`."""
    for name, value in LOCAL_ROLE_SETTINGS:
        admin.execute(
            sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                role, sql.Identifier(name), sql.Literal(value)
            )
        )


def check_names(user: str, database: str) -> None:
    """UsageError for a `user` or `database` init-local must not take (see init())."""
    for argument, name in (("user", user), ("database", database)):
        if not name or len(name.encode()) > NAME_BYTES:
            raise UsageError(
                f"{{{argument}}} {{name}} is not a name PostgreSQL keeps as it is; give 1 to "
                f"{NAME_BYTES} bytes",
                arguments=[argument],
                values={"name": repr(name)},
            )
    if user in (APP_USER, READER_USER):
        raise UsageError(
            "{user} {name} is one of the writer and reader roles init-local prepares besides "
            "(docs/security.md); pass a role of its own, or leave {user} out (ci_user)",
            arguments=["user"],
            values={"name": repr(user)},
        )
    if user.lower() in RESERVED_ROLES or user.startswith("pg_"):
        raise UsageError(
            "{user} {name} is a role name PostgreSQL reserves or SQL reads as something else "
            "({reserved}, pg_*); pass another {user}",
            arguments=["user"],
            values={"name": repr(user), "reserved": ", ".join(RESERVED_ROLES)},
        )
    if database in SYSTEM_DATABASES:
        raise UsageError(
            "{database} {name} is one of PostgreSQL's own databases (postgres, template0, "
            "template1), which init-local never takes; pass another {database}, or leave it "
            "out (ci_local)",
            arguments=["database"],
            values={"name": repr(database)},
        )


def refuse_foreign(database: str, owner: str, user: str, *, role_exists: bool) -> None:
    """ConfigError for an existing `database` that `owner`, not `user`, owns: it stays
    theirs (init-local makes a database, it does not take one)."""
    # A role that does not exist yet could not be handed the database.
    handing = (
        ", or have its owner (or a superuser) run `ALTER DATABASE {db} OWNER TO {role}` to "
        "hand it over"
        if role_exists
        else ""
    )
    raise ConfigError(
        "database {name} exists and is owned by role {owner}, not {user_name}; init-local "
        "changes no one else's database: pass another {database} (init-local creates it)" + handing,
        arguments=["database"],
        values={
            "name": repr(database),
            "owner": repr(owner),
            "user_name": repr(user),
            "db": sql.Identifier(database).as_string(None),
            "role": sql.Identifier(user).as_string(None),
        },
    )


def refuse_unusable(
    user: str,
    superuser: bool,
    can_login: bool,
    limit: int,
    expired: bool | None,
    *,
    named_by: str | None = "user",
) -> None:
    """ConfigError naming each reason an existing role cannot be the URL's login role;
    `named_by` is the argument that names it (None: a role of a fixed name, ci_app or
    ci_reader, for which there is no other to pass)."""
    role = sql.Identifier(user).as_string(None)
    wrong = []
    if superuser:
        wrong.append(("is a superuser", "NOSUPERUSER"))
    if not can_login:
        wrong.append(("may not log in (NOLOGIN)", "LOGIN"))
    if limit == 0:
        wrong.append(("has CONNECTION LIMIT 0", "CONNECTION LIMIT -1"))
    if expired:
        wrong.append(("has a VALID UNTIL in the past", "VALID UNTIL 'infinity'"))
    if wrong:
        reasons = " and ".join(what for what, _ in wrong)
        fixes = " ".join(fix for _, fix in wrong)
        said = (
            f"role {user!r} exists but {reasons}, so the URL printed could not log in as it; "
            f"run `ALTER ROLE {role} {fixes}` as a superuser"
        )
        if named_by is None:
            raise ConfigError(said)
        raise ConfigError(
            said.replace("{", "{{").replace("}", "}}") + f", or pass another {{{named_by}}}",
            arguments=[named_by],
        )


def as_member(
    admin: psycopg.Connection[Any], statement: sql.Composed, role: sql.Identifier, superuser: bool
) -> None:
    """Run `statement`, which makes `role` a database's owner, as a member of `role`.

    PostgreSQL wants the admin to be one unless it is a superuser: 15 says "must be
    member of role", 16 and later "must be able to SET ROLE". A CREATEROLE admin may
    grant itself that (on 16 and later through the ADMIN OPTION it got by creating
    the role), and revokes it again after, so it does not keep ci_user's rights. An
    admin that already is such a member is left as it was.
    """
    try:
        admin.execute(statement)
        return
    except psycopg.errors.InsufficientPrivilege:
        if superuser:
            raise
    admin.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
    try:
        admin.execute(statement)
    finally:
        with contextlib.suppress(psycopg.Error):
            admin.execute(sql.SQL("REVOKE {} FROM CURRENT_USER").format(role))


@contextlib.contextmanager
def privileges(who: str, user: str) -> Iterator[None]:
    """The server refusing the admin something becomes one line with the fix."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as error:
        detail = (error.diag.message_primary or str(error)).strip()
        raise ConfigError(
            f"role {who} of the admin URL may not prepare role {user!r}: {detail}; use a "
            f"superuser admin URL, or one whose role has ADMIN OPTION on {user!r}"
        ) from None
