"""A statement's tokens, read as PostgreSQL's lexer reads them, closely enough to tell
a keyword from a quoted name and to read an option's value: what the runner needs to
know of the few statements whose words alone do not say whether PostgreSQL runs them
in a transaction (migrations/kinds.py). Comments are taken out first
(`without_comments`); a string's backslashes escape only in E'...', or in '...' with
standard_conforming_strings off; B'...', X'...' and U&'...' are standard strings
whatever the setting.
"""

from __future__ import annotations

import re

# A token: its kind and its text. "word": upper-cased; "name": a quoted name's text;
# "string": a string's text, in any of its forms; "number": as written; "other": one
# character.
Token = tuple[str, str]


def _pattern(standard_strings: bool) -> re.Pattern[bytes]:
    plain = rb"'(?:[^']|'')*'" if standard_strings else rb"'(?:[^'\\]|\\.|'')*'"
    return re.compile(
        rb"\s*(?:(?P<dollar>\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$)"
        rb"|[Ee](?P<escaped>'(?:[^'\\]|\\.|'')*')"
        rb"|(?:[BbXx]|[Uu]&)(?P<standard>'(?:[^']|'')*')"
        rb"|[Nn]?(?P<string>" + plain + rb")"
        rb'|(?:[Uu]&)?(?P<name>"(?:[^"]|"")*")'
        # Decimal, and (PostgreSQL 16) hexadecimal, octal and binary, with underscores.
        rb"|(?P<number>0[XxOoBb][0-9A-Fa-f_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)"
        rb"(?:[Ee][-+]?\d+)?)"
        rb"|(?P<word>[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)"
        rb"|(?P<other>\S))",
        re.DOTALL,
    )


_PATTERNS = {standard: _pattern(standard) for standard in (True, False)}
_QUOTES = {"escaped": "string", "standard": "string", "string": "string", "name": "name"}


def tokens(text: bytes, *, standard_strings: bool = True) -> list[Token]:
    """The tokens of `text`, a statement without its comments; a string or a quoted name
    never closed runs to the end."""
    pattern = _PATTERNS[standard_strings]
    found: list[Token] = []
    position = 0
    while match := pattern.match(text, position):
        kind = match.lastgroup or "other"
        value = match[kind]
        position = match.end()
        if kind == "dollar":  # the string runs to the same tag
            close = text.find(value, position)
            end = len(text) if close < 0 else close
            found.append(("string", _text(text[position:end])))
            position = end + len(value)
        elif kind == "escaped" or (kind == "string" and not standard_strings):
            found.append(("string", _unescaped(value[1:-1])))
        elif kind in _QUOTES:
            quote = value[:1]
            found.append((_QUOTES[kind], _text(value[1:-1].replace(quote * 2, quote))))
        elif kind == "word":
            found.append((kind, _text(value).upper()))
        else:
            found.append((kind, _text(value)))
    return found


def number(text: str) -> float:
    """A "number" token's value."""
    plain = text.replace("_", "").lower()
    return int(plain, 0) if plain[1:2] in ("x", "o", "b") else float(plain)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


_ESCAPE = re.compile(
    rb"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)|''", re.DOTALL
)
_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescaped(value: bytes) -> str:
    """An E'...' string's text: its backslash escapes and doubled quotes read."""

    def one(match: re.Match[bytes]) -> bytes:
        escape = match[1]
        if escape is None:
            return b"'"
        if len(escape) > 1 and escape[:1] in (b"u", b"U"):
            return chr(min(int(escape[1:], 16), 0x10FFFF)).encode("utf-8", "surrogatepass")
        if len(escape) > 1 and escape[:1] == b"x":
            return bytes([int(escape[1:], 16)])
        if escape[:1] in b"01234567":
            return bytes([int(escape, 8) & 0xFF])
        return _ESCAPES.get(escape, escape)

    return _text(_ESCAPE.sub(one, value))
