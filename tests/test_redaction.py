"""Finding passwords before they are printed: URLs well formed or not, `password=`
keywords, user names a password was typed into; examples and hypothesis properties."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cicd_db import redaction
from cicd_db.errors import ConfigError
from cicd_db.redaction import mask_credentials, password_candidates, redact, user_name_secrets
from cicd_db.settings import ConnectionSettings, from_url

from .passwords import NAME_CHARACTERS, PASSWORD_CHARACTERS, assert_nothing_of
from .utils import examples

SECRET = "Sup3rS3cret"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"postgresql://ci:{SECRET}@h/db?sslmode=require&foo=bar",
            "the database URL has a parameter libpq does not know (parameter 2 of 2, its name "
            "is not shown: it may hold a password); remove it, or fix its spelling",
        ),
        (
            f"postgresql://ci:{SECRET}@h/db?sslmode=bogus",
            "the database URL 'postgresql://ci:***@h/db?sslmode=bogus' has an sslmode libpq does "
            "not know; use one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            f"app:{SECRET}@host/db",
            "the database URL must start with postgresql:// or postgres:// (its value is not "
            "shown: it may hold a password)",
        ),
        (
            f"postgresql:/app:{SECRET}@host/db",
            "the database URL must start with postgresql:// or postgres://, got "
            "'postgresql:/app:***@host/db'",
        ),
        (
            f"postgresql://ci:ss@{SECRET}@127.0.0.1/db",
            "the database URL 'postgresql://ci:***@127.0.0.1/db' has an '@' where libpq reads "
            "the host, port or database: most likely a password (or user name) holding a raw '@' "
            "or '/'; percent-encode them there (@ as %40, / as %2F)",
        ),
        # Issue 17: libpq reads `Sek` (before the '/') as the port, the rest up to
        # `@h:1` as the database: neither is named.
        (
            f"postgresql://u:Sek/{SECRET}@h:1/db",
            "the database URL 'postgresql://u:***@h:1/db' has an '@' where libpq reads",
        ),
        (
            f"postgresql://u:12/{SECRET}@h:1/db",
            "the database URL 'postgresql://u:***@h:1/db' has an '@' where libpq reads",
        ),
        (
            f"postgresql://u@h/db?sslpassword={SECRET}&bogus=1",
            # A secret's value is masked to the end: a raw & in it would show the rest.
            "the database URL 'postgresql://u@h/db?sslpassword=***' is malformed",
        ),
        (
            f"postgresql://u@h/db?sslpassword={SECRET}&sslmode=bogus",
            "the database URL 'postgresql://u@h/db?sslpassword=***' has an sslmode libpq does "
            "not know",
        ),
        (
            f"postgresql://u:{SECRET}%80@h/db",
            "the database URL 'postgresql://u:***@h/db' has a percent-escape that is not UTF-8",
        ),
        (
            f"postgresql://ci:pass {SECRET}@127.0.0.1/db",
            "the database URL 'postgresql://ci:***@127.0.0.1/db' is malformed",
        ),
        (
            SECRET,
            "the database URL must start with postgresql:// or postgres:// (its value is not "
            "shown: it may hold a password)",
        ),
    ],
    ids=[
        "unknown-parameter",
        "bad-sslmode",
        "no-scheme",
        "one-slash",
        "raw-at-in-password",
        "raw-slash-in-password",
        "digits-then-raw-slash",
        "sslpassword-and-unknown",
        "sslpassword-and-bad-sslmode",
        "not-utf-8",
        "space-in-password",
        "only-a-password",
    ],
)
def test_from_url_never_shows_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_url(url)
    assert str(raised.value).startswith(message), str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET in password_candidates(url) or any(
        SECRET in candidate for candidate in password_candidates(url)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://ci:hunter2@h:5432/db", "postgresql://ci:***@h:5432/db"),
        ("postgres://ci:p@ss@h/db", "postgres://ci:***@h/db"),
        ("postgresql://ci@h/db", "postgresql://ci@h/db"),
        ("host=h password=hunter2 user=ci", "host=h password=*** user=ci"),
        ("host=h password='two words' user=ci", "host=h password=*** user=ci"),
        ("postgresql://h/db?user=ci&password=hunter2", "postgresql://h/db?user=ci&password=***"),
        (
            "failed: 'postgresql://a:b@h/db' then 'postgresql://c:d@h/db'",
            "failed: 'postgresql://a:***@h/db' then 'postgresql://c:***@h/db'",
        ),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_known_secrets() -> None:
    assert redact("the password is hunter2, really", secrets=["hunter2"]) == (
        "the password is ***, really"
    )


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("HTTP://u:pw@h", "HTTP://u:***@h"),
        ("postgresql://u:p:w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        # A typo for the ':' hides the password all the same; the typo shows.
        (
            "postgresql://prof?Sekr3t@h:1/db?sslmode=disable",
            "postgresql://prof?***?sslmode=disable",
        ),
        ("postgresql://u/Sekr3t@h/db", "postgresql://u/***@h/db"),
        ("postgresql://u;Sekr3t@h/db", "postgresql://u;***@h/db"),
        ("postgresql://u%3ASekr3t@h/db", "postgresql://u%3A***@h/db"),
        ("postgresql://u\uff1aSekr3t@h/db", "postgresql://u\uff1a***@h/db"),
        ("postgresql://ci%20user:pw@h/db", "postgresql://ci%20user:***@h/db"),
        ("postgresql://h/db?user=u:Sekr3t&sslmode=disable", "postgresql://h/db?user=u:***"),
        ("postgresql://me@server:pw@h/db", "postgresql://me@server:***@h/db"),
        ("postgresql://jürgen:pw@h", "postgresql://jürgen:***@h"),
        ("postgresql://@h/db", "postgresql://@h/db"),
        # Without a scheme, nothing is shown: it may be a password holding an @.
        (":pw@h", None),
        ("@h", None),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql:/h/db", None),  # one slash: may be a password
        ("my pass://x", None),
        ("hunter2", None),
    ],
)
def test_mask_credentials(text: str, masked: str | None) -> None:
    assert redaction.mask_credentials(text) == masked


@pytest.mark.parametrize(
    ("text", "candidates"),
    [
        (None, []),
        ("", []),
        ("postgresql://u:pw@h", ["pw"]),
        ("HTTP://u:pw@h", ["pw"]),
        ("postgresql://u:p:w@h/db", ["p:w", "p", "w"]),
        # libpq reads a password with a raw / or ? as host, port or database: its pieces too
        # (and what its '?' starts is an unknown parameter, as the query reads it).
        # The query's `PW@h:1/db` (an unknown parameter) to its '@', as a host is read.
        ("postgresql://u:Sek/r3t?PW@h:1/db", ["PW@h:1/db", "PW", "Sek/r3t?PW", "Sek", "r3t", "PW"]),
        # A secret's value is taken to the end: a raw & or # in it is no separator (and
        # `x=1`, an unknown parameter, is hidden as the query's masking hides it).
        # Hidden to the end (a raw '&' in it), and as libpq reads it, to the next '&'.
        ("postgresql://u@h/db?sslpassword=keypass&x=1", ["keypass&x=1", "x=1", "keypass"]),
        ("postgresql://u:a@b@h/db", ["a@b", "a", "b"]),
        ("postgresql://u@h/db", []),
        ("postgresql://@h/db", []),
        (":pw@h", ["pw"]),
        ("@h", []),
        ("postgresql://h/db", []),
        ("  postgresql:/h/db ", ["postgresql:/h/db"]),
        ("hunter2", ["hunter2"]),
    ],
)
def test_password_candidates(text: str | None, candidates: list[str]) -> None:
    assert password_candidates(text) == candidates


# What may be in a role's name without ending it where a password could follow: letters
# and digits of any script, spaces, signs that are no separator, and punctuation and
# symbols beyond ASCII that stand for none (a typographic apostrophe, a middle dot).


@settings(max_examples=examples(200), deadline=None)
@given(name=st.text(NAME_CHARACTERS, min_size=1, max_size=24), password=st.none() | st.text())
def test_no_piece_of_a_role_name_is_taken_for_a_password(name: str, password: str | None) -> None:
    """A role named in any script, percent-escaped in a URL as ConnectionSettings.url()
    writes it, shows whole: nothing of it is hidden from messages (a printed fix that
    names the role must name the role that exists)."""
    url = ConnectionSettings("h", 5432, "db", name, password).url()
    # Only the password, or pieces of it, as it is or percent-escaped.
    given = f"{password or ''} {quote(password or '', safe='')}"
    assert all(candidate in given for candidate in password_candidates(url)), url
    assert redact(f"role {name}", ConnectionSettings("h", 5432, "db", name).secrets()) == (
        f"role {name}"
    )


@settings(max_examples=examples(200), deadline=None)
@given(
    name=st.text(NAME_CHARACTERS, min_size=1, max_size=12),
    separator=st.sampled_from([":", "?", "/", "\uff1a", "\uff20", "\ufe55", "\uff1f"]),
    secret=st.text(st.characters(categories=("L", "N")), min_size=4, max_size=12),
)
def test_a_password_typed_after_any_separator_is_hidden_escaped_or_not(
    name: str, separator: str, secret: str
) -> None:
    """`u:pw`, `u?pw`, `u\uff1apw` (a full-width colon) as the user name, raw or
    percent-escaped: what follows the separator may be a password, and is hidden."""
    escaped = (quote(name + separator, safe=""), quote(secret, safe=""))
    raw = (quote(name, safe="") + separator, secret)
    for shown, hidden in (escaped, raw):
        url = f"postgresql://{shown}{hidden}@h/db"
        assert any(secret in candidate for candidate in password_candidates(url)), url
        masked = redaction.mask_credentials(url) or ""
        assert masked.startswith(f"postgresql://{shown}***"), (url, masked)


def test_redact_skips_short_and_empty_secrets() -> None:
    assert redact("ab abc abcd", secrets=["", "ab"]) == "ab abc abcd"
    assert redact("x abc y", secrets=["abc"]) == "x *** y"


def test_a_port_is_no_password_candidate() -> None:
    """A URL without user part: the port after the ':' is no secret to hide."""
    assert password_candidates("postgresql://127.0.0.1:5432/mydb") == []


@pytest.mark.parametrize(
    "name", ["O\u2019Brien", "Col\u00b7lectiu", "ジョン・スミス", "Zoë\u2013Smith"]
)
def test_a_role_named_with_punctuation_beyond_ascii_shows_whole(name: str) -> None:
    """Typographic apostrophes, middle dots and dashes are in people's names: none is
    taken for a separator that a password could follow."""
    url = ConnectionSettings("h", 5432, "db", name, "Sekr3t").url()
    assert password_candidates(url) == ["Sekr3t"], url
    assert redact(
        f"role {name} cannot log in", ConnectionSettings("h", 5432, "db", name).secrets()
    ) == (f"role {name} cannot log in")


_DIGITS = st.text(st.sampled_from("0123456789"), min_size=1, max_size=5)
# After `ci:` in a URL with no '@': free text, or what reads as a multi-host list of
# ports (`5432,h2:5433/db`), which is also what a password with a comma and digits
# makes when its '@' is lost (`00000,000000` + `127.0.0.1:1/db`).
_AFTER_THE_COLON = st.text(st.sampled_from("0123456789,.:/?#abc%"), max_size=30) | st.builds(
    lambda first, others, tail: first + "".join(f",{h}:{p}" for h, p in others) + tail,
    _DIGITS,
    st.lists(st.tuples(st.text(st.sampled_from("0123456789.abc"), max_size=12), _DIGITS)),
    st.sampled_from(["", "/db", "?sslmode=require"]),
)


@settings(max_examples=examples(300), deadline=None)
@given(rest=_AFTER_THE_COLON)
def test_masking_hides_whatever_redaction_takes_for_a_password_in_a_url_without_an_at(
    rest: str,
) -> None:
    """`postgresql://ci:REST` with no '@': what mask_credentials shows and what the
    redaction of messages hides (password_candidates) agree, so no path that prints a
    masked URL (the stack check) shows what another path hides."""
    url = f"postgresql://ci:{rest}"
    shown = mask_credentials(url) or ""
    for candidate in password_candidates(url):
        if len(candidate) >= 4:
            assert candidate not in shown, (url, shown, candidate)


@settings(max_examples=examples(300), deadline=None)
@given(
    user=st.text(NAME_CHARACTERS, min_size=1, max_size=12).filter(lambda u: " " not in u),
    separator=st.sampled_from([":", "?", "/", "\uff1a", "\uff20", "\ufe55", ";"]),
    secret=st.text(st.characters(categories=("L", "N", "P")), min_size=4, max_size=16).filter(
        lambda s: not any(c.isspace() for c in s)
    ),
)
def test_a_url_quoted_in_any_message_is_masked_as_mask_credentials_masks_it(
    user: str, separator: str, secret: str
) -> None:
    """redact() (every printed line) and mask_credentials (every URL cicd-db quotes)
    read a URL the same way: a password after a separator of another width, which one
    of them once left in a message, is hidden by both."""
    # A user name that holds the password itself is hidden too by redact, which hides
    # the password wherever it stands (found at 20 times the examples: `0000:0000@h`).
    assume(secret not in user)
    url = f"postgresql://{user}{separator}{secret}@h/db"
    masked = mask_credentials(url)
    assert masked is not None
    assert redact(f"error: cannot use {url} now") == f"error: cannot use {masked} now"
    assert secret not in masked or secret in f"{user}{separator}" + "@h/db"


@pytest.mark.parametrize(
    "text",
    [
        "written to C:/Users/me/schema.sql",
        "see file:///tmp/schema.sql",
        "connection to server at ::1, port 5432 failed",
        "time 12:30:05+00",
    ],
)
def test_text_that_only_looks_like_part_of_a_url_is_left_as_it_is(text: str) -> None:
    assert redact(text) == text


# Found by the mutation run of 2026-12-05, night (docs/testing.md): each case names the
# mutant it kills (mutmut 3 names, `mutmut show NAME`).

# -- _only_ports: what follows the ':' of a URL without an '@' ---------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # Not a port: a password that lost its '@' (x__only_ports 12, 16, 19).
        ("postgresql://ci:Sekr3t127.0.0.1/db", "postgresql://ci:***"),
        # No port at all: a password starting with '/' (x__only_ports 12).
        ("postgresql://ci:/Sekr3t", "postgresql://ci:***"),
        # Ports are split at commas, and an empty piece is no password (x__only_ports 10,
        # 11, 17).
        ("postgresql://h:5432,5433/db", "postgresql://h:5432,5433/db"),
        ("postgresql://h:5432,/db", "postgresql://h:5432,/db"),
        # Ports are 1 to 65535, both ends included (x__only_ports 20); 0 and 65536 are
        # no port, and may be a password (x__only_ports 21; 23, 24).
        ("postgresql://h:1/db", "postgresql://h:1/db"),
        ("postgresql://h:65535/db", "postgresql://h:65535/db"),
        ("postgresql://ci:00000/db", "postgresql://ci:***"),
        ("postgresql://ci:65536/db", "postgresql://ci:***"),
        # More than five digits is no port to the URL check either: a password of digits
        # that lost its '@' (hypothesis found `00000000001#`, shown whole as port 1).
        ("postgresql://ci:00000000001#127.0.0.1:1/db", "postgresql://ci:***"),
        ("postgresql://ci:000001/db", "postgresql://ci:***"),
        # libpq reads no fragment: a '#' is part of the port, which is then no port.
        ("postgresql://ci:00001#000000127.0.0.1:1/db", "postgresql://ci:***"),
        # A password that starts as a port does, then a '/': libpq reads the rest, the
        # real host with it, as the database, which then holds a ':' or a '/' that a
        # database's name seldom does (hypothesis found `00001/000000`, shown whole).
        ("postgresql://ci:00001/000000127.0.0.1:1/db", "postgresql://ci:***"),
        ("postgresql://ci:5432/Sekr3t127.0.0.1/db", "postgresql://ci:***"),
        # ... while a database's own name, and a query's ':' and '/', are shown.
        ("postgresql://h:5432/app", "postgresql://h:5432/app"),
        (
            "postgresql://h:5432/app?application_name=a:b/c",
            "postgresql://h:5432/app?application_name=a:b/c",
        ),
    ],
)
def test_only_ports_are_shown_after_the_colon_of_a_url_without_an_at(url: str, masked: str) -> None:
    assert mask_credentials(url) == masked
    # redact hides the same, in a message; password_candidates agrees.
    assert redact(f"cannot reach {url} now") == f"cannot reach {masked} now"
    hidden = masked != url
    assert bool(password_candidates(url)) == hidden


# -- libpq.misspelt_keyword: an unknown parameter's name shows only when it misspells one -----


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        # Not letters and '_' alone: hidden whole (x__misspelt_keyword 3).
        ("sslmode1", "?***"),
        ("aplication-name", "?***"),
        # A secret keyword with more after it: hidden whole (x__misspelt_keyword 3).
        ("passwordq", "?***"),
        # Less alike than the cutoff (0.8): hidden whole (x__misspelt_keyword 21).
        ("appname", "?***"),
        # One character more than the keyword: a slip, the name shows
        # (x__misspelt_keyword 29, 30); two more: hidden whole (x__misspelt_keyword 31).
        ("sslmodee", "?sslmodee=***"),
        ("sslmodeee", "?***"),
    ],
)
def test_an_unknown_parameter_shows_its_name_only_when_it_misspells_a_keyword(
    name: str, masked: str
) -> None:
    assert mask_credentials(f"postgresql://u@h/db?{name}=x") == f"postgresql://u@h/db{masked}"


# -- redact: the longest secret first -------------------------------------------------


def test_redact_hides_a_whole_password_before_its_pieces() -> None:
    """A password with a raw '/' and '?' comes with its pieces (password_candidates):
    hidden whole, longest first, no piece replaced first leaves the rest of it behind
    (x_redact 18: sorted by the text, not the length; x_redact 26: shortest first)."""
    url = "postgresql://u:Sek/r3t?PW@h:1/db"
    secrets = password_candidates(url)
    assert redact("password authentication failed: Sek/r3t?PW", secrets) == (
        "password authentication failed: ***"
    )
    assert redact("pw Sekr3t-long here", ["long", "Sekr3t-long"]) == "pw *** here"


def test_redact_hides_a_secret_as_repr_quotes_it() -> None:
    """A message may quote a secret with repr (a control character escaped): that form
    is hidden whole, and nothing else is (x_redact 31: one character of it shown)."""
    secret = "Sek\tr3t"
    assert redact(f"bad password {secret!r}", [secret]) == "bad password '***'"
    assert redact("Sekr3t and Sekr3x", ["Sekr3t"]) == "*** and Sekr3x"


@pytest.mark.parametrize(
    ("text", "secrets", "shown"),
    [
        # A query's '@' makes the longest candidate run from the password to the query's
        # `pwd=`: hiding it first left `@000`, the unknown parameter's value, with nothing
        # to say it was one (hypothesis found it).
        (
            "postgresql://u:0000@127.0.0.1:1/db?pwd=@000",
            None,
            "postgresql://u:***",
        ),
        # A secret with a space cuts the URL at it: read with the secret taken out, the
        # URL goes on to its query's unknown parameter.
        (
            "x postgresql://u:a b@host:5432/db?pwd=zzzz y",
            ["a b"],
            "x postgresql://u:***@host:5432/db?*** y",
        ),
        # The same with a space before the password: the URL as printed ends at the
        # space, so the query's unknown parameter is known from the URL as given.
        ("postgresql://u: 0000@127.0.0.1:1/db?pwd=@000", None, "postgresql://u:***"),
        # Two known secrets that overlap: both hidden, whichever is found first.
        ("key abcdef here", ["abcd", "cdef"], "key *** here"),
    ],
)
def test_redact_hides_what_any_reading_finds_in_the_text_as_given(
    text: str, secrets: list[str] | None, shown: str
) -> None:
    """Each way of finding a password marks the text as given and all of it is hidden:
    hiding one secret first never takes away what shows another is one (x_redact: the
    secrets replaced first, then the URLs read in what was left)."""
    assert redact(text, password_candidates(text) if secrets is None else secrets) == shown


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ('password "S3cr3tPass" was refused', 'password "***" was refused'),
        ('{"user": "u", "password": "hunter2"}', '{"user": "u", "password": "***"}'),
        ("password: 'se cret'", "password: '***'"),
        ("{'user': 'u', 'password': 'hunter2'}", "{'user': 'u', 'password': '***'}"),
        # Right after the word, and a keyword's value in double quotes (helper-112).
        ('password"hunter2"', 'password"***"'),
        ("password'hunter2'", "password'***'"),
        ('password = "my secret"', "password = ***"),
        ("sslpassword=KeyPass77 passwd=pw1234 pwd=zz9999", "sslpassword=*** passwd=*** pwd=***"),
        # A URL's password quoted again beside it is hidden there too (helper-115).
        ("postgresql://a:Twice888@h/d (Twice888)", "postgresql://a:***@h/d (***)"),
        # One reading never takes what another needs; a password that is a word elsewhere
        # is hidden as a word, not inside one (helper-116).
        ("passwd=x:password= Sekr3t", "passwd=*** ***"),
        ("pwd=password= Sekr3t", "pwd=*** ***"),
        (
            "postgresql://postgres:postgres@localhost/postgres",
            "postgresql://***:***@localhost/***",
        ),
        (
            'password authentication failed for user "bob"',
            'password authentication failed for user "bob"',
        ),
        # Prose that owns or quotes the word is no password quoted after it.
        (
            "encode the password's or name's characters as UTF-8",
            "encode the password's or name's characters as UTF-8",
        ),
        (
            "server.json ('password' is missing); it holds the server's port",
            "server.json ('password' is missing); it holds the server's port",
        ),
        ('"password" is missing; the server\'s', '"password" is missing; the server\'s'),
        ("set the 'password'. Then the server's", "set the 'password'. Then the server's"),
    ],
)
def test_redact_hides_a_password_a_message_quotes_after_the_word(said: str, shown: str) -> None:
    """A tool's message (Pulumi's stderr) or JSON quoting a password after the word; the
    word alone, as PostgreSQL's "password authentication failed", is left."""
    assert redact(said) == shown


@settings(max_examples=examples(300))
@given(
    data=st.data(),
    quote_mark=st.sampled_from(['"', "'"]),
    form=st.sampled_from(
        [
            "password {q}{p}{q}",
            '"password": {q}{p}{q}',
            "'password': {q}{p}{q}",
            "Password: {q}{p}{q}",
        ]
    ),
    around=st.sampled_from(["error: {} was refused", "{}", '{{"user": "u", {}}}']),
)
def test_any_password_a_message_quotes_after_the_word_is_hidden(
    data: st.DataObject, quote_mark: str, form: str, around: str
) -> None:
    """The class beside the examples above: a password of any character but its own
    quote mark and a backslash, quoted after the word as a tool's message or JSON
    writes it, in any text around it: no run of 4 characters of it is left. Right after
    the word, with no space, ':' or '=' between, a quoted value reads as prose when it
    begins as prose goes on (`password's `, `password'.`), so such a password is not
    drawn there: no tool writes one so."""
    characters = [c for c in PASSWORD_CHARACTERS if c not in (quote_mark, "\\")]
    password = data.draw(st.text(st.sampled_from(characters), min_size=4, max_size=20))
    if form == "password{q}{p}{q}":
        assume(not re.match(r"s\b|[\s:=,.;)]", password))
    said = around.format(form.format(q=quote_mark, p=password))
    assert_nothing_of((password,), redact(said))


@settings(max_examples=examples(200))
@given(
    before=st.text(st.sampled_from("abc ;(),.'\""), max_size=12),
    word=st.sampled_from(["password's", "'password'", "Password's", "password'"]),
    after=st.text(st.sampled_from("abcs ;(),.'\":"), max_size=30),
)
def test_prose_that_owns_or_quotes_the_word_is_printed_whole(
    before: str, word: str, after: str
) -> None:
    """The class beside the prose examples above: the word owned (`password's`) or
    quoted as a name (`'password'`), then anything that does not start with a space,
    ':' or '=' and a quote mark, is no password quoted after the word: nothing is
    hidden (the embedded server's "key 'password' is missing ... the server's port" was
    cut to `'password'***'s port`)."""
    assume(not re.match(r"""\s*[:=]?\s*["']""", after))
    assume(not re.search(r"password\s*=", before + word + after, re.I))
    text = f"{before} {word} {after}"
    assert redact(text) == text


@pytest.mark.parametrize(
    ("hosts", "secrets"),
    [
        ("ci:Sekr3t@db.example.com", ["Sekr3t"]),
        # A ',' in the password makes two hosts of it; each is named by libpq.
        ("ci:Sek,r3t@db", ["Sek,r3t", "Sek", "r3t"]),
        ("127.0.0.1,ci:Sekr3t@db", ["Sekr3t"]),
        # No password: a host, a user name without one, a socket folder with an '@'.
        ("db.example.com", []),
        ("ci@db", []),
        ("/run/a@b", []),
    ],
)
def test_host_secrets_are_what_a_host_holds_before_its_at_after_a_user_name(
    hosts: str, secrets: list[str]
) -> None:
    assert set(redaction.host_secrets(hosts)) >= set(secrets)
    assert bool(redaction.host_secrets(hosts)) == bool(secrets)


# -- what mutation testing found untested (helper-102, 2026-12-07: redaction.py's 43
# survivors of 372; docs/testing.md) ------------------------------------------------------


def test_a_url_that_cannot_be_read_is_hidden_whole() -> None:
    """A URL with one slash and no '@' cannot be split into user and password: the
    whole of it is hidden, and the message around it shows (x__password_spans 7)."""
    assert redact("see postgresql:/ci:Sekr3t/db here") == "see *** here"


@settings(max_examples=examples(100), deadline=None)
@given(
    secret=st.text("abcXYZ019!", min_size=3, max_size=8),
    gaps=st.lists(st.text(" .,;", max_size=3), min_size=2, max_size=5),
)
def test_every_occurrence_of_a_known_secret_is_hidden(secret: str, gaps: list[str]) -> None:
    """A known secret is hidden wherever it occurs, however often, side by side or
    overlapping (x_redact 20, 35, 37: the first, the middle or an overlapping one shown)."""
    text = secret.join(gaps)
    shown = redact(text, [secret])
    assert secret not in shown


def test_overlapping_occurrences_of_a_secret_are_hidden_whole() -> None:
    """Occurrences one character apart are hidden together (x_redact 37)."""
    assert redact("x aaaa x", ["aaa"]) == "x *** x"
    assert redact("1 Sekr3t 2 Sekr3t 3 Sekr3t 4", ["Sekr3t"]) == "1 *** 2 *** 3 *** 4"


def test_a_secret_quoted_by_repr_is_hidden_whole_without_the_word_password() -> None:
    """A message that quotes a secret with repr, and does not say "password" before it
    (where the keyword reading would hide it anyway), shows no character of it
    (x_redact 9, 10)."""
    secret = "Sek\tr3t"
    assert redact(f"got {secret!r} back", [secret]) == "got '***' back"


def test_a_secret_with_its_backslashes_doubled_is_hidden_whole() -> None:
    """A message that doubles a secret's backslashes (as JSON or a C string does) but
    leaves its other characters raw, unlike repr, shows no character of it
    (x_redact 16, 17)."""
    secret = "Sek\\r\n3t"
    doubled = secret.replace("\\", "\\\\")
    assert doubled != repr(secret)[1:-1]
    assert redact(f"got {doubled} back", [secret]) == "got *** back"


@settings(max_examples=examples(100), deadline=None)
@given(name=st.text("abcxyzABC019_- .\u00e9", min_size=1, max_size=16))
def test_a_user_name_without_a_separator_holds_no_secret(name: str) -> None:
    """A user name with no separator in it is no password: nothing of it, and nothing
    else, is a secret to hide (x__user_name_secret 5)."""
    assert user_name_secrets(name) == []


def test_a_password_typed_into_a_user_parameter_is_hidden() -> None:
    """`?user=ci:pw` in a URL that has a user before its '@' too: what follows the
    separator in the parameter's value is hidden, the name before it shows
    (x__secret_values 11)."""
    assert redact("postgresql://u@h/db?user=ci:Sekr3t") == "postgresql://u@h/db?user=ci:***"


def test_a_query_key_that_is_no_utf8_is_hidden_and_read_without_an_error() -> None:
    """A percent-escape in a key that decodes to no UTF-8 (`?%80=x`): an unknown parameter,
    hidden whole, read with its bytes replaced (x__query_secrets 11, 12: an error handler
    that does not exist raised instead)."""
    assert redact("postgresql://h/db?%80=x") == "postgresql://h/db?***"


def test_a_keyword_in_upper_case_is_shown_as_the_keyword_is() -> None:
    """`?USER=ci` names a user as `?user=` does, for what is hidden: the name shows, what
    follows a separator in it does not (x__query_secrets 15-19 hid the name too)."""
    assert redact("postgresql://h/db?USER=ci") == "postgresql://h/db?USER=ci"
    assert redact("postgresql://h/db?USER=ci:Sekr3t") == "postgresql://h/db?USER=ci:***"


@settings(max_examples=examples(500))
@given(
    text=st.lists(
        st.sampled_from(
            [*"abzAZ09+.-:/@ \t\n\u00a0\u017f\u212aé", "postgres", "POSTGRESQL", "ql", "://"]
        ),
        max_size=30,
    ).map("".join)
)
def test_url_tokens_are_what_the_expression_finds(text: str) -> None:
    """The URL tokens of a message are found in one pass (the expression, tried at each
    letter of a long run, took 20 s for a 32,000-letter host: helper-115); what they are
    is still the expression's: it is the oracle, over any text of the characters that
    decide a token's start and end (scheme characters, `:` and `/`, ASCII and other
    white space, letters that fold to ASCII ones, `postgres` in any case)."""
    from cicd_db.redaction import _URL_TOKEN, url_tokens

    assert list(url_tokens(text)) == [(m.start(), m.group()) for m in re.finditer(_URL_TOKEN, text)]


def test_another_programs_output_hides_what_follows_any_key_that_names_a_secret() -> None:
    """Pulumi's stderr (redact_output): a key that names a secret, alone or in a longer
    name (`PULUMI_ACCESS_TOKEN`, `client_secret`, `AWS_SECRET_ACCESS_KEY`: helper-116),
    hides its value, quoted or not, on its own line only."""
    said = (
        "PULUMI_ACCESS_TOKEN=pul-abc123 client_secret=s3cr3t db_password: 'x y' "
        "AWS_SECRET_ACCESS_KEY=k3y x-token=t0k password:\nnext line; tokens are fine"
    )
    assert redaction.redact_output(said) == (
        "PULUMI_ACCESS_TOKEN=*** client_secret=*** db_password: *** "
        "AWS_SECRET_ACCESS_KEY=*** x-token=*** password:\nnext line; tokens are fine"
    )
