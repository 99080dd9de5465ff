"""The `-- cicd-db:` lines a migration file opens with: the no-transaction marker (the
exact first line) and the checksums of earlier texts of a mended file; any other line
that reads as one, refused with the line named. Pure."""

from __future__ import annotations

import re
import unicodedata

from cicd_db.errors import ConfigError
from cicd_db.sqltext import leading_comments

NO_TRANSACTION_MARKER = b"-- cicd-db: no-transaction"


# A comment line that means the no-transaction marker but is not it, as written or
# where it stands: `--cicd-db: no-transaction`, `-- CICD-DB: no_transaction`, ...
_NEAR_MARKER = re.compile(
    rb"[ \t]*--[ \t]*cicd[-_ ]?db[ \t]*:?[ \t]*no[-_ ]?transaction[ \t]*\r?", re.I
)


# A line among a file's opening comments that names the checksum of an earlier text of
# the file: a database whose history holds that checksum has applied this file. For an
# edit that changes nothing the file makes (docs/migrations.md, "Mending an applied file").
EARLIER_CHECKSUM = "-- cicd-db: earlier-checksum"
_EARLIER = re.compile(re.escape(EARLIER_CHECKSUM.encode()) + rb" ([0-9a-f]{64})[ \t]*")
# What an author may have meant as one, spelled otherwise (another hyphen or colon, a
# space that is not one, dashes before, words between): refused, never a comment.
_NEAR_EARLIER = re.compile(rb"--.*cicd.{0,4}db.*earlier.{0,4}check.{0,4}sum", re.I)
# Any opening comment that reads as a directive (`-- cicd-db:`, an ASCII or full-width
# colon): one the runner does not know is a typo of one it does, never a comment.
_DIRECTIVE = re.compile(rb"\s*-+\s*cicd[\W_]{0,3}db\s*(?::|\xef\xbc\x9a)", re.I)


# Letters of other scripts drawn as the ASCII ones of `cicd-db`, `no-transaction` and
# `earlier-checksum` (Cyrillic, Greek, Latin variants), read as those when a comment is
# looked at for a directive; NFKC has taken full-width and mathematical letters to
# ASCII already, and characters drawn as nothing (a zero-width space, a soft hyphen)
# are taken out.
_DRAWN_AS = str.maketrans(
    "асеорхуіјѕԁһкмтвнАСЕОРХУІЈЅВНКМТαβεικνηορτυχΑΒΕΙΚΝΗΟΡΤΥΧɑɡɩɪʟɴʀꜱ",
    "aceopxyijsdhkmtbhACEOPXYIJSBHKMTabeikvnoptuxABEIKNHOPTYXagiilnrs",
)


def _as_drawn(line: bytes) -> bytes:
    """`line` as it reads on a screen, for finding what was meant as a directive: its
    look-alike letters as the ASCII ones (a Cyrillic es, U+0441, for the c of `cicd-db`,
    a Greek beta for its b), characters drawn as nothing taken out (a zero-width space
    between its letters)."""
    if line.isascii():
        return line
    text = unicodedata.normalize("NFKC", line.decode("utf-8", "replace"))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.translate(_DRAWN_AS).encode("utf-8", "replace")


def earlier_checksums(filename: str, data: bytes, *, transactional: bool = True) -> frozenset[str]:
    """The checksums the file's opening comments name as its earlier texts', read in one
    walk of those comments that also checks every directive among them. ConfigError for
    a no-transaction marker in a `transactional` file (not the exact first line: the
    file would run in a transaction, against its intent), for an earlier checksum not
    written exactly so, and for a `-- cicd-db:` line that is no directive the runner
    knows: read as a comment, it would leave every database that applied the earlier
    text refused as edited. (plan() calls it for the refusals alone; the runner reads
    the checksums only of an applied file whose own checksum differs.)"""
    found: set[str] = set()
    for number, written in leading_comments(data):
        # Read as it is drawn: a line that looks like a directive is taken for one, and,
        # not written so in ASCII, refused (never a comment the author thought was read).
        line = _as_drawn(written)
        if transactional and _NEAR_MARKER.fullmatch(line):
            where = "is not the first line" if number > 1 else "is not written exactly so"
            raise ConfigError(
                f"migration file {filename}, line {number}: a no-transaction marker that "
                f"{where}, so the file would run in a transaction; make the file's first line "
                f"`{NO_TRANSACTION_MARKER.decode()}`, or remove the comment"
            )
        if _NEAR_EARLIER.search(line):
            match = _EARLIER.fullmatch(written)
            if match is None:
                raise ConfigError(
                    f"migration file {filename}, line {number}: an earlier checksum is "
                    f"written `{EARLIER_CHECKSUM} <sha256>`, the 64 lower-case hex digits the "
                    "history holds for the earlier text; write it so, or remove the line"
                )
            found.add(match[1].decode())
        elif (
            _DIRECTIVE.match(line)
            and written.rstrip() != NO_TRANSACTION_MARKER
            and not (written.isascii() and _NEAR_MARKER.fullmatch(line))  # a no-tx file's comment
        ):
            raise ConfigError(
                f"migration file {filename}, line {number}: a `-- cicd-db:` line the runner "
                f"does not know; it knows `{NO_TRANSACTION_MARKER.decode()}` (the first line) "
                f"and `{EARLIER_CHECKSUM} <sha256>`; write one of them, or remove the line"
            )
    return frozenset(found)
