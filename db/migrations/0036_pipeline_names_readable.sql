-- Which pipelines ever ran, for the writer and the reader: `retention --pipeline`
-- (which connects as ci_app) and the reports tell a misspelt name from a pipeline
-- whose runs were all deleted by the counter its first run made (0016), which
-- outlives them. Only the name column: the counters themselves stay the owner's
-- (docs/security.md), so a leaked writer still cannot rewind or jump one.
-- Live: GRANT changes a catalog only; it waits for a writer at most lock_timeout.
SET lock_timeout = '1s';
SET statement_timeout = '60s';

GRANT SELECT (pipeline_name) ON pipeline_run_counters TO ci_app, ci_reader;
