"""A slower link than loopback, for the apply case over a network: a TCP proxy that holds
what flows each way for half a round trip, so that each round trip takes about `rtt_ms`
more, as between a CI runner and a cloud database. Every tool goes through the same
proxy; its own cost (a Python process copying bytes) is in every figure alike.

Run as `python -m bench.link LISTEN_PORT TARGET_PORT RTT_MS`; `delayed()` starts one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from cicd_db.pgprocess import free_port

from .common import PYTHON, ROOT


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
    """Copy `reader` to `writer`, each chunk written `hold` seconds after it came, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    while True:
        data = await reader.read(65536)
        queue.put_nowait((loop.time() + hold, data))
        if not data:
            break
    await sender


async def _serve(listen: int, target: int, hold: float) -> None:
    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(
            _forward(client_r, server_w, hold),
            _forward(server_r, client_w, hold),
            return_exceptions=True,
        )

    server = await asyncio.start_server(connection, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delayed(target: int, rtt_ms: float) -> Iterator[int]:
    """A proxy to 127.0.0.1:`target` adding about `rtt_ms` a round trip; yields its port."""
    port = free_port()
    proxy = subprocess.Popen(
        [PYTHON, "-m", "bench.link", str(port), str(target), str(rtt_ms)], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise SystemExit("bench: the link proxy did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proxy.terminate()
        proxy.wait()


if __name__ == "__main__":
    listen, target, rtt = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listen, target, rtt / 2000))
