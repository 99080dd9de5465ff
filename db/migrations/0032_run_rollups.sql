-- Insights' rollup (docs/reports.md, "At scale"): one row per finished run with
-- its stages' and jobs' figures as the insights statement reads them (name,
-- status, seconds of what finished SUCCESS or FAILED, and whether a job allows
-- failure), in arrays. Reading a pipeline's window then reads one row per run
-- instead of 5 stage and 20 job rows through two indexes. The values are kept,
-- not sketches: percentiles are computed over them, exactly as over the rows.
--
-- Kept by triggers, whoever writes: when a run becomes finished, a trigger
-- deferred to the commit writes its row from its stages and jobs as they are then.
-- That is once per run, not once per job move. A finished run's stages and jobs
-- are final (the store never moves a finished row, nor adds one under a finished
-- parent); should a finished stage or job be changed by hand anyway, 0033 and
-- 0034 write its run's row again. A run inserted already finished (an import)
-- gets its row at the commit too; a run without a row (older than this file, or
-- loaded with triggers off) is read from its rows, so the figures never depend on
-- whether a run has its row: 0035 fills the rows of the runs there already.
-- A run's row goes with the run (ON DELETE CASCADE: retention deletes it).
--
-- Roles (docs/security.md): the functions run as their owner, so the writer
-- keeps the rollup by recording runs but may not write it directly; both roles
-- read it. Search paths are fixed, pg_temp last, as for the run numbers (0029).
--
-- Live: a new table; its foreign key and the trigger take SHARE ROW EXCLUSIVE on
-- pipeline_executions (catalog only, nothing to scan in an empty table) under a
-- short lock_timeout: writers of runs wait that long at most, reads never.
SET lock_timeout = '250ms';
SET statement_timeout = '10s';

CREATE TABLE IF NOT EXISTS run_rollups (
    run_id UUID PRIMARY KEY REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    -- The run's stages, in execution order.
    stage_names TEXT[] NOT NULL,
    stage_statuses TEXT[] NOT NULL,
    stage_seconds FLOAT8[] NOT NULL,
    -- The run's jobs, by stage order then job name; job_stages names each one's stage.
    job_stages TEXT[] NOT NULL,
    job_names TEXT[] NOT NULL,
    job_statuses TEXT[] NOT NULL,
    job_allows_failure BOOLEAN[] NOT NULL,
    job_seconds FLOAT8[] NOT NULL
);

-- The rows of `runs`: written for those finished, removed for the others. Seconds
-- are computed as insights computes them from the rows (the same expression).
CREATE OR REPLACE FUNCTION cicd_db_roll_up(runs UUID[]) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM run_rollups AS u
    WHERE u.run_id = ANY(runs) AND NOT EXISTS (
        SELECT FROM pipeline_executions AS r
        WHERE r.id = u.run_id AND r.status IN ('SUCCESS', 'FAILED', 'CANCELED')
    );
    INSERT INTO run_rollups AS u (
        run_id, stage_names, stage_statuses, stage_seconds,
        job_stages, job_names, job_statuses, job_allows_failure, job_seconds
    )
    SELECT
        r.id,
        stages.names,
        stages.statuses,
        stages.seconds,
        jobs.stages,
        jobs.names,
        jobs.statuses,
        jobs.allows_failure,
        jobs.seconds
    FROM pipeline_executions AS r
    CROSS JOIN LATERAL (
        SELECT
            coalesce(array_agg(s.stage_name ORDER BY s.execution_order), '{}') AS names,
            coalesce(array_agg(s.status ORDER BY s.execution_order), '{}') AS statuses,
            coalesce(array_agg(
                CASE WHEN s.status IN ('SUCCESS', 'FAILED')
                    THEN extract(EPOCH FROM s.completion_time - s.start_time)::FLOAT8
                END ORDER BY s.execution_order
            ), '{}') AS seconds
        FROM stage_executions AS s WHERE s.pipeline_execution_id = r.id
    ) AS stages
    CROSS JOIN LATERAL (
        SELECT
            coalesce(array_agg(s.stage_name ORDER BY s.execution_order, j.job_name), '{}')
            AS stages,
            coalesce(array_agg(j.job_name ORDER BY s.execution_order, j.job_name), '{}')
            AS names,
            coalesce(array_agg(j.status ORDER BY s.execution_order, j.job_name), '{}')
            AS statuses,
            coalesce(array_agg(j.allows_failure ORDER BY s.execution_order, j.job_name), '{}')
            AS allows_failure,
            coalesce(array_agg(
                CASE WHEN j.status IN ('SUCCESS', 'FAILED')
                    THEN extract(EPOCH FROM j.completion_time - j.start_time)::FLOAT8
                END ORDER BY s.execution_order, j.job_name
            ), '{}') AS seconds
        FROM stage_executions AS s
        -- Stage by stage through the jobs' index, whatever the statistics say: OFFSET 0
        -- keeps the planner from turning this into a join, which on a young table's
        -- statistics it planned as a scan of every job, once a finished run.
        CROSS JOIN LATERAL (
            SELECT
                k.job_name,
                k.status,
                k.allows_failure,
                k.start_time,
                k.completion_time
            FROM job_executions AS k
            WHERE k.stage_execution_id = s.id
            OFFSET 0
        ) AS j
        WHERE s.pipeline_execution_id = r.id
    ) AS jobs
    WHERE r.id = ANY(runs) AND r.status IN ('SUCCESS', 'FAILED', 'CANCELED')
    ON CONFLICT (run_id) DO UPDATE SET
        stage_names = excluded.stage_names,
        stage_statuses = excluded.stage_statuses,
        stage_seconds = excluded.stage_seconds,
        job_stages = excluded.job_stages,
        job_names = excluded.job_names,
        job_statuses = excluded.job_statuses,
        job_allows_failure = excluded.job_allows_failure,
        job_seconds = excluded.job_seconds;
END
$$;

-- The triggers' functions: the run of the row (0033 and 0034 add the stage's and
-- the job's), rolled up at the commit.
CREATE OR REPLACE FUNCTION cicd_db_roll_up_run() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM cicd_db_roll_up(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION cicd_db_roll_up_stage() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM cicd_db_roll_up(ARRAY[NEW.pipeline_execution_id, OLD.pipeline_execution_id]);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION cicd_db_roll_up_job() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM cicd_db_roll_up(ARRAY(
        SELECT s.pipeline_execution_id FROM stage_executions AS s
        WHERE s.id IN (NEW.stage_execution_id, OLD.stage_execution_id)
    ));
    RETURN NULL;
END
$$;

-- Every run there already, in batches of `batch_runs` runs by id, each batch its
-- own transaction (COMMIT: needs autocommit, hence 0035 is no-transaction). A
-- batch that meets a busy row waits and tries again. Idempotent and resumable:
-- runs that have their row are left alone. Also what a bulk load without
-- triggers calls afterwards (bench/report.py).
CREATE OR REPLACE PROCEDURE cicd_db_backfill_run_rollups(batch_runs INTEGER DEFAULT 2000)
LANGUAGE plpgsql
AS $$
DECLARE
    last_id UUID := '00000000-0000-0000-0000-000000000000';
    batch UUID[];
    attempt INTEGER;
BEGIN
    LOOP
        batch := ARRAY(
            SELECT r.id FROM pipeline_executions AS r
            WHERE r.id > last_id ORDER BY r.id LIMIT batch_runs
        );
        EXIT WHEN cardinality(batch) = 0;
        last_id := batch[cardinality(batch)];
        attempt := 0;
        LOOP
            BEGIN
                PERFORM cicd_db_roll_up(ARRAY(
                    SELECT r.id FROM pipeline_executions AS r
                    WHERE r.id = ANY(batch) AND r.status IN ('SUCCESS', 'FAILED', 'CANCELED')
                    AND NOT EXISTS (SELECT FROM run_rollups AS u WHERE u.run_id = r.id)
                ));
                EXIT;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                attempt := attempt + 1;
                IF attempt >= 20 THEN
                    RAISE;
                END IF;
                PERFORM pg_catalog.pg_sleep(0.05 * attempt);
            END;
        END LOOP;
        COMMIT;
    END LOOP;
END
$$;

-- As their owner, with a fixed search path: the schema the tables live in. (Not
-- the procedure: one with a SET clause may not COMMIT; only the owner runs it.)
DO $$
DECLARE
    home TEXT := (
        SELECT n.nspname FROM pg_catalog.pg_class AS c
        INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = 'pipeline_executions'::REGCLASS
    );
    routine TEXT;
BEGIN
    FOREACH routine IN ARRAY ARRAY[
        'cicd_db_roll_up(UUID[])', 'cicd_db_roll_up_run()', 'cicd_db_roll_up_stage()',
        'cicd_db_roll_up_job()'
    ] LOOP
        EXECUTE format(
            'ALTER FUNCTION %I.%s SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
            home, routine, home
        );
    END LOOP;
END
$$;

-- Nobody calls these by hand (a trigger does not check EXECUTE); sqlfluff reads
-- the keyword PUBLIC as an identifier, hence the noqa.
REVOKE EXECUTE ON FUNCTION cicd_db_roll_up(UUID[]) FROM PUBLIC; -- noqa: CP02
REVOKE EXECUTE ON FUNCTION cicd_db_roll_up_run() FROM PUBLIC; -- noqa: CP02
REVOKE EXECUTE ON FUNCTION cicd_db_roll_up_stage() FROM PUBLIC; -- noqa: CP02
REVOKE EXECUTE ON FUNCTION cicd_db_roll_up_job() FROM PUBLIC; -- noqa: CP02
REVOKE EXECUTE ON PROCEDURE cicd_db_backfill_run_rollups(INTEGER) FROM PUBLIC; -- noqa: CP02

-- Read by both roles; written only by the functions above (the default privileges
-- of 0029 gave the writer more).
REVOKE ALL ON run_rollups FROM ci_app, ci_reader;
GRANT SELECT ON run_rollups TO ci_app, ci_reader;

-- Deferred to the commit: a transaction that finishes the run before it cancels or
-- finishes the last of its children is rolled up as it commits. Only a status that
-- is finished fires it, so the store's other moves of runs cost nothing.
CREATE CONSTRAINT TRIGGER pipeline_executions_roll_up
AFTER INSERT OR UPDATE OF status ON pipeline_executions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (new.status IN ('SUCCESS', 'FAILED', 'CANCELED'))
EXECUTE FUNCTION cicd_db_roll_up_run();
