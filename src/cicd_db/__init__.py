"""cicd-db: the database layer of a CI/CD system.

Modules, in the one direction imports flow:

    entry, cli     parse, call, print (the only modules that print or exit)
    migrations     the migration runner; sqltext reads files as psql does
    lint, schema   the SQL lint gate; catalog signatures, pg_dump, drift
    store, report  executions recorded and read back; the report views
    local          ci_user and ci_local on a server you installed
    targets        which database: --database-url, --stack, --local, DATABASE_URL
    embedded       the embedded PostgreSQL server
    stacks         a Pulumi stack's outputs, read through the pulumi CLI
    settings       the connection contract and URL redaction
    errors         the exception hierarchy
"""

__version__ = "0.1.0"
