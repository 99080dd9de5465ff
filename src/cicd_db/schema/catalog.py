"""What a schema holds, read from the catalogs: a signature, in a form two schemas can
be compared by (drift.py compares them).

Used by `migrate baseline` (is the live schema what the migrations would make?),
`schema diff` (drift between a database and the migrations, or two databases),
`schema dump` (the schema as SQL, through pg_dump) and the tests (does the
upgrade path end where the fresh path does?). Reads only.

A signature maps each object of one schema (table, column, constraint, index,
trigger, rule, policy, view, sequence, type, function, extension, ...) to its
properties, each rendered by PostgreSQL itself: pg_get_viewdef,
pg_get_constraintdef, pg_get_indexdef, pg_get_triggerdef, format_type,
pg_get_expr, aclexplode. What is not compared: owners (the runner's role makes
the scratch copy, so owners would differ on every database made by another
role), tablespaces of indexes, the schema's own comment and privileges, default
privileges, and objects outside the schema (publications, event triggers,
roles). tests/test_schema.py proves each kind it sees against pg_dump.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

# (kind, table, name) -> property -> value. `table` is the object a part belongs
# to (a column's table, a domain's constraint's domain) or the object itself.
Key = tuple[str, str, str]
Signature = dict[Key, dict[str, Any]]

# The runner's own table (its key, index and constraints too) is not part of the schema it
# makes: the table by its name, its parts by its name as their table; nothing else whose
# name only starts so (a `cicd_db_schema_history_old` a person made is a table like any).
HISTORY_TABLE = "cicd_db_schema_history"


def _not_in_extension(catalog: str, oid: str) -> sql.Composable:
    """An extension's own objects are compared as the extension, not one by one."""
    return sql.SQL(
        "NOT EXISTS (SELECT FROM pg_depend x WHERE x.classid = {}::pg_catalog.regclass "
        "AND x.objid = {} AND x.deptype = 'e')"
    ).format(sql.Literal(catalog), sql.SQL(oid))


def _privileges(acl: str, kind: str | None, owner: str) -> sql.Composable:
    # `kind` is acldefault's object type, an SQL expression
    """Grants as `grantee PRIVILEGE`, sorted; the owner named `owner` (owners are not
    compared) and a default ACL spelled out, so an explicit default reads the same."""
    full = (
        sql.SQL('coalesce({}, acldefault(({})::pg_catalog."char", {}))').format(
            sql.SQL(acl), sql.SQL(kind), sql.SQL(owner)
        )
        if kind
        else sql.SQL(acl)  # a column's: none unless granted
    )
    return sql.SQL(
        """(SELECT string_agg(grant_, ', ' ORDER BY grant_) FROM (
        SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' WHEN g.grantee = {owner} THEN 'owner'
                    ELSE pg_get_userbyid(g.grantee) END
               || ' ' || g.privilege_type
               || CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END AS grant_
        FROM aclexplode({full}) g) grants)"""
    ).format(owner=sql.SQL(owner), full=full)


# The rarer kinds of object, read by name and comment only: each catalog and its
# namespace column. (Operators are read whole, below.)
# Each with the words pg_describe_object starts its description with.
_RARER = (
    ("pg_opclass", "opcnamespace", "operator class"),
    ("pg_opfamily", "opfnamespace", "operator family"),
    ("pg_collation", "collnamespace", "collation"),
    ("pg_conversion", "connamespace", "conversion"),
    ("pg_ts_config", "cfgnamespace", "text search configuration"),
    ("pg_ts_dict", "dictnamespace", "text search dictionary"),
    ("pg_ts_parser", "prsnamespace", "text search parser"),
    ("pg_ts_template", "tmplnamespace", "text search template"),
)
_RARER_OBJECTS = "\n        UNION ALL ".join(
    f"SELECT 'pg_catalog.{catalog}'::pg_catalog.regclass, oid, '{kind}' FROM pg_catalog.{catalog} "  # noqa: S608 - constants
    f"WHERE {column} = %(schema)s::pg_catalog.regnamespace"
    for catalog, column, kind in _RARER
)
# Kind, then the description without the kind's words as the object's name.
_RARER_QUERY = (
    "SELECT o.kind, o.name, o.name, o.comment FROM ("  # noqa: S608 - constants
    " SELECT substr(pg_describe_object(o.catalog, o.oid, 0), length(o.kind) + 2) AS name, o.kind,"
    " (SELECT d.description FROM pg_catalog.pg_description d WHERE d.classoid = o.catalog"
    " AND d.objoid = o.oid AND d.objsubid = 0) AS comment FROM ("
    + _RARER_OBJECTS
    + ") o (catalog, oid, kind) WHERE NOT EXISTS (SELECT FROM pg_depend x"
    " WHERE x.classid = o.catalog AND x.objid = o.oid AND x.deptype = 'e')"
    ") o"
)

_PARTS = {
    "relation_c": _not_in_extension("pg_class", "c.oid"),
    "relation_t": _not_in_extension("pg_class", "t.oid"),
    "composite_c": _not_in_extension("pg_type", "c.reltype"),
    "type_t": _not_in_extension("pg_type", "t.oid"),
    "function_p": _not_in_extension("pg_proc", "p.oid"),
    "operator_o": _not_in_extension("pg_operator", "o.oid"),
    "relation_privileges": _privileges(
        "c.relacl", "CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END", "c.relowner"
    ),
    "column_privileges": _privileges("a.attacl", None, "c.relowner"),
    "function_privileges": _privileges("p.proacl", "'f'", "p.proowner"),
    "type_privileges": _privileges("t.typacl", "'T'", "t.typowner"),
}

# Each query yields kind, table, name, then one column per property. Every
# definition is rendered with search_path set to the schema itself, so names in
# the schema come out unqualified and two schemas compare by content.
QUERIES: tuple[sql.Composed, ...] = tuple(
    sql.SQL(query).format(**_PARTS)
    for query in (
        """
    SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' ELSE 'table' END,
           c.relname, c.relname,
           pg_get_partkeydef(c.oid) AS "partitioned by",
           (SELECT string_agg(i.inhparent::pg_catalog.regclass::pg_catalog.text, ', ' ORDER BY i.inhseqno)
            FROM pg_inherits i WHERE i.inhrelid = c.oid)
             AS inherits,
           pg_get_expr(c.relpartbound, c.oid) AS "partition bound",
           format_type(nullif(c.reloftype, 0), NULL) AS "of type",
           CASE c.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'logged' END AS persistence,
           CASE WHEN c.relforcerowsecurity THEN 'enabled, forced'
                WHEN c.relrowsecurity THEN 'enabled' ELSE 'disabled' END
             AS "row level security",
           CASE c.relreplident WHEN 'n' THEN 'nothing' WHEN 'f' THEN 'full'
                WHEN 'i' THEN 'index ' || (SELECT i.indexrelid::pg_catalog.regclass::pg_catalog.text FROM pg_index i
                                           WHERE i.indrelid = c.oid AND i.indisreplident)
                ELSE 'default' END AS "replica identity",
           array_to_string(ARRAY(SELECT o FROM unnest(c.reloptions) o ORDER BY o), ', ')
             AS options,
           (SELECT array_to_string(ARRAY(SELECT o FROM unnest(t.reloptions) o ORDER BY o), ', ')
            FROM pg_class t WHERE t.oid = nullif(c.reltoastrelid, 0)) AS "toast options",
           (SELECT a.amname FROM pg_am a WHERE a.oid = c.relam) AS "access method",
           (SELECT v.srvname FROM pg_foreign_table f JOIN pg_foreign_server v ON v.oid = f.ftserver
            WHERE f.ftrelid = c.oid) AS server,
           (SELECT array_to_string(ARRAY(SELECT o FROM unnest(f.ftoptions) o ORDER BY o), ', ')
            FROM pg_foreign_table f WHERE f.ftrelid = c.oid) AS "foreign options",
           (SELECT t.spcname FROM pg_tablespace t WHERE t.oid = c.reltablespace) AS tablespace,
           CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS definition,
           format_type(s.seqtypid, NULL) AS "type",
           s.seqstart AS start, s.seqincrement AS increment, s.seqmin AS minimum,
           s.seqmax AS maximum, s.seqcache AS cache, s.seqcycle AS cycle,
           (SELECT d.refobjid::pg_catalog.regclass::pg_catalog.text || '.' || quote_ident(a.attname)
            FROM pg_depend d
            JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
            WHERE c.relkind = 'S' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
              AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i'))
             AS "owned by",
           obj_description(c.oid, 'pg_class') AS comment,
           {relation_privileges} AS privileges
    FROM pg_class c
    LEFT JOIN pg_sequence s ON s.seqrelid = c.oid
    WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND {relation_c}
    """,
        """
    SELECT 'column', c.relname, a.attname,
           row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS position,
           format_type(a.atttypid, a.atttypmod) AS "type",
           a.attnotnull AS "not null",
           CASE WHEN a.attinhcount = 0 THEN 'local' WHEN a.attislocal THEN 'local, inherited'
                ELSE 'inherited' END AS "defined",
           CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS default,
           CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid)
                || CASE a.attgenerated WHEN 's' THEN ' STORED' ELSE ' VIRTUAL' END END
             AS generated,
           CASE a.attidentity WHEN 'a' THEN 'ALWAYS' WHEN 'd' THEN 'BY DEFAULT' END AS identity,
           CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::pg_catalog.regcollation::pg_catalog.text END
             AS collation,
           CASE a.attstorage WHEN 'p' THEN 'plain' WHEN 'e' THEN 'external' WHEN 'm' THEN 'main'
                ELSE 'extended' END AS storage,
           CASE a.attcompression WHEN 'p' THEN 'pglz' WHEN 'l' THEN 'lz4' END AS compression,
           nullif(a.attstattarget, -1) AS statistics,
           array_to_string(ARRAY(SELECT o FROM unnest(a.attoptions) o ORDER BY o), ', ')
             AS options,
           array_to_string(ARRAY(SELECT o FROM unnest(a.attfdwoptions) o ORDER BY o), ', ')
             AS "foreign options",
           col_description(c.oid, a.attnum) AS comment,
           {column_privileges} AS privileges
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
      AND a.attnum > 0 AND NOT a.attisdropped AND {relation_c}
      AND (c.relkind <> 'c' OR {composite_c})
    """,
        """
    SELECT 'constraint', coalesce(c.relname, t.typname), k.conname,
           pg_get_constraintdef(k.oid) AS definition,
           CASE WHEN k.coninhcount = 0 THEN 'local' WHEN k.conislocal THEN 'local, inherited'
                ELSE 'inherited' END AS "defined",
           obj_description(k.oid, 'pg_constraint') AS comment
    FROM pg_constraint k
    LEFT JOIN pg_class c ON c.oid = k.conrelid
    LEFT JOIN pg_type t ON t.oid = k.contypid
    WHERE k.connamespace = %(schema)s::pg_catalog.regnamespace
      AND (c.oid IS NULL OR {relation_c})
      AND (t.oid IS NULL OR {type_t})
      -- PostgreSQL 18 records NOT NULL as a constraint: the column's `not null` says
      -- it already, unless the constraint has a name or a state of its own (coalesce:
      -- of a table's, the type's name is NULL, and so would be `IN` for any other name)
      AND NOT coalesce(k.contype = 'n' AND k.convalidated AND NOT k.connoinherit AND k.conname IN (
               left(c.relname || '_' || (SELECT a.attname FROM pg_attribute a
                    WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]) || '_not_null', 63),
               left(t.typname || '_not_null', 63))
               AND obj_description(k.oid, 'pg_constraint') IS NULL, false)
    """,
        """
    SELECT 'index', t.relname, c.relname,
           pg_get_indexdef(i.indexrelid) AS definition,
           i.indisvalid AS valid,
           i.indisclustered AS clustered,
           (SELECT h.inhparent::pg_catalog.regclass::pg_catalog.text FROM pg_inherits h
            WHERE h.inhrelid = i.indexrelid) AS "attached to",
           obj_description(c.oid, 'pg_class') AS comment
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_class t ON t.oid = i.indrelid
    WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace AND {relation_t}
    """,
        """
    SELECT 'trigger', c.relname, g.tgname,
           pg_get_triggerdef(g.oid) AS definition,
           CASE g.tgenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica'
                WHEN 'A' THEN 'always' ELSE 'enabled' END AS enabled,
           obj_description(g.oid, 'pg_trigger') AS comment
    FROM pg_trigger g
    JOIN pg_class c ON c.oid = g.tgrelid
    WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace AND NOT g.tgisinternal
      AND {relation_c}
    """,
        """
    SELECT 'rule', c.relname, r.rulename,
           pg_get_ruledef(r.oid) AS definition,
           CASE r.ev_enabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica'
                WHEN 'A' THEN 'always' ELSE 'enabled' END AS enabled,
           obj_description(r.oid, 'pg_rewrite') AS comment
    FROM pg_rewrite r
    JOIN pg_class c ON c.oid = r.ev_class
    WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace AND r.rulename <> '_RETURN'
      AND {relation_c}
    """,
        """
    SELECT 'policy', c.relname, p.polname,
           CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
           CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END AS "as",
           (SELECT string_agg(role_, ', ' ORDER BY role_) FROM (
              SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END AS role_
              FROM unnest(p.polroles) r) roles) AS "to",
           pg_get_expr(p.polqual, p.polrelid) AS using,
           pg_get_expr(p.polwithcheck, p.polrelid) AS "with check",
           obj_description(p.oid, 'pg_policy') AS comment
    FROM pg_policy p
    JOIN pg_class c ON c.oid = p.polrelid
    WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace
    """,
        """
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                WHEN 'w' THEN 'window function' ELSE 'function' END,
           p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           pg_get_function_arguments(p.oid) AS arguments,
           pg_get_function_result(p.oid) AS returns,
           l.lanname AS language,
           coalesce(pg_get_function_sqlbody(p.oid), p.prosrc) AS body,
           (SELECT concat_ws(', ', 'sfunc ' || g.aggtransfn::pg_catalog.regproc::pg_catalog.text,
                   'stype ' || format_type(g.aggtranstype, NULL),
                   'finalfunc ' || nullif(g.aggfinalfn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'combinefunc ' || nullif(g.aggcombinefn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'initcond ' || quote_literal(g.agginitval),
                   'sortop ' || nullif(g.aggsortop, 0)::pg_catalog.regoperator::pg_catalog.text,
                   'kind ' || g.aggkind::pg_catalog.text,
                   'msfunc ' || nullif(g.aggmtransfn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'minvfunc ' || nullif(g.aggminvtransfn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'mstype ' || format_type(nullif(g.aggmtranstype, 0), NULL),
                   'mfinalfunc ' || nullif(g.aggmfinalfn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'minitcond ' || quote_literal(g.aggminitval),
                   CASE WHEN g.aggfinalextra THEN 'finalfunc_extra' END,
                   CASE WHEN g.aggmfinalextra THEN 'mfinalfunc_extra' END,
                   'finalfunc_modify ' || g.aggfinalmodify::pg_catalog.text,
                   'mfinalfunc_modify ' || g.aggmfinalmodify::pg_catalog.text,
                   'serialfunc ' || nullif(g.aggserialfn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'deserialfunc ' || nullif(g.aggdeserialfn, 0)::pg_catalog.regproc::pg_catalog.text,
                   'sspace ' || nullif(g.aggtransspace, 0)::pg_catalog.text,
                   'msspace ' || nullif(g.aggmtransspace, 0)::pg_catalog.text)
            FROM pg_aggregate g WHERE g.aggfnoid = p.oid) AS aggregate,
           CASE p.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE'
                ELSE 'VOLATILE' END AS volatility,
           p.proisstrict AS strict,
           p.prosecdef AS "security definer",
           p.proleakproof AS leakproof,
           CASE p.proparallel WHEN 's' THEN 'SAFE' WHEN 'r' THEN 'RESTRICTED'
                ELSE 'UNSAFE' END AS parallel,
           p.procost AS cost,
           p.prorows AS rows,
           array_to_string(ARRAY(SELECT o FROM unnest(p.proconfig) o ORDER BY o), ', ')
             AS settings,
           nullif(p.prosupport, 0)::pg_catalog.regproc::pg_catalog.text AS support,
           p.probin AS "object file",
           obj_description(p.oid, 'pg_proc') AS comment,
           {function_privileges} AS privileges
    FROM pg_proc p
    JOIN pg_language l ON l.oid = p.prolang
    WHERE p.pronamespace = %(schema)s::pg_catalog.regnamespace AND {function_p}
    """,
        """
    SELECT CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range'
                WHEN 'c' THEN 'composite type' ELSE 'type' END,
           t.typname, t.typname,
           (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
            FROM pg_enum e WHERE e.enumtypid = t.oid) AS "values",
           format_type(nullif(t.typbasetype, 0), nullif(t.typtypmod, -1)) AS "base type",
           t.typnotnull AS "not null",
           pg_get_expr(t.typdefaultbin, 0) AS default,
           CASE WHEN t.typtype = 'd' AND t.typcollation <> b.typcollation
                THEN t.typcollation::pg_catalog.regcollation::pg_catalog.text END AS collation,
           (SELECT format_type(r.rngsubtype, NULL)
                   || ' ' || (SELECT o.opcname FROM pg_opclass o WHERE o.oid = r.rngsubopc)
                   || coalesce(' COLLATE ' || nullif(r.rngcollation, 0)::pg_catalog.regcollation::pg_catalog.text, '')
                   || coalesce(' CANONICAL ' || nullif(r.rngcanonical, 0)::pg_catalog.regproc::pg_catalog.text, '')
                   || coalesce(' SUBTYPE_DIFF ' || nullif(r.rngsubdiff, 0)::pg_catalog.regproc::pg_catalog.text, '')
            FROM pg_range r WHERE r.rngtypid = t.oid) AS subtype,
           obj_description(t.oid, 'pg_type') AS comment,
           {type_privileges} AS privileges
    FROM pg_type t
    LEFT JOIN pg_type b ON b.oid = t.typbasetype
    WHERE t.typnamespace = %(schema)s::pg_catalog.regnamespace AND t.typtype <> 'm'
      AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
      AND NOT EXISTS (SELECT FROM pg_type e WHERE e.typarray = t.oid)
      AND {type_t}
    """,
        """
    SELECT 'extension', x.extname, x.extname, x.extversion AS version,
           obj_description(x.oid, 'pg_extension') AS comment
    FROM pg_extension x
    WHERE x.extnamespace = %(schema)s::pg_catalog.regnamespace
    """,
        """
    SELECT 'statistics', c.relname, s.stxname,
           pg_get_statisticsobjdef(s.oid) AS definition,
           nullif(s.stxstattarget, -1) AS target,
           obj_description(s.oid, 'pg_statistic_ext') AS comment
    FROM pg_statistic_ext s
    JOIN pg_class c ON c.oid = s.stxrelid
    WHERE s.stxnamespace = %(schema)s::pg_catalog.regnamespace
    """,
        """
    SELECT 'operator', o.oid::pg_catalog.regoperator::pg_catalog.text,
           o.oid::pg_catalog.regoperator::pg_catalog.text,
           o.oprcode::pg_catalog.regproc::pg_catalog.text AS function,
           nullif(o.oprcom, 0)::pg_catalog.regoperator::pg_catalog.text AS commutator,
           nullif(o.oprnegate, 0)::pg_catalog.regoperator::pg_catalog.text AS negator,
           nullif(o.oprrest, 0)::pg_catalog.regproc::pg_catalog.text AS restrict,
           nullif(o.oprjoin, 0)::pg_catalog.regproc::pg_catalog.text AS "join",
           o.oprcanhash AS hashes,
           o.oprcanmerge AS merges,
           obj_description(o.oid, 'pg_operator') AS comment
    FROM pg_operator o
    WHERE o.oprnamespace = %(schema)s::pg_catalog.regnamespace AND {operator_o}
    """,
        # The rarer kinds, by name and comment.
        _RARER_QUERY,
    )
)

# Properties written by hand (a function's body, a comment, as the file wrote them):
# never rewritten.
VERBATIM = frozenset({"body", "comment"})


def signature(
    conn: psycopg.Connection[Any],
    schema: str,
    as_schema: str | None = None,
    *,
    as_major: int | None = None,
) -> Signature:
    """Every object of `schema` with its properties: two copies of one schema (live and
    scratch, or two databases) are told apart by content, not by what they are called
    (`_neutral`); `as_schema` is the name of the copy this one is compared with;
    `as_major`, the major version of the other copy's server, where older than this
    one's: what only a newer server holds is left out (`_as_major`). Reads only."""
    result: Signature = {}
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        # As PostgreSQL writes the names in a definition: quoted only where they must be.
        row = conn.execute(
            "SELECT quote_ident(%s), quote_ident(%s)", (schema, as_schema or schema)
        ).fetchone()
        quoted, as_quoted = str(row[0]), str(row[1])  # type: ignore[index]
        for query in QUERIES:
            cursor = conn.execute(query, {"schema": schema})
            names = [column.name for column in cursor.description or ()][3:]
            for kind, table, name, *values in cursor.fetchall():
                if table == HISTORY_TABLE:  # the table, and its parts by their table
                    continue
                result[(kind, _neutral(table, quoted), _neutral(name, quoted))] = {
                    prop: value
                    if prop in VERBATIM
                    else _neutral(value, quoted, as_quoted if prop == "settings" else None)
                    for prop, value in zip(names, values, strict=True)
                }
    if as_major is not None and conn.info.server_version // 10000 > as_major:
        return _as_major(result, as_major)
    return result


_MAINTAIN = re.compile(r" MAINTAIN(?: WITH GRANT OPTION)?$")


def _as_major(found: Signature, major: int) -> Signature:
    """`found` as a server of `major` could hold it: from 18, a table's NOT NULL is a
    constraint of its own, and from 17 a domain's (the column's or the domain's `not
    null` says it on every major); from 17, tables have the MAINTAIN privilege, which
    the owner holds by default. Compared with an older server's copy, each read as a
    difference no migration made. A NOT NULL an older server cannot hold at all (NOT
    VALID, NO INHERIT) stays: the two copies do differ."""
    kept: Signature = {}
    for key, props in found.items():
        if key[0] == "constraint" and _plain_not_null(str(props.get("definition")), major):
            continue
        if major < 17 and isinstance(props.get("privileges"), str):
            grants = [g for g in props["privileges"].split(", ") if not _MAINTAIN.search(g)]
            props = {**props, "privileges": ", ".join(grants) or None}
        kept[key] = props
    return kept


def _plain_not_null(definition: str, major: int) -> bool:
    """A NOT NULL constraint that a server of `major` holds as a column's or a domain's
    `not null` instead: a table's (`NOT NULL col`) before 18, a domain's (`NOT NULL`)
    before 17; never one NOT VALID or NO INHERIT, which no older server holds so."""
    if definition.endswith((" NOT VALID", " NO INHERIT")):
        return False
    if definition == "NOT NULL":
        return major < 17
    return major < 18 and definition.startswith("NOT NULL ")


# What a definition holds that is no qualifier to take out: a string literal or a quoted
# identifier as PostgreSQL writes them (the quote doubled inside), each skipped whole, so
# that the quote in an identifier (`"it's"`) starts no literal.
_QUOTED = r"'(?:[^']|'')*'" + r'|"(?:[^"]|"")*"'


def _neutral(value: Any, quoted: str, settings_as: str | None = None) -> Any:
    """`value` without what names the copy it was read from.

    In a definition, the schema's own `schema.` qualification (PostgreSQL writes it in
    `ON schema.table`, `REFERENCES ...`), outside string literals and quoted names: a default or a check
    that says `'public.x'` says so on both sides, and a change to it is drift. In a
    function's settings (`settings_as`, the other copy's name), the schema's bare name
    written as the other copy's, as `SET search_path FROM CURRENT` takes it; a name a
    file wrote (`SET search_path = public, pg_temp`) reads the same on both sides.
    """
    if not isinstance(value, str):
        return value
    if settings_as is not None:
        if settings_as == quoted:
            return value
        return re.sub(rf'(?<![\w$"]){re.escape(quoted)}(?![\w$])', lambda _: settings_as, value)
    # The qualifier first (it may be a quoted identifier itself), else a quoted token whole.
    own = re.compile(rf'(?P<own>(?<![\w$"]){re.escape(quoted)}\.)|{_QUOTED}')
    return own.sub(lambda found: "" if found["own"] else found.group(), value)
