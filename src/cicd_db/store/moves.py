"""Moving a row by compare-and-set, and finishing or cancelling a run or stage with its
children: the statements of `statements`, run in the order the module docstring of
`cicd_db.store` explains (parents locked before children)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors, sql

from cicd_db import cursors
from cicd_db.errors import IllegalTransition, NotFound, check_time
from cicd_db.store.connected import Connected, fetch_one
from cicd_db.store.rows import (
    ALLOWED_FROM,
    CANCELED,
    FAILED,
    FINISHED,
    SUCCESS,
    TABLES,
    JobRun,
    PipelineRun,
    Row,
    StageRun,
    at_time,
    illegal,
    moved,
    name_of,
)
from cicd_db.store.statements import (
    CANCEL_CHILDREN,
    CHILDREN,
    FINISH,
    LATEST_BELOW,
    LOCK_CHILDREN,
    MOVES,
    STAMP,
)


class Moves(Connected):
    """The state machine's moves, as the store's writes make them."""

    def _locked(self, conn: psycopg.Connection[Any], row: Row) -> Row:
        """The row as it is now, locked FOR NO KEY UPDATE until the transaction ends
        (see the module's docstring for why this mode)."""
        table, columns, what = TABLES[type(row)]
        query = sql.SQL("SELECT {} FROM {} WHERE id = %s FOR NO KEY UPDATE").format(columns, table)
        current = fetch_one(conn, type(row), query, [row.id])
        if current is None:
            raise NotFound(f"no {what} with id {row.id}")
        return current

    def _finish(self, row: Row, at: datetime | None, status: str | None = None) -> Row:
        """Finish a run or stage whose children have all finished, with `status` or,
        without one, the status they give it.

        One statement (FINISH), one round trip. A row it leaves alone (not RUNNING, a
        child unfinished or added meanwhile, a time refused) goes the slow way,
        statement by statement, which finishes it if it now may or says exactly why not.
        """
        if at is not None:
            check_time("at", at)
        params = {"parent": row.id, "status": status, "at": at}
        try:
            finished = self._tuple(FINISH[type(row)], params)
        except errors.CheckViolation:
            return self._finish_slowly(row, at, status)
        if finished is None:
            return self._finish_slowly(row, at, status)
        return moved(row, *finished)

    def _finish_slowly(self, row: Row, at: datetime | None, status: str | None) -> Row:
        """FINISH again, under the row's lock (no child can be added meanwhile, and the
        statement's snapshot, taken after the lock, sees every child committed before
        it); if it still leaves the row alone, why: a child unfinished, a time before
        the row started, or a row that may not move."""
        what = TABLES[type(row)][2]
        kind, children_query = CHILDREN[type(row)]
        params = {"parent": row.id, "status": status, "at": at}
        with self._connection() as conn, conn.transaction():
            current = self._locked(conn, row)
            if status is not None and current.status not in ALLOWED_FROM[status]:
                raise IllegalTransition(illegal(current, status))
            children = cursors.execute(conn, children_query, [row.id], binary=True).fetchall()
            unfinished = [name for status, _, name in children if status not in FINISHED]
            if unfinished:
                raise IllegalTransition(
                    f"{what} {name_of(row)} cannot finish while "
                    f"{len(unfinished)} {kind}{'s' if len(unfinished) != 1 else ''} "
                    f"({', '.join(sorted(unfinished)[:5])}) "
                    f"{'have' if len(unfinished) != 1 else 'has'} not; finish or cancel "
                    f"{'them' if len(unfinished) != 1 else 'it'} first"
                )
            # The move asked, for the messages: the status given, or the one the
            # children give (FINISH derives it the same way).
            counted = [
                status for status, allowed, _ in children if not (status == FAILED and allowed)
            ]
            move = status or (
                FAILED if FAILED in counted else CANCELED if CANCELED in counted else SUCCESS
            )
            # Before the row's own start: the CHECK's refusal below says that.
            # Compared as instants (in UTC): datetimes of one tzinfo compare by their clocks.
            if at is not None and (
                current.start_time is None
                or at.astimezone(UTC) >= current.start_time.astimezone(UTC)
            ):
                found = cursors.execute(
                    conn, LATEST_BELOW[type(row)], {"parent": row.id}, binary=True
                ).fetchone()
                latest = found[0] if found else None
                if latest is not None and at.astimezone(UTC) < latest.astimezone(UTC):
                    raise IllegalTransition(
                        f"{what} {name_of(row)} cannot become {move} {at_time(at)}: a {kind} of it "
                        f"started or finished later, at {latest.astimezone(UTC)}"
                    )
            try:
                with cursors.cursor(conn, binary=True) as cursor:
                    finished = cursor.execute(FINISH[type(row)], params).fetchone()
            except errors.CheckViolation:
                raise IllegalTransition(
                    f"{what} cannot become {move} {at_time(at)}: that is before it started"
                ) from None
            if finished is None:  # only the row's own status can have stopped it
                raise IllegalTransition(illegal(current, move))
            return moved(row, *finished)

    def _cancel(self, row: Row, at: datetime | None) -> Row:
        """Cancel a run or stage and, parent before child, whatever of it has not finished."""
        if at is not None:
            check_time("at", at)
        what = TABLES[type(row)][2]
        with self._connection() as conn, conn.transaction():
            # Locked first: an adder waiting on the lock then finds the row cancelled, and
            # one that got in before has committed, so the updates below see its children.
            current = self._locked(conn, row)
            if current.status not in ALLOWED_FROM[CANCELED]:
                raise IllegalTransition(
                    f"{what} {name_of(current)} is {current.status}; only PENDING or RUNNING "
                    f"{what}s can be cancelled"
                )
            # Stages before jobs: add_jobs holds its stage FOR NO KEY UPDATE, so locking the
            # stages waits for it, and the jobs it added are then locked and cancelled
            # too. Once they are locked, nothing below the row can start.
            for statement in LOCK_CHILDREN[type(row)]:
                cursors.execute(conn, statement, {"parent": row.id})
            stamp = at or stamp_of(conn, row)
            for child, statement in CANCEL_CHILDREN[type(row)]:
                try:
                    cursors.execute(conn, statement, {"at": stamp, "parent": row.id})
                except errors.CheckViolation:
                    raise IllegalTransition(
                        f"{what} {name_of(current)} cannot be cancelled {at_time(at)}: "
                        f"a {child} of it started later"
                    ) from None
            return self._move(current, CANCELED, stamp, conn=conn)

    def _move(
        self,
        row: Row,
        status: str,
        at: datetime | None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Row:
        """`row` moved to `status` by one compare-and-set UPDATE, as it is then. Only the
        status and the two times can differ from `row` (nothing else of a row ever
        changes), so only the times come back."""
        kind = type(row)
        if status not in ALLOWED_FROM:
            raise IllegalTransition(
                f"{status!r} is not a status to move to; use one of {', '.join(ALLOWED_FROM)}"
            )
        if at is not None:
            check_time("at", at)
        query = MOVES[kind, status, at is not None]
        params = (row.id,) if at is None else (at, row.id)
        try:
            # One statement: its own transaction, no BEGIN/COMMIT round trips.
            if conn is not None:
                times = cursors.execute(conn, query, params, binary=True).fetchone()
            else:
                times = self._tuple(query, params)
        except errors.CheckViolation:
            raise IllegalTransition(
                f"{TABLES[kind][2]} cannot become {status} {at_time(at)}: that is before it started"
            ) from None
        if times is None:
            raise IllegalTransition(illegal(self._get(kind, row.id), status))
        return moved(row, status, times[0], times[1])


def stamp_of(conn: psycopg.Connection[Any], row: PipelineRun | StageRun | JobRun) -> datetime:
    """The time to finish or cancel `row` at, once it and the rows below it are locked."""
    found = cursors.execute(conn, STAMP[type(row)], {"parent": row.id}, binary=True).fetchone()
    if found is None or not isinstance(found[0], datetime):
        raise RuntimeError("the database returned no time")
    return found[0]
