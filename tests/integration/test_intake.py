"""Intake against the real Kafka-wire broker and MongoDB-wire server."""

from __future__ import annotations

import uuid

import httpx
import pytest

from leadflow.chassis.auth import Role
from tests.conftest import Keys

pytestmark = pytest.mark.integration


def unique_phone() -> str:
    return f"+1415555{uuid.uuid4().int % 10_000:04d}"


async def test_posted_lead_is_stored_normalised(intake: httpx.AsyncClient, keys: Keys) -> None:
    email = f"Dana.{uuid.uuid4().hex[:6]}@Example.COM"
    response = await intake.post(
        "/v1/leads",
        json={"name": "  Dana   Kim ", "email": email, "channel": "web_form"},
        headers=await keys.headers(Role.INGEST),
    )
    assert response.status_code == 201, response.text
    lead_id = response.json()["lead_id"]
    lead = await intake.get(f"/v1/leads/{lead_id}", headers=await keys.headers(Role.MANAGER))
    assert lead.status_code == 200
    assert lead.json()["contact"]["name"] == "Dana Kim"
    assert lead.json()["contact"]["email"] == email.lower()


async def test_repeat_inquiry_merges_into_the_known_lead(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    headers = await keys.headers(Role.INGEST)
    phone = unique_phone()
    first = await intake.post("/v1/leads", json={"phone": phone}, headers=headers)
    again = await intake.post(
        "/v1/leads", json={"phone": phone[:2] + " " + phone[2:], "name": "Lee"}, headers=headers
    )
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == {
        "lead_id": first.json()["lead_id"],
        "status": "merged",
        "matched_on": "phone",
    }
    found = await intake.get(
        "/v1/contacts/lookup", params={"phone": phone}, headers=await keys.headers(Role.REP, "r1")
    )
    assert found.json()["inquiries"] == 2
    assert found.json()["contact"]["name"] == "Lee"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"phone": "12"}, "phone", "phone number"),
        ({"email": "not-an-email"}, "email", "@"),
        ({"name": "no contact"}, "phone", "phone number or an email"),
        ({"phone": "+14155550100", "surprise": 1}, "surprise", "Extra inputs"),
        ({"phone": "+14155550100", "consent": {"email": "maybe"}}, "email", "boolean"),
    ],
)
async def test_bad_lead_is_rejected_naming_the_field(
    intake: httpx.AsyncClient, keys: Keys, body: dict[str, object], field: str, reason: str
) -> None:
    response = await intake.post("/v1/leads", json=body, headers=await keys.headers(Role.INGEST))
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == field and reason in e["msg"] for e in errors), errors


async def test_malformed_json_is_a_422(intake: httpx.AsyncClient, keys: Keys) -> None:
    response = await intake.post(
        "/v1/leads",
        content=b'{"phone": ',
        headers={**await keys.headers(Role.INGEST), "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_keys_and_roles_are_enforced(intake: httpx.AsyncClient, keys: Keys) -> None:
    body = {"phone": unique_phone()}
    assert (await intake.post("/v1/leads", json=body)).status_code == 401
    unknown = await intake.post("/v1/leads", json=body, headers={"X-API-Key": "lf_nope_nope"})
    assert unknown.status_code == 401
    wrong_role = await intake.post("/v1/leads", json=body, headers=await keys.headers(Role.ANALYST))
    assert wrong_role.status_code == 403
    assert "analyst" in wrong_role.json()["detail"]


async def test_unknown_route_is_404_and_wrong_method_405(intake: httpx.AsyncClient) -> None:
    assert (await intake.get("/v1/nothing-here")).status_code == 404
    assert (await intake.delete("/v1/leads")).status_code == 405


async def test_operations_endpoints_are_public(intake: httpx.AsyncClient) -> None:
    assert (await intake.get("/healthz")).json()["status"] == "ok"
    ready = await intake.get("/readyz")
    assert ready.json() == {
        "status": "ready",
        "checks": {"mongodb": True, "kafka": True, "consumer_groups": True},
    }
    metrics = await intake.get("/metrics")
    assert "leadflow_http_requests_total" in metrics.text
    asyncapi = (await intake.get("/asyncapi.json")).json()
    assert asyncapi["info"]["title"] == "leadflow intake"
