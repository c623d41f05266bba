"""The lead lifecycle as events: the only data that crosses service boundaries.

Every event is a frozen pydantic model that names a fact in the past tense. Consumers
ignore fields they do not know, so a producer can add optional fields without a new
version; removing or changing a field needs a new `...V2` model and topic.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
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


InquiryChannel = Literal["phone", "walk_in", "web_form", "ad", "import", "referral"]
"""How the person reached us; kept apart for reporting (phone vs online inquiries)."""


class Attribution(BaseModel):
    """Where the lead came from; drives channel, source and campaign reports.

    `channel` is one of `InquiryChannel` for leads intake accepts; it stays a plain string
    in the contract so an older consumer never rejects a newer channel.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    source: str
    channel: str
    campaign: str | None = None
    campaign_id: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    form_id: str | None = None
    ad_platform: Literal["meta", "google"] | None = None
    ad_ids: dict[str, str] = Field(default_factory=dict)
    """Platform ids as strings: leadgen_id, ad_id, adset_id, campaign_id, gcl_id, ..."""


ConsentChannel = Literal["email", "sms", "phone"]


class ConsentRecord(BaseModel):
    """One consent given or withdrawn: when, where and the exact wording shown."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    channel: ConsentChannel
    granted: bool
    at: AwareDatetime
    source: str
    wording: str | None = None


class Consent(BaseModel):
    """Whether the person may be contacted on each channel, with the records behind it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    email: bool = False
    sms: bool = False
    phone: bool = True
    records: tuple[ConsentRecord, ...] = ()


class Profile(BaseModel):
    """What routing matches pools and territory rules against."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    industry: str | None = None
    region: str | None = None
    country: str | None = None
    product_line: str | None = None
    company_size: int | None = None
    company: str | None = None
    postal_code: str | None = None
    language: str | None = None
    custom: dict[str, str] = Field(default_factory=dict)
    """Per-source custom questions, by their label (seed 002: "意向程度", "企业规模")."""


FitGrade = Literal["A", "B", "C", "D"]


class FitScore(BaseModel):
    """Fit against the ideal-customer profile: 0-100, a grade and what made it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    score: int = Field(ge=0, le=100)
    grade: FitGrade
    factors: dict[str, int] = Field(default_factory=dict)


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
    fit: FitScore | None = None
    message: str | None = None
    is_test: bool = False
    """A platform's test lead (Google `is_test`, Meta's testing tool): kept out of reports."""


class LeadMergedV1(Event):
    """A repeat inquiry from a known contact: still an inquiry, merged into `lead_id`."""

    event_type: Literal["lead-merged"] = "lead-merged"
    contact: Contact
    attribution: Attribution
    matched_on: Literal["phone", "email"]
    message: str | None = None
    consent: Consent | None = None
    profile: Profile | None = None
    is_test: bool = False


class LeadErasedV1(Event):
    """Right to erasure: every service forgets the lead's personal data."""

    event_type: Literal["lead-erased"] = "lead-erased"
    requested_by: str | None = None


class CampaignSavedV1(Event):
    """A campaign created or changed. Configuration, not a lead fact: `lead_id` carries the
    partition key `campaign:<campaign_id>` so every change to one campaign stays in order."""

    event_type: Literal["campaign-saved"] = "campaign-saved"
    campaign_id: str
    name: str
    channel: str
    cost: float = Field(ge=0, default=0, allow_inf_nan=False)
    currency: str = "USD"
    starts_on: date | None = None
    ends_on: date | None = None


# --- assignment ---------------------------------------------------------------------------


class RoutingReason(BaseModel):
    """Why a lead went where it went: the rule, the pool, the strategy, who was skipped."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    rule_id: str | None = None
    pool_id: str | None = None
    strategy: str | None = None
    skipped: dict[str, str] = Field(default_factory=dict)
    """rep_id -> why the rep was passed over (off shift, away, at capacity, rejected ...)."""
    note: str | None = None


class LeadRoutedToNurtureV1(Event):
    event_type: Literal["lead-routed-to-nurture"] = "lead-routed-to-nurture"
    reason: str
    contact: Contact | None = None
    consent: Consent | None = None
    why: RoutingReason | None = None


class LeadQueuedV1(Event):
    """No eligible rep is on shift or has capacity: the lead waits in the pool's queue."""

    event_type: Literal["lead-queued"] = "lead-queued"
    pool_id: str
    reason: str
    why: RoutingReason | None = None


class LeadAssignedV1(Event):
    event_type: Literal["lead-assigned"] = "lead-assigned"
    rep_id: RepId
    pool_id: str | None = None
    strategy: str
    previous_rep_id: str | None = None
    received_at: AwareDatetime | None = None
    how: Literal["routed", "claimed", "reassigned", "bulk", "handover", "repeat", "requalified"] = (
        "routed"
    )
    why: RoutingReason | None = None
    sla_due_at: AwareDatetime | None = None
    assigned_by: str | None = None


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
    activity: Literal["call", "email", "sms", "meeting", "note", "visit_note", "tm_note"]
    outcome: str | None = None
    """For calls: reached / no_answer / wrong_number / visit_booked."""
    note: str | None = None
    first_contact: bool = False
    """The lead's first contact by a rep: it stops the first-response SLA clock."""
    received_at: AwareDatetime | None = None


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
    """True for a walk-in, False for a visit that was reserved (booked) beforehand."""


class SatisfactionRecordedV1(Event):
    """The next-day satisfaction callback after a visit (seed 004): a score of 1-10."""

    event_type: Literal["satisfaction-recorded"] = "satisfaction-recorded"
    rep_id: RepId | None = None
    visit_id: str | None = None
    score: int = Field(ge=1, le=10)
    note: str | None = None


class OpportunityOpenedV1(Event):
    """A sales opportunity (seed 003 funnel): an expected amount at a stage."""

    event_type: Literal["opportunity-opened"] = "opportunity-opened"
    rep_id: RepId
    opportunity_id: str
    amount: float = Field(ge=0, allow_inf_nan=False)
    currency: str = "USD"
    stage: str


class LeadConvertedV1(Event):
    event_type: Literal["lead-converted"] = "lead-converted"
    rep_id: RepId
    revenue: float = Field(ge=0, allow_inf_nan=False)
    currency: str = "USD"
    product: str | None = None
    customer_id: str | None = None
    plan: str | None = None
    opportunity_id: str | None = None


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
    pool_id: str | None = None
    escalated_to: str | None = None
    reassigned: bool = False


# --- nurture ------------------------------------------------------------------------------


class LeadEnrolledV1(Event):
    event_type: Literal["lead-enrolled"] = "lead-enrolled"
    sequence_id: str
    reason: str
    sequence_version: int | None = None


class MessageSentV1(Event):
    event_type: Literal["message-sent"] = "message-sent"
    sequence_id: str
    step: int = Field(ge=0)
    channel: Channel
    message_id: str
    sequence_version: int | None = None
    due_at: AwareDatetime | None = None


class MessageStatusUpdatedV1(Event):
    """A provider's delivery report (SMS status callback, email bounce); never backwards."""

    event_type: Literal["message-status-updated"] = "message-status-updated"
    sequence_id: str | None = None
    step: int | None = Field(ge=0, default=None)
    channel: Channel
    message_id: str
    status: Literal["queued", "sent", "delivered", "undelivered", "failed", "bounced"]
    error_code: str | None = None


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
    sequence_id: str | None = None
    step: int | None = Field(ge=0, default=None)
    channel: Channel | None = None
    url: str | None = None
    temperature: Literal["cold", "warm", "hot"] | None = None


class LeadOptedOutV1(Event):
    event_type: Literal["lead-opted-out"] = "lead-opted-out"
    channel: Channel | Literal["all"]
    reason: str | None = None
    """How: sms_keyword, one_click, carrier_opt_out (Twilio 21610), by_hand, ..."""
    sequence_id: str | None = None


class LeadOptedInV1(Event):
    """The lead opted back into one channel (SMS START / UNSTOP / YES after STOP): nurture
    may use it again. Only ever undoes an opt-out of that channel (a hard bounce stays)."""

    event_type: Literal["lead-opted-in"] = "lead-opted-in"
    channel: Channel
    reason: str | None = None
    """How: sms_keyword, by_hand, ..."""


class LeadRequalifiedV1(Event):
    event_type: Literal["lead-requalified"] = "lead-requalified"
    score: float
    reason: str
    sequence_id: str | None = None
    previous_rep_id: str | None = None


AnyEvent = Annotated[
    LeadReceivedV1
    | LeadMergedV1
    | LeadErasedV1
    | CampaignSavedV1
    | LeadRoutedToNurtureV1
    | LeadQueuedV1
    | LeadAssignedV1
    | LeadReturnedToPoolV1
    | LeadRejectedByRepV1
    | ActivityLoggedV1
    | VisitScheduledV1
    | VisitCheckedInV1
    | SatisfactionRecordedV1
    | OpportunityOpenedV1
    | LeadConvertedV1
    | LeadLostV1
    | SlaBreachedV1
    | LeadEnrolledV1
    | MessageSentV1
    | MessageStatusUpdatedV1
    | MessageFailedV1
    | EngagementRecordedV1
    | LeadOptedOutV1
    | LeadOptedInV1
    | LeadRequalifiedV1,
    Field(discriminator="event_type"),
]
"""Any lifecycle event, told apart by `event_type` (what analytics consumes)."""
