"""The commands of `cicd-db` as a Python API: each a typed function that calls the
library, prints what it did and returns the exit code.

    from cicd_db import commands
    code = commands.up(commands.Context(database_url=url), dry_run=True)

A Context holds what every command shares (the database it names, the migrations
folder, how it prints, the secrets to keep out of what it prints); each function's
own keyword arguments are its options, with their defaults. The cli package parses the
command line into one Context and those arguments, and declares the flags and the
help; console.py shapes what these print.

The package: context.py (Context, what every command shares), migrate.py, schema.py,
embedded.py, executions.py (report, insights, retention) and local.py (init-local).
"""

from __future__ import annotations

from cicd_db.commands.context import FIELDS, Context, keyword_defaults
from cicd_db.commands.embedded import embedded_start, embedded_status, embedded_stop, embedded_url
from cicd_db.commands.executions import retention, show_insights, show_report
from cicd_db.commands.local import init_local
from cicd_db.commands.migrate import WAIT_TIMEOUT, baseline, check, new, status, up, wait
from cicd_db.commands.schema import schema_diff, schema_dump

__all__ = [
    "FIELDS",
    "WAIT_TIMEOUT",
    "Context",
    "baseline",
    "check",
    "embedded_start",
    "embedded_status",
    "embedded_stop",
    "embedded_url",
    "init_local",
    "keyword_defaults",
    "new",
    "retention",
    "schema_diff",
    "schema_dump",
    "show_insights",
    "show_report",
    "status",
    "up",
    "wait",
]
