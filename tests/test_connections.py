"""Connections by libpq's rules: what the user gave, and nothing the runner made up.

libpq's environment (PGHOST, PGPORT, a service file) fills in what a URL leaves out,
exactly as for psql, the oracle here; multi-host URLs keep every host; the URL's
`options` reach the session. And whatever a URL looks like, no part of its password
is ever printed (a property test over random passwords and malformed URLs).
"""

from __future__ import annotations

import os
import string
import subprocess
from dataclasses import replace
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from cicd_db import settings as contract
from cicd_db.embedded import wheel_bin_dir

from .conftest import Database, run_cli, write_migrations


def psql_and_cicd_db(url: str, env: dict[str, str], folder: Path) -> tuple[int, int, str]:
    """Exit codes of psql and of `cicd-db migrate up` on `url` with `env`, and cicd-db's stderr."""
    oracle = subprocess.run(
        [str(wheel_bin_dir() / "psql"), url, "-Atc", "SELECT 1"],
        capture_output=True,
        env={**os.environ, **env},
        timeout=60,
    )
    result = run_cli("migrate", "--database-url", url, "--migrations-dir", str(folder), env=env)
    return oracle.returncode, result.code, result.err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_migrations(tmp_path / "db", {"0001_a.sql": "CREATE TABLE a (i int);\n"})


def test_pghost_and_pgport_fill_in_what_the_url_leaves_out(
    database: Database, folder: Path
) -> None:
    s = database.settings
    env = {"PGHOST": s.host, "PGPORT": str(s.port), "PGPASSWORD": s.password}
    url = f"postgresql://{s.user}@/{s.database}"  # no host, no port: libpq's environment
    assert psql_and_cicd_db(url, env, folder)[:2] == (0, 0)
    assert database.history() == [1]


def test_pgport_is_not_overridden_by_a_default(database: Database, folder: Path) -> None:
    s = database.settings
    url = f"postgresql://{s.user}@{s.host}/{s.database}"
    env = {"PGPORT": str(s.port), "PGPASSWORD": s.password}
    assert psql_and_cicd_db(url, env, folder)[:2] == (0, 0)


def test_a_service_file_is_honoured(database: Database, folder: Path, tmp_path: Path) -> None:
    s = database.settings
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[ci]\nhost={s.host}\nport={s.port}\ndbname={s.database}\nuser={s.user}\n"
        f"password={s.password}\n"
    )
    env = {"PGSERVICEFILE": str(services)}
    for url, extra in [("postgresql://?service=ci", {}), ("postgresql://", {"PGSERVICE": "ci"})]:
        oracle, code, err = psql_and_cicd_db(url, {**env, **extra}, folder)
        assert (oracle, code, err) == (0, 0, "")
    assert database.history() == [1]


def test_a_multi_host_url_takes_the_host_that_answers(database: Database, folder: Path) -> None:
    """The first host is down; the lock's second connection lands on the same server."""
    s = database.settings
    url = f"postgresql://{s.user}:{s.password}@127.0.0.1:1,{s.host}:{s.port}/{s.database}"
    assert psql_and_cicd_db(url, {}, folder)[:2] == (0, 0)
    assert database.history() == [1]


def test_the_urls_options_reach_the_migrations(database: Database, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path,
        {
            "0001_seen.sql": "CREATE TABLE seen AS SELECT "
            "current_setting('statement_timeout') AS timeout, "
            "current_setting('client_connection_check_interval') AS interval;\n"
        },
    )
    url = replace(
        database.settings,
        parameters=(
            ("options", "-c statement_timeout=4321 -c client_connection_check_interval=0"),
        ),
    ).url()
    result = run_cli("migrate", "--database-url", url, "--migrations-dir", str(folder))
    assert (result.code, result.err) == (0, "")
    # The user's options arrive, and win over the runner's own.
    assert database.query("SELECT timeout, interval FROM seen") == [("4321ms", "0")]


# -- no part of a password is ever printed ---------------------------------------------

# Printable ASCII but the characters a run of 4 could share with the rest of the message
# by chance is no concern: a random password of 12+ characters drawn from these.
PASSWORD_CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " é€"
MALFORMATIONS = [
    "postgresql://ci:{pw}@127.0.0.1:1/db",  # well-formed, the server refuses
    "postgresql://ci:{pw}@127.0.0.1:notaport/db",
    "postgresql://ci:{pw}@/db",
    "postgresql://ci:{pw}@127.0.0.1:1/db?bogus=1",
    "postgresql://ci:{pw}@127.0.0.1:1/db?sslmode=wrong",
    "postgresql://ci:{pw}127.0.0.1:1/db",  # the @ forgotten
    "postgresql:/ci:{pw}@127.0.0.1:1/db",
    "postgres://ci:{pw}@127.0.0.1:1",
    "ci:{pw}@127.0.0.1:1/db",
    "postgresql://ci@127.0.0.1:1/db?sslpassword={pw}&bogus=1",
    "postgresql://ci@127.0.0.1:1/db?password={pw}",
    "postgresql://ci:{pw}@127.0.0.1:1/db?connect_timeout=abc",
    "postgresql://ci:{pw}@127.0.0.1:1/db?target_session_attrs=bogus",
    "postgresql://ci:{pw}@[::1:1/db",
    "  postgresql://ci:{pw}@127.0.0.1:1/db#frag  ",
    "{pw}",
]


def runs_of_four(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(len(text) - 3)]


def shifted(password: str) -> str:
    """`password` with every letter and digit moved one on: the same URL shape, other text."""
    table = str.maketrans(
        string.ascii_lowercase + string.ascii_uppercase + string.digits,
        string.ascii_lowercase[1:]
        + "a"
        + string.ascii_uppercase[1:]
        + "A"
        + string.digits[1:]
        + "0",
    )
    return password.translate(table)


def printed(url: str) -> str:
    """Everything the commands and the stack check print about `url`."""
    shown: list[str] = []
    for args in (
        ["migrate", "--database-url", url, "status"],
        ["schema", "diff", "--database-url", "postgresql://ci@127.0.0.1:1/db", "--against", url],
    ):
        result = run_cli(*args)
        assert result.code in (1, 2), result
        assert "Traceback" not in result.err
        assert len(result.err.splitlines()) == 1, result.err
        shown.append(result.out + result.err)
    try:
        contract.check_cloud_url(url, what="cicd-db:databaseUrl")
    except contract.ConfigError as refused:
        shown.append(str(refused))
    return "\n".join(shown)


@hypothesis.settings(max_examples=150)
@hypothesis.given(
    password=st.text(alphabet=PASSWORD_CHARACTERS, min_size=12, max_size=24),
    form=st.sampled_from(MALFORMATIONS),
)
def test_no_run_of_four_password_characters_is_ever_printed(password: str, form: str) -> None:
    """A run counts as leaked when it is printed for this password and not for the same
    password with its letters and digits moved on (so "erro" of "error:" is no leak)."""
    # Without its @, a URL whose password holds an @ is a well-formed URL of another host
    # and password: nothing can tell which part was meant as the password.
    hypothesis.assume(not ("{pw}127" in form and "@" in password))
    text = printed(form.replace("{pw}", password))
    other = printed(form.replace("{pw}", shifted(password)))
    leaked = [run for run in runs_of_four(password) if run in text and run not in other]
    assert not leaked, (leaked, text)
