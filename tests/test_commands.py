"""The team's commands: migrate new and check, schema dump and diff, up --rehearse, init-local,
--quiet, --verbose, --dry-run --sql, and the ticking clock on a terminal.

In-process through `run_cli` where the process does not matter; a real
server behind every database test.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import commands, console, errors, migrations, outputs, targets
from cicd_db.commands.context import write_answer
from cicd_db.settings import ConnectionSettings

from .fix_cli import run_cli, start_cli
from .fix_db import SERVER_ROLES, Database, Databases
from .utils import MIGRATIONS, PLAN_SCHEMA, ROOT, examples, write_migrations

# -- migrate new ------------------------------------------------------------------------


def test_new_writes_the_next_file(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n", "0007_b.sql": "SELECT 2;\n"})
    code, out, _ = run_cli("migrate", "new", "add_run_index", "--migrations-dir", str(folder))
    assert code == 0
    created = folder / "0008_add_run_index.sql"
    assert out == f"{created}\n"
    assert created.read_text() == (
        "-- What this changes, and why it is safe on a live database.\n"
        "SET lock_timeout = '1s';\nSET statement_timeout = '60s';\n"
    )
    code, out, _ = run_cli("migrate", "new", "build_index", "--no-transaction", "--json", "--migrations-dir", str(folder))  # fmt: skip
    assert code == 0
    path = Path(json.loads(out)["path"])
    assert path.name == "0009_build_index.sql"
    assert path.read_text().startswith("-- cicd-db: no-transaction\n")


def test_new_names_its_file_as_a_person_would_from_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --migrations-dir the folder is the repository's, absolute: the path was
    printed absolute where the guide shows `db/migrations/0039_...` (helper-111). From
    above the folder it is relative; from elsewhere, as given; in JSON, as made."""
    folder = write_migrations(tmp_path / "db" / "migrations", {"0001_a.sql": "SELECT 1;\n"})
    monkeypatch.chdir(tmp_path)
    done = run_cli("migrate", "new", "b", "--migrations-dir", str(folder))
    assert (done.code, done.out) == (0, "db/migrations/0002_b.sql\n"), done
    monkeypatch.chdir(tmp_path.parent)
    done = run_cli("migrate", "new", "c", "--migrations-dir", str(folder))
    assert done.out == f"{tmp_path.name}/db/migrations/0003_c.sql\n", done
    monkeypatch.chdir(folder.parent)
    done = run_cli("migrate", "new", "d", "--migrations-dir", "migrations")
    assert done.out == "migrations/0004_d.sql\n", done
    done = run_cli("migrate", "new", "e", "--json", "--migrations-dir", str(folder))
    assert json.loads(done.out)["path"] == str(folder / "0005_e.sql")


@pytest.mark.slow
def test_what_new_writes_passes_the_gate_as_it_is(tmp_path: Path) -> None:
    """A file just made passes `migrate check` (sqlfluff and squawk with the repository's
    settings) before anything is added to it; one without a transaction is refused only
    for lacking its one statement."""
    # A long name too: in the header, it made a line over 100 characters.
    name = "add_index_on_pipeline_executions_started_at_for_the_insights_page"
    assert run_cli("migrate", "new", name, "--migrations-dir", str(tmp_path)).code == 0
    checked = run_cli("migrate", "check", "--migrations-dir", str(tmp_path))
    assert (checked.code, checked.err) == (0, ""), checked.out
    made = run_cli("migrate", "new", "index", "--no-transaction", "--migrations-dir", str(tmp_path))
    assert made.code == 0
    checked = run_cli("migrate", "check", "--migrations-dir", str(tmp_path))
    assert (checked.code, checked.err) == (
        2,
        "error: migration file 0002_index.sql is marked no-transaction but holds 0 statements "
        "besides SET and RESET; it must hold exactly one: add the statement it is for, or "
        "remove the marker\n",
    )


def test_new_in_an_empty_folder_starts_at_0001(tmp_path: Path) -> None:  # fmt: skip
    assert run_cli("migrate", "new", "first", "--migrations-dir", str(tmp_path))[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["0001_first.sql"]


@pytest.mark.parametrize("name", ["add index", "_private", "semi;colon", ""])
def test_new_refuses_a_bad_name(tmp_path: Path, name: str) -> None:  # fmt: skip
    code, out, err = run_cli("migrate", "new", name, "--migrations-dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: migration name {name!r} may hold only ASCII letters, digits")
    assert list(tmp_path.iterdir()) == []


# -- migrate check ----------------------------------------------------------------------


@pytest.mark.slow
def test_check_passes_the_repository() -> None:
    code, out, _ = run_cli("migrate", "check")
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"checked {len(list(MIGRATIONS.glob('*.sql')))} files (no target: history not compared)"
    )
    assert "sqlfluff: passed" in out and "squawk (no transaction): passed" in out


def test_check_catches_two_branches_taking_one_number(tmp_path: Path) -> None:  # fmt: skip
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n", "0002_from_main.sql": "SELECT 2;\n", "0002_from_branch.sql": "SELECT 3;\n"})  # fmt: skip
    code, out, err = run_cli("migrate", "check", "--no-lint", "--migrations-dir", str(folder))
    assert (code, out) == (2, "")
    assert err == (
        "error: migration files 0002_from_branch.sql and 0002_from_main.sql share version 2; "
        "renumber one of them\n"
    )


def test_check_fails_unsafe_files_with_its_own_code() -> None:
    folder = ROOT / "tests" / "fixtures" / "unsafe_migrations"
    code, out, _ = run_cli("migrate", "check", "--migrations-dir", str(folder))
    assert code == errors.EXIT_LINT
    assert "squawk (in a transaction): FAILED" in out
    assert "0002_plain_index.sql:4:0: warning: require-concurrent-index-creation" in out


def test_check_compares_the_history_of_a_named_target(database: Database, tmp_path: Path) -> None:  # fmt: skip
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    target = ["--database-url", database.url, "--migrations-dir", str(folder), "--no-lint"]
    assert run_cli("migrate", "up", *target[:4])[0] == 0
    assert run_cli("migrate", "check", *target)[0] == 0
    (folder / "0001_a.sql").write_text("CREATE TABLE a (id bigint);\n")
    code, out, _ = run_cli("migrate", "check", *target, "--json")
    assert code == errors.EXIT_DISAGREES
    assert json.loads(out)["disagreements"] == [{"version": 1, "name": "a", "state": "edited"}]


# -- schema dump and diff ---------------------------------------------------------------


def test_dump_is_stable_and_reviewable(migrated: Database, tmp_path: Path) -> None:  # fmt: skip
    output = tmp_path / "schema.sql"
    code, out, _ = run_cli("schema", "dump", "--database-url", migrated.url, "--output", str(output))  # fmt: skip
    assert (code, out) == (0, f"schema written to {output}\n")
    text = output.read_text()
    assert "CREATE TABLE public.pipeline_executions (" in text
    assert "cicd_db_schema_history" not in text
    assert "\\restrict" not in text and "Dumped from" not in text
    assert migrated.settings.password not in text
    assert run_cli("schema", "dump", "--database-url", migrated.url)[1] == text
    written = run_cli("schema", "dump", "--database-url", migrated.url, "-o", str(output), "--json")  # fmt: skip
    assert (written.code, json.loads(written.out)) == (0, {"output": str(output)})
    assert output.read_text() == text
    shown = run_cli("schema", "dump", "--database-url", migrated.url, "--json")
    assert (shown.code, json.loads(shown.out)) == (0, {"schema": text})


def test_dump_of_the_migrations_alone_reads_none_of_libpqs_variables(home: Path) -> None:  # fmt: skip
    """The server of its own is not the user's: PG* variables meant for the user's
    servers (a search_path in PGOPTIONS, read-only sessions wanted, a service, an
    authentication method required) reach none of its connections, and are there again
    after it."""
    env = {"CICD_DB_HOME": str(home)}
    plain = run_cli("schema", "dump", env=env)
    hostile = {
        **env,
        "PGOPTIONS": "-c search_path=nowhere -c default_transaction_read_only=on",
        "PGTARGETSESSIONATTRS": "read-only",
        "PGSERVICE": "no-such-service",
        "PGREQUIREAUTH": "md5",
        "PGDATABASE": "nowhere",
    }
    before = dict(os.environ)
    with mock.patch.dict(os.environ, hostile):
        dumped = run_cli("schema", "dump")
        assert {name: os.environ.get(name) for name in hostile} == hostile
    assert dict(os.environ) == before
    assert plain.code == 0, plain
    assert dumped == plain


def test_dump_of_the_migrations_alone_matches_a_migrated_database(home: Path) -> None:  # fmt: skip
    """Without a target: the schema the files make, on a server of its own; the same text as
    a database of an embedded server migrated by `migrate up`. (An embedded server of its
    own: the checkout's is the developer's, left alone.)"""
    env = {"CICD_DB_HOME": str(home)}
    code, scratch, _ = run_cli("schema", "dump", env=env)
    assert code == 0
    environ = {**os.environ, **env}
    admin = (
        targets.resolve(stack=targets.EMBEDDED, environ=environ).embedded_server().admin_settings()
    )
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = replace(admin, database=name).url()
        assert run_cli("migrate", "up", "--database-url", url)[0] == 0
        assert scratch == run_cli("schema", "dump", "--database-url", url)[1]
    finally:
        with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_dump_of_the_migrations_leaves_nothing_on_any_server_for_the_next(
    tmp_path: Path, temporary: Path
) -> None:
    """What a file does to the whole cluster (a role made, a setting put on the role that
    runs it) outlives a scratch database: on a shared server it broke every later dump
    (CREATE DATABASE refused in a read-only default, the role already there). Each dump
    runs on a server of its own, removed after; the developer's is not even started."""
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "0001_roles.sql": "CREATE ROLE cicd_db_dump_test_role NOLOGIN;\n"
            "CREATE TABLE t (id bigint);\n",
            "0002_read_only.sql": "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on;\n",
        },
    )
    home = tmp_path / "home"
    env = {"CICD_DB_HOME": str(home), "TMPDIR": str(temporary)}
    dumps = [
        run_cli("schema", "dump", "--migrations-dir", str(folder), env=env, process=True)
        for _ in range(2)
    ]
    assert [(d.code, d.err) for d in dumps] == [(0, "")] * 2
    assert "CREATE TABLE public.t (" in dumps[0].out and dumps[1].out == dumps[0].out
    assert not home.exists() and list(temporary.iterdir()) == []


def test_dump_to_a_path_it_cannot_write(migrated: Database, tmp_path: Path) -> None:  # fmt: skip
    target = tmp_path / "no" / "such" / "folder" / "schema.sql"
    code, out, err = run_cli("schema", "dump", "--database-url", migrated.url, "-o", str(target))  # fmt: skip
    assert (code, out) == (2, "")
    assert err == f"error: cannot write {target}: No such file or directory; pick another path\n"


def test_up_writes_the_schema_when_asked(database: Database, tmp_path: Path) -> None:  # fmt: skip
    folder = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    output = tmp_path / "schema.sql"
    code, out, _ = run_cli("migrate", "up", "--database-url", database.url, "--migrations-dir", str(folder), "--dump-schema", str(output))  # fmt: skip
    assert code == 0
    assert out.splitlines()[-1] == f"schema written to {output}"
    assert "CREATE TABLE public.a (" in output.read_text()
    output.unlink()
    code, out, _ = run_cli("migrate", "up", "--json", "--database-url", database.url, "--migrations-dir", str(folder), "--dump-schema", str(output))  # fmt: skip
    assert (code, json.loads(out)["applied"]) == (0, [])  # stdout stays one JSON document
    assert "CREATE TABLE public.a (" in output.read_text()


def test_up_refuses_dump_schema_to_standard_output(tmp_path: Path) -> None:
    """`-o -` is standard output for `schema dump` and `insights`; `--dump-schema -` made
    a file named `-` in the working folder."""
    done = run_cli("migrate", "up", "--database-url", "postgresql://h/d", "--dump-schema", "-")
    assert (done.code, done.out) == (2, "")
    assert done.err == (
        "error: --dump-schema - would mix the schema with the run's lines on standard "
        "output; give a path, or run `cicd-db schema dump` after the run\n"
    )
    assert not (ROOT / "-").exists()


@pytest.mark.parametrize("where", ["missing folder", "folder", "under a file"])
def test_up_refuses_a_schema_path_it_cannot_write_before_any_file_runs(
    database: Database, tmp_path: Path, where: str
) -> None:
    """Found only after the files ran, the run said "applied ..., but the schema was not
    written", and the dump had to be made again by hand: the path is tried first (by the
    same opens the write makes) and a run that could not write it applies nothing."""
    folder = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    (tmp_path / "a_file").write_text("kept\n")
    output = {
        "missing folder": tmp_path / "no" / "such" / "schema.sql",
        "folder": tmp_path / "m",
        "under a file": tmp_path / "a_file" / "schema.sql",
    }[where]
    said = {
        "missing folder": "No such file or directory",
        "folder": "Is a directory",
        "under a file": "Not a directory",
    }[where]
    done = run_cli("migrate", "up", "--database-url", database.url, "--migrations-dir", str(folder), "--dump-schema", str(output))  # fmt: skip
    assert (done.code, done.out) == (2, ""), done
    assert done.err == (
        f"error: cannot write {output}: {said}; pick another path (nothing was applied)\n"
    )
    assert database.history() == [] and "a" not in database.tables()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "m"]  # no file left
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["0001_a.sql"]


def test_up_that_cannot_write_the_schema_says_the_files_were_applied(
    databases: Databases, empty_template: str, server: ConnectionSettings, tmp_path: Path
) -> None:  # fmt: skip
    """The files committed before the dump failed: the error leads with that, so that no
    one runs them again or takes the run for failed; the exit code is the failure's."""
    role, password = f"dump_then_{uuid.uuid4().hex[:10]}", "before"
    files = {"0001_a.sql": "CREATE TABLE a (id int);\n"}
    output = tmp_path / "schema.sql"
    files["0002_password.sql"] = "ALTER ROLE CURRENT_USER PASSWORD 'Sesame-7f3';\n"
    folder = write_migrations(tmp_path / "m", files)
    with psycopg.connect(server.conninfo(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    made = databases.create(empty_template, owner=role)
    try:
        url = replace(made.settings, user=role, password=password).url()
        code, _, err = run_cli("migrate", "up", "--database-url", url, "--migrations-dir", str(folder), "--dump-schema", str(output))  # fmt: skip
        assert code == 2, err
        where = f" to {output}: 127.0.0.1:"
        assert err.startswith(
            f"error: applied {len(files)} migration{'s' * (len(files) > 1)}, but the schema "
            f"was not written{where}"
        ), err
        assert err.count("\n") == 1 and "Traceback" not in err and "Sesame-7f3" not in err
        assert made.history() == list(range(1, len(files) + 1)) and not output.exists()
    finally:
        databases.drop(made)
        with psycopg.connect(server.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_diff_finds_drift_table_by_table(migrated: Database) -> None:  # fmt: skip
    newest = migrations.discover(MIGRATIONS)[-1].version
    code, out, _ = run_cli("schema", "diff", "--database-url", migrated.url)
    assert code == 0, out
    assert out == f"--database-url against migrations up to version {newest}: no drift\n"
    migrated.execute(
        "ALTER TABLE job_executions ADD COLUMN hotfix text; DROP INDEX pipeline_executions_active"
    )
    code, out, _ = run_cli("schema", "diff", "--database-url", migrated.url)
    assert code == errors.EXIT_DRIFT
    assert out.splitlines() == [
        "unexpected column job_executions.hotfix: text",
        "missing index pipeline_executions.pipeline_executions_active: CREATE INDEX "
        "pipeline_executions_active ON pipeline_executions USING btree (pipeline_name, "
        "start_time) WHERE (status = ANY (ARRAY['PENDING'::text, 'RUNNING'::text]))",
        f"--database-url against migrations up to version {newest}: 2 differences",
    ]


def test_diff_against_another_database(migrated: Database, database: Database) -> None:  # fmt: skip
    code, out, _ = run_cli("schema", "diff", "--database-url", migrated.url, "--against", database.url, "--json")  # fmt: skip
    assert code == errors.EXIT_DRIFT
    found = json.loads(out)["differences"]
    assert {d["change"] for d in found} == {"unexpected"}
    assert {"pipeline_executions", "stage_executions", "job_executions"} <= {d["table"] for d in found}  # fmt: skip
    assert database.settings.password not in out
    code, out, _ = run_cli("schema", "diff", "--database-url", migrated.url, "--against", database.url)  # fmt: skip
    assert out.splitlines()[-1].startswith("--database-url against --against: ")


def test_a_malformed_against_is_named_as_against() -> None:
    code, out, err = run_cli("schema", "diff", "--database-url", "postgresql://u@h/d", "--against", "postgresql://u:Sekr3tPW@h:port/d")  # fmt: skip
    assert (code, out) == (2, "")
    assert err.startswith("error: the --against ")
    assert "Sekr" not in err


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_an_against_that_names_a_stack_is_shown_whole(name: str) -> None:
    """A stack's name is no password: the message names it (a URL's password is masked,
    above)."""
    code, out, err = run_cli(
        "schema", "diff", "--database-url", "postgresql://u@h/d", "--against", name,
        env={"PATH": "/nonexistent"},
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert "***" not in err and f"'{name}'" in err, err


@pytest.mark.parametrize("value", ["stack", "nosuchstack", "000000000000", "Sekr3t.PW_x-9"])
def test_an_against_that_names_no_stack_is_never_echoed(value: str) -> None:
    """A value that names no stack may be a URL typed without its scheme, that is, a
    password: it is not shown, in any part, and the stacks that exist are."""
    code, out, err = run_cli(
        "schema", "diff", "--database-url", "postgresql://u@h/d", "--against", value,
        env={"PATH": "/nonexistent"},
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        "error: --against names no stack here and is no URL (its value is not shown: it "
        "may hold a password); give one of dev, embedded, prod, or a postgresql:// URL\n"
    ), err


def test_an_empty_against_is_refused_not_read_as_no_against() -> None:
    code, out, err = run_cli("schema", "diff", "--database-url", "postgresql://u@h/d", "--against", "")  # fmt: skip
    assert (code, out, err) == (
        2,
        "",
        "error: --against is empty; name a stack or a postgresql:// URL, or leave it out to "
        "compare with the files\n",
    )


# -- up --rehearse ------------------------------------------------------------------------


def test_rehearsal_reports_locks_and_changes_nothing(database: Database) -> None:  # fmt: skip
    database.execute(PLAN_SCHEMA.read_text())
    target = ["--database-url", database.url]
    baseline = run_cli("migrate", "baseline", "--version", "1", "--json", *target)
    assert baseline.code == 0, baseline
    assert json.loads(baseline.out) == {"target": "--database-url", "version": 1, "recorded": 1}
    before = database.query("SELECT count(*) FROM information_schema.columns")
    code, out, _ = run_cli("migrate", "up", "--rehearse", "--json", *target)
    rehearsed = {r["name"]: r for r in json.loads(out)["rehearsed"]}
    # 0022-0024 turn the indexes of the no-transaction files 0017-0020 into constraints:
    # without those indexes they fail, and the rehearsal claims no more than it saw.
    failed = {r["version"]: r["error"] for r in rehearsed.values() if r["error"]}
    assert code == 1
    assert sorted(failed) == [22, 23, 24]
    assert all(
        "does not exist" in error and rehearsed[name]["unrehearsed_before"]
        for name, error in ((r["name"], r["error"]) for r in rehearsed.values() if r["error"])
    )
    job_times = rehearsed["job_times_and_status_default"]
    assert {"mode": "AccessExclusiveLock", "table": "job_executions"} in [
        {k: lock[k] for k in ("mode", "table")} for lock in job_times["locks"]
    ]
    assert all(lock["held_ms"] >= 0 for lock in job_times["locks"])
    assert rehearsed["backfill_job_status"]["skipped"].startswith("a no-transaction file")
    assert database.history() == [1]
    assert database.query("SELECT count(*) FROM information_schema.columns") == before
    assert database.query(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'job_executions' "
        "AND column_name = 'start_time'"
    ) == [("timestamp without time zone",)]


def test_rehearsal_says_when_a_sequence_moved(database: Database, tmp_path: Path) -> None:  # fmt: skip
    database.execute("CREATE SEQUENCE tickets")
    folder = write_migrations(tmp_path, {"0001_take.sql": "SELECT nextval('tickets');\n"})
    code, out, _ = run_cli("migrate", "up", "--rehearse", "--database-url", database.url, "--migrations-dir", str(folder))  # fmt: skip
    assert code == 0
    assert "  advanced sequence public.tickets (the rollback keeps that)" in out.splitlines()
    assert out.splitlines()[-1] == (
        "rehearsal on --database-url: rolled back, except what is marked above as not undone"
    )


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)], ids=["", "dry-run"])
def test_rehearsal_on_a_remote_stack_needs_yes(dry_run: tuple[str, ...]) -> None:  # fmt: skip
    """A rehearsal takes the files' locks on the real tables: a write, whatever --dry-run says."""
    code, _, err = run_cli("migrate", "up", "--rehearse", *dry_run, "--stack", "prod")
    assert code == 2
    assert err.startswith("error: stack prod is a remote database; add --yes to rehearse on it")


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)], ids=["", "dry-run"])
def test_rehearsal_is_refused_through_a_transaction_pooler(dry_run: tuple[str, ...]) -> None:  # fmt: skip
    url = "postgresql://ci:secret-pass@db-pooler.example.invalid/app"
    code, _, err = run_cli("migrate", "up", "--rehearse", *dry_run, "--database-url", url)
    assert code == 2
    assert "is a transaction pooler, where the migration lock does not hold" in err


# -- output: --quiet, --verbose, --dry-run --sql, the ticking clock -------------------------


def test_quiet_verbose_and_the_sql_of_a_dry_run(database: Database, tmp_path: Path) -> None:  # fmt: skip
    folder = write_migrations(tmp_path, {"0001_note.sql": "DO $$ BEGIN RAISE NOTICE 'hello from 1'; END $$;\n"})  # fmt: skip
    target = ["--database-url", database.url, "--migrations-dir", str(folder)]
    code, out, _ = run_cli("migrate", "up", "--dry-run", "--sql", *target)
    assert code == 0
    assert "-- 0001_note.sql\nDO $$ BEGIN RAISE NOTICE 'hello from 1'; END $$;\n" in out
    code, out, err = run_cli("migrate", "up", "--quiet", "--verbose", *target)
    assert (code, out) == (0, "")
    assert err == "  NOTICE: hello from 1\n"


@pytest.mark.parametrize(
    ("verbose", "shown"),
    [
        ((), "  WARNING: careful\\nnow\n"),
        (
            ("--verbose",),
            "  WARNING: careful\\nnow\n  INFO: for your information\n  NOTICE: note\n",
        ),
    ],
    ids=["warnings-always", "verbose"],
)
def test_server_messages_keep_their_severity(database: Database, tmp_path: Path, verbose: tuple[str, ...], shown: str) -> None:  # fmt: skip
    folder = write_migrations(tmp_path, {"0001_say.sql": "DO $$ BEGIN RAISE WARNING E'careful\\nnow'; RAISE INFO 'for your information'; RAISE NOTICE 'note'; END $$;\n"})  # fmt: skip
    code, out, err = run_cli("migrate", "up", "--quiet", *verbose, "--database-url", database.url, "--migrations-dir", str(folder))  # fmt: skip
    assert (code, out, err) == (0, "", shown)


def test_server_messages_of_files_after_a_new_session_are_printed(database: Database, tmp_path: Path) -> None:  # fmt: skip
    """0001 names ALTER DATABASE, so 0002 runs in a new session (as under psql): what
    the server says there reaches the terminal as well (it was said to no one)."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_settings.sql": "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET work_mem = "
            "''8MB''', current_database()); END$$;\n",
            "0002_say.sql": "DO $$ BEGIN RAISE WARNING 'from the new session'; END $$;\n",
        },
    )
    code, out, err = run_cli("migrate", "up", "--quiet", "--database-url", database.url, "--migrations-dir", str(folder))  # fmt: skip
    assert (code, out, err) == (0, "", "  WARNING: from the new session\n")


@pytest.mark.slow
def test_a_slow_file_ticks_on_a_terminal_only(
    database: Database, spare: Database, databases: Databases, empty_template: str, tmp_path: Path
) -> None:
    # Just past the first tick (console.TICK_AFTER_SECONDS): long enough that a piped
    # run would have ticked too, if it did.
    folder = write_migrations(
        tmp_path, {"0001_slow.sql": f"SELECT pg_sleep({console.TICK_AFTER_SECONDS + 0.6});\n"}
    )
    command = ["migrate", "--migrations-dir", str(folder), "--database-url"]
    # The piped run and a dumb terminal's (TERM=dumb, which would show the codes) on
    # databases of their own, at the same time: one wait, not three.
    piped = start_cli(*command, spare.url)
    dumb = databases.create(empty_template)

    def on_a_terminal(url: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
        main, terminal = pty.openpty()
        process = start_cli(*command, url, stdout=subprocess.DEVNULL, stderr=terminal, env=env)
        os.close(terminal)
        return process, main

    runs = [
        on_a_terminal(database.url, {"TERM": "xterm"}),
        on_a_terminal(dumb.url, {"TERM": "dumb"}),
    ]
    seen = [b"", b""]
    deadline = time.monotonic() + 30
    while any(process.poll() is None for process, _ in runs) and time.monotonic() < deadline:
        for ready in select.select([main for _, main in runs], [], [], 0.2)[0]:
            which = [main for _, main in runs].index(ready)
            with contextlib.suppress(OSError):
                seen[which] += os.read(ready, 1024)
    for process, main in runs:
        process.wait(timeout=30)
        os.close(main)
        assert process.returncode == 0
    assert b"\r0001_slow.sql: 3 s" in seen[0] or b"\r0001_slow.sql: 2 s" in seen[0], seen[0]
    assert b"\r" not in seen[1] and b"\x1b" not in seen[1], seen[1]
    out, err = piped.communicate(timeout=30)
    assert (piped.returncode, err) == (0, ""), out


# -- init-local -------------------------------------------------------------------------


@SERVER_ROLES
def test_init_local_creates_the_role_and_database_once(server: ConnectionSettings) -> None:  # fmt: skip
    role, name = f"ci_user_{uuid.uuid4().hex[:8]}", f"ci_local_{uuid.uuid4().hex[:8]}"
    admin = ["init-local", "--admin-url", server.url(), "--user", role, "--database", name]
    try:
        code, out, err = run_cli(*admin, "--password", "first-Pass-123")
        assert code == 0, err
        assert out.splitlines() == [
            f"role {role} created; database {name} created",
            f"postgresql://{role}:***@{server.host}:{server.port}/{name}?sslmode={server.sslmode}",
        ]
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            assert conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcanlogin, pg_get_userbyid(d.datdba) = r.rolname, "
                "(SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c "
                " WHERE s.setrole = r.oid) "
                "FROM pg_roles r, pg_database d WHERE r.rolname = %s AND d.datname = %s",
                [role, name],
            ).fetchone() == (
                False, False, True, True,
                ["TimeZone=UTC", "client_encoding=utf8", "default_transaction_isolation=read committed"],
            )  # fmt: skip
        code, out, _ = run_cli(*admin, "--show-password", "--json")
        assert code == 0
        again = json.loads(out)
        assert (again["created_role"], again["created_database"], again["password_set"]) == (False, False, False)  # fmt: skip
        settings = ConnectionSettings(server.host, server.port, name, role, "first-Pass-123", server.sslmode)  # fmt: skip
        with psycopg.connect(settings.conninfo()) as conn:  # the first password still works
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))  # fmt: skip
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@SERVER_ROLES
def test_init_local_refuses_an_admin_without_the_rights(database: Database) -> None:  # fmt: skip
    role = f"weak_{uuid.uuid4().hex[:8]}"
    database.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'weak-Pass-123'").format(sql.Identifier(role)))  # fmt: skip
    try:
        url = f"postgresql://{role}:weak-Pass-123@{database.settings.host}:{database.settings.port}/{database.settings.database}"  # fmt: skip
        code, out, err = run_cli("init-local", "--admin-url", url, "--user", f"x_{role}", "--database", f"x_{role}")  # fmt: skip
        assert (code, out) == (2, "")
        assert err == (
            f"error: role {role} of the admin URL may not create roles and databases; use a "
            "superuser (the installer's postgres) or a role with CREATEROLE and CREATEDB\n"
        )
    finally:
        database.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- the commands as a Python API ---------------------------------------------------------


def test_a_command_is_a_python_function(database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """No command line: a Context and typed keyword arguments in, the exit code out,
    what the command line would print on stdout."""
    files = {"0001_a.sql": "CREATE TABLE a (id int);\n", "0002_b.sql": "CREATE TABLE b (id int);\n"}
    context = commands.Context(
        database_url=database.url, migrations_dir=write_migrations(tmp_path, files), json=True
    )
    assert commands.status(context, exit_code=True) == errors.EXIT_PENDING
    assert json.loads(capsys.readouterr().out)["pending"] == 2
    assert commands.up(context, target=1) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)["applied"]] == ["a"]
    assert commands.up(context, dry_run=True) == 0
    assert json.loads(capsys.readouterr().out)["dry_run"] is True
    assert commands.up(context) == 0
    assert commands.status(context, exit_code=True) == 0
    rows = json.loads(capsys.readouterr().out.split("\n}\n", 1)[1])["migrations"]
    assert [row["state"] for row in rows] == ["applied", "applied"]
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM b").fetchone() == (0,)
    # A mistake is told in the caller's own words: its arguments, not the CLI's flags.
    with pytest.raises(errors.UsageError, match=r"^`sql` prints what `dry_run` would apply"):
        commands.up(context, sql=True)
    # A folder as a str failed as "'str' object has no attribute 'iterdir'" (helper-114).
    as_text = commands.Context(database_url=database.url, migrations_dir=str(tmp_path))  # type: ignore[arg-type]
    assert commands.status(as_text) == 0


def test_a_format_no_command_prints_is_refused_from_python(migrated: Database) -> None:
    """From Python, `format="xml"` printed a table, exit 0 (helper-114): the CLI's
    choices never let it through, the library now says so in the caller's words."""
    from cicd_db.store import Store

    with migrated.connect() as conn:
        Store.on(conn).start_run("p", "abc")
    for command, formats in ((commands.show_report, "table, json or yaml"), (commands.show_insights, "table, json, yaml or html")):  # fmt: skip
        with pytest.raises(
            errors.UsageError, match=rf"^`format` 'xml' is no format; use {formats}$"
        ):
            command(commands.Context(database_url=migrated.url), pipeline="p", format="xml")  # type: ignore[operator]


# -- what a database holds reaches the terminal as one printable line ----------------------

# A name as a careless or hostile writer leaves it: an escape sequence that retitles the
# terminal, a newline and a carriage return that forge a line, an erase, a bidi override,
# the C1 form of an escape.
HOSTILE = "evil\x1b]0;PWNED\x07\nFORGED: no drift\x1b[2K\r\u202e\x9b31m"


def printable_lines(text: str) -> list[str]:
    """`text`'s lines, each asserted printable: nothing in it can act on a terminal."""
    lines = text.split("\n")
    assert all(line.isprintable() for line in lines), text
    return lines


@pytest.mark.parametrize("quiet", [False, True], ids=["report", "quiet"])
def test_names_the_database_holds_are_printed_as_one_printable_line_each(
    migrated: Database, tmp_path: Path, quiet: bool
) -> None:
    """The class behind three commands that printed names raw: a history row's
    name (`migrate check`), a table's (`schema diff`) and a locked table's and the server's
    error quoting it (`up --rehearse`, its report and, with --quiet, its error line). Every
    line a command prints goes through console.print_lines, which escapes what is not
    printable; a file's own SQL (`--dry-run --sql`) is printed as written."""
    migrated.execute(
        sql.SQL(
            "INSERT INTO cicd_db.cicd_db_schema_history (version, name, checksum, applied_at, "
            "applied_by, duration_ms) VALUES (9999, {}, 'x', now(), 'me', 1);"
            "CREATE TABLE {} (extra int) INHERITS (pipeline_executions)"
        ).format(sql.Literal(HOSTILE), sql.Identifier(HOSTILE))
    )
    folder = tmp_path / "m"
    shutil.copytree(MIGRATIONS, folder)
    last = max(int(path.name[:4]) for path in folder.glob("*.sql"))
    (folder / f"{last + 1:04d}_add_extra.sql").write_text(
        "ALTER TABLE pipeline_executions ADD COLUMN extra text;\n"
    )
    target = ["--database-url", migrated.url]
    quiet_flag = ["--quiet"] if quiet else []
    runs = {"check": run_cli("migrate", "check", "--no-lint", *quiet_flag, *target)}
    migrated.execute("DELETE FROM cicd_db.cicd_db_schema_history WHERE version = 9999")
    runs |= {
        "diff": run_cli("schema", "diff", *quiet_flag, *target),
        "rehearse": run_cli(
            "migrate", "up", "--rehearse", *quiet_flag, *target, "--migrations-dir", str(folder)
        ),
    }
    for command, (code, out, err) in runs.items():
        assert code != 0, (command, out, err)  # each saw the hostile row, table or failure
        printable_lines(out)
        printable_lines(err)
        if not quiet or command == "rehearse":
            # Said, escaped, on the line of the name it belongs to.
            assert any("evil\\x1b]0;PWNED\\x07\\nFORGED" in line for line in (out + err).split("\n")), (command, out, err)  # fmt: skip
    if quiet:
        assert len(runs["rehearse"].err.splitlines()) == 1, runs["rehearse"].err
    # A file's own SQL is its author's text: printed as written, tabs and newlines kept.
    (folder / f"{last + 2:04d}_tabbed.sql").write_text("SELECT\t1;\nSELECT 2;\n")
    code, out, _ = run_cli(
        "migrate", "up", "--dry-run", "--sql", *target, "--migrations-dir", str(folder)
    )
    assert code == 0 and "SELECT\t1;\nSELECT 2;\n" in out, out


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("before the first file", "error: interrupted before any file ran\n"),
        (
            "between two files",
            "error: interrupted between files, after 0001_first.sql; `migrate status` shows "
            "what was applied\n",
        ),
        ("in a dry run", "error: interrupted; a dry run applies nothing\n"),
    ],
)
def test_an_interrupt_outside_a_file_says_how_far_the_run_got(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, message: str
) -> None:
    """Ctrl-C between files, or before the first, said only "interrupted"; a
    file interrupted itself is the runner's own message (tests/migrations/test_apply.py)."""
    folder = write_migrations(
        tmp_path, {"0001_first.sql": "CREATE TABLE a (id int);\n", "0002_second.sql": "SELECT 1;\n"}
    )

    def stop(*_: object, **__: object) -> list[str]:
        raise KeyboardInterrupt

    if where == "before the first file":
        monkeypatch.setattr(console.Ticker, "start", stop)
    else:
        monkeypatch.setattr(console, "applied_lines", stop)
    dry = ["--dry-run"] if where == "in a dry run" else []
    result = run_cli(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder), "up", *dry
    )
    assert (result.code, result.err) == (130, message)
    assert database.history() == ([1] if where == "between two files" else [])


# -- what a command writes: files whole or not at all, documents as UTF-8 ------------------

# Python in an ASCII locale: what a minimal image or `LC_ALL=C` with coercion off gives.
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
NAMED = "d\u00e9pl\U0001f680y"  # Latin-1 holds the first, no 8-bit encoding the second


def _limit_file_size() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def test_a_write_cut_short_leaves_the_old_file_and_no_part_of_the_new(
    migrated: Database, tmp_path: Path
) -> None:
    """A write that fails half-way (here a real limit on file size, as a full disk does)
    truncated the old file and left part of the new one: an earlier schema.sql was
    lost. Now the file is written beside itself and renamed over."""
    target = tmp_path / "schema.sql"
    target.write_text("-- the schema as it was\n")
    started = start_cli(
        "schema", "dump", "--database-url", migrated.url, "-o", str(target),
        preexec_fn=_limit_file_size,
    )  # fmt: skip
    out, err = started.communicate(timeout=60)
    assert (started.returncode, out) == (2, ""), err
    assert err == f"error: cannot write {target}: File too large; pick another path\n"
    assert target.read_text() == "-- the schema as it was\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.sql"]


def test_a_file_written_over_keeps_its_mode_and_a_link_keeps_its_target(
    migrated: Database, tmp_path: Path
) -> None:
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.sql"
    link.symlink_to(target)
    code, _, err = run_cli("schema", "dump", "--database-url", migrated.url, "-o", str(link))
    assert (code, err) == (0, "")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert "CREATE TABLE public.pipeline_executions (" in target.read_text()
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.sql", "schema.sql"]


def test_what_is_no_regular_file_is_written_where_it_stands(tmp_path: Path) -> None:
    """`-o /dev/stdout`, a named pipe, a device: renamed over, root's `-o /dev/null`
    would have replaced the device with a file. A pipe shows it without that risk."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_answer(fifo, "through the pipe\n")
        assert os.read(reader, 100) == b"through the pipe\n"
    finally:
        os.close(reader)
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_o_dev_stdout_is_the_commands_standard_output_whatever_it_is(
    migrated: Database, tmp_path: Path
) -> None:
    """`-o /dev/stdout` into a pipe failed once files were renamed over ("No such file or
    directory": the pipe resolved to no path); into a file the shell appends to, the
    file was replaced (and truncated before). It is the command's standard output."""
    piped = start_cli("schema", "dump", "--database-url", migrated.url, "-o", "/dev/stdout")
    out, err = piped.communicate(timeout=60)
    assert (piped.returncode, err) == (0, "")
    assert "CREATE TABLE public.pipeline_executions (" in out
    log = tmp_path / "log"
    log.write_text("-- before\n")
    with log.open("a") as appended:
        done = start_cli(
            "schema", "dump", "--database-url", migrated.url, "-o", "/dev/stdout",
            stdout=appended,
        )  # fmt: skip
        _, err = done.communicate(timeout=60)
    assert (done.returncode, err) == (0, "")
    text = log.read_text()
    assert text.startswith("-- before\n") and "CREATE TABLE public.pipeline_executions (" in text


def test_a_file_with_other_names_is_written_in_place_and_a_long_name_is_written(
    tmp_path: Path,
) -> None:
    """A rename over a file with a second name (a hard link) split the two; a name of
    245 bytes failed, the temporary name beside it being longer than a name may be."""
    first, second = tmp_path / "page.html", tmp_path / "same.html"
    first.write_text("old\n")
    os.link(first, second)
    write_answer(first, "new\n")
    assert second.read_text() == "new\n" and first.stat().st_ino == second.stat().st_ino
    # Extended attributes (an ACL is one) stay with a file written in place; a rename
    # would drop them. (Linux: ext4 and tmpfs take user attributes, as CI's disks do.)
    if hasattr(os, "setxattr"):
        tagged = tmp_path / "tagged.html"
        tagged.write_text("old\n")
        os.setxattr(tagged, "user.cicd", b"kept")
        inode = tagged.stat().st_ino
        write_answer(tagged, "new\n")
        assert (tagged.read_text(), tagged.stat().st_ino) == ("new\n", inode)
        assert os.getxattr(tagged, "user.cicd") == b"kept"
        tagged.unlink()
    # A file of a shared folder's group keeps it (a rename gave it the writer's own).
    group = _another_group()
    shared = tmp_path / "shared.html"
    shared.write_text("old\n")
    os.chown(shared, -1, group)
    write_answer(shared, "new\n")
    assert (shared.read_text(), shared.stat().st_gid) == ("new\n", group)
    shared.unlink()
    long = tmp_path / ("a" * 245 + ".html")
    write_answer(long, "text\n")
    assert long.read_text() == "text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["page.html", "same.html", long.name]
    )


def _another_group() -> int:
    """A group this process may give a file, other than its own where there is one (any,
    for root; a supplementary group otherwise)."""
    if os.geteuid() == 0:
        import grp

        return grp.getgrnam("nogroup").gr_gid
    return next((gid for gid in os.getgroups() if gid != os.getegid()), os.getegid())


def test_o_dev_stdout_into_a_closed_pipe_is_told_as_for_dash(migrated: Database) -> None:
    """`-o /dev/stdout | head`: a reader that went away is no error of the path (it said
    "cannot write /dev/stdout: Broken pipe; pick another path", exit 2), nor any error:
    as with `-o -`, exit 0 and nothing more (it was 1, unlike `-o -`: helper-113)."""
    reading, writing = os.pipe()
    os.close(reading)  # the reader has gone before the command writes
    try:
        done = start_cli(
            "schema", "dump", "--database-url", migrated.url, "-o", "/dev/stdout", stdout=writing
        )  # fmt: skip
    finally:
        os.close(writing)
    _, err = done.communicate(timeout=60)
    assert (done.returncode, err) == (0, "")


_AS_ANOTHER_USER = """
import os, pwd, resource, sys
from pathlib import Path
from cicd_db.commands.context import write_answer
if os.geteuid() == 0:  # root writes anywhere: the write runs as nobody, as a user's would
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])  # root's own groups (0 among them) are none of nobody's
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
if len(sys.argv) > 3:  # a full disk, as a real limit on file size gives it
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
if os.environ.get("CHECK_FIRST"):  # what the check before a run says, then the write
    from cicd_db.outputs import check_writable
    try:
        check_writable(Path(sys.argv[1]))
        print("check: ok")
    except OSError as error:
        print("check:", error.strerror)
try:
    write_answer(Path(sys.argv[1]), sys.argv[2])
except Exception as error:
    print(error)
"""


def _as_another_user(
    path: Path, text: str, *limited: str, check_first: bool = False
) -> subprocess.CompletedProcess[str]:
    """`write_answer(path, text)` in a process of its own, as nobody when run as root
    (with a 512-byte limit on file size when `limited` is given); `check_first`: what
    outputs.check_writable says first, printed as `check: ...`."""
    return subprocess.run(
        [sys.executable, "-c", _AS_ANOTHER_USER, str(path), text, *limited],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "CHECK_FIRST": "1"} if check_first else None,
    )  # fmt: skip


def test_the_check_before_a_run_refuses_exactly_what_the_write_refuses() -> None:
    """`migrate up --dump-schema PATH` tries PATH before any file runs: as another user,
    in a folder it may write and one it may not, a file of its own and a read-only one,
    the check says no where, and only where, the write then fails."""
    top = Path(tempfile.mkdtemp(prefix="cicd-db-test-"))
    top.chmod(0o755)
    try:
        for folder_mode in (0o777, 0o555):
            folder = top / f"folder-{folder_mode:o}"
            folder.mkdir()
            own, read_only = folder / "own.sql", folder / "read-only.sql"
            for file, mode in ((own, 0o644), (read_only, 0o444)):
                file.write_text("old\n")
                file.chmod(mode)
                if os.geteuid() == 0:
                    import pwd

                    nobody = pwd.getpwnam("nobody")
                    os.chown(file, nobody.pw_uid, nobody.pw_gid)
            folder.chmod(folder_mode)
            for path in (own, read_only, folder / "new.sql", folder):
                done = _as_another_user(path, "new\n", check_first=True)
                assert done.returncode == 0 and done.stderr == "", done
                check, _, wrote = done.stdout.partition("\n")
                assert (check == "check: ok") == (wrote == ""), (path, done.stdout)
                assert check != "check: ok" or path.read_text() == "new\n", path
            folder.chmod(0o755)
    finally:
        for folder in top.iterdir():
            folder.chmod(0o755)
        shutil.rmtree(top)


def test_a_writable_file_in_a_folder_it_cannot_write_is_written_in_place() -> None:
    """A cron job's or a web root's page: the file is the user's, its folder is not. A
    rename needs the folder, and refused what writing in place does. (In a folder of
    /tmp's own, which another user can reach, unlike pytest's.)"""
    tmp_path = Path(tempfile.mkdtemp(prefix="cicd-db-test-"))
    tmp_path.chmod(0o755)
    folder = tmp_path / "web"
    folder.mkdir()
    page = folder / "page.html"
    page.write_text("old\n")
    read_only = folder / "read-only.html"
    read_only.write_text("kept\n")
    read_only.chmod(0o444)
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(page, nobody.pw_uid, nobody.pw_gid)
        os.chown(read_only, nobody.pw_uid, nobody.pw_gid)
    folder.chmod(0o555)
    try:
        for path, said in ((page, ""), (read_only, f"cannot write {read_only}: Permission denied")):
            done = _as_another_user(path, "new\n")
            assert (done.returncode, done.stderr) == (0, ""), done
            assert done.stdout.startswith(said) and (said or done.stdout == ""), done
        assert page.read_text() == "new\n" and read_only.read_text() == "kept\n"
        assert sorted(p.name for p in folder.iterdir()) == ["page.html", "read-only.html"]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(tmp_path)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: another user's file and a group one is not in"
)
def test_a_file_of_a_group_its_owner_is_not_in_is_written_in_place_and_keeps_it(
    tmp_path: Path,
) -> None:
    """A file of the user's own whose group the user may not give (an admin set it): a
    rename gave the new file the user's group. Written in place, as `>` does, it keeps
    it; a write cut short there is told as it is, not as a missing temporary file."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="cicd-db-test-"))
    top.chmod(0o755)
    folder = top / "web"
    folder.mkdir()
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    page = folder / "page.html"
    page.write_text("old\n")
    page.chmod(0o664)
    os.chown(page, nobody.pw_uid, 0)  # a group nobody is not in
    inode = page.stat().st_ino
    try:
        done = _as_another_user(page, "new\n")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
        assert (page.read_text(), page.stat().st_gid, page.stat().st_ino) == ("new\n", 0, inode)
        assert sorted(p.name for p in folder.iterdir()) == ["page.html"]
        done = _as_another_user(page, "x" * 4096, "limited")
        assert done.stdout == f"cannot write {page}: File too large; pick another path\n", done
        assert sorted(p.name for p in folder.iterdir()) == ["page.html"]
    finally:
        shutil.rmtree(top)


def test_a_read_only_file_in_a_folder_it_can_write_is_refused_and_kept() -> None:
    """`>` refuses a file one may not write; a rename, which needs only the folder,
    replaced it (a read-only config, a published page)."""
    top = Path(tempfile.mkdtemp(prefix="cicd-db-test-"))
    top.chmod(0o755)
    folder = top / "web"
    folder.mkdir()
    kept = folder / "read-only.html"
    kept.write_text("kept\n")
    kept.chmod(0o444)
    if os.geteuid() == 0:  # root writes anything: the write runs as nobody
        import pwd

        nobody = pwd.getpwnam("nobody")
        for path in (folder, kept):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        done = _as_another_user(kept, "new\n")
        said = done.stdout
    else:
        with pytest.raises(errors.ConfigError) as refused:
            write_answer(kept, "new\n")
        said = f"{refused.value}\n"
    try:
        assert said == f"cannot write {kept}: Permission denied; pick another path\n"
        assert kept.read_text() == "kept\n"
        assert sorted(p.name for p in folder.iterdir()) == ["read-only.html"]
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a file of another owner")
def test_a_file_of_another_owner_is_written_in_place_and_keeps_its_owner(tmp_path: Path) -> None:
    """Root writing a user's file (a cron job's page): a rename made it root's."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    page = tmp_path / "page.html"
    page.write_text("old\n")
    os.chown(page, nobody.pw_uid, nobody.pw_gid)
    inode = page.stat().st_ino
    write_answer(page, "new\n")
    assert (page.read_text(), page.stat().st_uid, page.stat().st_ino) == (
        "new\n", nobody.pw_uid, inode,
    )  # fmt: skip


def test_a_new_file_gets_the_mode_the_umask_leaves_and_the_umask_stays(tmp_path: Path) -> None:
    """As `>` makes it: 0o666 less the umask (here 0o027: 0o640), and the umask that
    was read to know it is the process's again."""
    umask = os.umask(0o027)
    try:
        write_answer(tmp_path / "new.sql", "text\n")
    finally:
        after = os.umask(umask)
    assert after == 0o027
    assert (tmp_path / "new.sql").stat().st_mode & 0o777 == 0o640


def test_a_file_being_filled_is_private_until_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of mode 0o600 (it holds what others may not read): while the new text
    fills the file beside it, no one else may read that either."""
    target = tmp_path / "private.sql"
    target.write_text("old\n")
    target.chmod(0o600)
    seen: list[int] = []
    real = os.fchmod

    def fchmod(descriptor: int, mode: int) -> None:  # as the text is all written
        seen.extend(p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p != target)
        real(descriptor, mode)

    monkeypatch.setattr(outputs.os, "fchmod", fchmod)
    umask = os.umask(0o022)
    try:
        write_answer(target, "new\n")
    finally:
        os.umask(umask)
    assert seen == [0o600]
    assert (target.read_text(), target.stat().st_mode & 0o777) == ("new\n", 0o600)


def test_a_name_taken_beside_the_file_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a folder others write (a shared one, /tmp), a link put where the temporary
    file goes would have had the text written into what it points at."""
    victim = tmp_path / "victim"
    victim.write_text("victim's\n")
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    monkeypatch.setattr(outputs.os, "urandom", lambda n: bytes(n))
    (tmp_path / f".cicd-db-{bytes(6).hex()}.tmp").symlink_to(victim)
    with pytest.raises(errors.ConfigError) as refused:
        write_answer(target, "new\n")
    assert str(refused.value) == f"cannot write {target}: File exists; pick another path"
    assert (victim.read_text(), target.read_text()) == ("victim's\n", "old\n")


def _refusing(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    """`os.NAME` refuses the temporary file with `code`, as a full disk or a mount does."""
    real = getattr(os, name)

    def refused(first: Any, *rest: Any, **keywords: Any) -> Any:
        if Path(first).name.startswith(".cicd-db-"):
            raise OSError(code, os.strerror(code))
        return real(first, *rest, **keywords)

    monkeypatch.setattr(outputs.os, name, refused)


@pytest.mark.parametrize("step", ["open", "replace"])
def test_no_room_for_the_file_beside_leaves_the_old_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A disk with no room left to create or rename the new file: written in place
    instead, the old file would be truncated and then cut short."""
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    _refusing(monkeypatch, step, errno.ENOSPC)
    with pytest.raises(errors.ConfigError) as refused:
        write_answer(target, "new\n")
    assert str(refused.value) == (
        f"cannot write {target}: No space left on device; pick another path"
    )
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.sql"]


def test_a_file_that_is_a_mount_of_its_own_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's bind-mounted file: a rename over it is refused (EBUSY), `>` is not.
    (Simulated: the rename refuses as the kernel does.)"""
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    inode = target.stat().st_ino
    _refusing(monkeypatch, "replace", errno.EBUSY)
    write_answer(target, "new\n")
    assert (target.read_text(), target.stat().st_ino) == ("new\n", inode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.sql"]


def test_a_link_that_loops_is_refused_and_left(tmp_path: Path) -> None:
    """A path that resolves to nothing for a loop of links: renamed over, the link was
    replaced by a file; `>` refuses it."""
    loop = tmp_path / "loop.sql"
    loop.symlink_to(loop.name)
    with pytest.raises(errors.ConfigError) as refused:
        write_answer(loop, "new\n")
    assert str(refused.value) == (
        f"cannot write {loop}: Too many levels of symbolic links; pick another path"
    )
    assert loop.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["loop.sql"]


def test_o_dev_stderr_is_the_commands_standard_error_appended_to(tmp_path: Path) -> None:
    """As `-o /dev/stdout`: a log the shell appends standard error to was replaced."""
    log = tmp_path / "log"
    log.write_text("-- before\n")
    script = (
        "from pathlib import Path; from cicd_db.commands.context import write_answer; "
        "write_answer(Path('/dev/stderr'), 'the text\\n')"
    )
    with log.open("a") as appended:
        done = subprocess.run([sys.executable, "-c", script], stderr=appended, timeout=60, cwd=ROOT)
    assert done.returncode == 0
    assert log.read_text() == "-- before\nthe text\n"


def test_a_closed_standard_output_does_not_keep_a_file_from_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that calls the CLI in-process after closing sys.stdout: the file is
    still written (the closed stream is no file to compare it with)."""
    closed = (tmp_path / "out").open("w")
    closed.close()
    monkeypatch.setattr("sys.stdout", closed)
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    write_answer(target, "new\n")
    assert target.read_text() == "new\n"


def test_a_link_to_another_file_system_has_its_target_replaced_whole(tmp_path: Path) -> None:
    """The new file is made beside the link's target, not beside the link: made beside
    the link, on another disk, the rename failed and the target was written in place."""
    # The tests' temporary folder is on the RAM disk where there is one (tests/conftest.py),
    # the repository on a disk: whichever of the two pytest's folder is not on.
    state = ROOT / ".cicd-db"
    state.mkdir(exist_ok=True)
    others = [f for f in (Path("/dev/shm"), state) if f.is_dir()]
    other = next((f for f in others if f.stat().st_dev != tmp_path.stat().st_dev), None)
    if other is None:
        pytest.skip("the RAM disk, the repository and pytest's folder are on one file system")
    elsewhere = Path(tempfile.mkdtemp(prefix="cicd-db-test-", dir=other))
    try:
        target = elsewhere / "schema.sql"
        target.write_text("old\n")
        inode = target.stat().st_ino
        link = tmp_path / "schema.sql"
        link.symlink_to(target)
        write_answer(link, "new\n")
        assert (target.read_text(), link.is_symlink()) == ("new\n", True)
        assert target.stat().st_ino != inode  # renamed over: whole or not at all
    finally:
        shutil.rmtree(elsewhere)


@pytest.fixture
def named_run(migrated: Database) -> Database:
    from cicd_db.store import Store

    with psycopg.connect(migrated.settings.conninfo(), autocommit=True) as conn:
        store = Store.on(conn)
        store.finish_run(store.set_status(store.start_run(NAMED, "abc123"), "RUNNING"))
    return migrated


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_that_lacks_a_character_gets_it_escaped_and_documents_stay_utf8(
    named_run: Database, tmp_path: Path, encoding: str
) -> None:
    """In an ASCII or Latin-1 terminal, a pipeline named with an emoji failed `report`
    half-way ("unexpected UnicodeEncodeError"). Tables now show it as `\\U0001f680`, as
    Python's stderr does; YAML and HTML, which are files' contents (`> report.yaml`),
    are UTF-8 whatever the terminal, and read back as the name."""
    import yaml

    env = {"DATABASE_URL": named_run.url, "PYTHONIOENCODING": encoding}
    table = start_cli("report", "--pipeline", NAMED, env=env, text=False)
    out, err = table.communicate(timeout=60)
    assert (table.returncode, err) == (0, b""), err
    assert out.startswith(b"pipeline " + NAMED.encode(encoding, "backslashreplace") + b": 1 run")
    document = start_cli("report", "--pipeline", NAMED, "--format", "yaml", env=env, text=False)
    out, err = document.communicate(timeout=60)
    assert (document.returncode, err) == (0, b"")
    assert yaml.safe_load(out.decode("utf-8"))["pipeline"] == NAMED
    page = start_cli("insights", "--format", "html", "-o", "-", env=env, text=False)
    out, err = page.communicate(timeout=60)
    assert (page.returncode, err) == (0, b"")
    assert NAMED in out.decode("utf-8")


def test_a_file_is_written_as_utf8_whatever_the_locale(named_run: Database, tmp_path: Path) -> None:
    """The page says `charset="utf-8"`: in an ASCII locale it failed to be written (and a
    Latin-1 locale wrote Latin-1 under that claim)."""
    page = tmp_path / "page.html"
    env = {"DATABASE_URL": named_run.url, **ASCII_LOCALE}
    done = run_cli("insights", "--format", "html", "-o", str(page), env=env, process=True)
    assert (done.code, done.err) == (0, ""), done
    assert NAMED in page.read_bytes().decode("utf-8")


@settings(max_examples=examples(200))
@given(
    name=st.text(st.characters(exclude_categories=("Cs",)), min_size=1),
    encoding=st.sampled_from(["ascii", "latin-1", "cp1252", "utf-8"]),
    output_format=st.sampled_from(["json", "yaml"]),
)
def test_any_name_reads_back_from_a_document_and_shows_in_any_terminal(
    name: str, encoding: str, output_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a name holds, a JSON or YAML document on standard output reads back as
    it, whatever the terminal's encoding, and a line quoting it shows without failing."""
    from cicd_db import cli, report

    terminal = io.TextIOWrapper(io.BytesIO(), encoding=encoding)
    monkeypatch.setattr("sys.stdout", terminal)
    cli.standard_output()  # as cli.main sets it up for every command
    outputs.print_document(report.structured({"pipeline": name}, output_format))
    terminal.flush()
    document = terminal.buffer.getvalue()  # type: ignore[attr-defined]
    console.print_lines(f"pipeline {name}: 1 run")
    terminal.flush()
    line = terminal.buffer.getvalue()[len(document) :]  # type: ignore[attr-defined]
    if output_format == "json":
        assert json.loads(document.decode("utf-8"))["pipeline"] == name
    else:
        import yaml

        assert yaml.safe_load(document.decode("utf-8"))["pipeline"] == name
    assert line.decode(encoding).endswith(": 1 run\n")


def test_a_document_to_a_standard_output_of_text_alone_is_the_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A standard output with no bytes under it (a StringIO, as a program that calls the
    CLI in-process may give) takes the document as text, whatever it holds."""
    text = "pipeline: naïve 🚀\n"
    taken = io.StringIO()
    monkeypatch.setattr("sys.stdout", taken)
    outputs.print_document(text)
    assert taken.getvalue() == text


def test_a_file_system_without_extended_attributes_still_gets_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vfat or an NFS mount answers "not supported" when asked for the attributes: there
    are none to lose, so the file is still renamed over, whole or not at all.
    (Simulated: the question is refused as such a disk refuses it.)"""
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    inode = target.stat().st_ino

    def unsupported(path: Any) -> list[str]:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    monkeypatch.setattr(outputs.os, "listxattr", unsupported, raising=False)
    write_answer(target, "new\n")
    assert target.read_text() == "new\n" and target.stat().st_ino != inode


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="Linux: /proc/self/fd")
def test_a_file_renamed_over_is_on_disk_before_it_takes_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renamed over without a sync, a power cut soon after could leave an
    empty file in the old one's place on some file systems (XFS, btrfs, ext4 without
    auto_da_alloc). The new file's bytes are synced before the rename.
    (Simulated: the sync and the rename are watched, not a power cut.)"""
    target = tmp_path / "schema.sql"
    target.write_text("old\n")
    events: list[tuple[str, str]] = []
    sync, rename = outputs.os.fsync, outputs.os.replace

    def watched_sync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        sync(descriptor)

    def watched_rename(source: Any, destination: Any) -> None:
        events.append(("replace", os.fspath(source)))
        rename(source, destination)

    monkeypatch.setattr(outputs.os, "fsync", watched_sync)
    monkeypatch.setattr(outputs.os, "replace", watched_rename)
    write_answer(target, "new\n")
    assert target.read_text() == "new\n"
    assert [kind for kind, _ in events] == ["fsync", "replace"], events
    assert events[0][1] == events[1][1] and Path(events[0][1]).name.startswith(".cicd-db-")


def test_a_schema_path_that_can_be_written_is_left_as_it_was_by_the_check(tmp_path: Path) -> None:
    """The check before a run opens what the write will open and changes nothing: an
    existing file keeps its text and its folder no leftover; a device is opened in place."""
    kept = tmp_path / "schema.sql"
    kept.write_text("old\n")
    outputs.check_writable(kept)
    outputs.check_writable(tmp_path / "new.sql")
    outputs.check_writable(Path("/dev/null"))
    assert kept.read_text() == "old\n"
    # A FIFO is not opened to try it: its reader took that close for the end, and the
    # write after the files then blocked for good (helper-112).
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    outputs.check_writable(fifo)
    time.sleep(0.3)  # a reader told the end has ended by now
    writer = threading.Thread(target=outputs.write_file, args=(fifo, "schema\n"), daemon=True)
    writer.start()
    reader.join(timeout=10)
    writer.join(timeout=10)
    if writer.is_alive():  # blocked with no reader left: given one, so it ends
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert got == [b"schema\n"]
    fifo.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.sql"]


@pytest.mark.parametrize("wrong", ["password", "host"])
def test_a_bad_against_is_told_as_against(migrated: Database, wrong: str) -> None:
    """`schema diff --against URL` with a wrong password or a host that is no host name
    said to fix "the target (--database-url, DATABASE_URL or the stack's outputs)",
    which was fine (helper-113): the fix names --against."""
    against = replace(
        migrated.settings, **({"password": "not-it"} if wrong == "password" else {"host": "a..b"})
    ).url()
    done = run_cli("schema", "diff", "--database-url", migrated.url, "--against", against)
    assert (done.code, done.out) == (2, ""), done
    assert "(--against)" in done.err and "--database-url" not in done.err, done.err
    assert "not-it" not in done.err
