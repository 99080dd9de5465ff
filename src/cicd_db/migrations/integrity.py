"""The runner's own checks in a file's transaction: that the transaction is still the
one it began, that its lock is still held, and that the history is as the runner left
it; and, when a row is refused, what was changed on the table since cicd-db made it.

A file may do anything, to the history too. Its row is written only if the history is
the rows the runner wrote plus this one (recorded_check, with the table's state as the
file's transaction found it: STATE); a row the table itself refuses (a constraint, a
column, a trigger added later) is explained by alterations(), each change with the
statement that undoes it. A file may also end the runner's transaction (COMMIT) or the
session that holds its lock (pg_terminate_backend): transaction_check and lock_check
travel with the row and stop its COMMIT.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq.abc import PGresult

from cicd_db.errors import OperationalError
from cicd_db.migrations.files import Migration
from cicd_db.migrations.finding import renamed_columns
from cicd_db.migrations.history import row_values, since_begin
from cicd_db.migrations.history_table import (
    OWN_COLUMNS,
    QUALIFIED,
    SCHEMA,
    TABLE,
    pinned_rows,
    shown,
)
from cicd_db.sqltext import found_lowered

# The SQLSTATEs of the checks below (class CD, not PostgreSQL's): the runner's
# transaction, its lock, then the history's.
CHECK_MARK, CHECK_LOCK = "CDB01", "CDB02"
CHECK_RECORDED, CHECK_HISTORY, CHECK_SECOND = "CDB03", "CDB04", "CDB05"
CHECK_MOVED = "CDB06"  # the file ran in another server session than the work session's
# What a failed lock_check means, for a message that stops before writing anything.
LOCK_LOST = (
    "the runner's lock was lost (the session that holds it ended: pg_terminate_backend, "
    "a lost connection or a pooler's timeout)"
)


def transaction_check(begun: PGresult) -> bytes:
    """A check that the transaction is still the one the runner began: `begun` holds
    its id, read before the file ran."""
    xid = begun.get_value(0, 0) or b""
    if not xid.isdigit():
        raise OperationalError(f"the server gave no transaction id (got {xid!r})")
    return (
        b"DO $cicd_db$BEGIN IF pg_catalog.pg_current_xact_id() IS DISTINCT FROM '"
        + xid
        + b"'::pg_catalog.xid8 THEN RAISE EXCEPTION 'the runner''s transaction ended "
        b"inside the file' USING ERRCODE = '" + CHECK_MARK.encode() + b"'; END IF; END$cicd_db$"
    )


def lock_check(key: int | None, pid: int | None = None) -> bytes:
    """A check that the file ran in the work session's own server session (`pid`: a
    pooler that lends server sessions a transaction at a time could have run it in
    another, outside the lock: lock.own_sessions), and that the runner's lock is still
    held by its session: a file could have ended that session (pg_terminate_backend),
    and another runner be at work.

    The lock session holds a key of this run's own (`key`, drawn at random: the
    Session's `lock_key`) beside the runner's lock, so the question is one lookup,
    whatever else is locked: may this session take that key? Only if the lock session
    is gone. (Asking pg_locks instead copies every lock of the server, a file's own
    included: a quarter of a millisecond a file.) If it may, the key is held only until
    the check's error ends the statement or the transaction.
    """
    moved = (
        b"IF pg_catalog.pg_backend_pid() <> %d THEN RAISE EXCEPTION 'the file ran in another "
        b"server session' USING ERRCODE = '%s'; END IF; " % (pid, CHECK_MOVED.encode())
        if pid is not None
        else b""
    )
    return (
        b"DO $cicd_db$BEGIN " + moved + b"IF pg_catalog.pg_try_advisory_xact_lock_shared(%d) "
        b"THEN RAISE EXCEPTION 'the runner''s lock was lost' USING ERRCODE = '%s'; END IF; "
        b"END$cicd_db$" % (key or 0, CHECK_LOCK.encode())
    )


# The history table as a file's transaction finds it, read with the transaction's id
# before the file runs: its oid and storage (TRUNCATE, an ALTER TABLE that rewrites
# it, and any other table in its place have another relfilenode), and PostgreSQL's
# own counts of the rows this session has inserted, updated and deleted in it, the
# open transaction's included. The counts are not a transaction's alone (a session
# keeps them until it reports them, between transactions), so the check compares
# them with these, not with zero.
STATE = (
    sql.SQL(
        "h.oid, pg_catalog.pg_relation_filenode(h.oid), "
        "pg_catalog.pg_stat_get_xact_tuples_inserted(h.oid), "
        "pg_catalog.pg_stat_get_xact_tuples_updated(h.oid), "
        "pg_catalog.pg_stat_get_xact_tuples_deleted(h.oid) "
        # Found in pg_class, which any role reads: the session may act as another role (a
        # login role's `role` setting), and to_regclass needs the schema's USAGE. One table
        # by its index (a join with pg_namespace cost ~0.3 ms a file to plan); operators
        # named in pg_catalog, as a search_path may put others first.
        "FROM (SELECT (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname "
        "OPERATOR(pg_catalog.=) {table}::pg_catalog.name AND c.relnamespace "
        "OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace({schema})::pg_catalog.oid)) "
        "AS h (oid)"
    )
    .format(schema=sql.Literal(SCHEMA), table=sql.Literal(TABLE))
    .as_bytes(None)
)


class Recorded:
    """The history's rows (version, name, checksum) as the runner wrote them, and
    their fingerprint: the md5 the server computes over them in recorded_check(),
    kept as rows are added (files are applied in order, so a row is most often the
    newest: one update of the digest, not a pass over every row)."""

    def __init__(self, rows: list[tuple[int, str, str]]):
        self.rows = sorted(rows)
        self._digest = hashlib.md5("\n".join(map(_line, self.rows)).encode())  # noqa: S324

    def add(self, migration: Migration) -> None:
        row = (migration.version, migration.name, migration.checksum)
        self._digest = self._with(row)
        if self.rows and row < self.rows[-1]:
            self.rows = sorted([*self.rows, row])
        else:
            self.rows.append(row)

    def fingerprint(self, migration: Migration) -> str:
        """The fingerprint of these rows and `migration`'s."""
        return self._with((migration.version, migration.name, migration.checksum)).hexdigest()

    def _with(self, row: tuple[int, str, str]) -> hashlib._Hash:
        if not self.rows:
            return hashlib.md5(_line(row).encode())  # noqa: S324
        if row > self.rows[-1]:
            digest = self._digest.copy()
            digest.update(("\n" + _line(row)).encode())
            return digest
        rows = sorted([*self.rows, row])
        return hashlib.md5("\n".join(map(_line, rows)).encode())  # noqa: S324


def _line(row: tuple[int, str, str]) -> str:
    return f"{row[0]} {row[1]} {row[2]}"


# recorded_check's parts, built once (the check is sent a file): %-placeholders
# take the file's values, its name quoted as a literal.
_RAISE_CHANGED = b"RAISE EXCEPTION 'the history was changed' USING ERRCODE = '%s';" % (
    CHECK_HISTORY.encode()
)
# A duration the server measured when the row was written (at the INSERT's
# clock_timestamp()): between the closing statements' arrival, the same for every
# statement of them, and now. (COALESCE is syntax, not a function a search_path finds.)
_DURATION_KEPT = (
    b"COALESCE(duration_ms BETWEEN "
    + since_begin(b"statement_timestamp")
    + b" AND "
    + since_begin(b"clock_timestamp")
    + b", false)"
)
# The row as written, every column (a trigger may change any of them, a file may drop
# a NOT NULL): `same` is NULL only when there is no row.
_ROW_CHECK = (
    sql.SQL(
        "DO $cicd_db$DECLARE same boolean; BEGIN "
        "SELECT (name, checksum, applied_at, applied_by) IS NOT DISTINCT FROM "
        "(%(name)s::pg_catalog.text, %(checksum)s::pg_catalog.text, pg_catalog.now(), %(user)s::pg_catalog.text) "
        "AND %(duration)s INTO same FROM ONLY {table} WHERE version = %(version)d; "
        "IF same IS NULL THEN RAISE EXCEPTION 'the history row was not written' "
        "USING ERRCODE = {gone}; ELSIF NOT same THEN "
    )
    .format(table=QUALIFIED, gone=CHECK_RECORDED)
    .as_bytes(None)
    + _RAISE_CHANGED
    + b" "
)
# A second table of the history's name and columns outside its schema (a copy, a
# CREATE TABLE ... AS): every later run would refuse two histories. A temporary table is
# the session's own, and gone with it. Planned anew in each file's DO block, the query
# costs 0.25-0.6 ms a file, a tenth of a small file's time: it runs after a file whose
# text names the history or builds statements (EXECUTE, which format() pieces feed).
# One made by code elsewhere (a function an earlier file made) is refused by the next
# run, with its fix.
_MAY_MAKE_A_SECOND = {"history": TABLE.encode(), "execute": b"execute"}
_SECOND_CHECK = (
    sql.SQL(
        "ELSIF EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relname = {name} "
        "AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "
        "AND c.relnamespace <> pg_catalog.to_regnamespace({schema})::pg_catalog.oid "
        "AND (SELECT count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY(ARRAY[{columns}]::pg_catalog.name[])) "
        "= {count}) THEN RAISE EXCEPTION 'a second history' USING ERRCODE = {second}; "
    )
    .format(
        name=sql.Literal(TABLE),
        schema=sql.Literal(SCHEMA),
        columns=sql.SQL(", ").join(map(sql.Literal, OWN_COLUMNS)),
        count=sql.Literal(len(OWN_COLUMNS)),
        second=sql.Literal(CHECK_SECOND),
    )
    .as_bytes(None)
)
_COUNTED_CHECK = (
    sql.SQL(
        "ELSIF pg_catalog.current_setting('track_counts')::pg_catalog.bool THEN IF ("
        "pg_catalog.pg_relation_filenode({name}::pg_catalog.regclass), "
        "pg_catalog.pg_stat_get_xact_tuples_inserted(%(oid)d::pg_catalog.oid), "
        "pg_catalog.pg_stat_get_xact_tuples_updated(%(oid)d::pg_catalog.oid), "
        "pg_catalog.pg_stat_get_xact_tuples_deleted(%(oid)d::pg_catalog.oid)) "
        "IS DISTINCT FROM (%(filenode)d::pg_catalog.oid, %(inserted)d::bigint, %(updated)d::bigint, "
        "%(deleted)d::bigint) THEN "
    )
    .format(name=sql.Literal(f"{SCHEMA}.{TABLE}"))
    .as_bytes(None)
    + _RAISE_CHANGED
    + b" END IF; "
)
_FINGERPRINT_CHECK = (
    sql.SQL(
        "ELSIF (SELECT pg_catalog.md5(pg_catalog.string_agg(version || ' ' || name || ' ' || "
        "checksum, E'\\n' ORDER BY version)) FROM ONLY {table}) IS DISTINCT FROM '%(expected)s' THEN "
    )
    .format(table=QUALIFIED)
    .as_bytes(None)
    + _RAISE_CHANGED
    # UNLOGGED (by a no-transaction file: in a transaction, the rewrite changes the
    # storage): a crash would empty it, and every file then run again.
    + sql.SQL(
        " ELSIF (SELECT c.relpersistence FROM pg_catalog.pg_class c "
        "WHERE c.oid = {name}::pg_catalog.regclass) <> 'p' THEN "
    )
    .format(name=sql.Literal(f"{SCHEMA}.{TABLE}"))
    .as_bytes(None)
    + _RAISE_CHANGED
    + b" END IF; END$cicd_db$"
)


def recorded_check(
    conn: psycopg.Connection[Any],
    recorded: Recorded,
    migration: Migration,
    state: tuple[bytes | None, ...] | None = None,
    *,
    duration_ms: float | None = None,
) -> bytes:
    """A check that the history row is there as written, every column of it (a trigger
    could have swallowed or changed it), and that the history is the rows `recorded`
    plus this one: a file may not have emptied, edited or replaced it (TRUNCATE,
    DELETE, UPDATE, DROP and CREATE). `duration_ms` as given to insert_row().

    With `state`, the history as the file's transaction found it (STATE), the check
    is a few lookups, whatever the history's size: the row as written, and, on the
    table of that name, the storage it had and this session's counts of the table
    it had, grown by that one row and nothing else (rows written to a table renamed
    away would be counted there; the row then went elsewhere). Without it (a
    no-transaction file, whose statements commit one by one), or where PostgreSQL
    does not count (track_counts off), an md5 over every row instead; PL/pgSQL plans
    a branch only when it reaches it.
    """
    values = row_values(conn, migration, duration_ms=duration_ms) | {
        b"duration": _DURATION_KEPT
        if duration_ms is None
        else b"duration_ms IS NOT DISTINCT FROM %d" % round(duration_ms),
        b"expected": recorded.fingerprint(migration).encode(),
    }
    check = _ROW_CHECK
    if found_lowered(migration.data, _MAY_MAKE_A_SECOND):
        check += _SECOND_CHECK
    # All five, or the table was not there when the transaction began (NULLs).
    known = [int(value) for value in state or () if value is not None]
    if len(known) == 5:
        oid, filenode, inserted, updated, deleted = known
        values |= {
            b"oid": oid,
            b"filenode": filenode,
            b"inserted": inserted + 1,
            b"updated": updated,
            b"deleted": deleted,
        }
        check += _COUNTED_CHECK
    return (check + _FINGERPRINT_CHECK) % values


# The history as cicd-db makes it (create()): its columns (history_table.OWN_COLUMNS), all
# NOT NULL, and its primary key; nothing else on it.
OWN_CONSTRAINT = f"{TABLE}_pkey"
# The defaults it makes, as pg_get_expr writes them under PINNED; no other column has one.
OWN_DEFAULTS = {"applied_at": "now()", "applied_by": "CURRENT_USER"}
# What is on the history table that can refuse a row, by kind: columns (type, NOT
# NULL), and every constraint, unique index (beside a constraint's own) and trigger;
# first, the table made a partition: its DETACH comes before the DROP of a constraint the
# parent gave it, which PostgreSQL refuses while it is attached.
_ON_THE_HISTORY = sql.SQL(
    """
    SELECT 'partition of', h.inhparent::pg_catalog.regclass::pg_catalog.text, '', true
      FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid
     WHERE h.inhrelid = {t}::pg_catalog.regclass AND c.relispartition
    UNION ALL
    SELECT 'column', a.attname::pg_catalog.text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = {t}::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint', c.conname::pg_catalog.text, '', true FROM pg_catalog.pg_constraint c
     WHERE c.conrelid = {t}::pg_catalog.regclass AND c.contype NOT IN ('n', 't')
    UNION ALL
    SELECT 'index', i.relname::pg_catalog.text, '', true FROM pg_catalog.pg_index x
      JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
     WHERE x.indrelid = {t}::pg_catalog.regclass AND x.indisunique AND NOT EXISTS (
           SELECT FROM pg_catalog.pg_constraint c WHERE c.conindid = x.indexrelid
              AND c.conrelid = x.indrelid)
    UNION ALL
    SELECT 'trigger', g.tgname::pg_catalog.text, '', true FROM pg_catalog.pg_trigger g
     WHERE g.tgrelid = {t}::pg_catalog.regclass AND NOT g.tgisinternal
    UNION ALL
    SELECT 'rule', r.rulename::pg_catalog.text, '', true FROM pg_catalog.pg_rewrite r
     WHERE r.ev_class = {t}::pg_catalog.regclass
    UNION ALL
    SELECT 'identity', a.attname::pg_catalog.text, '', true FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = {t}::pg_catalog.regclass AND a.attidentity <> '' AND NOT a.attisdropped
    UNION ALL
    SELECT 'default', a.attname::pg_catalog.text, pg_catalog.pg_get_expr(d.adbin, d.adrelid), true
      FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a
        ON a.attrelid = d.adrelid AND a.attnum = d.adnum
     WHERE d.adrelid = {t}::pg_catalog.regclass AND a.attidentity = ''

    """
).format(t=sql.Literal(f"{SCHEMA}.{TABLE}"))


def alterations(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """What was changed on the history since cicd-db made it, each with the statement
    that undoes it, of what can refuse a row: a column added, retyped or made nullable,
    a constraint, unique index or trigger added, the table made a partition (whose
    bounds refuse rows). Empty when it is as made, or gone. Reads, with
    PINNED, on an idle session (a failed file's transaction rolled back)."""
    try:
        rows = pinned_rows(conn, _ON_THE_HISTORY)
    except psycopg.Error:
        return []  # the history is gone (told elsewhere), or the session with it
    name = shown(conn, SCHEMA, TABLE)
    found: list[tuple[str, str]] = []
    seen = set()
    renamed = renamed_columns({item: detail for kind, item, detail, _ in rows if kind == "column"})
    for kind, item, detail, not_null in rows:
        which = shown(conn, item)
        if kind == "column":
            seen.add(item)
            own = OWN_COLUMNS.get(item)
            if item in renamed:
                found.append(
                    (
                        f"column {shown(conn, renamed[item])} renamed {which}",
                        f"ALTER TABLE {name} RENAME COLUMN {which} TO {shown(conn, renamed[item])}",
                    )
                )
            elif own is None:
                found.append(
                    (f"column {which} {detail} added", f"ALTER TABLE {name} DROP COLUMN {which}")
                )
            elif detail != own:
                found.append(
                    (
                        f"column {which} is {detail}, not {own}",
                        f"ALTER TABLE {name} ALTER COLUMN {which} TYPE {own}",
                    )
                )
            elif not not_null:
                found.append(
                    (
                        f"column {which} may be null",
                        f"ALTER TABLE {name} ALTER COLUMN {which} SET NOT NULL",
                    )
                )
        elif kind == "constraint" and item != OWN_CONSTRAINT:
            found.append(
                (f"constraint {which} added", f"ALTER TABLE {name} DROP CONSTRAINT {which}")
            )
        elif kind == "index":
            found.append((f"index {which} added", f"DROP INDEX {shown(conn, SCHEMA, item)}"))
        elif kind in ("trigger", "rule"):
            found.append((f"{kind} {which} added", f"DROP {kind.upper()} {which} ON {name}"))
        elif kind == "partition of":  # the parent's bounds refuse rows: no constraint here
            found.append(
                (
                    f"made a partition of {item}",
                    f"ALTER TABLE {item} DETACH PARTITION {name}",
                )
            )
        elif kind == "identity":
            found.append(
                (
                    f"column {which} made an identity",
                    f"ALTER TABLE {name} ALTER COLUMN {which} DROP IDENTITY",
                )
            )
        elif kind == "default" and detail != OWN_DEFAULTS.get(renamed.get(item, item)):
            own_default = OWN_DEFAULTS.get(renamed.get(item, item))
            found.append(
                (
                    f"column {which} given the default {detail}",
                    f"ALTER TABLE {name} ALTER COLUMN {which} "
                    + (f"SET DEFAULT {own_default}" if own_default else "DROP DEFAULT"),
                )
            )
    if rows:
        found += [
            (f"column {shown(conn, column)} is missing", "restore it")
            for column in OWN_COLUMNS
            if column not in seen and column not in renamed.values()
        ]
        defaults = {item for kind, item, _, _ in rows if kind == "default"}
        found += [
            (
                f"column {shown(conn, column)} lost its default",
                f"ALTER TABLE {name} ALTER COLUMN {shown(conn, column)} SET DEFAULT {default}",
            )
            for column, default in OWN_DEFAULTS.items()
            if column in seen and column not in defaults
        ]
    return found
