"""The retry policy: how often, and after how long, a file that failed because of other
sessions (failures.Transient) runs again; testable without a server."""

from __future__ import annotations

import random
from dataclasses import dataclass

from cicd_db.migrations.failures import DEFAULT_RETRIES, DEFAULT_RETRY_BUDGET
from cicd_db.migrations.files import Migration

FIRST_RETRY_DELAY = 0.2  # seconds; doubles with each retry of a file, up to MAX_RETRY_DELAY
MAX_RETRY_DELAY = 10.0


@dataclass(frozen=True)
class Retry:
    """A file that failed because of other sessions and is about to run again."""

    migration: Migration
    reason: str  # "lock not available at line 12 (ALTER TABLE job_executions ...)"
    attempt: int  # 1 for the first retry
    retries: int
    delay: float  # seconds before it runs again

    def __str__(self) -> str:
        return (
            f"{self.migration.filename}: {self.reason}, "
            f"retry {self.attempt}/{self.retries} in {self.delay:.1f} s"
        )


@dataclass
class RetryPolicy:
    """How often, and after how long, a file that met other sessions runs again: at most
    `retries` times per file, waiting at most `budget` seconds over the whole run."""

    retries: int = DEFAULT_RETRIES
    budget: float = DEFAULT_RETRY_BUDGET
    waited: float = 0.0  # seconds spent waiting so far in the run

    def delay(self, attempt: int) -> float:
        """Seconds before retry `attempt` (1 for the first): doubling, spread by +-25% so
        that runners that met each other do not meet again."""
        base: float = min(FIRST_RETRY_DELAY * 2.0 ** (attempt - 1), MAX_RETRY_DELAY)
        return base * random.uniform(0.75, 1.25)  # noqa: S311 (spreads runners apart)

    def give_up(self, attempt: int, delay: float) -> str | None:
        """Why retry `attempt` after `delay` seconds may not happen, or None if it may."""
        if attempt > self.retries:
            return f"gave up after {attempt - 1} retr{'y' if attempt == 2 else 'ies'}"
        if self.waited + delay > self.budget:
            return f"the retry budget of {self.budget:g} s is spent"
        return None
