"""Planning a file's text: what is sent together, what is refused before anything runs."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import assume as hypothesis_assume
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cicd_db import migrations
from cicd_db.errors import ConfigError
from cicd_db.migrations import statements
from cicd_db.migrations.steps import lead_end, split_at
from cicd_db.sqltext import Scanner

from ..fix_cli import migrate
from ..fix_db import Database
from ..utils import examples, write_migrations
from .shared import MEBIBYTE, MENTIONS


def test_no_transaction_file_must_hold_one_statement(tmp_path: Path) -> None:
    write_migrations(
        tmp_path, {"0001_two.sql": "-- cicd-db: no-transaction\nSELECT 1;\nSELECT 2;\n"}
    )
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        "migration file 0001_two.sql is marked no-transaction but holds 2 statements besides "
        "SET and RESET; it must hold exactly one: split it into one file per statement"
    )


@pytest.mark.parametrize(
    "tail",
    ["/* todo", "/* a /* nested */ one, never closed", "/*/"],
    ids=["plain", "nested", "slash"],
)
def test_a_no_transaction_file_ending_in_a_comment_never_closed_is_refused(
    tmp_path: Path, tail: str
) -> None:
    """psql runs the statement, then PostgreSQL refuses the comment and psql stops: the
    runner refuses the file before it runs, naming the comment's line."""
    write_migrations(
        tmp_path,
        {
            "0001_index.sql": "-- cicd-db: no-transaction\n"
            f"CREATE INDEX CONCURRENTLY i ON t (a);\n{tail}\n"
        },
    )
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        "migration file 0001_index.sql, line 3: a /* comment is never closed, which "
        "PostgreSQL refuses; close it with */"
    )


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("COMMIT;", "COMMIT"),
        ("ROLLBACK;", "ROLLBACK"),
        ("end;", "END"),
        ("ABORT;", "ABORT"),
        ("BEGIN;", "BEGIN"),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE;", "START TRANSACTION"),
        ("PREPARE TRANSACTION 'x';", "PREPARE TRANSACTION"),
        ("COMMIT AND CHAIN;", "COMMIT AND"),
    ],
    ids=["commit", "rollback", "end", "abort", "begin", "start", "prepare", "commit-and-chain"],
)
def test_transaction_control_is_refused_before_anything_runs(
    untouched: Database, tmp_path: Path, statement: str, shown: str
) -> None:
    err = _refused_with_nothing_run(
        untouched,
        tmp_path,
        "0002_own_transaction.sql",
        f"CREATE TABLE p1 (id int);\n{statement}\nSELECT 1/0;\n",
    )
    assert err == (
        f"error: migration file 0002_own_transaction.sql, line 2: {shown} ends or starts a "
        "transaction, and the runner already runs this file in one; remove it, or make the "
        "first line `-- cicd-db: no-transaction` to run the file outside a transaction\n"
    )


def _refused_with_nothing_run(untouched: Database, tmp_path: Path, name: str, text: str) -> str:
    """`up` of a table's file and then `name` holding `text`: refused (exit 2, nothing on
    stdout) before anything ran, the table's file included; what it said on stderr."""
    folder = write_migrations(
        tmp_path, {"0001_first.sql": "CREATE TABLE first (id int);\n", name: text}
    )
    code, out, err = migrate(untouched, folder)
    assert (code, out) == (2, "")
    assert untouched.tables() == set()
    return err


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("create index concurrently if not exists i on first (id);", "CREATE INDEX CONCURRENTLY"),
        ("CREATE UNIQUE INDEX CONCURRENTLY i ON first (id);", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY IF EXISTS i;", "DROP INDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY first;", "REINDEX ... CONCURRENTLY"),
        ("VACUUM first;", "VACUUM"),
        ("CREATE DATABASE other;", "CREATE DATABASE"),
        ("ALTER SYSTEM SET work_mem = '5MB';", "ALTER SYSTEM"),
        ("REINDEX (VERBOSE) SCHEMA public;", "REINDEX SCHEMA"),
        ("DISCARD ALL;", "DISCARD ALL"),
        ("CLUSTER;", "CLUSTER without a table"),
    ],
)
def test_what_postgresql_never_runs_in_a_transaction_is_refused_before_anything_runs(
    untouched: Database, tmp_path: Path, statement: str, shown: str
) -> None:
    """Found in review: it passed `check --no-lint`, and `up` applied the files before
    it, then failed at it (25001). Known from the text: refused before anything runs."""
    err = _refused_with_nothing_run(
        untouched, tmp_path, "0002_outside.sql", f"SET lock_timeout = '1s';\n{statement}\n"
    )
    assert err == (
        f"error: migration file 0002_outside.sql, line 2: {shown} cannot run inside a "
        "transaction, and the runner runs this file in one; make the first line "
        "`-- cicd-db: no-transaction`, with this statement alone in the file\n"
    )
    # The fix it names is taken: marked so, the statement is the file's one statement.
    (tmp_path / "0002_outside.sql").write_text(f"-- cicd-db: no-transaction\n{statement}\n")
    assert migrations.discover(tmp_path)[1].transactional is False


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"0001_meta.sql": "SELECT 1;\n\\connect other\nSELECT 2;\n"},
            "migration file 0001_meta.sql, line 2: psql meta-command \\connect is not SQL; "
            "remove it (the runner sends SQL only; pg_dump's \\restrict lines are skipped)",
        ),
        (
            {"0001_out.sql": "COPY (SELECT 1) TO STDOUT;\n"},
            "migration file 0001_out.sql, line 1: COPY ... TO STDOUT prints data, which a "
            "migration cannot; remove it, or COPY to a table instead",
        ),
        (
            {"0001_copy.sql": "CREATE TABLE t (id int);\nCOPY t FROM STDIN; 1\n\\.\n"},
            "migration file 0001_copy.sql, line 2: text follows COPY ... FROM STDIN on its line; "
            "start the data on the next line, as pg_dump writes it",
        ),
        (
            {
                "0001_index.sql": "-- cicd-db: no-transaction\nSET lock_timeout = '1s';\n"
                "CREATE INDEX CONCURRENTLY ON t (c);\n"
            },
            "migration file 0001_index.sql, line 3: CREATE INDEX CONCURRENTLY without a name; "
            "name the index (CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON ...) so that a "
            "build left invalid by an interruption can be found and dropped",
        ),
        (
            {
                "0001_index.sql": "-- cicd-db: no-transaction\n"
                "CREATE INDEX CONCURRENTLY -- CREATE INDEX CONCURRENTLY named ON t (c)\n"
                "ON t (c);\n"
            },
            "migration file 0001_index.sql, line 2: CREATE INDEX CONCURRENTLY without a name; "
            "name the index (CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON ...) so that a "
            "build left invalid by an interruption can be found and dropped",
        ),
        (
            {"0001_copy.sql": "-- cicd-db: no-transaction\nCOPY t FROM STDIN;\n1\n\\.\n"},
            "migration file 0001_copy.sql, line 2: COPY ... FROM STDIN in a no-transaction file; "
            "move it to a transactional file",
        ),
        (
            {"0001_Upper.SQL": "SELECT 1;\n"},
            "migration file 0001_Upper.SQL: the extension must be lower-case .sql; "
            "rename it to 0001_Upper.sql",
        ),
        (
            {"0002_add index.sql": "SELECT 1;\n"},
            "migration file '0002_add index.sql': a name may hold only ASCII letters, digits, '_', "
            "'.' and '-' after the version's '_', and must start with a letter or digit; rename "
            "it, for example to 0002_add_index.sql",
        ),
        (
            {"99999999999999999999_huge.sql": "SELECT 1;\n"},
            "migration file 99999999999999999999_huge.sql: version 99999999999999999999 is above "
            "9223372036854775807, the largest the history can hold; renumber it (0001_, 0002_, "
            "... or a timestamp like 20260101120000_)",
        ),
        (
            {"0001_latin1.sql": "SELECT 1;\nSELECT 'caf\xe9';\n"},
            "migration file 0001_latin1.sql is not UTF-8 (line 2); save it as UTF-8",
        ),
        (
            {"0001_nul.sql": "SELECT 1;\nSELECT 2; \x00\nSELECT 3;\n"},
            "migration file 0001_nul.sql holds a NUL byte (line 2), which PostgreSQL cannot take "
            "in SQL; remove it",
        ),
        (
            {"0001_.sql": "SELECT 1;\n"},
            "migration file 0001_.sql has a version but no name; rename it to "
            "0001_what_it_does.sql",
        ),
        (
            {"0002_X-ray index_of runs!.sql": "SELECT 1;\n"},
            "migration file '0002_X-ray index_of runs!.sql': a name may hold only ASCII letters, digits, "
            "'_', '.' and '-' after the version's '_', and must start with a letter or digit; "
            "rename it, for example to 0002_X-ray_index_of_runs.sql",
        ),
        (
            {"0002_-x.sql": "SELECT 1;\n"},
            "migration file '0002_-x.sql': a name may hold only ASCII letters, digits, '_', '.' "
            "and '-' after the version's '_', and must start with a letter or digit; rename it, "
            "for example to 0002_x.sql",
        ),
        (
            {"7.sql": "SELECT 1;\n"},
            "migration file 7.sql has a version but no name; rename it to 7_what_it_does.sql",
        ),
        (
            {"add_index.sql": "SELECT 1;\n"},
            "migration file add_index.sql has no version; rename it to <version>_<name>.sql, for "
            "example 0002_add_index.sql",
        ),
        (
            {"0001.sql": "SELECT 1;\n"},
            "migration file 0001.sql has a version but no name; rename it to 0001_what_it_does.sql",
        ),
    ],
    ids=[
        "meta-command",
        "copy-to-stdout",
        "copy-data-on-its-line",
        "unnamed-concurrent-index",
        "concurrent-index-named-only-in-a-comment",
        "copy-in-a-no-transaction-file",
        "upper-case-extension",
        "space-in-name",
        "version-beyond-bigint",
        "not-utf8",
        "nul-byte",
        "empty-name",
        "spaces-and-capitals",
        "name-starts-with-a-dash",
        "no-name-short-version",
        "no-version",
        "no-name",
    ],
)
def test_refused_at_discovery(
    untouched: Database, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("latin-1"))
    code, out, err = migrate(untouched, folder)
    assert (code, out) == (2, "")
    assert err.startswith("error: " + message), err
    assert len(err.splitlines()) == 1
    assert untouched.tables() == set()


def test_pg_dump_restrict_lines_are_skipped(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {"0001_dump.sql": "\\restrict abc123\nCREATE TABLE t (id int);\n\\unrestrict abc123\n"},
    )
    assert migrate(database, folder)[0] == 0
    assert "t" in database.tables()


@pytest.mark.parametrize(
    ("data", "tables"),
    [
        (b"CREATE TABLE a (i int);\n-- note\rCREATE TABLE b (i int);\n", {"a", "b"}),
        (b"-- a comment\rCREATE TABLE a (i int);\rCREATE TABLE b (i int);\r", {"a", "b"}),
    ],
    ids=["cr-inside", "cr-only-file"],
)
def test_a_comment_ends_at_a_carriage_return(
    database: Database, tmp_path: Path, data: bytes, tables: set[str]
) -> None:
    (tmp_path / "0001_cr.sql").write_bytes(data)
    assert migrate(database, tmp_path)[0] == 0
    assert database.tables() == tables


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("CREATE INDEX CONCURRENTLY Runs_Idx ON runs (id);", "runs_idx"),
        ("create unique index concurrently if not exists x1 on runs (id);", "x1"),
        ('CREATE INDEX CONCURRENTLY "My ""Idx""" ON runs (id);', 'My "Idx"'),
        ('CREATE INDEX CONCURRENTLY "Runs Idx" ON runs (id);', "Runs Idx"),
        ("SET lock_timeout = 0;\nCREATE INDEX CONCURRENTLY x2 ON runs (id);", "x2"),
        ("CREATE INDEX runs_idx ON runs (id);", None),
        (
            "CREATE INDEX runs_idx ON runs (id);\n-- was: CREATE INDEX CONCURRENTLY x3 ON runs (id);",
            None,
        ),
        (
            "CREATE INDEX CONCURRENTLY /* was: CREATE INDEX CONCURRENTLY old ON runs (id) */"
            " new_idx ON runs (id);",
            "new_idx",
        ),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS -- note\n  x4 ON runs (id);", "x4"),
        ('CREATE INDEX CONCURRENTLY /* a /* nested */ one */ "a--b" ON runs (id);', "a--b"),
    ],
    ids=[
        "folded",
        "unique-if-not-exists",
        "quoted",
        "quoted-space",
        "after-set",
        "not-concurrent",
        "only-in-a-comment-after-it",
        "another-in-a-comment-before-the-name",
        "a-comment-after-if-not-exists",
        "dashes-in-a-quoted-name-after-a-nested-comment",
    ],
)
def test_index_name_as_postgresql_names_it(tmp_path: Path, text: str, name: str | None) -> None:
    path = tmp_path / "0001_idx.sql"
    path.write_text("-- cicd-db: no-transaction\n" + text + "\n")
    assert migrations.index_name(migrations.read(path, 1, "idx")) == name


@pytest.mark.parametrize(
    ("before", "line"),
    [("", 4), ("CREATE TABLE c (id int);\nCOPY c FROM STDIN;\n1\n\\.\n", 8)],
    ids=["first-batch", "after-copy-data"],
)
def test_refused_when_the_server_tells_how_the_rest_reads(
    database: Database, tmp_path: Path, before: str, line: int
) -> None:
    """After a statement whose effect on strings only the server knows, the rest is planned
    at run time, and refused there as discover() would refuse it."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_later.sql": f"{before}CREATE TABLE t (s text);\n"
            "SELECT set_config('standard_conforming_strings', 'off', false);\n"
            "INSERT INTO t VALUES ('a\\';');\nCOMMIT;\n"
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert err == (
        f"error: migration file 0001_later.sql, line {line}: COMMIT ends or starts a transaction, and "
        "the runner already runs this file in one; remove it, or make the first line "
        "`-- cicd-db: no-transaction` to run the file outside a transaction\n"
    )
    assert database.history() == []
    assert "t" not in database.tables()


def test_a_no_transaction_file_with_cr_line_endings_applies_as_psql_applies_it(
    database: Database, tmp_path: Path
) -> None:
    """Old Mac line endings: psql reads the marker as a comment that ends at the CR and
    builds the index outside a transaction; so does the runner."""
    folder = write_migrations(tmp_path / "m", {"0001_t.sql": "CREATE TABLE t (c int);\n"})
    (folder / "0002_index.sql").write_bytes(
        b"-- cicd-db: no-transaction\rCREATE INDEX CONCURRENTLY i ON t (c);\r"
    )
    result = migrate(database, folder)
    assert result.code == 0, result
    assert database.history() == [1, 2]
    assert database.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'i'::regclass") == [
        (True,)
    ]


@pytest.mark.parametrize(
    ("data", "steps"),
    [
        (
            b"SELECT 1;\nSELECT 2;\n",
            [migrations.Batch(0, 19, 1, standard_strings=True)],
        ),
        (
            b"SET standard_conforming_strings = off;\nSELECT 'a\\'';\nSELECT 1;\n",
            [
                migrations.Batch(
                    0, 38, 1, True, changes_lexing=True, standard_strings_after=False, quiet_end=38
                ),
                migrations.Batch(39, 62, 2, standard_strings=False),
            ],
        ),
        (
            b"SELECT '" + b"x" * (MEBIBYTE - 10) + b"';\nSELECT 2;\n",
            [
                migrations.Batch(0, MEBIBYTE, 1, standard_strings=True),
                migrations.Batch(MEBIBYTE + 1, MEBIBYTE + 10, 2, standard_strings=True),
            ],
        ),
    ],
    ids=["one-batch", "strings-change-after-the-first", "a-mebibyte-exactly"],
)
def test_plan_stops_a_batch_only_where_it_must(data: bytes, steps: list[migrations.Batch]) -> None:
    assert list(migrations.plan("0001_x.sql", data, transactional=True)) == steps


def test_to_stdout_outside_a_copy_statement_is_not_refused(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_copy.sql": "CREATE TABLE t (id int);\n-- never COPY t TO STDOUT here\n"
            "COPY t FROM STDIN;\n1\n\\.\n-- nor TO STDOUT after it\n"
        },
    )
    assert migrate(database, folder)[0] == 0
    assert database.query("SELECT id FROM t") == [(1,)]


@pytest.mark.parametrize("mention", MENTIONS.values(), ids=MENTIONS.keys())
@pytest.mark.parametrize(
    ("later", "what"),
    [
        ("COMMIT;", "COMMIT ends or starts a transaction"),
        ("\\connect other", "psql meta-command \\connect is not SQL"),
        ("SELECT :'DBNAME';", ":'DBNAME' is a psql variable"),
    ],
    ids=["commit", "connect", "variable"],
)
def test_a_mention_of_standard_conforming_strings_stops_no_check(
    untouched: Database, tmp_path: Path, mention: str, later: str, what: str
) -> None:
    """Only a real SET, RESET or set_config changes how the rest reads: whatever names the
    setting before it, a later statement that may not run is refused before anything runs."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE notes (note text);\n",
            "0002_mentions.sql": f"{mention}{later}\nSELECT 1;\n",
        },
    )
    code, out, err = migrate(untouched, folder)
    assert (code, out) == (2, "")
    line = mention.count("\n") + 1
    assert err.startswith(f"error: migration file 0002_mentions.sql, line {line}: {what}"), err
    assert untouched.history() == []
    assert untouched.tables() == set()


@pytest.mark.parametrize("mention", MENTIONS.values(), ids=MENTIONS.keys())
def test_a_no_transaction_file_is_counted_whatever_it_mentions(
    database: Database, tmp_path: Path, mention: str
) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_notes.sql": "CREATE TABLE notes (note text);\n",
            "0002_several.sql": "-- cicd-db: no-transaction\n"
            f"{mention}CREATE TABLE two (id int);\nSELECT 1/0;\n",
        },
    )
    code, out, err = migrate(database, folder)
    assert (code, out) == (2, "")
    assert "0002_several.sql is marked no-transaction but holds" in err
    assert database.tables() == set()


@pytest.mark.parametrize(
    ("text", "line", "shown"),
    [
        ("SELECT 1;\nSELECT current_database() = :'DBNAME';\n", 2, ":'DBNAME'"),
        ("CREATE TABLE t (id int);\n\nALTER TABLE t\n  OWNER TO :USER;\n", 3 + 1, ":USER"),
        ('CREATE SCHEMA :"tenant";\n', 1, ':"tenant"'),
        ("SELECT (ARRAY[1,2])[1:VERSION_NUM];\n", 1, ":VERSION_NUM"),
        ("SELECT 1 WHERE :{?DBNAME};\n", 1, ":{?DBNAME}"),
    ],
    ids=["literal", "bare-on-a-later-line", "identifier", "psqls-own-in-a-slice", "test"],
)
def test_a_psql_variable_is_refused_naming_its_line(
    untouched: Database, tmp_path: Path, text: str, line: int, shown: str
) -> None:
    folder = write_migrations(tmp_path, {"0001_first.sql": "CREATE TABLE a (id int);\n"})
    (folder / "0002_vars.sql").write_text(text)
    code, out, err = migrate(untouched, folder)
    assert (code, out) == (2, "")
    assert err == (
        f"error: migration file 0002_vars.sql, line {line}: {shown} is a psql variable, and "
        "the runner does not substitute psql variables; write its value instead "
        "(current_database(), current_user or a setting read with current_setting() where it "
        "must be computed); if the colon is SQL, put a space after it\n"
    )
    assert untouched.tables() == set()


def test_planning_a_large_file_holds_no_copy_of_it() -> None:
    """The planner reads a file where it lies: what it allocates besides the file's own
    bytes is bounded by a batch's statements, not the file (the runner's peak is the file
    plus ~48 MiB: docs/benchmarks.md). tracemalloc counts allocations, so this is no
    timing: a split or a slice of the whole file (found once) fails."""
    # Rows of a kilobyte: few statements, so that tracemalloc's own cost stays small.
    row = b"INSERT INTO runs (id, note) VALUES (1, '" + b"x" * 1000 + b"');\n"
    data = b"-- a dump's data\n" + row * (8 * MEBIBYTE // len(row))
    migrations.plan("0000_warm.sql", row, transactional=True)  # the scanner loaded first
    tracemalloc.start()
    try:
        steps = migrations.plan("0001_data.sql", data, transactional=True)
        migration = migrations.Migration(1, "data", Path("0001_data.sql"), data, "0" * 64)
        assert migration.transactional
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(steps) >= 8  # slices of about a megabyte
    assert peak < len(data) // 2, f"{peak / MEBIBYTE:.1f} MiB to plan {len(data) / MEBIBYTE:.1f}"


def _quiet_lead_by_scanning(
    data: bytes, steps: tuple[migrations.Step, ...]
) -> tuple[int | None, bool]:
    """The specification of Batch.quiet_end and sets_transaction: the file's statements
    one at a time, as planned, up to the first that takes a snapshot (or a COPY)."""
    from cicd_db.migrations.kinds import (
        SESSION_SETTINGS,
        TAKE_NO_SNAPSHOT,
        sets_a_role,
        sets_the_transaction,
    )
    from cicd_db.migrations.steps import one_by_one

    end, sets = None, False
    for step in steps:
        if not isinstance(step, migrations.Batch):
            return end, sets
        for one in one_by_one(data, step):
            assert isinstance(one, migrations.Batch)
            scanner = Scanner(
                data[: one.end], standard_strings=one.standard_strings, start=one.start
            )
            piece = next(iter(scanner))
            keyword = getattr(piece, "keyword", None)
            if keyword not in TAKE_NO_SNAPSHOT or (
                keyword == "SET" and sets_a_role(data, piece, one.standard_strings)  # type: ignore[arg-type]
            ):
                return end, sets
            end = piece.end
            if keyword in SESSION_SETTINGS and sets_the_transaction(
                data,
                piece,  # type: ignore[arg-type]
                one.standard_strings,
            ):
                sets = True
    return end, sets


_LEADING_PIECES = [
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
    "set transaction read only;",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE;",
    "SET LOCAL TRANSACTION DEFERRABLE;",
    "SET TRANSACTION SNAPSHOT '00000003-0000001B-1';",
    "SET \"transaction_isolation\" = 'serializable';",
    'SET LOCAL "Transaction_Deferrable" = on;',
    'RESET U&"transaction_read_only";',
    "SET local.transaction = 1;",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
    "SET lock_timeout = '1s';",
    "SET search_path TO public;",
    "RESET ALL;",
    "SET standard_conforming_strings = off;",
    "SET standard_conforming_strings = on;",
    "-- SET TRANSACTION READ ONLY;",
    "/* SET TRANSACTION */ SET TRANSACTION READ ONLY;",
    "SELECT 'SET TRANSACTION READ ONLY;';",
    "CREATE TABLE t (id int);",
    "COPY t FROM STDIN;\n1\n\\.",
    "\\restrict abc",
    "DO $$BEGIN SET TRANSACTION READ ONLY; END$$;",
    "SHOW search_path;",
    "LOCK TABLE t IN EXCLUSIVE MODE;",
    "LISTEN c;",
    "NOTIFY c;",
    "SAVEPOINT s;",
    "SET ROLE app;",
    "set session authorization app;",
    'SET LOCAL "role" = app;',
    "SET role_like_name = 1;",
    "",
]


@settings(max_examples=examples(400), deadline=None)
@given(
    st.lists(st.sampled_from(_LEADING_PIECES), max_size=6),
    st.sampled_from(["\n", " ", "\r\n"]),
    st.sampled_from([migrations.BATCH_BYTES, 1, 40]),
)
def test_the_leading_transaction_settings_are_found_as_a_scan_finds_them(
    pieces: list[str], separator: str, batch_bytes: int
) -> None:
    """Where a file's leading statements that take no snapshot end, and whether one is a
    SET TRANSACTION, is found while planning, not by scanning the file again for each
    run: the same as that scan, for any mix of settings (their names quoted or not),
    SHOW, LOCK, LISTEN, comments, COPY data, psql lines and statements that change how
    strings read, in one batch or spread over several."""
    data = (separator.join(pieces) + "\n").encode()
    try:
        with patch.object(statements, "BATCH_BYTES", batch_bytes):
            steps = migrations.plan("0001_x.sql", data, transactional=True)
    except ConfigError:
        return  # refused (text after a psql line or a COPY on its line): nothing runs
    first = steps[0] if steps else None
    if not isinstance(first, migrations.Batch):
        assert all(
            not isinstance(step, migrations.Batch) or step.quiet_end is None for step in steps
        )
        return
    assert (first.quiet_end, first.sets_transaction) == _quiet_lead_by_scanning(data, steps)
    assert all(step.quiet_end is None for step in steps[1:] if isinstance(step, migrations.Batch))


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.sampled_from(_LEADING_PIECES), max_size=6),
    st.sampled_from(["\n", "\n-- a comment\n"]),
    st.sampled_from([migrations.BATCH_BYTES, 1, 40]),
)
# A batch cut at the lead whose own last statement changes how strings read.
@example(
    pieces=[
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
        "CREATE TABLE t (id int);",
        "SET standard_conforming_strings = off;",
    ],
    separator="\n",
    batch_bytes=migrations.BATCH_BYTES,
)
def test_the_split_before_the_runners_first_query_keeps_every_statement_once(
    pieces: list[str], separator: str, batch_bytes: int
) -> None:
    """split_at at lead_end: the head and the tail hold the file's steps, each text once
    and in order, each batch's line the line of its first byte, and no cut batch leads
    the runner to plan again (only the tail's last may change how strings read)."""
    data = (separator.join([*pieces, "CREATE TABLE a (x int);", "SELECT 1;"]) + "\n").encode()
    try:
        with patch.object(statements, "BATCH_BYTES", batch_bytes):
            steps = migrations.plan("0001_x.sql", data, transactional=True)
    except ConfigError:
        return
    lead = lead_end(steps, True, isolated=True)
    if lead is None:
        return
    head, tail = split_at(data, steps, lead)

    def spans(part: tuple[migrations.Step, ...]) -> list[tuple[int, int]]:
        return [
            (s.start, s.end) if isinstance(s, migrations.Batch) else (s.statement.start, s.data.end)
            for s in part
        ]

    assert all(end <= lead for _, end in spans(head))
    assert all(start >= lead for start, _ in spans(tail))
    whole = spans(head) + spans(tail)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(whole))
    assert (whole[0][0], whole[-1][1]) == (spans(steps)[0][0], spans(steps)[-1][1])
    for step in (*head, *tail):
        if isinstance(step, migrations.Batch):
            assert step.line == 1 + data.count(b"\n", 0, step.start)
            assert step.quiet_end is None and not step.sets_transaction
    cut = [s for s in steps if isinstance(s, migrations.Batch) and s.start < lead < s.end]
    if cut:  # the head's part of a batch cut in two does not end in a change of reading
        last = head[-1]
        assert isinstance(last, migrations.Batch) and last.end == lead
        assert (last.changes_lexing, last.standard_strings_after) == (False, None)


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        # Refused only as strings read with the setting off, as the DO block may leave it.
        (
            "DO $$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END$$;\n"
            "SELECT 'x\\'';COMMIT;--';\n",
            "migration file 0001_x.sql, line 2 (read with standard_conforming_strings off, "
            "as line 1 may leave it): COMMIT ends or starts a transaction",
        ),
        # ... and only with it on (the database's reading by default here).
        (
            "DO $$BEGIN PERFORM set_config('standard_conforming_strings', 'on', false); END$$;\n"
            "SELECT 'a\\';COMMIT;--';\n",
            "migration file 0001_x.sql, line 2: COMMIT ends or starts a transaction",
        ),
        # A SET LOCAL in the file's transaction holds for the rest: read with it off only.
        ("SET LOCAL standard_conforming_strings = off;\nSELECT 'a\\';COMMIT;--';\n", None),
    ],
    ids=["off-after-do", "on-after-do", "set-local"],
)
def test_every_reading_a_statement_may_leave_is_checked_and_named(
    text: str, refused: str | None
) -> None:
    if refused is None:
        migrations.plan("0001_x.sql", text.encode(), transactional=True)
        return
    with pytest.raises(ConfigError) as refusal:
        migrations.plan("0001_x.sql", text.encode(), transactional=True)
    assert str(refusal.value).startswith(refused), str(refusal.value)


def test_a_no_transaction_statement_that_begins_with_a_parenthesis_is_taken() -> None:
    data = b"-- cicd-db: no-transaction\n(SELECT 1);\n"
    steps = migrations.plan("0001_x.sql", data, transactional=False)
    assert [data[s.start : s.end] for s in steps if isinstance(s, migrations.Batch)] == [
        b"(SELECT 1);"
    ]


# What the server reads as white space between two words: its blanks (\v since
# PostgreSQL 16), a `--` comment ended by a line feed or a carriage return, a /* */ one,
# nested or not.
GAP_PIECES = [" ", "\t", "\n", "\r", "\f", "\v", "-- c\n", "-- c\r", "/* c */", "/* a /* b */ c */"]
# Each pattern of statements.GAPPED, written with a gap between its words.
GAPPED_STATEMENTS = {
    "defaults": "ALTER{gap}DATABASE {database} SET app.x = '1'",
    "custom": "SET{gap}app.x = '1'",
    "event trigger": "CREATE EVENT{gap}TRIGGER t ON ddl_command_start EXECUTE FUNCTION f()",
    "load": "LOAD{gap}'plpgsql'",
}


@pytest.mark.property
@settings(max_examples=examples(100), deadline=None)
@given(
    name=st.sampled_from(sorted(GAPPED_STATEMENTS)),
    gap=st.lists(st.sampled_from(GAP_PIECES), min_size=1, max_size=4).map("".join),
)
def test_the_words_of_a_statement_that_changes_the_next_session_are_found_whatever_stands_between(
    database: Database, name: str, gap: str
) -> None:
    """A statement whose effect only later sessions see (ALTER DATABASE ... SET, a custom
    setting, an event trigger, LOAD) is found whatever the server reads as white space
    between its words: where the server runs it (the oracle, in a transaction rolled
    back), names_in finds it. A `--` comment ended by a carriage return and a nested one
    were missed (helper-103)."""
    text = GAPPED_STATEMENTS[name].format(gap=gap, database=f'"{database.name}"')
    if name in ("defaults", "custom"):
        with database.connect() as conn:
            try:
                conn.execute("BEGIN")
                conn.execute(text.encode())
            except Exception:  # the server does not read this gap as white space (\v on 15)
                hypothesis_assume(False)
            finally:
                conn.execute("ROLLBACK")
    assert name in statements.names_in(text.encode() + b";\n"), repr(text)


def test_the_words_are_found_across_a_megabyte_of_file() -> None:
    """A large file is read a megabyte at a time; words apart by spaces or comments across
    the slices' boundary are found, up to 4 kB apart."""
    for gap in (b" " * 100, b"/*" + b"x" * 3000 + b"*/", b"--" + b"y" * 200 + b"\r"):
        for shift in (-len(gap) - 3, -len(gap) // 2, -2, 0):
            at = MEBIBYTE + shift
            data = b"SELECT 1;\n" + b" " * (at - 10) + b"ALTER" + gap + b"ROLE r SET x = 1;\n"
            assert "defaults" in statements.names_in(data), (len(gap), shift)
