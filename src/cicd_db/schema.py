"""What a schema holds, read from the catalogs, in a form two schemas can be compared by.

Used by `migrate baseline` (is the live schema what the migrations would make?)
and by the tests (does the upgrade path end where the fresh path does?).
Reads only.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

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
