"""Pure decisions of the ad-platform webhooks: is a delivery authentic, which leads does it
announce, and how a platform's lead maps onto intake's fields. No I/O, no clock reads."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.intake.webhooks.submissions import MappedLead
from shared.events import Attribution, Profile

SIGNATURE_PREFIX = "sha256="

META_SOURCE = "meta_lead_ads"
GOOGLE_SOURCE = "google_lead_form"

# --- authenticity -------------------------------------------------------------------------


def meta_signature_valid(raw_body: bytes, header: str | None, app_secret: str) -> bool:
    """Whether `X-Hub-Signature-256` is the app secret's HMAC-SHA256 of the exact bytes
    received (never of re-serialised JSON: any re-encoding changes the digest)."""
    if not app_secret or not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len(SIGNATURE_PREFIX) :].strip().lower())


def key_digest(key: str) -> str:
    """What is kept of a Google form key: its SHA-256 (compared in constant time)."""
    return hashlib.sha256(key.encode()).hexdigest()


def google_key_valid(given: str | None, expected_digest: str | None) -> bool:
    if not given or not expected_digest:
        return False
    return hmac.compare_digest(key_digest(given), expected_digest)


# --- ids ----------------------------------------------------------------------------------


class PayloadError(ValueError):
    """A delivery that is authentic but not shaped as the platform documents it."""

    def __init__(self, location: Sequence[str | int], reason: str) -> None:
        super().__init__(f"{'.'.join(str(part) for part in location)}: {reason}")
        self.location = tuple(location)
        self.reason = reason


def platform_id(value: object, location: Sequence[str | int]) -> str:
    """An id as a string: platforms send ids as JSON numbers or strings."""
    if isinstance(value, bool):
        raise PayloadError(location, "an id must be a number or a string")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise PayloadError(location, "an id must be a number or a non-empty string")


def optional_id(value: object, location: Sequence[str | int]) -> str | None:
    return None if value is None or value == "" else platform_id(value, location)


# --- Meta Lead Ads ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetaLeadNotice:
    """One `leadgen` change of a Meta webhook: the ids only; the answers are fetched."""

    leadgen_id: str
    page_id: str | None = None
    form_id: str | None = None
    ad_id: str | None = None
    adgroup_id: str | None = None


def meta_lead_notices(payload: object) -> list[MetaLeadNotice]:
    """Every `leadgen` change of every entry, in order, without repeats; other fields
    (a page's feed, messages, ...) are ignored."""
    if not isinstance(payload, Mapping):
        raise PayloadError((), "the body must be a JSON object")
    entries = payload.get("entry", [])
    if not isinstance(entries, list):
        raise PayloadError(("entry",), "must be a list")
    notices: dict[str, MetaLeadNotice] = {}
    for e, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise PayloadError(("entry", e), "must be an object")
        changes = entry.get("changes", [])
        if not isinstance(changes, list):
            raise PayloadError(("entry", e, "changes"), "must be a list")
        for c, change in enumerate(changes):
            if not isinstance(change, Mapping) or change.get("field") != "leadgen":
                continue
            value = change.get("value")
            where: list[str | int] = ["entry", e, "changes", c, "value"]
            if not isinstance(value, Mapping):
                raise PayloadError(where, "a leadgen change needs a value object")
            leadgen_id = platform_id(value.get("leadgen_id"), [*where, "leadgen_id"])
            notices.setdefault(
                leadgen_id,
                MetaLeadNotice(
                    leadgen_id=leadgen_id,
                    page_id=optional_id(value.get("page_id", entry.get("id")), [*where, "page_id"]),
                    form_id=optional_id(value.get("form_id"), [*where, "form_id"]),
                    ad_id=optional_id(value.get("ad_id"), [*where, "ad_id"]),
                    adgroup_id=optional_id(value.get("adgroup_id"), [*where, "adgroup_id"]),
                ),
            )
    return list(notices.values())


GRAPH_LEAD_FIELDS = (
    "id,created_time,field_data,ad_id,ad_name,adset_id,adset_name,campaign_id,"
    "campaign_name,form_id,is_organic,platform"
)
"""What the fetcher asks the Graph API for (`fields=`): without it only id, created_time
and field_data come back."""

_META_NAME = ("full_name",)
_META_FIRST = ("first_name",)
_META_LAST = ("last_name",)
_META_EMAIL = ("email", "work_email")
_META_PHONE = ("phone_number", "work_phone_number", "phone")
_META_PROFILE = {
    "country": "country",
    "zip_code": "postal_code",
    "zip": "postal_code",
    "post_code": "postal_code",
    "postal_code": "postal_code",
    "company_name": "company",
    "state": "region",
    "province": "region",
}


def _fits(target: str, value: str) -> bool:
    """Whether an answer can be the profile field: `country` is an ISO code ("KR"); a
    country written out ("대한민국") is kept as a custom answer instead."""
    return target != "country" or (len(value) == 2 and value.isascii() and value.isalpha())


def submit_time(text: object) -> datetime | None:
    """A platform's submit time ("2026-12-01T10:00:00+0000", "2026-12-01T12:30:00Z"), if it
    is one with a time zone."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            return None
    return parsed if parsed.tzinfo is not None else None


def _first(values: Mapping[str, str], names: Iterable[str]) -> str | None:
    return next((values[n] for n in names if values.get(n)), None)


def _joined_name(first: str | None, last: str | None) -> str | None:
    parts = [part for part in (first, last) if part]
    return " ".join(parts) or None


def meta_answers(lead: Mapping[str, Any]) -> dict[str, str]:
    """`field_data` as name -> answer (several values of one question joined by ", ")."""
    answers: dict[str, str] = {}
    field_data = lead.get("field_data") or []
    if not isinstance(field_data, list):
        raise PayloadError(("field_data",), "must be a list")
    for i, item in enumerate(field_data):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise PayloadError(("field_data", i), "each answer needs a name")
        values = item.get("values") or []
        if not isinstance(values, list):
            raise PayloadError(("field_data", i, "values"), "must be a list")
        text = ", ".join(str(v).strip() for v in values if v is not None and str(v).strip())
        if text:
            answers[item["name"]] = text
    return answers


def map_meta_lead(
    lead: Mapping[str, Any], notice: MetaLeadNotice, *, received_at: datetime
) -> MappedLead:
    """A Graph API lead (`GET /{version}/{leadgen_id}`) as intake's fields: standard
    questions to contact and profile, custom questions to `profile.custom` by their name."""
    answers = meta_answers(lead)
    standard = {*_META_NAME, *_META_FIRST, *_META_LAST, *_META_EMAIL, *_META_PHONE}
    profile_fields: dict[str, str] = {}
    custom: dict[str, str] = {}
    for name, answer in answers.items():
        if name in standard:
            continue
        target = _META_PROFILE.get(name)
        if target is not None and target not in profile_fields and _fits(target, answer):
            profile_fields[target] = answer
        else:
            custom[name] = answer
    ad_ids = {
        "leadgen_id": notice.leadgen_id,
        **{
            key: value
            for key, value in {
                "page_id": notice.page_id,
                "form_id": optional_id(lead.get("form_id"), ("form_id",)) or notice.form_id,
                "ad_id": optional_id(lead.get("ad_id"), ("ad_id",)) or notice.ad_id,
                "adset_id": optional_id(lead.get("adset_id"), ("adset_id",)) or notice.adgroup_id,
                "campaign_id": optional_id(lead.get("campaign_id"), ("campaign_id",)),
            }.items()
            if value is not None
        },
    }
    if isinstance(lead.get("platform"), str):
        ad_ids["platform"] = lead["platform"]
    if isinstance(lead.get("is_organic"), bool):
        ad_ids["is_organic"] = str(lead["is_organic"]).lower()
    if isinstance(lead.get("created_time"), str):
        ad_ids["created_time"] = lead["created_time"]
    campaign_name = lead.get("campaign_name")
    return MappedLead(
        external_id=f"meta:{notice.leadgen_id}",
        name=_first(answers, _META_NAME)
        or _joined_name(_first(answers, _META_FIRST), _first(answers, _META_LAST)),
        phone=_first(answers, _META_PHONE),
        email=_first(answers, _META_EMAIL),
        profile=Profile(**profile_fields, custom=custom),
        received_at=submit_time(lead.get("created_time")) or received_at,
        attribution=Attribution(
            source=META_SOURCE,
            channel="ad",
            campaign=campaign_name if isinstance(campaign_name, str) else None,
            campaign_id=ad_ids.get("campaign_id"),
            form_id=ad_ids.get("form_id"),
            ad_platform="meta",
            ad_ids=ad_ids,
        ),
    )


# --- Google Ads lead forms ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoogleLead:
    """A Google Ads lead-form delivery, ids as strings, unknown fields dropped."""

    lead_id: str
    form_id: str
    google_key: str | None
    columns: tuple[tuple[str | None, str | None, str], ...]
    """(column_id, column_name, string_value) per answer, in order."""
    campaign_id: str | None = None
    adgroup_id: str | None = None
    creative_id: str | None = None
    asset_group_id: str | None = None
    gcl_id: str | None = None
    lead_submit_time: str | None = None
    lead_stage: str | None = None
    api_version: str | None = None
    is_test: bool = False


def google_lead(payload: object) -> GoogleLead:
    """Read a delivery (https://developers.google.com/google-ads/webhook/docs/implementation);
    fields Google adds later are tolerated and ignored."""
    if not isinstance(payload, Mapping):
        raise PayloadError((), "the body must be a JSON object")
    columns: list[tuple[str | None, str | None, str]] = []
    data = payload.get("user_column_data") or []
    if not isinstance(data, list):
        raise PayloadError(("user_column_data",), "must be a list")
    for i, column in enumerate(data):
        if not isinstance(column, Mapping):
            raise PayloadError(("user_column_data", i), "must be an object")
        value = column.get("string_value")
        if value is None:
            continue
        column_id = column.get("column_id")
        column_name = column.get("column_name")
        columns.append(
            (
                column_id if isinstance(column_id, str) and column_id else None,
                column_name if isinstance(column_name, str) and column_name else None,
                str(value),
            )
        )
    is_test = payload.get("is_test", False)
    if not isinstance(is_test, bool):
        raise PayloadError(("is_test",), "must be true or false")
    key = payload.get("google_key")

    def text(name: str) -> str | None:
        value = payload.get(name)
        return value if isinstance(value, str) and value else None

    return GoogleLead(
        lead_id=platform_id(payload.get("lead_id"), ("lead_id",)),
        form_id=platform_id(payload.get("form_id"), ("form_id",)),
        google_key=key if isinstance(key, str) else None,
        columns=tuple(columns),
        campaign_id=optional_id(payload.get("campaign_id"), ("campaign_id",)),
        adgroup_id=optional_id(payload.get("adgroup_id"), ("adgroup_id",)),
        creative_id=optional_id(payload.get("creative_id"), ("creative_id",)),
        asset_group_id=optional_id(payload.get("asset_group_id"), ("asset_group_id",)),
        gcl_id=text("gcl_id"),
        lead_submit_time=text("lead_submit_time"),
        lead_stage=text("lead_stage"),
        api_version=text("api_version"),
        is_test=is_test,
    )


_GOOGLE_CONTACT = {
    "FULL_NAME": "name",
    "FIRST_NAME": "first_name",
    "LAST_NAME": "last_name",
    "EMAIL": "email",
    "WORK_EMAIL": "work_email",
    "PHONE_NUMBER": "phone",
    "WORK_PHONE": "work_phone",
}
_GOOGLE_PROFILE = {
    "POSTAL_CODE": "postal_code",
    "COUNTRY": "country",
    "REGION": "region",
    "COMPANY_NAME": "company",
}


def google_answers(lead: GoogleLead) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(contact answers, profile fields, custom questions by their label)."""
    contact: dict[str, str] = {}
    profile: dict[str, str] = {}
    custom: dict[str, str] = {}
    for column_id, column_name, raw in lead.columns:
        value = raw.strip()
        if not value:
            continue
        key = (column_id or "").upper()
        if key in _GOOGLE_CONTACT:
            contact.setdefault(_GOOGLE_CONTACT[key], value)
        elif key in _GOOGLE_PROFILE and _fits(_GOOGLE_PROFILE[key], value):
            profile.setdefault(_GOOGLE_PROFILE[key], value)
        else:
            # Custom questions: the label the person saw, else Google's column id.
            custom[column_name or column_id or "answer"] = value
    return contact, profile, custom


def map_google_lead(lead: GoogleLead, *, received_at: datetime) -> MappedLead:
    contact, profile, custom = google_answers(lead)
    ad_ids = {
        key: value
        for key, value in {
            "lead_id": lead.lead_id,
            "form_id": lead.form_id,
            "campaign_id": lead.campaign_id,
            "adgroup_id": lead.adgroup_id,
            "creative_id": lead.creative_id,
            "asset_group_id": lead.asset_group_id,
            "gcl_id": lead.gcl_id,
            "lead_submit_time": lead.lead_submit_time,
            "lead_stage": lead.lead_stage,
            "api_version": lead.api_version,
        }.items()
        if value is not None
    }
    return MappedLead(
        external_id=f"google:{lead.lead_id}",
        name=contact.get("name")
        or _joined_name(contact.get("first_name"), contact.get("last_name")),
        phone=contact.get("phone") or contact.get("work_phone"),
        email=contact.get("email") or contact.get("work_email"),
        profile=Profile(**profile, custom=custom),
        attribution=Attribution(
            source=GOOGLE_SOURCE,
            channel="ad",
            campaign_id=lead.campaign_id,
            form_id=lead.form_id,
            ad_platform="google",
            ad_ids=ad_ids,
        ),
        received_at=submit_time(lead.lead_submit_time) or received_at,
        is_test=lead.is_test,
    )


# --- retries ------------------------------------------------------------------------------


def retry_delay(attempts: int, *, base_s: float, max_s: float) -> timedelta:
    """Exponential back-off: base, 2x base, 4x base, ... capped at `max_s`."""
    exponent = min(max(attempts, 0), 32)
    return timedelta(seconds=min(base_s * (2**exponent), max_s))
