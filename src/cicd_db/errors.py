"""The exceptions cicd-db raises, and the exit code each one maps to.

    CicdDbError                 every error we raise; message says how to fix it
    ├── UsageError              exit 2: bad flags or arguments
    ├── ConfigError             exit 2: a target, URL, stack or folder that cannot be used
    │   ├── StackError          reading a Pulumi stack's outputs failed
    │   ├── AuthenticationFailed the server refused the user or password
    │   └── MigrationRefused    the history and the files disagree (edited, missing, out of order)
    └── OperationalError        exit 1: the database or the server failed while we worked
        ├── ConnectionFailed    could not connect, or the connection dropped
        ├── MigrationFailed     a migration's SQL raised an error; carries file and line
        ├── LockTimeout         another runner held the migration lock too long
        ├── EmbeddedServerError the embedded PostgreSQL could not be set up or started
        ├── IllegalTransition   a status change the execution state machine forbids
        ├── AlreadyExists       a stage or job name (or stage order) already taken
        └── NotFound            a pipeline, run, stage or job that does not exist
    Interrupted                 exit 130 (Ctrl-C) or 143 (SIGTERM): stopped, and what it left

Exit codes that are verdicts, not errors: EXIT_PENDING (3, `migrate status
--exit-code` with files pending), EXIT_DRIFT (3, `schema diff` found differences),
EXIT_DISAGREES (4, files and history disagree), EXIT_LINT (5, `migrate check`
findings); EXIT_INTERRUPTED 130 and EXIT_TERMINATED 143, as shells report a signal.

`Terminated` is not an error but the interrupt entry.py raises on SIGTERM. It is a
KeyboardInterrupt so that psycopg cancels the running query for it as it does for
Ctrl-C, and the runner rolls back and releases its lock the same way.

Messages are written for the person at the terminal: what is wrong, then what to
do about it. They must never contain a password; URLs pass through
`settings.redact` before they reach a message.
"""

from __future__ import annotations

EXIT_PENDING = EXIT_DRIFT = 3
EXIT_DISAGREES = 4
EXIT_LINT = 5
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + the signal


class CicdDbError(Exception):
    """Base of every error cicd-db raises on purpose."""

    exit_code = 1


class UsageError(CicdDbError):
    exit_code = 2


class ConfigError(CicdDbError):
    exit_code = 2


class StackError(ConfigError):
    pass


class AuthenticationFailed(ConfigError):
    pass


class MigrationRefused(ConfigError):
    pass


class OperationalError(CicdDbError):
    exit_code = 1


class ConnectionFailed(OperationalError):
    pass


class MigrationFailed(OperationalError):
    pass


class LockTimeout(OperationalError):
    pass


class EmbeddedServerError(OperationalError):
    pass


class IllegalTransition(OperationalError):
    pass


class AlreadyExists(OperationalError):
    pass


class NotFound(OperationalError):
    pass


class Interrupted(CicdDbError):
    """Ctrl-C or SIGTERM stopped the work; the message says what that left."""

    def __init__(self, message: str, *, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C (see the module docstring)."""


def plural(count: int, noun: str) -> str:
    """`1 file`, `2 files`: for messages."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
