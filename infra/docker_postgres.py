"""Stack `dev`: PostgreSQL in Docker on this machine, bound to 127.0.0.1 only."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from cicd_db import settings as contract

# One pinned tag per major: a rebuilt image never changes under a stack.
IMAGE_TAGS = {
    15: "15.14-bookworm",
    16: "16.10-bookworm",
    17: "17.6-bookworm",
    18: "18.0-trixie",
}
SUPERUSER = "postgres"
CONTAINER_PORT = 5432
INIT_SCRIPT_PATH = "/docker-entrypoint-initdb.d/10-cicd-db.sh"
# rwxr-xr-x: the image's entrypoint runs an executable *.sh init script, and sources
# (runs inside itself, as the postgres user, with our shell options) one it cannot execute.
SCRIPT_PERMISSIONS = "0755"


def data_path(major: int) -> str:
    """Where the image keeps its data: the image's VOLUME moved in PostgreSQL 18."""
    return "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"


def init_script() -> str:
    """Creates ci_user (owner of ci_local, not a superuser) with the plan's role settings.

    The image runs it once, on an empty volume; the password comes from the
    container's environment so it is never written into the script.
    """
    role_settings = "\n".join(
        f"ALTER ROLE {contract.LOCAL_USER} SET {name} TO '{value}';"
        for name, value in contract.LOCAL_ROLE_SETTINGS
    )
    return f"""#!/bin/bash
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \\
     --set=password="$CICD_DB_APP_PASSWORD" <<'SQL'
CREATE ROLE {contract.LOCAL_USER} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'password';
{role_settings}
CREATE DATABASE {contract.LOCAL_DATABASE} OWNER {contract.LOCAL_USER};
GRANT ALL PRIVILEGES ON DATABASE {contract.LOCAL_DATABASE} TO {contract.LOCAL_USER};
SQL
"""


class DockerPostgres(pulumi.ComponentResource):
    """A postgres container, its named volume and generated passwords.

    `connection` holds the connection contract's outputs, keyed by their names.
    """

    def __init__(
        self,
        name: str,
        *,
        major: int,
        port: int,
        keep_volume: bool,
        image_tag: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("cicd-db:local:DockerPostgres", name, None, opts)
        if image_tag is None and major not in IMAGE_TAGS:
            majors = ", ".join(str(m) for m in IMAGE_TAGS)
            raise pulumi.RunError(
                f"cicd-db:postgresMajor is {major}; choose one of {majors}, "
                "or pin a tag with cicd-db:imageTag"
            )
        child = pulumi.ResourceOptions(parent=self)
        superuser_password = random.RandomPassword(
            f"{name}-superuser-password", length=32, special=False, opts=child
        )
        app_password = random.RandomPassword(
            f"{name}-app-password", length=32, special=False, opts=child
        )
        image = docker.RemoteImage(
            f"{name}-image",
            name=f"postgres:{image_tag or IMAGE_TAGS[major]}",
            keep_locally=True,
            opts=child,
        )
        volume = docker.Volume(
            f"{name}-data",
            name=f"cicd-db-{pulumi.get_stack()}-pgdata",
            # Retained: `pulumi destroy` leaves the data unless keepVolume is false.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=keep_volume),
        )
        container = docker.Container(
            f"{name}-postgres",
            name=f"cicd-db-{pulumi.get_stack()}-postgres",
            image=image.image_id,
            envs=[
                pulumi.Output.concat("POSTGRES_PASSWORD=", superuser_password.result),
                pulumi.Output.concat("CICD_DB_APP_PASSWORD=", app_password.result),
            ],
            ports=[
                docker.ContainerPortArgs(internal=CONTAINER_PORT, external=port, ip="127.0.0.1")
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=volume.name, container_path=data_path(major))
            ],
            uploads=[
                docker.ContainerUploadArgs(
                    file=INIT_SCRIPT_PATH, content=init_script(), permissions=SCRIPT_PERMISSIONS
                )
            ],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=[
                    "CMD-SHELL",
                    f"pg_isready -U {SUPERUSER} -d {contract.LOCAL_DATABASE} -h 127.0.0.1",
                ],
                interval="2s",
                timeout="5s",
                retries=30,
                start_period="5s",
            ),
            wait=True,
            wait_timeout=120,
            restart="unless-stopped",
            opts=child,
        )
        values = contract.ConnectionSettings(
            host="127.0.0.1",
            port=port,
            database=contract.LOCAL_DATABASE,
            user=contract.LOCAL_USER,
            sslmode="disable",
        )
        self.container = container
        self.volume = volume
        self.connection: dict[str, pulumi.Input[object]] = {
            contract.HOST: values.host,
            contract.PORT: values.port,
            contract.DATABASE: values.database,
            contract.USER: values.user,
            contract.PASSWORD: app_password.result,
            contract.SSLMODE: values.sslmode,
            # Waits for the container, so the URL exists only once the server is healthy.
            contract.DATABASE_URL: pulumi.Output.all(container.id, app_password.result).apply(
                lambda parts: contract.ConnectionSettings(
                    values.host,
                    values.port,
                    values.database,
                    values.user,
                    parts[1],
                    values.sslmode,
                ).url()
            ),
        }
        self.register_outputs(self.connection)
