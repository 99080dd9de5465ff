"""What kind of statement a statement is (src/cicd_db/migrations/kinds.py), with
PostgreSQL as the oracle: what it refuses inside a transaction block, and what it
accepts only before a transaction's first query."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cicd_db.migrations import kinds
from cicd_db.sqltext import Scanner, Statement

from ..fix_db import Database, Databases
from ..utils import examples


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    scope=st.sampled_from(["", "LOCAL ", "SESSION ", "local ", "/* c */ "]),
    name=st.sampled_from(
        [
            "transaction_isolation",
            '"transaction_isolation"',
            '"Transaction_Isolation"',
            'U&"transaction_isolation"',
            "TRANSACTION_ISOLATION",
            "default_transaction_isolation",
            '"default_transaction_isolation"',
            "search_path",
        ]
    ),
    separator=st.sampled_from([" = ", " TO ", "=", " /* x */ = "]),
)
def test_what_must_come_before_any_query_is_what_postgresql_refuses_after_one(
    database: Database, scope: str, name: str, separator: str
) -> None:
    """PostgreSQL is the oracle: a SET refused after the transaction's first query
    ("must be called before any query") is one sets_the_transaction() finds, and no
    other, however the name is quoted, cased or commented."""
    value = "'public'" if "search_path" in name else "'serializable'"
    text = f"SET {scope}{name}{separator}{value};".encode()
    piece = next(iter(Scanner(text)))
    assert isinstance(piece, Statement)
    with database.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        try:
            conn.execute(text)
            refused = False
        except psycopg.errors.ActiveSqlTransaction:
            refused = True
        conn.rollback()
    assert kinds.sets_the_transaction(text, piece, True) is refused, text


# Statements PostgreSQL runs only outside a transaction block (each of its own calls to
# PreventInTransactionBlock that the text of a statement decides, 15 to 18), beside
# look-alikes it runs inside one: tokens, respelled by the test. `{db}` is the test
# database. Not here, since only the server knows: REINDEX of a partitioned table or
# index, and the subscription commands whose slot or copy decides it (the server refuses
# them when the file runs, and the file is rolled back).
OUTSIDE_ONLY = [
    "VACUUM",
    "VACUUM t",
    "VACUUM ( ANALYZE ) t",
    "VACUUM FULL t",
    "CLUSTER",
    "CLUSTER VERBOSE",
    "CLUSTER ( VERBOSE )",
    "CREATE DATABASE cicd_kinds_never",
    "DROP DATABASE IF EXISTS cicd_kinds_never",
    "ALTER DATABASE {db} SET TABLESPACE pg_default",
    "CREATE TABLESPACE cicd_kinds_never LOCATION '/nonexistent'",
    "DROP TABLESPACE IF EXISTS cicd_kinds_never",
    "ALTER SYSTEM SET work_mem = '4MB'",
    "ALTER SYSTEM RESET ALL",
    "REINDEX DATABASE {db}",
    "REINDEX SYSTEM {db}",
    "REINDEX SCHEMA public",
    "REINDEX ( VERBOSE ) SCHEMA public",
    "REINDEX ( VERBOSE ) DATABASE {db}",
    "REINDEX TABLE CONCURRENTLY t",
    "REINDEX INDEX CONCURRENTLY t_pkey",
    "REINDEX ( CONCURRENTLY ) TABLE t",
    "REINDEX ( CONCURRENTLY true ) TABLE t",
    "REINDEX ( VERBOSE , CONCURRENTLY ) INDEX t_pkey",
    "REINDEX ( VERBOSE , TABLESPACE pg_default ) TABLE CONCURRENTLY t",
    "CREATE INDEX CONCURRENTLY i ON t ( a )",
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t ( a )",
    "DROP INDEX CONCURRENTLY IF EXISTS i",
    "DISCARD ALL",
    "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
    "ALTER TABLE IF EXISTS p DETACH PARTITION p1 CONCURRENTLY",
    # Found by an adversarial run (helper-93) and a review (helper-94):
    "ALTER DATABASE {db} WITH TABLESPACE pg_default",
    "ALTER DATABASE {db} TABLESPACE = pg_default",
    'ALTER DATABASE {db} WITH "tablespace" pg_default',
    "ALTER DATABASE U&{db} SET TABLESPACE pg_default",
    'REINDEX ( "concurrently" ) TABLE t',
    'REINDEX ( U&"concurrently" ) TABLE t',
    "REINDEX ( CONCURRENTLY 01 ) TABLE t",
    "REINDEX ( CONCURRENTLY 'on' ) TABLE t",
    "REINDEX ( CONCURRENTLY false , CONCURRENTLY ) TABLE t",
    "REINDEX ( TABLESPACE $$)$$ , CONCURRENTLY ) TABLE t",
    "REINDEX ( TABLESPACE E'\\'' , CONCURRENTLY ) TABLE t",
    "REINDEX(CONCURRENTLY)TABLE t",
    "CREATE SCHEMA s2 CREATE INDEX CONCURRENTLY i2 ON t ( a )",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub",
    "COMMIT PREPARED 'never'",
    "ROLLBACK PREPARED 'never'",
    # A second adversarial run (helper-95):
    'REINDEX ( U&"con\\0063urrently" ) TABLE t',
    "REINDEX ( U&\"!0063oncurrently\" UESCAPE '!' ) TABLE t",
    'ALTER DATABASE {db} WITH U&"tablespac\\0065" pg_default',
    "ALTER DATABASE {db} U&\"t!0061blespace\" UESCAPE '!' pg_default",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( connect = \"on\"(0) )",
    # Mutation testing (helper-96): the table named with ONLY, a schema, or `*`.
    "ALTER TABLE ONLY p DETACH PARTITION p1 CONCURRENTLY",
    "ALTER TABLE public . p DETACH PARTITION p1 CONCURRENTLY",
    "ALTER TABLE p * DETACH PARTITION p1 CONCURRENTLY",
]
INSIDE_TOO = [
    "ANALYZE t",
    "CLUSTER t USING t_pkey",
    "CLUSTER ( VERBOSE ) t USING t_pkey",
    "REINDEX TABLE t",
    "REINDEX INDEX t_pkey",
    "REINDEX ( VERBOSE ) TABLE t",
    "REINDEX ( CONCURRENTLY false ) TABLE t",
    "REINDEX ( CONCURRENTLY off ) INDEX t_pkey",
    "REINDEX ( TABLESPACE pg_default ) TABLE t",
    "CREATE INDEX i ON t ( a )",
    "CREATE INDEX concurrently_named ON t ( a )",
    "DROP INDEX IF EXISTS i",
    "DISCARD TEMP",
    "DISCARD PLANS",
    "DISCARD SEQUENCES",
    "ALTER DATABASE {db} SET work_mem = '4MB'",
    "ALTER DATABASE {db} SET tablespace_note = 'x'",
    "ALTER TABLE p DETACH PARTITION p1",
    'ALTER TABLE t ADD COLUMN "concurrently" int',
    "ALTER TABLE p DETACH PARTITION p1 FINALIZE",
    "ALTER TYPE e ADD VALUE 'z'",
    "ALTER TABLESPACE pg_default SET ( seq_page_cost = 1 )",
    "SELECT 'VACUUM'",
    "ALTER DATABASE {db} SET tablespace.x = '1'",
    "ALTER DATABASE {db} WITH CONNECTION LIMIT 5",
    'REINDEX ( CONCURRENTLY "off" ) TABLE t',
    'REINDEX ( CONCURRENTLY "false" ) TABLE t',
    "REINDEX ( CONCURRENTLY E'off' ) TABLE t",
    "REINDEX ( CONCURRENTLY $$off$$ ) TABLE t",
    "REINDEX ( CONCURRENTLY -0 ) TABLE t",
    "REINDEX ( CONCURRENTLY +0 ) TABLE t",
    "REINDEX ( CONCURRENTLY , CONCURRENTLY false ) TABLE t",
    "CREATE SCHEMA s3 CREATE INDEX i3 ON t ( a )",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( connect = false )",
    "PREPARE transaction AS SELECT 1",
    "CLUSTER verbose_t",
    "REINDEX ( CONCURRENTLY U&'o\\0066f' ) TABLE t",
    "REINDEX ( CONCURRENTLY U&'!006Fff' UESCAPE '!' ) TABLE t",
    "REINDEX ( CONCURRENTLY 'of'\n'f' ) TABLE t",
    "REINDEX ( CONCURRENTLY E'of'\n'f' ) TABLE t",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( connect = off(1) )",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( slot_name = x(1) , connect = false )",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( U&\"conn\\0065ct\" = false )",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( connect = U&'of\\0066' )",
    "CLUSTER verbo\u017fe",
    "ALTER TABLE t ADD COLUMN detach partition , ALTER COLUMN a TYPE concurrently",
    # Mutation testing (helper-96): VERBOSE before a table; a subscription that connects
    # but makes no slot.
    "CLUSTER VERBOSE t",
    "CLUSTER VERBOSE t USING t_pkey",
    "CREATE SUBSCRIPTION sub CONNECTION 'dbname=nope' PUBLICATION pub WITH ( create_slot = false )",
]
SEPARATORS = [" ", "\n", "  ", "\t", " /* VACUUM */ ", " -- CONCURRENTLY\n"]


@st.composite
def respelled(draw: st.DrawFn, statement: str) -> str:
    """`statement` with its keywords in any case (names, strings and numbers as written)
    and any space or comment between its tokens."""
    out: list[str] = []
    for token in statement.split(" "):
        if out:
            out.append(draw(st.sampled_from(SEPARATORS)))
        keyword = re.fullmatch(r"[A-Z_]+", token) is not None
        out.append(_cased(draw, token) if keyword else token)
    return "".join(out)


def _cased(draw: st.DrawFn, word: str) -> str:
    return draw(st.sampled_from([word.upper(), word.lower(), word.capitalize()]))


@pytest.fixture(scope="module")
def oracle(databases: Databases, empty_template: str) -> Iterator[Database]:
    """One database for the module: every statement runs in a transaction rolled back."""
    database = databases.create(empty_template)
    database.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int); CREATE TYPE e AS ENUM ('y'); "
        "CREATE TABLE p (id int) PARTITION BY RANGE (id); "
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10)"
    )
    yield database
    databases.drop(database)


@pytest.mark.parametrize("statement", OUTSIDE_ONLY + INSIDE_TOO)
@settings(
    max_examples=examples(4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_what_postgresql_runs_only_outside_a_transaction_is_what_the_runner_names(
    oracle: Database, data: st.DataObject, statement: str
) -> None:
    """PostgreSQL is the oracle: a statement it refuses inside a transaction block
    (25001) is one the runner names so, before anything runs, and no other, however its
    words are cased, spaced or commented."""
    text = data.draw(respelled(statement)).replace(
        "{db}", sql.Identifier(oracle.name).as_string(None)
    )
    with oracle.connect() as conn:
        conn.execute("BEGIN")
        try:
            conn.execute(text.encode())
            refused = False
        except psycopg.errors.ActiveSqlTransaction:
            refused = True
        except psycopg.errors.SyntaxError:  # not this major's syntax (CLUSTER (...) before 17)
            refused = None
        except psycopg.Error:  # any other failure: PostgreSQL got past that check
            refused = False
        conn.rollback()
    if refused is None:
        return  # this major cannot parse it: nothing to compare
    assert refused is (statement in OUTSIDE_ONLY), f"PostgreSQL's own verdict changed: {text}"
    data_ = f"{text};\n".encode()
    piece = next(iter(Scanner(data_)))
    assert isinstance(piece, Statement)
    named = kinds.outside_transactions_only(data_, piece, True)
    ends = kinds.controls_transaction(data_, piece, True)  # COMMIT PREPARED, ...
    assert (named is not None or ends) is refused, (text, named, ends)


# Statements by their first word, beside what must run before each (a savepoint to release
# or roll back to, a table to lock): PostgreSQL lists those that take no snapshot (its
# PlannedStmtRequiresSnapshot); everything else takes one.
SNAPSHOT_CASES = [
    ("", "SET work_mem = '8MB'"),
    ("", "SET LOCAL lock_timeout = '1s'"),
    ("", "SET CONSTRAINTS ALL DEFERRED"),
    ("", "RESET work_mem"),
    ("", "RESET ALL"),
    ("", "SHOW work_mem"),
    ("", "LOCK TABLE t IN SHARE MODE"),
    ("", "LOCK t"),
    ("", "LISTEN jobs"),
    ("", "UNLISTEN *"),
    ("", "NOTIFY jobs, 'x'"),
    ("", "CHECKPOINT"),
    ("", "SAVEPOINT s"),
    ("SAVEPOINT s", "RELEASE s"),
    ("SAVEPOINT s", "RELEASE SAVEPOINT s"),
    ("SAVEPOINT s", "ROLLBACK TO s"),
    ("SAVEPOINT s", "ROLLBACK TO SAVEPOINT s"),
    ("", "SELECT 1"),
    ("", "VALUES (1)"),
    ("", "TABLE t"),
    ("", "WITH x AS (SELECT 1) SELECT * FROM x"),
    ("", "INSERT INTO t VALUES (1, 1)"),
    ("", "UPDATE t SET a = 1"),
    ("", "DELETE FROM t"),
    ("", "CREATE TABLE u (id int)"),
    ("", "ALTER TABLE t ADD COLUMN b int"),
    ("", "COMMENT ON TABLE t IS 'x'"),
    ("", "CREATE INDEX ON t (a)"),
    ("", "ANALYZE t"),
    ("", "DO $$BEGIN END$$"),
    ("", "GRANT SELECT ON t TO PUBLIC"),
    ("", "EXPLAIN SELECT 1"),
    ("", "PREPARE p AS SELECT 1"),
    ("", "DISCARD TEMP"),
    ("", "TRUNCATE t"),
]


@pytest.mark.parametrize(
    ("before", "statement"), SNAPSHOT_CASES, ids=[s for _, s in SNAPSHOT_CASES]
)
def test_what_takes_no_snapshot_is_what_postgresql_lets_set_the_isolation_after(
    oracle: Database, before: str, statement: str
) -> None:
    """PostgreSQL is the oracle: a statement takes a snapshot exactly when the
    transaction's isolation level can no longer be set after it because it "must be
    called before any query", and the runner's TAKE_NO_SNAPSHOT names, by first word, those that do
    not, which a file may put before its first query's snapshot (a LOCK's wait first)."""
    with oracle.connect() as conn:
        conn.execute("BEGIN")
        if before:
            conn.execute(before)
        conn.execute(statement.encode())
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            took_none = True
        except psycopg.errors.ActiveSqlTransaction as error:
            # The same SQLSTATE says "not in a subtransaction" after a SAVEPOINT.
            took_none = "before any query" not in str(error)
        conn.rollback()
    piece = next(iter(Scanner(f"{statement};\n".encode())))
    assert isinstance(piece, Statement)
    assert (piece.keyword in kinds.TAKE_NO_SNAPSHOT) is took_none


@pytest.mark.parametrize(
    ("statement", "ends"),
    [
        ("PREPARE TRANSACTION 'x'", True),
        ("PREPARE TRANSACTION E'x'", True),
        ("PREPARE TRANSACTION U&'x'", True),
        ("PREPARE TRANSACTION U&'!0078' UESCAPE '!'", True),
        ("PREPARE TRANSACTION $$x$$", True),
        ("PREPARE /* TRANSACTION */ transaction AS SELECT 1", False),
        ("PREPARE transaction (int, int, int) AS SELECT $1", False),
        ("COMMIT PREPARED 'x'", True),
        ("ROLLBACK TO SAVEPOINT s", False),
        ("START TRANSACTION", True),
    ],
)
def test_a_prepared_transaction_is_told_from_a_statement_named_transaction(
    statement: str, ends: bool
) -> None:
    """PREPARE TRANSACTION 'id' ends the runner's transaction (with prepared transactions
    enabled, which the test server has not, so PostgreSQL cannot be the oracle here);
    `PREPARE transaction AS ...` prepares a statement of that name."""
    data = f"{statement};\n".encode()
    piece = next(iter(Scanner(data)))
    assert isinstance(piece, Statement)
    assert kinds.controls_transaction(data, piece, True) is ends


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p",
         "CREATE SUBSCRIPTION ... WITH (create_slot = true)"),
        ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
         "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"),
        ("REINDEX SCHEMA public", "REINDEX SCHEMA"),
        ("REINDEX TABLE CONCURRENTLY t", "REINDEX ... CONCURRENTLY"),
        ("CLUSTER VERBOSE", "CLUSTER without a table"),
        ("ALTER DATABASE d SET TABLESPACE x", "ALTER DATABASE ... SET TABLESPACE"),
        ("ALTER DATABASE d TABLESPACE x", "ALTER DATABASE ... TABLESPACE"),
        ("CREATE SCHEMA s CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
         "CREATE INDEX CONCURRENTLY"),
    ],
    ids=["subscription", "detach", "reindex_schema", "reindex_concurrently", "cluster",
         "set_tablespace", "tablespace", "schema_element"],
)  # fmt: skip
def test_a_statement_outside_transactions_is_named_as_the_refusal_names_it(
    statement: str, named: str
) -> None:
    """The name outside_transactions_only() gives is the one the refusal shows."""
    data = f"{statement};\n".encode()
    piece = next(iter(Scanner(data)))
    assert isinstance(piece, Statement)
    assert kinds.outside_transactions_only(data, piece, True) == named
