-- cicd-db: no-transaction
-- "Runs still active": a small partial index, only PENDING and RUNNING runs.
-- After 0005, so that it indexes the TIMESTAMPTZ column (a type change would
-- rebuild it under ACCESS EXCLUSIVE).
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_active
ON pipeline_executions (pipeline_name, start_time)
WHERE status IN ('PENDING', 'RUNNING');
