"""What insights answer with: the window, a pipeline's figures (its days, stages and
jobs) or one line per pipeline; every rate None where it has no runs to be over."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

DEFAULT_DAYS = 30
MAX_DAYS = 3660
MAX_RUNS = 100_000
FORMATS = ("table", "json", "yaml", "html")


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class _Rates:
    """Success and failure rates of finished runs or jobs: over SUCCESS + FAILED only,
    cancelled ones left out (None when none finished)."""

    success: int
    failed: int

    @property
    def success_rate(self) -> float | None:
        return _rate(self.success, self.success + self.failed)

    @property
    def failure_rate(self) -> float | None:
        return _rate(self.failed, self.success + self.failed)


@dataclass(frozen=True)
class Window:
    """The runs looked at: the last `days` UTC days up to `until`, or the last `runs` runs
    whose time is not after `until`. `since` is the first day's midnight (UTC), None for
    a window of runs."""

    days: int | None
    runs: int | None
    since: datetime | None
    until: datetime


@dataclass(frozen=True)
class Day(_Rates):
    """The runs of one UTC day of the window."""

    date: date
    runs: int
    success: int
    failed: int
    cancelled: int
    running: int
    duration_p50_seconds: float | None
    duration_p95_seconds: float | None


@dataclass(frozen=True)
class StageFigures(_Rates):
    """One stage name's executions in the window's runs."""

    stage: str
    runs: int
    success: int
    failed: int
    cancelled: int
    duration_p50_seconds: float | None
    duration_p95_seconds: float | None


@dataclass(frozen=True)
class JobFigures(_Rates):
    """One job's executions (by stage and job name) in the window's runs."""

    stage: str
    job: str
    runs: int
    success: int
    failed: int  # failures that count: of a job that does not allow failure
    allowed_failures: int
    cancelled: int
    flaky_commits: int
    duration_p50_seconds: float | None
    duration_p95_seconds: float | None


@dataclass(frozen=True)
class PipelineInsights(_Rates):
    """One pipeline over the window."""

    pipeline: str
    window: Window
    runs: int
    success: int
    failed: int
    cancelled: int
    running: int
    duration_p50_seconds: float | None
    duration_p95_seconds: float | None
    mttr_seconds: float | None
    recoveries: int
    longest_red_streak: int
    days: list[Day]
    stages: list[StageFigures]
    jobs: list[JobFigures]


@dataclass(frozen=True)
class PipelineLine(_Rates):
    """One pipeline's line of the summary."""

    pipeline: str
    runs: int
    success: int
    failed: int
    cancelled: int
    running: int
    duration_p50_seconds: float | None
    duration_p95_seconds: float | None
    days: list[Day]


@dataclass(frozen=True)
class Summary:
    """Every pipeline with a run in the window, busiest first."""

    window: Window
    pipelines: list[PipelineLine]


Insights = PipelineInsights | Summary
