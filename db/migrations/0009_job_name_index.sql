-- cicd-db: no-transaction
-- A job name appears once per stage; built without blocking writes, constraint in 0010.
-- A concurrent build or drop waits for older transactions; it blocks no reads or
-- writes meanwhile, so it may wait a while, but not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS job_executions_stage_job_name_key
ON job_executions (stage_execution_id, job_name);
