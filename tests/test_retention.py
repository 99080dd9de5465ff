"""Retention on a real server: what goes, what stays, whole runs only, writers never stopped."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import ConnectionPool

from cicd_db import errors, retention
from cicd_db.errors import ConfigError, NotFound, OperationalError, UsageError
from cicd_db.store import CANCELED, FAILED, RUNNING, SUCCESS, PipelineRun, Store

from .fix_cli import run_cli, start_cli
from .fix_db import Database
from .utils import examples

NOW = datetime.now(UTC)


@pytest.fixture
def executions(migrated: Database) -> Iterator[Store]:
    with migrated.connect() as conn:
        yield Store.on(conn)


def record(
    store: Store,
    pipeline: str,
    *,
    days_ago: float,
    status: str = SUCCESS,
    stages: int = 2,
    jobs: int = 3,
) -> PipelineRun:
    """A run that started `days_ago` and, unless `status` is RUNNING, finished a minute later."""
    start = NOW - timedelta(days=days_ago)
    run = store.set_status(store.start_run(pipeline, "abc"), RUNNING, at=start)
    for order in range(1, stages + 1):
        stage = store.set_status(store.add_stage(run, f"stage{order}", order), RUNNING, at=start)
        for job in store.add_jobs(stage, [(f"job{n}", False) for n in range(jobs)]):
            job = store.set_status(job, RUNNING, at=start)
            if status != RUNNING:
                store.set_status(job, SUCCESS, at=start + timedelta(seconds=30))
        if status != RUNNING:
            store.finish_stage(stage, at=start + timedelta(seconds=40))
    if status == RUNNING:
        return run
    if status == CANCELED:
        return store.cancel_run(run, at=start + timedelta(minutes=1))
    return store.set_status(run, status, at=start + timedelta(minutes=1))


@contextlib.contextmanager
def holding(database: Database, statement: str) -> Iterator[None]:
    """`statement` run in a transaction of another session, held while the block runs, or
    30 s at the latest: a wait that was not bounded as it should be would otherwise hang
    the test instead of failing it."""
    with database.connect() as holder:
        holder.execute("BEGIN")
        holder.execute(statement)
        release = threading.Timer(30, lambda: holder.execute("ROLLBACK"))
        release.start()
        try:
            yield
        finally:
            release.cancel()


def counts(database: Database) -> tuple[int, int, int]:
    [row] = database.query(
        "SELECT (SELECT count(*) FROM pipeline_executions), (SELECT count(*) FROM "
        "stage_executions), (SELECT count(*) FROM job_executions)"
    )
    return int(str(row[0])), int(str(row[1])), int(str(row[2]))


def when_its_jobs_go(database: Database, oldest: int, action: str) -> None:
    """Run `action` (PL/pgSQL) as each job of the `oldest`-th oldest run (0: the oldest)
    is deleted: a way to end or stall retention in the middle of a batch."""
    rows = database.query(
        "SELECT j.id FROM job_executions j JOIN stage_executions s ON s.id = j.stage_execution_id "
        "WHERE s.pipeline_execution_id = (SELECT id FROM pipeline_executions "
        "ORDER BY completion_time LIMIT 1 OFFSET %s)",
        oldest,
    )
    jobs = ", ".join(f"'{row[0]}'" for row in rows)
    database.execute(
        "CREATE FUNCTION when_it_goes() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
        f"IF OLD.id IN ({jobs}) THEN {action} END IF; RETURN OLD; END$$; "
        "CREATE TRIGGER when_it_goes BEFORE DELETE ON job_executions "
        "FOR EACH ROW EXECUTE FUNCTION when_it_goes()"
    )


def whole(database: Database) -> None:
    """Every run left has all its stages, every stage all its jobs (as recorded: 2 x 3)."""
    assert (
        database.query(
            "SELECT r.id FROM pipeline_executions r LEFT JOIN stage_executions s "
            "ON s.pipeline_execution_id = r.id GROUP BY r.id HAVING count(s.id) <> 2"
        )
        == []
    )
    assert (
        database.query(
            "SELECT s.id FROM stage_executions s LEFT JOIN job_executions j "
            "ON j.stage_execution_id = s.id GROUP BY s.id HAVING count(j.id) <> 3"
        )
        == []
    )


def test_finished_runs_past_the_cutoff_go_with_their_children(
    migrated: Database, executions: Store
) -> None:
    old = [
        record(executions, "build", days_ago=40, status=status)
        for status in (SUCCESS, FAILED, CANCELED)
    ]
    kept = [
        record(executions, "build", days_ago=5),
        # Started long ago and still running: never deleted, whatever its age.
        record(executions, "build", days_ago=90, status=RUNNING),
    ]
    with migrated.connect() as conn:
        pruned = retention.prune(conn, keep_days=30)
    assert (pruned.runs, pruned.stages, pruned.jobs, pruned.dry_run) == (3, 6, 18, False)
    assert {row[0] for row in migrated.query("SELECT id FROM pipeline_executions")} == {
        run.id for run in kept
    }
    assert counts(migrated) == (2, 4, 12)
    assert not {run.id for run in old} & {
        row[0] for row in migrated.query("SELECT pipeline_execution_id FROM stage_executions")
    }
    assert str(pruned).startswith("deleted 3 runs, 6 stages, 18 jobs that finished before ")


def test_the_cutoff_is_the_servers_clock_less_whole_days(
    migrated: Database, executions: Store
) -> None:
    record(executions, "build", days_ago=30.01)
    record(executions, "build", days_ago=29.99)
    with migrated.connect() as conn:
        pruned = retention.prune(conn, keep_days=30)
        [(server_now,)] = conn.execute("SELECT now()").fetchall()
    assert pruned.runs == 1
    assert abs(pruned.cutoff - (server_now - timedelta(days=30))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    "zone", ["UTC", "America/New_York", "Australia/Lord_Howe", "Europe/London", "Pacific/Apia"]
)
def test_the_cutoff_is_the_same_in_every_session_time_zone(migrated: Database, zone: str) -> None:
    """Days of 24 hours: a calendar day of the session's zone moved the cutoff by the
    daylight-saving change between then and now (an hour, or 30 minutes at Lord Howe),
    by who asked. Over a year of keep-days, some cross a change in each of these zones."""
    with migrated.connect() as conn:
        conn.execute(psycopg.sql.SQL("SET TimeZone = {}").format(psycopg.sql.Literal(zone)))
        for keep_days in (40, 100, 150, 200, 250, 300, 365):
            pruned = retention.prune(conn, keep_days=keep_days, dry_run=True)
            [(server_now,)] = conn.execute("SELECT now()").fetchall()
            expected = server_now.astimezone(UTC) - timedelta(days=keep_days)  # 24 h days
            assert abs(pruned.cutoff - expected) < timedelta(minutes=5), (zone, keep_days)
            # Printed in UTC, as every time cicd-db prints: it was the session's zone's.
            cutoff = pruned.cutoff.astimezone(UTC)
            assert str(pruned).endswith(f"before {cutoff:%Y-%m-%d %H:%M:%S} UTC"), str(pruned)


def test_a_dry_run_counts_what_would_go_and_changes_nothing(
    migrated: Database, executions: Store
) -> None:
    record(executions, "build", days_ago=40)
    record(executions, "deploy", days_ago=40, stages=1, jobs=2)
    before = migrated.query("SELECT * FROM job_executions ORDER BY id")
    with migrated.connect() as conn:
        pruned = retention.prune(conn, keep_days=30, dry_run=True)
    assert (pruned.runs, pruned.stages, pruned.jobs, pruned.batches) == (2, 3, 8, 0)
    assert pruned.dry_run
    assert str(pruned).startswith("would delete 2 runs, 3 stages, 8 jobs")
    assert migrated.query("SELECT * FROM job_executions ORDER BY id") == before


def test_one_pipeline_only(migrated: Database, executions: Store) -> None:
    record(executions, "build", days_ago=40)
    deploy = record(executions, "deploy", days_ago=40)
    with migrated.connect() as conn:
        assert retention.prune(conn, keep_days=30, pipeline="build").runs == 1
    assert migrated.query("SELECT id FROM pipeline_executions") == [(deploy.id,)]


def test_batches_are_short_and_report_running_totals(migrated: Database, executions: Store) -> None:
    for _ in range(5):
        record(executions, "build", days_ago=40)
    heard: list[tuple[int, int, int]] = []
    with migrated.connect() as conn:
        pruned = retention.prune(
            conn,
            keep_days=30,
            batch_size=2,
            on_batch=lambda done, found: heard.append(
                (done.runs, done.batches, found, done.seconds)
            ),
        )
    assert [hearing[:3] for hearing in heard] == [(2, 1, 5), (4, 2, 5), (5, 3, 5)]
    seconds = [hearing[3] for hearing in heard]
    assert 0 < seconds[0] <= seconds[1] <= seconds[2] <= pruned.seconds < 60
    assert (pruned.runs, pruned.batches) == (5, 3)
    assert counts(migrated) == (0, 0, 0)


def test_a_run_a_writer_holds_is_left_for_the_next_call_not_waited_for(
    migrated: Database, executions: Store
) -> None:
    held = record(executions, "build", days_ago=40)
    record(executions, "build", days_ago=41)
    with migrated.connect() as writer, migrated.connect() as conn:
        writer.execute("BEGIN")
        writer.execute("SELECT FROM pipeline_executions WHERE id = %s FOR SHARE", [held.id])
        # A lock timeout of a minute: waiting would show as a stall, skipping does not wait.
        first = retention.prune(conn, keep_days=30, lock_timeout=60)
        writer.execute("ROLLBACK")
        second = retention.prune(conn, keep_days=30)
    assert (first.runs, second.runs) == (1, 1)
    assert counts(migrated) == (0, 0, 0)


@pytest.mark.parametrize(
    ("batch_size", "offset", "so_far", "left"),
    [
        (2, 0, "nothing was deleted", (3, 6, 18)),
        (1, 1, "1 run (2 stages, 6 jobs) had been deleted", (2, 4, 12)),
    ],
    ids=["first_batch", "second_batch"],
)
def test_a_lost_connection_leaves_whole_runs_and_says_how_far_it_got(
    migrated: Database,
    executions: Store,
    batch_size: int,
    offset: int,
    so_far: str,
    left: tuple[int, int, int],
) -> None:
    for days in (40, 41, 42):
        record(executions, "build", days_ago=days)
    # The jobs of the oldest run (or the next) end the session as they go: mid-batch.
    when_its_jobs_go(migrated, offset, "PERFORM pg_terminate_backend(pg_backend_pid());")
    with migrated.connect() as conn, pytest.raises(OperationalError) as lost:
        retention.prune(conn, keep_days=30, batch_size=batch_size)
    message = str(lost.value)
    assert message.startswith("retention lost its connection (")
    assert message.endswith(
        "; the batch in progress was rolled back, and no run was left half-deleted; "
        "run again to go on"
    )
    assert f"; {so_far}; " in message
    whole(migrated)
    assert counts(migrated) == left


@pytest.mark.parametrize("hold", ["job locked", "job being added"])
def test_a_run_with_a_child_a_writer_holds_is_left_for_the_next_call_and_the_rest_go(
    migrated: Database, executions: Store, hold: str
) -> None:
    """A job a writer locked, or a stage a writer is adding a job to (the new row's
    foreign key holds it), in the oldest run: that run is left for the next call after
    one lock timeout, and every other run goes (one held job stopped the whole
    call, batch after batch, and exit 1)."""
    oldest = record(executions, "build", days_ago=42)
    for days in (40, 41):
        record(executions, "build", days_ago=days)
    [[stage_id]] = migrated.query(
        "SELECT id FROM stage_executions WHERE pipeline_execution_id = %s LIMIT 1", oldest.id
    )
    with migrated.connect() as writer, migrated.connect() as conn:
        writer.execute("BEGIN")
        if hold == "job locked":
            writer.execute(
                "SELECT FROM job_executions WHERE stage_execution_id = %s LIMIT 1 FOR SHARE",
                [stage_id],
            )
        else:
            writer.execute(
                "INSERT INTO job_executions (stage_execution_id, job_name, status) "
                "VALUES (%s, 'late', 'PENDING')",
                [stage_id],
            )
        first = retention.prune(conn, keep_days=30, batch_size=2, lock_timeout=0.2)
        writer.execute("ROLLBACK")
        second = retention.prune(conn, keep_days=30)
    assert (first.runs, first.stages, first.jobs, first.held) == (2, 4, 12, 1)
    assert str(first).endswith("; left 1 run a writer held, for the next call"), str(first)
    assert (second.runs, second.held) == (1, 0)
    assert counts(migrated) == (0, 0, 0)


def test_a_batch_whose_every_run_is_held_deletes_and_counts_nothing(
    migrated: Database, executions: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of held runs alone was counted as a batch, and an interrupt
    after it said "the last batch had committed" beside "nothing was deleted"."""
    oldest = record(executions, "build", days_ago=42)
    with migrated.connect() as writer, migrated.connect() as conn:
        writer.execute("BEGIN")
        writer.execute(
            "SELECT FROM job_executions j JOIN stage_executions s ON s.id = j.stage_execution_id "
            "WHERE s.pipeline_execution_id = %s FOR SHARE OF j",
            [oldest.id],
        )
        pruned = retention.prune(conn, keep_days=30, lock_timeout=0.1)
        assert (pruned.runs, pruned.batches, pruned.held) == (0, 0, 1)
        batch = retention._batch

        def then_interrupted(*args: object) -> object:
            batch(*args)  # type: ignore[arg-type]
            raise KeyboardInterrupt

        monkeypatch.setattr(retention, "_batch", then_interrupted)
        with pytest.raises(errors.Interrupted) as stopped:
            retention.prune(conn, keep_days=30, lock_timeout=0.1)
        writer.execute("ROLLBACK")
    assert str(stopped.value) == (
        "interrupted; nothing was deleted; the batch in progress was rolled back, and no run "
        "was left half-deleted; run again to go on"
    )
    assert counts(migrated) == (1, 2, 6)


def test_a_table_held_past_the_lock_timeout_is_tried_again_then_given_up(
    migrated: Database, executions: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table locked against retention (a migration's lock): the batch waits at most the
    lock timeout, and tries again after a pause, a bounded number of times."""
    monkeypatch.setattr(retention, "RETRY_DELAY", 0.01)
    record(executions, "build", days_ago=40)
    with (
        holding(migrated, "LOCK TABLE job_executions IN EXCLUSIVE MODE"),
        migrated.connect() as conn,
        pytest.raises(OperationalError) as busy,
    ):
        retention.prune(conn, keep_days=30, lock_timeout=0.05)
    assert str(busy.value) == (
        "retention met busy tables 6 times in a row (canceling statement due to lock timeout); "
        "run again when they are less busy"
    )
    assert counts(migrated) == (1, 2, 6)


def test_a_lock_timeout_that_clears_is_waited_out(
    migrated: Database, executions: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "RETRY_DELAY", 0.2)
    record(executions, "build", days_ago=40)
    with migrated.connect() as holder, migrated.connect() as conn:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE job_executions IN EXCLUSIVE MODE")
        # Released during the pauses between tries (0.2, 0.4, 0.8 ... s): a later try wins.
        threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()
        pruned = retention.prune(conn, keep_days=30, lock_timeout=0.05)
    assert (pruned.runs, pruned.jobs, pruned.held) == (1, 6, 0)
    assert counts(migrated) == (0, 0, 0)


def test_an_interrupt_after_a_batch_committed_counts_it(
    migrated: Database, executions: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing after a batch's COMMIT, before the call counted it (the
    message was a batch short and said it was rolled back): the server is asked."""
    for days in (40, 41):
        record(executions, "build", days_ago=days)
    batch = retention._batch

    def committed_then_interrupted(*args: object) -> object:
        batch(*args)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # as a Ctrl-C landing once the COMMIT is done

    monkeypatch.setattr(retention, "_batch", committed_then_interrupted)
    with migrated.connect() as conn, pytest.raises(errors.Interrupted) as stopped:
        retention.prune(conn, keep_days=30, batch_size=1)
    assert str(stopped.value) == (
        "interrupted; 1 run (2 stages, 6 jobs) had been deleted; the last batch had committed, "
        "and no run was left half-deleted; run again to go on"
    )
    assert counts(migrated) == (1, 2, 6)


def test_an_interrupt_during_a_batchs_commit_is_told_as_the_server_ended_it(
    migrated: Database, executions: Store
) -> None:
    """Ctrl-C while the COMMIT runs (a deferred trigger of someone's makes it slow): the
    COMMIT is cancelled, and the call says the batch was rolled back because the server
    still has its runs, not because it guesses."""
    record(executions, "build", days_ago=40)
    migrated.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN PERFORM pg_sleep(60); RETURN NULL; END$$; "
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER DELETE ON pipeline_executions "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    process = start_cli("retention", "--keep-days", "30", "--database-url", migrated.url)
    migrated.wait_for(
        "SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database()",
        "the commit never started",
    )
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out) == (130, "")
    assert err == (
        "error: interrupted; nothing was deleted; the batch in progress was rolled back, and "
        "no run was left half-deleted; run again to go on\n"
    )
    assert counts(migrated) == (1, 2, 6)


@pytest.mark.parametrize("language", ["en", "de"])
def test_a_statement_timeout_is_named_not_told_as_a_lost_connection(
    migrated: Database, executions: Store, language: str
) -> None:
    """A statement_timeout a role or database sets cuts a batch: the connection is fine
    and running again meets it again, so the setting is named, with its fixes (it was:
    "retention lost its connection ... run again"). In German (a server's lc_messages),
    whose words for it cannot be read, the setting is named as suspected."""
    if language == "de":
        migrated.in_german()
    record(executions, "build", days_ago=40)
    when_its_jobs_go(migrated, 0, "PERFORM pg_sleep(1);")
    with migrated.connect() as conn, pytest.raises(OperationalError) as cut:
        conn.execute("SET statement_timeout = '300ms'")
        retention.prune(conn, keep_days=30)
    said = "canceling statement due to statement timeout" if language == "en" else "storniere"
    assert str(cut.value).startswith(f"retention's statement was cancelled ({said}")
    assert str(cut.value).endswith(
        "nothing was deleted; the batch in progress was rolled back, and no run was left "
        "half-deleted; "
        + ("if no one cancelled it, " if language == "de" else "")
        + "statement_timeout stopped it, set for this session by the role, the "
        "database, the server or the connection's options (pg_settings' source for "
        "statement_timeout tells which; perhaps a migration left it): raise it there, or give "
        "a smaller `batch_size`, and run again"
    ), cut.value
    assert counts(migrated) == (1, 2, 6)


def _pruned_while_a_person_cancels(
    migrated: Database, conn: psycopg.Connection[Any]
) -> pytest.ExceptionInfo[OperationalError]:
    """What retention.prune on `conn` raises when pg_cancel_backend from another session
    cuts it in the trigger's sleep (when_its_jobs_go)."""
    pid = conn.info.backend_pid

    canceller = migrated.canceller(
        pid, "wait_event = 'PgSleep'", "retention never reached the trigger's sleep"
    )
    canceller.start()
    with pytest.raises(OperationalError) as cut:
        retention.prune(conn, keep_days=30)
    canceller.join()
    return cut


def test_a_persons_cancel_is_not_told_as_a_statement_timeout(
    migrated: Database, executions: Store
) -> None:
    """pg_cancel_backend from another session, no timeout set: PostgreSQL's English says
    "due to user request", which retention tells as it is, not as a timeout suspected
    (the review: only a cancel told in another language is suspected to be one)."""
    record(executions, "build", days_ago=40)
    when_its_jobs_go(migrated, 0, "PERFORM pg_sleep(5);")
    with migrated.connect() as conn:
        cut = _pruned_while_a_person_cancels(migrated, conn)
    assert "user request" in str(cut.value)
    assert "statement_timeout" not in str(cut.value), cut.value
    assert counts(migrated) == (1, 2, 6)


def test_a_cancel_where_the_sessions_timeout_could_have_fired_is_told_as_suspected(
    migrated: Database, executions: Store
) -> None:
    """As the twin above, on a session 2 s old whose statement_timeout is 2 s: PostgreSQL
    tells a timeout that fires as a statement ends as a cancel "due to user request", and
    running again meets it again; it is named as suspected, with where it is set (it was
    "run again to go on")."""
    record(executions, "build", days_ago=40)
    when_its_jobs_go(migrated, 0, "PERFORM pg_sleep(5);")
    conninfo = migrated.settings.conninfo(options="-c statement_timeout=2s")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        time.sleep(2.2)  # the session grows as old as its timeout; no statement runs that long
        cut = _pruned_while_a_person_cancels(migrated, conn)
    said = str(cut.value)
    assert "user request" in said
    assert "if no one cancelled it, statement_timeout stopped it" in said, said
    assert counts(migrated) == (1, 2, 6)


def test_a_role_that_may_not_read_the_executions_is_told_which_role_may(
    migrated: Database, executions: Store
) -> None:
    """A role with no right on the tables is refused as the reader is, before the count
    too ("permission denied ...; run again", exit 1)."""
    record(executions, "build", days_ago=40)
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    with migrated.connect() as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}; SET ROLE {role}")
            for pipeline in (None, "build"):
                with pytest.raises(ConfigError) as denied:
                    retention.prune(conn, keep_days=30, pipeline=pipeline)
                assert str(denied.value).startswith(
                    f"role {role} lacks a right retention needs (SELECT, UPDATE and DELETE on "
                    "the execution tables): permission denied for table "
                ), str(denied.value)
                assert str(denied.value).endswith(
                    "; nothing was deleted; run retention as the writer (ci_app, which "
                    "`--local` and `--stack` use) or the tables' owner"
                )
        finally:
            conn.execute(f"RESET ROLE; REVOKE ALL ON SCHEMA public FROM {role}; DROP ROLE {role}")
    assert counts(migrated) == (1, 2, 6)


def test_writers_keep_writing_while_retention_deletes(
    migrated: Database, executions: Store
) -> None:
    for days in range(31, 61):
        record(executions, "build", days_ago=days, stages=1, jobs=2)
    stop = threading.Event()
    failures: list[BaseException] = []
    written: list[int] = []

    def writer(number: int) -> None:
        with ConnectionPool(
            migrated.settings.conninfo(), min_size=1, max_size=1, kwargs={"autocommit": True}
        ) as pool:
            store = Store.pooled(pool)
            while not stop.is_set():
                try:
                    record(store, f"writer{number}", days_ago=0, stages=2, jobs=3)
                    written.append(number)
                except BaseException as error:
                    failures.append(error)
                    return

    with ThreadPoolExecutor(max_workers=4) as pool:
        for number in range(4):
            pool.submit(writer, number)
        with migrated.connect() as conn:
            pruned = retention.prune(conn, keep_days=30, batch_size=3)
        stop.set()
    assert failures == []
    assert pruned.runs == 30
    assert written
    whole(migrated)
    assert migrated.query(
        "SELECT count(*) FROM pipeline_executions WHERE start_time < now() - interval '30 days'"
    ) == [(0,)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep_days": 0}, r"^`keep_days` 0 is out of range; give 1 to 36600$"),
        ({"keep_days": 36601}, r"^`keep_days` 36601 is out of range; give 1 to 36600$"),
        ({"keep_days": -(10**20)}, r"^`keep_days` -100000000000000000000 is out of range; give "),
        ({"keep_days": 30, "batch_size": 0}, r"^`batch_size` 0 is out of range; give 1 to 100000$"),
        (
            {"keep_days": 30, "batch_size": 100_001},
            r"^`batch_size` 100001 is out of range; give 1 to 100000$",
        ),
        (
            {"keep_days": 30, "pipeline": ""},
            r"^`pipeline` is empty; give a name, or leave `pipeline` out$",
        ),
    ],
)
def test_bounds_are_refused_before_anything_is_read(
    database: Database, options: dict[str, int], message: str
) -> None:
    with database.connect() as conn, pytest.raises(UsageError, match=message):
        # An empty database: a query would fail on the missing tables first.
        retention.prune(conn, **options)


def test_a_pipeline_that_never_ran_is_named_not_counted_as_nothing(
    migrated: Database, executions: Store
) -> None:
    """As report and insights do: a misspelt --pipeline in a nightly job would delete
    nothing, successfully, every night; the dry run that tries the job says so too. A
    pipeline whose runs retention has already deleted did run: nothing to do, no error."""
    record(executions, "build", days_ago=40)
    for dry_run in (True, False):
        with (
            migrated.connect() as conn,
            pytest.raises(NotFound) as refused,
        ):
            retention.prune(conn, keep_days=30, pipeline="Build", dry_run=dry_run)
        assert str(refused.value) == (
            "pipeline 'Build' has never recorded a run; check the name (names are "
            "case-sensitive), or leave `pipeline` out for every pipeline"
        )
    with migrated.connect() as conn:
        assert retention.prune(conn, keep_days=30, pipeline="build").runs == 1
        again = retention.prune(conn, keep_days=30, pipeline="build")
        assert (again.runs, again.batches) == (0, 0)
        assert retention.prune(conn, keep_days=30, pipeline="build", dry_run=True).runs == 0


def test_a_transaction_connection_is_refused(migrated: Database) -> None:
    with (
        psycopg.connect(migrated.settings.conninfo()) as conn,
        pytest.raises(ValueError, match=r"^retention needs an autocommit connection$"),
    ):
        retention.prune(conn, keep_days=30)


def test_retention_inside_a_callers_transaction_is_refused_before_it_deletes(
    migrated: Database, executions: Store
) -> None:
    """Inside the caller's `conn.transaction()`, prune said "deleted 5 runs" and the
    caller's rollback then kept all five (helper-114): it commits batch by batch, as it
    reports, so it is refused there, before anything is deleted."""
    old = datetime.now(UTC) - timedelta(days=60)
    run = executions.set_status(executions.start_run("build", "abc"), RUNNING, at=old)
    executions.cancel_run(run, at=old + timedelta(minutes=1))
    sent: list[object] = []
    original = psycopg.Cursor.execute

    def watched(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return original(self, query, *args, **kwargs)

    with migrated.connect() as conn, mock.patch.object(psycopg.Cursor, "execute", watched):
        with conn.transaction():
            with pytest.raises(UsageError, match=r"^retention needs a connection outside any transaction \(it is intrans\)"):  # fmt: skip
                retention.prune(conn, keep_days=30)
            assert sent == []  # refused before it sent anything, let alone a DELETE
            # A dry run commits nothing: counted there as anywhere.
            assert retention.prune(conn, keep_days=30, dry_run=True).runs == 1
        assert retention.prune(conn, keep_days=30).runs == 1


# -- the command ----------------------------------------------------------------------------


def test_the_command_deletes_and_says_what(migrated: Database, executions: Store) -> None:
    record(executions, "build", days_ago=40)
    record(executions, "build", days_ago=1)
    counted = run_cli("retention", "--keep-days", "30", "--dry-run", "--database-url", migrated.url)
    assert counted.code == 0, counted.err
    assert counted.out.startswith("--database-url: would delete 1 run, 2 stages, 6 jobs that ")
    done = run_cli("retention", "--keep-days", "30", "--json", "--database-url", migrated.url)
    assert done.code == 0, done.err
    figures = json.loads(done.out)
    assert {k: figures[k] for k in ("dry_run", "runs", "stages", "jobs", "batches", "held")} == {
        "dry_run": False,
        "runs": 1,
        "stages": 2,
        "jobs": 6,
        "batches": 1,
        "held": 0,
    }
    assert counts(migrated) == (1, 2, 6)


# A schema searched before pg_catalog, with a now() of its own in 2100 (helper-142).
_CLOCK_OF_ITS_OWN = (
    "CREATE SCHEMA shadow; CREATE FUNCTION shadow.now() RETURNS pg_catalog.timestamptz "
    "LANGUAGE sql AS $$SELECT pg_catalog.timestamptz '2100-01-01 00:00+00'$$; "
    "ALTER DATABASE {} SET search_path = shadow, public, pg_catalog"
)


def test_a_search_path_that_searches_a_schema_before_pg_catalog_is_refused_by_every_reader(
    migrated: Database, executions: Store
) -> None:
    """A role's, the database's or PGOPTIONS's search_path that names a schema before
    pg_catalog: a now() there was the clock of retention's cutoff (every finished run
    deleted as older than 90 days), of insights' window and of the store's stamps.
    Retention, insights and report refuse it, naming where it is set, and nothing is
    deleted; the store refuses it before its first write."""
    record(executions, "build", days_ago=40)
    record(executions, "build", days_ago=1)
    migrated.execute(_CLOCK_OF_ITS_OWN.format(migrated.name))
    target = ("--database-url", migrated.url)
    for args in (
        ("retention", "--keep-days", "90", "--yes"),
        ("insights",),
        ("report", "--pipeline", "build"),
    ):
        done = run_cli(*args, *target)
        assert (done.code, done.out) == (2, ""), (args, done)
        assert done.err.startswith(
            "error: this session's search_path (shadow, public, pg_catalog) searches shadow "
            "before pg_catalog, with functions or operators named as PostgreSQL's "
            "(shadow.now()): those would be the ones cicd-db's statements call; "
        ), done.err
        assert f'ALTER DATABASE "{migrated.name}" RESET search_path' in done.err, done.err
    assert counts(migrated) == (2, 4, 12)
    with migrated.connect() as conn, pytest.raises(ConfigError, match=r"searches shadow before"):
        Store.on(conn).start_run("build", "c1")
    assert counts(migrated) == (2, 4, 12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--stack", "prod"),
            "error: stack prod is a remote database; add --yes to delete runs from it "
            "(or --dry-run to count them first)\n",
        ),
        (("--keep-days", "0"), "error: argument --keep-days: '0' is not a whole number above 0"),
        (("--batch-size", "x"), "error: argument --batch-size: 'x' is not a whole number above 0"),
        (
            # More digits than int() reads: said so, not "invalid parse value" and all 5000.
            ("--keep-days", "9" * 5000),
            "error: argument --keep-days: '99999999999999999999'... is 5000 characters long; "
            "no option takes one that long;",
        ),
        (
            # argparse takes a value that begins with '-' for a flag: the way to give one.
            ("--pipeline", "-x"),
            "error: argument --pipeline: expected one argument (give one; one that begins "
            "with '-' is written --pipeline=VALUE); see `cicd-db retention --help`\n",
        ),
    ],
    ids=[
        "remote_without_yes",
        "keep_no_days",
        "batch_not_a_number",
        "keep_days_too_long",
        "value_like_a_flag",
    ],
)
def test_the_command_refuses_in_one_line(args: tuple[str, ...], message: str) -> None:
    given = ("--keep-days", "30", *args) if "--keep-days" not in args else args
    refused = run_cli("retention", *given)
    assert (refused.code, refused.out) == (2, "")
    assert refused.err.startswith(message)
    assert refused.err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--keep-days", "99999999999999999999"),
            "error: --keep-days 99999999999999999999 is out of range; give 1 to 36600\n",
        ),
        (
            ("--keep-days", "1000000", "--dry-run"),
            "error: --keep-days 1000000 is out of range; give 1 to 36600\n",
        ),
        (
            ("--keep-days", "30", "--batch-size", "99999999999999999999"),
            "error: --batch-size 99999999999999999999 is out of range; give 1 to 100000\n",
        ),
        (
            ("--keep-days", "30", "--pipeline="),
            "error: --pipeline is empty; give a name, or leave --pipeline out\n",
        ),
        (
            ("--keep-days", "30", "--pipeline", "biuld", "--dry-run"),
            "error: pipeline 'biuld' has never recorded a run; check the name (names are "
            "case-sensitive), or leave --pipeline out for every pipeline\n",
        ),
    ],
    ids=["keep_days_huge", "keep_days_past_timestamps", "batch_huge", "empty_pipeline", "typo"],
)
def test_the_command_refuses_what_the_database_would_fail_on(
    migrated: Database, executions: Store, args: tuple[str, ...], message: str
) -> None:
    """Each was a database error (make_interval, timestamp out of range, bigint out of
    range) or a silent "would delete 0 runs", exit 0."""
    record(executions, "build", days_ago=40)
    refused = run_cli("retention", *args, "--database-url", migrated.url)
    assert (refused.code, refused.out, refused.err) == (
        1 if "never recorded" in message else 2,
        "",
        message,
    )
    assert counts(migrated) == (1, 2, 6)


# Integers anywhere, the bounds and their neighbours, text that is not a number, and
# more digits than Python's int() takes.
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from([0, 1, 2, 36599, 36600, 36601, 99999, 100000, 100001, 10**6]).map(str),
    st.text(max_size=12),
    st.just("9" * 5000),
)


@settings(max_examples=examples(60))
@given(keep_days=NUMBERS, batch_size=NUMBERS)
def test_any_number_is_run_or_refused_in_one_line(
    migrated: Database, keep_days: str, batch_size: str
) -> None:
    """--keep-days and --batch-size, against a real server: a run (exit 0) when both are
    in range, else exit 2 and one line; never a database error or a traceback."""
    done = run_cli(
        "retention",
        f"--keep-days={keep_days}",
        f"--batch-size={batch_size}",
        "--database-url",
        migrated.url,
    )

    def fits(text: str, most: int) -> bool:
        return text.isascii() and text.isdigit() and len(text) <= 4300 and 1 <= int(text) <= most

    if fits(keep_days, 36_600) and fits(batch_size, 100_000):
        assert (done.code, done.err) == (0, ""), done.err
    else:
        assert (done.code, done.out) == (2, ""), done
        assert done.err.startswith("error: ") and done.err.count("\n") == 1, done.err
        assert "database error" not in done.err and "unexpected" not in done.err, done.err


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_leaves_whole_runs_and_says_how_far_it_got(
    migrated: Database, executions: Store, signal_number: int, code: int
) -> None:
    for days in (40, 41, 42):
        record(executions, "build", days_ago=days)
    # The second batch (one run each) sleeps as its jobs go: interrupted there.
    when_its_jobs_go(migrated, 1, "PERFORM pg_sleep(60);")
    process = start_cli(
        "retention", "--keep-days", "30", "--batch-size", "1", "--database-url", migrated.url
    )
    migrated.wait_for(
        "SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database()",
        "the second batch never started",
    )
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out) == (code, "")
    assert err == (
        "error: interrupted; 1 run (2 stages, 6 jobs) had been deleted; the batch in progress "
        "was rolled back, and no run was left half-deleted; run again to go on\n"
    )
    whole(migrated)
    assert counts(migrated) == (2, 4, 12)
    # Nothing of it is left running, and the next call goes on where it stopped.
    assert migrated.query(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database()"
    ) == [(0,)]


def test_a_progress_bar_on_a_terminal_only(migrated: Database, executions: Store) -> None:
    for days in (40, 41):
        record(executions, "build", days_ago=days, stages=1, jobs=1)
    command = [
        "retention",
        "--keep-days",
        "30",
        "--batch-size",
        "1",
        "--database-url",
        migrated.url,
    ]
    main, terminal = pty.openpty()
    process = start_cli(*command, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 1024)
        except OSError:  # the process closed the terminal's other end
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=30)
    os.close(main)
    assert process.returncode == 0
    assert b"\r[###############---------------] 1/2 runs" in seen, seen
    assert b"\r[##############################] 2/2 runs" in seen, seen
    assert seen.endswith(b"\r\x1b[K"), seen
    record(executions, "build", days_ago=40, stages=1, jobs=1)
    piped = run_cli(*command, process=True)
    assert (piped.code, piped.err) == (0, "")


# -- any history -----------------------------------------------------------------------------

# A run's age as days past the cutoff (negative: younger): most near it, some far.
PAST_THE_CUTOFF = st.one_of(
    st.floats(min_value=-1.0, max_value=1.0, allow_nan=False),
    st.floats(min_value=-40.0, max_value=40.0, allow_nan=False),
)
ENDS = st.sampled_from([SUCCESS, FAILED, CANCELED, RUNNING])


@settings(max_examples=examples(25))
@given(
    runs=st.lists(
        st.tuples(st.sampled_from(["build", "deploy"]), PAST_THE_CUTOFF, ENDS, st.integers(0, 2)),
        max_size=8,
    ),
    keep_days=st.integers(2, 45),
    batch_size=st.integers(1, 4),
    pipeline=st.sampled_from([None, "build"]),
)
def test_any_history_loses_exactly_its_old_finished_runs_whole(
    migrated: Database,
    executions: Store,
    runs: list[tuple[str, float, str, int]],
    keep_days: int,
    batch_size: int,
    pipeline: str | None,
) -> None:
    """Whatever the ages, statuses, pipelines and batch size: every finished run that
    completed before the cutoff goes with all its stages and jobs, and nothing else."""
    migrated.execute("DELETE FROM pipeline_executions")
    # "build" has recorded a run before, if none of this history does: retention
    # refuses a pipeline that never did.
    migrated.execute("INSERT INTO pipeline_run_counters VALUES ('build', 0) ON CONFLICT DO NOTHING")
    recorded = [
        (
            record(
                executions,
                name,
                days_ago=max(0.0, keep_days + past),
                status=end,
                stages=stages,
                jobs=2,
            ),
            end,
        )
        for name, past, end, stages in runs
    ]
    with migrated.connect() as conn:
        pruned = retention.prune(
            conn, keep_days=keep_days, pipeline=pipeline, batch_size=batch_size
        )
    gone = {
        run.id
        for run, end in recorded
        if end != RUNNING
        and (pipeline is None or run.pipeline_name == pipeline)
        and run.start_time is not None
        and run.start_time + timedelta(minutes=1) < pruned.cutoff
    }
    left = {row[0] for row in migrated.query("SELECT id FROM pipeline_executions")}
    assert left == {run.id for run, _ in recorded} - gone
    assert pruned.runs == len(gone)
    # No stage or job of a deleted run is left, and every run left keeps all of its own.
    assert migrated.query(
        "SELECT count(*) FROM stage_executions s LEFT JOIN pipeline_executions r "
        "ON r.id = s.pipeline_execution_id WHERE r.id IS NULL"
    ) == [(0,)]
    assert migrated.query(
        "SELECT count(*) FROM job_executions j LEFT JOIN stage_executions s "
        "ON s.id = j.stage_execution_id WHERE s.id IS NULL"
    ) == [(0,)]
    kept_stages = sum(
        stages for (_, _, _, stages), (run, _) in zip(runs, recorded, strict=True) if run.id in left
    )
    assert migrated.query("SELECT count(*) FROM stage_executions") == [(kept_stages,)]
    assert migrated.query("SELECT count(*) FROM job_executions") == [(kept_stages * 2,)]
    foreign_keys_hold(migrated)


@pytest.mark.db
@pytest.mark.parametrize("pipeline", [[], ["--pipeline", "build"]], ids=["all", "one-pipeline"])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["delete", "dry-run"])
def test_retention_on_a_database_without_the_schema_says_so(
    database: Database, pipeline: list[str], dry_run: list[str]
) -> None:
    """As report and insights say it: one line, exit 2, not the server's 'relation does
    not exist'."""
    result = run_cli(
        "retention", "--keep-days", "30", *pipeline, *dry_run, "--database-url", database.url
    )
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "error: no cicd-db schema here (no execution tables): apply the migrations "
        "(`cicd-db migrate up` with the same target), then record runs\n"
    )


# -- a schema older than retention, and what the schema holds beside it ----------------------


def migrated_to(database: Database, version: int) -> Database:
    """`database` with the repository's migrations applied up to `version`."""
    result = run_cli(
        "migrate", "--database-url", database.url, "up", "--target", str(version), "-q"
    )
    assert result.code == 0, result.err
    return database


OLDER = (
    "the cicd-db schema here is older than this cicd-db ({}): apply the pending migrations "
    "(`cicd-db migrate up` with the same target)"
)


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["delete", "dry-run"])
def test_a_schema_whose_times_have_no_time_zone_is_refused_in_every_zone(
    database: Database, zone: str, dry_run: bool
) -> None:
    """Before migration 0005, `completion_time` is a timestamp without time zone: compared
    with it, the cutoff would be read in the session's time zone, so which runs go would
    depend on the CI machine's PGTZ (helper-100). Refused, before anything is deleted."""
    migrated_to(database, 1)
    database.execute(
        "INSERT INTO pipeline_executions (pipeline_name, commit_hash, status, start_time, "
        "completion_time) VALUES ('build', 'c', 'SUCCESS', now() - interval '40 days', "
        "now() - interval '40 days')"
    )
    with database.connect() as conn, pytest.raises(ConfigError) as older:
        conn.execute("SELECT set_config('TimeZone', %s, false)", [zone])
        retention.prune(conn, keep_days=30, dry_run=dry_run)
    assert str(older.value) == OLDER.format("completion_time is not a timestamp with time zone")
    assert database.query("SELECT count(*) FROM pipeline_executions") == [(1,)]


def test_one_pipeline_on_a_schema_before_its_run_counters_is_told_to_migrate(
    database: Database,
) -> None:
    """Before migration 0016 there are no run counters to find a pipeline by: the tables
    the search_path reaches are no hidden schema (as the message was), but an older one."""
    migrated_to(database, 15)
    result = run_cli(
        "retention", "--keep-days", "30", "--pipeline", "build", "--dry-run",
        "--database-url", database.url,
    )  # fmt: skip
    assert (result.code, result.out) == (2, "")
    assert result.err == "error: " + OLDER.format("")[:-1].replace(" ()", "") + ")\n"


def test_the_writer_on_grants_older_than_retention_is_told_to_migrate_not_to_be_the_writer(
    database: Database,
) -> None:
    """Before migration 0036 the writer may not read the run counters: it was told to run
    retention as the writer, which it was. A role that may delete runs and is refused
    another right has older grants."""
    migrated_to(database, 35)
    with database.connect() as conn:
        conn.execute("SET ROLE ci_app")
        with pytest.raises(ConfigError) as older:
            retention.prune(conn, keep_days=30, pipeline="build", dry_run=True)
    said = str(older.value)
    assert said.startswith(
        OLDER.split(" ({})")[0] + " (role ci_app: permission denied for table "
    ), said
    assert said.endswith("`cicd-db migrate up` with the same target); nothing was deleted"), said


def test_a_table_that_refers_to_old_runs_is_named_with_the_fix_not_run_again(
    migrated: Database, executions: Store
) -> None:
    """A table added beside the schema whose foreign key has no ON DELETE CASCADE keeps
    its runs: every call would fail on it again, so the message names the constraint and
    the fix, and what was deleted before it (helper-100)."""
    for days in (40, 41):
        record(executions, "build", days_ago=days)
    migrated.execute(
        "CREATE TABLE artifacts (run_id uuid REFERENCES pipeline_executions (id)); "
        "INSERT INTO artifacts SELECT id FROM pipeline_executions "
        "ORDER BY completion_time DESC LIMIT 1"
    )
    with migrated.connect() as conn, pytest.raises(ConfigError) as kept:
        retention.prune(conn, keep_days=30, batch_size=1)
    assert str(kept.value) == (
        "retention cannot delete a run that rows of another table refer to (update or delete "
        'on table "pipeline_executions" violates foreign key constraint '
        '"artifacts_run_id_fkey" on table "artifacts"); 1 run (2 stages, 6 jobs) had been '
        "deleted; the batch in progress was rolled back, and no run was left half-deleted; "
        "delete those rows first, or give that foreign key ON DELETE CASCADE (or SET NULL), "
        "then run again"
    )
    assert counts(migrated) == (1, 2, 6)
    whole(migrated)


def foreign_keys_hold(database: Database) -> None:
    """Every foreign key of the database, made again as pg_restore makes it (in a
    transaction rolled back): PostgreSQL checks each row against what it refers to."""
    keys = database.query(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE contype = 'f'"
    )
    assert keys
    with database.connect() as conn:
        for table, name, definition in keys:
            with conn.transaction(force_rollback=True):
                made = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} {}").format(
                    sql.SQL(str(table)),
                    sql.Identifier(str(name)),
                    sql.Identifier(str(name)),
                    sql.SQL(str(definition)),
                )
                conn.execute(made)


@pytest.mark.parametrize("where", ["options", "role", "set"])
def test_no_run_is_deleted_by_a_session_that_fires_no_cascade(
    migrated: Database, executions: Store, where: str
) -> None:
    """Under session_replication_role = replica (a logical replication subscriber's
    setting) PostgreSQL fires no trigger and no foreign key's ON DELETE CASCADE: the
    runs' rollup rows would stay behind, referring to nothing (helper-118). A dry run
    only counts, so it goes on."""
    for days in (40, 41, 1):
        record(executions, "build", days_ago=days)
    options = "-c session_replication_role=replica" if where == "options" else ""
    if where == "role":
        migrated.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET session_replication_role = replica").format(
                sql.Identifier(migrated.settings.user), sql.Identifier(migrated.name)
            )
        )
        options = ""
    try:
        with psycopg.connect(
            migrated.settings.conninfo(), autocommit=True, options=options
        ) as conn:
            if where == "set":  # by the caller, on the connection it hands over
                conn.execute("SET session_replication_role = replica")
            assert retention.prune(conn, keep_days=30, dry_run=True).runs == 2
            with pytest.raises(ConfigError) as refused:
                retention.prune(conn, keep_days=30)
    finally:
        migrated.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} RESET session_replication_role").format(
                sql.Identifier(migrated.settings.user), sql.Identifier(migrated.name)
            )
        )
    said = str(refused.value)
    assert said.startswith(
        "retention deletes no run under session_replication_role = replica: PostgreSQL "
        "then fires no trigger and no ON DELETE CASCADE, so rows that refer to the runs "
        "deleted would stay behind; nothing was deleted; session_replication_role is replica "
    ), said
    assert ("connection's options" in said) == (where == "options"), said
    assert ("ALTER ROLE" in said) == (where == "role"), said
    assert ("set on the connection (a SET" in said) == (where == "set"), said
    assert counts(migrated) == (3, 6, 18)
    with migrated.connect() as conn:
        retention.prune(conn, keep_days=30)
    assert counts(migrated) == (1, 2, 6)
    foreign_keys_hold(migrated)


@pytest.mark.parametrize(
    ("lock_timeout", "message"),
    [
        (-1, r"^`lock_timeout` -1 is out of range; give a finite number of seconds above 0, "),
        (0, r"^`lock_timeout` 0 is out of range; "),  # 0 is no timeout to PostgreSQL
        (float("nan"), r"^`lock_timeout` nan is out of range; "),
        (float("inf"), r"^`lock_timeout` inf is out of range; "),
        (1e12, r"^`lock_timeout` 1000000000000.0 is out of range; .*at most 2\.14748e\+06$"),
        (True, r"^`lock_timeout` takes a number of seconds, not a bool$"),
        ("1", r"^`lock_timeout` takes a number of seconds, not a str$"),
    ],
)
def test_a_lock_timeout_that_is_no_wait_is_refused_before_anything_is_read(
    database: Database, lock_timeout: object, message: str
) -> None:
    with database.connect() as conn, pytest.raises(UsageError, match=message):
        retention.prune(conn, keep_days=30, lock_timeout=lock_timeout)  # type: ignore[arg-type]


def test_a_lock_timeout_below_a_millisecond_still_waits_no_longer(
    migrated: Database, executions: Store
) -> None:
    """0.4 ms was written "0ms", which PostgreSQL reads as no timeout: retention waited on
    a writer's lock for as long as the writer held it. Rounded up, it waits 1 ms."""
    record(executions, "build", days_ago=40)
    with (
        holding(migrated, "SELECT FROM stage_executions FOR UPDATE"),
        migrated.connect() as conn,
    ):
        pruned = retention.prune(conn, keep_days=30, lock_timeout=0.0004)
    assert (pruned.runs, pruned.held) == (0, 1), pruned


def test_an_interrupt_before_the_first_batch_says_nothing_was_deleted(
    migrated: Database, executions: Store
) -> None:
    """Ctrl-C while counting (here: waiting for a table a migration locks) is told as any
    other interrupt: what was deleted (nothing), and that running again goes on."""
    record(executions, "build", days_ago=40)
    with migrated.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE pipeline_executions IN ACCESS EXCLUSIVE MODE")
        process = start_cli("retention", "--keep-days", "30", "--database-url", migrated.url)
        try:
            migrated.wait_for(
                "SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()",
                "retention never waited for the table",
            )
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            holder.execute("ROLLBACK")
    assert (process.returncode, out) == (130, "")
    assert err == "error: interrupted; nothing was deleted; run again\n"
    assert counts(migrated) == (1, 2, 6)


def test_a_lock_timeout_of_the_session_while_counting_is_named(migrated: Database) -> None:
    """A lock_timeout from PGOPTIONS (or the role, the database) that cuts the count is
    named with where to look, as a statement_timeout is, not told as 'database error'."""
    with migrated.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE pipeline_executions IN ACCESS EXCLUSIVE MODE")
        try:
            result = run_cli(
                "retention", "--keep-days", "30", "--database-url", migrated.url,
                env={"PGOPTIONS": "-c lock_timeout=50"},
            )  # fmt: skip
        finally:
            holder.execute("ROLLBACK")
    assert (result.code, result.out) == (1, ""), result.err
    assert result.err.startswith(
        "error: retention's statement was cancelled (canceling statement due to lock timeout); "
        "nothing was deleted; lock_timeout stopped it, set for this session by the role, "
    ), result.err


def test_a_writer_refused_another_right_on_a_current_schema_is_told_the_right(
    migrated: Database, executions: Store
) -> None:
    """Only grants from before migration 0036 (the run counters unreadable to a role that
    may delete runs) say the schema is older; a right revoked by hand on a current schema
    is named as the right it is, with the role to use (review)."""
    record(executions, "build", days_ago=40)
    migrated.execute("REVOKE UPDATE ON pipeline_executions FROM ci_app")
    try:
        with migrated.connect() as conn:
            conn.execute("SET ROLE ci_app")
            with pytest.raises(ConfigError) as denied:
                retention.prune(conn, keep_days=30)
    finally:
        migrated.execute("GRANT UPDATE ON pipeline_executions TO ci_app")
    assert str(denied.value).startswith(
        "role ci_app lacks a right retention needs (SELECT, UPDATE and DELETE on the "
        "execution tables): permission denied for table pipeline_executions"
    ), str(denied.value)


def test_a_dry_run_cut_by_the_sessions_timeout_says_nothing_of_deleting_or_batches(
    migrated: Database,
) -> None:
    """A dry run counts in one statement: a lock_timeout that cuts it is named with where
    to look, without "nothing was deleted" or a smaller batch size (helper-118)."""
    with migrated.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE pipeline_executions IN ACCESS EXCLUSIVE MODE")
        try:
            result = run_cli(
                "retention", "--keep-days", "30", "--dry-run", "--database-url", migrated.url,
                env={"PGOPTIONS": "-c lock_timeout=50"},
            )  # fmt: skip
        finally:
            holder.execute("ROLLBACK")
    assert (result.code, result.out) == (1, ""), result.err
    assert result.err == (
        "error: retention's statement was cancelled (canceling statement due to lock timeout); "
        "nothing was counted; lock_timeout stopped it, set for this session by the role, the "
        "database, the server or the connection's options (pg_settings' source for "
        "lock_timeout tells which; perhaps a migration left it): raise it there, and run again\n"
    )


def test_a_callers_connection_in_any_date_style_is_pruned(
    migrated: Database, executions: Store
) -> None:
    """The cutoff came back as text, which psycopg parses in ISO styles only: a caller's
    connection in 'SQL, DMY' failed with NotImplementedError (helper-119)."""
    record(executions, "build", days_ago=40)
    with migrated.connect() as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        assert retention.prune(conn, keep_days=30).runs == 1
    assert counts(migrated) == (0, 0, 0)


@pytest.mark.parametrize(
    ("dry_run", "fix"),
    [(True, "run again"), (False, "run again to go on")],
    ids=["dry-run", "delete"],
)
def test_a_cancel_no_setting_explains_is_told_to_run_again(dry_run: bool, fix: str) -> None:
    """A cancel no session setting explains (a person's, the session's timeout not known
    to have fired) names no setting, and says what running again does."""
    cut = psycopg.errors.QueryCanceled("canceling statement due to user request")
    told = retention._cancelled(cut, "nothing was deleted", dry_run)
    assert str(told) == (
        "retention's statement was cancelled (canceling statement due to user request); "
        f"nothing was deleted; {fix}"
    )
