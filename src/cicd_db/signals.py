"""The signals a command stops on, held back where one would only cut short what must
finish whole. entry.py installs their handlers (Ctrl-C, SIGTERM and SIGHUP each raise);
this module is what the layers below use to hold them a moment. Imports nothing of
cicd_db, and nothing a no-op run does not load anyway."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextlib.contextmanager
def held_signals(*, deliver: bool = True) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held back for the block, then delivered to the handlers
    they had (or, without `deliver`, dropped: the command is already stopping, and one
    would only cut short what it does to stop: a throwaway server's removal, the line
    that says how the command ended). Held in Python, not by the thread's signal mask:
    another thread (a library's, a test runner's) would take a signal the main thread
    masks, and Python would still raise it here. Only the main thread sets handlers;
    elsewhere, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for signum in HELD_SIGNALS:
            handler = signal.getsignal(signum)
            if handler not in (None, signal.SIG_IGN):  # ignored stays ignored
                previous[signum] = handler  # first: a pending signal may raise below
                # (signal.signal runs the old handler of a signal already pending)
                signal.signal(signum, lambda number, frame: caught.append(number))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught and deliver:
            signal.raise_signal(caught[0])  # to its own handler, now put back
