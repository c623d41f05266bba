"""Serve an ASGI app with uvicorn on a free 127.0.0.1 port, in the test's event loop, for
clients that need a real socket (a CLI, a platform's webhook caller, a fake provider)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn


@contextlib.asynccontextmanager
async def serve_on_loopback(
    app: Any, *, lifespan: Literal["on", "off"] = "on", start_timeout_s: float = 60.0
) -> AsyncIterator[str]:
    """The app's base URL while it is served; the server stops (gracefully) after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan=lifespan)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + start_timeout_s
    while not server.started:  # uvicorn sets a flag and offers nothing to await
        if task.done() or loop.time() > deadline:
            await task
            raise TimeoutError(f"uvicorn did not start within {start_timeout_s}s")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
