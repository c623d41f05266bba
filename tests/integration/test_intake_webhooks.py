"""Meta Lead Ads and Google Ads lead-form webhooks against the real Kafka-wire broker and
MongoDB-wire server, with a fake Graph API on a loopback port. Deliveries are signed the
way Meta signs them: HMAC-SHA256 of the exact bytes sent, with the app secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from services.intake.app import create_app
from services.intake.settings import Settings
from shared.events import LeadReceivedV1
from shared.topics import topic_for
from tests.conftest import Keys
from tests.support import contacts
from tests.support.fake_graph import FakeGraph, serve_fake_graph
from tests.support.infra import Infra
from tests.support.kafka import read_all
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration

APP_SECRET = "meta-app-secret-for-tests"
VERIFY_TOKEN = "verify-me-please"
PAGE_TOKEN = "EAAB-page-token"
GRAPH_VERSION = "v21.0"
SETTINGS_FORM_ID = "40000000001"
SETTINGS_FORM_KEY = "google-key-from-settings"


@pytest.fixture(scope="module")
async def graph() -> AsyncIterator[FakeGraph]:
    async with serve_fake_graph(GRAPH_VERSION, PAGE_TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def ads_settings(infra: Infra, run_id: str, graph: FakeGraph) -> Settings:
    return settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_intake_{run_id}_ads",
        meta_app_secret=APP_SECRET,
        meta_verify_token=VERIFY_TOKEN,
        meta_page_access_token=PAGE_TOKEN,
        meta_graph_base_url=graph.base_url,
        meta_graph_version=GRAPH_VERSION,
        google_lead_form_keys={SETTINGS_FORM_ID: SETTINGS_FORM_KEY},
        ad_lead_retry_base_s=0.1,
        ad_lead_retry_max_s=0.5,
    )


@pytest.fixture(scope="module")
async def ads(ads_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(ads_settings)) as client:
        yield client


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def leadgen_change(leadgen_id: int | str, **value: Any) -> dict[str, Any]:
    return {
        "field": "leadgen",
        "value": {"leadgen_id": leadgen_id, "page_id": 1234567890, "form_id": 555, **value},
    }


def meta_body(*entries: list[dict[str, Any]]) -> bytes:
    # Meta's own formatting: no spaces; the signature is over exactly these bytes.
    payload = {
        "object": "page",
        "entry": [
            {"id": "1234567890", "time": 1764640000, "changes": changes} for changes in entries
        ],
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


async def post_meta(client: httpx.AsyncClient, body: bytes, signature: str | None = None) -> Any:
    headers = {"content-type": "application/json"}
    if signature != "":
        headers["x-hub-signature-256"] = signature or sign(body)
    return await client.post("/v1/webhooks/meta", content=body, headers=headers)


def new_leadgen_id() -> int:
    return 10**15 + uuid.uuid4().int % 10**14


def unique_phone() -> str:
    return contacts.unique_phone("+1650555")


def unique_email(tag: str) -> str:
    return f"{tag}.{uuid.uuid4().hex[:10]}@example.com"


async def ad_lead(
    client: httpx.AsyncClient, keys: Keys, platform: str, external_id: str
) -> httpx.Response:
    return await client.get(
        f"/v1/webhooks/{platform}/leads/{external_id}", headers=await keys.headers(Role.MANAGER)
    )


async def settled(
    client: httpx.AsyncClient, keys: Keys, platform: str, external_id: str
) -> dict[str, Any]:
    async def probe() -> httpx.Response:
        return await ad_lead(client, keys, platform, external_id)

    found = await eventually(
        probe,
        lambda r: r.status_code == 200 and r.json()["status"] != "pending",
        timeout_s=30,
    )
    result: dict[str, Any] = found.json()
    return result


async def lead(client: httpx.AsyncClient, keys: Keys, lead_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/leads/{lead_id}", headers=await keys.headers(Role.MANAGER))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# --- Meta: verification and signatures ------------------------------------------------------


async def test_meta_subscription_check_echoes_the_challenge(ads: httpx.AsyncClient) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    response = await ads.get("/v1/webhooks/meta", params=params)
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
async def test_meta_subscription_check_with_a_wrong_token_is_refused(
    ads: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await ads.get("/v1/webhooks/meta", params=params)
    assert response.status_code == 403
    assert "1" not in response.text.replace("403", "")


@pytest.mark.parametrize(
    ("signature", "status"),
    [
        ("", 401),  # no header at all
        ("sha256=" + "0" * 64, 403),
        ("sha1=whatever", 403),
        ("other-secret", 403),  # signed, but with another app's secret
        ("reserialised", 403),  # the right secret over re-serialised JSON, not the raw bytes
    ],
)
async def test_meta_delivery_without_a_valid_signature_stores_nothing(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys, signature: str, status: int
) -> None:
    leadgen_id = new_leadgen_id()
    graph.add_lead(str(leadgen_id), {"email": [unique_email("unsigned")]})
    body = meta_body([leadgen_change(leadgen_id)])
    if signature == "other-secret":
        signature = sign(body, "someone-elses-secret")
    elif signature == "reserialised":
        signature = sign(json.dumps(json.loads(body)).encode())  # spaces after separators

    response = await post_meta(ads, body, signature)

    assert response.status_code == status, response.text
    await asyncio.sleep(1.5)  # the fetcher would have fetched a stored lead by now
    assert (await ad_lead(ads, keys, "meta", str(leadgen_id))).status_code == 404
    assert graph.requests[str(leadgen_id)] == 0


async def test_a_meta_delivery_stores_each_lead_first_and_answers_at_once(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys
) -> None:
    leadgen_id = new_leadgen_id()
    graph.failures[str(leadgen_id)] = 1_000  # the Graph API is down for this lead
    body = meta_body([leadgen_change(leadgen_id)])

    response = await post_meta(ads, body)

    assert response.status_code == 200
    assert response.json() == {"leads": 1, "new": 1}
    stored = await ad_lead(ads, keys, "meta", str(leadgen_id))
    assert stored.status_code == 200
    assert stored.json()["status"] == "pending"
    # Nothing is lost while the Graph API fails: the lead stays stored and is retried.
    await eventually(
        lambda: ad_lead(ads, keys, "meta", str(leadgen_id)),
        lambda r: r.json()["attempts"] >= 2,
        timeout_s=20,
    )
    # Once the Graph API answers again, the lead arrives.
    graph.add_lead(str(leadgen_id), {"email": [unique_email("late")]})
    graph.failures[str(leadgen_id)] = 0
    assert (await settled(ads, keys, "meta", str(leadgen_id)))["status"] == "accepted"


# --- Meta: leads arrive ---------------------------------------------------------------------


async def test_many_leadgen_changes_in_one_post_each_become_a_lead_with_number_or_string_ids(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys
) -> None:
    ids = [new_leadgen_id() for _ in range(4)]
    emails = [unique_email(f"batch{n}") for n in range(4)]
    for leadgen_id, email in zip(ids, emails, strict=True):
        graph.add_lead(
            str(leadgen_id),
            {"full_name": [f"Person {leadgen_id}"], "email": [email]},
            ad_id="6000000000001",
            adset_id=6000000000002,
            campaign_id="6000000000003",
            form_id="555",
            platform="ig",
            is_organic=False,
        )
    body = meta_body(
        [
            leadgen_change(ids[0]),  # a number
            {"field": "feed", "value": {"item": "status", "verb": "add"}},  # not a lead
            leadgen_change(str(ids[1]), ad_id="6000000000001"),  # a string
        ],
        [leadgen_change(ids[2]), leadgen_change(str(ids[3]))],
    )

    response = await post_meta(ads, body)

    assert response.status_code == 200, response.text
    assert response.json() == {"leads": 4, "new": 4}
    for leadgen_id, email in zip(ids, emails, strict=True):
        outcome = await settled(ads, keys, "meta", str(leadgen_id))
        assert outcome["status"] == "accepted", outcome
        stored = await lead(ads, keys, outcome["lead_id"])
        assert stored["contact"]["email"] == email
        assert stored["contact"]["name"] == f"Person {leadgen_id}"
        attribution = stored["attribution"]
        assert attribution["channel"] == "ad"
        assert attribution["ad_platform"] == "meta"
        assert attribution["ad_ids"]["leadgen_id"] == str(leadgen_id)
        assert attribution["ad_ids"]["adset_id"] == "6000000000002"  # a number, kept as text
        assert attribution["campaign_id"] == "6000000000003"
        assert attribution["form_id"] == "555"


async def test_meta_retrying_a_delivery_for_hours_makes_one_lead(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys
) -> None:
    leadgen_id = new_leadgen_id()
    graph.add_lead(
        str(leadgen_id), {"phone_number": [unique_phone()], "email": [unique_email("retry")]}
    )
    as_number = meta_body([leadgen_change(leadgen_id)])
    as_string = meta_body([leadgen_change(str(leadgen_id))])

    responses = await asyncio.gather(*(post_meta(ads, body) for body in [as_number, as_string] * 5))
    assert all(r.status_code == 200 for r in responses)
    assert sum(r.json()["new"] for r in responses) == 1
    outcome = await settled(ads, keys, "meta", str(leadgen_id))
    # A retry after the lead went through changes nothing either.
    again = await post_meta(ads, as_number)
    assert again.json() == {"leads": 1, "new": 0}
    await asyncio.sleep(1.5)

    assert graph.requests[str(leadgen_id)] == 1
    stored = await lead(ads, keys, outcome["lead_id"])
    assert stored["inquiries"] == 1


async def test_graph_errors_are_retried_with_back_off_until_the_lead_arrives(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys
) -> None:
    leadgen_id = new_leadgen_id()
    email = unique_email("flaky")
    graph.add_lead(str(leadgen_id), {"first_name": ["민준"], "last_name": ["김"], "email": [email]})
    graph.failures[str(leadgen_id)] = 2

    response = await post_meta(ads, meta_body([leadgen_change(leadgen_id)]))

    assert response.status_code == 200
    outcome = await settled(ads, keys, "meta", str(leadgen_id))
    assert outcome["status"] == "accepted"
    assert outcome["attempts"] == 2
    assert "500" in outcome["last_error"]
    assert graph.requests[str(leadgen_id)] == 3
    assert (await lead(ads, keys, outcome["lead_id"]))["contact"]["name"] == "민준 김"


async def test_meta_custom_questions_are_kept_by_their_name(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys
) -> None:
    leadgen_id = new_leadgen_id()
    graph.add_lead(
        str(leadgen_id),
        {
            "full_name": ["王伟"],
            "phone_number": ["+8613800138000"],
            "city": ["上海"],
            "country": ["CN"],
            "zip_code": ["200000"],
            "company_name": ["上海科技有限公司"],
            "job_title": ["经理"],
            "意向程度": ["很高"],
            "which_services?": ["pt", "yoga"],
        },
    )
    await post_meta(ads, meta_body([leadgen_change(leadgen_id)]))

    outcome = await settled(ads, keys, "meta", str(leadgen_id))
    profile = (await lead(ads, keys, outcome["lead_id"]))["profile"]
    assert profile["country"] == "CN"
    assert profile["postal_code"] == "200000"
    assert profile["company"] == "上海科技有限公司"
    assert profile["custom"] == {
        "city": "上海",
        "job_title": "经理",
        "意向程度": "很高",
        "which_services?": "pt, yoga",
    }


async def test_a_meta_lead_without_contact_details_is_rejected_and_says_why(
    ads: httpx.AsyncClient, graph: FakeGraph, keys: Keys
) -> None:
    leadgen_id = new_leadgen_id()
    graph.add_lead(str(leadgen_id), {"full_name": ["No Contact"], "phone_number": ["12"]})
    await post_meta(ads, meta_body([leadgen_change(leadgen_id)]))

    outcome = await settled(ads, keys, "meta", str(leadgen_id))

    assert outcome["status"] == "rejected"
    assert outcome["reasons"][0][0] == "phone"


async def test_a_signed_but_malformed_meta_delivery_is_a_422_naming_the_field(
    ads: httpx.AsyncClient,
) -> None:
    body = meta_body([{"field": "leadgen", "value": {"leadgen_id": {"nested": 1}}}])
    response = await post_meta(ads, body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "leadgen_id"


async def test_two_replicas_given_the_same_deliveries_fetch_and_accept_each_lead_once(
    ads: httpx.AsyncClient, ads_settings: Settings, graph: FakeGraph, keys: Keys
) -> None:
    ids = [new_leadgen_id() for _ in range(20)]
    for leadgen_id in ids:
        graph.add_lead(
            str(leadgen_id), {"email": [unique_email("replica")], "phone_number": [unique_phone()]}
        )
    bodies = [meta_body([leadgen_change(i)]) for i in ids]

    async with serve(create_app(ads_settings)) as second:
        responses = await asyncio.gather(
            *(post_meta(replica, body) for body in bodies for replica in (ads, second))
        )
        assert all(r.status_code == 200 for r in responses)
        assert sum(r.json()["new"] for r in responses) == len(ids)
        outcomes = [await settled(ads, keys, "meta", str(i)) for i in ids]

    assert all(o["status"] == "accepted" for o in outcomes)
    assert [graph.requests[str(i)] for i in ids] == [1] * len(ids)
    for outcome in outcomes:
        assert (await lead(ads, keys, outcome["lead_id"]))["inquiries"] == 1


# --- Google ---------------------------------------------------------------------------------


def google_body(lead_id: str, form_id: str | int, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "user_column_data": [
            {"column_name": "Full Name", "string_value": "Dana Kim", "column_id": "FULL_NAME"},
            {
                "column_name": "User Phone",
                "string_value": unique_phone(),
                "column_id": "PHONE_NUMBER",
            },
            {
                "column_name": "User Email",
                "string_value": unique_email("google"),
                "column_id": "EMAIL",
            },
            {"column_name": "Postal code", "string_value": "94043", "column_id": "POSTAL_CODE"},
            {
                "column_name": "What is your preferred dealership?",
                "string_value": "Mountain View",
                "column_id": "preferred_dealership",
            },
            {"column_name": "企业规模", "string_value": "50-200"},
        ],
        "api_version": "1.0",
        "form_id": form_id,
        "campaign_id": 20000000000,
        "google_key": key,
        "is_test": False,
        "gcl_id": "Cj0KCQiA-test-gclid",
        "adgroup_id": 20000000001,
        "creative_id": 30000000000,
        "lead_submit_time": "2026-12-01T12:30:00Z",
        "lead_stage": "submitted",  # a field we do not use: tolerated
        "new_field_google_adds_later": {"x": 1},
        **extra,
    }


def google_lead_id() -> str:
    return f"TeSter-{uuid.uuid4().hex}"


async def test_google_lead_with_a_wrong_or_unknown_key_stores_nothing(
    ads: httpx.AsyncClient, keys: Keys
) -> None:
    wrong_key = google_lead_id()
    unknown_form = google_lead_id()
    no_key = google_lead_id()
    responses = [
        await ads.post(
            "/v1/webhooks/google", json=google_body(wrong_key, SETTINGS_FORM_ID, "nope")
        ),
        await ads.post(
            "/v1/webhooks/google", json=google_body(unknown_form, 999, SETTINGS_FORM_KEY)
        ),
        await ads.post(
            "/v1/webhooks/google",
            json={
                k: v
                for k, v in google_body(no_key, SETTINGS_FORM_ID, "").items()
                if k != "google_key"
            },
        ),
    ]
    assert [r.status_code for r in responses] == [403, 403, 403]
    for lead_id in (wrong_key, unknown_form, no_key):
        assert (await ad_lead(ads, keys, "google", lead_id)).status_code == 404


async def test_google_lead_maps_columns_custom_questions_and_ids(
    ads: httpx.AsyncClient, keys: Keys
) -> None:
    lead_id = google_lead_id()
    response = await ads.post(
        "/v1/webhooks/google", json=google_body(lead_id, int(SETTINGS_FORM_ID), SETTINGS_FORM_KEY)
    )
    assert response.status_code == 200, response.text

    outcome = await settled(ads, keys, "google", lead_id)
    assert outcome["status"] == "accepted"
    stored = await lead(ads, keys, outcome["lead_id"])
    assert stored["contact"]["name"] == "Dana Kim"
    assert stored["contact"]["phone"].startswith("+1650555")
    assert stored["profile"]["postal_code"] == "94043"
    assert stored["profile"]["custom"] == {
        "What is your preferred dealership?": "Mountain View",
        "企业规模": "50-200",
    }
    attribution = stored["attribution"]
    assert attribution["channel"] == "ad"
    assert attribution["ad_platform"] == "google"
    assert attribution["form_id"] == SETTINGS_FORM_ID
    assert attribution["campaign_id"] == "20000000000"
    assert attribution["ad_ids"] == {
        "lead_id": lead_id,
        "form_id": SETTINGS_FORM_ID,
        "campaign_id": "20000000000",
        "adgroup_id": "20000000001",
        "creative_id": "30000000000",
        "gcl_id": "Cj0KCQiA-test-gclid",
        "lead_submit_time": "2026-12-01T12:30:00Z",
        "lead_stage": "submitted",
        "api_version": "1.0",
    }


async def test_google_redelivery_of_a_lead_makes_one_lead(
    ads: httpx.AsyncClient, keys: Keys
) -> None:
    lead_id = google_lead_id()
    body = google_body(lead_id, SETTINGS_FORM_ID, SETTINGS_FORM_KEY)

    responses = await asyncio.gather(
        *(ads.post("/v1/webhooks/google", json=body) for _ in range(6))
    )

    assert [r.status_code for r in responses] == [200] * 6
    assert sum(r.json()["new"] for r in responses) == 1
    outcome = await settled(ads, keys, "google", lead_id)
    assert (await ads.post("/v1/webhooks/google", json=body)).json()["new"] == 0
    await asyncio.sleep(1.0)
    assert (await lead(ads, keys, outcome["lead_id"]))["inquiries"] == 1


async def test_google_test_lead_is_stored_and_published_marked_test(
    ads: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    lead_id = google_lead_id()
    body = google_body(lead_id, SETTINGS_FORM_ID, SETTINGS_FORM_KEY, is_test=True)

    assert (await ads.post("/v1/webhooks/google", json=body)).status_code == 200

    outcome = await settled(ads, keys, "google", lead_id)
    assert outcome["is_test"] is True
    assert outcome["status"] == "accepted"
    assert (await lead(ads, keys, outcome["lead_id"]))["is_test"] is True
    ours = outcome["lead_id"].encode()
    published = await eventually(
        lambda: read_all(infra.kafka_bootstrap, topic_for(LeadReceivedV1)),
        lambda found: any(ours in value for value, _ in found),
        timeout_s=30,
        interval_s=0.5,
    )
    event = LeadReceivedV1.model_validate_json(next(v for v, _ in published if ours in v))
    assert event.is_test is True
    assert event.attribution.ad_ids["lead_id"] == lead_id


async def test_a_real_google_lead_is_not_marked_test(ads: httpx.AsyncClient, keys: Keys) -> None:
    lead_id = google_lead_id()
    body = google_body(lead_id, SETTINGS_FORM_ID, SETTINGS_FORM_KEY)
    assert (await ads.post("/v1/webhooks/google", json=body)).status_code == 200
    outcome = await settled(ads, keys, "google", lead_id)
    assert outcome["is_test"] is False
    assert (await lead(ads, keys, outcome["lead_id"]))["is_test"] is False


async def test_google_form_registered_through_the_api_is_accepted_and_its_key_never_shown(
    ads: httpx.AsyncClient, keys: Keys
) -> None:
    form_id = str(50000000000 + uuid.uuid4().int % 10**9)
    key = f"registered-{uuid.uuid4().hex}"
    manager = await keys.headers(Role.MANAGER)
    forbidden = await ads.put(
        f"/v1/webhooks/google/forms/{form_id}",
        json={"google_key": key},
        headers=await keys.headers(Role.INGEST),
    )
    assert forbidden.status_code == 403
    saved = await ads.put(
        f"/v1/webhooks/google/forms/{form_id}",
        json={"google_key": key, "source": "spring promo"},
        headers=manager,
    )
    assert saved.status_code == 204, saved.text
    listed = await ads.get("/v1/webhooks/google/forms", headers=manager)
    assert {"form_id": form_id, "source": "spring promo", "configured_in": "api"}.items() <= next(
        f for f in listed.json() if f["form_id"] == form_id
    ).items()
    assert key not in listed.text

    lead_id = google_lead_id()
    response = await ads.post("/v1/webhooks/google", json=google_body(lead_id, form_id, key))

    assert response.status_code == 200, response.text
    assert (await settled(ads, keys, "google", lead_id))["status"] == "accepted"
