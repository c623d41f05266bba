"""A real HTTP webhook receiver on loopback that checks leadflow's signature the way a
customer's would (its own HMAC-SHA256, not leadflow's helper), and can play dead.

Modes: `ok` (202 to a correctly signed request, 401 to a badly signed one), `fail`
(503), `hang` (holds the request until the mode changes, then answers per the new mode).
Every request is kept with its verdict, so tests count deliveries by their delivery id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from leadflow.localinfra import LOOPBACK, free_port

Mode = Literal["ok", "fail", "hang"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed_ok: bool
    status: int

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-leadflow-delivery", "")


def signature_ok(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int) -> bool:
    timestamp = headers.get("x-leadflow-timestamp", "")
    given = headers.get("x-leadflow-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(f"sha256={expected.hexdigest()}", given)


class WebhookReceiver:
    def __init__(self, secret: str, *, tolerance_s: int = 300) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/hook"
        self.mode: Mode = "ok"
        self.received: list[Received] = []
        self.arrived = 0
        self._changed = asyncio.Event()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self._changed.set()
        self._changed = asyncio.Event()

    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.status == 202]

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.arrived += 1
        while self.mode == "hang":
            await self._changed.wait()
        signed = signature_ok(self.secret, headers, body, tolerance_s=self.tolerance_s)
        status = (202 if signed else 401) if self.mode == "ok" else 503
        self.received.append(Received(request.url.path, headers, body, signed, status))
        return Response(status_code=status)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookReceiver]:
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host=LOOPBACK, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        try:
            yield self
        finally:
            self.set_mode("fail")  # releases held requests
            self._server.should_exit = True
            await self._task
