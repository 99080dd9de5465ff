-- The run's roll-up trigger (0037) locks the run's jobs before it reads them. That
-- lock's query was a join of the run's stages and all jobs, which on a table never
-- analysed (a database just migrated, a bulk import before autovacuum's first look)
-- the planner made a scan of every job, once for each run finished: a transaction
-- that finished 1,000 runs of 100 jobs took 7 s at its commit, 9,000 runs did not end
-- in 4 minutes. The jobs are now locked stage by stage through their index, whatever
-- the statistics say (OFFSET 0, as 0037's read of them already is), in the order of
-- the stages' ids and the jobs' ids within each; NOWAIT and its retries stay.
--
-- Live: CREATE OR REPLACE and ALTER change catalogs only, in one transaction: no
-- roll-up runs the new body without its SECURITY DEFINER (0029).
SET lock_timeout = '1s';
SET statement_timeout = '60s';

CREATE OR REPLACE FUNCTION cicd_db_roll_up_run() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
DECLARE
    attempt INTEGER := 0;
BEGIN
    LOOP
        BEGIN
            PERFORM FROM stage_executions AS s
            WHERE s.pipeline_execution_id = NEW.id ORDER BY s.id FOR SHARE NOWAIT;
            PERFORM FROM (
                SELECT s.id FROM stage_executions AS s
                WHERE s.pipeline_execution_id = NEW.id ORDER BY s.id
            ) AS stages
            CROSS JOIN LATERAL (
                SELECT FROM job_executions AS j
                WHERE j.stage_execution_id = stages.id
                ORDER BY j.id OFFSET 0 FOR SHARE NOWAIT
            ) AS jobs;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            attempt := attempt + 1;
            EXIT WHEN attempt >= 100;
            PERFORM pg_catalog.pg_sleep(0.02);
        END;
    END LOOP;
    PERFORM cicd_db_roll_up(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

-- As the owner, with a fixed search path (CREATE OR REPLACE resets both; its grants
-- stay); nobody else calls it by hand.
DO $$
DECLARE
    home TEXT := (
        SELECT n.nspname FROM pg_catalog.pg_class AS c
        INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = 'pipeline_executions'::REGCLASS
    );
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %I.cicd_db_roll_up_run() SECURITY DEFINER '
        'SET search_path = pg_catalog, %I, pg_temp',
        home, home
    );
END
$$;
