"""Stack targets through the `pulumi` CLI boundary, with a stub `pulumi` on PATH.

The stub checks its arguments and its working folder, then prints what the real
`pulumi stack output --json --show-secrets --stack NAME` prints, or fails the way
the real one fails. The database behind the outputs is real.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import hypothesis
import psycopg.conninfo
import pytest
from hypothesis import strategies as st

from cicd_db import migrations, stacks
from cicd_db.errors import ConfigError
from cicd_db.settings import OUTPUT_NAMES, SSLMODES, ConnectionSettings, from_url

from .fix_cli import MIGRATE_PY, run_cli
from .fix_db import Database
from .passwords import NAME_CHARACTERS, assert_nothing_of, hostile_urls
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


@pytest.mark.parametrize(
    "name", ["migration_database_url", "app_database_url", "reader_database_url"]
)
@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (123, "a number"),
        ({"a": "b"}, "an object"),
        (["postgresql://u@h/d"], "a list"),
        # Read as "left out", these gave the role the owner's URL without a word
        # (helper-104): the reader and the writer could then change the schema.
        (False, "true or false"),
        (0, "a number"),
        ([], "a list"),
        ("", "empty"),
        ("  ", "empty"),
    ],
)
def test_a_role_url_output_that_is_not_a_url_is_named(
    stub, database: Database, name: str, value: object, kind: str
) -> None:
    """An optional output of the contract is the role's URL, or left out (then the owner's
    serves that role): anything else is one line naming the output, exit 2, before any
    command connects as whoever it would have fallen back to."""
    deploy(stub, "dev", {**database.settings.outputs(), name: value})
    for command in (("migrate", "status"), ("report", "--pipeline", "build")):
        result = run_cli(*command, "--stack", "dev", env=stub)
        assert (result.code, result.out) == (2, ""), result
        assert result.err == (
            f"error: stack 'dev' output {name} is {kind}, not a URL; export it as the role's "
            "postgresql:// URL (or leave it out, and the owner's serves that role) and run "
            "`pulumi up -s dev`\n"
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


def test_an_answer_waiting_in_the_pipe_is_read_however_late_the_reader_comes(
    tmp_path: Path,
) -> None:
    """The grace after the CLI's exit was counted to the read's end: a reader that got the
    CPU back only after the grace (a loaded machine; seen in a full test run, 4 MB cut to
    its first megabytes) stopped with the answer still in the pipe, and called it not
    JSON. Here the reader comes back only once the CLI has exited, and the grace is 0."""
    document = json.dumps({"answer": "x" * 30_000})  # within a pipe's 64 kB: no reader needed
    env = _wild_pulumi(tmp_path, f"sys.stdout.write({document!r})")

    class LateReader(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.wait()

    with (
        mock.patch.dict(os.environ, env),
        mock.patch.object(stacks, "EXITED_GRACE_SECONDS", 0),
        mock.patch.object(stacks.subprocess, "Popen", LateReader),
    ):
        assert stacks.outputs("dev", root=ROOT) == {"answer": "x" * 30_000}


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


OUTPUTS = {
    "host": "db.example.com",
    "port": 6543,
    "database": "app",
    "user": "ci",
    "password": "pw",
    "sslmode": "require",
    "database_url": "postgresql://ci:pw@db.example.com:6543/app?sslmode=require&options=-c%20x%3D1",
}


def test_from_outputs_takes_the_parameters_from_the_url() -> None:
    settings = stacks.from_outputs(OUTPUTS, stack="prod")
    assert settings == ConnectionSettings(
        "db.example.com", 6543, "app", "ci", "pw", "require", parameters=(("options", "-c x=1"),)
    )


def test_from_outputs_names_every_missing_output() -> None:
    outputs = {**OUTPUTS, "password": "", "host": None}
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs(outputs, stack="prod")
    assert str(raised.value) == (
        "stack 'prod' has no output host, password; "
        "run `pulumi up -s prod` so it exports the connection contract"
    )


def test_from_outputs_names_the_stack_in_a_bad_url() -> None:
    with pytest.raises(ConfigError, match=r"^the stack 'qa' output database_url must start"):
        stacks.from_outputs({**OUTPUTS, "database_url": "mysql://h/db"}, stack="qa")


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("host", "db2.example.com", "('db2.example.com' and 'db.example.com')"),
        ("port", 5432, "(5432 and 6543)"),
        ("database", "other", "('other' and 'app')"),
        ("user", "admin", "('admin' and 'ci')"),
        ("sslmode", "disable", "('disable' and 'require')"),
    ],
)
def test_from_outputs_refuses_fields_that_disagree_with_the_url(
    name: str, value: object, shown: str
) -> None:
    """A command must not reach one database by the URL and name another by the fields."""
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, name: value}, stack="prod")
    assert str(raised.value) == (
        f"stack 'prod' outputs {name} and database_url name different {name}s {shown}; "
        "export both from the same values and run `pulumi up -s prod`"
    )


def test_from_outputs_takes_a_host_in_another_case_and_libpqs_defaults_as_agreeing() -> None:
    url = "postgresql://ci:pw@db.example.com/app"
    outputs = {**OUTPUTS, "host": "DB.Example.com", "port": 5432, "sslmode": "prefer"}
    read = stacks.from_outputs({**outputs, "database_url": url}, stack="prod")
    assert (read.host, read.port, read.sslmode) == ("DB.Example.com", 5432, "prefer")
    with pytest.raises(ConfigError, match=r"^stack 'prod' outputs port and database_url"):
        stacks.from_outputs({**outputs, "port": 6543, "database_url": url}, stack="prod")


_JSON_OF_ANOTHER_TYPE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@hypothesis.settings(max_examples=examples(200))
@hypothesis.given(
    name=st.sampled_from(OUTPUT_NAMES),
    value=_JSON_OF_ANOTHER_TYPE.filter(lambda v: v not in (None, "")),
)
# Found in review: 0, false, [] and {} read as "not given", and libpq then took
# PGHOST, PGPORT or PGPASSWORD: a stack connected to neither endpoint it named.
@hypothesis.example(name="host", value=0)
@hypothesis.example(name="port", value=0)
@hypothesis.example(name="password", value=False)
@hypothesis.example(name="database", value=[])
def test_an_output_of_another_json_type_is_refused_not_read_as_missing(
    name: str, value: object
) -> None:
    """Every field of the contract is text but the port, a number from 1 to 65535. A value
    of another type is refused, naming the output and its type, never the value."""
    valid = (
        isinstance(value, str)
        if name != "port"
        else (
            type(value) is int and 0 < value < 65536  # type: ignore[operator]
        )
        or (
            isinstance(value, str)
            and value.isascii()
            and value.isdigit()
            and len(value) <= 5
            and 0 < int(value) < 65536
        )
    )
    hypothesis.assume(not valid)
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, name: value}, stack="prod")
    kinds = "null|true or false|a number|a fraction|text|a list|an object|out of range"
    wanted = "a port number from 1 to 65535" if name == "port" else "text"
    assert re.fullmatch(
        rf"stack 'prod' output {name} is ({kinds}), not {wanted}; export .* `pulumi up -s prod`",
        str(raised.value),
    ), raised.value


@pytest.mark.parametrize("field", ["user", "database", "host"])
def test_a_field_holding_the_password_is_masked_in_the_mismatch(field: str) -> None:
    """Two outputs swapped (the password exported as the user): the message that names
    the two values hides the password, found in review."""
    secret = "Sekr3t-PW.x"
    outputs = {
        **OUTPUTS,
        "password": secret,
        "database_url": f"postgresql://ci:{secret}@db.example.com:6543/app?sslmode=require",
        field: secret,
    }
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs(outputs, stack="dev")
    message = str(raised.value)
    assert f"outputs {field} and database_url name different" in message
    assert_nothing_of((secret, "----"), message)


def test_from_outputs_refuses_a_password_that_disagrees_and_shows_neither() -> None:
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, "password": "other-secret"}, stack="prod")
    message = str(raised.value)
    assert message.startswith("stack 'prod' outputs password and database_url name different")
    assert "other-secret" not in message and ":pw@" not in message and "'pw'" not in message


# What may be in a role's name without ending it where a password could follow: letters
# and digits of any script, spaces, signs that are no separator, and punctuation and
# symbols beyond ASCII that stand for none (a typographic apostrophe, a middle dot).


_HOSTS = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z") | st.sampled_from(
    ["::1", "127.0.0.1", "/run/postgresql", "h1,h2"]
)


@hypothesis.settings(max_examples=examples(100), deadline=None)
@hypothesis.given(
    host=_HOSTS,
    port=st.none() | st.integers(1, 65535),
    database=st.text(NAME_CHARACTERS, min_size=1, max_size=12),
    user=st.text(NAME_CHARACTERS, min_size=1, max_size=12),
    password=st.text(min_size=1, max_size=12).filter(lambda p: "\x00" not in p),
    sslmode=st.none() | st.sampled_from(SSLMODES),
    changed=st.sampled_from(["host", "port", "database", "user", "password", "sslmode"]),
)
def test_outputs_read_back_whole_and_one_changed_field_is_refused(
    host: str,
    port: int | None,
    database: str,
    user: str,
    password: str,
    sslmode: str | None,
    changed: str,
) -> None:
    """What a stack exports (ConnectionSettings.outputs, as infra/ writes it) reads back as
    the same endpoint; any one field changed after is refused, naming the field and never
    the password, also a port or sslmode the URL leaves to libpq's default."""
    given = ConnectionSettings(host, port, database, user, password, sslmode)
    outputs = given.outputs()
    read = stacks.from_outputs(outputs, stack="s")
    assert (read.host, read.database, read.user, read.password) == (
        host,
        database,
        user,
        password,
    )
    assert read.port == (port or 5432)  # the contract's port is one number, libpq's default if none
    assert read.sslmode == (sslmode or "prefer")
    other = {
        "host": host + "x" if "," not in host else "h3",
        "port": (port or 5432) % 65535 + 1,
        "database": database + "x",
        "user": user + "x",
        "password": password + "x",
        "sslmode": "verify-full" if sslmode != "verify-full" else "disable",
    }[changed]
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**outputs, changed: other}, stack="s")
    message = str(raised.value)
    assert message.startswith(f"stack 's' outputs {changed} and database_url name different")
    if changed == "password":
        assert message == (
            "stack 's' outputs password and database_url name different passwords; "
            "export both from the same values and run `pulumi up -s s`"
        )


def test_from_outputs_names_the_stack_in_a_bad_output() -> None:
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, "port": "x"}, stack="prod")
    assert str(raised.value).startswith(
        "stack 'prod' output port is text, not a port number from 1 to 65535"
    )
    # Its digits as text are a port (a value read from Pulumi config is text).
    assert stacks.from_outputs({**OUTPUTS, "port": "6543"}, stack="prod").port == 6543


def test_outputs_of_several_hosts_name_the_first_port() -> None:
    settings = from_url("postgresql://u:pw@h1:5433,h2:5434/db?sslmode=require")
    outputs = settings.outputs()
    assert (outputs["host"], outputs["port"]) == ("h1,h2", 5433)
    assert from_url(outputs["database_url"]) == settings
    assert stacks.from_outputs(outputs, stack="prod").conninfo() == settings.conninfo()


def test_each_role_resolves_its_own_url_and_one_url_is_one_role() -> None:
    """docs/security.md: a stack's app and reader URLs for the store and reports; one URL
    (DATABASE_URL) gives every part the same role; their passwords are redacted too."""
    from cicd_db.settings import APP, OWNER, READER
    from cicd_db.stacks import from_outputs

    owner = ConnectionSettings("db.example.com", 5432, "ci", "ci_user", "owner-Pass", "require")
    outputs = {
        **owner.outputs(),
        "app_database_url": "postgresql://ci_app:app-Pass@db.example.com/ci?sslmode=require",
        "reader_database_url": "postgresql://ci_reader:reader-Pass@db.example.com/ci",
    }
    resolved = from_outputs(outputs, stack="prod")
    assert [resolved.for_role(role).user for role in (OWNER, APP, READER)] == [
        "ci_user",
        "ci_app",
        "ci_reader",
    ]
    assert {"app-Pass", "reader-Pass"} <= set(resolved.secrets())
    one = from_url("postgresql://u:one-Pass@h/db")
    assert one.for_role(OWNER) == one.for_role(APP) == one.for_role(READER) == one


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("port", 0, "out of range"),
        ("port", 65536, "out of range"),
        ("port", True, "true or false"),
        ("port", 6543.0, "a fraction"),
        ("port", [6543], "a list"),
        ("port", {"n": 6543}, "an object"),
        ("host", 0, "a number"),
        ("host", 1.5, "a fraction"),
        ("password", False, "true or false"),
        ("database", [], "a list"),
        ("sslmode", {}, "an object"),
    ],
    ids=[
        "port0", "port65536", "porttrue", "portfloat", "portlist", "portobject",
        "hostint", "hostfloat", "passwordfalse", "databaselist", "sslmodeobject",
    ],
)  # fmt: skip
def test_an_output_of_another_type_is_named_by_its_kind(
    name: str, value: object, kind: str
) -> None:
    """Which kind the refusal names, value by value (the property test accepts any kind).
    null never reaches it: an output that is null is missing."""
    wanted = "a port number from 1 to 65535" if name == "port" else "text"
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, name: value}, stack="prod")
    message = str(raised.value)
    assert message.startswith(f"stack 'prod' output {name} is {kind}, not {wanted}; "), message


def test_a_bad_field_or_optional_url_is_named_with_the_stack() -> None:
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, "host": "pw@db.example.com"}, stack="prod")
    assert str(raised.value).startswith("the stack 'prod' outputs has a host with '@'"), (
        raised.value
    )
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, "app_database_url": "mysql://x"}, stack="prod")
    assert "stack 'prod' output app_database_url" in str(raised.value), raised.value


def test_a_password_that_disagrees_is_named_without_values() -> None:
    with pytest.raises(ConfigError) as raised:
        stacks.from_outputs({**OUTPUTS, "password": "other-secret"}, stack="prod")
    assert str(raised.value) == (
        "stack 'prod' outputs password and database_url name different passwords; export both "
        "from the same values and run `pulumi up -s prod`"
    )


@hypothesis.settings(max_examples=examples(100), deadline=None)
@hypothesis.given(
    content=st.one_of(
        st.sampled_from(
            [
                b"backend: 5\n",
                b'backend: "file://."\n',
                b"backend: [1, 2]\n",
                b"backend:\n  url: 7\n",
                b"- a list\n",
                b"\xff\xfe name: x\n",
                b"name: [unclosed\n",
                b"",
            ]
        ),
        st.binary(max_size=60),
    )
)
def test_any_pulumi_yaml_names_a_backend_or_none_and_never_fails(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    """`backend: 5`, a backend that is a string, a file not in UTF-8: every --stack
    command failed with "unexpected AttributeError" or "UnicodeDecodeError" before
    Pulumi was even asked (helper-115). Whatever Pulumi.yaml holds, cicd-db's reading of
    its backend (for messages and for secrets to hide) says one or none; Pulumi itself
    says what is wrong with the file."""
    root = tmp_path_factory.mktemp("project")
    (root / "Pulumi.yaml").write_bytes(content)
    said = stacks.backend(root, environ={})
    assert said.startswith("the backend "), said


@hypothesis.settings(max_examples=examples(150), deadline=None)
@hypothesis.given(
    secret=st.text(NAME_CHARACTERS, min_size=6, max_size=14).filter(
        # An unquoted value ends at white space, of any kind, or one of these.
        lambda s: not any(c.isspace() for c in s) and not set(s) & set(",;)'\\\"")
    ),
    form=st.sampled_from(
        [
            "sslpassword={s}",
            "password: {s}",
            "passwd={s}",
            "pwd: {s}",
            "token={s}",
            "passphrase: {s}",
            "postgresql://a:{s}@h/d ({s})",
            "password '{s}'",
        ]
    ),
)
def test_no_secret_pulumis_error_quotes_is_printed_whatever_its_key(secret: str, form: str) -> None:
    """Pulumi's stderr quoted by the stack's error: `sslpassword=x`, `password: x`, a URL's
    password quoted again beside it were printed (helper-115). Whatever key names it,
    quoted or not, no run of 4 characters of the secret is printed."""
    said = "error: program failed: " + form.format(s=secret)
    printed = stacks._explain("dev", 1, said, ROOT)
    assert_nothing_of((secret,), printed)


# A keyword the URL gives empty is a value to libpq (`?host=` is the default socket,
# `?user=` the login's name, `?dbname=` the user's database), not "not given".
@pytest.mark.parametrize("keyword", ["host", "user", "dbname", "port", "hostaddr"])
def test_a_keyword_the_url_output_gives_empty_is_compared_with_its_field(keyword: str) -> None:
    outputs = {
        "host": "db.example.com",
        "port": 5432,
        "database": "ci",
        "user": "ci_user",
        "password": "pw-secret",
        "sslmode": "require",
        "database_url": "postgresql://ci_user:pw-secret@db.example.com:5432/ci"
        f"?sslmode=require&{keyword}=",
    }
    try:
        read = stacks.from_outputs(outputs, stack="prod")
    except ConfigError:
        return  # refused: the fields and the URL disagree
    # Accepted: then it connects where the fields say (`?port=` is libpq's 5432, as the
    # field says here: accepted, not told as a difference).
    assert keyword in ("port", "hostaddr"), keyword
    params = psycopg.conninfo.conninfo_to_dict(read.conninfo())
    # (a port given empty is libpq's default, 5432, as the field says)
    port = params["port"] or "5432"
    assert (params["host"], port, params["dbname"], params["user"]) == (
        "db.example.com",
        "5432",
        "ci",
        "ci_user",
    )


# Text libpq cannot take whole: a NUL ends a C string (libpq reads the connection string
# up to it, and every keyword after it is lost: sslmode, sslrootcert, connect_timeout);
# a lone surrogate (valid JSON, `"\ud800"`) cannot be encoded at all.
VERIFIED_OUTPUTS = {
    "host": "db.example.com",
    "port": 5432,
    "database": "ci",
    "user": "ci_user",
    "password": "pw-secret",
    "sslmode": "verify-full",
    "database_url": "postgresql://db.example.com:5432/ci?sslmode=verify-full&sslrootcert=%2Fca.pem",
}


@hypothesis.settings(max_examples=examples(100))
@hypothesis.given(
    name=st.sampled_from(["host", "database", "user", "password"]),
    bad=st.sampled_from(["\x00", "\ud800", "\udc80"]),
    where=st.integers(0, 8),
)
def test_a_text_output_libpq_cannot_take_whole_is_refused_not_cut(
    name: str, bad: str, where: int
) -> None:
    """Refused in one line (ConfigError), or passed to libpq whole: never a connection
    string that libpq reads without the sslmode the stack exports."""
    outputs = dict(VERIFIED_OUTPUTS)
    value = outputs[name]
    outputs[name] = value[:where] + bad + value[where:]
    try:
        read = stacks.from_outputs(outputs, stack="prod")
    except ConfigError:
        return
    try:
        params = psycopg.conninfo.conninfo_to_dict(read.conninfo())
    except UnicodeError:
        pytest.fail(
            "a text output that cannot be encoded reached the connection (exit 1, 'unexpected')"
        )
    assert params.get("sslmode") == "verify-full"
    assert params.get("sslrootcert") == "/ca.pem"


@pytest.mark.parametrize("output", ["database_url", "app_database_url", "reader_database_url"])
def test_a_url_output_with_a_nul_is_refused_not_read_up_to_it(output: str) -> None:
    outputs = {
        **VERIFIED_OUTPUTS,
        "database_url": "postgresql://db.example.com:5432/ci?sslmode=verify-full",
        output: "postgresql://ci_user:pw-secret@db.example.com:5432/ci\x00?sslmode=verify-full",
    }
    # Refused as the outputs are read, not when a command first connects as the role.
    with pytest.raises(ConfigError, match=f"output {output} holds a NUL character") as raised:
        stacks.from_outputs(outputs, stack="prod")
    assert "pw-secret" not in str(raised.value)


def _pulumi_that_prints(tmp_path: Path, stdout: bytes, stderr: bytes, code: int) -> dict[str, str]:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    (folder / "out").write_bytes(stdout)
    (folder / "err").write_bytes(stderr)
    fake = folder / "pulumi"
    fake.write_text(f"#!/bin/sh\ncat '{folder}/err' >&2\ncat '{folder}/out'\nexit {code}\n")
    fake.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "CICD_DB_LOCAL": ""}


@hypothesis.settings(max_examples=examples(20))
@hypothesis.given(
    key=st.sampled_from(["dbPassword", "adminPassword", "token", "PGPASSWORD", "value"]),
    code=st.sampled_from([1, 2, 255]),
    indent=st.sampled_from([None, 2]),
)
def test_what_pulumi_prints_on_standard_output_is_never_quoted_when_it_fails(
    tmp_path_factory: pytest.TempPathFactory, key: str, code: int, indent: int | None
) -> None:
    """Under --show-secrets, standard output is the secrets: a failing pulumi's error is
    told from its standard error, never from its output (which `_explain` quoted when
    standard error was empty)."""
    secret = "Sekr3t-9f8e7d6c"
    printed = json.dumps(
        {key: secret, "host": "h"} if indent is None else {"a": 1, key: secret}, indent=indent
    )
    env = _pulumi_that_prints(tmp_path_factory.mktemp("p"), printed.encode(), b"", code)
    result = run_cli("migrate", "status", "--stack", "prod", env=env)
    assert result.code == 2 and len(result.err.splitlines()) == 1, result
    assert "Sekr3t" not in result.err + result.out, result.err
