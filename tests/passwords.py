"""What the tests that no password is ever printed share: passwords of every character in
malformed URLs (a hypothesis strategy), and the check that no run of one is printed."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from urllib.parse import quote

from hypothesis import strategies as st

# Every printable ASCII character, and some that are not ASCII.
PASSWORD_CHARACTERS = [chr(c) for c in range(0x20, 0x7F)] + ["é", "ß", "中", "😀", "\u00a0"]
# What a careless user puts in or around a password: URL delimiters and spaces.
DELIMITERS = list("/?#@:[]% ")
RUN = 4  # no run of this many characters of a secret may be printed
# What a role or database name may hold: letters, marks, digits, spaces and punctuation,
# none of the characters that end a URL's user part (in any width).
NAME_CHARACTERS = (
    st.characters(categories=("L", "M", "N", "Zs"))
    | st.sampled_from("_-.+~@$' ")
    | st.characters(categories=("P", "S"), min_codepoint=0x80).filter(
        lambda c: unicodedata.normalize("NFKC", c) not in set(":/?#[];,!=&|\\@")
    )
)


def runs(secret: str) -> set[str]:
    return {secret[i : i + RUN] for i in range(len(secret) - RUN + 1)}


def fixed_texts() -> str:
    """Everything a message may say that is not taken from the URL: our sources (their
    message templates) and the libpq and psycopg messages these URLs draw. A run of a
    password that occurs here anyway (" as ", "port") proves nothing, and is skipped."""
    sources = Path(__file__).resolve().parents[1] / "src" / "cicd_db"
    texts = [path.read_text() for path in sorted(sources.rglob("*.py"))]
    texts += [
        "Connection refused",
        "Is the server running on that host and accepting TCP/IP connections?",
        "failed to resolve host",
        "[Errno -2] Name or service not known",
        "[Errno -9] Address family for hostname not supported",
        "bad value for connect_timeout",
        'invalid integer value "',
        'for connection option "connect_timeout"',
        'invalid target_session_attrs value: "',
        "127.0.0.1",
        "u:***@",
    ]
    return "\n".join(texts)


FIXED_TEXTS = fixed_texts()


# hostile_urls' strategies that depend on no draw, made once: one made in every draw is
# checked and analysed anew by Hypothesis each time.
# Characters that end a URL's parts drawn as often as all others together.
_PASSWORDS = st.text(
    st.sampled_from(PASSWORD_CHARACTERS) | st.sampled_from([*DELIMITERS, "&", "=", ","]),
    min_size=RUN,
    max_size=14,
)
_DELIMITERS = st.sampled_from(DELIMITERS)
_HOSTS = st.sampled_from(["127.0.0.1", "", "[::1]", "127.0.0.1:1,127.0.0.1", "h"])
_PORTS = st.sampled_from(["1", "", "x", "99999", "0", "-1", "1a", "\uff11"])
_SSLPASSWORDS = st.text(st.sampled_from(PASSWORD_CHARACTERS), min_size=RUN, max_size=10).filter(
    lambda s: not set(s) & set("&#")  # either would end the value in any URL
)
# The ':' before the password, or what a slip of the finger types there instead.
_SEPARATORS = st.sampled_from([":", ":", ":", *"?/#;,!=&\uff1a\uff20"]) | st.sampled_from(
    ["%3A", "%3a", "%2F", "%3F", "%23", "%3B", "%2C", "%21", "%26", "%EF%BC%9A"]
)


@st.composite
def hostile_urls(draw: st.DrawFn) -> tuple[str, str, str]:
    """(url, password, sslpassword): a password of every printable character, written
    raw or percent-encoded, with URL delimiters and spaces inserted in and around it,
    after a ':' or what a typo puts in its place; bad ports, unknown parameters, and
    an sslpassword."""
    password = draw(_PASSWORDS)
    written = draw(st.sampled_from([password, quote(password, safe="")]))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(written)))
        written = written[:at] + draw(_DELIMITERS) + written[at:]
    host = draw(_HOSTS)
    port = draw(_PORTS)
    sslpassword = draw(_SSLPASSWORDS)
    ssl_written = draw(st.sampled_from([sslpassword, quote(sslpassword, safe="")]))
    query = draw(
        st.lists(
            st.sampled_from(
                [
                    "sslmode=disable",
                    "sslmode=require",
                    "sslmode=bogus",
                    "bogus=1",
                    "connect_timeout=abc",
                    "connect_timeout=2",
                    "target_session_attrs=bogus",
                    f"sslpassword={ssl_written}",
                    # A password where libpq takes none: under another name, in a name,
                    # in the user name.
                    f"pwd={ssl_written}",
                    f"passwd={ssl_written}",
                    f"password:{ssl_written}",
                    f"password{ssl_written}",
                    f"user=u:{ssl_written}",
                    f"user=u%3A{ssl_written}",
                ]
            ),
            max_size=3,
        )
    )
    separator = draw(_SEPARATORS)
    url = f"postgresql://u{separator}{written}@{host}" + (f":{port}" if port else "") + "/db"
    if query:
        url += "?" + "&".join(query)
    return url, password, sslpassword


def assert_nothing_of(secrets: tuple[str, ...], printed: str) -> None:
    for secret in secrets:
        # FIXED_TEXTS (800 kB) is searched only for a run that is printed: searched for
        # every run, it was half of the CPU of the tests that call this.
        for run in runs(secret):
            assert run not in printed or run in FIXED_TEXTS, (
                f"{run!r} of a secret printed: {printed!r}"
            )
