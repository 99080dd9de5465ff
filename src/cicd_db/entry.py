"""The console entry points: `cicd-db`, `python -m cicd_db`, `scripts/migrate.py`.

Kept free of heavy imports, so that Ctrl-C or SIGTERM while Python is still loading
psycopg ends in one line and the usual exit code, not a traceback or a silent exit.
Once the CLI is loaded, both signals raise (KeyboardInterrupt, and its subclass
Terminated for SIGTERM), so a run cleans up alike and cli.main prints one line.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from cicd_db.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated


def _while_starting(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("error: interrupted while starting; nothing ran\n")
    raise SystemExit(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _load() -> object:
    signal.signal(signal.SIGTERM, _while_starting)
    signal.signal(signal.SIGINT, _while_starting)
    from cicd_db import cli

    # Also when a shell that started us in the background handed SIGINT down ignored:
    # Ctrl-C and `kill -INT` must still stop the run cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    return cli


def main() -> int:
    """`cicd-db`."""
    return _load().main()  # type: ignore[attr-defined, no-any-return]


def migrate_main() -> int:
    """`scripts/migrate.py`: `cicd-db migrate` under another name."""
    return _load().migrate_main()  # type: ignore[attr-defined, no-any-return]
