"""Record a realistic, seeded 60-day CI history through the store, then show its insights.

`make demo` runs it on the embedded server: `python scripts/demo.py --stack embedded`.
It takes the same target options as every other command. Three pipelines (demo-api,
demo-web, demo-docs), several runs a day at working hours, durations drawn from
log-normal distributions (a build of minutes, tests longer), and in them what
insights are for: demo-api's integration tests get slower from day 30 on, demo-web's
e2e job fails about 8% of the time and passes when the same commit is run again, a
broken week on demo-api (days 38 to 44), and a run cancelled now and then (a newer
push supersedes it). Seeded: the same history every time, ending today. Running it
again replaces the demo pipelines' runs (the run numbers go on).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cicd_db import cli, insights, report, store, targets
from cicd_db.errors import CicdDbError

DAYS = 60
PIPELINES = ("demo-api", "demo-web", "demo-docs")
PAGE = Path(".cicd-db/demo-insights.html")


@dataclass(frozen=True)
class Job:
    name: str
    median_seconds: float
    spread: float = 0.2  # sigma of the log-normal
    allows_failure: bool = False


STAGES: dict[str, list[tuple[str, list[Job]]]] = {
    "demo-api": [
        ("build", [Job("compile", 150), Job("image", 95)]),
        (
            "test",
            [
                Job("unit", 260),
                Job("integration", 540, 0.15),
                Job("lint", 40, allows_failure=True),
            ],
        ),
        ("deploy", [Job("publish", 70, 0.1)]),
    ],
    "demo-web": [
        ("build", [Job("bundle", 120)]),
        ("test", [Job("unit", 150), Job("e2e", 420, 0.25)]),
        ("deploy", [Job("upload", 45, 0.1)]),
    ],
    "demo-docs": [("build", [Job("sphinx", 85, 0.15)]), ("deploy", [Job("pages", 30, 0.1)])],
}
RUNS_A_DAY = {"demo-api": (5, 9), "demo-web": (3, 6), "demo-docs": (0, 2)}


def outcome(rng: random.Random, pipeline: str, job: Job, day: int, rerun: bool) -> str:
    """What a job does on `day` (0 is the oldest): the story of the demo, as odds."""
    if pipeline == "demo-api" and job.name == "unit" and 38 <= day <= 44:
        return store.FAILED if rng.random() < 0.7 else store.SUCCESS  # the broken week
    if pipeline == "demo-web" and job.name == "e2e" and not rerun:
        return store.FAILED if rng.random() < 0.08 else store.SUCCESS  # flaky
    if job.allows_failure:
        return store.FAILED if rng.random() < 0.15 else store.SUCCESS
    return store.FAILED if rng.random() < 0.015 else store.SUCCESS


def seconds(rng: random.Random, pipeline: str, job: Job, day: int) -> float:
    median = job.median_seconds
    if pipeline == "demo-api" and job.name == "integration" and day >= 30:
        median *= 1.45  # the slow regression
    return rng.lognormvariate(math.log(median), job.spread)


def record(
    executions: store.Store,
    rng: random.Random,
    pipeline: str,
    commit: str,
    start: datetime,
    day: int,
    *,
    rerun: bool = False,
) -> bool:
    """One run, stage after stage, each stage's jobs side by side; a stage that fails
    ends the run. True when it failed on a flaky e2e (the commit is run again)."""
    # A newer push supersedes it now and then: cancelled while its tests (or last stage) run.
    names = [name for name, _ in STAGES[pipeline]]
    cancel_in = ("test" if "test" in names else names[-1]) if rng.random() < 0.03 else None
    run = executions.set_status(executions.start_run(pipeline, commit), store.RUNNING, at=start)
    clock = start + timedelta(seconds=rng.uniform(5, 25))  # an agent picks it up
    flaked = False
    for order, (name, jobs) in enumerate(STAGES[pipeline], start=1):
        stage = executions.set_status(
            executions.add_stage(run, name, order), store.RUNNING, at=clock
        )
        added = executions.add_jobs(stage, [(job.name, job.allows_failure) for job in jobs])
        executions.set_statuses(added, store.RUNNING, at=clock)
        if name == cancel_in:
            executions.cancel_run(run, at=clock + timedelta(seconds=rng.uniform(30, 120)))
            return False
        ends = []
        for row, job in zip(added, jobs, strict=True):
            status = outcome(rng, pipeline, job, day, rerun)
            flaked |= job.name == "e2e" and status == store.FAILED
            end = clock + timedelta(seconds=seconds(rng, pipeline, job, day))
            executions.set_status(row, status, at=end)
            ends.append(end)
        clock = max(ends) + timedelta(seconds=rng.uniform(1, 4))
        if executions.finish_stage(stage, at=clock).status == store.FAILED:
            break
    executions.finish_run(run, at=clock + timedelta(seconds=rng.uniform(1, 3)))
    return flaked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack")
    parser.add_argument("--database-url")
    parser.add_argument("--local", action="store_true")
    args = parser.parse_args()
    target = targets.resolve(database_url=args.database_url, stack=args.stack, local=args.local)
    rng = random.Random(20)  # noqa: S311 (a demo: the same history every time, not a secret)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # As the CI system records: the writer where the target has one (docs/security.md).
    with targets.connect(target.role_settings(targets.APP)) as conn:
        conn.execute(
            "DELETE FROM pipeline_executions WHERE pipeline_name = ANY(%s)", [list(PIPELINES)]
        )
        executions = store.Store.on(conn)
        recorded = 0
        for day in range(DAYS):
            midnight = today - timedelta(days=DAYS - 1 - day)
            for pipeline in PIPELINES:
                low, high = RUNS_A_DAY[pipeline]
                count = rng.randint(low, high) if midnight.weekday() < 5 else rng.randint(0, 1)
                # Pushes between 08:00 and 19:00 UTC, in order.
                for hour in sorted(rng.uniform(8, 19) for _ in range(count)):
                    start = midnight + timedelta(hours=hour)
                    if start > datetime.now(UTC):
                        continue
                    commit = rng.randbytes(20).hex()
                    recorded += 1
                    if record(executions, rng, pipeline, commit, start, day):
                        # Someone presses "retry": the same commit, a few minutes later.
                        retry = start + timedelta(minutes=rng.uniform(20, 40))
                        if retry < datetime.now(UTC):
                            recorded += 1
                            record(executions, rng, pipeline, commit, retry, day, rerun=True)
        print(f"recorded {recorded} runs of {len(PIPELINES)} pipelines over {DAYS} days\n")
        # The commands shown name the target as it was given (a URL by a placeholder: it
        # holds a password), so each one pasted shows what the demo shows.
        where = (
            f" --stack {args.stack}"
            if args.stack
            else " --local"
            if args.local
            else ' --database-url "$URL"'
            if args.database_url
            else ""
        )
        for pipeline in (None, "demo-api", "demo-web"):
            flags = f" --pipeline {pipeline}" if pipeline else ""
            print(f"$ cicd-db insights{where} --days {DAYS}{flags}", flush=True)
            print(insights.render(insights.insights(conn, pipeline, days=DAYS), "table"))
        print(f"$ cicd-db report{where} --pipeline demo-api --limit 5", flush=True)
        print(report.render(report.fetch(executions, "demo-api", limit=5), "table"))
        PAGE.parent.mkdir(parents=True, exist_ok=True)
        PAGE.write_text(insights.render(insights.insights(conn, "demo-api", days=DAYS), "html"))
        print(
            f"$ cicd-db insights{where} --pipeline demo-api --days {DAYS} --format html -o {PAGE}"
        )
        print(f"wrote {PAGE}: open it in a browser (it needs no network)")


if __name__ == "__main__":
    try:
        main()
    except CicdDbError as error:  # one line, as the CLI says it
        print(f"error: {cli.phrased(error)}", file=sys.stderr)
        sys.exit(error.exit_code)
