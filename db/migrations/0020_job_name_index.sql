-- cicd-db: no-transaction
-- A job name appears once per stage; 0022 makes it the constraint.
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS job_executions_stage_job_name_key
ON job_executions (stage_execution_id, job_name);
