"""Paths and small helpers the tests share (psycopg's tests keep theirs in utils.py too)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from cicd_db import migrations
from cicd_db.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "db" / "migrations"
# The schema a team that followed the plan made by hand: migration 0001 is it, as written.
PLAN_SCHEMA = MIGRATIONS / "0001_plan_schema.sql"


# Property tests draw this many times their examples (`make properties` sets 20: what
# a property misses at 200 examples it may find at 4,000; `make test` keeps 1).
EXAMPLES_SCALE = max(1, int(os.environ.get("TEST_EXAMPLES_SCALE") or 1))


def examples(count: int) -> int:
    """A property test's number of examples: `count`, times TEST_EXAMPLES_SCALE."""
    return count * EXAMPLES_SCALE


# Where a RAM disk is: the test servers' files go there (see on_ram_disk).
RAM_DISK = Path("/dev/shm")
# Room the test servers need there: their databases, WAL between checkpoints, initdb's.
RAM_DISK_ROOM = 2 << 30


def _on_the_ram_disk(name: str) -> Path | None:
    """This checkout's folder `name` on the RAM disk (not made yet), or None where there
    is no RAM disk we may write with RAM_DISK_ROOM free."""
    if not RAM_DISK.is_dir() or not os.access(RAM_DISK, os.W_OK):
        return None
    if shutil.disk_usage(RAM_DISK).free < RAM_DISK_ROOM:
        return None
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    return RAM_DISK / f"cicd-db-{checkout}-{name}"


def on_ram_disk(path: Path) -> Path:
    """`path`, a link to a folder of the RAM disk when there is one with room, made the
    first time (an existing folder stays where it is). The test servers make and drop a
    database per test, hundreds of files each time: on ext4 without a journal (this
    machine's disk) every file made looks through the inodes deleted in the last minutes,
    and CREATE DATABASE took 100 ms of CPU instead of 10. Their durability is off
    anyway, so memory loses nothing; the path under .cicd-db/ stays what it was."""
    if path.is_symlink():
        Path(os.readlink(path)).mkdir(mode=0o755, exist_ok=True)  # the RAM disk was emptied
        return path
    if path.exists() or (target := _on_the_ram_disk(path.name)) is None:
        return path
    target.mkdir(mode=0o755, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another xdist worker made it first
        path.symlink_to(target, target_is_directory=True)
    return path


def ram_disk_temporary() -> Path | None:
    """A temporary folder for the test session (its TMPDIR) on the RAM disk, or None where
    there is none with room. Throwaway servers run initdb in TMPDIR, and tests write
    migrations by the thousand to tmp_path: on this machine's disk each file made costs
    the kernel a look through recently deleted inodes (on_ram_disk), and initdb makes a
    thousand. Open to all with the sticky bit, as /tmp is, so that everything a test
    meets in it (root's server account passing through, a folder of another account's)
    is what it meets in /tmp."""
    if (folder := _on_the_ram_disk("tmp")) is None:
        return None
    folder.mkdir(exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():
        return None  # not ours: a shared RAM disk lets anyone plant a look-alike
    folder.chmod(0o1777)
    return folder


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def unscanned(name: str, data: bytes, version: int = 1) -> migrations.Migration:
    """A migration sent as one query, built by hand past discover()'s checks and scan."""
    return migrations.Migration(
        version=version,
        name=name,
        path=Path(f"{version:04d}_{name}.sql"),
        data=data,
        checksum="0" * 64,
        planned=(migrations.Batch(0, len(data), 1, standard_strings=True),),
    )


# 300 finished-looking runs of 5 stages x 20 jobs, set-based: enough rows that a plan
# scanning every job shows up as one (the statistics are the young table's).
MANY_JOBS = (
    "WITH runs AS (INSERT INTO pipeline_executions (pipeline_name, commit_hash) "
    "SELECT 'old', md5(i::text) FROM generate_series(1, 300) i RETURNING id), "
    "stages AS (INSERT INTO stage_executions (pipeline_execution_id, stage_name, "
    "execution_order) SELECT id, 's' || o, o FROM runs, generate_series(1, 5) o "
    "RETURNING id) INSERT INTO job_executions (stage_execution_id, job_name) "
    "SELECT id, 'j' || n FROM stages, generate_series(1, 20) n"
)


def scans(node: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Every (node type, table) of an EXPLAIN (FORMAT JSON) plan node, children included."""
    found = [(node.get("Node Type"), node.get("Relation Name"))]
    for child in node.get("Plans", []):
        found += scans(child)
    return found


PgDumpCall = tuple[list[str], dict[str, Any]]


@contextlib.contextmanager
def pg_dump_calls() -> Iterator[list[PgDumpCall]]:
    """The dumps pg_dump makes meanwhile (its command line and subprocess.run's keyword
    arguments, the environment among them), each run for real; `--version` left out."""
    calls: list[PgDumpCall] = []
    real_run = subprocess.run

    def watched(args: list[str], **kwargs: Any) -> Any:
        argv = [str(arg) for arg in args]
        if Path(argv[0]).name == "pg_dump" and len(argv) > 2:
            calls.append((argv, kwargs))
        return real_run(args, **kwargs)

    with mock.patch.object(subprocess, "run", watched):
        yield calls


# libpq's variables a service file test clears, so the machine's own do not take part.
SERVICE_VARIABLES = (
    "PGSERVICE", "PGSSLMODE", "PGREQUIRESSL", "PGCONNECT_TIMEOUT", "PGSSLROOTCERT",
    "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS", "PGHOST", "PGPORT", "PGAPPNAME",
)  # fmt: skip


def use_service_file(monkeypatch: Any, tmp_path: Path, text: str) -> Path:
    """A service file holding `text` (written as Latin-1, so a test can hold a byte that
    is not UTF-8) for libpq to read, and libpq's variables cleared."""
    services = tmp_path / "pg_service.conf"
    services.write_bytes(text.encode("latin-1"))
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    for variable in SERVICE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return services


@contextlib.contextmanager
def socket_folder(server: ConnectionSettings, name: str = "") -> Iterator[Path]:
    """A folder with a Unix socket `.s.PGSQL.5432` that carries each connection to the
    test server's TCP port: a socket as a packaged server has, which libpq reaches by
    the folder (the embedded server listens on TCP only); named `name` inside a
    temporary folder, where given (a space or an '@' in a folder's name)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as temporary:  # short: socket paths are
        folder = os.path.join(temporary, name) if name else temporary
        os.makedirs(folder, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(folder, ".s.PGSQL.5432"))
        listener.listen()

        def carry(client: socket.socket) -> None:
            """Both ways until either end closes; then both are closed."""
            with client, socket.create_connection((server.host, server.port or 5432)) as tcp:
                other = {client: tcp, tcp: client}
                with contextlib.suppress(OSError):
                    while True:
                        ready, _, _ = select.select(list(other), [], [])
                        for end in ready:
                            data = end.recv(65536)
                            if not data:
                                return
                            other[end].sendall(data)

        def serve() -> None:
            with contextlib.suppress(OSError):
                while True:
                    client, _ = listener.accept()
                    threading.Thread(target=carry, args=(client,), daemon=True).start()

        serving = threading.Thread(target=serve, daemon=True)
        serving.start()
        try:
            yield Path(folder)
        finally:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            serving.join(timeout=10)


# A domain that refuses every value for each of PostgreSQL's own type names that a query
# may write unqualified (what is not a keyword the grammar reads as pg_catalog's); or
# tables named like two of them (a table's row type is a type of its name): a cast the
# runner writes as `::text` or `::oid`, or a column it types so, that found these would fail.
LOOK_ALIKE_TYPES = """
CREATE SCHEMA types;
DO $$DECLARE t record; BEGIN
FOR t IN SELECT y.typname FROM pg_catalog.pg_type y
    WHERE y.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND y.typtype = 'b'
    AND y.typname !~ '^_' AND y.typname NOT IN (
        SELECT k.word FROM pg_catalog.pg_get_keywords() k WHERE k.catcode <> 'U')
LOOP
    EXECUTE pg_catalog.format('CREATE DOMAIN types.%I AS pg_catalog.%I CHECK (false)',
        t.typname, t.typname);
END LOOP; END$$;
GRANT USAGE ON SCHEMA types TO PUBLIC;
"""
