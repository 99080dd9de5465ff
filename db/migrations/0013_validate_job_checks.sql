-- job_executions: validates the checks of 0003-0005 and 0010-0012 on the rows already
-- there.
--
-- Live: VALIDATE CONSTRAINT scans the table under SHARE UPDATE EXCLUSIVE,
-- which lets reads and writes through (it waits only for autovacuum, index
-- builds and other ALTERs). The scan takes seconds on a large table, hence no
-- statement_timeout; lock_timeout only bounds the wait for that lock.
SET lock_timeout = '1s';
SET statement_timeout = '0';

ALTER TABLE job_executions VALIDATE CONSTRAINT job_executions_status_not_null;
ALTER TABLE job_executions VALIDATE CONSTRAINT job_executions_completion_after_start;
