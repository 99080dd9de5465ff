"""How a file's failure is told: one line naming the file, the line, what PostgreSQL
said, what was rolled back and what to do; and which failures are retried."""

from __future__ import annotations

import re

import psycopg

from cicd_db.migrations.files import Migration

# Failures caused by other sessions, not by the file: lock_not_available
# (lock_timeout), deadlock_detected, serialization_failure. Retried.
RETRIED_SQLSTATES = {
    "55P03": "lock not available",
    "40P01": "deadlock",
    "40001": "serialization failure",
}
DEFAULT_RETRIES = 10  # retries of one file (retry.RetryPolicy)
DEFAULT_RETRY_BUDGET = 120.0  # seconds, over all the retries of one run

# A pooler that lends server sessions a transaction or a statement at a time (lock.own_sessions).
SHARED_SESSIONS = (
    "the database is reached through a connection pooler that hands a connection's "
    "statements to several server sessions (transaction or statement pooling: PgBouncer's "
    "pool_mode = transaction, a cloud provider's pooled port), where the migration lock "
    "and the runner's session would not hold"
)
THROUGH_A_SESSION = (
    "migrate through the server's own address, or the pooler's session mode "
    "(PgBouncer's pool_mode = session, Supabase's port 5432)"
)
POOLER_REFUSED = f"{SHARED_SESSIONS}; nothing was run; {THROUGH_A_SESSION}"
# What a file that ran in another server session than the work session's did.
RAN_ELSEWHERE = (
    "in another server session than the runner's, outside its lock: a connection pooler "
    "between lends server sessions a transaction at a time (transaction pooling)"
)


class Transient(Exception):
    """A file failed because of other sessions; the runner retries it."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# What a run and a rehearsal say of a file that made its own transaction read-only.
READ_ONLY_BY_THE_FILE = (
    "the file made its transaction read-only (SET TRANSACTION READ ONLY, SET "
    "transaction_read_only), and cicd-db records a file in the file's own "
    "transaction: remove that from the file"
)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no answer"


def abridge(statement: str, width: int = 48) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def needs_a_commit_before(sqlstate: str | None, message: str) -> bool:
    """A failure that a commit of what came before would have avoided: an enum value
    added in the same transaction (55P04), or a table with trigger events still pending
    (55006: a deferred constraint's checks), which ALTER TABLE refuses."""
    return sqlstate == "55P04" or (sqlstate == "55006" and "pending trigger events" in message)


def describe_failure(
    migration: Migration,
    line: int | None,
    diag: psycopg.errors.Diagnostic,
    fallback: str,
    user: str,
    *,
    lost: bool = False,
    setting: str | None = None,
    uncommitted_before: str | None = None,
    right_taken: bool = False,
    regrant: str | None = None,
) -> str:
    """The one line for a file that failed, at `line` (None: at its commit). `lost`: the
    runner's connection is gone. `setting`: where the session setting that caused the
    failure comes from, when not from the file (diagnose.setting_source).
    `uncommitted_before`: files before it ran in the same transaction without committing
    (a rehearsal, a comparison), which some failures need; what to do then.
    `right_taken`: the history's row was refused a right that `user` has outside the
    file's transaction, so the file took it away; or, with `regrant` (the statements
    that give it back), a no-transaction file's, which it may have taken away for good."""
    message = diag.message_primary or fallback.strip().splitlines()[0]
    code = f" [{diag.sqlstate}]" if diag.sqlstate else ""
    if migration.transactional:
        rolled_back = "it was rolled back"
    elif line is None:  # at its row: every statement of it has committed
        rolled_back = "what it did is committed, and it is not recorded"
    else:
        rolled_back = "it was rolled back as far as PostgreSQL allows"
    if setting:
        advice = f"{setting}, then run again"
    elif line is None and diag.sqlstate == "25006":
        # At the commit, the write refused is the history row's, in the file's transaction.
        advice = READ_ONLY_BY_THE_FILE
    elif right_taken and regrant:
        advice = (
            f"role {user} may not write the history now, right after the file (a REVOKE on "
            "the history or its schema in it?), which is committed, so the next run applies "
            "it again: remove that from the file, and let the history's owner give the right "
            f"back ({regrant}) before that run"
        )
    elif right_taken:
        advice = (
            f"role {user} has that right once the file is rolled back, so the file took it "
            "away (a REVOKE on the history or its schema), and cicd-db records a file in "
            "the file's own transaction: remove that from the file"
        )
    elif diag.sqlstate == "42501" and re.match(r"could not (open|create|write|read|stat)", message):
        # The same code as a missing grant, but the operating system said no to a file.
        advice = (
            "the server's operating system refused that file (the server runs as its own OS "
            "user, on its own machine): fix the path or its permissions"
        )
    elif diag.sqlstate == "42501" and re.search(r"\bpg_catalog\b", message):
        # An object the file does not place is made in the search_path's first schema:
        # pg_catalog, when a search_path names it first (a hardened `pg_catalog, public`).
        advice = (
            "objects a file does not name a schema for are made in the first schema the "
            "search_path names, here pg_catalog, where no role may make them: name their "
            "schema in the file (public.t), or set a search_path that names it first"
        )
    elif diag.sqlstate == "42501":
        advice = (
            f"role {user} lacks that privilege: grant it, or migrate as a role that has it "
            "(the table's or schema's owner)"
        )
    elif uncommitted_before and needs_a_commit_before(diag.sqlstate, message):
        advice = (
            "PostgreSQL allows that only once what the files before it did is committed, "
            "as each file is in a real run, and here they share one transaction: "
            f"{uncommitted_before}"
        )
    elif diag.sqlstate == "57014" and "user request" in message:
        advice = "another session or a client cancelled it (pg_cancel_backend, a cancel request): run again"
    elif diag.sqlstate in RETRIED_SQLSTATES:
        advice = "run again when the tables are less busy (the file itself is fine)"
    elif diag.sqlstate == "42P07" and not migration.transactional:
        # A run interrupted after PostgreSQL finished the index leaves it built and the
        # file unrecorded: fixing nothing would fail the same way every time.
        advice = (
            "a run interrupted after PostgreSQL built it leaves it in place: if it is this "
            "file's, add IF NOT EXISTS to the statement (the file is not applied yet) and run "
            "again; else rename one of them"
        )
    elif lost:
        # Whether the server stopped or a statement ended the session cannot be told
        # from here; a dblink that cannot connect (08001) is the file's, and not this.
        advice = (
            "the connection ended during the file (the server stopped or restarted, or a "
            "statement, perhaps in the file, ended the session): check the server and the "
            "file, then run again"
        )
    else:
        advice = "fix the file and run again"
    return (
        f"migration {migration.filename} failed "
        f"{'at its commit' if line is None else f'at line {line}'}: {message}{code}; "
        f"{rolled_back}; {advice}"
    )
