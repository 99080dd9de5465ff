-- The roll-up (0032) as each run's rows are when no other roll-up of it is under
-- way. Two transactions that changed one finished run (two of its jobs by hand, or
-- one while the backfill rolled it up) each rolled it up at the commit from what it
-- saw then, without the other's change, and the second row written took the first
-- one's change back, for good. The roll-up now takes its finished runs' rows first
-- (FOR NO KEY UPDATE, in id order: a foreign key's check, which takes KEY SHARE,
-- never waits for it), so the second waits for the first to commit and reads its
-- change. A transaction that finishes a run holds that row already, and the store
-- never holds a finished one: the store waits for nothing new.
-- A row that is already right is no longer written again (0038 rolls runs up again).
--
-- Live: CREATE OR REPLACE and ALTER FUNCTION change a catalog only, in one
-- transaction: no roll-up runs the new body without its SECURITY DEFINER (0029).
SET lock_timeout = '1s';
SET statement_timeout = '60s';

CREATE OR REPLACE FUNCTION cicd_db_roll_up(runs UUID[]) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    -- The finished runs first, in one order: a roll-up of the same run waits here
    -- for this transaction, then reads what it committed (a statement of its own reads
    -- anew). A run not finished is left unlocked: its roll-up writes no row, and the
    -- store, cancelling it, locks it before its stages and jobs, so a hand edit of one
    -- of its finished jobs that then waited for it would deadlock with the store.
    PERFORM FROM pipeline_executions AS r
    WHERE r.id = ANY(runs) AND r.status IN ('SUCCESS', 'FAILED', 'CANCELED')
    ORDER BY r.id FOR NO KEY UPDATE;
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
        job_seconds = excluded.job_seconds
    -- A row already right is left as it is (no new version of it to vacuum).
    WHERE (
        u.stage_names, u.stage_statuses, u.stage_seconds, u.job_stages, u.job_names,
        u.job_statuses, u.job_allows_failure, u.job_seconds
    ) IS DISTINCT FROM (
        excluded.stage_names, excluded.stage_statuses, excluded.stage_seconds,
        excluded.job_stages, excluded.job_names, excluded.job_statuses,
        excluded.job_allows_failure, excluded.job_seconds
    );
END
$$;

-- As its owner, with a fixed search path, as 0032 left it (CREATE OR REPLACE resets
-- both; its grants stay).
DO $$
DECLARE
    home TEXT := (
        SELECT n.nspname FROM pg_catalog.pg_class AS c
        INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = 'pipeline_executions'::REGCLASS
    );
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %I.cicd_db_roll_up(UUID[]) SECURITY DEFINER '
        'SET search_path = pg_catalog, %I, pg_temp',
        home, home
    );
END
$$;
