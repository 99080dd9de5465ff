"""cicd-db: the database layer of a CI/CD system.

Modules, in the one direction imports flow:

    entry, cli     parse the arguments, run a command; signals, errors, exit codes
    commands       one function per command: one library call, then print
    console        what the commands print, as text and as JSON; the terminal clock
    outputs        where an answer goes: a file written whole, a document as UTF-8
    migrations     the migration runner; sqltext reads files as psql does
    lint, schema   the SQL lint gate; catalog signatures, pg_dump, drift
    store, report  executions recorded and read back; the report views
    local          ci_user and ci_local on a server you installed
    targets        which database: --database-url, --stack, --local, DATABASE_URL
    embedded       the embedded PostgreSQL server
    throwaway      a server for one command (schema dump without a target), gone after it
    stacks         a Pulumi stack's outputs, read through the pulumi CLI
    settings       the connection contract and URL redaction
    errors         the exception hierarchy
"""

__version__ = "0.1.0"
