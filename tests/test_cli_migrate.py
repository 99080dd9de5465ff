"""`migrate` on bad input: one line on stderr, the right exit code, no traceback, no password."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .fix_cli import MIGRATE_PY, cli_command, run_cli
from .fix_db import Database
from .migrations.shared import THREE
from .utils import MIGRATIONS, write_migrations

SECRET = "s3cret-pass"


def assert_one_line_error(result, code: int, starts: str) -> None:
    assert result.code == code, result.err
    assert result.out == ""
    assert len(result.err.splitlines()) == 1, result.err
    assert result.err.startswith("error: " + starts), result.err
    assert SECRET not in result.err


@pytest.mark.parametrize(
    ("args", "code", "starts"),
    [
        (
            ["--database-url", f"postgresql://ci:{SECRET}@localhost:notaport/db"],
            2,
            "the --database-url 'postgresql://ci:***@localhost:notaport/db' has a port that is "
            "not a number from 1 to 65535",
        ),
        (
            ["--database-url", f"mysql://ci:{SECRET}@localhost/db"],
            2,
            "the --database-url must start with postgresql:// or postgres://",
        ),
        (["--stack", "staging"], 2, "unknown stack 'staging'; choose one of dev, embedded, prod"),
        (
            ["--stack", "prod"],
            2,
            "stack prod is a remote database; add --yes to apply migrations to it",
        ),
        (
            ["--stack", "dev", "--database-url", f"postgresql://ci:{SECRET}@h/db"],
            2,
            "--database-url and --stack both name a database; give only one of them",
        ),
        (["--target", "latest"], 2, "argument --target: 'latest' is not a migration version"),
        (["sideways"], 2, "argument COMMAND: invalid choice: 'sideways'"),
        (
            ["--lock-timeout", "-1"],
            2,
            "argument --lock-timeout: '-1' is not a finite number of seconds, 0 or more",
        ),
        (
            ["--lock-timeout", "nan"],
            2,
            "argument --lock-timeout: 'nan' is not a finite number of seconds, 0 or more",
        ),
        (
            ["up", "--lock-timeout", "inf"],
            2,
            "argument --lock-timeout: 'inf' is not a finite number of seconds, 0 or more",
        ),
        (["up", "--retries", "-2"], 2, "argument --retries: '-2' is not a whole number"),
        (
            ["up", "--retry-budget", "1e999"],
            2,
            "argument --retry-budget: '1e999' is not a finite number of seconds",
        ),
    ],
    ids=[
        "port",
        "scheme",
        "unknown-stack",
        "prod-without-yes",
        "two-targets",
        "bad-target",
        "bad-command",
        "negative-timeout",
        "nan-timeout",
        "infinite-timeout",
        "negative-retries",
        "infinite-retry-budget",
    ],
)
def test_bad_arguments(args: list[str], code: int, starts: str) -> None:
    assert_one_line_error(run_cli("migrate", *args), code, starts)


@pytest.mark.parametrize(
    "value",
    [
        f"app:{SECRET}@db.example.com/app",
        f"postgresql:/app:{SECRET}@db.example.com/app",
        f"postgresql://app:ss@{SECRET}@127.0.0.1:1/app",
        f"postgresql://app:pass {SECRET}@127.0.0.1:1/app",
        f"postgresql://app:{SECRET}@127.0.0.1:1/app?sslmode=bogus",
        f"postgresql://app:{SECRET}@127.0.0.1:1/app?foo=bar",
        SECRET,
    ],
    ids=["no-scheme", "one-slash", "raw-at", "space", "bad-sslmode", "unknown-parameter", "bare"],
)
def test_database_url_mistakes_never_print_the_password(value: str) -> None:
    for result in (
        run_cli("migrate", "status", env={"DATABASE_URL": value}),
        run_cli("migrate", "status", "--database-url", value),
    ):
        assert result.code == 2, result.err
        assert len(result.err.splitlines()) == 1, result.err
        assert result.err.startswith("error: the ")
        assert SECRET not in result.out + result.err


def test_password_from_pgpassword(database: Database) -> None:
    """GitLab cannot mask a URL: the password travels alone, masked, in PGPASSWORD."""
    settings = database.settings
    url = f"postgresql://{settings.user}@{settings.host}:{settings.port}/{settings.database}"
    result = run_cli(
        "migrate",
        "status",
        "--migrations-dir",
        str(MIGRATIONS),
        env={"DATABASE_URL": url, "PGPASSWORD": settings.password},
    )
    assert result.code == 0, result.err
    assert settings.password not in result.out + result.err
    wrong = run_cli("migrate", "status", env={"DATABASE_URL": url, "PGPASSWORD": "wrong-" + SECRET})
    assert wrong.code == 2
    assert SECRET not in wrong.err


def test_malformed_database_url_from_environment() -> None:
    result = run_cli("migrate", "status", env={"DATABASE_URL": f"postgres://ci:{SECRET}@h:x/db"})
    assert_one_line_error(
        result, 2, "the DATABASE_URL 'postgres://ci:***@h:x/db' has a port that is not a number"
    )


@pytest.mark.parametrize("host", ["127.0.0.1:1", "no-such-host.invalid:5432"])
def test_unreachable_host_fails_fast(host: str) -> None:
    started = time.monotonic()
    result = run_cli("migrate", "--database-url", f"postgresql://ci:{SECRET}@{host}/db")
    assert time.monotonic() - started < 10
    assert_one_line_error(result, 1, f"cannot connect to {host}: ")


def test_wrong_password_is_refused(database: Database) -> None:
    settings = database.settings
    url = (
        f"postgresql://{settings.user}:{SECRET}@{settings.host}:{settings.port}/{settings.database}"
    )
    result = run_cli("migrate", "status", "--database-url", url)
    assert_one_line_error(
        result,
        2,
        f"{settings.host}:{settings.port} refused user '{settings.user}': password authentication failed",
    )


@pytest.mark.parametrize(
    ("folder", "problem"),
    [("", "holds no <version>_<name>.sql"), ("nope", "does not exist")],
    ids=["empty", "missing"],
)
def test_unusable_migrations_folder(tmp_path: Path, folder: str, problem: str) -> None:
    path = tmp_path / folder
    result = run_cli(
        "migrate",
        "--database-url",
        f"postgresql://ci:{SECRET}@127.0.0.1:1/db",
        "--migrations-dir",
        str(path),
    )
    assert_one_line_error(result, 2, f"migrations folder {path} {problem}")


def test_file_without_version(tmp_path: Path, database: Database) -> None:
    folder = write_migrations(
        tmp_path, {"0001_ok.sql": "SELECT 1;\n", "add_index.sql": "SELECT 2;\n"}
    )
    result = run_cli("migrate", "--database-url", database.url, "--migrations-dir", str(folder))
    assert_one_line_error(
        result, 2, "migration file add_index.sql has no version; rename it to <version>_<name>.sql"
    )
    assert database.tables() == set()


def test_duplicate_version(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n", "1_b.sql": "SELECT 2;\n"})
    result = run_cli(
        "migrate", "status", "--database-url", "postgresql://h/db", "--migrations-dir", str(folder)
    )
    assert_one_line_error(result, 2, "migration files 0001_a.sql and 1_b.sql share version 1")


def test_scripts_migrate_is_the_same_command(database: Database) -> None:
    args = ["status", "--database-url", database.url, "--migrations-dir", str(MIGRATIONS)]
    completed = run_cli(*args, "--exit-code", process=True, script=MIGRATE_PY)
    assert completed.code == 3
    assert completed.out.splitlines()[1].split()[:3] == ["1", "plan_schema", "pending"]


def test_wait_returns_when_the_server_answers(database: Database) -> None:
    result = run_cli("migrate", "wait", "--database-url", database.url, "--timeout", "5")
    assert result.code == 0
    assert result.out == f"ready: {database.settings.redacted_url()}\n"
    assert database.settings.password not in result.out


def test_wait_gives_up_after_its_timeout() -> None:
    started = time.monotonic()
    result = run_cli(
        "migrate",
        "wait",
        "--timeout",
        "0.5",
        "--database-url",
        f"postgresql://ci:{SECRET}@127.0.0.1:1/db",
    )
    assert 0.5 <= time.monotonic() - started < 10
    assert_one_line_error(result, 1, "cannot connect to 127.0.0.1:1: Connection refused")


def test_wait_says_ready_in_json_with_json(database: Database) -> None:
    """Every command with output has --json: `wait` printed its text line under it."""
    ready = run_cli("migrate", "wait", "--json", "--database-url", database.url)
    assert ready.code == 0, ready
    said = json.loads(ready.out)
    assert (said["target"], said["ready"]) == ("--database-url", True), said
    assert said["url"].startswith("postgresql://") and database.settings.password not in ready.out


def test_options_work_before_and_after_the_command(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path, THREE)
    before = run_cli(
        "migrate",
        "--database-url",
        database.url,
        "--migrations-dir",
        str(folder),
        "status",
        "--json",
    )
    after = run_cli(
        "migrate",
        "status",
        "--json",
        "--database-url",
        database.url,
        "--migrations-dir",
        str(folder),
    )
    assert before.code == after.code == 0
    assert before.out == after.out
    assert '"pending": 3' in before.out


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_output_that_cannot_be_written_is_one_line(database: Database, tmp_path: Path) -> None:
    """A full disk where the output goes: one line on stderr, exit 1, no traceback."""
    folder = write_migrations(tmp_path, THREE)
    args = ["migrate", "--database-url", database.url, "--migrations-dir", str(folder), "status"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            cli_command(*args), stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert done.returncode == 1
    assert done.stderr == (
        "error: cannot write the output: No space left on device; the command ran to its end, "
        "and what it printed from there on is lost; check where it goes\n"
    )


@pytest.mark.parametrize("reader", ["closed pipe", "full disk", "closed output"])
def test_a_run_whose_lines_cannot_be_written_applies_every_file(
    database: Database, tmp_path: Path, reader: str
) -> None:
    """`migrate up | head -2` stopped the run at the third file, exit 1, without a word
    (the files after it pending); a full disk or a closed output stopped it after the
    first. How the lines are read never cuts a run: every file is applied, and only
    what is not a reader that left is told, in one line, exit 1."""
    folder = write_migrations(
        tmp_path, {f"{n:04d}_t{n}.sql": f"CREATE TABLE t{n} (i int);\n" for n in range(1, 41)}
    )
    args = cli_command("migrate", "--database-url", database.url, "--migrations-dir", str(folder), "up")  # fmt: skip
    if reader == "closed pipe":
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
            assert process.stdout is not None and process.stderr is not None
            process.stdout.close()  # whatever it writes meets a closed pipe
            code, err = process.wait(timeout=120), process.stderr.read()
    else:
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                args, stdout=full if reader == "full disk" else None, stderr=subprocess.PIPE,
                text=True, timeout=120,
                preexec_fn=(lambda: os.close(1)) if reader == "closed output" else None,
            )  # fmt: skip
        code, err = done.returncode, done.stderr
    assert database.history() == list(range(1, 41)), err
    if reader == "closed pipe":
        assert (code, err) == (0, "")
    else:
        said = "No space left on device" if reader == "full disk" else "standard output is closed"
        assert (code, err) == (
            1,
            f"error: cannot write the output: {said}; the command ran to its end, and what it "
            "printed from there on is lost; check where it goes\n",
        )


def test_a_reader_that_stops_reading_ends_the_run_quietly(
    database: Database, tmp_path: Path
) -> None:
    """`cicd-db ... | head -1`: the pipe closes; no error line, no traceback (400 lines:
    more than Python's buffer, so the write fails while the command runs)."""
    folder = write_migrations(
        tmp_path, {f"{n:04d}_t{n}.sql": f"CREATE TABLE t{n} (i int);\n" for n in range(1, 401)}
    )
    args = ["migrate", "--database-url", database.url, "--migrations-dir", str(folder), "status"]
    with subprocess.Popen(
        cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the first line: whatever it writes meets a closed pipe
        assert process.wait(timeout=60) in (0, 1)
        assert process.stderr.read() == ""


@pytest.mark.parametrize(
    "command",
    [
        ["migrate", "status"],
        ["migrate", "status", "--json"],
        ["report", "--pipeline", "p"],
        ["report", "--pipeline", "p", "--format", "json"],
        ["insights", "--days", "7"],
        ["insights", "--days", "7", "-o", "-"],
        ["schema", "dump"],
        ["schema", "dump", "-o", "/dev/stdout"],
        ["insights", "--days", "7", "--format", "json", "-o", "/dev/stdout"],
        ["migrate", "up", "--dump-schema", "/dev/stdout"],
    ],
    ids=" ".join,
)
def test_a_reader_that_left_is_no_error_for_any_command(
    migrated: Database, command: list[str]
) -> None:
    """`| head`, `| true`: a table or JSON through one path exited 0 and a document or a
    URL through another exited 1 (helper-112). A reader that left is not an error for any
    command: exit 0, nothing on stderr."""
    from cicd_db.store import Store

    with migrated.connect() as conn:
        Store.on(conn).start_run("p", "abc")
    args = cli_command(*command, "--database-url", migrated.url)
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        code, err = process.wait(timeout=120), process.stderr.read()
    assert (code, err) == (0, ""), command


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_a_closed_standard_error_stops_nothing_and_keeps_errors_out_of_stdout(
    database: Database, tmp_path: Path, json_output: bool
) -> None:
    """`migrate up 2>&-`: Python leaves sys.stderr None, and the run stopped before any
    file on `None.isatty()` ("unexpected AttributeError", exit 1), the error line on
    stdout, where print() falls back to (helper-144). Every file is applied; errors go
    where stderr went, nowhere; stdout holds only what it holds with stderr open."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n"})
    args = cli_command(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder),
        *(["--json"] if json_output else []), "up",
    )  # fmt: skip

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.close(2)
        )

    done = run()
    assert done.returncode == 0, done
    assert database.history() == [1]
    if json_output:
        assert json.loads(done.stdout)["applied"][0]["version"] == 1, done.stdout
    else:
        assert done.stdout.startswith("applied 0001_a.sql"), done.stdout
    write_migrations(folder, {"0002_b.sql": "SELECT 1/0;\n"})
    failed = run()
    assert failed.returncode == 1, failed
    assert "error" not in failed.stdout, failed.stdout
    assert database.history() == [1]


def test_a_standard_output_left_non_blocking_gets_everything(
    database: Database, tmp_path: Path
) -> None:
    """Some CI runners hand over a pipe whose descriptor is non-blocking: what the pipe
    could not take at once (64 kB) was lost, with exit 0 and no word (helper-144)."""
    import fcntl

    big = "SELECT 1;\n" + "-- " + "x" * 300_000 + "\n"
    folder = write_migrations(tmp_path, {"0001_big.sql": big})
    reading, writing = os.pipe()
    flags = fcntl.fcntl(writing, fcntl.F_GETFL)
    fcntl.fcntl(writing, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    args = cli_command(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder),
        "up", "--dry-run", "--sql",
    )  # fmt: skip
    with subprocess.Popen(args, stdout=writing, stderr=subprocess.PIPE) as process:
        os.close(writing)
        time.sleep(1)  # the pipe fills while no one reads
        with os.fdopen(reading, "rb") as out:
            printed = out.read()
        _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (0, b"")
    assert big.encode() in printed, len(printed)


@pytest.mark.parametrize("stop", ["a failing file", "SIGTERM during a file"])
def test_a_run_that_stops_tells_what_it_applied_in_its_json(
    database: Database, tmp_path: Path, stop: str
) -> None:
    """`migrate up --json` printed nothing when a file failed or the run was stopped, so a
    deploy job that reads it learned nothing of the files already applied (the lines
    without --json say them): the document comes with `completed: false`, the error on
    stderr, the exit code the error's (helper-144)."""
    import signal

    second = "SELECT 1/0;\n" if stop == "a failing file" else "SELECT pg_sleep(30);\n"
    folder = write_migrations(
        tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\n", "0002_b.sql": second}
    )
    args = ["migrate", "--database-url", database.url, "--migrations-dir", str(folder), "--json"]
    if stop == "a failing file":
        done = run_cli(*args, "up")
        code, out, err = done.code, done.out, done.err
    else:
        with subprocess.Popen(
            cli_command(*args, "up"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as process:
            _wait_for_the_runs_sleep(database, "30", "the second file never started")
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=60)
            code = process.returncode
    assert code == (1 if stop == "a failing file" else 143), (out, err)
    assert len(err.splitlines()) == 1, err
    document = json.loads(out)
    assert document["completed"] is False
    assert [each["version"] for each in document["applied"]] == [1]
    assert database.history() == [1]
    write_migrations(folder, {"0002_b.sql": "SELECT 2;\n"})
    done = run_cli(*args, "up")
    assert done.code == 0, done
    finished = json.loads(done.out)
    assert finished["completed"] is True
    assert [each["version"] for each in finished["applied"]] == [2]


def test_a_closed_standard_error_is_no_place_for_a_connection(
    database: Database, tmp_path: Path
) -> None:
    """`2>&-` left descriptor 2 free, and the runner's first connection took it: a warning
    libpq prints on stderr (a password file others may read, as a second connection
    opens) would go into that connection's protocol (helper-145). Descriptor 2 is held
    by /dev/null while the run works."""
    folder = write_migrations(tmp_path / "m", {"0001_a.sql": "SELECT pg_sleep(1);\n"})
    args = cli_command("migrate", "--database-url", database.url, "--migrations-dir", str(folder), "up")  # fmt: skip
    with subprocess.Popen(args, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2)) as process:
        _wait_for_the_runs_sleep(database, "1", "the file never started")
        held = os.readlink(f"/proc/{process.pid}/fd/2")
        process.communicate(timeout=60)
    assert held == os.devnull, held
    assert (process.returncode, database.history()) == (0, [1])


def test_a_schema_that_cannot_be_written_after_the_files_still_gets_the_json_document(
    database: Database, tmp_path: Path
) -> None:
    """`up --json --dump-schema PATH`, the path's folder replaced by a file while the files
    run: the error said the files were applied, stdout held nothing (helper-146)."""
    import shutil

    folder = write_migrations(tmp_path / "m", {"0001_a.sql": "SELECT pg_sleep(1);\n"})
    out = tmp_path / "out"
    out.mkdir()
    args = cli_command(
        "migrate", "--database-url", database.url, "--migrations-dir", str(folder), "--json",
        "up", "--dump-schema", str(out / "schema.sql"),
    )  # fmt: skip
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        _wait_for_the_runs_sleep(database, "1", "the file never started")
        shutil.rmtree(out)
        out.write_text("a file where the folder was\n")
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "the schema was not written" in stderr, stderr
    document = json.loads(stdout)
    assert (document["completed"], [a["version"] for a in document["applied"]]) == (False, [1])
    assert database.history() == [1]


def _wait_for_the_runs_sleep(database: Database, seconds: str, what: str) -> None:
    """Until a `pg_sleep(seconds)` of the run is active in `database`: not a session of a
    test before this one still ending, whose last query named the same sleep."""
    database.wait_for(
        f"SELECT FROM pg_stat_activity WHERE query LIKE '%pg_sleep({seconds})%' "
        "AND state = 'active' AND datname = current_database() AND pid <> pg_backend_pid()",
        what,
    )
