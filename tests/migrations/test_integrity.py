"""The check each file's history row is written under: a file may not change the
history (its rows, its storage, a table in its place), in a transaction or not, and
the fingerprint the check compares is the server's own md5 of the rows.

What was changed on the history since it was made, and refuses a later file's row
(integrity.alterations), is tested with the other state a migration leaves for the
next run, in test_next_run.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import migrations
from cicd_db.migrations import integrity

from ..fix_cli import migrate
from ..fix_db import Database
from ..utils import write_migrations

HISTORY = "cicd_db.cicd_db_schema_history"
# Every way a file can change the history's rows or put another table in its place,
# including those PostgreSQL counts as no UPDATE or DELETE (TRUNCATE, a rewrite) and a
# table of exactly the same rows.
TAMPERING = {
    "truncate": f"TRUNCATE {HISTORY};",
    "delete": f"DELETE FROM {HISTORY} WHERE version = 1;",
    "update": f"UPDATE {HISTORY} SET checksum = 'x';",
    "update-to-same": f"UPDATE {HISTORY} SET checksum = checksum;",
    "replace": f"ALTER TABLE {HISTORY} RENAME TO old_history;\n"
    f"CREATE TABLE {HISTORY} (LIKE cicd_db.old_history INCLUDING ALL);",
    # The runner's row goes to the new table; one row written to the old one would
    # make the old one's count look right.
    "replace-and-write-the-old": f"ALTER TABLE {HISTORY} RENAME TO old_history;\n"
    f"CREATE TABLE {HISTORY} (LIKE cicd_db.old_history INCLUDING ALL);\n"
    "INSERT INTO cicd_db.old_history (version, name, checksum, duration_ms) "
    "VALUES (98, 'x', 'x', 0);",
    # The history made unlogged would be lost with a crash of the server.
    "unlogged": f"ALTER TABLE {HISTORY} SET UNLOGGED;",
    "same-rows-new-table": f"CREATE TABLE cicd_db.copied AS SELECT * FROM {HISTORY};\n"
    f"DROP TABLE {HISTORY};\nALTER TABLE cicd_db.copied RENAME TO cicd_db_schema_history;",
    "rewrite": f"ALTER TABLE {HISTORY} ALTER COLUMN checksum TYPE text USING 'x';",
    "forged-row": f"INSERT INTO {HISTORY} (version, name, checksum, duration_ms) "
    "VALUES (99, 'forged', 'x', 0);",
    "upsert": f"INSERT INTO {HISTORY} (version, name, checksum, duration_ms) "
    "VALUES (1, 'a', 'x', 0) ON CONFLICT (version) DO UPDATE SET checksum = 'x';",
    "copy-in": f"COPY {HISTORY} (version, name, checksum, duration_ms) FROM stdin;\n"
    "98\tcopied\tx\t0\n\\.",
    "trigger-edits-the-row": "CREATE FUNCTION cicd_db.edit() RETURNS trigger LANGUAGE plpgsql "
    "AS $$BEGIN NEW.checksum := 'x'; RETURN NEW; END$$;\n"
    f"CREATE TRIGGER edit BEFORE INSERT ON {HISTORY} FOR EACH ROW EXECUTE FUNCTION cicd_db.edit();",
    "trigger-deletes-older": "CREATE FUNCTION cicd_db.prune() RETURNS trigger "
    f"LANGUAGE plpgsql AS $$BEGIN DELETE FROM {HISTORY} WHERE version < NEW.version; "
    "RETURN NULL; END$$;\n"
    f"CREATE TRIGGER prune AFTER INSERT ON {HISTORY} FOR EACH ROW EXECUTE FUNCTION cicd_db.prune();",
}


@given(
    st.lists(
        st.tuples(st.integers(1, 10**12), st.text(min_size=1), st.text(min_size=1)),
        unique_by=lambda row: row[0],
        max_size=30,
    ),
    st.data(),
)
def test_the_history_fingerprint_is_the_servers_md5_however_rows_are_added(
    rows: list[tuple[int, str, str]], data: st.DataObject
) -> None:
    """Kept as rows are added, in order or not: always the md5 of every row sorted by
    version, the line the server's check computes (pg_catalog.md5 of string_agg)."""
    known = data.draw(st.integers(0, len(rows)))
    recorded = integrity.Recorded(rows[:known])
    for version, name, checksum in data.draw(st.permutations(rows[known:])):
        migration = migrations.Migration(version, name, Path("f.sql"), b"", checksum)
        expected_rows = sorted([*recorded.rows, (version, name, checksum)])
        expected = hashlib.md5(  # noqa: S324
            "\n".join(f"{v} {n} {c}" for v, n, c in expected_rows).encode()
        ).hexdigest()
        assert recorded.fingerprint(migration) == expected
        recorded.add(migration)
        assert recorded.rows == expected_rows


# Tampering that leaves every row as it was: only the counts or the storage can tell
# (UNLOGGED is read from the catalog too).
SAME_ROWS = ("update-to-same", "same-rows-new-table")


@pytest.mark.parametrize("counting", ["on", "off"], ids=["counted", "track_counts-off"])
@pytest.mark.parametrize("name", TAMPERING)
def test_a_file_may_not_change_the_history(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, counting: str
) -> None:
    """A file's transaction is checked by PostgreSQL's counts of the rows it changed in
    the history, the table's identity and storage, and its own row: any change is
    refused. Where PostgreSQL does not count (track_counts off), by a fingerprint of
    every row: any change of a row is refused, and rows left as they were pass."""
    monkeypatch.setenv("PGOPTIONS", f"-c track_counts={counting}")
    folder = write_migrations(
        tmp_path,
        {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_tamper.sql": f"{TAMPERING[name]}\n"},
    )
    code, _, err = migrate(database, folder)
    if counting == "off" and name in SAME_ROWS:
        assert (code, err, database.history()) == (0, "", [1, 2])
        return
    assert code == 1
    assert err == (
        "error: migration 0002_tamper.sql changed the migration history (TRUNCATE, DELETE, "
        "UPDATE, an ALTER TABLE that rewrites it or makes it UNLOGGED, or another table in "
        "its place); it was rolled back, and it is not recorded; remove that from the file, "
        "check the database, and run again\n"
    )
    assert database.history() == [1]
    assert migrate(database, folder, "status", "--exit-code")[0] == 3  # 0002 still pending


_LATER = "CREATE TABLE c (i int);\n"
# A later file's row, as the runner would write it: that file would be skipped.
_LATER_ROW = (
    f"INSERT INTO {HISTORY} (version, name, checksum, duration_ms) "
    f"VALUES (3, 'c', '{hashlib.sha256(_LATER.encode()).hexdigest()}', 0);"
)


@pytest.mark.parametrize(
    ("statement", "told"),
    [
        (
            "delete",
            "the history rows it removed (version 1) are written again, so the next run "
            "does not apply those files twice",
        ),
        (
            "truncate",
            "the history rows it removed (version 1) are written again, so the next run "
            "does not apply those files twice",
        ),
        (
            "update",
            "the history rows it changed (version 1) are put back as the runner wrote "
            "them, so the next run applies no file twice and skips none",
        ),
        (
            "forged-row",
            "the history rows it added (version 99) are deleted, so the next run skips no "
            "file it has not applied",
        ),
        (
            "later-row",
            "the history rows it added (version 3) are deleted, so the next run skips no "
            "file it has not applied",
        ),
    ],
    ids=["delete", "truncate", "update", "forged-row", "later-row"],
)
def test_a_no_transaction_file_may_not_change_the_history(
    database: Database, tmp_path: Path, statement: str, told: str
) -> None:
    """Outside a transaction its statements commit one by one, so no count of a
    transaction's can tell: the history's fingerprint is compared after it. What it did
    is committed: the history is made what the runner wrote again (rows it removed
    written, rows it added deleted, rows it changed put back), or the next run, the file
    fixed, would apply files a second time or skip files that never ran."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (i int);\n",
            "0002_tamper.sql": "-- cicd-db: no-transaction\n"
            + (_LATER_ROW if statement == "later-row" else TAMPERING[statement])
            + "\n",
            "0003_c.sql": _LATER,
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith("error: migration 0002_tamper.sql changed the migration history ("), err
    assert err.endswith(f"; {told}\n"), err
    assert database.history() == [1]
    write_migrations(tmp_path, {"0002_tamper.sql": "-- cicd-db: no-transaction\nSELECT 1;\n"})
    again = migrate(database, folder)
    assert (again.code, again.err) == (0, ""), again  # 0001's CREATE would fail if run twice
    assert database.history() == [1, 2, 3]
    assert database.tables() == {"a", "c"}


def test_a_history_row_written_through_another_session_is_named_not_blamed_on_the_file(
    database: Database, tmp_path: Path
) -> None:
    """0002 writes 0003's history row through dblink, another session the file's
    transaction checks cannot see: 0003's own row is refused as a duplicate, which said
    "fix the file". The line says the version was written meanwhile by something other
    than the runner, and what to do."""
    later = "CREATE TABLE t3 (i int);\n"
    forged = (
        f"INSERT INTO {HISTORY} (version, name, checksum, duration_ms) VALUES "
        f"(3, 'c', '{hashlib.sha256(later.encode()).hexdigest()}', 0)"
    )
    database.execute("CREATE EXTENSION dblink")
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE t1 (i int);\n",
            "0002_forge.sql": "SELECT dblink_exec("
            + sql.Literal(database.settings.conninfo()).as_string()
            + ", "
            + sql.Literal(forged).as_string()
            + ");\n",
            "0003_c.sql": later,
        },
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err == (
        "error: migration 0003_c.sql cannot be recorded: version 3 is in the migration "
        "history already, written while this run ran by something other than the runner (a "
        "no-transaction file's INSERT, another session such as dblink, a person); it was "
        "rolled back, and it is not recorded; find who wrote that row, delete it if the file "
        "never ran, remove what wrote it, and run again\n"
    )
    assert database.history() == [1, 2, 3] and "t3" not in database.tables()


def test_a_file_that_writes_its_own_history_row_is_told_to_leave_it_to_the_runner(
    database: Database, tmp_path: Path
) -> None:
    """Its row refused as a duplicate of the one the file wrote, rolled back with it:
    nothing to find or delete, and the file is the one to change."""
    folder = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE t1 (i int);\n",
            "0002_own.sql": f"INSERT INTO {HISTORY} (version, name, checksum, duration_ms) "
            "VALUES (2, 'own', 'x', 0);\n",
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (
        1,
        "error: migration 0002_own.sql cannot be recorded: it writes the history row of its "
        "own version (2) itself, which is the runner's to write; it was rolled back, and it "
        "is not recorded; remove that from the file\n",
    )
    assert database.history() == [1]


def test_a_file_that_reads_and_writes_other_tables_leaves_the_history_checked_as_fine(
    database: Database, tmp_path: Path
) -> None:
    """The counts are the history table's only: rows a file inserts, updates and deletes
    elsewhere (and reads of the history) are none of the check's business; and rows of
    the history's own are counted from the file's start, not from zero, whatever earlier
    runs in the session wrote."""
    busy = (
        "CREATE TABLE t (i int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50);\n"
        "UPDATE t SET i = i + 100; DELETE FROM t WHERE i > 120;\n"
        f"CREATE TABLE seen AS SELECT * FROM {HISTORY};\n"
    )
    folder = write_migrations(
        tmp_path,
        {
            f"000{n}_busy.sql": busy.replace(" t ", f" t{n} ").replace("seen", f"seen{n}")
            for n in range(1, 6)
        },
    )
    code, _, err = migrate(database, folder)
    assert (code, err) == (0, ""), err
    assert database.history() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("transactional", [True, False], ids=["in-a-transaction", "no-transaction"])
@pytest.mark.parametrize(
    "made",
    [
        f"CREATE TABLE public.cicd_db_schema_history AS TABLE {HISTORY};",
        "CREATE SCHEMA archive;\n"
        f"CREATE TABLE archive.cicd_db_schema_history (LIKE {HISTORY} INCLUDING ALL);",
        # The name built from pieces: the text never names the history.
        "DO $$BEGIN EXECUTE format('CREATE TABLE public.%I (LIKE cicd_db.%1$I)', "
        "'cicd_db_' || 'schema_history'); END$$;",
    ],
    ids=["copy-in-public", "empty-like-elsewhere", "name-built-by-format"],
)
def test_a_file_that_makes_a_second_history_is_refused_before_it_blocks_every_run(
    database: Database, tmp_path: Path, made: str, transactional: bool
) -> None:
    """A table of the history's name and columns outside its schema would make every
    later run and `status` refuse two histories: the file that makes it is refused, and
    the next run, as the line says, works."""
    marker = "" if transactional else "-- cicd-db: no-transaction\n"
    statement = made if transactional else made.splitlines()[-1]
    if not transactional and "archive" in made:
        database.execute("CREATE SCHEMA archive")  # one statement a no-transaction file
    folder = write_migrations(
        tmp_path,
        {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_copy.sql": f"{marker}{statement}\n"},
    )
    code, _, err = migrate(database, folder)
    assert code == 1
    assert err.startswith(
        "error: migration 0002_copy.sql made a second table like the migration history (of "
        "its name and columns, outside schema cicd_db), which every later run would refuse "
        "as a second history; "
    ), err
    assert database.history() == [1]
    if transactional:
        assert err.endswith(
            "it was rolled back, and it is not recorded; remove that from the "
            "file, check the database, and run again\n"
        ), err
    else:
        assert err.endswith(
            "remove that from the file, drop or rename that table, and run again\n"
        ), err
        second = "archive" if "archive" in made else "public"
        database.execute(f"DROP TABLE {second}.cicd_db_schema_history")
    write_migrations(tmp_path, {"0002_copy.sql": f"{marker}SELECT 1;\n"})
    assert migrate(database, folder).code == 0
    assert database.history() == [1, 2]
