"""Intake's request guards: body size (413) and content type (415), before any route runs.

Pure ASGI so a body over the limit is refused while it streams in, without being read
whole; a route never sees a body it could not parse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class BodyRule:
    """Bodies under `prefix` (the longest matching prefix wins)."""

    prefix: str
    max_bytes: int
    content_types: tuple[str, ...] | None
    """Accepted media types; None: the route checks them itself."""
    path_suffix: str = ""
    streamed: bool = False
    """The route reads the body as it arrives and enforces `max_bytes` itself (the CSV
    upload): a body without Content-Length is passed through, never buffered here."""


class BodyGuard:
    def __init__(self, app: ASGIApp, *, rules: Sequence[BodyRule], default: BodyRule) -> None:
        self._app = app
        self._rules = sorted(rules, key=lambda r: len(r.prefix), reverse=True)
        self._default = default

    def _rule(self, path: str) -> BodyRule:
        for rule in self._rules:
            if path.startswith(rule.prefix) and path.endswith(rule.path_suffix):
                return rule
        return self._default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self._app(scope, receive, send)
            return
        rule = self._rule(scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > rule.max_bytes:
            await _refuse(send, 413, f"the body is over {rule.max_bytes} bytes")
            return
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        has_body = length is None or length != "0"
        if rule.content_types is not None and has_body and media_type not in rule.content_types:
            await _refuse(
                send,
                415,
                f"content type '{media_type or 'none'}' is not accepted here; send "
                + " or ".join(rule.content_types),
            )
            return
        if length is not None or rule.streamed:
            await self._app(scope, receive, send)
            return
        # No Content-Length (chunked): read it here, refusing it once it is over the limit.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self._app(scope, receive, send)  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > rule.max_bytes:
                await _refuse(send, 413, f"the body is over {rule.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
