-- Status is never NULL and defaults to PENDING; a completion never precedes its start.
--
-- Safe on a live table: defaults are catalog-only; the checks are added NOT VALID
-- (no scan, brief lock) and validated in 0004, in another transaction, where the
-- scan runs under a lock that lets writes through. Rows the plan let through
-- without a status become PENDING, as new rows now do.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

ALTER TABLE pipeline_executions ALTER COLUMN status SET DEFAULT 'PENDING';
ALTER TABLE stage_executions ALTER COLUMN status SET DEFAULT 'PENDING';
ALTER TABLE job_executions ALTER COLUMN status SET DEFAULT 'PENDING';

UPDATE pipeline_executions SET status = 'PENDING'
WHERE status IS NULL;
UPDATE stage_executions SET status = 'PENDING'
WHERE status IS NULL;
UPDATE job_executions SET status = 'PENDING'
WHERE status IS NULL;

ALTER TABLE pipeline_executions
ADD CONSTRAINT pipeline_executions_status_not_null
CHECK (status IS NOT NULL) NOT VALID;
ALTER TABLE stage_executions
ADD CONSTRAINT stage_executions_status_not_null
CHECK (status IS NOT NULL) NOT VALID;
ALTER TABLE job_executions
ADD CONSTRAINT job_executions_status_not_null
CHECK (status IS NOT NULL) NOT VALID;

ALTER TABLE pipeline_executions
ADD CONSTRAINT pipeline_executions_completion_after_start
CHECK (completion_time >= start_time) NOT VALID;
ALTER TABLE stage_executions
ADD CONSTRAINT stage_executions_completion_after_start
CHECK (completion_time >= start_time) NOT VALID;
ALTER TABLE job_executions
ADD CONSTRAINT job_executions_completion_after_start
CHECK (completion_time >= start_time) NOT VALID;
