"""The migration runner: plain SQL files in `db/migrations/`, applied forward only.

The rules (docs/design.md, "Migrations"):

- A file is `<version>_<name>.sql`; versions are integers (bigint), applied in
  numeric order, and no two files share one.
- A file applies exactly as `psql -v ON_ERROR_STOP=1 -1 -f FILE` would apply it.
  PostgreSQL decides what a statement is: the file goes to the server in one
  simple-protocol query (in slices of about a megabyte for a large file), split
  only where psql itself would stop sending SQL: `COPY ... FROM STDIN` data,
  pg_dump's `\\restrict` lines, and after a statement that changes how the rest
  of the text is read (`standard_conforming_strings`).
- A file and its history row commit in one transaction. The history row goes to
  the history table by its schema-qualified name, whatever `search_path` the
  file set, and only if the runner's own transaction is still the one open. A
  transactional file may not end or start a transaction itself (refused before
  anything runs).
- A file whose first line is `-- cicd-db: no-transaction` runs outside a
  transaction (for `CREATE INDEX CONCURRENTLY`): one statement besides SET/RESET.
- No session state crosses from one file to the next: role, session
  authorization, settings (search_path among them) and temporary tables are
  reset after each file. `applied_by` is the runner's login role.
- One runner at a time per database: a session advisory lock, polled with
  `pg_try_advisory_lock` until a timeout (a blocking lock would deadlock with
  `CONCURRENTLY`, which waits for every other transaction, ours included).
- A file that fails because of other sessions (lock timeout, deadlock,
  serialization failure) is rolled back and retried with backoff, a bounded
  number of times within a time budget.
- Refused, with the fix in the message: an applied file that was edited, an
  applied file that is missing, a pending file below the newest applied version.

The package, one job per module; imports flow down this list, never up:

    runner      Runner (the facade), open_runner on a target, scratch_dump on a throwaway server
    apply       the apply loop, one file with its history row
    verdicts    what a failed file left, told: the closing checks, the history, interruptions
    indexes     an invalid index a failed concurrent build left, found and dropped
    retry       the retry policy (a failure caused by other sessions runs again)
    rehearse    pending files in a transaction that is rolled back: locks, time, errors
    verify      baseline and drift: the live schema against what the files make
    lock        the advisory lock, on a second connection
    session     the work session: sending text as psql does, resetting it, its checks
    history     the history table: reading, creating, writing, reconciling
    finding     the history found by catalog, never through search_path
    history_table  its place and shape; the runner's own statements pinned; names shown
    failures    a failure told in one line; which failures are retried
    files       Migration; discovering, reading and writing files
    statements  planning a file's text into queries; refusing what may not run
    steps       the pieces a file is planned into; one statement at a time; the leading ones
    directives  the `-- cicd-db:` lines a file opens with (no-transaction, earlier checksums)

`discover()` reads files only. `Runner.applied()`, `pending()` and `status()`
only read the database. `Runner.apply()` and `baseline()` write.
"""

from typing import TYPE_CHECKING, Any

from cicd_db.migrations.failures import DEFAULT_RETRIES, DEFAULT_RETRY_BUDGET
from cicd_db.migrations.files import (
    MAX_VERSION,
    NEW_FILE_HEADER,
    Migration,
    discover,
    index_name,
    new_migration,
    read,
)
from cicd_db.migrations.history import Applied
from cicd_db.migrations.lock import DEFAULT_LOCK_TIMEOUT
from cicd_db.migrations.reconcile import StatusRow
from cicd_db.migrations.runner import Runner, open_runner, scratch_dump
from cicd_db.migrations.session import (
    CHECK_INTERVAL,
    LOCK_KEY,
    SESSION_OPTIONS,
    WORK_KEY,
    session_options,
)

if TYPE_CHECKING:
    from cicd_db.migrations.apply import Result
    from cicd_db.migrations.rehearse import LockHeld, Rehearsal, outside_the_transaction
    from cicd_db.migrations.retry import Retry, RetryPolicy
    from cicd_db.migrations.statements import BATCH_BYTES, plan
    from cicd_db.migrations.steps import Batch, Copy, Step


def __getattr__(name: str) -> Any:
    """The names of planning, the apply loop and the rehearsal, loaded on first use (a
    run with nothing pending needs none of them: runner.py and files.py say why)."""
    if name in ("BATCH_BYTES", "plan"):
        from cicd_db.migrations import statements

        return getattr(statements, name)
    if name in ("Batch", "Copy", "Step"):
        from cicd_db.migrations import steps

        return getattr(steps, name)
    if name == "Result":
        from cicd_db.migrations import apply

        return apply.Result
    if name in ("Retry", "RetryPolicy"):
        from cicd_db.migrations import retry

        return getattr(retry, name)
    if name in ("LockHeld", "Rehearsal", "outside_the_transaction"):
        from cicd_db.migrations import rehearse

        return getattr(rehearse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BATCH_BYTES",
    "CHECK_INTERVAL",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_BUDGET",
    "LOCK_KEY",
    "MAX_VERSION",
    "NEW_FILE_HEADER",
    "SESSION_OPTIONS",
    "WORK_KEY",
    "Applied",
    "Batch",
    "Copy",
    "LockHeld",
    "Migration",
    "Rehearsal",
    "Result",
    "Retry",
    "RetryPolicy",
    "Runner",
    "StatusRow",
    "Step",
    "discover",
    "index_name",
    "new_migration",
    "open_runner",
    "outside_the_transaction",
    "plan",
    "read",
    "scratch_dump",
    "session_options",
]
