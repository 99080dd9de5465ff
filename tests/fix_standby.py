"""A hot standby, made as a team makes one: an embedded server of its own as the primary,
`pg_basebackup -R` of it started on another port, in recovery, streaming from it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace

import psycopg
import pytest

from cicd_db import pgprocess
from cicd_db.embedded import EmbeddedServer
from cicd_db.settings import ConnectionSettings

from .fix_db import discard, new_home


@dataclass(frozen=True)
class Pair:
    primary: ConnectionSettings  # ci_user on ci_local, as the embedded server makes them
    standby: ConnectionSettings  # the same, on the standby
    admin: ConnectionSettings  # the primary's superuser


@pytest.fixture(scope="module")
def standby() -> Iterator[Pair]:
    home = new_home("standby")
    primary = EmbeddedServer(home)
    primary.ensure_running()
    admin = primary.admin_settings()
    account = pgprocess.server_account()
    folder = home / "standby"
    folder.mkdir(mode=0o700)
    passfile = folder / "pgpass"
    escaped = (admin.password or "").replace("\\", "\\\\").replace(":", "\\:")
    passfile.write_text(f"*:*:*:*:{escaped}\n")
    passfile.chmod(0o600)
    if account is not None:
        shutil.chown(folder, account, account)
        shutil.chown(passfile, account, account)
    data, port = folder / "data", pgprocess.free_port()
    bin_dir = primary.bin_dir
    try:
        pgprocess.run_tool(
            bin_dir,
            "pg_basebackup",
            "-d",
            f"host={admin.host} port={admin.port} user={admin.user} passfile={passfile}",
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "--no-password",
            "--checkpoint=fast",  # not a checkpoint spread over checkpoint_timeout's minutes
            cwd=folder,
        )
        pgprocess.run_tool(
            bin_dir,
            "pg_ctl",
            "-D",
            str(data),
            "-o",
            f"-p {port} -c unix_socket_directories=''",
            "-l",
            str(folder / "server.log"),
            "-w",
            "start",
            cwd=folder,
        )
        settings = primary.settings()
        pair = Pair(settings, replace(settings, port=port), admin)
        with psycopg.connect(pair.standby.conninfo()) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        yield pair
    finally:
        if (data / "postmaster.pid").exists():
            pgprocess.run_tool(bin_dir, "pg_ctl", "-D", str(data), "-m", "immediate", "stop", cwd=folder)  # fmt: skip
        discard(home)
        assert not os.path.exists(home)
