"""Pure rules of the ad webhooks: signatures, Meta notices, Graph and Google lead mapping."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.intake.webhooks.rules import (
    MetaLeadNotice,
    PayloadError,
    google_key_valid,
    google_lead,
    key_digest,
    map_google_lead,
    map_meta_lead,
    meta_lead_notices,
    meta_signature_valid,
    platform_id,
    retry_delay,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SECRET = "app-secret"


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- signatures -----------------------------------------------------------------------------


def test_meta_signature_is_the_hmac_of_the_exact_bytes() -> None:
    body = '{"object":"page","entry":[{"id":"1","changes":[]}],"name":"Zoë 김"}'.encode()
    assert meta_signature_valid(body, signature(body), SECRET)
    assert meta_signature_valid(body, signature(body).upper().replace("SHA256=", "sha256="), SECRET)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda body: json.dumps(json.loads(body)).encode(),  # re-serialised: other bytes
        lambda body: body + b"\n",
        lambda body: body.replace(b"\\u00eb", "ë".encode()),
    ],
)
def test_any_change_to_the_bytes_breaks_the_signature(mangle: Any) -> None:
    body = b'{"object":"page","entry":[],"name":"Zo\\u00eb"}'
    assert not meta_signature_valid(mangle(body), signature(body), SECRET)


@pytest.mark.parametrize(
    ("header", "secret"),
    [(None, SECRET), ("", SECRET), ("sha1=abc", SECRET), ("sha256=", SECRET), ("x", SECRET)],
)
def test_missing_or_malformed_signatures_are_invalid(header: str | None, secret: str) -> None:
    assert not meta_signature_valid(b"{}", header, secret)


def test_without_an_app_secret_nothing_is_valid() -> None:
    assert not meta_signature_valid(b"{}", signature(b"{}", ""), "")


def test_google_key_is_compared_by_digest() -> None:
    assert google_key_valid("form-key", key_digest("form-key"))
    assert not google_key_valid("form-key ", key_digest("form-key"))
    assert not google_key_valid(None, key_digest("form-key"))
    assert not google_key_valid("form-key", None)


# --- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (444444444444, "444444444444"),
        ("444444444444", "444444444444"),
        (1.2e12, "1200000000000"),
        (" 17 ", "17"),
    ],
)
def test_ids_arrive_as_numbers_or_strings_and_are_kept_as_text(
    value: object, expected: str
) -> None:
    assert platform_id(value, ("id",)) == expected


@pytest.mark.parametrize("value", [None, "", True, 1.5, {"id": 1}, [1]])
def test_what_is_not_an_id_is_refused_naming_where(value: object) -> None:
    with pytest.raises(PayloadError) as error:
        platform_id(value, ("entry", 0, "leadgen_id"))
    assert error.value.location == ("entry", 0, "leadgen_id")


# --- Meta notices ---------------------------------------------------------------------------


def test_every_leadgen_change_of_every_entry_once_and_others_ignored() -> None:
    payload = {
        "object": "page",
        "entry": [
            {
                "id": "999",
                "changes": [
                    {"field": "leadgen", "value": {"leadgen_id": 1, "form_id": 5, "ad_id": "7"}},
                    {"field": "feed", "value": {"item": "post"}},
                    {"field": "leadgen", "value": {"leadgen_id": "2", "page_id": 998}},
                ],
            },
            {"id": "999", "changes": [{"field": "leadgen", "value": {"leadgen_id": "1"}}]},
            {"id": "999"},
        ],
    }
    assert meta_lead_notices(payload) == [
        MetaLeadNotice("1", page_id="999", form_id="5", ad_id="7"),
        MetaLeadNotice("2", page_id="998"),
    ]


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        ([], ()),
        ({"entry": {}}, ("entry",)),
        ({"entry": ["x"]}, ("entry", 0)),
        ({"entry": [{"changes": [{"field": "leadgen"}]}]}, ("entry", 0, "changes", 0, "value")),
        (
            {"entry": [{"changes": [{"field": "leadgen", "value": {}}]}]},
            ("entry", 0, "changes", 0, "value", "leadgen_id"),
        ),
    ],
)
def test_malformed_meta_payloads_name_the_place(payload: object, location: tuple[Any, ...]) -> None:
    with pytest.raises(PayloadError) as error:
        meta_lead_notices(payload)
    assert error.value.location == location


# --- Graph lead mapping ---------------------------------------------------------------------


def graph_lead(answers: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "1",
        "created_time": "2026-12-01T10:00:00+0000",
        "field_data": [{"name": k, "values": v} for k, v in answers.items()],
        **extra,
    }


def test_standard_meta_questions_fill_contact_and_profile_and_the_rest_is_custom() -> None:
    lead = graph_lead(
        {
            "full_name": [" 王伟 "],
            "email": ["Wei@Example.com"],
            "phone_number": ["+8613800138000"],
            "country": ["CN"],
            "zip_code": ["200000"],
            "company_name": ["上海科技"],
            "state": ["上海"],
            "city": ["Shanghai"],
            "job_title": ["经理"],
            "意向程度": ["很高"],
            "services": ["pt", "", "yoga"],
        },
        ad_id=60001,
        adset_id="60002",
        campaign_id="60003",
        campaign_name="Spring",
        form_id="555",
        platform="fb",
        is_organic=False,
    )
    mapped = map_meta_lead(lead, MetaLeadNotice("1", page_id="9"), received_at=NOW)

    assert mapped.external_id == "meta:1"
    assert (mapped.name, mapped.email, mapped.phone) == (
        "王伟",
        "Wei@Example.com",
        "+8613800138000",
    )
    assert mapped.profile.country == "CN"
    assert mapped.profile.postal_code == "200000"
    assert mapped.profile.company == "上海科技"
    assert mapped.profile.region == "上海"
    assert mapped.profile.custom == {
        "city": "Shanghai",
        "job_title": "经理",
        "意向程度": "很高",
        "services": "pt, yoga",
    }
    attribution = mapped.attribution
    assert (attribution.channel, attribution.ad_platform, attribution.source) == (
        "ad",
        "meta",
        "meta_lead_ads",
    )
    assert attribution.campaign == "Spring"
    assert attribution.campaign_id == "60003"
    assert attribution.form_id == "555"
    assert attribution.ad_ids == {
        "leadgen_id": "1",
        "page_id": "9",
        "form_id": "555",
        "ad_id": "60001",
        "adset_id": "60002",
        "campaign_id": "60003",
        "platform": "fb",
        "is_organic": "false",
        "created_time": "2026-12-01T10:00:00+0000",
    }
    assert mapped.received_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # submit time


def test_the_receipt_time_stands_in_when_the_platform_gives_no_submit_time() -> None:
    lead = graph_lead({"email": ["a@b.co"]}, created_time="yesterday")
    assert map_meta_lead(lead, MetaLeadNotice("5"), received_at=NOW).received_at == NOW


def test_a_country_written_out_is_kept_as_a_custom_answer() -> None:
    lead = graph_lead({"email": ["a@b.co"], "country": ["대한민국"]})
    mapped = map_meta_lead(lead, MetaLeadNotice("6"), received_at=NOW)
    assert mapped.profile.country is None
    assert mapped.profile.custom == {"country": "대한민국"}


def test_first_and_last_name_make_the_name_when_there_is_no_full_name() -> None:
    mapped = map_meta_lead(
        graph_lead({"first_name": ["민준"], "last_name": ["김"], "email": ["a@b.co"]}),
        MetaLeadNotice("2"),
        received_at=NOW,
    )
    assert mapped.name == "민준 김"


def test_ids_from_the_notice_fill_in_what_the_graph_answer_lacks() -> None:
    mapped = map_meta_lead(
        graph_lead({"email": ["a@b.co"]}),
        MetaLeadNotice("3", form_id="77", ad_id="88", adgroup_id="99"),
        received_at=NOW,
    )
    assert mapped.attribution.ad_ids["form_id"] == "77"
    assert mapped.attribution.ad_ids["ad_id"] == "88"
    assert mapped.attribution.ad_ids["adset_id"] == "99"


def test_a_graph_answer_with_unnamed_fields_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        map_meta_lead({"field_data": [{"values": ["x"]}]}, MetaLeadNotice("4"), received_at=NOW)


# --- Google ---------------------------------------------------------------------------------


def google_payload(**extra: Any) -> dict[str, Any]:
    return {
        "lead_id": "TeSter-123",
        "user_column_data": [
            {"column_name": "Full Name", "string_value": "Dana Kim", "column_id": "FULL_NAME"},
            {
                "column_name": "User Phone",
                "string_value": "+16505550123",
                "column_id": "PHONE_NUMBER",
            },
            {"column_name": "User Email", "string_value": "dana@example.com", "column_id": "EMAIL"},
            {
                "column_name": "Work email",
                "string_value": "dana@work.example",
                "column_id": "WORK_EMAIL",
            },
            {"column_name": "Company", "string_value": "Kim Fitness", "column_id": "COMPANY_NAME"},
            {"column_name": "Country", "string_value": "US", "column_id": "COUNTRY"},
            {"column_name": "Preferred time?", "string_value": "mornings", "column_id": "q1"},
            {"column_name": "意向程度", "string_value": "高"},
            {"column_name": "Empty", "string_value": "  "},
            {"column_name": "No value"},
        ],
        "api_version": "1.0",
        "form_id": 40000000000,
        "campaign_id": 20000000000,
        "google_key": "k",
        "is_test": True,
        "gcl_id": "gclid-1",
        "adgroup_id": 20000000001,
        "creative_id": 30000000000,
        "lead_submit_time": "2026-12-01T12:30:00Z",
        **extra,
    }


def test_google_columns_map_to_contact_profile_and_custom_questions() -> None:
    lead = google_lead(google_payload(surprise_new_field=[1, 2]))
    mapped = map_google_lead(lead, received_at=NOW)

    assert mapped.external_id == "google:TeSter-123"
    assert (mapped.name, mapped.phone, mapped.email) == (
        "Dana Kim",
        "+16505550123",
        "dana@example.com",  # the personal email first, the work email as a fallback
    )
    assert mapped.profile.company == "Kim Fitness"
    assert mapped.profile.country == "US"
    assert mapped.profile.custom == {"Preferred time?": "mornings", "意向程度": "高"}
    assert mapped.is_test is True
    assert mapped.attribution.ad_platform == "google"
    assert mapped.attribution.form_id == "40000000000"
    assert mapped.attribution.ad_ids == {
        "lead_id": "TeSter-123",
        "form_id": "40000000000",
        "campaign_id": "20000000000",
        "adgroup_id": "20000000001",
        "creative_id": "30000000000",
        "gcl_id": "gclid-1",
        "lead_submit_time": "2026-12-01T12:30:00Z",
        "api_version": "1.0",
    }


def test_work_contact_details_are_used_when_personal_ones_are_missing() -> None:
    payload = google_payload()
    payload["user_column_data"] = [
        {"column_id": "WORK_EMAIL", "string_value": "w@work.example"},
        {"column_id": "WORK_PHONE", "string_value": "+16505550100"},
        {"column_id": "FIRST_NAME", "string_value": "Dana"},
        {"column_id": "LAST_NAME", "string_value": "Kim"},
    ]
    mapped = map_google_lead(google_lead(payload), received_at=NOW)
    assert (mapped.name, mapped.phone, mapped.email) == (
        "Dana Kim",
        "+16505550100",
        "w@work.example",
    )


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"lead_id": None}, ("lead_id",)),
        ({"form_id": "  "}, ("form_id",)),
        ({"is_test": "yes"}, ("is_test",)),
        ({"user_column_data": {"a": 1}}, ("user_column_data",)),
    ],
)
def test_malformed_google_payloads_name_the_field(
    change: dict[str, Any], location: tuple[str, ...]
) -> None:
    with pytest.raises(PayloadError) as error:
        google_lead(google_payload(**change))
    assert error.value.location == location


# --- back-off -------------------------------------------------------------------------------


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    delays = [retry_delay(n, base_s=5, max_s=60) for n in range(6)]
    assert delays == [timedelta(seconds=s) for s in (5, 10, 20, 40, 60, 60)]
    assert retry_delay(10_000, base_s=5, max_s=3600) == timedelta(hours=1)
