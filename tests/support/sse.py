"""Serving an app over real HTTP and reading a server-sent-events stream, for the tests
of `GET /v1/me/stream` (the in-process ASGI transport buffers a whole response, which a
stream never finishes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from leadflow.localinfra import LOOPBACK, free_port


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: dict[str, Any]


@contextlib.asynccontextmanager
async def over_http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """`app` (lifespan included) served by uvicorn on loopback, and a client for it."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def read_events(
    lines: AsyncIterator[str], *, count: int, comments: list[str] | None = None
) -> list[SseEvent]:
    """Parse `count` events off a text/event-stream's lines (comments kept in `comments`)."""
    events: list[SseEvent] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if "event" in fields:
            events.append(SseEvent(fields.get("id"), fields["event"], json.loads(fields["data"])))
            if len(events) == count:
                return events
        fields = {}
    raise AssertionError(f"the stream ended after {events}")


async def events_until(
    lines: AsyncIterator[str], accept: Any, *, limit: int = 100
) -> list[SseEvent]:
    """Events off the stream until one satisfies `accept` (returned last)."""
    seen: list[SseEvent] = []
    while len(seen) < limit:
        [event] = await read_events(lines, count=1)
        seen.append(event)
        if accept(event):
            return seen
    raise AssertionError(f"no accepted event among {seen}")
