"""Reading a Pulumi stack's outputs through the `pulumi` CLI, and into settings.

One process per read: `pulumi stack output --json --show-secrets --stack NAME`,
run from the repository root (where `Pulumi.yaml` is). The Automation API would
start four CLI processes for the same answer, and importing Pulumi here would
put gRPC on the start-up path of every command.

`from_outputs` checks every output of the contract before any is used. Reads only;
never changes a stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from cicd_db.errors import ConfigError, StackError
from cicd_db.libpq import is_port
from cicd_db.redaction import password_candidates, redact, redact_output
from cicd_db.settings import (
    CONTRACT_NAMES,
    DATABASE,
    DATABASE_URL,
    DEFAULT_PORT,
    DEFAULT_SSLMODE,
    HOST,
    OPTIONAL_OUTPUT_NAMES,
    OUTPUT_NAMES,
    PASSWORD,
    PORT,
    SSLMODE,
    USER,
    ConnectionSettings,
    check_whole,
    from_mapping,
    from_url,
)

# The Pulumi CLI's exit codes (stable from v3.226.1; older versions exit 255 and are
# told apart by their message).
EXIT_CONFIGURATION = 2
EXIT_AUTHENTICATION = 3
EXIT_STACK_NOT_FOUND = 6
INSTALL_HINT = (
    "install the Pulumi CLI, "
    "or name the database another way: --database-url URL, DATABASE_URL, or --stack embedded"
)
# Where Docker and Pulumi are missing, --local is the embedded server.
LOCAL_HINT = "; without Docker, set CICD_DB_LOCAL=embedded so --local uses the embedded server"


def _local_hint() -> str:
    """LOCAL_HINT, or, where CICD_DB_LOCAL already says so, what it means."""
    if os.environ.get("CICD_DB_LOCAL") == "embedded":
        return "; without Docker, use --local (CICD_DB_LOCAL=embedded is set) or --stack embedded"
    return LOCAL_HINT


READ_TIMEOUT_SECONDS = 60
# Far more than any stack's outputs (a few kB), little enough to hold in memory.
READ_LIMIT = 16 * 2**20
# How long more output is waited for after the CLI exited, from a process it left holding
# the pipes (what is already waiting in them is read whatever the time).
EXITED_GRACE_SECONDS = 1.0


def outputs(stack: str, *, root: Path) -> dict[str, Any]:
    """The stack's outputs with secrets in the clear. Raises StackError with the fix."""
    executable = shutil.which("pulumi")
    if executable is None:
        raise StackError(
            f"reading stack {stack!r} needs the pulumi command, not found on PATH; "
            + INSTALL_HINT
            + (_local_hint() if stack == "dev" else "")
        )
    command = [
        *(executable, "stack", "output", "--json", "--show-secrets"),
        *("--non-interactive", "--stack", stack),
    ]
    try:
        code, stdout, stderr = _run(command, cwd=root)
    except subprocess.TimeoutExpired:
        raise StackError(
            f"`pulumi stack output --stack {stack}` did not answer in {READ_TIMEOUT_SECONDS} s; "
            f"check that {backend(root)} is reachable (`pulumi whoami -v`)"
        ) from None
    except _TooMuch:
        raise StackError(
            f"`pulumi stack output --stack {stack}` printed more than {READ_LIMIT // 2**20} MiB, "
            "which no stack's outputs need; check what the pulumi on PATH is"
        ) from None
    except OSError as error:
        raise StackError(f"could not run pulumi ({error.strerror}); " + INSTALL_HINT) from None
    if code != 0:
        # Only standard error is told: under --show-secrets standard output is the
        # secrets, whatever a failing wrapper or printer left of them there.
        raise StackError(_explain(stack, code, stderr.decode("utf-8", "replace"), root))
    try:
        values = json.loads(stdout or b"{}")
    except (ValueError, RecursionError):  # UnicodeDecodeError too: JSON is UTF-8; nested deep
        raise StackError(
            f"`pulumi stack output --json --stack {stack}` printed something that is not JSON "
            "(as UTF-8); upgrade the Pulumi CLI"
        ) from None
    if not isinstance(values, dict):
        raise StackError(f"stack {stack!r} outputs are not a JSON object; upgrade the Pulumi CLI")
    return values


class _TooMuch(Exception):
    pass


def _run(command: list[str], *, cwd: Path) -> tuple[int, bytes, bytes]:
    """Run `command`; its exit code, standard output and error (bytes: the JSON is
    decoded by json, an error as text). In a process group of its own, all of which is
    killed once the read ends: when the CLI exited (a process it left holding the pipes
    gets EXITED_GRACE_SECONDS to write more; what waits in them is read), outlasted READ_TIMEOUT_SECONDS or printed more than
    READ_LIMIT, or when this process is stopped (Ctrl-C). Nothing it started outlives
    the read."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None  # noqa: S101 - pipes
    out, err = bytearray(), bytearray()
    read = {process.stdout.fileno(): out, process.stderr.fileno(): err}
    try:
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        with selectors.DefaultSelector() as selector:
            for stream in (process.stdout, process.stderr):
                selector.register(stream, selectors.EVENT_READ)
            while selector.get_map():
                if process.poll() is not None:
                    # It has exited: what a child it left still holds the pipes open for
                    # is not its answer; a moment for the pipes to drain, no more.
                    deadline = min(deadline, time.monotonic() + EXITED_GRACE_SECONDS)
                left = deadline - time.monotonic()
                ready = selector.select(max(0.0, min(left, EXITED_GRACE_SECONDS)))
                if time.monotonic() >= deadline:
                    if process.poll() is None:
                        raise subprocess.TimeoutExpired(command, READ_TIMEOUT_SECONDS)
                    # The grace is for a process it left that holds the pipes and writes
                    # nothing: what is already in them is read, however late this
                    # process got the CPU back (a loaded machine), until none is waiting.
                    if not ready:
                        break
                for key, _ in ready:
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    read[key.fd] += chunk
                    if len(out) + len(err) > READ_LIMIT:
                        raise _TooMuch
        code = process.wait(max(0.0, deadline - time.monotonic()))
    finally:
        # The whole group, whatever the CLI's own end: nothing it started outlives the read.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()
    return code, bytes(out), bytes(err)


def settings(stack: str, *, root: Path) -> ConnectionSettings:
    """The connection settings a stack exports (docs/design.md, "The connection contract")."""
    values = outputs(stack, root=root)
    if not values:
        raise StackError(
            f"stack {stack!r} has no outputs: it was never deployed; run `pulumi up -s {stack}`"
        )
    try:
        return from_outputs(values, stack=stack)
    except ConfigError as error:
        raise StackError(str(error)) from None


def backend(root: Path, environ: Mapping[str, str] = os.environ) -> str:
    """Which backend `pulumi` reads stacks from here, in words: the CLI's own order. A
    URL's password is known as such (a URL with a space in it is no URL to mask)."""
    variable = environ.get("PULUMI_BACKEND_URL")
    if variable:
        return f"the backend {redact(variable, password_candidates(variable))} (PULUMI_BACKEND_URL)"
    url = _project_backend(root)
    if url:
        where = " (.pulumi/ in the repository root)" if url == "file://." else ""
        return f"the backend {redact(url, password_candidates(url))}{where} of Pulumi.yaml"
    return "the backend of `pulumi login`"


def _project_backend(root: Path) -> str | None:
    """The backend URL Pulumi.yaml names, if it names one."""
    try:
        project = yaml.safe_load((root / "Pulumi.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None
    # Pulumi reads the file and says what is wrong with it; here a file of another
    # shape (`backend: 5`, a list) names no backend.
    section = project.get("backend") if isinstance(project, dict) else None
    url = section.get("url") if isinstance(section, dict) else None
    return str(url) if url else None


# Pulumi's own secrets, which an error of the CLI (or of a plugin) may quote.
SECRET_VARIABLES = ("PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE")


def _backend_secrets(root: Path, environ: Mapping[str, str] = os.environ) -> list[str]:
    """What may be a password in the backend's URLs, which Pulumi's errors quote, and
    the access token and passphrase of the environment."""
    return (
        password_candidates(environ.get("PULUMI_BACKEND_URL"))
        + password_candidates(_project_backend(root))
        + [environ[name] for name in SECRET_VARIABLES if environ.get(name)]
    )


def _explain(stack: str, code: int, stderr: str, root: Path) -> str:
    """Turn the CLI's failure into one line that names the fix."""
    # The backend's URL is what Pulumi's errors quote: its password known as such.
    text = redact_output(stderr.strip(), _backend_secrets(root))
    lowered = text.lower()
    where = backend(root)
    if code == EXIT_STACK_NOT_FOUND or "no stack named" in lowered:
        fix = (
            f"create it with `pulumi stack init {stack}` and deploy it with `pulumi up -s {stack}`"
            ", or point PULUMI_BACKEND_URL at the backend your team shares"
        )
        if stack == "dev":
            fix += _local_hint()
        return f"Pulumi stack {stack!r} does not exist in {where}; {fix}"
    if "incorrect passphrase" in lowered:
        return (
            f"PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) is not the passphrase "
            f"stack {stack!r} was created with; get the right one from whoever created it "
            "(each stack has one passphrase, shared by everyone who uses it)"
        )
    if "passphrase" in lowered:
        return (
            f"Pulumi needs the passphrase of stack {stack!r}; "
            "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) and run again"
        )
    if (
        code == EXIT_AUTHENTICATION
        or "pulumi login" in lowered
        or "not logged in" in lowered
        or "pulumi_access_token" in lowered
    ):
        return (
            f"Pulumi cannot log in to {where}; for Pulumi Cloud set PULUMI_ACCESS_TOKEN, for "
            "s3://, gs:// or azblob:// give the cloud's credentials, and run from the "
            "repository root so Pulumi.yaml's backend applies"
        )
    if any(
        sign in lowered
        for sign in ("dial tcp", "no such host", "connection refused", "i/o timeout", "tls:")
    ):
        return (
            f"Pulumi cannot reach {where}: {text.splitlines()[-1]}; check the network and the URL"
        )
    first = text.splitlines()[-1] if text else "nothing on standard error"
    return f"`pulumi stack output --stack {stack}` failed (exit {code}): {first}"


def _host_key(host: str) -> str:
    """A host as compared: DNS names in any case are one (a socket folder's path is not)."""
    return host if host.startswith("/") else host.lower()


def from_outputs(outputs: Mapping[str, Any], *, stack: str) -> ConnectionSettings:
    """Settings from a stack's outputs; ConfigError names the outputs that are missing."""
    missing = [name for name in OUTPUT_NAMES if outputs.get(name) in (None, "")]
    if missing:
        raise ConfigError(
            f"stack {stack!r} has no output {', '.join(missing)}; "
            f"run `pulumi up -s {stack}` so it exports the connection contract"
        )
    # Each field of its JSON type, before any is read: a 0, false, [] or {} would read as
    # "not given", and libpq would take PGHOST, PGPORT or PGPASSWORD in its place.
    for name in OUTPUT_NAMES:
        value = outputs[name]
        if name == PORT:  # a number, or its digits (a value read from Pulumi config is text)
            if not (type(value) is int and 0 < value < 65536) and not (
                isinstance(value, str) and is_port(value)
            ):
                kind = "out of range" if type(value) is int else _json_kind(value)
                raise ConfigError(
                    f"stack {stack!r} output {PORT} is {kind}, not a port number "
                    f"from 1 to 65535; export the port as a number and run `pulumi up -s {stack}`"
                )
        elif not isinstance(value, str):
            raise ConfigError(
                f"stack {stack!r} output {name} is {_json_kind(value)}, not text; export it as "
                f"a string and run `pulumi up -s {stack}`"
            )
    for name in sorted(CONTRACT_NAMES):
        if isinstance(value := outputs.get(name), str):
            check_whole(value, f"stack {stack!r} output {name}")
    settings = from_mapping(outputs, what=f"stack {stack!r} outputs")
    # The URL output carries the parameters the fields cannot (sslrootcert, options, ...).
    url = from_url(outputs[DATABASE_URL], what=f"stack {stack!r} output {DATABASE_URL}")
    for name in OPTIONAL_OUTPUT_NAMES:
        # Left out (or null), the owner's URL serves that role. Anything else must be the
        # role's URL: a false, 0, [] or "" read as "left out" gave the reader the owner's
        # rights without a word.
        if outputs.get(name) is None:
            continue
        if not isinstance(outputs[name], str) or not outputs[name].strip():
            kind = "empty" if isinstance(outputs[name], str) else _json_kind(outputs[name])
            raise ConfigError(
                f"stack {stack!r} output {name} is {kind}, not a URL; export it as the "
                f"role's postgresql:// URL (or leave it out, and the owner's serves that "
                f"role) and run `pulumi up -s {stack}`"
            )
        from_url(outputs[name], what=f"stack {stack!r} output {name}")  # fails now
    # The fields and the URL spell one endpoint twice. Where both name a part and differ,
    # which database a command reaches would depend on which spelling it read: refused.
    # A port or sslmode the URL leaves out is libpq's default, as the outputs write it
    # (ConnectionSettings.outputs); a host name is a DNS name, whatever its case.
    # A part the URL gives empty (`?host=`, `?user=`) is a value to libpq (its default
    # socket, the login's own name), and would win over the field: told as a difference.
    # (An empty port is libpq's default, 5432, not PGPORT: told only where the field differs.)
    for keyword, name in (("host", HOST), ("port", PORT), ("dbname", DATABASE), ("user", USER)):
        if keyword == "port" and (settings.port or DEFAULT_PORT) == DEFAULT_PORT:
            continue
        if (keyword, "") in url.parameters:
            raise ConfigError(
                f"stack {stack!r} outputs {name} and {DATABASE_URL} name different {name}s "
                f"({DATABASE_URL} gives ?{keyword}= empty, which libpq reads as its default); "
                f"export both from the same values and run `pulumi up -s {stack}`"
            )
    for name, given, in_url, shown in (
        (HOST, _host_key(settings.host), _host_key(url.host), (settings.host, url.host)),
        (PORT, settings.port, url.first_port() or DEFAULT_PORT, None),
        (DATABASE, settings.database, url.database, None),
        (USER, settings.user, url.user, None),
        (PASSWORD, settings.password, url.password, ()),
        (SSLMODE, settings.sslmode, url.sslmode or DEFAULT_SSLMODE, None),
    ):
        if given and in_url and given != in_url:
            pair = (given, in_url) if shown is None else shown
            # A field may hold the password (two outputs swapped): masked, as everywhere.
            values = redact(
                " ({!r} and {!r})".format(*pair) if pair else "",
                [*settings.secrets(), *url.secrets()],
            )
            raise ConfigError(
                f"stack {stack!r} outputs {name} and {DATABASE_URL} name different "
                f"{name}s{values}; export both from the same values and run "
                f"`pulumi up -s {stack}`"
            )
    return replace(settings, parameters=url.parameters)


def _json_kind(value: object) -> str:
    """What a JSON value is, in words, and never the value: it may be a password."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number" if isinstance(value, int) else "a fraction"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"
