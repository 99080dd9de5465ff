"""The checkout the program runs from: its root, a short id per clone, stray state.

The Pulumi CLI runs this program in infra/ (Pulumi.yaml's `main`) whatever folder
`pulumi` was started from, so the program cannot see that folder. What it can see
is what a wrong folder leaves behind: `backend.url: file://.` is resolved against
the folder `pulumi` runs in, so `cd infra && pulumi stack init dev` writes a second
state folder, infra/.pulumi, with stacks the root's state knows nothing about.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Folders never searched for stray state: tools' caches, not where anyone runs pulumi.
SKIPPED = {".git", ".venv", ".cicd-db", "node_modules", "__pycache__"}
STATE_FOLDER = ".pulumi"


def repository_root(program_file: str) -> Path:
    """The folder holding Pulumi.yaml: infra/'s parent."""
    return Path(program_file).resolve().parent.parent


def clone_id(root: Path) -> str:
    """Eight hex digits of the checkout's absolute path: one per clone on a machine."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]


def stray_state(root: Path) -> list[Path]:
    """State folders of the file backend below the root (the root's own .pulumi is fine)."""
    found: list[Path] = []
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder)
        if STATE_FOLDER in subfolders and here != root:
            found.append(here / STATE_FOLDER)
        subfolders[:] = [
            name for name in subfolders if name not in SKIPPED and name != STATE_FOLDER
        ]
    return sorted(found)


def stacks_in(state: Path) -> list[str]:
    """Names of the stacks a file backend's folder holds."""
    stacks = state / "stacks"
    if not stacks.is_dir():
        return []
    names = {
        path.name.split(".json")[0]
        for path in stacks.rglob("*.json*")
        if path.is_file() and not path.name.endswith(".bak")
    }
    return sorted(names)


def stray_state_error(root: Path) -> str | None:
    """Why the program refuses to run, when `pulumi` once ran in a subfolder; else None."""
    for state in stray_state(root):
        stacks = stacks_in(state)
        if not stacks:
            continue
        folder = state.parent.relative_to(root)
        listed = ", ".join(stacks)
        return (
            f"{folder}/.pulumi holds Pulumi state (stacks: {listed}) because `pulumi` ran in "
            f"{folder}/, and `backend.url: file://.` is resolved against the folder pulumi runs "
            "in; this project's state lives in the repository root's .pulumi. Run pulumi from "
            f"the repository root only. To remove the stray state: cd {folder} && pulumi "
            "destroy -s STACK && pulumi stack rm STACK (for each stack above), then delete "
            f"{folder}/.pulumi"
        )
    return None
