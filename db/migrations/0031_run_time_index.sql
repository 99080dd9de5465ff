-- cicd-db: no-transaction
-- "Every pipeline's runs in a time window", as the insights summary reads them: by
-- the run's time alone (its start, or the cancellation of a run that never started).
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_time
ON pipeline_executions ((coalesce(start_time, completion_time)));
