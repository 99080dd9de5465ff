-- cicd-db: no-transaction
-- "Runs finished before a time": what retention deletes, oldest first, found
-- without reading the whole table (a partial index: only finished runs).
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_finished
ON pipeline_executions (completion_time)
WHERE status IN ('SUCCESS', 'FAILED', 'CANCELED');
