"""The Pulumi program of infra/, run for real under the Pulumi SDK's mocks.

No Pulumi CLI and no Docker engine exist on the machines this is built on, so
these tests check what the program asks the engine for (resources, their
inputs, the exports and which of them are secret), not a deployed database.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest

from cicd_db import settings as contract

from .conftest import ROOT

INFRA = ROOT / "infra"


@dataclass
class Recorder(pulumi.runtime.Mocks):
    """Fake engine: every resource is created with its inputs as outputs."""

    resources: list[pulumi.runtime.MockResourceArgs] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = f"generated-{args.name}"
        if args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = "sha256:0123"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


class Monitor(pulumi.runtime.mocks.MockMonitor):
    """The SDK's mock engine, also noting each resource's retainOnDelete option."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.retained: dict[str, bool] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.retained[request.name] = bool(request.retainOnDelete)
        return super().RegisterResource(request)


@dataclass
class Program:
    recorder: Recorder
    monitor: Monitor
    exports: dict[str, Any]


@pytest.fixture(autouse=True)
def infra_on_path() -> Iterator[None]:
    sys.path.insert(0, str(INFRA))
    yield
    sys.path.remove(str(INFRA))


def run_program(
    stack: str,
    config: dict[str, str],
    secret_keys: list[str] = (),  # type: ignore[assignment]
    *,
    program: Path = INFRA / "__main__.py",
) -> Program:
    """Run infra/__main__.py as `pulumi up -s STACK` would, with `config` injected."""
    recorder = Recorder()
    monitor = Monitor(recorder)
    pulumi.runtime.set_mocks(
        recorder, project="cicd-db", stack=stack, preview=False, monitor=monitor
    )
    pulumi.runtime.set_all_config(
        {f"cicd-db:{key}": value for key, value in config.items()},
        [f"cicd-db:{key}" for key in secret_keys],
    )
    exports: dict[str, Any] = {}
    original = pulumi.export
    pulumi.export = lambda name, value: exports.__setitem__(name, value)  # type: ignore[assignment]
    try:
        runpy.run_path(str(program), run_name="__main__")
    finally:
        pulumi.export = original
    return Program(recorder, monitor, exports)


DEV_CONFIG = {"postgresMajor": "17", "port": "5432", "keepVolume": "true"}
PROD_URL = "postgresql://app:cloud-secret@ep-calm-tree.eu-central-1.aws.neon.tech/cicd_main"


def outputs_of(program: Program) -> tuple[dict[str, Any], dict[str, bool]]:
    values: dict[str, Any] = {}
    secrets: dict[str, bool] = {}

    async def gather() -> None:
        for name, value in program.exports.items():
            output = pulumi.Output.from_input(value)
            secrets[name] = await output.is_secret()
            values[name] = await output.future()

    @pulumi.runtime.test
    def settle() -> pulumi.Output[None]:
        return pulumi.Output.from_input(gather())

    settle()
    return values, secrets


def test_dev_stack_exports_the_contract_with_secrets_hidden() -> None:
    values, secrets = outputs_of(run_program("dev", DEV_CONFIG))
    assert tuple(values) == contract.OUTPUT_NAMES
    assert {name for name, secret in secrets.items() if secret} == {"password", "database_url"}
    assert values["host"] == "127.0.0.1"
    assert values["port"] == 5432
    assert (values["database"], values["user"]) == ("ci_local", "ci_user")
    assert values["password"] == "generated-postgres-app-password"
    assert values["database_url"] == (
        "postgresql://ci_user:generated-postgres-app-password@127.0.0.1:5432/ci_local"
        "?sslmode=disable"
    )


def test_prod_stack_exports_the_same_names() -> None:
    dev, _ = outputs_of(run_program("dev", DEV_CONFIG))
    prod, secrets = outputs_of(run_program("prod", {"databaseUrl": PROD_URL}, ["databaseUrl"]))
    assert tuple(prod) == tuple(dev) == contract.OUTPUT_NAMES
    assert {name for name, secret in secrets.items() if secret} == {"password", "database_url"}
    assert prod["database_url"] == PROD_URL + "?sslmode=require"
    assert (prod["host"], prod["port"], prod["user"], prod["sslmode"]) == (
        "ep-calm-tree.eu-central-1.aws.neon.tech",
        5432,
        "app",
        "require",
    )


@pytest.mark.parametrize(
    ("major", "path"),
    [
        ("15", "/var/lib/postgresql/data"),
        ("17", "/var/lib/postgresql/data"),
        ("18", "/var/lib/postgresql"),
    ],
)
def test_dev_container(major: str, path: str) -> None:
    program = run_program("dev", {**DEV_CONFIG, "postgresMajor": major, "port": "6543"})
    outputs_of(program)
    (container,) = program.recorder.of_type("docker:index/container:Container")
    inputs = container.inputs
    assert inputs["ports"] == [{"internal": 5432, "external": 6543, "ip": "127.0.0.1"}]
    assert [v["containerPath"] for v in inputs["volumes"]] == [path]
    assert inputs["healthcheck"]["tests"][0] == "CMD-SHELL"
    assert "pg_isready" in inputs["healthcheck"]["tests"][1]
    assert inputs["wait"] is True
    assert inputs["restart"] == "unless-stopped"
    (upload,) = inputs["uploads"]
    assert upload["file"].startswith("/docker-entrypoint-initdb.d/")
    assert "CREATE ROLE ci_user LOGIN NOSUPERUSER" in upload["content"]
    assert "ALTER ROLE ci_user SET timezone TO 'UTC';" in upload["content"]
    assert "CREATE DATABASE ci_local OWNER ci_user;" in upload["content"]
    # 0755, not `executable` (0744, root's): the entrypoint, running as postgres, runs an
    # init script it may execute and sources any other one, shell options and all.
    assert upload["permissions"] == "0755"
    assert "executable" not in upload
    (image,) = program.recorder.of_type("docker:index/remoteImage:RemoteImage")
    assert image.inputs["name"].startswith(f"postgres:{major}.")
    assert image.inputs["keepLocally"] is True


def test_dev_volume_is_kept_unless_config_says_otherwise() -> None:
    kept = run_program("dev", DEV_CONFIG)
    outputs_of(kept)
    dropped = run_program("dev", {**DEV_CONFIG, "keepVolume": "false"})
    outputs_of(dropped)
    (kept_volume,) = kept.recorder.of_type("docker:index/volume:Volume")
    assert kept_volume.inputs["name"] == "cicd-db-dev-pgdata"
    assert kept.monitor.retained["postgres-data"] is True
    assert dropped.monitor.retained["postgres-data"] is False
    assert kept.monitor.retained["postgres-postgres"] is False


# --- Rule 5: the backend is the repository root's, whatever folder pulumi ran in.


def copy_of_the_program(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "infra").mkdir(parents=True)
    for path in INFRA.glob("*.py"):
        shutil.copy(path, root / "infra" / path.name)
    shutil.copy(ROOT / "Pulumi.yaml", root)
    return root


@pytest.mark.parametrize("folder", ["infra", "db/migrations"])
def test_stray_state_left_by_pulumi_in_a_subfolder_is_refused(tmp_path: Path, folder: str) -> None:
    root = copy_of_the_program(tmp_path)
    (root / ".pulumi" / "stacks" / "cicd-db").mkdir(parents=True)
    (root / ".pulumi" / "stacks" / "cicd-db" / "dev.json").write_text("{}")
    stray = root / folder / ".pulumi" / "stacks" / "cicd-db"
    stray.mkdir(parents=True)
    (stray / "dev.json").write_text("{}")
    (stray / "dev.json.bak").write_text("{}")
    with pytest.raises(pulumi.RunError) as raised:
        run_program("dev", DEV_CONFIG, program=root / "infra" / "__main__.py")
    message = str(raised.value)
    assert message.startswith(
        f"{folder}/.pulumi holds Pulumi state (stacks: dev) because `pulumi` ran in {folder}/"
    )
    assert "Run pulumi from the repository root only" in message
    assert f"cd {folder} && pulumi destroy -s STACK && pulumi stack rm STACK" in message


def test_the_roots_state_and_an_empty_stray_folder_are_fine(tmp_path: Path) -> None:
    root = copy_of_the_program(tmp_path)
    (root / ".pulumi" / "stacks" / "cicd-db").mkdir(parents=True)
    (root / "infra" / ".pulumi").mkdir()
    (root / ".venv" / "lib" / ".pulumi" / "stacks").mkdir(parents=True)
    (root / ".venv" / "lib" / ".pulumi" / "stacks" / "x.json").write_text("{}")
    program = run_program("dev", DEV_CONFIG, program=root / "infra" / "__main__.py")
    outputs_of(program)
    assert program.recorder.of_type("docker:index/volume:Volume")


def test_stray_state_is_never_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "infra/.pulumi/stacks/cicd-db/dev.json", ".pulumi/meta.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == ["infra/.pulumi/stacks/cicd-db/dev.json", ".pulumi/meta.yaml"]


def test_committed_stack_files_follow_the_passphrase_policy() -> None:
    """dev: no salt and no secrets (each person's passphrase is their own)."""
    dev = (ROOT / "Pulumi.dev.yaml").read_text().splitlines()
    assert not [line for line in dev if line.startswith("encryptionsalt:")]
    assert not [line for line in dev if line.strip().startswith("secure:")]
    prod = (ROOT / "Pulumi.prod.yaml").read_text().splitlines()
    # prod: encrypted values only ever with the salt that decrypts them.
    if [line for line in prod if line.strip().startswith("secure:")]:
        assert [line for line in prod if line.startswith("encryptionsalt: v1:")]


def test_prod_pooler_needs_a_direct_url() -> None:
    pooled = "postgresql://app:pw-secret@aws-0-eu.pooler.supabase.com:6543/postgres"
    direct = "postgresql://app:pw-secret@db.abc.supabase.co:5432/postgres?sslmode=verify-full"
    program = run_program(
        "prod", {"databaseUrl": pooled, "directUrl": direct}, ["databaseUrl", "directUrl"]
    )
    values, secrets = outputs_of(program)
    assert tuple(values) == (*contract.OUTPUT_NAMES, "migration_database_url")
    assert values["migration_database_url"] == direct
    assert secrets["migration_database_url"] is True
    with pytest.raises(pulumi.RunError, match=r"transaction pooler .*6543.*cicd-db:directUrl"):
        run_program("prod", {"databaseUrl": pooled}, ["databaseUrl"])


@pytest.mark.parametrize(
    ("config", "secret_keys", "message"),
    [
        (
            {},
            [],
            "stack prod has no database URL; set it with: pulumi config set --secret "
            "cicd-db:databaseUrl 'postgresql://USER:PASSWORD@HOST/DATABASE\\?sslmode=require' -s prod",
        ),
        (
            {"databaseUrl": "mysql://app:pw-secret@db.example.com/cicd"},
            ["databaseUrl"],
            "cicd-db:databaseUrl must start with postgresql:// or postgres://",
        ),
        (
            {"databaseUrl": PROD_URL + "?sslmode=disable"},
            ["databaseUrl"],
            "sslmode=disable, which does not encrypt",
        ),
        (
            {"databaseUrl": "postgresql://app@db.example.com/cicd"},
            ["databaseUrl"],
            "needs a user and a password",
        ),
        ({"databaseUrl": PROD_URL}, [], "cicd-db:databaseUrl is stored in clear text"),
    ],
    ids=["missing", "not-postgres", "sslmode-disable", "no-password", "not-secret"],
)
def test_prod_refuses(config: dict[str, str], secret_keys: list[str], message: str) -> None:
    with pytest.raises(pulumi.RunError, match=message) as raised:
        run_program("prod", config, secret_keys)
    assert "pw-secret" not in str(raised.value)
    assert "cloud-secret" not in str(raised.value)


def test_insecure_sslmode_allowed_when_config_says_so() -> None:
    values, _ = outputs_of(
        run_program(
            "prod",
            {"databaseUrl": PROD_URL + "?sslmode=disable", "allowInsecure": "true"},
            ["databaseUrl"],
        )
    )
    assert values["sslmode"] == "disable"
