"""psql's lexical rules as patterns: identifiers (which may hold `$`), standard and
escaped strings, dollar quotes, comments, psql variables; the token pattern the
scanner walks, one for each setting of standard_conforming_strings."""

from __future__ import annotations

import re

_IDENT_START = rb"A-Za-z\x80-\xff_"
_IDENT_CONT = rb"A-Za-z\x80-\xff_0-9$"
_NOT_AFTER_IDENT = rb"(?<![" + _IDENT_CONT + rb"])"

# What can hide a semicolon or end a statement, a quoted thing matched whole (one
# step for a string). Words are matched only while they matter (the first four of
# a statement, and inside a function definition); elsewhere parentheses between
# the tokens are counted rather than matched one by one.
_ESCAPED = rb"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'"  # backslash escapes: E'...', or '...' with them on
_STANDARD = rb"'[^']*(?:''[^']*)*'"
# A dollar quote's tag, `$$` or `$name$` (tokens.py reads it too).
DOLLAR = rb"\$(?:[" + _IDENT_START + rb"][" + _IDENT_START + rb"0-9]*)?\$"
# psql reads bit, hex and Unicode-escape strings as standard strings whatever
# standard_conforming_strings says (the server refuses U&'...' when it is off).
_ALWAYS_STANDARD = _NOT_AFTER_IDENT + rb"(?:[bBxX]|[uU]&)" + _STANDARD
# psql's variable syntax (psqlscan.l): `:name`, `:'name'`, `:"name"`, `:{?name}`,
# a name of letters, digits, `_` and any non-ASCII byte; `::` is a cast, never one.
_VARIABLE_CHAR = rb"[A-Za-z\x80-\xff_0-9]"
_VARIABLE = (
    rb"(?P<typecast>::)"
    rb"|(?P<variable>:(?:" + _VARIABLE_CHAR + rb"+|'" + _VARIABLE_CHAR + rb"+'"
    rb'|"' + _VARIABLE_CHAR + rb'+"|\{\?' + _VARIABLE_CHAR + rb"+\}))"
)
# The variables psql 15 and 18 define themselves (`\set` after a query and an error,
# plus SERVICE): psql replaces `:DBNAME` with its value before the server sees it.
PSQL_VARIABLES = frozenset(
    [
        "AUTOCOMMIT",
        "COMP_KEYWORD_CASE",
        "DBNAME",
        "ECHO",
        "ECHO_HIDDEN",
        "ENCODING",
        "ERROR",
        "FETCH_COUNT",
        "HIDE_TABLEAM",
        "HIDE_TOAST_COMPRESSION",
        "HISTCONTROL",
        "HISTSIZE",
        "HOST",
        "IGNOREEOF",
        "LAST_ERROR_MESSAGE",
        "LAST_ERROR_SQLSTATE",
        "ON_ERROR_ROLLBACK",
        "ON_ERROR_STOP",
        "PIPELINE_COMMAND_COUNT",
        "PIPELINE_RESULT_COUNT",
        "PIPELINE_SYNC_COUNT",
        "PORT",
        "PROMPT1",
        "PROMPT2",
        "PROMPT3",
        "QUIET",
        "ROW_COUNT",
        "SERVER_VERSION_NAME",
        "SERVER_VERSION_NUM",
        "SERVICE",
        "SHOW_ALL_RESULTS",
        "SHOW_CONTEXT",
        "SINGLELINE",
        "SINGLESTEP",
        "SQLSTATE",
        "USER",
        "VERBOSITY",
        "VERSION",
        "VERSION_NAME",
        "VERSION_NUM",
        "WATCH_INTERVAL",
    ]
)


def _tokens(standard_strings: bool, words: bool) -> re.Pattern[bytes]:
    string = _STANDARD if standard_strings else _ESCAPED
    pattern = (
        rb"(?P<line>--[^\n\r]*)"  # psql and the server end a comment at \r as at \n
        rb"|(?P<block>/\*)"
        rb"|(?P<quoted>"
        + _NOT_AFTER_IDENT
        + rb"[eE]"
        + _ESCAPED
        + rb"|"
        + _ALWAYS_STANDARD
        + rb"|"
        + string
        + rb'|"[^"]*(?:""[^"]*)*")'
        rb"|(?P<unterminated>['\"])"
        rb"|(?P<dollar>" + _NOT_AFTER_IDENT + DOLLAR + rb")"
        rb"|(?P<semicolon>;)"
        rb"|(?P<backslash>\\)"
        rb"|" + _VARIABLE
    )
    if words:
        pattern += (
            rb"|(?P<open>\()|(?P<close>\))|(?P<bracket>\[)|(?P<unbracket>\])"
            rb"|(?P<word>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)"
        )
    return re.compile(pattern, re.DOTALL)


class _Patterns(dict[tuple[bool, bool], re.Pattern[bytes]]):
    """The token patterns by (standard strings, words), each compiled when first needed:
    a run usually reads strings one way only, and every process start pays for a compile."""

    def __missing__(self, key: tuple[bool, bool]) -> re.Pattern[bytes]:
        self[key] = pattern = _tokens(*key)
        return pattern


PATTERNS = _Patterns()
PARENTHESES = re.compile(rb"[()]")
BRACKETS = re.compile(rb"[\[\]]")
# Up to four words at a statement's start, when only spaces come between them;
# a word right before a quote may be a string's prefix (E'...'), so it stops there.
_WORD = rb"((?>[" + _IDENT_START + rb"][" + _IDENT_CONT + rb"]*)(?!'))"
LEADING_WORDS = re.compile(
    rb"\s*" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb"(?:\s+" + _WORD + rb")?)?)?"
)
BLOCK_EDGE = re.compile(rb"/\*|\*/")
# What makes the server go on with a string after its closing quote: spaces (and
# `--` comments) holding a line's end, then a quote (its lexer's quotecontinue).
CONTINUATION = re.compile(
    rb"(?:[ \t\f\v]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*+[\n\r])*+'"
)
STANDARD_STRING = re.compile(_STANDARD, re.DOTALL)
ESCAPED_STRING = re.compile(_ESCAPED, re.DOTALL)
NOT_SPACE = re.compile(rb"\S")
# The server reads FROM STDOUT as FROM STDIN.
COPY_FROM_STDIN = re.compile(rb"\bFROM\s+STD(?:IN|OUT)\b", re.IGNORECASE)
# Only standard_conforming_strings changes where psql and the server end a string
# (backslash_quote only makes the server refuse `\\'`, as an error).
LEXING_SETTINGS = re.compile(rb"standard_conforming_strings", re.IGNORECASE)
FUNCTION_WORDS = frozenset({"FUNCTION", "PROCEDURE"})
WORDS_KEPT = 4
