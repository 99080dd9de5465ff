"""Reading a migration file the way psql reads it: where statements end, what is not SQL.

The runner does not decide what a statement means; PostgreSQL's parser does,
since a transactional file is sent to the server whole (docs/design.md). This
scanner only finds what the server cannot be sent or what the runner must
know, following the rules of psql's own lexer:

- where each statement ends: a `;` outside quotes, comments and parentheses,
  and outside a SQL-standard function body (`CREATE FUNCTION ... BEGIN ATOMIC
  ... END`, with `CASE ... END` inside it);
- `COPY ... FROM STDIN` and the data lines after it, up to a line `\\.`;
- psql meta-commands (a backslash outside quotes), which are not SQL;
- psql variables (`:name`, `:'name'`, `:"name"`, `:{?name}` outside quotes and
  comments) that psql would substitute, or that cannot be SQL where they stand.

Lexical rules, as psql has them: an unquoted identifier may hold `$`
(`do$llar$s` is one word, not a dollar quote); `'...'` strings take backslash
escapes only when `standard_conforming_strings` is off, `E'...'` always;
`"quoted identifiers"`; `$tag$` dollar quotes; `--` and nested `/* */` comments;
`B'...'`, `X'...'` and `U&'...'` are read as standard strings whatever the setting.

It reads bytes, so a 50 MB file costs one pass and no copy, and keeps line
numbers as it goes. Reads its input only; never talks to a server.

The package: lexer.py (the patterns), scanner.py (Scanner and the pieces it yields;
comments), session.py (what a statement changes of how the next is read), tokens.py (a
statement's tokens, for the few whose words alone do not tell what they are).
"""

from cicd_db.sqltext.lexer import PSQL_VARIABLES, WORDS_KEPT
from cicd_db.sqltext.scanner import (
    CopyData,
    CopyFromStdin,
    MetaCommand,
    Piece,
    Scanner,
    Statement,
    leading_comments,
    without_comments,
)
from cicd_db.sqltext.session import (
    found_lowered,
    may_change_lexing,
    names_a_receipt_setting,
    standard_strings_after,
)

__all__ = [
    "PSQL_VARIABLES",
    "WORDS_KEPT",
    "CopyData",
    "CopyFromStdin",
    "MetaCommand",
    "Piece",
    "Scanner",
    "Statement",
    "found_lowered",
    "leading_comments",
    "may_change_lexing",
    "names_a_receipt_setting",
    "standard_strings_after",
    "without_comments",
]
