-- cicd-db: no-transaction
-- The rollup rows written before the guards of 0033 and 0034 existed, rolled up
-- again. A run that finished after 0032 got its row when it finished; a finished
-- stage or job of it changed by hand before 0033 or 0034 committed (an upgrade
-- retried behind a writer's lock, or stopped between them) wrote nothing, and the
-- backfill (0035) fills only runs without a row: the row kept the old values.
--
-- Which rows: those whose last writer's transaction is older than 0034's, by the
-- transaction ids PostgreSQL stamps on each row version (xmin), 0034's read from its
-- row in the runner's history. A row written later was computed after 0034 held its
-- lock, so after every such change had committed. Without that history row (files
-- applied by another tool), every row. A row that is right is not written again
-- (0037): on a database upgraded in one run, a few rows are read and none written.
--
-- Live: in batches of 2,000 runs by id, each its own transaction, as the backfill;
-- each roll-up takes its runs' rows (0037), which the store never holds for long: a
-- finished run is never moved. A batch that meets a busy row waits at most
-- lock_timeout and tries again. Idempotent: run it again at any time.
SET lock_timeout = '1s';
SET statement_timeout = '0';

DO $$
DECLARE
    guarded XID;
    last_id UUID := '00000000-0000-0000-0000-000000000000';
    batch UUID[];
    attempt INTEGER;
BEGIN
    IF pg_catalog.to_regclass('cicd_db.cicd_db_schema_history') IS NOT NULL THEN
        EXECUTE 'SELECT xmin FROM cicd_db.cicd_db_schema_history WHERE version = 34'
        INTO guarded;
    END IF;
    LOOP
        batch := ARRAY(
            SELECT u.run_id FROM run_rollups AS u
            WHERE u.run_id > last_id
                AND (guarded IS NULL OR pg_catalog.age(u.xmin) >= pg_catalog.age(guarded))
            ORDER BY u.run_id LIMIT 2000
        );
        EXIT WHEN cardinality(batch) = 0;
        last_id := batch[cardinality(batch)];
        attempt := 0;
        LOOP
            BEGIN
                PERFORM cicd_db_roll_up(batch);
                EXIT;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                attempt := attempt + 1;
                IF attempt >= 20 THEN
                    RAISE;
                END IF;
                PERFORM pg_catalog.pg_sleep(0.05 * attempt);
            END;
        END LOOP;
        COMMIT;
    END LOOP;
END
$$;
