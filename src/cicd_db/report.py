"""The four report views: fetched through the store, rendered as a table, JSON or YAML.

`fetch` reads a view's rows through the store; everything else is pure
functions, rows in, text out. The JSON
and YAML forms share one structure, documented in the README ("Report formats");
keys are only ever added, never renamed or removed.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from cicd_db.errors import (
    UsageError,
    check_name,
    clock_text,
    no_schema,
    older_schema,
    one_line,
)

if TYPE_CHECKING:  # only for annotations: `cicd-db migrate` imports this module for grid()
    from cicd_db.store import JobRun, PipelineRun, StageRun, Store

FORMATS = ("table", "json", "yaml")
# Tables fit 80 columns, counted as a terminal shows them (CJK and most emoji take
# two). Names come from whoever records a run, so a table shows a character that is
# not printable as its escape, as repr() does (\x1b, \n, \u202e): a name cannot
# move the cursor, recolour the terminal or break a line. A name too long for its
# column or line is shortened in the middle, `integrati…-postgres`, so that both its
# start and its end show; JSON and YAML have every name whole. Stage and job times
# leave out the year, which the run's header above them shows.
WIDTH = 80
LABEL_WIDTH = 16  # the key column of the key/value headers


@dataclass(frozen=True)
class RunsView:
    """All runs of a pipeline, newest first; `next_before` continues the listing."""

    pipeline: str
    runs: list[PipelineRun]
    next_before: int | None


@dataclass(frozen=True)
class RunView:
    run: PipelineRun
    stages: list[StageRun]


@dataclass(frozen=True)
class StageView:
    run: PipelineRun
    stage: StageRun
    jobs: list[JobRun]


@dataclass(frozen=True)
class JobView:
    run: PipelineRun
    stage: StageRun
    job: JobRun


View = RunsView | RunView | StageView | JobView


def render(view: View, output_format: str) -> str:
    """The view as text in `output_format` (table, json or yaml), ending in a newline.
    Another format is a UsageError (a Python caller's "xml" was printed as a table)."""
    if output_format in ("json", "yaml"):
        return structured(data(view), output_format)
    if output_format != "table":
        raise UsageError(
            f"{{format}} {output_format!r} is no format; use table, json or yaml",
            arguments=["format"],
        )
    return table(view)


def structured(value: Any, output_format: str) -> str:
    """`value` (plain data) as JSON or YAML text, ending in a newline; keys kept in order."""
    if output_format == "json":
        return json.dumps(value, indent=2) + "\n"
    import yaml  # only the yaml format pays for importing it

    return str(yaml.dump(value, Dumper=_yaml_dumper(), sort_keys=False, allow_unicode=True))


# What YAML 1.2's core schema reads as a number, a boolean or null (yq, Go's yaml.v3,
# js-yaml and ruamel read YAML 1.2). PyYAML writes YAML 1.1 and quotes only what 1.1 reads
# so: `1e3`, `0o17` or a short commit id such as `5e12345` went out plain, and came back to
# a YAML 1.2 reader as 1000.0, 15 or inf.
_YAML_1_2_NOT_TEXT = re.compile(
    r"~|null|Null|NULL|true|True|TRUE|false|False|FALSE"
    r"|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


@cache
def _yaml_dumper() -> type[Any]:
    """yaml.SafeDumper, but a string with a character that is not printable is written
    double-quoted with every such character, and all that is not ASCII, escaped.

    SafeDumper alone writes some of them raw (a NEL, U+0085, even breaks the round
    trip: it is read back as a line break), and a YAML report goes to terminals too.
    """
    import yaml

    class Dumper(yaml.SafeDumper):
        def write_double_quoted(self, text: str, split: bool = True) -> None:
            allow_unicode, self.allow_unicode = self.allow_unicode, False
            try:
                super().write_double_quoted(text, split)
            finally:
                self.allow_unicode = allow_unicode

    def string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
        style = None if text.isprintable() else '"'
        if style is None and _YAML_1_2_NOT_TEXT.fullmatch(text):
            style = "'"  # text in YAML 1.1, which PyYAML writes, but not in YAML 1.2
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, string)
    return Dumper


# -- JSON and YAML -------------------------------------------------------------------


def data(view: View) -> dict[str, Any]:
    """The view as plain data: the documented JSON and YAML structure."""
    if isinstance(view, RunsView):
        return {
            "pipeline": view.pipeline,
            "runs": [_run(run) for run in view.runs],
            "next_before": view.next_before,
        }
    if isinstance(view, RunView):
        return {"run": _run(view.run), "stages": [_stage(stage) for stage in view.stages]}
    if isinstance(view, StageView):
        return {
            "run": _run(view.run),
            "stage": _stage(view.stage),
            "jobs": [_job(job) for job in view.jobs],
        }
    return {"run": _run(view.run), "stage": _stage(view.stage), "job": _job(view.job)}


def _run(run: PipelineRun) -> dict[str, Any]:
    return {
        "pipeline": run.pipeline_name,
        "run_number": run.run_number,
        "commit_hash": run.commit_hash,
        **_times(run),
    }


def _stage(stage: StageRun) -> dict[str, Any]:
    return {"stage": stage.stage_name, "execution_order": stage.execution_order, **_times(stage)}


def _job(job: JobRun) -> dict[str, Any]:
    return {"job": job.job_name, "allows_failure": job.allows_failure, **_times(job)}


def _times(row: PipelineRun | StageRun | JobRun) -> dict[str, Any]:
    duration = row.duration
    return {
        "status": row.status,
        "start_time": _instant(row.start_time),
        "completion_time": _instant(row.completion_time),
        "duration_seconds": None if duration is None else rounded_seconds(duration, 3),
    }


def rounded_seconds(duration: timedelta, places: int) -> float:
    """`duration` in seconds to `places` decimals, rounded from its exact microseconds
    half away from zero, as PostgreSQL's round() does: a float's binary value would
    round 1.0005 s down and 2.0005 s up."""
    return _half_up(Decimal(duration // timedelta(microseconds=1)).scaleb(-6), places)


def rounded(value: float, places: int) -> float:
    """`value` to `places` decimals, half away from zero, as it is written (its shortest
    decimal, repr's): the same run's duration reads the same here and in insights, where
    a float's binary value (1.0025 is 1.00249999...) would round it down."""
    return _half_up(Decimal(repr(value)), places)


def _half_up(exact: Decimal, places: int) -> float:
    return float(exact.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP))


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- table -----------------------------------------------------------------------------


def table(view: View) -> str:
    """The view for a terminal: at most 80 columns, names escaped, times in UTC."""
    if isinstance(view, RunsView):
        count = f": {len(view.runs)} run{'s' if len(view.runs) != 1 else ''}, newest first"
        lines = [f"pipeline {fit(view.pipeline, WIDTH - len('pipeline ') - len(count))}{count}"]
        lines += grid(
            ["RUN", "STATUS", "COMMIT", "STARTED (UTC)", "FINISHED (UTC)", "DURATION"],
            [
                [str(run.run_number), run.status, run.commit_hash[:8], *_time_cells(run)]
                for run in view.runs
            ],
            most={2: 8},  # the commit: 8 columns, as 8 hex digits take
        )
        if view.next_before is not None:
            lines.append(f"more: --before {view.next_before}")
        return "\n".join(lines) + "\n"
    lines = _run_header(view.run)
    if isinstance(view, RunView):
        lines += _children(
            ["ORDER", "STAGE", "STATUS"],
            [
                [str(s.execution_order), s.stage_name, s.status, *_time_cells(s, short=True)]
                for s in view.stages
            ],
            "no stages",
        )
        return "\n".join(lines) + "\n"
    lines += _fields(
        [
            ("stage", view.stage.stage_name),
            ("stage status", view.stage.status),
            *_time_fields("stage", view.stage),
        ]
    )
    if isinstance(view, StageView):
        lines += _children(
            ["JOB", "STATUS", "MAY FAIL"],
            [
                [
                    j.job_name,
                    j.status,
                    "yes" if j.allows_failure else "no",
                    *_time_cells(j, short=True),
                ]
                for j in view.jobs
            ],
            "no jobs",
        )
        return "\n".join(lines) + "\n"
    lines += _fields(
        [
            ("job", view.job.job_name),
            ("job status", view.job.status),
            ("allows failure", "yes" if view.job.allows_failure else "no"),
            *_time_fields("job", view.job),
        ]
    )
    return "\n".join(lines) + "\n"


def _children(headers: list[str], rows: list[list[str]], empty: str) -> list[str]:
    """A stage's or run's children below its header: a table with their times, or `empty`."""
    if not rows:
        return ["", empty]
    return ["", *grid([*headers, "STARTED (UTC)", "FINISHED (UTC)", "DURATION"], rows)]


def _run_header(run: PipelineRun) -> list[str]:
    return _fields(
        [
            ("pipeline", run.pipeline_name),
            ("run", str(run.run_number)),
            ("commit", run.commit_hash),
            ("run status", run.status),
            *_time_fields("run", run),
        ]
    )


def _time_fields(what: str, row: PipelineRun | StageRun | JobRun) -> list[tuple[str, str]]:
    started, finished, duration = _time_cells(row)
    return [
        (f"{what} started", started + (" UTC" if row.start_time else "")),
        (f"{what} finished", finished + (" UTC" if row.completion_time else "")),
        (f"{what} duration", duration),
    ]


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    """Key/value lines, values escaped and shortened to fit."""
    return [
        f"{label:<{LABEL_WIDTH}}{fit(value, WIDTH - LABEL_WIDTH)}".rstrip()
        for label, value in pairs
    ]


def _time_cells(row: PipelineRun | StageRun | JobRun, *, short: bool = False) -> list[str]:
    return [
        _clock(row.start_time, short=short),
        _clock(row.completion_time, short=short),
        _duration(row.duration),
    ]


def _clock(moment: datetime | None, *, short: bool = False) -> str:
    if moment is None:
        return "-"
    utc = moment.astimezone(UTC)
    return utc.strftime("%m-%d %H:%M:%S") if short else clock_text(utc)


def _duration(duration: timedelta | None) -> str:
    return seconds_text(None if duration is None else rounded_seconds(duration, 1))


def seconds_text(seconds: float | None) -> str:
    """A duration as the views write one: 42.5s, 3m 07s, 2h 05m; `-` for none."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, second = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {second:02d}s"
    hours, minute = divmod(minutes, 60)
    return f"{hours}h {minute:02d}m"


def grid(
    headers: list[str],
    rows: list[list[str]],
    *,
    width: int = WIDTH,
    most: dict[int, int] | None = None,
) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks, cells
    escaped (see WIDTH), and no line wider than `width`: while it would be, the widest
    column loses a character, names first since they are the widest, down to its
    header's width (further only if that is not enough). `most`: the columns (by index)
    no wider than so many terminal columns, whatever their text (a commit's first
    characters, which wide ones would make twice as wide)."""
    table = [[as_written(one_line(cell)) for cell in line] for line in [headers, *rows]]
    widths = [max(map(_width, column)) for column in zip(*table, strict=True)]
    for index, cap in (most or {}).items():
        widths[index] = min(widths[index], max(cap, _width(table[0][index])))
    for floor in ([_width(cell) for cell in table[0]], [1] * len(widths)):
        while sum(widths) + 2 * (len(widths) - 1) > width:
            shrinkable = [i for i, w in enumerate(widths) if w > floor[i]]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    return [
        "  ".join(_pad(fit(cell, w), w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]


def _char_width(ch: str) -> int:
    """Columns a printable character takes in a terminal: 2 for wide (CJK, most emoji),
    0 for combining marks, 1 otherwise. The emoji variation selector counts 1, since it
    makes the character before it two columns wide."""
    if ch == "\ufe0f":
        return 1
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(map(_char_width, text))


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


# The encoding a table is written in: standard output's, unless the command writes it
# to a file (`written_in`), which cicd-db writes as UTF-8.
_WRITTEN_IN: ContextVar[str | None] = ContextVar("cicd_db_written_in", default=None)


@contextmanager
def written_in(encoding: str) -> Iterator[None]:
    """Tables rendered inside go out in `encoding`, not standard output's."""
    token = _WRITTEN_IN.set(encoding)
    try:
        yield
    finally:
        _WRITTEN_IN.reset(token)


def as_written(text: str) -> str:
    """`text` as it will be written: a character the encoding lacks (an emoji in an ASCII
    or Latin-1 locale) as Python's `\\U0001f680` (cli.standard_output), so that a table
    measures what the terminal shows."""
    encoding = _WRITTEN_IN.get() or getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: written as it is
        return text


def fit(text: str, width: int) -> str:
    """`text` escaped, as written, and, when wider than `width`, its start and end around
    an ellipsis (three dots where the terminal has no `…`)."""
    text = as_written(one_line(text))
    if _width(text) <= width:
        return text
    ellipsis = "…" if as_written("…") == "…" else "..."
    if width < len(ellipsis):  # no room for three dots: as many as fit
        return "." * width
    room = width - len(ellipsis)
    head, used = 0, 0
    while head < len(text) and used + _char_width(text[head]) <= (room + 1) // 2:
        used += _char_width(text[head])
        head += 1
    tail, used = len(text), 0
    while tail > head and used + _char_width(text[tail - 1]) <= room // 2:
        used += _char_width(text[tail - 1])
        tail -= 1
    while tail < len(text) and (_char_width(text[tail]) == 0 or text[tail] == "\ufe0f"):
        tail += 1  # a combining mark or selector has nothing to modify after the ellipsis
    return text[:head] + ellipsis + text[tail:]


# -- fetching a view -------------------------------------------------------------------

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def fetch(
    executions: Store,
    pipeline: str,
    *,
    run: int | None = None,
    stage: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    before: int | None = None,
) -> View:
    """The view the arguments name, read through the store. Reads only.

    A pipeline's runs (a page of `limit`, numbered below `before`), one run with its
    stages, one stage with its jobs, or one job. Raises UsageError for arguments
    that do not fit together and NotFound for what does not exist.
    """
    limit = check_arguments(pipeline, run=run, stage=stage, job=job, limit=limit, before=before)
    from psycopg import errors  # here: `cicd-db migrate` imports this module without a store

    executions.check_search_path()
    try:
        return _fetch(executions, pipeline, run, stage, job, limit, before)
    except UsageError as refused:  # the store names the run `run_number`; here it is `run`
        raise refused.renamed("run_number", "run") from None
    except errors.UndefinedTable:
        raise no_schema(executions.tables_placement()) from None
    except errors.UndefinedColumn:
        raise older_schema() from None


def check_arguments(
    pipeline: str,
    *,
    run: int | None = None,
    stage: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    before: int | None = None,
) -> int:
    """UsageError unless the arguments name one view of names the tables can hold
    (checked before anything connects, too: a mistake told as an outage when the server
    is down was the wrong fix); the page's limit, DEFAULT_LIMIT when none is given."""
    # An empty name given on purpose (`--stage ""`, an unset shell variable) is not a
    # name left out: refused, rather than read as the wider view; so is one no table holds.
    for argument, name in (("pipeline", pipeline), ("stage", stage), ("job", job)):
        check_name(argument, name, optional=True)
    if job is not None and stage is None:
        raise UsageError(
            "{job} needs {stage} (and {run}): a job is named within its stage",
            arguments=["job", "stage", "run"],
        )
    if stage is not None and not run:
        raise UsageError(
            "{stage} needs {run}: a stage is named within its run", arguments=["stage", "run"]
        )
    if run and (limit or before):
        raise UsageError(
            "{limit} and {before} page through runs; leave them out with {run}",
            arguments=["limit", "before", "run"],
        )
    limit = limit or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise UsageError(
            f"{{limit}} {limit} is above {MAX_LIMIT}; page with {{before}} instead",
            arguments=["limit", "before"],
        )
    return limit


def _fetch(
    executions: Store,
    pipeline: str,
    run: int | None,
    stage: str | None,
    job: str | None,
    limit: int,
    before: int | None,
) -> View:
    if run is None:
        runs = executions.runs(pipeline, limit=limit, before=before)
        if not runs and before is None:
            from cicd_db.store import no_runs  # loaded already: `executions` is a Store

            raise no_runs(pipeline)
        # The cursor: the next page starts below the last run shown, if there may be one.
        more = runs[-1].run_number if len(runs) == limit and runs[-1].run_number > 1 else None
        return RunsView(pipeline, runs, more)
    the_run = executions.run(pipeline, run)
    if stage is None:
        return RunView(the_run, executions.stages(the_run))
    the_stage = executions.stage(the_run, stage)
    if job is None:
        return StageView(the_run, the_stage, executions.jobs(the_stage))
    return JobView(the_run, the_stage, executions.job(the_run, the_stage, job))
