-- A guard for 0003 to 0005, which turn the plan's TIMESTAMP columns into
-- TIMESTAMPTZ: in which zone were the stored values written? A TIMESTAMP keeps
-- no offset, so the values are only right if we read them in the zone the old
-- application's sessions had. The plan sets `ALTER ROLE ci_user SET timezone TO
-- 'UTC'`; this function checks that every role that can write the three tables
-- had UTC (its own setting in this database, else its own, else the database's,
-- else the server's), and refuses otherwise instead of shifting every instant.
--
-- The operator can name the zone the stored values are in, for the run only:
--   PGOPTIONS='-c cicd_db.legacy_time_zone=Europe/Paris' cicd-db migrate up ...
-- or for the database: ALTER DATABASE ... SET cicd_db.legacy_time_zone = '...'.
-- A zone other than UTC costs a table rewrite under ACCESS EXCLUSIVE (db/README.md).
-- Dropped by 0005. Creating a function takes no lock on any table.
--
-- Mended: the earlier text judged a zone by `AT TIME ZONE zone` against
-- `AT TIME ZONE 'UTC'`, which PostgreSQL 18 reads first as an abbreviation of the
-- session's own zone: under the POSIX zone 'UTC+5' (five hours west), 'UTC' is that
-- zone, so writers in it passed as UTC and 0003 to 0005 shifted every stored time by
-- five hours. Each zone is now read as its writers' sessions read it. The function is
-- the only thing this file makes, and 0005 drops it: a database past 0005 has nothing
-- of it; one that applied the earlier text and not yet 0005 re-creates it with this
-- text before going on (db/README.md, "Old times in another zone").
-- cicd-db: earlier-checksum 927669512a139a75edf53c8e5b9c11ce6db214c565547294fa1c485b9357fe2a
-- cicd-db: earlier-checksum 6bbbf1a37180c5b9e4da0ab428f19e22ed4e640242890bea4a33281e66da4b8c
SET lock_timeout = '1s';
SET statement_timeout = '60s';

CREATE OR REPLACE FUNCTION cicd_db_legacy_time_zone() RETURNS TEXT
LANGUAGE plpgsql
AS $$
DECLARE
    named TEXT := nullif(current_setting('cicd_db.legacy_time_zone', TRUE), '');
    caller_zone TEXT := current_setting('TimeZone');
    server_zone TEXT;
    suspects TEXT;
    writer RECORD;
BEGIN
    IF named IS NOT NULL THEN
        -- An unknown zone fails here, before any table is touched.
        PERFORM pg_catalog.now() AT TIME ZONE named;
        RETURN named;
    END IF;

    -- The server's default: from its configuration files when we may read them,
    -- else from our own session when no role or database setting overrode it.
    IF pg_catalog.has_function_privilege(
        'pg_catalog.pg_show_all_file_settings()', 'EXECUTE'
    ) THEN
        SELECT coalesce(
            (
                SELECT f.setting FROM pg_catalog.pg_file_settings AS f
                WHERE lower(f.name) = 'timezone' AND f.applied
                ORDER BY f.seqno DESC LIMIT 1
            ),
            (SELECT s.boot_val FROM pg_catalog.pg_settings AS s WHERE s.name = 'TimeZone')
        ) INTO server_zone;
    ELSE
        SELECT s.reset_val INTO server_zone FROM pg_catalog.pg_settings AS s
        WHERE s.name = 'TimeZone'
            AND s.source IN ('default', 'configuration file', 'command line');
    END IF;

    FOR writer IN
        WITH settings AS (
            SELECT
                d.setrole,
                d.setdatabase,
                substr(c.entry, strpos(c.entry, '=') + 1) AS zone
            FROM pg_catalog.pg_db_role_setting AS d
            CROSS JOIN LATERAL unnest(d.setconfig) AS c (entry)
            WHERE lower(split_part(c.entry, '=', 1)) = 'timezone'
                AND d.setdatabase IN (0, (
                    SELECT db.oid FROM pg_catalog.pg_database AS db
                    WHERE db.datname = pg_catalog.current_database()
                ))
        )

        SELECT
            r.rolname,
            coalesce(
                (SELECT s.zone FROM settings AS s WHERE s.setrole = r.oid AND s.setdatabase <> 0),
                (SELECT s.zone FROM settings AS s WHERE s.setrole = r.oid AND s.setdatabase = 0),
                (SELECT s.zone FROM settings AS s WHERE s.setrole = 0),
                server_zone
            ) AS zone
        FROM pg_catalog.pg_roles AS r
        WHERE r.rolcanlogin AND EXISTS (
            SELECT FROM pg_catalog.pg_class AS t
            WHERE t.oid IN (
                to_regclass('pipeline_executions'),
                to_regclass('stage_executions'),
                to_regclass('job_executions')
            )
            -- A superuser may write anything; count it only when it owns the tables.
            AND (NOT r.rolsuper OR t.relowner = r.oid)
            AND pg_catalog.has_table_privilege(r.oid, t.oid, 'INSERT, UPDATE')
        )
        ORDER BY r.rolname
    LOOP
        -- Not UTC: some instant from 1970 to 2050 has another offset there, read as
        -- the writer's sessions read it, with TimeZone set to its zone (for this
        -- transaction; put back below). A zone PostgreSQL no longer knows is a suspect.
        BEGIN
            PERFORM set_config('TimeZone', writer.zone, TRUE);
            IF writer.zone IS NULL OR EXISTS (
                SELECT FROM generate_series(
                    TIMESTAMP '1970-01-01', TIMESTAMP '2050-01-01', INTERVAL '1 month'
                ) AS m (instant)
                WHERE extract(TIMEZONE FROM m.instant::TIMESTAMPTZ) <> 0
            ) THEN
                suspects := concat_ws(', ', suspects, format(
                    '%s: %s', writer.rolname,
                    coalesce(writer.zone, 'the server default, which we cannot read')
                ));
            END IF;
        EXCEPTION WHEN invalid_parameter_value THEN
            suspects := concat_ws(', ', suspects, format('%s: %s', writer.rolname, writer.zone));
        END;
    END LOOP;
    PERFORM set_config('TimeZone', caller_zone, TRUE);

    IF suspects IS NOT NULL THEN
        RAISE EXCEPTION USING
        ERRCODE = 'object_not_in_prerequisite_state',
        MESSAGE = format(
            'refusing to convert TIMESTAMP to TIMESTAMPTZ: the stored times may not be '
            'in UTC (roles that write them, and their time zone: %s); reading them as '
            'UTC would shift every instant. Name the zone they are in: '
            'PGOPTIONS=''-c cicd_db.legacy_time_zone=ZONE'' (UTC if they are UTC)',
            suspects
        ),
        HINT = 'Run again with PGOPTIONS=''-c cicd_db.legacy_time_zone=Europe/Paris'' '
        '(the zone the old application wrote in; UTC if it was UTC after all), or '
        'ALTER DATABASE ... SET cicd_db.legacy_time_zone = ''...''. A zone other than '
        'UTC rewrites each table under an ACCESS EXCLUSIVE lock: see db/README.md.';
    END IF;
    RETURN 'UTC';
END
$$;
