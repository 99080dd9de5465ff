"""The insights rollup (migrations 0032 to 0035): one row per finished run with its
stages' and jobs' figures, kept by triggers, and read by insights instead of the rows.
It must never change a figure: every test here compares insights read through the
rollup with insights read from the rows alone (the rollup emptied, in a transaction
rolled back) and with the oracle of test_insights."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cicd_db import insights, migrations, retention
from cicd_db.errors import IllegalTransition
from cicd_db.store import CANCELED, FAILED, PENDING, RUNNING, SUCCESS, Store

from .fix_db import Database
from .test_insights import NOW, Job, Planned, check, history, oracle_summary, same
from .utils import MANY_JOBS, MIGRATIONS, examples, scans

FINISHED = (SUCCESS, FAILED, CANCELED)


@pytest.fixture
def conn(migrated: Database) -> Iterator[psycopg.Connection[Any]]:
    with migrated.connect() as connection:
        yield connection


def rolled_up(conn: psycopg.Connection[Any]) -> set[Any]:
    return {row[0] for row in conn.execute("SELECT run_id FROM run_rollups").fetchall()}


def finished_runs(conn: psycopg.Connection[Any]) -> set[Any]:
    query = "SELECT id FROM pipeline_executions WHERE status IN ('SUCCESS', 'FAILED', 'CANCELED')"
    return {row[0] for row in conn.execute(query).fetchall()}


def views(conn: psycopg.Connection[Any], pipeline: str) -> list[insights.Insights]:
    """Every view insights gives of `pipeline`, and the summary, over several windows."""
    found: list[insights.Insights] = []
    for window in ({"days": 1}, {"days": 3}, {"days": 30}, {"runs": 1}, {"runs": 3}, {"runs": 50}):
        found.append(insights.insights(conn, pipeline, now=NOW, **window))
        found.append(insights.insights(conn, now=NOW, **window))
    return found


def from_rows(conn: psycopg.Connection[Any], pipeline: str) -> list[insights.Insights]:
    """The same views with the rollup emptied: read from the stages and jobs alone."""
    with conn.transaction(force_rollback=True):
        conn.execute("DELETE FROM run_rollups")
        return views(conn, pipeline)


def agree(conn: psycopg.Connection[Any], pipeline: str) -> None:
    """Insights through the rollup equal insights from the rows, figure for figure (the
    same values under the same percentile_cont: equal, not close), and the oracle's;
    and the rollup has a row for every finished run and for no other."""
    assert rolled_up(conn) == finished_runs(conn)
    assert views(conn, pipeline) == from_rows(conn, pipeline)
    for window in ({"days": 3}, {"days": 30}, {"runs": 2}, {"runs": 50}):
        check(conn, pipeline, **window)
        summary = insights.insights(conn, now=NOW, **window)
        same(summary, oracle_summary(conn, **window))


# -- random histories ---------------------------------------------------------------------


@dataclass
class Recording:
    """One run being recorded, a move at a time, its clock moving forward with it."""

    run: Any
    clock: datetime
    done: bool = False


def step(store: Store, data: st.DataObject, rec: Recording) -> None:
    """One move of the run, drawn from those its state allows: start or finish a stage
    or job (in any order: jobs of several stages running at once, finishing out of
    order), a batch of jobs, a cancel of a stage or of the run, a finish of the run,
    or a move repeated after it was made (a retry), which is refused and changes nothing."""
    rec.clock += timedelta(seconds=data.draw(st.integers(0, 900)))
    at = rec.clock
    stages = store.stages(rec.run.id)
    jobs = {s.id: store.jobs(s) for s in stages}
    # A cancel now and then (one move in 20); the other moves as the state allows them.
    moves: list[str] = []
    if data.draw(st.integers(0, 19)) == 0:
        moves.append("cancel run")
    if any(s.status == PENDING for s in stages):
        moves.append("start stage")
    if any(j.status == PENDING for s in stages if s.status == RUNNING for j in jobs[s.id]):
        moves += ["start job", "start jobs"]
    if any(j.status == RUNNING for js in jobs.values() for j in js):
        moves += ["finish job"] * 3 + ["finish jobs"]
    if any(s.status == RUNNING and all(j.status in FINISHED for j in jobs[s.id]) for s in stages):
        moves += ["finish stage"] * 2
    if any(s.status in (PENDING, RUNNING) for s in stages) and data.draw(st.integers(0, 9)) == 0:
        moves.append("cancel stage")
    if all(s.status in FINISHED for s in stages):
        moves += ["finish run"] * 3
    if not moves:  # nothing else is possible: a run without stages left to start
        moves.append("cancel run")
    if any(j.status in FINISHED for js in jobs.values() for j in js):
        moves.append("retry")
    move = data.draw(st.sampled_from(moves))
    pick = lambda rows: data.draw(st.sampled_from(rows))  # noqa: E731
    if move == "cancel run":
        store.cancel_run(store.run(rec.run.pipeline_name, rec.run.run_number), at=at)
        rec.done = True
    elif move == "start stage":
        store.set_status(pick([s for s in stages if s.status == PENDING]), RUNNING, at=at)
    elif move in ("start job", "start jobs"):
        pending = [
            j for s in stages if s.status == RUNNING for j in jobs[s.id] if j.status == PENDING
        ]
        if move == "start job":
            store.set_status(pick(pending), RUNNING, at=at)
        else:
            store.set_statuses(pending, RUNNING, at=at)
    elif move == "finish job":
        running = [j for js in jobs.values() for j in js if j.status == RUNNING]
        status = data.draw(st.sampled_from([SUCCESS, SUCCESS, FAILED, CANCELED]))
        store.set_status(pick(running), status, at=at)
    elif move == "finish jobs":
        running = [j for js in jobs.values() for j in js if j.status == RUNNING]
        store.set_statuses(running, data.draw(st.sampled_from([SUCCESS, FAILED])), at=at)
    elif move == "finish stage":
        ready = [
            s
            for s in stages
            if s.status == RUNNING and all(j.status in FINISHED for j in jobs[s.id])
        ]
        store.finish_stage(pick(ready), at=at)
    elif move == "cancel stage":
        store.set_status(
            pick([s for s in stages if s.status in (PENDING, RUNNING)]), CANCELED, at=at
        )
    elif move == "finish run":
        run = store.run(rec.run.pipeline_name, rec.run.run_number)
        if data.draw(st.booleans()) and stages:
            status = data.draw(st.sampled_from([SUCCESS, FAILED]))
            try:  # a status asked for must agree with the stages, or it is refused
                store.set_status(run, status, at=at)
            except IllegalTransition:
                store.finish_run(run, at=at)
        else:
            store.finish_run(run, at=at)
        rec.done = True
    else:  # a move made again, as a client that did not hear the answer retries it
        finished = [j for js in jobs.values() for j in js if j.status in FINISHED]
        with pytest.raises(IllegalTransition):
            store.set_status(pick(finished), SUCCESS, at=at)


def begin(store: Store, data: st.DataObject, pipeline: str) -> Recording:
    """A new run (a commit of few, so re-runs of a commit happen), its stages and jobs
    added PENDING; or a run cancelled before it started."""
    start = NOW - timedelta(seconds=data.draw(st.integers(0, 5 * 86400)))
    run = store.start_run(pipeline, data.draw(st.sampled_from(["a", "b", "c"])))
    rec = Recording(run, start)
    if data.draw(st.integers(0, 9)) == 0:
        store.cancel_run(run, at=start)
        rec.done = True
        return rec
    rec.run = store.set_status(run, RUNNING, at=start)
    for order in range(1, data.draw(st.integers(0, 3)) + 1):
        stage = store.add_stage(rec.run, f"stage-{order}", order)
        names = data.draw(st.lists(st.sampled_from(["unit", "lint", "e2e", "docs"]), unique=True))
        store.add_jobs(stage, [(name, name == "lint") for name in names])
    return rec


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_random_histories_read_the_same_through_the_rollup(
    conn: psycopg.Connection[Any], data: st.DataObject
) -> None:
    store = Store.on(conn)
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    recording = [begin(store, data, pipeline) for _ in range(data.draw(st.integers(1, 6)))]
    # The runs move in turns drawn at random, so their moves interleave; a run may be
    # left unfinished (RUNNING, with its stages and jobs anywhere) when the drawing stops.
    for _ in range(data.draw(st.integers(0, 120))):
        live = [rec for rec in recording if not rec.done]
        if not live:
            break
        step(store, data, data.draw(st.sampled_from(live)))
    agree(conn, pipeline)


# -- what keeps the rollup -------------------------------------------------------------------


def test_a_run_has_its_row_once_it_finishes_and_not_before(conn: psycopg.Connection[Any]) -> None:
    pipeline = history(conn, Planned(NOW - timedelta(days=1), end="running"))
    assert rolled_up(conn) == set()
    history(
        conn, Planned(NOW - timedelta(hours=5)), Planned(NOW - timedelta(hours=2), end="cancel")
    )
    history(conn, Planned(NOW - timedelta(hours=1), end="pending-cancel"))
    assert len(rolled_up(conn)) == 3
    [row] = conn.execute(
        "SELECT u.stage_names, u.job_names, u.job_statuses, u.job_seconds FROM run_rollups u "
        "JOIN pipeline_executions r ON r.id = u.run_id AND r.status = 'SUCCESS'"
    ).fetchall()
    assert row == (
        ["build", "test"],
        ["compile", "lint", "unit"],
        [SUCCESS] * 3,
        [60.0, 10.0, 120.0],
    )
    agree(conn, pipeline)


def test_a_transaction_that_finishes_the_run_before_its_children_is_rolled_up_at_commit(
    conn: psycopg.Connection[Any],
) -> None:
    """As a hand-written writer may do: the run's row first, its stage and job after."""
    history(conn, Planned(NOW - timedelta(hours=3), end="running"))
    with conn.transaction():
        conn.execute(
            "UPDATE pipeline_executions SET status = 'CANCELED', completion_time = %s", [NOW]
        )
        conn.execute(
            "UPDATE stage_executions SET status = 'CANCELED', completion_time = %s "
            "WHERE status IN ('PENDING', 'RUNNING')",
            [NOW],
        )
        conn.execute(
            "UPDATE job_executions SET status = 'CANCELED', completion_time = %s "
            "WHERE status IN ('PENDING', 'RUNNING')",
            [NOW],
        )
    [statuses] = conn.execute("SELECT job_statuses FROM run_rollups").fetchone() or [None]
    assert statuses == [SUCCESS, CANCELED, CANCELED]
    agree(conn, "build")


def test_a_finished_job_or_stage_changed_by_hand_rolls_its_run_up_again(
    conn: psycopg.Connection[Any],
) -> None:
    pipeline = history(conn, Planned(NOW - timedelta(hours=3)), Planned(NOW - timedelta(hours=2)))
    conn.execute(
        "UPDATE job_executions SET status = 'FAILED', completion_time = completion_time "
        "+ interval '77 seconds' WHERE job_name = 'unit' AND stage_execution_id = "
        "(SELECT min(id::text)::uuid FROM stage_executions WHERE stage_name = 'test')"
    )
    conn.execute(
        "UPDATE stage_executions SET completion_time = completion_time + interval '1 hour' "
        "WHERE stage_name = 'build'"
    )
    found = check(conn, pipeline, days=2)
    [unit] = [j for j in found.jobs if j.job == "unit"]
    assert (unit.failed, unit.duration_p95_seconds) == (1, pytest.approx(120 + 77 * 0.95))
    agree(conn, pipeline)


def test_retention_deletes_the_rows_with_the_runs(conn: psycopg.Connection[Any]) -> None:
    today = datetime.now(UTC)  # retention's cutoff is the server's clock
    old = today - timedelta(days=40)
    pipeline = history(conn, Planned(old), Planned(old + timedelta(hours=1), end="cancel"))
    history(conn, Planned(today - timedelta(days=1)), pipeline=pipeline)
    assert len(rolled_up(conn)) == 3
    pruned = retention.prune(conn, keep_days=30)
    assert pruned.runs == 2
    assert rolled_up(conn) == finished_runs(conn) and len(rolled_up(conn)) == 1
    agree(conn, pipeline)


def test_the_backfill_fills_the_runs_that_have_no_row(conn: psycopg.Connection[Any]) -> None:
    """Runs recorded before the rollup existed (or loaded with triggers off) are read
    from their rows; the backfill of 0035 gives them their row, in batches."""
    failing = (Job("unit", 90, FAILED), Job("lint", 10, allows_failure=True))
    passing = (Job("unit", 95), Job("lint", 10, allows_failure=True))
    pipeline = history(
        conn,
        *(
            Planned(NOW - timedelta(hours=h), f"c{h % 3}", test=failing if h % 2 else passing)
            for h in range(1, 12)
        ),
        Planned(NOW - timedelta(minutes=30), end="running"),
    )
    rows = conn.execute("SELECT * FROM run_rollups ORDER BY run_id").fetchall()
    conn.execute("DELETE FROM run_rollups WHERE run_id IN (SELECT run_id FROM run_rollups LIMIT 6)")
    agree_without = views(conn, pipeline)
    conn.execute("CALL cicd_db_backfill_run_rollups(4)")
    assert conn.execute("SELECT * FROM run_rollups ORDER BY run_id").fetchall() == rows
    assert views(conn, pipeline) == agree_without
    agree(conn, pipeline)


def test_rolling_a_run_up_reads_its_own_jobs_not_every_job(conn: psycopg.Connection[Any]) -> None:
    """The roll-up, once a finished run, reads the run's jobs through their index, stage
    by stage, never a scan of every job: on a young table's statistics the planner made
    its join of stages and jobs a hash join over the whole table. Checked on the function
    as the database holds it: its statement, explained for one run."""
    conn.execute(MANY_JOBS)
    [(body,)] = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'cicd_db_roll_up'"
    ).fetchall()
    start = body.index("SELECT", body.index("INSERT INTO run_rollups"))
    statement = body[start : body.index("ON CONFLICT")]
    [(run_id,)] = conn.execute("SELECT id FROM pipeline_executions LIMIT 1").fetchall()
    [(plan,)] = conn.execute(
        "EXPLAIN (FORMAT JSON) " + statement.replace("runs)", f"ARRAY['{run_id}'::uuid])")
    ).fetchall()

    assert ("Index Scan", "job_executions") in scans(plan[0]["Plan"]) or (
        "Bitmap Heap Scan",
        "job_executions",
    ) in scans(plan[0]["Plan"])
    assert ("Seq Scan", "job_executions") not in scans(plan[0]["Plan"])


def test_a_runs_finish_locks_its_own_jobs_not_every_job(conn: psycopg.Connection[Any]) -> None:
    """Before rolling a finished run up, its trigger locks the run's jobs; that lock's
    query, a join of the run's stages and every job, the planner made a scan of every job
    on a young table's statistics, once a run finished: 1,000 runs finished in one
    transaction took 5-7 s at its commit, 9,000 did not end in 4 minutes (helper-140). Each
    of the trigger's statements on the jobs, as the database holds it, explained for one
    run: through the jobs' index."""
    conn.execute(MANY_JOBS)
    [(body,)] = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'cicd_db_roll_up_run'"
    ).fetchall()
    [(run_id,)] = conn.execute("SELECT id FROM pipeline_executions LIMIT 1").fetchall()
    statements = [
        "SELECT" + part.split(";")[0].replace("NEW.id", f"'{run_id}'::uuid")
        for part in body.split("PERFORM")[1:]
        if "job_executions" in part.split(";")[0]
    ]
    assert statements, body
    for statement in statements:
        [(plan,)] = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}").fetchall()
        found = scans(plan[0]["Plan"])
        assert ("Seq Scan", "job_executions") not in found, (statement, found)
        assert any(table == "job_executions" for _, table in found), (statement, found)


# -- rolled up while others write the same run -----------------------------------------------


def _waiting(database: Database, pid: int) -> None:
    database.wait_for(
        f"SELECT 1 FROM pg_locks WHERE pid = {pid} AND NOT granted",
        f"session {pid} never waited for a lock",
    )


# compile, 60 s in Planned, made 90 s by hand.
LONGER_COMPILE = (
    "UPDATE job_executions SET completion_time = completion_time + interval '30 s' "
    "WHERE job_name = 'compile'"
)


def _rolled_up_with_the_longer_compile(migrated: Database, pipeline: str) -> None:
    """The run's row has the job LONGER_COMPILE changed as it is now, and reads as the
    tables do."""
    with migrated.connect() as conn:
        [seconds] = conn.execute("SELECT job_seconds FROM run_rollups").fetchone() or [None]
        assert seconds is not None and seconds[0] == 90.0  # compile: 60 s, and 30 more
        agree(conn, pipeline)


def _in_thread(work: Callable[[], object], errors: list[psycopg.Error]) -> threading.Thread:
    """A thread (not started) that runs `work`, a database error it raises kept in `errors`."""

    def run() -> None:
        try:
            work()
        except psycopg.Error as error:
            errors.append(error)

    return threading.Thread(target=run)


def test_two_edits_of_one_finished_run_committing_together_both_reach_its_row(
    migrated: Database,
) -> None:
    """Each edit's trigger rolls the run up at its commit, from what it sees then: two
    transactions committing at once each saw only its own edit, and the second row
    written took the first one's edit back (a lost update of the rollup, for good). Held
    here between computing and writing by a lock on the rollup row; the roll-up must take
    the run first, so the second computes after the first committed."""
    with migrated.connect() as conn:
        pipeline = history(conn, Planned(NOW - timedelta(hours=3)))
    edit = "UPDATE job_executions SET status = 'FAILED' WHERE job_name = %s"
    errors: list[psycopg.Error] = []

    def commit(name: str, session: psycopg.Connection[Any]) -> None:
        with session.transaction():
            session.execute(edit, [name])

    with migrated.connect() as holder, migrated.connect() as first, migrated.connect() as second:
        threads = []
        with holder.transaction():
            holder.execute("SELECT FROM run_rollups FOR UPDATE")
            for name, session in (("compile", first), ("unit", second)):
                threads.append(_in_thread(partial(commit, name, session), errors))
                threads[-1].start()
                _waiting(migrated, session.info.backend_pid)
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    with migrated.connect() as conn:
        [statuses] = conn.execute("SELECT job_statuses FROM run_rollups").fetchone() or [None]
        assert statuses == [FAILED, SUCCESS, FAILED]  # compile; lint, unit (by name)
        agree(conn, pipeline)


# -- the upgrade: rows written before the guards ---------------------------------------------


def test_a_finished_job_changed_before_its_guard_existed_is_rolled_up_by_the_upgrade(
    database: Database,
) -> None:
    """A run finished after 0032 had its row; a job of it changed by hand
    before 0034 made the job guard (an upgrade stopped or retried between them) left the
    row with the old values, which the backfill (0035) never touches. 0038 rolls every
    row up again: that one; one stale though written after 0034 (as after a dump and
    restore, which renumbers transactions); a right one, and its run, it
    only reads."""
    with database.connect() as conn:
        runner = migrations.Runner(conn, migrations.discover(MIGRATIONS))
        runner.apply(target=33)
        pipeline = history(conn, Planned(NOW - timedelta(hours=3)))
        conn.execute("UPDATE job_executions SET status = 'FAILED' WHERE job_name = 'unit'")
        runner.apply(target=36)
        history(
            conn,
            Planned(NOW - timedelta(hours=2)),
            Planned(NOW - timedelta(hours=1)),
            pipeline=pipeline,
        )
        order = "SELECT u.{} FROM run_rollups u JOIN pipeline_executions r ON r.id = u.run_id ORDER BY r.start_time"
        second, third = (row[0] for row in conn.execute(order.format("run_id")).fetchall()[1:])
        conn.execute("UPDATE run_rollups SET job_seconds = '{1,2,3}' WHERE run_id = %s", [second])
        # A right row and its run as they are: 0038 reads them, locks and writes neither.
        right = "SELECT u.xmin::text, u.xmax::text, r.xmax::text FROM run_rollups u JOIN "
        right += "pipeline_executions r ON r.id = u.run_id WHERE u.run_id = %s"
        untouched = conn.execute(right, [third]).fetchall()
        migrations.Runner(conn, migrations.discover(MIGRATIONS)).apply()
        statuses = [row[0] for row in conn.execute(order.format("job_statuses")).fetchall()]
        assert statuses[0] == [SUCCESS, SUCCESS, FAILED]  # compile; lint, unit (by name)
        assert conn.execute(right, [third]).fetchall() == untouched
        agree(conn, pipeline)


def test_a_row_that_is_right_is_not_written_again(conn: psycopg.Connection[Any]) -> None:
    """Rolling a run up again writes no new version of a row that is right (0037): the
    upgrade's second look (0038) costs reads, not a table's worth of dead rows."""
    history(conn, Planned(NOW - timedelta(hours=3)), Planned(NOW - timedelta(hours=2)))
    before = conn.execute("SELECT run_id, xmin::text FROM run_rollups ORDER BY 1").fetchall()
    conn.execute("SELECT cicd_db_roll_up(ARRAY(SELECT run_id FROM run_rollups))")
    assert conn.execute("SELECT run_id, xmin::text FROM run_rollups ORDER BY 1").fetchall() == (
        before
    )
    conn.execute("UPDATE run_rollups SET job_seconds = '{}'")
    conn.execute("SELECT cicd_db_roll_up(ARRAY(SELECT run_id FROM run_rollups))")
    agree(conn, "build")


def test_a_hand_edit_under_a_run_the_store_cancels_deadlocks_with_neither(
    migrated: Database,
) -> None:
    """The store cancelling a run locks it, then its stages and jobs; a hand
    edit of one of its finished jobs rolls the run up at its commit. The roll-up takes
    only finished runs, so the edit commits and the cancel, which waited for the job,
    goes on (a roll-up that took every run deadlocked the two)."""
    with migrated.connect() as conn:
        pipeline = history(conn, Planned(NOW - timedelta(hours=1), end="running"))
    errors: list[psycopg.Error] = []
    with migrated.connect() as editor, migrated.connect() as storing:
        store = Store.on(storing)
        run = store.run(pipeline, 1)

        thread = _in_thread(partial(store.cancel_run, run), errors)
        with editor.transaction():
            editor.execute("UPDATE job_executions SET status = 'FAILED' WHERE job_name = 'compile'")
            thread.start()
            _waiting(migrated, storing.info.backend_pid)
        thread.join(timeout=60)
    assert errors == []
    with migrated.connect() as conn:
        assert Store.on(conn).run(pipeline, 1).status == CANCELED
        agree(conn, pipeline)


def test_a_hand_edit_committing_while_its_run_is_being_finished_reaches_its_row(
    migrated: Database,
) -> None:
    """A finished job changed by hand while another transaction finishes its run: the
    run's roll-up, at that transaction's commit, read the job as it was; the edit's
    roll-up, at its own commit, found the run not yet finished and wrote nothing; the
    row kept the old values for good (a review saw 227 of 400 runs so with the store's
    own calls, edits landing within 4 ms of finish_run). The finishing roll-up waits for
    the run's stages and jobs first, for up to 2 s. Held here: the finishing transaction
    rolls up (SET CONSTRAINTS ALL IMMEDIATE) while the edit is open, the edit commits
    once the finisher is seen waiting, and the finisher commits after it."""
    with migrated.connect() as conn:
        pipeline = history(conn, Planned(NOW - timedelta(hours=1), end="running"))
    errors: list[psycopg.Error] = []
    rolled, go = threading.Event(), threading.Event()
    with migrated.connect() as editor, migrated.connect() as finisher:

        def finish() -> None:
            try:
                with finisher.transaction():
                    finisher.execute(
                        "UPDATE pipeline_executions SET status = 'FAILED', completion_time = %s",
                        [NOW],
                    )
                    finisher.execute("SET CONSTRAINTS ALL IMMEDIATE")
                    rolled.set()
                    go.wait(timeout=60)
            finally:
                rolled.set()

        thread = _in_thread(finish, errors)
        with editor.transaction():
            editor.execute(LONGER_COMPILE)
            thread.start()
            # It waits in steps (NOWAIT, then a 20 ms sleep, up to 2 s): seen asleep.
            deadline = time.monotonic() + 30
            while not rolled.is_set() and not migrated.query(
                "SELECT 1 FROM pg_stat_activity WHERE pid = "
                f"{finisher.info.backend_pid} AND wait_event = 'PgSleep'"
            ):
                assert time.monotonic() < deadline, (
                    "the finishing transaction neither rolled up nor waited"
                )
                time.sleep(0.02)
        go.set()
        thread.join(timeout=60)
    assert errors == []
    _rolled_up_with_the_longer_compile(migrated, pipeline)


def test_a_hand_edit_left_open_does_not_hold_the_runs_finish(migrated: Database) -> None:
    """The finish waits for an open edit of the run's stages and jobs only a moment: a
    forgotten psql session must not hold the CI system's finish (a review saw it wait as
    long as the edit stayed open). The edit, committed after the finish, rolls the
    finished run up itself, so the row is right either way."""
    with migrated.connect() as conn:
        pipeline = history(conn, Planned(NOW - timedelta(hours=1), end="running"))
    errors: list[psycopg.Error] = []
    with migrated.connect() as editor, migrated.connect() as finisher:

        def finish() -> None:
            with finisher.transaction():
                finisher.execute(
                    "UPDATE pipeline_executions SET status = 'FAILED', completion_time = %s",
                    [NOW],
                )

        thread = _in_thread(finish, errors)
        with editor.transaction():
            editor.execute(LONGER_COMPILE)
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the finish waited for the open edit"
        assert errors == []
    _rolled_up_with_the_longer_compile(migrated, pipeline)


def test_a_status_edit_and_a_job_edit_of_one_finished_run_both_commit(
    migrated: Database,
) -> None:
    """By hand, one transaction sets a finished run's status again while another changes
    one of its jobs: the job edit's roll-up waits for the run; the status edit's tries
    for the job, gives up after its bounded wait and commits; then the job edit rolls
    the run up with both. Neither is rolled back as a deadlock."""
    with migrated.connect() as conn:
        pipeline = history(conn, Planned(NOW - timedelta(hours=3)))
    errors: list[psycopg.Error] = []
    with migrated.connect() as job_editor, migrated.connect() as status_editor:

        def set_status() -> None:
            with status_editor.transaction():
                status_editor.execute("UPDATE pipeline_executions SET status = 'FAILED'")

        thread = _in_thread(set_status, errors)
        try:
            with job_editor.transaction():
                job_editor.execute(LONGER_COMPILE)
                thread.start()
                migrated.wait_for(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = "
                    f"{status_editor.info.backend_pid} "
                    "AND (wait_event = 'PgSleep' OR wait_event_type = 'Lock')",
                    "the status edit never tried for the job",
                )
        except psycopg.Error as error:
            errors.append(error)
        thread.join(timeout=60)
    assert errors == []
    _rolled_up_with_the_longer_compile(migrated, pipeline)
