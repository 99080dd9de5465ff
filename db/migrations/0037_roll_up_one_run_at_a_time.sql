-- The roll-up (0032) as each run's rows are when no other roll-up of it is under
-- way. Two transactions that changed one finished run (two of its jobs by hand, or
-- one while the backfill rolled it up) each rolled it up at the commit from what it
-- saw then, without the other's change, and the second row written took the first
-- one's change back, for good. The roll-up now takes its finished runs' rows first
-- (FOR NO KEY UPDATE, in id order: a foreign key's check, which takes KEY SHARE,
-- never waits for it), so the second waits for the first to commit and reads its
-- change. A transaction that finishes a run holds that row already, and the store
-- never holds a finished one: the store waits for nothing new, but for an open hand
-- edit of the children of a run it finishes (below, about 2 s at most).
--
-- What a run's row should hold is now a function of its own that only reads,
-- cicd_db_run_rollups_of(runs), so that a row can be checked without locking or
-- writing anything: the backfill, given every_row, rolls up again only the runs
-- whose row differs from it (0038). A row that is already right is not written.
--
-- Live: CREATE OR REPLACE, DROP and ALTER change catalogs only, in one
-- transaction: no roll-up runs the new body without its SECURITY DEFINER (0029).
--
-- Texts of this file that differ from this one in comments only (commits 456a62b and
-- a563f38), each as Git stores it and as Git on Windows checks it out: a database that
-- applied one has applied this file (docs/migrations.md, "Mending an applied file").
-- cicd-db: earlier-checksum 070b9786a9b6aa37390478df7b293bc3728ad0af1d1a196464d6a093869a6f6f
-- cicd-db: earlier-checksum f70f79cd09f0b50afd4825ae97769099dcefb6390c5f846adde24526efd441a8
-- cicd-db: earlier-checksum 3d44a94a0faa4817bb5818349820578d34f4af9d45f7da5333e0e4cd18e5b2a2
-- cicd-db: earlier-checksum bdc0f74d7d86d9a936eeea8785f1f248f5ac1e39104119ccb34eb6899e12b331
SET lock_timeout = '1s';
SET statement_timeout = '60s';

-- The rows `runs` should have: one per finished run, computed as insights computes
-- from the rows (the same expressions). Reads only; the caller's rights.
-- (A table's row type is no SQL type name to sqlfluff, hence the noqa.)
CREATE OR REPLACE FUNCTION cicd_db_run_rollups_of(runs UUID[])
RETURNS SETOF run_rollups -- noqa: CP05
LANGUAGE sql STABLE
AS $$
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
$$;

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
    INSERT INTO run_rollups AS u
    SELECT * FROM cicd_db_run_rollups_of(runs)
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
    WHERE (u.*) IS DISTINCT FROM (excluded.*);
END
$$;

-- The run's trigger (0032): in the transaction that finishes the run, the run's
-- stages and jobs first (FOR SHARE, stages before jobs as the store locks them). A
-- hand edit of one of them not yet committed is waited for and read: its own
-- roll-up, at its commit, found the run not yet finished and wrote nothing, so the
-- row lacked what the edit changed. The edit never waits for a run not finished
-- (0037 above), and this waits by trying again (NOWAIT), not in the lock queue, so
-- the two cannot deadlock. The wait is bounded, about 2 s (100 tries, 20 ms apart):
-- an edit left open longer (a forgotten psql session) must not hold the CI system's
-- finish; it commits after the run is finished, and its own roll-up then reads both.
-- Under REPEATABLE READ an edit committed meanwhile is a serialization failure, as
-- that level makes it.
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
            PERFORM FROM job_executions AS j
            WHERE j.stage_execution_id IN (
                SELECT s.id FROM stage_executions AS s WHERE s.pipeline_execution_id = NEW.id
            )
            ORDER BY j.id FOR SHARE NOWAIT;
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

-- The backfill (0032), which filled runs without a row; given every_row, also the
-- runs whose row differs from what it should hold (found by reading alone: only those
-- are locked and written). Batches of `batch_runs` runs by id, each its own
-- transaction; a batch that meets a busy row waits and tries again. Idempotent and
-- resumable. A new argument is a new procedure: the old one goes, so that a call
-- without arguments names one procedure. Every call of the old one (none, one
-- argument) calls the new one the same way.
-- squawk-ignore ban-drop-function
DROP PROCEDURE cicd_db_backfill_run_rollups(INTEGER);
CREATE PROCEDURE cicd_db_backfill_run_rollups(
    batch_runs INTEGER DEFAULT 2000, every_row BOOLEAN DEFAULT FALSE
)
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
                IF every_row THEN
                    PERFORM cicd_db_roll_up(ARRAY(
                        SELECT u.run_id FROM run_rollups AS u
                        LEFT JOIN cicd_db_run_rollups_of(batch) AS f ON u.run_id = f.run_id
                        WHERE u.run_id = ANY(batch)
                        AND (f.run_id IS NULL OR (u.*) IS DISTINCT FROM (f.*))
                    ));
                END IF;
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

-- As 0032 left them: the roll-up and the run's trigger function run as their owner,
-- with a fixed search path (CREATE OR REPLACE resets both; their grants stay);
-- nobody else calls these by hand.
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
        'cicd_db_roll_up(UUID[])', 'cicd_db_roll_up_run()'
    ] LOOP
        EXECUTE format(
            'ALTER FUNCTION %I.%s SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
            home, routine, home
        );
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION cicd_db_run_rollups_of(UUID[]) FROM PUBLIC; -- noqa: CP02
REVOKE EXECUTE ON PROCEDURE cicd_db_backfill_run_rollups(INTEGER, BOOLEAN)
FROM PUBLIC; -- noqa: CP02
