"""What the store reads back: a pipeline's runs (paged by run number), one run, its
stages and their jobs; and where the execution tables are when a session cannot see
them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from cicd_db import cursors
from cicd_db.errors import (
    NotFound,
    Placement,
    UsageError,
    check_name,
)
from cicd_db.store.connected import Connected
from cicd_db.store.rows import (
    INT8_MAX,
    INT8_MIN,
    JobRun,
    PipelineRun,
    StageRun,
    check_row,
    id_of,
    no_runs,
    whole,
)
from cicd_db.store.search_path import check_search_path
from cicd_db.store.statements import q


class Reads(Connected):
    """The store's reads; each its own statement."""

    def check_search_path(self) -> None:
        """ConfigError when this store's search_path would have its statements read what
        is not cicd-db's or PostgreSQL's (see check_search_path()). Reads."""
        with self._connection() as conn:
            check_search_path(conn)
        self._path_checked = True

    def tables_placement(self) -> Placement | None:
        """Where the execution tables are when this store cannot see them (see
        tables_placement()). Reads."""
        with self._connection() as conn:
            return tables_placement(conn)

    def runs(
        self, pipeline_name: str, *, limit: int = 20, before: int | None = None
    ) -> list[PipelineRun]:
        """A pipeline's runs, newest first; `before` pages on by run number (keyset). Reads."""
        check_name("pipeline_name", pipeline_name)
        if not whole(limit) or not 0 <= limit <= INT8_MAX:
            raise UsageError(
                "{limit} {given} is no count; give a whole number from 0 to {most:,}",
                arguments=["limit"],
                values={"given": repr(limit), "most": INT8_MAX},
            )
        if before is not None and (not whole(before) or not INT8_MIN <= before <= INT8_MAX):
            raise UsageError(
                "{before} {given} is no run number; give a whole number within bigint's "
                "range, or leave it out",
                arguments=["before"],
                values={"given": repr(before)},
            )
        if before is None:
            return self._all(
                PipelineRun,
                q(
                    "SELECT {run} FROM pipeline_executions WHERE pipeline_name = %s "
                    "ORDER BY run_number DESC LIMIT %s"
                ),
                [pipeline_name, limit],
            )
        return self._all(
            PipelineRun,
            q(
                "SELECT {run} FROM pipeline_executions WHERE pipeline_name = %s "
                "AND run_number < %s ORDER BY run_number DESC LIMIT %s"
            ),
            [pipeline_name, before, limit],
        )

    def run(self, pipeline_name: str, run_number: int) -> PipelineRun:
        """One run; NotFound names the pipeline and number. Reads."""
        check_name("pipeline_name", pipeline_name)
        # True and "2" reached the server, 2.0 was taken as 2; past bigint, no run has it.
        if not whole(run_number) or not INT8_MIN <= run_number <= INT8_MAX:
            raise UsageError(
                "{run_number} {given} is no run number; give a whole number within bigint's range",
                arguments=["run_number"],
                values={"given": repr(run_number)},
            )
        found = self._maybe(
            PipelineRun,
            q("SELECT {run} FROM pipeline_executions WHERE pipeline_name = %s AND run_number = %s"),
            [pipeline_name, run_number],
        )
        if found is None:
            raise self._no_run(pipeline_name, run_number)
        return found

    def stages(self, run: PipelineRun | UUID) -> list[StageRun]:
        """A run's stages in execution order. Reads."""
        check_row("run", run, PipelineRun, by_id=True)
        return self._all(
            StageRun,
            q(
                "SELECT {stage} FROM stage_executions WHERE pipeline_execution_id = %s "
                "ORDER BY execution_order"
            ),
            [id_of(run)],
        )

    def stage(self, run: PipelineRun, stage_name: str) -> StageRun:
        """One stage of a run, by name. Reads."""
        check_row("run", run, PipelineRun)
        check_name("stage_name", stage_name)
        found = self._maybe(
            StageRun,
            q(
                "SELECT {stage} FROM stage_executions "
                "WHERE pipeline_execution_id = %s AND stage_name = %s"
            ),
            [run.id, stage_name],
        )
        if found is None:
            raise NotFound(
                f"run {run.run_number} of pipeline {run.pipeline_name!r} has no stage "
                f"{stage_name!r}",
                within={"pipeline": run.pipeline_name, "run": run.run_number},
            )
        return found

    def jobs(self, stage: StageRun | UUID) -> list[JobRun]:
        """A stage's jobs, by name. Reads."""
        check_row("stage", stage, StageRun, by_id=True)
        return self._all(
            JobRun,
            # In the order of the names' bytes, as Python sorts them and insights lists
            # them: the database's collation (ICU, a language's) ordered them otherwise.
            q(
                "SELECT {job} FROM job_executions WHERE stage_execution_id = %s "
                'ORDER BY job_name COLLATE pg_catalog."C"'
            ),
            [id_of(stage)],
        )

    def job(self, run: PipelineRun, stage: StageRun, job_name: str) -> JobRun:
        """One job of a stage, by name. Reads."""
        check_row("run", run, PipelineRun)
        check_row("stage", stage, StageRun)
        check_name("job_name", job_name)
        found = self._maybe(
            JobRun,
            q("SELECT {job} FROM job_executions WHERE stage_execution_id = %s AND job_name = %s"),
            [stage.id, job_name],
        )
        if found is None:
            raise NotFound(
                f"stage {stage.stage_name!r} of run {run.run_number} of pipeline "
                f"{run.pipeline_name!r} has no job {job_name!r}",
                within={
                    "pipeline": run.pipeline_name,
                    "run": run.run_number,
                    "stage": stage.stage_name,
                },
            )
        return found

    def _no_run(self, pipeline_name: str, run_number: int) -> NotFound:
        """What a pipeline's runs are numbered, its oldest and its newest: retention
        deletes the oldest, so "up to N" alone sent one looking below the first kept.
        One read: both ends come off the (pipeline_name, run_number) index."""
        with self._connection() as conn:
            row = cursors.execute(
                conn,
                "SELECT min(run_number), max(run_number) FROM pipeline_executions "
                "WHERE pipeline_name = %s",
                [pipeline_name],
            ).fetchone()
        if row is None or row[1] is None:
            return no_runs(pipeline_name)
        oldest, newest = row
        numbered = (
            f"its one run is {oldest}"
            if oldest == newest
            else f"its runs go from {oldest} to {newest}"
        )
        return NotFound(f"pipeline {pipeline_name!r} has no run {run_number}; {numbered}")


def tables_placement(conn: psycopg.Connection[Any]) -> Placement | None:
    """Where the execution tables are, for a statement that did not find a table: their
    schema, the session's search_path and whether it reaches them (then the table asked
    for is one a later migration makes); None when there are none to find (or the
    session cannot be asked: in a failed transaction). Read by catalog, past the
    search_path."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        return None
    try:
        row = cursors.execute(
            conn,
            "SELECT n.nspname, pg_catalog.current_setting('search_path'), "
            "pg_catalog.pg_table_is_visible(c.oid), (SELECT source FROM pg_catalog.pg_settings "
            "WHERE name = 'search_path') "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relname = 'pipeline_executions' "
            "AND c.relkind IN ('r', 'p') ORDER BY 3 DESC, 1 LIMIT 1",
        ).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    schema, path, visible, source = row
    if str(source) == "default":  # no one set it: the schema is what is out of the way
        where: str | None = (
            f"it is the server's default; set one that names {schema} for the role "
            f"(ALTER ROLE ... SET search_path = {schema}, public)"
        )
    else:  # where it was set, and what undoes it
        where = cursors.setting_where(conn, "search_path", str(path), str(source))
    return Placement(str(schema), str(path), bool(visible), where)
