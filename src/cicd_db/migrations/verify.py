"""The live schema against the files: baseline (record files as applied after checking
that the schema is what they make), and drift.

What the files make is found by running them in a scratch schema, inside a
transaction that is rolled back; `schema` compares the two by catalog.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from cicd_db import schema
from cicd_db.errors import MigrationFailed, MigrationRefused, OperationalError
from cicd_db.migrations import history, integrity, lock, reconcile
from cicd_db.migrations.files import Migration
from cicd_db.migrations.session import RESET_FILE_STATE, Session
from cicd_db.migrations.statements import plan

# A comparison runs the files in one transaction, so it cannot run a file that needs
# those before it committed; `schema dump` applies them for real, each committed, on a
# server of its own.
UNCOMMITTED_BEFORE = (
    "`schema diff` and `migrate baseline` cannot replay such files; compare `schema dump` "
    "without a target (the files applied one by one, on a server of their own) with this "
    "database's `schema dump`"
)


def baseline(
    session: Session, files: list[Migration], version: int, lock_timeout: float
) -> list[Migration]:
    """Record the files up to `version` as applied, without running them. Writes.

    For a database made by hand (with `psql -f`): the live schema must match what
    the files make, table for table, column for column, constraint for
    constraint, index for index. CONCURRENTLY is dropped from no-transaction
    files in the scratch run, which is one transaction.
    """
    chosen = [m for m in files if m.version <= version]
    if not chosen or chosen[-1].version != version:
        raise MigrationRefused(
            f"no migration file has version {version}; see `migrate status` for the versions"
        )
    conn = session.conn
    with lock.held(session, lock_timeout):
        if history.read(conn):
            raise MigrationRefused(
                "this database already has migration history; baseline is only for a "
                "database without it (run `migrate up` instead)"
            )
        problems = [str(difference) for difference in compare(session, chosen)]
        if problems:
            shown = "; ".join(problems[:12])
            more = f"; and {len(problems) - 12} more" if len(problems) > 12 else ""
            raise MigrationRefused(
                f"the live schema does not match migrations up to version {version}: "
                f"{shown}{more}; fix the schema by hand, or baseline at the version it matches"
            )
        try:
            with conn.transaction():
                history.create(conn)
                for migration in chosen:
                    conn.execute(history.insert_row(conn, migration, duration_ms=0))
                # The rows commit only under the lock: the replay above runs the files,
                # and one of them (or the server) may have ended the lock's session.
                conn.execute(integrity.lock_check(session.lock_key, session.server_pid))
        except psycopg.Error as error:
            if error.diag.sqlstate not in (integrity.CHECK_LOCK, integrity.CHECK_MOVED):
                raise
            raise MigrationFailed(
                f"baseline stopped before recording anything: {integrity.LOCK_LOST}, so "
                "another runner could be at work; check what ended that session, and run again"
            ) from None
    return chosen


def drift(session: Session, files: list[Migration]) -> tuple[int, list[schema.Difference]]:
    """The live schema against what the applied files make: the newest applied
    version, and each difference. Reads only (the files run in a scratch schema,
    in a transaction that is rolled back)."""
    applied = history.read(session.conn)
    for _ in range(DRIFT_TRIES):
        reconcile.pending(files, applied, None)  # an edited or missing file makes it moot
        newest = max((row.version for row in applied), default=0)
        found = compare(session, [m for m in files if m.version <= newest])
        # Without the runner's lock (a reader may compare, through any pooler, while a
        # deploy runs): a run that committed a file meanwhile made its objects look like
        # drift from the files before it. Compared again, up to the history it made.
        now = history.read(session.conn)
        if now == applied:
            return newest, found
        applied = now
    raise OperationalError(
        f"the migration history changed during each of {DRIFT_TRIES} comparisons: runs "
        "are applying files; compare again once they are done"
    )


# How many times drift compares while runs keep changing the history under it.
DRIFT_TRIES = 3


def compare(session: Session, chosen: list[Migration]) -> list[schema.Difference]:
    """How the live schema differs from what `chosen` make: baseline's and drift's one test.

    The live schema is the session's own, where the files make their objects when
    they run for real (not necessarily where the history is kept).
    """
    conn = session.conn
    live = schema.current_schema(conn)
    scratch = f"cicd_db_baseline_{conn.info.backend_pid}"
    setting = conn.execute("SHOW search_path").fetchone()
    path = schema.scratch_path(str(setting[0]) if setting else "", live, scratch)
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
        _default_privileges_as_live(conn, live, scratch)
        before = _versions(conn, scratch)
        session.savepoint = b"cicd_db_compare"
        session.notice()
        try:
            for migration in chosen:
                # Each file as a run applies it: the session as the first file found it.
                conn.execute(b"SAVEPOINT cicd_db_compare; " + RESET_FILE_STATE)
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))
                if not migration.transactional:
                    data = re.sub(rb"\bCONCURRENTLY\b", b"", migration.data, flags=re.IGNORECASE)
                    steps = plan(migration.filename, data, transactional=False)
                    migration = replace(migration, data=data, planned=steps)
                try:
                    session.run_steps(migration)
                except MigrationFailed as failed:
                    if _already_there(conn, failed, scratch):
                        raise MigrationRefused(
                            _outside(migration, f"{failed.said} [{failed.sqlstate}]")
                        ) from None
                    raise
                _refuse_what_reached_the_live_objects(conn, migration, scratch, before)
                conn.execute(b"RELEASE cicd_db_compare")
                session.uncommitted_before = UNCOMMITTED_BEFORE
                session.ran(migration)
        finally:
            session.savepoint = None
            session.run_over()
        expected = schema.signature(conn, scratch, as_schema=live)
        actual = schema.signature(conn, live)
    return schema.compare(expected, actual)


# The objects ALTER DEFAULT PRIVILEGES ... IN SCHEMA names, by pg_default_acl's letter.
_DEFAULT_FOR = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES"}
_PRIVILEGE = re.compile(r"[A-Z]+")


def _default_privileges_as_live(conn: psycopg.Connection[Any], live: str, scratch: str) -> None:
    """The live schema's default privileges (ALTER DEFAULT PRIVILEGES ... IN SCHEMA), given
    to the scratch one, where the files make their objects again: without them, every
    table made under a grant the live schema gives by default (docs/security.md) was
    told as drift. Those of a role this one may not act for are left: an object such a
    role makes in the files is made as this one in the scratch schema anyway."""
    rows = conn.execute(
        "SELECT pg_catalog.pg_get_userbyid(d.defaclrole), d.defaclobjtype::pg_catalog.text, "
        "a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL "
        "ELSE pg_catalog.pg_get_userbyid(a.grantee) END, a.is_grantable "
        "FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) a "
        "WHERE d.defaclnamespace = pg_catalog.to_regnamespace(%s)::pg_catalog.oid",
        [sql.Identifier(live).as_string(conn)],
    ).fetchall()
    for role, kind, privilege, grantee, grantable in rows:
        if kind not in _DEFAULT_FOR or not _PRIVILEGE.fullmatch(privilege):
            continue
        grant = sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}{}"
        ).format(
            sql.Identifier(role),
            sql.Identifier(scratch),
            sql.SQL(privilege),
            sql.SQL(_DEFAULT_FOR[kind]),
            sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION" if grantable else ""),
        )
        try:
            with conn.transaction():
                conn.execute(grant)
        except psycopg.errors.InsufficientPrivilege:
            continue


# A relation's version: those of its catalog rows that DDL writes (the relation's own,
# its columns, defaults, constraints and its own triggers; not the internal triggers a
# foreign key to it makes and drops), as the transactions that wrote them.
_VERSION = (
    "c.xmin::pg_catalog.text || ':' || pg_catalog.concat_ws(':', "
    "(SELECT pg_catalog.string_agg(a.xmin::pg_catalog.text, ',' ORDER BY a.attnum) "
    "FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid), "
    "(SELECT pg_catalog.string_agg(d.xmin::pg_catalog.text, ',' ORDER BY d.oid) "
    "FROM pg_catalog.pg_attrdef d WHERE d.adrelid OPERATOR(pg_catalog.=) c.oid), "
    "(SELECT pg_catalog.string_agg(k.xmin::pg_catalog.text, ',' ORDER BY k.oid) "
    "FROM pg_catalog.pg_constraint k WHERE k.conrelid OPERATOR(pg_catalog.=) c.oid), "
    "(SELECT pg_catalog.string_agg(g.xmin::pg_catalog.text, ',' ORDER BY g.oid) "
    "FROM pg_catalog.pg_trigger g WHERE g.tgrelid OPERATOR(pg_catalog.=) c.oid "
    "AND NOT g.tgisinternal))"
)
# Outside the scratch schema: not in it, PostgreSQL's own schemas or a session's
# temporary ones (the file's own temporary tables are not live).
_OUTSIDE = (
    "n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY[%s, 'pg_catalog', 'pg_toast', "
    "'information_schema']) AND n.nspname OPERATOR(pg_catalog.!~) '^pg_(toast_)?temp_'"
)
_VERSIONS = sql.SQL(
    "SELECT c.oid, {version} FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE {outside}"
).format(version=sql.SQL(_VERSION), outside=sql.SQL(_OUTSIDE))
# What the replay holds locked there: a write or nextval() (ROW EXCLUSIVE), or a lock
# DDL takes (SHARE UPDATE EXCLUSIVE and up, but a foreign key's or a trigger's SHARE
# ROW EXCLUSIVE), with the relation's version and whether it is a sequence.
_LOCKED = sql.SQL(
    "SELECT DISTINCT pg_catalog.format('%%I.%%I', n.nspname, c.relname), c.oid, "
    "{version}, l.mode, c.relkind OPERATOR(pg_catalog.=) 'S' "
    "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c "
    "ON c.oid OPERATOR(pg_catalog.=) l.relation "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() "
    "AND l.locktype OPERATOR(pg_catalog.=) 'relation' "
    "AND l.mode OPERATOR(pg_catalog.<>) ALL (ARRAY['AccessShareLock', 'RowShareLock', "
    "'ShareRowExclusiveLock']) AND {outside} ORDER BY 1"
).format(version=sql.SQL(_VERSION), outside=sql.SQL(_OUTSIDE))


def _versions(conn: psycopg.Connection[Any], scratch: str) -> dict[int, str]:
    return {int(oid): str(xmin) for oid, xmin in conn.execute(_VERSIONS, [scratch]).fetchall()}


def _refuse_what_reached_the_live_objects(
    conn: psycopg.Connection[Any], migration: Migration, scratch: str, before: dict[int, str]
) -> None:
    """Refuse, before the next file, a replayed file that wrote to or changed objects
    outside the scratch schema: it names their schema (`public.t`, a pg_dump's `DROP
    SCHEMA public`) or sets a search_path, so its replay acts on the live objects (rolled
    back with the comparison, but locked meanwhile, and a sequence advanced for good),
    and what it makes is not in the scratch schema to compare.

    A write or nextval() is a change. A DDL lock is one only on a relation made, or
    whose version (_VERSION) changed, since `before` (the versions when the replay
    began): dropping a foreign key to a table of another schema locks that table as DDL
    does, and changes nothing of it; ANALYZE writes statistics in place."""
    reached: list[tuple[str, bool]] = []
    for name, oid, xmin, mode, sequence in conn.execute(_LOCKED, [scratch]).fetchall():
        if mode == "RowExclusiveLock" or before.get(int(oid)) != str(xmin):
            reached.append((str(name), bool(sequence)))
    if reached:
        names = [name for name, _ in reached]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        # nextval() is never rolled back: said, not hidden.
        advanced = [name for name, sequence in reached if sequence]
        kept = f" but the sequences it advanced ({', '.join(advanced)})" if advanced else ""
        raise MigrationRefused(_outside(migration, f"it changes {shown}", kept))


def _already_there(conn: psycopg.Connection[Any], failed: MigrationFailed, scratch: str) -> bool:
    """Whether a replayed file failed on making what exists outside the scratch schema
    (applied for real, or made by hand, before): a schema, an object of the whole
    database (a role, an extension), or a relation or a column not in the scratch
    schema. One the scratch schema already holds is the files' own mistake (two files
    make it), told as the server said it."""
    if failed.sqlstate in ("42P06", "42710", "42723"):
        return True
    said = failed.said or ""
    if failed.sqlstate == "42P07":
        named = re.fullmatch(r'relation "(.+)" already exists', said)
        column = None
    elif failed.sqlstate == "42701":
        named = re.fullmatch(r'column "(.+)" of relation "(.+)" already exists', said)
        column = named[1] if named else None
    else:
        return False
    if named is None:
        return True
    conn.execute(b"ROLLBACK TO SAVEPOINT cicd_db_compare")
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c "
        "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid "
        "AND a.attname OPERATOR(pg_catalog.=) %s::pg_catalog.text AND NOT a.attisdropped "
        "WHERE c.oid OPERATOR(pg_catalog.=) "
        "pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::pg_catalog.text, %s::pg_catalog.text)) "
        "AND (%s::pg_catalog.text IS NULL OR a.attname IS NOT NULL))",
        [column, scratch, named[named.lastindex or 1], column],
    ).fetchone()
    return not (row and row[0])


def _outside(migration: Migration, what: str, kept: str = "") -> str:
    return (
        f"{migration.filename} acts outside the scratch schema the files are replayed in "
        f"({what}): it names a schema, makes one or an object of the whole database (a "
        "role, an extension), or sets a search_path, so its replay acts on what is live; "
        f"stopped there, and all it did was rolled back{kept}; " + UNCOMMITTED_BEFORE
    )
