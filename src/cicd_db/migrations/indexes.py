"""A concurrent index build a failed or interrupted no-transaction file left invalid:
found on the file's table (never a valid index, nor one of another schema) and dropped
before the file runs again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import MigrationRefused
from cicd_db.migrations import history_table
from cicd_db.migrations.failures import RETRIED_SQLSTATES, Transient, first_line
from cicd_db.migrations.files import IndexTarget, Migration, index_target
from cicd_db.migrations.session import Session


def drop_invalid_index(
    conn: psycopg.Connection[Any], migration: Migration, target: IndexTarget
) -> tuple[str, ...]:
    """Drop the invalid index an interrupted CREATE INDEX CONCURRENTLY left behind.

    PostgreSQL's own advice for that case; without it, the file could never be
    run again (the name is taken) or, with IF NOT EXISTS, would keep a broken index.
    Run in the session the file's leading statements left. Raises `Transient` where
    other sessions keep the drop waiting past a lock_timeout (an old snapshot, which
    the build itself would wait for): a busy table, retried as the build would be.
    """
    index = invalid_index(conn, migration, target)
    if index is None:
        return ()
    try:
        conn.execute(drop_statement(index).encode())
    except psycopg.Error as refused:
        if conn.closed or conn.broken:
            raise
        state = refused.diag.sqlstate or ""
        cause = refused.diag.message_primary or first_line(refused)
        if state in RETRIED_SQLSTATES:
            raise Transient(
                f"migration {migration.filename} builds index {target.name}, and the invalid "
                f"one a run left, {index}, could not be dropped: {cause} [{state}]; nothing "
                "of the file ran but its SET and RESET statements",
                f"{RETRIED_SQLSTATES[state]} dropping the invalid index {index}",
            ) from None
        # An event trigger on sql_drop, a missing right: the file could not run (the name
        # is taken), and nothing of it has.
        raise MigrationRefused(
            f"migration {migration.filename} builds index {target.name}, and the invalid one "
            f"an interrupted run left, {index}, could not be dropped: {cause}; drop it (DROP "
            f"INDEX CONCURRENTLY {index}) and run again"
        ) from None
    return (f"dropped invalid index {index} left by an interrupted run",)


def drop_statement(index: str) -> str:
    """What drops `index` (as format('%I.%I') wrote it) before its file runs again."""
    return f"DROP INDEX CONCURRENTLY IF EXISTS {index}"


def invalid_index(
    conn: psycopg.Connection[Any], migration: Migration, target: IndexTarget
) -> str | None:
    """The invalid index of the name `migration` builds CONCURRENTLY (schema-qualified),
    which an interrupted run left and the next drops before it runs the file; None for
    none. Only the one on the table the file's statement names, found as the statement
    will find it: in the session as it is now (its search_path), which must be the one
    the file's leading statements left. MigrationRefused where another session is
    building it now. Reads only."""
    # The table as the file's statement finds it. No operator and no function but
    # pg_catalog's, named so: the session's search_path, the file's, may hold others.
    relation = sql.Identifier(*(part for part in (target.schema, target.table) if part))
    try:
        row = conn.execute(
            sql.SQL("SELECT pg_catalog.to_regclass({})::pg_catalog.oid").format(
                sql.Literal(relation.as_string(conn))
            )
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None  # a schema the file's role may not use: its statement fails on that too
    if row is None or row[0] is None:
        return None  # no such table: the file's statement fails on that, as under psql
    # The index of that name on that table, left invalid; one another session is
    # building right now is invalid too, until it is done. (An index's schema is its
    # table's: at most one has the name.)
    invalid = history_table.pinned_rows(
        conn,
        sql.SQL(
            "SELECT format('%I.%I', n.nspname, c.relname), EXISTS (SELECT FROM "
            "pg_catalog.pg_stat_progress_create_index p WHERE p.index_relid = c.oid) "
            "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.indrelid = {table} AND c.relname = {name} AND NOT i.indisvalid"
        ).format(table=sql.Literal(row[0]), name=sql.Literal(target.name)),
    )
    if invalid and invalid[0][1]:
        raise MigrationRefused(
            f"migration {migration.filename} builds index {target.name}, and another session "
            f"is building {invalid[0][0]} right now; wait until it is done "
            "(pg_stat_progress_create_index shows it), then run again"
        )
    return str(invalid[0][0]) if invalid else None


def invalid_index_ahead(session: Session, migration: Migration) -> str | None:
    """invalid_index() for a dry run: the file's leading statements run, as they would
    before the lookup, in a transaction rolled back after it."""
    steps = session.steps_for(migration)
    target = index_target(migration, steps)
    if target is None:
        return None
    if not target.step:
        return invalid_index(session.conn, migration, target)
    with session.conn.transaction(force_rollback=True):
        session.run_steps(replace(migration, planned=steps[: target.step]))
        return invalid_index(session.conn, migration, target)
