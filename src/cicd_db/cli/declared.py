"""The commands of `cicd-db`, each declared with its flags and its help side by side
(a flag's `dest` is a keyword of the command's function, or a Context field).
Imported for what it registers in parsing.COMMANDS and parsing.GROUPS."""

from __future__ import annotations

from pathlib import Path

from cicd_db import commands
from cicd_db.cli.parsing import (
    MIGRATE,
    OUTPUT,
    TARGET,
    command,
    count,
    group,
    option,
    output_file,
    positive,
    schema_path,
    seconds,
    version_number,
)
from cicd_db.errors import (
    EXIT_DISAGREES,
    EXIT_PENDING,
)
from cicd_db.retention import MAX_BATCH_SIZE, MAX_KEEP_DAYS

YES = option("--yes", action="store_true", help="confirm writing to a remote stack (prod)")


# -- the commands, each with its options and help -----------------------------------------

# `migrate` alone is `migrate up`, and takes its options.
group("migrate", "apply and check SQL migrations", "Apply the SQL migrations of db/migrations to the target database, and check them.")  # fmt: skip

command(
    "migrate up", commands.up, "apply pending migrations (the default)",
    "Apply pending migrations in version order.",
    MIGRATE,
    (  # a tuple: `migrate` alone takes these too, from the same parent parser
    option("--dry-run", action="store_true", help="list what would be applied; change nothing"),
    option("--sql", action="store_true", help="with --dry-run: print each file's SQL"),
    option("--target", metavar="VERSION", type=version_number, help="stop after this version"),
    YES,
    option("--retries", metavar="N", type=count, help="reruns of a file that met a lock timeout or deadlock ({default})"),
    option("--retry-budget", metavar="SECONDS", type=seconds, help="most time spent waiting between retries ({default})"),
    option("--rehearse", action="store_true", help="run pending files in a transaction that is rolled back; report each one's locks"),
    option("--dump-schema", metavar="PATH", nargs="?", const=Path("db/schema.sql"), type=schema_path, help="afterwards write the schema to PATH (db/schema.sql)"),
    ),
)  # fmt: skip

command(
    "migrate status", commands.status, "show applied and pending migrations (read-only)",
    "Show every migration and its state. Reads only.",
    MIGRATE,
    option("--exit-code", action="store_true", help=f"exit {EXIT_DISAGREES} when a file disagrees with the history, else {EXIT_PENDING} when one is pending"),
)  # fmt: skip

command(
    "migrate wait", commands.wait, "wait until the database accepts connections",
    "Poll the target until it accepts connections.",
    MIGRATE,
    option("--timeout", metavar="SECONDS", type=seconds, help="give up after this long ({default})"),
)  # fmt: skip

command(
    "migrate baseline", commands.baseline, "record migrations up to VERSION as applied, after checking the schema",
    "For a database created by hand: record migrations up to --version as applied, once the live schema is checked against them.",
    MIGRATE,
    YES,
    option("--version", metavar="VERSION", type=version_number, required=True, help="the newest migration the database already has"),
)  # fmt: skip

command(
    "migrate new", commands.new, "write the next NNNN_name.sql",
    "Write the next migration file, with a header that sets short timeouts, and print its path.",
    MIGRATE,
    option("name", help="what it does, as letters, digits, _ . -"),
    option("--no-transaction", dest="transactional", action="store_false", help="for CREATE INDEX CONCURRENTLY"),
)  # fmt: skip

command(
    "migrate check", commands.check, "the CI gate: files, lint, and the history when a target is named",
    "Check the migration files (names, versions, what they may hold), lint them (sqlfluff, squawk), and compare them with a target's history when one is named.",
    MIGRATE,
    option("--no-lint", dest="lint", action="store_false", help="skip sqlfluff and squawk"),
)  # fmt: skip

group("schema", "the schema as SQL, and drift between databases", "Dump a schema for review, or compare schemas.")  # fmt: skip

command(
    "schema dump", commands.schema_dump, "write the schema as SQL",
    "The schema as pg_dump --schema-only writes it, in a stable form. Without a target, the schema the migrations make (on a server of its own, removed after).",
    MIGRATE,
    option("--output", "-o", metavar="PATH", type=output_file, help="write here (default: print)"),
)  # fmt: skip

command(
    "schema diff", commands.schema_diff, "list drift, table by table (exit 3 on drift)",
    "Compare the target's live schema with what its applied migrations make, or with another database (--against).",
    MIGRATE,
    option("--against", metavar="STACK_OR_URL", help="a stack name or a URL to compare with"),
)  # fmt: skip

group("embedded", "manage the embedded PostgreSQL server", "The embedded PostgreSQL server (stack embedded).")  # fmt: skip

command("embedded start", commands.embedded_start, "start the server (created on first use)", "The embedded server: start the server (created on first use).", OUTPUT)  # fmt: skip
command("embedded status", commands.embedded_status, "is it running, where, on which port", "The embedded server: is it running, where, on which port.", OUTPUT)  # fmt: skip
command(
    "embedded url", commands.embedded_url, "print the URL of ci_local (password hidden)",
    "The embedded server: print the URL of ci_local (password hidden).",
    OUTPUT,
    option("--show-password", action="store_true", help="print the real password"),
)  # fmt: skip
command("embedded stop", commands.embedded_stop, "stop the server; data stays", "The embedded server: stop the server; data stays.", OUTPUT)  # fmt: skip

command(
    "report", commands.show_report, "show recorded pipeline, stage and job executions",
    "Show recorded executions: a pipeline's runs, one run with its stages, one stage with its jobs, or one job. Reads only.",
    TARGET, OUTPUT,
    option("--pipeline", required=True, help="the pipeline's name"),
    option("--run", type=positive, metavar="N", help="one run, with its stages"),
    option("--stage", metavar="NAME", help="one stage of --run, with its jobs"),
    option("--job", metavar="NAME", help="one job of --stage"),
    option("--limit", type=positive, metavar="N", help="runs per page (20, at most 1000)"),
    option("--before", type=positive, metavar="RUN", help="runs below RUN: the next page"),
    option("--format", choices=("table", "json", "yaml"), help="table, json or yaml"),
)  # fmt: skip

command(
    "insights", commands.show_insights, "how healthy pipelines are: success rate, p50/p95, time to green, flaky jobs",
    "What CI history is kept for: one pipeline's success rate, p50 and p95 durations, time back to green, days, stages and the worst jobs over a window, or one line per pipeline. Reads only.",
    TARGET, OUTPUT,
    option("--pipeline", metavar="NAME", help="one pipeline in detail (default: one line per pipeline)"),
    option("--days", type=positive, metavar="N", help="the last N UTC days, today included (30)"),
    option("--runs", type=positive, metavar="N", help="the last N runs instead of --days"),
    option("--format", choices=("table", "json", "yaml", "html"), help="table, json, yaml or html (a self-contained page)"),
    option("--output", "-o", metavar="FILE", type=output_file, help="write here (default: print)"),
)  # fmt: skip

command(
    "retention", commands.retention, "delete finished runs older than --keep-days, in short batches",
    "Delete finished runs (never PENDING or RUNNING) that completed more than --keep-days days ago, with their stages and jobs: a batch of runs per short transaction, so writers are never stopped. Interrupted, it leaves whole runs; run it again to go on.",
    TARGET, OUTPUT,
    option("--keep-days", required=True, type=positive, metavar="N", help=f"keep runs that finished in the last N days (1 to {MAX_KEEP_DAYS})"),
    option("--pipeline", metavar="NAME", help="only this pipeline's runs"),
    option("--dry-run", action="store_true", help="count what would be deleted; change nothing"),
    option("--batch-size", type=positive, metavar="N", help=f"runs per transaction ({{default}}, at most {MAX_BATCH_SIZE})"),
    YES,
)  # fmt: skip

command(
    "init-local", commands.init_local, "create ci_local, ci_user, ci_app and ci_reader on a server you installed",
    "On a PostgreSQL you installed: create the role ci_user (not a superuser, with its client_encoding, default_transaction_isolation and timezone set) and the database ci_local it owns, and the writer ci_app and the reader ci_reader (docs/security.md). Safe to repeat.",
    OUTPUT,
    option("--admin-url", required=True, metavar="URL", help="a superuser URL (or CREATEROLE and CREATEDB)"),
    option("--password", help="ci_user's password (default: generated for a new role; kept for an existing one)"),
    option("--show-password", action="store_true", help="print the URLs with their passwords"),
    option("--app-password", help="ci_app's password, the writer's (default: generated for a new role; kept for an existing one)"),
    option("--reader-password", help="ci_reader's password, the reader's (default: generated for a new role; kept for an existing one)"),
    option("--user", help="the role to create ({default})"),
    option("--database", help="the database to create ({default})"),
)  # fmt: skip
