"""server.json: the embedded server's port and passwords (mode 0600, never printed),
read whole and checked, written whole or not at all, under the lock file that
serialises start and stop between processes; and the logins it makes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

from cicd_db.embedded.folders import Folders
from cicd_db.errors import ConfigError, EmbeddedServerError
from cicd_db.pgprocess import HOST, START_TIMEOUT_SECONDS, SUPERUSER
from cicd_db.settings import APP_USER, LOCAL_USER, READER_USER, ConnectionSettings

# Seconds to wait for the lock another process holds: the longest a holder works under
# it (initdb, a start that pg_ctl waits START_TIMEOUT_SECONDS for, the bootstrap; a stop
# it waits as long for), twice over for a loaded machine; past this, the holder is stuck.
LOCK_WAIT = 4.0 * START_TIMEOUT_SECONDS + 60.0
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
# False from when new passwords of the two are stored until the roles have them (a state
# without it, from before it was kept, has them).
ROLES_SET = "role_passwords_set"
# Which password of server.json each login role has.
PASSWORD_KEYS = {SUPERUSER: "superuser_password", LOCAL_USER: "password", **ROLE_PASSWORD_KEYS}


# A server.json is a few hundred bytes: one far larger is none of ours.
MAX_STATE_BYTES = 65536


class StateFile(Folders):
    """The lock and server.json of one embedded server."""

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
            self._take(handle)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _take(self, handle: Any) -> None:
        """The lock, waited for at most LOCK_WAIT seconds: another cicd-db starting the
        server (initdb, a first start) holds it for seconds; one that holds it longer is
        stuck, and is named instead of waited on without a word."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"another process has held {self.lock_file} for {LOCK_WAIT:g} s "
                        "(a cicd-db starting or stopping the embedded server takes seconds): "
                        f"find it (`fuser {self.lock_file}`), let it finish or stop it, "
                        "then run again"
                    ) from None
                time.sleep(0.05)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            # Opened without waiting (a FIFO put there hung every command) and read only
            # as a small regular file (a link to /dev/zero read until memory ran out).
            descriptor = os.open(self.state_file, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise self._bad_state(error.strerror or error.__class__.__name__) from None
        try:
            with os.fdopen(descriptor, "rb") as handle:
                found = os.fstat(handle.fileno())
                if not stat.S_ISREG(found.st_mode):
                    raise self._bad_state("not a regular file")
                if found.st_size > MAX_STATE_BYTES:
                    raise self._bad_state(f"{found.st_size:,} bytes, not a server's state")
                data = handle.read(MAX_STATE_BYTES + 1)
        except OSError as error:
            raise self._bad_state(error.strerror or error.__class__.__name__) from None
        try:
            state = json.loads(data.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError too: a server.json of ours is UTF-8 JSON
            raise self._bad_state("not JSON") from None
        if not isinstance(state, dict):
            raise self._bad_state("not a JSON object")
        for key in ROLE_PASSWORD_KEYS.values():
            if key in state and not (isinstance(state[key], str) and state[key]):
                raise self._bad_state(f"key {key} is not a password; remove it to make a new one")
        for key, (kind, words) in STATE_KEYS.items():
            # bool is an int to isinstance; a port of `true` is still wrong.
            if not isinstance(state.get(key), kind) or (kind is int and type(state[key]) is bool):
                raise self._bad_state(f"key {key} is missing or not {words}")
        if not 1 <= state["port"] <= 65535:
            raise self._bad_state("key port is not a port from 1 to 65535")
        return dict(state)

    def _bad_state(self, why: str) -> ConfigError:
        # Key names bare: a quoted one ('password' is missing ...) read, to the masking of
        # messages, as a password quoted after its name, and the line came out cut.
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


# What makes ci_local and the roles again, with server.json's passwords (Creating.remake).
REMADE_BY = "cicd-db embedded start"


def login(state: dict[str, Any], user: str, database: str) -> ConnectionSettings:
    return ConnectionSettings(
        host=HOST,
        port=state["port"],
        database=database,
        user=user,
        password=state[PASSWORD_KEYS[user]],
        # The wheel is built without OpenSSL; the server only listens on loopback.
        sslmode="disable",
        remade_by=REMADE_BY,
    )


def env_port() -> int | None:
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
