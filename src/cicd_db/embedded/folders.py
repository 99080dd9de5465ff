"""What every part of the embedded server knows: its folders under the state folder, the
PostgreSQL programs it runs, and its log."""

from __future__ import annotations

from pathlib import Path

from cicd_db.pgprocess import run_tool, wheel_bin_dir


class Folders:
    """The embedded server's folders and programs (see the package docstring's layout)."""

    def __init__(self, home: Path, *, bin_dir: Path | None = None, port: int | None = None):
        # Absolute: pg_ctl and initdb run with the state folder as their working directory.
        self.root = home.absolute() / "embedded"
        self.data_dir = self.root / "data"
        self.new_data_dir = self.root / "data.new"
        self.state_file = self.root / "server.json"
        self.lock_file = self.root / "lock"
        self.log_file = self.data_dir / "server.log"
        self._bin_dir = bin_dir
        self._requested_port = port

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = wheel_bin_dir()
        return self._bin_dir

    def _log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"no server log at {self.log_file}"
        return "server log: " + " | ".join(tail) if tail else "the server log is empty"

    def _run(self, program: str, *arguments: str) -> str:
        return run_tool(self.bin_dir, program, *arguments, cwd=self.root)
