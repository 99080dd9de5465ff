"""The console entry points: `cicd-db`, `python -m cicd_db`, `scripts/migrate.py`.

Kept free of heavy imports, so that Ctrl-C, SIGTERM or SIGHUP while Python is still
loading psycopg ends in one line and the usual exit code, not a traceback or a silent
exit. Once the CLI is loaded, each raises (KeyboardInterrupt, and its subclass
Terminated for SIGTERM and SIGHUP), so a run cleans up alike (a file rolled back, the
lock released, a throwaway server stopped) and cli.main prints one line. SIGHUP is the
terminal closing or an SSH session dropping: left to its default, the process would
die where it stood.

Python runs a signal's handler between two steps of whatever code is running, and
that may be code whose exceptions Python reports and drops: a finalizer (`__del__`),
a weak reference's callback (the import machinery has some), a garbage collection.
An interrupt raised there was lost: the run went on, or, while starting, it went on
after printing that nothing ran, with a traceback. So the starting handler ends the
process itself (nothing ran to clean up), and an interrupt dropped later is raised
again by its signal, where it reaches the run's code.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

# Nothing of cicd_db is imported before the handlers are in place, cicd_db.errors
# included: it loads typing, re and datetime, and a signal while they loaded (a
# loaded machine makes that moment long) was Python's own: a traceback, or a silent
# exit by SIGTERM or SIGHUP. So the exit codes are written here as errors.py writes
# them, 128 + the signal (tests/test_cli.py checks that they agree).
EXIT_INTERRUPTED = 128 + signal.SIGINT
# The signals a run stops cleanly on besides Ctrl-C, and their exit codes.
STOPPING = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGHUP: 128 + signal.SIGHUP}


def _while_starting(signum: int, frame: FrameType | None) -> None:
    # Not SystemExit: raised in a callback of the import machinery, it was dropped.
    _say_interrupted_while_starting()
    os._exit(STOPPING.get(signal.Signals(signum), EXIT_INTERRUPTED))


def _say_interrupted_while_starting() -> None:
    """The line, if it can go anywhere: with stderr closed (`2>&-`) Python leaves None
    there, and an error here would keep the process from ending."""
    try:
        sys.stderr.write("error: interrupted while starting; nothing ran\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


def _terminate(signum: int, frame: FrameType | None) -> None:
    from cicd_db.errors import Terminated  # loaded with the CLI, before this is installed

    raise Terminated(STOPPING[signal.Signals(signum)])


def _unraisable(report: sys.UnraisableHookArgs) -> None:
    """An interrupt raised in code whose exceptions Python drops (see the module
    docstring) is raised again in the code that runs next; anything else is reported
    as Python reports it."""
    if isinstance(report.exc_value, KeyboardInterrupt):
        _raise_in_what_runs_next(report.exc_value)
        return
    _REPORTED_BEFORE[0](report)


# The hook that was there before _unraisable (Python's own, unless something set one).
_REPORTED_BEFORE = [sys.unraisablehook]


def _raise_in_what_runs_next(interrupt: KeyboardInterrupt) -> None:
    """Raise `interrupt` at the next step of the frames waiting below this one, or of
    any frame called before they resume, by a trace function: an exception a trace
    function raises is raised in the traced frame. (Sending the signal again does not
    do: Python runs its handler here, where it is dropped again.) One raised in another
    dropping place comes back here. Python ends all tracing when a trace function
    raises: under a tracer of its own (coverage, a debugger) the run stops as it
    should, and the tracer with it."""

    def trace(frame: FrameType, event: str, arg: object) -> None:
        for waiting in frames:
            waiting.f_trace = None
        raise interrupt  # and Python ends the tracing

    frames: list[FrameType] = []
    try:
        frame: FrameType | None = sys._getframe(2)  # below this function and the hook
    except ValueError:  # none below (Python called the hook from C alone): the next call
        frame = None
    while frame is not None:
        frame.f_trace = trace
        frames.append(frame)
        frame = frame.f_back
    sys.settrace(trace)


def _load() -> object:
    # Under `nohup` SIGHUP comes ignored, and stays so: that is what nohup is for.
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        STOPPING.pop(signal.SIGHUP, None)
    if sys.unraisablehook is not _unraisable:
        _REPORTED_BEFORE[0] = sys.unraisablehook
        sys.unraisablehook = _unraisable
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
        from cicd_db.errors import interrupt_exit_code  # loaded with the CLI

        _say_interrupted_while_starting()
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
