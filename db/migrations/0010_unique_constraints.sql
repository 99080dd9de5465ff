-- The unique indexes of 0006 to 0009 become constraints. USING INDEX takes the
-- finished index as it is: no scan, no build, a brief lock per table.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

ALTER TABLE pipeline_executions
ADD CONSTRAINT pipeline_executions_pipeline_run_key
UNIQUE USING INDEX pipeline_executions_pipeline_run_key;

ALTER TABLE stage_executions
ADD CONSTRAINT stage_executions_run_stage_name_key
UNIQUE USING INDEX stage_executions_run_stage_name_key;

ALTER TABLE stage_executions
ADD CONSTRAINT stage_executions_run_order_key
UNIQUE USING INDEX stage_executions_run_order_key;

ALTER TABLE job_executions
ADD CONSTRAINT job_executions_stage_job_name_key
UNIQUE USING INDEX job_executions_stage_job_name_key;
