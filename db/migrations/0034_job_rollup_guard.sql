-- A finished job changed by hand (the store never moves a finished row) writes
-- its run's rollup row again (0032), at the commit. The store's moves start from
-- PENDING or RUNNING, so the trigger's condition is false for every one of them
-- and it costs them nothing.
-- Live: CREATE TRIGGER takes SHARE ROW EXCLUSIVE on job_executions, catalog
-- only, under a short lock_timeout: writers of jobs wait that long at most.
SET lock_timeout = '250ms';
SET statement_timeout = '10s';

CREATE CONSTRAINT TRIGGER job_executions_roll_up
AFTER UPDATE ON job_executions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (old.status IN ('SUCCESS', 'FAILED', 'CANCELED'))
EXECUTE FUNCTION cicd_db_roll_up_job();
