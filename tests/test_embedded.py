"""The embedded target: created on first use, the plan's database and role, left running.

Every test here has a state folder of its own (CICD_DB_HOME), so starting, stopping
and breaking its server disturbs no other test. Tests that start a server are
marked `db` by hand: they do not use the session's `server` fixture.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from cicd_db import embedded, targets
from cicd_db.embedded import EmbeddedServer
from cicd_db.errors import AuthenticationFailed, ConfigError, EmbeddedServerError
from cicd_db.store import Store

from .fix_cli import run_cli, start_cli
from .fix_db import discard, new_home
from .utils import ROOT

SECRET = "s3cret-in-state"


def assert_one_line_error(err: str, starts: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: " + starts), err
    assert SECRET not in err


def postmasters_of(data_dir: Path) -> list[int]:
    """The postgres servers (not their workers) whose data directory is `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            Path(os.fsdecode(arguments[0])).name == "postgres"
            and os.fsencode(str(data_dir)) in arguments
        ):
            found.append(int(entry.name))
    return found


# -- configuration mistakes: exit 2, one line, before anything is created ------------


@pytest.mark.parametrize("port", ["abc", "0", "65536", "5432 ", "٣"])
def test_a_bad_port_is_a_configuration_error(
    port: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICD_DB_HOME", str(home))
    monkeypatch.setenv("CICD_DB_EMBEDDED_PORT", port)
    code, out, err = run_cli("embedded", "start")
    assert (code, out) == (2, "")
    assert_one_line_error(
        err,
        f"CICD_DB_EMBEDDED_PORT is {port!r}; set it to a port number from 1 to 65535, "
        "or unset it to pick a free port",
    )
    assert not home.exists()


@pytest.mark.parametrize("made", ["$(touch${IFS}ran)", "`touch ran`", '"', "$HOME", "a\\b"])
def test_a_state_folder_the_shell_would_act_on_is_refused_before_anything_runs(
    made: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_ctl passes the data folder to /bin/sh between double quotes: a `$(...)` in a
    checkout's or CICD_DB_HOME's path would run as a command."""
    monkeypatch.chdir(tmp_path)  # where a `touch ran` would land
    home = tmp_path / f"state-{made}"
    monkeypatch.setenv("CICD_DB_HOME", str(home))
    code, out, err = run_cli("embedded", "start")
    assert (code, out) == (2, "")
    character = next(c for c in made if c in '"$`\\')
    assert_one_line_error(
        err,
        f"the state folder {str(home)!r} has a {character!r} in its path, which PostgreSQL's "
        "programs would pass to /bin/sh as shell syntax; set CICD_DB_HOME to a folder whose "
        'path has none of " $ ` \\',
    )
    assert not home.exists() and not (tmp_path / "ran").exists()


def test_a_state_folder_too_long_for_postgresql_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """initdb crashes on a data folder of over about 1,000 bytes; the path is refused
    instead, naming its length (a path at the limit works: test_lifecycle's are short,
    and the limit was measured with initdb and pg_ctl by hand)."""
    home = tmp_path
    # Up to 800-899 bytes, leaving room for the last name (a loop to 900 could end at
    # 1,000 with some lengths of pytest's own folder, and leave no byte to add).
    while len(os.fsencode(home / "embedded" / "data.new")) < 800:
        home = home / ("d" * 100)
    # One byte over: the data folder initdb makes (data.new) is 1,001 bytes long.
    home = home / ("e" * (1001 - len(os.fsencode(home / "x" / "embedded" / "data.new")) + 1))
    assert len(os.fsencode(home / "embedded" / "data.new")) == 1001
    monkeypatch.setenv("CICD_DB_HOME", str(home))
    code, out, err = run_cli("embedded", "start")
    assert (code, out) == (2, "")
    assert_one_line_error(
        err,
        "the data folder's path in the state folder would be 1,001 bytes long; PostgreSQL's "
        "programs fail on one of over 1,000 (initdb crashes); set CICD_DB_HOME to a folder "
        "with a shorter path",
    )
    assert not home.exists()


def test_programs_in_a_folder_the_shell_would_act_on_are_refused(tmp_path: Path) -> None:
    """initdb and pg_ctl pass their own folder to /bin/sh too (to start postgres)."""
    server = embedded.EmbeddedServer(tmp_path / "home", bin_dir=tmp_path / "v$(x)" / "bin")
    with pytest.raises(ConfigError, match=r"^the PostgreSQL programs' folder .* has a '\$'"):
        server.ensure_running()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("kind", ["missing parent", "a file"])
def test_a_home_that_cannot_be_created_is_a_configuration_error(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "a file":
        home = tmp_path / "state"
        home.write_text("not a folder")
        reason = "Not a directory"
    else:
        home = Path("/proc/cicd-db-no-such-folder")
        reason = "No such file or directory"
    monkeypatch.setenv("CICD_DB_HOME", str(home))
    code, out, err = run_cli("embedded", "start")
    assert (code, out) == (2, "")
    assert_one_line_error(
        err,
        f"cannot use {home}/embedded for the embedded server: {reason}; set CICD_DB_HOME "
        "to a folder you can write to (unset, it is .cicd-db in the repository)",
    )
    # Reading needs no folder: there is simply no server yet.
    code, out, err = run_cli("embedded", "status")
    assert (code, out, err) == (0, f"stopped, data {home}/embedded/data (not created yet)\n", "")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"port": 5', "not JSON"),
        ("", "not JSON"),
        (f'["{SECRET}"]', "not a JSON object"),
        (
            json.dumps({"port": "5432", "superuser_password": SECRET, "password": SECRET}),
            "key port is missing or not a number",
        ),
        (
            json.dumps({"port": 5432, "password": SECRET, "bootstrapped": True}),
            "key superuser_password is missing or not a string",
        ),
        (
            json.dumps({"port": 5432, "superuser_password": SECRET, "bootstrapped": True}),
            "key password is missing or not a string",
        ),
        (
            json.dumps(
                {
                    "port": 5432,
                    "superuser_password": SECRET,
                    "password": SECRET,
                    "bootstrapped": True,
                    "app_password": "",
                }
            ),
            "key app_password is not a password; remove it to make a new one",
        ),
        (
            json.dumps(
                {"port": True, "superuser_password": SECRET, "password": "", "bootstrapped": True}
            ),
            "key port is missing or not a number",
        ),
        *(
            (
                json.dumps(
                    {
                        "port": port,
                        "superuser_password": SECRET,
                        "password": "",
                        "bootstrapped": True,
                    }
                ),
                "key port is not a port from 1 to 65535",
            )
            for port in (70000, -5, 0)
        ),
    ],
    ids=[
        "truncated",
        "empty",
        "list",
        "port-text",
        "no-superuser-password",
        "no-password",
        "app-password-empty",
        "port-true",
        "port-70000",
        "port-negative",
        "port-0",
    ],
)
def test_a_corrupt_state_file_is_a_configuration_error(
    content: str,
    why: str,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state_file = home / "embedded" / "server.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(content)
    monkeypatch.setenv("CICD_DB_HOME", str(home))
    for command in ("start", "status", "url"):
        code, out, err = run_cli("embedded", command)
        assert (code, out) == (2, ""), command
        assert_one_line_error(
            err,
            f"cannot read {state_file} ({why}); it holds the server's port and passwords: "
            f"restore it, or run `cicd-db embedded stop` and move {home}/embedded away "
            "(its data goes with it) to start afresh",
        )
    # The advice works: stop needs no state file.
    assert tuple(run_cli("embedded", "stop")) == (0, "not running\n", "")


# -- real servers -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.db
def test_lifecycle_through_the_cli(home: Path) -> None:
    # Relative, as a user would type it: the CLI runs from the repository root.
    env = {"CICD_DB_HOME": str(home.relative_to(ROOT))}
    before = run_cli("embedded", "status", env=env)
    assert (before.code, before.out) == (
        0,
        f"stopped, data {home}/embedded/data (not created yet)\n",
    )

    migrated = run_cli("migrate", "--stack", "embedded", env=env)
    assert migrated.code == 0, migrated.err
    assert migrated.out.startswith("applied 0001_plan_schema.sql (")

    status = json.loads(run_cli("embedded", "status", "--json", env=env).out)
    assert status["running"] is True
    assert status["initialized"] is True
    url = run_cli("embedded", "url", env=env).out.strip()
    assert url == f"postgresql://ci_user:***@127.0.0.1:{status['port']}/ci_local?sslmode=disable"
    real_url = run_cli("embedded", "url", "--show-password", env=env).out.strip()
    assert json.loads(run_cli("embedded", "url", "--json", env=env).out) == {"url": url}
    state = json.loads((home / "embedded" / "server.json").read_text())
    assert state["password"] in real_url
    assert oct((home / "embedded" / "server.json").stat().st_mode & 0o777) == "0o600"

    with psycopg.connect(real_url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), r.rolsuper, r.rolcreaterole, "
            "pg_get_userbyid(d.datdba), current_setting('TimeZone'), "
            "current_setting('default_transaction_isolation'), current_setting('client_encoding') "
            "FROM pg_roles r, pg_database d "
            "WHERE r.rolname = current_user AND d.datname = current_database()"
        ).fetchone()
    assert row == ("ci_user", "ci_local", False, False, "ci_user", "UTC", "read committed", "UTF8")

    again = run_cli("migrate", "--stack", "embedded", env=env)
    assert (again.code, again.out) == (0, "nothing to apply: stack embedded is up to date\n")

    stopped = run_cli("embedded", "stop", env=env)
    assert (stopped.code, stopped.out) == (0, "stopped\n")
    assert json.loads(run_cli("embedded", "status", "--json", env=env).out)["running"] is False
    assert run_cli("embedded", "stop", env=env).out == "not running\n"
    assert json.loads(run_cli("embedded", "stop", "--json", env=env).out) == {"stopped": False}

    # Started again on demand, with the same data and credentials.
    restarted = run_cli("migrate", "status", "--local", env={**env, "CICD_DB_LOCAL": "embedded"})
    assert restarted.code == 0, restarted.err
    assert restarted.out.splitlines()[1].split()[:3] == ["1", "plan_schema", "applied"]
    started = run_cli("embedded", "start", "--json", env=env)
    assert started.code == 0, started
    said = json.loads(started.out)
    assert (said["running"], said["made_again"]) == (
        True,
        {"roles": [], "roles_without_grants": [], "database": False},
    ), said
    assert f":{said['port']}/ci_local?" in said["url"], said


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli_process(home: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return start_cli(*args, env={"CICD_DB_HOME": str(home), **env})


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="counts servers in /proc")
def test_concurrent_first_start_makes_one_server(home: Path) -> None:
    port = free_port()
    starts = [
        cli_process(home, "embedded", "start", CICD_DB_EMBEDDED_PORT=str(port)) for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in starts]
    expected = (
        0,
        f"running on 127.0.0.1:{port}: "
        f"postgresql://ci_user:***@127.0.0.1:{port}/ci_local?sslmode=disable\n",
        "",
    )
    assert results == [expected, expected]
    data_dir = home / "embedded" / "data"
    assert postmasters_of(data_dir) == [EmbeddedServer(home).status().pid]


@pytest.mark.slow
@pytest.mark.db
def test_stop_waits_for_the_lock_start_holds(home: Path) -> None:
    server = EmbeddedServer(home)
    server.admin_settings()
    with open(server.lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a start in progress holds it
        stop = cli_process(home, "embedded", "stop")
        time.sleep(1)
        assert stop.poll() is None, stop.communicate()
        assert server.status().running
    assert stop.communicate(timeout=60) == ("stopped\n", "")
    assert not server.status().running


@pytest.mark.db
def test_a_lock_held_past_the_wait_is_named_not_waited_on_without_a_word(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process stuck holding the lock made `embedded start` and `stop` wait forever, and
    say nothing (helper-104): past the wait (two minutes; here a fraction of a second),
    one line names the lock file and how to find its holder, and nothing is changed."""
    monkeypatch.setattr(embedded.state, "LOCK_WAIT", 0.3)
    server = EmbeddedServer(home)
    server.admin_settings()
    said = (
        f"another process has held {server.lock_file} for 0.3 s (a cicd-db starting or "
        f"stopping the embedded server takes seconds): find it (`fuser {server.lock_file}`), "
        "let it finish or stop it, then run again"
    )
    # A stop while it runs; a start once it is stopped (a running one needs no lock).
    for act, running in ((server.stop, True), (server.ensure_running, False)):
        with open(server.lock_file, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a stuck holder
            with pytest.raises(EmbeddedServerError) as held:
                act()
            assert str(held.value) == said
            assert server.status().running is running
        server.stop()


@pytest.fixture(scope="module")
def stopped_server() -> Iterator[tuple[Path, list[str]]]:
    """A server made and stopped, and the lines of postmaster.pid while it ran."""
    home = new_home("stale")
    server = EmbeddedServer(home)
    server.admin_settings()
    lines = (server.data_dir / "postmaster.pid").read_text().splitlines()
    server.stop()
    yield home, lines
    discard(home)


@pytest.fixture(scope="module")
def other_postgres() -> Iterator[int]:
    """The PID of a live postgres of another data directory."""
    home = new_home("other")
    server = EmbeddedServer(home)
    server.admin_settings()
    pid = server.status().pid
    assert pid is not None
    yield pid
    discard(home)


@pytest.fixture
def stranger() -> Iterator[int]:
    """A live process that is no postgres at all, as a PID reused after a reboot."""
    process = subprocess.Popen(["sleep", "120"])
    yield process.pid
    process.kill()
    process.wait()


def write_pid_file(home: Path, lines: list[str], pid: str) -> Path:
    pid_file = home / "embedded" / "data" / "postmaster.pid"
    pid_file.write_text("\n".join([pid, *lines[1:]]) + "\n")
    return pid_file


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.parametrize("owner", ["another process", "another postgres", "garbled"])
def test_a_stale_pid_file_counts_as_stopped_and_start_replaces_it(
    owner: str,
    stopped_server: tuple[Path, list[str]],
    stranger: int,
    other_postgres: int,
) -> None:
    home, lines = stopped_server
    pid = {"another process": stranger, "another postgres": other_postgres, "garbled": "x1"}[owner]
    write_pid_file(home, lines, str(pid))
    env = {"CICD_DB_HOME": str(home)}

    status = run_cli("embedded", "status", env=env)
    assert (status.code, status.out, status.err) == (
        0,
        f"stopped, data {home}/embedded/data\n",
        "",
    )
    migrated = run_cli("migrate", "--stack", "embedded", env=env)
    assert migrated.code == 0, migrated.err
    running = EmbeddedServer(home).status()
    assert running.running
    assert running.pid != pid
    os.kill(stranger, 0)  # untouched
    os.kill(other_postgres, 0)
    stopped = run_cli("embedded", "stop", env=env)
    assert (stopped.code, stopped.out) == (0, "stopped\n")


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.parametrize("owner", ["another process", "another postgres", "a process in the data"])
def test_stop_with_a_stale_pid_file_signals_nobody(
    owner: str,
    stopped_server: tuple[Path, list[str]],
    stranger: int,
    other_postgres: int,
) -> None:
    home, lines = stopped_server
    # A shell left in the data directory works there too, but is no postgres.
    in_data = subprocess.Popen(["sleep", "120"], cwd=home / "embedded" / "data")
    pid = {
        "another process": stranger,
        "another postgres": other_postgres,
        "a process in the data": in_data.pid,
    }[owner]
    try:
        pid_file = write_pid_file(home, lines, str(pid))
        stopped = run_cli("embedded", "stop", env={"CICD_DB_HOME": str(home)})
        assert (stopped.code, stopped.out, stopped.err) == (0, "not running\n", "")
        time.sleep(0.2)  # a signal, had one been sent, lands by now
        os.kill(pid, 0)
        assert in_data.poll() is None
        assert not pid_file.exists()
    finally:
        in_data.kill()
        in_data.wait()


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="looks for them in /proc")
def test_processes_of_a_crashed_server_keep_its_pid_file(
    stopped_server: tuple[Path, list[str]], stranger: int
) -> None:
    """A pid file naming no server is not removed while postgres processes still work there:
    PostgreSQL needs it to refuse to start beside them."""
    home, lines = stopped_server
    data_dir = home / "embedded" / "data"
    pid_file = write_pid_file(home, lines, str(stranger))
    # Looks like a worker left behind by a killed server: named postgres, working in the data.
    leftover = subprocess.Popen(["postgres: checkpointer", "120"], executable="sleep", cwd=data_dir)
    try:
        started = run_cli("embedded", "start", env={"CICD_DB_HOME": str(home)})
    finally:
        leftover.kill()
        leftover.wait()
    assert started.code == 1
    assert_one_line_error(
        started.err,
        f"{pid_file} names no running server, but processes of an earlier one still run "
        f"there (PID {leftover.pid}); wait for them to exit, or stop them, then run again",
    )
    assert pid_file.exists()


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="looks for them in /proc")
@pytest.mark.parametrize("removed", ["pid file", "data folder", "state folder"])
def test_a_server_whose_pid_file_or_data_was_removed_is_named_and_stopped(
    home: Path, removed: str
) -> None:
    """A running server whose postmaster.pid, data folder or whole state folder was
    removed is no stopped server: status names it, a start refuses to make another beside it (its
    port, its passwords would be lost), and `stop` stops it."""
    env = {"CICD_DB_HOME": str(home)}
    server = EmbeddedServer(home)
    port = server.ensure_running()["port"]
    postmaster = server.status().pid
    assert postmaster is not None
    data_dir = home / "embedded" / "data"
    if removed == "pid file":
        (data_dir / "postmaster.pid").unlink()
    else:  # as a user would
        subprocess.run(
            ["rm", "-rf", str(data_dir if removed == "data folder" else home)], check=True
        )
    try:
        status = run_cli("embedded", "status", env=env)
        assert (status.code, status.err) == (0, "")
        assert status.out == (
            f"unreachable: a server of {data_dir} runs (pid {postmaster}) without its pid "
            "file or data folder; `cicd-db embedded stop` stops it\n"
        )
        if removed != "state folder":  # (a start would make that folder again)
            started = run_cli("embedded", "start", env=env)
            assert started.code == 1
            assert_one_line_error(
                started.err,
                f"a server of {data_dir} still runs (PID {postmaster}) without its {removed}, "
                "so nothing can connect to it or start another; run `cicd-db embedded stop`, "
                "then again",
            )
            assert json.loads((home / "embedded" / "server.json").read_text())["port"] == port
        assert run_cli("embedded", "stop", env=env) == (0, "stopped\n", "")
        assert not Path(f"/proc/{postmaster}").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGKILL)
    again = run_cli("embedded", "start", env=env)
    assert again.code == 0, again.err
    server.stop()


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="looks for them in /proc")
def test_a_server_its_pid_file_names_while_it_starts_is_no_stray(
    stopped_server: tuple[Path, list[str]],
) -> None:
    """A postmaster the pid file names, not yet accepting connections (another process is
    starting it), is starting, not stray: status says stopped, and names no PID."""
    home, lines = stopped_server
    data_dir = home / "embedded" / "data"
    # Looks like a postmaster: the program postgres, working in the data folder.
    starting = subprocess.Popen(["postgres", "120"], executable="sleep", cwd=data_dir)
    cmdline = Path(f"/proc/{starting.pid}/cmdline")
    while not cmdline.read_bytes().startswith(b"postgres\0"):  # until it has exec'd
        time.sleep(0.01)
    try:
        pid_file = write_pid_file(home, [*lines[:-1], "starting"], str(starting.pid))
        status = EmbeddedServer(home).status()
        assert (status.running, status.stray) == (False, None)
        pid_file.unlink()  # the same process, named by no pid file: stray
        assert EmbeddedServer(home).status().stray == starting.pid
    finally:
        starting.kill()
        starting.wait()


# -- stuck states: a first start interrupted, a port taken ---------------------------------


@pytest.mark.slow
@pytest.mark.db
def test_a_first_start_killed_during_initdb_is_recovered(home: Path) -> None:
    """The command and initdb killed outright while initdb runs (a crash: a Ctrl-C lets
    initdb clean up after itself) leave a half-made data folder; the next start finds
    it, discards it (it never held a database) and creates the server afresh."""
    process = cli_process(home, "embedded", "start")
    embedded = home / "embedded"
    deadline = time.monotonic() + 60
    # initdb writes PG_VERSION first, then spends a second or more on the catalogs.
    while not any(embedded.glob("data*/PG_VERSION")) and time.monotonic() < deadline:
        time.sleep(0.005)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    for pid in [*map(int, children), process.pid]:
        os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert EmbeddedServer(home).status().running is False
    assert any(embedded.glob("data*/PG_VERSION")), "initdb finished or cleaned up: no test"
    started = run_cli("embedded", "start", env={"CICD_DB_HOME": str(home)}, process=True)
    assert (started.code, started.err) == (0, "")
    url = run_cli("embedded", "url", "--show-password", env={"CICD_DB_HOME": str(home)})
    with psycopg.connect(url.out.strip()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ci_user",)


@pytest.mark.slow
def test_a_port_the_server_may_not_listen_on_is_named_and_another_port_works(
    home: Path,
) -> None:
    """A port below 1024, which the server's own user may not listen on: pg_ctl's "Examine
    the log output" and five log lines joined, no fix, and the port kept for every later
    start (helper-104). One line naming the port and CICD_DB_EMBEDDED_PORT, which moves
    the server."""
    env = {"CICD_DB_HOME": str(home), "CICD_DB_EMBEDDED_PORT": "1"}
    refused = run_cli("embedded", "start", env=env, process=True)
    assert (refused.code, refused.out) == (2, ""), refused
    assert refused.err == (
        "error: the embedded server may not listen on port 1 of 127.0.0.1 (Permission "
        "denied: ports below 1024 are the system's); set CICD_DB_EMBEDDED_PORT to a port "
        "from 1024 to 65535 to move it there, and run again\n"
    )
    other = free_port()
    moved = {"CICD_DB_HOME": str(home), "CICD_DB_EMBEDDED_PORT": str(other)}
    started = run_cli("embedded", "start", env=moved, process=True)
    assert (started.code, started.err) == (0, ""), started
    assert started.out.startswith(f"running on 127.0.0.1:{other}: ")
    assert run_cli("embedded", "stop", env={"CICD_DB_HOME": str(home)}).code == 0


@pytest.mark.slow
@pytest.mark.db
def test_a_taken_port_is_named_and_another_port_works(home: Path) -> None:
    """CICD_DB_EMBEDDED_PORT naming a port in use: one line that says so and how to
    change it, nothing stored for good; a retry with another port starts the server."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"CICD_DB_HOME": str(home), "CICD_DB_EMBEDDED_PORT": str(port)}
        refused = run_cli("embedded", "start", env=env, process=True)
        assert (refused.code, refused.out) == (2, "")
        assert refused.err == (
            f"error: port {port} on 127.0.0.1 is taken by another program; set "
            "CICD_DB_EMBEDDED_PORT to a free port, or unset it to pick one, and run again\n"
        )
        other = free_port()
        started = run_cli(
            "embedded", "start", env={**env, "CICD_DB_EMBEDDED_PORT": str(other)}, process=True
        )
        assert (started.code, started.err) == (0, "")
        assert started.out.startswith(f"running on 127.0.0.1:{other}: ")
        # The server exists now. Its port taken while it is stopped is named the same
        # way, and CICD_DB_EMBEDDED_PORT moves it.
        assert run_cli("embedded", "stop", env=env).code == 0
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", other))
            squatter.listen()
            blocked = run_cli("embedded", "start", env={"CICD_DB_HOME": str(home)}, process=True)
            assert (blocked.code, blocked.out) == (2, "")
            assert blocked.err == (
                f"error: port {other} on 127.0.0.1, the embedded server's, is taken by another "
                "program; stop that program, or set CICD_DB_EMBEDDED_PORT to a free port to "
                "move the server there, and run again\n"
            )
            third = free_port()
            moved = run_cli(
                "embedded", "start", env={**env, "CICD_DB_EMBEDDED_PORT": str(third)}, process=True
            )
        assert (moved.code, moved.err) == (0, ""), moved.err
        assert moved.out.startswith(f"running on 127.0.0.1:{third}: ")
        assert json.loads((home / "embedded" / "server.json").read_text())["port"] == third


@pytest.mark.slow
@pytest.mark.db
def test_a_move_whose_state_cannot_be_written_changes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move to another port is one write of server.json: a full disk then leaves the
    server where it was, and says which file it could not write (postgresql.conf used
    to take the new port first, and every later command connected to the old one)."""
    server = EmbeddedServer(home)
    old = server.ensure_running()["port"]
    conf = (server.data_dir / "postgresql.conf").read_text()
    assert server.stop()

    def full(_: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", full)
        with pytest.raises(EmbeddedServerError) as refused:
            EmbeddedServer(home, port=free_port()).ensure_running()
    assert str(refused.value) == (
        f"cannot write {server.state_file}: No space left on device; free space there or "
        "make it writable, and run again"
    )
    assert (server.data_dir / "postgresql.conf").read_text() == conf
    assert not server.state_file.with_suffix(".tmp").exists()
    try:
        assert server.ensure_running()["port"] == old
        with psycopg.connect(server.settings().conninfo()) as conn:
            assert conn.info.port == old
        moved = free_port()
        assert server.stop()
        assert EmbeddedServer(home, port=moved).ensure_running()["port"] == moved
        with psycopg.connect(server.settings().conninfo()) as conn:
            assert conn.info.port == moved
        assert (server.data_dir / "postgresql.conf").read_text() == conf  # said at start
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.db
def test_the_writer_and_the_reader_log_in_and_a_removed_password_is_made_anew(home: Path) -> None:
    """docs/security.md: the embedded server makes ci_app and ci_reader; a server whose
    server.json lacks a password (made before them, or rotated) gets a new one."""
    environ = {"CICD_DB_HOME": str(home)}
    assert run_cli("migrate", "--stack", "embedded", env=environ).code == 0
    target = targets.resolve(stack="embedded", environ=environ)
    app, reader = target.role_settings(targets.APP), target.role_settings(targets.READER)
    assert (target.role_settings(targets.OWNER).user, app.user, reader.user) == (
        "ci_user",
        "ci_app",
        "ci_reader",
    )
    with targets.connect(app) as conn:
        Store.on(conn).start_run("build", "abc")
    with targets.connect(reader) as conn:
        assert [run.run_number for run in Store.on(conn).runs("build")] == [1]
        with pytest.raises(ConfigError, match="record executions as the writer"):
            Store.on(conn).start_run("build", "def")

    state_file = home / "embedded" / "server.json"
    state = json.loads(state_file.read_text())
    old = state.pop("app_password")
    state_file.write_text(json.dumps(state))
    EmbeddedServer(home).stop()
    rotated = targets.resolve(stack="embedded", environ=environ).role_settings(targets.APP)
    assert rotated.password not in ("", old)
    assert json.loads(state_file.read_text())["app_password"] == rotated.password
    with targets.connect(rotated) as conn:
        assert Store.on(conn).start_run("build", "ghi").run_number == 2
    with pytest.raises(AuthenticationFailed):
        targets.connect(replace(rotated, password=old))

    # `report` reads as ci_reader and `retention` deletes as ci_app: the owner may not
    # log in, and both still work.
    admin = EmbeddedServer(home).admin_settings("postgres")
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER ROLE ci_user NOLOGIN")
    try:
        shown = run_cli("report", "--stack", "embedded", "--pipeline", "build", env=environ)
        pruned = run_cli("retention", "--stack", "embedded", "--keep-days", "1", env=environ)
    finally:
        with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER ROLE ci_user LOGIN")
    assert (shown.code, shown.err) == (0, "")
    assert shown.out.startswith("pipeline build: 2 runs, newest first\n")
    assert (pruned.code, pruned.err) == (0, "")
    assert pruned.out.startswith("stack embedded: deleted 0 runs, 0 stages, 0 jobs that ")


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.parametrize("then", ["running", "stopped"])
def test_a_start_cut_off_before_the_roles_get_new_passwords_gives_them_on_the_next(
    home: Path, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password rotated by removing it from server.json is stored before the role gets
    it; a start cut off between the two (Ctrl-C, a failed login) left server.json with a
    password the role never had, and every later start took it for set (helper-104). The
    next start, whether the server still runs or not, gives the roles their passwords."""
    server = EmbeddedServer(home)
    try:
        server.ensure_running()
        state_file = home / "embedded" / "server.json"
        state = json.loads(state_file.read_text())
        del state["app_password"]
        state_file.write_text(json.dumps(state))

        def cut_off(self: EmbeddedServer, conn: object, state: dict[str, object]) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(EmbeddedServer, "_set_role_passwords", cut_off)
            with pytest.raises(KeyboardInterrupt):
                server.ensure_running()
        if then == "stopped":
            server.stop()
        server.ensure_running()
        app = server.settings().for_role("app")
        assert app.password == json.loads(state_file.read_text())["app_password"]
        with psycopg.connect(app.conninfo()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("ci_app",)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.parametrize("damage", ["server.json removed", "PG_VERSION removed"])
def test_damaged_state_is_named_with_a_fix_that_keeps_the_data_until_asked(
    home: Path, damage: str
) -> None:
    """A state folder whose server.json (port, passwords) is gone while the server runs,
    or whose data lost its PG_VERSION: "remove the folder" was said with no stop first and
    no word that the data goes with it, and `status` said port None (helper-104). Now:
    what is missing, stop first, keep the data if it matters; the status line says the
    port is unknown."""
    server = EmbeddedServer(home)
    server.admin_settings()
    environ = {"CICD_DB_HOME": str(home)}
    try:
        if damage == "server.json removed":
            server.state_file.unlink()
            status = run_cli("embedded", "status", env=environ)
            assert status.code == 0 and "its port unknown (no server.json)" in status.out
            lacks = "no server.json (its port and passwords)"
        else:
            server.stop()
            (server.data_dir / "PG_VERSION").unlink()
            lacks = "no PG_VERSION (it is damaged)"
        refused = run_cli("embedded", "url", env=environ)
        assert (refused.code, refused.out) == (1, ""), refused
        assert refused.err == (
            f"error: {server.data_dir} holds a server's files but {lacks}, so nothing can log "
            "in to it; stop it (`cicd-db embedded stop`), then move "
            f"{home / 'embedded'} away (keep it if its data matters) and run again to create "
            "a fresh embedded server\n"
        )
        assert (server.data_dir / "base").is_dir()  # nothing of the data removed
    finally:
        server.stop()


def test_a_state_folder_with_a_line_break_in_its_path_is_refused_before_initdb(
    tmp_path: Path,
) -> None:
    """initdb fails on a line break in the data folder's path ("initdb failed: line/..."):
    refused up front, with the fix."""
    home = tmp_path / "a\nb"
    refused = run_cli("embedded", "start", env={"CICD_DB_HOME": str(home)})
    assert (refused.code, refused.out) == (2, ""), refused
    assert refused.err.count("\n") == 1 and "has a line break in its path" in refused.err
    assert not home.exists()


def test_a_disk_without_room_is_named_where_initdb_stopped_mid_sentence(tmp_path: Path) -> None:
    """A full disk or a size limit (here `ulimit -f`, for initdb alone) killed initdb
    mid-sentence: "initdb failed: creating configuration files ...", no fix (helper-104).
    The failure says where room is needed, and how to move the state folder."""
    import resource
    import shutil as shell_util

    from cicd_db.pgprocess import grant_traverse, run_tool, server_account, wheel_bin_dir

    work = tmp_path / "data"
    work.mkdir()
    if (account := server_account()) is not None:
        grant_traverse(work)
        grant_traverse(wheel_bin_dir())
        shell_util.chown(work, account, account)

    def small() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    with pytest.raises(EmbeddedServerError) as failed:
        run_tool(
            wheel_bin_dir(), "initdb", "-D", str(work), "--no-locale", cwd=tmp_path,
            preexec_fn=small,
        )  # fmt: skip
    said = str(failed.value)
    assert said.startswith("initdb failed: "), said
    assert said.endswith(
        f"; the disk of {tmp_path} is full or past a size limit: make room there, or set "
        "CICD_DB_HOME to a folder on a disk with room, and run again"
    ), said


@pytest.mark.slow
@pytest.mark.db
def test_what_is_done_to_its_database_and_roles_is_named_and_embedded_start_makes_them_again(
    home: Path,
) -> None:
    """The embedded server's database and roles are cicd-db's: a migration or a person
    that drops ci_local or changes a role's password left every command failing with
    "create it, or fix the database name in the URL" or "check the user and password of
    the target", and no URL was ever given. Each such damage is named with the command
    that mends it, and after `cicd-db embedded start` the command works again."""
    environ = {"CICD_DB_HOME": str(home)}
    assert run_cli("migrate", "--stack", "embedded", env=environ).code == 0
    remade_database = (
        "made again: database ci_local (it was gone; empty: apply the migrations, "
        "`cicd-db migrate --stack embedded`)"
    )
    no_grants = (
        "made again: role ci_reader (it was gone; the grants the migrations gave it are not "
        "made again: give them by hand, or move the state folder away to start afresh)"
    )
    damages = [
        (["DROP DATABASE ci_local"], ["migrate", "status"], [remade_database]),
        (["ALTER ROLE ci_user PASSWORD 'changed'"], ["migrate", "status"], []),
        (["ALTER ROLE ci_user NOLOGIN"], ["migrate", "status"], []),
        (["ALTER ROLE ci_reader PASSWORD 'changed'"], ["report", "--pipeline", "p"], []),
        (["ALTER ROLE ci_app NOLOGIN"], ["retention", "--keep-days", "1"], []),
        # The database and a role with it: the migrations grant the new role again.
        (
            ["DROP DATABASE ci_local", "DROP ROLE ci_reader"],
            ["report", "--pipeline", "p"],
            ["made again: role ci_reader (it was gone)", remade_database],
        ),
        # A role alone, its grants taken first (DROP ROLE refuses a role that has any):
        # made again without them, and said so.
        (
            ["DROP OWNED BY ci_reader", "DROP ROLE ci_reader"],
            ["report", "--pipeline", "p"],
            [no_grants],
        ),
    ]
    for statements, command, made in damages:
        damage = "; ".join(statements)
        for statement in statements:
            database = "ci_local" if statement.startswith("DROP OWNED") else "postgres"
            with psycopg.connect(
                EmbeddedServer(home).admin_settings(database).conninfo(), autocommit=True
            ) as conn:
                conn.execute(statement)
        failed = run_cli(*command, "--stack", "embedded", env=environ)
        assert failed.code == 2 and failed.out == "", (damage, failed)
        assert_one_line_error(failed.err, failed.err.removeprefix("error: ").rstrip("\n"))
        assert "run `cicd-db embedded start`, which " in failed.err, (damage, failed.err)
        assert "URL" not in failed.err and "PGPASSWORD" not in failed.err, failed.err
        started = run_cli("embedded", "start", env=environ)
        assert started.code == 0, (damage, started)
        lines = started.out.splitlines()
        assert lines[:-1] == made, lines
        if remade_database in made:
            assert run_cli("migrate", "--stack", "embedded", env=environ).code == 0
        if no_grants in made:  # as the line says: by hand
            with psycopg.connect(
                EmbeddedServer(home).admin_settings("ci_local").conninfo(), autocommit=True
            ) as conn:
                conn.execute("GRANT USAGE ON SCHEMA public TO ci_reader")
                conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO ci_reader")
        again = run_cli(*command, "--stack", "embedded", env=environ)
        assert again.code in (0, 1) and "embedded start" not in again.err, (damage, again)

    # A superuser password that is not the server's (server.json edited) is named as such.
    state_file = home / "embedded" / "server.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "superuser_password": "not-the-servers"}))
    refused = run_cli("embedded", "start", env=environ)
    assert refused.code != 0 and refused.out == "", refused
    assert refused.err.startswith("error: the embedded server refused its own superuser ("), refused
    assert "superuser_password is not the server's" in refused.err, refused.err
    assert "not-the-servers" not in refused.err and state["superuser_password"] not in refused.err
    state_file.write_text(json.dumps(state))


def test_only_a_refused_password_is_told_as_server_jsons_superuser_password(home: Path) -> None:
    """A superuser login that fails for any other reason (no server on the port, too many
    clients, a shutdown) was told as "superuser_password is not the server's"
    (helper-113): only a refused password is; the rest stays what it was."""
    state = {"port": free_port(), "superuser_password": "whatever"}
    with pytest.raises(psycopg.OperationalError) as failed:
        EmbeddedServer(home)._as_superuser(state)
    assert "superuser_password" not in str(failed.value)


@pytest.mark.parametrize("kind", ["not UTF-8", "/dev/zero", "FIFO", "huge"])
def test_a_state_file_that_is_no_small_json_file_is_named_not_read_forever(
    kind: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server.json not in UTF-8 failed as "unexpected UnicodeDecodeError"; a link to
    /dev/zero read until memory ran out; a FIFO hung every command (helper-115). Each is
    one line, exit 2, with the same advice as any damaged state file."""
    state_file = home / "embedded" / "server.json"
    state_file.parent.mkdir(parents=True)
    if kind == "not UTF-8":
        state_file.write_bytes(b'\xff{"port": 5}')
        why = "not JSON"
    elif kind == "/dev/zero":
        state_file.symlink_to("/dev/zero")
        why = "not a regular file"
    elif kind == "FIFO":
        os.mkfifo(state_file)
        why = "not a regular file"
    else:
        state_file.write_text(json.dumps({"port": 5, "padding": "x" * 100_000}))
        why = f"{state_file.stat().st_size:,} bytes, not a server's state"
    monkeypatch.setenv("CICD_DB_HOME", str(home))
    for command in ("start", "status", "url"):
        code, out, err = run_cli("embedded", command)
        assert (code, out) == (2, ""), (command, err)
        assert_one_line_error(err, f"cannot read {state_file} ({why}); it holds the server's ")
