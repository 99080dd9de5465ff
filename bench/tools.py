"""The rivals, found or installed under .cicd-db/bench/tools/: dbmate from npm,
yoyo-migrations from PyPI, psql from the embedded wheel or PATH. Each finder returns
the executable and its version, or None and why it is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cicd_db.pgprocess import wheel_bin_dir

from .common import HOME, PYTHON

TOOLS = HOME / "tools"


def find_dbmate() -> tuple[Path | None, str]:
    executable = TOOLS / "node_modules" / ".bin" / "dbmate"
    if not executable.exists():
        if shutil.which("npm") is None:
            return None, "npm is not installed"
        TOOLS.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS), "dbmate@2"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0 or not executable.exists():
            return None, f"npm install dbmate failed: {done.stderr.strip()[-200:]}"
    return executable, _output(executable, "--version")


def find_yoyo() -> tuple[Path | None, str]:
    venv = TOOLS / "yoyo-venv"
    executable = venv / "bin" / "yoyo"
    pip = venv / "bin" / "pip"
    if not executable.exists():
        made = subprocess.run(
            [PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        done = (
            subprocess.run(
                [str(pip), "install", "--quiet", "yoyo-migrations", "psycopg[binary]"],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if made.returncode == 0
            else made
        )
        if done.returncode != 0 or not executable.exists():
            return None, f"pip install yoyo-migrations failed: {done.stderr.strip()[-200:]}"
    shown = _output(pip, "show", "yoyo-migrations")
    return executable, next(
        (line.split()[-1] for line in shown.splitlines() if line.startswith("Version")), "?"
    )


def find_psql() -> tuple[Path | None, str]:
    for candidate in (wheel_bin_dir() / "psql", Path(shutil.which("psql") or "/nonexistent")):
        if candidate.exists():
            return candidate, _output(candidate, "--version")
    return None, "no psql in the embedded wheel or on PATH"


FINDERS = {"dbmate": find_dbmate, "yoyo": find_yoyo, "psql": find_psql}


def _output(executable: Path, *arguments: str) -> str:
    done = subprocess.run(
        [str(executable), *arguments], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()
