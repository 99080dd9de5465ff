-- The schema of the plan's phase 1, step 3, exactly as the plan has it, so that
-- a database created from the plan by hand can adopt this history with
-- `migrate baseline --version 1`. Later migrations harden it (db/README.md).
--
-- Lint findings on the plan's own text are left as the plan wrote them, and the
-- migrations after this one fix each of them on the live tables:
-- squawk-ignore-file prefer-bigint-over-int, prefer-identity, prefer-timestamp-tz
-- Timeouts: every table here is new, created in this same transaction, so no other
-- session can hold a lock these statements would wait for:
-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- Texts of this file that differ from this one in comments only (commits de193db and
-- dc17037), each as Git stores it and as Git on Windows checks it out: a database that
-- applied one has applied this file (docs/migrations.md, "Mending an applied file").
-- cicd-db: earlier-checksum f8afe8fe4b71efed9cc39ac282e88256ee94c69d53c98f7687debfd4d30eeb8e
-- cicd-db: earlier-checksum edb4c84b35badcd114c9cd183b0b1a2b983bd5d721c2ef776be49e1763e1d2c8
-- cicd-db: earlier-checksum abe4f531ecd483f84b5295a6e35cba63a658ef456ab3c90735f1b91ee79f433e
-- cicd-db: earlier-checksum dbc2433018c21f5c121a5085122e8a8fdc19f1b67e19a5afbf6c62be5950f773
-- noqa: disable=LT01

-- Table for storing pipeline executions
CREATE TABLE IF NOT EXISTS pipeline_executions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    pipeline_name TEXT NOT NULL,
    run_number SERIAL NOT NULL,
    commit_hash TEXT NOT NULL,
    status TEXT CHECK (status IN ('PENDING', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELED')),
    start_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completion_time TIMESTAMP DEFAULT NULL
);

-- Table for storing stage executions
CREATE TABLE IF NOT EXISTS stage_executions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    pipeline_execution_id UUID NOT NULL,
    stage_name TEXT NOT NULL,
    execution_order INT NOT NULL,
    status TEXT CHECK (status IN ('PENDING', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELED')),
    start_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completion_time TIMESTAMP DEFAULT NULL,
    FOREIGN KEY (pipeline_execution_id) REFERENCES pipeline_executions(id) ON DELETE CASCADE
);

-- Table for storing job executions
CREATE TABLE IF NOT EXISTS job_executions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    stage_execution_id UUID NOT NULL,
    job_name TEXT NOT NULL,
    status TEXT CHECK (status IN ('PENDING', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELED')),
    allows_failure BOOLEAN NOT NULL DEFAULT FALSE,
    start_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completion_time TIMESTAMP DEFAULT NULL,
    FOREIGN KEY (stage_execution_id) REFERENCES stage_executions(id) ON DELETE CASCADE
);

-- Indexes for optimized query performance
CREATE INDEX idx_pipeline_executions ON pipeline_executions(pipeline_name, run_number);
CREATE INDEX idx_stage_executions ON stage_executions(pipeline_execution_id, execution_order);
CREATE INDEX idx_job_executions ON job_executions(stage_execution_id, job_name);
-- noqa: enable=LT01
