"""Finding passwords in text before it is printed: in URLs (well formed or not), in
`password=` keywords, in a user name a password was typed into, and any secret known.

`redact` is the one function every URL or message passes through before it is shown;
`mask_credentials` shows a URL with its secrets masked, or says it cannot be shown.
Pure functions over strings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from urllib.parse import unquote

from cicd_db.libpq import SECRET_KEYWORDS, is_port, libpq_keywords, misspelt_keyword

_QUERY_KEY = re.compile(r"[?&](?P<key>[^=&?#]*)=")


def _secret_values(text: str) -> list[int]:
    """Where a secret starts in `text`'s query (keys decoded): the value of each secret
    keyword, what follows a separator in a `user=` value (`?user=u:pw`), and in a host's
    before its '@' (`?host=u:pw@db`, `?hostaddr=...`: a user name and password typed in)."""
    starts = []
    for match in _QUERY_KEY.finditer(text):
        key = unquote(match["key"]).lower()
        if key in SECRET_KEYWORDS:
            starts.append(match.end())
        elif key in ("user", "host", "hostaddr"):
            userinfo = _value(text[match.end() :])
            if key != "user":  # a socket directory is a path: its '@' is the path's
                socket = unquote(userinfo, errors="replace").startswith("/")
                userinfo = "" if socket else userinfo[: _last_at(userinfo)]
            shown, secret = _split_userinfo(userinfo)
            if secret:
                starts.append(match.end() + len(shown))
    return sorted(starts)


def _value(text: str) -> str:
    """A query parameter's value as libpq reads it: up to the next `&` or `#`."""
    return re.split(r"[&#]", text, maxsplit=1)[0]


def _last_at(text: str) -> int:
    """Where the last '@' of `text` is, raw or percent-encoded; 0 for none."""
    return max(text.rfind("@"), text.lower().rfind("%40"), 0)


# A secret's value is hidden to the end of the text: one holding a raw `&` or `#`
# would otherwise show its rest as another parameter or a fragment.

# A query's parameter, wherever `?` or `&` starts one (a password may hold either:
# then more is hidden, never less).
_QUERY_PART = re.compile(r"[?&](?P<key>[^=&?#]*)(?P<value>=[^&#]*)?")


def _query_secrets(text: str) -> list[tuple[int, int]]:
    """The spans of `text` that are hidden in its query parameters: a secret keyword's
    value (and a `user=` value's part after a separator) to the end of the text; an
    unknown parameter whole (`?pwd=...`, `?password:...` may be a password), or its
    value alone when its name misspells a keyword. libpq's own, non-secret ones show."""
    spans = [(start, len(text)) for start in _secret_values(text)]
    for match in _QUERY_PART.finditer(text):
        key = unquote(match["key"], errors="replace")
        if key in libpq_keywords() or key.lower() in SECRET_KEYWORDS | {"user"}:
            continue  # shown, or hidden from where _secret_values says
        if not misspelt_keyword(key):
            spans.append((match.start() + 1, match.end()))  # name and value
        elif match["value"]:
            spans.append((match.start("value") + 1, match.end()))  # the value alone
    return spans


# A scheme: `anything://`, or postgres(ql) with one slash too (a slash forgotten); not
# `user:/...`, where the slash may be a password's.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://+|postgres(?:ql)?:/+", re.I)


def _only_ports(rest: str) -> bool:
    """Whether what follows the first ':' of a URL without an '@' may be shown: ports
    (1 to 65535, one per host, comma-separated) up to the end of the host part. Anything
    else there may be a password that lost its '@' (`postgresql://ci:Sekr3t127.0.0.1/db`,
    `ci:00000,000000...`), and is hidden; so are the hosts after the first of a
    multi-host URL with ports and no user (`h1:5432,h2:5433`)."""
    # libpq ends the host part at a '/' or '?' only: a '#' is no fragment to it.
    authority = re.match(r"[^/?]*", rest)
    pieces = authority.group().split(",") if authority else []
    # A database name after those ports that holds a ':' or a '/' is what a password
    # that starts as a port does makes of the host after it (`ci:5432/Sekr3t127.0.0.1:1/db`
    # reads as port 5432 and database `Sekr3t127.0.0.1:1/db`); a real name seldom does.
    database = rest[authority.end() if authority else 0 :].partition("?")[0]
    # `ci:/...`: no port at all after the ':' is what a password starting with '/' makes.
    return (
        any(pieces)
        and all(piece == "" or is_port(piece) for piece in pieces)
        and not any(mark in database[1:] for mark in ":/")
    )


def mask_credentials(text: str) -> str | None:
    """`text` with whatever stands where a URL's password would be masked.

    Works on text that is not a well-formed URL too (one slash, a raw `@` or space
    in the password): everything between the user name and the last `@` is hidden;
    without any `@`, whatever follows a `:` in the part after the scheme, unless it
    is a port (digits); and the query's secret and unknown parameters
    (`_query_secrets`). Where a password's `?` or `&` makes two readings possible,
    what either hides is hidden. Text without a scheme may be a password by itself,
    or one holding an `@`: then None, and the caller must not show it.
    """
    spans = _credential_spans(text)
    if spans is None:
        return None
    hidden = [False] * len(text)
    for begin, end in spans:
        _mark(hidden, begin, end)
    return _shown_with(text, hidden)


def _credential_spans(text: str) -> list[tuple[int, int]] | None:
    """The spans `mask_credentials` hides in `text`; None where it shows nothing."""
    scheme = _SCHEME.match(text)
    if scheme is None:
        return None  # no scheme: it may be a password alone, or one with an @ in it
    spans = _query_secrets(text)
    at = text.rfind("@")
    if at < 0:
        if "://" not in text:
            return None
        colon = text.find(":", scheme.end())
        # Ports (digits, one per host) that end the authority: anything else after a
        # colon may be a password missing its @, as password_candidates reads it.
        if colon >= 0 and not _only_ports(text[colon + 1 :]):
            spans.append((colon + 1, len(text)))
    else:
        start = scheme.end() if scheme.end() <= at else 0
        user, secret = _split_userinfo(text[start:at])
        if secret:
            spans.append((start + len(user), at))
    return spans


def _shown_with(text: str, hidden: list[bool]) -> str:
    """`text` with each run of its hidden characters as one "***"."""
    return "".join(
        "***" if hide else "".join(character for character, _ in run)
        for hide, run in groupby(zip(text, hidden, strict=True), key=itemgetter(1))
    )


# What ends a user name where a password may follow: the ':' of the URL's form, and
# what a slip of the finger puts there instead (`u?pw@h`, `u/pw@h`, `u;pw@h`, ...).
# Not '@': user names such as `me@server` (Azure's) are shown, up to their ':'.
_USER_SEPARATORS = frozenset(":/?#[];,!=&|\\")


def _ends_user(character: str) -> bool:
    """A character after which the rest of a user name may be a password: a separator,
    or a character that stands for one in another width (a full-width colon or at sign,
    as a keyboard in full-width mode types them). Nothing else: a role may be named
    `ci user`, `José` (decomposed or not), `O\u2019Brien` (a typographic apostrophe),
    `Col·lectiu` or `ジョン・スミス`,
    and its pieces would be hidden from every message that names it."""
    if character.isascii():
        return character in _USER_SEPARATORS
    return unicodedata.normalize("NFKC", character) in _USER_SEPARATORS | {"@"}


def _split_userinfo(userinfo: str) -> tuple[str, str]:
    """A URL's text before its last '@' as (what may be shown, what may be a password).

    The user name shows up to the first character that may separate it from a
    password, that character included; the rest may be one: with a '?' typed for
    the ':' (`prof?Sekr3t@h`) libpq reads no password, but the user meant one. A
    percent-escape of such a character counts too (`u%3Apw`: libpq decodes it into
    the user name, and prints that). Escapes of bytes that are not ASCII are read
    together, as the UTF-8 character they make (`J%C3%BCrgen` is a name, `u%EF%BC%9Apw`
    a full-width colon); bytes that make no character may be a password.
    """
    for escapes in _ESCAPED_OR_CHARACTER.finditer(userinfo):
        if escapes.group("character") is not None:
            if _ends_user(escapes.group("character")):
                return userinfo[: escapes.end()], userinfo[escapes.end() :]
            continue
        raw = bytes.fromhex(escapes.group().replace("%", ""))
        try:
            decoded = raw.decode()
        except UnicodeDecodeError:
            return userinfo[: escapes.end()], userinfo[escapes.end() :]
        # Where the first character that ends the user name ends, among the escapes.
        length = 0
        for character in decoded:
            length += len(character.encode())
            if _ends_user(character):
                end = escapes.start() + 3 * length
                return userinfo[:end], userinfo[end:]
    return userinfo, ""


# A run of percent-escapes, or one character that is not one.
_ESCAPED_OR_CHARACTER = re.compile(r"(?:%[0-9A-Fa-f]{2})+|(?P<character>.)", re.S)


def _user_name_secret(user: str) -> str:
    """What follows a separator in a user name as libpq decoded it (`u:pw` from
    `u%3Apw`): a password typed into the user name, which libpq prints in its messages."""
    for index, character in enumerate(user):
        if _ends_user(character):
            return user[index + 1 :]
    return ""


def user_name_secrets(user: str) -> list[str]:
    """What of a user name may be a password typed into it (`u:pw`), for `redact`."""
    return _pieces(_user_name_secret(user))


def host_secrets(hosts: str) -> list[str]:
    """What of a host list may be a password typed into it with a user name
    (`u:pw@db.example.com`, as PGHOST, PGHOSTADDR or a service file's `host` may hold,
    where libpq reads it as a host name and prints it): each host's text before its
    last '@', after its user name, for `redact`. A socket directory is a path: its
    '@' is the path's."""
    found: list[str] = []
    # Each host, and the list whole (a ',' in the password splits it into two hosts).
    for host in [hosts, *hosts.split(",")]:
        at = host.rfind("@")
        if at > 0 and not host.startswith("/"):
            secret = _split_userinfo(host[:at])[1]
            found += _pieces(secret) + secret.split(",")  # each a host libpq names
    return [secret for secret in dict.fromkeys(found) if secret]


def _pieces(secret: str) -> list[str]:
    """A secret, decoded as libpq would print it, and its pieces between the characters
    that end a URL's parts (a password with a raw `/` or `?` is read as host or port)."""
    if not secret:
        return []
    decoded = unquote(secret, errors="replace")
    pieces = [secret, decoded]
    for text in dict.fromkeys([secret, decoded]):
        pieces += re.split(r"[@/?#:&=,\[\]\s]+", text)
    return [piece for piece in dict.fromkeys(pieces) if piece]


def password_candidates(text: str | None) -> list[str]:
    """What in `text` may be a password, for `redact`, even when `text` is no valid URL:
    the whole, and its pieces between the characters that end a URL's parts (a
    password with a raw `/` or `?` is read by libpq as host, port or database)."""
    if not text:
        return []
    text = text.strip()
    # What the query hides (a secret keyword's value, an unknown parameter), as found in
    # the text as given: a URL cut at a space, or at an '@' of its query, is no longer
    # read as having that query where the text is printed.
    secrets = [text[begin:end] for begin, end in _query_secrets(text) if begin < end]
    # ... and each as libpq reads it, to the next parameter (`?user=u:pw&sslmode=...`
    # is the user name `u:pw`, which the server's refusal quotes), decoded.
    # A host's, to its '@' (`?host=u:pw@db`: libpq quotes the host).
    for secret in list(secrets):
        for part in (_value(secret), secret[: _last_at(secret)]):
            if part and part != secret:
                secrets += dict.fromkeys([part, unquote(part, errors="replace")])
    at = text.rfind("@")
    scheme = _SCHEME.match(text)
    if at < 0:
        if not (scheme and "://" in text):
            return [text, *secrets]
        # As mask_credentials: after a ':', a port (digits) is no password.
        secret = text[scheme.end() :].partition(":")[2]
        if _only_ports(secret):
            secret = ""
    else:
        start = scheme.end() if scheme and scheme.end() <= at else 0
        secret = _split_userinfo(text[start:at])[1]
    secrets += _pieces(secret)
    return [value for value in secrets if value]


# A URL in a message, to the next white space: masked as mask_credentials masks it (the
# password up to the token's last '@', so one with a raw '@' is hidden whole; a
# separator of another width; a password that lost its '@'; the query's secrets).
# Compiled when first used (re keeps them): a command that prints no URL and no error
# does not pay for them at start-up.
_URL_TOKEN = rf"(?ia)(?:{_SCHEME.pattern})\S*"  # ASCII space ends it
# A keyword's value: quoted (in either quote mark), or up to white space or an &.
_KEYWORD_VALUE = r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&]+)"
_KEYWORD_PASSWORD = (
    r"(?i)(?P<head>\bpassword\s*=\s*)"
    + _KEYWORD_VALUE
    # A quoted value after the word, as a tool's message, JSON or a Python dict quotes it:
    # `password "x"`, `"password": "x"`, `{'password': 'x'}`, `password: 'x'`, or right
    # after it (`password"x"`). The word alone, as in "password authentication failed",
    # is left, and so is prose that owns or quotes it (`the password's characters`,
    # `'password' is missing ... the server's`, `the 'password'.`): read as a quoted
    # value, such a line was cut to its next apostrophe.
    + r"|(?P<head2>\bpassword\b(?:[\"']?(?:\s*[:=]\s*|\s+)|(?!'s\b)(?=[\"'][^\s:=,.;)]))"
    r")(?P<quote>[\"'])(?:(?!(?P=quote))[^\\]|\\.)*(?P=quote)"
)


_OTHER_KEYWORDS = r"(?i)\b(?:sslpassword|passwd|pwd)\s*=\s*" + _KEYWORD_VALUE


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide every password in `text`: in URLs, in `password=` keywords, and any of `secrets`.

    The one function every URL or message passes through before it is printed. Each
    way of finding a password marks what it finds in the text as given, and all that
    any of them marks is hidden: one never cuts what another would have found. The
    URLs and keywords are read twice, in the text as given and with the known secrets
    taken out (a secret's space or `@` can break a URL's shape either way).
    """
    hidden = [False] * len(text)
    # Each known secret, also as a message may quote it (repr escapes backslashes and
    # controls), wherever it occurs, overlapping ones included.
    for secret in {s for s in secrets if s and len(s) >= 3}:
        for shown in dict.fromkeys([secret, repr(secret)[1:-1], secret.replace("\\", "\\\\")]):
            start = text.find(shown)
            while start >= 0:
                _mark(hidden, start, start + len(shown))
                start = text.find(shown, start + 1)
    # The text with the secrets taken out, and where each of its characters came from.
    reading, origin = [], []
    for hide, run in groupby(enumerate(hidden), key=itemgetter(1)):
        places = [index for index, _ in run]
        if hide:
            reading.append("***")
            origin += [(places[0], places[-1] + 1)] * 3
        else:
            reading.append(text[places[0] : places[-1] + 1])
            origin += [(index, index + 1) for index in places]
    found = []
    for begin, end in _password_spans(text):
        _mark(hidden, begin, end)
        found.append(text[begin:end])
    for begin, end in _password_spans("".join(reading)):
        for first, last in origin[begin:end]:
            _mark(hidden, first, last)
    # What a reading found is a password wherever else the text quotes it as a word (a
    # tool's message that names a URL and then its password alone: `... (Twice888)`);
    # not inside another word (`postgres` in `postgresql://`), and for a few only: a
    # text of thousands would be searched as many times.
    again = {part for part in found if len(part) >= 4}
    for secret in again if len(again) <= 16 else ():
        for match in re.finditer(rf"(?<!\w){re.escape(secret)}(?!\w)", text):
            _mark(hidden, match.start(), match.end())
    return _shown_with(text, hidden)


# A value after a key that names a secret, quoted or not: `password: x`, `token=x`. Too
# eager for cicd-db's own messages (`the password: @ as %40`), it is for what another
# program wrote, which may say anything (Pulumi's stderr).
_KEYED_SECRET = re.compile(
    r"(?i)(?<![a-z0-9])(?:[\w-]*[_-])?(?:(?:ssl)?pass(?:word|wd|phrase)|pwd|secret|token)"
    r"(?:[_-][\w-]*?)?(?![a-z0-9])[\"']?[ \t]*[:=][ \t]*(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;)]+)"
)


def redact_output(text: str, secrets: Iterable[str] = ()) -> str:
    """`redact`, and every value after a key that names a secret (`password: x`,
    `token=x`): for another program's output, quoted in a message."""
    shown = redact(text, secrets)
    return _KEYED_SECRET.sub(lambda m: m.group()[: m.start("value") - m.start()] + "***", shown)


def _mark(hidden: list[bool], begin: int, end: int) -> None:
    """Mark `begin` to `end` of a text hidden (`hidden` has a flag for each character)."""
    hidden[begin:end] = [True] * (end - begin)


_SCHEME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_ASCII_SPACE = re.compile(r"(?a)\s")


def url_tokens(text: str) -> Iterator[tuple[int, str]]:
    """Where each URL token of `text` starts, and the token: what `re.finditer(_URL_TOKEN,
    text)` finds, found in one pass. The expression, tried at each letter of a long run
    of them (a 32,000-letter host in a message), read the run again from each: 20 s,
    quadratic. Here a scheme is a letter and the scheme characters after it, up to `://`
    (the longest such run from there, as the expression's greedy reading takes it), or
    `postgres:/`/`postgresql:/`; the token runs to the next ASCII white space."""
    if ":/" not in text:
        return
    size = len(text)
    run_end = [size] * (size + 1)  # where the run of scheme characters from each place ends
    for place in range(size - 1, -1, -1):
        run_end[place] = run_end[place + 1] if text[place] in _SCHEME_CHARACTERS else place
    place = 0
    while place < size:
        char = text[place]
        lowered = text[place : place + 12].lower()
        if (char.isascii() and char.isalpha() and text.startswith("://", run_end[place])) or (
            lowered.startswith("postgres") and (lowered[8:12] == "ql:/" or lowered[8:10] == ":/")
        ):
            space = _ASCII_SPACE.search(text, place)
            end = space.start() if space else size
            yield place, text[place:end]
            place = end
        else:
            place += 1


def _password_spans(text: str) -> Iterator[tuple[int, int]]:
    """What `redact` hides in `text` of its own reading: URLs' passwords and `password=`."""
    for start, token in url_tokens(text):
        spans = _credential_spans(token)
        for begin, end in [(0, len(token))] if spans is None else spans:
            yield start + begin, start + end
    # libpq's other secret keywords and the usual misspellings, read apart: one reading
    # may not take the text another needs (`pwd=password= x`).
    for found in re.finditer(_OTHER_KEYWORDS, text):
        yield found.span("secret")
    for found in re.finditer(_KEYWORD_PASSWORD, text):
        if found["head"] is not None:
            yield found.span("secret")
        else:
            yield found.end("quote"), found.end() - 1  # inside the quotes
