"""What `migrate up` loads before it connects: only the modules a run that applies needs.

Every module and dataclass costs each run about half a millisecond before its first
query (docs/benchmarks.md, "Where the time goes"); a no-op is measured against the
Python floor, where that is most of the margin.
"""

from __future__ import annotations

import subprocess
import sys

from cicd_db import migrations

# Loaded on first use: rehearsing, baseline and drift, the schema dump and diff.
ON_USE = ("cicd_db.migrations.rehearse", "cicd_db.migrations.verify", "cicd_db.schema")


def test_the_cli_loads_no_rehearsal_verification_or_schema_until_used() -> None:
    # A fresh interpreter: this one has loaded everything the other tests use.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cicd_db import cli; print(*sorted(sys.modules), sep='\\n')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "cicd_db.migrations.runner" in loaded
    assert [name for name in ON_USE if name in loaded] == []


def test_the_rehearsals_names_are_still_the_packages() -> None:
    from cicd_db.migrations import rehearse

    assert migrations.Rehearsal is rehearse.Rehearsal
    assert migrations.LockHeld is rehearse.LockHeld
    assert migrations.outside_the_transaction is rehearse.outside_the_transaction
