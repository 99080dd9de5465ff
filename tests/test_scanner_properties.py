"""One scanner truth, tried on random text: every check covers every statement.

Files are built from fragments whose extent the generator knows under the reading
of '...' strings in force where they stand (standard_conforming_strings on or off,
changed by real SET and set_config statements): strings with and without E'',
backslashes, dollar quotes, line and nested block comments, the setting's name
inside strings, comments and identifiers, psql's colon forms that are SQL (casts,
`:=`, array slices, `json_object('k':v)`) and `:DBNAME` where psql leaves it alone.

- The runner's statements are the generator's, one for one.
- A transaction-control statement, a meta-command or a psql variable put anywhere
  is refused before anything runs, naming its line, whatever precedes it; a
  no-transaction file of several statements is refused whatever they mention.
- psql is the oracle where it is cheap: it runs each valid file with one result
  row per SELECT the runner found, and never fails on it.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cicd_db import migrations
from cicd_db.errors import ConfigError, MigrationFailed
from cicd_db.migrations.steps import one_by_one
from cicd_db.pgprocess import wheel_bin_dir

from .fix_db import Database
from .utils import examples

# Text inside strings and comments: what could fool a scanner.
TRICKS = [
    ";", "'", "''", '"', "$", "$$", "$a$", "--", "/*", "*/", "\\", "\\'", "\n", " ", "x",
    "COMMIT", "standard_conforming_strings", ":DBNAME", ":'v'", '\\connect db', "[1:2]", "::",
]  # fmt: skip
text = st.lists(st.sampled_from(TRICKS), max_size=6).map("".join)


@dataclass
class File:
    """A file being built: its statements (texts), and how '...' strings read now."""

    standard: bool = True
    statements: list[str] = field(default_factory=list)
    selects: int = 0  # statements that return one row


def plain_string(content: str, standard: bool) -> str:
    body = content.replace("'", "''")
    return f"'{body}'" if standard else "'" + body.replace("\\", "\\\\") + "'"


def escape_string(content: str) -> str:
    return "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dollar(content: str, tag: str) -> str:
    closing = f"${tag}$"
    return closing + content.replace(closing, "").replace("$", "") + closing


def block_comment(content: str) -> str:
    inner = content.replace("/*", "").replace("*/", "")
    return f"/* {inner} /* {inner} */ */"


def line_comment(content: str) -> str:
    return "-- " + content.replace("\n", " ").replace("\r", " ") + "\n"


COLON_FORMS = [
    "'1'::int",
    "$$2$$::text",
    "(ARRAY[1,2,3])[1:2]",
    "(ARRAY[1,2,3])[2:]",
    "(ARRAY[1,2,3])[:1]",
    "(SELECT a[lo:hi] FROM (SELECT ARRAY[1,2,3] AS a, 1 AS lo, 2 AS hi) AS s)",
    "(SELECT a[lo :hi] FROM (SELECT ARRAY[1,2,3] AS a, 1 AS lo, 2 AS hi) AS s)",
    "make_interval(days := 1)",
    "make_interval(days=>2)",
    '1 AS "standard_conforming_strings"',
    '2 AS ":DBNAME"',
]
JSON_FORMS = ["json_object('k' : 'v')", "(SELECT json_object('k':v) FROM (SELECT 1 AS v) AS s)"]


# The strategies a draw uses, made once: a strategy made anew in every draw is checked
# and analysed anew by Hypothesis each time, which was most of these tests' CPU.
KINDS = st.sampled_from(["plain", "escape", "dollar", "colon", "number"])
TAGS = st.sampled_from(["", "a", "x_1"])
COLONS = {True: st.sampled_from(COLON_FORMS + JSON_FORMS), False: st.sampled_from(COLON_FORMS)}
SEPARATORS = st.sampled_from([", ", ",\n", ", /**/ "]) | text.map(block_comment).map(
    lambda c: f", {c} "
)
TAILS = st.sampled_from(["", " ", "\n"]) | text.map(line_comment)
STATEMENT_KINDS = st.sampled_from(["select", "select", "select", "set", "set_config", "mention"])
SCOPES = st.sampled_from(["", "SESSION ", "LOCAL "])
MENTIONS = st.sampled_from(["string", "dollar", "comment"])
BETWEEN = st.sampled_from(["", "\n"]) | text.map(line_comment)


@st.composite
def expression(draw: st.DrawFn, standard: bool, json: bool) -> str:
    kind = draw(KINDS)
    if kind == "plain":
        return plain_string(draw(text), standard)
    if kind == "escape":
        return escape_string(draw(text))
    if kind == "dollar":
        return dollar(draw(text), draw(TAGS))
    if kind == "colon":
        return draw(COLONS[json])
    return str(draw(st.integers(0, 99)))


EXPRESSIONS = {
    (standard, json): st.lists(expression(standard, json), min_size=1, max_size=4)
    for standard in (True, False)
    for json in (True, False)
}


@functools.cache  # one strategy for each set of arguments, as above
@st.composite
def select(draw: st.DrawFn, standard: bool, json: bool = True) -> str:
    parts = draw(EXPRESSIONS[standard, json])
    separators = [draw(SEPARATORS) for _ in parts[1:]]
    body = parts[0] + "".join(s + p for s, p in zip(separators, parts[1:], strict=True))
    tail = draw(TAILS)
    return f"SELECT {body}{tail};"


@functools.cache
@st.composite
def valid_file(draw: st.DrawFn, json: bool = True) -> File:
    """Statements that apply on any server: SELECTs, and real changes of the reading."""
    built = File()
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(STATEMENT_KINDS)
        if kind == "set":
            value = draw(st.booleans())
            scope = draw(SCOPES)
            built.statements.append(
                f"SET {scope}standard_conforming_strings = {'on' if value else 'off'};"
            )
            built.standard = value
        elif kind == "set_config":
            value = draw(st.booleans())
            built.statements.append(
                "SELECT set_config('standard_conforming_strings', "
                f"'{'on' if value else 'off'}', false);"
            )
            built.standard = value
            built.selects += 1
        elif kind == "mention":  # names the setting where it changes nothing
            where = draw(MENTIONS)
            mention = {
                "string": plain_string("standard_conforming_strings = off", built.standard),
                "dollar": "$$SET standard_conforming_strings = off$$",
                "comment": "1 /* SET standard_conforming_strings = off */",
            }[where]
            built.statements.append(f"SELECT {mention};")
            built.selects += 1
        else:
            built.statements.append(draw(select(built.standard, json)))
            built.selects += 1
    return built


def join(draw: st.DrawFn, statements: list[str]) -> str:
    """Statements one a line, with comments between some of them."""
    out = []
    for statement in statements:
        out.append(draw(BETWEEN))
        out.append(statement + "\n")
    return "".join(out)


def planned(data: bytes, *, transactional: bool = True) -> list[bytes]:
    planned_steps = migrations.plan("0001_x.sql", data, transactional=transactional)
    return [
        data[one.start : one.end]
        for step in planned_steps
        for one in one_by_one(data, step)
        if isinstance(one, migrations.Batch)
    ]


@pytest.mark.slow
@settings(max_examples=examples(300))
@given(st.data())
def test_the_runners_statements_are_the_files(data: st.DataObject) -> None:
    built = data.draw(valid_file())
    text_ = join(data.draw, built.statements)
    assert planned(text_.encode()) == [s.encode() for s in built.statements]


REFUSED = [
    ("COMMIT;", "COMMIT ends or starts a transaction"),
    ("BEGIN;", "BEGIN ends or starts a transaction"),
    ("end;", "END ends or starts a transaction"),
    ("ABORT;", "ABORT ends or starts a transaction"),
    ("ROLLBACK;", "ROLLBACK ends or starts a transaction"),
    ("START TRANSACTION;", "START TRANSACTION ends or starts a transaction"),
    ("PREPARE TRANSACTION 'x';", "PREPARE TRANSACTION ends or starts a transaction"),
    ("\\connect other", "psql meta-command \\connect is not SQL"),
    ("\\set ON_ERROR_STOP on", "psql meta-command \\set is not SQL"),
    ("SELECT :'DBNAME';", ":'DBNAME' is a psql variable"),
    ("SELECT current_database() = :DBNAME;", ":DBNAME is a psql variable"),
    ('CREATE SCHEMA :"schema";', ':"schema" is a psql variable'),
]


@pytest.mark.slow
@settings(max_examples=examples(300))
@given(st.data(), st.sampled_from(REFUSED))
def test_what_may_not_run_is_refused_wherever_it_stands(
    data: st.DataObject, refused: tuple[str, str]
) -> None:
    before = data.draw(valid_file())
    statement, what = refused
    after = data.draw(valid_file())
    text_ = join(data.draw, [*before.statements, statement, *after.statements])
    line = text_[: text_.index("\n" + statement) + 1].count("\n") + 1
    with pytest.raises(ConfigError) as refusal:
        migrations.plan("0001_x.sql", text_.encode(), transactional=True)
    assert str(refusal.value).startswith(f"migration file 0001_x.sql, line {line}: {what}")


@settings(max_examples=examples(200))
@given(st.data(), st.integers(2, 4))
def test_a_no_transaction_file_of_several_statements_is_refused(
    data: st.DataObject, count: int
) -> None:
    statements = [
        data.draw(st.sampled_from(["SELECT 'standard_conforming_strings';", "SELECT 1;"]))
        if data.draw(st.booleans())
        else data.draw(select(True))
        for _ in range(count)
    ]
    text_ = "-- cicd-db: no-transaction\n" + join(data.draw, statements)
    with pytest.raises(ConfigError) as refusal:
        migrations.plan("0001_x.sql", text_.encode(), transactional=False)
    assert f"holds {count} statements besides SET and RESET" in str(refusal.value)


def psql(database: Database, path: Path, *options: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            # -1: a transactional file runs in one transaction, where SET LOCAL counts.
            *(str(wheel_bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-0", "-1"),
            *("-v", "ON_ERROR_STOP=1", "-f", str(path), "-d", database.settings.conninfo()),
            *options,
        ],
        capture_output=True,
        env={**os.environ, "PGPASSWORD": database.settings.password, "PGOPTIONS": ""},
        timeout=30,
        check=False,
    )


@pytest.mark.db
def test_psql_runs_each_statement_the_runner_finds(database: Database, tmp_path: Path) -> None:
    """psql as the oracle: one result row per SELECT the runner found, and no error
    (a colon form psql took for a variable, or a wrong split, would fail there)."""
    [(version,)] = database.query("SELECT current_setting('server_version_num')::int")
    path = tmp_path / "0001_x.sql"

    @settings(max_examples=examples(25))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        built = data.draw(valid_file(json=int(str(version)) >= 160000))
        path.write_text(join(data.draw, built.statements))
        statements = planned(path.read_bytes())
        selects = sum(1 for s in statements if re.match(rb"\s*SELECT", s))
        completed = psql(database, path)
        assert completed.returncode == 0, completed.stderr.decode()
        assert (selects, completed.stdout.count(b"\0")) == (built.selects, built.selects)

    check()


# Text that leaves the lexer somewhere other than between statements, or nearly so:
# psql sends whatever its buffer holds at the file's end, and PostgreSQL decides.
ENDINGS = [
    "/* never closed",
    "/* nested /* closed */ but not the outer",
    "/* closed */",
    "/**/",
    "-- a comment",
    "SELECT 1",
    "SELECT 1 /* never closed",
    "SELECT 'never closed",
    "SELECT $$ never closed",
    'SELECT "never closed',
    "SELECT (1",
    "*/",
    ";",
    "\n",
]


@pytest.mark.db
def test_what_psql_refuses_at_a_files_end_the_runner_refuses(
    database: Database, tmp_path: Path
) -> None:
    """psql as the oracle for text the lexer is still inside when the file ends (a comment,
    a string, a parenthesis never closed) or that ends without a semicolon, put at the
    end or anywhere between statements: the runner applies the file exactly when
    `psql -1` does, and records nothing when it refuses."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    path = folder / "0001_x.sql"

    @settings(max_examples=examples(60))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        built = data.draw(valid_file())
        ending = data.draw(st.sampled_from(ENDINGS))
        # At the end, or before some statement: then whatever follows is read in it.
        where = data.draw(st.integers(0, len(built.statements)))
        before, after = built.statements[:where], built.statements[where:]
        gap = data.draw(st.sampled_from(["", " ", "\n"]))
        path.write_text(join(data.draw, before) + ending + gap + join(data.draw, after))
        psql_applied = psql(database, path).returncode == 0
        try:
            with database.connect() as conn:
                migrations.Runner(conn, migrations.discover(folder)).apply()
        except ConfigError as refusal:
            runner_applied = False
            if psql_applied and "is a psql variable" in str(refusal):
                # The ending moved where a quote or comment ends, and a `:DBNAME` the
                # generator put inside one now stands outside: psql sent the database's
                # name in its place (its echo of what it sent shows it), which the runner
                # refuses to guess. Then psql is no oracle for whether the file applies.
                sent = psql(database, path, "-v", "ECHO=queries").stdout.decode()
                assert database.settings.database in sent, sent
                psql_applied = False
            if psql_applied and "psql meta-command" in str(refusal):
                # Likewise a `\connect` the generator put inside a string, now outside:
                # psql tried it, and, its argument an unterminated quote, went on as if
                # nothing happened (exit 0); the runner refuses every meta-command psql
                # acts on (docs/migrations.md, "Not psql"). Only so: a string the runner
                # misread as a meta-command must still fail here.
                said = psql(database, path, "-v", "ON_ERROR_STOP=0").stderr.decode()
                assert "error: unterminated quoted string" in said, said
                psql_applied = False
        except MigrationFailed:
            runner_applied = False
        else:
            runner_applied = True
        history = database.history()
        database.execute("DROP SCHEMA IF EXISTS cicd_db CASCADE")
        assert (runner_applied, history) == (psql_applied, [1] if psql_applied else [])

    check()


@pytest.mark.db
def test_a_variable_an_unclosed_quote_puts_outside_is_refused_where_psql_substitutes_it(
    database: Database, tmp_path: Path
) -> None:
    """The case the property above found: a dollar quote left open closes inside the next
    statement's comment, so `:DBNAME` stands outside any quote. psql sends the database's
    name in its place and the file applies; the runner refuses it before anything runs."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    path = folder / "0001_x.sql"
    path.write_text("SELECT $$ never closed\nSELECT ''-- $$:DBNAME\n;\n")
    completed = psql(database, path, "-v", "ECHO=queries")
    assert completed.returncode == 0, completed.stderr.decode()
    assert f"$${database.settings.database}" in completed.stdout.decode()
    with database.connect() as conn, pytest.raises(ConfigError) as refusal:
        migrations.Runner(conn, migrations.discover(folder)).apply()
    assert str(refusal.value).startswith(
        "migration file 0001_x.sql, line 2: :DBNAME is a psql variable"
    )
    assert database.history() == []
