"""What `migrate up` loads before it connects: only the modules a run that applies needs.

Every module and dataclass costs each run about half a millisecond before its first
query (docs/benchmarks.md, "Where the time goes"); a no-op is measured against the
Python floor, where that is most of the margin.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from psycopg import sql

from cicd_db import migrations

from ..fix_cli import migrate, run_cli
from ..fix_db import Database
from ..utils import write_migrations

# Loaded on first use: applying, planning, telling a failure, rehearsing, baseline and
# drift, the schema dump and diff, and the store (~5 ms, which a run of the migrations
# never needs).
ON_USE = (
    "cicd_db.migrations.apply",
    "cicd_db.migrations.verdicts",
    "cicd_db.migrations.indexes",
    "cicd_db.migrations.retry",
    "cicd_db.migrations.statements",
    "cicd_db.migrations.kinds",
    "cicd_db.migrations.steps",
    "cicd_db.migrations.directives",
    "cicd_db.sqltext",
    "cicd_db.migrations.diagnose",
    "cicd_db.migrations.rehearse",
    "cicd_db.migrations.verify",
    "cicd_db.schema",
    "cicd_db.store",
    "cicd_db.throwaway",
    "cicd_db.embedded",
    "cicd_db.pgprocess",
    "cicd_db.refusals",
)


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


def test_the_names_loaded_on_use_are_still_the_packages() -> None:
    from cicd_db.migrations import apply, rehearse, retry, statements, steps

    assert migrations.plan is statements.plan
    assert migrations.Batch is steps.Batch
    assert migrations.Result is apply.Result
    assert migrations.Retry is retry.Retry
    assert migrations.RetryPolicy is retry.RetryPolicy
    assert migrations.Rehearsal is rehearse.Rehearsal
    assert migrations.LockHeld is rehearse.LockHeld
    assert migrations.outside_the_transaction is rehearse.outside_the_transaction


# -- what a run plans: the files it is about to run, before the first of them runs ----

GOOD = "CREATE TABLE {name} (i int);\n"
# A transactional file may not end its transaction: refused when planned.
BAD = "CREATE TABLE {name} (i int);\nCOMMIT;\n"


def test_a_bad_pending_file_is_refused_before_any_file_runs(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path, {"0001_a.sql": GOOD.format(name="a"), "0002_b.sql": BAD.format(name="b")}
    )
    result = migrate(database, folder, "up")
    assert result.code == 2, result.err
    assert "0002_b.sql" in result.err and "COMMIT ends or starts a transaction" in result.err
    assert (database.history(), database.tables()) == ([], set())
    # Not past a target that leaves it out.
    assert migrate(database, folder, "up", "--target", "1").code == 0
    assert database.history() == [1]


def test_an_applied_file_is_known_by_its_checksum_not_planned_again(
    database: Database, tmp_path: Path
) -> None:
    """A file an older release applied, which this release's checks refuse: `up` with
    nothing pending says so and exits 0 (the file will never run again); `migrate
    check`, which lints every file, still names it."""
    folder = write_migrations(tmp_path, {"0001_a.sql": GOOD.format(name="a")})
    assert migrate(database, folder, "up").code == 0
    old = folder / "0002_b.sql"
    old.write_text(BAD.format(name="b"))
    database.execute(
        sql.SQL(
            "CREATE TABLE b (i int); INSERT INTO cicd_db.cicd_db_schema_history "
            "(version, name, checksum, applied_by, duration_ms) "
            "VALUES (2, 'b', {}, current_user, 1)"
        ).format(sql.Literal(hashlib.sha256(old.read_bytes()).hexdigest()))
    )
    result = migrate(database, folder, "up")
    assert (result.code, result.err) == (0, "")
    assert "up to date" in result.out
    checked = run_cli("migrate", "--migrations-dir", str(folder), "check", "--no-lint")
    assert checked.code == 2 and "0002_b.sql" in checked.err, checked


def test_a_run_with_nothing_pending_loads_no_scanner_and_no_apply_loop(
    database: Database, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path, {f"{n:04d}_t{n}.sql": GOOD.format(name=f"t{n}") for n in (1, 2)}
    )
    assert migrate(database, folder, "up").code == 0
    program = (
        "import sys\n"
        "from cicd_db import cli\n"
        "code = cli.main(sys.argv[1:])\n"
        "print(*sorted(sys.modules), sep='\\n')\n"
        "sys.exit(code)\n"
    )
    args = ["migrate", "--database-url", database.url, "--migrations-dir", str(folder), "up"]
    done = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    loaded = done.stdout.split()
    assert [name for name in ("cicd_db.sqltext", *ON_USE) if name in loaded] == []
