"""The console entry points: `cicd-db`, `python -m cicd_db`, `scripts/migrate.py`.

Kept free of heavy imports, so that Ctrl-C, SIGTERM or SIGHUP while Python is still
loading psycopg ends in one line and the usual exit code, not a traceback or a silent
exit. Once the CLI is loaded, each raises (KeyboardInterrupt, and its subclass
Terminated for SIGTERM and SIGHUP), so a run cleans up alike (a file rolled back, the
lock released, a throwaway server stopped) and cli.main prints one line. SIGHUP is the
terminal closing or an SSH session dropping: left to its default, the process would
die where it stood.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from cicd_db.errors import (
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    interrupt_exit_code,
)

# The signals a run stops cleanly on besides Ctrl-C, and their exit codes.
STOPPING = {signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HANGUP}


def _while_starting(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("error: interrupted while starting; nothing ran\n")
    raise SystemExit(STOPPING.get(signal.Signals(signum), EXIT_INTERRUPTED))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated(STOPPING[signal.Signals(signum)])


def _load() -> object:
    # Under `nohup` SIGHUP comes ignored, and stays so: that is what nohup is for.
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        STOPPING.pop(signal.SIGHUP, None)
    for signum in (*STOPPING, signal.SIGINT):
        signal.signal(signum, _while_starting)
    from cicd_db import cli

    try:
        # Also when a shell that started us in the background handed SIGINT down ignored:
        # Ctrl-C and `kill -INT` must still stop the run cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in STOPPING:
            signal.signal(signum, _terminate)
    except KeyboardInterrupt as interrupt:
        # A signal that came while the CLI loaded is handled as its handler is changed, by
        # the new one (signal.signal runs what is pending): nothing ran yet all the same.
        sys.stderr.write("error: interrupted while starting; nothing ran\n")
        raise SystemExit(interrupt_exit_code(interrupt)) from None
    return cli


def _done(code: int) -> int:
    """`code`, the finished command's, kept whatever arrives while Python shuts down
    (which puts the signals back to their defaults: a late Ctrl-C would end the process
    by the signal, and a command that did all its work would seem cut short)."""
    while True:
        try:
            for signum in (signal.SIGINT, *STOPPING):
                # Python first runs the handler of a signal already pending: a Ctrl-C
                # that came as the command ended raises here, and changes nothing.
                signal.signal(signum, signal.SIG_IGN)
            return code
        except KeyboardInterrupt:
            continue


def main() -> int:
    """`cicd-db`."""
    return _done(_load().main())  # type: ignore[attr-defined]


def migrate_main() -> int:
    """`scripts/migrate.py`: `cicd-db migrate` under another name."""
    return _done(_load().migrate_main())  # type: ignore[attr-defined]
