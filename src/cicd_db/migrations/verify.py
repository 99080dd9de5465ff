"""The live schema against the files: baseline (record files as applied after checking
that the schema is what they make), and drift.

What the files make is found by running them in a scratch schema, inside a
transaction that is rolled back; `schema` compares the two by catalog.
"""

from __future__ import annotations

import re
from dataclasses import replace

from psycopg import sql

from cicd_db import schema
from cicd_db.errors import MigrationRefused
from cicd_db.migrations import history, lock, reconcile
from cicd_db.migrations.files import Migration
from cicd_db.migrations.session import RESET_FILE_STATE, Session
from cicd_db.migrations.statements import plan

# A comparison runs the files in one transaction, so it cannot run a file that needs
# those before it committed; `schema dump` applies them for real, each committed, on a
# server of its own.
UNCOMMITTED_BEFORE = (
    "`schema diff` and `migrate baseline` cannot replay such files; compare `schema dump` "
    "without a target (the files applied one by one, on a server of their own) with this "
    "database's `schema dump`"
)


def baseline(
    session: Session, files: list[Migration], version: int, lock_timeout: float
) -> list[Migration]:
    """Record the files up to `version` as applied, without running them. Writes.

    For a database made by hand (with `psql -f`): the live schema must match what
    the files make, table for table, column for column, constraint for
    constraint, index for index. CONCURRENTLY is dropped from no-transaction
    files in the scratch run, which is one transaction.
    """
    chosen = [m for m in files if m.version <= version]
    if not chosen or chosen[-1].version != version:
        raise MigrationRefused(
            f"no migration file has version {version}; see `migrate status` for the versions"
        )
    conn = session.conn
    with lock.held(session, lock_timeout):
        if history.read(conn):
            raise MigrationRefused(
                "this database already has migration history; baseline is only for a "
                "database without it (run `migrate up` instead)"
            )
        problems = [str(difference) for difference in compare(session, chosen)]
        if problems:
            shown = "; ".join(problems[:12])
            more = f"; and {len(problems) - 12} more" if len(problems) > 12 else ""
            raise MigrationRefused(
                f"the live schema does not match migrations up to version {version}: "
                f"{shown}{more}; fix the schema by hand, or baseline at the version it matches"
            )
        with conn.transaction():
            history.create(conn)
            for migration in chosen:
                conn.execute(history.insert_row(conn, migration, duration_ms=0))
    return chosen


def drift(session: Session, files: list[Migration]) -> tuple[int, list[schema.Difference]]:
    """The live schema against what the applied files make: the newest applied
    version, and each difference. Reads only (the files run in a scratch schema,
    in a transaction that is rolled back)."""
    applied = history.read(session.conn)
    reconcile.pending(files, applied, None)  # an edited or missing file makes the comparison moot
    newest = max((row.version for row in applied), default=0)
    return newest, compare(session, [m for m in files if m.version <= newest])


def compare(session: Session, chosen: list[Migration]) -> list[schema.Difference]:
    """How the live schema differs from what `chosen` make: baseline's and drift's one test.

    The live schema is the session's own, where the files make their objects when
    they run for real (not necessarily where the history is kept).
    """
    conn = session.conn
    live = schema.current_schema(conn)
    scratch = f"cicd_db_baseline_{conn.info.backend_pid}"
    setting = conn.execute("SHOW search_path").fetchone()
    path = schema.scratch_path(str(setting[0]) if setting else "", live, scratch)
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
        session.savepoint = b"cicd_db_compare"
        session.notice()
        try:
            for migration in chosen:
                # Each file as a run applies it: the session as the first file found it.
                conn.execute(b"SAVEPOINT cicd_db_compare; " + RESET_FILE_STATE)
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))
                if not migration.transactional:
                    data = re.sub(rb"\bCONCURRENTLY\b", b"", migration.data, flags=re.IGNORECASE)
                    steps = plan(migration.filename, data, transactional=False)
                    migration = replace(migration, data=data, planned=steps)
                session.run_steps(migration)
                conn.execute(b"RELEASE cicd_db_compare")
                session.uncommitted_before = UNCOMMITTED_BEFORE
                session.ran(migration)
        finally:
            session.savepoint = None
            session.run_over()
        expected = schema.signature(conn, scratch)
        actual = schema.signature(conn, live)
    return schema.compare(expected, actual)
