"""Nurture's HTTP routes: sequences and enrollments, for marketing (and managers to read)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.http import from_state, unprocessable
from services.nurture.channels.email import OutboundEmail
from services.nurture.channels.errors import PermanentSendError, SendError
from services.nurture.channels.segments import count_segments
from services.nurture.channels.tokens import (
    BadTokenError,
    LinkBuilder,
    LinkClaims,
    TokenKind,
    TokenSigner,
    origin_of,
)
from services.nurture.channels.webhooks import NO_STORE, PIXEL
from services.nurture.rules import (
    AlreadyEnrolledError,
    Enrollment,
    EnrollmentStatus,
    LeadContact,
    LeadNotFoundError,
    NurtureSequence,
    SendWindow,
    SequenceExistsError,
    SequenceNotEnrollingError,
    SequenceNotFoundError,
    SequenceRecord,
    SequenceStatus,
    SkipCondition,
    Step,
    StepAnchor,
    StopReason,
    sequence_errors,
)
from services.nurture.sending import Rendered, Senders, outbound_message, render_step
from services.nurture.store import ContactFilter, EnrollmentFilter, NurtureStore
from services.nurture.templates import TEMPLATE_VARIABLES, RenderError
from services.nurture.usecases import EnrollByHand, EnrollInBulk, RecordWebVisit, Sequences
from shared.events import Channel, Contact, LeadId

router = APIRouter(prefix="/v1")
beacon_router = APIRouter(tags=["engagement"])
"""Public, at the root: the browser's visit pixel."""

Marketer = Annotated[Principal, Depends(require(Role.MARKETING))]
Reader = Annotated[Principal, Depends(require(Role.MARKETING, Role.MANAGER))]


StoreDep = Annotated[NurtureStore, Depends(from_state("store"))]
SequencesDep = Annotated[Sequences, Depends(from_state("sequences"))]
EnrollByHandDep = Annotated[EnrollByHand, Depends(from_state("enroll_by_hand"))]

SequenceId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="lower-case letters, digits, '-' and '_'; up to 64 characters",
    ),
]
Weekday = Annotated[int, Field(ge=0, le=6, description="0 is Monday, 6 is Sunday")]
LeadStage = Literal[
    "new", "assigned", "in_pool", "nurture", "lost-1", "lost-2", "lost-3", "converted"
]


class SendWindowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_hour: int = Field(ge=0, le=23, description="local hour the window opens")
    end_hour: int = Field(
        ge=1, le=24, description="local hour it closes; earlier than start_hour: overnight"
    )


TEMPLATE_HELP = "Jinja2 template (sandboxed); variables: " + ", ".join(sorted(TEMPLATE_VARIABLES))


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    delay_hours: int = Field(
        ge=0, le=24 * 730, description="hours after the enrollment or the previous step"
    )
    after: StepAnchor = Field(
        default=StepAnchor.PREVIOUS,
        description="what the delay counts from: the previous step's send or the enrollment",
    )
    subject: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description=f"email only. {TEMPLATE_HELP}"
    )
    body: str = Field(
        min_length=1,
        max_length=20_000,
        description=f"the SMS text, or the email's plain-text part. {TEMPLATE_HELP}",
    )
    html: Annotated[str, Field(min_length=1, max_length=100_000)] | None = Field(
        default=None, description=f"email only: the HTML part (values are escaped). {TEMPLATE_HELP}"
    )
    skip_if: list[SkipCondition] = Field(
        default_factory=list, max_length=3, description="skip this step when any of these holds"
    )
    send_window: SendWindowSpec | None = Field(
        default=None, description="this step's own window (else the sequence's)"
    )
    weekdays: list[Weekday] | None = Field(
        default=None, description="this step's own weekdays (else the sequence's)"
    )

    def to_step(self) -> Step:
        window = self.send_window
        return Step(
            channel=self.channel,
            delay_hours=self.delay_hours,
            body=self.body,
            subject=self.subject,
            html=self.html,
            after=self.after,
            skip_if=tuple(self.skip_if),
            send_window=None if window is None else SendWindow(**window.model_dump()),
            weekdays=None if self.weekdays is None else tuple(sorted(set(self.weekdays))),
        )


class SequenceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    steps: list[StepSpec] = Field(max_length=50)
    send_window: SendWindowSpec | None = Field(
        default=None, description="in the lead's time zone; absent: any hour"
    )
    weekdays: list[Weekday] | None = Field(
        default=None, description="in the lead's time zone; absent: every day"
    )

    def to_sequence(self, sequence_id: str) -> NurtureSequence:
        window = self.send_window
        return NurtureSequence(
            sequence_id=sequence_id,
            name=self.name,
            steps=tuple(step.to_step() for step in self.steps),
            send_window=None if window is None else SendWindow(**window.model_dump()),
            weekdays=None if self.weekdays is None else tuple(sorted(set(self.weekdays))),
        )


class SequenceCreate(SequenceBase):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sequence_id": "spring-trial-follow-up",
                    "name": "Spring trial follow-up",
                    "steps": [
                        {
                            "channel": "email",
                            "delay_hours": 24,
                            "subject": "Your trial, {{name}}",
                            "body": "Hi {{name}}, how was your first visit?",
                        },
                        {"channel": "sms", "delay_hours": 72, "body": "Book your next visit?"},
                    ],
                    "send_window": {"start_hour": 9, "end_hour": 20},
                    "weekdays": [0, 1, 2, 3, 4, 5],
                }
            ]
        },
    )

    sequence_id: SequenceId


class SequenceReplace(SequenceBase):
    """The whole new content of a sequence (PUT replaces, it does not patch)."""


class SequencePublic(SequenceBase):
    sequence_id: str
    version: int
    status: SequenceStatus
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: SequenceRecord) -> SequencePublic:
        return cls.model_validate(
            {
                **asdict(record.sequence),
                "version": record.version,
                "status": record.status,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
            }
        )


class EnrollmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lead_id: LeadId
    sequence_id: SequenceId


class EnrollmentPublic(BaseModel):
    enrollment_id: str
    lead_id: str
    sequence_id: str
    sequence_version: int
    reason: str
    status: EnrollmentStatus
    enrolled_at: datetime
    current_step: int
    next_send_at: datetime | None
    channels: list[Channel] = Field(
        description="channels the lead consented to and can be reached on; steps on other "
        "channels are skipped"
    )
    last_sent_at: datetime | None
    stopped_at: datetime | None
    stop_reason: StopReason | None

    @classmethod
    def from_enrollment(cls, enrollment: Enrollment) -> EnrollmentPublic:
        return cls.model_validate(asdict(enrollment))


def valid_sequence(payload: SequenceBase, sequence_id: str) -> NurtureSequence:
    """The sequence, or a 422 naming every bad field: template syntax errors and unknown
    template variables with their line, windows that never open, skip conditions that
    cannot hold."""
    sequence = payload.to_sequence(sequence_id)
    errors = sequence_errors(sequence)
    if errors:
        raise unprocessable(*((("body", *e.loc), e.reason) for e in errors))
    return sequence


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such sequence"}}


@router.post(
    "/sequences",
    response_model=SequencePublic,
    status_code=status.HTTP_201_CREATED,
    tags=["sequences"],
    summary="Create a sequence of email/SMS steps",
    responses={
        409: {"description": "a sequence with this id exists"},
        422: {"description": "a field is missing or invalid; the body names it and why"},
    },
)
async def create_sequence(
    payload: SequenceCreate, _: Marketer, sequences: SequencesDep
) -> SequencePublic:
    sequence = valid_sequence(payload, payload.sequence_id)
    try:
        record = await sequences.create(sequence)
    except SequenceExistsError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return SequencePublic.from_record(record)


@router.get(
    "/sequences", response_model=list[SequencePublic], tags=["sequences"], summary="All sequences"
)
async def list_sequences(_: Reader, sequences: SequencesDep) -> list[SequencePublic]:
    return [SequencePublic.from_record(record) for record in await sequences.all()]


@router.get(
    "/sequences/{sequence_id}",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="One sequence",
    responses=NOT_FOUND,
)
async def get_sequence(sequence_id: str, _: Reader, sequences: SequencesDep) -> SequencePublic:
    try:
        record = await sequences.get(sequence_id)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    return SequencePublic.from_record(record)


@router.put(
    "/sequences/{sequence_id}",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="Replace a sequence's name, steps, window and weekdays",
    description="Active enrollments keep their place (step index) and move on with the new "
    "steps; each enrollment records the version it started on.",
    responses={**NOT_FOUND, 422: {"description": "a field is missing or invalid"}},
)
async def replace_sequence(
    sequence_id: str, payload: SequenceReplace, _: Marketer, sequences: SequencesDep
) -> SequencePublic:
    sequence = valid_sequence(payload, sequence_id)
    try:
        record = await sequences.replace(sequence)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    return SequencePublic.from_record(record)


@router.get(
    "/enrollments",
    response_model=list[EnrollmentPublic],
    tags=["enrollments"],
    summary="Enrollments, newest first",
)
async def list_enrollments(
    _: Reader,
    store: StoreDep,
    status_: Annotated[EnrollmentStatus | None, Query(alias="status")] = None,
    sequence_id: Annotated[str | None, Query(max_length=64)] = None,
    lead_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[EnrollmentPublic]:
    where = EnrollmentFilter(status=status_, sequence_id=sequence_id, lead_id=lead_id, limit=limit)
    return [EnrollmentPublic.from_enrollment(e) for e in await store.list_enrollments(where)]


@router.get(
    "/enrollments/{lead_id}",
    response_model=EnrollmentPublic,
    tags=["enrollments"],
    summary="A lead's latest enrollment",
    description="Earlier ones: `GET /v1/enrollments?lead_id=...`.",
    responses={404: {"description": "the lead was never enrolled"}},
)
async def get_enrollment(lead_id: str, _: Reader, store: StoreDep) -> EnrollmentPublic:
    enrollment = await store.latest_enrollment(lead_id)
    if enrollment is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"lead '{lead_id}' was never enrolled"
        )
    return EnrollmentPublic.from_enrollment(enrollment)


@router.post(
    "/enrollments",
    response_model=EnrollmentPublic,
    status_code=status.HTTP_201_CREATED,
    tags=["enrollments"],
    summary="Enroll a known lead in a sequence",
    responses={
        404: {"description": "unknown lead or sequence"},
        409: {
            "description": "the lead is already active in this sequence, or the sequence "
            "is paused or archived"
        },
    },
)
async def enroll_lead(
    payload: EnrollmentCreate, _: Marketer, enroll: EnrollByHandDep
) -> EnrollmentPublic:
    try:
        enrollment = await enroll(payload.lead_id, payload.sequence_id)
    except (LeadNotFoundError, SequenceNotFoundError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    except (AlreadyEnrolledError, SequenceNotEnrollingError) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return EnrollmentPublic.from_enrollment(enrollment)


# --- pause, resume, archive ---------------------------------------------------------------------


async def _set_status(
    sequences: Sequences, sequence_id: str, status_: SequenceStatus
) -> SequencePublic:
    try:
        current = await sequences.get(sequence_id)
        if current.status is SequenceStatus.ARCHIVED and status_ is not SequenceStatus.ARCHIVED:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"sequence '{sequence_id}' is archived for good; copy it into a new one",
            )
        record = await sequences.set_status(sequence_id, status_)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    return SequencePublic.from_record(record)


STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"description": "the sequence is archived"},
}


@router.post(
    "/sequences/{sequence_id}/pause",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="Pause: nothing is sent and nobody new is enrolled until it is resumed",
    description="Enrolled leads keep their place; their due steps wait and go out after "
    "`resume` (within a minute), each still inside its send window.",
    responses=STATUS_RESPONSES,
)
async def pause_sequence(sequence_id: str, _: Marketer, sequences: SequencesDep) -> SequencePublic:
    return await _set_status(sequences, sequence_id, SequenceStatus.PAUSED)


@router.post(
    "/sequences/{sequence_id}/resume",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="Resume a paused sequence",
    responses=STATUS_RESPONSES,
)
async def resume_sequence(sequence_id: str, _: Marketer, sequences: SequencesDep) -> SequencePublic:
    return await _set_status(sequences, sequence_id, SequenceStatus.ACTIVE)


@router.post(
    "/sequences/{sequence_id}/archive",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="Archive for good: nobody new is enrolled, active enrollments stop at once",
    responses=NOT_FOUND,
)
async def archive_sequence(
    sequence_id: str, _: Marketer, sequences: SequencesDep
) -> SequencePublic:
    return await _set_status(sequences, sequence_id, SequenceStatus.ARCHIVED)


@router.get(
    "/sequences/{sequence_id}/versions/{version}",
    response_model=SequenceBase,
    tags=["sequences"],
    summary="The content of one version (what the leads enrolled on it receive)",
    responses={404: {"description": "no such sequence or version"}},
)
async def sequence_version(
    sequence_id: str, version: int, _: Reader, sequences: SequencesDep
) -> SequenceBase:
    try:
        record = await sequences.get(sequence_id)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    if version != record.version and version not in record.history:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"sequence '{sequence_id}' has no version {version}"
        )
    content = asdict(record.at(version))
    del content["sequence_id"]
    return SequenceBase.model_validate(content)


# --- preview and test send ----------------------------------------------------------------------


class SampleLead(BaseModel):
    """A lead to render a template for; what it leaves out is blank."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    locale: str | None = Field(default=None, max_length=35)
    custom: dict[str, str] = Field(default_factory=dict, max_length=50)

    def to_contact(self, lead_id: str) -> LeadContact:
        contact = Contact(name=self.name, email=self.email, phone=self.phone, locale=self.locale)
        return LeadContact(lead_id, contact=contact)


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int = Field(default=0, ge=0, description="index of the step to render")
    lead: SampleLead = Field(default_factory=SampleLead)


class SmsSegmentsPublic(BaseModel):
    encoding: str
    units: int
    segments: int


class PreviewPublic(BaseModel):
    channel: Channel
    subject: str | None
    text: str
    html: str | None
    sms: SmsSegmentsPublic | None = Field(
        description="SMS only: GSM-7 or UCS-2 (Korean, Chinese) and how many parts it is sent as"
    )


def _rendered_step(
    record: SequenceRecord, index: int, lead: SampleLead, unsubscribe_url: str | None
) -> tuple[Step, Rendered]:
    steps = record.sequence.steps
    if index >= len(steps):
        raise unprocessable((("body", "step"), f"the sequence has {len(steps)} step(s)"))
    step = steps[index]
    try:
        rendered = render_step(
            step,
            lead.to_contact("preview"),
            record.sequence.name,
            unsubscribe_url=unsubscribe_url,
            custom=lead.custom,
        )
    except RenderError as error:
        raise unprocessable(
            (("body", "lead"), f"step {index} {error.part} cannot be rendered: {error.reason}")
        ) from error
    return step, rendered


LinksDep = Annotated[LinkBuilder, Depends(from_state("links"))]
SendersDep = Annotated[Senders, Depends(from_state("senders"))]


@router.post(
    "/sequences/{sequence_id}/preview",
    response_model=PreviewPublic,
    tags=["sequences"],
    summary="Render one step for a sample lead",
    description="Unknown variables and fields the sample lead lacks fail here (422), "
    "never in the send loop.",
    responses={**NOT_FOUND, 422: {"description": "the step cannot be rendered for this lead"}},
)
async def preview_step(
    sequence_id: str,
    payload: PreviewRequest,
    _: Marketer,
    sequences: SequencesDep,
    links: LinksDep,
) -> PreviewPublic:
    try:
        record = await sequences.get(sequence_id)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    claims = LinkClaims(kind=TokenKind.UNSUBSCRIBE, lead_id="preview", channel="email")
    step, rendered = _rendered_step(
        record, payload.step, payload.lead, links.unsubscribe_url(claims)
    )
    segments = count_segments(rendered.text) if step.channel == "sms" else None
    return PreviewPublic(
        channel=step.channel,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        sms=None
        if segments is None
        else SmsSegmentsPublic(
            encoding=segments.encoding, units=segments.units, segments=segments.segments
        ),
    )


class TestSendRequest(PreviewRequest):
    to: str = Field(
        min_length=3, max_length=320, description="an email address, or an E.164 phone number"
    )


class TestSendPublic(BaseModel):
    channel: Channel
    provider_id: str


@router.post(
    "/sequences/{sequence_id}/test-send",
    response_model=TestSendPublic,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["sequences"],
    summary="Send one step, rendered for a sample lead, to an address of your choice",
    description="Nothing is recorded for any lead and no event is published.",
    responses={
        **NOT_FOUND,
        422: {"description": "the step cannot be rendered, or `to` is not an address"},
        502: {"description": "the email or SMS provider refused it; the body says why"},
    },
)
async def test_send(
    sequence_id: str,
    payload: TestSendRequest,
    _: Marketer,
    sequences: SequencesDep,
    senders: SendersDep,
    links: LinksDep,
) -> TestSendPublic:
    try:
        record = await sequences.get(sequence_id)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    lead_id = f"test-{uuid4().hex}"
    claims = LinkClaims(kind=TokenKind.UNSUBSCRIBE, lead_id=lead_id, channel="email")
    step, rendered = _rendered_step(
        record, payload.step, payload.lead, links.unsubscribe_url(claims)
    )
    if step.channel == "email" and "@" not in payload.to:
        raise unprocessable((("body", "to"), "an email step needs an email address"))
    if step.channel == "sms" and not payload.to.startswith("+"):
        raise unprocessable((("body", "to"), "an SMS step needs an E.164 number, e.g. +8210..."))
    sample = payload.lead.model_copy(
        update={"email" if step.channel == "email" else "phone": payload.to}
    )
    message = outbound_message(
        step,
        rendered,
        sample.to_contact(lead_id),
        message_id=lead_id,
        sequence_id=sequence_id,
        index=payload.step,
    )
    try:
        if isinstance(message, OutboundEmail):
            if senders.email is None:
                raise PermanentSendError("email", "no email provider is configured")
            provider_id = await senders.email.send(message)
        else:
            if senders.sms is None:
                raise PermanentSendError("sms", "no SMS provider is configured")
            provider_id = await senders.sms.send(message)
    except SendError as error:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=str(error)) from error
    return TestSendPublic(channel=step.channel, provider_id=provider_id)


# --- bulk enrollment ----------------------------------------------------------------------------


class BulkFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[LeadStage] | None = Field(
        default=None, description="only leads whose latest lifecycle stage is one of these"
    )
    exclude_stages: list[LeadStage] = Field(
        default_factory=list,
        description="leave out these stages, e.g. ['converted'] for the leads who have not paid",
    )
    reachable_on: Channel | None = Field(
        default=None,
        description="only leads that consented to this channel, have an address for it "
        "and did not opt out",
    )


class BulkEnrollment(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sequence_id": "unpaid-reminder",
                    "filter": {"exclude_stages": ["converted"], "reachable_on": "sms"},
                }
            ]
        },
    )

    sequence_id: SequenceId
    lead_ids: list[LeadId] | None = Field(
        default=None, max_length=10_000, description="exactly these leads (a manager's pick)"
    )
    filter: BulkFilter | None = Field(default=None, description="or every lead matching this")
    limit: int = Field(default=10_000, ge=1, le=10_000)


class BulkEnrollmentPublic(BaseModel):
    enrolled: int
    already_enrolled: int
    refused: int = Field(description="erased or unknown leads")
    refused_lead_ids: list[str] = Field(
        description="which leads were refused (an unknown lead may not have reached nurture "
        "yet: ask again for these)"
    )


EnrollInBulkDep = Annotated[EnrollInBulk, Depends(from_state("enroll_in_bulk"))]
Organiser = Annotated[Principal, Depends(require(Role.MARKETING, Role.MANAGER))]


@router.post(
    "/enrollments/bulk",
    response_model=BulkEnrollmentPublic,
    tags=["enrollments"],
    summary="Enroll many leads at once, by id or by filter",
    description="Leads already active in the sequence are counted, not enrolled twice.",
    responses={
        404: {"description": "unknown sequence"},
        409: {"description": "the sequence is paused or archived"},
        422: {"description": "neither or both of lead_ids and filter"},
    },
)
async def enroll_in_bulk(
    payload: BulkEnrollment, _: Organiser, enroll: EnrollInBulkDep
) -> BulkEnrollmentPublic:
    if (payload.lead_ids is None) == (payload.filter is None):
        raise unprocessable(
            (("body", "lead_ids"), "give exactly one of lead_ids and filter"),
            (("body", "filter"), "give exactly one of lead_ids and filter"),
        )
    chosen = payload.filter or BulkFilter()
    where = ContactFilter(
        stages=None if chosen.stages is None else tuple(chosen.stages),
        exclude_stages=tuple(chosen.exclude_stages),
        reachable_on=chosen.reachable_on,
        limit=payload.limit,
    )
    try:
        outcome = await enroll(payload.sequence_id, lead_ids=payload.lead_ids, where=where)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    except SequenceNotEnrollingError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return BulkEnrollmentPublic(**asdict(outcome))


# --- web visits (seed 001) ----------------------------------------------------------------------


class WebVisit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lead_id: LeadId
    url: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^https?://")]
    occurred_at: AwareDatetime | None = Field(
        default=None, description="when the page was viewed; now if absent"
    )


class WebVisitPublic(BaseModel):
    recorded: bool


RecordWebVisitDep = Annotated[RecordWebVisit, Depends(from_state("record_web_visit"))]
Website = Annotated[Principal, Depends(require(Role.INGEST, Role.MARKETING))]


@router.post(
    "/web-visits",
    response_model=WebVisitPublic,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["engagement"],
    summary="A known lead viewed a page of the website (the site's beacon, server side)",
    description="Recorded as a `web_visit` engagement: it adds to the lead's score, and a "
    "nurtured lead visiting a high-intent page (settings: high_intent_paths) or turning "
    "hot is handed back to sales (`nurture.lead-requalified.v1`).",
)
async def record_web_visit(
    payload: WebVisit, _: Website, record: RecordWebVisitDep
) -> WebVisitPublic:
    await record(payload.lead_id, payload.url, payload.occurred_at)
    return WebVisitPublic(recorded=True)


# --- the browser's beacon: a signed visit token instead of an API key ---------------------------

VisitSignerDep = Annotated[TokenSigner, Depends(from_state("visit_signer"))]
SiteOriginsDep = Annotated[tuple[str, ...], Depends(from_state("site_origins"))]

FORGED: dict[int | str, dict[str, Any]] = {
    403: {"description": "not a visit token we signed: nothing recorded"}
}


def _visitor(signer: TokenSigner, token: str) -> str:
    """The lead a visit token names; 403 if we did not sign it."""
    try:
        return signer.verify(token, TokenKind.VISIT).lead_id
    except BadTokenError as error:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="not a valid visit token") from error


def _cors(request: Request, origins: tuple[str, ...]) -> dict[str, str]:
    """CORS headers for a page on one of our own sites; none for any other origin (the
    browser then keeps the answer from that page)."""
    origin = request.headers.get("origin")
    if origin is None or origin_of(origin) not in {o.rstrip("/").lower() for o in origins}:
        return {"Vary": "Origin"}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


class BeaconVisit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=2000, description="the `lf` parameter")
    url: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^https?://")]


@router.post(
    "/web-visits/beacon",
    response_model=WebVisitPublic,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["engagement"],
    summary="A page of our site, in the visitor's browser, reports the visit (no API key)",
    description="The lead is the one the signed visit token names (the `lf` parameter the "
    "click redirect appends to landing URLs on `site_origins`); recorded like "
    "`POST /v1/web-visits`. Pages on `site_origins` may call it cross-origin (CORS).",
    responses=FORGED,
)
async def record_beacon_visit(
    payload: BeaconVisit,
    request: Request,
    *,
    response: Response,
    record: RecordWebVisitDep,
    signer: VisitSignerDep,
    origins: SiteOriginsDep,
) -> WebVisitPublic:
    lead_id = _visitor(signer, payload.token)
    await record(lead_id, payload.url, None)
    response.headers.update(_cors(request, origins))
    return WebVisitPublic(recorded=True)


@router.options("/web-visits/beacon", include_in_schema=False)
async def beacon_preflight(request: Request, origins: SiteOriginsDep) -> Response:
    allowed = _cors(request, origins)
    if "Access-Control-Allow-Origin" not in allowed:
        return Response(status_code=status.HTTP_403_FORBIDDEN, headers=allowed)
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            **allowed,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "content-type",
            "Access-Control-Max-Age": "600",
        },
    )


@beacon_router.get(
    "/v/{token}.gif",
    summary="Visit pixel: `<img src=.../v/{lf}.gif?path=/pricing>` records a visit",
    response_class=Response,
    responses={**FORGED, 200: {"content": {"image/gif": {}}}},
)
async def visit_pixel(
    token: str,
    record: RecordWebVisitDep,
    signer: VisitSignerDep,
    path: Annotated[
        str,
        Query(
            min_length=1,
            max_length=2000,
            pattern=r"^(/|https?://)",
            description="the page viewed: a path (/pricing) or its full URL",
        ),
    ],
) -> Response:
    lead_id = _visitor(signer, token)
    await record(lead_id, path, None)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)
