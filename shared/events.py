"""The lead lifecycle as events: the only data that crosses service boundaries.

Every event is a frozen pydantic model that names a fact in the past tense. Consumers
ignore fields they do not know, so a producer can add optional fields without a new
version; removing or changing a field needs a new `...V2` model and topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

LeadId = Annotated[str, Field(min_length=1, max_length=64)]
RepId = Annotated[str, Field(min_length=1, max_length=64)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Fields every event carries. `event_id` is what consumers de-duplicate on."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID = Field(default_factory=uuid4)
    event_type: str
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    lead_id: LeadId
    schema_version: int = 1

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


# --- value objects carried inside events ------------------------------------------------


class Contact(BaseModel):
    """Normalised contact details: phone in E.164, email lower-cased."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    timezone: str | None = None
    locale: str | None = None


class Attribution(BaseModel):
    """Where the lead came from; drives channel and campaign reports."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    source: str
    channel: str
    campaign: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None


class Consent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    email: bool = False
    sms: bool = False
    phone: bool = True


class Profile(BaseModel):
    """What routing matches pools and territory rules against."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    industry: str | None = None
    region: str | None = None
    country: str | None = None
    product_line: str | None = None
    company_size: int | None = None
    company: str | None = None


LossLevel = Literal[1, 2, 3]
Channel = Literal["email", "sms"]


# --- intake -------------------------------------------------------------------------------


class LeadReceivedV1(Event):
    event_type: Literal["lead-received"] = "lead-received"
    contact: Contact
    attribution: Attribution
    consent: Consent = Consent()
    profile: Profile = Profile()
    fit_score: int | None = None
    message: str | None = None


class LeadMergedV1(Event):
    """A repeat inquiry from a known contact: still an inquiry, merged into `lead_id`."""

    event_type: Literal["lead-merged"] = "lead-merged"
    contact: Contact
    attribution: Attribution
    matched_on: Literal["phone", "email"]
    message: str | None = None


class LeadErasedV1(Event):
    """Right to erasure: every service forgets the lead's personal data."""

    event_type: Literal["lead-erased"] = "lead-erased"
    requested_by: str | None = None


# --- assignment ---------------------------------------------------------------------------


class LeadRoutedToNurtureV1(Event):
    event_type: Literal["lead-routed-to-nurture"] = "lead-routed-to-nurture"
    reason: str
    contact: Contact | None = None


class LeadAssignedV1(Event):
    event_type: Literal["lead-assigned"] = "lead-assigned"
    rep_id: RepId
    pool_id: str | None = None
    strategy: str
    previous_rep_id: str | None = None
    received_at: AwareDatetime | None = None


class LeadReturnedToPoolV1(Event):
    event_type: Literal["lead-returned-to-pool"] = "lead-returned-to-pool"
    rep_id: RepId
    pool_id: str | None = None
    reason: str | None = None


class LeadRejectedByRepV1(Event):
    event_type: Literal["lead-rejected-by-rep"] = "lead-rejected-by-rep"
    rep_id: RepId
    reason: str


class ActivityLoggedV1(Event):
    event_type: Literal["activity-logged"] = "activity-logged"
    rep_id: RepId
    activity: Literal["call", "email", "sms", "meeting", "note"]
    outcome: str | None = None
    note: str | None = None


class VisitScheduledV1(Event):
    event_type: Literal["visit-scheduled"] = "visit-scheduled"
    rep_id: RepId
    visit_id: str
    scheduled_for: AwareDatetime


class VisitCheckedInV1(Event):
    event_type: Literal["visit-checked-in"] = "visit-checked-in"
    rep_id: RepId | None = None
    visit_id: str | None = None
    walk_in: bool = False


class LeadConvertedV1(Event):
    event_type: Literal["lead-converted"] = "lead-converted"
    rep_id: RepId
    revenue: float = Field(ge=0)
    currency: str = "USD"
    product: str | None = None


class LeadLostV1(Event):
    """Level 1 invalid contact (final), 2 bought elsewhere, 3 busy / not now (both nurtured)."""

    event_type: Literal["lead-lost"] = "lead-lost"
    rep_id: RepId | None = None
    level: LossLevel
    reason: str | None = None
    contact: Contact | None = None
    consent: Consent | None = None


class SlaBreachedV1(Event):
    event_type: Literal["sla-breached"] = "sla-breached"
    rep_id: RepId
    sla: str
    due_at: AwareDatetime


# --- nurture ------------------------------------------------------------------------------


class LeadEnrolledV1(Event):
    event_type: Literal["lead-enrolled"] = "lead-enrolled"
    sequence_id: str
    reason: str


class MessageSentV1(Event):
    event_type: Literal["message-sent"] = "message-sent"
    sequence_id: str
    step: int = Field(ge=0)
    channel: Channel
    message_id: str


class MessageFailedV1(Event):
    event_type: Literal["message-failed"] = "message-failed"
    sequence_id: str
    step: int = Field(ge=0)
    channel: Channel
    error: str


class EngagementRecordedV1(Event):
    event_type: Literal["engagement-recorded"] = "engagement-recorded"
    kind: Literal["open", "click", "reply", "web_visit"]
    message_id: str | None = None
    score: float | None = None


class LeadOptedOutV1(Event):
    event_type: Literal["lead-opted-out"] = "lead-opted-out"
    channel: Channel | Literal["all"]


class LeadRequalifiedV1(Event):
    event_type: Literal["lead-requalified"] = "lead-requalified"
    score: float
    reason: str


AnyEvent = Annotated[
    LeadReceivedV1
    | LeadMergedV1
    | LeadErasedV1
    | LeadRoutedToNurtureV1
    | LeadAssignedV1
    | LeadReturnedToPoolV1
    | LeadRejectedByRepV1
    | ActivityLoggedV1
    | VisitScheduledV1
    | VisitCheckedInV1
    | LeadConvertedV1
    | LeadLostV1
    | SlaBreachedV1
    | LeadEnrolledV1
    | MessageSentV1
    | MessageFailedV1
    | EngagementRecordedV1
    | LeadOptedOutV1
    | LeadRequalifiedV1,
    Field(discriminator="event_type"),
]
"""Any lifecycle event, told apart by `event_type` (what analytics consumes)."""
