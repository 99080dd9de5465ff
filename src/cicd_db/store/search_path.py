"""The search_path a store's session reads and writes with: whether it would have
cicd-db's statements use what is not PostgreSQL's or cicd-db's (check_search_path), for
the store's first write and for report, insights and retention before they read."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from cicd_db import cursors
from cicd_db.errors import ConfigError

# The schema this session reads each execution table from (to_regclass goes by the
# search_path), in the order of their names; the search_path and where it was set; and
# the schemas it searches before pg_catalog that hold a function or an operator named as
# one of pg_catalog's (the operators of this query are named in pg_catalog for that).
_READ_FROM = (
    "SELECT t.name, n.nspname, pg_catalog.current_setting('search_path'), "
    "(SELECT source FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) "
    "'search_path'), (SELECT pg_catalog.array_agg(x.name::pg_catalog.text ORDER BY x.i) "
    "FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) WITH ORDINALITY AS x (name, i) "
    "JOIN pg_catalog.pg_namespace s ON s.nspname OPERATOR(pg_catalog.=) x.name "
    "WHERE x.i OPERATOR(pg_catalog.<) pg_catalog.array_position("
    "pg_catalog.current_schemas(true), 'pg_catalog'::pg_catalog.name) "
    "AND (EXISTS (SELECT FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_proc c "
    "ON c.proname OPERATOR(pg_catalog.=) p.proname WHERE p.pronamespace "
    "OPERATOR(pg_catalog.=) s.oid AND c.pronamespace OPERATOR(pg_catalog.=) "
    "'pg_catalog'::pg_catalog.regnamespace) "
    "OR EXISTS (SELECT FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_operator c "
    "ON c.oprname OPERATOR(pg_catalog.=) o.oprname WHERE o.oprnamespace "
    "OPERATOR(pg_catalog.=) s.oid AND c.oprnamespace OPERATOR(pg_catalog.=) "
    "'pg_catalog'::pg_catalog.regnamespace))) "
    "FROM (VALUES (1, 'pipeline_executions'), (2, 'stage_executions'), (3, "
    "'job_executions')) AS t (n, name) LEFT JOIN pg_catalog.pg_class c "
    "ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(t.name) "
    "LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "ORDER BY t.n"
)


# Three of the functions and operators of the schemas `%s` named as pg_catalog's, for a
# message: the one a user recognises (`lower(citext)`) is what to look at.
_NAMED_AS_POSTGRESQLS = (
    "SELECT f.shown FROM (SELECT n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) "
    "p.oid::pg_catalog.regprocedure::pg_catalog.text AS shown, p.proname AS name, "
    "p.pronamespace AS schema FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
    "ON n.oid OPERATOR(pg_catalog.=) p.pronamespace UNION ALL SELECT n.nspname "
    "OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) "
    "o.oid::pg_catalog.regoperator::pg_catalog.text, o.oprname, o.oprnamespace "
    "FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n "
    "ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace) AS f "
    "JOIN pg_catalog.pg_namespace s ON s.oid OPERATOR(pg_catalog.=) f.schema "
    "WHERE s.nspname OPERATOR(pg_catalog.=) ANY (%s::pg_catalog.name[]) AND (EXISTS ("
    "SELECT FROM pg_catalog.pg_proc c WHERE c.proname OPERATOR(pg_catalog.=) f.name AND "
    "c.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace) OR EXISTS ("
    "SELECT FROM pg_catalog.pg_operator c WHERE c.oprname OPERATOR(pg_catalog.=) f.name AND "
    "c.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace)) "
    "ORDER BY pg_catalog.array_position(%s::pg_catalog.name[], s.nspname), 1 LIMIT 3"
)


def _quoted(schema: str) -> str:
    """A schema's name as SQL writes it: as it is when plain, else in double quotes."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", schema):
        return schema
    return '"' + schema.replace('"', '""') + '"'


def check_search_path(conn: psycopg.Connection[Any]) -> None:
    """ConfigError when the session's search_path would have cicd-db's statements read
    what is not cicd-db's or PostgreSQL's (one round trip):

    - a schema searched before pg_catalog (`SET search_path = x, public, pg_catalog`,
      by a role, the database or PGOPTIONS) that holds a function or an operator named
      as one of PostgreSQL's: that (a `now()` of its own) is the one the statements
      call, and moved the clock of what insights reads and retention deletes (a
      `now()` in 2100 had retention delete every finished run). Types named as
      PostgreSQL's there change nothing: the statements name pg_catalog's;
    - the execution tables read from more than one schema: a table of one of their
      names in a schema the search_path reaches first (a role's own, named like it:
      the default search_path's "$user") hides cicd-db's, and reading it gave wrong
      answers (an empty copy made "no runs" of a pipeline with 45). A whole copy of the
      three, in one schema, is read as the schema."""
    rows = cursors.execute(conn, _READ_FROM).fetchall()
    path, source = str(rows[0][2]), str(rows[0][3])
    # The session's temporary schema comes first, but functions and operators are never
    # looked up there.
    if before := [s for s in rows[0][4] or () if not s.startswith("pg_temp")]:
        where = cursors.setting_where(conn, "search_path", path, source)
        found = cursors.execute(conn, _NAMED_AS_POSTGRESQLS, [before, before]).fetchall()
        named = ", ".join(str(row[0]) for row in found)
        raise ConfigError(
            f"this session's search_path ({path}) searches {', '.join(map(_quoted, before))} before "
            f"pg_catalog, with functions or operators named as PostgreSQL's ({named}): "
            "those would be the ones cicd-db's statements call; "
            + (where or "set a search_path that leaves pg_catalog out, or names it first")
        )
    by_schema: dict[str, list[str]] = {}
    for name, schema, *_ in rows:
        if schema is not None:
            by_schema.setdefault(str(schema), []).append(str(name))
    if len(by_schema) < 2:
        return
    read = "; ".join(
        f"{', '.join(names)} from schema {schema}" for schema, names in by_schema.items()
    )
    raise ConfigError(
        f"this session's search_path ({path}) reads cicd-db's tables from "
        f"more than one schema ({read}): a table of one of their names hides cicd-db's; "
        "drop or rename it, or set a search_path that reaches cicd-db's schema first"
    )
