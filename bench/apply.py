"""Case `apply`: 100 generated migrations (a table and an index each) applied to an
empty database by each tool, whole process, with `psql -1 -f` as the floor.

The generated migrations, the rivals' command lines and the versus table serve the
no-op case too."""

from __future__ import annotations

import random
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from cicd_db.settings import ConnectionSettings

from .common import PYTHON, ROOT, Databases, Table, paired, round_trip_us, timed
from .link import delayed

Tools = dict[str, Path | None]

PYTHON_FLOOR = "python+psycopg, files sent bare (floor)"
# The least any Python runner that records its files can do: start, import psycopg,
# connect, make a history table, and send each file with its history row and COMMIT
# in one round trip through libpq, checking nothing. What the runner does over it
# (planning, the lock, the checks, line numbers on failure) is its own cost; what
# this costs over dbmate is Python's.
_PYTHON_FLOOR = """
import sys
from pathlib import Path
import psycopg
from psycopg.pq import ExecStatus
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("CREATE TABLE floor_history (version bigint PRIMARY KEY, name text NOT NULL)")
    for path in sorted(Path(sys.argv[2]).glob("*.sql")):
        version, name = path.stem.split("_", 1)
        result = conn.pgconn.exec_(
            b"BEGIN;" + path.read_bytes()
            + b";INSERT INTO floor_history VALUES (%d, '%s');COMMIT" % (int(version), name.encode())
        )
        if result.status != ExecStatus.COMMAND_OK:
            sys.exit(f"{path.name}: {result.error_message.decode()}")
"""


def generate(folder: Path, count: int = 100) -> dict[str, Path]:
    """The same `count` migrations in each tool's layout; returns tool -> folder."""
    layouts = {
        "cicd-db": folder / "cicd-db",
        "dbmate": folder / "dbmate",
        "yoyo": folder / "yoyo",
        "psql": folder / "psql",
    }
    for path in layouts.values():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    whole = []
    for number in range(1, count + 1):
        body = (
            f"CREATE TABLE bench_{number:04d} (id BIGINT PRIMARY KEY, label TEXT NOT NULL, "
            f"created_at TIMESTAMPTZ NOT NULL DEFAULT now());\n"
            f"CREATE INDEX bench_{number:04d}_label ON bench_{number:04d} (label);\n"
        )
        whole.append(body)
        (layouts["cicd-db"] / f"{number:04d}_table_{number}.sql").write_text(body)
        (layouts["dbmate"] / f"{number:04d}_table_{number}.sql").write_text(
            f"-- migrate:up\n{body}\n-- migrate:down\n"
        )
        (layouts["yoyo"] / f"{number:04d}_table_{number}.sql").write_text(body)
    (layouts["psql"] / "all.sql").write_text("".join(whole))
    return layouts


@dataclass
class Rival:
    """A tool and its command line for one database; None for a floor run in-line."""

    name: str
    apply: Callable[[ConnectionSettings], list[str]] | None


def rivals(layouts: dict[str, Path], tools: Tools) -> list[Rival]:
    """cicd-db and the migration tools found, each applying its layout."""
    found = [
        Rival(
            "cicd-db",
            lambda db: [
                *(PYTHON, str(ROOT / "scripts" / "migrate.py")),
                *("--database-url", db.url(), "--migrations-dir", str(layouts["cicd-db"])),
            ],
        )
    ]
    if dbmate := tools["dbmate"]:
        found.append(
            Rival(
                "dbmate",
                lambda db: [
                    *(str(dbmate), "--url", db.url()),
                    *("--migrations-dir", str(layouts["dbmate"]), "--no-dump-schema", "up"),
                ],
            )
        )
    if yoyo := tools["yoyo"]:
        found.append(
            Rival(
                "yoyo",
                lambda db: [
                    *(str(yoyo), "apply", "--batch", "--no-config-file", "--database"),
                    db.url().replace("postgresql://", "postgresql+psycopg://").split("?")[0],
                    str(layouts["yoyo"]),
                ],
            )
        )
    return found


def measure(
    dbs: Databases, layouts: dict[str, Path], tools: Tools, rounds: int
) -> tuple[Table, dict[str, float]]:
    contenders = rivals(layouts, tools)
    contenders.append(
        Rival(
            PYTHON_FLOOR,
            lambda db: [PYTHON, "-c", _PYTHON_FLOOR, db.conninfo(), str(layouts["cicd-db"])],
        )
    )
    if psql := tools["psql"]:
        contenders.append(
            Rival(
                "psql -1 -f (floor)",
                lambda db: [
                    *(str(psql), "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1"),
                    *("-f", str(layouts["psql"] / "all.sql"), db.conninfo()),
                ],
            )
        )
    return versus(
        "Apply 100 migrations to an empty database (whole process, ms)",
        _rounds(dbs, contenders, rounds),
        "cicd-db",
        rounds,
    )


def measure_many(
    dbs: Databases, folder: Path, tools: Tools, rounds: int, count: int
) -> tuple[Table, dict[str, float]]:
    """`count` migrations, cicd-db beside dbmate only (yoyo and psql add nothing here):
    whether the runner's cost a file stays flat as the history grows."""
    layouts = generate(folder, count)
    contenders = [c for c in rivals(layouts, tools) if c.name in ("cicd-db", "dbmate")]
    return versus(
        f"Apply {count:,} migrations to an empty database (whole process, ms)",
        _rounds(dbs, contenders, rounds),
        "cicd-db",
        rounds,
    )


# The slower link's round trip added (bench.link), about a cloud database's from a runner
# in the same region.
LINK_RTT_MS = 1.0


def measure_over_a_link(
    dbs: Databases, layouts: dict[str, Path], tools: Tools, rounds: int
) -> tuple[Table, dict[str, float]]:
    """Apply 100 where round trips are dear: every tool through the same proxy, which
    holds each way's bytes half of LINK_RTT_MS. Not a bound: what a round trip a file
    more or less is worth, beside a tool that makes several a file."""
    contenders = [c for c in rivals(layouts, tools) if c.name in ("cicd-db", "dbmate")]
    contenders.append(
        Rival(
            PYTHON_FLOOR,
            lambda db: [PYTHON, "-c", _PYTHON_FLOOR, db.conninfo(), str(layouts["cicd-db"])],
        )
    )
    with delayed(dbs.admin.port or 5432, LINK_RTT_MS) as port:
        trip = _round_trip_ms(replace(dbs.admin, port=port))
        times = _rounds(dbs, contenders, rounds, port=port)
    table, figures = versus(
        f"Apply 100 migrations over a slower link, ~{trip:.1f} ms a round trip (whole process, ms)",
        times,
        "cicd-db",
        rounds,
    )
    table.notes.append(
        f"Every tool through one proxy (bench/link.py) that adds {LINK_RTT_MS:g} ms to each round "
        f"trip; a `SELECT 1` through it took {trip:.2f} ms (median of 50)."
    )
    return table, figures


def _round_trip_ms(settings: ConnectionSettings) -> float:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        return round_trip_us(conn, 50) / 1000


def _rounds(
    dbs: Databases, contenders: list[Rival], rounds: int, *, port: int | None = None
) -> dict[str, list[float]]:
    """Each contender's times, one fresh database a run, in a shuffled order each round;
    `port`: where each connects instead of the server's own (a proxy's)."""
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_number in range(rounds):
        order = contenders[:]
        random.Random(round_number).shuffle(order)
        for contender in order:
            db = dbs.fresh("apply")
            assert contender.apply is not None
            via = db if port is None else replace(db, port=port)
            times[contender.name].append(timed(contender.apply(via)))
            dbs.drop(db)
    return times


def versus(
    title: str, times: dict[str, list[float]], ours: str, rounds: int
) -> tuple[Table, dict[str, float]]:
    """Medians and extremes, one row a tool, and our time over each other's, paired
    (common.paired). The figures: each tool's median, and under "ours / theirs, paired"
    each paired ratio."""
    figures = {name: statistics.median(values) for name, values in times.items()}
    table = Table(title, ["tool", "median", "min", "max", "cicd-db / tool"])
    for name, values in times.items():
        ratio = paired(times[ours], values)
        figures[f"{ours} / {name}, paired"] = ratio
        table.rows.append(
            [
                name,
                f"{figures[name]:.0f}",
                f"{min(values):.0f}",
                f"{max(values):.0f}",
                f"{ratio:.2f}x",
            ]
        )
    table.notes.append(
        f"{rounds} rounds, tools interleaved in a shuffled order each round; the ratio is "
        "the median of the rounds' own ratios."
    )
    return table, figures
