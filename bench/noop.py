"""Case `noop`: a whole migration process when nothing is pending (100 applied), beside
a Python process that imports psycopg and runs one query: the floor of any Python tool."""

from __future__ import annotations

import random
from pathlib import Path

from cicd_db.settings import ConnectionSettings

from .apply import Rival, Tools, rivals, versus
from .common import PYTHON, Databases, Table, timed


def measure(
    dbs: Databases, layouts: dict[str, Path], tools: Tools, rounds: int
) -> tuple[Table, dict[str, float]]:
    contenders = rivals(layouts, tools)
    prepared: dict[str, ConnectionSettings] = {}
    for contender in contenders:
        db = dbs.fresh("noop")
        assert contender.apply is not None
        timed(contender.apply(db))
        prepared[contender.name] = db
    floor_db = dbs.fresh("floor")
    floor = (
        f"import psycopg\nwith psycopg.connect({floor_db.conninfo()!r}) as conn:\n"
        "    conn.execute('SELECT 1')\n"
    )
    contenders.append(Rival("python+psycopg (floor)", None))
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_number in range(rounds * 4):
        order = contenders[:]
        random.Random(round_number).shuffle(order)
        for contender in order:
            if contender.apply is None:
                times[contender.name].append(timed([PYTHON, "-c", floor]))
            else:
                times[contender.name].append(timed(contender.apply(prepared[contender.name])))
    return versus(
        "No-op: nothing pending, 100 applied (whole process, ms)", times, "cicd-db", rounds * 4
    )
