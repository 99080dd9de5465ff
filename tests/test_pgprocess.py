"""Running PostgreSQL's programs (pgprocess.py): signals held around a fork arrive after
it and are not held in the child. The rest of the module is proven through the servers
that use it: tests/test_embedded.py and tests/test_throwaway.py."""

from __future__ import annotations

import signal
import subprocess
import threading

import pytest

from cicd_db import pgprocess


def test_a_signal_held_around_a_fork_arrives_after_it_and_not_held_in_the_child() -> None:
    """A child forked with a preexec_fn makes Python run its at-fork hooks in this process,
    where a Ctrl-C was lost behind an "Exception ignored" traceback (seen once in CI, in
    the throwaway dump's Ctrl-C test). Held around the fork, it arrives when released,
    as a KeyboardInterrupt the caller handles; the child starts with nothing held."""
    before, preexec = pgprocess.hold_for_fork(lambda: None)
    try:
        # To this thread: a process's signal goes to any thread not holding it, and
        # pytest-xdist's workers have others (the CLI has one thread: a Ctrl-C waits).
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # pending, not delivered
        child = subprocess.run(
            ["grep", "SigBlk", "/proc/self/status"],
            preexec_fn=preexec,
            capture_output=True,
            text=True,
            check=True,
        )
    except KeyboardInterrupt:  # pragma: no cover - the failure this test is for
        pgprocess.release_signals(before)
        raise AssertionError("the Ctrl-C arrived while held") from None
    with pytest.raises(KeyboardInterrupt):
        pgprocess.release_signals(before)
    mask = int(child.stdout.split()[1], 16)
    assert all(not mask & (1 << (held - 1)) for held in pgprocess.HELD_SIGNALS), child.stdout
