"""`embedded start`, `status`, `url` and `stop`: the embedded server."""

from __future__ import annotations

from cicd_db import console, targets
from cicd_db.commands.context import Context, embedded_settings


def embedded_start(ctx: Context) -> int:
    """`embedded start`: the embedded server, created on first use, running."""
    settings = embedded_settings(ctx)
    ctx.say(f"running on 127.0.0.1:{settings.port}: {settings.redacted_url()}")
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
    print(settings.url() if show_password else settings.redacted_url())
    return 0


def embedded_stop(ctx: Context) -> int:
    """`embedded stop`: the server stopped; its data stays."""
    server = targets.resolve(stack=targets.EMBEDDED).embedded_server()
    ctx.say("stopped" if server.stop() else "not running")
    return 0
