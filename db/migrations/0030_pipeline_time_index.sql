-- cicd-db: no-transaction
-- "One pipeline's runs in a time window", as insights reads them: by pipeline, then
-- by the run's time (its start, or the cancellation of a run that never started),
-- the very expression the insights statement compares.
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_pipeline_time
ON pipeline_executions (pipeline_name, (coalesce(start_time, completion_time)));
