"""The files and the history compared: each version's state for `status`, and the files
`up` applies, refused where the two disagree (a file edited, renamed, missing, or
pending below the newest applied)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cicd_db.errors import MigrationRefused
from cicd_db.migrations.files import Migration
from cicd_db.migrations.history import Applied


@dataclass(frozen=True)
class StatusRow:
    version: int
    name: str
    state: str  # applied | pending | edited | renamed | missing | out-of-order
    applied_at: datetime | None

    @property
    def disagrees(self) -> bool:
        """The file and the history disagree: edited, renamed, missing or out of order."""
        return self.state not in ("applied", "pending")


def status(files: list[Migration], applied: list[Applied]) -> list[StatusRow]:
    """Every version known to the files or the history, with its state."""
    by_version = {row.version: row for row in applied}
    newest = max(by_version, default=0)
    rows = []
    for migration in files:
        row = by_version.pop(migration.version, None)
        if row is None:
            state = "out-of-order" if migration.version < newest else "pending"
            rows.append(StatusRow(migration.version, migration.name, state, None))
        else:
            # In the order pending() refuses them: what `up` refuses, status calls a disagreement.
            state = (
                "renamed"
                if row.name != migration.name
                else "edited"
                if not migration.matches(row.checksum)
                else "applied"
            )
            rows.append(StatusRow(migration.version, migration.name, state, row.applied_at))
    rows.extend(
        StatusRow(row.version, row.name, "missing", row.applied_at) for row in by_version.values()
    )
    return sorted(rows, key=lambda row: row.version)


def pending(files: list[Migration], applied: list[Applied], target: int | None) -> list[Migration]:
    """The files to apply, in order, up to `target`, each planned; refuses when the files
    and the history disagree (a file edited, renamed or missing, or pending below the
    newest), and when one of them holds a statement it may not (ConfigError)."""
    by_version = {migration.version: migration for migration in files}
    for row in applied:
        migration = by_version.get(row.version)
        if migration is None:
            raise MigrationRefused(
                f"migration {row.version} ({row.name}) was applied but no file has that "
                "version; restore it from version control (applied migrations are never "
                "deleted)"
            )
        if migration.name != row.name:
            raise MigrationRefused(
                f"migration {row.version} was applied as {row.name!r}, but the file with "
                f"that version is now {migration.filename}: the files were renumbered or "
                "replaced since; restore the applied files, or rebuild the history "
                "(db/README.md, 'When the files were rewritten')"
            )
        if migration.matches(row.checksum):
            continue
        if migration.converted_from(row.checksum):
            raise MigrationRefused(
                f"migration {migration.filename} was applied with other line ends (LF or "
                "CRLF), and converting them changes what a statement says (a string, a "
                "function's body or COPY data over several lines): a new database would not "
                "get what this one has; check it out with the line ends it was applied with "
                "(`*.sql text eol=lf` in .gitattributes)"
            )
        raise MigrationRefused(
            f"migration {migration.filename} was edited after it was applied; "
            "restore the applied version from version control and put the change "
            "in a new migration"
        )
    done = {row.version for row in applied}
    newest = max(done, default=0)
    left = [m for m in files if m.version not in done]
    for migration in left:
        if migration.version < newest:
            raise MigrationRefused(
                f"migration {migration.filename} is pending but version {newest} is "
                f"already applied; renumber it above {newest}"
            )
    if target is not None:
        left = [m for m in left if m.version <= target]
    for migration in left:
        migration.steps  # noqa: B018 - planned now: a bad file is refused before any runs
    return left
