"""Stack `dev`: PostgreSQL in Docker on this machine, bound to 127.0.0.1 only.

Lifecycle rules (each has a test in tests/test_infra.py):
- The container sets the stack's passwords at every start (`entrypoint_script`), so
  a data volume kept through `pulumi destroy` opens with the passwords the next
  `pulumi up` exports.
- The volume's name carries the major that created it (`cicd-db:volumeMajor`); a
  `postgresMajor` or `imageTag` that disagrees is refused before anything changes.
- Names carry the project, the stack and a short id of the clone.
"""

from __future__ import annotations

import re
from dataclasses import replace

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
ENTRYPOINT_PATH = "/usr/local/bin/cicd-db-entrypoint.sh"
# rwxr-xr-x: the image's entrypoint runs an executable *.sh init script, and sources
# (runs inside itself, as the postgres user, with our shell options) one it cannot execute.
SCRIPT_PERMISSIONS = "0755"
UPGRADE_DOC = "README, 'Upgrading the PostgreSQL major'"


def data_path(major: int) -> str:
    """Where the image keeps its data: the image's VOLUME moved in PostgreSQL 18."""
    return "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"


def tag_major(tag: str) -> int | None:
    """The major a postgres image tag names (`17.6-bookworm`, `17`, `17-alpine`), or None."""
    match = re.match(r"(\d+)(?:[.-]|$)", tag)
    return int(match.group(1)) if match else None


def check_majors(*, stack: str, major: int, volume_major: int | None, image_tag: str | None) -> int:
    """Refuse a server major the data volume cannot open; return the volume's major."""
    if image_tag is None and major not in IMAGE_TAGS:
        majors = ", ".join(str(m) for m in IMAGE_TAGS)
        raise pulumi.RunError(
            f"cicd-db:postgresMajor is {major}; choose one of {majors}, "
            "or pin a tag with cicd-db:imageTag"
        )
    if image_tag is not None:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag):
            # Docker's grammar for a tag: refused here, before the plan is shown, not by
            # Docker when the image is pulled.
            raise pulumi.RunError(
                f"cicd-db:imageTag {image_tag!r} is no Docker tag (letters, digits, '_', '.' "
                f"and '-', at most 128); pin one such as {IMAGE_TAGS.get(major, '17.6-bookworm')}"
                f", or remove it: pulumi config rm cicd-db:imageTag -s {stack}"
            )
        named = tag_major(image_tag)
        if named is None:
            raise pulumi.RunError(
                f"cicd-db:imageTag is {image_tag!r}, which does not start with its PostgreSQL "
                f"major; pin a tag that does (such as {IMAGE_TAGS.get(major, '17.6-bookworm')}), "
                f"or remove it: pulumi config rm cicd-db:imageTag -s {stack}"
            )
        if named != major:
            default = (
                f" (the default for {major} is {IMAGE_TAGS[major]})" if major in IMAGE_TAGS else ""
            )
            raise pulumi.RunError(
                f"cicd-db:imageTag {image_tag} is PostgreSQL {named} but cicd-db:postgresMajor is "
                f"{major}; pin a {major}.x tag, or remove it{default}: "
                f"pulumi config rm cicd-db:imageTag -s {stack}. To move the data to {named}, "
                f"see the {UPGRADE_DOC}"
            )
    if volume_major is None:
        raise pulumi.RunError(
            "cicd-db:volumeMajor is not set; it is the PostgreSQL major that created this "
            "stack's data volume (for a new stack, the same as cicd-db:postgresMajor): "
            f"pulumi config set cicd-db:volumeMajor {major} -s {stack}"
        )
    if volume_major != major:
        raise pulumi.RunError(
            f"cicd-db:postgresMajor is {major} but the data volume was made by PostgreSQL "
            f"{volume_major} (cicd-db:volumeMajor), and a server never opens another major's "
            f"data; nothing was changed. To stay on {volume_major}: pulumi config set "
            f"cicd-db:postgresMajor {volume_major} -s {stack}. To move to {major}: dump the "
            f"data with {volume_major} running, then pulumi config set cicd-db:volumeMajor "
            f"{major} -s {stack} (a new, empty volume), pulumi up -s {stack}, and restore the "
            f"dump; see the {UPGRADE_DOC}"
        )
    return volume_major


def init_script() -> str:
    """Creates ci_user (owner of ci_local, not a superuser) with its role settings
    (settings.LOCAL_ROLE_SETTINGS), and the writer ci_app and the reader ci_reader
    (docs/security.md; migration 0029 grants them their privileges).

    The image runs it once, on an empty volume; the passwords come from the
    container's environment so they are never written into the script.
    """
    role_settings = "\n".join(
        f"ALTER ROLE {contract.LOCAL_USER} SET {name} TO '{value}';"
        for name, value in contract.LOCAL_ROLE_SETTINGS
    )
    return f"""#!/bin/bash
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \\
     --set=password="$CICD_DB_APP_PASSWORD" \\
     --set=writer_password="$CICD_DB_WRITER_PASSWORD" \\
     --set=reader_password="$CICD_DB_READER_PASSWORD" <<'SQL'
CREATE ROLE {contract.LOCAL_USER} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'password';
CREATE ROLE {contract.APP_USER} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'writer_password';
CREATE ROLE {contract.READER_USER} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'reader_password';
{role_settings}
CREATE DATABASE {contract.LOCAL_DATABASE} OWNER {contract.LOCAL_USER};
GRANT ALL PRIVILEGES ON DATABASE {contract.LOCAL_DATABASE} TO {contract.LOCAL_USER};
SQL
"""


def entrypoint_script(app_user: str = contract.LOCAL_USER) -> str:
    """The container's entrypoint: the stack's passwords first, then the image's entrypoint.

    The image initialises (and runs /docker-entrypoint-initdb.d) only on an empty data
    directory. On a kept one this script starts the image's own socket-only temporary
    server, sets the superuser's and `app_user`'s passwords from the container's
    environment (the passwords this stack exports), and the writer's and the
    reader's, creating them first on a volume made before they existed; stops it, and then runs
    docker-entrypoint.sh as the image would. It uses the functions the image's
    docker-entrypoint.sh defines when it is sourced (it runs nothing then).
    """
    # A shell script of constants; the passwords reach psql as variables, never as text.
    return f"""#!/usr/bin/env bash
# cicd-db: set this stack's passwords on every start, then start PostgreSQL as the image does.
set -Eeo pipefail

if [ "${{1:-}}" = --set-passwords ]; then
    shift
    source docker-entrypoint.sh
    docker_setup_env
    docker_temp_server_start "$@"
    docker_process_sql --dbname postgres \\
        --set=superuser="$POSTGRES_USER" --set=superuser_password="$POSTGRES_PASSWORD" \\
        --set=app_password="$CICD_DB_APP_PASSWORD" \\
        --set=writer_password="$CICD_DB_WRITER_PASSWORD" \\
        --set=reader_password="$CICD_DB_READER_PASSWORD" <<'SQL'
ALTER ROLE :"superuser" PASSWORD :'superuser_password';
ALTER ROLE {app_user} PASSWORD :'app_password';
SELECT format('CREATE ROLE %I NOSUPERUSER NOCREATEROLE', name)
FROM unnest(ARRAY['{contract.APP_USER}', '{contract.READER_USER}']) AS name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \\gexec
ALTER ROLE {contract.APP_USER} LOGIN PASSWORD :'writer_password';
ALTER ROLE {contract.READER_USER} LOGIN PASSWORD :'reader_password';
SQL
    docker_temp_server_stop
    echo "cicd-db: passwords of $POSTGRES_USER and {app_user} set from the stack"
    exit 0
fi

if [ "${{1:-}}" = postgres ] && [ -s "$PGDATA/PG_VERSION" ]; then
    if [ "$(id -u)" = 0 ]; then
        if command -v gosu >/dev/null; then
            gosu postgres "$0" --set-passwords "$@"
        else
            su-exec postgres "$0" --set-passwords "$@"
        fi
    else
        "$0" --set-passwords "$@"
    fi
fi
exec docker-entrypoint.sh "$@"
"""  # noqa: S608 - constants only: the passwords reach psql as variables


def names(project: str, stack: str, clone: str, volume_major: int) -> tuple[str, str]:
    """Container and volume names: project, stack and clone, and the volume's major."""
    prefix = f"{project}-{stack}-{clone}"
    return f"{prefix}-postgres", f"{prefix}-pg{volume_major}-data"


class DockerPostgres(pulumi.ComponentResource):
    """A postgres container, its named volume and generated passwords.

    `connection` holds the connection contract's outputs, keyed by their names.
    """

    def __init__(
        self,
        name: str,
        *,
        major: int,
        volume_major: int | None,
        port: int,
        keep_volume: bool,
        clone: str,
        repository: str,
        image_tag: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        stack = pulumi.get_stack()
        # Before the component registers: a refusal changes nothing at all.
        volume_major = check_majors(
            stack=stack, major=major, volume_major=volume_major, image_tag=image_tag
        )
        super().__init__("cicd-db:local:DockerPostgres", name, None, opts)
        container_name, volume_name = names(pulumi.get_project(), stack, clone, volume_major)
        child = pulumi.ResourceOptions(parent=self)
        superuser_password = random.RandomPassword(
            f"{name}-superuser-password", length=32, special=False, opts=child
        )
        # The owner's (ci_user's): named before the writer existed, kept so a stack's
        # password survives the upgrade.
        app_password = random.RandomPassword(
            f"{name}-app-password", length=32, special=False, opts=child
        )
        writer_password = random.RandomPassword(
            f"{name}-writer-password", length=32, special=False, opts=child
        )
        reader_password = random.RandomPassword(
            f"{name}-reader-password", length=32, special=False, opts=child
        )
        image = docker.RemoteImage(
            f"{name}-image",
            name=f"postgres:{image_tag or IMAGE_TAGS[major]}",
            keep_locally=True,
            opts=child,
        )
        labels = {
            "cicd-db.project": pulumi.get_project(),
            "cicd-db.stack": stack,
            "cicd-db.repository": repository,
            "cicd-db.postgres-major": str(volume_major),
        }
        volume = docker.Volume(
            f"{name}-data",
            name=volume_name,
            labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in labels.items()],
            # keepVolume true: `pulumi destroy` (and a replacement) leave the volume on
            # Docker and forget it; the next `pulumi up` adopts it by its name. The option
            # is read from the state, so a change takes a `pulumi up` before a destroy.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=keep_volume),
        )
        container = docker.Container(
            f"{name}-postgres",
            name=container_name,
            image=image.image_id,
            entrypoints=[ENTRYPOINT_PATH],
            command=["postgres"],
            envs=[
                pulumi.Output.concat("POSTGRES_PASSWORD=", superuser_password.result),
                pulumi.Output.concat("CICD_DB_APP_PASSWORD=", app_password.result),
                pulumi.Output.concat("CICD_DB_WRITER_PASSWORD=", writer_password.result),
                pulumi.Output.concat("CICD_DB_READER_PASSWORD=", reader_password.result),
            ],
            labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in labels.items()],
            ports=[
                docker.ContainerPortArgs(internal=CONTAINER_PORT, external=port, ip="127.0.0.1")
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=volume.name, container_path=data_path(major))
            ],
            uploads=[
                docker.ContainerUploadArgs(
                    file=ENTRYPOINT_PATH,
                    content=entrypoint_script(),
                    permissions=SCRIPT_PERMISSIONS,
                ),
                docker.ContainerUploadArgs(
                    file=INIT_SCRIPT_PATH, content=init_script(), permissions=SCRIPT_PERMISSIONS
                ),
            ],
            healthcheck=docker.ContainerHealthcheckArgs(
                # TCP on 127.0.0.1: the socket-only servers of init and of the password
                # step never answer it, so healthy means the real server is up.
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
            # A fixed name and host port: the old container must go before the new starts.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
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

        def url_of(user: str, password: pulumi.Output[str]) -> pulumi.Output[str]:
            # Waits for the container, so the URL exists only once the server is healthy.
            return pulumi.Output.all(container.id, password).apply(
                lambda parts: replace(values, user=user, password=parts[1]).url()
            )

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
            contract.APP_DATABASE_URL: url_of(contract.APP_USER, writer_password.result),
            contract.READER_DATABASE_URL: url_of(contract.READER_USER, reader_password.result),
        }
        self.register_outputs(self.connection)
