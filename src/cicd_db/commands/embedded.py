"""`embedded start`, `status`, `url` and `stop`: the embedded server."""

from __future__ import annotations

from cicd_db import console, targets
from cicd_db.commands.context import Context, embedded_settings
from cicd_db.settings import LOCAL_DATABASE


def embedded_start(ctx: Context) -> int:
    """`embedded start`: the embedded server, created on first use, running, with its
    database and roles made again where they are gone (Creating.remake)."""
    remade = targets.resolve(stack=targets.EMBEDDED).embedded_server().remake()
    lines = [
        f"made again: role {role} (it was gone"
        + (
            "; the grants the migrations gave it are not made again: give them by hand, "
            "or move the state folder away to start afresh)"
            if role in remade.without_grants
            else ")"
        )
        for role in remade.roles
    ]
    if remade.database:
        lines.append(
            f"made again: database {LOCAL_DATABASE} (it was gone; empty: apply the "
            "migrations, `cicd-db migrate --stack embedded`)"
        )
    settings = embedded_settings(ctx)
    lines.append(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
    ctx.show(
        {
            "running": True,
            "port": settings.port,
            "url": settings.redacted_url(),
            "made_again": {
                "roles": list(remade.roles),
                "roles_without_grants": list(remade.without_grants),
                "database": bool(remade.database),
            },
        },
        lambda: lines,
    )
    return 0


def embedded_status(ctx: Context) -> int:
    """`embedded status`: is it running, where, on which port."""
    state = targets.resolve(stack=targets.EMBEDDED).embedded_server().status()
    ctx.show(console.embedded_json(state), lambda: [console.embedded_line(state)])
    return 0


def embedded_url(ctx: Context, *, show_password: bool = False) -> int:
    """`embedded url`: the URL of ci_local (started if need be), its password hidden
    unless `show_password`."""
    settings = embedded_settings(ctx)
    url = settings.url() if show_password else settings.redacted_url()
    ctx.show({"url": url}, lambda: [url], answer=True)
    return 0


def embedded_stop(ctx: Context) -> int:
    """`embedded stop`: the server stopped; its data stays."""
    server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
    stopped = server.stop()
    ctx.show({"stopped": stopped}, lambda: ["stopped" if stopped else "not running"])
    return 0
