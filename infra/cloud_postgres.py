"""Stack `prod`: a cloud PostgreSQL created outside Pulumi; this records its secrets."""

from __future__ import annotations

import pulumi

from cicd_db import cloud
from cicd_db import settings as contract


class CloudPostgres(pulumi.ComponentResource):
    """The connection contract of a cloud database, from its URL (and a direct URL).

    `database_url` is the owner's, what migrations use; `direct_url`, when the former
    is a transaction pooler, is a non-pooled endpoint the migration runner uses.
    `app_url` and `reader_url` are the writer's and the reader's (docs/security.md):
    both are needed, unless `single_role` says on purpose that every part uses the
    owner's URL; never a silent fallback to the owner. All are checked here
    (`cloud.check_cloud_url`) before anything is exported.
    """

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        direct_url: str | None,
        allow_insecure: bool,
        app_url: str | None = None,
        reader_url: str | None = None,
        single_role: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("cicd-db:cloud:CloudPostgres", name, None, opts)
        try:
            url = cloud.check_cloud_url(
                database_url, what="cicd-db:databaseUrl", allow_insecure=allow_insecure
            )
            direct = (
                cloud.check_cloud_url(
                    direct_url, what="cicd-db:directUrl", allow_insecure=allow_insecure
                )
                if direct_url
                else None
            )
        except contract.ConfigError as error:
            raise pulumi.RunError(str(error)) from None
        values = contract.from_url(url, what="cicd-db:databaseUrl")
        if direct is not None and cloud.is_transaction_pooler(contract.from_url(direct)):
            raise pulumi.RunError(
                "cicd-db:directUrl is a transaction pooler too; set it to the direct endpoint "
                "(Supabase: port 5432; Neon: the host without -pooler)"
            )
        if direct is None and cloud.is_transaction_pooler(values):
            raise pulumi.RunError(
                f"cicd-db:databaseUrl points at the transaction pooler {values.where}, "
                "which migrations cannot use; also set the direct endpoint: "
                "pulumi config set --secret cicd-db:directUrl 'postgresql://...' -s "
                f"{pulumi.get_stack()}"
            )
        self.connection: dict[str, pulumi.Input[object]] = {
            contract.HOST: values.host,
            # One number: the URL's, the first host's of several, else libpq's default.
            contract.PORT: values.outputs()[contract.PORT],
            contract.DATABASE: values.database,
            contract.USER: values.user,
            contract.PASSWORD: pulumi.Output.secret(values.password),
            contract.SSLMODE: values.sslmode,
            contract.DATABASE_URL: pulumi.Output.secret(url),
        }
        if direct is not None:
            self.connection[contract.MIGRATION_DATABASE_URL] = pulumi.Output.secret(direct)
        for output, url_of_role in _role_urls(
            url, values.user, app_url, reader_url, single_role, allow_insecure
        ).items():
            self.connection[output] = pulumi.Output.secret(url_of_role)
        self.register_outputs(self.connection)


def _role_urls(
    owner_url: str,
    owner: str,
    app_url: str | None,
    reader_url: str | None,
    single_role: bool,
    allow_insecure: bool,
) -> dict[str, str]:
    """The writer's and the reader's URLs to export, checked; RunError with the fix."""
    stack = pulumi.get_stack()
    keys = {"cicd-db:appDatabaseUrl": app_url, "cicd-db:readerDatabaseUrl": reader_url}
    if single_role:
        if app_url or reader_url:
            raise pulumi.RunError(
                "cicd-db:singleRole is true but a writer's or reader's URL is set too; remove "
                f"one or the other: pulumi config rm cicd-db:singleRole -s {stack}"
            )
        # On purpose, named in the stack's config: every part connects as the owner.
        return {contract.APP_DATABASE_URL: owner_url, contract.READER_DATABASE_URL: owner_url}
    missing = [key for key, url in keys.items() if not url]
    if missing:
        raise pulumi.RunError(
            f"stack {stack} has no {' and no '.join(missing)}: the CI system and reports "
            "would connect as the owner, which can drop tables and rewrite the migration "
            f"history; create the roles (docs/security.md) and set: pulumi config set "
            f"--secret {missing[0]} 'postgresql://ci_app:PASSWORD@HOST/DATABASE?sslmode=require' "
            f"-s {stack} (ci_reader for the reader), or run as one role on purpose: "
            f"pulumi config set cicd-db:singleRole true -s {stack}"
        )
    checked, users = {}, []
    one_role = (
        f"or run as one role on purpose: pulumi config rm cicd-db:appDatabaseUrl -s {stack}; "
        f"pulumi config rm cicd-db:readerDatabaseUrl -s {stack}; pulumi config set "
        f"cicd-db:singleRole true -s {stack}"
    )
    for (key, url), output in zip(
        keys.items(), (contract.APP_DATABASE_URL, contract.READER_DATABASE_URL), strict=True
    ):
        try:
            good = cloud.check_cloud_url(str(url), what=key, allow_insecure=allow_insecure)
        except contract.ConfigError as error:
            raise pulumi.RunError(str(error)) from None
        user = contract.from_url(good, what=key).user
        if user == owner:
            raise pulumi.RunError(
                f"{key} logs in as {owner}, the owner of cicd-db:databaseUrl; set it to the "
                f"URL of its own role (docs/security.md), {one_role}"
            )
        checked[output] = good
        users.append(user)
    if users[0] == users[1]:
        # The reader would log in as the writer: reports could change executions.
        raise pulumi.RunError(
            "cicd-db:appDatabaseUrl and cicd-db:readerDatabaseUrl log in as one role; the "
            "reader needs a role of its own that may only read (ci_reader, "
            f"docs/security.md), {one_role}"
        )
    return checked
