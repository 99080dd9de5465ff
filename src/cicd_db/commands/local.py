"""`init-local`: a local PostgreSQL made ready for cicd-db (roles, database, grants)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from cicd_db import console, outputs, targets
from cicd_db.commands.context import Context
from cicd_db.redaction import password_candidates
from cicd_db.settings import APP_USER, LOCAL_DATABASE, LOCAL_USER, READER_USER, from_url

if TYPE_CHECKING:
    from cicd_db.local import Prepared


def init_local(
    ctx: Context,
    *,
    admin_url: str,
    password: str | None = None,
    show_password: bool = False,
    app_password: str | None = None,
    reader_password: str | None = None,
    user: str = LOCAL_USER,
    database: str = LOCAL_DATABASE,
) -> int:
    """`init-local`: `user` and `database` (ci_user, ci_local), the writer ci_app and the
    reader ci_reader on a server you installed, through `admin_url`; each password given,
    else one is generated for a new role."""
    from cicd_db import local

    ctx.secrets += [
        *password_candidates(admin_url),
        password or "",
        app_password or "",
        reader_password or "",
    ]
    admin = from_url(admin_url, what="--admin-url")
    ctx.secrets += admin.secrets()
    with targets.connect(admin, named_by="admin_url") as conn:
        # The URL printed names the host (a socket's folder too) and port libpq used,
        # also when they came from PGHOST, PGPORT or a service file.
        server = admin.in_use(conn.info)
        local.init(
            conn,
            server,
            password,
            user=user,
            database=database,
            app_password=app_password,
            reader_password=reader_password,
            # Shown before init() takes the roles for finished: a run killed or cut off
            # first (a full disk, a closed pipe) leaves them marked, and the next run
            # resets the passwords nobody saw.
            show=lambda prepared: _show(
                ctx,
                prepared,
                password=password,
                show_password=show_password,
                given=tuple(
                    role
                    for role, value in ((APP_USER, app_password), (READER_USER, reader_password))
                    if value
                ),
            ),
        )
    return 0


def _show(
    ctx: Context,
    prepared: Prepared,
    *,
    password: str | None,
    show_password: bool,
    given: tuple[str, ...] = (),
) -> None:
    """What init-local made: a line (or JSON), a line for each of the writer and the
    reader whose password was `given`, the owner's URL, and a note for each generated
    password not shown; written out before it returns."""
    ctx.secrets += [role.password for role in (prepared.app, prepared.reader) if role]
    url = prepared.settings.url() if show_password else prepared.settings.redacted_url()
    shown = console.local_json(prepared, url, show_password=show_password)
    ctx.show(
        shown,
        lambda: [
            console.local_line(prepared),
            *(f"role {r}: password set as given" for r in given),
        ],
    )
    if not ctx.json:
        print(url)
    if (prepared.created_role or prepared.password_reset) and not password and not show_password:
        print(
            f"note: {prepared.settings.user} got a generated password, not shown; run again "
            "with --password to set one you know",
            file=sys.stderr,
        )
    for role in () if show_password else prepared.generated:
        flag = "--app-password" if role == APP_USER else "--reader-password"
        print(
            f"note: {role} got a generated password, not shown; run again with {flag} to set "
            "one you know",
            file=sys.stderr,
        )
    sys.stdout.flush()
    if outputs.lost_output is not None:  # not shown: the next run resets what nobody saw
        raise outputs.lost_output
