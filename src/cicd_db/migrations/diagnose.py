"""A failed statement told in one line: which line of which file, and the setting behind
it when a role's, the database's or the connection's setting caused it.

What the session sent and got back is read here; the line's wording is failures.py's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult

from cicd_db.cursors import could_have_timed_out
from cicd_db.errors import (
    SUSPECTED,
    MigrationFailed,
    setting_advice,
    setting_behind,
    setting_suspected,
    translated,
)
from cicd_db.migrations.failures import (
    RETRIED_SQLSTATES,
    Transient,
    abridge,
    describe_failure,
    first_line,
)
from cicd_db.migrations.files import Migration
from cicd_db.migrations.history_table import SCHEMA, TABLE, shown
from cicd_db.migrations.steps import nth_statement
from cicd_db.sqltext import without_comments

if TYPE_CHECKING:
    from cicd_db.migrations.session import Session
    from cicd_db.migrations.steps import Batch

# How a file sets each setting setting_behind names, for itself (SET, SET LOCAL, SET
# TRANSACTION): a file that says it is told to fix itself, whatever a role or the
# database also sets. Read-only by its statements only: a file that reads the setting
# (current_setting('transaction_read_only'), SHOW) is not blamed for the database's.
_SET_BY_A_FILE = {
    "default_transaction_read_only": re.compile(
        rb"\bread\s+only\b|\bset\s+(?:session\s+|local\s+)?(?:default_)?transaction_read_only\b"
        rb"|set_config\s*\(\s*'(?:default_)?transaction_read_only'"
    ),
}
# Values that cannot have caused the failure: then it was the file's own doing.
_CANNOT_CAUSE = {
    "statement_timeout": ("0",),
    "transaction_timeout": ("0",),
    "idle_in_transaction_session_timeout": ("0",),
    "idle_session_timeout": ("0",),
    "default_transaction_read_only": ("off",),
}


def failure(
    session: Session,
    migration: Migration,
    line: int | None,
    error: psycopg.Error,
    *,
    at_the_row: bool = False,
) -> str:
    """The one line for `migration` failing at `line` (None: at its commit; `at_the_row`:
    at the runner's writing or checking of its history row, after the file's own work).

    A failure a session setting caused (a timeout, a read-only default, an empty
    search_path) names where the setting comes from, when not from the file:
    asking ends the file's transaction, which the caller rolls back anyway.
    """
    regrant = None
    if at_the_row and not migration.transactional and _refused_on_the_history(error):
        user = shown(session.conn, session.conn.info.user)
        regrant = (
            f"GRANT USAGE ON SCHEMA {shown(session.conn, SCHEMA)} TO {user}; GRANT SELECT, "
            f"INSERT ON {shown(session.conn, SCHEMA, TABLE)} TO {user}"
        )
    return describe_failure(
        migration,
        line,
        error.diag,
        str(error),
        session.conn.info.user,
        lost=session.lost,
        setting=_behind(session, error, migration),
        uncommitted_before=session.uncommitted_before,
        # Committed already, a REVOKE in a no-transaction file holds after it too.
        right_taken=regrant is not None
        or (at_the_row and _right_taken_by_the_file(session, error)),
        regrant=regrant,
    )


# PostgreSQL's words for a right refused on the history or its schema.
_ON_THE_HISTORY = re.compile(rf"permission denied for (table {TABLE}|schema {SCHEMA})$")


# The same, in whatever language lc_messages names: the names as words of the message.
_NAMES_THE_HISTORY = re.compile(rf"\b({TABLE}|{SCHEMA})\b")


def _refused_on_the_history(error: psycopg.Error) -> bool:
    message = error.diag.message_primary or ""
    if error.diag.sqlstate != "42501":
        return False
    if translated("42501", message):
        return bool(_NAMES_THE_HISTORY.search(message))
    return bool(_ON_THE_HISTORY.search(message))


def _right_taken_by_the_file(session: Session, error: psycopg.Error) -> bool:
    """Whether the runner's own writes at the file's commit were refused a right on the
    history that its login role has once the file is rolled back: the file took it away
    in its own transaction (a REVOKE), and the role is not to blame."""
    if not _refused_on_the_history(error):
        return False
    if not _out_of_the_failure(session):
        return False
    try:
        row = session.conn.execute(
            # Each right asked alone: a list of them asks whether any is held.
            "SELECT pg_catalog.has_schema_privilege(%(user)s, %(schema)s, 'USAGE') "
            "AND pg_catalog.has_table_privilege(%(user)s, %(table)s, 'SELECT') "
            "AND pg_catalog.has_table_privilege(%(user)s, %(table)s, 'INSERT')",
            {"user": session.conn.info.user, "schema": SCHEMA, "table": f"{SCHEMA}.{TABLE}"},
        ).fetchone()
    except psycopg.Error:  # no history to ask about, or the session cut: not told
        _out_of_the_failure(session)
        return False
    return bool(row and row[0])


def own_failure(session: Session, error: psycopg.Error) -> str | None:
    """The one line for a statement of the runner's own (not a file's) that a session
    setting cut (a statement_timeout a migration left on the database, say), or None
    when no setting explains `error`."""
    message = error.diag.message_primary or first_line(error)
    source = _behind(session, error)
    if source is None:
        return None  # not a setting left for the session (a read replica, say)
    return (
        f"a statement of cicd-db's own failed: {message} [{error.diag.sqlstate}]; "
        f"{source}, then run again"
    )


def _behind(
    session: Session, error: psycopg.Error, migration: Migration | None = None
) -> str | None:
    """Where the session setting that caused `error` comes from, when not from
    `migration` (setting_source), or None; a setting only suspected is said to be."""
    message = error.diag.message_primary or ""
    if name := setting_behind(error.diag.sqlstate, message):
        return setting_source(session, name, migration)
    if translated(error.diag.sqlstate, message) and error.diag.sqlstate == "3F000":
        # "No schema to create in" or "no such schema", in another language: the second
        # quotes the schema's name, in the language's quotation marks; the first, when
        # the search path the session begins with names no schema there is, is the
        # setting's.
        if not _QUOTES.search(message) and _no_schema_to_create_in(session):
            return setting_source(session, "search_path", migration)
        return None
    if name := setting_suspected(error.diag.sqlstate, message):
        source = setting_source(session, name, migration)
        return f"{SUSPECTED}: {source}" if source and could_have_timed_out(session.conn) else None
    return None


# The quotation marks PostgreSQL's translations put around a name.
_QUOTES = re.compile(
    "[\"'\u00ab\u00bb\u201e\u201c\u201d\u201a\u2018\u2019\u300c\u300d\u300e\u300f]"
)


def _no_schema_to_create_in(session: Session) -> bool:
    """Whether the session's search path, as the session begins (the file's rolled back),
    names no schema that exists."""
    if not _out_of_the_failure(session):
        return False
    try:
        row = session.conn.execute(
            "SELECT pg_catalog.cardinality(pg_catalog.current_schemas(false)) = 0"
        ).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])


def setting_source(session: Session, name: str, migration: Migration | None = None) -> str | None:
    """Where the session's setting `name` comes from, and how to undo it, when it
    comes from a role, the database, the server or the connection's options; None
    when it is the file's own (`migration` names it: a SET LOCAL, SET TRANSACTION READ
    ONLY), or when what is set could not have caused the failure (no timeout, not
    read-only), or nothing set it."""
    if migration is not None:
        # What the server reads of the file: a comment that names the setting sets nothing.
        code = without_comments(migration.data, standard_strings=session.standard_strings())
        set_by_it = _SET_BY_A_FILE.get(name)
        lowered = code.lower()
        if set_by_it.search(lowered) if set_by_it else name.encode() in lowered:
            return None
    if not _out_of_the_failure(session):
        return (
            f"{name} ended the session: unless the file set it, a role's, the database's "
            f"or the server's setting did (pg_settings tells which), or the connection's "
            f"options (PGOPTIONS, the URL's options); reset that"
        )
    try:  # a statement_timeout of a millisecond may cut this too: then None
        row = session.conn.execute(
            "SELECT pg_catalog.current_setting(name), setting, source "
            "FROM pg_catalog.pg_settings WHERE name = %s",
            [name],
        ).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    value, raw, source = (str(part) for part in row)
    if raw in _CANNOT_CAUSE.get(name, ()):
        return None
    # The names as the client gave them, not read back through the database's
    # encoding (a LATIN1 database would return another name for a role "rôle").
    info = session.conn.info
    db, role = shown(session.conn, info.dbname), shown(session.conn, info.user)
    return setting_advice(name, value, source, database=db, role=role)


def _out_of_the_failure(session: Session) -> bool:
    """A session that can read again after a failure: its transaction rolled back, or,
    inside one that must go on, rolled back to `savepoint`. False if it is gone."""
    in_one = session.conn.info.transaction_status in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    )
    if session.savepoint is None or not in_one or session.lost:
        return session.end_transaction()
    try:
        session.conn.execute(b"ROLLBACK TO SAVEPOINT " + session.savepoint)
    except psycopg.Error:
        return False
    return True


def raise_on_error(
    session: Session,
    migration: Migration,
    batch: Batch | None,
    results: list[PGresult],
    *,
    prefix: bytes = b"",
) -> None:
    """Raise for the first failed statement of `results`, naming its line in the file.

    `prefix`: the runner's own statements sent before the batch (ASCII, one
    result each), which the count and the error position must step over.
    """
    failed = next(
        (i for i, result in enumerate(results) if result.status == ExecStatus.FATAL_ERROR),
        None,
    )
    if failed is None:
        return
    error = session.error(results[failed])
    if batch is None:  # the runner's own statements
        raise error
    index = max(failed - prefix.count(b";"), 0)
    statement = nth_statement(migration.data, batch, index)
    position = error.diag.statement_position
    if not position and index == 0:
        # Perhaps the server could not parse the batch, which it parses whole before
        # running any of it, and it named no position: find which statement.
        from cicd_db.migrations.unparsed import first_unparsed

        statement = first_unparsed(session, migration, batch) or statement
    line = statement.line if statement else batch.line
    if position and position.isdigit() and int(position) > len(prefix):
        # Characters, not bytes, into the batch: decode the batch to count its lines.
        text = migration.data[batch.start : batch.end].decode("utf-8", "replace")
        line = batch.line + text.count("\n", 0, int(position) - len(prefix) - 1)
    raise file_failure(
        session, migration, line, error, statement.text(migration.data) if statement else None
    )


def file_failure(
    session: Session, migration: Migration, line: int, error: psycopg.Error, statement: str | None
) -> Transient | MigrationFailed:
    """What a statement of the file failing at `line` raises: `Transient` where other
    sessions caused it (retried), else MigrationFailed with the server's code and words."""
    message = failure(session, migration, line, error)
    if error.diag.sqlstate in RETRIED_SQLSTATES:
        reason = f"{RETRIED_SQLSTATES[error.diag.sqlstate]} at line {line}"
        if statement:
            reason += f" ({abridge(statement)})"
        return Transient(message, reason)
    refused = MigrationFailed(message)
    refused.sqlstate, refused.said = error.diag.sqlstate, error.diag.message_primary
    return refused
