"""One runner at a time: the advisory lock, on its own connection, and the work mark."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cicd_db import errors, migrations
from cicd_db.errors import UsageError
from cicd_db.migrations import lock

from ..fix_cli import MIGRATE_PY, migrate, start_cli
from ..fix_db import Database
from ..utils import write_migrations
from .shared import RUNNER_SLEEPING, THREE


@pytest.mark.slow
def test_eight_runners_at_once_apply_each_migration_once(
    database: Database, tmp_path: Path
) -> None:
    files = {"0001_log.sql": "CREATE TABLE log (version int);\n"}
    for version in range(2, 11):
        files[f"{version:04d}_step.sql"] = (
            f"INSERT INTO log VALUES ({version});\nSELECT pg_sleep(0.02);\n"
        )
    folder = write_migrations(tmp_path, files)
    command = ["--database-url", database.url, "--migrations-dir", str(folder)]
    runners = [start_cli(*command, script=MIGRATE_PY) for _ in range(8)]
    outcomes = [(runner.communicate(timeout=60)[1], runner.returncode) for runner in runners]
    assert outcomes == [("", 0)] * 8
    assert database.history() == list(range(1, 11))
    assert database.query(
        "SELECT version, count(*) FROM log GROUP BY version ORDER BY version"
    ) == [(version, 1) for version in range(2, 11)]


def test_runner_killed_mid_migration_leaves_nothing_and_next_run_completes(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_slow.sql": "CREATE TABLE slow (id int);\nINSERT INTO slow VALUES (1);\n"
            "SELECT pg_sleep(60);\n",
        },
    )
    runner = start_cli(
        "--database-url", database.url, "--migrations-dir", str(folder),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, script=MIGRATE_PY,
    )  # fmt: skip
    database.wait_for(
        RUNNER_SLEEPING,
        "the slow migration never started",
    )
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert database.history() == [1]
    assert "slow" not in database.tables()
    (folder / "0002_slow.sql").write_text(
        "CREATE TABLE slow (id int);\nINSERT INTO slow VALUES (1);\n"
    )
    # The edited file was never applied, so editing it is allowed.
    code, _, err = migrate(database, folder, "--lock-timeout", "20")
    assert (code, err) == (0, "")
    assert database.history() == [1, 2]
    assert database.query("SELECT id FROM slow") == [(1,)]


def test_lock_held_elsewhere_times_out(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    # An application's name with braces: the message is a template (helper-121).
    with psycopg.connect(database.settings.conninfo(application_name="ci {agent}")) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [migrations.LOCK_KEY])
        holder.commit()
        pid = holder.info.backend_pid
        started = time.monotonic()
        code, _, err = migrate(database, folder, "--lock-timeout", "0.5")
        assert time.monotonic() - started < 10
    assert code == 1
    # Who holds it, so that a session a pooler kept can be found and ended.
    assert re.fullmatch(
        "error: another migration runner held the lock for 0.5 s "
        f"\\(held by pid {pid}, user {database.settings.user}, application ci \\{{agent\\}}, "
        f"from 127.0.0.1, idle since [0-9-]+ [0-9:]+ UTC; if no runner is at work, end it "
        f"with SELECT pg_terminate_backend\\({pid}\\)\\); wait for it to finish, or raise "
        "--lock-timeout\n",
        err,
    ), err
    assert database.history() == []


@pytest.mark.parametrize(
    "files",
    [
        {"0001_unlock.sql": "CREATE TABLE a (i int);\nSELECT pg_advisory_unlock_all();\n"},
        {"0001_discard.sql": "-- cicd-db: no-transaction\nDISCARD ALL;\n"},
    ],
    ids=["unlock-all", "discard-all"],
)
def test_nothing_a_file_does_on_its_session_releases_the_lock(
    database: Database, tmp_path: Path, files: dict[str, str]
) -> None:
    """The lock is held by a session of its own, which the file's statements cannot reach:
    the file applies, and a second runner waits all the while (here while 0002 runs)."""
    folder = write_migrations(tmp_path, {**files, "0002_sleep.sql": "SELECT pg_sleep(1.5);\n"})

    def first_runner() -> None:
        conninfo = database.settings.conninfo(application_name="first runner")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()

    first = threading.Thread(target=first_runner)
    first.start()
    database.wait_for(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND application_name = 'first runner' AND datname = current_database()",
        "the first runner never reached its pg_sleep",
    )
    time.sleep(0.3)  # past the release, if the file could release the lock
    code, _, err = migrate(database, folder, "--lock-timeout", "0.2")
    first.join()
    assert code == 1
    assert err.startswith("error: another migration runner held the lock for 0.2 s"), err
    assert database.history() == [1, 2]


def test_a_file_that_ends_the_lock_session_is_not_recorded(
    database: Database, tmp_path: Path
) -> None:
    """Only ending the lock's session can lose it; then the file is rolled back.

    The file waits for that session to be gone (pg_terminate_backend's timeout): ending
    a backend is asynchronous, and a check that runs while it is still exiting sees the
    lock held, which the runner cannot tell from a lock lost a moment after its check."""
    end_lock_session = (
        "SELECT pg_terminate_backend(pid, 10000) FROM (SELECT DISTINCT pid FROM pg_locks "
        "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())) AS holders;\n"
    )
    folder = write_migrations(
        tmp_path, {"0001_kill.sql": "CREATE TABLE a (i int);\n" + end_lock_session}
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err == (
        "error: migration 0001_kill.sql ran while the runner's lock was lost (the session that "
        "holds it ended: pg_terminate_backend, a lost connection, or a connection pooler's "
        "timeout for idle transactions, such as PgBouncer's idle_transaction_timeout, as the "
        "lock session waits in one for the whole run), so another runner could have run at "
        "the same time; it was rolled back, and it is not recorded; check what ended that "
        "session (a statement in the file, the server, or a pooler's idle transaction "
        "timeout, which must outlast the run), and run again\n"
    )
    assert database.history() == []
    assert "a" not in database.tables()


def test_the_lock_taken_by_another_session_is_not_the_runners(
    database: Database, tmp_path: Path
) -> None:
    """The check asks for the lock held by the runner's own lock session, not by anyone:
    once that session is gone, another runner may take the lock and be at work. Here the
    file itself takes it, after ending the lock's session."""
    take_the_lock = (
        "SELECT pg_terminate_backend(pid, 10000) FROM (SELECT DISTINCT pid FROM pg_locks "
        "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())) AS holders;\n"
        f"SELECT pg_advisory_lock({migrations.LOCK_KEY});\n"
    )
    folder = write_migrations(
        tmp_path, {"0001_take.sql": "CREATE TABLE a (i int);\n" + take_the_lock}
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    lost = "error: migration 0001_take.sql ran while the runner's lock was lost"
    assert err.startswith(lost), err
    assert database.history() == []
    assert "a" not in database.tables()


def test_idle_session_timeout_never_ends_the_lock_session(
    database: Database, tmp_path: Path
) -> None:
    """The lock's own session sits idle while a long file runs."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET idle_session_timeout = '500ms'").format(
            sql.Identifier(database.settings.database)
        )
    )
    folder = write_migrations(
        tmp_path, {"0001_slow.sql": "SELECT pg_sleep(1.2);\nCREATE TABLE after_sleep (i int);\n"}
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1]


def test_a_role_allowed_one_connection_is_told_the_runner_needs_two(
    database: Database, tmp_path: Path
) -> None:
    role = f"one_conn_{uuid.uuid4().hex[:8]}"
    database.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'one-conn-pass' CONNECTION LIMIT 1").format(
            sql.Identifier(role)
        )
    )
    try:
        limited = replace(database.settings, user=role, password="one-conn-pass")
        folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
        code, out, err = migrate(limited, folder)
        assert (code, out) == (1, "")
        assert err.startswith(
            "error: cannot open the runner's second connection, which holds the migration lock: "
        )
        assert err.endswith(
            "the runner needs two connections to the database (the database's CONNECTION "
            "LIMIT, which a migration may have set, the role's, or the server's "
            "max_connections may be too low)\n"
        )
    finally:
        database.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_killed_runners_work_session_is_waited_for(database: Database, tmp_path: Path) -> None:
    """Killed outright, a runner's lock session ends at once, but its work session may still
    run a statement until the server notices: the next runner waits for it."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    with database.connect() as still_running:
        still_running.execute("SELECT pg_advisory_lock_shared(%s)", [migrations.WORK_KEY])
        code, _, err = migrate(database, folder, "--lock-timeout", "0.3")
        assert code == 1
        assert err.startswith("error: another migration runner held the lock for 0.3 s")
    assert migrate(database, folder)[0] == 0
    assert database.history() == [1]


def test_the_work_mark_is_held_through_every_file(database: Database, tmp_path: Path) -> None:
    """The reset after each file releases the file's advisory locks, the runner's work mark
    with them, and takes the mark again: the second file runs under it as the first did."""
    folder = write_migrations(
        tmp_path, {"0001_a.sql": "SELECT 1;\n", "0002_sleep.sql": "SELECT pg_sleep(1);\n"}
    )

    def runner() -> None:
        conninfo = database.settings.conninfo(application_name="marked runner")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrations.Runner(conn, migrations.discover(folder)).apply()

    thread = threading.Thread(target=runner)
    thread.start()
    try:
        rows = database.wait_for(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
            "AND application_name = 'marked runner' AND datname = current_database()",
            "the runner never reached its second file",
        )
        marks = database.query(
            "SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = "
            f"{rows[0][0]} AND classid = {migrations.WORK_KEY >> 32} "
            f"AND objid = {migrations.WORK_KEY & 0xFFFFFFFF}"
        )
    finally:
        thread.join()
    assert marks == [("ShareLock",)]
    assert database.history() == [1, 2]


def test_a_new_session_whose_first_statement_fails_is_closed(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session the runner opens after a file that changed a database's settings: a
    first statement cut there (by a 1 ms statement_timeout the file left, say) left the
    connection open until Python collected it (the test of that setting met
    it about once in eight runs). Here the first statement fails every time."""
    from cicd_db.migrations import lock
    from cicd_db.migrations.session import Session

    made: list[psycopg.Connection[object]] = []
    connect = psycopg.connect

    def watched(*args: object, **kwargs: object) -> psycopg.Connection[object]:
        made.append(connect(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    with database.connect() as conn:
        session = Session(conn)
        monkeypatch.setattr(lock.psycopg, "connect", watched)
        monkeypatch.setattr(lock, "_MARK", "SELECT 1 / (%s::bigint * 0)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            lock.renew(session, "for the next file")
        assert session.conn is conn  # the runner's session is the one it had
    assert len(made) == 1 and made[0].closed


@pytest.mark.parametrize("keyword", ["lock_timeout", "retry_budget"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "nan is out of range; give a finite number of seconds from 0$"),
        (float("inf"), "inf is out of range; give a finite number of seconds from 0$"),
        (-1, "-1 is out of range; give a finite number of seconds from 0$"),
        ("30", "takes a number of seconds, not a str$"),
    ],
)
def test_a_wait_that_is_no_number_of_seconds_is_refused_by_the_library(
    database: Database, keyword: str, value: object, message: str
) -> None:
    """The CLI reads --lock-timeout and --retry-budget as seconds; a program calling the
    library gets the same refusal, where a NaN polled the lock forever (helper-100 found
    the same in retention)."""
    with database.connect() as conn, pytest.raises(UsageError, match=message):
        migrations.Runner(conn, [], **{keyword: value})  # type: ignore[arg-type]


def test_waiting_for_a_work_mark_nests_no_savepoint(database: Database) -> None:
    """Each look at the work mark is a savepoint rolled back to: kept, one a poll, they
    nested some 9 kB of the server's memory each, 20 a second, for as long as a killed
    runner's statement ran (helper-120)."""
    with database.connect() as holder, database.connect() as other:
        other.execute("SELECT pg_advisory_lock_shared(%s)", [migrations.WORK_KEY])
        holder.execute("BEGIN")
        [(own,)] = holder.execute("SELECT pg_backend_pid()").fetchall()
        assert not any(lock._work_done(holder, own) for _ in range(20))
        with pytest.raises(psycopg.errors.InvalidSavepointSpecification):
            holder.execute("RELEASE SAVEPOINT cicd_db_work")


def test_an_interrupt_as_the_work_mark_is_taken_leaves_no_mark_on_the_callers_connection(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library caller that catches the KeyboardInterrupt keeps its connection: the mark
    taken on it just before the interrupt stayed, and every runner after waited for it
    until the connection closed (helper-120)."""
    folder = write_migrations(tmp_path, THREE)
    taken = lock.mark

    def interrupted(session: migrations.Session) -> None:
        taken(session)
        raise KeyboardInterrupt

    with database.connect() as conn:
        monkeypatch.setattr(lock, "mark", interrupted)
        with pytest.raises(KeyboardInterrupt):
            migrations.Runner(conn, migrations.discover(folder)).apply()
        monkeypatch.setattr(lock, "mark", taken)
        left = database.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
            conn.info.backend_pid,
        )
        assert left == [(0,)]
        migrations.Runner(conn, migrations.discover(folder), lock_timeout=2).apply()
    assert database.history() == [1, 2, 3]


@pytest.mark.parametrize(
    "setting", ["idle_in_transaction_session_timeout = '300ms'", "transaction_timeout = '700ms'"]
)
def test_the_lock_sessions_transaction_outlasts_the_databases_timeouts(
    database: Database, tmp_path: Path, setting: str
) -> None:
    """The lock session waits in one transaction for the whole run (four files of 300 ms
    here): a database's timeout for idle or long transactions must not end it (helper-121)."""
    with database.connect() as conn:
        if "transaction_timeout =" in setting and conn.info.server_version < 170000:
            pytest.skip("transaction_timeout is PostgreSQL 17's")
    database.execute(
        sql.SQL("ALTER DATABASE {} SET ").format(sql.Identifier(database.name)) + sql.SQL(setting)
    )
    slow = "SELECT pg_sleep(0.3);\n"
    folder = write_migrations(tmp_path, {f"000{n}_slow.sql": slow for n in range(1, 5)})
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1, 2, 3, 4]


# A file whose commit ends the lock session once the file's checks have passed: a WITH
# HOLD cursor's query runs at COMMIT, after them (the lock session waits, idle, in a
# transaction of its own for the whole run); it waits for that session to be gone (ending a
# backend is asynchronous: see test_a_file_that_ends_the_lock_session_is_not_recorded).
ENDS_THE_LOCK_AT_ITS_COMMIT = (
    "CREATE TABLE w (id int);\n"
    "DECLARE c CURSOR WITH HOLD FOR SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND state = 'idle in transaction';\n"
)


def test_a_no_transaction_file_does_not_start_once_the_lock_is_lost(
    database: Database, tmp_path: Path
) -> None:
    """The lock session ended after the file before had passed its checks: a transactional
    file would be rolled back by its own check, but a no-transaction file commits as it
    goes, and ran outside the lock, unrecorded, so that every later run failed on the
    table it had made. It is not started: nothing of it runs, and the next run applies it."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_w.sql": ENDS_THE_LOCK_AT_ITS_COMMIT,
            "0002_x.sql": "-- cicd-db: no-transaction\nCREATE TABLE x (id int);\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert code == 1, (out, err)
    assert out.startswith("applied 0001_w.sql")
    assert err.startswith(
        "error: stopped before migration 0002_x.sql: the runner's lock was lost"
    ), err
    assert "nothing of it ran" in err
    assert database.query("SELECT to_regclass('x')") == [(None,)]
    assert database.history() == [1]
    assert migrate(database, folder)[0] == 0
    assert database.history() == [1, 2]


def test_a_second_connection_the_server_refuses_is_told_with_the_refusals_fix(
    database: Database, tmp_path: Path
) -> None:
    """The role's CONNECT was revoked after the runner's first connection was made (a
    login trigger, an operator): the lock's connection was refused, and that was told
    as a connection limit, exit 1. Told now as a first connection's refusal is, with
    the GRANT that fixes it, exit 2, after what the runner was doing."""
    name = sql.Identifier(database.name)
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    with database.new_role() as limited:
        role = limited.user
        database.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(name, sql.Identifier(role))
        )
        with psycopg.connect(limited.conninfo(), autocommit=True) as conn:
            runner = migrations.Runner(conn, migrations.discover(folder))
            database.execute(
                sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC, {}").format(
                    name, sql.Identifier(role)
                )
            )
            with pytest.raises(errors.ConfigError) as refused:
                runner.apply()
        said = str(refused.value)
        assert said.startswith(
            "cannot open the runner's second connection, which holds the migration lock: "
        ), said
        assert "GRANT CONNECT ON DATABASE" in said and "CONNECTION LIMIT" not in said, said
        assert limited.password not in said
        assert database.query("SELECT to_regclass('a')") == [(None,)]
