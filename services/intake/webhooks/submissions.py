"""What an ad platform or a CSV row becomes before intake's batch entry point takes it.

Ad webhooks and imports map what they receive into `MappedLead` (raw contact details,
attribution, profile, consent flags), and `SubmitLeads` hands a batch of them to the intake
core's `AcceptSubmissions` as `Submission` documents: one transaction per batch, each
lead's `external_id` recorded in it, so a platform's retry or a resumed import is a
`duplicate` rather than a second inquiry. Nothing here writes a lead itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from services.intake.usecases import AcceptSubmissions, ItemResult, accept_documents
from shared.events import Attribution, Profile


@dataclass(frozen=True, slots=True)
class MappedLead:
    """A lead as a channel delivered it, mapped to intake's fields but not yet cleaned."""

    external_id: str
    """Unique per delivered lead across channels: "meta:<leadgen_id>", "google:<lead_id>",
    "csv:<import_id>:<line>". A second delivery with the same id is the same lead."""
    attribution: Attribution
    received_at: datetime | None = None
    """When the person submitted, if the channel says; intake's clock otherwise."""
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    profile: Profile = field(default_factory=Profile)
    consent: Mapping[str, bool] = field(default_factory=dict)
    """Consent flags the channel gave, per channel ("email", "sms", "phone")."""
    message: str | None = None
    is_test: bool = False
    default_region: str | None = None


SubmissionOutcome = Literal["created", "merged", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class SubmissionResult:
    """What became of one mapped lead."""

    outcome: SubmissionOutcome
    lead_id: str | None = None
    reasons: tuple[tuple[str, str], ...] = ()
    """For a rejection: (field, why) for every bad field."""


def submission_document(lead: MappedLead) -> dict[str, Any]:
    """`lead` in the shape of the intake core's `Submission` (validated there: a value it
    refuses rejects this lead only, naming the field)."""
    attribution = lead.attribution
    utm = {
        name: value
        for name, value in {
            "source": attribution.utm_source,
            "medium": attribution.utm_medium,
            "campaign": attribution.utm_campaign,
            "term": attribution.utm_term,
            "content": attribution.utm_content,
        }.items()
        if value is not None
    }
    document: dict[str, Any] = {
        "external_id": lead.external_id,
        "name": lead.name,
        "phone": lead.phone,
        "email": lead.email,
        "source": attribution.source,
        "channel": attribution.channel,
        "campaign": attribution.campaign,
        "campaign_id": attribution.campaign_id,
        "utm": utm,
        "referrer": attribution.referrer,
        "landing_page": attribution.landing_page,
        "form_id": attribution.form_id,
        "ad_platform": attribution.ad_platform,
        "ad_ids": dict(attribution.ad_ids),
        "consent": dict(lead.consent),
        "profile": lead.profile.model_dump(exclude_none=True),
        "message": lead.message,
        "is_test": lead.is_test,
        "received_at": lead.received_at,
        "default_region": lead.default_region,
    }
    return {name: value for name, value in document.items() if value is not None}


class SubmitLeads:
    """Accept a batch of mapped leads through the intake core (one transaction per batch
    of up to 1,000); one result per lead, in order."""

    def __init__(self, accept: AcceptSubmissions) -> None:
        self._accept = accept

    async def __call__(self, leads: Sequence[MappedLead]) -> list[SubmissionResult]:
        if not leads:
            return []
        results = await accept_documents(self._accept, [submission_document(x) for x in leads])
        return [_result_of(item) for item in results]


def _result_of(item: ItemResult) -> SubmissionResult:
    return SubmissionResult(
        outcome=item.outcome,
        lead_id=item.lead_id,
        reasons=tuple((error.field, error.reason) for error in item.errors),
    )
