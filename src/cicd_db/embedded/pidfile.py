"""postmaster.pid, believed only once its PID is checked to be a postgres of this data
folder (after a crash or a reboot it may name any process); a stale file removed
before a start; a postmaster left working without its pid file found and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cicd_db.embedded.folders import Folders
from cicd_db.errors import EmbeddedServerError
from cicd_db.pgprocess import (
    PID_FILE,
    START_TIMEOUT_SECONDS,
    is_postmaster_of,
    ready_in,
    server_processes_in,
)


@dataclass(frozen=True)
class _PidFile:
    """What postmaster.pid says, checked against the processes that run."""

    pid: int | None  # the postmaster of this data directory, alive; else None
    ready: bool  # it accepts connections
    stale: bool  # the file exists but names no live server of this data directory


class PidFiles(Folders):
    """What the pid file says of one embedded server, and the strays it misses."""

    def _running_pid(self) -> int | None:
        """The postmaster's PID when this data directory's server runs and accepts connections."""
        found = self._pid_file()
        return found.pid if found.ready else None

    def _pid_file(self) -> _PidFile:
        try:
            lines = (self.data_dir / PID_FILE).read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return _PidFile(pid=None, ready=False, stale=False)
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            # Empty or garbled (a crash while writing it): PostgreSQL will not start past it.
            return _PidFile(pid=None, ready=False, stale=True)
        # A negative PID is a single-user backend: ours, but not accepting connections.
        if pid == 0 or not is_postmaster_of(abs(pid), self.data_dir):
            return _PidFile(pid=None, ready=False, stale=True)
        ready = pid > 0 and ready_in(lines)
        return _PidFile(pid=abs(pid), ready=ready, stale=False)

    def _stray(self) -> int | None:
        """The postmaster working in the data folder when its pid file is gone or names
        no server (the file, or the whole folder, removed under a running server); not
        one the file names that is still starting."""
        named = self._pid_file().pid
        postmasters = server_processes_in(self.data_dir, postmaster=True)
        return next((pid for pid in postmasters if pid != named), None)

    def _stop_stray(self) -> bool:
        """Stop the stray postmaster (`_stray`), as pg_ctl's fast mode does (SIGINT),
        and wait for it to exit; False when there is none."""
        pid = self._stray()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the server (PID {pid}) did not stop within {START_TIMEOUT_SECONDS} s; "
                    f"stop it with `kill -QUIT {pid}`"
                )
            time.sleep(0.05)
        return True

    def _remove_stale_pid_file(self) -> None:
        """Remove postmaster.pid when it names no server of ours; call under the lock.

        PostgreSQL uses that file to notice processes of a crashed server still
        attached to its shared memory, so it stays while any such process lives.
        """
        if not self._pid_file().stale:
            return
        leftovers = server_processes_in(self.data_dir)
        if leftovers:
            raise EmbeddedServerError(
                f"{self.data_dir / PID_FILE} names no running server, but processes of an "
                f"earlier one still run there (PID {', '.join(map(str, leftovers))}); "
                "wait for them to exit, or stop them, then run again"
            )
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / PID_FILE).unlink()
