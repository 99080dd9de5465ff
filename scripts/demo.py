"""Record a sample pipeline run through the store API, then show the four report views.

`make demo` runs it on the embedded server: `python scripts/demo.py --stack embedded`.
It takes the same target options as every other command.
"""

import argparse
import secrets
from typing import Any

from cicd_db import report, store, targets

PLAN = [  # stage, [(job, allows_failure, outcome)]
    ("build", [("compile", False, store.SUCCESS)]),
    (
        "test",
        [
            ("unit", False, store.SUCCESS),
            ("integration", False, store.SUCCESS),
            ("lint", True, store.FAILED),
        ],
    ),
    ("deploy", [("publish", False, store.SUCCESS)]),
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--stack")
parser.add_argument("--database-url")
parser.add_argument("--local", action="store_true")
args = parser.parse_args()

target = targets.resolve(database_url=args.database_url, stack=args.stack, local=args.local)
with targets.connect(target.settings) as conn:
    executions = store.Store.on(conn)
    run = executions.set_status(executions.start_run("demo", secrets.token_hex(20)), store.RUNNING)
    for order, (stage_name, jobs) in enumerate(PLAN, start=1):
        stage = executions.set_status(executions.add_stage(run, stage_name, order), store.RUNNING)
        for job, (_, _, outcome) in zip(
            executions.add_jobs(stage, [(name, allowed) for name, allowed, _ in jobs]),
            jobs,
            strict=True,
        ):
            executions.set_status(executions.set_status(job, store.RUNNING), outcome)
        executions.finish_stage(stage)
    run = executions.finish_run(run)
    print(
        f"recorded run {run.run_number} of pipeline demo: {run.status} "
        "(the lint job failed, but it allows failure)\n"
    )
    views: list[dict[str, Any]] = [
        {},
        {"run": run.run_number},
        {"run": run.run_number, "stage": "test"},
        {"run": run.run_number, "stage": "test", "job": "lint"},
    ]
    for view in views:
        flags = " ".join(f"--{name} {value}" for name, value in view.items())
        print(f"$ cicd-db report --pipeline demo {flags}".rstrip(), flush=True)
        print(report.render(report.fetch(executions, "demo", **view), "table"))
