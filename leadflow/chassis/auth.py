"""API keys with roles, checked on every non-public endpoint.

A key looks like `lf_<key_id>_<secret>`; only its SHA-256 is stored (keys are 256-bit
random, so a slow password hash adds nothing). 401 when the key is missing or unknown,
403 when its role may not call the endpoint. `admin` may call everything.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    REP = "rep"
    MARKETING = "marketing"
    ANALYST = "analyst"
    INGEST = "ingest"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Role
    name: str
    rep_id: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    principal: Principal


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_key(
    role: Role, name: str, rep_id: str | None, now: datetime
) -> tuple[IssuedKey, dict[str, Any]]:
    """A new key and the document to store for it. A rep key must name its rep."""
    if (role is Role.REP) != (rep_id is not None):
        raise ValueError("a rep key needs --rep-id, and only a rep key takes one")
    key_id = secrets.token_hex(4)
    key = f"lf_{key_id}_{secrets.token_urlsafe(32)}"
    principal = Principal(key_id=key_id, role=role, name=name, rep_id=rep_id)
    document = {
        "_id": hash_key(key),
        "key_id": key_id,
        "role": role.value,
        "name": name,
        "rep_id": rep_id,
        "created_at": now,
        "revoked_at": None,
    }
    return IssuedKey(key=key, principal=principal), document


class KeyLookup(Protocol):
    async def find(self, key_hash: str) -> dict[str, Any] | None: ...


class Authenticator:
    """Looks keys up in the identity database, caching hits for `ttl_s` seconds."""

    def __init__(
        self,
        store: KeyLookup,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def principal_for(self, key: str) -> Principal | None:
        key_hash = hash_key(key)
        cached = self._cache.get(key_hash)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        document = await self._store.find(key_hash)
        if document is None:
            self._cache.pop(key_hash, None)
            return None
        principal = Principal(
            key_id=document["key_id"],
            role=Role(document["role"]),
            name=document.get("name", ""),
            rep_id=document.get("rep_id"),
        )
        self._cache[key_hash] = (now + self._ttl_s, principal)
        return principal


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="leadflow API key")


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency admitting `admin` and the given roles."""
    allowed = frozenset((Role.ADMIN, *roles))

    async def dependency(request: Request, key: str | None = Depends(api_key_header)) -> Principal:
        if not key:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing API key: send it in the X-API-Key header",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        authenticator: Authenticator = request.app.state.authenticator
        principal = await authenticator.principal_for(key)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="unknown or revoked API key",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        if principal.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role '{principal.role}' may not do this; allowed: "
                + ", ".join(sorted(r.value for r in allowed)),
            )
        return principal

    dependency.roles = allowed  # type: ignore[attr-defined]  # read by `leadflow api-reference`
    return dependency
