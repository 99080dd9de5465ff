"""Making the embedded server: initdb in data.new/ (renamed to data/ once complete), our
lines in postgresql.conf, the major version checked, the start on server.json's port,
and the roles and database the dev stack's container has too; each safe to repeat."""

from __future__ import annotations

import os
import secrets
import shutil
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.embedded.pidfile import PidFiles
from cicd_db.embedded.state import ROLE_PASSWORD_KEYS, StateFile, env_port, login
from cicd_db.errors import ConfigError, EmbeddedServerError
from cicd_db.pgprocess import (
    HOST,
    START_TIMEOUT_SECONDS,
    SUPERUSER,
    check_port,
    free_port,
    grant_traverse,
    port_taken,
    server_account,
    write_password_file,
)
from cicd_db.settings import LOCAL_DATABASE, LOCAL_ROLE_SETTINGS, LOCAL_USER

# Starts the lines we append to postgresql.conf after initdb: their presence says
# our set-up of the data folder finished.
CONF_MARKER = "# cicd-db:"


class Creating(StateFile, PidFiles):
    """The steps of a first start, and of every start."""

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
        wanted = self._requested_port or env_port()
        if wanted is None or wanted == state["port"]:
            return state
        check_port(wanted, creating=False)
        # server.json alone says the port (each start passes it to the server), so a
        # move is one atomic write: there is no second file to disagree with it.
        state = {**state, "port": wanted}
        self._write_state(state)
        return state

    def _initdb(self) -> dict[str, Any]:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            # Made by a server whose state is lost (server.json removed: its port and
            # passwords) or whose data is damaged (no PG_VERSION): nothing here can use it.
            lacks = (
                f"no {self.state_file.name} (its port and passwords)"
                if not self.state_file.exists()
                else "no PG_VERSION (it is damaged)"
            )
            raise EmbeddedServerError(
                f"{self.data_dir} holds a server's files but {lacks}, so nothing can log in "
                "to it; stop it (`cicd-db embedded stop`), then move "
                f"{self.root} away (keep it if its data matters) and run again to create a "
                "fresh embedded server"
            )
        requested = self._requested_port or env_port()
        if requested is not None:
            check_port(requested, creating=True)  # before anything is stored
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
        check_port(port, creating=False)
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
                raise port_taken(port, creating=False) from None
            if "could not bind" in tail and "Permission denied" in tail:
                # The check above binds as this process; the server runs as its own user,
                # which may not listen below 1024.
                raise ConfigError(
                    f"the embedded server may not listen on port {port} of {HOST} "
                    "(Permission denied: ports below 1024 are the system's); set "
                    "CICD_DB_EMBEDDED_PORT to a port from 1024 to 65535 to move it there, "
                    "and run again"
                ) from None
            raise EmbeddedServerError(f"{error}; {tail}") from None

    def _as_superuser(self, state: dict[str, Any]) -> psycopg.Connection[Any]:
        """The superuser's connection to `postgres`. Refused, server.json's
        superuser_password is not the server's (edited, or restored from another)."""
        admin = login(state, SUPERUSER, "postgres")
        try:
            return psycopg.connect(admin.conninfo(), autocommit=True)
        except psycopg.OperationalError as error:
            said = str(error).strip().splitlines()[-1] if str(error).strip() else "no answer"
            if "password authentication failed" not in said:  # down, full, starting: as is
                raise
            raise EmbeddedServerError(
                f"the embedded server refused its own superuser ({said.strip()}): "
                f"{self.state_file}'s superuser_password is not the server's (edited, or "
                "copied from another server?); restore it, or run `cicd-db embedded stop` and "
                f"move {self.root} away (its data goes with it) to start afresh"
            ) from None

    def _bootstrap(
        self, conn: psycopg.Connection[Any], state: dict[str, Any]
    ) -> tuple[list[str], bool]:
        """Create ci_user and ci_local, with ci_user's role settings, LOGIN and
        server.json's password, over the superuser's `conn`; safe to repeat. Returns the
        roles it made, and whether it made the database."""
        made = []
        role = sql.Identifier(LOCAL_USER)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [LOCAL_USER])
        verb = "ALTER ROLE {} LOGIN PASSWORD {}"
        if exists.fetchone() is None:
            verb = "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD {}"
            made.append(LOCAL_USER)
        conn.execute(sql.SQL(verb).format(role, sql.Literal(state["password"])))
        for name, value in LOCAL_ROLE_SETTINGS:
            conn.execute(
                sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                    role, sql.Identifier(name), sql.Literal(value)
                )
            )
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [LOCAL_DATABASE])
        made_database = exists.fetchone() is None
        if made_database:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(LOCAL_DATABASE), role)
            )
        conn.execute(
            sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                sql.Identifier(LOCAL_DATABASE), role
            )
        )
        return made, made_database

    def _set_role_passwords(
        self, conn: psycopg.Connection[Any], state: dict[str, Any]
    ) -> list[str]:
        """Create the writer and the reader, or give them LOGIN and server.json's passwords
        (migration 0029 may have made them NOLOGIN), over the superuser's `conn`; safe to
        repeat. Their privileges are the migration's grants, nothing here. Returns the
        roles it made."""
        made = []
        for user, key in ROLE_PASSWORD_KEYS.items():
            role, password = sql.Identifier(user), sql.Literal(state[key])
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user])
            verb = "ALTER" if exists.fetchone() else "CREATE"
            if verb == "CREATE":
                made.append(user)
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
        return made
