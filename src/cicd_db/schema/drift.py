"""Two schemas compared, object by object, property by property: what is missing,
unexpected or changed; and the search_path of a scratch copy, so that a file's pinned
search_path reads the same there."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cicd_db.errors import ConfigError
from cicd_db.schema.catalog import Signature


@dataclass(frozen=True)
class Difference:
    """One way two schemas differ: the `kind` (column, index, ...) `name` of `table`
    is "missing" (expected, not there), "unexpected" (there, not expected) or
    "changed" (`detail` names the property, what it is and what was expected)."""

    table: str
    kind: str
    name: str
    change: str
    detail: str

    def __str__(self) -> str:
        where = self.table if self.name == self.table else f"{self.table}.{self.name}"
        return f"{self.change} {self.kind} {where}" + (f": {self.detail}" if self.detail else "")


def compare(expected: Signature, actual: Signature) -> list[Difference]:
    """What `actual` lacks, has beyond, or has otherwise than `expected`, one
    difference per object or property, sorted by table."""
    found = []
    for key in expected.keys() | actual.keys():
        kind, table, name = key
        want, have = expected.get(key), actual.get(key)
        if have is None or want is None:
            change = "missing" if have is None else "unexpected"
            found.append(Difference(table, kind, name, change, _summary(kind, want or have or {})))
            continue
        found += [
            Difference(table, kind, name, "changed", _change(prop, want.get(prop), have[prop]))
            for prop in have
            if have[prop] != want.get(prop)
        ]
    return sorted(found, key=lambda d: (d.table, d.kind, d.name, d.change, d.detail))


def _change(prop: str, want: Any, have: Any) -> str:
    """One property's difference in words; of grants, only those that differ."""
    if prop != "privileges":
        return f"{prop} {_shown(have)} (expected {_shown(want)})"
    wanted, granted = (set(value.split(", ")) if value else set() for value in (want, have))
    return " and ".join(
        f"{prop} {verb} {', '.join(sorted(grants))}"
        for verb, grants in (("also grant", granted - wanted), ("lack", wanted - granted))
        if grants
    )


def _summary(kind: str, props: dict[str, Any]) -> str:
    """An object in a few words: a column's type and flags, otherwise its definition."""
    if kind == "column":
        return " ".join(
            [props["type"]]
            + (["NOT NULL"] if props["not null"] else [])
            + ([f"DEFAULT {props['default']}"] if props["default"] else [])
            + ([f"GENERATED {props['generated']}"] if props["generated"] else [])
            + ([f"IDENTITY {props['identity']}"] if props["identity"] else [])
        )
    if props.get("partition bound"):
        return f"PARTITION OF {props['inherits']} {props['partition bound']}"
    for prop in ("definition", "values", "base type", "returns", "version"):
        if props.get(prop) is not None:
            return _shown(props[prop])
    return ""


def _shown(value: Any) -> str:
    """A property on one line: whitespace (a view's definition spans lines) folded,
    the closing semicolon of a view's or rule's definition left off."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split()).removesuffix(";")


def scratch_path(setting: str, live: str, scratch: str) -> sql.Composable:
    """The search_path `setting` with `scratch` in the place of `live`, so that what a
    file pins (`SET search_path FROM CURRENT`) reads the same in the scratch copy."""
    entries = re.findall(r'"(?:[^"]|"")*"|[^,\s]+', setting)
    named = [e[1:-1].replace('""', '"') if e.startswith('"') else e.lower() for e in entries]
    before = named[: named.index(live)] if live in named else named
    if live not in named or any(n == "pg_catalog" or n.startswith("pg_temp") for n in before):
        # Reached through "$user" only, or after pg_catalog or pg_temp, where a file's
        # objects would go if the scratch schema took the live one's place: first.
        return sql.SQL(", ").join([sql.Identifier(scratch), *map(sql.SQL, entries)])
    return sql.SQL(", ").join(
        sql.Identifier(scratch) if name == live else sql.SQL(entry)
        for entry, name in zip(entries, named, strict=True)
    )


# The first schema of the session's search_path that a file's objects could be made in:
# not pg_catalog (where nothing may be created) nor a temporary schema, which a search_path
# may name first (`pg_catalog, public`, a hardened role's; `pg_temp, ...`).
_LIVE = (
    "SELECT p.name FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) "
    "WITH ORDINALITY AS p (name, n) WHERE p.name OPERATOR(pg_catalog.<>) 'pg_catalog' "
    "AND p.name OPERATOR(pg_catalog.!~) '^pg_temp_[0-9]+$' ORDER BY p.n LIMIT 1"
)


def current_schema(conn: psycopg.Connection[Any]) -> str:
    """The schema migrations make their objects in, by the session's search_path."""
    row = conn.execute(_LIVE).fetchone()
    if row is None or row[0] is None:
        raise ConfigError("no schema is on the search_path; set search_path and retry")
    return str(row[0])
