"""Apply the migrations of db/migrations: `python scripts/migrate.py --stack dev`.

The same command as `cicd-db migrate`; see `python scripts/migrate.py --help`.
"""

import sys

try:
    from cicd_db.entry import migrate_main
except ModuleNotFoundError as missing:
    sys.exit(
        f"error: {missing.name} is not installed; run `make install` and use .venv/bin/python "
        "(or activate .venv)"
    )

sys.exit(migrate_main())
