"""What the commands show: each library result as lines of text and as JSON.

Pure functions of the results (no argparse, no I/O), so each shape is tested on its
own; the commands package decides which one a command prints and where. The terminal clock for
long files lives here too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from cicd_db import migrations, outputs
from cicd_db.errors import clock_text, one_line, plural

if TYPE_CHECKING:  # annotations only: the commands import these on use
    from cicd_db.embedded import Status
    from cicd_db.lint import Report
    from cicd_db.local import Prepared
    from cicd_db.retention import Pruned
    from cicd_db.schema import Difference

JSON = dict[str, Any]

TICK_AFTER_SECONDS = 2.0
REHEARSAL_CAVEAT = (
    "(a table lock an earlier file of the rehearsal already holds is not listed again)"
)


# -- migrate up, and its rehearsal --------------------------------------------------------


def applied_json(
    description: str,
    dry_run: bool,
    results: Sequence[migrations.Result],
    notes: Sequence[str] = (),
    *,
    completed: bool = True,
) -> JSON:
    """`migrate up --json`'s document; not `completed`: the run stopped (its error on
    stderr, its exit code) after applying `results`."""
    return {
        "target": description,
        "dry_run": dry_run,
        "completed": completed,
        "notes": list(notes),
        "applied": [
            {
                "version": r.migration.version,
                "name": r.migration.name,
                "duration_ms": round(r.duration_ms, 1),
            }
            for r in results
        ],
    }


def applied_lines(result: migrations.Result, *, sql: bool) -> list[str]:
    """As each file ends: its notes, and what happened to it."""
    name = result.migration.filename
    lines = [f"  {note}" for note in result.notes]
    if not result.dry_run:
        return [*lines, f"applied {name} ({result.duration_ms:.0f} ms)"]
    lines.append(f"would apply {name}")
    before = "".join(f"{statement};\n" for statement in result.before)
    text = f"-- {name}\n{before}{result.migration.text.rstrip()}\n"
    return lines + ([Verbatim(text)] if sql else [])


class Verbatim(str):
    """Text `print_lines` prints as it is: a file's own SQL (`--dry-run --sql`), which
    its author wrote and may pipe to psql, tabs and newlines included."""


def up_summary(
    description: str,
    dry_run: bool,
    count: int,
    elapsed_ms: float,
    *,
    target: int | None = None,
    beyond: int = 0,
    applied_above: int | None = None,
) -> str:
    """`beyond`: files still pending above `target`, which a run up to it leaves;
    `applied_above`: the newest version applied, where it is above `target`."""
    left = f"; {plural(beyond, 'migration')} pending above version {target}" if beyond else ""
    if not count:
        if beyond:
            return f"nothing to apply up to version {target} on {description}{left}"
        if applied_above is not None:
            # "up to date" read as if the target were where the database is.
            return (
                f"nothing to apply up to version {target} on {description}: version "
                f"{applied_above} is applied already, and migrations only go forward"
            )
        return f"nothing to apply: {description} is up to date"
    if dry_run:
        return (
            f"dry run: {plural(count, 'migration')} pending on {description}"
            f"{' up to version ' + str(target) if beyond else ''}; nothing was changed{left}"
        )
    return f"applied {plural(count, 'migration')} to {description} in {elapsed_ms:.0f} ms{left}"


def rehearsal_json(
    description: str, rehearsals: Sequence[migrations.Rehearsal], *, beyond: int = 0
) -> JSON:
    return {
        "target": description,
        "pending_above_target": beyond,
        "rehearsed": [
            {
                "version": r.migration.version,
                "name": r.migration.name,
                "duration_ms": None if r.duration_ms is None else round(r.duration_ms, 1),
                "locks": [
                    {"mode": lock.mode, "table": lock.table, "held_ms": round(lock.held_ms, 1)}
                    for lock in r.locks
                ],
                "sequences_advanced": list(r.sequences),
                "skipped": r.skipped,
                "error": r.error,
                "unrehearsed_before": list(r.unrehearsed_before),
                "not_undone": list(r.not_undone),
                "unrehearsed": list(r.unrehearsed),
            }
            for r in rehearsals
        ],
    }


def rehearsal_lines(
    description: str,
    rehearsals: Sequence[migrations.Rehearsal],
    *,
    target: int | None = None,
    beyond: int = 0,
) -> list[str]:
    """`beyond`: files pending above `target`, which a rehearsal up to it leaves."""
    left = f"; {plural(beyond, 'migration')} pending above version {target}" if beyond else ""
    lines = []
    for r in rehearsals:
        name = r.migration.filename
        if r.skipped:
            lines.append(f"{name}: not rehearsed: {r.skipped}")
            continue
        lines.append(
            f"{name}: {r.duration_ms:.0f} ms" + (f", FAILED: {r.error}" if r.error else "")
        )
        if r.error and r.unrehearsed_before:
            needs = ", ".join(r.unrehearsed_before)
            lines.append(f"  (it may need {needs}, which the rehearsal could not run)")
        lines += [f"  {lock.mode} on {lock.table}, held {lock.held_ms:.0f} ms" for lock in r.locks]
        lines += [f"  advanced sequence {s} (the rollback keeps that)" for s in r.sequences]
        lines += [f"  calls {what}: the rollback does not undo that" for what in r.not_undone]
        lines += [f"  not rehearsed: {what}" for what in r.unrehearsed]
    if not rehearsals:
        if beyond:
            return [f"nothing to rehearse up to version {target} on {description}{left}"]
        return [f"nothing to rehearse: {description} is up to date"]
    kept = any(r.sequences or r.not_undone for r in rehearsals)
    return [
        *lines,
        REHEARSAL_CAVEAT,
        f"rehearsal on {description}: rolled back, except what is marked above as not undone{left}"
        if kept
        else f"rehearsal on {description}: rolled back; it saw nothing a rollback cannot "
        f"undo{left}",
    ]


def print_lines(*lines: str, file: TextIO | None = None) -> None:
    """Print `lines` (to standard output, or `file`), each as one line whatever it holds.

    Every line a command prints for a person comes here, and much of it quotes what a
    database holds (a table's, a pipeline's or a history row's name, a server's error):
    a character that is not printable (an escape sequence that would recolour or retitle
    the terminal, a newline or carriage return that would forge another line) is written
    as repr writes it, `\\x1b`. Escaping twice changes nothing (errors.one_line).
    """
    shown = [line if isinstance(line, Verbatim) else one_line(line) for line in lines]
    text = "".join(f"{line}\n" for line in shown)
    if file is None or file is sys.stdout:
        outputs.write_out(text)
    else:
        file.write(text)
        file.flush()


def rehearsal_failure(failed: Sequence[migrations.Rehearsal]) -> str:
    """The error line of a rehearsal that saw files fail, for when its report is silenced."""
    first = failed[0]
    return (
        f"error: the rehearsal saw {plural(len(failed), 'file')} fail; first "
        f"{first.migration.filename}: {first.error}"
    )


def server_line(severity: str | None, message: str | None, verbose: bool) -> str | None:
    """A message the server sent during a file, under its own severity: a WARNING always
    (it says something may be wrong), NOTICE, INFO and the like with --verbose."""
    level = severity or "NOTICE"
    if level == "WARNING" or verbose:
        return f"  {level}: {message or ''}"  # escaped as printed (print_lines)
    return None


# -- migrate status, check, baseline ------------------------------------------------------


def status_json(description: str, url: str, rows: Sequence[migrations.StatusRow]) -> JSON:
    return {
        "target": description,
        "url": url,
        "pending": sum(row.state == "pending" for row in rows),
        "migrations": [
            {
                "version": row.version,
                "name": row.name,
                "state": row.state,
                "applied_at": row.applied_at.isoformat() if row.applied_at else None,
            }
            for row in rows
        ],
    }


def status_lines(description: str, rows: Sequence[migrations.StatusRow]) -> list[str]:
    from cicd_db.report import grid  # on use: `migrate up` starts without it

    cells = [
        [
            str(row.version),
            row.name,
            row.state,
            f"{clock_text(row.applied_at)} {row.applied_at:%Z}" if row.applied_at else "-",
        ]
        for row in rows
    ]
    pending = sum(row.state == "pending" for row in rows)
    problems = sum(row.disagrees for row in rows)
    # Never "up to date" beside a file and the history that disagree.
    parts = [f"{pending} pending"] if pending else [] if problems else ["up to date"]
    if problems:
        parts.append(
            f"{problems} {'needs' if problems == 1 else 'need'} attention "
            "(run `migrate up` for the fix)"
        )
    summary = ", ".join(parts)
    return [*grid(["VERSION", "NAME", "STATE", "APPLIED AT"], cells), f"{description}: {summary}"]


def check_json(
    files: int,
    reports: Sequence[Report],
    target: str | None,
    rows: Sequence[migrations.StatusRow],
) -> JSON:
    return {
        "files": files,
        "lint": [
            {"tool": r.tool, "passed": r.passed, "output": r.output, "not_checked": list(r.skipped)}
            for r in reports
        ],
        "target": target,
        "disagreements": [{"version": r.version, "name": r.name, "state": r.state} for r in rows],
    }


def check_lines(
    files: int,
    reports: Sequence[Report],
    target: str | None,
    rows: Sequence[migrations.StatusRow],
) -> list[str]:
    lines = []
    for report in reports:
        verdict = "passed" if report.passed else "FAILED"
        lines.append(f"{report.tool}: {verdict} ({plural(len(report.files), 'file')})")
        if report.skipped:  # named, never counted as passed
            from cicd_db.lint import STYLE_LIMIT  # loaded already: the gate ran

            lines.append(
                f"  not style-checked (over {STYLE_LIMIT:,} bytes, which sqlfluff reads "
                f"at about 10 kB a second): {', '.join(report.skipped)}"
            )
        # Its lines, at newlines only: what else splitlines() splits at is escaped instead.
        lines += [] if report.passed else report.output.rstrip("\n").split("\n")
    lines += [f"{row.version} {row.name}: {row.state}" for row in rows]
    checked = f"and the history of {target}" if target else "(no target: history not compared)"
    return [*lines, f"checked {plural(files, 'file')} {checked}"]


def baseline_line(description: str, version: int, recorded: int) -> str:
    return (
        f"baseline: the schema matches migrations up to version {version}; "
        f"recorded {plural(recorded, 'migration')} as applied on {description}"
    )


# -- schema diff, embedded, init-local ----------------------------------------------------


def diff_json(description: str, against: str, found: Sequence[Difference]) -> JSON:
    return {
        "target": description,
        "against": against,
        "differences": [
            {
                "table": d.table,
                "kind": d.kind,
                "name": d.name,
                "change": d.change,
                "detail": d.detail,
            }
            for d in found
        ],
    }


def diff_lines(description: str, against: str, found: Sequence[Difference]) -> list[str]:
    """One line per difference, naming the object and what differs, then the verdict."""
    verdict = plural(len(found), "difference") if found else "no drift"
    return [*map(str, found), f"{description} against {against}: {verdict}"]


def embedded_json(state: Status) -> JSON:
    return {
        "running": state.running,
        "pid": state.pid,
        "port": state.port,
        "data_dir": str(state.data_dir),
        "initialized": state.initialized,
        "stray_pid": state.stray,
    }


def embedded_line(state: Status) -> str:
    if state.running:
        if state.port is None:  # server.json gone from under a running server
            return f"running (pid {state.pid}), its port unknown (no server.json), data {state.data_dir}"
        return f"running (pid {state.pid}) on 127.0.0.1:{state.port}, data {state.data_dir}"
    if state.stray is not None:
        return (
            f"unreachable: a server of {state.data_dir} runs (pid {state.stray}) without its "
            "pid file or data folder; `cicd-db embedded stop` stops it"
        )
    return f"stopped, data {state.data_dir}" + ("" if state.initialized else " (not created yet)")


def local_json(prepared: Prepared, url: str, *, show_password: bool = False) -> JSON:
    """`url` as the command shows it: redacted unless --show-password; so are the
    writer's and the reader's (`app_url`, `reader_url`)."""
    shown = {
        key: (role.url() if show_password else role.redacted_url())
        for key, role in (("app_url", prepared.app), ("reader_url", prepared.reader))
        if role is not None
    }
    return {
        "url": url,
        **shown,
        "created_role": prepared.created_role,
        "created_database": prepared.created_database,
        "password_set": prepared.password_set,
        "password_reset": prepared.password_reset,
    }


def local_line(prepared: Prepared) -> str:
    settings = prepared.settings
    if prepared.created_role:
        role = "created"
    elif prepared.password_reset:
        role = "kept; password reset (an earlier init-local made it and stopped before it finished)"
    else:
        role = "kept; " + ("password set" if prepared.password_set else "its password unchanged")
    database = "created" if prepared.created_database else "kept"
    return f"role {settings.user} {role}; database {settings.database} {database}"


def pruned_json(description: str, pruned: Pruned) -> JSON:
    return {
        "target": description,
        "dry_run": pruned.dry_run,
        "cutoff": pruned.cutoff.isoformat(),
        "runs": pruned.runs,
        "stages": pruned.stages,
        "jobs": pruned.jobs,
        "batches": pruned.batches,
        "held": pruned.held,
        "seconds": round(pruned.seconds, 3),
    }


def redraws() -> bool:
    """Whether standard error is a terminal that can redraw a line in place: not one that
    says it is dumb (TERM=dumb: Emacs's shell, some CI consoles), which shows the codes."""
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class Progress:
    """On a terminal, a bar of what is done of a known whole, redrawn in place."""

    WIDTH = 30

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.drawn = False

    def show(self, done: int, whole: int, noun: str) -> None:
        if not self.enabled or whole <= 0:
            return
        filled = min(self.WIDTH, self.WIDTH * done // whole)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{whole} {noun}")
        sys.stderr.flush()
        self.drawn = True

    def stop(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.drawn = False


class Ticker:
    """On a terminal, a file running longer than TICK_AFTER_SECONDS shows its time ticking."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, migration: migrations.Migration) -> None:
        if not self.enabled:
            return
        self.stop()
        self.done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            if self.done.wait(TICK_AFTER_SECONDS):
                return
            while not self.done.wait(0.5):
                sys.stderr.write(f"\r{migration.filename}: {time.monotonic() - started:.0f} s")
                sys.stderr.flush()
            sys.stderr.write("\r\033[K")

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()

    def retrying(self, retry: migrations.Retry) -> None:
        self.stop()
        print_lines(str(retry), file=sys.stderr)

    def stop(self) -> None:
        if self.thread is not None:
            self.done.set()
            self.thread.join()
            self.thread = None
