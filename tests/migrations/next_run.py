"""What the tests of the next run share: a database owned by a login role of its own,
migrations that leave something behind, and the one line a refused run prints."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..fix_cli import Run
from ..fix_db import Database

# 0002 says how often it ran: a counter that grows if it runs again.
COUNTED = (
    "CREATE TABLE IF NOT EXISTS ran (id int PRIMARY KEY, times int NOT NULL);\n"
    "INSERT INTO ran VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET times = ran.times + 1;\n"
)
NO_TRANSACTION = "-- cicd-db: no-transaction\n"
PASSWORD = "next-run-pw"
# The tests' own sessions, past whatever a migration left on the database or role.
PAST_IT = (
    "-c statement_timeout=0 -c idle_session_timeout=0 -c idle_in_transaction_session_timeout=0 "
    "-c default_transaction_read_only=off -c search_path=public -c lock_timeout=0 "
    "-c client_encoding=UTF8"
)


@dataclass
class Login:
    """A database owned by a login role of its own (a superuser or not), so that a
    migration may change the role's settings without touching other tests."""

    database: Database  # as the role
    admin: Database  # as the server's superuser, past any setting left
    role: str


def past_settings(database: Database, version: int) -> Database:
    options = PAST_IT + (" -c transaction_timeout=0" if version >= 170000 else "")
    return Database(replace(database.settings, parameters=(("options", options),)))


def server_version(login: Login) -> int:
    return int(str(login.admin.query("SHOW server_version_num")[0][0]))


def leave(setting: str, scope: str) -> str:
    """A migration that leaves `setting` (`name = value`) on its database or its role."""
    target = {
        "database": "DATABASE %I",
        "role": "ROLE %I",
        "role in database": "ROLE %I IN DATABASE %I",
    }[scope]
    names = {
        "database": "current_database()",
        "role": "current_user",
        "role in database": "current_user, current_database()",
    }[scope]
    statement = f"ALTER {target} SET {setting}".replace("'", "''")
    return f"DO $$BEGIN EXECUTE format('{statement}', {names}); END$$;\n"


def one_line(result: Run) -> str:
    assert "Traceback" not in result.out + result.err, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result
    return lines[0]


def refusal(result: Run, code: int = 1) -> str:
    """The one line of a run that stopped with `code`."""
    assert result.code == code, result
    return one_line(result)


def ran_once(login: Login) -> None:
    assert login.admin.query("SELECT times FROM public.ran") == [(1,)]


def the_fix(message: str) -> str:
    """The statement a refusal tells to run, as it is written there."""
    found = re.search(r"undo it with (ALTER (?:DATABASE|ROLE) .*? RESET \w+)", message)
    assert found, message
    return found[1]
