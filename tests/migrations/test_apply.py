"""Applying files: order, targets, a file and its history row, retries, interrupts."""

from __future__ import annotations

import gc
import linecache
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.pq import TransactionStatus

from cicd_db import migrations
from cicd_db.errors import Interrupted, MigrationFailed, Terminated
from cicd_db.migrations import apply as _apply  # noqa: F401 - loaded here: migrations.apply is lazy
from cicd_db.migrations import retry as _retry  # noqa: F401 - loaded here: migrations.retry is lazy

from ..fix_cli import Run, migrate, run_cli, start_cli
from ..fix_db import Database, Databases
from ..utils import MIGRATIONS, examples, unscanned, write_migrations
from .shared import RUNNER_SLEEPING, THREE


def _interrupt_when_sleeping(
    database: Database, interruption: type[BaseException], *, lose_the_connection: bool
) -> threading.Thread:
    """Once the runner's file sleeps, interrupt this (main) thread as Ctrl-C or SIGTERM would;
    `lose_the_connection` ends the runner's server session first."""
    main = threading.main_thread().ident
    assert main is not None
    sleeping = (
        "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database() AND pid <> pg_backend_pid()"
    )

    def interrupt(signum: int, frame: object) -> None:
        if lose_the_connection:
            database.query(f"SELECT pg_terminate_backend(pid) FROM ({sleeping}) s")
        raise interruption

    signal.signal(signal.SIGUSR1, interrupt)
    watcher = threading.Thread(
        target=lambda: (
            database.wait_for(sleeping, "the slow migration never started"),
            signal.pthread_kill(main, signal.SIGUSR1),
        ),
        daemon=True,
    )
    watcher.start()
    return watcher


CONFLICT_AT_COMMIT = (
    "CREATE TABLE t (id int); "
    "CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN RAISE EXCEPTION 'another session won' USING ERRCODE = '40001'; END$$; "
    "CREATE CONSTRAINT TRIGGER conflict AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION conflict()"
)


def test_up_applies_in_order_and_records_history(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    code, out, _ = migrate(database, folder)
    assert code == 0
    assert [line.split(" (")[0] for line in out.splitlines()[:3]] == [
        "applied 0001_people.sql",
        "applied 0002_pets.sql",
        "applied 0003_seed.sql",
    ]
    assert out.splitlines()[3].startswith("applied 3 migrations to --database-url in ")
    assert database.history() == [1, 2, 3]
    assert database.query("SELECT name FROM people") == [("ada",)]
    rows = database.query(
        "SELECT name, checksum, applied_by, duration_ms >= 0 "
        "FROM cicd_db.cicd_db_schema_history ORDER BY version"
    )
    assert [row[0] for row in rows] == ["people", "pets", "seed"]
    assert all(
        len(str(row[1])) == 64 and row[2] == database.settings.user and row[3] for row in rows
    )


def test_a_run_up_to_a_target_says_what_it_leaves_pending_above_it(
    database: Database, tmp_path: Path
) -> None:
    """`--target` short of the newest file: the summary says how many files it leaves,
    applied, dry or with nothing to do, and never calls the database up to date."""
    folder = write_migrations(tmp_path, THREE)
    code, out, _ = migrate(database, folder, "up", "--target", "0")
    assert (code, out) == (
        0,
        "nothing to apply up to version 0 on --database-url; 3 migrations pending above "
        "version 0\n",
    )
    code, out, _ = migrate(database, folder, "up", "--target", "2", "--dry-run")
    assert out.endswith(
        "dry run: 2 migrations pending on --database-url up to version 2; nothing was "
        "changed; 1 migration pending above version 2\n"
    ), out
    code, out, _ = migrate(database, folder, "up", "--target", "2")
    assert code == 0 and out.endswith("; 1 migration pending above version 2\n"), out
    assert database.history() == [1, 2]
    code, out, _ = migrate(database, folder, "up", "--target", "3")
    assert (code, out.splitlines()[-1].endswith(" ms")) == (0, True), out
    # Below what is applied: "up to date" read as if the database were at the target.
    code, out, _ = migrate(database, folder, "up", "--target", "1")
    assert (code, out) == (
        0,
        "nothing to apply up to version 1 on --database-url: version 3 is applied already, "
        "and migrations only go forward\n",
    )


def test_second_run_applies_nothing(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    assert migrate(database, folder)[0] == 0
    code, out, _ = migrate(database, folder, "up")
    assert (code, out) == (0, "nothing to apply: --database-url is up to date\n")
    assert database.query("SELECT count(*) FROM people") == [(1,)]


def test_dry_run_changes_nothing(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    code, out, _ = migrate(database, folder, "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "would apply 0001_people.sql",
        "would apply 0002_pets.sql",
        "would apply 0003_seed.sql",
        "dry run: 3 migrations pending on --database-url; nothing was changed",
    ]
    assert database.tables() == set()


def test_a_target_below_every_pending_file_writes_nothing(
    database: Database, tmp_path: Path
) -> None:
    """Nothing to do is found out before the lock is taken or the history made."""
    folder = write_migrations(tmp_path, THREE)
    with database.connect() as conn:
        assert migrations.Runner(conn, migrations.discover(folder)).apply(target=0) == []
    assert database.tables() == set()


def test_target_stops_at_that_version(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    assert migrate(database, folder, "up", "--target", "2")[0] == 0
    assert database.history() == [1, 2]
    assert database.tables() == {"people", "pets"}
    assert migrate(database, folder)[0] == 0
    assert database.history() == [1, 2, 3]


def test_failing_migration_rolls_back_only_itself(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            **THREE,
            "0004_broken.sql": "CREATE TABLE toys (id int);\n\nINSERT INTO toys VALUES ('x');\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert code == 1
    assert "applied 0003_seed.sql" in out
    assert err.startswith(
        "error: migration 0004_broken.sql failed at line 3: "
        'invalid input syntax for type integer: "x" [22P02]'
    )
    assert len(err.splitlines()) == 1
    assert database.history() == [1, 2, 3]
    assert "toys" not in database.tables()


def test_no_transaction_file_builds_index_concurrently(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_table.sql": "CREATE TABLE runs (id int, name text);\n",
            "0002_index.sql": "-- cicd-db: no-transaction\n"
            "CREATE INDEX CONCURRENTLY runs_name ON runs (name);\n",
        },
    )
    code, out, _ = migrate(database, folder)
    assert code == 0, out
    assert database.history() == [1, 2]
    assert database.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'runs_name'::regclass"
    ) == [(True,)]


def test_repository_migrations_apply_to_an_empty_database(database: Database) -> None:
    code, _, _ = migrate(database, MIGRATIONS)
    assert code == 0
    assert {"pipeline_executions", "stage_executions", "job_executions"} <= database.tables()


# A file that sleeps, between two that do not: what the interrupt tests stop.
SLOW_SECOND = {
    "0001_first.sql": "CREATE TABLE first (id int);\n",
    "0002_slow.sql": "CREATE TABLE slow (id int);\nSELECT pg_sleep(60);\n",
    "0003_after.sql": "CREATE TABLE after (id int);\n",
}


def assert_the_slow_file_rolled_back(database: Database) -> None:
    """SLOW_SECOND stopped in its second file: the first applied, the second rolled
    back, and nothing of the runner left (its query cancelled, its lock released)."""
    assert database.history() == [1]
    assert database.tables() == {"first"}
    assert database.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " UNION ALL SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        " AND datname = current_database()"
    ) == [(0,), (0,)]


@pytest.mark.parametrize(
    ("signal_number", "code", "inherited"),
    [
        (signal.SIGINT, 130, signal.SIG_DFL),
        (signal.SIGTERM, 143, signal.SIG_DFL),
        # The terminal closed, an SSH session dropped.
        (signal.SIGHUP, 129, signal.SIG_DFL),
        # A shell starting a job in the background hands it SIGINT ignored.
        (signal.SIGINT, 130, signal.SIG_IGN),
    ],
    ids=["ctrl-c", "term", "hangup", "ctrl-c-when-started-ignoring-it"],
)
def test_interrupt_rolls_back_releases_the_lock_and_says_so(
    database: Database, tmp_path: Path, signal_number: int, code: int, inherited: object
) -> None:
    folder = write_migrations(
        tmp_path,
        SLOW_SECOND,
    )
    runner = start_cli(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder),
        preexec_fn=lambda: signal.signal(signal_number, inherited),
    )  # fmt: skip
    database.wait_for(
        RUNNER_SLEEPING,
        "the slow migration never started",
    )
    runner.send_signal(signal_number)
    out, err = runner.communicate(timeout=30)
    assert runner.returncode == code
    assert out.startswith("applied 0001_first.sql")
    assert err == (
        "error: interrupted during 0002_slow.sql; it was rolled back; nothing after it ran\n"
    )
    assert_the_slow_file_rolled_back(database)


def test_a_hangup_under_nohup_is_ignored_as_nohup_asks(database: Database, tmp_path: Path) -> None:
    """SIGHUP stops a run cleanly, unless the run was started with it ignored (`nohup`)."""
    folder = write_migrations(
        tmp_path, {"0001_slow.sql": "CREATE TABLE slow (id int);\nSELECT pg_sleep(60);\n"}
    )
    runner = start_cli(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder),
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )  # fmt: skip
    database.wait_for(RUNNER_SLEEPING, "the slow migration never started")
    runner.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):
        runner.wait(timeout=1)
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=30)
    assert (runner.returncode, err) == (
        143,
        "error: interrupted during 0001_slow.sql; it was rolled back; nothing after it ran\n",
    )


def test_an_interrupt_between_sending_a_file_and_waiting_for_it_is_a_rollback(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands after the file's query is sent and before psycopg waits for it,
    where psycopg's own cancel never runs: the query is cancelled, the file rolled back
    and told so, not "the connection with it" (it failed so once under load)."""
    folder = write_migrations(
        tmp_path,
        SLOW_SECOND,
    )
    simple, wait = migrations.session.Session.simple, psycopg.Connection.wait
    sent: dict[str, object] = {}

    def sending(session: migrations.session.Session, query: bytes) -> list[object]:
        sent["conn"] = session.conn if b"pg_sleep" in query else None
        return simple(session, query)  # type: ignore[return-value]

    def waiting(conn: psycopg.Connection[object], *args: object, **kwargs: object) -> object:
        if conn is sent.get("conn") and not sent.get("interrupted"):
            sent["interrupted"] = True
            database.wait_for(RUNNER_SLEEPING, "the slow migration never started")
            raise KeyboardInterrupt  # before psycopg's wait, as a signal there would be
        return wait(conn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(migrations.session.Session, "simple", sending)
    monkeypatch.setattr(psycopg.Connection, "wait", waiting)
    result = migrate(database, folder)
    assert sent.get("interrupted")
    assert (result.code, result.err) == (
        130,
        "error: interrupted during 0002_slow.sql; it was rolled back; nothing after it ran\n",
    )
    monkeypatch.undo()
    assert_the_slow_file_rolled_back(database)


# Three files, one of them outside a transaction, and what each leaves when applied.
INTERRUPTED_RUN = {
    "0001_one.sql": "CREATE TABLE one (id int);\n",
    "0002_index.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS one_id ON one (id);\n",
    "0003_three.sql": "CREATE TABLE three (id int);\n",
}
_PACKAGE = Path(migrations.__file__).parent.parent
# Where a run's state is: the runner (its connection, lock, history, files) and what
# opens its connection. A Ctrl-C in code these call (the scanner, the settings) ends the
# run as one at the line that called it.
_STATEFUL = (str(_PACKAGE / "migrations"), str(_PACKAGE / "targets.py"), str(_PACKAGE / "commands"))
Site = tuple[str, int]  # a line of code: its file and number


def _a_with(filename: str, number: int) -> bool:
    """Whether the line is a `with` statement's. Python reports the call of its
    __exit__ as that line too, and an exception raised there skips the __exit__ (a lock
    stays taken, for good: CPython's issue 29988, which no code of ours can mend): not
    a moment to draw. A Ctrl-C on its way in is one on the line before."""
    return linecache.getline(filename, number).lstrip().startswith("with ")


def interrupted_at(at: tuple[Site, int] | None, *args: str) -> tuple[Run, Counter[Site]]:
    """`cicd-db ARGS` in this process, with a KeyboardInterrupt raised where `at` says (a
    line of the runner's code, and which of its runs, 0 the first), as a Ctrl-C arriving
    at that moment would be; None: never. Returns the result and how often each line of
    the runner's code ran."""
    ran: Counter[Site] = Counter()

    def each_line(frame: FrameType, event: str, _: object) -> object:
        if event == "line" and not _a_with(frame.f_code.co_filename, frame.f_lineno):
            site = (frame.f_code.co_filename, frame.f_lineno)
            if at is not None and at == (site, ran[site]):
                raise KeyboardInterrupt  # tracing ends with it: one interrupt
            ran[site] += 1
        return each_line

    def calls(frame: FrameType, event: str, _: object) -> object:
        return each_line if frame.f_code.co_filename.startswith(_STATEFUL) else None

    sys.settrace(calls)
    try:
        result = run_cli(*args)
    except KeyboardInterrupt:
        raise AssertionError(f"the Ctrl-C at {at} escaped the command") from None
    finally:
        sys.settrace(None)
    return result, ran


@pytest.fixture
def young_heap() -> Iterator[None]:
    """What is in memory now set aside from collection (gc.freeze), so that a gc.collect()
    walks only what was made since: over a test process's whole heap it took 60 ms."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def interrupted_run(
    databases: Databases, empty_template: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[tuple[str, ...], list[tuple[Site, int]]]:
    """INTERRUPTED_RUN's `migrate up` (its --database-url to be added), and the lines of
    the runner's code a whole run of it runs, each with how often, counted on a second
    run: the first loads what a run loads (a Ctrl-C during an import is a new process's
    start-up, not this one's)."""
    folder = write_migrations(tmp_path_factory.mktemp("interrupted"), INTERRUPTED_RUN)
    up = ("migrate", "--migrations-dir", str(folder), "--database-url")
    for _ in range(2):
        database = databases.create(empty_template)
        try:
            _, ran = interrupted_at(None, *up, database.url)
        finally:
            databases.drop(database)
    return up, sorted(ran.items())


# A connection a Ctrl-C caught between its opening and its `with` is closed when it is
# collected (in a process, at its end): the warning psycopg gives then is not the point.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.slow
@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_ctrl_c_at_any_line_of_a_run_leaves_a_history_that_tells_the_truth(
    databases: Databases,
    empty_template: str,
    interrupted_run: tuple[tuple[str, ...], list[tuple[Site, int]]],
    young_heap: None,
    data: st.DataObject,
) -> None:
    """Wherever in a run of `migrate up` a Ctrl-C lands (any line of the runner's code, any
    time it runs: connecting, the lock, the history, each file and its COMMIT), the run
    ends with exit code 130 and one line; what that line says of a file is what the
    database holds; each file is in the history exactly when what it makes is there; no
    lock or session of the run is left; and the next run applies what is missing, each
    file once. (tests/migrations/test_apply.py's signal tests send real signals.)"""
    up, lines = interrupted_run
    site, times = data.draw(st.sampled_from(lines))
    at = (site, data.draw(st.integers(0, times - 1)))
    interrupted = databases.create(empty_template)
    try:
        result, ran = interrupted_at(at, *up, interrupted.url)
        gc.collect()  # what the run left unclosed, closed as the process's end would
        if result.code == 0:  # this run took that line fewer times than the counted one
            assert ran[site] <= at[1] and interrupted.history() == [1, 2, 3], result
            return
        assert result.code == 130 and result.err.count("\n") == 1, result
        assert result.err.startswith("error: interrupted"), result
        assert "whether it committed is not known" not in result.err, result  # never lost
        history = interrupted.history()
        made = {
            1: interrupted.query("SELECT to_regclass('one')") != [(None,)],
            2: interrupted.query(
                "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('one_id') AND indisvalid"
            )
            != [],
            3: interrupted.query("SELECT to_regclass('three')") != [(None,)],
        }
        # A transaction's file is in the history exactly when what it makes is there; a
        # no-transaction file's build may be done and not yet recorded, not the reverse.
        assert [v for v, there in made.items() if there and v != 2] == [
            v for v in history if v != 2
        ], (result, history, made)
        assert 2 not in history or made[2], (result, history, made)
        told = re.match(r"error: interrupted (during|after) 000(\d)_", result.err)
        if told and told[1] == "after":  # "interrupted after X was applied"
            assert int(told[2]) in history, result
        elif told and "rolled back" in result.err:
            assert int(told[2]) not in history and not made[int(told[2])], result
        # A session ends on the server a moment after its client closes it.
        interrupted.wait_for(
            "SELECT WHERE NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND "
            "database = (SELECT oid FROM pg_database WHERE datname = current_database())) "
            "AND NOT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid())",
            f"a lock or session of the run is left: {result}",
            timeout=10,
        )
        again = run_cli(*up, interrupted.url)
        assert again.code == 0, (result, again)
        assert interrupted.history() == [1, 2, 3]
        assert interrupted.query(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('one_id')"
        ) == [(True,)]
    finally:
        databases.drop(interrupted)


def test_a_failure_after_the_commit_is_told_as_applied_and_never_retried(
    database: Database, tmp_path: Path
) -> None:
    """The closing query's statements after COMMIT (the session reset, the work mark taken
    again) can still fail: here a lock_timeout the database sets, while another session
    holds the work key. The file and its row are committed: told as applied, never as
    rolled back, and never retried (a lock timeout is, for a file's own statements)."""
    database.execute(
        sql.SQL("ALTER DATABASE {} SET lock_timeout = '300ms'").format(
            sql.Identifier(database.settings.database)
        )
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\nSELECT pg_sleep(1);\n",
            "0002_second.sql": "CREATE TABLE second (id int);\n",
        },
    )
    with database.connect() as holder:
        runner = start_cli(
            "migrate", "--database-url", database.url, "--migrations-dir", str(folder)
        )
        database.wait_for(RUNNER_SLEEPING, "the first file never started")
        # Queued behind the runner's shared work mark; granted when its reset lets go.
        holder.execute("SET lock_timeout = 0")
        holder.execute("SELECT pg_advisory_lock(%s)", [migrations.WORK_KEY], prepare=False)
        out, err = runner.communicate(timeout=30)
    assert runner.returncode == 1, err
    assert out == ""
    assert err.startswith(
        "error: migration 0001_first.sql is applied (it committed with its history row), but "
        "the runner's statements after its commit failed: canceling statement due to lock "
        "timeout [55P03]; nothing after it ran"
    ), err
    assert "retry" not in err
    assert database.history() == [1]


def test_an_interrupt_after_the_commit_is_not_called_a_rollback(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands once file 2's transaction committed, before the runner moves
    on; the connection is given back idle."""
    in_transaction = migrations.apply.Applier._in_transaction

    def then_interrupted(
        applier: migrations.apply.Applier, migration: migrations.Migration
    ) -> None:
        in_transaction(applier, migration)
        if migration.version == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(migrations.apply.Applier, "_in_transaction", then_interrupted)
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(write_migrations(tmp_path, THREE)))
        with pytest.raises(Interrupted) as interrupted:
            runner.apply()
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert str(interrupted.value) == (
        "interrupted after 0002_pets.sql was applied; nothing after it ran"
    )
    assert database.history() == [1, 2]


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("ALTER TABLE busy ADD COLUMN note text;\n", "ALTER TABLE busy ADD COLUMN note text;"),
        # A COPY's failure was told apart from every other statement's: not
        # retried, and without its SQLSTATE on the error.
        ("COPY busy (id) FROM stdin;\n1\n\\.\n", "COPY busy (id) FROM stdin;"),
    ],
    ids=["alter", "copy"],
)
@pytest.mark.parametrize("first", [True, False], ids=["first", "after-a-file"])
def test_lock_timeouts_are_retried_until_the_file_applies(
    database: Database, tmp_path: Path, statement: str, said: str, first: bool
) -> None:
    """Run first, or after another file, each attempt in a transaction of its own."""
    database.execute("CREATE TABLE busy (id int)")
    version = 1 if first else 2
    files = {f"000{version}_alter.sql": f"SET lock_timeout = '100ms';\n\n{statement}"}
    if not first:
        files["0001_before.sql"] = "CREATE TABLE before_it (id int);\n"
    folder = write_migrations(tmp_path, files)
    with database.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN SHARE MODE")
        runner = start_cli(
            "migrate", "--database-url", database.url, "--retries", "20",
            "--migrations-dir", f"{folder}",
        )  # fmt: skip
        # Let it fail and retry twice, then let go of the table.
        assert runner.stderr is not None
        first_two = [runner.stderr.readline().rstrip("\n") for _ in range(2)]
        holder.execute("ROLLBACK")
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    lines = first_two + err.splitlines()
    for attempt, line in enumerate(lines, start=1):
        assert re.fullmatch(
            rf"000{version}_alter\.sql: lock not available at line 3 \({re.escape(said)}\), "
            rf"retry {attempt}/20 in \d+\.\d s",
            line,
        ), line
    assert database.history() == list(range(1, version + 1))
    assert database.query(
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'"
    ) == [(1 if "note" in statement else 0,)]
    # The COPY's row landed once, retried or not (history alone says the file ran).
    assert database.query("SELECT id FROM busy") == ([(1,)] if "COPY" in statement else [])


def test_lock_retries_give_up_within_their_bounds(database: Database, tmp_path: Path) -> None:
    database.execute("CREATE TABLE busy (id int)")
    folder = write_migrations(
        tmp_path,
        {"0001_alter.sql": "SET lock_timeout = '50ms';\nALTER TABLE busy ADD COLUMN note text;\n"},
    )
    with database.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        code, _, err = migrate(database, folder, "--retries", "2")
    assert code == 1
    lines = err.splitlines()
    assert [line.split(", retry ")[1].split(" in ")[0] for line in lines[:2]] == ["1/2", "2/2"]
    assert lines[2] == (
        "error: migration 0001_alter.sql failed at line 2: canceling statement due to lock "
        "timeout [55P03]; it was rolled back; run again when the tables are less busy (the file "
        "itself is fine); gave up after 2 retries (raise --retries or --retry-budget)"
    )
    assert len(lines) == 3
    assert database.history() == []


@pytest.mark.parametrize("where", ["file", "database"])
def test_a_concurrent_build_that_met_its_lock_timeout_is_retried_within_its_bounds(
    database: Database, tmp_path: Path, where: str
) -> None:
    """A CONCURRENTLY build that meets an old snapshot fails on its lock_timeout (the
    file's, or the database's) and leaves its index invalid; the retry drops that index
    first, and that drop waits for the same transaction. Once, under the file's
    lock_timeout the drop ran under none and waited past the retries and the budget;
    under the database's it timed out and the run stopped, exit 2, blaming an
    interrupted run. The drop is bounded by the same lock_timeout and retried like the
    build: the run gives up as any busy table's, exit 1, within its retries."""
    database.execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
    setting = "SET lock_timeout = '200ms';\n" if where == "file" else ""
    if where == "database":
        database.execute(f"ALTER DATABASE {database.name} SET lock_timeout = '100ms'")
    folder = write_migrations(
        tmp_path,
        {
            "0001_idx.sql": f"-- cicd-db: no-transaction\n{setting}"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON t (x);\n"
        },
    )
    with database.connect() as blocker:
        blocker.autocommit = False
        blocker.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        blocker.execute("SELECT count(*) FROM t")
        runner = start_cli(
            "migrate", "--database-url", database.url, "--retries", "2", "--retry-budget", "2",
            "--migrations-dir", f"{folder}",
        )  # fmt: skip
        try:
            _, err = runner.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.communicate()
            pytest.fail("the run still waited 30 s after its retries and budget were spent")
    assert runner.returncode == 1, err  # not 2: nothing is wrong with the files or history
    lines = err.splitlines()
    assert [line.split(", retry ")[1].split(" in ")[0] for line in lines[:2]] == ["1/2", "2/2"]
    assert lines[-1].endswith("gave up after 2 retries (raise --retries or --retry-budget)"), err
    assert database.history() == []


@pytest.mark.parametrize(
    ("marker", "interruption", "lose_the_connection", "code", "message"),
    [
        (
            "",
            KeyboardInterrupt,
            False,
            130,
            "interrupted during 0002_slow.sql; it was rolled back; nothing after it ran",
        ),
        (
            "",
            Terminated,
            False,
            143,
            "interrupted during 0002_slow.sql; it was rolled back; nothing after it ran",
        ),
        (
            "-- cicd-db: no-transaction\n",
            KeyboardInterrupt,
            False,
            130,
            "interrupted during 0002_slow.sql, a no-transaction file: what PostgreSQL finished "
            "of it stays, and it is not recorded (the next run drops an index it left invalid "
            "and runs it again; one it finished is skipped only under IF NOT EXISTS); nothing "
            "after it ran",
        ),
        (
            "",
            KeyboardInterrupt,
            True,
            130,
            "interrupted during 0002_slow.sql, and the connection with it: whether it committed "
            "is not known; nothing after it ran; see `migrate status`",
        ),
    ],
    ids=["ctrl_c", "sigterm", "no_transaction", "connection_lost"],
)
def test_an_interrupted_runner_says_what_it_left(
    database: Database,
    tmp_path: Path,
    marker: str,
    interruption: type[BaseException],
    lose_the_connection: bool,
    code: int,
    message: str,
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_slow.sql": f"{marker}SELECT pg_sleep(60);\n",
            "0003_after.sql": "CREATE TABLE after (id int);\n",
        },
    )
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        with database.connect() as conn:
            runner = migrations.Runner(conn, migrations.discover(folder))
            watcher = _interrupt_when_sleeping(
                database, interruption, lose_the_connection=lose_the_connection
            )
            with pytest.raises(Interrupted) as interrupted:
                runner.apply()
            watcher.join(timeout=30)
            assert conn.closed == lose_the_connection
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (str(interrupted.value), interrupted.value.exit_code) == (message, code)
    assert database.history() == [1]
    assert database.tables() == {"first"}


def test_a_no_transaction_file_records_how_long_it_ran(database: Database, tmp_path: Path) -> None:
    """Measured by the runner around the file: the server's own clock restarts with each
    statement outside a transaction."""
    folder = write_migrations(
        tmp_path, {"0001_slow.sql": "-- cicd-db: no-transaction\nSELECT pg_sleep(0.3);\n"}
    )
    with database.connect() as conn:
        started = time.perf_counter()
        migrations.Runner(conn, migrations.discover(folder)).apply()
        elapsed_ms = (time.perf_counter() - started) * 1000
    [(duration_ms,)] = database.query("SELECT duration_ms FROM cicd_db.cicd_db_schema_history")
    assert isinstance(duration_ms, int) and 300 <= duration_ms <= elapsed_ms


@pytest.mark.parametrize(
    ("second", "done"),
    [
        ("CREATE INDEX t_id ON t (id);\n", "it was rolled back"),
        (
            "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n",
            "what it did is committed",
        ),
    ],
    ids=["transactional", "no_transaction"],
)
def test_a_history_row_a_trigger_swallowed_is_not_called_applied(
    database: Database, tmp_path: Path, second: str, done: str
) -> None:
    folder = write_migrations(
        tmp_path, {"0001_table.sql": "CREATE TABLE t (id int);\n", "0002_index.sql": second}
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        runner.apply(target=1)
        database.execute(
            "CREATE FUNCTION swallow() RETURNS trigger LANGUAGE plpgsql "
            "AS $$BEGIN RETURN NULL; END$$; "
            "CREATE TRIGGER swallow BEFORE INSERT ON cicd_db.cicd_db_schema_history "
            "FOR EACH ROW EXECUTE FUNCTION swallow()"
        )
        with pytest.raises(MigrationFailed) as failed:
            runner.apply()
    # Added by a person, since the history was made: named with its undo, not the file's.
    assert str(failed.value) == (
        "migration 0002_index.sql cannot be recorded: the migration history "
        "cicd_db.cicd_db_schema_history did not keep its row as written, and it was changed "
        f"since cicd-db made it: trigger swallow added; {done}, and it is not recorded; undo "
        "that (DROP TRIGGER swallow ON cicd_db.cicd_db_schema_history) and run again"
    )
    assert database.history() == [1]


def test_of_two_invalid_indexes_of_one_name_the_one_on_the_files_table_is_dropped(
    database: Database, tmp_path: Path
) -> None:
    """Two schemas' tables t, each with an invalid index t_c: the file's own `SET
    search_path` decides which table its statement indexes, so which leftover is its
    own; a dry run says so, and the run drops that one, before the build, and no other."""
    for schema_name in ("one", "two"):
        database.execute(
            f"CREATE SCHEMA {schema_name}; CREATE TABLE {schema_name}.t (c int); "
            f"INSERT INTO {schema_name}.t VALUES (1), (1)"
        )
        with database.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY t_c ON {schema_name}.t (c)")
    database.execute("DELETE FROM two.t")
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nSET search_path = two, one;\n"
            "CREATE UNIQUE INDEX CONCURRENTLY t_c ON t (c);\n"
        },
    )
    code, out, err = migrate(database, folder, "up", "--dry-run")
    assert (code, err) == (0, "")
    assert "  would drop invalid index two.t_c left by an interrupted run" in out.splitlines()
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "  dropped invalid index two.t_c left by an interrupted run"
    assert database.query(
        "SELECT n.nspname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 't_c' ORDER BY 1"
    ) == [("one", False), ("two", True)]


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("LOCK TABLE busy;", "LOCK TABLE busy;"),
        (
            "ALTER TABLE busy ADD COLUMN abcdefghijklmno int;",
            "ALTER TABLE busy ADD COLUMN abcdefghijklmno int;",
        ),
        (
            "ALTER TABLE busy ADD COLUMN abcdefghijklmnop int;",
            "ALTER TABLE busy ADD COLUMN abcdefghijklmnop ...",
        ),
        (
            "ALTER   TABLE\n  busy ADD COLUMN abcdefghijklmnopqrstuvwxyz int;",
            "ALTER TABLE busy ADD COLUMN abcdefghijklmnopq...",
        ),
    ],
    ids=["short", "at_the_width", "one_over", "spread_over_lines"],
)
def test_a_retry_names_the_statement_that_waited(
    database: Database, tmp_path: Path, statement: str, shown: str
) -> None:
    """In one line of at most 48 characters."""
    database.execute("CREATE TABLE busy (id int)")
    folder = write_migrations(
        tmp_path, {"0001_alter.sql": f"SET lock_timeout = '20ms';\n{statement}\n"}
    )
    retries: list[migrations.Retry] = []
    with database.connect() as holder, database.connect() as conn:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        runner = migrations.Runner(conn, migrations.discover(folder), retries=1)
        with pytest.raises(MigrationFailed) as failed:
            runner.apply(on_retry=retries.append)
    [retry] = retries
    assert (retry.reason, retry.attempt, retry.retries) == (
        f"lock not available at line 2 ({shown})",
        1,
        1,
    )
    assert str(failed.value).endswith(
        "[55P03]; it was rolled back; run again when the tables are less busy (the file itself "
        "is fine); gave up after 1 retry (raise `retries` or `retry_budget`)"
    )


def test_a_commit_that_failed_for_other_sessions_is_retried(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_deferred.sql": "CREATE TABLE t (id int);\n"
            "CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'another session won' USING ERRCODE = '40001'; END$$;\n"
            "CREATE CONSTRAINT TRIGGER conflict AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION conflict();\nINSERT INTO t VALUES (1);\n"
        },
    )
    retries: list[migrations.Retry] = []
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder), retries=1)
        with pytest.raises(MigrationFailed) as failed:
            runner.apply(on_retry=retries.append)
    assert [retry.reason for retry in retries] == ["serialization failure at its commit"]
    assert str(failed.value) == (
        "migration 0001_deferred.sql failed at its commit: another session "
        "won [40001]; it was rolled back; run again when the tables are less busy (the file "
        "itself is fine); gave up after 1 retry (raise `retries` or `retry_budget`)"
    )
    assert database.history() == []


@pytest.mark.parametrize(
    ("retries", "budget", "delays", "spent"),
    [
        # 0.225 s, then 0.45 s: 0.675 s waited; the third, 0.9 s, would pass 1.5 s.
        (3, 1.5, [0.225, 0.45], "; the retry budget of 1.5 s is spent"),
        (10, 0.1, [], "; the retry budget of 0.1 s is spent"),
        # A budget used up exactly still allows that retry.
        (3, 0.225, [0.225], "; the retry budget of 0.225 s is spent"),
        (2, 120.0, [0.225, 0.45], "; gave up after 2 retries"),
        (0, 120.0, [], None),
    ],
    ids=[
        "budget_spent",
        "budget_below_the_first_delay",
        "budget_used_up_exactly",
        "retries_spent",
        "no_retries",
    ],
)
def test_retry_delays_double_and_stop_at_the_first_bound(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retries: int,
    budget: float,
    delays: list[float],
    spent: str | None,
) -> None:
    """A jitter fixed at 1.125 (of 0.75 to 1.25) makes the delays exact: 0.2 s, doubled."""
    monkeypatch.setattr(
        migrations.retry.random, "uniform", lambda low, high: low + (high - low) * 0.75
    )
    database.execute(CONFLICT_AT_COMMIT)
    folder = write_migrations(tmp_path, {"0001_insert.sql": "INSERT INTO t VALUES (1);\n"})
    seen: list[migrations.Retry] = []
    with database.connect() as conn:
        runner = migrations.Runner(
            conn, migrations.discover(folder), retries=retries, retry_budget=budget
        )
        with pytest.raises(MigrationFailed) as failed:
            runner.apply(on_retry=seen.append)
    assert [retry.delay for retry in seen] == pytest.approx(delays)
    assert [retry.attempt for retry in seen] == list(range(1, len(delays) + 1))
    message = (
        "migration 0001_insert.sql failed at its commit: another session "
        "won [40001]; it was rolled back; run again when the tables are less busy (the file "
        "itself is fine)"
    )
    if spent:
        message += f"{spent} (raise `retries` or `retry_budget`)"
    assert str(failed.value) == message
    assert database.history() == []


def test_a_runner_of_its_own_defaults_retries_until_the_file_applies(
    database: Database, tmp_path: Path
) -> None:
    database.execute(CONFLICT_AT_COMMIT)
    folder = write_migrations(tmp_path, {"0001_insert.sql": "INSERT INTO t VALUES (1);\n"})
    seen: list[migrations.Retry] = []

    def other_session_done(retry: migrations.Retry) -> None:
        seen.append(retry)
        database.execute("DROP TRIGGER conflict ON t")

    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        assert (runner.lock_timeout, runner.retries, runner.retry_budget) == (60.0, 10, 120.0)
        [result] = runner.apply(on_retry=other_session_done)
    assert [(retry.attempt, retry.retries) for retry in seen] == [(1, migrations.DEFAULT_RETRIES)]
    assert str(seen[0]).startswith(
        "0001_insert.sql: serialization failure at its commit, retry 1/10 in 0."
    )
    assert (result.migration.version, result.dry_run, result.notes) == (1, False, ())
    assert database.history() == [1]


def test_results_say_how_long_each_file_took(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_inside.sql": "SELECT pg_sleep(0.2);\n",
            "0002_outside.sql": "-- cicd-db: no-transaction\nSELECT pg_sleep(0.3);\n",
            "0003_later.sql": "SELECT 1;\n",
        },
    )
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(folder))
        would: list[migrations.Result] = []
        planned = runner.apply(dry_run=True, target=2, on_applied=would.append)
        assert would == planned
        assert [(r.migration.version, r.duration_ms, r.dry_run) for r in planned] == [
            (1, 0.0, True),
            (2, 0.0, True),
        ]
        starting: list[migrations.Migration] = []
        applied: list[migrations.Result] = []
        started = time.perf_counter()
        results = runner.apply(target=2, on_start=starting.append, on_applied=applied.append)
        elapsed_ms = (time.perf_counter() - started) * 1000
    assert [r.migration.version for r in results] == [1, 2]
    assert [m.version for m in starting] == [1, 2] and applied == results
    inside, outside = (r.duration_ms for r in results)
    assert 200 <= inside < elapsed_ms - 300 and 300 <= outside < elapsed_ms - 200
    assert database.history() == [1, 2]


def test_a_transaction_ended_unseen_is_never_recorded(database: Database) -> None:
    """The safety net under the refusal: the runner checks its transaction is still its own."""
    for name, data, left in [
        ("ends", b"CREATE TABLE p1 (id int); COMMIT; CREATE TABLE p2 (id int);", {"p1", "p2"}),
        ("restarts", b"CREATE TABLE p1 (id int); COMMIT; BEGIN; CREATE TABLE p2 (id int);", {"p1"}),
    ]:
        migration = unscanned(name, data)  # discover() would refuse these before they ran
        with database.connect() as conn:
            runner = migrations.Runner(conn, [migration])
            with pytest.raises(MigrationFailed) as failed:
                runner.apply()
            assert str(failed.value) == (
                f"migration 0001_{name}.sql ended the runner's transaction itself (COMMIT, "
                "ROLLBACK or the like, which the runner could not see in it); what it did may be "
                "committed, and it is not recorded; remove that from the file, check the "
                "database, and run again"
            )
            assert runner.applied() == []
        assert {"p1", "p2"} & database.tables() == left
        database.execute("DROP TABLE IF EXISTS p1, p2")


def test_history_is_written_where_it_lives_whatever_the_search_path(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_dump_header.sql": "SELECT pg_catalog.set_config('search_path', '', false);\n"
            "CREATE TABLE public.a (id int);\n",
            "0002_moves.sql": "CREATE SCHEMA app;\nSET search_path TO app;\nCREATE TABLE b (id int);\n",
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert database.history() == [1, 2]
    assert database.query("SELECT to_regclass('app.b') IS NOT NULL") == [(True,)]


def test_a_failed_commit_is_never_called_applied(database: Database, tmp_path: Path) -> None:
    """A deferred constraint fails at COMMIT: the file is not applied, nothing after it runs."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_deferred.sql": "CREATE TABLE p (id int PRIMARY KEY);\n"
            "CREATE TABLE c (pid int REFERENCES p DEFERRABLE INITIALLY DEFERRED);\n"
            "INSERT INTO c VALUES (1);\n",
            "0002_after.sql": "CREATE TABLE after (i int);\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: migration 0001_deferred.sql failed at its commit: insert or "
        'update on table "c" violates foreign key constraint'
    )
    assert database.tables() == set()
    assert database.history() == []


def test_a_history_row_the_files_constraint_refuses_is_that_failure_not_a_lost_history(
    database: Database, tmp_path: Path
) -> None:
    """Only a missing history table (42P01) is called a dropped history: another error that
    names the table is said as the server said it."""
    folder = write_migrations(
        tmp_path,
        {"0001_check.sql": "ALTER TABLE cicd_db.cicd_db_schema_history ADD CHECK (version > 1);\n"},
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: migration 0001_check.sql failed at its commit: new row for relation "
        '"cicd_db_schema_history" violates check constraint'
    ), err
    assert database.history() == []


_GONE = {
    "dropped": "DROP TABLE cicd_db.cicd_db_schema_history;",
    "schema-dropped": "DROP SCHEMA cicd_db CASCADE;",
    "moved": "ALTER TABLE cicd_db.cicd_db_schema_history SET SCHEMA public;",
}


@pytest.mark.parametrize("gone", _GONE)
def test_a_no_transaction_file_that_drops_or_moves_the_history_has_it_put_back(
    database: Database, tmp_path: Path, gone: str
) -> None:
    """What the file did is committed, and a run that then found no history would make
    an empty one and apply every file again: the runner puts it back as it wrote it
    (made again, or moved back), before it stops. The next run, the file fixed, applies
    no earlier file twice (0001's CREATE would fail) and goes on from the file."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\n",
            "0002_b.sql": "CREATE TABLE b (i int);\n",
            "0003_drop.sql": f"-- cicd-db: no-transaction\n{_GONE[gone]}\n",
            "0004_c.sql": "CREATE TABLE c (i int);\n",
        },
    )
    code, _, err = migrate(database, folder)
    how = (
        "moved it back"
        if gone == "moved"
        else "made it again with the 2 rows it had written (each applied_at now and duration "
        "0, as `baseline` writes them; grants on the old table are not made again)"
    )
    assert (code, err) == (
        1,
        "error: migration 0003_drop.sql dropped or moved the migration history "
        "(cicd_db.cicd_db_schema_history); what it did is committed, and it is not recorded; "
        f"the runner {how}, so the next run applies no file twice; remove that from the "
        "file and run again\n",
    )
    assert database.history() == [1, 2]
    assert database.query(
        "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'cicd_db_schema_history'"
    ) == [(1,)]
    write_migrations(folder, {"0003_drop.sql": "-- cicd-db: no-transaction\nSELECT 1;\n"})
    again = migrate(database, folder)
    assert (again.code, again.err) == (0, ""), again
    assert database.history() == [1, 2, 3, 4]
    assert database.tables() == {"a", "b", "c"}


def test_a_no_transaction_file_that_renames_the_history_is_told_to_move_it_back(
    database: Database, tmp_path: Path
) -> None:
    """Renamed in its own schema, the history is not put back (the runner cannot know
    the table is not a copy made on purpose): the next run refuses, naming it and the
    RENAME that moves it back, so no file runs twice."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\n",
            "0002_rename.sql": "-- cicd-db: no-transaction\n"
            "ALTER TABLE cicd_db.cicd_db_schema_history RENAME TO kept;\n",
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err == (
        "error: migration 0002_rename.sql dropped or moved the migration history "
        "(cicd_db.cicd_db_schema_history); what it did is committed, and it is not recorded; "
        "remove that from the file, and put the history back before any other run, which "
        "would find none and apply every file again: move it back if it was moved (the next "
        "run names where it is), or, if it was dropped, record what is applied with "
        "`cicd-db migrate baseline --version 2`\n"
    )
    again = migrate(database, folder)
    assert again.code == 2
    assert "ALTER TABLE cicd_db.kept RENAME TO cicd_db_schema_history" in again.err, again


def test_invalid_concurrent_index_is_found_whatever_the_search_path(
    database: Database, tmp_path: Path
) -> None:
    """The file sets search_path and names the index in non-ASCII: its invalid leftover is
    still found, dropped and rebuilt."""
    database.execute(
        "CREATE SCHEMA app; CREATE TABLE app.t (c int); INSERT INTO app.t VALUES (1), (1)"
    )
    with database.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ÉTÉ_c ON app.t (c)")
    # PostgreSQL folds unquoted names in ASCII only: ÉTÉ_c is ÉtÉ_c.
    left = "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'app'::regnamespace"  # fmt: skip
    assert database.query(left) == [("ÉtÉ_c", False)]
    database.execute("DELETE FROM app.t WHERE ctid = (SELECT min(ctid) FROM app.t)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nSET search_path = app;\n"
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ÉTÉ_c ON t (c);\n"
        },
    )
    # A dry run says it, and prints the DROP among the SQL it would send, changing nothing.
    code, out, _ = migrate(database, folder, "up", "--dry-run", "--sql")
    assert code == 0
    assert out.splitlines()[:4] == [
        '  would drop invalid index app."ÉtÉ_c" left by an interrupted run',
        "would apply 0001_index.sql",
        "-- 0001_index.sql",
        'DROP INDEX CONCURRENTLY IF EXISTS app."ÉtÉ_c";',
    ]
    assert database.query(left) == [("ÉtÉ_c", False)]
    code, out, _ = migrate(database, folder)
    assert code == 0
    assert out.splitlines()[0] == '  dropped invalid index app."ÉtÉ_c" left by an interrupted run'
    assert database.query(left) == [("ÉtÉ_c", True)]


def test_a_valid_index_of_the_same_name_elsewhere_is_never_dropped(
    database: Database, tmp_path: Path
) -> None:
    """Only an invalid index is a leftover: a valid one in another schema stays."""
    database.execute(
        "CREATE SCHEMA other; CREATE TABLE other.t (c int); CREATE INDEX runs_c ON other.t (c);"
        "CREATE TABLE t (c int)"
    )
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY runs_c ON t (c);\n"
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert "dropped" not in out
    assert database.query(
        "SELECT n.nspname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'runs_c' ORDER BY 1"
    ) == [("other", True), ("public", True)]


@pytest.mark.parametrize(
    ("table", "mine"),
    [("s1.t", "s1"), ("t", "public")],
    ids=["the-file-names-the-schema", "its-search-path-finds-it"],
)
def test_an_invalid_index_of_the_name_on_another_table_is_never_dropped(
    database: Database, tmp_path: Path, table: str, mine: str
) -> None:
    """The leftover is the index of that name on the table the file indexes: an invalid
    one of the same name on another schema's table of the same name (someone else's,
    a tenant's, failed build) stays, whether the file names its table's schema or its
    search_path finds the table (then one in any schema was dropped); a dry
    run says nothing of it either."""
    database.execute(
        "CREATE SCHEMA s1; CREATE SCHEMA s2; CREATE TABLE s1.t (x int); "
        "CREATE TABLE public.t (x int); CREATE TABLE s2.t (x int); INSERT INTO s2.t VALUES (1), (1)"
    )
    with database.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx ON s2.t (x)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_idx.sql": f"-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY idx ON {table} (x);\n"
        },
    )
    code, out, err = migrate(database, folder, "up", "--dry-run")
    assert (code, err) == (0, "")
    assert "would drop" not in out
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, "")
    assert "dropped" not in out
    assert database.query(
        "SELECT n.nspname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'idx' ORDER BY 1"
    ) == [(mine, True), ("s2", False)]


def test_an_index_another_session_is_building_is_not_dropped(
    database: Database, tmp_path: Path
) -> None:
    """An index being built concurrently is invalid until it is done: the runner waits for
    no one's build to end by dropping it, it says so."""
    database.execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_idx.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON t (x);\n"
        },
    )
    with database.connect() as blocker, database.connect() as builder:
        # A transaction that holds a snapshot: the other session's build waits for it
        # with the index already in the catalog, invalid.
        blocker.autocommit = False
        blocker.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        blocker.execute("SELECT count(*) FROM t")
        build = threading.Thread(
            target=lambda: builder.execute("CREATE INDEX CONCURRENTLY idx ON t (x)"), daemon=True
        )
        build.start()
        database.wait_for(
            "SELECT FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.index_relid "
            "WHERE c.relname = 'idx'",
            "the other session's build to show",
        )
        # Should the runner wait on that build (drop it), the blocker lets go in time
        # for the test to fail rather than hang.
        release = threading.Timer(10, blocker.rollback)
        release.start()
        code, _, err = migrate(database, folder)
        release.cancel()
        blocker.rollback()
        build.join(timeout=30)
    assert code == 2, err
    assert err.startswith(
        "error: migration 0001_idx.sql builds index idx, and another session is building "
        "public.idx right now; wait until it is done"
    ), err
    assert database.query("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'idx'") == [(True,)]  # fmt: skip
    assert database.history() == []


def test_an_index_a_run_built_before_it_was_interrupted_is_told_how_to_pass(
    database: Database, tmp_path: Path
) -> None:
    """The run ended after PostgreSQL finished the index, before the history row: the
    file fails on the index it built, and the message says so, not "fix the file"."""
    database.execute("CREATE TABLE t (x int); CREATE INDEX idx ON t (x)")
    folder = write_migrations(
        tmp_path,
        {"0001_idx.sql": "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY idx ON t (x);\n"},
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err == (
        'error: migration 0001_idx.sql failed at line 2: relation "idx" already exists '
        "[42P07]; it was rolled back as far as PostgreSQL allows; a run interrupted after "
        "PostgreSQL built it leaves it in place: if it is this file's, add IF NOT EXISTS to "
        "the statement (the file is not applied yet) and run again; else rename one of them\n"
    )
    (folder / "0001_idx.sql").write_text(
        "-- cicd-db: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON t (x);\n"
    )
    assert migrate(database, folder).code == 0
    assert database.history() == [1]


def test_a_dry_run_looks_for_the_leftover_after_the_files_leading_statements(
    database: Database, tmp_path: Path
) -> None:
    """A dry run finds the table the build indexes as the run does, after the file's
    leading statements, which it runs in a transaction rolled back; one that fails is
    listed with what the run will say, exit 0, and leaves the session as it was."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nSET search_path = nowhere;\n"
            "SET lock_timeout = 'soon';\nCREATE UNIQUE INDEX CONCURRENTLY u ON t (c);\n"
        },
    )
    code, out, _ = migrate(database, folder, "up", "--dry-run")
    assert code == 0, out
    assert out.splitlines()[0].startswith(
        "  a run now: migration 0001_index.sql failed at line 3: invalid value for parameter "
        '"lock_timeout": "soon"'
    ), out
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith("error: migration 0001_index.sql failed at line 3: invalid value"), err
    assert database.history() == []


@pytest.mark.parametrize(
    ("data", "check", "expected"),
    [
        (
            "-- cicd-db: no-transaction\n/* the lookup index */\nSET lock_timeout = '5s';\n"
            "CREATE INDEX CONCURRENTLY idx ON t (x);\n",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx'::regclass",
            [(True,)],
        ),
        (
            "/* header */\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n"
            "INSERT INTO audit DEFAULT VALUES;\n",
            "SELECT q FROM audit",
            [("INSERT INTO audit DEFAULT VALUES;",)],
        ),
    ],
    ids=["a-build-after-its-set", "after-set-transaction"],
)
def test_a_statement_sent_alone_after_the_runners_own_is_sent_as_psql_sends_it(
    database: Database, tmp_path: Path, data: str, check: str, expected: list[tuple[object]]
) -> None:
    """A database whose column default reads current_query(): every statement goes in a
    query of its own, with the block comment psql sends before it. Where the runner
    sends a file's leading statements first (a no-transaction build's SETs, which the
    lookup of an invalid index follows; a SET TRANSACTION, after which it reads its
    transaction's id), the next statement went from the file's start: the opening
    comment and those statements again with it. A build in one query with
    another statement is refused (it cannot run in a transaction block); a SET
    TRANSACTION ran twice, and current_query() saw it."""
    database.execute("CREATE TABLE t (x int); CREATE TABLE audit (q text DEFAULT current_query())")
    folder = write_migrations(tmp_path, {"0001_file.sql": data})
    code, out, err = migrate(database, folder)
    assert (code, err) == (0, ""), out
    assert database.history() == [1]
    assert database.query(check) == expected


def test_a_lookup_the_files_role_may_not_make_fails_as_the_build_would(
    database: Database, tmp_path: Path
) -> None:
    """The table is looked up as the file's leading statements leave the session (its
    SET ROLE); a schema that role may not use fails that lookup. The dry run still
    lists the file (exit 0), and the run fails as the build itself fails there, naming
    the file and its line (exit 1), not as a database error to run again."""
    role = f"no_usage_{uuid.uuid4().hex[:10]}"
    database.execute(f"CREATE SCHEMA private; CREATE TABLE private.t (x int); CREATE ROLE {role}")
    try:
        folder = write_migrations(
            tmp_path,
            {
                "0001_idx.sql": f"-- cicd-db: no-transaction\nSET ROLE {role};\n"
                "CREATE INDEX CONCURRENTLY idx ON private.t (x);\n"
            },
        )
        code, out, err = migrate(database, folder, "up", "--dry-run")
        assert (code, err) == (0, ""), out
        assert "0001_idx.sql" in out
        code, _, err = migrate(database, folder)
        assert code == 1, err
        assert err.startswith(
            "error: migration 0001_idx.sql failed at line 3: permission denied for schema private"
        ), err
        assert database.history() == []
    finally:
        database.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_dry_run_leaves_the_connection_as_it_found_it(database: Database, tmp_path: Path) -> None:
    """What the previous test's docstring promises and it cannot see (its runs are
    processes of their own): the leading statements a dry run runs to find the table are
    rolled back, and the connection the runner was given keeps its settings."""
    database.execute("CREATE SCHEMA app; CREATE TABLE app.t (c int)")
    folder = write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\nSET search_path = app;\n"
            "SET lock_timeout = '1s';\nCREATE INDEX CONCURRENTLY u ON t (c);\n"
        },
    )
    settings = "SELECT current_setting('search_path'), current_setting('lock_timeout')"
    with database.connect() as conn:
        before = conn.execute(settings).fetchone()
        migrations.Runner(conn, migrations.discover(folder)).apply(dry_run=True)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(settings).fetchone() == before
    assert database.history() == []


def test_a_dry_run_of_a_file_whose_set_role_names_a_role_an_earlier_file_makes(
    database: Database, tmp_path: Path
) -> None:
    """A plan of two pending files, the first making the role the second's
    build runs as. The dry run ran the second's SET ROLE before the first file had run
    and listed it as "a run now: ... failed"; the run applies both. Only the first
    pending file's leading statements can fail as a run would: a later one's are said
    to be looked at as it runs."""
    role = f"builder_{uuid.uuid4().hex[:10]}"
    folder = write_migrations(
        tmp_path,
        {
            "0001_role.sql": f"CREATE ROLE {role}; CREATE TABLE t (c int); "
            f"ALTER TABLE t OWNER TO {role}; GRANT CREATE ON SCHEMA public TO {role};\n",
            "0002_index.sql": f"-- cicd-db: no-transaction\nSET ROLE {role};\n"
            "CREATE INDEX CONCURRENTLY u ON t (c);\n",
        },
    )
    try:
        code, out, err = migrate(database, folder, "up", "--dry-run")
        assert (code, err) == (0, "")
        assert "a run now" not in out, out
        assert "  an invalid index its build may have left is looked for as it runs" in (
            out.splitlines()
        ), out
        ran = migrate(database, folder)
        assert ran.code == 0, ran.err
    finally:
        database.execute("DROP TABLE IF EXISTS t")
        if database.query(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"):
            database.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_copy_data_error_carries_its_sqlstate(database: Database, tmp_path: Path) -> None:
    """A COPY's bad data fails as any statement does: its line and SQLSTATE in the
    message, and the SQLSTATE on the library's error (it was None there)."""
    folder = write_migrations(
        tmp_path, {"0001_copy.sql": "CREATE TABLE t (a int);\nCOPY t (a) FROM stdin;\nx\n\\.\n"}
    )
    with database.connect() as conn, pytest.raises(MigrationFailed) as failed:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    assert str(failed.value).startswith("migration 0001_copy.sql failed at line 3: ")
    assert "[22P02]" in str(failed.value)
    assert failed.value.sqlstate == "22P02"
    assert database.history() == []
