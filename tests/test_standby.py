"""A hot standby as the target (helper-117): writes are refused as the standby's, not
blamed on a file or a setting; reads work as on the primary."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from cicd_db.errors import ConfigError
from cicd_db.store import Store

from .fix_cli import migrate, run_cli
from .fix_standby import Pair
from .utils import MIGRATIONS, write_migrations

STANDBY = (
    "error: the server is a standby (in recovery), where nothing can be written; {done}; "
    "connect to its primary (with several hosts in the URL, add "
    "target_session_attrs=read-write)\n"
)


def caught_up(pair: Pair) -> None:
    """The standby has replayed everything the primary wrote until now."""
    with psycopg.connect(pair.admin.conninfo(), autocommit=True) as conn:
        wanted = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    deadline = time.monotonic() + 30
    with psycopg.connect(pair.standby.conninfo(), autocommit=True) as conn:
        while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", wanted).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)


def test_a_standby_is_named_as_one_and_reads_work_as_on_its_primary(
    standby: Pair, tmp_path: Path
) -> None:
    code, _, err = migrate(standby.primary, MIGRATIONS, "up")
    assert (code, err) == (0, "")
    with psycopg.connect(standby.primary.conninfo(), autocommit=True) as conn:
        executions = Store.on(conn)
        executions.cancel_run(executions.start_run("build", "c1"))
    caught_up(standby)
    pending = write_migrations(
        tmp_path,
        {
            **{path.name: path.read_text() for path in sorted(MIGRATIONS.glob("*.sql"))},
            "9001_extra.sql": "CREATE TABLE extra (id int);\n",
        },
    )
    for args in (("up",), ("up", "--rehearse"), ("baseline", "--version", "9001")):
        code, out, err = migrate(standby.standby, pending, *args)
        assert (code, out, err) == (2, "", STANDBY.format(done="nothing was run")), args
    code, out, err = migrate(standby.standby, pending, "status", "--exit-code")
    assert code == 3 and "9001     extra" in out, (
        code,
        out,
        err,
    )  # pending: read as on the primary
    url = standby.standby.url()
    code, out, err = run_cli("retention", "--keep-days", "1", "--database-url", url)
    assert (code, out, err) == (
        2,
        "",
        STANDBY.format(done="nothing was deleted"),
    )
    for args in (
        ("retention", "--keep-days", "1", "--dry-run"),
        ("report", "--pipeline", "build"),
        ("insights",),
    ):
        code, out, err = run_cli(*args, "--database-url", url)
        assert (code, err) == (0, ""), (args, err)


def test_the_store_names_a_standby_it_cannot_write_to(standby: Pair) -> None:
    """A CI system's agent given a replica's address: the store's writes raised psycopg's
    ReadOnlySqlTransaction ("cannot execute INSERT in a read-only transaction"); they name
    the standby, and its reads work."""
    told = STANDBY.format(done="nothing was written").removeprefix("error: ").rstrip("\n")
    with psycopg.connect(standby.standby.conninfo(), autocommit=True) as conn:
        executions = Store.on(conn)
        with pytest.raises(ConfigError) as refused:
            executions.start_run("build", "c2")
        assert str(refused.value) == told
        assert executions.runs("build")[-1].run_number == 1
    with ConnectionPool(
        standby.standby.conninfo(), min_size=1, max_size=2, kwargs={"autocommit": True}
    ) as pool:
        with pytest.raises(ConfigError) as refused:
            Store.pooled(pool).start_run("build", "c2")
        assert str(refused.value) == told
