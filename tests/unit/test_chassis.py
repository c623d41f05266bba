"""The service chassis on in-memory parts: API keys and roles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from leadflow.chassis.auth import Authenticator, Principal, Role, hash_key, issue_key, require
from leadflow.chassis.store import Document

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
Message = tuple[str, bytes, bytes | None, dict[str, str]]


# --- API keys -------------------------------------------------------------------------------


class FakeKeyStore:
    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.lookups = 0

    async def find(self, key_hash: str) -> Document | None:
        self.lookups += 1
        return self.documents.get(key_hash)


def test_a_rep_key_must_name_its_rep_and_only_a_rep_key_may() -> None:
    with pytest.raises(ValueError, match="rep-id"):
        issue_key(Role.REP, "no rep", None, NOW)
    with pytest.raises(ValueError, match="rep-id"):
        issue_key(Role.MANAGER, "manager", "r1", NOW)
    issued, document = issue_key(Role.REP, "Rita", "r1", NOW)
    assert issued.principal.rep_id == "r1"
    assert document["_id"] == hash_key(issued.key) != issued.key
    assert issued.key not in str(document)


async def test_keys_are_cached_for_their_ttl() -> None:
    store = FakeKeyStore()
    issued, document = issue_key(Role.ANALYST, "Ann", None, NOW)
    store.documents[document["_id"]] = document
    clock = [0.0]
    authenticator = Authenticator(store, ttl_s=30, clock=lambda: clock[0])
    assert (await authenticator.principal_for(issued.key)) == issued.principal
    assert (await authenticator.principal_for(issued.key)) == issued.principal
    assert store.lookups == 1
    clock[0] = 31
    await authenticator.principal_for(issued.key)
    assert store.lookups == 2
    assert await authenticator.principal_for("lf_unknown") is None


async def test_missing_key_is_401_wrong_role_403_right_role_and_admin_pass() -> None:
    store = FakeKeyStore()
    keys = {}
    for role in (Role.MANAGER, Role.REP, Role.ADMIN):
        issued, document = issue_key(role, str(role), "r1" if role is Role.REP else None, NOW)
        store.documents[document["_id"]] = document
        keys[role] = issued.key
    app = FastAPI()
    app.state.authenticator = Authenticator(store, ttl_s=0)

    @app.get("/pools")
    async def pools(who: Annotated[Principal, Depends(require(Role.MANAGER))]) -> str:
        return who.role.value

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/pools")).status_code == 401
        assert (await client.get("/pools", headers={"X-API-Key": "lf_x_y"})).status_code == 401
        rep = await client.get("/pools", headers={"X-API-Key": keys[Role.REP]})
        assert rep.status_code == 403
        assert "role 'rep'" in rep.json()["detail"]
        for role in (Role.MANAGER, Role.ADMIN):
            ok = await client.get("/pools", headers={"X-API-Key": keys[role]})
            assert ok.json() == role.value
