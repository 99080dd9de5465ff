"""What every command shares: the Context (the target, the migrations folder, how it
prints, the secrets to keep out of what it prints), the keyword defaults read from a
signature, and answers printed or written whole."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cicd_db import console, migrations, outputs, targets
from cicd_db.errors import ConfigError, OperationalError
from cicd_db.redaction import password_candidates
from cicd_db.settings import ConnectionSettings


class Context:
    """What every command shares. `Context()` is what the CLI uses when no flag is given:
    the target from DATABASE_URL or the prod stack, the repository's db/migrations.

    A plain class, not a dataclass: the CLI builds its classes at every start, and a
    dataclass takes a millisecond to make. Its fields are its keyword arguments.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        stack: str | None = None,
        local: bool = False,
        migrations_dir: Path | None = None,
        lock_timeout: float = migrations.DEFAULT_LOCK_TIMEOUT,
        json: bool = False,
        quiet: bool = False,
        verbose: bool = False,
    ):
        self.database_url = database_url
        self.stack = stack
        self.local = local
        # A Python caller's str is a path too (it failed as "no attribute 'iterdir'").
        self.migrations_dir = Path(migrations_dir) if migrations_dir is not None else None
        self.lock_timeout = lock_timeout
        self.json = json
        self.quiet = quiet
        self.verbose = verbose
        # Grows as the command reads settings; whoever prints an error redacts with it.
        # Even a URL too broken to parse must not show its password in an error.
        self.secrets = [
            *password_candidates(database_url),
            *password_candidates(os.environ.get("DATABASE_URL")),
            os.environ.get("PGPASSWORD", ""),  # libpq's, for a URL without a password
        ]

    def __repr__(self) -> str:
        given = (
            f"{name}={getattr(self, name)!r}"
            for name, default in FIELDS.items()
            if getattr(self, name) != default
        )
        return f"Context({', '.join(given)})"

    def target(self) -> targets.Target:
        """The target the context names; its settings are read on first use."""
        return targets.resolve(database_url=self.database_url, stack=self.stack, local=self.local)

    def named_target(self) -> targets.Target | None:
        """The target, only when one is named: an argument, or DATABASE_URL."""
        named = (
            self.database_url
            or self.stack
            or self.local
            or os.environ.get("DATABASE_URL", "").strip()
        )
        return self.target() if named else None

    def remember(self, target: targets.Target) -> targets.Target:
        """Read the target's settings, and keep their secrets out of every message."""
        self.secrets += target.settings.secrets() + target.settings.for_migrations().secrets()
        return target

    def folder(self) -> Path:
        return self.migrations_dir or targets.repository_root() / targets.MIGRATIONS_FOLDER

    @contextmanager
    def runner(
        self,
        target: targets.Target,
        *,
        writes: bool,
        yes: bool = False,
        action: str = "apply migrations to it",
        retries: int = migrations.DEFAULT_RETRIES,
        retry_budget: float = migrations.DEFAULT_RETRY_BUDGET,
    ) -> Iterator[migrations.Runner]:
        with migrations.open_runner(
            target,
            folder=self.folder(),
            writes=writes,
            yes=yes,
            action=action,
            lock_timeout=self.lock_timeout,
            retries=retries,
            retry_budget=retry_budget,
        ) as runner:
            self.remember(target)
            yield runner

    def say(self, *lines: str) -> None:
        if lines and not self.quiet:
            console.print_lines(*lines)

    def show(
        self, value: console.JSON, lines: Callable[[], list[str]], *, answer: bool = False
    ) -> None:
        """Print `value` as JSON with `json`, else the lines: `quiet` silences them
        unless they are the `answer` the command was asked for (a path, a URL)."""
        if self.json:
            outputs.write_out(json.dumps(value, indent=2, default=str) + "\n")
        elif answer or not self.quiet:
            console.print_lines(*lines())


def keyword_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """`func`'s keyword-only arguments and their defaults, from its signature (which a
    wrapper that sets __signature__, as mutation testing's do, keeps)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(func).parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY and parameter.default is not parameter.empty
    }


# Each field of a Context and its default.
FIELDS: dict[str, Any] = keyword_defaults(Context.__init__)


def embedded_settings(ctx: Context) -> ConnectionSettings:
    """The running embedded server's settings (started if need be), its secrets remembered."""
    settings = targets.resolve(stack=targets.EMBEDDED).embedded_server().settings()
    ctx.secrets += settings.secrets()
    return settings


def print_answer(text: str, shown: str) -> None:
    """A table for the terminal, in its encoding (cli.standard_output escapes what it
    lacks); any other format is a document, as UTF-8 (outputs.print_document)."""
    if shown == "table":
        outputs.write_out(text)
    else:
        outputs.print_document(text)


def _is_a_standard_stream(path: Path) -> bool:
    """`path` is this process's standard output or error (`/dev/stdout`, `/dev/fd/2`)."""
    try:
        found = os.stat(path)
    except OSError:
        return False
    for fd in (1, 2):
        try:
            stream = os.fstat(fd)
        except OSError:
            continue
        if (stream.st_dev, stream.st_ino) == (found.st_dev, found.st_ino):
            return True
    return False


def write_answer(path: Path, text: str) -> None:
    """`text` into the file `path`, whole or not at all (outputs.write_file)."""
    try:
        outputs.write_file(path, text)
    except BrokenPipeError:
        if _is_a_standard_stream(path):  # `-o /dev/stderr` into a closed pipe: as `| head`
            raise
        # A FIFO (or a process substitution) whose reader left before the end.
        raise OperationalError(
            f"cannot write {path}: its reader left before the end (broken pipe), so what it "
            "read is cut short; run again with a reader that reads it all"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; pick another path") from None
