"""What an ad platform or a CSV row becomes before intake's batch use case takes it.

Ad webhooks and imports map what they receive into `MappedLead` (raw contact details,
attribution, profile, consent) and hand a batch to `SubmitLeads`, which cleans the contact
details and calls the intake core's batch accept. Nothing here writes a lead itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.intake.rules import Acceptance, LeadRejected, NewLead, normalise_contact
from services.intake.usecases import AcceptLeads
from shared.events import Attribution, Consent, Profile

SUBMISSION_NAMESPACE = uuid.UUID("6f1d8f3e-3c55-4a53-9a11-2d0b8a6f7c21")
"""Lead ids of mapped leads derive from their idempotency key: the same platform lead
always proposes the same lead id."""


@dataclass(frozen=True, slots=True)
class MappedLead:
    """A lead as a channel delivered it, mapped to intake's fields but not yet cleaned."""

    idempotency_key: str
    """Unique per delivered lead across channels: "meta:<leadgen_id>", "google:<lead_id>",
    "import:<import_id>:<line>". A second delivery with the same key is the same lead."""
    attribution: Attribution
    received_at: datetime
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    profile: Profile = field(default_factory=Profile)
    consent: Consent = field(default_factory=Consent)
    message: str | None = None
    is_test: bool = False
    default_region: str | None = None


@dataclass(frozen=True, slots=True)
class SubmissionResult:
    """What became of one mapped lead."""

    outcome: Literal["created", "merged", "rejected"]
    lead_id: str | None = None
    reasons: tuple[tuple[str, str], ...] = ()
    """For a rejection: (field, why) for every bad field."""


def proposed_lead_id(idempotency_key: str) -> str:
    return uuid.uuid5(SUBMISSION_NAMESPACE, idempotency_key).hex


class SubmitLeads:
    """Clean a batch of mapped leads and accept them through the intake core, one
    transaction for the batch. Leads whose details are unusable are rejected with every
    bad field named; the rest are accepted."""

    def __init__(self, accept: AcceptLeads, *, default_region: str) -> None:
        self._accept = accept
        self._default_region = default_region

    async def __call__(self, leads: Sequence[MappedLead]) -> list[SubmissionResult]:
        results: list[SubmissionResult | None] = [None] * len(leads)
        cleaned: list[NewLead] = []
        positions: list[int] = []
        for index, lead in enumerate(leads):
            contact = normalise_contact(
                name=lead.name,
                phone=lead.phone,
                email=lead.email,
                timezone=None,
                locale=None,
                default_region=lead.default_region or self._default_region,
            )
            if isinstance(contact, list):
                results[index] = SubmissionResult(
                    "rejected", reasons=tuple((e.field, e.reason) for e in contact)
                )
                continue
            cleaned.append(
                NewLead(
                    lead_id=proposed_lead_id(lead.idempotency_key),
                    contact=contact,
                    attribution=lead.attribution,
                    consent=lead.consent,
                    profile=lead.profile,
                    message=lead.message,
                    received_at=lead.received_at,
                )
            )
            positions.append(index)
        if cleaned:
            outcomes = await self._accept(cleaned)
            for index, outcome in zip(positions, outcomes, strict=True):
                results[index] = _result_of(outcome)
        return [r if r is not None else SubmissionResult("rejected") for r in results]


def _result_of(outcome: Acceptance | LeadRejected) -> SubmissionResult:
    if isinstance(outcome, LeadRejected):
        return SubmissionResult("rejected", reasons=((outcome.field, outcome.reason),))
    return SubmissionResult(
        "created" if outcome.outcome == "received" else "merged", lead_id=outcome.lead_id
    )
