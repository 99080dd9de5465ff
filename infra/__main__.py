"""The Pulumi program: the stack's config in, the connection contract out.

Stack `dev` (or any stack with cicd-db:kind docker) runs PostgreSQL in Docker;
every other stack records a cloud database. Resources live in the components.
"""

import pulumi

import checkout
from cicd_db import settings as contract
from cloud_postgres import CloudPostgres
from docker_postgres import DockerPostgres

root = checkout.repository_root(__file__)
if (stray := checkout.stray_state_error(root)) is not None:
    raise pulumi.RunError(stray)

config = pulumi.Config()
stack = pulumi.get_stack()
kind = config.get("kind") or ("docker" if stack == "dev" else "cloud")


def given_int(key: str, default: int) -> int:
    """The config's whole number, or `default` when it is not set: a 0 that is set is
    a 0, for the checks to refuse, not the default."""
    value = config.get_int(key)  # not a number: Pulumi's own one-line ConfigTypeError
    return default if value is None else value


if kind == "docker":
    port = given_int("port", 5432)
    if not 1 <= port <= 65535:
        # Docker would refuse it when the container is made, after the plan was shown,
        # and the contract would have exported it as the port to connect to.
        raise pulumi.RunError(
            f"cicd-db:port is {port}; give a TCP port, 1 to 65535: "
            f"pulumi config set cicd-db:port 5432 -s {stack}"
        )
    database: DockerPostgres | CloudPostgres = DockerPostgres(
        "postgres",
        major=given_int("postgresMajor", 17),
        volume_major=config.get_int("volumeMajor"),
        port=port,
        keep_volume=config.get_bool("keepVolume") is not False,
        clone=checkout.clone_id(root),
        repository=str(root),
        image_tag=config.get("imageTag"),
    )
elif kind == "cloud":
    database_url = config.get("databaseUrl")
    if not database_url:
        raise pulumi.RunError(
            f"stack {stack} has no database URL; set it with: pulumi config set --secret "
            f"cicd-db:databaseUrl 'postgresql://USER:PASSWORD@HOST/DATABASE?sslmode=require' -s {stack}"
        )
    for key in ("databaseUrl", "directUrl", "appDatabaseUrl", "readerDatabaseUrl"):
        if config.get(key) and not pulumi.runtime.is_config_secret(config.full_key(key)):
            raise pulumi.RunError(
                f"cicd-db:{key} is stored in clear text in Pulumi.{stack}.yaml; remove it and set "
                f"it again with: pulumi config set --secret cicd-db:{key} '...' -s {stack}"
            )
    database = CloudPostgres(
        "postgres",
        database_url=database_url,
        direct_url=config.get("directUrl"),
        allow_insecure=bool(config.get_bool("allowInsecure")),
        app_url=config.get("appDatabaseUrl"),
        reader_url=config.get("readerDatabaseUrl"),
        single_role=bool(config.get_bool("singleRole")),
    )
else:
    raise pulumi.RunError(f"cicd-db:kind is {kind!r}; use docker or cloud")

for name in (*contract.OUTPUT_NAMES, *contract.OPTIONAL_OUTPUT_NAMES):
    if name in database.connection:
        value = database.connection[name]
        pulumi.export(
            name, pulumi.Output.secret(value) if name in contract.SECRET_OUTPUT_NAMES else value
        )
