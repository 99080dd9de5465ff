"""cicd-db: the database layer of a CI/CD system.

Modules, in the one direction imports flow:

    cli            parses, calls, prints (the only module that prints or exits)
    migrations     the migration runner (schema: catalog signatures for baseline)
    store          records pipeline, stage and job executions; reads them back
    report         the four report views as table, JSON or YAML
    targets        which database: --database-url, --stack, --local, DATABASE_URL
    embedded       the embedded PostgreSQL server
    stacks         a Pulumi stack's outputs, read through the pulumi CLI
    settings       the connection contract and URL redaction
    errors         the exception hierarchy
"""

__version__ = "0.1.0"
