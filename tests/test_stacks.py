"""Stack targets through the `pulumi` CLI boundary, with a stub `pulumi` on PATH.

The stub checks its arguments and its working folder, then prints what the real
`pulumi stack output --json --show-secrets --stack NAME` prints, or fails the way
the real one fails. The database behind the outputs is real.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from unittest import mock

import hypothesis
import pytest
from hypothesis import strategies as st

from cicd_db import migrations, stacks

from .fix_cli import MIGRATE_PY, run_cli
from .fix_db import Database
from .passwords import assert_nothing_of, hostile_urls
from .utils import MIGRATIONS, ROOT, examples

# What the real CLI (3.226.1 and later) prints and its exit codes, for each failure.
STUB = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
expected = ["stack", "output", "--json", "--show-secrets", "--non-interactive", "--stack"]
if args[:6] != expected or len(args) != 7:
    sys.exit(f"stub pulumi: unexpected arguments {{args}}")
if not Path("Pulumi.yaml").is_file():
    sys.exit("stub pulumi: not run from the project folder")
stack = args[6]

def fail(message, code):
    print("error: " + message, file=sys.stderr)
    sys.exit(code)

failure = os.environ.get("STUB_FAILURE")
if failure == "said":  # whatever the test has Pulumi say
    fail(os.environ["STUB_SAID"], int(os.environ.get("STUB_CODE", "1")))
if failure == "unreachable":
    fail('could not query backend for stack: Get "https://api.pulumi.com/api/user": '
         "dial tcp: lookup api.pulumi.com: no such host", 1)
if failure == "no-login":
    fail("PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions", 3)
if os.environ.get("STUB_NEEDS_PASSPHRASE"):
    if not os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
        fail("getting stack outputs: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or "
             "PULUMI_CONFIG_PASSPHRASE_FILE environment variables", 2)
    if os.environ["PULUMI_CONFIG_PASSPHRASE"] != os.environ["STUB_NEEDS_PASSPHRASE"]:
        fail("getting stack outputs: incorrect passphrase, please set PULUMI_CONFIG_PASSPHRASE to "
             "the correct passphrase or set PULUMI_CONFIG_PASSPHRASE_FILE to a file containing "
             "the passphrase", 2)
outputs = Path(os.environ["STUB_OUTPUTS"]) / f"{{stack}}.json"
if not outputs.is_file():
    fail(f"no stack named '{{stack}}' found", 6)
print(outputs.read_text())
"""


@pytest.fixture
def stub(tmp_path: Path) -> dict[str, str]:
    """Environment with the stub first on PATH; write <stack>.json under STUB_OUTPUTS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable = bin_dir / "pulumi"
    executable.write_text(STUB)
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "outputs").mkdir()
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_OUTPUTS": str(tmp_path / "outputs"),
        "CICD_DB_LOCAL": "",
    }


def deploy(stub: dict[str, str], stack: str, outputs: dict[str, object]) -> None:
    (Path(stub["STUB_OUTPUTS"]) / f"{stack}.json").write_text(json.dumps(outputs, indent=4))


@pytest.mark.parametrize("flags", [["--stack", "dev"], ["--local"]], ids=["stack-dev", "local"])
def test_dev_stack_outputs_pick_the_database(stub, database: Database, flags) -> None:
    deploy(stub, "dev", database.settings.outputs())
    completed = run_cli(*flags, env=stub, process=True, script=MIGRATE_PY)
    assert completed.code == 0, completed.err
    count = len(migrations.discover(MIGRATIONS))
    assert completed.out.splitlines()[-1].startswith(f"applied {count} migrations to stack dev in ")
    assert database.history() == list(range(1, count + 1))
    assert database.settings.password not in completed.out + completed.err


@pytest.mark.parametrize("value", ["Embedded", "embeded", " embedded", "docker"])
def test_a_cicd_db_local_of_another_value_is_refused_not_read_as_dev(stub, value: str) -> None:
    """A typo in CICD_DB_LOCAL must not quietly mean the dev stack."""
    result = run_cli("migrate", "status", "--local", env={**stub, "CICD_DB_LOCAL": value})
    assert (result.code, result.err) == (
        2,
        f"error: CICD_DB_LOCAL is {value!r}; set it to embedded (--local is the embedded "
        "server) or dev (the dev stack), or unset it\n",
    )


def test_a_cicd_db_local_of_dev_is_the_dev_stack(stub, database: Database) -> None:
    deploy(stub, "dev", database.settings.outputs())
    result = run_cli("migrate", "status", "--local", env={**stub, "CICD_DB_LOCAL": "dev"})
    assert result.code == 0, result.err


def test_prod_prefers_the_migration_url(stub, database: Database) -> None:
    outputs = database.settings.outputs()
    # The application endpoint is a pooler that is not even there; migrations go direct.
    outputs.update(
        host="127.0.0.1",
        port=1,
        database="db",
        user="app",
        password="pooled-secret",
        database_url="postgresql://app:pooled-secret@127.0.0.1:1/db?sslmode=disable",
        migration_database_url=database.url,
    )
    deploy(stub, "prod", outputs)
    refused = run_cli("migrate", "--stack", "prod", env=stub)
    assert (refused.code, refused.err) == (
        2,
        "error: stack prod is a remote database; add --yes "
        "to apply migrations to it (or use --local for the local one)\n",
    )
    completed = run_cli(
        "migrate", "--stack", "prod", "--yes", "--migrations-dir", str(MIGRATIONS), env=stub
    )
    assert completed.code == 0, completed.err
    assert database.history() == list(range(1, len(migrations.discover(MIGRATIONS)) + 1))


BACKEND = "the backend file://. (.pulumi/ in the repository root) of Pulumi.yaml"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {},
            f"error: Pulumi stack 'dev' does not exist in {BACKEND}; create it with `pulumi "
            "stack init dev` and deploy it with `pulumi up -s dev`, or point PULUMI_BACKEND_URL "
            "at the backend your team shares; without Docker, set CICD_DB_LOCAL=embedded so "
            "--local uses the embedded server\n",
        ),
        (
            {"PULUMI_BACKEND_URL": "s3://team-state/cicd"},
            "error: Pulumi stack 'dev' does not exist in the backend s3://team-state/cicd "
            "(PULUMI_BACKEND_URL); create it with `pulumi stack init dev` and deploy it with "
            "`pulumi up -s dev`, or point PULUMI_BACKEND_URL at the backend your team shares; "
            "without Docker, set CICD_DB_LOCAL=embedded so --local uses the embedded server\n",
        ),
        (
            {"STUB_NEEDS_PASSPHRASE": "right", "PULUMI_CONFIG_PASSPHRASE": ""},
            "error: Pulumi needs the passphrase of stack 'dev'; set PULUMI_CONFIG_PASSPHRASE (or "
            "PULUMI_CONFIG_PASSPHRASE_FILE) and run again\n",
        ),
        (
            {"STUB_NEEDS_PASSPHRASE": "right", "PULUMI_CONFIG_PASSPHRASE": "wrong"},
            "error: PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) is not the "
            "passphrase stack 'dev' was created with; get the right one from whoever created it "
            "(each stack has one passphrase, shared by everyone who uses it)\n",
        ),
        (
            {"STUB_FAILURE": "no-login"},
            f"error: Pulumi cannot log in to {BACKEND}; for Pulumi Cloud set PULUMI_ACCESS_TOKEN, "
            "for s3://, gs:// or azblob:// give the cloud's credentials, and run from the "
            "repository root so Pulumi.yaml's backend applies\n",
        ),
        (
            {"STUB_FAILURE": "unreachable"},
            f"error: Pulumi cannot reach {BACKEND}: error: could not query backend for stack: Get "
            '"https://api.pulumi.com/api/user": dial tcp: lookup api.pulumi.com: no such host; '
            "check the network and the URL\n",
        ),
    ],
    ids=[
        "missing-stack",
        "missing-stack-team-backend",
        "no-passphrase",
        "wrong-passphrase",
        "not-logged-in",
        "backend-unreachable",
    ],
)
def test_stack_errors_name_the_fix(stub, env: dict[str, str], message: str) -> None:
    result = run_cli("migrate", "status", "--local", env={**stub, **env})
    assert (result.code, result.out, result.err) == (2, "", message)


# A backend's password with what ends a URL where it stands in a message (a space, an
# `@`), and the ways a tool's message quotes a password.
BACKEND_PASSWORD = "p@ss w0rd/x"
SAID = [
    f"failed to connect postgresql://pulumi:{BACKEND_PASSWORD}@db.internal/state",
    'connecting: password "S3cr3tPass" was refused',
    '{"user": "pulumi", "password": "hunter2hunter2"}',
    "dial tcp: i/o timeout",
]


@pytest.mark.parametrize("said", SAID)
@pytest.mark.parametrize("code", [1, 6])
def test_no_piece_of_a_password_pulumi_or_its_backend_holds_is_printed(
    stub, said: str, code: int
) -> None:
    """The backend's URL (PULUMI_BACKEND_URL) named in the error, and whatever Pulumi's
    own error quotes: a password's pieces were printed where a space or an `@` in it
    ended the URL the masking looked for, and a quoted password in Pulumi's words was
    printed whole."""
    env = {
        **stub,
        "PULUMI_BACKEND_URL": f"postgres://pulumi:{BACKEND_PASSWORD}@db.internal/state",
        "STUB_FAILURE": "said",
        "STUB_SAID": said,
        "STUB_CODE": str(code),
    }
    result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert result.code == 2 and len(result.err.splitlines()) == 1, result
    for secret in ("p@ss", "w0rd", "S3cr3tPass", "hunter2hunter2"):
        assert secret not in result.out + result.err, result.err
    if code == 6:  # "no stack named": the backend is named, masked
        assert "the backend postgres://pulumi:***@db.internal/state" in result.err, result.err


def test_pulumis_access_token_and_passphrase_are_never_printed(stub) -> None:
    """Pulumi's own secrets in the environment, quoted by an error of the CLI or a plugin:
    masked as the backend's password is."""
    env = {
        **stub,
        "PULUMI_ACCESS_TOKEN": "pul-3f9a8b7c6d5e4f",
        "PULUMI_CONFIG_PASSPHRASE": "correct horse battery",
        "STUB_FAILURE": "said",
        "STUB_SAID": "[401] Unauthorized: invalid access token pul-3f9a8b7c6d5e4f "
        "(passphrase correct horse battery)",
        "STUB_CODE": "255",
    }
    result = run_cli("migrate", "status", "--stack", "prod", env=env)
    assert result.code == 2 and len(result.err.splitlines()) == 1, result
    assert_nothing_of(("pul-3f9a8b7c6d5e4f", "correct horse battery"), result.out + result.err)


def _wild_pulumi(tmp_path: Path, body: str) -> dict[str, str]:
    """An environment whose `pulumi` runs `body` (Python), whatever it is asked."""
    fake = tmp_path / "wild-bin" / "pulumi"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport os, subprocess, sys, time\n{body}\n")
    fake.chmod(0o755)
    return {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "CICD_DB_LOCAL": ""}


def test_json_nested_beyond_pythons_depth_is_told_as_not_json(tmp_path: Path) -> None:
    """Gave "unexpected RecursionError", exit 1."""
    env = _wild_pulumi(tmp_path, "sys.stdout.write('[' * 200000 + ']' * 200000)")
    result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith("error: `pulumi stack output --json --stack dev` printed "
                                 "something that is not JSON"), result.err  # fmt: skip


def test_output_beyond_the_limit_is_refused_and_its_process_stopped(tmp_path: Path) -> None:
    """All of Pulumi's output was held in memory, however much (3 GB seen): a
    read stops at READ_LIMIT, with one line, and the process goes."""
    pid_file = tmp_path / "pulumi.pid"
    env = _wild_pulumi(
        tmp_path,
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "while True:\n    sys.stdout.write('x' * 65536)",
    )
    with mock.patch.object(stacks, "READ_LIMIT", 2**20):
        result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith("error: `pulumi stack output --stack dev` printed more than 1 MiB")
    _gone_soon(int(pid_file.read_text()))


def test_a_pulumi_that_answers_and_exits_is_not_held_up_by_what_it_left(tmp_path: Path) -> None:
    """A CLI that printed its outputs and exited 0, leaving a process that holds its
    output open, was waited for until the timeout, and told as a backend that did not
    answer (review); that process goes with the read."""
    pid_file = tmp_path / "child.pid"
    env = _wild_pulumi(
        tmp_path,
        f"child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\nprint('{{}}')",
    )
    started = time.monotonic()
    with mock.patch.object(stacks, "READ_TIMEOUT_SECONDS", 20):
        result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert time.monotonic() - started < 10
    assert (result.code, result.out) == (2, ""), result
    assert "has no outputs: it was never deployed" in result.err, result.err
    _gone_soon(int(pid_file.read_text()))


def test_a_pulumi_that_hangs_goes_with_everything_it_started(tmp_path: Path) -> None:
    """After the read's timeout only the `pulumi` process itself was killed; a process it
    had started (a plugin, a credential helper) lived on."""
    pid_file = tmp_path / "child.pid"
    env = _wild_pulumi(
        tmp_path,
        f"child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\ntime.sleep(300)",
    )
    with mock.patch.object(stacks, "READ_TIMEOUT_SECONDS", 2):
        result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert "did not answer in 2 s" in result.err, result.err
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the process pulumi started outlived the read"


def _gone_soon(pid: int) -> None:
    """`pid` ends within 5 s (a signal is delivered, not waited for)."""
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), f"process {pid} outlived the read"


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed and not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("name", ["migration_database_url", "app_database_url"])
@pytest.mark.parametrize("value", [123, {"a": "b"}, ["postgresql://u@h/d"]])
def test_a_role_url_output_that_is_not_text_is_named(
    stub, database: Database, name: str, value: object
) -> None:
    """An output of the contract that is no string gave an internal error ("'int' object
    has no attribute 'strip'"): one line naming the output, exit 2."""
    deploy(stub, "dev", {**database.settings.outputs(), name: value})
    result = run_cli("migrate", "status", "--stack", "dev", env=stub)
    assert (result.code, result.out) == (2, ""), result
    assert result.err == (
        f"error: stack 'dev' output {name} is a {type(value).__name__}, not a URL; export it "
        "as the role's postgresql:// URL and run `pulumi up -s dev`\n"
    )


@pytest.mark.parametrize("said", ["stdout", "stderr"])
def test_pulumi_output_that_is_not_utf8_is_one_line(stub, tmp_path: Path, said: str) -> None:
    """Bytes that are not UTF-8 from the CLI gave "unexpected UnicodeDecodeError": JSON
    that is not UTF-8 is told as JSON that is not, and an error's bad bytes are shown
    replaced."""
    fake = tmp_path / "other-bin" / "pulumi"
    fake.parent.mkdir()
    if said == "stdout":
        fake.write_text("#!/bin/sh\nprintf '\\377\\376{}'\n")
    else:
        fake.write_text("#!/bin/sh\nprintf 'error: \\377 bad' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**stub, "PATH": f"{fake.parent}{os.pathsep}{stub['PATH']}"}
    result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert len(result.err.splitlines()) == 1 and "Unicode" not in result.err, result.err
    if said == "stdout":
        assert "printed something that is not JSON (as UTF-8)" in result.err, result.err


@hypothesis.settings(max_examples=examples(200), deadline=None)
@hypothesis.given(
    case=hostile_urls(),
    said=st.sampled_from(
        ["failed to connect {url}", "error: {url}: dial tcp: i/o timeout", "no stack named 'dev'"]
    ),
    code=st.sampled_from([1, 6]),
)
def test_no_run_of_a_backend_password_is_printed_whatever_its_url(
    case: tuple[str, str, str], said: str, code: int
) -> None:
    """The class beside the examples above: a backend URL with a password of any
    character, raw or encoded, delimiters and spaces put in it, as PULUMI_BACKEND_URL and
    quoted by Pulumi's error: no run of 4 characters of it is printed."""
    url, password, sslpassword = case
    with mock.patch.dict(os.environ, {"PULUMI_BACKEND_URL": url}):
        printed = (
            stacks.backend(ROOT) + "\n" + stacks._explain("dev", code, said.format(url=url), ROOT)
        )
    assert_nothing_of((password, sslpassword), printed)


def test_stack_never_deployed(stub) -> None:
    deploy(stub, "dev", {})
    result = run_cli("migrate", "status", "--stack", "dev", env=stub)
    assert (result.code, result.err) == (
        2,
        "error: stack 'dev' has no outputs: it was never deployed; run `pulumi up -s dev`\n",
    )


def test_stack_missing_outputs(stub) -> None:
    deploy(stub, "dev", {"host": "127.0.0.1", "port": 5432})
    result = run_cli("migrate", "status", "--stack", "dev", env=stub)
    assert (result.code, result.err) == (
        2,
        "error: stack 'dev' has no output database, user, password, sslmode, database_url; "
        "run `pulumi up -s dev` so it exports the connection contract\n",
    )


def test_without_pulumi_cli(tmp_path: Path) -> None:
    result = run_cli("migrate", "status", "--stack", "dev", env={"PATH": str(tmp_path)})
    assert result.code == 2
    assert result.err == (
        "error: reading stack 'dev' needs the pulumi command, not found on PATH; install the "
        "Pulumi CLI, or name the database another way: "
        "--database-url URL, DATABASE_URL, or --stack embedded; without Docker, set "
        "CICD_DB_LOCAL=embedded so --local uses the embedded server\n"
    )


def test_migrations_refuse_a_transaction_pooler(database: Database) -> None:
    pooled = database.url.replace(f":{database.settings.port}/", ":6543/")
    result = run_cli("migrate", "--database-url", pooled)
    assert result.code == 2
    assert result.err.startswith(
        "error: 127.0.0.1:6543 is a transaction pooler, where the migration lock does not hold;"
    )
    assert database.history() == []


def test_without_pulumi_cli_and_cicd_db_local_set_the_hint_is_not_to_set_it(tmp_path: Path) -> None:
    """`--stack dev` with CICD_DB_LOCAL=embedded already set was told to set it."""
    env = {"PATH": str(tmp_path), "CICD_DB_LOCAL": "embedded"}
    result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert result.code == 2
    assert result.err.endswith(
        "; without Docker, use --local (CICD_DB_LOCAL=embedded is set) or --stack embedded\n"
    ), result.err


def test_pulumi_runs_in_the_project_folder_with_no_input_and_no_update_check(
    tmp_path: Path,
) -> None:
    """The read runs `pulumi` in `root` (where Pulumi.yaml and its backend are), whatever
    the cwd; with nothing to read on its standard input, so that it cannot wait on a
    terminal or a pipe it was handed; and without its update check (a request to the
    network, and a line of stderr, at every read)."""
    env = _wild_pulumi(
        tmp_path,
        "import json\n"
        "print(json.dumps({'cwd': os.getcwd(),"
        " 'stdin': os.path.samestat(os.fstat(0), os.stat(os.devnull)),"
        " 'skip': os.environ.get('PULUMI_SKIP_UPDATE_CHECK')}))",
    )
    project = tmp_path / "project"
    project.mkdir()
    assert Path.cwd() != project
    reading, writing = os.pipe()  # an open pipe for our standard input, as a shell's
    saved = os.dup(0)
    os.dup2(reading, 0)
    try:
        with mock.patch.dict(os.environ, env):
            values = stacks.outputs("dev", root=project)
    finally:
        os.dup2(saved, 0)
        for descriptor in (saved, reading, writing):
            os.close(descriptor)
    assert values == {"cwd": str(project), "stdin": True, "skip": "true"}


def test_error_output_beyond_the_limit_is_refused_as_standard_output_is(tmp_path: Path) -> None:
    """The limit holds what both pipes hold: a CLI that floods its standard error is
    stopped at READ_LIMIT too, not read until the timeout."""
    env = _wild_pulumi(tmp_path, "while True:\n    sys.stderr.write('x' * 65536)")
    with (
        mock.patch.object(stacks, "READ_LIMIT", 2**20),
        mock.patch.object(stacks, "READ_TIMEOUT_SECONDS", 20),
    ):
        result = run_cli("migrate", "status", "--stack", "dev", env=env)
    # The message tells the limit from the timeout: no clock needed.
    assert (result.code, result.out) == (2, ""), result
    assert result.err == (
        "error: `pulumi stack output --stack dev` printed more than 1 MiB, which no stack's "
        "outputs need; check what the pulumi on PATH is\n"
    )


def test_a_process_pulumi_started_that_ignores_sigterm_goes_with_the_read(tmp_path: Path) -> None:
    """Everything the CLI started is killed, not asked to stop: a plugin that ignores
    SIGTERM does not outlive the read."""
    pid_file = tmp_path / "child.pid"
    env = _wild_pulumi(
        tmp_path,
        "child = subprocess.Popen([sys.executable, '-c', 'import os, signal, sys, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(300)\', '
        f"{str(pid_file)!r}])\n"
        f"while not os.path.getsize({str(pid_file)!r}) if os.path.exists({str(pid_file)!r}) "
        "else True:\n    time.sleep(0.01)\nprint('{}')",
    )
    with mock.patch.object(stacks, "READ_TIMEOUT_SECONDS", 20):
        result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert "has no outputs: it was never deployed" in result.err, result.err
    _gone_soon(int(pid_file.read_text()))


def test_a_pulumi_that_takes_seconds_to_answer_is_waited_for(tmp_path: Path) -> None:
    """A backend a few seconds away is no timeout: the grace for a CLI that exited is not
    the time a running one is given."""
    env = _wild_pulumi(tmp_path, "time.sleep(0.5)\nprint('{\"answer\": 42}')")
    with (
        mock.patch.dict(os.environ, env),
        mock.patch.object(stacks, "EXITED_GRACE_SECONDS", 0.1),  # five times shorter
    ):
        assert stacks.outputs("dev", root=ROOT) == {"answer": 42}


def test_outputs_of_exactly_the_limit_are_read(tmp_path: Path) -> None:
    """READ_LIMIT is what may be read: outputs of that many bytes are not refused."""
    document = '{"padding": "' + "x" * 1000 + '"}'
    env = _wild_pulumi(tmp_path, f"sys.stdout.write({document!r})")
    with mock.patch.dict(os.environ, env), mock.patch.object(stacks, "READ_LIMIT", len(document)):
        assert stacks.outputs("dev", root=ROOT) == {"padding": "x" * 1000}


def test_a_large_answer_is_read_whole_after_pulumi_exits(tmp_path: Path) -> None:
    """Outputs many times a pipe's size, written as the CLI exits: what is still in the
    pipe is its answer, read to the end, not cut at the exit."""
    env = _wild_pulumi(
        tmp_path, "import json\nsys.stdout.write(json.dumps({'big': 'x' * 4_000_000}))"
    )
    with mock.patch.dict(os.environ, env):
        assert stacks.outputs("dev", root=ROOT) == {"big": "x" * 4_000_000}


def test_a_pulumi_that_closes_its_output_and_hangs_is_a_timeout(tmp_path: Path) -> None:
    """Pipes closed is not an answer: the CLI is still waited for only until the timeout."""
    env = _wild_pulumi(tmp_path, "os.close(1)\nos.close(2)\ntime.sleep(300)")
    with mock.patch.object(stacks, "READ_TIMEOUT_SECONDS", 2):
        result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert "did not answer in 2 s" in result.err, result.err


@pytest.mark.parametrize(
    ("body", "told"),
    [
        ("pass", "stack 'dev' has no outputs: it was never deployed; run `pulumi up -s dev`"),
        ("print('[]')", "stack 'dev' outputs are not a JSON object; upgrade the Pulumi CLI"),
    ],
    ids=["nothing", "array"],
)
def test_a_pulumi_that_prints_no_object_is_told_in_one_line(
    tmp_path: Path, body: str, told: str
) -> None:
    result = run_cli("migrate", "status", "--stack", "dev", env=_wild_pulumi(tmp_path, body))
    assert (result.code, result.out, result.err) == (2, "", f"error: {told}\n")


def test_a_pulumi_that_cannot_start_is_told_with_the_install_hint(tmp_path: Path) -> None:
    """An executable `pulumi` whose interpreter is missing (a broken install)."""
    fake = tmp_path / "bin" / "pulumi"
    fake.parent.mkdir()
    fake.write_text("#!/nonexistent/interpreter\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "CICD_DB_LOCAL": ""}
    result = run_cli("migrate", "status", "--stack", "prod", env=env)
    assert (result.code, result.out) == (2, ""), result
    assert result.err == (
        f"error: could not run pulumi (No such file or directory); {stacks.INSTALL_HINT}\n"
    )


def test_without_pulumi_cli_another_stack_than_dev_gets_no_local_hint(tmp_path: Path) -> None:
    """--local's hint is for dev, which --local stands for; prod's refusal has none."""
    result = run_cli("migrate", "status", "--stack", "prod", env={"PATH": str(tmp_path)})
    assert result.err == (
        "error: reading stack 'prod' needs the pulumi command, not found on PATH; "
        f"{stacks.INSTALL_HINT}\n"
    )


@pytest.mark.parametrize(
    ("said", "told"),
    [
        ("no stack named 'dev' found", "Pulumi stack 'dev' does not exist in"),
        ("you are not logged in", "Pulumi cannot log in to"),
        ("run `pulumi login` first", "Pulumi cannot log in to"),
        ("PULUMI_ACCESS_TOKEN must be set", "Pulumi cannot log in to"),
        ("dial tcp 10.0.0.1:443: connect: network is unreachable", "Pulumi cannot reach"),
        ("something else broke", "`pulumi stack output --stack dev` failed (exit 255):"),
    ],
    ids=["no-stack", "not-logged-in", "pulumi-login", "access-token", "dial-tcp", "other"],
)
def test_an_older_pulumis_failure_is_told_by_its_words(stub, said: str, told: str) -> None:
    """Before 3.226.1 the CLI exited 255 whatever failed: its words say which."""
    env = {**stub, "STUB_FAILURE": "said", "STUB_SAID": said, "STUB_CODE": "255"}
    result = run_cli("migrate", "status", "--stack", "dev", env=env)
    assert result.err.startswith(f"error: {told} "), result.err


def test_the_password_of_pulumi_yamls_backend_is_not_printed(tmp_path: Path) -> None:
    """Pulumi's errors may quote the backend's URL or its password alone; Pulumi.yaml's
    backend is known as the environment's is."""
    project = tmp_path / "project"
    project.mkdir()
    url = "s3://reader:sup3r-s3cret-pw@bucket.example/state"
    (project / "Pulumi.yaml").write_text(f"name: p\nruntime: python\nbackend:\n  url: {url}\n")
    # Quoted as a URL, and as the password alone, percent-decoded (a URL's password
    # is known as such wherever it shows).
    env = _wild_pulumi(tmp_path, "sys.exit('error: access denied: sup3r-s3cret-pw')")
    with mock.patch.dict(os.environ, env), pytest.raises(stacks.StackError) as failed:
        stacks.outputs("dev", root=project)
    assert "sup3r-s3cret-pw" not in str(failed.value), failed.value


def test_what_a_process_pulumi_left_writes_within_the_grace_is_read(tmp_path: Path) -> None:
    """A CLI that exited leaves its pipes a moment (EXITED_GRACE_SECONDS) to drain: what
    a process it left writes in that moment is part of the answer."""
    env = _wild_pulumi(
        tmp_path,
        "if os.fork() == 0:\n    time.sleep(0.2)\n    sys.stderr.write('warning: slow\\n')\n"
        "    sys.stderr.flush()\n    time.sleep(0.3)\n    print('{\"late\": 1}')\n    os._exit(0)\n"
        "os._exit(0)",
    )
    # A grace far above the child's 0.5 s: the test is of what is read in it, not of
    # how a loaded machine schedules a sleeping child.
    with mock.patch.dict(os.environ, env), mock.patch.object(stacks, "EXITED_GRACE_SECONDS", 30):
        assert stacks.outputs("dev", root=ROOT) == {"late": 1}
