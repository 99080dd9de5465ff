"""Per-module mutation score from mutmut's results in mutants/ (`make mutation`).

Usage: python scripts/mutation_report.py [MODULE ...] [--survivors]

MODULE as the report names it: store, migrations/history.

A mutant counts as killed when a test failed or timed out on it; "no tests" and
"survived" are both mutants no test noticed. Modules without results are left out.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

RESULTS = Path("mutants") / "src" / "cicd_db"
KILLED = {1, 3, 24, -24, 36, 152, 255}  # a test failed, pytest broke, or a timeout
STATUS = {0: "survived", 5: "no tests", 33: "no tests", None: "not checked"}


def main(argv: list[str]) -> int:
    show = "--survivors" in argv
    wanted = [arg for arg in argv if not arg.startswith("--")]
    if not RESULTS.is_dir():
        print("no results: run `make mutation` first", file=sys.stderr)
        return 1
    print(f"{'module':<24} {'killed':>7} {'total':>6} {'score':>6}  not killed")
    # rglob: the runner is a package (migrations/history.py is "migrations/history").
    for meta in sorted(RESULTS.rglob("*.py.meta")):
        module = meta.relative_to(RESULTS).as_posix().removesuffix(".py.meta")
        if wanted and module not in wanted:
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes or all(code is None for code in codes.values()):
            continue
        statuses = Counter(
            "killed" if code in KILLED else STATUS.get(code, "other") for code in codes.values()
        )
        killed, total = statuses.pop("killed", 0), len(codes)
        rest = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        print(f"{module:<24} {killed:>7} {total:>6} {killed / total:>6.1%}  {rest}")
        if show:
            for name, code in sorted(codes.items()):
                if code not in KILLED:
                    print(f"    {name}  ({STATUS.get(code, code)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
