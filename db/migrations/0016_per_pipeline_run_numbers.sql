-- Run numbers count per pipeline: a pipeline's first run is 1, whatever other
-- pipelines did. Numbers already given are kept; each pipeline continues from
-- its highest. The plan's global SERIAL is replaced by a counter row per
-- pipeline, taken by a trigger: concurrent inserts of one pipeline queue on its
-- counter row, so numbers are unique and without gaps (a rolled-back run gives
-- its number back), and pipelines do not wait for each other. The old default
-- still runs until 0024 drops it, but the trigger overrides its number.
--
-- Live: SHARE ROW EXCLUSIVE on pipeline_executions (what CREATE TRIGGER takes
-- anyway), so that no run takes a number between the seed and the trigger. It
-- stops inserts and updates of runs, not reads, and not the foreign-key checks
-- of stage inserts. It is held for milliseconds: the seed reads one maximum per
-- pipeline from the (pipeline_name, run_number) index, by skipping from name to
-- name, not the whole table. lock_timeout bounds the wait (the runner retries).
SET lock_timeout = '250ms';
SET statement_timeout = '10s';

CREATE TABLE IF NOT EXISTS pipeline_run_counters (
    pipeline_name TEXT PRIMARY KEY,
    last_run_number BIGINT NOT NULL CHECK (last_run_number >= 0)
);

-- search_path is pinned to the one this migration runs with, so the trigger
-- finds its counter table whatever the inserting session's search_path is.
CREATE OR REPLACE FUNCTION next_pipeline_run_number() RETURNS TRIGGER
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO pipeline_run_counters AS counter (pipeline_name, last_run_number)
    VALUES (NEW.pipeline_name, 1)
    ON CONFLICT (pipeline_name) DO UPDATE
        SET last_run_number = counter.last_run_number + 1
    RETURNING counter.last_run_number INTO NEW.run_number;
    RETURN NEW;
END
$$;

LOCK TABLE pipeline_executions IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO pipeline_run_counters AS counter (pipeline_name, last_run_number)
WITH RECURSIVE pipelines AS (
    (
        SELECT first_run.pipeline_name FROM pipeline_executions AS first_run
        ORDER BY first_run.pipeline_name LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT later.pipeline_name FROM pipeline_executions AS later
        WHERE later.pipeline_name > pipelines.pipeline_name
        ORDER BY later.pipeline_name LIMIT 1
    )
    FROM pipelines
    WHERE pipelines.pipeline_name IS NOT NULL
)

SELECT
    pipelines.pipeline_name,
    (
        SELECT max(run.run_number) FROM pipeline_executions AS run
        WHERE run.pipeline_name = pipelines.pipeline_name
    ) AS last_run_number
FROM pipelines
WHERE pipelines.pipeline_name IS NOT NULL
ON CONFLICT (pipeline_name) DO UPDATE
    SET last_run_number = greatest(counter.last_run_number, excluded.last_run_number);

CREATE TRIGGER pipeline_executions_run_number
BEFORE INSERT ON pipeline_executions
FOR EACH ROW EXECUTE FUNCTION next_pipeline_run_number();
