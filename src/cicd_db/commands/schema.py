"""`schema dump` and `schema diff`: the live schema, dumped or compared with what the
files make."""

from __future__ import annotations

import re
from pathlib import Path

from cicd_db import console, migrations, outputs, targets
from cicd_db.commands.context import Context, write_answer
from cicd_db.errors import (
    EXIT_DRIFT,
    UsageError,
)
from cicd_db.redaction import password_candidates


def schema_dump(ctx: Context, *, output: Path | None = None) -> int:
    """`schema dump`: the target's schema, or (no target) the one the files make."""
    from cicd_db import schema

    target = ctx.named_target()
    if target is None:
        text = migrations.scratch_dump(migrations.discover(ctx.folder()))
    else:
        text = schema.dump(ctx.remember(target).settings.for_migrations())
    if not output or str(output) == "-":  # `-o -`: the standard output, as most tools take it
        if ctx.json:
            ctx.show({"schema": text}, list)
        else:
            outputs.print_document(text)
        return 0
    write_answer(output, text)
    ctx.show({"output": str(output)}, lambda: [f"schema written to {output}"])
    return 0


def schema_diff(ctx: Context, *, against: str | None = None) -> int:
    """`schema diff`: drift against the applied files, or against another database."""
    from cicd_db import schema

    if against is not None and not against.strip():
        raise UsageError(
            "{against} is empty; name a stack or a postgresql:// URL, or leave it out to "
            "compare with the files",
            arguments=["against"],
        )
    stack_name = against is not None and re.fullmatch(r"[A-Za-z0-9_.-]+", against)
    if stack_name and against not in (known := targets.known_stacks(targets.repository_root())):
        # No stack of this checkout: perhaps a URL typed without its scheme, so a
        # password; never echoed (a stack's own name is, in the messages below).
        raise UsageError(
            "{against} names no stack here and is no URL (its value is not shown: it may "
            f"hold a password); give one of {', '.join(known)}, or a postgresql:// URL",
            arguments=["against"],
        )
    if against and not stack_name:  # a URL: what may be its password is never shown
        ctx.secrets += password_candidates(against)
    target = ctx.target()
    if against:
        ctx.remember(target)
        if not stack_name:  # not a stack's name: a URL
            # (a malformed one too: it is refused as a URL, its password masked)
            root = targets.repository_root()
            other = targets.Target("url", "--against", root, targets.state_home(root), against)
        else:
            other = targets.resolve(stack=against)
        other = ctx.remember(other)
        with (
            targets.connect(target.settings) as one,
            targets.connect(other.settings, named_by="against") as two,
        ):
            ours = schema.current_schema(one)
            # Across majors, as the older server holds it (PostgreSQL 15 against 18, say).
            major = min(one.info.server_version, two.info.server_version) // 10000
            expected = schema.signature(
                two, schema.current_schema(two), as_schema=ours, as_major=major
            )
            actual = schema.signature(one, ours, as_major=major)
            found = schema.compare(expected, actual)
        against = other.description
    else:
        with ctx.runner(target, writes=False) as runner:
            newest, found = runner.drift()
        against = f"migrations up to version {newest}"
    ctx.show(
        console.diff_json(target.description, against, found),
        lambda: console.diff_lines(target.description, against, found),
    )
    return EXIT_DRIFT if found else 0
