"""The tests' set-up: fixtures live in plugins, as in psycopg's tests.

- tests/fix_db.py: the session's PostgreSQL server, databases copied from templates;
- tests/fix_cli.py: the one way to run `cicd-db` (`run_cli`, `start_cli`);
- tests/utils.py: paths and small helpers.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator

import hypothesis
import pytest

from .utils import examples, ram_disk_temporary

pytest_plugins = ["tests.fix_db", "tests.fix_cli", "tests.fix_standby"]

# Property-based tests: no deadline (two shared cores make timings noisy), and in CI
# a fixed seed, so a run is repeatable; locally each run draws new examples.
# A property without its own count draws hypothesis's 100 examples, scaled as the
# others are (tests/utils.py's examples).
hypothesis.settings.register_profile(
    "default",
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
hypothesis.settings.register_profile(
    "ci", parent=hypothesis.settings.get_profile("default"), derandomize=True
)
hypothesis.settings.load_profile(
    "ci" if os.environ.get("CI", "").lower() in ("true", "1") else "default"
)


def pytest_configure(config: pytest.Config) -> None:
    """The session's temporary folder (TMPDIR, tmp_path, throwaway servers) on the RAM
    disk where there is one (tests/utils.py's ram_disk_temporary says why). Set before
    pytest makes its base folder and before xdist starts its workers, which inherit it;
    a TMPDIR given from outside is left as it is."""
    if "TMPDIR" not in os.environ and (folder := ram_disk_temporary()) is not None:
        os.environ["TMPDIR"] = str(folder)
        tempfile.tempdir = None  # read TMPDIR again


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `property` every hypothesis test: `make properties` runs them alone, at
    20 times their examples."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)


# Signals a test may change (the runner's and the throwaway server's handling of Ctrl-C,
# SIGTERM and SIGHUP is tested in this process): one left changed would make a later
# test in the same worker behave otherwise, depending on which tests ran before it.
_WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


@pytest.fixture(autouse=True)
def _signal_handlers_left_as_found() -> Iterator[None]:
    """Fail a test that leaves a signal's handler changed (and put it back)."""
    before = {signum: signal.getsignal(signum) for signum in _WATCHED_SIGNALS}
    yield
    after = {signum: signal.getsignal(signum) for signum in _WATCHED_SIGNALS}
    changed = [signal.Signals(signum).name for signum in before if after[signum] != before[signum]]
    for signum, handler in before.items():
        signal.signal(signum, handler)
    assert not changed, f"the test left the handlers of {', '.join(changed)} changed"
