-- The plan let status be NULL; such rows become PENDING, as new rows now do
-- (0003-0005 set the default, so no new NULL can appear). 0007 to 0009 call
-- this procedure once per table; 0012 drops it. Creating it locks no table.
--
-- Live: the table is walked in slices of pages (about `batch_rows` rows each,
-- by a TID range scan), one short transaction per slice, so row locks last
-- milliseconds and no table lock is ever held that stops a writer. A slice that
-- meets a busy row (lock_timeout) waits and tries again. Idempotent and
-- resumable: only rows still NULL are written, so a rerun after an interruption
-- passes quickly over slices already done. Rows an update moved behind the walk
-- are caught by a last sweep. Needs autocommit (COMMIT in a procedure): called
-- from no-transaction files.
SET lock_timeout = '1s';
SET statement_timeout = '60s';

CREATE OR REPLACE PROCEDURE cicd_db_backfill_status(
    target REGCLASS, batch_rows INTEGER DEFAULT 10000
)
LANGUAGE plpgsql
AS $$
DECLARE
    pages BIGINT;
    step BIGINT;
    first_page BIGINT := 0;
    changed BIGINT;
    total BIGINT := 0;
    attempt INTEGER;
    done BOOLEAN;
    left_behind TID [];
BEGIN
    -- The pages that exist now: pages added later hold new rows, which have a
    -- status, and rows an update moved there, which the sweep below catches.
    pages := pg_catalog.pg_relation_size(target)
        / pg_catalog.current_setting('block_size')::INTEGER;
    -- Pages per batch, from the planner's rows per page; without statistics,
    -- the most rows a page can hold (291), so a batch never exceeds batch_rows.
    SELECT greatest(1, floor(batch_rows / CASE
        WHEN c.reltuples > 0 AND c.relpages > 0 THEN greatest(c.reltuples / c.relpages, 1)
        ELSE 291
    END))
    INTO step
    FROM pg_catalog.pg_class AS c WHERE c.oid = target;

    WHILE first_page < pages LOOP
        attempt := 0;
        done := FALSE;
        WHILE NOT done LOOP
            BEGIN
                EXECUTE format(
                    'UPDATE %s SET status = ''PENDING'' WHERE ctid >= %L::TID '
                    'AND ctid < %L::TID AND status IS NULL',
                    target,
                    format('(%s,0)', first_page),
                    format('(%s,0)', first_page + step)
                );
                GET DIAGNOSTICS changed = ROW_COUNT;
                total := total + changed;
                done := TRUE;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                attempt := attempt + 1;
                IF attempt >= 20 THEN
                    RAISE;
                END IF;
                PERFORM pg_catalog.pg_sleep(0.05 * attempt);
            END;
        END LOOP;
        COMMIT;
        first_page := first_page + step;
    END LOOP;

    -- The sweep: rows still NULL (an update moved them behind the walk).
    LOOP
        EXECUTE format(
            'SELECT array(SELECT ctid FROM %s WHERE status IS NULL LIMIT %s)',
            target, batch_rows
        ) INTO left_behind;
        EXIT WHEN cardinality(left_behind) = 0;
        EXECUTE format(
            'UPDATE %s SET status = ''PENDING'' WHERE ctid = ANY ($1) AND status IS NULL',
            target
        ) USING left_behind;
        GET DIAGNOSTICS changed = ROW_COUNT;
        total := total + changed;
        COMMIT;
    END LOOP;
    RAISE NOTICE '%: % rows without a status set to PENDING', target, total;
END
$$;
