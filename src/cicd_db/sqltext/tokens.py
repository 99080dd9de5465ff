"""A statement's tokens, read as PostgreSQL's lexer reads them, closely enough to tell
a keyword from a quoted name and to read an option's value: what the runner needs to
know of the few statements whose words alone do not say whether PostgreSQL runs them
in a transaction (migrations/kinds.py).

Comments are taken out first (`without_comments`). Strings in every form PostgreSQL
takes: '...' (backslash escapes only with standard_conforming_strings off), E'...'
(always), U&'...' (Unicode escapes, UESCAPE too), B'...' and X'...', $tag$...$tag$, and
a '...' continued by another after a line's end ('a'<newline>'b' is 'ab'). Quoted names
"..." and U&"...". Numbers: decimal, and (PostgreSQL 16) 0x, 0o, 0b, with underscores.
Keywords fold to upper case in ASCII only, as PostgreSQL folds them.
"""

from __future__ import annotations

import re

from cicd_db.sqltext.lexer import CONTINUATION, DOLLAR

# A token: its kind and its text. "word": upper-cased; "name": a quoted name's text;
# "string": a string's text, in any of its forms; "number": as written; "other": one
# character.
Token = tuple[str, str]

# A string's body, by the kind of string, up to its closing quote (never closed: to the end).
_ESCAPED = rb"(?:[^'\\]|\\.|'')*"
_STANDARD = rb"(?:[^']|'')*"
_DOUBLED = rb'(?:[^"]|"")*'


def _pattern(standard_strings: bool) -> re.Pattern[bytes]:
    plain = _STANDARD if standard_strings else _ESCAPED
    return re.compile(
        rb"\s*(?:(?P<dollar>" + DOLLAR + rb")"
        rb"|[Ee]'(?P<escaped>" + _ESCAPED + rb")'?"
        rb"|[Uu]&'(?P<unicode>" + _STANDARD + rb")'?"
        rb"|[BbXx]'(?P<bits>" + _STANDARD + rb")'?"
        rb"|[Nn]?'(?P<string>" + plain + rb")'?"
        rb'|[Uu]&"(?P<unicode_name>' + _DOUBLED + rb')"?'
        rb'|"(?P<name>' + _DOUBLED + rb')"?'
        rb"|(?P<number>0[Xx](?:_?[0-9A-Fa-f])+|0[Oo](?:_?[0-7])+|0[Bb](?:_?[01])+"
        rb"|(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[Ee][-+]?\d+)?)"
        rb"|(?P<word>[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)"
        rb"|(?P<other>\S))",
        re.DOTALL,
    )


_PATTERNS = {standard: _pattern(standard) for standard in (True, False)}
# A '...' string going on after its closing quote (the lexer's CONTINUATION), its next
# part read as the string's own kind: by (kind, standard_conforming_strings).
_CONTINUED = {
    (kind, standard): re.compile(CONTINUATION.pattern + b"(" + body + b")'?", re.DOTALL)
    for standard in (True, False)
    for kind, body in (
        ("escaped", _ESCAPED),
        ("unicode", _STANDARD),
        ("bits", _STANDARD),
        ("string", _STANDARD if standard else _ESCAPED),
    )
}
_UESCAPE = re.compile(rb"\s*UESCAPE\s*'([^'])'", re.IGNORECASE)
_KINDS = {"escaped": "string", "unicode": "string", "bits": "string", "unicode_name": "name"}


def tokens(text: bytes, *, standard_strings: bool = True) -> list[Token]:
    """The tokens of `text`, a statement without its comments; a string or a quoted name
    never closed runs to the end."""
    pattern = _PATTERNS[standard_strings]
    read: list[Token] = []
    position = 0
    while match := pattern.match(text, position):
        kind = match.lastgroup or "other"
        value = match[kind]
        position = match.end()
        if kind == "dollar":  # the string runs to the same tag
            close = text.find(value, position)
            end = len(text) if close < 0 else close
            read.append(("string", _text(text[position:end])))
            position = end + len(value)
            continue
        if (kind, standard_strings) in _CONTINUED:
            parts = [_part(kind, value, standard_strings)]
            while continued := _CONTINUED[kind, standard_strings].match(text, position):
                parts.append(_part(kind, continued[1], standard_strings))
                position = continued.end()
            value = b"".join(parts)
        if kind in ("unicode", "unicode_name"):
            escape = b"\\"
            if uescape := _UESCAPE.match(text, position):
                escape, position = uescape[1], uescape.end()
            quote = b"'" if kind == "unicode" else b'"'
            value = _unicode(value.replace(quote * 2, quote), escape)
        elif kind == "name":
            value = value.replace(b'""', b'"')
        elif kind == "word":
            value = value.upper()  # bytes: ASCII letters only, as PostgreSQL folds them
        read.append((_KINDS.get(kind, kind), _text(value)))
    return read


def _part(kind: str, body: bytes, standard_strings: bool) -> bytes:
    """One part of a string, its escapes read: E'...' always, '...' with standard
    strings off; U&'...' is read once whole (its escapes, UESCAPE's)."""
    if kind == "escaped" or (kind == "string" and not standard_strings):
        return _unescaped(body)
    return body if kind == "unicode" else body.replace(b"''", b"'")


def number(text: str) -> float:
    """A "number" token's value."""
    plain = text.replace("_", "").lower()
    return int(plain, 0) if plain[1:2] in ("x", "o", "b") else float(plain)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _character(code: int) -> bytes:
    return chr(min(code, 0x10FFFF)).encode("utf-8", "surrogatepass")


_ESCAPE = re.compile(
    rb"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)|''", re.DOTALL
)
_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescaped(value: bytes) -> bytes:
    """An E'...' string's text: its backslash escapes and doubled quotes read."""

    def one(match: re.Match[bytes]) -> bytes:
        escape = match[1]
        if escape is None:
            return b"'"
        if len(escape) > 1 and escape[:1] in (b"u", b"U"):
            return _character(int(escape[1:], 16))
        if len(escape) > 1 and escape[:1] == b"x":
            return bytes([int(escape[1:], 16)])
        if escape[:1] in b"01234567":
            return bytes([int(escape, 8) & 0xFF])
        return _ESCAPES.get(escape, escape)

    return _ESCAPE.sub(one, value)


def _unicode(value: bytes, escape: bytes) -> bytes:
    """A U&'...' string's or U&"..." name's text: `escape` then 4 hexadecimal digits, or
    `escape` + then 6, is a character; `escape` twice is itself."""
    mark = re.escape(escape)
    found = re.compile(mark + rb"(?:\+([0-9A-Fa-f]{6})|([0-9A-Fa-f]{4})|" + mark + rb")")

    def one(match: re.Match[bytes]) -> bytes:
        code = match[1] or match[2]
        return escape if code is None else _character(int(code, 16))

    return found.sub(one, value)
