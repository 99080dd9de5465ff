-- cicd-db: no-transaction
-- The plan's (pipeline_execution_id, execution_order) index duplicates the key of 0019.
-- Live: dropped CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
DROP INDEX CONCURRENTLY IF EXISTS idx_stage_executions;
