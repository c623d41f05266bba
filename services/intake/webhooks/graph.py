"""The Meta Graph API client: fetches a lead's answers by its leadgen id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from services.intake.webhooks.rules import GRAPH_LEAD_FIELDS


class GraphError(Exception):
    """The Graph API did not give the lead (an error answer, or no answer at all)."""


class GraphClient:
    """`GET {base_url}/{version}/{leadgen_id}?fields=...&access_token=...` over one pooled
    httpx client; base URL, version and the page access token come from settings."""

    def __init__(self, *, base_url: str, version: str, access_token: str, timeout_s: float) -> None:
        self._version = version.strip("/")
        self._token = access_token
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s)

    async def lead(self, leadgen_id: str) -> Mapping[str, Any]:
        try:
            response = await self._client.get(
                f"/{self._version}/{leadgen_id}",
                params={"fields": GRAPH_LEAD_FIELDS, "access_token": self._token},
            )
        except httpx.HTTPError as error:
            raise GraphError(f"no answer from the Graph API: {error!r}") from error
        if response.status_code != httpx.codes.OK:
            # The body names Meta's error code; the token never appears in it.
            raise GraphError(f"Graph API {response.status_code}: {response.text[:300]}")
        try:
            body = response.json()
        except ValueError as error:
            raise GraphError("Graph API answered with something other than JSON") from error
        if not isinstance(body, dict):
            raise GraphError("Graph API answered with a JSON value that is not an object")
        return body

    async def close(self) -> None:
        await self._client.aclose()
