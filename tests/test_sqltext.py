"""Reading migration files as psql does: where statements end, COPY data, meta-commands.

How a file applies is proven against psql itself in test_psql_parity.py; these
tables pin the scanner's answers, so a change to it shows here first.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cicd_db.sqltext import (
    CopyData,
    MetaCommand,
    Scanner,
    Statement,
    found_lowered,
    standard_strings_after,
    without_comments,
)
from cicd_db.sqltext.tokens import number, tokens


def split(text: str, *, standard_strings: bool = True) -> list[tuple[int, str]]:
    data = text.encode()
    return [
        (piece.line, piece.text(data))
        for piece in Scanner(data, standard_strings=standard_strings)
        if isinstance(piece, Statement)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1; SELECT 2;", [(1, "SELECT 1;"), (1, "SELECT 2;")]),
        ("-- head\n\nCREATE TABLE a (b int);\n", [(3, "CREATE TABLE a (b int);")]),
        ("SELECT ';' AS x;\nSELECT 2", [(1, "SELECT ';' AS x;"), (2, "SELECT 2")]),
        ("SELECT 'it''s; fine';", [(1, "SELECT 'it''s; fine';")]),
        ("SELECT E'a\\'; b';", [(1, "SELECT E'a\\'; b';")]),
        ("SELECT type='a\\'; SELECT 2;", [(1, "SELECT type='a\\';"), (1, "SELECT 2;")]),
        ('SELECT 1 AS "a;b";', [(1, 'SELECT 1 AS "a;b";')]),
        ('SELECT 1 AS "a"";b";', [(1, 'SELECT 1 AS "a"";b";')]),
        ("SELECT U&'d\\0061t;a';", [(1, "SELECT U&'d\\0061t;a';")]),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nSELECT f();",
            [
                (1, "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;"),
                (2, "SELECT f();"),
            ],
        ),
        ("DO $body$ BEGIN PERFORM 1; END $body$;", [(1, "DO $body$ BEGIN PERFORM 1; END $body$;")]),
        (
            "DO $a$ BEGIN EXECUTE $b$ SELECT ';' $b$; END $a$; SELECT 2;",
            [(1, "DO $a$ BEGIN EXECUTE $b$ SELECT ';' $b$; END $a$;"), (1, "SELECT 2;")],
        ),
        ("SELECT $1::int;", [(1, "SELECT $1::int;")]),
        (
            "CREATE TABLE do$llar$s (a$num$ numeric); SELECT 2;",
            [(1, "CREATE TABLE do$llar$s (a$num$ numeric);"), (1, "SELECT 2;")],
        ),
        ("/* a; /* nested; */ still; */ SELECT 1;", [(1, "SELECT 1;")]),
        ("SELECT 1 -- trailing; comment\n;", [(1, "SELECT 1 -- trailing; comment\n;")]),
        ("SELECT 1 /* it's; */ + 1;", [(1, "SELECT 1 /* it's; */ + 1;")]),
        ("-- only a comment; really\n/* and; this */\n", []),
        (";;\n;", []),
        ("SELECT 1;\r\nSELECT 2;\r\n", [(1, "SELECT 1;"), (2, "SELECT 2;")]),
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
            "INSERT INTO b VALUES (2)); SELECT 3;",
            [
                (
                    1,
                    "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
                    "INSERT INTO b VALUES (2));",
                ),
                (1, "SELECT 3;"),
            ],
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n"
            "  SELECT CASE WHEN true THEN 2 ELSE 3 END;\nEND;\nSELECT 4;",
            [
                (
                    1,
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n"
                    "  SELECT CASE WHEN true THEN 2 ELSE 3 END;\nEND;",
                ),
                (6, "SELECT 4;"),
            ],
        ),
        (
            "create or replace procedure p() begin atomic insert into t values (1); end; call p();",
            [
                (
                    1,
                    "create or replace procedure p() begin atomic insert into t values (1); end;",
                ),
                (1, "call p();"),
            ],
        ),
        # BEGIN and END count only in a function definition: elsewhere, as psql has it.
        ("SELECT 1 AS begin; SELECT 2;", [(1, "SELECT 1 AS begin;"), (1, "SELECT 2;")]),
    ],
    ids=[
        "two",
        "leading-comment",
        "string",
        "doubled-quote",
        "escape-string",
        "not-an-escape-string",
        "identifier",
        "identifier-doubled-quote",
        "unicode-string",
        "dollar-quote",
        "tagged-dollar-quote",
        "nested-dollar-tags",
        "parameter",
        "dollar-in-identifiers",
        "nested-block-comment",
        "line-comment-inside",
        "quote-in-block-comment",
        "comments-only",
        "empty-statements",
        "crlf",
        "rule-with-actions-in-parentheses",
        "begin-atomic-with-case",
        "procedure-begin-atomic",
        "begin-as-a-name",
    ],
)
def test_statements(text: str, expected: list[tuple[int, str]]) -> None:
    assert split(text) == expected


def test_standard_conforming_strings_off_reads_backslash_escapes() -> None:
    text = "SELECT 'a\\'; b'; SELECT 2;"
    assert split(text, standard_strings=False) == [(1, "SELECT 'a\\'; b';"), (1, "SELECT 2;")]
    assert split(text) == [(1, "SELECT 'a\\';"), (1, "b'; SELECT 2;")]


@pytest.mark.parametrize(
    ("statement", "current", "expected"),
    [
        ("SET standard_conforming_strings = off;", True, False),
        ("set standard_conforming_strings to 'on'", False, True),
        ("SET SESSION standard_conforming_strings TO false;", True, False),
        ("SET LOCAL standard_conforming_strings = 0;", True, False),
        ("SET standard_conforming_strings = DEFAULT;", False, True),
        ("RESET standard_conforming_strings;", False, True),
        ("RESET ALL;", False, True),
        ("SELECT set_config('standard_conforming_strings', 'off', false);", True, False),
        ("select pg_catalog.set_config('standard_conforming_strings','of','t')", True, False),
        ("SET standard_conforming_strings = 'Y';", False, True),
        ('SET "standard_conforming_strings" = o;', True, None),  # on or off: the server refuses
        ("SELECT set_config('standard_conforming_strings', x, false) FROM t;", True, None),
        ("DO $$ BEGIN SET standard_conforming_strings = off; END $$;", True, None),
        ("SET standard_conforming_strings = maybe;", True, None),
    ],
)
def test_standard_strings_after(statement: str, current: bool, expected: bool | None) -> None:
    assert standard_strings_after(statement.encode(), current) is expected


@pytest.mark.parametrize(
    "statement",
    [
        "SET LOCAL standard_conforming_strings = off;",
        "SELECT set_config('standard_conforming_strings', 'off', true);",
    ],
)
def test_a_local_change_outside_a_transaction_ends_with_its_statement(statement: str) -> None:
    assert standard_strings_after(statement.encode(), True, transactional=False) is True
    assert standard_strings_after(statement.encode(), True, transactional=True) is False


def test_copy_data_follows_its_statement() -> None:
    data = (
        b"CREATE TABLE t (a int, b text);\n"
        b"COPY t (a, b) FROM stdin;\n"
        b"1\tx;y\n"
        b"2\t'quote\n"
        b"\\.\n"
        b"SELECT 3;\n"
    )
    pieces = list(Scanner(data))
    kinds = [type(piece).__name__ for piece in pieces]
    assert kinds == ["Statement", "CopyFromStdin", "CopyData", "Statement"]
    copy = pieces[2]
    assert isinstance(copy, CopyData)
    assert (data[copy.start : copy.end], copy.line, copy.trailing) == (
        b"1\tx;y\n2\t'quote\n",
        3,
        False,
    )
    assert pieces[3].line == 6


def test_copy_data_without_end_marker_runs_to_the_end() -> None:
    pieces = list(Scanner(b"COPY t FROM STDIN;\n1\n2\n"))
    assert isinstance(pieces[1], CopyData)
    assert (pieces[1].start, pieces[1].end) == (19, 23)


def test_meta_commands() -> None:
    data = b"\\restrict abc\nSELECT 1;\nSELECT 2 \\gset\n\\unrestrict abc\n"
    pieces = [
        (type(p).__name__, p.line, getattr(p, "name", None), getattr(p, "inside_statement", None))
        for p in Scanner(data)
    ]
    assert pieces == [
        ("MetaCommand", 1, "restrict", False),
        ("Statement", 2, None, None),
        ("MetaCommand", 3, "gset", True),  # refused by the runner: it interrupts a statement
        ("MetaCommand", 4, "unrestrict", False),
    ]


def test_meta_command_inside_quotes_is_text() -> None:
    assert split("SELECT '\\x';") == [(1, "SELECT '\\x';")]
    assert not any(isinstance(p, MetaCommand) for p in Scanner(b"SELECT $$\\x$$;"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 'unterminated; SELECT 2;", [(1, "SELECT 'unterminated; SELECT 2;")]),
        ("SELECT $$ never closed; SELECT 2;", [(1, "SELECT $$ never closed; SELECT 2;")]),
        ('SELECT "never closed; SELECT 2;', [(1, 'SELECT "never closed; SELECT 2;')]),
        ("/* never closed; SELECT 1;", [(1, "/* never closed; SELECT 1;")]),
        ("SELECT 1; /* never closed", [(1, "SELECT 1;"), (1, "/* never closed")]),
        ("SELECT (1; SELECT 2;", [(1, "SELECT (1; SELECT 2;")]),
    ],
    ids=[
        "unterminated-string",
        "unterminated-dollar",
        "unterminated-identifier",
        "unterminated-comment",
        "unterminated-comment-after-a-statement",
        "unclosed-parenthesis",
    ],
)
def test_statements_bad(text: str, expected: list[tuple[int, str]]) -> None:
    """Broken text runs to the end, as psql sends it; PostgreSQL then reports the error."""
    assert split(text) == expected


def test_hostile_bytes_always_end_and_cover_the_input() -> None:
    """Random fragments of SQL syntax: the scanner ends, and its pieces stay in order."""
    alphabet = [
        "'", '"', "$$", "$a$", "E'", "\\", ";", "(", ")", "--", "/*", "*/", "\n", "\r\n",
        "BEGIN", "END", "CASE", "CREATE FUNCTION", "COPY t FROM STDIN", "\\.", "x", " ",
        "\xe9", "U&'", "$1",
    ]  # fmt: skip
    generator = random.Random(1234)
    for _ in range(2000):
        data = "".join(generator.choices(alphabet, k=generator.randint(0, 40))).encode()
        last_end = 0
        for piece in Scanner(data):
            assert last_end <= piece.start <= piece.end <= len(data)
            last_end = piece.end


@pytest.mark.parametrize(
    ("text", "standard_strings", "expected"),
    [
        ("a -- one\nb /* two /* nested */ still */ c", True, "a  \nb   c"),
        (
            "'-- kept' \"/* kept */\" $q$ -- kept $q$ d",
            True,
            "'-- kept' \"/* kept */\" $q$ -- kept $q$ d",
        ),
        ("E'it\\'s -- kept' -- gone", True, "E'it\\'s -- kept'  "),
        ("'it\\'s -- kept' -- gone", False, "'it\\'s -- kept'  "),
        ("a /* never closed", True, "a  "),
        ("a 'never closed -- kept", True, "a 'never closed -- kept"),
    ],
    ids=[
        "line-and-nested-block",
        "quotes-kept",
        "escape-string",
        "strings-off",
        "open-block",
        "open-quote",
    ],
)
def test_without_comments(text: str, standard_strings: bool, expected: str) -> None:
    assert without_comments(text.encode(), standard_strings=standard_strings) == expected.encode()


NAMES = (b"standard_conforming_strings", b"client_encoding", b"backslash_quote", b"names")


@given(
    st.lists(
        st.sampled_from([*NAMES, b"NAMES", b"Client_Encoding", b"x", b" ", b"name", b"_"]),
        max_size=30,
    ).map(b"".join),
    st.integers(1, 64),
)
def test_which_names_a_text_mentions_whatever_its_slices(data: bytes, slice_bytes: int) -> None:
    """Read in slices that overlap: a name that spans two slices is still found."""
    # Half as texts, half as patterns: both kinds are read the same way.
    patterns = {
        name.decode(): re.compile(re.escape(name)) if i % 2 else name
        for i, name in enumerate(NAMES)
    }
    expected = {name.decode() for name in NAMES if name in data.lower()}
    assert found_lowered(data, patterns, slice_bytes=slice_bytes) == expected


def test_an_escape_string_before_a_long_dashed_comment_does_not_stop_the_reading() -> None:
    """After an E'' string, the runner looks for a continuation on the next line; a
    banner comment of dashes after the string (`E'\\t' -- -----...`) followed by
    anything but a quote must not be tried as every split into `--` comments (found in review:
    seconds at 36 dashes, years at 80). Read in a process of its own, so that a reading
    that never ends fails the test instead of stopping the suite: a minute for 2,000
    dashes, which a linear reading does in a millisecond."""
    text = "SELECT E'a\\tb' " + "-" * 2000 + "\n  AS x;\n"
    program = (
        "import sys; from cicd_db.sqltext import Scanner; "
        "print(sum(1 for _ in Scanner(sys.stdin.buffer.read())))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", program], input=text.encode(), capture_output=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading the text had not ended after a minute")
    assert (done.returncode, done.stdout) == (0, b"1\n"), done.stderr
    assert split(text) == [(1, text.strip())]


# -- a statement's tokens (sqltext/tokens.py) ---------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))


@given(text=_TEXT, standard=st.booleans())
def test_every_form_of_a_string_and_a_name_reads_back_as_its_text(
    text: str, standard: bool
) -> None:
    """A string written any way PostgreSQL takes it, and a quoted name, is one token of
    its text, followed by what comes after it, whatever it holds (quotes, backslashes,
    dollars, parentheses, commas)."""
    doubled = "'" + text.replace("'", "''") + "'"
    backslashed = text.replace("\\", "\\\\").replace("'", "\\'")
    tag = "q" * (max((len(run) for run in re.findall("q+", text)), default=0) + 1)
    forms = [
        (f"E'{backslashed}'", "string"),
        (f"${tag}${text}${tag}$", "string"),
        ('"' + text.replace('"', '""') + '"', "name"),
        ('U&"' + text.replace("\\", "\\\\").replace('"', '""') + '"', "name"),
    ]
    # With standard_conforming_strings off, '...' takes backslash escapes, as E'...' does;
    # B'...', X'...' and U&'...' never do.
    forms.append((doubled if standard else f"'{backslashed}'", "string"))
    if "\\" not in text:
        forms.append(("U&" + doubled, "string"))
    for written, kind in forms:
        read = tokens(f"{written}, x".encode(), standard_strings=standard)
        assert read == [(kind, text), ("other", ","), ("word", "X")], written


@pytest.mark.parametrize(
    ("written", "value"),
    [("0", 0), ("-0", 0), ("01", 1), ("1.5", 1.5), ("0x1F", 31), ("0o17", 15), ("0b101", 5),
     ("1_000", 1000), (".5", 0.5), ("1e3", 1000), ("1E3", 1000)],
)  # fmt: skip
def test_a_number_is_read_as_postgresql_reads_it(written: str, value: float) -> None:
    read = tokens(written.encode())
    assert number(read[-1][1]) == value
    assert [kind for kind, _ in read] == (["other", "number"] if written[0] == "-" else ["number"])


_SQLISH = st.lists(
    st.sampled_from(
        [b"0", b"0x", b"0o9", b"0b2", b"_", b"1", b"e", b"E", b"'", b'"', b"\\", b"$", b"U&",
         b"UESCAPE", b" ", b"\n", b".", b"+", b"-", b"x"]
    )
).map(b"".join)  # fmt: skip


@given(data=st.binary() | _SQLISH, standard=st.booleans())
def test_any_bytes_are_read_into_tokens_without_failing(data: bytes, standard: bool) -> None:
    """Whatever a file holds after its comments are out (broken escapes, a string or a
    dollar quote never closed, bytes that are no UTF-8), reading its tokens never fails,
    and gives some unless it is all spaces."""
    read = tokens(data, standard_strings=standard)
    assert all(kind in ("word", "name", "string", "number", "other") for kind, _ in read)
    for kind, text in read:
        if kind == "number":
            number(text)  # 0o9, 0b2, 0x_: a number PostgreSQL reads, or none (found in review)
    if data.strip():
        assert read


def test_an_escape_string_reads_every_backslash_escape_as_postgresql_does() -> None:
    r"""E'...': hexadecimal (one or two digits), octal, \u and \U, the one-letter escapes,
    a doubled quote; a backslash before anything else is that character (\x with no digit
    after it too), as PostgreSQL reads it (found by mutation testing, helper-96)."""
    written = rb"E'\x41\x4g\101\u20AC\U0001F600\b\f\n\r\t\q\X\xg''z\
'"
    assert tokens(written) == [("string", "A\x04gA\u20ac\U0001f600\b\f\n\r\tqXxg'z\n")]


def test_an_escape_past_unicode_or_a_lone_surrogate_is_read_without_failing() -> None:
    """PostgreSQL refuses these; reading them must not fail (the statement's own error
    comes from the server)."""
    for written in (rb"E'\uD800'", rb"E'\U00110000'", rb"U&'\D800'", rb"U&'\+110000'", rb"E'\ug'"):
        assert [kind for kind, _ in tokens(written)] == ["string"], written


def test_a_backslash_in_a_plain_string_is_an_escape_only_with_standard_strings_off() -> None:
    assert tokens(b"'\\', x") == [("string", "\\"), ("other", ","), ("word", "X")]
    assert tokens(b"'a\\'b', x", standard_strings=False) == [
        ("string", "a'b"),
        ("other", ","),
        ("word", "X"),
    ]


def test_bit_and_hexadecimal_strings_in_either_case() -> None:
    assert tokens(b"B'101' b'1' X'1F' x'1f', y") == [
        ("string", "101"), ("string", "1"), ("string", "1F"), ("string", "1f"),
        ("other", ","), ("word", "Y"),
    ]  # fmt: skip
