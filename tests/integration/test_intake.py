"""Intake against the real Kafka-wire broker and MongoDB-wire server."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leadflow.chassis.auth import Role
from services.intake.app import create_app
from services.intake.settings import Settings
from tests.conftest import Keys
from tests.support import contacts
from tests.support.infra import Infra
from tests.support.services import serve, settings_for

pytestmark = pytest.mark.integration


def unique_phone() -> str:
    return contacts.unique_phone("+1415555")


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


async def test_every_bad_field_is_named_in_one_422(intake: httpx.AsyncClient, keys: Keys) -> None:
    body = {"name": "", "phone": "12", "email": "not-an-email", "channel": "carrier_pigeon"}
    response = await intake.post("/v1/leads", json=body, headers=await keys.headers(Role.INGEST))
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert sorted(tuple(e["loc"]) for e in errors) == [
        ("body", "channel"),
        ("body", "email"),
        ("body", "name"),
        ("body", "phone"),
    ]
    reasons = {e["loc"][-1]: e["msg"] for e in errors}
    assert "phone number" in reasons["phone"]
    assert "@" in reasons["email"]
    assert "walk_in" in reasons["channel"]


@pytest.mark.parametrize("channel", ["phone", "walk_in", "web_form", "ad", "import", "referral"])
async def test_each_channel_is_kept_for_reporting(
    intake: httpx.AsyncClient, keys: Keys, channel: str
) -> None:
    response = await intake.post(
        "/v1/leads",
        json={"email": f"{uuid.uuid4().hex}@example.com", "channel": channel},
        headers=await keys.headers(Role.INGEST),
    )
    assert response.status_code == 201, response.text
    lead = await intake.get(
        f"/v1/leads/{response.json()['lead_id']}", headers=await keys.headers(Role.MANAGER)
    )
    assert lead.json()["attribution"]["channel"] == channel


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
        "checks": {"mongodb": True, "kafka": True, "consumer_group": True},
    }
    metrics = await intake.get("/metrics")
    assert "leadflow_http_requests_total" in metrics.text
    asyncapi = (await intake.get("/asyncapi.json")).json()
    assert asyncapi["info"]["title"] == "leadflow intake"


async def accept_batches(intake: httpx.AsyncClient) -> tuple[float, float]:
    """How many accept transactions, and how many leads in them, so far."""
    metrics = (await intake.get("/metrics")).text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "leadflow_intake_accept_batch_size"
        for sample in family.samples
    }
    return (
        samples.get("leadflow_intake_accept_batch_size_count", 0.0),
        samples.get("leadflow_intake_accept_batch_size_sum", 0.0),
    )


async def test_a_burst_of_leads_is_accepted_in_few_transactions_with_one_lead_per_phone(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    headers = await keys.headers(Role.INGEST)
    exchange = 200 + uuid.uuid4().int % 700  # phones no other test of the run uses
    phones = [f"+1415{exchange:03d}{n:04d}" for n in range(50)]
    shared, single = phones[:10], phones[10:]
    bodies = [{"phone": p, "name": f"first {p}"} for p in shared]
    bodies += [{"phone": p[:2] + " " + p[2:], "email": f"{p[1:]}@example.com"} for p in shared]
    bodies += [{"phone": p} for p in single]
    assert len(bodies) == 60
    transactions_before, leads_before = await accept_batches(intake)

    responses = await asyncio.gather(
        *(intake.post("/v1/leads", json=body, headers=headers) for body in bodies)
    )

    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    reader = await keys.headers(Role.MANAGER)
    lead_of: dict[str, str] = {}
    inquiries: dict[str, int] = {}
    for phone in phones:
        found = await intake.get("/v1/contacts/lookup", params={"phone": phone}, headers=reader)
        assert found.status_code == 200, found.text
        lead_of[phone] = found.json()["lead_id"]
        inquiries[phone] = found.json()["inquiries"]
    assert len(set(lead_of.values())) == len(phones)  # every phone its own lead
    assert {p: inquiries[p] for p in shared} == dict.fromkeys(shared, 2)
    assert sum(inquiries.values()) == len(bodies)

    answers = Counter[str]()
    for body, response in zip(bodies, responses, strict=True):
        phone = str(body["phone"]).replace(" ", "")
        answer = response.json()
        assert answer["lead_id"] == lead_of[phone]
        answers[answer["status"]] += 1
        if response.status_code == 200:
            assert answer == {"lead_id": lead_of[phone], "status": "merged", "matched_on": "phone"}
        else:
            assert answer["status"] == "received"
    assert answers == {"received": 50, "merged": 10}
    for phone in shared:  # each shared phone: one received answer and one merged answer
        statuses = sorted(
            r.json()["status"]
            for body, r in zip(bodies, responses, strict=True)
            if str(body["phone"]).replace(" ", "") == phone
        )
        assert statuses == ["merged", "received"]

    transactions_after, leads_after = await accept_batches(intake)
    assert leads_after - leads_before == len(bodies)
    transactions = transactions_after - transactions_before
    assert 1 <= transactions < len(bodies), f"{transactions} transactions for {len(bodies)} leads"


async def test_received_at_comes_from_the_injected_clock(
    infra: Infra, run_id: str, keys: Keys
) -> None:
    then = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    settings = settings_for(Settings, infra, f"{run_id}_clock")
    settings = settings.model_copy(update={"identity_database": keys.identity_database})
    async with serve(create_app(settings, clock=lambda: then)) as intake:
        posted = await intake.post(
            "/v1/leads", json={"phone": unique_phone()}, headers=await keys.headers(Role.INGEST)
        )
        assert posted.status_code == 201, posted.text
        lead = await intake.get(
            f"/v1/leads/{posted.json()['lead_id']}", headers=await keys.headers(Role.MANAGER)
        )
    assert datetime.fromisoformat(lead.json()["received_at"]) == then
    assert datetime.fromisoformat(lead.json()["last_inquiry_at"]) == then
