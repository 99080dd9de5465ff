-- Run numbers count per pipeline: a pipeline's first run is 1, whatever other
-- pipelines did. Numbers already given are kept; each pipeline continues from
-- its highest. The plan's global SERIAL is replaced by a counter row per
-- pipeline, taken by a trigger: concurrent inserts of one pipeline queue on its
-- counter row, so numbers are unique and without gaps (a rolled-back run gives
-- its number back), and pipelines do not wait for each other.
--
-- Safe on a live table: inserts wait only while the counters are seeded (one
-- max per pipeline, read from the (pipeline_name, run_number) index), so no run
-- can take a number between the seed and the trigger.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

CREATE TABLE IF NOT EXISTS pipeline_run_counters (
    pipeline_name TEXT PRIMARY KEY,
    last_run_number BIGINT NOT NULL CHECK (last_run_number >= 0)
);

LOCK TABLE pipeline_executions IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO pipeline_run_counters AS counter (pipeline_name, last_run_number)
SELECT
    pipeline_name,
    max(run_number) AS last_run_number
FROM pipeline_executions
GROUP BY pipeline_name
ON CONFLICT (pipeline_name) DO UPDATE
    SET last_run_number = greatest(counter.last_run_number, excluded.last_run_number);

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

CREATE TRIGGER pipeline_executions_run_number
BEFORE INSERT ON pipeline_executions
FOR EACH ROW EXECUTE FUNCTION next_pipeline_run_number();

-- The trigger now assigns every run number; the old default would hand out
-- global numbers, so it and its sequence go. Clients never set run_number.
-- squawk-ignore ban-drop-default
ALTER TABLE pipeline_executions ALTER COLUMN run_number DROP DEFAULT;
-- squawk-ignore ban-drop-sequence
DROP SEQUENCE IF EXISTS pipeline_executions_run_number_seq;
