"""PgBouncer in front of the session's test server: the pooler CI systems put between
themselves and PostgreSQL, run for real in each of its pool modes (tests/test_poolers.py).

Debian's `pgbouncer` package; .ci/run installs it when it is missing, and a test that
needs it fails in CI without it (elsewhere it is skipped, naming the package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from cicd_db import pgprocess

from .fix_db import Database

PGBOUNCER = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer",) if Path(path).exists()), None
)


def needs_pgbouncer() -> str:
    if PGBOUNCER is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("pgbouncer is not installed; .ci/run installs it")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    return PGBOUNCER


@contextmanager
def pgbouncer(
    database: Database,
    mode: str,
    *,
    ignore_options: bool = True,
    pool_size: int = 10,
    settings_more: str = "",
) -> Iterator[Database]:
    """`database` through a PgBouncer in pool_mode `mode` (session, transaction or
    statement), as its own user and password, `pool_size` server sessions at most; with
    `ignore_options` False, PgBouncer's default, which refuses a connection that sends
    startup `options`."""
    program = needs_pgbouncer()
    settings = database.settings
    account = pgprocess.server_account()  # PgBouncer will not run as root either
    folder = Path(tempfile.mkdtemp(prefix="cicd-db-pgbouncer-"))
    port = pgprocess.free_port()
    (folder / "users.txt").write_text(f'"{settings.user}" "{settings.password}"\n')
    ignored = "extra_float_digits,options" if ignore_options else "extra_float_digits"
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={settings.host} port={settings.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\nmax_client_conn = 100\ndefault_pool_size = {pool_size}\n"
        f"ignore_startup_parameters = {ignored}\n"
        f"logfile = {folder / 'pgbouncer.log'}\n{settings_more}"
    )
    if account is not None:
        shutil.chown(folder, account)
        for path in folder.iterdir():
            shutil.chown(path, account)
    command = [program, *(["-u", account] if account else []), str(folder / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                log = folder / "pgbouncer.log"
                assert process.poll() is None, log.read_text() if log.exists() else "no log"
                assert time.monotonic() < deadline, "pgbouncer did not start listening"
                time.sleep(0.05)
        yield Database(replace(settings, host="127.0.0.1", port=port))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)
