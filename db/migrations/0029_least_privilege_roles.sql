-- Least privilege (docs/security.md): the role that runs the migrations owns every
-- object; `ci_app` (the CI system's writer) may read and write executions and
-- nothing else; `ci_reader` (reports) may only read them. Neither may create,
-- alter, drop or truncate anything, nor see the runner's history in schema cicd_db
-- (never granted to them: no USAGE on that schema).
--
-- Roles belong to the cluster, not to a database: this file creates the two as
-- NOLOGIN roles when they are missing and the migrating role may create roles;
-- the targets (embedded server, init-local, the dev stack) give them LOGIN and a
-- password. Missing and not creatable: refused, with the statements that fix it.
--
-- Run numbers: the trigger's function becomes SECURITY DEFINER, so it writes the
-- counter table as its owner and the writer needs no grant on that table; its
-- search_path is fixed, pg_temp last, so no temporary table of the caller's can
-- stand in for the counter table.
--
-- Live: GRANT, ALTER DEFAULT PRIVILEGES and ALTER FUNCTION change catalogs only;
-- no statement here waits for a writer for longer than lock_timeout. One lock is
-- taken on purpose, SHARE on pipeline_executions (below): it waits for the
-- transactions that write runs, and for a VACUUM, ANALYZE or CREATE INDEX
-- CONCURRENTLY of the table, at most lock_timeout (then the runner runs the file
-- again); while it waits and until the commit, inserts, updates and deletes of runs
-- wait, reads do not.
--
-- The earlier text of this file applied the same changes without that lock; a
-- database that applied it has applied this file (docs/migrations.md, "Mending an
-- applied file"). Its checksums, as Git stores it and as Git on Windows checks it out:
-- cicd-db: earlier-checksum bac44d027496844ae3c69f6670a939e04bd118314ab98a6a0e8ccba305d7c265
-- cicd-db: earlier-checksum e3bc0ca841235d6146abda6fa2b260cd1e3d0f6fa85c918cb213b7c5182d3642
-- The texts of this file since the lock, which differ from this one in comments only
-- (commits 78c8f18, ac97517 and ff983fd), each as Git stores it and on Windows:
-- cicd-db: earlier-checksum 12eaa6f48d819ea12523e5f76a0d9c43b7730e8fdab6120f8b7d9b1ceebabb7e
-- cicd-db: earlier-checksum cb062cad16dde882174548b531fc9f12e92b3f0008244c1dcc1af4837ac5037b
-- cicd-db: earlier-checksum 614d7f701bcae03f0ef0b4816d133c61c11494f12f49ff8f4382995dc707cc23
-- cicd-db: earlier-checksum c6a2b7cfe63ef62f63dca840c0dcd879f2060121a5c55b90c3bbcaf7d76826f3
-- cicd-db: earlier-checksum 68d027ad9f82ab5bf25e8ad869f08f9936b5580a2730719a6d4750fc62de1866
-- cicd-db: earlier-checksum 4dd2873f28e6d5ecba7a45b728dde1aa1ea8cf925803a8a6a34ca8d5d542e92d
SET lock_timeout = '1s';
SET statement_timeout = '60s';

DO $$
DECLARE
    missing TEXT[] := ARRAY(
        SELECT wanted.name FROM unnest(ARRAY['ci_app', 'ci_reader']) AS wanted (name)
        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname = wanted.name)
    );
    role_name TEXT;
BEGIN
    FOREACH role_name IN ARRAY missing LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format(
                'role %s does not exist and %s may not create roles; as an admin, run '
                '`CREATE ROLE ci_app NOLOGIN; CREATE ROLE ci_reader NOLOGIN` (or '
                '`cicd-db init-local --admin-url ...`), then migrate again',
                role_name, current_user
            );
        END;
    END LOOP;
END
$$;

-- The schema the tables live in (public, unless the migrations ran elsewhere).
DO $$
DECLARE
    home TEXT := (
        SELECT n.nspname FROM pg_catalog.pg_class AS c
        INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = 'pipeline_executions'::REGCLASS
    );
    owner_name TEXT := (
        SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class AS c
        WHERE c.oid = 'pipeline_executions'::REGCLASS
    );
    creator TEXT;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ci_app, ci_reader', home);
    -- Tables a later migration creates: covered for both roles, in this schema
    -- only (the history's schema stays the owner's). For the tables' owner, and
    -- for the role migrating now when it is another (it creates the next tables).
    FOREACH creator IN ARRAY ARRAY(SELECT DISTINCT unnest(ARRAY[owner_name, current_user])) LOOP
        EXECUTE format(
            'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I '
            'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ci_app',
            creator, home
        );
        EXECUTE format(
            'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I '
            'GRANT SELECT ON TABLES TO ci_reader', creator, home
        );
        EXECUTE format(
            'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I '
            'GRANT USAGE, SELECT ON SEQUENCES TO ci_app', creator, home
        );
    END LOOP;
    EXECUTE format(
        'ALTER FUNCTION %I.next_pipeline_run_number() SECURITY DEFINER '
        'SET search_path = pg_catalog, %I, pg_temp',
        home, home
    );
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE
ON pipeline_executions, stage_executions, job_executions TO ci_app;
GRANT SELECT ON pipeline_executions, stage_executions, job_executions TO ci_reader;

-- The counters are the trigger's alone (SECURITY DEFINER above). A trigger never
-- checks EXECUTE of the inserting role, and nobody calls the function by hand.
-- (sqlfluff reads the keyword PUBLIC as an identifier, hence the noqa.)
-- Also from the two roles, should an operator have granted them every table (as
-- one switching the CI system to ci_app during the upgrade from the plan must).
--
-- A writer's insert may have looked the trigger's function up before this commits
-- (not yet SECURITY DEFINER) and reach the counters after it (no longer granted), and
-- fail with permission denied. SHARE waits for every transaction that writes runs to
-- end, and new ones wait for this commit, so each insert sees the function and the
-- grants both as they were or both as they are.
LOCK TABLE pipeline_executions IN SHARE MODE;
REVOKE ALL ON pipeline_run_counters FROM PUBLIC, ci_app, ci_reader; -- noqa: CP02
REVOKE EXECUTE ON FUNCTION next_pipeline_run_number() FROM PUBLIC; -- noqa: CP02

-- PostgreSQL 14 and older let every role create objects in public (15 stopped):
-- a writer could plant a function or table there that the owner later runs.
-- On 14 and older only public's owner (the bootstrap superuser) may revoke it, so
-- a migrating role that is not it is told the fix rather than left believing it.
DO $$
BEGIN
    IF pg_catalog.to_regnamespace('public') IS NULL THEN
        RETURN;
    END IF;
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    IF EXISTS (
        SELECT FROM pg_catalog.pg_namespace AS n
        CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) AS acl
        WHERE n.nspname = 'public' AND acl.grantee = 0 AND acl.privilege_type = 'CREATE'
    ) THEN
        RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = format(
            'every role may create objects in schema public and %s, not its owner, '
            'cannot revoke that; as a superuser run `REVOKE CREATE ON SCHEMA public FROM '
            'PUBLIC` in this database, then migrate again',
            current_user
        );
    END IF;
END
$$;
