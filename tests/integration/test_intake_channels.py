"""Intake's channels and identity on the real broker and database: the JSON batch,
idempotent retries, HTML forms (CORS, honeypot, shared rate limit), the front desk, look-ups
that learn conversions, campaigns, the fit score, erasure, and refused bodies."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leadflow.chassis.auth import Role
from leadflow.chassis.store import connect
from services.intake.app import create_app
from services.intake.settings import Settings
from shared.events import LeadConvertedV1
from shared.topics import topic_for
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, read_all, start_group_at_end
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration

ORIGIN = "https://www.example-gym.com"


def new_phone() -> str:
    return f"+1415{200 + uuid.uuid4().int % 700:03d}{uuid.uuid4().int % 10_000:04d}"


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def events_about(infra: Infra, event_type: str, lead_id: str) -> list[dict[str, Any]]:
    """This lead's events on the topic; other tests' messages there, garbage included (the
    dead-letter tests publish some), are passed over."""
    topic = f"intake.{event_type}.v1"
    return [
        payload
        for value, _ in await read_all(infra.kafka_bootstrap, topic)
        if lead_id.encode() in value and (payload := json.loads(value)).get("lead_id") == lead_id
    ]


@pytest.fixture(scope="module")
async def replicas(infra: Infra, run_id: str) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """Two intake replicas on one database (their own, for this module), like two pods;
    forms allow 3 posts a minute per address so the shared counter shows."""
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_intake_channels_{run_id}",
        consumer_group=f"leadflow-intake-channels-{run_id}",
        form_rate_limit="3/minute",
        max_body_bytes=64 * 1024,
    )
    await start_group_at_end(settings.kafka_bootstrap, settings.consumer_group)
    async with serve(create_app(settings)) as one, serve(create_app(settings)) as two:
        yield one, two


@pytest.fixture
def intake(replicas: tuple[httpx.AsyncClient, ...]) -> httpx.AsyncClient:
    return replicas[0]


# --- batch ---------------------------------------------------------------------------------


async def test_a_batch_answers_for_each_lead_in_one_transaction(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    known = new_phone()
    headers = await keys.headers(Role.INGEST)
    first = await intake.post("/v1/leads", json={"phone": known}, headers=headers)
    assert first.status_code == 201
    fresh = new_phone()
    before = metric((await intake.get("/metrics")).text, "leadflow_intake_accept_batch_size_count")
    response = await intake.post(
        "/v1/leads/batch",
        json={
            "leads": [
                {"phone": fresh, "name": "New"},
                {"phone": known, "message": "again"},
                {"phone": "12", "email": "nope", "surprise": 1},
                {"phone": fresh, "email": "new@example.com"},
                {"name": "no contact"},
                {"email": "ext@example.com", "external_id": "test:1", "channel": "import"},
                {"email": "ext2@example.com", "external_id": "test:1", "channel": "import"},
            ]
        },
        headers=headers,
    )
    after = metric((await intake.get("/metrics")).text, "leadflow_intake_accept_batch_size_count")
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["outcome"] for r in results] == [
        "created",
        "merged",
        "rejected",
        "merged",
        "rejected",
        "created",
        "duplicate",
    ]
    assert results[1]["lead_id"] == first.json()["lead_id"]
    assert results[3]["lead_id"] == results[0]["lead_id"]
    assert results[3]["matched_on"] == "phone"
    assert results[6]["lead_id"] == results[5]["lead_id"]
    assert {e["field"] for e in results[2]["errors"]} == {"surprise"}
    assert "phone number or an email" in results[4]["errors"][0]["reason"]
    assert (body["created"], body["merged"], body["duplicate"], body["rejected"]) == (2, 2, 1, 2)
    assert after - before == 1  # one accept transaction for the whole batch
    reader = await keys.headers(Role.MANAGER)
    lead = (await intake.get(f"/v1/leads/{results[0]['lead_id']}", headers=reader)).json()
    assert lead["contact"]["email"] == "new@example.com"
    assert lead["inquiries"] == 2


async def test_a_bad_phone_in_a_batch_names_its_field(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    response = await intake.post(
        "/v1/leads/batch",
        json={"leads": [{"phone": "12", "email": "not-an-email"}]},
        headers=await keys.headers(Role.INGEST),
    )
    assert response.status_code == 200
    errors = response.json()["results"][0]["errors"]
    assert {e["field"] for e in errors} == {"phone", "email"}


async def test_a_batch_over_1000_is_refused_naming_the_field(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    response = await intake.post(
        "/v1/leads/batch",
        json={"leads": [{"phone": "1"}] * 1001},
        headers={**await keys.headers(Role.INGEST)},
    )
    # over the test replica's 64 KB body limit or over 1,000 items: refused either way
    assert response.status_code in (413, 422)


# --- idempotency ---------------------------------------------------------------------------


async def test_a_retried_request_gets_the_first_answer_and_adds_nothing(
    replicas: tuple[httpx.AsyncClient, ...], keys: Keys
) -> None:
    one, two = replicas
    headers = {**await keys.headers(Role.INGEST), "Idempotency-Key": uuid.uuid4().hex}
    phone = new_phone()
    body = {"phone": phone, "message": "please call"}
    # Sent at once to both replicas, five times: one is handled, the others get its answer.
    answers = await asyncio.gather(
        *(client.post("/v1/leads", json=body, headers=headers) for client in [one, two] * 5)
    )
    assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
    assert len({a.json()["lead_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 9
    found = await one.get(
        "/v1/contacts/lookup", params={"phone": phone}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.json()["inquiries"] == 1

    other = await one.post("/v1/leads", json={"phone": new_phone()}, headers=headers)
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # The key is per API key: another key's same Idempotency-Key is another request.
    another_key = {**await keys.headers(Role.ADMIN), "Idempotency-Key": headers["Idempotency-Key"]}
    again = await one.post("/v1/leads", json=body, headers=another_key)
    assert (again.status_code, again.json()["status"]) == (200, "merged")


async def test_a_retried_batch_is_answered_from_the_first(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    headers = {**await keys.headers(Role.INGEST), "Idempotency-Key": uuid.uuid4().hex}
    batch = {"leads": [{"phone": new_phone()}, {"phone": new_phone()}]}
    first = await intake.post("/v1/leads/batch", json=batch, headers=headers)
    second = await intake.post("/v1/leads/batch", json=batch, headers=headers)
    assert first.json()["created"] == 2
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"


async def forget_answers(infra: Infra, run_id: str, idempotency_key: str) -> None:
    """What a replica that died after its accept committed, before storing its answer, leaves:
    the request still pending, claimed long ago."""
    client = connect(infra.mongo_url, app_name="test")
    try:
        result = await client[f"leadflow_intake_channels_{run_id}"]["idempotency"].update_many(
            {"_id": {"$regex": f":{idempotency_key}$"}},
            {"$set": {"state": "pending", "created_at": datetime(2000, 1, 1, tzinfo=UTC)}},
        )
        assert result.modified_count == 1
    finally:
        await client.close()


async def test_a_retry_after_a_crash_before_the_answer_was_stored_adds_nothing(
    intake: httpx.AsyncClient, keys: Keys, infra: Infra, run_id: str
) -> None:
    headers = {**await keys.headers(Role.INGEST), "Idempotency-Key": uuid.uuid4().hex}
    phone = new_phone()
    first = await intake.post("/v1/leads", json={"phone": phone}, headers=headers)
    assert first.status_code == 201, first.text
    await forget_answers(infra, run_id, headers["Idempotency-Key"])

    retry = await intake.post("/v1/leads", json={"phone": phone}, headers=headers)

    assert retry.status_code == 200, retry.text
    assert retry.json()["lead_id"] == first.json()["lead_id"]
    assert retry.json()["status"] == "duplicate"
    found = await intake.get(
        "/v1/contacts/lookup", params={"phone": phone}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.json()["inquiries"] == 1  # not 2: the retry merged nothing


async def test_a_batch_retried_after_a_crash_before_its_answer_was_stored_adds_nothing(
    intake: httpx.AsyncClient, keys: Keys, infra: Infra, run_id: str
) -> None:
    headers = {**await keys.headers(Role.INGEST), "Idempotency-Key": uuid.uuid4().hex}
    phones = [new_phone(), new_phone()]
    batch = {"leads": [{"phone": phones[0]}, {"phone": "not a phone"}, {"phone": phones[1]}]}
    first = await intake.post("/v1/leads/batch", json=batch, headers=headers)
    assert (first.json()["created"], first.json()["rejected"]) == (2, 1), first.text
    await forget_answers(infra, run_id, headers["Idempotency-Key"])

    retry = await intake.post("/v1/leads/batch", json=batch, headers=headers)

    assert retry.status_code == 200, retry.text
    assert [r["outcome"] for r in retry.json()["results"]] == ["duplicate", "rejected", "duplicate"]
    assert [r.get("lead_id") for r in retry.json()["results"]] == [
        r.get("lead_id") for r in first.json()["results"]
    ]
    for phone in phones:
        found = await intake.get(
            "/v1/contacts/lookup",
            params={"phone": phone},
            headers=await keys.headers(Role.MANAGER),
        )
        assert found.json()["inquiries"] == 1


# --- de-duplication under concurrency ------------------------------------------------------


async def test_fifty_concurrent_posts_of_one_new_phone_make_one_lead_and_49_merges(
    replicas: tuple[httpx.AsyncClient, ...], keys: Keys
) -> None:
    phone = new_phone()
    headers = await keys.headers(Role.INGEST)
    responses = await asyncio.gather(
        *(
            replicas[i % 2].post("/v1/leads", json={"phone": phone}, headers=headers)
            for i in range(50)
        )
    )
    assert Counter(r.status_code for r in responses) == {201: 1, 200: 49}, [
        r.text for r in responses if r.status_code not in (200, 201)
    ]
    assert Counter(r.json()["status"] for r in responses) == {"received": 1, "merged": 49}
    assert len({r.json()["lead_id"] for r in responses}) == 1
    found = await replicas[0].get(
        "/v1/contacts/lookup", params={"phone": phone}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.json()["inquiries"] == 50


async def test_concurrent_batches_with_the_same_contacts_make_one_lead_each(
    replicas: tuple[httpx.AsyncClient, ...], keys: Keys
) -> None:
    phones = [new_phone() for _ in range(20)]
    headers = await keys.headers(Role.INGEST)
    batches = [{"leads": [{"phone": p} for p in phones[i:] + phones[:i]]} for i in (0, 7, 13, 19)]
    answers = await asyncio.gather(
        *(
            replicas[i % 2].post("/v1/leads/batch", json=b, headers=headers)
            for i, b in enumerate(batches)
        )
    )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["created"] for a in answers) == len(phones)
    assert sum(a.json()["merged"] for a in answers) == len(phones) * (len(batches) - 1)


# --- forms ---------------------------------------------------------------------------------


async def register_form(intake: httpx.AsyncClient, keys: Keys, **extra: Any) -> dict[str, Any]:
    response = await intake.post(
        "/v1/forms",
        json={
            "name": "Trial class",
            "allowed_origins": [ORIGIN],
            "redirect_url": "https://www.example-gym.com/thanks",
            "honeypot_field": "website",
            "default_region": "KR",
            "fields": {"full_name": "name", "mobile": "phone", "size": "profile.company_size"},
            "source": "homepage",
            "consent_wording": "I agree to receive texts",
            **extra,
        },
        headers=await keys.headers(Role.MARKETING),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_form_post_is_mapped_stored_and_redirected(
    replicas: tuple[httpx.AsyncClient, ...], keys: Keys
) -> None:
    one, two = replicas
    form = await register_form(one, keys)
    key = form["form_key"]
    local = f"010-{uuid.uuid4().int % 10_000:04d}-{uuid.uuid4().int % 10_000:04d}"
    response = await two.post(  # the other replica: the form reached it through the database
        f"/v1/forms/{key}/submissions",
        data={
            "full_name": " Kim  Min-ji ",
            "mobile": local,
            "size": "40",
            "의향": "high",
            "consent_sms": "on",
            "utm_source": "naver",
            "website": "",
        },
        headers={"Origin": ORIGIN, "Referer": f"{ORIGIN}/trial"},
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "https://www.example-gym.com/thanks"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    e164 = "+82" + local.replace("-", "")[1:]
    found = await one.get(
        "/v1/contacts/lookup", params={"phone": e164}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.status_code == 200, found.text
    lead = found.json()
    assert lead["contact"]["name"] == "Kim Min-ji"
    assert lead["profile"]["company_size"] == 40
    assert lead["profile"]["custom"] == {"의향": "high"}
    assert lead["attribution"]["form_id"] == key
    assert lead["attribution"]["utm_source"] == "naver"
    assert lead["attribution"]["referrer"] == f"{ORIGIN}/trial"
    assert lead["consent"]["sms"] is True
    assert lead["consent"]["records"][0]["wording"] == "I agree to receive texts"

    multipart = await one.post(
        f"/v1/forms/{key}/submissions",
        data={"mobile": local, "message": "second visit"},
        files={"attachment": ("a.txt", b"ignored")},
        headers={"Origin": ORIGIN},
    )
    assert multipart.status_code == 303
    found = await one.get(
        "/v1/contacts/lookup", params={"phone": e164}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.json()["inquiries"] == 2


async def test_cors_is_answered_for_the_forms_origins_only(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    key = (await register_form(intake, keys))["form_key"]
    path = f"/v1/forms/{key}/submissions"
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    allowed = await intake.options(path, headers=preflight)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    denied = await intake.options(path, headers={**preflight, "Origin": "https://evil.example"})
    assert denied.status_code == 403
    assert "access-control-allow-origin" not in denied.headers
    phone = new_phone()
    post = await intake.post(
        path, data={"mobile": phone}, headers={"Origin": "https://evil.example"}
    )
    assert post.status_code == 403
    found = await intake.get(
        "/v1/contacts/lookup", params={"phone": phone}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.status_code == 404
    assert (
        await intake.options("/v1/forms/nope/submissions", headers=preflight)
    ).status_code == 404


async def test_a_honeypot_post_gets_the_thank_you_page_and_stores_nothing(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    key = (await register_form(intake, keys))["form_key"]
    before = metric(
        (await intake.get("/metrics")).text, "leadflow_intake_form_spam_total", form_key=key
    )
    phone = new_phone()
    response = await intake.post(
        f"/v1/forms/{key}/submissions",
        data={"mobile": phone, "website": "http://spam.example"},
        headers={"Origin": ORIGIN},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "https://www.example-gym.com/thanks"
    after = metric(
        (await intake.get("/metrics")).text, "leadflow_intake_form_spam_total", form_key=key
    )
    assert after - before == 1
    found = await intake.get(
        "/v1/contacts/lookup", params={"phone": phone}, headers=await keys.headers(Role.MANAGER)
    )
    assert found.status_code == 404


async def test_the_rate_limit_is_shared_by_every_replica(
    replicas: tuple[httpx.AsyncClient, ...], keys: Keys
) -> None:
    one, two = replicas
    key = (await register_form(one, keys, redirect_url=None))["form_key"]
    statuses = [
        (
            await client.post(
                f"/v1/forms/{key}/submissions", data={"mobile": new_phone()}, headers={}
            )
        ).status_code
        for client in (one, two, one, two)
    ]
    assert statuses == [202, 202, 202, 429]  # 3 a minute per form and address, both replicas


async def test_a_bad_form_post_names_every_field_and_json_is_415(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    key = (await register_form(intake, keys))["form_key"]
    bad = await intake.post(
        f"/v1/forms/{key}/submissions",
        data={"mobile": "12", "email": "nope", "size": "lots"},
        headers={"Origin": ORIGIN},
    )
    assert bad.status_code == 422
    assert {e["loc"][-1] for e in bad.json()["detail"]} >= {"profile.company_size"}
    as_json = await intake.post(f"/v1/forms/{key}/submissions", json={"mobile": new_phone()})
    assert as_json.status_code == 415
    assert (await intake.get("/v1/forms")).status_code == 401


# --- desk, look-up, conversions ------------------------------------------------------------


async def test_the_desk_registers_a_caller_and_finds_them_again(
    intake: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    desk = await keys.headers(Role.REP, "desk-rep")
    local = f"010-{uuid.uuid4().int % 10_000:04d}-{uuid.uuid4().int % 10_000:04d}"
    first = await intake.post(
        "/v1/desk/registrations",
        json={
            "phone": local,
            "note": "asked about PT prices",
            "source": "flyer",
            "channel": "phone",
            "default_region": "KR",
        },
        headers=desk,
    )
    assert first.status_code == 422  # the desk form has no default_region field
    first = await intake.post(
        "/v1/desk/registrations",
        json={"phone": "+82" + local.replace("-", "")[1:], "note": "asked about PT prices"},
        headers=desk,
    )
    assert first.status_code == 201, first.text
    assert first.json()["known_before"] is None
    walk_in = await intake.post(
        "/v1/desk/registrations",
        json={
            "phone": "+82 " + local[1:],
            "channel": "walk_in",
            "note": "came by",
            "source": "friend referral",
        },
        headers=desk,
    )
    assert walk_in.status_code == 200, walk_in.text
    known = walk_in.json()["known_before"]
    assert known["lead_id"] == first.json()["lead_id"]
    assert known["kind"] == "lead"
    assert known["history"][0]["message"] == "asked about PT prices"

    lead_id = first.json()["lead_id"]
    found = await intake.get(
        "/v1/contacts/lookup", params={"phone": "+82" + local.replace("-", "")[1:]}, headers=desk
    )
    summary = found.json()["summary"]
    assert summary["channels"] == {"phone": 1, "walk_in": 1}
    assert summary["sources"] == {"desk": 1, "friend referral": 1}

    await publish_event(
        infra.kafka_bootstrap,
        LeadConvertedV1(lead_id=lead_id, rep_id="desk-rep", revenue=300, customer_id="m-17"),
    )

    async def lookup() -> dict[str, Any]:
        response = await intake.get(
            "/v1/contacts/lookup",
            params={"phone": "+82" + local.replace("-", "")[1:]},
            headers=desk,
        )
        return dict(response.json())

    customer = await eventually(lookup, lambda doc: doc["kind"] == "customer", timeout_s=40)
    assert customer["customer_id"] == "m-17"
    assert topic_for(LeadConvertedV1) == "assignment.lead-converted.v1"


# --- configuration, fit, erasure -----------------------------------------------------------


async def test_a_saved_campaign_is_published(
    intake: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    campaign_id = f"spring-{uuid.uuid4().hex[:6]}"
    body = {
        "campaign_id": campaign_id,
        "name": "Spring trial",
        "channel": "meta",
        "cost": 1200.5,
        "currency": "KRW",
        "starts_on": "2026-03-01",
    }
    saved = await intake.put(
        f"/v1/campaigns/{campaign_id}", json=body, headers=await keys.headers(Role.MARKETING)
    )
    assert saved.status_code == 200, saved.text
    listed = await intake.get("/v1/campaigns", headers=await keys.headers(Role.ANALYST))
    assert campaign_id in {c["campaign_id"] for c in listed.json()}
    events = await eventually(
        lambda: events_about(infra, "campaign-saved", f"campaign:{campaign_id}"),
        lambda found: len(found) == 1,
    )
    assert (events[0]["cost"], events[0]["currency"]) == (1200.5, "KRW")
    rep = await intake.put(
        f"/v1/campaigns/{campaign_id}", json=body, headers=await keys.headers(Role.REP, "r9")
    )
    assert rep.status_code == 403
    mismatch = await intake.put(
        "/v1/campaigns/other", json=body, headers=await keys.headers(Role.MARKETING)
    )
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"][0]["loc"] == ["body", "campaign_id"]
    source = await intake.put(
        "/v1/sources/friend-referral",
        json={"source_id": "friend-referral", "name": "friend referral", "channel": "referral"},
        headers=await keys.headers(Role.MANAGER),
    )
    assert source.status_code == 200


async def test_the_fit_score_follows_the_ideal_customer_profile(
    intake: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    icp = {
        "industries": ["fitness"],
        "company_size_min": 10,
        "company_size_max": 200,
        "regions": ["KR"],
        "sources": ["homepage"],
    }
    saved = await intake.put("/v1/fit-profile", json=icp, headers=await keys.headers(Role.MANAGER))
    assert saved.status_code == 200, saved.text
    response = await intake.post(
        "/v1/leads",
        json={
            "name": "Fit Lead",
            "phone": new_phone(),
            "email": f"{uuid.uuid4().hex[:8]}@example.com",
            "source": "homepage",
            "profile": {"industry": "Fitness", "company_size": 40, "country": "kr"},
        },
        headers=await keys.headers(Role.INGEST),
    )
    lead_id = response.json()["lead_id"]
    lead = (
        await intake.get(f"/v1/leads/{lead_id}", headers=await keys.headers(Role.MANAGER))
    ).json()
    assert lead["fit"]["grade"] == "A"
    assert lead["fit"]["factors"]["industry"] == 30
    received = await eventually(
        lambda: events_about(infra, "lead-received", lead_id), lambda found: len(found) == 1
    )
    assert received[0]["fit"] == lead["fit"]
    assert received[0]["fit_score"] == lead["fit"]["score"]


async def test_erasure_removes_the_person_and_frees_their_phone(
    intake: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    phone = new_phone()
    ingest = await keys.headers(Role.INGEST)
    lead_id = (
        await intake.post("/v1/leads", json={"phone": phone, "name": "Gone"}, headers=ingest)
    ).json()["lead_id"]
    rep = await intake.delete(f"/v1/leads/{lead_id}", headers=await keys.headers(Role.REP, "r1"))
    assert rep.status_code == 403
    manager = await keys.headers(Role.MANAGER)
    assert (await intake.delete(f"/v1/leads/{lead_id}", headers=manager)).status_code == 204
    assert (await intake.delete(f"/v1/leads/{lead_id}", headers=manager)).status_code == 404
    lead = (await intake.get(f"/v1/leads/{lead_id}", headers=manager)).json()
    assert lead["status"] == "erased"
    assert lead["contact"]["name"] is None
    assert lead["contact"]["phone"] is None
    lookup = await intake.get("/v1/contacts/lookup", params={"phone": phone}, headers=manager)
    assert lookup.status_code == 404
    again = await intake.post("/v1/leads", json={"phone": phone}, headers=ingest)
    assert again.status_code == 201
    assert again.json()["lead_id"] != lead_id
    erased = await eventually(
        lambda: events_about(infra, "lead-erased", lead_id), lambda found: len(found) == 1
    )
    assert erased[0]["requested_by"].startswith("manager:")


# --- refused bodies ------------------------------------------------------------------------


async def test_oversized_and_unsupported_bodies_are_refused(
    intake: httpx.AsyncClient, keys: Keys
) -> None:
    headers = await keys.headers(Role.INGEST)
    big = {"phone": new_phone(), "message": "x" * 3000}
    too_big = await intake.post("/v1/leads/batch", json={"leads": [big] * 40}, headers=headers)
    assert too_big.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        body = json.dumps({"leads": [big] * 40}).encode()
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    streamed = await intake.post(
        "/v1/leads/batch",
        content=chunks(),
        headers={**headers, "content-type": "application/json"},
    )
    assert streamed.status_code == 413
    as_form = await intake.post("/v1/leads", data={"phone": new_phone()}, headers=headers)
    assert as_form.status_code == 415
    as_text = await intake.post(
        "/v1/leads", content=b"phone=1", headers={**headers, "content-type": "text/plain"}
    )
    assert as_text.status_code == 415
