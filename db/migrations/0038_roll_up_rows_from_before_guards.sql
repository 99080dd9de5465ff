-- cicd-db: no-transaction
-- Every rollup row rolled up again, for those written before the guards of 0033
-- and 0034 existed. A run that finished after 0032 got its row when it finished; a
-- finished stage or job of it changed by hand before 0033 or 0034 committed (an
-- upgrade retried behind a writer's lock, or stopped between them) wrote nothing,
-- and the backfill (0035) fills only runs without a row: the row kept the old
-- values. Which rows those are cannot be told reliably (transaction ids are
-- renumbered by a dump and restore or a logical copy, and wrap around), so every
-- row is computed again; one already right is not written (0037). The cost is the
-- backfill's (reading every run's stages and jobs: 5.8 s at 100,000 runs), plus a
-- row lock on each finished run, which marks its row.
--
-- Live: in batches of 2,000 runs by id, each its own transaction, as the backfill:
-- each roll-up takes its finished runs' rows (0037), which the store never holds (a
-- finished run is never moved); retention and a hand edit of those runs wait for a
-- batch. A batch that meets a busy row waits at most lock_timeout and tries again.
-- Idempotent and resumable: run it again at any time.
SET lock_timeout = '1s';
SET statement_timeout = '0';

DO $$
DECLARE
    last_id UUID := '00000000-0000-0000-0000-000000000000';
    batch UUID[];
    attempt INTEGER;
BEGIN
    LOOP
        batch := ARRAY(
            SELECT u.run_id FROM run_rollups AS u
            WHERE u.run_id > last_id ORDER BY u.run_id LIMIT 2000
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
