"""Stack `prod`: a cloud PostgreSQL created outside Pulumi; this records its secrets."""

from __future__ import annotations

import pulumi

from cicd_db import settings as contract


class CloudPostgres(pulumi.ComponentResource):
    """The connection contract of a cloud database, from its URL (and a direct URL).

    `database_url` is what the application uses; `direct_url`, when the former is a
    transaction pooler, is a non-pooled endpoint the migration runner uses.
    Both are checked here (`contract.check_cloud_url`) before anything is exported.
    """

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        direct_url: str | None,
        allow_insecure: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("cicd-db:cloud:CloudPostgres", name, None, opts)
        try:
            url = contract.check_cloud_url(
                database_url, what="cicd-db:databaseUrl", allow_insecure=allow_insecure
            )
            direct = (
                contract.check_cloud_url(
                    direct_url, what="cicd-db:directUrl", allow_insecure=allow_insecure
                )
                if direct_url
                else None
            )
        except contract.ConfigError as error:
            raise pulumi.RunError(str(error)) from None
        values = contract.from_url(url, what="cicd-db:databaseUrl")
        if direct is not None and contract.is_transaction_pooler(contract.from_url(direct)):
            raise pulumi.RunError(
                "cicd-db:directUrl is a transaction pooler too; set it to the direct endpoint "
                "(Supabase: port 5432; Neon: the host without -pooler)"
            )
        if direct is None and contract.is_transaction_pooler(values):
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
        self.register_outputs(self.connection)
