"""The tests' set-up: fixtures live in plugins, as in psycopg's tests.

- tests/fix_db.py: the session's PostgreSQL server, databases copied from templates;
- tests/fix_cli.py: the one way to run `cicd-db` (`run_cli`, `start_cli`);
- tests/utils.py: paths and small helpers.
"""

from __future__ import annotations

import os

import hypothesis

pytest_plugins = ["tests.fix_db", "tests.fix_cli"]

# Property-based tests: no deadline (two shared cores make timings noisy), and in CI
# a fixed seed, so a run is repeatable; locally each run draws new examples.
hypothesis.settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
hypothesis.settings.register_profile(
    "ci", parent=hypothesis.settings.get_profile("default"), derandomize=True
)
hypothesis.settings.load_profile(
    "ci" if os.environ.get("CI", "").lower() in ("true", "1") else "default"
)
