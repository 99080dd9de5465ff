"""`cicd-db init-local` on a real server: the admins its help offers, reruns, and roles
that exist already."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cicd_db.commands import local as commands_local
from cicd_db.errors import ConfigError
from cicd_db.settings import APP_USER, READER_USER, ConnectionSettings, from_url

from .fix_cli import run_cli, start_cli
from .fix_db import SERVER_ROLES
from .utils import socket_folder, use_service_file


@dataclass(frozen=True)
class Names:
    admin: str
    user: str
    database: str


pytestmark = SERVER_ROLES


@pytest.fixture
def names(server: ConnectionSettings) -> Iterator[Names]:
    tag = uuid.uuid4().hex[:8]
    made = Names(f"admin_{tag}", f"ci_user_{tag}", f"ci_local_{tag}")
    yield made
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(made.database))
        )
        for role in (made.user, made.admin):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(autouse=True)
def writer_and_reader(server: ConnectionSettings, server_roles: None) -> None:
    """ci_app and ci_reader as login roles, which init-local leaves as they are: the
    tests of ci_user see no step of theirs; the tests of theirs below set what they need.
    Under the lock of the server's roles (`server_roles`, asked for here: an autouse
    fixture is set up before the module's SERVER_ROLES mark, so it changed the roles
    while another module's test held the lock and logged in as them)."""
    for role in (APP_USER, READER_USER):
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            verb = (
                "ALTER"
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
                else "CREATE"
            )
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD 'role-Pass-0'").format(sql.Identifier(role))
            )


def superuser(server: ConnectionSettings, statement: str, *roles: str) -> None:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(*map(sql.Identifier, roles)))


def init_local(server: ConnectionSettings, admin: ConnectionSettings, names: Names, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(
        "init-local",
        "--admin-url",
        admin.url(),
        "--user",
        names.user,
        "--database",
        names.database,
        *extra,
    )


def logs_in(server: ConnectionSettings, names: Names, password: str) -> bool:
    as_user = replace(server, user=names.user, password=password, database=names.database)
    with psycopg.connect(as_user.conninfo()) as conn:
        row = conn.execute(
            "SELECT current_user, pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname = current_database()"
        ).fetchone()
    return row == (names.user, names.user)


@pytest.mark.db
def memberships_left(server: ConnectionSettings, names: Names) -> int:
    """Memberships the admin granted itself in the role and did not give back."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles a ON a.oid = m.member WHERE r.rolname = %s AND a.rolname = %s "
            "AND m.grantor = a.oid",
            [names.user, names.admin],
        ).fetchone()
    return int(row[0]) if row else -1


def test_an_admin_with_createrole_and_createdb_is_enough(
    server: ConnectionSettings, names: Names
) -> None:
    """What --admin-url's help offers works on 15 ("must be member of role") and on 16 and
    later ("must be able to SET ROLE"), twice, and the admin keeps no membership."""
    superuser(
        server, "CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'admin-Pass-1'", names.admin
    )
    admin = replace(server, user=names.admin, password="admin-Pass-1")
    first = init_local(server, admin, names, "--password", "user-Pass-1")
    assert (first.code, first.err) == (0, ""), first.err
    assert (
        first.out.splitlines()[0] == f"role {names.user} created; database {names.database} created"
    )
    assert logs_in(server, names, "user-Pass-1")
    again = init_local(server, admin, names)
    assert (again.code, again.err) == (0, ""), again.err
    assert again.out.splitlines()[0] == (
        f"role {names.user} kept; its password unchanged; database {names.database} kept"
    )
    assert memberships_left(server, names) == 0


@pytest.mark.db
def test_a_failed_run_leaves_no_role_with_an_unseen_password(
    server: ConnectionSettings, names: Names
) -> None:
    """A step after CREATE ROLE fails (here: CREATE DATABASE meets a lock timeout, its
    template held by another session): the role it made is gone, and a rerun once the
    cause is gone works."""
    superuser(
        server, "CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'admin-Pass-1'", names.admin
    )
    superuser(server, "ALTER ROLE {} SET lock_timeout = '200ms'", names.admin)
    admin = replace(server, user=names.admin, password="admin-Pass-1")
    with psycopg.connect(server.conninfo(), autocommit=True) as holder:
        holder.execute("BEGIN")
        # CREATE DATABASE takes a SHARE lock on its template: this makes it wait.
        holder.execute("COMMENT ON DATABASE template1 IS NULL")
        failed = init_local(server, admin, names)
        holder.execute("ROLLBACK")
    assert (failed.code, failed.out) == (1, "")
    assert failed.err.startswith("error: database error: canceling statement due to lock timeout")
    assert failed.err.count("\n") == 1
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [names.user]).fetchone()
            is None
        )
    done = init_local(server, admin, names, "--password", "user-Pass-2")
    assert (done.code, done.err) == (0, ""), done.err
    assert logs_in(server, names, "user-Pass-2")


def owner_of(server: ConnectionSettings, database: str) -> str:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
    assert row is not None, database
    return str(row[0])


def database_exists(server: ConnectionSettings, database: str) -> bool:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        return found.fetchone() == (1,)


def role_exists(server: ConnectionSettings, role: str) -> bool:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() == (1,)


@pytest.fixture
def someones(server: ConnectionSettings, names: Names) -> Iterator[str]:
    """A database of that name, owned by a role of that name: someone else's."""
    other = f"someone_{names.user}"
    superuser(server, "CREATE ROLE {} LOGIN PASSWORD 'their-Pass-1'", other)
    superuser(server, "CREATE DATABASE {} OWNER {}", other, other)
    yield other
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other))
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(other)))


@pytest.mark.db
def test_a_database_another_role_owns_is_refused_and_stays_theirs(
    server: ConnectionSettings, names: Names, someones: str
) -> None:
    """As `createdb` refuses a name that is taken: init-local never hands someone's
    database to its role (it did, with ALTER DATABASE ... OWNER TO); it says whose it is,
    and how it could be handed over once the role exists."""
    theirs = Names(names.admin, names.user, someones)
    refused = init_local(server, server, theirs)
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"error: database {someones!r} exists and is owned by role {someones!r}, not "
        f"{names.user!r}; init-local changes no one else's database: pass another --database "
        "(init-local creates it)\n"
    )
    assert owner_of(server, someones) == someones
    assert not role_exists(server, names.user)  # refused before anything was made

    made = init_local(server, server, names, "--password", "user-Pass-1")
    assert made.code == 0, made.err
    again = init_local(server, server, theirs)
    assert (again.code, again.out) == (2, "")
    assert again.err == (
        f"error: database {someones!r} exists and is owned by role {someones!r}, not "
        f"{names.user!r}; init-local changes no one else's database: pass another --database "
        f"(init-local creates it), or have its owner (or a superuser) run `ALTER DATABASE "
        f'"{someones}" OWNER TO "{names.user}"` to hand it over\n'
    )
    assert owner_of(server, someones) == someones
    # Handed over by its owner, as the message says: then it is init-local's to keep.
    superuser(server, "ALTER DATABASE {} OWNER TO {}", someones, names.user)
    kept = init_local(server, server, theirs)
    assert (kept.code, kept.err) == (0, ""), kept.err
    assert kept.out.splitlines()[0] == (
        f"role {names.user} kept; its password unchanged; database {someones} kept"
    )


@pytest.mark.db
@pytest.mark.parametrize("database", ["postgres", "template0", "template1"])
def test_postgresqls_own_databases_are_never_taken(
    server: ConnectionSettings, names: Names, database: str
) -> None:
    before = owner_of(server, database)
    refused = init_local(server, server, replace(names, database=database))
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"error: --database {database!r} is one of PostgreSQL's own databases (postgres, "
        "template0, template1), which init-local never takes; pass another --database, or "
        "leave it out (ci_local)\n"
    )
    assert owner_of(server, database) == before
    assert not role_exists(server, names.user)


@pytest.mark.db
@pytest.mark.parametrize("role", [APP_USER, READER_USER, "the admin's"])
def test_a_role_init_local_does_not_manage_as_user_is_refused(
    server: ConnectionSettings, names: Names, role: str
) -> None:
    """--user is the role init-local makes its own: not the writer or the reader it
    prepares besides (the writer would own the database), nor the admin itself (its
    password and settings would be changed)."""
    superuser(
        server, "CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'admin-Pass-1'", names.admin
    )
    admin = replace(server, user=names.admin, password="admin-Pass-1")
    user = names.admin if role == "the admin's" else role
    refused = init_local(server, admin, replace(names, user=user), "--password", "user-Pass-1")
    assert (refused.code, refused.out) == (2, "")
    if user == names.admin:
        assert refused.err == (
            f"error: --user {user!r} is the admin URL's own role; init-local would set its "
            "password and settings: pass another --user, or leave it out (ci_user)\n"
        )
    else:
        assert refused.err == (
            f"error: --user {user!r} is one of the writer and reader roles init-local prepares "
            "besides (docs/security.md); pass a role of its own, or leave --user out (ci_user)\n"
        )
    assert not database_exists(server, names.database)
    # The admin's password was not changed: it still logs in with its own.
    with psycopg.connect(admin.conninfo()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (names.admin,)


@pytest.mark.db
@pytest.mark.parametrize(
    "user",
    ["public", "none", "pg_monitor", "pg_mine", "current_user", "SESSION_USER", "current_role"],
)
def test_a_reserved_role_name_is_refused_with_the_rule(
    server: ConnectionSettings, names: Names, user: str
) -> None:
    """PostgreSQL reserves public, none and pg_* (its CREATE ROLE said so as a database
    error; pg_monitor exists, and would have been offered `ALTER ROLE ... LOGIN`); the
    current_user family is how SQL names whoever runs it."""
    refused = init_local(server, server, replace(names, user=user))
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"error: --user {user!r} is a role name PostgreSQL reserves or SQL reads as something "
        "else (public, none, current_user, session_user, current_role, pg_*); pass another "
        "--user\n"
    )


@pytest.mark.db
@pytest.mark.parametrize("flag", ["--user", "--database"])
@pytest.mark.parametrize("name", ["", "x" * 64, "é" * 32])
def test_a_name_postgresql_would_cut_or_refuse_is_refused(
    server: ConnectionSettings, names: Names, flag: str, name: str
) -> None:
    """Empty, or longer than 63 bytes, which PostgreSQL cuts with only a NOTICE: the
    role or database made would not be the one named, nor found by the next run."""
    refused = run_cli("init-local", "--admin-url", server.url(), flag, name)
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"error: {flag} {name!r} is not a name PostgreSQL keeps as it is; give 1 to 63 bytes\n"
    )


@pytest.mark.db
def test_a_run_cut_off_after_creating_the_role_is_finished_by_the_next(
    server: ConnectionSettings, names: Names
) -> None:
    """The admin's connection is cut while CREATE DATABASE waits (its template locked by
    another session), so the role it made cannot be dropped again: the rerun knows the
    role as its own, resets the password nobody saw, says so, and the URL it prints
    logs in. The admin keeps no membership of the role."""
    superuser(
        server, "CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'admin-Pass-1'", names.admin
    )
    admin = replace(server, user=names.admin, password="admin-Pass-1")
    args = ["init-local", "--admin-url", admin.url(), "--user", names.user]
    args += ["--database", names.database]
    with (
        psycopg.connect(server.conninfo(), autocommit=True) as holder,
        psycopg.connect(server.conninfo(), autocommit=True) as watcher,
    ):
        holder.execute("BEGIN")
        # CREATE DATABASE takes a SHARE lock on its template: this makes it wait.
        holder.execute("COMMENT ON DATABASE template1 IS NULL")
        process = start_cli(*args)
        deadline, waiting = time.monotonic() + 60, None
        while waiting is None and time.monotonic() < deadline:
            # Not from the holder: its transaction would see one snapshot of the activity.
            waiting = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s "
                "AND wait_event_type = 'Lock' AND query LIKE 'CREATE DATABASE%%'",
                [names.admin],
            ).fetchone()
            time.sleep(0.05)
        assert waiting is not None, process.communicate(timeout=60)
        watcher.execute("SELECT pg_terminate_backend(%s)", [waiting[0]])
        _, err = process.communicate(timeout=60)
        holder.execute("ROLLBACK")
    assert process.returncode == 1, err
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:  # the cut left it
        assert conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", [names.user]
        ).fetchone() == (1,)
    again = init_local(server, admin, names, "--show-password")
    assert (again.code, again.err) == (0, ""), again.err
    line, url = again.out.splitlines()
    assert line == (
        f"role {names.user} kept; password reset (an earlier init-local made it and stopped "
        f"before it finished); database {names.database} created"
    )
    printed = from_url(url, what="printed")
    assert printed.password and logs_in(server, names, printed.password)
    third = init_local(server, admin, names)  # finished now: kept as it is
    assert third.out.splitlines()[0] == (
        f"role {names.user} kept; its password unchanged; database {names.database} kept"
    )
    assert memberships_left(server, names) == 0


UNUSABLE = {
    "superuser": ("SUPERUSER LOGIN", "is a superuser", "NOSUPERUSER"),
    "nologin": ("NOLOGIN", "may not log in (NOLOGIN)", "LOGIN"),
    "connection-limit-0": (
        "LOGIN CONNECTION LIMIT 0",
        "has CONNECTION LIMIT 0",
        "CONNECTION LIMIT -1",
    ),
    "expired": (
        "LOGIN VALID UNTIL '2001-01-01'",
        "has a VALID UNTIL in the past",
        "VALID UNTIL 'infinity'",
    ),
}


@pytest.mark.db
@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_an_existing_role_that_could_not_log_in_is_refused_with_the_fix(
    server: ConnectionSettings, names: Names, kind: str
) -> None:
    attributes, what, fix = UNUSABLE[kind]
    superuser(server, f"CREATE ROLE {{}} {attributes} PASSWORD 'user-Pass-1'", names.user)
    result = init_local(server, server, names, "--password", "user-Pass-1")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"error: role {names.user!r} exists but {what}, so the URL printed could not log in as "
        f'it; run `ALTER ROLE "{names.user}" {fix}` as a superuser, or pass another --user\n'
    )
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:  # nothing was changed
        assert (
            conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [names.database]
            ).fetchone()
            is None
        )
    superuser(server, f"ALTER ROLE {{}} {fix}", names.user)
    fixed = init_local(server, server, names, "--password", "user-Pass-1")
    assert (fixed.code, fixed.err) == (0, ""), fixed.err
    assert logs_in(server, names, "user-Pass-1")


@pytest.mark.db
def test_the_url_printed_names_where_libpq_connected(
    server: ConnectionSettings, names: Names
) -> None:
    """An admin URL without host and port (PGHOST and PGPORT give them, as a socket
    folder would): the URL printed names them, so it works where they are not set."""
    admin = replace(server, host="", port=None)
    result = run_cli(
        "init-local",
        "--admin-url",
        admin.url(),
        "--user",
        names.user,
        "--database",
        names.database,
        "--password",
        "user-Pass-3",
        "--show-password",
        env={"PGHOST": server.host, "PGPORT": str(server.port)},
    )
    assert (result.code, result.err) == (0, ""), result.err
    printed = from_url(result.out.splitlines()[-1], what="printed")
    assert (printed.host, printed.port) == (server.host, server.port)
    assert logs_in(printed, names, "user-Pass-3")


def test_the_urls_printed_keep_where_the_server_is_not_the_admins_identity(
    server: ConnectionSettings, names: Names
) -> None:
    """The admin URL's own parameters (its client key's passphrase, its options, its
    application name) were copied into the new roles' URLs, and --show-password printed
    the admin's sslpassword; how the server is reached and trusted stays."""
    admin = replace(server, sslmode="disable").url() + (
        "&sslpassword=AdminKeySecret99&application_name=adminapp"
        "&options=-c%20work_mem%3D7MB&connect_timeout=9"
    )
    result = run_cli(
        "init-local", "--admin-url", admin, "--user", names.user, "--database",
        names.database, "--password", "user-Pass-5", "--show-password", "--json",
    )  # fmt: skip
    assert (result.code, result.err) == (0, ""), result.err
    printed = json.loads(result.out)
    assert "AdminKeySecret99" not in result.out
    for key in ("url", "app_url", "reader_url"):
        url = from_url(printed[key], what=key)
        assert dict(url.parameters) == {"connect_timeout": "9"}, (key, url.parameters)
        assert url.sslmode == "disable"
    assert logs_in(from_url(printed["url"], what="printed"), names, "user-Pass-5")


def test_what_the_admins_service_says_of_the_server_reaches_the_urls_printed(
    server: ConnectionSettings, names: Names, tmp_path: Path
) -> None:
    """The printed URLs name no service (its user and options are the admin's), so what
    the service says of the server goes into them itself (review: a service's
    sslrootcert or timeout was dropped with it)."""
    services = tmp_path / "pg_service.conf"
    services.write_text("[admin]\nconnect_timeout=9\napplication_name=adminapp\n")
    admin = replace(server, sslmode="disable").url() + "&service=admin"
    result = run_cli(
        "init-local", "--admin-url", admin, "--user", names.user, "--database",
        names.database, "--password", "user-Pass-6", "--show-password", "--json",
        env={"PGSERVICEFILE": str(services)},
    )  # fmt: skip
    assert (result.code, result.err) == (0, ""), result.err
    printed = json.loads(result.out)
    for key in ("url", "app_url", "reader_url"):
        url = from_url(printed[key], what=key)
        assert dict(url.parameters) == {"connect_timeout": "9"}, (key, url.parameters)


@pytest.mark.db
def test_a_socket_admin_url_keeps_its_folder_in_the_url_printed(
    server: ConnectionSettings, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`postgresql:///postgres?host=/a/folder`, as the issue gave it: the URL printed
    names that folder (and the port libpq used), and logs in through the socket."""
    for variable in ("PGHOST", "PGPORT", "PGHOSTADDR", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    with socket_folder(server) as folder:
        admin = from_url(
            f"postgresql://{server.user}:{server.password}@/postgres?host={folder}",
            what="admin",
        )
        result = init_local(server, admin, names, "--password", "user-Pass-4", "--show-password")
        assert (result.code, result.err) == (0, ""), result.err
        printed = from_url(result.out.splitlines()[-1], what="printed")
        assert (printed.host, printed.port) in ((str(folder), 5432), (str(folder), None))
        assert logs_in(printed, names, "user-Pass-4")


def test_two_runs_at_once_never_drop_the_role_the_other_made(
    server: ConnectionSettings, names: Names
) -> None:
    """Each racer looks, finds no role, and creates it: the loser must leave the winner's
    role alone (it dropped it before) and say in one line what happened."""
    from cicd_db import local
    from cicd_db.errors import ConfigError

    for round_ in range(6):
        user, database = f"{names.user}_{round_}", f"{names.database}_{round_}"
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def race(
            barrier: threading.Barrier, outcomes: list[object], user: str, database: str
        ) -> None:
            with psycopg.connect(server.conninfo(), autocommit=True) as admin:
                barrier.wait()
                try:
                    outcomes.append(local.init(admin, server, None, user=user, database=database))
                except ConfigError as refused:
                    outcomes.append(refused)

        threads = [
            threading.Thread(target=race, args=(barrier, outcomes, user, database))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            made = [o for o in outcomes if isinstance(o, local.Prepared)]
            # One at a time (init's lock): both finish, the second finding the first's
            # role finished and leaving its password alone.
            assert len(made) == 2, outcomes
            # Which thread returns first is the scheduler's: the one that made the role
            # is the one with a password (the other leaves it alone and shows none).
            creator, other = sorted(made, key=lambda m: not m.settings.password)
            assert creator.settings.password
            assert other.settings.password in ("", creator.settings.password)
            for loser in (o for o in outcomes if isinstance(o, ConfigError)):
                assert str(loser).startswith("another init-local created role")
            # The winner's URL logs in: its role was not dropped, its password not changed.
            with psycopg.connect(creator.settings.conninfo()) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (user,)
        finally:
            with psycopg.connect(server.conninfo(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(database)
                    )
                )
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def logs_in_as(server: ConnectionSettings, url: str, role: str, database: str) -> bool:
    settings = from_url(url, what="printed")
    assert (settings.user, settings.database) == (role, database)
    with psycopg.connect(settings.conninfo()) as conn:
        return conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.mark.db
def test_init_local_twice_makes_the_writer_and_the_reader(
    server: ConnectionSettings, names: Names
) -> None:
    """docs/security.md: ci_app and ci_reader, as migration 0029 leaves them where it made
    them (NOLOGIN), get LOGIN and generated passwords; `--json` adds their URLs, redacted
    unless --show-password; a second run keeps them; a given password replaces one."""
    superuser(server, "ALTER ROLE {} NOLOGIN PASSWORD NULL", APP_USER)
    superuser(server, "ALTER ROLE {} NOLOGIN PASSWORD NULL", READER_USER)
    first = init_local(server, server, names, "--json", "--password", "user-Pass-1")
    assert first.code == 0, first.err
    assert first.err == (
        "note: ci_app got a generated password, not shown; run again with --app-password to "
        "set one you know\nnote: ci_reader got a generated password, not shown; run again "
        "with --reader-password to set one you know\n"
    )
    shown = json.loads(first.out)
    where = f"{server.host}:{server.port}/{names.database}"
    assert shown["app_url"] == f"postgresql://ci_app:***@{where}?sslmode=disable"
    assert shown["reader_url"] == f"postgresql://ci_reader:***@{where}?sslmode=disable"

    # Once more, generated again since nobody saw them, and shown this time.
    superuser(server, "ALTER ROLE {} NOLOGIN", APP_USER)
    superuser(server, "ALTER ROLE {} NOLOGIN", READER_USER)
    made = init_local(server, server, names, "--json", "--show-password")
    assert (made.code, made.err) == (0, "")
    urls = json.loads(made.out)
    assert logs_in_as(server, urls["app_url"], APP_USER, names.database)
    assert logs_in_as(server, urls["reader_url"], READER_USER, names.database)

    again = init_local(server, server, names, "--json", "--show-password")
    assert (again.code, again.err) == (0, "")
    kept = json.loads(again.out)
    assert kept["app_url"] == f"postgresql://ci_app@{where}?sslmode=disable"  # kept, not shown
    assert logs_in_as(server, urls["app_url"], APP_USER, names.database)

    given = init_local(server, server, names, "--json", "--app-password", "app-Pass-9")
    assert (given.code, given.err) == (0, "")
    assert "app-Pass-9" not in given.out
    with pytest.raises(psycopg.OperationalError):
        logs_in_as(server, urls["app_url"], APP_USER, names.database)
    assert logs_in_as(
        server,
        urls["app_url"].replace(from_url(urls["app_url"]).password, "app-Pass-9"),
        APP_USER,
        names.database,
    )
    assert logs_in_as(server, urls["reader_url"], READER_USER, names.database)
    # Said, in words too: only ci_user's line was printed, "its password unchanged",
    # and nothing of ci_app's (helper-111).
    said = init_local(server, server, names, "--reader-password", "reader-Pass-9")
    assert said.code == 0 and "reader-Pass-9" not in said.out + said.err, said
    assert said.out.splitlines()[:2] == [
        f"role {names.user} kept; its password unchanged; database {names.database} kept",
        "role ci_reader: password set as given",
    ], said.out
    assert logs_in_as(
        server,
        urls["reader_url"].replace(from_url(urls["reader_url"]).password, "reader-Pass-9"),
        READER_USER,
        names.database,
    )


@pytest.mark.db
def test_init_local_refuses_a_writer_that_is_a_superuser(
    server: ConnectionSettings, names: Names
) -> None:
    superuser(server, "ALTER ROLE {} SUPERUSER", APP_USER)
    try:
        refused = init_local(server, server, names)
    finally:
        superuser(server, "ALTER ROLE {} NOSUPERUSER", APP_USER)
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        "error: role 'ci_app' exists with SUPERUSER, so it could do more than its grants "
        'allow; run `ALTER ROLE "ci_app" NOSUPERUSER` as a superuser and run again\n'
    )


@pytest.mark.db
@pytest.mark.parametrize("user", [APP_USER, READER_USER])
@pytest.mark.parametrize(
    ("given", "said", "fix"),
    [
        (
            "ALTER ROLE {role} CREATEROLE CREATEDB",
            "CREATEROLE, CREATEDB",
            'ALTER ROLE "{user}" NOCREATEROLE NOCREATEDB',
        ),
        (
            "ALTER ROLE {role} REPLICATION BYPASSRLS",
            "REPLICATION, BYPASSRLS",
            'ALTER ROLE "{user}" NOREPLICATION NOBYPASSRLS',
        ),
        (
            "GRANT pg_write_all_data, {owner} TO {role}",
            "membership in {owner}, pg_write_all_data",
            'REVOKE "{owner}", "pg_write_all_data" FROM "{user}"',
        ),
        (
            "ALTER ROLE {role} CREATEDB; GRANT pg_read_all_data TO {role}",
            "CREATEDB and membership in pg_read_all_data",
            'ALTER ROLE "{user}" NOCREATEDB; REVOKE "pg_read_all_data" FROM "{user}"',
        ),
    ],
)
def test_init_local_refuses_a_writer_or_reader_that_may_do_more(
    server: ConnectionSettings, names: Names, user: str, given: str, said: str, fix: str
) -> None:
    """An existing ci_app or ci_reader with an attribute beyond LOGIN, or a member of a role
    (the owner's, PostgreSQL's pg_write_all_data), could do more than its grants: refused,
    with the statements that take it away, not given a login. Tried in a transaction
    rolled back, so no other test sees the role changed."""
    from cicd_db import local

    with psycopg.connect(server.conninfo()) as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(names.user)))
        for statement in given.split("; "):
            admin.execute(
                sql.SQL(statement).format(
                    role=sql.Identifier(user), owner=sql.Identifier(names.user)
                )
            )
        with pytest.raises(ConfigError) as refused:
            local.roles.check_login_role(admin, user)
        admin.rollback()
    assert str(refused.value) == (
        f"role {user!r} exists with {said.format(owner=names.user)}, so it could do more "
        f"than its grants allow; run `{fix.format(user=user, owner=names.user)}` as a "
        "superuser and run again"
    )


def test_a_services_host_hostaddr_and_port_are_not_passed_as_parameters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The printed URLs name the host and port as fields: a service's host, hostaddr and
    port are not copied beside them; what else it says of the server is."""
    from cicd_db import local

    use_service_file(
        monkeypatch,
        tmp_path,
        "[s]\nhost=10.1.2.3\nhostaddr=10.0.0.9\nport=6001\nsslrootcert=/x/root.crt\n",
    )
    server = from_url("postgresql://postgres@db.example.com:5432/postgres?service=s")
    assert local._server_parameters(server) == (("sslrootcert", "/x/root.crt"),)


@pytest.mark.db
@pytest.mark.parametrize("cut", ["output not written", "interrupted before printing"])
def test_a_run_that_never_showed_its_passwords_leaves_none_unseen_for_the_next(
    server: ConnectionSettings, names: Names, cut: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The roles were taken for finished before anything was printed: a run whose output
    could not be written (a full disk, here /dev/full) or that was killed before it
    printed left ci_user, ci_app and ci_reader with passwords nobody saw, and the next run
    kept them, printing URLs that could not log in (helper-104). They stay marked until
    the output is written; the next run resets them and its URLs log in."""
    superuser(server, "ALTER ROLE {} NOLOGIN PASSWORD NULL", APP_USER)
    superuser(server, "ALTER ROLE {} NOLOGIN PASSWORD NULL", READER_USER)
    args = ("init-local", "--admin-url", server.url(), "--user", names.user)
    args += ("--database", names.database, "--show-password", "--json")
    if cut == "output not written":
        with open("/dev/full", "w") as full:
            process = start_cli(*args, stdout=full)
            _, err = process.communicate(timeout=60)
        assert process.returncode == 1 and "No space left on device" in err, err
    else:  # Ctrl-C (or a kill) after the roles got their passwords, before any output

        def interrupted(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(commands_local, "_show", interrupted)
            result = run_cli(*args)
        assert (result.code, result.out) == (130, ""), result
    again = run_cli(*args)
    assert again.code == 0, again.err
    urls = json.loads(again.out)
    assert logs_in_as(server, urls["url"], names.user, names.database)
    assert logs_in_as(server, urls["app_url"], APP_USER, names.database)
    assert logs_in_as(server, urls["reader_url"], READER_USER, names.database)


@pytest.mark.db
@pytest.mark.parametrize(
    ("setting", "said", "fix"),
    [
        ("VALID UNTIL '2000-01-01'", "has a VALID UNTIL in the past", "VALID UNTIL 'infinity'"),
        ("CONNECTION LIMIT 0", "has CONNECTION LIMIT 0", "CONNECTION LIMIT -1"),
    ],
    ids=["expired", "no-connections"],
)
@pytest.mark.parametrize("role", [APP_USER, READER_USER])
def test_a_writer_or_reader_that_could_not_log_in_is_refused_with_the_fix(
    server: ConnectionSettings, names: Names, role: str, setting: str, said: str, fix: str
) -> None:
    """As ci_user is: an existing ci_app or ci_reader whose login would fail (an expired
    VALID UNTIL, CONNECTION LIMIT 0) was kept, and init-local printed a URL that could not
    log in, exit 0 (helper-104). Refused, before anything changes, with the ALTER ROLE."""
    superuser(server, f"ALTER ROLE {{}} {setting}", role)
    try:
        result = init_local(server, server, names, "--app-password", "a-Pass-1234")
        assert (result.code, result.out) == (2, ""), result
        assert result.err == (
            f"error: role {role!r} exists but {said}, so the URL printed could not log in as "
            f'it; run `ALTER ROLE "{role}" {fix}` as a superuser\n'
        )
        # Before anything changed: ci_user and its database were not made (review).
        assert not role_exists(server, names.user)
        assert not database_exists(server, names.database)
    finally:
        superuser(server, "ALTER ROLE {} VALID UNTIL 'infinity' CONNECTION LIMIT -1", role)


@pytest.mark.db
def test_a_bad_admin_url_is_blamed_on_the_admin_url(
    server: ConnectionSettings, names: Names
) -> None:
    """A wrong password in --admin-url, or a parameter libpq refuses there, was told as the
    target's (--database-url, DATABASE_URL or the stack's outputs), which init-local does
    not take (helper-104): the fix names --admin-url."""
    wrong = replace(server, password="Wrong-Pass-9")
    refused = init_local(server, wrong, names)
    assert (refused.code, refused.out) == (2, ""), refused
    assert refused.err.endswith(
        "; check the user and password of the target (--admin-url), or PGUSER, PGPASSWORD "
        "and .pgpass\n"
    ), refused.err
    assert "--database-url" not in refused.err and "Wrong-Pass-9" not in refused.err
    timeout = replace(server, parameters=(("connect_timeout", "abc"),))
    refused = init_local(server, timeout, names)
    assert (refused.code, refused.out) == (2, ""), refused
    assert "fix that parameter of the target (--admin-url) or of libpq's" in refused.err
    # A setting the server refuses at start-up is the URL's to fix, whichever URL it is.
    options = replace(server, parameters=(("options", "-c no_such_setting=1"),))
    refused = init_local(server, options, names)
    assert (refused.code, refused.out) == (2, ""), refused
    assert "fix the options parameter of the URL (?options=-c ...)" in refused.err
    assert "--database-url" not in refused.err
