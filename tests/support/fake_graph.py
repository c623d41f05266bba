"""A faithful stand-in for Meta's Graph API lead endpoint, served by uvicorn on a real
loopback port: `GET /{version}/{leadgen_id}?fields=...&access_token=...`.

Like the real API it answers an unknown id or a wrong token with a 400 and an
`OAuthException`-style error body, and it can be told to fail an id with 500s a number of
times first. It counts the requests per id so tests can see retries and duplicates.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.loopback import serve_on_loopback


@dataclass
class FakeGraph:
    version: str
    access_token: str
    base_url: str = ""
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    """leadgen_id -> how many more requests answer 500."""
    requests: Counter[str] = field(default_factory=Counter)

    def add_lead(self, leadgen_id: str, answers: dict[str, list[str]], **extra: Any) -> None:
        self.leads[leadgen_id] = {
            "id": leadgen_id,
            "created_time": "2026-12-01T10:00:00+0000",
            "field_data": [{"name": name, "values": values} for name, values in answers.items()],
            **extra,
        }

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/{version}/{leadgen_id}")
        async def lead(version: str, leadgen_id: str, request: Request) -> JSONResponse:
            self.requests[leadgen_id] += 1
            if version != self.version:
                return _error(400, f"Unknown path components: /{version}", 2500)
            if request.query_params.get("access_token") != self.access_token:
                return _error(400, "Invalid OAuth access token - Cannot parse access token", 190)
            if self.failures.get(leadgen_id, 0) > 0:
                self.failures[leadgen_id] -= 1
                return _error(500, "An unknown error has occurred.", 1)
            found = self.leads.get(leadgen_id)
            if found is None:
                return _error(
                    400,
                    f"Unsupported get request. Object with ID '{leadgen_id}' does not exist",
                    100,
                )
            wanted = set(
                request.query_params.get("fields", "id,created_time,field_data").split(",")
            )
            return JSONResponse({k: v for k, v in found.items() if k in wanted})

        return app


def _error(status: int, message: str, code: int) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "OAuthException", "code": code}},
        status_code=status,
    )


@contextlib.asynccontextmanager
async def serve_fake_graph(version: str, access_token: str) -> AsyncIterator[FakeGraph]:
    graph = FakeGraph(version=version, access_token=access_token)
    async with serve_on_loopback(graph.app(), lifespan="off") as url:
        graph.base_url = url
        yield graph
