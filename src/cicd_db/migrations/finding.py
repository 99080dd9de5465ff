"""The history found by catalog, never through search_path: ours in its place (refused
when its columns were changed, it is UNLOGGED, or it is no table), older ones a past
release left in another schema, two histories refused, and a history a migration
renamed named rather than made anew."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError, plural
from cicd_db.migrations.history_table import (
    COLUMNS,
    OWN_COLUMNS,
    SCHEMA,
    TABLE,
    pinned_rows,
    shown,
)

# Whether the table `c` has every column of the history.
_HAS_EVERY_COLUMN = sql.SQL(
    "(SELECT count(*) FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "AND a.attname = ANY(ARRAY[{columns}]::pg_catalog.name[])) = {count}"
).format(columns=sql.SQL(", ").join(map(sql.Literal, COLUMNS)), count=sql.Literal(len(COLUMNS)))
_FIND = sql.SQL(
    "SELECT n.nspname, c.relkind, c.relpersistence, {complete} FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = {table} AND (c.relkind IN ('r', 'p') OR n.nspname = {schema}) "
    "ORDER BY n.nspname"
).format(
    complete=_HAS_EVERY_COLUMN,
    table=sql.Literal(TABLE),
    schema=sql.Literal(SCHEMA),
)


def renamed_columns(columns: dict[str, str]) -> dict[str, str]:
    """Columns (name -> type) of the history that are one of cicd-db's under another
    name: an unknown column, the one of its type, where one of that type is missing
    (name -> own name). Told as a rename, whose undo keeps the rows' values."""
    missing = [own for own in OWN_COLUMNS if own not in columns]
    unknown = [column for column in columns if column not in OWN_COLUMNS]
    pairs = {}
    for own in missing:
        kind = OWN_COLUMNS[own]
        candidates = [column for column in unknown if columns[column] == kind]
        if len(candidates) == 1 and sum(OWN_COLUMNS[m] == kind for m in missing) == 1:
            pairs[candidates[0]] = own
    return pairs


_COLUMNS_OF = sql.SQL(
    "SELECT a.attname::pg_catalog.text, pg_catalog.format_type(a.atttypid, a.atttypmod) "
    "FROM pg_catalog.pg_attribute a WHERE a.attrelid = {t}::pg_catalog.regclass "
    "AND a.attnum > 0 AND NOT a.attisdropped"
).format(t=sql.Literal(f"{SCHEMA}.{TABLE}"))


def _not_as_made(conn: psycopg.Connection[Any]) -> str:
    """What is wrong with the columns of a table in the history's place, and the fix: for
    cicd-db's history with columns changed, never to drop it (its files would all run
    again) but to rename them back; for a table of another shape, to move it away."""
    name = shown(conn, SCHEMA, TABLE)
    columns = dict(pinned_rows(conn, _COLUMNS_OF))
    if not any(column in columns for column in OWN_COLUMNS):  # another tool's, it seems
        return (
            f"{name} exists but is not cicd-db's migration history: it must be a table with "
            f"the columns {', '.join(COLUMNS)}; rename or drop it if it is not needed"
        )
    renamed = renamed_columns(columns)
    missing = [c for c in OWN_COLUMNS if c not in columns and c not in renamed.values()]
    told = [f"column {shown(conn, own)} renamed {shown(conn, now)}" for now, own in renamed.items()]
    told += [f"column {shown(conn, column)} missing" for column in missing]
    fixes = [
        f"ALTER TABLE {name} RENAME COLUMN {shown(conn, now)} TO {shown(conn, own)}"
        for now, own in renamed.items()
    ]
    fix = (
        f"undo that ({'; '.join(fixes)})"
        if fixes and not missing
        else f"restore its columns ({', '.join(COLUMNS)})"
    )
    return (
        f"{name} is cicd-db's migration history with its columns changed ({', '.join(told)}); "
        f"{fix} and run again (never drop a history that has rows: every file it lists "
        "would run again)"
    )


def find(conn: psycopg.Connection[Any]) -> tuple[bool, list[str]]:
    """Where a history is: whether ours exists, and the schemas of older ones.

    Found by catalog, never through search_path. Two histories are refused: which
    one is true cannot be known, and applying by either could run files a second
    time.
    """
    rows = pinned_rows(conn, _FIND)
    ours = False
    older = []
    for schema, kind, persistence, complete in rows:
        if schema == SCHEMA:
            if kind in ("r", "p") and not complete:
                raise ConfigError(_not_as_made(conn))
            if persistence == "u":
                name = shown(conn, SCHEMA, TABLE)
                raise ConfigError(
                    f"the migration history {name} is UNLOGGED: a crash of the server would "
                    "empty it, and every migration would then run again; make it logged "
                    f"(ALTER TABLE {name} SET LOGGED) and run again"
                )
            if kind not in ("r", "p"):
                raise ConfigError(
                    f"{shown(conn, SCHEMA, TABLE)} exists but is not cicd-db's migration "
                    "history: it must be a table (it is a view or the like) with the columns "
                    f"{', '.join(COLUMNS)}; rename or drop it if it is not needed"
                )
            ours = True
        elif complete and not schema.startswith("pg_temp"):
            older.append(str(schema))
    found = ([SCHEMA] if ours else []) + older
    if len(found) > 1:
        counted = []
        for schema in found:
            table = sql.Identifier(schema, TABLE)
            row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(table)).fetchone()
            rows_in = int(row[0]) if row else 0
            counted.append(f"{shown(conn, schema, TABLE)} ({plural(rows_in, 'row')})")
        raise ConfigError(
            f"this database has {len(found)} migration histories, {', '.join(counted)}; "
            "one database holds one history: keep the one that matches the schema "
            "(compare them with `SELECT * FROM` each; an empty one is most likely left by "
            "an older release of cicd-db), drop the others, and run again"
        )
    if not found:
        refuse_a_history_under_another_name(conn)
    return ours, older


# Tables of another name in the history's schema with every column of the history: a
# history a migration renamed (ALTER TABLE ... RENAME), looked for only where there is
# none. (Moved to another schema under its name, it is found by name; an application's
# table elsewhere may have such columns, and is none of the runner's.)
_LOOK_ALIKES = sql.SQL(
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname = {schema} AND c.relname <> {table} "
    "AND {complete} ORDER BY 1, 2"
).format(
    schema=sql.Literal(SCHEMA),
    table=sql.Literal(TABLE),  # the history itself, made meanwhile by another runner
    complete=_HAS_EVERY_COLUMN,
)


def refuse_a_history_under_another_name(conn: psycopg.Connection[Any]) -> None:
    """ConfigError when the history is missing and a table with all its columns is
    elsewhere: made anew, the history would be empty, and every file would run again."""
    found = pinned_rows(conn, _LOOK_ALIKES)
    if not found:
        return
    schema, table = (str(part) for part in found[0])
    where = shown(conn, schema, table)
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
    )
    rows_in = int((row.fetchone() or (0,))[0])
    back = [f"ALTER TABLE {where} RENAME TO {shown(conn, TABLE)}"]
    raise ConfigError(
        f"there is no migration history {shown(conn, SCHEMA, TABLE)}, but {where} has its "
        f"columns ({plural(rows_in, 'row')}): a history a migration renamed or moved? A new "
        "one would be empty, and every file would run again; if it is the history, move it "
        f"back ({'; '.join(back)}); if it is a copy, drop it or rename a column; and run again"
    )
