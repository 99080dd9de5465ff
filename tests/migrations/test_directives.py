"""The `-- cicd-db:` lines a file opens with: the no-transaction marker, exact or refused,
and the checksums of a mended file's earlier texts, taken in their exact form or refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cicd_db import migrations
from cicd_db.errors import ConfigError
from cicd_db.migrations import directives

from ..utils import examples


@pytest.mark.parametrize(
    "data",
    [
        b"-- cicd-db: no-transaction\r\nCREATE INDEX CONCURRENTLY i ON t (c);\r\n",
        b"-- cicd-db: no-transaction  \nCREATE INDEX CONCURRENTLY i ON t (c);\n",
        b"-- cicd-db: no-transaction\rCREATE INDEX CONCURRENTLY i ON t (c);\r",
    ],
    ids=["crlf", "trailing-spaces", "cr"],
)
def test_the_marker_line_may_end_in_spaces_crlf_or_cr(tmp_path: Path, data: bytes) -> None:
    """A line ends where PostgreSQL ends a `--` comment: at LF, CRLF or a CR alone."""
    path = tmp_path / "0001_index.sql"
    path.write_bytes(data)
    assert not migrations.read(path, 1, "index").transactional


@pytest.mark.parametrize(
    ("text", "line", "where"),
    [
        ("--cicd-db: no-transaction\n", 1, "is not written exactly so"),
        ("-- cicd-db:no-transaction\n", 1, "is not written exactly so"),
        ("-- CICD-DB: no_transaction\n", 1, "is not written exactly so"),
        ("-- adds an index\n-- cicd-db: no-transaction\n", 2, "is not the first line"),
        ("-- \u0441icd-db: no-transaction\n", 1, "is not written exactly so"),
        ("-- cicd-db: no\u200b-transaction\n", 1, "is not written exactly so"),
        ("-- adds an index\n-- cicd-db\uff1a no-transaction\n", 2, "is not the first line"),
    ],
    ids=[
        "no-space",
        "no-space-after-colon",
        "case-and-underscore",
        "second-line",
        "cyrillic-es",
        "zero-width-space",
        "full-width-colon",
    ],
)
def test_a_near_miss_of_the_no_transaction_marker_is_refused(
    tmp_path: Path, text: str, line: int, where: str
) -> None:
    """The file would run in a transaction against its intent (and a CREATE INDEX
    CONCURRENTLY fail there): refused before anything runs, naming the line."""
    path = tmp_path / "0001_idx.sql"
    path.write_text(text + "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);\n")
    with pytest.raises(ConfigError) as refused:
        migrations.read(path, 1, "idx")
    assert str(refused.value) == (
        f"migration file 0001_idx.sql, line {line}: a no-transaction marker that {where}, so "
        "the file would run in a transaction; make the file's first line "
        "`-- cicd-db: no-transaction`, or remove the comment"
    )


@settings(max_examples=examples(200), deadline=None)
@given(
    dashes=st.sampled_from(["--", "-- ", "--  ", " --", "--\t"]),
    tool=st.sampled_from(["cicd-db", "CICD-DB", "cicd_db", "cicddb", "cicd db", "Cicd-Db"]),
    colon=st.sampled_from([":", ": ", " : ", "", " "]),
    marker=st.sampled_from(["no-transaction", "no_transaction", "NO-TRANSACTION", "notransaction"]),
    after=st.sampled_from(["", " ", "\t", "\r"]),
    line=st.integers(1, 3),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_any_spelling_of_the_marker_runs_outside_a_transaction_or_is_refused(
    dashes: str, tool: str, colon: str, marker: str, after: str, line: int, newline: str
) -> None:
    """Whatever way the marker is written, on whichever leading line, whatever ends the
    lines (LF, CRLF, a CR alone: each ends a `--` comment for PostgreSQL): the exact
    form on the first line (any white space after it) runs outside a transaction;
    every other is refused, naming its line. None runs silently inside one."""
    written = dashes + tool + colon + marker + after
    data = (("-- a comment" + newline) * (line - 1) + written + newline + "SELECT 1;\n").encode()
    exact = line == 1 and written.rstrip() == "-- cicd-db: no-transaction"
    migration = migrations.Migration(1, "x", Path("0001_x.sql"), data, "0" * 64)
    assert migration.transactional is not exact
    if exact:
        return
    with pytest.raises(ConfigError) as refused:
        migration.steps  # noqa: B018 - planning is where it is refused
    assert f"line {line}: a no-transaction marker that" in str(refused.value)


def test_the_marker_may_end_in_any_white_space(tmp_path: Path) -> None:
    path = tmp_path / "0001_idx.sql"
    for ending in (" ", "\t", "\r", " \t\r"):
        path.write_text(
            f"-- cicd-db: no-transaction{ending}\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);\n"
        )
        assert not migrations.read(path, 1, "idx").transactional


# -- the checksums of a file's earlier texts ------------------------------------------

EARLIER = "9f" * 32


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (f"-- Mended.\n-- cicd-db: earlier-checksum {EARLIER}\nSELECT 1;\n", {EARLIER}),
        (f"-- cicd-db: earlier-checksum {EARLIER}  \r\nSELECT 1;\r\n", {EARLIER}),
        (f"-- cicd-db: earlier-checksum {EARLIER}\rSELECT 1;\r", {EARLIER}),
        (
            f"-- cicd-db: no-transaction\n\n-- cicd-db: earlier-checksum {EARLIER}\n"
            f"-- cicd-db: earlier-checksum {'a' * 64}\nCREATE INDEX CONCURRENTLY i ON t (c);\n",
            {EARLIER, "a" * 64},
        ),
        # Below the first statement a line is a comment: the runner reads the head only.
        (f"SELECT 1;\n-- cicd-db: earlier-checksum {EARLIER}\n", set()),
        (f"SELECT 1; -- cicd-db: earlier-checksum {EARLIER}\n", set()),
        ("-- Never mended.\nSELECT 1;\n", set()),
    ],
    ids=[
        "lf",
        "crlf-and-spaces",
        "cr",
        "two-after-the-marker",
        "below",
        "after-a-statement",
        "none",
    ],
)
def test_the_checksums_of_earlier_texts_are_read_from_the_opening_comments(
    tmp_path: Path, data: str, named: set[str]
) -> None:
    path = tmp_path / "0001_mended.sql"
    path.write_bytes(data.encode())
    assert migrations.read(path, 1, "mended").earlier_checksums == named


@pytest.mark.parametrize(
    "line",
    [
        f"-- cicd-db: earlier-checksum {EARLIER.upper()}",
        f"-- cicd-db: earlier-checksum {EARLIER[:-1]}",
        f"-- cicd-db: earlier-checksum {EARLIER}0",
        f"-- cicd-db: earlier-checksum sha256:{EARLIER}",
        f"-- cicd-db:earlier-checksum {EARLIER}",
        f"--cicd-db: earlier-checksum {EARLIER}",
        f"-- cicd-db: earlier_checksum {EARLIER}",
        f"-- CICD-DB: Earlier-Checksum {EARLIER}",
        f"-- cicd-db: earlier-checksums {EARLIER} {'a' * 64}",
        "-- cicd-db: earlier-checksum",
        f"   -- cicd-db: earlier-checksum {EARLIER}",
        # Look-alikes that were read as comments.
        f"--\u00a0cicd-db: earlier-checksum {EARLIER}",
        f"-- cicd\u2010db: earlier\u2010checksum {EARLIER}",
        f"-- cicd-db\uff1a earlier-checksum {EARLIER}",
        f"---- cicd-db: earlier-checksum {EARLIER}",
        f"-- -- cicd-db: earlier-checksum {EARLIER}",
        f"\f-- cicd-db: earlier-checksum {EARLIER}",
        f"-- cicd-db: earlier check-sum {EARLIER}",
        f"-- cicd-db: earlier-checksum\t{EARLIER}",
        # Letters of other scripts drawn as ASCII ones, and characters drawn as nothing
        # (helper-131): read as comments, so the mended file was refused as edited.
        f"-- cicd-d\u03b2: earlier-checksum {EARLIER}",
        f"-- \u0441icd-db: earlier-checksum {EARLIER}",
        f"-- ci\u200bcd-db: earlier-checksum {EARLIER}",
        f"-- cicd-db: \u0435arlier-checksum {EARLIER}",
        f"-- \U0001d41c\U0001d422\U0001d41c\U0001d41d-db: earlier-checksum {EARLIER}",
    ],
)
def test_an_earlier_checksum_not_written_exactly_so_is_refused_before_anything_runs(
    tmp_path: Path, line: str
) -> None:
    """Read as a comment, it would leave every database that applied the earlier text
    refused as edited; it is refused up front instead, in a pending file as in one
    applied (its checksum does not match: `earlier` is read then)."""
    path = tmp_path / "0001_mended.sql"
    path.write_bytes(f"-- Mended.\n{line}\nSELECT 1;\n".encode())
    expected = (
        "migration file 0001_mended.sql, line 2: an earlier checksum is written "
        "`-- cicd-db: earlier-checksum <sha256>`, the 64 lower-case hex digits the history "
        "holds for the earlier text; write it so, or remove the line"
    )
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == expected
    unplanned = migrations.read(path, 1, "mended", planned=False)
    with pytest.raises(ConfigError) as refused:
        unplanned.matches(EARLIER)
    assert str(refused.value) == expected


@pytest.mark.parametrize(
    "line",
    [
        f"-- cicd-db: earlier-sha256 {EARLIER}",
        "-- cicd-db: notransaction-please",
        "-- cicd_db: anything",
        "--- CICD-DB: earlier text",
        "-- \u0441icd-db: earlier text",
        "-- cicd\u00ad-db: anything",
    ],
)
def test_a_cicd_db_line_the_runner_does_not_know_is_refused(tmp_path: Path, line: str) -> None:
    """A typo of a directive the look-alike check did not cover (`earlier-sha256`) was
    read as a comment. Any opening `-- cicd-db:` line is one the runner knows, or
    refused; prose that names cicd-db without the colon stays prose."""
    path = tmp_path / "0001_typo.sql"
    path.write_bytes(f"-- Mended.\n{line}\nSELECT 1;\n".encode())
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        "migration file 0001_typo.sql, line 2: a `-- cicd-db:` line the runner does not know; "
        "it knows `-- cicd-db: no-transaction` (the first line) and "
        "`-- cicd-db: earlier-checksum <sha256>`; write one of them, or remove the line"
    )
    path.write_bytes(b"-- cicd-db applies this file; psql does too.\nSELECT 1;\n")
    assert migrations.read(path, 1, "typo").earlier_checksums == frozenset()


_SEPARATORS = st.sampled_from(["-", "_", " ", "", "\u2010", "\u2011", "\u00a0", "\t"])
_HEX = st.text("0123456789abcdefABCDEF", min_size=62, max_size=66)


# The directive as it must be written, for the examples below (each adds its hex and tail).
_EXACT = {
    "dashes": "--",
    "lead": "",
    "gap": " ",
    "between": "-",
    "colon": ":",
    "after": " ",
    "earlier": "earlier",
    "joint": "-",
    "checksum": "checksum",
    "space": " ",
}


@example(**_EXACT, digits="9f" * 32, tail="")
@example(**_EXACT, digits="9f" * 32, tail="\t")
@example(**_EXACT, digits="9f" * 32, tail=" -- note")
@example(**_EXACT, digits="9F" * 32, tail="")
@settings(max_examples=300, deadline=None)
@given(
    dashes=st.sampled_from(["--", "---", "-- --", "--\u00a0"]),
    lead=st.sampled_from(["", " ", "\t", "\f"]),
    gap=st.sampled_from([" ", "", "  ", "\t", "\u00a0"]),
    between=_SEPARATORS,
    colon=st.sampled_from([":", "\uff1a", "", " :"]),
    after=st.sampled_from([" ", "", "  ", "\t"]),
    earlier=st.sampled_from(["earlier", "Earlier", "EARLIER"]),
    joint=_SEPARATORS,
    checksum=st.sampled_from(["checksum", "check-sum", "check_sum", "Checksum", "checksums"]),
    space=st.sampled_from([" ", "  ", "\t", ": ", " sha256:"]),
    digits=_HEX,
    tail=st.sampled_from(["", " ", "\t", " -- note"]),
)
def test_a_line_meant_as_an_earlier_checksum_is_taken_exactly_or_refused(
    dashes: str,
    lead: str,
    gap: str,
    between: str,
    colon: str,
    after: str,
    earlier: str,
    joint: str,
    checksum: str,
    space: str,
    digits: str,
    tail: str,
) -> None:
    """Every spelling of the directive an author may type: taken only when it is the
    exact form (trailing blanks allowed), else refused before anything runs, never
    read as a comment (which would leave the databases that applied the earlier text
    refused as edited)."""
    line = (
        f"{lead}{dashes}{gap}cicd{between}db{colon}{after}{earlier}{joint}{checksum}"
        f"{space}{digits}{tail}"
    )
    data = f"-- Mended.\n{line}\nSELECT 1;\n".encode()
    exact = re.fullmatch(r"-- cicd-db: earlier-checksum [0-9a-f]{64}[ \t]*", line) is not None
    try:
        found = directives.earlier_checksums("0001_mended.sql", data)
    except ConfigError as refused:
        assert not exact, line
        assert str(refused).startswith("migration file 0001_mended.sql, line 2: ")
    else:
        assert exact, f"taken as a comment or a checksum: {line!r}"
        assert found == {digits}
