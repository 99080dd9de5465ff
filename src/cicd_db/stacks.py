"""Reading a Pulumi stack's outputs through the `pulumi` CLI.

One process per read: `pulumi stack output --json --show-secrets --stack NAME`,
run from the repository root (where `Pulumi.yaml` is). The Automation API would
start four CLI processes for the same answer, and importing Pulumi here would
put gRPC on the start-up path of every command.

Reads only; never changes a stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from cicd_db.errors import ConfigError, StackError
from cicd_db.settings import ConnectionSettings, from_outputs, redact

INSTALL_HINT = (
    "install the Pulumi CLI (https://www.pulumi.com/docs/install/), "
    "or name the database another way: --database-url URL, DATABASE_URL, or --stack embedded"
)
# Where Docker and Pulumi are missing, --local is the embedded server.
LOCAL_HINT = "; without Docker, set CICD_DB_LOCAL=embedded so --local uses the embedded server"
READ_TIMEOUT_SECONDS = 60


def outputs(stack: str, *, root: Path) -> dict[str, Any]:
    """The stack's outputs with secrets in the clear. Raises StackError with the fix."""
    executable = shutil.which("pulumi")
    if executable is None:
        raise StackError(
            f"reading stack {stack!r} needs the pulumi command, not found on PATH; "
            + INSTALL_HINT
            + (LOCAL_HINT if stack == "dev" else "")
        )
    try:
        completed = subprocess.run(
            [executable, "stack", "output", "--json", "--show-secrets", "--stack", stack],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=READ_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
    except subprocess.TimeoutExpired:
        raise StackError(
            f"`pulumi stack output --stack {stack}` did not answer in {READ_TIMEOUT_SECONDS} s; "
            "check that its backend is reachable (`pulumi whoami -v`)"
        ) from None
    except OSError as error:
        raise StackError(f"could not run pulumi ({error.strerror}); " + INSTALL_HINT) from None
    if completed.returncode != 0:
        raise StackError(_explain(stack, completed.stderr or completed.stdout))
    try:
        values = json.loads(completed.stdout or "{}")
    except ValueError:
        raise StackError(
            f"`pulumi stack output --json --stack {stack}` printed something that is not JSON; "
            "upgrade the Pulumi CLI"
        ) from None
    if not isinstance(values, dict):
        raise StackError(f"stack {stack!r} outputs are not a JSON object; upgrade the Pulumi CLI")
    return values


def settings(stack: str, *, root: Path) -> ConnectionSettings:
    """The connection settings a stack exports (the contract of DESIGN.md)."""
    values = outputs(stack, root=root)
    if not values:
        raise StackError(
            f"stack {stack!r} has no outputs: it was never deployed; run `pulumi up -s {stack}`"
        )
    try:
        return from_outputs(values, stack=stack)
    except ConfigError as error:
        raise StackError(str(error)) from None


def _explain(stack: str, stderr: str) -> str:
    """Turn the CLI's failure into one line that names the fix."""
    text = redact(stderr.strip())
    lowered = text.lower()
    if "no stack named" in lowered or ("not found" in lowered and "stack" in lowered):
        fix = (
            f"create it with `pulumi stack init {stack}` and deploy it with `pulumi up -s {stack}`"
        )
        if stack == "dev":
            fix += (
                "; without Docker, set CICD_DB_LOCAL=embedded so --local uses the embedded server"
            )
        return f"Pulumi stack {stack!r} does not exist; {fix}"
    if "passphrase" in lowered:
        return (
            f"Pulumi needs the passphrase of stack {stack!r}; "
            "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) and run again"
        )
    if "pulumi login" in lowered or "not logged in" in lowered:
        return "Pulumi has no backend; run `pulumi login --local` in the repository root"
    first = text.splitlines()[-1] if text else "no message"
    return f"`pulumi stack output --stack {stack}` failed: {first}"
