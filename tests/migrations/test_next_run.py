"""What a migration leaves for the next run besides settings (those are in
test_next_run_settings.py): row-level security, constraints, columns, rules, triggers or
another table in place of the history; functions and operators put before PostgreSQL's
on a search_path; times in the history as whoever edited it left them.

Each case is a class of state, not one example. The next run either works as if
nothing were left (history right, no file applied twice), or stops with one line that
names the cause and a fix, and that fix, run as it is written, makes the run after it
work.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import migrations
from cicd_db.store import Store

from ..fix_cli import migrate, run_cli
from ..fix_db import Database, end_reads
from ..utils import LOOK_ALIKE_TYPES, MIGRATIONS, examples, write_migrations
from .next_run import (
    COUNTED,
    NO_TRANSACTION,
    Login,
    leave,
    one_line,
    ran_once,
    refusal,
)

# -- text: files are UTF-8, whatever client_encoding is set ------------------------------


# -- search_path: the runner's statements use PostgreSQL's functions, never others ------

SHADOWS = """
CREATE SCHEMA shadow;
CREATE FUNCTION shadow.now() RETURNS timestamptz LANGUAGE sql AS $$SELECT 'epoch'::timestamptz$$;
CREATE FUNCTION shadow.clock_timestamp() RETURNS timestamptz LANGUAGE sql
    AS $$SELECT 'infinity'::timestamptz$$;
CREATE FUNCTION shadow.statement_timestamp() RETURNS timestamptz LANGUAGE sql
    AS $$SELECT 'infinity'::timestamptz$$;
CREATE FUNCTION shadow.round(double precision) RETURNS double precision LANGUAGE sql
    AS $$SELECT 1 / 0::double precision$$;
CREATE FUNCTION shadow.round(numeric) RETURNS numeric LANGUAGE sql AS $$SELECT 1 / 0::numeric$$;
CREATE FUNCTION shadow.date_part(text, interval) RETURNS double precision LANGUAGE sql
    AS $$SELECT -1::double precision$$;
CREATE FUNCTION shadow.md5(text) RETURNS text LANGUAGE sql AS $$SELECT 'forged'$$;
CREATE FUNCTION shadow.string_agg(text, text) RETURNS text LANGUAGE sql AS $$SELECT 'x'$$;
CREATE FUNCTION shadow.shadow_minus(timestamptz, timestamptz) RETURNS interval LANGUAGE sql
    AS $$SELECT interval '-1 day'$$;
CREATE OPERATOR shadow.- (LEFTARG = timestamptz, RIGHTARG = timestamptz,
    FUNCTION = shadow.shadow_minus);
CREATE FUNCTION shadow.every_name(name, name) RETURNS boolean LANGUAGE sql AS $$SELECT true$$;
CREATE OPERATOR shadow.= (LEFTARG = name, RIGHTARG = name, FUNCTION = shadow.every_name);
CREATE FUNCTION shadow.every_count(bigint, integer) RETURNS boolean LANGUAGE sql
    AS $$SELECT false$$;
CREATE OPERATOR shadow.= (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = shadow.every_count);
CREATE FUNCTION shadow.refuse(text, text) RETURNS boolean LANGUAGE sql AS $$SELECT 1 / 0 = 1$$;
CREATE OPERATOR shadow.~* (LEFTARG = text, RIGHTARG = text, FUNCTION = shadow.refuse);
CREATE FUNCTION shadow.refuse(oid, integer) RETURNS boolean LANGUAGE sql AS $$SELECT 1 / 0 = 1$$;
CREATE OPERATOR shadow.<> (LEFTARG = oid, RIGHTARG = integer, FUNCTION = shadow.refuse);
GRANT USAGE ON SCHEMA shadow TO PUBLIC;
"""
PATH_PARTS = ["shadow", "public", "pg_catalog", '"$user"', "pg_temp"]


def test_functions_and_operators_before_pg_catalog_do_not_stand_in_for_the_runners(
    login: Login, tmp_path: Path
) -> None:
    """Any order of a search_path (hypothesis) that puts a schema with its own now(),
    clock_timestamp(), round(), date_part(), md5(), `-`, an `=` that says every name
    is equal (and no count is), and a `~*` and `<>` that fail, before pg_catalog, left
    on the database: every run
    applies its file once, records it with the real time, and `status` reads the
    history; and a file that builds an index concurrently drops no other invalid index
    (the runner's lookup of one an interrupted run left would take any under that `=`)."""
    base = "CREATE TABLE public.base (id int);\n"
    folder = write_migrations(tmp_path / "m", {"0001_shadows.sql": SHADOWS + base})
    assert migrate(login.database, folder).code == 0
    with login.admin.connect() as conn:  # an invalid index that is none of the runner's
        conn.execute("CREATE TABLE public.twice (id int)")
        conn.execute("INSERT INTO twice VALUES (1), (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY twice_id ON public.twice (id)")
    not_mine = (
        "SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = 'public.twice_id'::regclass"
    )
    assert login.admin.query(not_mine) == [(False,)]
    version = iter(range(2, 10_000))

    @settings(
        max_examples=examples(20),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.permutations(PATH_PARTS), st.booleans())
    def recorded_right(order: list[str], transactional: bool) -> None:
        v = next(version)
        path = ", ".join(order)
        login.admin.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = {}").format(
                sql.Identifier(login.admin.name), sql.SQL(path)
            )
        )
        head = "" if transactional else NO_TRANSACTION
        body = f"CREATE TABLE public.t{v} (id int);\n"
        if not transactional:  # one statement, as such a file holds
            body = f"CREATE INDEX CONCURRENTLY t{v}_id ON public.base (id);\n"
        (folder / f"{v:04d}_t.sql").write_text(head + body)
        result = migrate(login.database, folder)
        assert result.code == 0, (path, result)
        assert "dropped invalid index" not in result.out + result.err, (path, result)
        assert login.admin.query(not_mine) == [(False,)], path
        row = login.admin.query(
            "SELECT applied_at > pg_catalog.now() - interval '1 minute' AND applied_at <= "
            "pg_catalog.now(), duration_ms BETWEEN 0 AND 60000 FROM "
            f"cicd_db.cicd_db_schema_history WHERE version = {v}"
        )
        assert row == [(True, True)], (path, row)
        status = migrate(login.database, folder, "status")
        assert status.code == 0 and "pending" not in status.out, (path, status)

    recorded_right()


TABLES_NAMED_AS_TYPES = "CREATE TABLE public.text (a int); CREATE TABLE public.oid (a int);"


@pytest.mark.parametrize("login", ["owner"], indirect=True)
@pytest.mark.parametrize("first", ["types", "public"])
def test_type_names_before_pg_catalog_do_not_stand_in_for_the_runners(
    login: Login, tmp_path: Path, first: str
) -> None:
    """A search_path that names a schema of look-alike types (or public, with tables
    named text and oid) before pg_catalog, set on the database: every command that reads
    or writes the history (the lock's sessions, a rehearsal, `status`) and the schema's
    comparison run as they would without it."""
    made, path = (
        (LOOK_ALIKE_TYPES, "public, types")
        if first == "types"
        else (TABLES_NAMED_AS_TYPES, "public")
    )
    login.admin.execute(
        made
        + sql.SQL("ALTER DATABASE {} SET search_path = {}, pg_catalog")
        .format(sql.Identifier(login.admin.name), sql.SQL(path))
        .as_string()
    )
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE a (id int);\n",
            "0002_index.sql": NO_TRANSACTION + "CREATE INDEX CONCURRENTLY a_id ON a (id);\n",
            "0003_b.sql": "CREATE TABLE b (id int);\n",
        },
    )
    first_run = migrate(login.database, folder, "up", "--target", "1")
    assert (first_run.code, first_run.err) == (0, ""), first_run
    rehearsed = migrate(login.database, folder, "up", "--rehearse")
    assert rehearsed.code == 0, rehearsed
    done = migrate(login.database, folder)
    assert (done.code, done.err) == (0, ""), done
    assert login.database.history() == [1, 2, 3]
    status = migrate(login.database, folder, "status")
    assert status.code == 0 and "pending" not in status.out, status
    again = migrate(login.database, folder)
    assert (again.code, again.err) == (0, ""), again
    diff = run_cli(
        "schema", "diff", "--database-url", login.database.url, "--migrations-dir", str(folder)
    )
    # The tables named text and oid are none of the files': the comparison names them.
    drift = {"unexpected table oid", "unexpected table text"} if first == "public" else set()
    assert (diff.code, diff.err) == (3 if drift else 0, ""), diff
    assert {line for line in diff.out.splitlines() if "table" in line} == drift, diff
    assert login.database.history() == [1, 2, 3]


# -- the history: row-level security and constraints a migration adds ------------------

HIDE_THE_HISTORY = (
    "ALTER TABLE cicd_db.cicd_db_schema_history ENABLE ROW LEVEL SECURITY;\n"
    "ALTER TABLE cicd_db.cicd_db_schema_history FORCE ROW LEVEL SECURITY;\n"
    "CREATE POLICY let_in ON cicd_db.cicd_db_schema_history FOR INSERT WITH CHECK (true);\n"
    "CREATE POLICY show_none ON cicd_db.cicd_db_schema_history FOR SELECT USING (false);\n"
)
THE_RLS_FIX = re.compile(r"ALTER TABLE cicd_db\.cicd_db_schema_history [A-Z ,]+SECURITY")


@pytest.mark.parametrize("transactional", [True, False], ids=["transaction", "no-transaction"])
def test_a_migration_that_hides_the_history_is_not_recorded_and_runs_nothing_twice(
    login: Login, tmp_path: Path, transactional: bool
) -> None:
    """Row-level security on the history (FORCE, so its owner is held to it too) with a
    policy that shows no row: the file that does it is refused (its own row could not be
    trusted), and no later run sees an empty history and runs the files again."""
    head = "" if transactional else NO_TRANSACTION
    body = (
        HIDE_THE_HISTORY
        if transactional
        else f"DO $d$BEGIN {HIDE_THE_HISTORY.replace(chr(10), ' ')} END$d$;\n"
    )
    folder = write_migrations(
        tmp_path / "m", {"0001_counted.sql": COUNTED, "0002_hide.sql": head + body}
    )
    result = migrate(login.database, folder)
    superuser = login.admin.query(
        f"SELECT rolsuper FROM pg_roles WHERE rolname = '{login.role}'"
    ) == [(True,)]
    if superuser:  # row-level security never applies to a superuser: nothing is hidden
        assert result.code == 0, result
        assert migrate(login.database, folder, "status").out.count("applied") == 2
        return
    line = refusal(result)
    assert "0002_hide.sql cannot be recorded: the migration history" in line, line
    assert "row-level security" in line and "fix the file" not in line, line
    assert login.admin.history() == [1]
    # What the no-transaction file did stays (it is not recorded): every later run is
    # refused, and runs nothing twice, until the history is made readable again.
    for args in (("status",), ()):
        again = migrate(login.database, folder, *args)
        if transactional:
            # It was rolled back with the policy: the history reads as it is, 0002 is
            # pending, and applying it again is refused again, with the same line.
            if args:
                assert again.code == 0, again
                assert re.search(r"\n1 +counted +applied", again.out), again.out
                assert re.search(r"\n2 +hide +pending", again.out), again.out
            else:
                assert refusal(again) == line, again
            continue
        assert again.code == 2, again
        assert "row-level security" in one_line(again), again
    ran_once(login)
    if not transactional:
        # The fix, as written: the history is read again, 0001 applied, 0002 pending
        # (a no-transaction file that could not be recorded runs again next time).
        fix = THE_RLS_FIX.search(one_line(again))
        assert fix, again
        login.admin.execute(fix[0])
        status = migrate(login.database, folder, "status")
        assert status.code == 0, status
        assert re.search(r"\n1 +counted +applied", status.out), status.out
        assert re.search(r"\n2 +hide +pending", status.out), status.out


HISTORY = "cicd_db.cicd_db_schema_history"
# What is changed on the history, and the statement the refusal must give to undo it.
# Each refuses the row of version 3 (named `same_but_longer`, with the checksum of
# version 2), and no row before it.
ALTERATIONS = {
    "check": (
        f"ALTER TABLE {HISTORY} ADD CONSTRAINT small CHECK (version < 3);\n",
        f"ALTER TABLE {HISTORY} DROP CONSTRAINT small",
    ),
    "unique index": (
        f"CREATE UNIQUE INDEX one_per_checksum ON {HISTORY} (checksum);\n",
        "DROP INDEX cicd_db.one_per_checksum",
    ),
    "foreign key": (
        "CREATE TABLE public.allowed (v bigint PRIMARY KEY);\n"
        "INSERT INTO public.allowed VALUES (1), (2);\n"
        f"ALTER TABLE {HISTORY} ADD CONSTRAINT allowed_fk "
        "FOREIGN KEY (version) REFERENCES public.allowed NOT VALID;\n",
        f"ALTER TABLE {HISTORY} DROP CONSTRAINT allowed_fk",
    ),
    # The parent's bounds refuse the row, which no constraint of the history shows
    # (found by an adversarial run, helper-97).
    "partition": (
        f"CREATE TABLE public.hparent (LIKE {HISTORY}) PARTITION BY RANGE (version);\n"
        f"ALTER TABLE public.hparent ATTACH PARTITION {HISTORY} FOR VALUES FROM (0) TO (3);\n",
        f"ALTER TABLE public.hparent DETACH PARTITION {HISTORY}",
    ),
    # The parent's own constraints stay on the history, as its own, once it is detached:
    # DETACH is told first, then their DROP (found in review, helper-98).
    "partition with its parent's check": (
        f"ALTER TABLE {HISTORY} ADD CONSTRAINT small CHECK (version < 3);\n"
        f"CREATE TABLE public.hparent (LIKE {HISTORY}) PARTITION BY RANGE (version);\n"
        "ALTER TABLE public.hparent ADD CONSTRAINT small CHECK (version < 3);\n"
        f"ALTER TABLE public.hparent ATTACH PARTITION {HISTORY} FOR VALUES FROM (0) TO (100);\n",
        f"ALTER TABLE public.hparent DETACH PARTITION {HISTORY}",
    ),
    "partition with its parent's foreign key": (
        "CREATE TABLE public.allowed (v bigint PRIMARY KEY);\n"
        "INSERT INTO public.allowed VALUES (1), (2);\n"
        f"CREATE TABLE public.hparent (LIKE {HISTORY}) PARTITION BY RANGE (version);\n"
        f"ALTER TABLE public.hparent ATTACH PARTITION {HISTORY} FOR VALUES FROM (0) TO (100);\n"
        "ALTER TABLE public.hparent ADD CONSTRAINT pfk FOREIGN KEY (version) "
        "REFERENCES public.allowed;\n",
        f"ALTER TABLE public.hparent DETACH PARTITION {HISTORY}",
    ),
    "not-null column": (
        f"ALTER TABLE {HISTORY} ADD COLUMN extra int NOT NULL DEFAULT 1;\n"
        f"ALTER TABLE {HISTORY} ALTER COLUMN extra DROP DEFAULT;\n",
        f"ALTER TABLE {HISTORY} DROP COLUMN extra",
    ),
    "narrowed column": (
        f"ALTER TABLE {HISTORY} ALTER COLUMN name TYPE varchar(12);\n",
        f"ALTER TABLE {HISTORY} ALTER COLUMN name TYPE text",
    ),
    "keyword names": (  # each must be quoted in the statement that undoes it
        f'ALTER TABLE {HISTORY} ADD CONSTRAINT "check" CHECK (version < 3);\n'
        f'ALTER TABLE {HISTORY} ADD COLUMN "order" int;\n',
        f'ALTER TABLE {HISTORY} DROP CONSTRAINT "check"',
    ),
    "nullable column and a check": (  # listed beside what refused the row
        f"ALTER TABLE {HISTORY} ALTER COLUMN applied_by DROP NOT NULL;\n"
        f"ALTER TABLE {HISTORY} ADD CONSTRAINT small CHECK (version < 3);\n",
        f"ALTER TABLE {HISTORY} ALTER COLUMN applied_by SET NOT NULL",
    ),
    "trigger": (
        "CREATE FUNCTION public.no_more() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN IF NEW.version >= 3 THEN RAISE EXCEPTION 'no more'; END IF; RETURN NEW; END$$;\n"
        f"CREATE TRIGGER no_more BEFORE INSERT ON {HISTORY} FOR EACH ROW "
        "EXECUTE FUNCTION public.no_more();\n",
        f"DROP TRIGGER no_more ON {HISTORY}",
    ),
    # Deferred to COMMIT, after the runner's checks, unless the runner fires them first.
    "deferred trigger": (
        "CREATE FUNCTION public.no_more() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'no more'; END$$;\n"
        f"CREATE CONSTRAINT TRIGGER no_more AFTER INSERT ON {HISTORY} DEFERRABLE INITIALLY "
        "DEFERRED FOR EACH ROW WHEN (NEW.version >= 3) EXECUTE FUNCTION public.no_more();\n",
        f"DROP TRIGGER no_more ON {HISTORY}",
    ),
    "deferred unique": (
        f"ALTER TABLE {HISTORY} ADD CONSTRAINT one_per_checksum UNIQUE (checksum) "
        "DEFERRABLE INITIALLY DEFERRED;\n",
        f"ALTER TABLE {HISTORY} DROP CONSTRAINT one_per_checksum",
    ),
}


@pytest.mark.parametrize("transactional", [True, False], ids=["transaction", "no-transaction"])
@pytest.mark.parametrize("kind", list(ALTERATIONS))
def test_what_was_changed_on_the_history_is_named_not_the_later_file(
    database: Database, tmp_path: Path, kind: str, transactional: bool
) -> None:
    """Changed after versions 1 and 2 were recorded (by a person, another tool, or a
    migration of its own: a file that changes the history and then fails to record
    itself is that file's to fix, and is told so): the refusal of version 3 names the
    change and the statement that undoes it; run as written, the next run records it."""
    added, undo = ALTERATIONS[kind]
    head = "" if transactional else NO_TRANSACTION
    folder = write_migrations(
        tmp_path / "m",
        {"0001_first.sql": "SELECT 2;\n", "0002_same.sql": head + "SELECT 1;\n"},
    )
    assert migrate(database, folder).code == 0
    database.execute(added)
    write_migrations(folder, {"0003_same_but_longer.sql": head + "SELECT 1;\n"})
    result = migrate(database, folder)
    line = refusal(result)
    assert line.startswith(
        "error: migration 0003_same_but_longer.sql cannot be recorded: the migration history "
        f"{HISTORY} refused its row ("
    ), line
    assert "fix the file" not in line, line
    assert database.history() == [1, 2]
    statements = re.search(r"undo that \((.*)\) and run again$", line)
    assert statements and undo in statements[1].split("; "), line
    for statement in statements[1].split("; "):
        database.execute(statement)  # as the refusal writes it
    again = migrate(database, folder)
    assert again.code == 0, again
    assert database.history() == [1, 2, 3]


@pytest.mark.parametrize(
    "setting", ["quote_all_identifiers = on", "extra_float_digits = -15", "DateStyle = 'SQL, DMY'"]
)
def test_what_was_changed_on_the_history_is_read_alike_whatever_the_database_sets(
    database: Database, tmp_path: Path, setting: str
) -> None:
    """A setting of the database (a migration's ALTER DATABASE ... SET, say) that changes
    how PostgreSQL writes types and defaults: the changes named are the real ones alone.
    Under quote_all_identifiers the text columns read as "text" and the default as
    "now"(), and three changes that were none were listed with their undo (found by an
    adversarial run, helper-97)."""
    added, undo = ALTERATIONS["check"]
    folder = write_migrations(
        tmp_path, {"0001_first.sql": "SELECT 1;\n", "0002_second.sql": "SELECT 2;\n"}
    )
    assert migrate(database, folder).code == 0
    database.execute(added)
    database.execute(
        sql.SQL("ALTER DATABASE {} SET " + setting).format(sql.Identifier(database.name))
    )
    write_migrations(folder, {"0003_third.sql": "SELECT 3;\n"})
    line = refusal(migrate(database, folder))
    statements = re.search(r"undo that \((.*)\) and run again$", line)
    assert statements and statements[1] == undo, line


def test_a_login_roles_default_role_runs_the_files_and_the_runner_keeps_its_own(
    login: Login, roles: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """ALTER ROLE login IN DATABASE SET role = weak: every new session acts as `weak`, and
    so do the files after it, as under psql (a new session each); the runner reads and
    writes its history as the login role, which owns it, whatever role the session
    began as (weak may not read it: `status` and the next run were refused)."""
    weak = f"weak_{uuid.uuid4().hex[:8]}"
    roles.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(weak)))
    try:
        login.admin.execute(
            sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(weak))
        )
        folder = write_migrations(
            tmp_path / "m",
            {
                "0001_leave.sql": leave(f"role = {weak}", "role in database"),
                "0002_as_weak.sql": "CREATE TABLE public.made (a int);\n",
            },
        )
        if login.admin.query(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{login.role}'") != [
            (True,)
        ]:
            login.admin.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(weak), sql.Identifier(login.role))
            )
        assert migrate(login.database, folder, "up", "--target", "1").code == 0
        assert migrate(login.database, folder, "status").code == 0
        assert migrate(login.database, folder).code == 0
        assert login.admin.query("SELECT tableowner FROM pg_tables WHERE tablename = 'made'") == [
            (weak,)
        ]
        assert login.admin.history() == [1, 2]
    finally:
        login.admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(weak)))
        roles.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(weak)))


# -- a history row's time, as whoever edited it left it -------------------------------

APPLIED_AT = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda at: at.isoformat()),
    st.sampled_from(
        ["infinity", "-infinity", "294276-12-31 23:59:59.999999+00", "4713-01-01 00:00:00+00 BC"]
    ),
)


def test_any_time_in_the_history_is_read_exactly_or_refused_naming_its_row(
    database: Database, tmp_path: Path
) -> None:
    """applied_at is read as seconds since 1970, whatever DateStyle or TimeZone is set:
    any time PostgreSQL holds (hypothesis) is shown to the microsecond by `status
    --json`, or, past what a date can hold, refused in one line naming the version."""
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(database, folder).code == 0
    database.execute(
        sql.SQL(
            "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {} SET "
            "TimeZone = 'Asia/Kathmandu'"
        ).format(sql.Identifier(database.name), sql.Identifier(database.name))
    )

    @settings(max_examples=examples(40), deadline=None)
    @given(APPLIED_AT)
    def read_exactly(at: str) -> None:
        database.execute(
            sql.SQL("UPDATE cicd_db.cicd_db_schema_history SET applied_at = {}").format(
                sql.Literal(at)
            )
        )
        result = migrate(database, folder, "status", "--json")
        stored = database.query(
            "SELECT extract(epoch FROM applied_at) FROM cicd_db.cicd_db_schema_history"
        )[0][0]
        if result.code == 0:
            shown = datetime.fromisoformat(json.loads(result.out)["migrations"][0]["applied_at"])
            assert (shown - datetime(1970, 1, 1, tzinfo=UTC)) == timedelta(
                microseconds=int(stored * 1_000_000)  # type: ignore[operator]
            ), (at, result.out)
        else:
            line = one_line(result)
            assert result.code == 2, result
            assert "version 1 was applied at" in line and "SET applied_at" in line, line

    read_exactly()


def test_reports_insights_and_retention_read_alike_under_any_date_and_interval_style(
    database: Database,
) -> None:
    """DateStyle and IntervalStyle left on the database, or DateStyle from libpq's
    PGDATESTYLE (psycopg parses only ISO dates and postgres-style intervals as text), and
    extra_float_digits (the server writes floats into JSON as text): the reading
    commands print what they printed before, and retention runs."""
    assert migrate(database, MIGRATIONS).code == 0
    # Durations of many digits (1234.567 s, 1876.5 s), which a rounding would change.
    t0 = datetime.now(UTC) - timedelta(hours=1)
    with database.connect() as conn:
        store = Store.on(conn)
        run = store.set_status(store.start_run("styled", "abc123"), "RUNNING", at=t0)
        stage = store.set_status(store.add_stage(run, "build", 1), "RUNNING", at=t0)
        [job] = store.add_jobs(stage, [("compile", False)])
        job = store.set_status(job, "RUNNING", at=t0)
        store.set_status(job, "SUCCESS", at=t0 + timedelta(seconds=1234.567))
        store.finish_stage(stage, at=t0 + timedelta(seconds=1234.567))
        store.finish_run(run, at=t0 + timedelta(seconds=1876.5))
    url = database.settings.url()
    reading = [
        ("report", "--pipeline", "styled", "--json"),
        ("report", "--pipeline", "styled", "--run", "1", "--stage", "build", "--json"),
        ("insights", "--pipeline", "styled", "--json"),
    ]

    def read_all(env: dict[str, str] | None = None) -> list[object]:
        results = [run_cli(*command, "--database-url", url, env=env) for command in reading]
        assert all(result.code == 0 and not result.err for result in results), results
        printed = [json.loads(result.out) for result in results]
        printed[2]["window"].pop("until")  # insights' window ends now
        return printed

    before = read_all()
    assert before[2]["duration_p50_seconds"] == 1876.5, before[2]
    # libpq's PGDATESTYLE reaches the server as a setting of its own, after the options.
    for style in ("German", "SQL, DMY", "Postgres, MDY"):
        assert read_all({"PGDATESTYLE": style}) == before, style
    for digits in ("-15", "-5", "0", "3"):
        options = {"PGOPTIONS": f"-c extra_float_digits={digits}"}
        assert read_all(options) == before, digits
    database.execute(
        sql.SQL(
            "ALTER DATABASE {name} SET DateStyle = 'SQL, DMY'; "
            "ALTER DATABASE {name} SET IntervalStyle = 'sql_standard'; "
            "ALTER DATABASE {name} SET extra_float_digits = -15"
        ).format(name=sql.Identifier(database.name))
    )
    assert read_all() == before
    for env in ({}, {"PGDATESTYLE": "German"}):
        pruned = run_cli(
            "retention", "--keep-days", "1", "--dry-run", "--database-url", url, env=env
        )
        assert pruned.code == 0 and "would delete 0 runs" in pruned.out, pruned


# -- what else a file changes on the history, and what reads it after -------------------


def test_a_failure_at_commit_that_is_not_the_historys_is_the_files(
    database: Database, tmp_path: Path
) -> None:
    """A deferred foreign key the file breaks fails at its commit, with the history
    changed meanwhile in a way that cannot refuse a row (a plain index): the file is to
    blame, not the index."""
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_child.sql": "CREATE TABLE parent (id int PRIMARY KEY);\nCREATE TABLE child "
            "(p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);\n"
        },
    )
    assert migrate(database, folder).code == 0
    database.execute(f"CREATE INDEX by_time ON {HISTORY} (applied_at)")
    write_migrations(folder, {"0002_orphan.sql": "INSERT INTO child VALUES (7);\n"})
    line = one_line(migrate(database, folder))
    assert line.startswith("error: migration 0002_orphan.sql failed at its commit: "), line
    assert "by_time" not in line and line.endswith("; fix the file and run again"), line


@pytest.mark.parametrize("column", ["applied_by", "duration_ms", "checksum"])
def test_a_renamed_history_column_is_told_as_a_rename_never_a_history_to_drop(
    database: Database, tmp_path: Path, column: str
) -> None:
    """A column of the history renamed (by a no-transaction file that then cannot
    record itself, and so on every later run): each run says which, and the RENAME that
    undoes it, never "drop it" (every applied file would run again); run as written,
    the next run works."""
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(database, folder).code == 0
    rename = f"ALTER TABLE {HISTORY} RENAME COLUMN {column} TO renamed_{column};\n"
    write_migrations(folder, {"0002_rename.sql": NO_TRANSACTION + rename})
    by_the_file = refusal(migrate(database, folder))
    assert "0002_rename.sql cannot be recorded" in by_the_file, by_the_file
    fix = f"ALTER TABLE {HISTORY} RENAME COLUMN renamed_{column} TO {column}"
    for line in (by_the_file, refusal(migrate(database, folder), 2)):
        assert "DROP" not in line and "drop it" not in line, line
        assert f"column {column} renamed renamed_{column}" in line and fix in line, line
    database.execute(fix)  # as the refusal writes it
    (folder / "0002_rename.sql").write_text(NO_TRANSACTION + "SELECT 2;\n")
    assert migrate(database, folder).code == 0
    assert database.history() == [1, 2]


def test_a_dropped_history_column_is_named_missing_with_no_drop_advised(
    database: Database, tmp_path: Path
) -> None:
    """A column of the history dropped by a no-transaction file: its row cannot be
    written, and the refusal names the column missing and to restore it, never a DROP."""
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(database, folder).code == 0
    write_migrations(
        folder,
        {"0002_drop.sql": NO_TRANSACTION + f"ALTER TABLE {HISTORY} DROP COLUMN duration_ms;\n"},
    )
    line = refusal(migrate(database, folder))
    assert "column duration_ms is missing" in line and "restore it" in line, line
    assert "DROP" not in line.split("cannot be recorded", 1)[1], line


def test_a_deferred_trigger_that_takes_the_row_away_cannot_make_a_file_run_twice(
    database: Database, tmp_path: Path
) -> None:
    """A constraint trigger on the history, deferred to COMMIT, that deletes each new row:
    it acted after the runner's checks, so a file was told applied with no row, and the
    next run applied it again. The runner fires what is deferred before it checks: the
    row is found missing, the trigger named with its undo, and the file's transaction
    rolled back (a no-transaction file is told it ran and was not recorded)."""
    eat = (
        "CREATE TABLE ran (id int PRIMARY KEY, times int NOT NULL);\n"
        "CREATE FUNCTION public.eat() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
        f"DELETE FROM {HISTORY} WHERE version = NEW.version; RETURN NULL; END$$;\n"
        f"CREATE CONSTRAINT TRIGGER eat AFTER INSERT ON {HISTORY} DEFERRABLE INITIALLY "
        "DEFERRED FOR EACH ROW WHEN (NEW.version >= 2) EXECUTE FUNCTION public.eat();\n"
    )
    count = "INSERT INTO ran VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET times = ran.times + 1;\n"
    for transactional in (True, False):
        head = "" if transactional else NO_TRANSACTION
        folder = write_migrations(
            tmp_path / str(transactional), {"0001_eat.sql": eat, "0002_counted.sql": head + count}
        )
        database.execute("DROP SCHEMA IF EXISTS cicd_db CASCADE; DROP TABLE IF EXISTS ran")
        database.execute("DROP FUNCTION IF EXISTS public.eat() CASCADE")
        first = refusal(migrate(database, folder))  # not "applied"; the trigger named
        assert f"undo that (DROP TRIGGER eat ON {HISTORY}) and run again" in first, first
        assert database.history() == [1]
        if transactional:  # rolled back with its row: it never counts as run
            assert migrate(database, folder).code == 1
            assert database.query("SELECT times FROM public.ran") == []


@pytest.mark.parametrize(
    ("cursor_runs", "changed"),
    [
        # Every row gone: each file would run again.
        ("DELETE FROM {history}", "the rows of version 1"),
        # A row for the next file, which would then never run.
        (
            "INSERT INTO {history} VALUES (2, 'later', '{later}', now(), current_user, 1)",
            "rows it had not written, of version 2",
        ),
        # Found in review (helper-98): a second row of version 1 (the key dropped), which
        # a DELETE by version took with the runner's own; a row without a version.
        (
            "ALTER TABLE {history} DROP CONSTRAINT cicd_db_schema_history_pkey; "
            "INSERT INTO {history} VALUES (1, 'counted', 'bogus', now(), current_user, 1)",
            "rows it had not written, of version 1",
        ),
        (
            "ALTER TABLE {history} DROP CONSTRAINT cicd_db_schema_history_pkey; "
            "ALTER TABLE {history} ALTER COLUMN version DROP NOT NULL; "
            "INSERT INTO {history} VALUES (NULL, 'x', 'y', now(), current_user, 1)",
            "rows it had not written, of version NULL",
        ),
        # A trigger that opens such a cursor again whenever a row is written: the rows the
        # runner puts back would have fired it, and emptied the history once more.
        (
            "DELETE FROM {history}; EXECUTE 'CREATE FUNCTION public.again() RETURNS trigger "
            "LANGUAGE plpgsql AS $a$BEGIN EXECUTE format(''DECLARE %I CURSOR WITH HOLD FOR "
            "SELECT public.at_commit()'', ''c'' || pg_catalog.md5(pg_catalog.random()::text)); "
            "RETURN NULL; END$a$'; EXECUTE 'CREATE TRIGGER again AFTER INSERT ON {history} "
            "FOR EACH ROW EXECUTE FUNCTION public.again()'",
            "the rows of version 1",
        ),
    ],
    ids=[
        "deletes the history",
        "writes the next file's row",
        "a second row of a version",
        "a row without a version",
        "a trigger that does it again",
    ],
)
def test_what_a_with_hold_cursors_query_does_to_the_history_at_commit_is_put_back(
    database: Database, tmp_path: Path, cursor_runs: str, changed: str
) -> None:
    """PostgreSQL runs a WITH HOLD cursor's query at COMMIT, to keep its rows past the
    transaction: after every check the runner makes of the history. A function the
    query calls emptied the history (every file then ran again) or wrote the next file's
    row (which then never ran), and the run said "applied" (found by an adversarial
    run, helper-97). psql runs the query too, so the file applies as under psql; the
    runner then reads the history again, puts it back as it wrote it, says so and
    stops; the next run goes on from the next file."""
    later = "CREATE TABLE later (a int);\n"
    change = cursor_runs.format(history=HISTORY, later=hashlib.sha256(later.encode()).hexdigest())
    cursor = (
        "CREATE FUNCTION public.at_commit() RETURNS int LANGUAGE plpgsql AS $$BEGIN "
        f"{change}; RETURN 1; END$$;\n"
        "DECLARE c CURSOR WITH HOLD FOR SELECT public.at_commit();\n"
    )
    folder = write_migrations(
        tmp_path, {"0001_counted.sql": COUNTED + cursor, "0002_later.sql": later}
    )
    assert refusal(migrate(database, folder)) == (
        "error: migration 0001_counted.sql is applied, but the query of a WITH HOLD cursor it "
        "left open, which PostgreSQL runs at the commit, after the runner's checks, changed "
        f"the migration history ({changed}: changed, removed or added); the runner put the "
        "history back as it wrote it, and ran nothing after that file; drop or change what "
        "that query calls before the next run, which goes on from the next file"
    )
    assert database.history() == [1]
    assert "later" not in database.tables()
    database.execute("DROP FUNCTION public.at_commit()")
    database.execute("CREATE FUNCTION public.at_commit() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert migrate(database, folder).code == 0
    assert database.history() == [1, 2]
    assert database.query("SELECT times FROM public.ran") == [(1,)]
    assert "later" in database.tables()


def test_a_history_a_with_hold_cursor_renamed_at_commit_is_told_not_put_back(
    database: Database, tmp_path: Path
) -> None:
    """The history renamed by the cursor's query at the commit cannot be read again: the
    file is said applied, and the history to be put right before the next run (found in
    review, helper-98: it was a bare database error)."""
    cursor = (
        "CREATE FUNCTION public.at_commit() RETURNS int LANGUAGE plpgsql AS $$BEGIN "
        f"ALTER TABLE {HISTORY} RENAME TO gone; RETURN 1; END$$;\n"
        "DECLARE c CURSOR WITH HOLD FOR SELECT public.at_commit();\n"
    )
    folder = write_migrations(tmp_path, {"0001_counted.sql": COUNTED + cursor})
    line = refusal(migrate(database, folder))
    assert line.startswith(
        "error: migration 0001_counted.sql is applied, but the query of a WITH HOLD cursor it "
        "left open, which PostgreSQL runs at the commit, after the runner's checks, changed "
        "the migration history, and it could not be read or put back ("
    ), line
    assert line.endswith(
        "have the history's owner make it the files' rows again before the next run, which "
        "would apply files twice or skip them"
    ), line


def test_a_database_without_plpgsql_is_told_with_the_fix_not_blamed_on_the_next_file(
    database: Database, tmp_path: Path
) -> None:
    """The runner's checks are DO blocks in PL/pgSQL. A no-transaction file that drops the
    language commits, and every file after it failed "at its commit", told to fix
    itself (found by an adversarial run, helper-97): the language is named, with the
    statement that brings it back."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_drop.sql": NO_TRANSACTION + "DROP EXTENSION plpgsql;\n",
            "0002_after.sql": "CREATE TABLE after_it (a int);\n",
        },
    )
    line = refusal(migrate(database, folder))
    assert line == (
        "error: migration 0001_drop.sql cannot be recorded: the runner's checks of the history "
        "are written in PL/pgSQL, and the database has none (DROP EXTENSION plpgsql, by this "
        "file or an earlier one?); what it did is committed, and it is not recorded; run "
        "CREATE EXTENSION plpgsql, and run again"
    ), line
    database.execute("CREATE EXTENSION plpgsql")
    folder.joinpath("0001_drop.sql").write_text(NO_TRANSACTION + "SELECT 1;\n")
    assert migrate(database, folder).code == 0
    assert database.history() == [1, 2]


def test_rows_of_a_table_that_inherits_the_history_are_not_the_history(
    database: Database, tmp_path: Path
) -> None:
    """A table that INHERITS the history (an archive, a copy) with a row in it: read
    without ONLY, its row was taken for version 3, which then never ran."""
    later = write_migrations(tmp_path / "later", {"0003_counted.sql": COUNTED})
    checksum = migrations.discover(later)[0].checksum
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_first.sql": "SELECT 1;\n",
            "0002_archive.sql": f"CREATE TABLE public.archive () INHERITS ({HISTORY});\n"
            "INSERT INTO public.archive (version, name, checksum, applied_by, duration_ms) "
            f"VALUES (3, 'counted', '{checksum}', 'someone', 0);\n",
        },
    )
    assert migrate(database, folder).code == 0
    write_migrations(folder, {"0003_counted.sql": COUNTED})
    result = migrate(database, folder)
    assert result.code == 0, result
    assert database.query("SELECT times FROM public.ran") == [(1,)]
    assert database.history() == [1, 2, 3]


def test_an_unlogged_history_is_refused_before_a_crash_could_empty_it(
    database: Database, tmp_path: Path
) -> None:
    """PostgreSQL empties an UNLOGGED table after a crash, and every file would then run
    again. A no-transaction file that makes the history UNLOGGED is not recorded, and
    any run, or `status`, refuses such a history with the statement that fixes it."""
    unlogged = NO_TRANSACTION + f"ALTER TABLE {HISTORY} SET UNLOGGED;\n"
    folder = write_migrations(
        tmp_path / "m", {"0001_counted.sql": COUNTED, "0002_unlogged.sql": unlogged}
    )
    first = migrate(database, folder)
    assert first.code == 1 and "makes it UNLOGGED" in refusal(first), first
    assert database.history() == [1]
    fix = f"(ALTER TABLE {HISTORY} SET LOGGED) and run again"
    for command in ((), ("status",)):
        result = migrate(database, folder, *command)
        assert result.code == 2, result
        assert one_line(result).startswith(f"error: the migration history {HISTORY} is UNLOGGED")
        assert one_line(result).endswith(fix)
    database.execute(f"ALTER TABLE {HISTORY} SET LOGGED")
    (folder / "0002_unlogged.sql").write_text(NO_TRANSACTION + "SELECT 1;\n")
    assert migrate(database, folder).code == 0
    assert database.query("SELECT times FROM public.ran") == [(1,)]


@pytest.mark.parametrize(
    "statement",
    [f"ALTER TABLE {HISTORY} RENAME TO old_history", f"DROP TABLE {HISTORY}"],
    ids=["rename", "drop"],
)
def test_a_history_a_no_transaction_file_took_away_is_put_back_not_run_again(
    database: Database, tmp_path: Path, statement: str
) -> None:
    """A no-transaction file renames or drops the history (committed, so not undone).
    A run that finds no history makes an empty one and applies every file again: a
    dropped one is made again by the runner with its rows before it stops; for a renamed
    one the failure says to put it back first, the next run refuses while a table with
    the history's columns is elsewhere (naming the statements that move it back), and
    the way the failure gives, followed as written, applies no file twice."""
    folder = write_migrations(
        tmp_path / "m",
        {"0001_counted.sql": COUNTED, "0002_away.sql": NO_TRANSACTION + statement + ";\n"},
    )
    first = refusal(migrate(database, folder))
    (folder / "0002_away.sql").write_text(NO_TRANSACTION + "SELECT 1;\n")  # removed, as told
    if statement.startswith("ALTER"):
        assert "put the history back before any other run" in first, first
        refused = migrate(database, folder)
        assert refused.code == 2, refused
        line = one_line(refused)
        assert "cicd_db.old_history has its columns (1 row)" in line, line
        back = re.search(r"move it back \((.*)\); if it is a copy", line)
        assert back, line
        for undo in back[1].split("; "):
            database.execute(undo)
    else:
        assert "the runner made it again with the 1 row it had written" in first, first
    assert migrate(database, folder).code == 0
    assert database.query("SELECT times FROM public.ran") == [(1,)]
    assert database.history() == [1, 2]


@pytest.mark.parametrize(
    "files",
    [
        {
            "0001_a.sql": "SET statement_timeout = '50ms';\nCREATE TABLE a (id int);\n",
            "0002_b.sql": "SELECT pg_sleep(0.2);\nCREATE TABLE b (id int);\n",
        },
        {
            "0001_a.sql": "CREATE TEMP TABLE scratch AS SELECT 1 AS x;\nCREATE TABLE a (id int);\n",
            "0002_b.sql": "CREATE TEMP TABLE scratch AS SELECT 2 AS x;\nCREATE TABLE b (id int);\n",
        },
    ],
    ids=["statement_timeout", "temp_table"],
)
def test_schema_diff_runs_each_file_as_up_ran_it(
    database: Database, tmp_path: Path, files: dict[str, str]
) -> None:
    """`up` resets the session between files; `schema diff` replays them in one
    transaction, and did not: a file's SET or temporary table reached the next, which
    failed there ("fix the file" for a file that is fine), or crashed looking up the
    setting ("Explicit rollback() forbidden within a Transaction context")."""
    folder = write_migrations(tmp_path / "m", files)
    assert migrate(database, folder).code == 0
    result = run_cli(
        "schema", "diff", "--database-url", database.url, "--migrations-dir", str(folder)
    )
    assert (result.code, result.err) == (0, ""), result


@pytest.mark.parametrize("path", ["''", "app"])
def test_reading_commands_name_a_search_path_that_hides_the_tables(
    database: Database, tmp_path: Path, path: str
) -> None:
    """A search_path a migration left on the database that does not reach the execution
    tables: report, insights and retention said "no cicd-db schema here ... apply the
    migrations", which changes nothing; they name the schema and the search_path."""
    folder = tmp_path / "m"
    folder.mkdir()
    for file in MIGRATIONS.glob("*.sql"):
        (folder / file.name).write_bytes(file.read_bytes())
    leaving = "CREATE SCHEMA app;\n" + leave(f"search_path = {path}", "database")
    (folder / "9000_leave_search_path.sql").write_text(leaving)
    assert migrate(database, folder).code == 0
    for command in (
        ["report", "--pipeline", "p"],
        ["insights", "--pipeline", "p"],
        ["retention", "--keep-days", "1", "--dry-run"],
    ):
        result = run_cli(*command, "--database-url", database.url)
        line = one_line(result)
        assert result.code == 2, result
        assert line.startswith("error: the execution tables are in schema public, which "), line
        assert "apply the migrations" not in line, line
        assert "for database" in line and "ALTER DATABASE" in line, line


def test_reading_commands_name_a_search_path_the_connection_gave(migrated: Database) -> None:
    """Given by the URL's options (or PGOPTIONS), the search_path is named as theirs, not
    as one a migration left on the database or the role (helper-118)."""
    base = migrated.settings.url()
    url = base + ("&" if "?" in base else "?") + "options=-c%20search_path%3Dpg_temp"
    for command in (
        ["report", "--pipeline", "p"],
        ["insights", "--pipeline", "p"],
        ["retention", "--keep-days", "1", "--dry-run"],
    ):
        result = run_cli(*command, "--database-url", url)
        assert (result.code, result.out) == (2, ""), result
        assert result.err == (
            "error: the execution tables are in schema public, which this session's "
            "search_path (pg_temp) does not reach: search_path is pg_temp in the "
            "connection's options (the URL's, the service's or PGOPTIONS): change it there; "
            "or add public to the target's options (`?options=-c search_path=...`)\n"
        )


@pytest.mark.parametrize(
    ("added", "undo"),
    [
        (
            f"CREATE RULE nope AS ON INSERT TO {HISTORY} WHERE NEW.version >= 2 DO INSTEAD NOTHING",
            f"DROP RULE nope ON {HISTORY}",
        ),
        (
            f"ALTER TABLE {HISTORY} ALTER COLUMN version ADD GENERATED ALWAYS AS IDENTITY",
            f"ALTER TABLE {HISTORY} ALTER COLUMN version DROP IDENTITY",
        ),
    ],
    ids=["rule", "identity"],
)
def test_a_rule_or_identity_on_the_history_is_named_not_the_later_file(
    database: Database, tmp_path: Path, added: str, undo: str
) -> None:
    """A DO INSTEAD rule (the row never written) or an identity on `version`, added to
    the history after 0001: the later, harmless file was blamed ("left no history row
    ... remove that from the file", "fix the file"); the change is named with the
    statement that undoes it, which, run, lets it record."""
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(database, folder).code == 0
    database.execute(added)
    write_migrations(folder, {"0002_c.sql": "CREATE TABLE c (id int);\n"})
    line = refusal(migrate(database, folder))
    assert "fix the file" not in line and "remove that from the file" not in line, line
    statements = re.search(r"undo that \((.*)\) and run again$", line)
    assert statements and undo in statements[1].split("; "), line
    for statement in statements[1].split("; "):
        database.execute(statement)
    assert migrate(database, folder).code == 0
    assert database.history() == [1, 2]


# Each column of the history row, and a value of its type that is not what the runner
# writes there.
FALSIFIED = {
    "name": "'other'",
    "checksum": "'0000'",
    "applied_at": "'2000-01-01 00:00:00+00'",
    "applied_by": "'someone else'",
    "duration_ms": "-5",
}


def the_rows(database: Database) -> list[tuple[Any, ...]]:
    return database.query(
        "SELECT version, name, applied_at > now() - interval '1 hour', applied_by, "
        f"duration_ms >= 0 FROM ONLY {HISTORY} ORDER BY version"
    )


@pytest.mark.parametrize("transactional", [True, False], ids=["transaction", "no-transaction"])
@pytest.mark.parametrize("column", list(FALSIFIED))
def test_a_row_a_trigger_changes_in_any_column_is_refused_naming_the_trigger(
    database: Database, tmp_path: Path, column: str, transactional: bool
) -> None:
    """A trigger on the history that changes any column of a later row (its time, its
    author, its duration too, not only what identifies the file): the row is not kept as
    written, and the refusal names the trigger with the DROP that undoes it, not the file."""
    head = "" if transactional else NO_TRANSACTION
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(database, folder).code == 0
    database.execute(
        "CREATE FUNCTION public.falsify() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$BEGIN NEW.{column} := {FALSIFIED[column]}; RETURN NEW; END$$"
    )
    database.execute(
        f"CREATE TRIGGER falsify BEFORE INSERT ON {HISTORY} FOR EACH ROW "
        "EXECUTE FUNCTION public.falsify()"
    )
    write_migrations(folder, {"0002_later.sql": head + "SELECT 2;\n"})
    line = refusal(migrate(database, folder))
    assert "did not keep its row as written" in line and "fix the file" not in line, line
    assert line.endswith(f"undo that (DROP TRIGGER falsify ON {HISTORY}) and run again"), line
    assert database.history() == [1]
    database.execute(f"DROP TRIGGER falsify ON {HISTORY}")
    assert migrate(database, folder).code == 0
    assert [row[:2] for row in the_rows(database)] == [(1, "first"), (2, "later")]


@pytest.mark.parametrize("transactional", [True, False], ids=["transaction", "no-transaction"])
@pytest.mark.parametrize("column", ["applied_at", "applied_by", "duration_ms"])
def test_a_default_a_file_sets_on_the_history_changes_no_row_the_runner_writes(
    database: Database, tmp_path: Path, column: str, transactional: bool
) -> None:
    """The runner writes every column of its row, so a default a file sets (a time in
    2000, another author, a negative duration, or NULL) is never what a later row holds:
    the rows read as the runner wrote them."""
    head = "" if transactional else NO_TRANSACTION
    value = FALSIFIED[column]
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_default.sql": f"ALTER TABLE {HISTORY} ALTER COLUMN {column} SET DEFAULT {value};\n",
            "0002_null.sql": head + "SELECT 2;\n",
        },
    )
    assert migrate(database, folder).code == 0
    database.execute(f"ALTER TABLE {HISTORY} ALTER COLUMN {column} SET DEFAULT NULL")
    write_migrations(folder, {"0003_later.sql": head + "SELECT 3;\n"})
    assert migrate(database, folder).code == 0
    user = database.settings.user
    assert the_rows(database) == [
        (1, "default", True, user, True),
        (2, "null", True, user, True),
        (3, "later", True, user, True),
    ]


def test_a_files_deferred_work_counts_in_its_duration(database: Database, tmp_path: Path) -> None:
    """A deferred trigger runs at the file's end, in the runner's closing statements: its
    time is the file's, in the duration the history keeps, and the check of the row as
    written accepts the duration measured then."""
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_deferred.sql": "CREATE TABLE slow (id int);\n"
            "CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END$$;\n"
            "CREATE CONSTRAINT TRIGGER slow_check AFTER INSERT ON slow DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_check();\n"
            "INSERT INTO slow VALUES (1);\n"
        },
    )
    assert migrate(database, folder).code == 0
    [(duration,)] = database.query(f"SELECT duration_ms FROM ONLY {HISTORY}")
    assert 300 <= int(str(duration)) < 60_000


# Each right on the history the runner's login role needs, revoked by a file from itself.
REVOKED_RIGHTS = pytest.mark.parametrize(
    "revoke",
    [
        f"REVOKE INSERT ON {HISTORY} FROM CURRENT_USER",
        f"REVOKE SELECT ON {HISTORY} FROM CURRENT_USER",
        "REVOKE USAGE ON SCHEMA cicd_db FROM CURRENT_USER",
    ],
    ids=["insert", "select", "schema-usage"],
)


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize("login", ["owner"], indirect=True)  # a superuser is not held to it
@REVOKED_RIGHTS
def test_a_right_on_the_history_a_file_revokes_is_the_files_to_fix_not_the_roles(
    login: Login, tmp_path: Path, revoke: str, language: str
) -> None:
    """The owner's own right to write or read the history, revoked by the file: its row is
    refused at the commit, and the rollback gives the right back, so "grant it" would
    change nothing and every run fail alike. The file is named as the cause, whatever
    language the server's messages are in (German: Debian's server, in CI)."""
    if language == "de":
        login.admin.in_german()
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(login.database, folder).code == 0
    path = tmp_path / "m" / "0002_revoke.sql"
    path.write_text(f"CREATE TABLE r (id int);\n{revoke};\n")
    line = refusal(migrate(login.database, folder))
    assert "failed at its commit: " in line, line
    assert "permission denied for " in line or language == "de", line
    assert line.endswith(
        "so the file took it away (a REVOKE on the history or its schema), "
        "and cicd-db records a file in the file's own transaction: remove "
        "that from the file"
    ), line
    assert "grant it" not in line, line
    assert login.admin.history() == [1]
    path.write_text("CREATE TABLE r (id int);\n")
    assert migrate(login.database, folder).code == 0
    assert login.admin.history() == [1, 2]


@pytest.mark.parametrize("login", ["owner"], indirect=True)  # a superuser is not held to it
@REVOKED_RIGHTS
def test_a_right_on_the_history_a_no_transaction_file_revokes_is_given_back_as_told(
    login: Login, tmp_path: Path, revoke: str
) -> None:
    """In a no-transaction file the REVOKE is committed before the row: "grant it" alone
    would let the next run revoke it again. The line says the file may have taken it,
    what gives it back, and that the next run applies the file again; doing just that
    (the statements as printed, the file fixed) makes the next run work."""
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(login.database, folder).code == 0
    path = folder / "0002_revoke.sql"
    path.write_text(f"-- cicd-db: no-transaction\n{revoke};\n")
    line = refusal(migrate(login.database, folder))
    found = re.search(r"give the right back \((GRANT .*?)\) before that run", line)
    assert found, line
    assert "the next run applies it again: remove that from the file" in line, line
    assert login.admin.history() == [1]
    login.admin.execute(found[1])  # as printed
    path.write_text("-- cicd-db: no-transaction\nSELECT 1;\n")
    assert migrate(login.database, folder).code == 0
    assert login.admin.history() == [1, 2]


@pytest.mark.parametrize("login", ["owner"], indirect=True)  # a superuser is not held to it
def test_rows_a_no_transaction_file_removed_and_cannot_be_written_again_are_named(
    login: Login, tmp_path: Path
) -> None:
    """A no-transaction file that deletes history rows and revokes the right to write
    them: they cannot be put back, and the line names them, so that they are written
    again before a run that would apply their files twice."""
    folder = write_migrations(
        tmp_path / "m",
        {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_b.sql": "CREATE TABLE b (i int);\n"},
    )
    assert migrate(login.database, folder).code == 0
    write_migrations(
        folder,
        {
            "0003_both.sql": "-- cicd-db: no-transaction\nDO $$BEGIN "
            f"DELETE FROM {HISTORY}; REVOKE INSERT ON {HISTORY} FROM CURRENT_USER; END$$;\n"
        },
    )
    line = refusal(migrate(login.database, folder))
    assert line.startswith(
        "error: migration 0003_both.sql failed at its commit: permission denied for table "
        "cicd_db_schema_history [42501]; what it did is committed, and it is not recorded; "
    ), line
    assert line.endswith(
        "; the history rows it removed (version 1, 2) could not be put back "
        "(permission denied for table cicd_db_schema_history): have the history's owner make "
        "them what the runner wrote (their version, name and checksum are the files') before "
        "the next run, which would apply files twice or skip them"
    ), line


@pytest.mark.parametrize("login", ["owner"], indirect=True)  # a superuser is not held to it
def test_a_right_on_the_history_the_role_lacks_is_the_roles_to_get(
    login: Login, tmp_path: Path
) -> None:
    """The same refusal when the role lacks the right outside the file too (revoked by an
    earlier file, or a person): then granting it is the fix, and the error says so."""
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;\n"})
    assert migrate(login.database, folder).code == 0
    login.admin.execute(f"REVOKE INSERT ON {HISTORY} FROM {sql.Identifier(login.role).as_string()}")
    write_migrations(folder, {"0002_c.sql": "CREATE TABLE c (id int);\n"})
    line = refusal(migrate(login.database, folder))
    assert "lacks that privilege: grant it" in line and "took it away" not in line, line


@pytest.mark.parametrize("login", ["owner"], indirect=True)  # a superuser is not held to it
def test_a_database_connection_limit_a_migration_set_is_named_for_the_second_connection(
    login: Login, tmp_path: Path
) -> None:
    """0001 sets its database's CONNECTION LIMIT 1: the next run cannot open the lock's
    connection, and the advice names the database's limit beside the role's."""
    limit = (
        "DO $$BEGIN EXECUTE format('ALTER DATABASE %I CONNECTION LIMIT 1', "
        "current_database()); END$$;\n"
    )
    folder = write_migrations(tmp_path / "m", {"0001_limit.sql": limit})
    try:
        assert migrate(login.database, folder).code == 0
        write_migrations(folder, {"0002_c.sql": "SELECT 1;\n"})
        end_reads()  # the limit counts every session
        line = one_line(migrate(login.database, folder))
        assert "cannot open the runner's second connection" in line, line
        assert "the database's CONNECTION LIMIT, which a migration may have set" in line, line
    finally:
        login.admin.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(
                sql.Identifier(login.admin.name)
            )
        )


@pytest.mark.parametrize("login", ["owner"], indirect=True)  # a superuser is not held to it
def test_a_connection_limit_that_leaves_no_room_for_a_new_session_stops_the_run_named(
    login: Login, tmp_path: Path
) -> None:
    """On a database with dblink every file gets a new session, a third connection while
    the run lasts: a CONNECTION LIMIT of two refuses it after the first file, which stays
    recorded, and the line says why a new session was wanted and what the limit needs."""
    login.admin.execute("CREATE EXTENSION dblink")
    database = sql.Identifier(login.admin.name)
    login.admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 2").format(database))
    folder = write_migrations(
        tmp_path / "m",
        {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_b.sql": "CREATE TABLE b (i int);\n"},
    )
    end_reads()  # the limit counts every session
    try:
        line = one_line(migrate(login.database, folder))
    finally:
        login.admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(database))
    assert line.startswith(
        "error: cannot open a new session for the next file (each file gets one on a "
        "database with dblink): "
    ), line
    assert line.endswith(
        "what was applied is recorded; run again (a new session is a connection more while "
        "the run lasts: a CONNECTION LIMIT must allow three)"
    ), line
    assert login.admin.history() == [1]
    assert migrate(login.database, folder).code == 0  # the limit lifted: the rest applies
    assert login.admin.history() == [1, 2]


def test_an_event_trigger_that_refuses_the_runners_drop_is_told_with_the_file(
    database: Database, tmp_path: Path
) -> None:
    """An sql_drop event trigger a migration left refuses the DROP of the invalid index
    an interrupted concurrent build left: told with the file, the index and the DROP
    to run, not as "database error ...; run again", which fails the same way."""
    no_drops = (
        "CREATE FUNCTION public.no_drops() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'drops are not allowed'; END$$;\n"
        "CREATE EVENT TRIGGER no_drops ON sql_drop EXECUTE FUNCTION public.no_drops();\n"
    )
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_t.sql": "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1), (1);\n",
            "0002_no_drops.sql": no_drops,
            "0003_index.sql": NO_TRANSACTION
            + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);\n",
        },
    )
    assert migrate(database, folder).code == 1  # duplicates: an invalid index is left
    database.execute("DELETE FROM t WHERE ctid = (SELECT min(ctid) FROM t)")
    try:
        line = refusal(migrate(database, folder), code=2)
        assert line == (
            "error: migration 0003_index.sql builds index t_id, and the invalid one an "
            "interrupted run left, public.t_id, could not be dropped: drops are not allowed; "
            "drop it (DROP INDEX CONCURRENTLY public.t_id) and run again"
        ), line
    finally:
        database.execute("DROP EVENT TRIGGER IF EXISTS no_drops")


def test_reading_commands_name_a_default_search_path_as_the_servers(migrated: Database) -> None:
    """Tables moved out of the default search_path's reach: no one set the path, so none
    is blamed; the fix names the schema (helper-121)."""
    migrated.execute(
        "CREATE SCHEMA elsewhere; ALTER TABLE pipeline_executions SET SCHEMA elsewhere; "
        "ALTER TABLE stage_executions SET SCHEMA elsewhere; "
        "ALTER TABLE job_executions SET SCHEMA elsewhere"
    )
    result = run_cli("report", "--pipeline", "p", "--database-url", migrated.url)
    assert (result.code, result.out) == (2, ""), result
    assert result.err == (
        "error: the execution tables are in schema elsewhere, which this session's "
        'search_path ("$user", public) does not reach: it is the server\'s default; set one '
        "that names elsewhere for the role (ALTER ROLE ... SET search_path = elsewhere, "
        "public); or add elsewhere to the target's options (`?options=-c search_path=...`)\n"
    )
