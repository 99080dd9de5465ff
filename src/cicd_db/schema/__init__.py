"""Schemas: what one holds, read from the catalogs (catalog.py), two compared (drift.py),
and one dumped as SQL (dumping.py).

Used by `migrate baseline` (is the live schema what the migrations would make?),
`schema diff` (drift between a database and the migrations, or two databases),
`schema dump` (the schema as SQL, through pg_dump) and the tests (does the
upgrade path end where the fresh path does?). Reads only.
"""

from __future__ import annotations

from cicd_db.schema.catalog import HISTORY_TABLE, Key, Signature, signature
from cicd_db.schema.drift import Difference, compare, current_schema, scratch_path
from cicd_db.schema.dumping import dump

__all__ = [
    "HISTORY_TABLE",
    "Difference",
    "Key",
    "Signature",
    "compare",
    "current_schema",
    "dump",
    "scratch_path",
    "signature",
]
