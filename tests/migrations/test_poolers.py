"""The runner behind a real PgBouncer: a pooler that lends server sessions a transaction
or a statement at a time is refused before anything runs, whatever its address; one that
keeps a session per connection is migrated through as PostgreSQL itself is (helper-117)."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from cicd_db.migrations import failures, lock

from ..fix_cli import migrate
from ..fix_db import Database
from ..fix_pooler import pgbouncer
from ..utils import write_migrations
from .shared import THREE

NO_TRANSACTION = {
    **THREE,
    "0004_index.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY people_name ON people (name);\n",
}
ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"


def no_advisory_locks(database: Database) -> None:
    """No session of the server holds an advisory lock in `database` (a pooled server
    session that kept the runner's would hold up every later run)."""
    assert database.query(ADVISORY_LOCKS + " AND database = (SELECT oid FROM pg_database "
                          "WHERE datname = current_database())") == [(0,)]  # fmt: skip


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("command", [(), ("--rehearse",)], ids=["up", "rehearse"])
def test_a_pooler_that_lends_sessions_is_refused_before_anything_runs(
    database: Database, tmp_path: Path, mode: str, command: tuple[str, ...]
) -> None:
    folder = write_migrations(tmp_path, NO_TRANSACTION)
    with pgbouncer(database, mode) as pooled:
        for _ in range(3):  # as often as it is tried: no lock is left behind to wait for
            code, out, err = migrate(pooled, folder, "up", *command, "--lock-timeout", "2")
            assert (code, out) == (2, ""), err
            assert (
                err
                == f"error: {failures.SHARED_SESSIONS}; nothing was run; {failures.THROUGH_A_SESSION}\n"
            )
    assert database.query("SELECT to_regnamespace('cicd_db')") == [(None,)]
    assert database.tables() == set()
    no_advisory_locks(database)
    # Straight to the server, the same files apply.
    code, _, err = migrate(database, folder, "up")
    assert (code, err) == (0, "")
    assert database.history() == [1, 2, 3, 4]


def test_on_a_busy_pool_no_lock_is_left_behind_whatever_the_runner_finds(
    database: Database, tmp_path: Path
) -> None:
    """Other clients of a pooler that lends sessions can hide the lending from the
    runner's look before its lock; its lock was then taken in one pooled server session
    and the next statement ran in another, and the refusal left the lock where it was,
    holding up every later run (helper-119: 11 of 500 runs, pool of 2, 4 busy clients).
    The lock session now holds its locks in a transaction, which a pooler keeps in one
    server session and ends when its client goes."""
    folder = write_migrations(tmp_path, NO_TRANSACTION)
    with pgbouncer(database, "transaction", pool_size=2) as pooled:
        stop = threading.Event()

        def busy() -> None:
            with psycopg.connect(
                pooled.settings.conninfo(), autocommit=True, prepare_threshold=None
            ) as conn:
                while not stop.is_set():
                    conn.execute("SELECT pg_sleep(0.001)")

        with ThreadPoolExecutor(4) as clients:
            running = [clients.submit(busy) for _ in range(4)]
            try:
                for _ in range(30):
                    code, _, err = migrate(pooled, folder, "up", "--lock-timeout", "2")
                    # Refused, a file stopped as run elsewhere, or (the lock session's
                    # transaction holding one of the two server sessions, so that the
                    # work session always has the other) applied as through one session.
                    assert code in (0, 1, 2), err
                    refused = (
                        f"error: {failures.SHARED_SESSIONS}; nothing was run; "
                        f"{failures.THROUGH_A_SESSION}\n"
                    )
                    moved = "in another server session than the runner's"
                    assert (code, err) == (0, "") or err == refused or moved in err, err
                    no_advisory_locks(database)
            finally:
                stop.set()
            for client in running:
                client.result()
    # What the history says is applied is there.
    applied = database.history()
    assert applied in ([], [1], [1, 2], [1, 2, 3], [1, 2, 3, 4]), applied
    assert ("people" in database.tables()) == (1 in applied)
    assert database.query("SELECT count(*) FROM pg_class WHERE relname = 'people_name'") == [
        (int(4 in applied),)
    ]


def test_through_a_pooler_that_keeps_a_session_each_files_apply_as_straight_to_the_server(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path, NO_TRANSACTION)
    with pgbouncer(database, "session") as pooled:
        code, out, err = migrate(pooled, folder, "up")
        assert (code, err) == (0, ""), err
        assert "applied 4 migrations" in out
        code, out, err = migrate(pooled, folder, "up")
        assert (code, err) == (0, "")
    assert database.history() == [1, 2, 3, 4]
    assert database.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'people_name'::regclass") == [(True,)]  # fmt: skip
    no_advisory_locks(database)


@pytest.mark.parametrize("rehearsed", [False, True], ids=["up", "rehearse"])
def test_a_file_that_runs_in_another_server_session_is_rolled_back_and_named(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rehearsed: bool
) -> None:
    """Other clients of a pooler can hide its lending from the check before the lock is
    taken; each file's own check then stops the first file that runs elsewhere. Here
    the work session is made to note another server session than its own."""
    folder = write_migrations(tmp_path, THREE)
    monkeypatch.setattr(
        lock,
        "_MARK",
        "SELECT pg_catalog.pg_advisory_lock_shared(%s), pg_catalog.pg_backend_pid() + 1",
    )
    if rehearsed:  # told as the rehearsal's (it was: "cannot reset the session", helper-121)
        code, out, err = migrate(database, folder, "up", "--rehearse")
        assert (code, out) == (1, "")
        assert err == (
            "error: the rehearsal ran 0001_people.sql in another server session than the "
            "runner's, outside its lock: a connection pooler between lends server sessions a "
            "transaction at a time (transaction pooling); the rehearsal was rolled back, and "
            f"nothing after that file was rehearsed; {failures.THROUGH_A_SESSION}\n"
        )
        assert database.tables() == set()
        return
    code, out, err = migrate(database, folder, "up")
    assert (code, out) == (1, "")
    assert err == (
        "error: migration 0001_people.sql ran in another server session than the runner's, "
        "outside its lock: a connection pooler between lends server sessions a transaction "
        "at a time (transaction pooling); it was rolled back, and it is not recorded; "
        f"{failures.THROUGH_A_SESSION}\n"
    )
    assert database.history() == []
    assert "people" not in database.tables()
    no_advisory_locks(database)


def test_a_poolers_idle_transaction_timeout_shorter_than_a_file_is_named(
    database: Database, tmp_path: Path
) -> None:
    """The lock session waits in a transaction for the whole run, which a pooler's timeout
    for idle transactions (PgBouncer's idle_transaction_timeout, off by default) ends:
    the file that outlasted it is rolled back and the pooler's timeout named (helper-120)."""
    folder = write_migrations(
        tmp_path,
        {"0001_a.sql": "CREATE TABLE a (id int);\n", "0002_slow.sql": "SELECT pg_sleep(4);\n"},
    )
    # PgBouncer looks at its timeouts on a timer: 1 s against a 4 s file, whatever the load
    # (which could end the lock session before the first file: either file is named).
    with pgbouncer(database, "session", settings_more="idle_transaction_timeout = 1\n") as pooled:
        code, _, err = migrate(pooled, folder, "up")
    assert code == 1, err
    assert re.match(
        r"error: migration 000[12]_(a|slow)\.sql ran while the runner's lock was lost \(the "
        r"session that holds it ended: pg_terminate_backend, a lost connection, or a "
        r"connection pooler's timeout for idle transactions, such as PgBouncer's "
        r"idle_transaction_timeout",
        err,
    ), err
    assert database.history() in ([], [1])
    no_advisory_locks(database)
